/* SPDX-License-Identifier: MIT */
/* The file driver end to end: O_DIRECT on ext4 (/var/tmp) including a size that is not a
 * multiple of the alignment, tmpfs, read-only opens, and loop block devices with 512- and
 * 4096-byte sectors; random I/O against a model, then the file itself checked with pread.
 * Also the logwrites driver (the file driver plus a log), and the log it writes. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "drivers/logwrites.h"
#include "t/unit/test-util.h"

static char *scratch_dir;       /* under /var/tmp, removed at the end if all passed */
static bool scratch_on_tmpfs;   /* then the driver opens buffered even when asked for direct */
static char shm_file[256];      /* a file on tmpfs to remove even if the test aborts */

/* A failed assertion aborts (g_error traps): remove the tmpfs file, it holds memory. */
static void remove_shm_file(int sig)
{
    if (shm_file[0])
        unlink(shm_file);
    signal(sig, SIG_DFL);
    raise(sig);
}

struct file_cfg {
    const char *name;
    const char *dir;            /* NULL: scratch_dir */
    uint64_t size;
    bool direct;
    bool check_holes;           /* SEEK_HOLE must show MAY_UNMAP's punch */
    unsigned loop_sector;       /* 0: regular file; else a loop device with this sector size */
    guint32 seed;
};

/* Create path with size random bytes (also recorded in m). */
static void make_file(const char *path, uint64_t size, GRand *rand, struct tu_model *m)
{
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    g_assert_cmpint(fd, >=, 0);
    tu_model_init(m, size, true);
    tu_fill_random(rand, m->data, size);
    g_assert_cmpint(pwrite(fd, m->data, size, 0), ==, (ssize_t)size);
    g_assert_cmpint(fsync(fd), ==, 0);
    close(fd);
}

/* Compare the file's (or device's) bytes, read with plain pread, with the model. */
static bool check_backing(const char *path, const struct tu_model *m, const char *ctx)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    g_assert_cmpint(fd, >=, 0);
    uint8_t *buf = g_malloc(m->size);
    g_assert_cmpint(pread(fd, buf, m->size, 0), ==, (ssize_t)m->size);
    close(fd);
    bool good = tu_model_check(m, 0, buf, m->size, ctx);
    g_free(buf);
    return good;
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    g_assert_cmpint(stat(path, &st), ==, 0);
    return (uint64_t)st.st_size;
}

