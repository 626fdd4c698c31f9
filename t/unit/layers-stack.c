/* SPDX-License-Identifier: MIT */
/* Layer stack behaviour: read caches hold exactly what was read and never overwrite a racing
 * write, write-through reaches both layers, unmap with next_is_zero, stack validation. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layers/overlay-format.h"
#include "t/unit/layers-test.h"
#include "t/unit/test-util.h"

#define MIB (1u << 20)

static char *tmpdir(void)
{
    g_autoptr(GError) err = NULL;
    char *d = g_dir_make_tmp("layers-stack-XXXXXX", &err);

    g_assert_no_error(err);
    return d;
}

static void rmdir_rf(const char *d)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", d);
    g_assert_cmpint(system(cmd), ==, 0);
}

static struct lf_disk *open_ok(struct lf_disk_cfg *cfg)
{
    g_autoptr(GError) err = NULL;
    struct lf_disk *d = lf_disk_open(cfg, false, &err);

    g_assert_no_error(err);
    g_assert_nonnull(d);
    return d;
}

/* The overlay at path alone, read-only: absent blocks read as zeros. */
static struct lf_disk_cfg *overlay_alone(const char *path)
{
    return lt_disk("alone", true, lt_layer("ovl", "overlay", "file", path), NULL);
}

static void check_cache_holds(const char *cpath, const uint8_t *base, const bool *was_read,
                              unsigned nblocks, uint32_t bs)
{
    struct lf_disk_cfg *cfg = overlay_alone(cpath);
    struct lf_disk *d = open_ok(cfg);
    struct bc_loop *loop = bc_loop_current();
    g_autofree uint8_t *buf = g_malloc(bs);
    g_autofree uint8_t *zero = g_malloc0(bs);

    for (unsigned b = 0; b < nblocks; b++) {
        uint64_t n;
        int li = lf_disk_map(d, (uint64_t)b * bs, bs, &n);
        g_assert_cmpint(li, ==, was_read[b] ? 0 : -1);
        g_assert_cmpint(lt_read(d, loop, buf, bs, (uint64_t)b * bs), ==, 0);
        g_assert_true(tu_cmp(buf, was_read[b] ? base + (size_t)b * bs : zero, bs,
                             (uint64_t)b * bs, "cache content"));
    }
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    lt_disk_free(cfg);
}

static void test_read_cache_exact(void)
{
    g_autofree char *dir = tmpdir();
    g_autofree char *bpath = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *cpath = g_build_filename(dir, "cache.ovl", NULL);
    const uint32_t bs = 16384;
    const unsigned nblocks = 64;
    g_autofree uint8_t *base = lt_make_file(bpath, (size_t)nblocks * bs, 7);
    bool was_read[64] = { 0 };
    GRand *r = g_rand_new_with_seed(tu_seed(11));
    struct bc_loop *loop = bc_loop_current();

    struct lf_layer_cfg *cache = lt_layer("cache", "overlay", "file", cpath);
    cache->create = true;
    cache->read_cache = true;
    cache->block_size = bs;
    struct lf_layer_cfg *bl = lt_layer("base", "raw", "file", bpath);
    bl->read_only = true;
    struct lf_disk_cfg *cfg = lt_disk("rc", true, cache, bl, NULL);
    struct lf_disk *d = open_ok(cfg);

    for (int i = 0; i < 20; i++) {
        unsigned b = (unsigned)g_rand_int_range(r, 0, nblocks);
        unsigned n = (unsigned)g_rand_int_range(r, 1, 4);
        n = MIN(n, nblocks - b);
        g_autofree uint8_t *buf = g_malloc((size_t)n * bs);
        g_assert_cmpint(lt_read(d, loop, buf, (size_t)n * bs, (uint64_t)b * bs), ==, 0);
        g_assert_true(tu_cmp(buf, base + (size_t)b * bs, (size_t)n * bs, (uint64_t)b * bs,
                             "read through cache"));
        for (unsigned k = 0; k < n; k++)
            was_read[b + k] = true;
        /* What was read is now served by the cache layer. */
        uint64_t pn;
        g_assert_cmpint(lf_disk_map(d, (uint64_t)b * bs, (uint64_t)n * bs, &pn), ==, 0);
        g_assert_cmpuint(pn, ==, (uint64_t)n * bs);
    }
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    lt_disk_free(cfg);
    check_cache_holds(cpath, base, was_read, nblocks, bs);
    g_rand_free(r);
    rmdir_rf(dir);
}

