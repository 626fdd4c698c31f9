/* SPDX-License-Identifier: MIT */
/* Offline overlay files, the lf_img_* API of layers.h behind layerfs-img: create, info,
 * check and repair, commit into the layer below, resize and upgrade.  Each call runs its
 * I/O synchronously. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "layers/overlay.h"
#include "layers/sparse.h"

G_STATIC_ASSERT(LF_IMG_DEFAULT_BLOCK == OVL_DEFAULT_BLOCK);

#define COMMIT_CHUNK (8u << 20)

/* A raw file through the file driver, as the tool names it: path for every message. */
static struct bc_dev *open_raw(const char *path, bool read_only, bool direct, GError **errp)
{
    struct lf_layer_cfg c = { .name = (char *)path, .path = (char *)path,
                              .origin = (char *)path };

    return layer_open_dev(&c, read_only, direct, BC_LOCK_NONE, errp);
}

/* The size and fingerprint of the raw file path (an overlay's base): false + *errp. */
static bool backing_fp(const char *path, uint64_t *size, uint64_t *fp, GError **errp)
{
    struct bc_sync s;
    struct bc_dev *dev = open_raw(path, true, false, errp);

    if (dev == NULL)
        return false;
    *size = bc_dev_size(dev);
    int r = *size == 0 ? -EINVAL : !bc_sync_begin(&s, NULL, errp) ? -ENOMEM : 0;
    if (r == 0) {
        r = ovl_dev_fingerprint(dev, &s, fp);
        bc_sync_end(&s);
        if (r < 0)
            g_set_error(errp, LF_ERROR, -r, "%s: cannot read it for its fingerprint: %s", path,
                        g_strerror(-r));
    } else if (*size == 0) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s: backing file is empty", path);
    }
    bc_dev_close(dev);
    return r == 0;
}

bool lf_img_create(const char *path, uint64_t size, const char *backing, uint64_t block_size,
                   GError **errp)
{
    uint64_t fp = 0;

    if (backing != NULL && !backing_fp(backing, &size, &fp, errp))
        return false;
    return ovl_create_file(path, size, (uint32_t)MIN(block_size, UINT32_MAX),
                           backing ? size : 0, fp, errp);
}

static void fill_info(const struct ovl_file *f, struct lf_img_info *info)
{
    *info = (struct lf_img_info){
        .version = f->h.version,
        .size = f->h.size,
        .block_size = f->h.block_size,
        .blocks = f->h.nblocks,
        .blocks_present = ovl_count_present(f->bitmap, f->h.nblocks),
        .base_size = f->h.base_size,
        .base_fp = f->h.base_fp,
        .dirty = f->h.flags & OVL_FLAG_DIRTY,
        .commit = f->h.flags & OVL_FLAG_COMMIT,
    };
}

bool lf_img_info(const char *path, struct lf_img_info *info, GError **errp)
{
    struct bc_sync s;
    struct ovl_file f;
    bool ok;

    if (!bc_sync_begin(&s, NULL, errp))
        return false;
    ok = ovl_file_open(&f, path, NULL, true, false, OVL_OPEN_NO_LOCK, &s, errp);
    if (ok) {
        fill_info(&f, info);
        ovl_file_close(&f);
    }
    bc_sync_end(&s);
    return ok;
}

/* The repairs, in order, each only if the one before succeeded. */
static void repair(struct ovl_file *f, struct bc_sync *s, const char *path, uint64_t bad,
                   struct lf_img_check *c)
{
    int r = 0;

    /* A bad chunk's bits were left zero by the decoder: writing the bitmap drops its
     * blocks (they read from the layers below again) and gives it a valid checksum. */
    if (bad > 0 || f->bad_chunks > 0) {
        ovl_bitmap_repair(&f->h, f->bitmap, f->file_size);
        r = ovl_file_write_bitmap(f, s);
        if (r == 0) {
            c->bits_cleared = bad;
            c->chunks_dropped = f->bad_chunks;
        }
    }
    if (r == 0 && c->file_size < c->want_size) {
        if (truncate(path, (off_t)c->want_size) < 0)
            r = -errno;
        else
            c->extended = true;
    }
    if (r == 0 && (f->h.flags & OVL_FLAG_DIRTY)) {
        f->h.flags &= ~(uint32_t)OVL_FLAG_DIRTY;
        r = ovl_file_write_header(f, s);
        if (r == 0)
            c->marked_clean = true;
    }
    c->repair_err = r;
}

