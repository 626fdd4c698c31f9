/* SPDX-License-Identifier: MIT */
/* The fault driver (tests only): a ram disk whose reads and writes fail with a chosen
 * errno at chosen offsets or after a number of requests, set by keys or at run time; with
 * a path, a disk with a volatile write cache over that file, which a power cut empties. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "drivers/ram.h"
#include "drivers/drivers.h"
#include "drivers/util.h"
#include "blockcore/testing.h"

/*
 * Notes on the design
 *
 * A rule fails the requests of its kind (reads; writes, which include write-zeroes) that
 * touch [offset, offset+len), or every request of its kind when len is 0.  With
 * after_n >= 0 the first after_n requests the rule matches pass and every later one fails.
 * A rule with len 0 and after_n < 0 is off.  The key fault-after sets a third rule that
 * counts reads and writes together.  Flush and discard never fail.  A failed request does
 * not touch the data.
 *
 * The rules and their counters are guarded by fault->lock: loops on several threads
 * submit to one device while a test changes the rules.
 *
 * Power cuts.  With a path, the ram disk is a volatile write cache in front of that file,
 * the medium: open loads the file, reads and writes go to the ram, and a flush writes
 * every chunk written since the last flush back to the file and fdatasyncs it.  Data not
 * flushed lives only in the process, so killing it (kill -9) is a power cut: the file then
 * holds what was flushed, plus the writes the cache wrote back early, a random share set
 * by fault-writeback -- in any order, as real disks do.  fault-power-cut=N cuts the power
 * from inside, exactly when the Nth flush arrives: the same share of the cached chunks
 * reaches the file, then that request and every later one fail with EIO and the file no
 * longer changes.  Close writes nothing back.  The cache state
 * is guarded by cache->lock; a request's data is copied into the ram before it takes the
 * lock, and overlapping requests are ordered by the generic layer.
 */

#define BC_FAULT_MAGIC 0x466c7448u

enum { BC_FAULT_READ, BC_FAULT_WRITE, BC_FAULT_ANY, BC_FAULT_NRULES };

struct bc_fault_rule {
    uint64_t offset, len;
    int err;
    int64_t after_n;   /* -1: no count */
    uint64_t seen;     /* matching requests so far */
};

/* The volatile write cache over a file (a fault device with a path). */
struct bc_fault_cache {
    int fd;                 /* the medium */
    uint64_t size;
    uint32_t chunk;         /* write-back granularity: a power of two >= the alignment */
    uint32_t writeback;     /* percent of writes written back as they complete */
    bool read_only;
    int64_t cut_at;         /* the flush that cuts the power, 1-based (0 acts as 1); -1 never */
    uint8_t *buf;           /* one chunk run for write-back, bc_buf_alloc() */
    GMutex lock;            /* protects everything below */
    unsigned long *dirty;   /* one bit per chunk written since it last reached fd */
    GRand *rand;
    uint64_t flushes;       /* flush requests seen */
    bool cut;               /* the power is off */
};

struct bc_fault {
    uint32_t magic;
    struct bc_ram *ram;
    struct bc_fault_cache *cache;               /* NULL without a path */
    GMutex lock;                                 /* protects rule[] */
    struct bc_fault_rule rule[BC_FAULT_NRULES];
};

static bool bc_fault_rule_on(const struct bc_fault_rule *r)
{
    return r->len > 0 || r->after_n >= 0;
}

/* Does r fail [offset, offset+len)? Counts the request when it matches. */
static bool bc_fault_rule_hit(struct bc_fault_rule *r, uint64_t offset, uint64_t len)
{
    if (!bc_fault_rule_on(r))
        return false;
    if (r->len > 0 && !(offset < r->offset + r->len && r->offset < offset + len))
        return false;
    if (r->after_n >= 0 && r->seen < (uint64_t)r->after_n) {
        r->seen++;
        return false;
    }
    return true;
}