/* A write racing a cache fill of the same block is never overwritten by the fill. */
static void test_read_cache_race(void)
{
    g_autofree char *dir = tmpdir();
    g_autofree char *bpath = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *cpath = g_build_filename(dir, "cache.ovl", NULL);
    const uint32_t bs = 4096;
    const unsigned nblocks = 512;
    g_autofree uint8_t *base = lt_make_file(bpath, (size_t)nblocks * bs, 9);
    struct bc_loop *loop = bc_loop_current();
    GRand *r = g_rand_new_with_seed(tu_seed(12));

    for (int ram = 0; ram < 2; ram++) {
        struct lf_layer_cfg *cache = ram ? lt_layer("cache", "ram", NULL, NULL)
                                         : lt_layer("cache", "overlay", "file", cpath);
        cache->create = !ram;
        cache->read_cache = true;
        cache->block_size = bs;
        struct lf_layer_cfg *bl = lt_layer("base", "raw", "file", bpath);
        bl->read_only = true;
        struct lf_disk_cfg *cfg = lt_disk("race", false, cache, bl, NULL);
        struct lf_disk *d = open_ok(cfg);
        unsigned overwritten = 0;

        for (unsigned b = 0; b < nblocks; b++) {
            uint8_t rbuf[4096], wbuf[4096], check[4096];
            struct iovec riov = { rbuf, bs }, wiov = { wbuf, bs };
            struct tu_io rio, wio;
            unsigned pending = 0;
            unsigned delay = b % 8;
            /* Sometimes the write covers only part of the block (copy-up under the lock). */
            uint64_t woff = (uint64_t)b * bs, wlen = bs;
            if (b % 3 == 1) {
                woff += 1000;
                wlen = 700;
            }
            wiov.iov_len = wlen;
            tu_fill_random(r, wbuf, wlen);

            tu_io_start(&rio, &pending);
            lf_disk_readv(d, loop, &riov, 1, (uint64_t)b * bs, tu_io_cb, &rio);
            for (unsigned k = 0; k < delay && !rio.done; k++)
                bc_loop_run_once(loop, false);
            tu_io_start(&wio, &pending);
            lf_disk_writev(d, loop, &wiov, 1, woff, 0, tu_io_cb, &wio);
            tu_run_until_done(loop, &pending);
            g_assert_cmpint(rio.res, ==, 0);
            g_assert_cmpint(wio.res, ==, 0);

            g_assert_cmpint(lt_read(d, loop, check, bs, (uint64_t)b * bs), ==, 0);
            uint8_t want[4096];
            memcpy(want, base + (size_t)b * bs, bs);
            memcpy(want + (woff - (uint64_t)b * bs), wbuf, wlen);
            if (memcmp(check, want, bs) != 0) {
                overwritten++;
                tu_cmp(check, want, bs, (uint64_t)b * bs, "after racing fill and write");
            }
        }
        g_assert_cmpuint(overwritten, ==, 0);
        g_assert_cmpint(lf_disk_close(d), ==, 0);
        lt_disk_free(cfg);
        unlink(cpath);
    }
    g_rand_free(r);
    rmdir_rf(dir);
}

