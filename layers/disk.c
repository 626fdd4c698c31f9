/* SPDX-License-Identifier: MIT */
/* A layered disk: the lf_disk_* API of layers.h.  This first version supports a stack of
 * exactly one raw layer and passes every request straight to its bc_dev. */
#include <errno.h>
#include <string.h>

#include "layers/layers.h"

G_DEFINE_QUARK(lf-error-quark, lf_error)

struct lf_disk {
    char *name;
    bool read_only;
    uint32_t block_size;
    struct bc_dev *dev;
};

/* A callback delivered from the loop, for errors found at submission. */
struct lf_late {
    struct bc_task task;
    bc_cb *cb;
    void *opaque;
    int res;
};

static void late_run(struct bc_task *task)
{
    struct lf_late *l = (struct lf_late *)task;
    bc_cb *cb = l->cb;
    void *opaque = l->opaque;
    int res = l->res;

    g_free(l);
    cb(opaque, res);
}

static void complete_later(struct bc_loop *loop, bc_cb *cb, void *opaque, int res)
{
    struct lf_late *l = g_new0(struct lf_late, 1);

    l->task.fn = late_run;
    l->cb = cb;
    l->opaque = opaque;
    l->res = res;
    bc_loop_defer(loop, &l->task);
}

struct lf_disk *lf_disk_open(const struct lf_disk_cfg *cfg, bool force_read_only,
                             GError **errp)
{
    if (cfg->layers == NULL || cfg->layers->len == 0) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s: disk %s has no layers", cfg->origin,
                    cfg->name);
        return NULL;
    }
    if (cfg->layers->len != 1) {
        g_set_error(errp, LF_ERROR, ENOTSUP, "%s: disk %s: only one layer is supported",
                    cfg->origin, cfg->name);
        return NULL;
    }
    const struct lf_layer_cfg *lc = g_ptr_array_index(cfg->layers, 0);
    if (lc->format != NULL && strcmp(lc->format, "raw") != 0) {
        g_set_error(errp, LF_ERROR, ENOTSUP, "%s: format %s is not supported", lc->origin,
                    lc->format);
        return NULL;
    }
    const struct bc_driver *drv = bc_driver_find(lc->driver ? lc->driver : "file");
    if (drv == NULL) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s: unknown driver %s (known: %s)", lc->origin,
                    lc->driver, bc_driver_names());
        return NULL;
    }
    bool ro = cfg->read_only || force_read_only;
    g_autofree char *what = g_strdup_printf("layer %s", lc->name);
    struct bc_open_args args = {
        .what = what,
        .path = lc->path,
        .read_only = ro || lc->read_only,
        .direct = lc->direct,
        .opts = lc->driver_opts,
    };
    if (!ro && lc->read_only) {
        g_set_error(errp, LF_ERROR, EROFS,
                    "%s: layer %s is read-only but disk %s is writable", lc->origin,
                    lc->name, cfg->name);
        return NULL;
    }
    struct bc_dev *dev = bc_dev_open(drv, &args, errp);
    if (dev == NULL)
        return NULL;
    const struct bc_props *p = bc_dev_props(dev);
    if (!ro && p->read_only) {
        g_set_error(errp, LF_ERROR, EROFS,
                    "%s: layer %s (%s) can only be opened read-only but disk %s is writable",
                    lc->origin, lc->name, lc->path ? lc->path : lc->driver, cfg->name);
        bc_dev_close(dev);
        return NULL;
    }

    struct lf_disk *disk = g_new0(struct lf_disk, 1);
    disk->name = g_strdup(cfg->name);
    disk->read_only = ro;
    disk->dev = dev;
    disk->block_size = MAX(4096u, p->req_align);
    return disk;
}

struct lf_close_wait {
    bool done;
    int res;
};

static void close_flushed(void *opaque, int res)
{
    struct lf_close_wait *w = opaque;

    w->res = res;
    w->done = true;
}

