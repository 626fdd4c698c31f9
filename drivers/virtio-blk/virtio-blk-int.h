/* SPDX-License-Identifier: MIT */
/* Internals of the virtio-blk driver core shared by virtio-blk.c (the I/O path) and
 * virtio-blk-setup.c (properties, memory layout, creation and teardown). */
#ifndef LAYERFS_VIRTIO_BLK_INT_H
#define LAYERFS_VIRTIO_BLK_INT_H

#include "blockcore/pagemap.h"
#include "drivers/virtio-blk/virtio-blk.h"

#define POOL_PAGE 4096u            /* bounce pool granule */
#define MAX_TRANSFER_CAP (1u << 20) /* largest request we report */

/* A loop watching a queue's call eventfd and the transport's death fd (if any), set up on
 * the loop's first request.  Never freed while a ring may still deliver it: bc_vblk_free()
 * orphans it (q NULL, under lock). */
struct vblk_watch {
    struct bc_uop uop;          /* call_fd readable */
    struct bc_uop death_uop;    /* death_fd readable */
    GMutex lock;                /* protects q against bc_vblk_free() */
    struct vblk_queue *q;       /* NULL once orphaned */
    struct bc_loop *loop;
    int call_fd, death_fd;
    struct vblk_watch *next;    /* queue's watch list, then the orphan list */
};

struct vblk_queue {
    GMutex lock;                /* protects everything below */
    struct bc_vq vq;
    struct bc_vblk_slot *slots; /* one per descriptor, in device memory */
    uint64_t slots_addr;
    struct bc_task *wait_head, **wait_tail; /* dreqs waiting for descriptors (dreq->task) */
    struct vblk_watch *watches; /* loops watching call_fd */
    struct bc_drv_stats stats;  /* read/write data sent in place or copied */
    int call_fd;
    unsigned index;
    struct bc_vblk *b;
};

struct bc_vblk {
    char *what;
    uint64_t features;
    struct bc_props props;
    struct bc_vmem mem;
    struct bc_vmem extra[BC_BUF_MAX_REGIONS]; /* registered I/O buffer arenas */
    unsigned nextra;
    const struct bc_vblk_transport *ops;
    void *t;
    unsigned nq;
    struct vblk_queue *q;
    uint32_t seg_len;           /* bytes per data descriptor */
    uint32_t max_segs;          /* data descriptors per request */
    uint64_t max_discard;       /* bytes per DISCARD request */
    uint64_t max_zeroes;        /* bytes per WRITE_ZEROES request */
    int dead;                   /* atomic: device gone, everything fails */

    GMutex pool_lock;           /* protects pool_map: its bitmap and its waiters */
    uint8_t *pool;              /* the bounce pool, POOL_PAGE pages */
    struct bc_pagemap pool_map; /* waiters: vblk_rs.pool of dreqs waiting, FIFO */
};

enum { PH_IO, PH_DWZ };

/* Per-request driver state, in dreq->drv_scratch. */
struct vblk_rs {
    struct bc_vblk *b;
    union {
        uint64_t next;                  /* discard/zeroes: next byte to issue */
        struct bc_pagemap_wait pool;    /* read/write: bounce pages, or the wait for them */
    };
    int16_t res;
    uint8_t phase;
    bool bounced;               /* the data is in pool.first..: the iovecs are not in
                                   device memory */
};
G_STATIC_ASSERT(sizeof(struct vblk_rs) <= sizeof(((struct bc_dreq *)0)->drv_scratch));

static inline struct vblk_rs *rs_of(struct bc_dreq *d)
{
    return (struct vblk_rs *)d->drv_scratch;
}

static inline struct bc_dreq *dreq_of_task(struct bc_task *t)
{
    return bc_container_of(t, struct bc_dreq, task);
}

static inline struct bc_dreq *dreq_of_wait(struct bc_pagemap_wait *w)
{
    return bc_container_of(bc_container_of(w, struct vblk_rs, pool), struct bc_dreq,
                           drv_scratch);
}

/* The bounce buffer of a request that has one. */
static inline uint8_t *rs_bounce(const struct bc_vblk *b, const struct vblk_rs *rs)
{
    return b->pool + (size_t)rs->pool.first * POOL_PAGE;
}

static inline bool vblk_has(const struct bc_vblk *b, unsigned bit)
{
    return b->features & (1ull << bit);
}

#endif