static void test_write_through(void)
{
    g_autofree char *dir = tmpdir();
    g_autofree char *bpath = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *cpath = g_build_filename(dir, "top.ovl", NULL);
    const size_t size = 2 * MIB;
    g_autofree uint8_t *want = lt_make_file(bpath, size, 5);
    struct bc_loop *loop = bc_loop_current();
    GRand *r = g_rand_new_with_seed(tu_seed(13));

    struct lf_layer_cfg *top = lt_layer("top", "overlay", "file", cpath);
    top->create = true;
    top->write_through = true;
    top->block_size = 65536;
    struct lf_disk_cfg *cfg = lt_disk("wt", false, top,
                                      lt_layer("base", "raw", "file", bpath), NULL);
    struct lf_disk *d = open_ok(cfg);
    bool *written = g_new0(bool, size);
    for (int i = 0; i < 30; i++) {
        size_t len = (size_t)g_rand_int_range(r, 1, 200000);
        size_t off = (size_t)g_rand_int_range(r, 0, (gint32)(size - len));
        g_autofree uint8_t *buf = g_malloc(len);
        tu_fill_random(r, buf, len);
        g_assert_cmpint(lt_write(d, loop, buf, len, off, 0), ==, 0);
        memcpy(want + off, buf, len);
        memset(written + off, 1, len);
    }
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    lt_disk_free(cfg);

    /* The base alone holds everything. */
    size_t n;
    g_autofree uint8_t *got = lt_slurp(bpath, &n);
    g_assert_cmpuint(n, ==, size);
    g_assert_true(tu_cmp(got, want, size, 0, "base after write-through"));

    /* The overlay alone holds every written byte. */
    cfg = overlay_alone(cpath);
    d = open_ok(cfg);
    g_autofree uint8_t *ovl = g_malloc(size);
    g_assert_cmpint(lt_read(d, loop, ovl, size, 0), ==, 0);
    for (size_t x = 0; x < size; x++)
        if (written[x] && ovl[x] != want[x])
            g_error("overlay byte %zu is %02x, want %02x", x, ovl[x], want[x]);
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    lt_disk_free(cfg);
    g_free(written);
    g_rand_free(r);
    rmdir_rf(dir);
}

/* Zeroing a range whose lower layers are holes drops the overlay's blocks (next_is_zero);
 * over data it writes zeros; either way the range reads back as zeros and as a hole. */
static void test_unmap(void)
{
    g_autofree char *dir = tmpdir();
    g_autofree char *bpath = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *cpath = g_build_filename(dir, "top.ovl", NULL);
    const size_t size = 4 * MIB;
    struct bc_loop *loop = bc_loop_current();
    g_autofree uint8_t *zero = g_malloc0(MIB);
    g_autofree uint8_t *buf = g_malloc(MIB);

    g_free(lt_make_file(bpath, size, 0));    /* all zeros */
    g_assert_cmpint(truncate(bpath, 0), ==, 0);
    g_assert_cmpint(truncate(bpath, (off_t)size), ==, 0);  /* a hole */
    struct lf_layer_cfg *top = lt_layer("top", "overlay", "file", cpath);
    top->create = true;
    struct lf_disk_cfg *cfg = lt_disk("un", false, top,
                                      lt_layer("base", "raw", "file", bpath), NULL);
    struct lf_disk *d = open_ok(cfg);
    memset(buf, 0xab, MIB);
    g_assert_cmpint(lt_write(d, loop, buf, MIB, MIB, 0), ==, 0);
    uint64_t n;
    g_assert_cmpint(lf_disk_map(d, MIB, MIB, &n), ==, 0);
    struct stat st0, st1;
    g_assert_cmpint(stat(cpath, &st0), ==, 0);
    g_assert_cmpint(lt_zero(d, loop, MIB, MIB, BC_REQ_MAY_UNMAP), ==, 0);
    /* The dropped blocks' space went back to the file system. */
    g_assert_cmpint(stat(cpath, &st1), ==, 0);
    g_assert_cmpint((int64_t)st0.st_blocks - (int64_t)st1.st_blocks, >=, (int64_t)(MIB / 512));
    g_assert_cmpint(lf_disk_map(d, MIB, MIB, &n), ==, 1);   /* dropped: served by base */
    g_assert_cmpint(lt_read(d, loop, buf, MIB, MIB), ==, 0);
    g_assert_true(tu_cmp(buf, zero, MIB, MIB, "after unmap"));
    g_assert_cmpint(lf_disk_block_status(d, MIB, MIB, &n), ==, 0);
    g_assert_cmpuint(n, ==, MIB);
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    lt_disk_free(cfg);
    rmdir_rf(dir);
}

static void expect_open_error(struct lf_disk_cfg *cfg, const char *const *needles)
{
    g_autoptr(GError) err = NULL;
    struct lf_disk *d = lf_disk_open(cfg, false, &err);

    g_assert_null(d);
    g_assert_nonnull(err);
    g_test_message("expected error: %s", err->message);
    for (; *needles; needles++)
        if (strstr(err->message, *needles) == NULL)
            g_error("error '%s' does not mention '%s'", err->message, *needles);
    lt_disk_free(cfg);
}

