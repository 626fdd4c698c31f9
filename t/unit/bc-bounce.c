/* SPDX-License-Identifier: MIT */
/* The bounce budget: a burst of large unaligned writes and reads never holds more bounce
 * memory than the budget, every request still completes, and the data is right. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "t/unit/test-util.h"

#define BUDGET (256u << 10)

struct req {
    bool write;
    uint64_t off;
    uint64_t len;
    struct tu_buf buf;
    struct iovec iov[TU_MAX_IOV];
    int iovcnt;
    struct tu_io io;
};

/* Run the loop to completion while sampling the bounce use after every iteration. */
static size_t run_sampling(struct bc_loop *loop, unsigned *pending)
{
    size_t max_seen = 0;
    while (*pending > 0) {
        tu_run_once(loop);
        size_t in_use, peak;
        bc_bounce_usage(&in_use, &peak);
        max_seen = MAX(max_seen, in_use);
    }
    return max_seen;
}

static void test_budget_burst(void)
{
    enum { NW = 32, NR = 16 };
    const uint64_t size = 112u << 20;
    struct bc_loop *loop = tu_loop_new();
    struct bc_dev *dev = tu_open_ram(size, 4096, 4096, 0);
    GRand *rand = g_rand_new_with_seed(tu_seed(1030));
    struct tu_model m;
    struct req w[NW], rd[NR];
    unsigned pending = 0;

    g_assert_cmpuint(bc_bounce_budget(), ==, BUDGET);
    tu_model_init(&m, size, true);      /* the ram disk starts zeroed */
    bc_bounce_reset_peak();

    /* 32 disjoint writes of 1-3 MiB at unaligned offsets from unaligned memory. */
    uint64_t pos = 0;
    for (int i = 0; i < NW; i++) {
        w[i].write = true;
        w[i].len = (uint64_t)g_rand_int_range(rand, 1 << 20, 3 << 20) + 1;
        w[i].off = pos + (uint64_t)g_rand_int_range(rand, 1, 4096);
        pos = w[i].off + w[i].len;
        g_assert_cmpuint(pos, <, size - (4u << 20));
        tu_buf_init(&w[i].buf, w[i].len, (size_t)g_rand_int_range(rand, 1, 4096));
        tu_fill_random(rand, w[i].buf.p, w[i].len);
        w[i].iovcnt = i % 2 ? tu_split_iov(rand, w[i].buf.p, w[i].len, w[i].iov, 8) : 1;
        if (w[i].iovcnt == 1 && i % 2 == 0)
            w[i].iov[0] = (struct iovec){ .iov_base = w[i].buf.p, .iov_len = w[i].len };
    }
    for (int i = 0; i < NW; i++) {
        tu_io_start(&w[i].io, &pending);
        bc_dev_writev(dev, loop, w[i].iov, w[i].iovcnt, w[i].off, 0, tu_io_cb, &w[i].io);
    }
    size_t seen = run_sampling(loop, &pending);
    size_t in_use, peak;
    bc_bounce_usage(&in_use, &peak);
    g_test_message("write burst: peak %zu, max sampled %zu, budget %u", peak, seen, BUDGET);
    for (int i = 0; i < NW; i++) {
        if (w[i].io.res != 0)
            g_error("write %d [%" PRIu64 ", +%" PRIu64 "): %s", i, w[i].off, w[i].len,
                    g_strerror(-w[i].io.res));
        tu_model_write(&m, w[i].off, w[i].buf.p, w[i].len);
    }
    g_assert_cmpuint(peak, <=, BUDGET);
    g_assert_cmpuint(seen, <=, BUDGET);
    g_assert_cmpuint(peak, >, 0);       /* they really were bounced */
    g_assert_cmpuint(in_use, ==, 0);

    /* Unaligned-memory reads of the same ranges plus some straddling ones, all at once. */
    bc_bounce_reset_peak();
    for (int i = 0; i < NR; i++) {
        rd[i].write = false;
        if (i < NW && i % 2 == 0) {
            rd[i].off = w[i].off;
            rd[i].len = w[i].len;
        } else {
            rd[i].off = (uint64_t)g_rand_int_range(rand, 0, (gint32)(pos - 1));
            rd[i].len = (uint64_t)g_rand_int_range(rand, 1 << 20, 3 << 20);
        }
        tu_buf_init(&rd[i].buf, rd[i].len, (size_t)g_rand_int_range(rand, 1, 4096));
        memset(rd[i].buf.p, 0xEE, rd[i].len);
        rd[i].iovcnt = tu_split_iov(rand, rd[i].buf.p, rd[i].len, rd[i].iov, 4);
        tu_io_start(&rd[i].io, &pending);
        bc_dev_readv(dev, loop, rd[i].iov, rd[i].iovcnt, rd[i].off, tu_io_cb, &rd[i].io);
    }
    seen = run_sampling(loop, &pending);
    bc_bounce_usage(&in_use, &peak);
    g_test_message("read burst: peak %zu, max sampled %zu", peak, seen);
    for (int i = 0; i < NR; i++) {
        g_assert_cmpint(rd[i].io.res, ==, 0);
        g_autofree char *ctx = g_strdup_printf("read %d [%" PRIu64 ", +%" PRIu64 ")", i,
                                               rd[i].off, rd[i].len);
        g_assert_true(tu_model_check(&m, rd[i].off, rd[i].buf.p, rd[i].len, ctx));
        tu_buf_check_guards(&rd[i].buf, ctx);
        tu_buf_free(&rd[i].buf);
    }
    g_assert_cmpuint(peak, <=, BUDGET);
    g_assert_cmpuint(in_use, ==, 0);

    for (int i = 0; i < NW; i++)
        tu_buf_free(&w[i].buf);
    g_rand_free(rand);
    tu_model_free(&m);
    bc_dev_close(dev);
    tu_loop_free(loop);
}

