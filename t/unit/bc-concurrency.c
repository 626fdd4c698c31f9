/* SPDX-License-Identifier: MIT */
/* Write serialization: concurrent unaligned writes that share sectors but not bytes all
 * land; without serialization they demonstrably do not; aligned disjoint writes run in
 * parallel; four threads with their own loops sharing one device; the blockers' try-lock
 * never overtakes a waiter. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include "t/unit/check-drv.h"
#include "t/unit/test-util.h"

struct wr {
    uint64_t off;
    uint32_t len;
    struct tu_buf buf;
    struct iovec iov;
    struct tu_io io;
};

/* Which device a test runs on: the ram driver (4 KiB sectors) or an O_DIRECT file in
 * /var/tmp (the file system's alignment, 512 bytes on the CI disk), where the I/O is
 * really asynchronous and completes out of order. */
struct devkind {
    bool file;
    unsigned slot;          /* the threads test: bytes per write */
    bool check;             /* the checking driver (ram underneath) instead of ram */
};
static const struct devkind kind_ram = { false, 100, false }, kind_file = { true, 100, false },
                            kind_ram_1byte = { false, 1, false }, kind_check = { false, 100, true };

static struct bc_dev *open_kind(const struct devkind *k, uint64_t size, char **pathp)
{
    *pathp = NULL;
    if (k->check) {
        g_autofree char *sz = g_strdup_printf("%" PRIu64, size);
        return tu_open(&tu_drv_check, NULL, false, false, "size", sz, "align", "4096", NULL);
    }
    if (!k->file)
        return tu_open_ram(size, 4096, 4096, 0);
    char *path = g_strdup("/var/tmp/layerfs-1020-XXXXXX");
    int fd = g_mkstemp(path);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, (off_t)size), ==, 0);   /* zeros */
    close(fd);
    struct bc_dev *dev = tu_open(&bc_drv_file, path, false, true, NULL);
    g_test_message("O_DIRECT file %s, req_align %u", path, bc_dev_props(dev)->req_align);
    unlink(path);       /* the driver has it open; nothing is left behind if we crash */
    g_free(path);
    return dev;
}

/* With the checking driver: no driver request broke the contract (in particular no two
 * overlapping writes were in flight together). */
static void check_kind(const struct devkind *k, struct bc_dev *dev, const char *what)
{
    if (!k->check)
        return;
    struct tu_check_stats st;
    tu_check_get(dev, &st);
    if (st.violations)
        g_test_fail_printf("%s: %" PRIu64 " driver contract violations; first: %s", what,
                           st.violations, st.first_violation);
}

static void close_kind(struct bc_dev *dev, char *path)
{
    bc_dev_close(dev);
    if (path)
        unlink(path);
    g_free(path);
}

/* Submit all writes at once, run to completion, assert each returned 0 and update m. */
static void submit_all(struct bc_dev *dev, struct bc_loop *loop, struct wr *w, int n,
                       struct tu_model *m)
{
    unsigned pending = 0;
    for (int i = 0; i < n; i++) {
        w[i].iov = (struct iovec){ .iov_base = w[i].buf.p, .iov_len = w[i].len };
        tu_io_start(&w[i].io, &pending);
        bc_dev_writev(dev, loop, &w[i].iov, 1, w[i].off, 0, tu_io_cb, &w[i].io);
        g_assert_false(w[i].io.done);
    }
    tu_run_until_done(loop, &pending);
    for (int i = 0; i < n; i++) {
        if (w[i].io.res != 0)
            g_error("write %d [%" PRIu64 ", +%u) failed: %s", i, w[i].off, w[i].len,
                    g_strerror(-w[i].io.res));
        if (m)
            tu_model_write(m, w[i].off, w[i].buf.p, w[i].len);
    }
}

static void free_writes(struct wr *w, int n)
{
    for (int i = 0; i < n; i++)
        tu_buf_free(&w[i].buf);
}

