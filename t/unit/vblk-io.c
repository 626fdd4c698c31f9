/* SPDX-License-Identifier: MIT */
/* Workloads for the virtio-blk drivers through bc_dev_*, run by t/9*-virtio-*.t against a
 * real back end: random odd-sized vectored I/O from several loops against a model, then the
 * device contents dumped for the host to compare with the image; death and error modes. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blockcore/blockcore.h"

/* Options; set once in main. */
static const char *opt_driver = "virtio-blk-vhost-user";
static const char *opt_path, *opt_image, *opt_out, *opt_mode = "io", *opt_queues;
static const char *opt_qsize;
static unsigned opt_blk = 512, opt_loops = 2, opt_ops = 300;
static bool opt_sha256;
static unsigned opt_timeout = 120;
static pid_t opt_kill_pid;
static uint64_t opt_eio_off;
static guint32 opt_seed = 1;

static int failures;   /* atomic */

#define FAIL(...)                                                                          \
    do {                                                                                   \
        printf("# FAIL: " __VA_ARGS__);                                                    \
        printf("\n");                                                                      \
        __atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);                                \
    } while (0)

static void watchdog(int sig)
{
    static const char msg[] = "# FAIL: watchdog: a request never completed\n";
    ssize_t n = write(STDOUT_FILENO, msg, sizeof msg - 1);
    (void)n;
    _exit(3);
}

static struct bc_dev *open_dev(bool read_only, GError **errp)
{
    g_autoptr(GHashTable) opts = g_hash_table_new(g_str_hash, g_str_equal);
    const struct bc_driver *drv = bc_driver_find(opt_driver);

    if (!drv) {
        g_set_error(errp, BC_ERROR, ENOENT, "no driver %s (have: %s)", opt_driver,
                    bc_driver_names());
        return NULL;
    }
    if (opt_queues)
        g_hash_table_insert(opts, "num-queues", (char *)opt_queues);
    if (opt_qsize)
        g_hash_table_insert(opts, "queue-size", (char *)opt_qsize);
    struct bc_open_args args = {
        .what = "test", .path = opt_path, .read_only = read_only, .opts = opts,
    };
    return bc_dev_open(drv, &args, errp);
}

/* ---- synchronous helpers ----------------------------------------------------------- */

struct io {
    int res;
    unsigned *pending;
};

static void io_cb(void *opaque, int res)
{
    struct io *io = opaque;
    io->res = res;
    (*io->pending)--;
}

static void run(struct bc_loop *loop, unsigned *pending)
{
    int r = bc_loop_wait(loop, pending);
    if (r < 0) {
        FAIL("bc_loop_wait: %s", g_strerror(-r));
        exit(1);
    }
}

static int sync_io(struct bc_dev *dev, struct bc_loop *loop, int op, void *buf, uint64_t off,
                   uint64_t len)
{
    unsigned pending = 1;
    struct io io = { .res = 1, .pending = &pending };
    struct iovec iov = { buf, len };

    switch (op) {
    case 'r': bc_dev_readv(dev, loop, &iov, 1, off, io_cb, &io); break;
    case 'w': bc_dev_writev(dev, loop, &iov, 1, off, 0, io_cb, &io); break;
    case 'f': bc_dev_flush(dev, loop, io_cb, &io); break;
    default: g_assert_not_reached();
    }
    if (!pending)
        FAIL("callback ran inside the starting call");
    run(loop, &pending);
    return io.res;
}

/* ---- the model --------------------------------------------------------------------- */

static uint64_t dev_size;
static uint8_t *model;       /* what the device must hold */
static uint8_t *known;       /* 0 after a discard until read back */