static void test_validate(void)
{
    g_autofree char *dir = tmpdir();
    g_autofree char *bpath = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *opath = g_build_filename(dir, "o.ovl", NULL);
    g_free(lt_make_file(bpath, MIB, 3));
    g_autoptr(GError) err = NULL;
    g_assert_true(ovl_create_file(opath, MIB, 65536, 0, 0, &err));

    struct lf_layer_cfg *a, *b;
    /* The last layer may not be write-through. */
    a = lt_layer("top", "ram", NULL, NULL);
    b = lt_layer("base", "raw", "file", bpath);
    b->write_through = true;
    expect_open_error(lt_disk("v", false, a, b, NULL),
                      (const char *const[]){ "layer base", "write-through", NULL });
    /* Write-through layers must come first. */
    a = lt_layer("top", "ram", NULL, NULL);
    struct lf_layer_cfg *m = lt_layer("mid", "ram", NULL, NULL);
    m->write_through = true;
    b = lt_layer("base", "raw", "file", bpath);
    expect_open_error(lt_disk("v", false, a, m, b, NULL),
                      (const char *const[]){ "layer mid", "write-through", NULL });
    /* A raw layer cannot be a read cache. */
    a = lt_layer("top", "raw", "file", bpath);
    a->read_cache = true;
    expect_open_error(lt_disk("v", false, a, lt_layer("b2", "raw", "file", bpath), NULL),
                      (const char *const[]){ "layer top", "read-cache", NULL });
    /* A read-only layer the disk writes to. */
    a = lt_layer("top", "raw", "file", bpath);
    a->read_only = true;
    expect_open_error(lt_disk("v", false, a, NULL),
                      (const char *const[]){ "layer top", "read-only", NULL });
    /* A block size that does not match the existing overlay. */
    a = lt_layer("top", "overlay", "file", opath);
    a->block_size = 4096;
    expect_open_error(lt_disk("v", false, a, lt_layer("base", "raw", "file", bpath), NULL),
                      (const char *const[]){ opath, "block-size", "65536", NULL });
    /* A ram layer needs something to size it. */
    expect_open_error(lt_disk("v", false, lt_layer("r", "ram", NULL, NULL), NULL),
                      (const char *const[]){ "size", NULL });
    /* One overlay cannot serve two disks (or processes) at once. */
    a = lt_layer("top", "overlay", "file", opath);
    struct lf_disk_cfg *first = lt_disk("first", false, a,
                                        lt_layer("base", "raw", "file", bpath), NULL);
    struct lf_disk *d1 = open_ok(first);
    a = lt_layer("top", "overlay", "file", opath);
    b = lt_layer("base", "raw", "file", bpath);
    b->read_only = true;
    expect_open_error(lt_disk("second", false, a, b, NULL),
                      (const char *const[]){ opath, "in use", NULL });
    g_assert_cmpint(lf_disk_close(d1), ==, 0);
    lt_disk_free(first);
    /* Read-only disks accept read-only layers. */
    a = lt_layer("top", "overlay", "file", opath);
    a->read_only = true;
    b = lt_layer("base", "raw", "file", bpath);
    b->read_only = true;
    struct lf_disk_cfg *cfg = lt_disk("v", true, a, b, NULL);
    struct lf_disk *d = open_ok(cfg);
    g_assert_true(lf_disk_read_only(d));
    g_assert_cmpuint(lf_disk_size(d), ==, MIB);
    g_assert_cmpint(lt_write(d, bc_loop_current(), "x", 1, 0, 0), ==, -EROFS);
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    lt_disk_free(cfg);
    rmdir_rf(dir);
}

/* Threads, each with its own loop, write disjoint 512-byte stripes that share overlay
 * blocks: copy-ups, range locks and flushes contend across loops; nothing may be lost. */
#define NTHREADS 4
#define TREGION (2u << 20)

struct tctx {
    struct lf_disk *disk;
    unsigned id;
    uint8_t *model;         /* shared; each thread writes only its own stripes */
    guint32 seed;
    bool ok;
};

