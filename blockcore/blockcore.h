/* SPDX-License-Identifier: MIT */
/* blockcore: the aligned I/O engine.  Event loops (one io_uring per thread), the driver
 * interface, and the generic device layer that turns any request into aligned driver I/O. */
#ifndef LAYERFS_BLOCKCORE_H
#define LAYERFS_BLOCKCORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <glib.h>

/*
 * Notes on the design
 *
 * Threads.  Every I/O thread owns one struct bc_loop, and every loop owns one io_uring.
 * A request is started on a loop and completes (its callback runs) on that same loop's
 * thread.  Devices (struct bc_dev) are shared by all loops; the only shared mutable state
 * in a device is its write-blocker list, its bounce accounting and its statistics, each
 * guarded by the device mutex.  A request that must wait (for a blocker or for bounce
 * memory) is parked on the shared list and woken with bc_loop_wake(), which posts the
 * continuation back to the request's own loop.
 *
 * Callbacks are never called from inside the function that started the request: an
 * error found at submission is delivered from the loop.  Callers can therefore start
 * requests while holding their own state half-built.
 *
 * Alignment.  Drivers see only requests whose offset and length are multiples of
 * props.req_align and whose every iovec has a base aligned to props.mem_align and a
 * length that is a multiple of props.req_align (what O_DIRECT requires).  Lengths never
 * exceed props.max_transfer.  All the padding, bouncing, read-modify-write and splitting
 * is in blockcore/dev*.c and nowhere else.
 *
 * End of device.  props.size need not be a multiple of req_align.  A driver request may
 * run past props.size up to the next req_align boundary: the driver returns zeros there
 * on read and must not change its size on write.  Reads past the end of the device
 * return zeros; writes past it fail with -ENOSPC unless the driver can grow.
 */

/* ---- event loop ---------------------------------------------------------------------- */

struct bc_loop;
struct io_uring;
struct io_uring_sqe;

/* A completion target for an io_uring operation; the SQE's user_data points at it. */
struct bc_uop {
    void (*done)(struct bc_uop *uop, int res, unsigned cqe_flags);
};

/* A deferred call, intrusive so that queueing never allocates. */
struct bc_task {
    struct bc_task *next;
    void (*fn)(struct bc_task *task);
};

/* Create a loop for the calling thread; index is a small id drivers may use per queue. */
struct bc_loop *bc_loop_new(unsigned index, unsigned ring_entries, GError **errp);
/* Free a loop; no requests may be in flight. */
void bc_loop_free(struct bc_loop *loop);
/* The loop of the calling thread, or NULL. */
struct bc_loop *bc_loop_current(void);
/* The loop's small index. */
unsigned bc_loop_index(const struct bc_loop *loop);
/* The loop's ring, for drivers. */
struct io_uring *bc_loop_ring(struct bc_loop *loop);
/* A fresh SQE with user_data set to uop; submits to make room when the SQ is full. */
struct io_uring_sqe *bc_loop_sqe(struct bc_loop *loop, struct bc_uop *uop);
/* Run task on this loop's next iteration; caller must be on loop's thread. */
void bc_loop_defer(struct bc_loop *loop, struct bc_task *task);
/* Run task on loop's thread; safe from any thread. */
void bc_loop_post(struct bc_loop *loop, struct bc_task *task);
/* bc_loop_defer() when called on loop's thread, else bc_loop_post(). */
void bc_loop_wake(struct bc_loop *loop, struct bc_task *task);
/* Watch fd for POLLIN (multishot) and call uop->done(uop, revents, flags) on readiness. */
void bc_loop_watch_fd(struct bc_loop *loop, struct bc_uop *uop, int fd);
/* One iteration: submit, wait for an event if block and no task is queued, reap, then run
 * queued tasks; so a caller may loop "while (!done) bc_loop_run_once(loop, true)". 0/-errno. */
int bc_loop_run_once(struct bc_loop *loop, bool block);
/* Iterate until bc_loop_stop(); returns 0 or -errno. */
int bc_loop_run(struct bc_loop *loop);
/* Make bc_loop_run() return; safe from any thread and from signal handlers. */
void bc_loop_stop(struct bc_loop *loop);
/* True once bc_loop_stop() was called. */
bool bc_loop_stopping(const struct bc_loop *loop);

/* ---- driver interface -------------------------------------------------------------- */