/* 64 writes of 100 bytes at 100-byte strides: each byte's value names its writer. */
static void make_strided(struct wr *w, int n, uint64_t base, uint32_t stride, uint8_t round)
{
    for (int i = 0; i < n; i++) {
        w[i].off = base + (uint64_t)i * stride;
        w[i].len = stride;
        tu_buf_init(&w[i].buf, stride, (size_t)(i * 7) % 64);
        memset(w[i].buf.p, (uint8_t)(round * 64 + i + 1), stride);
    }
}

/* Count bytes that do not hold the model's value. */
static uint64_t lost_bytes(struct bc_dev *dev, struct bc_loop *loop, const struct tu_model *m)
{
    uint8_t *buf = g_malloc(m->size);
    g_assert_cmpint(tu_pread(dev, loop, buf, m->size, 0), ==, 0);
    uint64_t bad = 0;
    for (uint64_t i = 0; i < m->size; i++)
        bad += m->known[i] && buf[i] != m->data[i];
    g_free(buf);
    return bad;
}

static void test_strided(gconstpointer data)
{
    char *path;
    enum { N = 64, STRIDE = 100 };
    struct bc_loop *loop = tu_loop_new();
    struct bc_dev *dev = open_kind(data, 64u << 10, &path);
    struct tu_model m;
    struct wr w[N];

    tu_model_init(&m, 64u << 10, true);
    /* Several rounds at different base offsets, so head and tail sectors differ. */
    static const uint64_t bases[] = { 0, 1, 4000, 4095, 12345 };
    for (unsigned r = 0; r < G_N_ELEMENTS(bases); r++) {
        make_strided(w, N, bases[r], STRIDE, (uint8_t)r);
        submit_all(dev, loop, w, N, &m);
        free_writes(w, N);
        g_autofree char *ctx = g_strdup_printf("strided round %u base %" PRIu64, r, bases[r]);
        g_assert_true(tu_model_verify_dev(&m, dev, loop, ctx));
    }
    struct bc_dev_stats st;
    bc_dev_get_stats(dev, &st);
    g_test_message("rmw %" PRIu64 " blocker waits %" PRIu64, st.rmw, st.blocker_waits);
    g_assert_cmpuint(st.rmw, >, 0);
    g_assert_cmpuint(st.blocker_waits, >, 0);   /* sector-sharing writes did wait */
    tu_model_free(&m);
    check_kind(data, dev, "after the test");
    close_kind(dev, path);
    tu_loop_free(loop);
}

/* Random disjoint ranges over a small disk so most share sectors; many rounds. */
static void random_round(struct bc_dev *dev, struct bc_loop *loop, struct tu_model *m,
                         GRand *rand, uint32_t maxlen)
{
    enum { MAXN = 96 };
    struct wr w[MAXN];
    int n = 0;
    uint64_t pos = (uint64_t)g_rand_int_range(rand, 0, 64);

    /* Walk the disk leaving random gaps (sometimes none): disjoint by construction. */
    while (n < MAXN) {
        uint32_t len = (uint32_t)g_rand_int_range(rand, 1, (gint32)maxlen + 1);
        if (pos + len > m->size)
            break;
        w[n].off = pos;
        w[n].len = len;
        tu_buf_init(&w[n].buf, len, (size_t)g_rand_int_range(rand, 0, 4096));
        tu_fill_random(rand, w[n].buf.p, len);
        n++;
        pos += len + (g_rand_boolean(rand) ? 0 : (uint64_t)g_rand_int_range(rand, 0, 300));
    }
    /* Submit in a shuffled order. */
    for (int i = n - 1; i > 0; i--) {
        int j = g_rand_int_range(rand, 0, i + 1);
        struct wr t = w[i];
        w[i] = w[j];
        w[j] = t;
    }
    submit_all(dev, loop, w, n, m);
    free_writes(w, n);
}

static void test_random_sharing(gconstpointer data)
{
    char *path;
    struct bc_loop *loop = tu_loop_new();
    const uint64_t size = 48u << 10;
    struct bc_dev *dev = open_kind(data, size, &path);
    struct tu_model m;
    GRand *rand = g_rand_new_with_seed(tu_seed(1020));

    tu_model_init(&m, size, true);
    for (int r = 0; r < 60; r++) {
        random_round(dev, loop, &m, rand, r % 3 == 0 ? 5000 : 700);
        g_autofree char *ctx = g_strdup_printf("random sharing round %d", r);
        g_assert_true(tu_model_verify_dev(&m, dev, loop, ctx));
    }
    g_rand_free(rand);
    tu_model_free(&m);
    check_kind(data, dev, "after the test");
    close_kind(dev, path);
    tu_loop_free(loop);
}