/* Batches of concurrent random reads, writes and write-zeroes on disjoint ranges. */
static void random_io(struct bc_dev *dev, struct bc_loop *loop, struct tu_model *m,
                      GRand *rand, int nops, const char *name)
{
    enum { MAXB = 12 };
    const uint64_t size = m->size;
    int done = 0;

    while (done < nops) {
        struct {
            int kind;               /* 0 read, 1 write, 2 zero, 3 zero+unmap, 4 discard */
            uint64_t off, len;
            struct tu_buf buf;
            struct iovec iov[8];
            int iovcnt;
            struct tu_io io;
        } ops[MAXB];
        int n = g_rand_int_range(rand, 1, MAXB + 1);
        unsigned pending = 0;

        /* Disjoint ranges: pick sorted random cut points. */
        uint64_t pos = (uint64_t)g_rand_int_range(rand, 0, 20000);
        int cnt = 0;
        for (int i = 0; i < n; i++) {
            uint64_t len;
            int shape = g_rand_int_range(rand, 0, 10);
            len = shape < 5 ? (uint64_t)g_rand_int_range(rand, 1, 5000)
                  : shape < 8 ? (uint64_t)g_rand_int_range(rand, 1, 70000)
                  : (uint64_t)g_rand_int_range(rand, 0, 2) * 4096 * 8;
            if (pos + len > size)
                break;
            ops[cnt].off = pos;
            ops[cnt].len = len;
            ops[cnt].kind = g_rand_int_range(rand, 0, 100) < 40 ? 0
                            : g_rand_int_range(rand, 0, 100) < 75 ? 1
                            : g_rand_int_range(rand, 2, 5);
            cnt++;
            pos += len + (uint64_t)g_rand_int_range(rand, 0, (gint32)MIN(size / 4, 300000));
        }
        /* Sometimes a read across the end of the device. */
        if (cnt < MAXB && pos < size && g_rand_boolean(rand)) {
            ops[cnt].off = pos;
            ops[cnt].len = size - pos + (uint64_t)g_rand_int_range(rand, 1, 9000);
            ops[cnt].kind = 0;
            cnt++;
        }
        for (int i = 0; i < cnt; i++) {
            if (ops[i].kind <= 1) {
                tu_buf_init(&ops[i].buf, ops[i].len, g_rand_boolean(rand)
                            ? 0 : (size_t)g_rand_int_range(rand, 0, 4096));
                if (ops[i].kind == 0)
                    memset(ops[i].buf.p, 0xEE, ops[i].len);
                else
                    tu_fill_random(rand, ops[i].buf.p, ops[i].len);
                ops[i].iovcnt = tu_split_iov(rand, ops[i].buf.p, ops[i].len, ops[i].iov, 8);
            }
            tu_io_start(&ops[i].io, &pending);
            switch (ops[i].kind) {
            case 0:
                bc_dev_readv(dev, loop, ops[i].iov, ops[i].iovcnt, ops[i].off, tu_io_cb,
                             &ops[i].io);
                break;
            case 1:
                bc_dev_writev(dev, loop, ops[i].iov, ops[i].iovcnt, ops[i].off,
                              g_rand_int_range(rand, 0, 10) == 0 ? BC_REQ_FUA : 0, tu_io_cb,
                              &ops[i].io);
                break;
            case 2:
            case 3:
                bc_dev_write_zeroes(dev, loop, ops[i].off, ops[i].len,
                                    ops[i].kind == 3 ? BC_REQ_MAY_UNMAP : 0, tu_io_cb,
                                    &ops[i].io);
                break;
            case 4:
                bc_dev_discard(dev, loop, ops[i].off, ops[i].len, tu_io_cb, &ops[i].io);
                break;
            }
        }
        tu_run_until_done(loop, &pending);
        for (int i = 0; i < cnt; i++) {
            static const char *const kn[] = { "read", "write", "write-zeroes",
                                              "write-zeroes+unmap", "discard" };
            g_autofree char *ctx = g_strdup_printf("%s: op #%d %s [%" PRIu64 ", +%" PRIu64 ")",
                                                   name, done + i, kn[ops[i].kind], ops[i].off,
                                                   ops[i].len);
            if (ops[i].io.res != 0)
                g_error("%s: %s", ctx, g_strerror(-ops[i].io.res));
            switch (ops[i].kind) {
            case 0:
                g_assert_true(tu_model_check(m, ops[i].off, ops[i].buf.p, ops[i].len, ctx));
                break;
            case 1:
                tu_model_write(m, ops[i].off, ops[i].buf.p, ops[i].len);
                break;
            case 2:
            case 3:
                tu_model_zero(m, ops[i].off, ops[i].len);
                break;
            case 4:
                tu_model_forget(m, ops[i].off, ops[i].len);
                break;
            }
            if (ops[i].kind <= 1) {
                tu_buf_check_guards(&ops[i].buf, ctx);
                tu_buf_free(&ops[i].buf);
            }
        }
        done += cnt ? cnt : 1;
    }
}

/* The checks every file-backed device goes through.  path is what the driver opens;
 * check_path is what we pread afterwards (the same, or the loop device's backing file). */