/* One request many times the budget completes (it is split), alone and mixed with small
 * unaligned writes, and the small ones are not starved. */
static void test_larger_than_budget(void)
{
    const uint64_t size = 16u << 20;
    const uint64_t big = 5u << 20;
    struct bc_loop *loop = tu_loop_new();
    struct bc_dev *dev = tu_open_ram(size, 4096, 4096, 0);
    GRand *rand = g_rand_new_with_seed(tu_seed(1031));
    struct tu_model m;
    struct tu_buf b, r;

    tu_model_init(&m, size, true);
    bc_bounce_reset_peak();
    tu_buf_init(&b, big, 3);
    tu_fill_random(rand, b.p, big);
    g_assert_cmpint(tu_pwrite(dev, loop, b.p, big, 1001), ==, 0);
    tu_model_write(&m, 1001, b.p, big);

    tu_buf_init(&r, big + 10000, 5);
    g_assert_cmpint(tu_pread(dev, loop, r.p, big + 10000, 999), ==, 0);
    g_assert_true(tu_model_check(&m, 999, r.p, big + 10000, "big read"));
    tu_buf_check_guards(&r, "big read");

    /* Unaligned write-zeroes bigger than the budget (zero buffers may be bounce memory). */
    g_assert_cmpint(tu_zero(dev, loop, 77, big, 0), ==, 0);
    tu_model_zero(&m, 77, big);

    /* Two big ones and 20 small ones at once. */
    enum { NS = 20 };
    struct tu_buf small[NS];
    struct tu_io io[NS + 2];
    struct iovec siov[NS], biov[2];
    unsigned pending = 0;
    struct tu_buf b2;
    tu_buf_init(&b2, big, 11);
    tu_fill_random(rand, b2.p, big);
    biov[0] = (struct iovec){ .iov_base = b.p, .iov_len = big };
    biov[1] = (struct iovec){ .iov_base = b2.p, .iov_len = big };
    tu_io_start(&io[0], &pending);
    bc_dev_writev(dev, loop, &biov[0], 1, 3, 0, tu_io_cb, &io[0]);
    tu_io_start(&io[1], &pending);
    bc_dev_writev(dev, loop, &biov[1], 1, big + 8000, 0, tu_io_cb, &io[1]);
    for (int i = 0; i < NS; i++) {
        tu_buf_init(&small[i], 3000, (size_t)i + 1);
        tu_fill_random(rand, small[i].p, 3000);
        siov[i] = (struct iovec){ .iov_base = small[i].p, .iov_len = 3000 };
        tu_io_start(&io[2 + i], &pending);
        bc_dev_writev(dev, loop, &siov[i], 1, 2 * big + 10000 + (uint64_t)i * 3001, 0,
                      tu_io_cb, &io[2 + i]);
    }
    run_sampling(loop, &pending);
    for (int i = 0; i < NS + 2; i++)
        g_assert_cmpint(io[i].res, ==, 0);
    tu_model_write(&m, 3, b.p, big);
    tu_model_write(&m, big + 8000, b2.p, big);
    for (int i = 0; i < NS; i++) {
        tu_model_write(&m, 2 * big + 10000 + (uint64_t)i * 3001, small[i].p, 3000);
        tu_buf_free(&small[i]);
    }
    g_assert_true(tu_model_verify_dev(&m, dev, loop, "after big + small writes"));

    size_t in_use, peak;
    bc_bounce_usage(&in_use, &peak);
    g_test_message("larger than budget: peak %zu", peak);
    g_assert_cmpuint(peak, <=, BUDGET);
    g_assert_cmpuint(in_use, ==, 0);

    tu_buf_free(&b);
    tu_buf_free(&b2);
    tu_buf_free(&r);
    g_rand_free(rand);
    tu_model_free(&m);
    bc_dev_close(dev);
    tu_loop_free(loop);
}