/* 0 or the -errno dreq must fail with. */
static int bc_fault_check(struct bc_fault *f, const struct bc_dreq *dreq)
{
    int kind, err = 0;

    if (dreq->op == BC_OP_READ)
        kind = BC_FAULT_READ;
    else if (dreq->op == BC_OP_WRITE || dreq->op == BC_OP_WRITE_ZEROES)
        kind = BC_FAULT_WRITE;
    else
        return 0;

    g_mutex_lock(&f->lock);
    if (bc_fault_rule_hit(&f->rule[kind], dreq->offset, dreq->len))
        err = f->rule[kind].err;
    else if (bc_fault_rule_hit(&f->rule[BC_FAULT_ANY], dreq->offset, dreq->len))
        err = f->rule[BC_FAULT_ANY].err;
    g_mutex_unlock(&f->lock);
    return -err;
}

static void bc_fault_rule_set(struct bc_fault_rule *r, uint64_t offset, uint64_t len, int err,
                              int64_t after_n)
{
    *r = (struct bc_fault_rule){
        .offset = offset,
        .len = len,
        .err = err,
        .after_n = after_n < 0 ? -1 : after_n,
    };
}

void bc_fault_set(void *fault_state, enum bc_op op, uint64_t offset, uint64_t len, int err,
                  int64_t after_n)
{
    struct bc_fault *f = fault_state;

    g_return_if_fail(f && f->magic == BC_FAULT_MAGIC);
    g_return_if_fail(op == BC_OP_READ || op == BC_OP_WRITE);
    g_return_if_fail(err > 0 || (len == 0 && after_n < 0));
    g_mutex_lock(&f->lock);
    bc_fault_rule_set(&f->rule[op == BC_OP_READ ? BC_FAULT_READ : BC_FAULT_WRITE], offset, len,
                      err, after_n);
    g_mutex_unlock(&f->lock);
}

void bc_fault_clear(void *fault_state)
{
    struct bc_fault *f = fault_state;

    g_return_if_fail(f && f->magic == BC_FAULT_MAGIC);
    g_mutex_lock(&f->lock);
    for (int i = 0; i < BC_FAULT_NRULES; i++)
        bc_fault_rule_set(&f->rule[i], 0, 0, 0, -1);
    g_mutex_unlock(&f->lock);
}


/* ---- the volatile write cache (a path given) ----------------------------------------- */

#define BC_FAULT_LONG_BITS (8 * sizeof(unsigned long))
#define BC_FAULT_RUN (1u << 20)     /* bytes written back or loaded per system call */

static bool bc_fault_dirty_test(const struct bc_fault_cache *c, uint64_t i)
{
    return c->dirty[i / BC_FAULT_LONG_BITS] & (1ul << (i % BC_FAULT_LONG_BITS));
}

static void bc_fault_dirty_set(struct bc_fault_cache *c, uint64_t i, bool on)
{
    if (on)
        c->dirty[i / BC_FAULT_LONG_BITS] |= 1ul << (i % BC_FAULT_LONG_BITS);
    else
        c->dirty[i / BC_FAULT_LONG_BITS] &= ~(1ul << (i % BC_FAULT_LONG_BITS));
}

/* Copy [off, off+len) between the ram and c->buf; len <= BC_FAULT_RUN, both aligned. */
static int bc_fault_ram_io(struct bc_fault *f, enum bc_op op, uint64_t off, uint64_t len)
{
    struct iovec iov = { f->cache->buf, len };
    struct bc_dreq d = { .op = op, .offset = off, .len = len, .iov = &iov, .iovcnt = 1 };

    return bc_ram_do(f->ram, &d);
}

/* Write chunks [first, end) from the ram to the medium: data with pwrite, zeros as a hole.
 * 0 or -errno.  Called with cache->lock held. */
static int bc_fault_writeback(struct bc_fault *f, uint64_t first, uint64_t end)
{
    struct bc_fault_cache *c = f->cache;

    for (uint64_t off = first * c->chunk; off < end * c->chunk && off < c->size;) {
        uint64_t len = MIN(end * c->chunk - off, BC_FAULT_RUN);
        uint64_t n = MIN(len, c->size - off);
        int r = bc_fault_ram_io(f, BC_OP_READ, off, len);
        if (r < 0)
            return r;
        bool zero = c->buf[0] == 0 && memcmp(c->buf, c->buf + 1, n - 1) == 0;
        if (zero ? fallocate(c->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                             (off_t)n) < 0
                 : pwrite(c->fd, c->buf, n, (off_t)off) != (ssize_t)n)
            return errno ? -errno : -EIO;
        off += len;
    }
    for (uint64_t i = first; i < end; i++)
        bc_fault_dirty_set(c, i, false);
    return 0;
}