static void exercise(const struct file_cfg *c, const char *path, struct tu_model *m,
                     GRand *rand)
{
    struct bc_loop *loop = tu_loop_new();
    const uint64_t S = m->size;
    bool regular = c->loop_sector == 0;

    struct bc_dev *dev = tu_open(&bc_drv_file, path, false, c->direct, NULL);
    const struct bc_props *p = bc_dev_props(dev);
    g_test_message("%s: req_align %u mem_align %u max_transfer %u discard_align %u "
                   "zero_align %u", c->name, p->req_align, p->mem_align, p->max_transfer,
                   p->discard_align, p->zero_align);
    g_assert_cmpuint(bc_dev_size(dev), ==, S);
    g_assert_false(p->read_only);
    g_assert_cmpuint(p->req_align & (p->req_align - 1), ==, 0);
    if (c->loop_sector)
        g_assert_cmpuint(p->req_align, ==, c->loop_sector);
    if (c->direct && regular && !c->dir && !scratch_on_tmpfs)
        g_assert_cmpuint(p->req_align, >=, 512);   /* ext4 O_DIRECT really in use */
    if (c->dir)
        g_assert_cmpuint(p->req_align, ==, 1);     /* tmpfs: buffered, no RMW needed */
    g_assert_true(tu_model_verify_dev(m, dev, loop, "initial contents via the driver"));

    /* Random concurrent I/O against the model. */
    random_io(dev, loop, m, rand, 1200, c->name);
    if (regular)
        g_assert_cmpuint(file_size(path), ==, S);  /* never grows, never shrinks */

    /* The tail: reads return the data then zeros; writes into the last partial block. */
    {
        struct tu_buf b;
        tu_buf_init(&b, 3000, 1);
        memset(b.p, 0xEE, 3000);
        g_assert_cmpint(tu_pread(dev, loop, b.p, 3000, S - 500), ==, 0);
        g_assert_true(tu_model_check(m, S - 500, b.p, 3000, "tail read"));
        tu_buf_check_guards(&b, "tail read");
        tu_fill_random(rand, b.p, 10);
        g_assert_cmpint(tu_pwrite(dev, loop, b.p, 10, S - 10), ==, 0);
        tu_model_write(m, S - 10, b.p, 10);
        tu_fill_random(rand, b.p, 1);
        g_assert_cmpint(tu_pwrite(dev, loop, b.p, 1, S - 1), ==, 0);
        tu_model_write(m, S - 1, b.p, 1);
        g_assert_cmpint(tu_pwrite(dev, loop, b.p, 20, S - 10), ==, -ENOSPC);
        g_assert_cmpint(tu_pwrite(dev, loop, b.p, 1, S), ==, -ENOSPC);
        memset(b.p, 0xEE, 3000);
        g_assert_cmpint(tu_pread(dev, loop, b.p, 3000, S - 100), ==, 0);
        g_assert_true(tu_model_check(m, S - 100, b.p, 3000, "tail read after tail writes"));
        g_assert_cmpint(tu_pread(dev, loop, b.p, 3000, S + 12345), ==, 0);
        g_assert_true(tu_model_check(m, S + 12345, b.p, 3000, "read past the end"));
        tu_buf_free(&b);
        if (regular)
            g_assert_cmpuint(file_size(path), ==, S);
    }

    /* Write-zeroes: unaligned without unmap, aligned with unmap (a hole in the file). */
    const uint64_t zoff = 256u << 10, zlen = 128u << 10;
    g_assert_cmpint(tu_zero(dev, loop, 4096 + 3, 10000, 0), ==, 0);
    tu_model_zero(m, 4096 + 3, 10000);
    g_assert_cmpint(tu_zero(dev, loop, zoff, zlen, BC_REQ_MAY_UNMAP), ==, 0);
    tu_model_zero(m, zoff, zlen);
    g_assert_cmpint(tu_zero(dev, loop, 100000 + 7, 50000, BC_REQ_MAY_UNMAP), ==, 0);
    tu_model_zero(m, 100000 + 7, 50000);
    g_assert_cmpint(tu_zero(dev, loop, S - 777, 777, 0), ==, 0);     /* the tail block */
    tu_model_zero(m, S - 777, 777);
    g_assert_true(tu_model_verify_dev(m, dev, loop, "after write-zeroes"));
    if (regular && c->check_holes) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        g_assert_cmpint(fd, >=, 0);
        off_t h = lseek(fd, (off_t)zoff, SEEK_HOLE);
        close(fd);
        if (h != (off_t)zoff)
            g_error("%s: write-zeroes with MAY_UNMAP of [%" PRIu64 ", +%" PRIu64 ") left no "
                    "hole at its start (SEEK_HOLE from there: %jd)", c->name, zoff, zlen,
                    (intmax_t)h);
        uint64_t pnum = 0;
        int bs = bc_dev_block_status(dev, zoff, zlen, &pnum);
        g_test_message("%s: block_status on the punched range: %d, %" PRIu64 " bytes",
                       c->name, bs, pnum);
        g_assert_cmpint(bs, ==, 0);
        g_assert_cmpuint(pnum, >, 0);
    }
    if (regular)
        g_assert_cmpuint(file_size(path), ==, S);

    /* Discard (advisory) and flush; a FUA write. */
    g_assert_cmpint(tu_discard(dev, loop, 600000 + 1, 70000), ==, 0);
    tu_model_forget(m, 600000 + 1, 70000);
    {
        uint8_t fb[5000];
        tu_fill_random(rand, fb, sizeof fb);
        struct iovec iov = { .iov_base = fb, .iov_len = sizeof fb };
        g_assert_cmpint(tu_pwritev(dev, loop, &iov, 1, 33333, BC_REQ_FUA), ==, 0);
        tu_model_write(m, 33333, fb, sizeof fb);
    }
    g_assert_cmpint(tu_flush(dev, loop), ==, 0);
    uint64_t pnum = 0;
    g_assert_cmpint(bc_dev_block_status(dev, S + 65536, 4096, &pnum), ==, 0); /* past end */
    g_assert_cmpuint(pnum, >, 0);

    bc_dev_close(dev);
    if (regular)
        g_assert_cmpuint(file_size(path), ==, S);

    /* What the driver wrote is really in the file (or on the device). */
    g_autofree char *ctx = g_strdup_printf("%s: pread of %s after close", c->name, path);
    g_assert_true(check_backing(path, m, ctx));

    /* Reopen read-write: the same data. */
    dev = tu_open(&bc_drv_file, path, false, c->direct, NULL);
    g_assert_cmpuint(bc_dev_size(dev), ==, S);
    g_assert_true(tu_model_verify_dev(m, dev, loop, "after reopen"));
    bc_dev_close(dev);

    /* Read-only: reads work, every kind of change is refused with -EROFS (dev.c checks
     * props.read_only before the driver sees anything). */
    dev = tu_open(&bc_drv_file, path, true, c->direct, NULL);
    g_assert_true(bc_dev_props(dev)->read_only);
    g_assert_true(tu_model_verify_dev(m, dev, loop, "read-only open"));
    uint8_t x[100] = { 0 };
    g_assert_cmpint(tu_pwrite(dev, loop, x, sizeof x, 10), ==, -EROFS);
    g_assert_cmpint(tu_pwrite(dev, loop, x, sizeof x, 0), ==, -EROFS);
    g_assert_cmpint(tu_zero(dev, loop, 0, 4096, 0), ==, -EROFS);
    g_assert_cmpint(tu_zero(dev, loop, 0, 4096, BC_REQ_MAY_UNMAP), ==, -EROFS);
    g_assert_cmpint(tu_discard(dev, loop, 0, 1u << 20), ==, -EROFS);
    bc_dev_close(dev);
    g_assert_true(check_backing(path, m, "after refused read-only writes"));

    tu_loop_free(loop);
}