/* Two threads with their own loops share one budget: the sum stays within it. */
struct thr {
    struct bc_dev *dev;
    uint64_t base;
    guint32 seed;
    int bad;
};

static gpointer burst_thread(gpointer p)
{
    struct thr *t = p;
    struct bc_loop *loop = tu_loop_new();
    GRand *rand = g_rand_new_with_seed(t->seed);
    enum { N = 8 };
    struct tu_buf b[N];
    struct iovec iov[N];
    struct tu_io io[N];
    uint64_t off[N];
    unsigned pending = 0;
    uint64_t pos = t->base;

    for (int i = 0; i < N; i++) {
        uint64_t len = (uint64_t)g_rand_int_range(rand, 1 << 20, 2 << 20);
        off[i] = pos + 1 + (uint64_t)i;
        pos = off[i] + len;
        tu_buf_init(&b[i], len, 1);
        memset(b[i].p, (int)(t->seed + (guint32)i), len);
        iov[i] = (struct iovec){ .iov_base = b[i].p, .iov_len = len };
        tu_io_start(&io[i], &pending);
        bc_dev_writev(t->dev, loop, &iov[i], 1, off[i], 0, tu_io_cb, &io[i]);
    }
    tu_run_until_done(loop, &pending);
    for (int i = 0; i < N; i++) {
        t->bad += io[i].res != 0;
        uint8_t *chk = g_malloc(b[i].len);
        t->bad += tu_pread(t->dev, loop, chk, b[i].len, off[i]) != 0;
        t->bad += memcmp(chk, b[i].p, b[i].len) != 0;
        g_free(chk);
        tu_buf_free(&b[i]);
    }
    g_rand_free(rand);
    tu_loop_free(loop);
    return NULL;
}

static void test_two_threads(void)
{
    struct bc_dev *dev = tu_open_ram(40u << 20, 4096, 4096, 0);
    struct thr t[2] = { { .dev = dev, .base = 0, .seed = 1 },
                        { .dev = dev, .base = 20u << 20, .seed = 2 } };
    GThread *th[2];

    bc_bounce_reset_peak();
    for (int i = 0; i < 2; i++)
        th[i] = g_thread_new("burst", burst_thread, &t[i]);
    for (int i = 0; i < 2; i++)
        g_thread_join(th[i]);
    size_t in_use, peak;
    bc_bounce_usage(&in_use, &peak);
    g_test_message("two threads: peak %zu", peak);
    g_assert_cmpint(t[0].bad, ==, 0);
    g_assert_cmpint(t[1].bad, ==, 0);
    g_assert_cmpuint(peak, <=, BUDGET);
    g_assert_cmpuint(in_use, ==, 0);
    bc_dev_close(dev);
}