static bool check(const uint8_t *got, uint64_t off, uint64_t len, const char *ctx)
{
    for (uint64_t i = 0; i < len; i++) {
        uint64_t o = off + i;
        if (known[o] && got[i] != model[o]) {
            FAIL("%s: byte %" PRIu64 " is %#x, want %#x", ctx, o, got[i], model[o]);
            return false;
        }
        if (!known[o]) {
            model[o] = got[i];  /* learn what a discard left */
            known[o] = 1;
        }
    }
    return true;
}

/* ---- random I/O from one loop over [lo, hi) ---------------------------------------- */

struct worker {
    pthread_t tid;
    unsigned index;
    uint64_t lo, hi;
    unsigned nops;
    struct bc_dev *dev;
};

enum { K_READ, K_WRITE, K_ZERO, K_DISCARD, K_FLUSH };

struct op {
    int kind;
    uint64_t off, len;
    uint8_t *buf;
    struct iovec iov[8];
    int iovcnt;
    struct io io;
};

/* Split buf into up to 8 iovecs of arbitrary sizes. */
static int split(GRand *r, uint8_t *buf, uint64_t len, struct iovec *iov)
{
    int n = g_rand_int_range(r, 1, 9);
    uint64_t pos = 0;
    int i;
    for (i = 0; i < n - 1 && pos < len; i++) {
        uint64_t l = g_rand_int_range(r, 0, (gint32)MIN(len - pos, 70000) + 1);
        iov[i] = (struct iovec){ buf + pos, l };
        pos += l;
    }
    iov[i++] = (struct iovec){ buf + pos, len - pos };
    return i;
}

static uint64_t pick_len(GRand *r)
{
    switch (g_rand_int_range(r, 0, 10)) {
    case 0: return g_rand_int_range(r, 1, 16);
    case 1: return (uint64_t)g_rand_int_range(r, 1, 4) * opt_blk;      /* aligned length */
    case 2: return g_rand_int_range(r, 1 << 20, 3 << 20);              /* > max transfer */
    default: return g_rand_int_range(r, 1, 70000);
    }
}

