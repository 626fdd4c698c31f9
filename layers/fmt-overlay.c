/* SPDX-License-Identifier: MIT */
/* The overlay layer format: a persistent sparse layer in one file (man/layerfs-overlay.5),
 * with crash-safe presence bits.  The engine is sparse.c; this file adds the file I/O. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "layers/cache.h"
#include "layers/overlay.h"

/*
 * Notes on the design
 *
 * Crash rules.  A presence bit is set on disk only after the block's data is durable:
 * the in-memory bitmap is authoritative while running, and a flush (the only way bits
 * reach the disk) runs "take the dirty bitmap pages; flush the data; write those pages;
 * flush".  Bits taken were set when their data writes completed, before the first flush
 * was issued, so that flush made their data durable.  After a flush returns, every write
 * completed before it survives a crash.  A FUA write is a write followed by a flush.
 *
 * The DIRTY header flag is set durably at open for writing (before any write) and cleared
 * by a clean close after the final flush.  Found set at open, it only means the overlay
 * was not closed cleanly: by the rule above every bit on disk still has durable data, so
 * the overlay is consistent and is used as is (with a message); unflushed writes are lost
 * as on any disk.
 *
 * Flushes are serialized: one cycle runs at a time (on the loop of the request that
 * started it) and serves every request queued before it took the dirty pages; requests
 * arriving meanwhile wait for the next cycle.  o->flock protects queue and flushing.
 */

struct ovl_fl {
    struct bc_task task;
    struct bc_loop *loop;
    bc_cb *cb;
    void *opaque;
    int res;
    struct ovl_fl *next;
};

struct ovl {
    struct sparse sp;
    struct ovl_file f;
    struct lf_cache *cache;         /* cache-size set: a bounded read cache (cache.c) */
    bool writable;
    GMutex flock;
    struct ovl_fl *queue;           /* waiting flushes, FIFO */
    struct ovl_fl **queue_tail;
    bool flushing;                  /* a cycle is running or scheduled */
    /* The running cycle, touched only from its loop. */
    struct bc_loop *cyc_loop;
    struct ovl_fl *cyc_batch;
    uint8_t *cyc_copy;
    uint8_t *cyc_pages;
    struct iovec *cyc_iov;
    unsigned cyc_pending;
    int cyc_err;
    struct bc_task cyc_task;
};

static struct ovl *ovl_of(struct layer *l)
{
    return l->priv;
}

/* ---- synchronous file access (also used by img.c) ---------------------------------------- */

static int sync_rw(struct ovl_file *f, struct bc_sync *s, bool write, void *buf,
                   uint64_t len, uint64_t offset)
{
    struct iovec iov = { buf, len };

    if (write)
        bc_dev_writev(f->dev, s->loop, &iov, 1, offset, 0, bc_sync_cb, s);
    else
        bc_dev_readv(f->dev, s->loop, &iov, 1, offset, bc_sync_cb, s);
    int r = bc_sync_wait(s);
    if (r < 0 || !write)
        return r;
    bc_dev_flush(f->dev, s->loop, bc_sync_cb, s);
    return bc_sync_wait(s);
}