static void test_regular(gconstpointer data)
{
    const struct file_cfg *c = data;
    const char *dir = c->dir ? c->dir : scratch_dir;
    g_autofree char *tmpl = g_build_filename(dir, "layerfs-1050-XXXXXX", NULL);
    GRand *rand = g_rand_new_with_seed(tu_seed(c->seed));
    struct tu_model m;

    int fd = g_mkstemp(tmpl);
    g_assert_cmpint(fd, >=, 0);
    close(fd);
    if (c->dir)
        g_strlcpy(shm_file, tmpl, sizeof shm_file);
    make_file(tmpl, c->size, rand, &m);
    exercise(c, tmpl, &m, rand);
    unlink(tmpl);
    shm_file[0] = 0;
    tu_model_free(&m);
    g_rand_free(rand);
}

/* More iovecs than the kernel takes in one preadv/pwritev (IOV_MAX, 1024), aligned so
 * that the generic layer hands them straight to the driver: they must still work. */
static void test_many_iovecs(void)
{
    enum { N = 1500, PIECE = 512 };
    g_autofree char *path = g_build_filename(scratch_dir, "iovecs-XXXXXX", NULL);
    struct bc_loop *loop = tu_loop_new();
    int fd = g_mkstemp(path);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, 4u << 20), ==, 0);
    close(fd);
    struct bc_dev *dev = tu_open(&bc_drv_file, path, false, true, NULL);
    uint8_t *buf = bc_buf_alloc(N * PIECE), *back = bc_buf_alloc(N * PIECE);
    struct iovec *iov = g_new(struct iovec, N), *riov = g_new(struct iovec, N);

    g_assert_cmpuint(bc_dev_props(dev)->req_align, <=, PIECE);
    for (int i = 0; i < N; i++) {
        memset(buf + i * PIECE, i % 251 + 1, PIECE);
        iov[i] = (struct iovec){ .iov_base = buf + i * PIECE, .iov_len = PIECE };
        riov[i] = (struct iovec){ .iov_base = back + i * PIECE, .iov_len = PIECE };
    }
    int w = tu_pwritev(dev, loop, iov, N, 4096, 0);
    int r = w == 0 ? tu_preadv(dev, loop, riov, N, 4096) : 1;
    if (w != 0 || r != 0)
        g_test_fail_printf("%d aligned iovecs of %d bytes at offset 4096: write %s, read %s "
                           "(a driver request with more than IOV_MAX iovecs?)", N, PIECE,
                           w ? g_strerror(-w) : "ok",
                           r > 0 ? "not tried" : r ? g_strerror(-r) : "ok");
    else if (!tu_cmp(back, buf, N * PIECE, 4096, "many iovecs read back"))
        g_test_fail_printf("%d iovecs: data read back differs", N);
    bc_dev_close(dev);
    unlink(path);
    g_free(iov);
    g_free(riov);
    bc_buf_free(buf);
    bc_buf_free(back);
    tu_loop_free(loop);
}