static void *worker_main(void *opaque)
{
    struct worker *w = opaque;
    g_autoptr(GError) err = NULL;
    struct bc_loop *loop = bc_loop_new(w->index, 256, &err);
    GRand *r = g_rand_new_with_seed(opt_seed * 1000 + w->index);
    enum { BATCH = 12 };
    struct op ops[BATCH];

    if (!loop) {
        FAIL("bc_loop_new: %s", err->message);
        return NULL;
    }
    for (unsigned done = 0; done < w->nops;) {
        unsigned n = 0, pending = 0;
        memset(ops, 0, sizeof(ops));
        /* A batch of requests on ranges disjoint in bytes (they may share blocks). */
        for (int tries = 0; n < BATCH && tries < 100; tries++) {
            struct op *o = &ops[n];
            int k = g_rand_int_range(r, 0, 20);
            o->kind = k < 8 ? K_READ : k < 16 ? K_WRITE : k < 18 ? K_ZERO : k < 19 ? K_DISCARD
                                                                                  : K_FLUSH;
            o->len = MIN(pick_len(r), w->hi - w->lo);
            o->off = w->lo + g_rand_int_range(r, 0, (gint32)(w->hi - w->lo - o->len + 1));
            if (g_rand_int_range(r, 0, 4) == 0) { /* start at or near a block boundary */
                const uint64_t deltas[] = { 0, 1, opt_blk - 1, opt_blk - 7 };
                uint64_t at = o->off / opt_blk * opt_blk + deltas[g_rand_int_range(r, 0, 4)];
                o->off = MIN(MAX(at, w->lo), w->hi - o->len);
            }
            bool clash = false;
            for (unsigned j = 0; j < n && o->kind != K_FLUSH; j++)
                if (ops[j].kind != K_FLUSH && o->off < ops[j].off + ops[j].len &&
                    ops[j].off < o->off + o->len)
                    clash = true;
            if (clash)
                continue;
            n++;
        }
        for (unsigned i = 0; i < n; i++) {
            struct op *o = &ops[i];
            o->io.pending = &pending;
            o->io.res = 1;
            pending++;
            switch (o->kind) {
            case K_READ:
            case K_WRITE:
                /* Misaligned buffers: the driver must bounce them. */
                o->buf = g_malloc(o->len + 64);
                uint8_t *p = o->buf + g_rand_int_range(r, 0, 64);
                if (o->kind == K_WRITE) {
                    for (uint64_t b = 0; b < o->len; b++)
                        p[b] = (uint8_t)g_rand_int(r);
                    memcpy(model + o->off, p, o->len);
                    memset(known + o->off, 1, o->len);
                }
                o->iovcnt = split(r, p, o->len, o->iov);
                if (o->kind == K_READ)
                    bc_dev_readv(w->dev, loop, o->iov, o->iovcnt, o->off, io_cb, &o->io);
                else
                    bc_dev_writev(w->dev, loop, o->iov, o->iovcnt, o->off,
                                  g_rand_int_range(r, 0, 8) == 0 ? BC_REQ_FUA : 0, io_cb,
                                  &o->io);
                break;
            case K_ZERO:
                memset(model + o->off, 0, o->len);
                memset(known + o->off, 1, o->len);
                bc_dev_write_zeroes(w->dev, loop, o->off, o->len,
                                    g_rand_boolean(r) ? BC_REQ_MAY_UNMAP : 0, io_cb, &o->io);
                break;
            case K_DISCARD:
                memset(known + o->off, 0, o->len);
                bc_dev_discard(w->dev, loop, o->off, o->len, io_cb, &o->io);
                break;
            case K_FLUSH:
                bc_dev_flush(w->dev, loop, io_cb, &o->io);
                break;
            }
        }
        if (pending != n)
            FAIL("a callback ran inside the starting call");
        run(loop, &pending);
        for (unsigned i = 0; i < n; i++) {
            struct op *o = &ops[i];
            char ctx[128];
            snprintf(ctx, sizeof(ctx), "loop %u op %d at %" PRIu64 "+%" PRIu64, w->index,
                     o->kind, o->off, o->len);
            if (o->io.res != 0)
                FAIL("%s: %s", ctx, g_strerror(-o->io.res));
            if (o->kind == K_READ && o->io.res == 0) {
                g_autofree uint8_t *flat = g_malloc(o->len);
                uint64_t pos = 0;
                for (int j = 0; j < o->iovcnt; j++) {
                    memcpy(flat + pos, o->iov[j].iov_base, o->iov[j].iov_len);
                    pos += o->iov[j].iov_len;
                }
                check(flat, o->off, o->len, ctx);
            }
            g_free(o->buf);
        }
        done += n;
    }
    bc_loop_free(loop);
    g_rand_free(r);
    return NULL;
}

/* Several threads hammer one block with single-byte writes, all in flight at once. */
static void sector_sharing(struct bc_dev *dev, struct bc_loop *loop, uint64_t base)
{
    enum { N = 64 };
    unsigned pending = 0;
    struct io io[N];
    uint8_t bytes[N];
    struct iovec iov[N];    /* must live until the callbacks */

    for (int i = 0; i < N; i++) {
        uint64_t off = base + (uint64_t)i * 37 % (2 * opt_blk);
        bytes[i] = (uint8_t)(0xa0 + i);
        model[off] = bytes[i];
        known[off] = 1;
        iov[i] = (struct iovec){ &bytes[i], 1 };
        io[i] = (struct io){ 1, &pending };
        pending++;
        bc_dev_writev(dev, loop, &iov[i], 1, off, 0, io_cb, &io[i]);
    }
    run(loop, &pending);
    for (int i = 0; i < N; i++)
        if (io[i].res)
            FAIL("sector-sharing write %d: %s", i, g_strerror(-io[i].res));
}

