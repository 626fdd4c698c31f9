/* SPDX-License-Identifier: MIT */
/* Error paths through the fault driver: a failed RMW read changes nothing and returns the
 * error, write faults, fault-after-N, and the engine keeps serving everything else. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include "t/unit/test-util.h"

#define A 4096u
#define SIZE (1u << 20)

struct fx {
    struct bc_loop *loop;
    struct bc_dev *dev;
    void *fs;
    struct tu_model m;
};

static void fx_setup(struct fx *f, gconstpointer data)
{
    f->loop = tu_loop_new();
    f->dev = tu_open_fault(SIZE, A, A, 0);
    g_assert_cmpstr(bc_dev_driver_name(f->dev), ==, "fault");
    f->fs = bc_dev_driver_state(f->dev);
    g_assert_nonnull(f->fs);
    /* Known, distinct contents everywhere. */
    GRand *rand = g_rand_new_with_seed(1040);
    uint8_t *init = bc_buf_alloc(SIZE);
    tu_fill_random(rand, init, SIZE);
    g_assert_cmpint(tu_pwrite(f->dev, f->loop, init, SIZE, 0), ==, 0);
    tu_model_init(&f->m, SIZE, true);
    tu_model_write(&f->m, 0, init, SIZE);
    bc_buf_free(init);
    g_rand_free(rand);
}

static void fx_teardown(struct fx *f, gconstpointer data)
{
    bc_fault_clear(f->fs);
    struct bc_dev_stats st;
    bc_dev_get_stats(f->dev, &st);
    g_assert_cmpuint(st.driver_inflight, ==, 0);
    size_t in_use, peak;
    bc_bounce_usage(&in_use, &peak);
    g_assert_cmpuint(in_use, ==, 0);    /* error paths return their bounce buffers */
    tu_model_free(&f->m);
    bc_dev_close(f->dev);
    tu_loop_free(f->loop);
}

static int write_fill(struct fx *f, uint64_t off, uint64_t len, uint8_t v, bool apply)
{
    uint8_t *b = g_malloc(len ? len : 1);
    memset(b, v, len);
    int r = tu_pwrite(f->dev, f->loop, b, len, off);
    if (r == 0 && apply)
        tu_model_write(&f->m, off, b, len);
    g_free(b);
    return r;
}

static bool verify(struct fx *f, const char *ctx)
{
    return tu_model_verify_dev(&f->m, f->dev, f->loop, ctx);
}

/* EIO on the read half of an RMW: -EIO, target bytes and neighbours unchanged. */
static void test_rmw_read_eio_head(struct fx *f, gconstpointer data)
{
    const uint64_t sec = 4 * A;
    bc_fault_set(f->fs, BC_OP_READ, sec, A, EIO, -1);
    /* Entirely inside one sector: head == tail sector. */
    g_assert_cmpint(write_fill(f, sec + 1000, 100, 0x11, false), ==, -EIO);
    /* Head sector unaligned, rest aligned: only the head needs the failing read. */
    g_assert_cmpint(write_fill(f, sec + 100, 3 * A - 100, 0x22, false), ==, -EIO);
    /* Starting in the sector before and ending inside the faulty one (its tail read). */
    g_assert_cmpint(write_fill(f, sec - 50, 100, 0x33, false), ==, -EIO);
    /* A long write whose tail sector read fails: nothing of it may land either. */
    g_assert_cmpint(write_fill(f, sec - 3 * A, 3 * A + 7, 0x44, false), ==, -EIO);
    bc_fault_clear(f->fs);
    g_assert_true(verify(f, "after RMW writes whose read failed"));
}

/* The engine keeps serving: other writes and reads succeed while the fault is armed, and
 * the same write succeeds once the fault is cleared. */
