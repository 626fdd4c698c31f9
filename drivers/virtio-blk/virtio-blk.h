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
 * Setup.  A transport connects to the device its own way (a vhost-user socket, a PCI
 * function through VFIO) and reads the features it offers; bc_vblk_setup() does the rest,
 * the same for both: it chooses the features, reads the config, chooses the number and
 * size of queues, derives the properties, creates the core and sets up every queue, calling
 * the transport (struct bc_vblk_setup_ops) for each step that touches the device.  The
 * core is stored for the transport as soon as it exists, so that on a later failure the
 * transport tears everything down in its own order (vfio-pci resets the device first).
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

/* Queues used when the num-queues option does not say (and the device has as many). */
#define BC_VBLK_DEFAULT_QUEUES 16u

struct bc_vblk;

struct bc_vblk_transport {
    /* Notify the device that queue qi has new requests; any thread. */
    void (*kick)(void *t, unsigned qi);
    /* An fd that becomes readable when the device is gone (-1: none), and the check run
     * then: false = gone.  May consume what is readable. */
    int death_fd;
    bool (*alive)(void *t);
};

/* Negotiating with a device: what the transport knows going in, and what was chosen. */
struct bc_vblk_setup {
    const char *what;               /* for messages */
    uint64_t dev_features;          /* offered by the device */
    uint64_t extra_features;        /* transport bits kept besides BC_VBLK_WANTED_FEATURES */
    unsigned dev_queues;            /* queues the transport says the device has */
    int64_t want_queues;            /* the num-queues option; 0: choose */
    unsigned queue_size;            /* the queue-size option; lowered to what queues take */
    bool read_only;                 /* opened read-only */
    const int *call_fds;            /* per queue, non-blocking eventfds; filled by alloc */
    const struct bc_vblk_transport *io; /* the I/O-time ops; filled by alloc at the latest */
    /* Chosen by bc_vblk_setup(): */
    uint64_t features;
    unsigned num_queues;
    struct bc_vblk_config cfg;
};

/* A transport's steps of bc_vblk_setup(), in the order they run; each gets the transport
 * state t and returns false with *errp set on failure.  NULL steps are skipped. */
struct bc_vblk_setup_ops {
    /* Tell the device the negotiated features (or leave it to attach). */
    bool (*set_features)(void *t, uint64_t features, GError **errp);
    /* Read the first BC_VBLK_CONFIG_BYTES of config space (little-endian) into raw. */
    bool (*read_config)(void *t, uint8_t *raw, GError **errp);
    /* Lower *queues to what the transport can drive; fail if want (if set) exceeds it. */
    bool (*limit_queues)(void *t, int64_t want, unsigned *queues, GError **errp);
    /* The largest size queue qi takes; 0: any. */
    unsigned (*queue_max)(void *t, unsigned qi);
    /* Device-visible memory of at least len bytes for num_queues queues into *mem, and the
     * eventfds s->call_fds points to. */
    bool (*alloc)(void *t, unsigned num_queues, size_t len, struct bc_vmem *mem,
                  GError **errp);
    /* The core exists: register the I/O buffer arenas (bc_vblk_add_mem()) and such. */
    bool (*attach)(void *t, struct bc_vblk *b, uint64_t features, GError **errp);
    /* Give the device queue qi: its size and the device addresses of its rings. */
    bool (*set_queue)(void *t, unsigned qi, unsigned size, uint64_t desc, uint64_t avail,
                      uint64_t used, GError **errp);
};

/* Derive properties from features and config as libblkio does; false with *errp on junk. */
bool bc_vblk_props(const char *what, uint64_t features, const struct bc_vblk_config *cfg,
                   unsigned queue_size, struct bc_props *props, GError **errp);
/* Negotiate, create the core in *blkp and set up its queues via ops; false with *errp. */
bool bc_vblk_setup(struct bc_vblk_setup *s, const struct bc_vblk_setup_ops *ops, void *t,
                   struct bc_props *props, struct bc_vblk **blkp, GError **errp);
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