static int mode_io(void)
{
    g_autoptr(GError) err = NULL;
    struct bc_loop *loop = bc_loop_new(0, 256, &err);
    struct bc_dev *dev = open_dev(false, &err);
    gsize ilen = 0;
    g_autofree char *init = NULL;

    if (!dev) {
        FAIL("open: %s", err->message);
        return 1;
    }
    const struct bc_props *p = bc_dev_props(dev);
    dev_size = bc_dev_size(dev);
    printf("# size %" PRIu64 " req_align %u max_transfer %u discard_align %u zero_align %u"
           " read_only %d\n", dev_size, p->req_align, p->max_transfer, p->discard_align,
           p->zero_align, p->read_only);
    if (p->req_align != opt_blk)
        FAIL("req_align %u, want %u", p->req_align, opt_blk);
    model = g_malloc0(dev_size);
    known = g_malloc0(dev_size);
    if (opt_image) {
        /* The initial contents as the host wrote them; else learnt from the first read. */
        if (!g_file_get_contents(opt_image, &init, &ilen, &err) || ilen != dev_size) {
            FAIL("image %s: %s (size %zu)", opt_image, err ? err->message : "wrong size", ilen);
            return 1;
        }
        memcpy(model, init, dev_size);
        memset(known, 1, dev_size);
    }

    /* The whole device, as the host wrote it. */
    g_autofree uint8_t *buf = g_malloc(dev_size);
    int r = sync_io(dev, loop, 'r', buf, 0, dev_size);
    if (r)
        FAIL("initial read: %s", g_strerror(-r));
    check(buf, 0, dev_size, "initial contents");

    sector_sharing(dev, loop, 3 * opt_blk + 5);

    /* Random I/O from several loops on ranges that share blocks at their borders. */
    struct worker w[8];
    unsigned nl = MIN(opt_loops, 8u);
    for (unsigned i = 0; i < nl; i++) {
        w[i] = (struct worker){ .index = i, .dev = dev, .nops = opt_ops };
        w[i].lo = i == 0 ? 0 : w[i - 1].hi;
        w[i].hi = i == nl - 1 ? dev_size : dev_size / nl * (i + 1) + 777;
        pthread_create(&w[i].tid, NULL, worker_main, &w[i]);
    }
    for (unsigned i = 0; i < nl; i++)
        pthread_join(w[i].tid, NULL);

    r = sync_io(dev, loop, 'f', NULL, 0, 0);
    if (r)
        FAIL("flush: %s", g_strerror(-r));
    r = sync_io(dev, loop, 'r', buf, 0, dev_size);
    if (r)
        FAIL("final read: %s", g_strerror(-r));
    check(buf, 0, dev_size, "final contents");
    if (opt_out && !g_file_set_contents(opt_out, (char *)buf, (gssize)dev_size, &err))
        FAIL("%s", err->message);
    if (opt_sha256) {
        g_autofree char *sum = g_compute_checksum_for_data(G_CHECKSUM_SHA256, buf, dev_size);
        printf("sha256 %s\n", sum);
    }
    bc_dev_close(dev);
    bc_loop_free(loop);
    g_free(model);
    g_free(known);
    return failures ? 1 : 0;
}

