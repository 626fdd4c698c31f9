/* SPDX-License-Identifier: MIT */
/* Synchronous access to an overlay file (overlay.h), for fmt-overlay.c and img.c: open and
 * validate, write header and bitmap, re-lay out (upgrade, grow), fingerprint a raw base. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "layers/overlay.h"
#include "layers/sparse.h"

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

static bool open_dev(struct ovl_file *f, const struct lf_layer_cfg *cfg, bool read_only,
                     GError **errp)
{
    struct lf_layer_cfg dflt = { .name = f->path };   /* the default driver */
    struct lf_layer_cfg c = cfg != NULL ? *cfg : dflt;
    GError *err = NULL;

    c.path = f->path;
    f->dev = layer_open_dev(&c, read_only, f->direct, f->lock, &err);
    if (f->dev != NULL)
        return true;
    if (g_error_matches(err, BC_ERROR, EWOULDBLOCK)) {
        g_set_error(errp, LF_ERROR, EWOULDBLOCK, "%s: the overlay is in use (locked by "
                    "another process or disk)", f->path);
        g_error_free(err);
    } else {
        g_propagate_error(errp, err);
    }
    return false;
}

bool ovl_file_open(struct ovl_file *f, const char *path, const struct lf_layer_cfg *cfg,
                   bool read_only, bool direct, unsigned flags, struct bc_sync *s,
                   GError **errp)
{
    uint8_t *hbuf = NULL, *disk = NULL;
    int r;

    memset(f, 0, sizeof(*f));
    f->path = g_strdup(path);
    f->direct = direct;
    /* One writer or any number of readers, across processes and disks: the driver locks
     * the very file it opened, whatever path (symlink, hard link, bind mount) led to it,
     * and the open fails when it cannot. */
    f->lock = flags & OVL_OPEN_NO_LOCK ? BC_LOCK_NONE
              : read_only ? BC_LOCK_SHARED : BC_LOCK_EXCLUSIVE;
    if (!open_dev(f, cfg, read_only, errp))
        goto fail;
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
    disk = bc_buf_alloc(f->h.bitmap_len);
    r = sync_rw(f, s, false, disk, f->h.bitmap_len, f->h.bitmap_off);
    if (r < 0) {
        g_set_error(errp, LF_ERROR, -r, "%s: cannot read the bitmap at offset %" PRIu64 ": %s",
                    path, f->h.bitmap_off, g_strerror(-r));
        goto fail;
    }
    f->bitmap = g_malloc(ovl_bitmap_mem_len(&f->h));
    GError *cerr = NULL;
    if (!ovl_bitmap_decode(&f->h, disk, f->bitmap, path, &f->bad_chunks, &cerr)) {
        if (!(flags & OVL_OPEN_NO_BITMAP_CHECK)) {
            g_propagate_error(errp, cerr);
            goto fail;
        }
        f->chunk_problem = g_strdup(cerr->message);
        g_error_free(cerr);
    }
    if (!(flags & OVL_OPEN_NO_BITMAP_CHECK) &&
        !ovl_bitmap_check(&f->h, f->bitmap, f->file_size, path, NULL, errp))
        goto fail;
    bc_buf_free(hbuf);
    bc_buf_free(disk);
    return true;

fail:
    bc_buf_free(hbuf);
    bc_buf_free(disk);
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
    uint8_t *buf = bc_buf_alloc(f->h.bitmap_len);

    ovl_bitmap_encode(&f->h, f->bitmap, buf);
    int r = sync_rw(f, s, true, buf, f->h.bitmap_len, f->h.bitmap_off);
    bc_buf_free(buf);
    return r;
}

/* Make the file at least size bytes: grow it by path under our lock, then reopen the
 * device (which knows its size from the open) and check it is still the same overlay. */
static bool grow_file(struct ovl_file *f, const struct lf_layer_cfg *cfg, uint64_t size,
                      struct bc_sync *s, GError **errp)
{
    uint8_t *hbuf, want[OVL_HEADER_SIZE];

    if (truncate(f->path, (off_t)size) < 0) {
        g_set_error(errp, LF_ERROR, errno, "%s: cannot grow the file to %" PRIu64 " bytes: %s",
                    f->path, size, g_strerror(errno));
        return false;
    }
    bc_dev_close(f->dev);
    f->dev = NULL;
    if (!open_dev(f, cfg, false, errp))
        return false;
    f->file_size = bc_dev_size(f->dev);
    hbuf = bc_buf_alloc(OVL_HEADER_SIZE);
    int r = sync_rw(f, s, false, hbuf, OVL_HEADER_SIZE, 0);
    ovl_hdr_encode(&f->h, want);
    bool same = r == 0 && f->file_size >= size && memcmp(hbuf, want, OVL_HEADER_USED) == 0;
    bc_buf_free(hbuf);
    if (!same)
        g_set_error(errp, LF_ERROR, r < 0 ? -r : EAGAIN,
                    "%s: the overlay changed while it was grown to %" PRIu64 " bytes", f->path,
                    size);
    return same;
}

