/* SPDX-License-Identifier: MIT */
/* fuse/front.h's fo_open_raw_ok(): which kernels get layerfs's own OPEN reply (with
 * FOPEN_PARALLEL_DIRECT_WRITES) and which get libfuse's. */
#include <glib.h>

#include "fuse/front.h"
#include "t/unit/test-util.h"

static void test_minors(void)
{
    static const struct { unsigned major, minor; bool raw; } cases[] = {
        { 7, 0, false },
        { 7, 31, false },   /* what libfuse 3.14.0 itself answers INIT with */
        { 7, 35, false },   /* FOPEN_NOFLUSH, but not yet parallel direct writes */
        { 7, 37, false },
        { 7, 38, true },    /* FOPEN_PARALLEL_DIRECT_WRITES */
        { 7, 39, true },
        { 7, 45, true },
        { 6, 40, false },   /* another major: nothing is known */
        { 8, 40, false },
    };

    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_test_message("FUSE %u.%u", cases[i].major, cases[i].minor);
        g_assert_cmpint(fo_open_raw_ok(cases[i].major, cases[i].minor), ==, cases[i].raw);
    }
}

int main(int argc, char **argv)
{
    tu_test_init(&argc, &argv);
    tu_add_isolated("/fuse/open-raw-minors", test_minors);
    return g_test_run();
}