/* The back end dies with requests in flight: all complete with -EIO, later ones too. */
static int mode_kill(void)
{
    g_autoptr(GError) err = NULL;
    struct bc_loop *loop = bc_loop_new(0, 256, &err);
    struct bc_dev *dev = open_dev(false, &err);
    enum { N = 32, LEN = 256 << 10 };
    unsigned pending = 0, failed = 0;
    struct io io[N];

    if (!dev) {
        FAIL("open: %s", err->message);
        return 1;
    }
    uint8_t *buf = g_malloc0(LEN);
    if (sync_io(dev, loop, 'w', buf, 0, LEN) || sync_io(dev, loop, 'r', buf, 0, LEN))
        FAIL("I/O before the kill failed");
    struct iovec iov = { buf, LEN };
    for (int i = 0; i < N; i++) {
        io[i] = (struct io){ 1, &pending };
        pending++;
        bc_dev_writev(dev, loop, &iov, 1, (uint64_t)i * LEN, 0, io_cb, &io[i]);
    }
    kill(opt_kill_pid, SIGKILL);
    run(loop, &pending);
    for (int i = 0; i < N; i++) {
        if (io[i].res != 0 && io[i].res != -EIO)
            FAIL("in-flight write %d: %s", i, g_strerror(-io[i].res));
        failed += io[i].res != 0;
    }
    printf("# %u of %d in-flight writes failed\n", failed, N);
    /* Wait for the death to be noticed, then every request must fail. */
    int r = 0;
    for (int i = 0; i < 200 && r == 0; i++) {
        r = sync_io(dev, loop, 'r', buf, 0, 4096);
        if (r == 0)
            g_usleep(10000);
    }
    if (r != -EIO)
        FAIL("read after the back end died: %d, want -EIO", r);
    r = sync_io(dev, loop, 'w', buf, 8192, 4096);
    if (r != -EIO)
        FAIL("write after the back end died: %d, want -EIO", r);
    r = sync_io(dev, loop, 'f', NULL, 0, 0);
    if (r != -EIO)
        FAIL("flush after the back end died: %d, want -EIO", r);
    bc_dev_close(dev);
    bc_loop_free(loop);
    g_free(buf);
    return failures ? 1 : 0;
}

/* The device fails reads and writes of one range (after the first write anywhere, which
 * arms qemu's blkdebug rules): -EIO there, everything else still works. */
static int mode_eio(void)
{
    g_autoptr(GError) err = NULL;
    struct bc_loop *loop = bc_loop_new(0, 256, &err);
    struct bc_dev *dev = open_dev(false, &err);
    uint8_t buf[8192];

    if (!dev) {
        FAIL("open: %s", err->message);
        return 1;
    }
    memset(buf, 0x55, sizeof(buf));
    int r = sync_io(dev, loop, 'w', buf, opt_eio_off + (1 << 20), 4096);
    if (r != 0)
        FAIL("first write elsewhere: %s", g_strerror(-r));
    for (int round = 0; round < 3; round++) {
        r = sync_io(dev, loop, 'r', buf, opt_eio_off + 100, 1000);
        if (r != -EIO)
            FAIL("read of the failing range: %d, want -EIO", r);
        r = sync_io(dev, loop, 'w', buf, opt_eio_off + 3, 10);
        if (r != -EIO)
            FAIL("write to the failing range: %d, want -EIO", r);
        r = sync_io(dev, loop, 'r', buf, opt_eio_off + (1 << 20), sizeof(buf));
        if (r != 0)
            FAIL("read elsewhere: %s", g_strerror(-r));
        memset(buf, round, sizeof(buf));
        r = sync_io(dev, loop, 'w', buf, 12345, 3000);
        if (r != 0)
            FAIL("write elsewhere: %s", g_strerror(-r));
    }
    bc_dev_close(dev);
    bc_loop_free(loop);
    return failures ? 1 : 0;
}

/* A read-only device: a read-write open fails clearly; read-only works. */
static int mode_ro(void)
{
    g_autoptr(GError) err = NULL;
    struct bc_loop *loop = bc_loop_new(0, 256, &err);
    struct bc_dev *dev = open_dev(false, &err);
    uint8_t buf[4096];

    if (dev || !err || !strstr(err->message, "read-only"))
        FAIL("read-write open of a read-only device: %s", err ? err->message : "succeeded");
    else
        printf("# %s\n", err->message);
    if (dev)
        bc_dev_close(dev);
    g_clear_error(&err);
    dev = open_dev(true, &err);
    if (!dev) {
        FAIL("read-only open: %s", err->message);
        return 1;
    }
    if (!bc_dev_props(dev)->read_only)
        FAIL("read_only property not set");
    if (sync_io(dev, loop, 'r', buf, 1000, sizeof(buf)) != 0)
        FAIL("read from a read-only device");
    if (sync_io(dev, loop, 'w', buf, 0, 512) == 0)
        FAIL("write to a read-only device succeeded");
    bc_dev_close(dev);
    bc_loop_free(loop);
    return failures ? 1 : 0;
}