/* The end of a file whose size is not a multiple of the alignment, under concurrency: one
 * loop keeps rewriting bytes in the last block (each write grows the file to the block
 * boundary and cuts it back), another keeps reading across the end.  The reader must
 * always see the untouched bytes intact and zeros past the end; the size never changes. */
struct tail_ctx {
    struct bc_dev *dev;
    uint64_t size;
    const uint8_t *pattern;     /* the file's contents, size bytes */
    gint64 until;
    gint bad;
    gint stop;
    unsigned writes, reads;
};

static gpointer tail_writer(gpointer p)
{
    struct tail_ctx *t = p;
    struct bc_loop *loop = tu_loop_new();
    uint8_t buf[500];
    for (unsigned i = 0;
         g_get_monotonic_time() < t->until && !__atomic_load_n(&t->stop, __ATOMIC_ACQUIRE); i++) {
        memset(buf, (int)(i % 250) + 1, sizeof buf);
        if (tu_pwrite(t->dev, loop, buf, sizeof buf, t->size - 700) != 0)
            __atomic_add_fetch(&t->bad, 1, __ATOMIC_ACQ_REL);
        t->writes++;
    }
    tu_loop_free(loop);
    return NULL;
}

static gpointer tail_reader(gpointer p)
{
    struct tail_ctx *t = p;
    struct bc_loop *loop = tu_loop_new();
    enum { LEN = 5000 };
    uint8_t *buf = g_malloc(LEN);
    const uint64_t off = t->size - 2000;
    while (g_get_monotonic_time() < t->until && !__atomic_load_n(&t->stop, __ATOMIC_ACQUIRE)) {
        memset(buf, 0xEE, LEN);
        int r = tu_pread(t->dev, loop, buf, LEN, off);
        bool good = r == 0 &&
                    memcmp(buf, t->pattern + off, 1300) == 0 &&             /* before */
                    memcmp(buf + 1800, t->pattern + t->size - 200, 200) == 0;  /* after */
        for (unsigned i = 2000; good && i < LEN; i++)
            good = buf[i] == 0;                                              /* past end */
        if (!good) {
            g_test_message("tail race: read %u went wrong (res %d)", t->reads, r);
            __atomic_add_fetch(&t->bad, 1, __ATOMIC_ACQ_REL);
            __atomic_store_n(&t->stop, 1, __ATOMIC_RELEASE);
        }
        t->reads++;
    }
    g_free(buf);
    tu_loop_free(loop);
    return NULL;
}