bool ovl_file_open(struct ovl_file *f, const char *path, const struct lf_layer_cfg *cfg,
                   bool read_only, bool direct, unsigned flags, struct bc_sync *s,
                   GError **errp)
{
    struct lf_layer_cfg dflt = { .name = (char *)path };   /* the default driver */
    struct lf_layer_cfg c = cfg != NULL ? *cfg : dflt;
    uint8_t *hbuf = NULL;
    int r;

    memset(f, 0, sizeof(*f));
    c.path = (char *)path;
    f->path = g_strdup(path);
    /* One writer or any number of readers, across processes and disks: the driver locks
     * the very file it opened, whatever path (symlink, hard link, bind mount) led to it,
     * and the open fails when it cannot. */
    enum bc_lock lock = flags & OVL_OPEN_NO_LOCK ? BC_LOCK_NONE
                        : read_only ? BC_LOCK_SHARED : BC_LOCK_EXCLUSIVE;
    GError *err = NULL;
    f->dev = layer_open_dev(&c, read_only, direct, lock, &err);
    if (f->dev == NULL) {
        if (g_error_matches(err, BC_ERROR, EWOULDBLOCK)) {
            g_set_error(errp, LF_ERROR, EWOULDBLOCK, "%s: the overlay is in use (locked by "
                        "another process or disk)", path);
            g_error_free(err);
        } else {
            g_propagate_error(errp, err);
        }
        goto fail;
    }
    const struct bc_props *p = bc_dev_props(f->dev);
    f->read_only = p->read_only;
    f->file_size = p->size;
    if (p->req_align > OVL_HEADER_SIZE) {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s: I/O alignment %u is larger than the overlay header (%u)", path,
                    p->req_align, OVL_HEADER_SIZE);
        goto fail;
    }
    hbuf = bc_buf_alloc(OVL_HEADER_SIZE);
    r = sync_rw(f, s, false, hbuf, OVL_HEADER_SIZE, 0);
    if (r < 0) {
        g_set_error(errp, LF_ERROR, -r, "%s: cannot read the header: %s", path,
                    g_strerror(-r));
        goto fail;
    }
    if (!ovl_hdr_decode(hbuf, OVL_HEADER_SIZE, f->file_size, path, &f->h, errp))
        goto fail;
    if (!(flags & OVL_OPEN_NO_SIZE_CHECK) && f->file_size < ovl_file_size(&f->h)) {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s: truncated overlay: the data region ends at offset %" PRIu64
                    " but the file is %" PRIu64 " bytes (layerfs-img check --repair)", path,
                    ovl_file_size(&f->h), f->file_size);
        goto fail;
    }
    if (f->h.block_size < p->req_align) {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s: block size %u is smaller than the file's I/O alignment %u", path,
                    f->h.block_size, p->req_align);
        goto fail;
    }
    f->bitmap = bc_buf_alloc(f->h.bitmap_len);
    r = sync_rw(f, s, false, f->bitmap, f->h.bitmap_len, f->h.bitmap_off);
    if (r < 0) {
        g_set_error(errp, LF_ERROR, -r, "%s: cannot read the bitmap at offset %" PRIu64 ": %s",
                    path, f->h.bitmap_off, g_strerror(-r));
        goto fail;
    }
    if (!(flags & OVL_OPEN_NO_BITMAP_CHECK) &&
        !ovl_bitmap_check(&f->h, f->bitmap, f->file_size, path, NULL, errp))
        goto fail;
    bc_buf_free(hbuf);
    return true;

fail:
    bc_buf_free(hbuf);
    ovl_file_close(f);
    return false;
}

int ovl_file_write_header(struct ovl_file *f, struct bc_sync *s)
{
    uint8_t *buf = bc_buf_alloc(OVL_HEADER_SIZE);

    ovl_hdr_encode(&f->h, buf);
    int r = sync_rw(f, s, true, buf, OVL_HEADER_SIZE, 0);
    bc_buf_free(buf);
    return r;
}

int ovl_file_write_bitmap(struct ovl_file *f, struct bc_sync *s)
{
    return sync_rw(f, s, true, f->bitmap, f->h.bitmap_len, f->h.bitmap_off);
}

void ovl_file_close(struct ovl_file *f)
{
    if (f->dev != NULL)
        bc_dev_close(f->dev);
    bc_buf_free(f->bitmap);
    g_free(f->path);
    memset(f, 0, sizeof(*f));
}

/* ---- the store: block data at data_off ---------------------------------------------- */

static void st_read(void *store, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                    uint64_t offset, bc_cb *cb, void *opaque)
{
    struct ovl *o = store;

    bc_dev_readv(o->f.dev, loop, iov, iovcnt, o->f.h.data_off + offset, cb, opaque);
}