bool lf_img_check(const char *path, bool repair_it, struct lf_img_check *c, GError **errp)
{
    struct bc_sync s;
    struct ovl_file f;
    g_autoptr(GError) err = NULL;
    uint64_t bad = 0;

    memset(c, 0, sizeof(*c));
    if (!bc_sync_begin(&s, NULL, errp))
        return false;
    if (!ovl_file_open(&f, path, NULL, !repair_it, false,
                       OVL_OPEN_NO_BITMAP_CHECK | OVL_OPEN_NO_SIZE_CHECK, &s, errp)) {
        bc_sync_end(&s);
        return false;
    }
    fill_info(&f, &c->info);
    c->file_size = f.file_size;
    c->want_size = ovl_file_size(&f.h);
    c->chunk_problem = g_steal_pointer(&f.chunk_problem);
    c->bad_chunks = f.bad_chunks;
    if (!ovl_bitmap_check(&f.h, f.bitmap, f.file_size, path, &bad, &err))
        c->bitmap_problem = g_strdup(err->message);
    if (repair_it)
        repair(&f, &s, path, bad, c);
    ovl_file_close(&f);
    bc_sync_end(&s);
    return true;
}

static int sync_io(struct bc_dev *dev, struct bc_sync *s, bool write, void *buf,
                   uint64_t len, uint64_t off)
{
    struct iovec iov = { buf, len };

    if (write)
        bc_dev_writev(dev, s->loop, &iov, 1, off, 0, bc_sync_cb, s);
    else
        bc_dev_readv(dev, s->loop, &iov, 1, off, bc_sync_cb, s);
    return bc_sync_wait(s);
}

static int sync_flush(struct bc_dev *dev, struct bc_sync *s)
{
    bc_dev_flush(dev, s->loop, bc_sync_cb, s);
    return bc_sync_wait(s);
}

/*
 * Notes on the design: the commit data path
 *
 * Crash safety: the COMMIT flag is set durably first; blocks are copied to the base and the
 * base is flushed before their presence bits are cleared and the bitmap is flushed; the
 * flag is cleared last, and only then is the overlay's data area given back (discarded:
 * nothing reads an absent block's bytes).  Interrupted anywhere, every block is either
 * still present in the overlay (and the base may or may not hold the same bytes: the stack
 * reads the same) or durably in the base; rerunning the command finishes the job, and an
 * overlay left unpunched is punched by the next commit.
 *
 * Zeros: a present block that is a hole in the overlay file (its block status) or reads as
 * zeros is not copied: the base range is zeroed with write-zeroes and unmap, which punches
 * holes where the base can, so a sparse base stays sparse.  Runs of blocks of one kind are
 * merged into one request; a batch reads at most COMMIT_CHUNK bytes of data (one block if
 * blocks are larger), and holes do not count against it.
 */
struct commit {
    struct ovl_file *f;
    struct bc_dev *base;
    struct bc_sync *s;
    uint8_t *buf;           /* chunk bytes of overlay data, buf[0] at buf_off */
    uint64_t buf_off;
    uint64_t zoff, zend;    /* base range still to be zeroed (none when equal) */
    uint64_t doff, dend;    /* base range still to be written from buf (none when equal) */
};

