/* SPDX-License-Identifier: MIT */
/* The virtio-blk driver core's setup side: properties derived from the config space as
 * libblkio does, the layout of device memory, creating and freeing a core. */
#include <assert.h>
#include <errno.h>
#include <string.h>

#include <linux/virtio_blk.h>
#include <linux/virtio_ring.h>

#include "drivers/virtio-blk/virtio-blk-int.h"

/* Watches of freed cores; reachable so leak checkers stay quiet. Protected by orphan_lock. */
static GMutex orphan_lock;
static struct vblk_watch *orphans;

static uint32_t pow2_ceil(uint64_t v)
{
    uint32_t p = 1;
    while (p < v && p < (1u << 31))
        p *= 2;
    return p;
}

/* Bytes per data descriptor: size_max when the device sets it, capped at 1 GiB.  The same
 * numbers bound max_transfer and cut requests, so a request always fits. */
static uint32_t vblk_seg_len(uint64_t features, const struct bc_vblk_config *cfg)
{
    uint32_t l = features & (1ull << VIRTIO_BLK_F_SIZE_MAX) && cfg->size_max ? cfg->size_max
                                                                               : UINT32_MAX;
    return MIN(l, 1u << 30);
}

/* Data descriptors per request: seg_max, and what fits next to header and status. */
static uint32_t vblk_max_segs(uint64_t features, const struct bc_vblk_config *cfg,
                              unsigned queue_size)
{
    uint32_t n = features & (1ull << VIRTIO_BLK_F_SEG_MAX) && cfg->seg_max ? cfg->seg_max
                                                                            : queue_size;
    return MIN(n, queue_size - 2);
}

/* ---- properties -------------------------------------------------------------------- */

bool bc_vblk_props(const char *what, uint64_t features, const struct bc_vblk_config *cfg,
                   unsigned queue_size, struct bc_props *p, GError **errp)
{
    uint32_t blk = 512;
    uint64_t mt;

    memset(p, 0, sizeof(*p));
    if (features & (1ull << VIRTIO_BLK_F_BLK_SIZE)) {
        blk = cfg->blk_size;
        if (blk < 512 || blk > 65536 || (blk & (blk - 1))) {
            g_set_error(errp, BC_ERROR, EINVAL, "%s: device reports block size %u", what, blk);
            return false;
        }
    }
    p->req_align = blk;
    p->mem_align = 1;   /* we bounce or pass byte-granular addresses */
    p->size = cfg->capacity * 512 / blk * blk;

    /* max_transfer from size_max/seg_max, and what fits in the queue without indirect
     * descriptors (header and status take two). */
    uint64_t seg_len = vblk_seg_len(features, cfg);
    uint64_t segs = vblk_max_segs(features, cfg, queue_size);
    if (seg_len < 512 || segs < 1) {
        g_set_error(errp, BC_ERROR, EINVAL,
                    "%s: device limits too small (size_max %u, seg_max %u, queue size %u)",
                    what, cfg->size_max, cfg->seg_max, queue_size);
        return false;
    }
    mt = MIN(seg_len * segs, (uint64_t)MAX_TRANSFER_CAP);
    mt = mt / blk * blk;
    if (mt < blk) {
        g_set_error(errp, BC_ERROR, EINVAL, "%s: max transfer below the block size", what);
        return false;
    }
    p->max_transfer = (uint32_t)mt;

    if (features & (1ull << VIRTIO_BLK_F_DISCARD)) {
        uint64_t a = (uint64_t)cfg->discard_sector_alignment * 512;
        p->discard_align = MAX(blk, pow2_ceil(a));
    }
    if (features & (1ull << VIRTIO_BLK_F_WRITE_ZEROES))
        p->zero_align = blk;
    p->fua_native = false;  /* blockcore emulates FUA with a flush; we never see the flag */
    p->read_only = features & (1ull << VIRTIO_BLK_F_RO);
    p->can_grow = false;
    return true;
}

size_t bc_vblk_pool_bytes(uint32_t max_transfer)
{
    return MAX((size_t)16 << 20, (size_t)max_transfer * 8);
}

static size_t slots_bytes(unsigned queue_size)
{
    return ((size_t)queue_size * sizeof(struct bc_vblk_slot) + POOL_PAGE - 1) / POOL_PAGE *
           POOL_PAGE;
}

size_t bc_vblk_mem_bytes(unsigned num_queues, unsigned queue_size, const struct bc_props *p)
{
    return num_queues * (bc_vq_ring_bytes(queue_size) + slots_bytes(queue_size)) +
           bc_vblk_pool_bytes(p->max_transfer);
}

/* ---- setup ------------------------------------------------------------------------- */

