/* SPDX-License-Identifier: MIT */
/* The ram layer format: a volatile overlay (presence bitmap + memory); writes vanish at
 * close.  Sized to the layer below, or by the `size` key when it is the bottom layer. */
#include <errno.h>
#include <string.h>

#include "layers/sparse.h"

#define RAM_DEFAULT_BLOCK (64u << 10)

/* ram->sp.lock also protects blocks[]. */
struct ram {
    struct sparse sp;
    uint8_t **blocks;       /* nblocks pointers, NULL = zeros (never written, dropped, or
                             * written or zeroed whole with zeros): a hole to block_status */
};

static struct ram *ram_of(struct layer *l)
{
    return l->priv;
}

/* Call fn on each block piece of [offset, offset+len). */
#define FOR_PIECES(r, offset, len, b, boff, n, pos)                                     \
    for (uint64_t pos = 0, b, boff, n; pos < (len) &&                                   \
         (b = ((offset) + pos) >> (r)->sp.shift, boff = ((offset) + pos) & ((r)->sp.bs - 1), \
          n = MIN((len) - pos, (r)->sp.bs - boff), true);                               \
         pos += n)

static void ram_sread(void *store, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                      uint64_t offset, bc_cb *cb, void *opaque)
{
    struct ram *r = store;
    uint64_t len = bc_iov_len(iov, iovcnt);

    g_mutex_lock(&r->sp.lock);
    FOR_PIECES(r, offset, len, b, boff, n, pos) {
        if (b < r->sp.nblocks && r->blocks[b] != NULL)
            bc_iov_from_buf(iov, iovcnt, pos, r->blocks[b] + boff, n);
        else
            bc_iov_memset(iov, iovcnt, pos, 0, n);
    }
    g_mutex_unlock(&r->sp.lock);
    layer_complete_later(loop, cb, opaque, 0);
}

static void ram_swrite(void *store, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                       uint64_t offset, unsigned flags, bc_cb *cb, void *opaque)
{
    struct ram *r = store;
    uint64_t len = bc_iov_len(iov, iovcnt);

    g_mutex_lock(&r->sp.lock);
    FOR_PIECES(r, offset, len, b, boff, n, pos) {
        assert(b < r->sp.nblocks);
        if (r->blocks[b] == NULL)
            r->blocks[b] = g_malloc0(r->sp.bs);
        bc_iov_to_buf(iov, iovcnt, pos, r->blocks[b] + boff, n);
        /* A whole block of zeros (a cache fill over a hole, say) needs no memory. */
        if (n == r->sp.bs && r->blocks[b][0] == 0 &&
            memcmp(r->blocks[b], r->blocks[b] + 1, n - 1) == 0)
            g_clear_pointer(&r->blocks[b], g_free);
    }
    g_mutex_unlock(&r->sp.lock);
    layer_complete_later(loop, cb, opaque, 0);
}

static void ram_szero(void *store, struct bc_loop *loop, uint64_t offset, uint64_t len,
                      unsigned flags, bc_cb *cb, void *opaque)
{
    struct ram *r = store;

    g_mutex_lock(&r->sp.lock);
    FOR_PIECES(r, offset, len, b, boff, n, pos) {
        if (b >= r->sp.nblocks)
            break;
        if (n == r->sp.bs)
            g_clear_pointer(&r->blocks[b], g_free);
        else if (r->blocks[b] != NULL)
            memset(r->blocks[b] + boff, 0, n);
    }
    g_mutex_unlock(&r->sp.lock);
    layer_complete_later(loop, cb, opaque, 0);
}

static void ram_dropped(void *store, uint64_t b0, uint64_t b1)
{
    struct ram *r = store;

    for (uint64_t b = b0; b < b1; b++)
        g_clear_pointer(&r->blocks[b], g_free);
}

static const struct sparse_store_ops ram_store = {
    .read = ram_sread,
    .write = ram_swrite,
    .zero = ram_szero,
    .dropped = ram_dropped,
};