enum bc_op {
    BC_OP_READ,
    BC_OP_WRITE,
    BC_OP_FLUSH,
    BC_OP_WRITE_ZEROES,
    BC_OP_DISCARD,
};

enum {
    BC_REQ_FUA = 1u << 0,       /* write: durable when it completes */
    BC_REQ_MAY_UNMAP = 1u << 1, /* write-zeroes: may deallocate the range */
};

/* What a driver reports at open; the generic layer derives everything from this. */
struct bc_props {
    uint64_t size;          /* bytes */
    uint32_t req_align;     /* power of two: offset and length granularity */
    uint32_t mem_align;     /* power of two: iovec base alignment */
    uint32_t max_transfer;  /* bytes per driver request, multiple of req_align */
    uint32_t discard_align; /* power of two; 0 = no discard */
    uint32_t zero_align;    /* power of two; 0 = no efficient write-zeroes */
    bool fua_native;        /* driver honours BC_REQ_FUA itself */
    bool read_only;
    bool can_grow;          /* writes past the end grow the device */
};

/* One aligned request as a driver sees it. */
struct bc_dreq {
    struct bc_loop *loop;   /* the loop to complete on */
    enum bc_op op;
    unsigned flags;         /* BC_REQ_* */
    uint64_t offset;
    uint64_t len;           /* 0 for flush */
    struct iovec *iov;      /* read/write only */
    int iovcnt;
    /* Called exactly once, on loop, never from inside submit(): res is 0 or -errno. */
    void (*done)(struct bc_dreq *dreq, int res);
    struct bc_uop uop;      /* free for the driver's use */
    struct bc_task task;    /* free for the driver's use */
    uint64_t drv_scratch[4];/* free for the driver's use */
};

/* How a device is opened: the parsed layer configuration. */
struct bc_open_args {
    const char *what;       /* for messages, e.g. "layer base" */
    const char *path;       /* may be NULL for drivers that need none */
    bool read_only;
    bool direct;            /* O_DIRECT where the driver has a choice */
    GHashTable *opts;       /* char* -> char*: driver-specific keys, may be NULL */
};

/* Data-path counters a driver may keep (the virtio-blk drivers do). */
struct bc_drv_stats {
    uint64_t zero_copy_reqs;    /* read/write requests the device served in the caller's memory */
    uint64_t zero_copy_bytes;
    uint64_t copied_reqs;       /* ... that were copied through the driver's own memory */
    uint64_t copied_bytes;
};

struct bc_driver {
    const char *name;
    /* Driver-specific configuration keys, NULL-terminated; NULL for none. */
    const char *const *keys;
    /* Open; fill *props. Returns driver state or NULL with *errp set. */
    void *(*open)(const struct bc_open_args *args, struct bc_props *props, GError **errp);
    /* Close; no requests are in flight. */
    void (*close)(void *state);
    /* Start an aligned request. */
    void (*submit)(void *state, struct bc_dreq *dreq);
    /* Optional: is [offset, offset+len) data (1) or a hole reading as zeros (0)?
     * *pnum = bytes from offset with that status. Synchronous; <0 = -errno. */
    int (*block_status)(void *state, uint64_t offset, uint64_t len, uint64_t *pnum);
    /* Optional: snapshot the driver's data-path counters (any thread). */
    void (*get_stats)(void *state, struct bc_drv_stats *st);
};

extern const struct bc_driver bc_drv_file;
extern const struct bc_driver bc_drv_null;
extern const struct bc_driver bc_drv_ram;
extern const struct bc_driver bc_drv_fault;
extern const struct bc_driver bc_drv_virtio_blk_vhost_user;
extern const struct bc_driver bc_drv_virtio_blk_vfio_pci;

/* Find a driver by name in the one driver table, or NULL. */
const struct bc_driver *bc_driver_find(const char *name);
/* Space-separated list of driver names, for messages. */
const char *bc_driver_names(void);

/* Runtime fault injection for the test-only fault driver: fail ops of kind op (READ or
 * WRITE) that touch [offset, offset+len) with -err, once armed; after_n: fail every
 * request of that kind after the first after_n (-1 = off). */
void bc_fault_set(void *fault_state, enum bc_op op, uint64_t offset, uint64_t len, int err,
                  int64_t after_n);
/* Clear all fault rules. */
void bc_fault_clear(void *fault_state);

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
/* Test hook: turn write serialization off to show that the tests catch its absence. */
void bc_dev_set_serialize(struct bc_dev *dev, bool on);

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
