/* SPDX-License-Identifier: MIT */
/* The virtio-blk driver core's setup side: the negotiation both transports share, properties
 * derived from the config space as libblkio does, the layout of device memory, creating and
 * freeing a core. */
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

/* The bounce pool size for a device with this max transfer. */
static size_t pool_bytes(uint32_t max_transfer)
{
    return MAX((size_t)16 << 20, (size_t)max_transfer * 8);
}

static size_t slots_bytes(unsigned queue_size)
{
    return ((size_t)queue_size * sizeof(struct bc_vblk_slot) + POOL_PAGE - 1) / POOL_PAGE *
           POOL_PAGE;
}

/* Bytes of device memory the core needs. */
static size_t mem_bytes(unsigned num_queues, unsigned queue_size, const struct bc_props *p)
{
    return num_queues * (bc_vq_ring_bytes(queue_size) + slots_bytes(queue_size)) +
           pool_bytes(p->max_transfer);
}

/* ---- creating the core ------------------------------------------------------------- */

struct vblk_args {
    const char *what;               /* for messages */
    uint64_t features;              /* negotiated */
    const struct bc_vblk_config *cfg;
    unsigned num_queues, queue_size;
    struct bc_vmem mem;             /* at least mem_bytes() */
    const int *call_fds;            /* per queue, non-blocking eventfds */
    const struct bc_vblk_transport *ops;
    void *t;                        /* transport state for ops */
};

/* The core over initialised device memory. NULL with *errp on failure. */
static struct bc_vblk *vblk_new(const struct vblk_args *a, const struct bc_props *props,
                                GError **errp)
{
    struct bc_vblk *b = g_new0(struct bc_vblk, 1);
    size_t qbytes = bc_vq_ring_bytes(a->queue_size) + slots_bytes(a->queue_size);
    size_t pool_len = pool_bytes(props->max_transfer);
    uint8_t *p = a->mem.base;

    if (a->mem.len < mem_bytes(a->num_queues, a->queue_size, props)) {
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
    if (!bc_pagemap_init(&b->pool_map, pool_len / POOL_PAGE))
        g_error("%s: out of memory for the bounce pool's page map", a->what);
    return b;
}

void bc_vblk_add_mem(struct bc_vblk *b, const struct bc_vmem *m)
{
    g_assert(b->nextra < G_N_ELEMENTS(b->extra));
    b->extra[b->nextra++] = *m;
}

/* ---- negotiation ------------------------------------------------------------------- */

bool bc_vblk_setup(struct bc_vblk_setup *s, const struct bc_vblk_setup_ops *ops, void *t,
                   struct bc_props *props, struct bc_vblk **blkp, GError **errp)
{
    uint8_t raw[BC_VBLK_CONFIG_BYTES] = { 0 };
    struct bc_vmem mem;

    /* Features, then the config, whose fields depend on them. */
    s->features = s->dev_features & (BC_VBLK_WANTED_FEATURES | s->extra_features);
    if (ops->set_features && !ops->set_features(t, s->features, errp))
        return false;
    if (!ops->read_config(t, raw, errp))
        return false;
    bc_vblk_config_parse(raw, sizeof(raw), &s->cfg);

    /* Queues: as many as the device and the transport allow, up to BC_VBLK_DEFAULT_QUEUES
     * unless num-queues says; each as large as queue-size or the largest the device takes. */
    unsigned dev_queues = s->features & (1ull << VIRTIO_BLK_F_MQ) ? MAX(s->cfg.num_queues, 1u)
                                                                  : 1;
    dev_queues = MIN(dev_queues, s->dev_queues);
    if (dev_queues == 0 || s->want_queues > (int64_t)dev_queues) {
        g_set_error(errp, BC_ERROR, EINVAL, "%s: num-queues %lld: the device has only %u",
                    s->what, (long long)s->want_queues, dev_queues);
        return false;
    }
    if (ops->limit_queues && !ops->limit_queues(t, s->want_queues, &dev_queues, errp))
        return false;
    s->num_queues = s->want_queues ? (unsigned)s->want_queues
                                   : MIN(dev_queues, BC_VBLK_DEFAULT_QUEUES);
    for (unsigned i = 0; ops->queue_max && i < s->num_queues; i++) {
        unsigned max = ops->queue_max(t, i);
        while (max && s->queue_size > max)
            s->queue_size /= 2;
    }
    if (s->queue_size < 4) {
        g_set_error(errp, BC_ERROR, EINVAL, "%s: queues too small", s->what);
        return false;
    }

    if ((s->features & (1ull << VIRTIO_BLK_F_RO)) && !s->read_only) {
        g_set_error(errp, BC_ERROR, EROFS, "%s: the device is read-only; open it read-only",
                    s->what);
        return false;
    }
    if (!bc_vblk_props(s->what, s->features, &s->cfg, s->queue_size, props, errp))
        return false;
    props->read_only = props->read_only || s->read_only;

    /* Memory and eventfds from the transport, then the core over them. */
    if (!ops->alloc(t, s->num_queues, mem_bytes(s->num_queues, s->queue_size, props), &mem,
                    errp))
        return false;
    struct vblk_args a = {
        .what = s->what,
        .features = s->features,
        .cfg = &s->cfg,
        .num_queues = s->num_queues,
        .queue_size = s->queue_size,
        .mem = mem,
        .call_fds = s->call_fds,
        .ops = s->io,
        .t = t,
    };
    struct bc_vblk *b = *blkp = vblk_new(&a, props, errp);
    if (!b)
        return false;
    if (ops->attach && !ops->attach(t, b, s->features, errp))
        return false;
    for (unsigned i = 0; i < b->nq; i++) {
        const struct bc_vq *vq = &b->q[i].vq;
        if (!ops->set_queue(t, i, s->queue_size, vq->desc_addr, vq->avail_addr, vq->used_addr,
                            errp))
            return false;
    }
    return true;
}

/* ---- teardown ---------------------------------------------------------------------- */

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

