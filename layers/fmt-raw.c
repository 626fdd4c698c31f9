/* SPDX-License-Identifier: MIT */
/* The raw layer format: a blockcore device, fully present; requests pass straight through. */
#include <errno.h>

#include "layers/layer.h"

static struct bc_dev *dev_of(struct layer *l)
{
    return l->priv;
}

static bool raw_open(struct layer *l, const struct lf_layer_cfg *cfg, struct layer *below,
                     bool writable, GError **errp)
{
    struct bc_dev *dev = layer_open_dev(cfg, !writable, cfg->direct, BC_LOCK_NONE, errp);
    if (dev == NULL)
        return false;
    const struct bc_props *p = bc_dev_props(dev);
    l->priv = dev;
    l->size = p->size;
    l->block_size = 1;
    l->io_align = p->req_align;
    l->remote = p->remote;
    l->read_only = p->read_only || !writable;
    return true;
}

static int raw_close(struct layer *l)
{
    layer_log_driver_stats(l, dev_of(l));
    bc_dev_close(dev_of(l));
    l->priv = NULL;
    return 0;
}

static int raw_present(struct layer *l, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    *pnum = len;
    return 1;
}

static int raw_block_status(struct layer *l, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    return bc_dev_block_status(dev_of(l), offset, len, pnum);
}

static void raw_read(struct layer *l, struct bc_loop *loop, const struct iovec *iov,
                     int iovcnt, uint64_t offset, bc_cb *cb, void *opaque)
{
    bc_dev_readv(dev_of(l), loop, iov, iovcnt, offset, cb, opaque);
}

static void raw_write(struct layer *l, struct bc_loop *loop, const struct iovec *iov,
                      int iovcnt, uint64_t offset, unsigned flags, bc_cb *cb, void *opaque)
{
    assert(!(flags & LAYER_NO_OVERWRITE));
    bc_dev_writev(dev_of(l), loop, iov, iovcnt, offset, flags & BC_REQ_FUA, cb, opaque);
}

static void raw_zero(struct layer *l, struct bc_loop *loop, uint64_t offset, uint64_t len,
                     unsigned flags, bc_cb *cb, void *opaque)
{
    bc_dev_write_zeroes(dev_of(l), loop, offset, len, flags, cb, opaque);
}

static void raw_discard(struct layer *l, struct bc_loop *loop, uint64_t offset, uint64_t len,
                        bc_cb *cb, void *opaque)
{
    /* Fully present, so a discard may only let go where the stack below agrees (a
     * write-through raw over other layers): elsewhere it is a no-op. */
    if (!layer_next_is_zero(l, offset, len)) {
        layer_complete_later(loop, cb, opaque, 0);
        return;
    }
    bc_dev_discard(dev_of(l), loop, offset, len, cb, opaque);
}

static void raw_flush(struct layer *l, struct bc_loop *loop, bc_cb *cb, void *opaque)
{
    bc_dev_flush(dev_of(l), loop, cb, opaque);
}

const struct layer_ops layer_fmt_raw = {
    .format = "raw",
    .has_block_size = false,
    .can_create = false,
    .open = raw_open,
    .close = raw_close,
    .present = raw_present,
    .block_status = raw_block_status,
    .read = raw_read,
    .write = raw_write,
    .zero = raw_zero,
    .discard = raw_discard,
    .flush = raw_flush,
    .can_no_overwrite = false,
};
