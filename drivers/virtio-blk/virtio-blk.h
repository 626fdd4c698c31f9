/* SPDX-License-Identifier: MIT */
/* The transport-independent core of the userspace virtio-blk drivers: what a transport
 * (vhost-user.c, vfio-pci.c) calls to run a virtio-blk device it has connected. */
#ifndef LAYERFS_VIRTIO_BLK_H
#define LAYERFS_VIRTIO_BLK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blockcore/blockcore.h"
#include "drivers/virtio-blk/virtio-blk-req.h"
#include "drivers/virtio-blk/virtqueue.h"

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
 * a bounce buffer from the pool.  The pool is a page map (blockcore/pagemap.h) under a
 * mutex; when it is exhausted, requests queue FIFO and the request that frees memory hands
 * it to the waiters in order, so memory is bounded and large requests cannot starve.
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