/* A write, write-zeroes or discard changed [offset, offset+len) of the ram: mark it dirty,
 * or write it back now for the random share fault-writeback sets. */
static int bc_fault_cache_wrote(struct bc_fault *f, uint64_t offset, uint64_t len)
{
    struct bc_fault_cache *c = f->cache;
    uint64_t first = offset / c->chunk;
    uint64_t end = (MIN(offset + len, c->size) + c->chunk - 1) / c->chunk;
    int r = 0;

    g_mutex_lock(&c->lock);
    if (c->cut) {
        r = -EIO;
    } else if (c->writeback > 0 && (uint32_t)g_rand_int_range(c->rand, 0, 100) < c->writeback) {
        r = bc_fault_writeback(f, first, end);
    } else {
        for (uint64_t i = first; i < end; i++)
            bc_fault_dirty_set(c, i, true);
    }
    g_mutex_unlock(&c->lock);
    return r;
}

/* A flush: every dirty chunk to the medium, then fdatasync; or the power cut. */
static int bc_fault_cache_flush(struct bc_fault *f)
{
    struct bc_fault_cache *c = f->cache;
    uint64_t nchunks = (c->size + c->chunk - 1) / c->chunk;
    int r = 0;

    g_mutex_lock(&c->lock);
    c->flushes++;
    if (c->cut) {
        g_mutex_unlock(&c->lock);
        return -EIO;
    }
    /* The power cut: as the lights go out, the same share of what is still cached makes
     * it to the medium, chunk by chunk. */
    bool cut = c->cut_at >= 0 && c->flushes >= (uint64_t)c->cut_at;
    for (uint64_t i = 0; i < nchunks && r == 0;) {
        if (!bc_fault_dirty_test(c, i) ||
            (cut && (uint32_t)g_rand_int_range(c->rand, 0, 100) >= c->writeback)) {
            i++;
            continue;
        }
        uint64_t e = i + 1;
        while (e < nchunks && bc_fault_dirty_test(c, e) && !cut)
            e++;
        r = bc_fault_writeback(f, i, e);
        i = e;
    }
    if (r == 0 && fdatasync(c->fd) < 0)
        r = -errno;
    c->cut = cut;
    g_mutex_unlock(&c->lock);
    return cut ? -EIO : r;
}

static bool bc_fault_cache_cut(struct bc_fault *f)
{
    g_mutex_lock(&f->cache->lock);
    bool cut = f->cache->cut;
    g_mutex_unlock(&f->cache->lock);
    return cut;
}

static void bc_fault_cache_free(struct bc_fault_cache *c)
{
    if (c == NULL)
        return;
    if (c->fd >= 0)
        close(c->fd);
    bc_buf_free(c->buf);
    g_free(c->dirty);
    if (c->rand != NULL)
        g_rand_free(c->rand);
    g_mutex_clear(&c->lock);
    g_free(c);
}

/* Open args->path as the medium; *size_opts gets args' options with size defaulting to
 * the file's size, for bc_ram_new(). */
