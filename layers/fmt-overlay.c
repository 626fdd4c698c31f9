/* SPDX-License-Identifier: MIT */
/* The overlay layer format: a persistent sparse layer in one file (man/layerfs-overlay.5),
 * with crash-safe presence bits.  The engine is sparse.c; this file adds the store, the
 * flush cycles and the base check; overlay-file.c has the file's metadata I/O. */
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
 * Checksums.  The on-disk bitmap is in chunks (version 2) that carry their own CRC-32C, and
 * a cycle writes whole chunks: a power cut keeping any subset of a cycle's writes leaves
 * every chunk either as before or as written, both valid.  A chunk straddles two bitmap
 * pages; its other page is encoded as last taken (cyc_copy keeps every page), whose bits'
 * data an earlier cycle made durable.
 *
 * The base.  The header records the size and fingerprint of the stack below; open checks
 * them (base_check()) and a writable open records them again with the DIRTY flag.
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
    uint64_t base_size;             /* size of the stack below, as measured at open */
    GMutex flock;
    struct ovl_fl *queue;           /* waiting flushes, FIFO */
    struct ovl_fl **queue_tail;
    bool flushing;                  /* a cycle is running or scheduled */
    /* The running cycle, touched only from its loop. */
    struct bc_loop *cyc_loop;
    struct ovl_fl *cyc_batch;
    uint8_t *cyc_copy;              /* the flat bitmap as last taken, every page */
    uint8_t *cyc_pages;
    uint8_t *cyc_chunks;            /* per chunk: to write in this cycle */
    uint8_t *cyc_enc;               /* the chunks, encoded */
    struct iovec *cyc_iov;
    unsigned cyc_pending;
    int cyc_err;
    struct bc_task cyc_task;
};

