/* SPDX-License-Identifier: MIT */
/* Bounded read caches (cache-size, layers/cache.c): the figures match known traffic, reads
 * racing evictions on several threads always see the right data, batches of victims never
 * deadlock with reads queued among their locks, the file stays within its bound, a restart
 * with a smaller bound evicts down to it, and power cuts while evicting never leave a
 * present block without its data. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layers/cache.h"
#include "t/unit/layers-test.h"
#include "t/unit/test-util.h"

#define BS 16384u
/* A cache-size for n blocks: overlay header and bitmap, the file system allowance, n blocks
 * at BS + 16 bytes each (see cache.c). */
#define SIZE_FOR(n) (4096u + 4096u + 8192u + (uint64_t)(n) * (BS + 16))

static char *tmpdir(void)
{
    g_autoptr(GError) err = NULL;
    char *d = g_dir_make_tmp("layers-cache-XXXXXX", &err);

    g_assert_no_error(err);
    return d;
}

static void rmdir_rf(const char *d)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", d);
    g_assert_cmpint(system(cmd), ==, 0);
}

/* A read-only disk: a bounded cache of cache_blocks blocks over the raw base. */
static struct lf_disk_cfg *cache_disk_on(const char *driver, const char *cpath,
                                         const char *bpath, uint64_t cache_blocks)
{
    struct lf_layer_cfg *c = lt_layer("cache", "overlay", driver, cpath);
    c->create = true;
    c->read_cache = true;
    c->block_size = BS;
    c->cache_size = SIZE_FOR(cache_blocks);
    struct lf_layer_cfg *b = lt_layer("base", "raw", "file", bpath);
    b->read_only = true;
    return lt_disk("cached", true, c, b, NULL);
}

static struct lf_disk_cfg *cache_disk(const char *cpath, const char *bpath,
                                      uint64_t cache_blocks)
{
    return cache_disk_on("file", cpath, bpath, cache_blocks);
}

static struct lf_disk *open_ok(struct lf_disk_cfg *cfg)
{
    g_autoptr(GError) err = NULL;
    struct lf_disk *d = lf_disk_open(cfg, false, &err);

    g_assert_no_error(err);
    g_assert_nonnull(d);
    return d;
}

static uint64_t du(const char *path)
{
    struct stat st;

    g_assert_cmpint(stat(path, &st), ==, 0);
    return (uint64_t)st.st_blocks * 512;
}

static struct lf_cache_stats stats(struct lf_disk *d)
{
    struct lf_cache_stats st;

    g_assert_true(lf_disk_cache_stats(d, 0, &st));
    return st;
}

/* Every block the cache file holds (opened alone) is the base's. */
static void check_cache_copies(const char *cpath, const uint8_t *base, unsigned nblocks)
{
    struct lf_disk_cfg *cfg = lt_disk("alone", true, lt_layer("c", "overlay", "file", cpath),
                                      NULL);
    struct lf_disk *d = open_ok(cfg);
    g_autofree uint8_t *buf = g_malloc(BS);

    for (unsigned b = 0; b < nblocks; b++) {
        uint64_t n;
        if (lf_disk_map(d, (uint64_t)b * BS, BS, &n) != 0)
            continue;
        g_assert_cmpint(lt_read(d, bc_loop_current(), buf, BS, (uint64_t)b * BS), ==, 0);
        g_assert_true(tu_cmp(buf, base + (size_t)b * BS, BS, (uint64_t)b * BS,
                             "block held by the cache file"));
    }
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    lt_disk_free(cfg);
}

/* N distinct blocks read twice with room for all: N misses, then N hits. */
static void test_figures(void)
{
    g_autofree char *dir = tmpdir();
    g_autofree char *bpath = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *cpath = g_build_filename(dir, "cache.ovl", NULL);
    const unsigned nblocks = 256, n = 40;
    g_autofree uint8_t *base = lt_make_file(bpath, (size_t)nblocks * BS, 21);
    g_autofree uint8_t *buf = g_malloc(BS);
    struct bc_loop *loop = bc_loop_current();
    struct lf_disk_cfg *cfg = cache_disk(cpath, bpath, 64);
    struct lf_disk *d = open_ok(cfg);
    struct lf_cache_stats st;

    for (int pass = 0; pass < 2; pass++) {
        for (unsigned i = 0; i < n; i++) {
            uint64_t off = (uint64_t)(i * 5 % nblocks) * BS;
            g_assert_cmpint(lt_read(d, loop, buf, BS, off), ==, 0);
            g_assert_true(tu_cmp(buf, base + off, BS, off, "read through the cache"));
        }
        st = stats(d);
        g_test_message("pass %d: hits %" PRIu64 " misses %" PRIu64, pass, st.hits, st.misses);
        g_assert_cmpuint(st.misses, ==, n);
        g_assert_cmpuint(st.hits, ==, pass * n);
        g_assert_cmpuint(st.evictions, ==, 0);
        g_assert_cmpuint(st.filled_bytes, ==, (uint64_t)n * BS);
        g_assert_cmpuint(st.below_bytes, ==, (uint64_t)n * BS);
        g_assert_cmpuint(st.used_blocks, ==, n);
        g_assert_cmpuint(st.limit_blocks, ==, 64);
    }
    g_assert_cmpint(lf_disk_close(d), ==, 0);

    /* Reopened: the contents persist, so a third pass is all hits. */
    d = open_ok(cfg);
    for (unsigned i = 0; i < n; i++)
        g_assert_cmpint(lt_read(d, loop, buf, BS, (uint64_t)(i * 5 % nblocks) * BS), ==, 0);
    st = stats(d);
    g_assert_cmpuint(st.hits, ==, n);
    g_assert_cmpuint(st.misses, ==, 0);
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    lt_disk_free(cfg);
    rmdir_rf(dir);
}