static void test_tail_race(void)
{
    const uint64_t size = (256u << 10) + 1000;
    g_autofree char *path = g_build_filename(scratch_dir, "tail-XXXXXX", NULL);
    GRand *rand = g_rand_new_with_seed(1057);
    struct tu_model m;
    int fd = g_mkstemp(path);
    g_assert_cmpint(fd, >=, 0);
    close(fd);
    make_file(path, size, rand, &m);
    struct tail_ctx t = { .size = size, .pattern = m.data,
                          .until = g_get_monotonic_time() + G_USEC_PER_SEC / 2 };
    t.dev = tu_open(&bc_drv_file, path, false, true, NULL);
    GThread *w = g_thread_new("tail-writer", tail_writer, &t);
    GThread *r = g_thread_new("tail-reader", tail_reader, &t);
    g_thread_join(w);
    g_thread_join(r);
    g_test_message("tail race: %u writes, %u reads", t.writes, t.reads);
    bc_dev_close(t.dev);
    g_assert_cmpint(t.bad, ==, 0);
    g_assert_cmpuint(file_size(path), ==, size);
    unlink(path);
    tu_model_free(&m);
    g_rand_free(rand);
}

/* ---- loop devices -------------------------------------------------------------------- */

static bool run_cmd(const char *cmd, char **out)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *so = NULL, *se = NULL;
    int status = 0;

    if (!g_spawn_command_line_sync(cmd, &so, &se, &status, &err)) {
        g_test_message("%s: %s", cmd, err->message);
        return false;
    }
    if (!g_spawn_check_wait_status(status, NULL)) {
        g_test_message("%s failed: %s", cmd, se ? g_strstrip(se) : "");
        return false;
    }
    if (out)
        *out = g_strdup(g_strstrip(so));
    return true;
}

static void test_loopdev(gconstpointer data)
{
    const struct file_cfg *c = data;
    GRand *rand = g_rand_new_with_seed(tu_seed(c->seed));
    g_autofree char *backing = g_strdup_printf("%s/loop-%u.img", scratch_dir, c->loop_sector);
    g_autofree char *dev_path = NULL;
    struct tu_model m;

    if (geteuid() != 0) {
        g_test_skip("losetup needs root");
        g_rand_free(rand);
        return;
    }
    make_file(backing, c->size, rand, &m);
    g_autofree char *cmd = g_strdup_printf("losetup --find --show --sector-size %u %s",
                                           c->loop_sector, backing);
    if (!run_cmd(cmd, &dev_path) || !g_str_has_prefix(dev_path, "/dev/loop")) {
        g_test_skip("losetup is not usable here");
        tu_model_free(&m);
        g_rand_free(rand);
        return;
    }
    g_test_message("%s: %s on %s", c->name, dev_path, backing);
    exercise(c, dev_path, &m, rand);
    g_autofree char *detach = g_strdup_printf("losetup -d %s", dev_path);
    g_assert_true(run_cmd(detach, NULL));
    /* After detaching, the backing file holds the same bytes. */
    g_assert_true(check_backing(backing, &m, "loop backing file after detach"));
    unlink(backing);
    tu_model_free(&m);
    g_rand_free(rand);
}