static void st_write(void *store, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                     uint64_t offset, unsigned flags, bc_cb *cb, void *opaque)
{
    struct ovl *o = store;

    bc_dev_writev(o->f.dev, loop, iov, iovcnt, o->f.h.data_off + offset, flags, cb, opaque);
}

static void st_zero(void *store, struct bc_loop *loop, uint64_t offset, uint64_t len,
                    unsigned flags, bc_cb *cb, void *opaque)
{
    struct ovl *o = store;

    bc_dev_write_zeroes(o->f.dev, loop, o->f.h.data_off + offset, len, flags, cb, opaque);
}

/* Absent blocks' data is never read: write zeroes with unmap frees their space (zeros, not
 * an advisory discard, so that a bit still set on disk after a crash shows zeros). */
static void st_punch(void *store, struct bc_loop *loop, uint64_t offset, uint64_t len,
                     bc_cb *cb, void *opaque)
{
    struct ovl *o = store;

    bc_dev_write_zeroes(o->f.dev, loop, o->f.h.data_off + offset, len, BC_REQ_MAY_UNMAP, cb,
                        opaque);
}

static const struct sparse_store_ops ovl_store = {
    .read = st_read,
    .write = st_write,
    .zero = st_zero,
    .punch = st_punch,
};

/* ---- flush cycles -------------------------------------------------------------------- */

static void cyc_start(struct ovl *o);

static void fl_done(struct bc_task *task)
{
    struct ovl_fl *f = bc_container_of(task, struct ovl_fl, task);
    bc_cb *cb = f->cb;
    void *opaque = f->opaque;
    int res = f->res;

    g_free(f);
    cb(opaque, res);
}

static void cyc_task(struct bc_task *task)
{
    cyc_start(bc_container_of(task, struct ovl, cyc_task));
}

static void cyc_end(struct ovl *o, int res)
{
    struct ovl_fl *f = o->cyc_batch;

    if (res < 0)
        sparse_redirty(&o->sp, o->cyc_pages);
    o->cyc_batch = NULL;
    while (f != NULL) {
        struct ovl_fl *nx = f->next;
        f->res = res;
        f->task.fn = fl_done;
        bc_loop_wake(f->loop, &f->task);
        f = nx;
    }
    g_mutex_lock(&o->flock);
    if (o->queue != NULL) {
        o->cyc_loop = o->queue->loop;
        o->cyc_task.fn = cyc_task;
        g_mutex_unlock(&o->flock);
        bc_loop_wake(o->cyc_loop, &o->cyc_task);
        return;
    }
    o->flushing = false;
    g_mutex_unlock(&o->flock);
}

static void cyc_flushed2(void *opaque, int res)
{
    cyc_end(opaque, res);
}

static void cyc_bitmap_done(void *opaque, int res)
{
    struct ovl *o = opaque;

    if (res < 0 && o->cyc_err == 0)
        o->cyc_err = res;
    if (--o->cyc_pending > 0)
        return;
    if (o->cyc_err < 0)
        cyc_end(o, o->cyc_err);
    else
        bc_dev_flush(o->f.dev, o->cyc_loop, cyc_flushed2, o);
}

static void cyc_flushed1(void *opaque, int res)
{
    struct ovl *o = opaque;
    uint64_t npages = o->sp.bitmap_len / SPARSE_PAGE;

    if (res < 0) {
        cyc_end(o, res);
        return;
    }
    o->cyc_err = 0;
    o->cyc_pending = 1;
    for (uint64_t p = 0; p < npages;) {
        if (!o->cyc_pages[p]) {
            p++;
            continue;
        }
        uint64_t e = p + 1;
        while (e < npages && o->cyc_pages[e])
            e++;
        struct iovec *v = &o->cyc_iov[p];
        v->iov_base = o->cyc_copy + p * SPARSE_PAGE;
        v->iov_len = (e - p) * SPARSE_PAGE;
        o->cyc_pending++;
        bc_dev_writev(o->f.dev, o->cyc_loop, v, 1, o->f.h.bitmap_off + p * SPARSE_PAGE, 0,
                      cyc_bitmap_done, o);
        p = e;
    }
    cyc_bitmap_done(o, 0);
}

