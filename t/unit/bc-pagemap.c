/* SPDX-License-Identifier: MIT */
/* The page-bitmap allocator behind the I/O buffer arenas and the virtio-blk bounce pool:
 * first fit from a rotating hint, runs across bitmap words, FIFO waiters that nobody
 * overtakes, and a random workload checked against a model of which pages are in use. */
#include <string.h>

#include "blockcore/pagemap.h"
#include "t/unit/test-util.h"

static void test_first_fit(void)
{
    struct bc_pagemap m;

    g_assert_true(bc_pagemap_init(&m, 200));
    g_assert_cmpint(bc_pagemap_take(&m, 10), ==, 0);
    g_assert_cmpint(bc_pagemap_take(&m, 60), ==, 10);     /* crosses a word boundary */
    g_assert_cmpint(bc_pagemap_take(&m, 1), ==, 70);
    /* The hint moves on: freed pages at the start are not reused before the end. */
    g_assert_null(bc_pagemap_put(&m, 0, 10));
    g_assert_cmpint(bc_pagemap_take(&m, 5), ==, 71);
    g_assert_cmpint(bc_pagemap_take(&m, 120), ==, 76);
    /* Only 4 pages after the hint: wraps to the start. */
    g_assert_cmpint(bc_pagemap_take(&m, 10), ==, 0);
    g_assert_cmpint(bc_pagemap_take(&m, 4), ==, 196);
    g_assert_cmpint(bc_pagemap_take(&m, 1), ==, -1);      /* full */
    g_assert_cmpint(bc_pagemap_take(&m, 201), ==, -1);    /* never fits */
    g_assert_null(bc_pagemap_put(&m, 10, 60));
    g_assert_cmpint(bc_pagemap_take(&m, 61), ==, -1);     /* 60 free, in one run */
    g_assert_cmpint(bc_pagemap_take(&m, 60), ==, 10);
    bc_pagemap_destroy(&m);
}

/* Waiters are granted strictly in order: a small one behind a large one waits even when
 * it would fit, new requests do not overtake the queue, and one put grants as many of the
 * oldest as fit. */
static void test_fifo(void)
{
    struct bc_pagemap m;
    struct bc_pagemap_wait w[4] = {
        { .pages = 8 }, { .pages = 2 }, { .pages = 3 }, { .pages = 1 },
    };
    struct bc_pagemap_wait *g;

    g_assert_true(bc_pagemap_init(&m, 16));
    g_assert_cmpint(bc_pagemap_take(&m, 6), ==, 0);
    g_assert_cmpint(bc_pagemap_take(&m, 6), ==, 6);
    g_assert_cmpint(bc_pagemap_take(&m, 4), ==, 12);
    for (int i = 0; i < 4; i++)
        g_assert_false(bc_pagemap_take_or_wait(&m, &w[i]));

    /* Four pages free: w[1], w[2] and w[3] would fit, but w[0] came first. */
    g_assert_null(bc_pagemap_put(&m, 12, 4));
    g_assert_cmpint(bc_pagemap_take(&m, 1), ==, -1);
    struct bc_pagemap_wait late = { .pages = 1 };
    g_assert_false(bc_pagemap_take_or_wait(&m, &late));

    /* Ten free in one run: w[0] (8) and then w[1] (2) in that order; w[2] no longer fits. */
    g = bc_pagemap_put(&m, 6, 6);
    g_assert_true(g == &w[0]);
    g_assert_true(g->next == &w[1]);
    g_assert_null(g->next->next);
    g_assert_cmpuint(w[0].first + 8, <=, 16);
    g_assert_true(w[0].first + 8 <= w[1].first || w[1].first + 2 <= w[0].first);

    /* The rest, oldest first, the latecomer last. */
    g = bc_pagemap_put(&m, 0, 6);
    g_assert_true(g == &w[2]);
    g_assert_true(g->next == &w[3]);
    g_assert_true(g->next->next == &late);
    g_assert_null(late.next);
    /* 15 of 16 pages granted, and nobody waits any more. */
    g_assert_cmpint(bc_pagemap_take(&m, 1), >=, 0);
    g_assert_cmpint(bc_pagemap_take(&m, 1), ==, -1);
    bc_pagemap_destroy(&m);
}

static void test_drain(void)
{
    struct bc_pagemap m;
    struct bc_pagemap_wait w[3] = { { .pages = 4 }, { .pages = 1 }, { .pages = 2 } };

    g_assert_true(bc_pagemap_init(&m, 4));
    g_assert_cmpint(bc_pagemap_take(&m, 4), ==, 0);
    for (int i = 0; i < 3; i++)
        g_assert_false(bc_pagemap_take_or_wait(&m, &w[i]));
    struct bc_pagemap_wait *all = bc_pagemap_drain(&m);
    g_assert_true(all == &w[0] && w[0].next == &w[1] && w[1].next == &w[2] && !w[2].next);
    g_assert_null(bc_pagemap_drain(&m));
    /* Nobody waits any more: pages are handed out again. */
    g_assert_null(bc_pagemap_put(&m, 0, 4));
    g_assert_cmpint(bc_pagemap_take(&m, 4), ==, 0);
    bc_pagemap_destroy(&m);
}

/* Random takes and puts against a model: runs never overlap, never leave the map, and a
 * take fails only when no free run of that length exists. */
static void test_model(void)
{
    enum { PAGES = 300, ROUNDS = 20000 };
    struct bc_pagemap m;
    bool used[PAGES] = { false };
    struct { size_t first, n; } live[PAGES];
    unsigned nlive = 0;
    g_autoptr(GRand) r = g_rand_new_with_seed(tu_seed(0x9a9e));

    g_assert_true(bc_pagemap_init(&m, PAGES));
    for (unsigned round = 0; round < ROUNDS; round++) {
        if (nlive && g_rand_int_range(r, 0, 2) == 0) {
            unsigned k = (unsigned)g_rand_int_range(r, 0, (gint32)nlive);
            g_assert_null(bc_pagemap_put(&m, live[k].first, live[k].n));
            for (size_t i = 0; i < live[k].n; i++)
                used[live[k].first + i] = false;
            live[k] = live[--nlive];
            continue;
        }
        size_t n = (size_t)g_rand_int_range(r, 1, g_rand_int_range(r, 0, 8) ? 8 : 70);
        ssize_t got = bc_pagemap_take(&m, n);
        if (got < 0) {
            size_t run = 0;
            for (size_t i = 0; i < PAGES && run < n; i++)
                run = used[i] ? 0 : run + 1;
            g_assert_cmpuint(run, <, n);
            continue;
        }
        g_assert_cmpuint((size_t)got + n, <=, PAGES);
        for (size_t i = 0; i < n; i++) {
            g_assert_false(used[got + i]);
            used[got + i] = true;
        }
        live[nlive].first = (size_t)got;
        live[nlive++].n = n;
    }
    while (nlive--)
        g_assert_null(bc_pagemap_put(&m, live[nlive].first, live[nlive].n));
    g_assert_cmpint(bc_pagemap_take(&m, PAGES), ==, 0);
    bc_pagemap_destroy(&m);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv, 60);
    tu_add_isolated("/pagemap/first-fit", test_first_fit);
    tu_add_isolated("/pagemap/fifo", test_fifo);
    tu_add_isolated("/pagemap/drain", test_drain);
    tu_add_isolated("/pagemap/model", test_model);
    return g_test_run();
}