static struct ovl *ovl_of(struct layer *l)
{
    return l->priv;
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

/* Write every bitmap chunk that holds a byte of a taken page, encoded from cyc_copy: each
 * chunk carries its own checksum, so any subset of these writes leaves valid chunks.
 * cyc_copy keeps every page as last taken, so a chunk's other page is as last taken too,
 * and the data under its bits was flushed by that page's cycle. */
static void cyc_flushed1(void *opaque, int res)
{
    struct ovl *o = opaque;
    uint64_t npages = o->sp.bitmap_len / SPARSE_PAGE;
    uint64_t nch = o->f.h.bitmap_len / OVL_CHUNK;

    if (res < 0) {
        cyc_end(o, res);
        return;
    }
    memset(o->cyc_chunks, 0, nch);
    for (uint64_t p = 0; p < npages; p++) {
        if (!o->cyc_pages[p])
            continue;
        /* Whole groups of chunks, so that the writes stay 4096-aligned. */
        uint64_t c0 = p * SPARSE_PAGE / OVL_CHUNK_DATA / OVL_CHUNK_GROUP * OVL_CHUNK_GROUP;
        uint64_t c1 = ((p + 1) * SPARSE_PAGE - 1) / OVL_CHUNK_DATA;
        c1 = MIN(c1 / OVL_CHUNK_GROUP * OVL_CHUNK_GROUP + OVL_CHUNK_GROUP - 1, nch - 1);
        for (uint64_t c = c0; c <= c1; c++)
            o->cyc_chunks[c] = 1;
    }
    o->cyc_err = 0;
    o->cyc_pending = 1;
    for (uint64_t c = 0; c < nch;) {
        if (!o->cyc_chunks[c]) {
            c++;
            continue;
        }
        uint64_t e = c;
        for (; e < nch && o->cyc_chunks[e]; e++)
            ovl_chunk_encode(o->cyc_copy, e, o->cyc_enc + e * OVL_CHUNK);
        struct iovec *v = &o->cyc_iov[c];
        v->iov_base = o->cyc_enc + c * OVL_CHUNK;
        v->iov_len = (e - c) * OVL_CHUNK;
        o->cyc_pending++;
        bc_dev_writev(o->f.dev, o->cyc_loop, v, 1, o->f.h.bitmap_off + c * OVL_CHUNK, 0,
                      cyc_bitmap_done, o);
        c = e;
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

/* ---- the base fingerprint ------------------------------------------------------------ */

struct next_rd {
    struct layer *l;
    struct bc_sync *s;
};

static int next_read(void *opaque, uint8_t *buf, uint64_t len, uint64_t off)
{
    struct next_rd *a = opaque;
    struct iovec iov = { buf, len };

    layer_next_read(a->l, a->s->loop, &iov, 1, off, bc_sync_cb, a->s);
    return bc_sync_wait(a->s);
}

/* The fingerprint of the stack below l, o->base_size bytes: 0 or -errno. */
static int below_fp(struct ovl *o, struct layer *l, struct bc_sync *s, uint64_t *fp)
{
    struct next_rd a = { l, s };
    uint8_t *buf = bc_buf_alloc(OVL_FP_SAMPLE);
    int r = ovl_fingerprint(o->base_size, next_read, &a, buf, fp);

    bc_buf_free(buf);
    return r;
}

/*
 * Check the stack below against the size and fingerprint the header recorded, and (when
 * writable) record them anew, to be written with the DIRTY flag.  Not checked: an overlay
 * with nothing recorded (made by version 1, or by create without a base), with no block
 * present (it reads as any base would), with base-check = false, or when the stack below
 * cannot be read (a warning); only the size when a commit is unfinished or a
 * write-through overlay was not closed cleanly (in both the base legitimately changed
 * after the record).
 */
static bool base_check(struct ovl *o, struct layer *l, const struct lf_layer_cfg *cfg,
                       struct layer *below, struct bc_sync *s, GError **errp)
{
    struct ovl_hdr *h = &o->f.h;
    uint64_t fp = 0;

    if (below == NULL || h->version < 2 ||
        (!o->writable && (h->base_size == 0 || cfg->no_base_check)))
        return true;
    o->base_size = below->visible;
    int r = below_fp(o, l, s, &fp);
    if (r < 0) {
        /* A bad sector in a sample should not keep the disk from working. */
        g_message("%s: cannot read the layers below overlay %s for their fingerprint (%s): "
                  "not checked", l->origin, cfg->path, g_strerror(-r));
        o->base_size = 0;
        /* Writes may change the base unseen: forget the record rather than keep a stale
         * one that would refuse the next mount (the next writable open records anew). */
        if (o->writable)
            h->base_size = h->base_fp = 0;
        return true;
    }
    bool moved = (h->flags & OVL_FLAG_COMMIT) ||
                 (l->write_through && (h->flags & OVL_FLAG_DIRTY));
    if (h->base_size != 0 && !cfg->no_base_check &&
        ovl_count_present(o->f.bitmap, h->nblocks) > 0 &&
        (h->base_size != o->base_size || (!moved && h->base_fp != fp))) {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s: overlay %s was made over a stack below of %" PRIu64 " bytes with "
                    "fingerprint %016" PRIx64 ", but the stack below is %" PRIu64 " bytes "
                    "with fingerprint %016" PRIx64 " (another or a changed base; set "
                    "base-check = false to use it anyway)", l->origin, cfg->path,
                    h->base_size, h->base_fp, o->base_size, fp);
        return false;
    }
    if (o->writable) {
        h->base_size = o->base_size;
        h->base_fp = fp;
    }
    return true;
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
                             0, 0, &err)) {
            g_propagate_prefixed_error(errp, g_steal_pointer(&err), "%s: ", l->origin);
            return false;
        }
        g_info("%s: created overlay %s", l->origin, cfg->path);
    }
    if (!bc_sync_begin(&s, NULL, errp))
        return false;

    struct ovl *o = g_new0(struct ovl, 1);
    if (!ovl_file_open(&o->f, cfg->path, cfg, !writable, cfg->direct, 0, &s, &err)) {
        /* The driver's own messages already begin with the layer's origin. */
        if (g_str_has_prefix(err->message, l->origin))
            g_propagate_error(errp, g_steal_pointer(&err));
        else
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
    if (o->writable && o->f.h.version < 2) {
        if (!ovl_file_relayout(&o->f, cfg, o->f.h.size, &s, &err)) {
            g_propagate_prefixed_error(errp, g_steal_pointer(&err), "%s: cannot upgrade "
                                       "overlay %s to version 2: ", l->origin, cfg->path);
            goto fail;
        }
        g_message("%s: upgraded overlay %s to version 2 (bitmap checksums, base "
                  "fingerprint)", l->origin, cfg->path);
    }
    if (!base_check(o, l, cfg, below, &s, errp))
        goto fail;
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
    assert(o->sp.bitmap_len == ovl_flat_len(o->f.h.nblocks) && o->sp.nblocks == o->f.h.nblocks);
    assert(!o->writable || o->f.h.version >= 2);
    sparse_load(&o->sp, o->f.bitmap);
    g_mutex_init(&o->flock);
    o->queue_tail = &o->queue;
    o->cyc_copy = g_memdup2(o->f.bitmap, ovl_bitmap_mem_len(&o->f.h));
    o->cyc_pages = g_malloc0(o->sp.bitmap_len / SPARSE_PAGE);
    o->cyc_chunks = g_malloc0(o->f.h.bitmap_len / OVL_CHUNK);
    o->cyc_enc = bc_buf_alloc(o->f.h.bitmap_len);
    o->cyc_iov = g_new0(struct iovec, o->f.h.bitmap_len / OVL_CHUNK);
    l->priv = o;
    l->size = o->f.h.size;
    l->block_size = o->f.h.block_size;
    l->io_align = bc_dev_props(o->f.dev)->req_align;
    l->remote = bc_dev_props(o->f.dev)->remote;
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
            /* Writes through this overlay changed the base: record it as it now is. */
            if (res == 0 && l->write_through && o->base_size != 0 &&
                below_fp(o, l, &s, &o->f.h.base_fp) < 0)
                o->f.h.base_size = o->f.h.base_fp = 0;  /* forget it: the next open records */
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
    g_free(o->cyc_copy);
    g_free(o->cyc_pages);
    g_free(o->cyc_chunks);
    bc_buf_free(o->cyc_enc);
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
                     unsigned flags, bc_cb *cb, void *opaque)
{
    struct ovl *o = ovl_of(l);

    if (flags & BC_REQ_FUA) {
        struct ovl_fua *w = g_new0(struct ovl_fua, 1);
        *w = (struct ovl_fua){ l, loop, cb, opaque };
        sparse_zero(&o->sp, loop, offset, len, flags & ~(unsigned)BC_REQ_FUA, fua_written, w);
        return;
    }
    sparse_zero(&o->sp, loop, offset, len, flags, cb, opaque);
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
    .has_base = true,
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