/* The same strided writes with serialization off must lose bytes: proof that the tests
 * above can fail.  If this stops losing bytes, the tests above no longer prove anything. */
static void test_unserialized_loses(void)
{
    enum { N = 64, STRIDE = 100 };
    struct bc_loop *loop = tu_loop_new();
    struct bc_dev *dev = tu_open_ram(64u << 10, 4096, 4096, 0);
    struct tu_model m;
    struct wr w[N];
    uint64_t lost = 0;

    tu_model_init(&m, 64u << 10, true);
    bc_dev_set_serialize(dev, false);
    for (unsigned r = 0; r < 5; r++) {
        make_strided(w, N, 1 + r * 1000, STRIDE, (uint8_t)r);
        submit_all(dev, loop, w, N, &m);
        free_writes(w, N);
        uint64_t l = lost_bytes(dev, loop, &m);
        g_test_message("unserialized round %u: %" PRIu64 " bytes lost", r, l);
        lost += l;
        /* Resynchronise device and model for the next round. */
        g_assert_cmpint(tu_pwrite(dev, loop, m.data, m.size, 0), ==, 0);
    }
    if (lost == 0)
        g_error("with bc_dev_set_serialize(false) no byte was lost: this test lost its "
                "power to show that write serialization matters");
    bc_dev_set_serialize(dev, true);
    make_strided(w, N, 7, STRIDE, 9);
    submit_all(dev, loop, w, N, &m);
    free_writes(w, N);
    g_assert_cmpuint(lost_bytes(dev, loop, &m), ==, 0);    /* and back on, it is fixed */
    tu_model_free(&m);
    bc_dev_close(dev);
    tu_loop_free(loop);
}

/* The checking driver catches overlapping writes in flight when serialization is off
 * (proof that the check-driver variants above can fail). */
static void test_checker_power(void)
{
    enum { N = 64, STRIDE = 100 };
    struct bc_loop *loop = tu_loop_new();
    char *path;
    struct bc_dev *dev = open_kind(&kind_check, 64u << 10, &path);
    struct wr w[N];
    struct tu_check_stats st;

    bc_dev_set_serialize(dev, false);
    make_strided(w, N, 1, STRIDE, 0);
    submit_all(dev, loop, w, N, NULL);
    free_writes(w, N);
    tu_check_get(dev, &st);
    g_test_message("unserialized: %" PRIu64 " violations, first: %s", st.violations,
                   st.first_violation);
    if (st.violations == 0)
        g_test_fail_printf("with serialization off the checking driver saw no overlapping "
                           "writes: the check-driver tests lost their power");
    close_kind(dev, path);
    tu_loop_free(loop);
}

/* Aligned, disjoint writes are not serialized against each other. */
static void test_aligned_parallel(void)
{
    enum { N = 32 };
    struct bc_loop *loop = tu_loop_new();
    struct bc_dev *dev = tu_open_ram(1u << 20, 4096, 4096, 0);
    struct tu_model m;
    struct wr w[N];

    tu_model_init(&m, 1u << 20, true);
    for (int i = 0; i < N; i++) {
        w[i].off = (uint64_t)i * 8192;
        w[i].len = 8192;
        tu_buf_init(&w[i].buf, 8192, 0);
        memset(w[i].buf.p, i + 1, 8192);
    }
    submit_all(dev, loop, w, N, &m);
    free_writes(w, N);
    struct bc_dev_stats st;
    bc_dev_get_stats(dev, &st);
    g_test_message("aligned: driver_writes_max %" PRIu64 " bounced %" PRIu64 " rmw %" PRIu64,
                   st.driver_writes_max, st.bounced, st.rmw);
    g_assert_cmpuint(st.driver_writes_max, >=, N);
    g_assert_cmpuint(st.rmw, ==, 0);
    g_assert_cmpuint(st.bounced, ==, 0);        /* aligned memory too: straight through */
    g_assert_true(tu_model_verify_dev(&m, dev, loop, "aligned parallel"));
    tu_model_free(&m);
    bc_dev_close(dev);
    tu_loop_free(loop);
}