static void test_keeps_serving(struct fx *f, gconstpointer data)
{
    const uint64_t sec = 10 * A;
    bc_fault_set(f->fs, BC_OP_READ, sec, A, EIO, -1);
    g_assert_cmpint(write_fill(f, sec + 5, 10, 0x55, false), ==, -EIO);
    /* Elsewhere: unaligned (RMW of other sectors) and aligned writes, reads. */
    g_assert_cmpint(write_fill(f, sec + A + 5, 10, 0x66, true), ==, 0);
    g_assert_cmpint(write_fill(f, sec - A + 1, A - 2, 0x67, true), ==, 0);
    g_assert_cmpint(write_fill(f, 2 * A, A, 0x77, true), ==, 0);
    uint8_t buf[300];
    g_assert_cmpint(tu_pread(f->dev, f->loop, buf, sizeof buf, sec + A + 1), ==, 0);
    g_assert_true(tu_model_check(&f->m, sec + A + 1, buf, sizeof buf, "read next to fault"));
    /* A read of the faulty sector itself fails too, aligned or not. */
    g_assert_cmpint(tu_pread(f->dev, f->loop, buf, 10, sec + 7), ==, -EIO);
    /* An aligned write of the faulty sector needs no read: it succeeds. */
    g_assert_cmpint(write_fill(f, sec, A, 0x78, true), ==, 0);
    bc_fault_clear(f->fs);
    g_assert_cmpint(write_fill(f, sec + 5, 10, 0x55, true), ==, 0);
    g_assert_true(verify(f, "after recovery"));
}

/* A failing RMW in a concurrent batch: the others in the batch (including one that shares
 * the faulty sector and so waits behind it) all complete; nothing hangs. */
static void test_concurrent_with_failure(struct fx *f, gconstpointer data)
{
    enum { N = 24 };
    const uint64_t sec = 20 * A;
    uint8_t bufs[N][200];
    struct iovec iov[N];
    struct tu_io io[N];
    uint64_t off[N];
    unsigned pending = 0;

    bc_fault_set(f->fs, BC_OP_READ, sec, A, EIO, -1);
    for (int i = 0; i < N; i++) {
        /* 0: fails; 1: same sector, other bytes (fails too, but after waiting); rest:
         * 200 bytes at 300-byte strides over the next sectors. */
        off[i] = i == 0 ? sec + 10 : i == 1 ? sec + 500 : sec + A + (uint64_t)i * 300;
        memset(bufs[i], 0x80 + i, sizeof bufs[i]);
        iov[i] = (struct iovec){ .iov_base = bufs[i], .iov_len = sizeof bufs[i] };
        tu_io_start(&io[i], &pending);
        bc_dev_writev(f->dev, f->loop, &iov[i], 1, off[i], 0, tu_io_cb, &io[i]);
    }
    tu_run_until_done(f->loop, &pending);
    g_assert_cmpint(io[0].res, ==, -EIO);
    g_assert_cmpint(io[1].res, ==, -EIO);
    for (int i = 2; i < N; i++) {
        g_assert_cmpint(io[i].res, ==, 0);
        tu_model_write(&f->m, off[i], bufs[i], sizeof bufs[i]);
    }
    bc_fault_clear(f->fs);
    g_assert_true(verify(f, "after a batch with failures"));
    /* Retry the two that failed: now fine. */
    g_assert_cmpint(write_fill(f, sec + 10, 200, 0x80, true), ==, 0);
    g_assert_cmpint(write_fill(f, sec + 500, 200, 0x81, true), ==, 0);
    g_assert_true(verify(f, "after retry"));
}

