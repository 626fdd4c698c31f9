/* SPDX-License-Identifier: MIT */
/* Split virtqueues, virtio-blk request building, and the transport-independent core of the
 * userspace virtio-blk drivers (vhost-user.c, vfio-pci.c), all in device-visible memory. */
#ifndef LAYERFS_VIRTQUEUE_H
#define LAYERFS_VIRTQUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blockcore/blockcore.h"

/*
 * Notes on the design
 *
 * Memory.  A transport hands the core one device-visible region (struct bc_vmem): a memfd
 * shared with a vhost-user back end, or memory DMA-mapped through VFIO.  The core carves it
 * into the rings of every queue, one request-header slot per descriptor (header, discard
 * segment and status byte of the request whose chain starts at that descriptor), and a bounce
 * pool.  Device addresses are base-relative: dev_addr = dev_base + (p - base).
 *
 * Data.  Callers' iovecs point anywhere in the process, which the device cannot see.  The
 * transport also registers blockcore's I/O buffer arenas (bc_buf_regions(): where
 * bc_buf_alloc() memory, so FUSE buffers and blockcore's bounce buffers, comes from) and
 * tells the core with bc_vblk_add_mem().  An iovec array whose every iovec lies inside the
 * region or one registered arena goes to the device as is; anything else is copied through
 * a bounce buffer from the pool.  The pool is a page bitmap under a mutex;
 * when it is exhausted, requests queue FIFO and the request that frees memory hands it to the
 * waiters in order, so memory is bounded and large requests cannot starve.
 *
 * Queues and threads.  A loop uses queue bc_loop_index(loop) % num_queues.  Each queue has a
 * mutex (loops may share a queue) guarding its ring, its slots, its list of requests waiting
 * for descriptors and its list of watching loops.  Every loop that submits to a queue watches
 * the queue's call eventfd (set up lazily on the first request from that loop); whichever
 * loop wakes reaps the used ring and hands each completion to the loop it belongs to
 * (directly if that is the current loop, else with bc_loop_post()).  No extra threads.
 *
 * Death.  When the transport reports the device gone (vhost-user socket closed) or the device
 * misbehaves (used id out of range), the core fails every request in flight or waiting with
 * -EIO and every later one too.  The daemon survives.
 */

/* ---- device-visible memory --------------------------------------------------------- */

struct bc_vmem {
    uint8_t *base;      /* process address */
    size_t len;
    uint64_t dev_base;  /* device address of base: guest-physical (vhost-user) or IOVA */
};

/* Device address of p, which must lie inside m. */
static inline uint64_t bc_vmem_addr(const struct bc_vmem *m, const void *p)
{
    return m->dev_base + (uint64_t)((const uint8_t *)p - m->base);
}

/* True if [p, p+len) lies inside m. */
static inline bool bc_vmem_contains(const struct bc_vmem *m, const void *p, size_t len)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)m->base;
    return a >= b && len <= m->len && a - b <= m->len - len;
}

/* ---- split virtqueue --------------------------------------------------------------- */

struct bc_vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct bc_vring_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[];    /* num entries, then used_event */
};

struct bc_vring_used_elem {
    uint32_t id;
    uint32_t len;
};

struct bc_vring_used {
    uint16_t flags;
    uint16_t idx;
    struct bc_vring_used_elem ring[]; /* num entries, then avail_event */
};

/* One buffer of a descriptor chain. */
struct bc_vbuf {
    uint64_t addr;      /* device address */
    uint32_t len;
};

/* A driver-side split virtqueue.  Not thread-safe: the owner locks. */
struct bc_vq {
    uint16_t num;           /* power of two */
    bool event_idx;         /* VIRTIO_RING_F_EVENT_IDX negotiated */
    bool broken;            /* the device returned garbage */
    struct bc_vring_desc *desc;
    struct bc_vring_avail *avail;
    struct bc_vring_used *used;
    uint64_t desc_addr, avail_addr, used_addr; /* device addresses */
    uint16_t free_head;     /* first free descriptor */
    uint16_t num_free;
    uint16_t avail_idx;     /* our shadow of avail->idx */
    uint16_t kicked_idx;    /* avail_idx at the last notification decision */
    uint16_t last_used;     /* next used entry to reap */
    /* Private shadows (never trust device-visible memory for our bookkeeping). */
    uint16_t *next;         /* free list / chain links */
    uint16_t *chain_len;    /* descriptors in the chain headed here; 0 = not in flight */
    void **cookie;          /* per chain head */
};

/* Bytes of device memory for a queue of num entries (desc, avail, used; 4 KiB aligned). */
size_t bc_vq_ring_bytes(unsigned num);
/* Lay out and zero the rings at mem (device address dev_addr); num a power of two. */
void bc_vq_init(struct bc_vq *vq, unsigned num, void *mem, uint64_t dev_addr, bool event_idx);
/* Free the private shadows. */
void bc_vq_destroy(struct bc_vq *vq);
/* Add a chain: n_out device-readable then n_in device-writable buffers.  Returns the head
 * id, or -ENOSPC if there are not enough free descriptors. */
int bc_vq_add(struct bc_vq *vq, const struct bc_vbuf *bufs, unsigned n_out, unsigned n_in,
              void *cookie);
/* The head id the next bc_vq_add() will use; -ENOSPC if the queue is full. */
int bc_vq_peek_head(const struct bc_vq *vq);
/* After adds: true if the device must be notified (VRING_USED_F_NO_NOTIFY / EVENT_IDX). */
bool bc_vq_kick_prepare(struct bc_vq *vq);
/* Reap one used chain: its cookie (NULL if none is ready), head id and written length.
 * Marks the queue broken on a bad id. */