struct bc_vblk *bc_vblk_new(const struct bc_vblk_args *a, const struct bc_props *props,
                            GError **errp)
{
    struct bc_vblk *b = g_new0(struct bc_vblk, 1);
    size_t qbytes = bc_vq_ring_bytes(a->queue_size) + slots_bytes(a->queue_size);
    size_t pool_bytes = bc_vblk_pool_bytes(props->max_transfer);
    uint8_t *p = a->mem.base;

    if (a->mem.len < bc_vblk_mem_bytes(a->num_queues, a->queue_size, props)) {
        g_set_error(errp, BC_ERROR, EINVAL, "%s: device memory region too small", a->what);
        g_free(b);
        return NULL;
    }
    b->what = g_strdup(a->what);
    b->features = a->features;
    b->props = *props;
    b->mem = a->mem;
    b->ops = a->ops;
    b->t = a->t;
    b->nq = a->num_queues;
    b->seg_len = vblk_seg_len(a->features, a->cfg);
    b->max_segs = vblk_max_segs(a->features, a->cfg, a->queue_size);
    uint64_t md = a->cfg->max_discard_sectors ? a->cfg->max_discard_sectors : UINT32_MAX;
    uint64_t mz = a->cfg->max_write_zeroes_sectors ? a->cfg->max_write_zeroes_sectors
                                                   : UINT32_MAX;
    b->max_discard = props->discard_align
                         ? MAX(md * 512 / props->discard_align * props->discard_align,
                               (uint64_t)props->discard_align)
                         : 0;
    b->max_zeroes = MAX(mz * 512 / props->req_align * props->req_align,
                        (uint64_t)props->req_align);

    b->q = g_new0(struct vblk_queue, b->nq);
    for (unsigned i = 0; i < b->nq; i++) {
        struct vblk_queue *q = &b->q[i];
        g_mutex_init(&q->lock);
        bc_vq_init(&q->vq, a->queue_size, p, bc_vmem_addr(&b->mem, p),
                   vblk_has(b, VIRTIO_RING_F_EVENT_IDX));
        p += bc_vq_ring_bytes(a->queue_size);
        q->slots = (struct bc_vblk_slot *)p;
        q->slots_addr = bc_vmem_addr(&b->mem, p);
        p += qbytes - bc_vq_ring_bytes(a->queue_size);
        q->wait_tail = &q->wait_head;
        q->call_fd = a->call_fds[i];
        q->index = i;
        q->b = b;
    }
    g_mutex_init(&b->pool_lock);
    b->pool = p;
    if (!bc_pagemap_init(&b->pool_map, pool_bytes / POOL_PAGE))
        g_error("%s: out of memory for the bounce pool's page map", a->what);
    return b;
}

void bc_vblk_add_mem(struct bc_vblk *b, const struct bc_vmem *m)
{
    g_assert(b->nextra < G_N_ELEMENTS(b->extra));
    b->extra[b->nextra++] = *m;
}

void bc_vblk_ring_addrs(struct bc_vblk *b, unsigned qi, uint64_t *desc, uint64_t *avail,
                        uint64_t *used)
{
    *desc = b->q[qi].vq.desc_addr;
    *avail = b->q[qi].vq.avail_addr;
    *used = b->q[qi].vq.used_addr;
}

static void orphan(struct vblk_watch *w)
{
    g_mutex_lock(&w->lock);
    w->q = NULL;
    g_mutex_unlock(&w->lock);
    g_mutex_lock(&orphan_lock);
    w->next = orphans;
    orphans = w;
    g_mutex_unlock(&orphan_lock);
}

void bc_vblk_free(struct bc_vblk *b)
{
    if (!b)
        return;
    struct bc_drv_stats st;
    struct bc_buf_pool_stats ps;
    bc_vblk_stats(b, &st);
    bc_buf_pool_stats(&ps);
    g_debug("%s: data in place (zero-copy): %" G_GUINT64_FORMAT " requests, %" G_GUINT64_FORMAT
            " bytes; copied: %" G_GUINT64_FORMAT " requests, %" G_GUINT64_FORMAT " bytes; "
            "I/O buffer arenas: %zu bytes, peak use %zu, %" G_GUINT64_FORMAT " buffers "
            "from the heap", b->what, st.zero_copy_reqs, st.zero_copy_bytes, st.copied_reqs,
            st.copied_bytes, ps.total, ps.peak, ps.fallbacks);
    for (unsigned i = 0; i < b->nq; i++) {
        struct vblk_queue *q = &b->q[i];
        struct vblk_watch *w = q->watches;
        while (w) {
            struct vblk_watch *next = w->next;
            orphan(w);
            w = next;
        }
        assert(!q->wait_head);
        bc_vq_destroy(&q->vq);
        g_mutex_clear(&q->lock);
    }
    g_mutex_clear(&b->pool_lock);
    bc_pagemap_destroy(&b->pool_map);
    g_free(b->q);
    g_free(b->what);
    g_free(b);
}

