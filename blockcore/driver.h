/* SPDX-License-Identifier: MIT */
/* The driver interface: what a backend driver (drivers/) implements and what the engine
 * promises it.  The drivers are listed once, in drivers/drivers.h (BC_DRIVER_LIST). */
#ifndef LAYERFS_BLOCKCORE_DRIVER_H
#define LAYERFS_BLOCKCORE_DRIVER_H

#include <sys/uio.h>

#include "blockcore/loop.h"

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
    /* block_status is a round trip to a server that may be slow or gone: not for a walk
     * of the whole device from a request path (layers then take such a device as data). */
    bool remote;
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

/* A lock on what a driver opens, so that one writer (or any number of readers) holds an
 * image across processes and devices. */
enum bc_lock {
    BC_LOCK_NONE,
    BC_LOCK_SHARED,
    BC_LOCK_EXCLUSIVE,
};

/* How a device is opened: the parsed layer configuration. */
struct bc_open_args {
    const char *what;       /* for messages, e.g. "layer base" */
    const char *path;       /* may be NULL for drivers that need none */
    bool read_only;
    bool direct;            /* O_DIRECT where the driver has a choice */
    /* Drivers over a file lock the very file they opened (flock, non-blocking) and fail the
     * open with error code EWOULDBLOCK when another holder conflicts; drivers whose device
     * admits one user by nature (virtio-blk) have nothing more to lock. */
    enum bc_lock lock;
    GHashTable *opts;       /* char* -> char*: driver-specific keys, may be NULL */
};

/* Data-path counters a driver may keep (the virtio-blk and nbd drivers do); a driver
 * leaves the ones that do not apply to it at zero. */
struct bc_drv_stats {
    uint64_t zero_copy_reqs;    /* read/write requests the device served in the caller's memory */
    uint64_t zero_copy_bytes;
    uint64_t copied_reqs;       /* ... that were copied through the driver's own memory */
    uint64_t copied_bytes;
    uint64_t remote_reqs;       /* requests a remote server answered successfully */
    uint64_t remote_read_bytes; /* bytes read from a remote server */
    uint64_t remote_write_bytes;/* bytes written to a remote server */
    uint64_t reconnects;        /* connections to a remote server re-established */
    uint64_t errors;            /* requests that failed */
};

struct bc_driver {
    const char *name;
    /* Driver-specific configuration keys, NULL-terminated; NULL for none. */
    const char *const *keys;
    /* The configuration must give a path (checked when it is parsed). */
    bool needs_path;
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

/* Find a driver by name in the one driver table, or NULL. */
const struct bc_driver *bc_driver_find(const char *name);
/* Space-separated list of driver names, for messages. */
const char *bc_driver_names(void);

#endif