static void cyc_flushed_only(void *opaque, int res)
{
    cyc_end(opaque, res);
}

/* Start a cycle on o->cyc_loop serving every queued request. */
static void cyc_start(struct ovl *o)
{
    g_mutex_lock(&o->flock);
    o->cyc_batch = o->queue;
    o->queue = NULL;
    o->queue_tail = &o->queue;
    g_mutex_unlock(&o->flock);

    uint64_t n = sparse_take_dirty(&o->sp, o->cyc_copy, o->cyc_pages);
    bc_dev_flush(o->f.dev, o->cyc_loop, n > 0 ? cyc_flushed1 : cyc_flushed_only, o);
}

static void ovl_flush(struct layer *l, struct bc_loop *loop, bc_cb *cb, void *opaque)
{
    struct ovl *o = ovl_of(l);

    if (!o->writable) {
        layer_complete_later(loop, cb, opaque, 0);
        return;
    }
    struct ovl_fl *f = g_new0(struct ovl_fl, 1);
    f->loop = loop;
    f->cb = cb;
    f->opaque = opaque;
    g_mutex_lock(&o->flock);
    *o->queue_tail = f;
    o->queue_tail = &f->next;
    bool lead = !o->flushing;
    o->flushing = true;
    if (lead) {
        o->cyc_loop = loop;
        o->cyc_task.fn = cyc_task;
    }
    g_mutex_unlock(&o->flock);
    if (lead)
        bc_loop_defer(loop, &o->cyc_task);
}

/* ---- layer operations ---------------------------------------------------------------- */

static int ovl_close(struct layer *l);