static struct bc_fault_cache *bc_fault_cache_new(const struct bc_open_args *args,
                                                 GHashTable **size_opts, GError **errp)
{
    struct bc_fault_cache *c = g_new0(struct bc_fault_cache, 1);
    int64_t wb, seed, cut;
    struct stat st;

    g_mutex_init(&c->lock);
    c->fd = open(args->path, (args->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (c->fd < 0 || fstat(c->fd, &st) < 0) {
        g_set_error(errp, BC_ERROR, 0, "%s: %s: %s", bc_what(args), args->path,
                    g_strerror(errno));
        goto fail;
    }
    if (!bc_drv_lock_fd(args, c->fd, errp))
        goto fail;
    if (!bc_opt_uint(args, "fault-writeback", 100, 0, &wb, errp) ||
        !bc_opt_uint(args, "fault-seed", UINT32_MAX, 1, &seed, errp) ||
        !bc_opt_uint(args, "fault-power-cut", INT64_MAX, -1, &cut, errp))
        goto fail;
    c->writeback = (uint32_t)wb;
    c->cut_at = cut;
    c->rand = g_rand_new_with_seed((guint32)seed);
    *size_opts = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    if (args->opts != NULL) {
        GHashTableIter it;
        gpointer k, v;
        g_hash_table_iter_init(&it, args->opts);
        while (g_hash_table_iter_next(&it, &k, &v))
            g_hash_table_insert(*size_opts, g_strdup(k), g_strdup(v));
    }
    if (!g_hash_table_contains(*size_opts, "size"))
        g_hash_table_insert(*size_opts, g_strdup("size"),
                            g_strdup_printf("%" PRIu64, (uint64_t)st.st_size));
    return c;

fail:
    bc_fault_cache_free(c);
    return NULL;
}

/* Load the medium into the ram (its data extents; zeros stay holes); size the dirty map. */
static bool bc_fault_cache_load(struct bc_fault *f, const struct bc_props *props,
                                const struct bc_open_args *args, GError **errp)
{
    struct bc_fault_cache *c = f->cache;
    uint64_t nchunks;
    int err = 0;

    c->size = props->size;
    c->chunk = MAX(props->req_align, 4096u);
    nchunks = (c->size + c->chunk - 1) / c->chunk;
    c->dirty = g_new0(unsigned long, (nchunks + BC_FAULT_LONG_BITS - 1) / BC_FAULT_LONG_BITS);
    c->buf = bc_buf_alloc(BC_FAULT_RUN);
    for (uint64_t off = 0; off < c->size && err == 0;) {
        off_t d = lseek(c->fd, (off_t)off, SEEK_DATA);
        if (d < 0) {
            err = errno == ENXIO ? 0 : errno;
            break;
        }
        off = (uint64_t)d / BC_FAULT_RUN * BC_FAULT_RUN;
        if (off >= c->size)
            break;
        uint64_t len = MIN(BC_FAULT_RUN, (c->size - off + c->chunk - 1) / c->chunk * c->chunk);
        ssize_t n = pread(c->fd, c->buf, len, (off_t)off);
        if (n < 0) {
            err = errno;
            break;
        }
        memset(c->buf + n, 0, len - (uint64_t)n);
        if (n > 0 && !(c->buf[0] == 0 && memcmp(c->buf, c->buf + 1, (size_t)n - 1) == 0) &&
            bc_fault_ram_io(f, BC_OP_WRITE, off, len) < 0)
            err = EIO;
        off += len;
    }
    if (err != 0) {
        g_set_error(errp, BC_ERROR, 0, "%s: %s: cannot load: %s", bc_what(args), args->path,
                    g_strerror(err));
        return false;
    }
    return true;
}

static void bc_drv_fault_close(void *state)
{
    struct bc_fault *f = state;

    bc_ram_free(f->ram);
    bc_fault_cache_free(f->cache);
    g_mutex_clear(&f->lock);
    f->magic = 0;
    g_free(f);
}

static void *bc_drv_fault_open(const struct bc_open_args *args, struct bc_props *props,
                               GError **errp)
{
    struct bc_fault *f;
    uint64_t roff, woff, len;
    int64_t after;
    int err;
    bool has_r = bc_opt(args, "fault-read-offset"), has_w = bc_opt(args, "fault-write-offset");
    struct bc_fault_cache *cache = NULL;
    g_autoptr(GHashTable) size_opts = NULL;
    struct bc_open_args ram_args = *args;
    struct bc_ram *ram;

    if (args->path != NULL) {
        cache = bc_fault_cache_new(args, &size_opts, errp);
        if (cache == NULL)
            return NULL;
        ram_args.opts = size_opts;
        ram_args.read_only = false;     /* the load writes the ram; submit refuses writes */
        cache->read_only = args->read_only;
    } else if (bc_opt(args, "fault-writeback") || bc_opt(args, "fault-seed") ||
               bc_opt(args, "fault-power-cut")) {
        g_set_error(errp, BC_ERROR, 0, "%s: keys fault-writeback, fault-seed and "
                    "fault-power-cut need a path (the medium behind the cache)", bc_what(args));
        return NULL;
    }
    ram = bc_ram_new(&ram_args, props, errp);
    if (!ram) {
        bc_fault_cache_free(cache);
        return NULL;
    }
    if (!bc_opt_size(args, "fault-read-offset", false, 0, &roff, errp) ||
        !bc_opt_size(args, "fault-write-offset", false, 0, &woff, errp) ||
        !bc_opt_size(args, "fault-len", false, props->req_align, &len, errp) ||
        !bc_opt_errno(args, "fault-errno", EIO, &err, errp) ||
        !bc_opt_uint(args, "fault-after", INT64_MAX, -1, &after, errp))
        goto fail;
    if (len == 0) {
        g_set_error(errp, BC_ERROR, 0, "%s: key fault-len: must not be 0", bc_what(args));
        goto fail;
    }
    if (bc_opt(args, "fault-len") && !has_r && !has_w) {
        g_set_error(errp, BC_ERROR, 0,
                    "%s: key fault-len: needs fault-read-offset or fault-write-offset",
                    bc_what(args));
        goto fail;
    }

    f = g_new0(struct bc_fault, 1);
    f->magic = BC_FAULT_MAGIC;
    f->ram = ram;
    f->cache = cache;
    g_mutex_init(&f->lock);
    bc_fault_rule_set(&f->rule[BC_FAULT_READ], roff, has_r ? len : 0, err, -1);
    bc_fault_rule_set(&f->rule[BC_FAULT_WRITE], woff, has_w ? len : 0, err, -1);
    bc_fault_rule_set(&f->rule[BC_FAULT_ANY], 0, 0, err, after);
    if (cache != NULL) {
        props->fua_native = false;  /* the engine makes FUA a write and a flush */
        props->read_only = args->read_only;
        if (!bc_fault_cache_load(f, props, args, errp)) {
            bc_drv_fault_close(f);
            return NULL;
        }
    }
    return f;

fail:
    bc_ram_free(ram);
    bc_fault_cache_free(cache);
    return NULL;
}

static void bc_drv_fault_submit(void *state, struct bc_dreq *dreq)
{
    struct bc_fault *f = state;
    int res = bc_fault_check(f, dreq);

    if (res == 0 && f->cache != NULL && dreq->op == BC_OP_FLUSH) {
        res = bc_fault_cache_flush(f);
    } else if (res == 0 && f->cache != NULL && bc_fault_cache_cut(f)) {
        res = -EIO;
    } else if (res == 0 && f->cache != NULL && f->cache->read_only && dreq->op != BC_OP_READ) {
        res = -EROFS;
    } else if (res == 0) {
        res = bc_ram_do(f->ram, dreq);
        if (res == 0 && f->cache != NULL && dreq->op != BC_OP_READ)
            res = bc_fault_cache_wrote(f, dreq->offset, dreq->len);
    }
    bc_drv_complete_later(dreq, res);
}

static int bc_drv_fault_block_status(void *state, uint64_t offset, uint64_t len,
                                     uint64_t *pnum)
{
    struct bc_fault *f = state;

    return bc_ram_block_status(f->ram, offset, len, pnum);
}

static const char *const bc_drv_fault_keys[] = {
    BC_RAM_KEYS, "fault-read-offset", "fault-write-offset", "fault-len", "fault-errno",
    "fault-after", "fault-writeback", "fault-seed", "fault-power-cut", NULL,
};

const struct bc_driver bc_drv_fault = {
    .name = "fault",
    .keys = bc_drv_fault_keys,
    .open = bc_drv_fault_open,
    .close = bc_drv_fault_close,
    .submit = bc_drv_fault_submit,
    .block_status = bc_drv_fault_block_status,
};