/* The driver's data-path counters. */
static void drv_stats(struct bc_dev *dev, struct bc_drv_stats *st)
{
    const struct bc_driver *drv = bc_driver_find(opt_driver);

    memset(st, 0, sizeof(*st));
    if (!drv->get_stats)
        FAIL("driver %s has no get_stats", opt_driver);
    else
        drv->get_stats(bc_dev_driver_state(dev), st);
}

static void print_stats(const char *when, const struct bc_drv_stats *st)
{
    printf("# %s: zero-copy %" PRIu64 " requests, %" PRIu64 " bytes; copied %" PRIu64
           " requests, %" PRIu64 " bytes\n", when, st->zero_copy_reqs, st->zero_copy_bytes,
           st->copied_reqs, st->copied_bytes);
}

/* Zero copy: aligned I/O in bc_buf_alloc() memory, and unaligned I/O (padded by blockcore
 * through bounce buffers, which come from the same arenas), reaches the device without a
 * copy; aligned I/O in ordinary heap memory is copied, and the counters tell the two
 * apart.  The data is checked throughout. */
static int mode_zc(void)
{
    g_autoptr(GError) err = NULL;
    struct bc_loop *loop = bc_loop_new(0, 256, &err);
    struct bc_dev *dev = open_dev(false, &err);
    const uint64_t n = 4u << 20, chunk = 256u << 10;
    struct bc_drv_stats s0, s1, s2, s3;
    struct bc_buf_pool_stats ps;

    if (!dev) {
        FAIL("open: %s", err->message);
        return 1;
    }
    if (bc_dev_size(dev) < 2 * n) {
        FAIL("device too small");
        return 1;
    }
    bc_buf_pool_stats(&ps);
    printf("# I/O buffer arenas: %zu bytes\n", ps.total);
    if (ps.total == 0)
        FAIL("no I/O buffer arenas");

    /* Aligned, in arena memory: no copy. */
    uint8_t *a = bc_buf_alloc(n), *b = bc_buf_alloc(n);
    GRand *r = g_rand_new_with_seed(opt_seed);
    for (uint64_t i = 0; i < n; i += 4)
        *(guint32 *)(a + i) = g_rand_int(r);
    g_rand_free(r);
    drv_stats(dev, &s0);
    for (uint64_t off = 0; off < n; off += chunk)
        if (sync_io(dev, loop, 'w', a + off, off, chunk) != 0)
            FAIL("aligned write at %" PRIu64, off);
    for (uint64_t off = 0; off < n; off += chunk)
        if (sync_io(dev, loop, 'r', b + off, off, chunk) != 0)
            FAIL("aligned read at %" PRIu64, off);
    if (memcmp(a, b, n))
        FAIL("aligned I/O in arena memory: data differs");
    drv_stats(dev, &s1);
    print_stats("after aligned I/O in arena memory", &s1);
    if (s1.copied_reqs != s0.copied_reqs)
        FAIL("aligned I/O in arena memory was copied (%" PRIu64 " requests)",
             s1.copied_reqs - s0.copied_reqs);
    if (s1.zero_copy_bytes - s0.zero_copy_bytes < 2 * n)
        FAIL("aligned I/O in arena memory: only %" PRIu64 " bytes without a copy",
             s1.zero_copy_bytes - s0.zero_copy_bytes);

    /* Unaligned, from and to the stack: blockcore's bounce buffers, no driver copy. */
    uint8_t odd[1000], back[1000];
    for (unsigned i = 0; i < sizeof(odd); i++)
        odd[i] = (uint8_t)(i * 7 + 3);
    if (sync_io(dev, loop, 'w', odd, n + 7, sizeof(odd)) != 0 ||
        sync_io(dev, loop, 'r', back, n + 7, sizeof(back)) != 0)
        FAIL("unaligned I/O failed");
    if (memcmp(odd, back, sizeof(odd)))
        FAIL("unaligned I/O: data differs");
    drv_stats(dev, &s2);
    print_stats("after unaligned I/O", &s2);
    if (s2.copied_reqs != s1.copied_reqs)
        FAIL("bounce-buffered I/O was copied again by the driver");
    if (s2.zero_copy_reqs <= s1.zero_copy_reqs)
        FAIL("unaligned I/O did not reach the device in place");

    /* Aligned, in ordinary heap memory: copied (shows that the counters can tell). */
    void *h;
    if (posix_memalign(&h, 4096, chunk))
        abort();
    memcpy(h, a, chunk);
    if (sync_io(dev, loop, 'w', h, n, chunk) != 0 || sync_io(dev, loop, 'r', b, n, chunk) != 0)
        FAIL("aligned I/O in heap memory failed");
    if (memcmp(h, b, chunk))
        FAIL("aligned I/O in heap memory: data differs");
    drv_stats(dev, &s3);
    print_stats("after aligned I/O in heap memory", &s3);
    if (s3.copied_reqs != s2.copied_reqs + 1 || s3.copied_bytes != s2.copied_bytes + chunk)
        FAIL("aligned I/O in heap memory: want 1 copied request of %" PRIu64 " bytes", chunk);
    free(h);
    bc_buf_free(a);
    bc_buf_free(b);
    bc_dev_close(dev);
    bc_loop_free(loop);
    return failures ? 1 : 0;
}