static bool ovl_open(struct layer *l, const struct lf_layer_cfg *cfg, struct layer *below,
                     bool writable, GError **errp)
{
    struct bc_sync s;
    g_autoptr(GError) err = NULL;

    if (cfg->path == NULL || *cfg->path == '\0') {
        g_set_error(errp, LF_ERROR, EINVAL, "%s:path: an overlay layer needs a path",
                    l->origin);
        return false;
    }
    if (cfg->create && g_file_test(cfg->path, G_FILE_TEST_EXISTS) == false &&
        !g_file_test(cfg->path, G_FILE_TEST_IS_SYMLINK)) {
        uint64_t size = below ? below->size : 0;
        const char *sz = cfg->driver_opts ? g_hash_table_lookup(cfg->driver_opts, "size") : NULL;
        if (sz != NULL && !bc_parse_size(sz, &size)) {
            g_set_error(errp, LF_ERROR, EINVAL, "%s:size: '%s' is not a size", l->origin, sz);
            return false;
        }
        if (size == 0) {
            g_set_error(errp, LF_ERROR, EINVAL,
                        "%s:create: no layer below to size the new overlay from", l->origin);
            return false;
        }
        if (!ovl_create_file(cfg->path, size,
                             cfg->block_size ? (uint32_t)cfg->block_size : OVL_DEFAULT_BLOCK,
                             &err)) {
            g_propagate_prefixed_error(errp, g_steal_pointer(&err), "%s: ", l->origin);
            return false;
        }
        g_info("%s: created overlay %s", l->origin, cfg->path);
    }
    if (!bc_sync_begin(&s, NULL, errp))
        return false;

    struct ovl *o = g_new0(struct ovl, 1);
    if (!ovl_file_open(&o->f, cfg->path, cfg, !writable, cfg->direct, 0, &s, &err)) {
        g_propagate_prefixed_error(errp, g_steal_pointer(&err), "%s: ", l->origin);
        goto fail;
    }
    if (cfg->block_size != 0 && cfg->block_size != o->f.h.block_size) {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s:block-size: %" PRIu64 " does not match the block size %u of the "
                    "existing overlay %s", l->origin, cfg->block_size, o->f.h.block_size,
                    cfg->path);
        goto fail;
    }
    if (o->f.h.flags & OVL_FLAG_DIRTY)
        g_message("%s: overlay %s was not closed cleanly; its presence bits only cover "
                  "durable data, so it is consistent and used as is", l->origin, cfg->path);
    if (o->f.h.flags & OVL_FLAG_COMMIT)
        g_message("%s: overlay %s has an unfinished commit; the stack reads the same, "
                  "rerun layerfs-img commit to finish it", l->origin, cfg->path);
    o->writable = writable && !o->f.read_only;
    if (o->writable) {
        o->f.h.flags |= OVL_FLAG_DIRTY;
        int r = ovl_file_write_header(&o->f, &s);
        if (r < 0) {
            g_set_error(errp, LF_ERROR, -r, "%s: %s: cannot mark the overlay in use: %s",
                        l->origin, cfg->path, g_strerror(-r));
            goto fail;
        }
    }
    bc_sync_end(&s);

    sparse_init(&o->sp, l, o->f.h.size, o->f.h.block_size, &ovl_store, o);
    assert(o->sp.bitmap_len == o->f.h.bitmap_len && o->sp.nblocks == o->f.h.nblocks);
    sparse_load(&o->sp, o->f.bitmap);
    g_mutex_init(&o->flock);
    o->queue_tail = &o->queue;
    o->cyc_copy = bc_buf_alloc(o->sp.bitmap_len);
    o->cyc_pages = g_malloc0(o->sp.bitmap_len / SPARSE_PAGE);
    o->cyc_iov = g_new0(struct iovec, o->sp.bitmap_len / SPARSE_PAGE);
    l->priv = o;
    l->size = o->f.h.size;
    l->block_size = o->f.h.block_size;
    l->io_align = bc_dev_props(o->f.dev)->req_align;
    l->read_only = !o->writable;
    if (cfg->cache_size != 0 && o->writable) {
        o->cache = cache_open(l, &o->sp, cfg->cache_size,
                              OVL_HEADER_SIZE + o->f.h.bitmap_len, errp);
        if (o->cache == NULL) {
            ovl_close(l);
            return false;
        }
    }
    return true;

fail:
    ovl_file_close(&o->f);
    g_free(o);
    bc_sync_end(&s);
    return false;
}

static int ovl_close(struct layer *l)
{
    struct ovl *o = ovl_of(l);
    struct bc_sync s;
    int res = 0;

    cache_close(o->cache);
    o->cache = NULL;
    layer_log_driver_stats(l, o->f.dev);
    if (o->writable) {
        if (bc_sync_begin(&s, NULL, NULL)) {
            ovl_flush(l, s.loop, bc_sync_cb, &s);
            res = bc_sync_wait(&s);
            if (res == 0) {
                o->f.h.flags &= ~(uint32_t)OVL_FLAG_DIRTY;
                res = ovl_file_write_header(&o->f, &s);
            }
            bc_sync_end(&s);
        } else {
            res = -ENOMEM;
        }
        if (res < 0)
            g_warning("%s: %s: not closed cleanly: %s", l->origin, o->f.path, g_strerror(-res));
    }
    sparse_destroy(&o->sp);
    g_mutex_clear(&o->flock);
    bc_buf_free(o->cyc_copy);
    g_free(o->cyc_pages);
    g_free(o->cyc_iov);
    ovl_file_close(&o->f);
    g_free(o);
    l->priv = NULL;
    return res;
}

static int ovl_present(struct layer *l, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    return sparse_present(&ovl_of(l)->sp, offset, len, pnum);
}

static int ovl_block_status(struct layer *l, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    struct ovl *o = ovl_of(l);

    return bc_dev_block_status(o->f.dev, o->f.h.data_off + offset, len, pnum);
}