/* Overlapping aligned and read-modify-write writes in flight together: the result must be
 * one of the serial orders.  Per 4 KiB sector: an unaligned write of bytes [lo, hi) with
 * value b, and an aligned write of the whole sector with value a, submitted in that order
 * or the other.  Serial results: all a (unaligned first), or a with b in [lo, hi).
 * Anything else (old bytes outside [lo, hi)) means the RMW wrote back a stale sector over
 * the aligned write.  Returns the number of sectors in neither serial state. */
static unsigned aligned_vs_rmw_round(struct bc_dev *dev, struct bc_loop *loop, GRand *rand,
                                     bool rmw_first, uint8_t round)
{
    enum { NS = 16, S = 4096 };
    struct wr w[2 * NS];
    uint64_t lo[NS], hi[NS];
    unsigned pending = 0, bad = 0;

    /* Known old contents: 0x00 everywhere. */
    uint8_t *zero = g_malloc0(NS * S);
    g_assert_cmpint(tu_pwrite(dev, loop, zero, NS * S, 0), ==, 0);
    g_free(zero);
    for (int i = 0; i < NS; i++) {
        lo[i] = (uint64_t)g_rand_int_range(rand, 1, S - 200);
        hi[i] = lo[i] + (uint64_t)g_rand_int_range(rand, 1, 150);
        struct wr *u = &w[2 * i + (rmw_first ? 0 : 1)], *a = &w[2 * i + (rmw_first ? 1 : 0)];
        u->off = (uint64_t)i * S + lo[i];
        u->len = (uint32_t)(hi[i] - lo[i]);
        tu_buf_init(&u->buf, u->len, 0);
        memset(u->buf.p, 0xB0 + round % 16, u->len);
        a->off = (uint64_t)i * S;
        a->len = S;
        tu_buf_init(&a->buf, S, 0);
        memset(a->buf.p, 0xA0 + round % 16, S);
    }
    for (int i = 0; i < 2 * NS; i++) {
        w[i].iov = (struct iovec){ .iov_base = w[i].buf.p, .iov_len = w[i].len };
        tu_io_start(&w[i].io, &pending);
        bc_dev_writev(dev, loop, &w[i].iov, 1, w[i].off, 0, tu_io_cb, &w[i].io);
    }
    tu_run_until_done(loop, &pending);
    for (int i = 0; i < 2 * NS; i++)
        g_assert_cmpint(w[i].io.res, ==, 0);
    free_writes(w, 2 * NS);

    uint8_t *got = g_malloc(NS * S);
    g_assert_cmpint(tu_pread(dev, loop, got, NS * S, 0), ==, 0);
    for (int i = 0; i < NS; i++) {
        const uint8_t a = 0xA0 + round % 16, b = 0xB0 + round % 16;
        bool all_a = true, a_with_b = true;
        for (uint64_t j = 0; j < S; j++) {
            uint8_t v = got[(uint64_t)i * S + j];
            all_a &= v == a;
            a_with_b &= v == ((j >= lo[i] && j < hi[i]) ? b : a);
        }
        if (!all_a && !a_with_b) {
            if (!bad)
                g_test_message("sector %d (unaligned [%" PRIu64 ", %" PRIu64 ") %s): neither "
                               "serial order; byte 0 is 0x%02x", i, lo[i], hi[i],
                               rmw_first ? "submitted first" : "submitted second",
                               got[(uint64_t)i * S]);
            bad++;
        }
    }
    g_free(got);
    return bad;
}