static bool buf_is_zero(const uint8_t *p, size_t len)
{
    return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

static int put_zeroes(struct commit *c)
{
    uint64_t off = c->zoff, len = c->zend - c->zoff;

    c->zoff = c->zend = 0;
    if (len == 0)
        return 0;
    bc_dev_write_zeroes(c->base, c->s->loop, off, len, BC_REQ_MAY_UNMAP, bc_sync_cb, c->s);
    return bc_sync_wait(c->s);
}

static int put_data(struct commit *c)
{
    uint64_t off = c->doff, len = c->dend - c->doff;

    c->doff = c->dend = 0;
    if (len == 0)
        return 0;
    return sync_io(c->base, c->s, true, c->buf + (off - c->buf_off), len, off);
}

/* Zero [off, end) of the base, merged with the range waiting just before it. */
static int add_zeroes(struct commit *c, uint64_t off, uint64_t end)
{
    int r = 0;

    if (c->zend != off && (r = put_zeroes(c)) < 0)
        return r;
    if (c->zend == c->zoff)
        c->zoff = off;
    c->zend = end;
    return 0;
}

/* Copy [off, off + len) (block-aligned, within the present run) from the overlay: read it
 * whole, then write its data blocks and zero its zero blocks, each kind merged. */
static int copy_range(struct commit *c, uint64_t off, uint64_t len)
{
    uint32_t bs = c->f->h.block_size;
    int r = sync_io(c->f->dev, c->s, false, c->buf, len, c->f->h.data_off + off);

    c->buf_off = off;
    for (uint64_t p = off; p < off + len && r == 0; p += bs) {
        uint64_t n = MIN(bs, off + len - p);
        if (buf_is_zero(c->buf + (p - off), n)) {
            r = add_zeroes(c, p, p + n);
        } else {
            if (c->dend != p)
                r = put_data(c);
            if (c->dend == c->doff)
                c->doff = p;
            c->dend = p + n;
        }
    }
    if (r == 0)
        r = put_data(c);    /* buf is read over next time */
    return r;
}

/* Commit the present blocks [*b, e), reading at most *budget bytes: holes of the overlay
 * file are zeroed, the rest copied.  Advances *b past what was done. */
static int commit_run(struct commit *c, uint64_t *b, uint64_t e, uint64_t *budget)
{
    const struct ovl_hdr *h = &c->f->h;
    uint64_t bs = h->block_size, off = *b * bs, end = MIN(e * bs, h->size);
    int r = 0;

    while (off < end && *budget > 0 && r == 0) {
        uint64_t n = 0;
        int st = bc_dev_block_status(c->f->dev, h->data_off + off, end - off, &n);
        n = MIN(n, end - off);
        uint64_t hole = st == 0 ? n / bs * bs : 0;    /* whole blocks of hole */
        if (hole > 0) {
            r = add_zeroes(c, off, off + hole);
            off += hole;
            continue;
        }
        /* Data (or a status error: read it to be safe), to the next whole block. */
        if (st == 1 && n > 0)
            n = MIN((n + bs - 1) / bs * bs, end - off);
        else
            n = st < 0 ? end - off : MIN(bs, end - off);
        n = MIN(n, *budget);
        r = copy_range(c, off, n);
        off += n;
        *budget -= n;
    }
    *b = (off + bs - 1) / bs;
    return r;
}

static int copy_blocks(struct ovl_file *f, struct bc_dev *base, struct bc_sync *s,
                       uint64_t *committed)
{
    int r;

    f->h.flags |= OVL_FLAG_COMMIT | OVL_FLAG_DIRTY;
    if ((r = ovl_file_write_header(f, s)) < 0)
        return r;

    /* A whole number of blocks: a block never straddles two batches. */
    uint64_t chunk = MAX(COMMIT_CHUNK, f->h.block_size), nblocks = f->h.nblocks;
    struct commit c = { .f = f, .base = base, .s = s, .buf = bc_buf_alloc(chunk) };
    for (uint64_t b = 0; b < nblocks && r == 0;) {
        /* Commit up to a chunk's worth of data, flush the base, then clear the blocks'
         * bits. */
        uint64_t start = b, budget = chunk, done = 0;
        while (b < nblocks && budget > 0 && r == 0) {
            if (!bit_get(f->bitmap, b)) {
                b++;
                continue;
            }
            uint64_t e = b + 1;
            while (e < nblocks && bit_get(f->bitmap, e))
                e++;
            r = commit_run(&c, &b, e, &budget);
        }
        if (r == 0)
            r = put_zeroes(&c);
        for (uint64_t k = start; k < b; k++)
            done += bit_get(f->bitmap, k);
        if (r == 0 && done > 0)
            r = sync_flush(base, s);
        if (r == 0 && done > 0) {
            for (uint64_t k = start; k < b; k++)
                f->bitmap[k >> 3] &= (uint8_t)~(1u << (k & 7));
            r = ovl_file_write_bitmap(f, s);
            *committed += done;
        }
    }
    bc_buf_free(c.buf);
    if (r < 0)
        return r;
    f->h.flags &= ~(uint32_t)(OVL_FLAG_COMMIT | OVL_FLAG_DIRTY);
    if ((r = ovl_file_write_header(f, s)) < 0)
        return r;
    /* Every bit is durably clear: give the data area's space back.  Advisory: a failure
     * leaves only space in use, which the next commit gives back. */
    bc_dev_discard(f->dev, s->loop, f->h.data_off, f->h.nblocks * f->h.block_size,
                   bc_sync_cb, s);
    if (bc_sync_wait(s) == 0)
        (void)sync_flush(f->dev, s);
    return 0;
}

/* The fingerprint check of a commit (see base_check() in fmt-overlay.c): skipped with
 * force, with nothing recorded or present, and when resuming a commit. */
static bool base_matches(struct ovl_file *f, struct bc_dev *bdev, const char *base, bool force,
                         struct bc_sync *s, GError **errp)
{
    uint64_t fp = 0;

    if (force || f->h.base_size == 0 || (f->h.flags & OVL_FLAG_COMMIT) ||
        ovl_count_present(f->bitmap, f->h.nblocks) == 0)
        return true;
    int r = ovl_dev_fingerprint(bdev, s, &fp);
    if (r < 0) {
        g_set_error(errp, LF_ERROR, -r, "%s: cannot read it for its fingerprint: %s", base,
                    g_strerror(-r));
        return false;
    }
    if (bc_dev_size(bdev) == f->h.base_size && fp == f->h.base_fp)
        return true;
    g_set_error(errp, LF_ERROR, EINVAL, "%s: overlay %s was made over a base of %" PRIu64
                " bytes with fingerprint %016" PRIx64 ", but this one is %" PRIu64 " bytes "
                "with fingerprint %016" PRIx64 " (another or a changed base; --force commits "
                "anyway)", base, f->path, f->h.base_size, f->h.base_fp, bc_dev_size(bdev), fp);
    return false;
}

enum lf_img_commit_status lf_img_commit(const char *overlay, const char *base, bool force,
                                        uint64_t *blocks, uint32_t *block_size,
                                        GError **errp)
{
    enum lf_img_commit_status st = LF_IMG_CANNOT_OPEN;
    struct bc_dev *bdev = NULL;
    struct ovl_file f;
    struct bc_sync s;

    *blocks = 0;
    *block_size = 0;
    if (!bc_sync_begin(&s, NULL, errp))
        return LF_IMG_CANNOT_OPEN;
    if (!ovl_file_open(&f, overlay, NULL, false, true, 0, &s, errp)) {
        bc_sync_end(&s);
        return LF_IMG_CANNOT_OPEN;
    }
    *block_size = f.h.block_size;
    if ((f.h.flags & OVL_FLAG_DIRTY) && !(f.h.flags & OVL_FLAG_COMMIT) && !force) {
        st = LF_IMG_IN_USE;
        goto out;
    }
    bdev = open_raw(base, false, true, errp);
    if (bdev == NULL)
        goto out;
    if (bc_dev_props(bdev)->read_only || bc_dev_size(bdev) < f.h.size) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s: %s", base, bc_dev_props(bdev)->read_only ?
                    "cannot be opened for writing" : "is smaller than the overlay");
        st = LF_IMG_BAD_BASE;
        goto out;
    }
    if (!base_matches(&f, bdev, base, force, &s, errp)) {
        st = LF_IMG_BAD_BASE;
        goto out;
    }
    int r = copy_blocks(&f, bdev, &s, blocks);
    /* The base changed: the (now empty) overlay was made over the base as it is now. */
    if (r == 0 && f.h.version >= 2 && (r = ovl_dev_fingerprint(bdev, &s, &f.h.base_fp)) == 0) {
        f.h.base_size = bc_dev_size(bdev);
        r = ovl_file_write_header(&f, &s);
    }
    if (r < 0) {
        g_set_error(errp, LF_ERROR, -r, "%s", g_strerror(-r));
        st = LF_IMG_IO_ERROR;
    } else {
        st = LF_IMG_COMMITTED;
    }
