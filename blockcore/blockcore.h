/* SPDX-License-Identifier: MIT */
/* blockcore: the aligned I/O engine, the one header its users include.  The generic device
 * layer that turns any request into aligned driver I/O, bounce buffers and the registered
 * buffer arenas; the event loop (loop.h) and the driver interface (driver.h) come with it. */
#ifndef LAYERFS_BLOCKCORE_H
#define LAYERFS_BLOCKCORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <glib.h>

#include "blockcore/driver.h"
#include "blockcore/loop.h"

/*
 * Notes on the design
 *
 * Threads.  Every I/O thread owns one struct bc_loop, and every loop owns one io_uring.
 * A request is started on a loop and completes (its callback runs) on that same loop's
 * thread; the request itself (dev.c's struct bc_req) is touched only there and takes no
 * lock.  Devices (struct bc_dev) are shared by all loops and have no lock of their own:
 * the driver, its props and state pointer are fixed at open, and the serialization switch
 * (a test hook) is flipped only while no request is in flight.  What does change is
 * guarded piece by piece:
 *   - the device's write-blocker list: its own mutex (blocker.c), held
 *     only to queue, grant and drop blockers, never across a wakeup or a driver call;
 *   - bounce memory: one process-wide budget for all devices and its FIFO of waiters,
 *     under the bounce lock (bounce.c);
 *   - the device's statistics: relaxed atomic counters, so a snapshot is not taken at
 *     one instant (dev.c);
 *   - the buffer arenas behind bc_buf_alloc(): the pool lock, with a per-thread cache in
 *     front that needs none (bufpool.c);
 *   - the driver's own state: the driver's business, since submit() runs on every loop
 *     at once (drivers/ say how each guards it);
 *   - a loop's queue of posted tasks, the one part of a loop other threads touch: the
 *     loop's post lock (loop.c).
 * A request that must wait (for a blocker or for bounce memory) is parked on that shared
 * list and woken with bc_loop_wake(), which posts the continuation back to the request's
 * own loop.  No two of these locks are ever held together.
 *
 * One lock primitive and one atomics style, in blockcore and everywhere else in layerfs:
 * locks are GLib's GMutex (and GCond), a static one needing no initialisation; atomics
 * are GCC's __atomic builtins on plain fields with the memory order written out, and the
 * field's comment says it is atomic.
 *
 * Callbacks are never called from inside the function that started the request: an
 * error found at submission is delivered from the loop, and a full submission queue is
 * made room in without running any completion (loop.c).  Callers can therefore start
 * requests while holding their own state half-built.
 *
 * Alignment.  Drivers see only requests whose offset and length are multiples of
 * props.req_align and whose every iovec has a base aligned to props.mem_align and a
 * length that is a multiple of props.req_align (what O_DIRECT requires).  Lengths never
 * exceed props.max_transfer.  All the padding, bouncing, read-modify-write and splitting
 * is in blockcore/dev.c and nowhere else.
 *
 * End of device.  props.size need not be a multiple of req_align.  A driver request may
 * run past props.size up to the next req_align boundary: the driver returns zeros there
 * on read and must not change its size on write.  Reads past the end of the device
 * return zeros; writes past it fail with -ENOSPC unless the driver can grow.
 */

/* ---- the generic device layer ------------------------------------------------------ */

struct bc_dev;

/* Completion of a device request: res is 0 or -errno. */
typedef void bc_cb(void *opaque, int res);

/* Open a device with driver drv. Returns NULL with *errp set. */
struct bc_dev *bc_dev_open(const struct bc_driver *drv, const struct bc_open_args *args,
                           GError **errp);
/* Close; no requests may be in flight. */
void bc_dev_close(struct bc_dev *dev);
/* Properties as reported by the driver. */
const struct bc_props *bc_dev_props(const struct bc_dev *dev);
/* Size in bytes. */
uint64_t bc_dev_size(const struct bc_dev *dev);
/* The driver's state pointer (for bc_fault_set and tests). */
void *bc_dev_driver_state(struct bc_dev *dev);
/* Name of the driver. */
const char *bc_dev_driver_name(const struct bc_dev *dev);