/* Write faults: aligned and RMW writes return the error; neighbours are unchanged. */
static void test_write_fault(struct fx *f, gconstpointer data)
{
    const uint64_t sec = 30 * A;
    bc_fault_set(f->fs, BC_OP_WRITE, sec, A, EIO, -1);
    g_assert_cmpint(write_fill(f, sec, A, 0x90, false), ==, -EIO);
    g_assert_cmpint(write_fill(f, sec + 100, 50, 0x91, false), ==, -EIO);
    g_assert_cmpint(write_fill(f, sec - 100, 200, 0x92, false), ==, -EIO);
    /* The target bytes of a failed write are undefined; forget only those. */
    tu_model_forget(&f->m, sec, A);
    tu_model_forget(&f->m, sec - 100, 100);
    g_assert_cmpint(write_fill(f, sec + A, A, 0x93, true), ==, 0);
    g_assert_cmpint(write_fill(f, sec - A, 100, 0x94, true), ==, 0);
    /* Reads are unaffected by a write rule. */
    uint8_t buf[A];
    g_assert_cmpint(tu_pread(f->dev, f->loop, buf, A, sec), ==, 0);
    /* Write-zeroes falls back to or uses writes: it reports the error too. */
    int zr = tu_zero(f->dev, f->loop, sec + 10, 20, 0);
    g_assert_cmpint(zr, ==, -EIO);
    bc_fault_clear(f->fs);
    g_assert_true(verify(f, "after write faults"));
    g_assert_cmpint(write_fill(f, sec, A, 0x95, true), ==, 0);
    g_assert_true(verify(f, "after write fault cleared"));
}

/* Errors other than EIO travel unchanged. */
static void test_other_errno(struct fx *f, gconstpointer data)
{
    bc_fault_set(f->fs, BC_OP_READ, 40 * A, A, ENOSPC, -1);
    uint8_t buf[100];
    g_assert_cmpint(tu_pread(f->dev, f->loop, buf, sizeof buf, 40 * A + 1), ==, -ENOSPC);
    bc_fault_clear(f->fs);
    bc_fault_set(f->fs, BC_OP_WRITE, 40 * A, A, EROFS, -1);
    g_assert_cmpint(write_fill(f, 40 * A, A, 1, false), ==, -EROFS);
    bc_fault_clear(f->fs);
    tu_model_forget(&f->m, 40 * A, A);
    g_assert_true(verify(f, "after other errnos"));
}

/* Fault after N: the first N driver requests of the kind succeed, then all fail. */
static void test_after_n(struct fx *f, gconstpointer data)
{
    bc_fault_set(f->fs, BC_OP_WRITE, 0, UINT64_MAX, EIO, 3);
    for (int i = 0; i < 3; i++)
        g_assert_cmpint(write_fill(f, (uint64_t)(50 + i) * A, A, (uint8_t)(0xA0 + i), true),
                        ==, 0);
    g_assert_cmpint(write_fill(f, 53 * A, A, 0xA3, false), ==, -EIO);
    g_assert_cmpint(write_fill(f, 54 * A, A, 0xA4, false), ==, -EIO);
    tu_model_forget(&f->m, 53 * A, 2 * A);
    /* Reads still work. */
    g_assert_true(verify(f, "reads during write fault-after-3"));
    bc_fault_clear(f->fs);

    bc_fault_set(f->fs, BC_OP_READ, 0, UINT64_MAX, EIO, 2);
    uint8_t buf[A];
    g_assert_cmpint(tu_pread(f->dev, f->loop, buf, A, 0), ==, 0);
    g_assert_cmpint(tu_pread(f->dev, f->loop, buf, A, A), ==, 0);
    g_assert_cmpint(tu_pread(f->dev, f->loop, buf, A, 2 * A), ==, -EIO);
    /* An RMW write now fails in its read half and leaves the disk alone. */
    g_assert_cmpint(write_fill(f, 60 * A + 1, 10, 0xB0, false), ==, -EIO);
    bc_fault_clear(f->fs);
    g_assert_true(verify(f, "after read fault-after-2"));
}