out:
    if (bdev != NULL)
        bc_dev_close(bdev);
    ovl_file_close(&f);
    bc_sync_end(&s);
    return st;
}

/* Re-lay out path as a version-2 overlay of size bytes (0: its own size; with base and
 * size_from_base: base's size), then record base's size and fingerprint.  Without a base,
 * a size change forgets the record (the base must have changed too): the next writable
 * open records the stack below as it then is.  *upgraded: the file was version 1. */
static bool relayout(const char *path, uint64_t size, bool size_from_base, const char *base,
                     bool *upgraded, GError **errp)
{
    struct bc_sync s;
    struct ovl_file f;
    uint64_t bsize = 0, fp = 0;
    bool ok = false;

    *upgraded = false;
    if (base != NULL && !backing_fp(base, &bsize, &fp, errp))
        return false;
    if (size_from_base)
        size = bsize;
    if (!bc_sync_begin(&s, NULL, errp))
        return false;
    if (!ovl_file_open(&f, path, NULL, false, true, 0, &s, errp)) {
        bc_sync_end(&s);
        return false;
    }
    uint64_t old = f.h.size;
    if (size == 0)
        size = old;
    if (size < old) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s: cannot shrink an overlay from %" PRIu64
                    " to %" PRIu64 " bytes: the blocks past the new end would be lost", path,
                    old, size);
        goto out;
    }
    if (f.read_only) {
        g_set_error(errp, LF_ERROR, EROFS, "%s: cannot be opened for writing", path);
        goto out;
    }
    *upgraded = f.h.version < 2;
    if ((size != old || f.h.version < 2) && !ovl_file_relayout(&f, NULL, size, &s, errp))
        goto out;
    if (base != NULL || (size != old && f.h.base_size != 0)) {
        f.h.base_size = bsize;
        f.h.base_fp = fp;
        int r = ovl_file_write_header(&f, &s);
        if (r < 0) {
            g_set_error(errp, LF_ERROR, -r, "%s: cannot write the header: %s", path,
                        g_strerror(-r));
            goto out;
        }
    }
    ok = true;
out:
    ovl_file_close(&f);
    bc_sync_end(&s);
    return ok;
}

bool lf_img_resize(const char *path, uint64_t size, const char *base, GError **errp)
{
    bool upgraded;

    return relayout(path, size, size == 0, base, &upgraded, errp);
}

bool lf_img_upgrade(const char *path, const char *base, bool *upgraded, GError **errp)
{
    return relayout(path, 0, false, base, upgraded, errp);
}