static void test_aligned_vs_rmw(void)
{
    struct bc_loop *loop = tu_loop_new();
    struct bc_dev *dev = tu_open_ram(1u << 20, 4096, 4096, 0);
    GRand *rand = g_rand_new_with_seed(tu_seed(1021));
    unsigned bad = 0, lost_unserialized = 0;

    for (int r = 0; r < 20; r++)
        bad += aligned_vs_rmw_round(dev, loop, rand, r % 2 == 0, (uint8_t)r);
    g_assert_cmpuint(bad, ==, 0);

    /* Power check: without serialization the RMW-first order loses the aligned write. */
    bc_dev_set_serialize(dev, false);
    for (int r = 0; r < 4; r++)
        lost_unserialized += aligned_vs_rmw_round(dev, loop, rand, true, (uint8_t)r);
    bc_dev_set_serialize(dev, true);
    g_test_message("unserialized: %u sectors in neither serial state", lost_unserialized);
    if (lost_unserialized == 0)
        g_test_fail_printf("with serialization off no sector ended in a non-serial state: "
                           "this test lost its power to catch a weak/strong blocker bug");
    g_rand_free(rand);
    bc_dev_close(dev);
    tu_loop_free(loop);
}

/* ---- several threads, one loop each, one device ----------------------------------------------- */

enum { T_THREADS = 4, T_SLOTS = 128, T_PER = T_SLOTS / T_THREADS };

struct thr {
    struct bc_dev *dev;
    int index;              /* writes the slots with slot % T_THREADS == index */
    unsigned slot_len;
    int rounds;             /* at least this many rounds... */
    gint64 until;           /* ...and on until this monotonic time */
    uint8_t final[T_PER];   /* final value per slot written by this thread */
};

static gpointer writer_thread(gpointer p)
{
    struct thr *t = p;
    struct bc_loop *loop = tu_loop_new();
    struct wr w[T_PER];

    for (int r = 0; r < t->rounds || g_get_monotonic_time() < t->until; r++) {
        for (int i = 0; i < T_PER; i++) {
            int slot = T_THREADS * i + t->index;
            w[i].off = 3 + (uint64_t)slot * t->slot_len;
            w[i].len = t->slot_len;
            tu_buf_init(&w[i].buf, t->slot_len, (size_t)i);
            uint8_t v = (uint8_t)(r * 3 + slot + 1);
            memset(w[i].buf.p, v, t->slot_len);
            t->final[i] = v;
        }
        submit_all(t->dev, loop, w, T_PER, NULL);
        free_writes(w, T_PER);
    }
    tu_loop_free(loop);
    return NULL;
}

/* T_THREADS threads, each with its own loop, write interleaved slots (100 bytes, or 1 byte
 * so that all of them hit one sector) of one device: neighbouring slots belong to
 * different threads, so every sector is shared across loops and the blockers are taken
 * and released from several threads at once. */
static void test_threads(gconstpointer data)
{
    char *path;
    struct bc_loop *loop = tu_loop_new();
    const struct devkind *k = data;
    struct bc_dev *dev = open_kind(k, 64u << 10, &path);
    struct thr t[T_THREADS];
    GThread *th[T_THREADS];

    /* The races this can catch (a blocker granted twice, a lost wake-up) need luck:
     * give them a second of hammering. */
    gint64 until = g_get_monotonic_time() + G_USEC_PER_SEC;
    for (int i = 0; i < T_THREADS; i++) {
        t[i] = (struct thr){ .dev = dev, .index = i, .slot_len = k->slot, .rounds = 50,
                              .until = until };
        th[i] = g_thread_new("writer", writer_thread, &t[i]);
    }
    for (int i = 0; i < T_THREADS; i++)
        g_thread_join(th[i]);

    uint8_t *buf = g_malloc(64u << 10);
    g_assert_cmpint(tu_pread(dev, loop, buf, 64u << 10, 0), ==, 0);
    uint64_t bad = 0;
    for (int slot = 0; slot < T_SLOTS; slot++) {
        uint8_t want = t[slot % T_THREADS].final[slot / T_THREADS];
        for (unsigned b = 0; b < k->slot; b++) {
            uint64_t off = 3 + (uint64_t)slot * k->slot + b;
            if (buf[off] != want) {
                if (!bad)
                    g_test_message("threads: first lost byte at %" PRIu64
                                   " (slot %d): got 0x%02x want 0x%02x", off, slot, buf[off],
                                   want);
                bad++;
            }
        }
    }
    g_free(buf);
    struct bc_dev_stats st;
    bc_dev_get_stats(dev, &st);
    g_test_message("threads: blocker waits %" PRIu64 ", rmw %" PRIu64, st.blocker_waits,
                   st.rmw);
    g_assert_cmpuint(bad, ==, 0);
    check_kind(data, dev, "after the test");
    close_kind(dev, path);
    tu_loop_free(loop);
}