/* The new bitmap goes where nothing refers to (ovl_place_bitmap) and is flushed before the
 * header switches to it, in one write: a crash leaves the old overlay or the new one.  The
 * same size upgrades a version-1 file. */
bool ovl_file_relayout(struct ovl_file *f, const struct lf_layer_cfg *cfg, uint64_t size,
                       struct bc_sync *s, GError **errp)
{
    struct ovl_hdr n = f->h, old = f->h;
    uint32_t bs = f->h.block_size;
    int r = 0;
    const char *step = "zero the tail of the last block";

    assert(size >= old.size);
    if (!ovl_check_geometry(f->path, size, bs, errp))
        return false;
    n.version = 2;
    n.size = size;
    n.nblocks = (size + bs - 1) / bs;
    n.bitmap_len = ovl_bitmap_len(2, n.nblocks);
    n.bitmap_off = ovl_place_bitmap(&old, n.nblocks);
    if (n.bitmap_off > OVL_MAX_OFFSET) {
        g_set_error(errp, LF_ERROR, EFBIG, "%s: no room for a bitmap below 2^62", f->path);
        return false;
    }
    /* A present last block that the old size cut short: the part of it that becomes
     * visible reads as zeros (invisible before, so a crash here changes nothing). */
    uint64_t tail = old.nblocks * bs - old.size;
    if (size > old.size && tail > 0 && bit_get(f->bitmap, old.nblocks - 1)) {
        bc_dev_write_zeroes(f->dev, s->loop, old.data_off + old.size, tail, 0, bc_sync_cb, s);
        r = bc_sync_wait(s);
    }
    if (r == 0 && ovl_file_size(&n) > f->file_size &&
        !grow_file(f, cfg, ovl_file_size(&n), s, errp))
        return false;
    uint8_t *flat = g_malloc0(ovl_bitmap_mem_len(&n));
    memcpy(flat, f->bitmap, MIN(ovl_bitmap_mem_len(&old), ovl_bitmap_mem_len(&n)));
    uint8_t *buf = bc_buf_alloc(n.bitmap_len);
    ovl_bitmap_encode(&n, flat, buf);
    /* New bitmap (in space nothing refers to) durable first, then the header: a crash
     * leaves either the old overlay or the new one. */
    if (r == 0) {
        step = "write the new bitmap";
        r = sync_rw(f, s, true, buf, n.bitmap_len, n.bitmap_off);
    }
    bc_buf_free(buf);
    if (r == 0) {
        step = "write the header";
        f->h = n;
        r = ovl_file_write_header(f, s);
        if (r < 0)
            f->h = old;
    }
    if (r < 0) {
        g_free(flat);
        g_set_error(errp, LF_ERROR, -r, "%s: cannot %s: %s", f->path, step, g_strerror(-r));
        return false;
    }
    g_free(f->bitmap);
    f->bitmap = flat;
    /* Give back the old bitmap's space; nothing refers to it any more. */
    bc_dev_write_zeroes(f->dev, s->loop, old.bitmap_off, old.bitmap_len, BC_REQ_MAY_UNMAP,
                        bc_sync_cb, s);
    if ((r = bc_sync_wait(s)) < 0)
        g_message("%s: could not free the old bitmap's space: %s", f->path, g_strerror(-r));
    return true;
}

static int dev_read(void *opaque, uint8_t *buf, uint64_t len, uint64_t off)
{
    void **a = opaque;
    struct iovec iov = { buf, len };
    struct bc_sync *s = a[1];

    bc_dev_readv(a[0], s->loop, &iov, 1, off, bc_sync_cb, s);
    return bc_sync_wait(s);
}

int ovl_dev_fingerprint(struct bc_dev *dev, struct bc_sync *s, uint64_t *fp)
{
    void *a[2] = { dev, s };
    uint8_t *buf = bc_buf_alloc(OVL_FP_SAMPLE);
    int r = ovl_fingerprint(bc_dev_size(dev), dev_read, a, buf, fp);

    bc_buf_free(buf);
    return r;
}

void ovl_file_close(struct ovl_file *f)
{
    if (f->dev != NULL)
        bc_dev_close(f->dev);
    g_free(f->bitmap);
    g_free(f->chunk_problem);
    g_free(f->path);
    memset(f, 0, sizeof(*f));
}