static bool ram_open(struct layer *l, const struct lf_layer_cfg *cfg, struct layer *below,
                     bool writable, GError **errp)
{
    uint64_t size = 0;
    uint64_t bs = cfg->block_size ? cfg->block_size : RAM_DEFAULT_BLOCK;
    const char *s = cfg->driver_opts ? g_hash_table_lookup(cfg->driver_opts, "size") : NULL;

    if (s != NULL && !bc_parse_size(s, &size)) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s:size: '%s' is not a size", l->origin, s);
        return false;
    }
    if (s == NULL && below != NULL)
        size = below->size;
    if (s == NULL && below == NULL) {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s:size: a ram layer at the bottom of a stack needs a size", l->origin);
        return false;
    }
    if (bs < LF_MIN_BLOCK_SIZE || bs > LF_MAX_BLOCK_SIZE || (bs & (bs - 1)) != 0) {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s:block-size: %" PRIu64 " is not a power of two between 512 and 64M",
                    l->origin, bs);
        return false;
    }
    struct ram *r = g_new0(struct ram, 1);
    sparse_init(&r->sp, l, size, (uint32_t)bs, &ram_store, r);
    r->blocks = g_new0(uint8_t *, MAX(r->sp.nblocks, 1));
    l->priv = r;
    l->size = size;
    l->block_size = (uint32_t)bs;
    l->io_align = 4096;
    l->read_only = !writable;
    return true;
}

static int ram_close(struct layer *l)
{
    struct ram *r = ram_of(l);

    for (uint64_t b = 0; b < r->sp.nblocks; b++)
        g_free(r->blocks[b]);
    g_free(r->blocks);
    sparse_destroy(&r->sp);
    g_free(r);
    l->priv = NULL;
    return 0;
}

static int ram_present(struct layer *l, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    return sparse_present(&ram_of(l)->sp, offset, len, pnum);
}

/* Data where a block has memory, a hole where it reads as zeros without. */
static int ram_block_status(struct layer *l, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    struct ram *r = ram_of(l);
    uint64_t b = offset >> r->sp.shift;
    uint64_t last = MIN(r->sp.nblocks, ((offset + len - 1) >> r->sp.shift) + 1);

    if (b >= r->sp.nblocks) {
        *pnum = len;
        return 0;
    }
    g_mutex_lock(&r->sp.lock);
    bool data = r->blocks[b] != NULL;
    uint64_t e = b + 1;
    while (e < last && (r->blocks[e] != NULL) == data)
        e++;
    g_mutex_unlock(&r->sp.lock);
    *pnum = MIN(len, (e << r->sp.shift) - offset);
    return data ? 1 : 0;
}

static void ram_read(struct layer *l, struct bc_loop *loop, const struct iovec *iov,
                     int iovcnt, uint64_t offset, bc_cb *cb, void *opaque)
{
    sparse_read(&ram_of(l)->sp, loop, iov, iovcnt, offset, cb, opaque);
}

static void ram_write(struct layer *l, struct bc_loop *loop, const struct iovec *iov,
                      int iovcnt, uint64_t offset, unsigned flags, bc_cb *cb, void *opaque)
{
    sparse_write(&ram_of(l)->sp, loop, iov, iovcnt, offset, flags, cb, opaque);
}

static void ram_zero(struct layer *l, struct bc_loop *loop, uint64_t offset, uint64_t len,
                     unsigned flags, bc_cb *cb, void *opaque)
{
    sparse_zero(&ram_of(l)->sp, loop, offset, len, flags, cb, opaque);
}

static void ram_discard(struct layer *l, struct bc_loop *loop, uint64_t offset, uint64_t len,
                        bc_cb *cb, void *opaque)
{
    sparse_discard(&ram_of(l)->sp, loop, offset, len, cb, opaque);
}

static void ram_flush(struct layer *l, struct bc_loop *loop, bc_cb *cb, void *opaque)
{
    layer_complete_later(loop, cb, opaque, 0);
}

static const char *const ram_keys[] = { "size", NULL };

const struct layer_ops layer_fmt_ram = {
    .format = "ram",
    .in_memory = true,
    .keys = ram_keys,
    .has_block_size = true,
    .open = ram_open,
    .close = ram_close,
    .present = ram_present,
    .block_status = ram_block_status,
    .read = ram_read,
    .write = ram_write,
    .zero = ram_zero,
    .discard = ram_discard,
    .flush = ram_flush,
    .can_no_overwrite = true,
};