/* Many failing and succeeding requests interleaved: nothing leaks, nothing hangs. */
static void test_stress(struct fx *f, gconstpointer data)
{
    GRand *rand = g_rand_new_with_seed(tu_seed(1041));
    enum { N = 32 };
    for (int round = 0; round < 40; round++) {
        uint64_t fsec = (uint64_t)g_rand_int_range(rand, 0, SIZE / A) * A;
        bc_fault_set(f->fs, g_rand_boolean(rand) ? BC_OP_READ : BC_OP_WRITE, fsec, A, EIO, -1);
        struct tu_io io[N];
        struct iovec iov[N];
        uint8_t *b[N];
        uint64_t off[N], len[N];
        bool rd[N];
        unsigned pending = 0;
        uint64_t pos = (uint64_t)g_rand_int_range(rand, 0, 4096);
        int n = 0;
        for (; n < N; n++) {
            len[n] = (uint64_t)g_rand_int_range(rand, 1, 3 * A);
            if (pos + len[n] > SIZE)
                break;
            off[n] = pos;
            pos += len[n] + (uint64_t)g_rand_int_range(rand, 0, 2 * A);
            rd[n] = g_rand_int_range(rand, 0, 3) == 0;
            b[n] = g_malloc(len[n]);
            memset(b[n], rd[n] ? 0xEE : (int)(round + n), len[n]);
            iov[n] = (struct iovec){ .iov_base = b[n], .iov_len = len[n] };
            tu_io_start(&io[n], &pending);
            if (rd[n])
                bc_dev_readv(f->dev, f->loop, &iov[n], 1, off[n], tu_io_cb, &io[n]);
            else
                bc_dev_writev(f->dev, f->loop, &iov[n], 1, off[n], 0, tu_io_cb, &io[n]);
        }
        tu_run_until_done(f->loop, &pending);
        for (int i = 0; i < n; i++) {
            g_assert_true(io[i].res == 0 || io[i].res == -EIO);
            /* Only requests touching the faulty sector (or its RMW) may fail. */
            uint64_t lo = off[i] / A * A, hi = (off[i] + len[i] + A - 1) / A * A;
            if (io[i].res == -EIO && !(fsec >= lo && fsec < hi))
                g_error("round %d: request [%" PRIu64 ", +%" PRIu64 ") failed but does not "
                        "touch faulty sector %" PRIu64, round, off[i], len[i], fsec);
            if (rd[i] && io[i].res == 0) {
                g_autofree char *ctx = g_strdup_printf("stress round %d read %d", round, i);
                g_assert_true(tu_model_check(&f->m, off[i], b[i], len[i], ctx));
            } else if (!rd[i]) {
                if (io[i].res == 0)
                    tu_model_write(&f->m, off[i], b[i], len[i]);
                else
                    tu_model_forget(&f->m, off[i], len[i]);
            }
            g_free(b[i]);
        }
        bc_fault_clear(f->fs);
    }
    g_assert_true(verify(f, "after stress"));
    g_rand_free(rand);
}

/* A write bigger than one bounce chunk (here max-transfer 16 KiB, so chunks of 16 KiB)
 * whose tail RMW read fails: -EIO, and none of it may have landed -- the rule is
 * that a failed RMW read leaves the target bytes and their neighbours unchanged, and the
 * engine's design notes say the head and tail blocks are read first. */