/* Read into iov at any offset/length; zeros past the end. iov must live until cb. */
void bc_dev_readv(struct bc_dev *dev, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                  uint64_t offset, bc_cb *cb, void *opaque);
/* Write iov at any offset/length; flags: BC_REQ_FUA. */
void bc_dev_writev(struct bc_dev *dev, struct bc_loop *loop, const struct iovec *iov,
                   int iovcnt, uint64_t offset, unsigned flags, bc_cb *cb, void *opaque);
/* Make [offset, offset+len) read as zeros; flags: BC_REQ_MAY_UNMAP, BC_REQ_FUA. */
void bc_dev_write_zeroes(struct bc_dev *dev, struct bc_loop *loop, uint64_t offset,
                         uint64_t len, unsigned flags, bc_cb *cb, void *opaque);
/* Advisory discard of the discard-aligned part of the range. */
void bc_dev_discard(struct bc_dev *dev, struct bc_loop *loop, uint64_t offset, uint64_t len,
                    bc_cb *cb, void *opaque);
/* Make all completed writes durable. */
void bc_dev_flush(struct bc_dev *dev, struct bc_loop *loop, bc_cb *cb, void *opaque);
/* Data (1) or hole (0) at offset, *pnum bytes of it; past the end: hole to infinity. */
int bc_dev_block_status(struct bc_dev *dev, uint64_t offset, uint64_t len, uint64_t *pnum);

/* Counters for tests and the daemon's statistics. */
struct bc_dev_stats {
    uint64_t driver_inflight;       /* driver requests in flight now */
    uint64_t driver_inflight_max;   /* most driver requests ever in flight at once */
    uint64_t driver_writes_max;     /* most driver WRITE requests in flight at once */
    uint64_t rmw;                   /* writes that needed read-modify-write */
    uint64_t bounced;               /* requests that used bounce buffers */
    uint64_t blocker_waits;         /* times a write waited for a blocker */
};
/* Snapshot the counters. */
void bc_dev_get_stats(struct bc_dev *dev, struct bc_dev_stats *st);
/* The driver's non-zero figures as "name value, ..." (g_free), or NULL if it keeps none. */
char *bc_dev_drv_stats_text(struct bc_dev *dev);

/* ---- range blockers (blocker.c) --------------------------------------------------- */

/*
 * A range lock that grants in arrival order.  Two blockers conflict when their ranges
 * [start, end) intersect and at least one is strong; one is granted when no blocker that
 * arrived earlier (granted or still waiting) conflicts with it, so nothing overtakes an
 * earlier conflicting request and strong waiters cannot starve.  In dev.c every write-like
 * request holds one over the bytes it writes (weak for aligned writes, strong for
 * read-modify-write); the sparse layer (layers/sparse.c) locks the blocks an operation
 * touches with strong ones; the read cache's evictions (layers/cache.c) take theirs with
 * bc_blocker_try_acquire, so that a batch never holds some locks while waiting for others.
 */
struct bc_blocker {
    uint64_t start, end;
    bool strong;
    bool granted;
    struct bc_blocker *prev, *next;
    struct bc_loop *loop;
    struct bc_task task;        /* task.fn runs on loop when a waiting blocker is granted */
};

struct bc_blocker_list {
    GMutex lock;       /* protects the list and every member's granted flag */
    struct bc_blocker *head, *tail;
};

/* Set up an empty list. */
void bc_blockers_init(struct bc_blocker_list *l);
/* Tear down a list; no blocker may be on it. */
void bc_blockers_destroy(struct bc_blocker_list *l);
/* Enqueue b; true if granted now, else b->task.fn runs on loop once granted. */
bool bc_blocker_acquire(struct bc_blocker_list *l, struct bc_blocker *b, struct bc_loop *loop);
/* Grant b now if nothing granted or waiting conflicts: true; else false, b not queued. */
bool bc_blocker_try_acquire(struct bc_blocker_list *l, struct bc_blocker *b);
/* Drop a granted blocker and grant the waiters it was holding back. */
void bc_blocker_release(struct bc_blocker_list *l, struct bc_blocker *b);

/* ---- bounce buffers ---------------------------------------------------------------- */