static void ovl_read(struct layer *l, struct bc_loop *loop, const struct iovec *iov,
                     int iovcnt, uint64_t offset, bc_cb *cb, void *opaque)
{
    if (ovl_of(l)->cache != NULL) {
        cache_read(ovl_of(l)->cache, loop, iov, iovcnt, offset, cb, opaque);
        return;
    }
    sparse_read(&ovl_of(l)->sp, loop, iov, iovcnt, offset, cb, opaque);
}

/* A FUA write: the write, then a flush cycle so that its presence bits are durable too. */
struct ovl_fua {
    struct layer *l;
    struct bc_loop *loop;
    bc_cb *cb;
    void *opaque;
};

static void fua_flushed(void *opaque, int res)
{
    struct ovl_fua *w = opaque;
    bc_cb *cb = w->cb;
    void *op = w->opaque;

    g_free(w);
    cb(op, res);
}

static void fua_written(void *opaque, int res)
{
    struct ovl_fua *w = opaque;

    if (res < 0) {
        fua_flushed(w, res);
        return;
    }
    ovl_flush(w->l, w->loop, fua_flushed, w);
}

static void ovl_write(struct layer *l, struct bc_loop *loop, const struct iovec *iov,
                      int iovcnt, uint64_t offset, unsigned flags, bc_cb *cb, void *opaque)
{
    struct ovl *o = ovl_of(l);

    if (o->cache != NULL) {
        assert(flags == LAYER_NO_OVERWRITE);    /* disk.c sends a bounded cache only fills */
        cache_fill(o->cache, loop, iov, iovcnt, offset, cb, opaque);
        return;
    }
    if (flags & BC_REQ_FUA) {
        struct ovl_fua *w = g_new0(struct ovl_fua, 1);
        *w = (struct ovl_fua){ l, loop, cb, opaque };
        sparse_write(&o->sp, loop, iov, iovcnt, offset, flags & ~(unsigned)BC_REQ_FUA,
                     fua_written, w);
        return;
    }
    sparse_write(&o->sp, loop, iov, iovcnt, offset, flags, cb, opaque);
}

static void ovl_zero(struct layer *l, struct bc_loop *loop, uint64_t offset, uint64_t len,
                     unsigned flags, bool next_is_zero, bc_cb *cb, void *opaque)
{
    struct ovl *o = ovl_of(l);

    if (flags & BC_REQ_FUA) {
        struct ovl_fua *w = g_new0(struct ovl_fua, 1);
        *w = (struct ovl_fua){ l, loop, cb, opaque };
        sparse_zero(&o->sp, loop, offset, len, flags & ~(unsigned)BC_REQ_FUA, next_is_zero,
                    fua_written, w);
        return;
    }
    sparse_zero(&o->sp, loop, offset, len, flags, next_is_zero, cb, opaque);
}

static void ovl_discard(struct layer *l, struct bc_loop *loop, uint64_t offset, uint64_t len,
                        bc_cb *cb, void *opaque)
{
    sparse_discard(&ovl_of(l)->sp, loop, offset, len, cb, opaque);
}

static bool ovl_cache_stats(struct layer *l, struct lf_cache_stats *st)
{
    if (ovl_of(l)->cache == NULL)
        return false;
    cache_get_stats(ovl_of(l)->cache, st);
    return true;
}

const struct layer_ops layer_fmt_overlay = {
    .format = "overlay",
    .has_block_size = true,
    .has_cache_size = true,
    .can_create = true,
    .open = ovl_open,
    .close = ovl_close,
    .present = ovl_present,
    .block_status = ovl_block_status,
    .read = ovl_read,
    .write = ovl_write,
    .zero = ovl_zero,
    .discard = ovl_discard,
    .flush = ovl_flush,
    .cache_stats = ovl_cache_stats,
    .can_no_overwrite = true,
};