int lf_disk_close(struct lf_disk *disk)
{
    int res = 0;

    if (disk == NULL)
        return 0;
    if (!disk->read_only) {
        /* Flush on the caller's loop, or on a private one if it has none. */
        struct bc_loop *loop = bc_loop_current();
        struct bc_loop *own = NULL;
        struct lf_close_wait w = { 0 };

        if (loop == NULL) {
            own = bc_loop_new(0, 8, NULL);
            loop = own;
        }
        if (loop != NULL) {
            bc_dev_flush(disk->dev, loop, close_flushed, &w);
            while (!w.done) {
                int r = bc_loop_run_once(loop, true);
                if (r < 0 && r != -EINTR && r != -EAGAIN) {
                    w.res = r;
                    break;
                }
            }
            res = w.res;
        } else {
            res = -ENOMEM;
        }
        if (own != NULL)
            bc_loop_free(own);
    }
    bc_dev_close(disk->dev);
    g_free(disk->name);
    g_free(disk);
    return res;
}

const char *lf_disk_name(const struct lf_disk *disk)
{
    return disk->name;
}

uint64_t lf_disk_size(const struct lf_disk *disk)
{
    return bc_dev_size(disk->dev);
}

bool lf_disk_read_only(const struct lf_disk *disk)
{
    return disk->read_only;
}

uint32_t lf_disk_block_size(const struct lf_disk *disk)
{
    return disk->block_size;
}

void lf_disk_readv(struct lf_disk *disk, struct bc_loop *loop, const struct iovec *iov,
                   int iovcnt, uint64_t offset, bc_cb *cb, void *opaque)
{
    bc_dev_readv(disk->dev, loop, iov, iovcnt, offset, cb, opaque);
}

/* -EROFS, -ENOSPC or 0 for a modifying request on [offset, offset+len). */
static int check_write(struct lf_disk *disk, uint64_t offset, uint64_t len)
{
    uint64_t size = lf_disk_size(disk);

    if (disk->read_only)
        return -EROFS;
    if (offset > size || len > size - offset)
        return -ENOSPC;
    return 0;
}

void lf_disk_writev(struct lf_disk *disk, struct bc_loop *loop, const struct iovec *iov,
                    int iovcnt, uint64_t offset, unsigned flags, bc_cb *cb, void *opaque)
{
    int r = check_write(disk, offset, bc_iov_len(iov, iovcnt));

    if (r < 0) {
        complete_later(loop, cb, opaque, r);
        return;
    }
    bc_dev_writev(disk->dev, loop, iov, iovcnt, offset, flags, cb, opaque);
}

void lf_disk_write_zeroes(struct lf_disk *disk, struct bc_loop *loop, uint64_t offset,
                          uint64_t len, unsigned flags, bc_cb *cb, void *opaque)
{
    int r = check_write(disk, offset, len);

    if (r < 0) {
        complete_later(loop, cb, opaque, r);
        return;
    }
    bc_dev_write_zeroes(disk->dev, loop, offset, len, flags, cb, opaque);
}

void lf_disk_discard(struct lf_disk *disk, struct bc_loop *loop, uint64_t offset, uint64_t len,
                     bc_cb *cb, void *opaque)
{
    int r = check_write(disk, offset, len);

    if (r < 0) {
        complete_later(loop, cb, opaque, r);
        return;
    }
    bc_dev_discard(disk->dev, loop, offset, len, cb, opaque);
}

void lf_disk_flush(struct lf_disk *disk, struct bc_loop *loop, bc_cb *cb, void *opaque)
{
    if (disk->read_only) {
        complete_later(loop, cb, opaque, 0);
        return;
    }
    bc_dev_flush(disk->dev, loop, cb, opaque);
}

int lf_disk_block_status(struct lf_disk *disk, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    return bc_dev_block_status(disk->dev, offset, len, pnum);
}