#define BC_BOUNCE_DEFAULT_BUDGET (64u << 20)

/* Set the process-wide bounce budget in bytes (at least 64 KiB); call before any I/O. */
void bc_bounce_set_budget(size_t bytes);
/* The budget in bytes. */
size_t bc_bounce_budget(void);
/* Bytes in use now and the peak since the last reset. */
void bc_bounce_usage(size_t *in_use, size_t *peak);
/* Reset the peak to the current use. */
void bc_bounce_reset_peak(void);

/* Page-aligned allocation for I/O buffers outside the budget (e.g. FUSE buffers);
 * aborts on out-of-memory like g_malloc.  Thread-safe; the memory comes from the
 * registered arenas below while they have room, else from the heap. */
void *bc_buf_alloc(size_t len);
/* Free a bc_buf_alloc() buffer (from any thread); NULL is ignored. */
void bc_buf_free(void *buf);

/* ---- registered I/O buffer arenas (bufpool.c) -------------------------------------- */

/* bc_buf_alloc() memory (bounce buffers, FUSE buffers) comes from a few large memfd-backed
 * MAP_SHARED arenas.  A driver whose device can only reach registered memory (the virtio-blk
 * drivers: vhost-user memory regions, VFIO DMA mappings) registers every arena when it
 * opens, and then takes buffers that lie in one without a copy.  The set of arenas is fixed
 * the first time bc_buf_alloc() or bc_buf_regions() runs, so drivers see them all. */
#define BC_BUF_POOL_DEFAULT_SIZE ((size_t)128 << 20)
#define BC_BUF_MAX_REGIONS 4

struct bc_buf_region {
    void *base;             /* page-aligned, MAP_SHARED */
    size_t len;             /* a multiple of 2 MiB */
    int fd;                 /* the memfd behind it (offset 0 = base); owned by blockcore */
};

/* Set the arenas' total size in bytes (0: none, every buffer is ordinary memory); only
 * before they exist (false after).  Default: $LAYERFS_BUF_POOL if set, else
 * BC_BUF_POOL_DEFAULT_SIZE.  VFIO pins all of it for every device it maps. */
bool bc_buf_pool_set_size(size_t bytes);
/* The arenas (created now if need be): up to max of them into out; returns how many. */
unsigned bc_buf_regions(struct bc_buf_region *out, unsigned max);

struct bc_buf_pool_stats {
    size_t total;           /* bytes of arenas */
    size_t in_use;          /* bytes handed out or cached by threads */
    size_t peak;            /* most in_use ever */
    uint64_t fallbacks;     /* bc_buf_alloc() calls served from the heap */
};
/* Snapshot the counters. */
void bc_buf_pool_stats(struct bc_buf_pool_stats *st);

/* ---- small helpers ----------------------------------------------------------------- */

/* Total length of an iovec array. */
uint64_t bc_iov_len(const struct iovec *iov, int iovcnt);
/* Point out[] at bytes [skip, skip+len) of iov: returns the count, -EINVAL if iov is shorter,
 * -E2BIG past out_max entries (with took: stops there instead; *took = bytes sliced). */
int bc_iov_slice(const struct iovec *iov, int iovcnt, uint64_t skip, uint64_t len,
                 struct iovec *out, int out_max, uint64_t *took);
/* Copy len bytes from iov starting at byte skip into buf. */
void bc_iov_to_buf(const struct iovec *iov, int iovcnt, uint64_t skip, void *buf, size_t len);
/* Copy len bytes from buf into iov starting at byte skip. */
void bc_iov_from_buf(const struct iovec *iov, int iovcnt, uint64_t skip, const void *buf,
                     size_t len);
/* Zero len bytes of iov starting at byte skip. */
void bc_iov_memset(const struct iovec *iov, int iovcnt, uint64_t skip, int c, size_t len);
/* Parse "4096", "64K", "1M", "2G", "1T" (binary units); false on junk or overflow. */
bool bc_parse_size(const char *s, uint64_t *out);

/* The GError domain for blockcore setup errors. */
#define BC_ERROR bc_error_quark()
GQuark bc_error_quark(void);

#endif