void *bc_vq_get_used(struct bc_vq *vq, uint16_t *head, uint32_t *len);
/* Ask for a notification at the next completion; true if completions arrived meanwhile. */
bool bc_vq_enable_cb(struct bc_vq *vq);
/* The cookie of chain head i if it is in flight, else NULL (for failing everything). */
void *bc_vq_inflight(const struct bc_vq *vq, uint16_t i);

/* ---- virtio-blk requests ----------------------------------------------------------- */

/* The virtio-blk config fields we use, host-endian. */
struct bc_vblk_config {
    uint64_t capacity;              /* 512-byte sectors */
    uint32_t size_max, seg_max, blk_size;
    uint8_t physical_block_exp;
    uint16_t num_queues;
    uint32_t max_discard_sectors, max_discard_seg, discard_sector_alignment;
    uint32_t max_write_zeroes_sectors, max_write_zeroes_seg;
};

/* Bytes of the device's config space we read (up to write_zeroes_may_unmap). */
#define BC_VBLK_CONFIG_BYTES 60u
/* Decode little-endian config space (BC_VBLK_CONFIG_BYTES long). */
void bc_vblk_config_parse(const uint8_t *raw, size_t len, struct bc_vblk_config *cfg);

/* Header, discard/write-zeroes segment and status of one request; one per descriptor. */
struct bc_vblk_slot {
    uint32_t type;      /* le: VIRTIO_BLK_T_* */
    uint32_t ioprio;
    uint64_t sector;    /* le */
    uint64_t dwz_sector;
    uint32_t dwz_num;
    uint32_t dwz_flags;
    uint8_t status;
    uint8_t pad[7];
};

/* Queue a virtio-blk request: type VIRTIO_BLK_T_*, data buffers (IN/OUT), or the range and
 * flags for DISCARD/WRITE_ZEROES.  Returns 0 or -ENOSPC (not enough descriptors). */
int bc_vblk_add(struct bc_vq *vq, struct bc_vblk_slot *slots, uint64_t slots_addr,
                uint32_t type, uint64_t sector, const struct bc_vbuf *data, unsigned ndata,
                uint32_t dwz_num, uint32_t dwz_flags, void *cookie);
/* The result of a completed request from its status byte: 0, -EIO or -ENOTSUP. */
int bc_vblk_status(const struct bc_vblk_slot *slots, uint16_t head);

/* ---- the virtio-blk driver core shared by the transports --------------------------- */

/* Features the core understands and asks for (device-specific and ring bits). */
#define BC_VBLK_WANTED_FEATURES                                                        \
    ((1ull << 1) | (1ull << 2) | (1ull << 5) | (1ull << 6) | (1ull << 9) | (1ull << 10) | \
     (1ull << 12) | (1ull << 13) | (1ull << 14) | (1ull << 29) | (1ull << 32))

struct bc_vblk;

struct bc_vblk_transport {
    /* Notify the device that queue qi has new requests; any thread. */
    void (*kick)(void *t, unsigned qi);
    /* An fd that becomes readable when the device is gone (-1: none), and the check run
     * then: false = gone.  May consume what is readable. */
    int death_fd;
    bool (*alive)(void *t);
};

struct bc_vblk_args {
    const char *what;               /* for messages */
    uint64_t features;              /* negotiated */
    const struct bc_vblk_config *cfg;
    unsigned num_queues, queue_size;
    struct bc_vmem mem;             /* at least bc_vblk_mem_bytes() */
    const int *call_fds;            /* per queue, non-blocking eventfds */
    bool read_only;                 /* opened read-only */
    const struct bc_vblk_transport *ops;
    void *t;                        /* transport state for ops */
};

/* The bounce pool size for a device with this max transfer. */
size_t bc_vblk_pool_bytes(uint32_t max_transfer);
/* Derive properties from features and config as libblkio does; false with *errp on junk. */
bool bc_vblk_props(const char *what, uint64_t features, const struct bc_vblk_config *cfg,
                   unsigned queue_size, struct bc_props *props, GError **errp);
/* Bytes of device memory the core needs. */
size_t bc_vblk_mem_bytes(unsigned num_queues, unsigned queue_size, const struct bc_props *p);
/* Create the core over initialised device memory. NULL with *errp on failure. */
struct bc_vblk *bc_vblk_new(const struct bc_vblk_args *args, const struct bc_props *props,
                            GError **errp);
/* Device addresses of queue qi's rings, for the transport's queue setup. */
void bc_vblk_ring_addrs(struct bc_vblk *b, unsigned qi, uint64_t *desc, uint64_t *avail,
                        uint64_t *used);
/* Another device-visible region (a registered bc_buf_regions() arena): iovecs inside it
 * go to the device without a copy.  Only before the first request; at most
 * BC_BUF_MAX_REGIONS. */
void bc_vblk_add_mem(struct bc_vblk *b, const struct bc_vmem *m);
/* Start a request (the bc_driver submit). */
void bc_vblk_submit(struct bc_vblk *b, struct bc_dreq *dreq);
/* Data moved so far (the bc_driver get_stats). */
void bc_vblk_stats(struct bc_vblk *b, struct bc_drv_stats *st);
/* The device is gone: fail everything in flight and all later requests with -EIO. */
void bc_vblk_kill(struct bc_vblk *b);
/* Free; no requests in flight.  Watches still armed in loops are orphaned, not freed. */
void bc_vblk_free(struct bc_vblk *b);

#endif
