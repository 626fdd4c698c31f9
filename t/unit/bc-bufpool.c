/* SPDX-License-Identifier: MIT */
/* The I/O buffer arenas behind bc_buf_alloc(): memfd-backed shared regions of the configured
 * total; page-aligned buffers that never overlap, from many threads at once; the heap when
 * the arenas are full or a buffer is too large; thread caches given back at thread exit. */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "t/unit/test-util.h"

#define TOTAL (8u << 20)    /* one arena */

static struct bc_buf_region reg[BC_BUF_MAX_REGIONS];
static unsigned nreg;

static bool in_arena(const void *p, size_t len)
{
    for (unsigned i = 0; i < nreg; i++) {
        uintptr_t a = (uintptr_t)p, b = (uintptr_t)reg[i].base;
        if (a >= b && a + len <= b + reg[i].len)
            return true;
    }
    return false;
}

static void test_regions(void)
{
    struct bc_buf_pool_stats st;
    struct stat sb;
    size_t total = 0;

    g_assert_cmpuint(nreg, >=, 1);
    for (unsigned i = 0; i < nreg; i++) {
        g_assert_cmpuint((uintptr_t)reg[i].base % 4096, ==, 0);
        g_assert_cmpuint(reg[i].len % (2u << 20), ==, 0);
        /* The memfd is what is mapped: a write through one shows through the other. */
        g_assert_cmpint(fstat(reg[i].fd, &sb), ==, 0);
        g_assert_cmpuint((size_t)sb.st_size, ==, reg[i].len);
        total += reg[i].len;
    }
    g_assert_cmpuint(total, ==, TOTAL);
    bc_buf_pool_stats(&st);
    g_assert_cmpuint(st.total, ==, TOTAL);
    /* Fixed once created. */
    g_assert_false(bc_buf_pool_set_size(1u << 30));

    uint8_t *p = bc_buf_alloc(4096);
    g_assert_true(in_arena(p, 4096));
    struct bc_buf_region *r = NULL;
    for (unsigned i = 0; i < nreg; i++)
        if ((uintptr_t)p - (uintptr_t)reg[i].base < reg[i].len)
            r = &reg[i];
    g_assert_nonnull(r);
    const char msg[] = "through the memfd";
    g_assert_cmpint(pwrite(r->fd, msg, sizeof(msg), (off_t)(p - (uint8_t *)r->base)), ==,
                    sizeof(msg));
    g_assert_cmpstr((char *)p, ==, msg);
    bc_buf_free(p);
}

static void test_basic(void)
{
    size_t lens[] = { 0, 1, 4095, 4096, 4097, 65536, 1u << 20, (1u << 20) + 8192 };
    void *p[G_N_ELEMENTS(lens)];

    for (unsigned i = 0; i < G_N_ELEMENTS(lens); i++) {
        p[i] = bc_buf_alloc(lens[i]);
        g_assert_cmpuint((uintptr_t)p[i] % 4096, ==, 0);
        g_assert_true(in_arena(p[i], MAX(lens[i], 1)));
        memset(p[i], (int)i + 1, MAX(lens[i], 1));
    }
    for (unsigned i = 0; i < G_N_ELEMENTS(lens); i++) {
        const uint8_t *b = p[i];
        for (size_t k = 0; k < MAX(lens[i], 1); k++)
            g_assert_cmpuint(b[k], ==, i + 1);      /* nobody overlapped */
    }
    /* A freed buffer of a common size comes straight back (the thread cache). */
    void *q = p[5];
    bc_buf_free(q);
    p[5] = bc_buf_alloc(65536);
    g_assert_true(p[5] == q);
    for (unsigned i = 0; i < G_N_ELEMENTS(lens); i++)
        bc_buf_free(p[i]);
    bc_buf_free(NULL);
}

static void test_exhaustion(void)
{
    struct bc_buf_pool_stats st0, st;
    enum { N = 24 };
    void *p[N];
    unsigned inside = 0;

    bc_buf_pool_stats(&st0);
    /* Larger than any arena: the heap, still page-aligned. */
    void *big = bc_buf_alloc(TOTAL + 4096);
    g_assert_false(in_arena(big, 1));
    g_assert_cmpuint((uintptr_t)big % 4096, ==, 0);
    memset(big, 1, TOTAL + 4096);
    bc_buf_free(big);
    /* More 1 MiB buffers than fit: the rest come from the heap. */
    for (int i = 0; i < N; i++) {
        p[i] = bc_buf_alloc(1u << 20);
        g_assert_cmpuint((uintptr_t)p[i] % 4096, ==, 0);
        memset(p[i], i, 1u << 20);
        inside += in_arena(p[i], 1u << 20);
    }
    bc_buf_pool_stats(&st);
    g_test_message("%u of %d buffers in the arenas, %zu bytes in use", inside, N, st.in_use);
    g_assert_cmpuint(inside, >=, TOTAL / (1u << 20) - 2);
    g_assert_cmpuint(inside, <=, TOTAL / (1u << 20));
    g_assert_cmpuint(st.in_use, <=, st.total);
    g_assert_cmpuint(st.fallbacks, >=, st0.fallbacks + 1 + (N - inside));
    for (int i = 0; i < N; i++)
        bc_buf_free(p[i]);
    /* All of it is back: the arenas serve again. */
    for (int i = 0; i < N / 4; i++) {
        p[i] = bc_buf_alloc(1u << 20);
        g_assert_true(in_arena(p[i], 1u << 20));
    }
    for (int i = 0; i < N / 4; i++)
        bc_buf_free(p[i]);
}