#define NTHREADS 3
#define INFLIGHT 24

struct rctx {
    struct lf_disk *disk;
    const uint8_t *base;
    unsigned nblocks;
    unsigned id;
    guint32 seed;
    const char *cpath;
    uint64_t limit_bytes;
    bool ok;
    int finished;           /* set when reader_main returns */
};

/* Many reads in flight over a hot set and the whole disk, checked as they complete. */
static gpointer reader_main(gpointer p)
{
    struct rctx *t = p;
    struct bc_loop *loop = bc_loop_new(t->id + 1, 256, NULL);
    GRand *r = g_rand_new_with_seed(t->seed + t->id);
    const uint64_t size = (uint64_t)t->nblocks * BS;

    g_assert_nonnull(loop);
    for (int round = 0; round < 60 && t->ok; round++) {
        struct tu_io ios[INFLIGHT];
        uint8_t *bufs[INFLIGHT];
        struct iovec iov[INFLIGHT];
        uint64_t offs[INFLIGHT];
        unsigned pending = 0;

        for (int k = 0; k < INFLIGHT; k++) {
            bool hot = g_rand_boolean(r);
            uint64_t b = (uint64_t)g_rand_int_range(r, 0, hot ? 6 : (gint32)t->nblocks);
            uint64_t off = b * BS + (g_rand_boolean(r) ? 0 : (uint64_t)g_rand_int_range(r, 0, BS));
            uint64_t len = (uint64_t)g_rand_int_range(r, 1, 3 * BS);
            len = MIN(len, size - off);
            offs[k] = off;
            bufs[k] = g_malloc(len);
            iov[k] = (struct iovec){ bufs[k], len };
            tu_io_start(&ios[k], &pending);
            lf_disk_readv(t->disk, loop, &iov[k], 1, off, tu_io_cb, &ios[k]);
        }
        tu_run_until_done(loop, &pending);
        for (int k = 0; k < INFLIGHT; k++) {
            if (ios[k].res != 0) {
                g_test_message("thread %u: read failed: %d", t->id, ios[k].res);
                t->ok = false;
            } else if (!tu_cmp(bufs[k], t->base + offs[k], iov[k].iov_len, offs[k],
                               "read racing evictions")) {
                t->ok = false;
            }
            g_free(bufs[k]);
        }
        if (du(t->cpath) > t->limit_bytes) {
            g_test_message("cache file takes %" PRIu64 " bytes, more than %" PRIu64,
                           du(t->cpath), t->limit_bytes);
            t->ok = false;
        }
    }
    g_rand_free(r);
    bc_loop_free(loop);
    __atomic_store_n(&t->finished, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void test_concurrent_evictions(void)
{
    g_autofree char *dir = tmpdir();
    g_autofree char *bpath = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *cpath = g_build_filename(dir, "cache.ovl", NULL);
    const unsigned nblocks = 512;
    g_autofree uint8_t *base = lt_make_file(bpath, (size_t)nblocks * BS, 22);
    struct lf_disk_cfg *cfg = cache_disk(cpath, bpath, 24);
    struct lf_disk *d = open_ok(cfg);
    struct rctx t[NTHREADS];
    GThread *th[NTHREADS];
    guint32 seed = tu_seed(23);

    /* Reads from the cache dawdle between their check and their read, as a preempted
     * thread would, while the other threads evict. */
    cache_test_read_delay_us = 5000;

    for (unsigned i = 0; i < NTHREADS; i++) {
        t[i] = (struct rctx){ .disk = d, .base = base, .nblocks = nblocks, .id = i,
                              .seed = seed, .cpath = cpath, .limit_bytes = SIZE_FOR(24),
                              .ok = true };
        th[i] = g_thread_new("reader", reader_main, &t[i]);
    }
    for (unsigned i = 0; i < NTHREADS; i++) {
        g_thread_join(th[i]);
        g_assert_true(t[i].ok);
    }
    struct lf_cache_stats st = stats(d);
    g_test_message("hits %" PRIu64 " misses %" PRIu64 " evictions %" PRIu64, st.hits,
                   st.misses, st.evictions);
    g_assert_cmpuint(st.evictions, >, 100);
    g_assert_cmpuint(st.hits, >, 100);
    g_assert_cmpuint(st.used_blocks, <=, 24);
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    g_assert_cmpuint(du(cpath), <=, SIZE_FOR(24));
    check_cache_copies(cpath, base, nblocks);
    lt_disk_free(cfg);
    rmdir_rf(dir);
}

/* Batches of ten victims, each batch dawdling after every victim's lock request, while
 * reads of up to three blocks on other threads queue among its locks: a batch that held
 * some victims while it waited for others behind such a read (which waits for them) would
 * hang, so the readers must all be done within a minute. */
static void test_batch_lock_order(void)
{
    g_autofree char *dir = tmpdir();
    g_autofree char *bpath = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *cpath = g_build_filename(dir, "cache.ovl", NULL);
    const unsigned nblocks = 512;
    g_autofree uint8_t *base = lt_make_file(bpath, (size_t)nblocks * BS, 26);
    struct lf_disk_cfg *cfg = cache_disk(cpath, bpath, 160);
    struct lf_disk *d = open_ok(cfg);
    struct rctx t[NTHREADS];
    GThread *th[NTHREADS];
    guint32 seed = tu_seed(27);
    gint64 deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
    unsigned done = 0;

    cache_test_evict_delay_us = 3000;
    for (unsigned i = 0; i < NTHREADS; i++) {
        t[i] = (struct rctx){ .disk = d, .base = base, .nblocks = nblocks, .id = i,
                              .seed = seed, .cpath = cpath, .limit_bytes = SIZE_FOR(160),
                              .ok = true };
        th[i] = g_thread_new("reader", reader_main, &t[i]);
    }
    while (done < NTHREADS && g_get_monotonic_time() < deadline) {
        g_usleep(10000);
        done = 0;
        for (unsigned i = 0; i < NTHREADS; i++)
            done += (unsigned)__atomic_load_n(&t[i].finished, __ATOMIC_ACQUIRE);
    }
    if (done < NTHREADS)
        g_test_message("%u of %u readers still waiting after 60 s: the cache hangs",
                       NTHREADS - done, NTHREADS);
    g_assert_cmpuint(done, ==, NTHREADS);   /* else abort: the hung threads go with us */
    for (unsigned i = 0; i < NTHREADS; i++) {
        g_thread_join(th[i]);
        g_assert_true(t[i].ok);
    }
    cache_test_evict_delay_us = 0;
    struct lf_cache_stats st = stats(d);
    g_test_message("hits %" PRIu64 " misses %" PRIu64 " evictions %" PRIu64, st.hits,
                   st.misses, st.evictions);
    g_assert_cmpuint(st.evictions, >, 100);
    g_assert_cmpuint(st.used_blocks, <=, 160);
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    check_cache_copies(cpath, base, nblocks);
    lt_disk_free(cfg);
    rmdir_rf(dir);
}

/* A restart with a smaller cache-size evicts down to it; the data stays right. */
static void test_shrink(void)
{
    g_autofree char *dir = tmpdir();
    g_autofree char *bpath = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *cpath = g_build_filename(dir, "cache.ovl", NULL);
    const unsigned nblocks = 128;
    g_autofree uint8_t *base = lt_make_file(bpath, (size_t)nblocks * BS, 24);
    g_autofree uint8_t *all = g_malloc((size_t)nblocks * BS);
    struct bc_loop *loop = bc_loop_current();

    struct lf_disk_cfg *cfg = cache_disk(cpath, bpath, nblocks);
    struct lf_disk *d = open_ok(cfg);
    g_assert_cmpint(lt_read(d, loop, all, (size_t)nblocks * BS, 0), ==, 0);
    g_assert_cmpuint(stats(d).used_blocks, ==, nblocks);
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    lt_disk_free(cfg);
    g_assert_cmpuint(du(cpath), >=, (uint64_t)nblocks * BS);

    cfg = cache_disk(cpath, bpath, 20);
    d = open_ok(cfg);
    g_assert_cmpuint(stats(d).used_blocks, ==, 20);
    g_assert_cmpuint(stats(d).evictions, ==, nblocks - 20);
    g_assert_cmpuint(du(cpath), <=, SIZE_FOR(20));
    memset(all, 0, (size_t)nblocks * BS);
    g_assert_cmpint(lt_read(d, loop, all, (size_t)nblocks * BS, 0), ==, 0);
    g_assert_true(tu_cmp(all, base, (size_t)nblocks * BS, 0, "after shrinking"));
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    g_assert_cmpuint(du(cpath), <=, SIZE_FOR(20));
    lt_disk_free(cfg);
    check_cache_copies(cpath, base, nblocks);
    rmdir_rf(dir);
}

/* Power cuts while evicting (the cache file behind the fault driver's volatile write cache,
 * half the writes reaching the file early in any order): afterwards every block the file
 * says is present holds the base's data, never the zeros of a punch. */
static void test_power_cut(void)
{
    g_autofree char *dir = tmpdir();
    g_autofree char *bpath = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *cpath = g_build_filename(dir, "cache.ovl", NULL);
    const unsigned nblocks = 64;
    g_autofree uint8_t *base = lt_make_file(bpath, (size_t)nblocks * BS, 26);
    g_autofree uint8_t *buf = g_malloc(BS);
    struct bc_loop *loop = bc_loop_current();
    GRand *r = g_rand_new_with_seed(tu_seed(27));
    unsigned evicted = 0;

    for (unsigned cut = 2; cut <= 40; cut++) {
        g_autofree char *n = g_strdup_printf("%u", cut);
        unlink(cpath);
        struct lf_disk_cfg *cfg = cache_disk_on("fault", cpath, bpath, 6);
        struct lf_layer_cfg *c = g_ptr_array_index(cfg->layers, 0);
        lt_opt(c, "fault-writeback", "50");
        lt_opt(c, "fault-power-cut", n);
        lt_opt(c, "fault-seed", n);
        struct lf_disk *d = open_ok(cfg);
        unsigned reads = 0;
        for (; reads < 300; reads++) {
            uint64_t off = (uint64_t)g_rand_int_range(r, 0, (gint32)nblocks) * BS;
            if (lt_read(d, loop, buf, BS, off) < 0)
                break;  /* the cut reached a read from the cache */
            g_assert_true(tu_cmp(buf, base + off, BS, off, "read before the cut"));
            /* As a user's fsync would, make the fills' presence bits durable. */
            if (reads % 4 == 3 && lt_flush(d, loop) < 0)
                break;
        }
        evicted += stats(d).evictions > 0;
        lf_disk_close(d);   /* fails after the cut */
        lt_disk_free(cfg);
        check_cache_copies(cpath, base, nblocks);
    }
    g_test_message("%u of 39 runs evicted before their cut", evicted);
    g_assert_cmpuint(evicted, >=, 20);
    g_rand_free(r);
    rmdir_rf(dir);
}

/* A bounded cache a writable disk writes to would hold more than copies: refused. */
static void test_refused_in_write_chain(void)
{
    g_autofree char *dir = tmpdir();
    g_autofree char *bpath = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *cpath = g_build_filename(dir, "cache.ovl", NULL);
    g_autofree uint8_t *base = lt_make_file(bpath, 64 * BS, 25);

    for (int wt = 0; wt < 2; wt++) {
        struct lf_disk_cfg *cfg = cache_disk(cpath, bpath, 8);
        struct lf_layer_cfg *c = g_ptr_array_index(cfg->layers, 0);
        c->write_through = wt;
        cfg->read_only = false;
        ((struct lf_layer_cfg *)g_ptr_array_index(cfg->layers, 1))->read_only = false;
        g_autoptr(GError) err = NULL;
        g_assert_null(lf_disk_open(cfg, false, &err));
        g_assert_nonnull(err);
        g_test_message("%s", err->message);
        g_assert_nonnull(strstr(err->message, "cache-size: disk cached writes to layer cache"));
        lt_disk_free(cfg);
    }
    rmdir_rf(dir);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv, 300);
    struct bc_loop *loop = bc_loop_new(0, 256, NULL);
    g_assert_nonnull(loop);
    tu_add_isolated("/layers/cache/figures", test_figures);
    tu_add_isolated("/layers/cache/concurrent-evictions", test_concurrent_evictions);
    tu_add_isolated("/layers/cache/batch-lock-order", test_batch_lock_order);
    tu_add_isolated("/layers/cache/shrink-at-restart", test_shrink);
    tu_add_isolated("/layers/cache/power-cut-while-evicting", test_power_cut);
    tu_add_isolated("/layers/cache/refused-in-write-chain", test_refused_in_write_chain);
    int rc = g_test_run();
    bc_loop_free(loop);
    return rc;
}