/* The driver's bounce pool (16 MiB) runs out: 40 MiB of aligned I/O in heap memory, which
 * the driver copies, submitted at once from one loop.  Requests past the pool wait for
 * memory and get it as earlier ones complete; all finish (the watchdog catches a request
 * never woken) with the right data. */
static int mode_pool(void)
{
    g_autoptr(GError) err = NULL;
    struct bc_loop *loop = bc_loop_new(0, 256, &err);
    struct bc_dev *dev = open_dev(false, &err);
    const uint64_t total = 40u << 20, base = 16u << 20;
    struct bc_drv_stats s0, s1;

    if (!dev) {
        FAIL("open: %s", err->message);
        return 1;
    }
    uint64_t chunk = MIN((uint64_t)1 << 20, bc_dev_props(dev)->max_transfer);
    unsigned n = (unsigned)(total / chunk), pending = 0;
    if (bc_dev_size(dev) < base + total) {
        FAIL("device too small");
        return 1;
    }
    uint8_t *w = g_malloc(total), *r = g_malloc0(total);
    struct iovec *iov = g_new(struct iovec, n);
    struct io *io = g_new(struct io, n);
    GRand *rnd = g_rand_new_with_seed(opt_seed);
    for (uint64_t i = 0; i < total; i += 4)
        *(guint32 *)(w + i) = g_rand_int(rnd);
    g_rand_free(rnd);

    drv_stats(dev, &s0);
    for (int pass = 0; pass < 2; pass++) {
        for (unsigned i = 0; i < n; i++) {
            iov[i] = (struct iovec){ (pass ? r : w) + i * chunk, chunk };
            io[i] = (struct io){ .res = 1, .pending = &pending };
            pending++;
            if (pass)
                bc_dev_readv(dev, loop, &iov[i], 1, base + i * chunk, io_cb, &io[i]);
            else
                bc_dev_writev(dev, loop, &iov[i], 1, base + i * chunk, 0, io_cb, &io[i]);
        }
        run(loop, &pending);
        for (unsigned i = 0; i < n; i++)
            if (io[i].res != 0)
                FAIL("%s of chunk %u: %s", pass ? "read" : "write", i, g_strerror(-io[i].res));
    }
    if (memcmp(w, r, total))
        FAIL("data read back differs from what was written");
    drv_stats(dev, &s1);
    print_stats("after I/O beyond the bounce pool", &s1);
    if (s1.copied_reqs - s0.copied_reqs != 2 * n)
        FAIL("want %u copied requests, got %" PRIu64, 2 * n, s1.copied_reqs - s0.copied_reqs);
    g_free(w);
    g_free(r);
    g_free(iov);
    g_free(io);
    bc_dev_close(dev);
    bc_loop_free(loop);
    return failures ? 1 : 0;
}