/* Threads allocate, fill, check and free buffers of assorted sizes, some freed by another
 * thread; a buffer handed out twice would show as a wrong byte. */
#define NT 4
#define ROUNDS 1500

static guint32 seed;        /* set by test_threads() before its threads start */

struct shared {
    GAsyncQueue *handoff;       /* buffers (with their fill byte and length) to free */
};

struct item {
    uint8_t *p;
    size_t len;
    uint8_t fill;
};

static void check_item(const struct item *it)
{
    for (size_t k = 0; k < it->len; k += 509)
        g_assert_cmpuint(it->p[k], ==, it->fill);
    g_assert_cmpuint(it->p[it->len - 1], ==, it->fill);
}

static gpointer thread_main(gpointer opaque)
{
    struct shared *sh = opaque;
    static const size_t sizes[] = { 512, 4096, 8192, 65536, 131072, 1u << 20,
                                    (1u << 20) + 8192, 12345 };
    static int next_index;
    GRand *r = g_rand_new_with_seed(seed * 100u +
                                    (guint32)__atomic_fetch_add(&next_index, 1, __ATOMIC_RELAXED));
    struct item held[16];
    unsigned nheld = 0;

    for (int i = 0; i < ROUNDS; i++) {
        if (nheld == G_N_ELEMENTS(held) || (nheld && g_rand_boolean(r))) {
            unsigned k = (unsigned)g_rand_int_range(r, 0, (gint32)nheld);
            struct item it = held[k];
            held[k] = held[--nheld];
            check_item(&it);
            if (g_rand_int_range(r, 0, 4) == 0) {
                g_async_queue_push(sh->handoff, g_memdup2(&it, sizeof(it)));
            } else {
                bc_buf_free(it.p);
            }
            continue;
        }
        struct item *it = &held[nheld++];
        it->len = sizes[g_rand_int_range(r, 0, G_N_ELEMENTS(sizes))];
        it->p = bc_buf_alloc(it->len);
        g_assert_cmpuint((uintptr_t)it->p % 4096, ==, 0);
        it->fill = (uint8_t)g_rand_int(r);
        memset(it->p, it->fill, it->len);
        /* Free what other threads handed over. */
        struct item *o;
        while ((o = g_async_queue_try_pop(sh->handoff))) {
            check_item(o);
            bc_buf_free(o->p);
            g_free(o);
        }
    }
    while (nheld) {
        check_item(&held[--nheld]);
        bc_buf_free(held[nheld].p);
    }
    g_rand_free(r);
    return NULL;
}

static void test_threads(void)
{
    struct bc_buf_pool_stats before, after;
    struct shared sh = { g_async_queue_new() };
    GThread *t[NT];
    struct item *o;

    seed = tu_seed(1035);
    bc_buf_pool_stats(&before);
    for (int i = 0; i < NT; i++)
        t[i] = g_thread_new("bufpool", thread_main, &sh);
    for (int i = 0; i < NT; i++)
        g_thread_join(t[i]);
    while ((o = g_async_queue_try_pop(sh.handoff))) {
        check_item(o);
        bc_buf_free(o->p);
        g_free(o);
    }
    g_async_queue_unref(sh.handoff);
    /* The threads' caches went back when they exited; what the main thread freed just now
     * may sit in its own cache, at most 4 MiB. */
    bc_buf_pool_stats(&after);
    g_test_message("in use before %zu, after %zu, peak %zu, fallbacks %" G_GUINT64_FORMAT,
                   before.in_use, after.in_use, after.peak, after.fallbacks);
    g_assert_cmpuint(after.in_use, <=, before.in_use + (4u << 20));
    g_assert_cmpuint(after.peak, <=, after.total);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv, 120);
    g_assert_true(bc_buf_pool_set_size(TOTAL));
    nreg = bc_buf_regions(reg, BC_BUF_MAX_REGIONS);
    tu_add_isolated("/bufpool/regions", test_regions);
    tu_add_isolated("/bufpool/basic", test_basic);
    tu_add_isolated("/bufpool/exhaustion", test_exhaustion);
    tu_add_isolated("/bufpool/threads", test_threads);
    return g_test_run();
}
