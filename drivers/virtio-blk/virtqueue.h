/* SPDX-License-Identifier: MIT */
/* Split virtqueues, driver side, in device-visible memory: the descriptor table and the
 * avail and used rings (with EVENT_IDX), and the regions device addresses point into. */
#ifndef LAYERFS_VIRTQUEUE_H
#define LAYERFS_VIRTQUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

#endif