static void test_rmw_tail_eio_multichunk(void)
{
    const uint64_t size = 1u << 20, mt = 16u << 10;
    struct bc_loop *loop = tu_loop_new();
    struct bc_dev *dev = tu_open_fault(size, A, A, mt);
    void *fs = bc_dev_driver_state(dev);
    struct tu_model m;
    GRand *rand = g_rand_new_with_seed(1042);

    tu_model_init(&m, size, true);
    uint8_t *init = bc_buf_alloc(size);
    tu_fill_random(rand, init, size);
    g_assert_cmpint(tu_pwrite(dev, loop, init, size, 0), ==, 0);
    tu_model_write(&m, 0, init, size);
    bc_buf_free(init);

    /* [off, off+len) spans 25 sectors; its tail sector starts at tail. */
    const uint64_t off = 8 * A + 100, len = 24 * A;
    const uint64_t tail = (off + len) / A * A;
    uint8_t *b = g_malloc(len);
    memset(b, 0xC7, len);

    bc_fault_set(fs, BC_OP_READ, tail, A, EIO, -1);
    int r = tu_pwrite(dev, loop, b, len, off);
    bc_fault_clear(fs);
    g_assert_cmpint(r, ==, -EIO);
    if (!tu_model_verify_dev(&m, dev, loop, "multi-chunk write whose tail RMW read failed"))
        g_test_fail_printf("a %" PRIu64 "-byte write at %" PRIu64 " (chunks of %" PRIu64
                           ") whose tail-sector read at %" PRIu64 " failed with EIO left "
                           "some of its bytes written", len, off, mt, tail);
    /* Whatever happened to the target bytes, the neighbours must be intact. */
    tu_model_forget(&m, off, len);
    g_assert_true(tu_model_verify_dev(&m, dev, loop, "neighbours of the failed write"));
    uint8_t *now = g_malloc(len);
    g_assert_cmpint(tu_pread(dev, loop, now, len, off), ==, 0);
    tu_model_write(&m, off, now, len);
    g_free(now);

    /* The head read failing is the easy case: nothing has been written yet. */
    bc_fault_set(fs, BC_OP_READ, off / A * A, A, EIO, -1);
    g_assert_cmpint(tu_pwrite(dev, loop, b, len, off + 2 * A), ==, 0);   /* elsewhere: ok */
    tu_model_write(&m, off + 2 * A, b, len);
    g_assert_cmpint(tu_pwrite(dev, loop, b, len, off), ==, -EIO);
    bc_fault_clear(fs);
    g_assert_true(tu_model_verify_dev(&m, dev, loop, "multi-chunk write whose head read failed"));
    g_free(b);
    g_rand_free(rand);
    tu_model_free(&m);
    bc_dev_close(dev);
    tu_loop_free(loop);
}

/* Rules set by open keys: fault-read-offset/fault-len/fault-errno, and fault-after. */
static void test_open_keys(void)
{
    struct bc_loop *loop = tu_loop_new();
    uint8_t buf[A];

    struct bc_dev *dev = tu_open(&bc_drv_fault, NULL, false, false, "size", "1M", "align",
                                 "4096", "fault-read-offset", "8192", "fault-len", "4096",
                                 "fault-errno", "EIO", NULL);
    g_assert_cmpint(tu_pread(dev, loop, buf, A, 0), ==, 0);
    g_assert_cmpint(tu_pread(dev, loop, buf, A, 2 * A), ==, -EIO);
    g_assert_cmpint(tu_pread(dev, loop, buf, 10, 2 * A + 5), ==, -EIO);
    g_assert_cmpint(tu_pwrite(dev, loop, buf, A, 2 * A), ==, 0);        /* writes fine */
    g_assert_cmpint(tu_pwrite(dev, loop, buf, 10, 2 * A + 5), ==, -EIO); /* RMW read */
    bc_dev_close(dev);

    dev = tu_open(&bc_drv_fault, NULL, false, false, "size", "1M", "align", "4096",
                  "fault-after", "2", NULL);
    g_assert_cmpint(tu_pread(dev, loop, buf, A, 0), ==, 0);
    g_assert_cmpint(tu_pwrite(dev, loop, buf, A, 0), ==, 0);
    g_assert_cmpint(tu_pread(dev, loop, buf, A, 0), ==, -EIO);
    g_assert_cmpint(tu_pwrite(dev, loop, buf, A, 0), ==, -EIO);
    g_assert_cmpint(tu_flush(dev, loop), ==, 0);     /* flush never fails in this driver */
    bc_dev_close(dev);
    tu_loop_free(loop);
}

/* With a path: the file is the medium behind a volatile cache; a flush writes back, a
 * close or power cut without one loses the writes, and the cut fails everything after. */