/* O_DIRECT really works in dir: open, aligned write and read. */
static bool odirect_works(const char *dir, char **why)
{
    g_autofree char *p = g_build_filename(dir, "odirect-probe-XXXXXX", NULL);
    int fd = g_mkstemp(p);
    if (fd < 0) {
        *why = g_strdup_printf("cannot create a file in %s: %s", dir, g_strerror(errno));
        return false;
    }
    close(fd);
    fd = open(p, O_RDWR | O_DIRECT | O_CLOEXEC);
    bool ok = false;
    if (fd < 0) {
        *why = g_strdup_printf("open(O_DIRECT) in %s: %s", dir, g_strerror(errno));
    } else {
        void *buf = bc_buf_alloc(4096);
        memset(buf, 1, 4096);
        ok = pwrite(fd, buf, 4096, 0) == 4096 && pread(fd, buf, 4096, 0) == 4096;
        if (!ok)
            *why = g_strdup_printf("O_DIRECT I/O in %s: %s", dir, g_strerror(errno));
        bc_buf_free(buf);
        close(fd);
    }
    unlink(p);
    return ok;
}

static uint64_t lw_get(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* The logwrites driver logs the file's contents at open, then each request as it completes,
 * in order: a FUA write as a write and a flush, a flush when issued and when done; it
 * needs a log key and never reuses a log. */
static void test_logwrites(void)
{
    g_autofree char *path = g_build_filename(scratch_dir, "logwrites-XXXXXX", NULL);
    int fd = g_mkstemp(path);
    g_autofree char *log = g_strdup_printf("%s.log", path);
    uint8_t a[4096], b[4096];
    struct bc_loop *loop = tu_loop_new();
    g_autoptr(GError) err = NULL;

    memset(a, 0xab, sizeof(a));
    memset(b, 0x5a, sizeof(b));
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, 65536), ==, 0);
    g_assert_cmpint(pwrite(fd, a, sizeof(a), 0), ==, sizeof(a));
    close(fd);
    g_assert_null(tu_try_open(&bc_drv_logwrites, path, false, true, &err, NULL));
    g_assert_nonnull(strstr(err->message, "log: a value is required"));
    struct bc_dev *dev = tu_open(&bc_drv_logwrites, path, false, true, "log", log, NULL);
    g_clear_error(&err);
    g_assert_null(tu_try_open(&bc_drv_logwrites, path, false, true, &err, "log", log, NULL));
    g_assert_nonnull(strstr(err->message, "cannot create"));

    g_assert_cmpint(tu_pwrite(dev, loop, b, sizeof(b), 8192), ==, 0);
    struct iovec v = { b, sizeof(b) };
    g_assert_cmpint(tu_pwritev(dev, loop, &v, 1, 16384, BC_REQ_FUA), ==, 0);
    g_assert_cmpint(tu_zero(dev, loop, 0, 4096, 0), ==, 0);
    g_assert_cmpint(tu_discard(dev, loop, 32768, 4096), ==, 0);
    g_assert_cmpint(tu_flush(dev, loop), ==, 0);
    bc_dev_close(dev);
    tu_loop_free(loop);

    static const struct { enum lw_type type; uint64_t off, len; int fill; } want[] = {
        { LW_INIT, 0, 65536, -1 },
        { LW_WRITE, 8192, 4096, 0x5a },
        { LW_WRITE, 16384, 4096, 0x5a },
        { LW_FLUSH, 0, 0, -1 },
        { LW_FLUSH_DONE, 4, 0, -1 },    /* offset: the seq of its LW_FLUSH */
        { LW_ZERO, 0, 4096, -1 },
        { LW_DISCARD, 32768, 4096, -1 },
        { LW_FLUSH, 0, 0, -1 },
        { LW_FLUSH_DONE, 8, 0, -1 },
    };
    g_autofree uint8_t *m = NULL;
    gsize len = 0;
    g_assert_true(g_file_get_contents(log, (gchar **)&m, &len, NULL));
    g_assert_cmpuint(len, >=, LW_HDR_SIZE);
    g_assert_cmpmem(m, 8, LW_MAGIC, 8);
    g_assert_cmpuint(lw_get(m + 8, 4), ==, LW_VERSION);
    g_assert_cmpuint(lw_get(m + 16, 8), ==, 65536);
    uint64_t p = LW_HDR_SIZE;
    for (size_t i = 0; i < G_N_ELEMENTS(want); i++) {
        g_assert_cmpuint(p + LW_REC_SIZE, <=, len);
        g_assert_cmpuint(lw_get(m + p, 4), ==, want[i].type);
        g_assert_cmpuint(lw_get(m + p + 8, 8), ==, i + 1);
        g_assert_cmpuint(lw_get(m + p + 16, 8), ==, want[i].off);
        g_assert_cmpuint(lw_get(m + p + 24, 8), ==, want[i].len);
        p += LW_REC_SIZE;
        if (want[i].type == LW_INIT) {
            g_assert_cmpmem(m + p, sizeof(a), a, sizeof(a));
            p += want[i].len;
        } else if (want[i].type == LW_WRITE) {
            g_assert_cmpmem(m + p, sizeof(b), b, sizeof(b));
            p += want[i].len;
        }
    }
    g_assert_cmpuint(p, ==, len);
    unlink(log);
    unlink(path);
}