static gpointer thread_main(gpointer p)
{
    struct tctx *t = p;
    struct bc_loop *loop = bc_loop_new(t->id + 1, 128, NULL);
    GRand *r = g_rand_new_with_seed(t->seed + t->id);
    uint8_t buf[512];

    g_assert_nonnull(loop);
    for (int i = 0; i < 400; i++) {
        /* A batch of writes to this thread's stripes, in flight together. */
        struct tu_io ios[8];
        struct iovec iov[8];
        uint8_t *bufs[8];
        unsigned pending = 0;
        uint64_t used[8];
        for (int k = 0; k < 8; k++) {
            /* Distinct stripes: overlapping writes in flight together have no order. */
            uint64_t stripe;
            bool dup;
            do {
                stripe = (uint64_t)g_rand_int_range(r, 0, TREGION / 512 / NTHREADS);
                dup = false;
                for (int j = 0; j < k; j++)
                    dup |= used[j] == stripe;
            } while (dup);
            used[k] = stripe;
            uint64_t off = (stripe * NTHREADS + t->id) * 512;
            uint32_t a = (uint32_t)g_rand_int_range(r, 0, 512);
            uint32_t len = (uint32_t)g_rand_int_range(r, 1, (gint32)(512 - a + 1));
            bufs[k] = g_malloc(len);
            tu_fill_random(r, bufs[k], len);
            iov[k] = (struct iovec){ bufs[k], len };
            tu_io_start(&ios[k], &pending);
            if (k == 7 && i % 10 == 0) {
                lf_disk_flush(t->disk, loop, tu_io_cb, &ios[k]);
            } else {
                memcpy(t->model + off + a, bufs[k], len);
                lf_disk_writev(t->disk, loop, &iov[k], 1, off + a, 0, tu_io_cb, &ios[k]);
            }
        }
        tu_run_until_done(loop, &pending);
        for (int k = 0; k < 8; k++) {
            if (ios[k].res != 0) {
                g_test_message("thread %u: request failed: %d", t->id, ios[k].res);
                t->ok = false;
            }
            g_free(bufs[k]);
        }
        /* Read one of this thread's stripes back. */
        uint64_t stripe = (uint64_t)g_rand_int_range(r, 0, TREGION / 512 / NTHREADS);
        uint64_t off = (stripe * NTHREADS + t->id) * 512;
        t->ok &= lt_read(t->disk, loop, buf, 512, off) == 0;
        if (!tu_cmp(buf, t->model + off, 512, off, "stripe read back"))
            t->ok = false;
    }
    g_rand_free(r);
    bc_loop_free(loop);
    return NULL;
}

static void test_threads(void)
{
    g_autofree char *dir = tmpdir();
    g_autofree char *bpath = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *opath = g_build_filename(dir, "top.ovl", NULL);
    g_autofree uint8_t *base = lt_make_file(bpath, TREGION, 17);
    uint8_t *model = g_malloc(TREGION);
    guint32 seed = tu_seed(14);

    for (int fmt = 0; fmt < 2; fmt++) {
        struct lf_layer_cfg *top = fmt ? lt_layer("top", "ram", NULL, NULL)
                                       : lt_layer("top", "overlay", "file", opath);
        top->create = !fmt;
        top->block_size = 65536;
        memcpy(model, base, TREGION);
        struct lf_disk_cfg *cfg = lt_disk("th", false, top,
                                          lt_layer("base", "raw", "file", bpath), NULL);
        struct lf_disk *d = open_ok(cfg);
        struct tctx t[NTHREADS];
        GThread *th[NTHREADS];
        for (unsigned i = 0; i < NTHREADS; i++) {
            t[i] = (struct tctx){ .disk = d, .id = i, .model = model, .seed = seed, .ok = true };
            th[i] = g_thread_new("writer", thread_main, &t[i]);
        }
        for (unsigned i = 0; i < NTHREADS; i++) {
            g_thread_join(th[i]);
            g_assert_true(t[i].ok);
        }
        g_autofree uint8_t *all = g_malloc(TREGION);
        g_assert_cmpint(lt_read(d, bc_loop_current(), all, TREGION, 0), ==, 0);
        g_assert_true(tu_cmp(all, model, TREGION, 0, "after concurrent writers"));
        g_assert_cmpint(lf_disk_close(d), ==, 0);
        lt_disk_free(cfg);
        if (!fmt) {
            /* And it all persisted. */
            cfg = lt_disk("th2", true, lt_layer("top", "overlay", "file", opath),
                          lt_layer("base", "raw", "file", bpath), NULL);
            d = open_ok(cfg);
            g_assert_cmpint(lt_read(d, bc_loop_current(), all, TREGION, 0), ==, 0);
            g_assert_true(tu_cmp(all, model, TREGION, 0, "after reopen"));
            g_assert_cmpint(lf_disk_close(d), ==, 0);
            lt_disk_free(cfg);
        }
    }
    g_free(model);
    rmdir_rf(dir);
}