static void test_power_cut(void)
{
    struct bc_loop *loop = tu_loop_new();
    g_autofree char *dir = g_dir_make_tmp("bc-faults-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "medium", NULL);
    uint8_t *a = bc_buf_alloc(A), *b = bc_buf_alloc(A), *got = bc_buf_alloc(A);

    memset(a, 0xaa, A);
    memset(b, 0xbb, A);
    g_assert_true(g_file_set_contents(path, "", 0, NULL));
    g_assert_cmpint(truncate(path, 64 * A), ==, 0);
    struct bc_dev *dev = tu_open(&bc_drv_fault, path, false, false, "align", "4096", NULL);
    g_assert_cmpuint(bc_dev_props(dev)->size, ==, 64 * A);
    g_assert_cmpint(tu_pwrite(dev, loop, a, A, 0), ==, 0);
    g_assert_cmpint(tu_flush(dev, loop), ==, 0);
    g_assert_cmpint(tu_pwrite(dev, loop, b, A, A), ==, 0);
    g_assert_cmpint(tu_pread(dev, loop, got, A, A), ==, 0);     /* the cache serves reads */
    g_assert_cmpmem(got, A, b, A);
    bc_dev_close(dev);                                          /* no flush: b is lost */

    dev = tu_open(&bc_drv_fault, path, false, false, "align", "4096", "fault-power-cut", "2",
                  NULL);
    g_assert_cmpint(tu_pread(dev, loop, got, A, 0), ==, 0);
    g_assert_cmpmem(got, A, a, A);
    g_assert_cmpint(tu_pread(dev, loop, got, A, A), ==, 0);
    g_assert_cmpint(got[0], ==, 0);
    g_assert_cmpint(tu_pwrite(dev, loop, b, A, 2 * A), ==, 0);
    g_assert_cmpint(tu_flush(dev, loop), ==, 0);
    g_assert_cmpint(tu_pwrite(dev, loop, b, A, 3 * A), ==, 0);
    g_assert_cmpint(tu_flush(dev, loop), ==, -EIO);             /* the second flush: cut */
    g_assert_cmpint(tu_pread(dev, loop, got, A, 0), ==, -EIO);
    g_assert_cmpint(tu_pwrite(dev, loop, b, A, 0), ==, -EIO);
    bc_dev_close(dev);

    /* What reached the medium: a and the flushed b; the unflushed b did not (writeback 0). */
    g_autofree char *data = NULL;
    gsize len = 0;
    g_assert_true(g_file_get_contents(path, &data, &len, NULL));
    g_assert_cmpuint(len, ==, 64 * A);
    g_assert_cmpmem(data, A, a, A);
    g_assert_cmpint(data[A], ==, 0);
    g_assert_cmpmem(data + 2 * A, A, b, A);
    g_assert_cmpint(data[3 * A], ==, 0);

    g_autoptr(GError) err = NULL;
    g_assert_null(tu_try_open(&bc_drv_fault, NULL, false, false, &err, "size", "1M",
                              "fault-power-cut", "1", NULL));
    g_assert_nonnull(strstr(err->message, "need a path"));
    unlink(path);
    rmdir(dir);
    bc_buf_free(a);
    bc_buf_free(b);
    bc_buf_free(got);
    tu_loop_free(loop);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv, 150);
#define ADD(path, fn) tu_add_isolated_fixture(path, struct fx, NULL, fx_setup, fn, fx_teardown)
    ADD("/faults/rmw-read-eio", test_rmw_read_eio_head);
    ADD("/faults/keeps-serving", test_keeps_serving);
    ADD("/faults/concurrent-with-failure", test_concurrent_with_failure);
    ADD("/faults/write-fault", test_write_fault);
    ADD("/faults/other-errno", test_other_errno);
    ADD("/faults/after-n", test_after_n);
    ADD("/faults/stress", test_stress);
    tu_add_isolated("/faults/rmw-tail-eio-multichunk", test_rmw_tail_eio_multichunk);
    tu_add_isolated("/faults/open-keys", test_open_keys);
    tu_add_isolated("/faults/power-cut", test_power_cut);
    return g_test_run();
}