/* A blocker whose grant, once it waited, decrements *pending. */
struct tblk {
    struct bc_blocker b;
    unsigned *pending;
};

static void tblk_granted(struct bc_task *task)
{
    --*bc_container_of(task, struct tblk, b.task)->pending;
}

static bool tblk_acquire(struct bc_blocker_list *l, struct tblk *t, uint64_t start,
                         uint64_t end, bool strong, unsigned *pending, struct bc_loop *loop)
{
    *t = (struct tblk){ .b = { .start = start, .end = end, .strong = strong,
                               .task.fn = tblk_granted }, .pending = pending };
    return bc_blocker_acquire(l, &t->b, loop);
}

/* bc_blocker_try_acquire grants only when nothing granted or waiting conflicts, and a
 * refusal queues nothing: the waiter is granted as soon as the holder goes. */
static void test_blocker_try(void)
{
    struct bc_loop *loop = bc_loop_new(0, 16, NULL);
    struct bc_blocker_list l;
    struct tblk held, waiting;
    struct bc_blocker t1 = { .start = 2, .end = 3, .strong = true };
    struct bc_blocker t2 = { .start = 2, .end = 3, .strong = false };
    struct bc_blocker t3 = { .start = 3, .end = 4, .strong = true };
    unsigned pending = 1;

    g_assert_nonnull(loop);
    bc_blockers_init(&l);
    g_assert_true(tblk_acquire(&l, &held, 0, 2, true, &pending, loop));
    g_assert_false(tblk_acquire(&l, &waiting, 1, 3, false, &pending, loop));
    g_assert_false(bc_blocker_try_acquire(&l, &t1));   /* conflicts with the waiter only */
    t1.start = 0;
    t1.end = 1;
    g_assert_false(bc_blocker_try_acquire(&l, &t1));   /* with the holder */
    g_assert_true(bc_blocker_try_acquire(&l, &t2));    /* weak beside a weak waiter */
    g_assert_true(bc_blocker_try_acquire(&l, &t3));    /* touches neither */
    bc_blocker_release(&l, &held.b);
    g_assert_cmpint(bc_loop_wait(loop, &pending), ==, 0);
    g_assert_true(waiting.b.granted);
    bc_blocker_release(&l, &waiting.b);
    bc_blocker_release(&l, &t2);
    bc_blocker_release(&l, &t3);
    bc_blockers_destroy(&l);
    bc_loop_free(loop);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv, 150);
    g_test_add_data_func("/concurrency/strided-100", &kind_ram, test_strided);
    g_test_add_data_func("/concurrency/random-sharing", &kind_ram, test_random_sharing);
    g_test_add_func("/concurrency/unserialized-loses-bytes", test_unserialized_loses);
    g_test_add_func("/concurrency/aligned-parallel", test_aligned_parallel);
    g_test_add_func("/concurrency/aligned-vs-rmw", test_aligned_vs_rmw);
    g_test_add_func("/concurrency/blocker-try", test_blocker_try);
    g_test_add_data_func("/concurrency/threads-one-dev", &kind_ram, test_threads);
    g_test_add_data_func("/concurrency/threads-one-sector", &kind_ram_1byte, test_threads);
    g_test_add_data_func("/concurrency/checked/strided-100", &kind_check, test_strided);
    g_test_add_data_func("/concurrency/checked/random-sharing", &kind_check,
                         test_random_sharing);
    g_test_add_data_func("/concurrency/checked/threads-one-dev", &kind_check, test_threads);
    g_test_add_func("/concurrency/checked/power", test_checker_power);
    g_test_add_data_func("/concurrency/file/strided-100", &kind_file, test_strided);
    g_test_add_data_func("/concurrency/file/random-sharing", &kind_file, test_random_sharing);
    g_test_add_data_func("/concurrency/file/threads-one-dev", &kind_file, test_threads);
    return g_test_run();
}