int main(int argc, char **argv)
{
    static const struct file_cfg cfgs[] = {
        { "ext4-odirect-odd-size", NULL, (1u << 20) + 1000, true, true, 0, 1050 },
        { "ext4-odirect-aligned", NULL, 2u << 20, true, true, 0, 1051 },
        { "ext4-odirect-odd-size-2", NULL, (1u << 20) + 4095, true, true, 0, 1052 },
        { "ext4-buffered-odd-size", NULL, (1u << 20) + 1000, false, true, 0, 1053 },
        { "tmpfs-odd-size", "/dev/shm", (1u << 20) + 1000, true, true, 0, 1054 },
    };
    static const struct file_cfg loops[] = {
        { "loop-512", NULL, 8u << 20, true, false, 512, 1055 },
        { "loop-4096", NULL, 8u << 20, true, false, 4096, 1056 },
    };
    g_autofree char *why = NULL;

    tu_init(&argc, &argv, 150);
    signal(SIGABRT, remove_shm_file);
    signal(SIGTRAP, remove_shm_file);
    /* The wrapper makes the directory (and cleans up loop devices on its images); the
     * process that runs one case (tu_add_isolated) uses its parent's. */
    const char *given = g_getenv("LAYERFS_1050_SCRATCH");
    const bool parent = !g_test_subprocess();
    bool have_dir;
    if (given && *given) {
        scratch_dir = g_strdup(given);
        have_dir = g_mkdir_with_parents(scratch_dir, 0700) == 0;
    } else {
        scratch_dir = g_strdup("/var/tmp/layerfs-1050-XXXXXX");
        have_dir = g_mkdtemp(scratch_dir) != NULL;
    }
    if (!have_dir) {
        printf("1..0 # SKIP cannot create a directory under /var/tmp: %s\n", g_strerror(errno));
        return 0;
    }
    if (parent && !odirect_works(scratch_dir, &why)) {
        printf("1..0 # SKIP %s\n", why);
        rmdir(scratch_dir);
        return 0;
    }
    if (parent)     /* before any thread */
        g_setenv("LAYERFS_1050_SCRATCH", scratch_dir, TRUE);
    struct statfs sfs;
    scratch_on_tmpfs = statfs(scratch_dir, &sfs) == 0 && sfs.f_type == TMPFS_MAGIC;
    if (scratch_on_tmpfs && parent)
        printf("# %s is on tmpfs: the \"ext4\" cases run buffered\n", scratch_dir);
    for (size_t i = 0; i < G_N_ELEMENTS(cfgs); i++) {
        g_autofree char *path = g_strdup_printf("/file/%s", cfgs[i].name);
        tu_add_isolated_data(path, &cfgs[i], test_regular);
    }
    tu_add_isolated("/file/many-iovecs", test_many_iovecs);
    tu_add_isolated("/file/tail-race", test_tail_race);
    tu_add_isolated("/file/logwrites", test_logwrites);
    for (size_t i = 0; i < G_N_ELEMENTS(loops); i++) {
        g_autofree char *path = g_strdup_printf("/file/%s", loops[i].name);
        tu_add_isolated_data(path, &loops[i], test_loopdev);
    }
    int rc = g_test_run();
    if (parent && rmdir(scratch_dir) != 0)     /* what a failed case left there is kept */
        printf("# scratch directory kept: %s\n", scratch_dir);
    return rc;
}