/* Open and report the error (for bad keys, missing sockets). */
static int mode_open(void)
{
    g_autoptr(GError) err = NULL;
    struct bc_dev *dev = open_dev(false, &err);

    if (!dev) {
        printf("%s\n", err->message);
        return 2;
    }
    printf("opened: size %" PRIu64 "\n", bc_dev_size(dev));
    bc_dev_close(dev);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        { "driver", 1, NULL, 'd' }, { "image", 1, NULL, 'i' }, { "out", 1, NULL, 'o' },
        { "mode", 1, NULL, 'm' },   { "blk", 1, NULL, 'b' },   { "loops", 1, NULL, 'l' },
        { "ops", 1, NULL, 'n' },    { "num-queues", 1, NULL, 'q' },
        { "queue-size", 1, NULL, 'Q' }, { "kill-pid", 1, NULL, 'k' },
        { "eio-offset", 1, NULL, 'e' }, { "seed", 1, NULL, 's' }, { "sha256", 0, NULL, 'S' },
        { "timeout", 1, NULL, 'T' }, { NULL, 0, NULL, 0 },
    };
    int c;

    setvbuf(stdout, NULL, _IOLBF, 0);
    g_log_set_always_fatal(G_LOG_FATAL_MASK | G_LOG_LEVEL_CRITICAL);
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'd': opt_driver = optarg; break;
        case 'i': opt_image = optarg; break;
        case 'o': opt_out = optarg; break;
        case 'm': opt_mode = optarg; break;
        case 'b': opt_blk = (unsigned)atoi(optarg); break;
        case 'l': opt_loops = (unsigned)atoi(optarg); break;
        case 'n': opt_ops = (unsigned)atoi(optarg); break;
        case 'q': opt_queues = optarg; break;
        case 'Q': opt_qsize = optarg; break;
        case 'k': opt_kill_pid = atoi(optarg); break;
        case 'e': opt_eio_off = g_ascii_strtoull(optarg, NULL, 0); break;
        case 's': opt_seed = (guint32)atoi(optarg); break;
        case 'S': opt_sha256 = true; break;
        case 'T': opt_timeout = (unsigned)atoi(optarg); break;
        default: return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "usage: vblk-io [--mode io|kill|eio|ro|open|zc|pool] [options] PATH\n");
        return 2;
    }
    opt_path = argv[optind];
    signal(SIGALRM, watchdog);
    alarm(opt_timeout);
    signal(SIGPIPE, SIG_IGN);
    printf("# %s %s seed %u\n", opt_driver, opt_mode, opt_seed);

    if (!strcmp(opt_mode, "io"))
        return mode_io();
    if (!strcmp(opt_mode, "kill"))
        return mode_kill();
    if (!strcmp(opt_mode, "eio"))
        return mode_eio();
    if (!strcmp(opt_mode, "ro"))
        return mode_ro();
    if (!strcmp(opt_mode, "open"))
        return mode_open();
    if (!strcmp(opt_mode, "zc"))
        return mode_zc();
    if (!strcmp(opt_mode, "pool"))
        return mode_pool();
    fprintf(stderr, "vblk-io: unknown mode %s\n", opt_mode);
    return 2;
}