/* Errors from below reach the caller and leave no half-made blocks: a failed copy-up
 * fails the write and the block stays absent; a failed read fills no cache. */
static void test_errors(void)
{
    g_autofree char *dir = tmpdir();
    g_autofree char *opath = g_build_filename(dir, "top.ovl", NULL);
    struct bc_loop *loop = bc_loop_current();
    const uint64_t bad = 256 << 10;     /* the base fails reads of [256K, 320K) */
    uint8_t buf[65536];
    uint64_t n;

    for (int ram = 0; ram < 2; ram++) {
        struct lf_layer_cfg *top = ram ? lt_layer("top", "ram", NULL, NULL)
                                       : lt_layer("top", "overlay", "file", opath);
        top->create = !ram;
        top->block_size = 65536;
        top->read_cache = ram;
        struct lf_layer_cfg *base = lt_layer("base", "raw", "fault", NULL);
        lt_opt(base, "size", "1M");
        lt_opt(base, "fault-read-offset", "256K");
        lt_opt(base, "fault-len", "64K");
        lt_opt(base, "fault-errno", "EIO");
        struct lf_disk_cfg *cfg = lt_disk("err", false, top, base, NULL);
        struct lf_disk *d = open_ok(cfg);

        g_assert_cmpint(lt_read(d, loop, buf, 4096, bad + 8192), ==, -EIO);
        g_assert_cmpint(lf_disk_map(d, bad, 65536, &n), ==, 1);   /* nothing cached */
        memset(buf, 0x77, sizeof(buf));
        g_assert_cmpint(lt_write(d, loop, buf, 100, bad + 5, 0), ==, -EIO);
        g_assert_cmpint(lf_disk_map(d, bad, 65536, &n), ==, 1);   /* still absent */
        g_assert_cmpint(lt_read(d, loop, buf, 4096, 0), ==, 0);   /* the rest works */
        memset(buf, 0x66, sizeof(buf));
        g_assert_cmpint(lt_write(d, loop, buf, 65536, bad, 0), ==, 0);  /* no copy-up */
        g_assert_cmpint(lf_disk_map(d, bad, 65536, &n), ==, 0);
        uint8_t back[65536];
        g_assert_cmpint(lt_read(d, loop, back, sizeof(back), bad), ==, 0);
        g_assert_true(tu_cmp(back, buf, sizeof(back), bad, "block written over a bad range"));
        g_assert_cmpint(lf_disk_close(d), ==, 0);
        lt_disk_free(cfg);
    }
    rmdir_rf(dir);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv, 300);
    struct bc_loop *loop = bc_loop_new(0, 256, NULL);
    g_assert_nonnull(loop);
    tu_add_isolated("/layers/read-cache/holds-exactly-what-was-read", test_read_cache_exact);
    tu_add_isolated("/layers/read-cache/write-racing-fill", test_read_cache_race);
    tu_add_isolated("/layers/write-through/both-layers", test_write_through);
    tu_add_isolated("/layers/unmap/next-is-zero", test_unmap);
    tu_add_isolated("/layers/validate/bad-stacks", test_validate);
    tu_add_isolated("/layers/threads/shared-blocks", test_threads);
    tu_add_isolated("/layers/errors/copy-up-and-fill", test_errors);
    int rc = g_test_run();
    bc_loop_free(loop);
    return rc;
}