/* Four threads, one loop each, write interleaved 3000-byte slots (so neighbouring slots
 * share sectors across threads and every write needs read-modify-write and bounce
 * memory) while the budget makes most of them wait: blockers and bounce waits interact
 * across loops.  No deadlock, every byte right, the budget kept. */
enum { S_THREADS = 4, S_PER = 32, S_SLOT = 3000 };

struct sthr {
    struct bc_dev *dev;
    int index;
    uint8_t final[S_PER];
};

static gpointer sharing_thread(gpointer p)
{
    struct sthr *t = p;
    struct bc_loop *loop = tu_loop_new();
    struct tu_buf b[S_PER];
    struct iovec iov[S_PER];
    struct tu_io io[S_PER];

    for (int r = 0; r < 20; r++) {
        unsigned pending = 0;
        for (int i = 0; i < S_PER; i++) {
            int slot = S_THREADS * i + t->index;
            uint8_t v = (uint8_t)(r * 7 + slot + 1);
            tu_buf_init(&b[i], S_SLOT, (size_t)(slot % 7));
            memset(b[i].p, v, S_SLOT);
            t->final[i] = v;
            iov[i] = (struct iovec){ .iov_base = b[i].p, .iov_len = S_SLOT };
            tu_io_start(&io[i], &pending);
            bc_dev_writev(t->dev, loop, &iov[i], 1, 11 + (uint64_t)slot * S_SLOT, 0, tu_io_cb,
                          &io[i]);
        }
        tu_run_until_done(loop, &pending);
        for (int i = 0; i < S_PER; i++) {
            g_assert_cmpint(io[i].res, ==, 0);
            tu_buf_free(&b[i]);
        }
    }
    tu_loop_free(loop);
    return NULL;
}

static void test_threads_sharing(void)
{
    const uint64_t size = 1u << 20;
    struct bc_loop *loop = tu_loop_new();
    struct bc_dev *dev = tu_open_ram(size, 4096, 4096, 0);
    struct sthr t[S_THREADS];
    GThread *th[S_THREADS];

    bc_bounce_reset_peak();
    for (int i = 0; i < S_THREADS; i++) {
        t[i] = (struct sthr){ .dev = dev, .index = i };
        th[i] = g_thread_new("sharing", sharing_thread, &t[i]);
    }
    for (int i = 0; i < S_THREADS; i++)
        g_thread_join(th[i]);

    uint8_t *buf = g_malloc(size);
    g_assert_cmpint(tu_pread(dev, loop, buf, size, 0), ==, 0);
    uint64_t bad = 0;
    for (int slot = 0; slot < S_THREADS * S_PER; slot++) {
        uint8_t want = t[slot % S_THREADS].final[slot / S_THREADS];
        for (int j = 0; j < S_SLOT; j++)
            bad += buf[11 + (uint64_t)slot * S_SLOT + (uint64_t)j] != want;
    }
    g_free(buf);
    size_t in_use, peak;
    bc_bounce_usage(&in_use, &peak);
    struct bc_dev_stats st;
    bc_dev_get_stats(dev, &st);
    g_test_message("threads sharing: peak %zu, blocker waits %" PRIu64 ", %" PRIu64
                   " bytes wrong", peak, st.blocker_waits, bad);
    g_assert_cmpuint(bad, ==, 0);
    g_assert_cmpuint(peak, <=, BUDGET);
    g_assert_cmpuint(in_use, ==, 0);
    bc_dev_close(dev);
    tu_loop_free(loop);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv, 150);
    bc_bounce_set_budget(BUDGET);   /* process-wide: before any I/O */
    tu_add_isolated("/bounce/burst-within-budget", test_budget_burst);
    tu_add_isolated("/bounce/larger-than-budget", test_larger_than_budget);
    tu_add_isolated("/bounce/two-threads-one-budget", test_two_threads);
    tu_add_isolated("/bounce/threads-sharing-sectors", test_threads_sharing);
    return g_test_run();
}
