/* SPDX-License-Identifier: MIT */
/* Internals of the nbd driver shared by nbd.c (the driver interface: open, submit, close)
 * and nbd-conn.c (the connection threads: libnbd calls, reconnection). */
#ifndef LAYERFS_DRIVERS_NBD_INT_H
#define LAYERFS_DRIVERS_NBD_INT_H

#include <libnbd.h>

#include "drivers/drivers.h"
#include "drivers/util.h"

/*
 * Notes on the design
 *
 * Threads.  Each connection (struct bc_nbd_conn) has a thread of its own that owns its libnbd
 * handle: it issues the requests, watches the socket with poll(2) in the direction libnbd
 * asks for (nbd_aio_get_direction) and runs libnbd's completion callbacks.  submit() (any
 * I/O thread's loop) only queues the request on the connection and kicks its eventfd; the
 * result goes back to the request's own loop with bc_loop_wake().  Why not the I/O thread's
 * own loop: (1) reconnecting takes up to the retry window (connect, TLS and option
 * handshake, backoff between attempts), and an I/O thread serves every disk of the mount, so
 * it must never wait for one server; a connection thread may, and requests simply queue;
 * (2) requests also come from short-lived private loops (bc_sync in setup paths and tools,
 * and block_status is synchronous), while a libnbd handle needs one watcher that lives as
 * long as it does; (3) one thread per handle is the one place that knows what is in flight,
 * which is what resending after a reconnect needs.  The cost is one eventfd wakeup each way
 * per batch of requests, small next to a network round trip (bench/results-nbd.md).
 *
 * Locks.  bc_nbd_conn.lock protects the connection's queue of new requests and its stop flag,
 * nothing else; everything else of a connection belongs to its thread.  bc_nbd.lock
 * protects the flush bookkeeping (acked, flushed_upto, lost).  Counters are atomics.
 *
 * Multi-conn.  When the server says can_multi_conn, the driver opens `connections` of them
 * (default 4) and a loop always uses connection loop_index % n, so one loop's requests stay
 * in order; a flush on any connection then covers writes completed on all of them (the
 * multi-conn promise).  Otherwise there is one connection.
 *
 * Lost connections.  A connection is lost when libnbd's handle dies (the server went away,
 * a protocol error), when a request fails with ENOTCONN/ESHUTDOWN (the server is shutting
 * down), or when requests are in flight and the server has answered nothing for
 * retry-timeout seconds (at least one).  Requests in flight are then put back at the head
 * of the queue and sent again on a new connection (in any order: blockcore never has two
 * overlapping writes in flight, and a flush covers only writes completed before it);
 * attempts are made with a backoff (0.1 s doubling to 2 s) until retry-timeout seconds
 * after the loss, and only then does every waiting request fail with EIO.  After that, new
 * requests fail at once with EIO while attempts go on in the background, until one
 * succeeds.  What a reconnect cannot make safe is a write the server acknowledged but that
 * no flush has covered yet: a restarted server may have lost it.  So if a connection is
 * lost while such writes exist, the next flush fails with EIO once (the way a failed
 * writeback surfaces at fsync), instead of pretending they are durable.  block_status,
 * synchronous by the driver interface, waits like any request.
 */

#define NBD_MAX_CONNS 16
#define NBD_DEFAULT_CONNS 4
#define NBD_DEFAULT_RETRY_TIMEOUT 30
#define NBD_MAX_RETRY_TIMEOUT 3600
#define NBD_MAX_TRANSFER_CAP (4u << 20)
#define NBD_BACKOFF_MIN_MS 100
#define NBD_BACKOFF_MAX_MS 2000

struct bc_nbd;

enum bc_nbd_state {
    NBD_UP,         /* connected */
    NBD_RETRYING,   /* lost at lost_at; requests wait */
    NBD_FAILED,     /* the retry window ran out; requests fail, attempts go on */
};

struct bc_nbd_conn {
    struct bc_nbd *d;
    unsigned index;
    GThread *thread;
    int efd;                    /* eventfd: new requests or stop */

    GMutex lock;                /* protects queue and stop */
    struct bc_task *queue_head, **queue_tail;   /* dreq->task, FIFO */
    bool stop;

    /* Owned by the connection thread. */
    struct nbd_handle *h;       /* NULL while down */
    enum bc_nbd_state state;
    int64_t lost_at;            /* monotonic us: when the connection was lost */
    int64_t next_attempt;       /* monotonic us */
    unsigned backoff_ms;
    bool warned;                /* the server's change was logged since the loss */
    int64_t last_progress;      /* monotonic us: last reply or first request in flight */
    GQueue pending;             /* struct bc_dreq *: to issue, in order */
    GHashTable *inflight;       /* struct bc_nbd_cmd * set */
    GArray *done;               /* struct bc_nbd_done: completed by callbacks, to deliver */
};

struct bc_nbd {
    char *what;
    char *uri;
    int64_t retry_us;
    uint64_t size;
    uint32_t req_align;
    bool read_only;
    bool can_flush, can_fua, can_trim, can_zero, can_bs;
    unsigned nconns;
    struct bc_nbd_conn conns[NBD_MAX_CONNS];

    GMutex lock;                /* protects acked, flushed_upto, lost */
    uint64_t acked;             /* writes acknowledged (not FUA) */
    uint64_t flushed_upto;      /* acked as of the last successful flush's sending */
    bool lost;                  /* a connection was lost with unflushed acked writes */

    struct bc_drv_stats stats;  /* atomic fields */
};

/* One libnbd command, freed by libnbd (its .free callback) once it is retired. */
struct bc_nbd_cmd {
    struct bc_nbd_conn *c;
    struct bc_dreq *dreq;       /* NULL once taken back (resent or failed) */
    void *bounce;               /* contiguous copy of a multi-iovec request, or NULL */
};

struct bc_nbd_done {
    struct bc_dreq *dreq;
    int err;
};

/* Per-request state in dreq->drv_scratch: [0] flush: the acked count when sent;
 * [1] block status: struct bc_nbd_bs *; [2] result to deliver; [3] bc_drv_complete_later. */
struct bc_nbd_bs {
    GMutex lock;                /* protects finished */
    GCond cond;
    bool finished;
    uint64_t offset, len;       /* what the caller asked */
    uint64_t pnum;
    int res;
    struct bc_dreq dreq;        /* op BC_OP_READ with iov NULL marks a block-status query */
};

static inline void bc_nbd_add(uint64_t *field, uint64_t n)
{
    __atomic_add_fetch(field, n, __ATOMIC_RELAXED);
}

static inline int64_t bc_nbd_now(void)
{
    return g_get_monotonic_time();
}

/* Set up connection i of d (no handle, no thread yet). */
void bc_nbd_conn_init(struct bc_nbd *d, unsigned i);
/* A new connected handle for d, or NULL with the reason in *msg; waits until deadline. */
struct nbd_handle *bc_nbd_connect(struct bc_nbd *d, int64_t deadline, char **msg);
/* What differs that matters between d's first connection and h, malloc'd, or NULL. */
char *bc_nbd_changed(const struct bc_nbd *d, struct nbd_handle *h);
/* The connection thread's body (opaque = struct bc_nbd_conn *); returns when told to stop. */
gpointer bc_nbd_conn_thread(gpointer opaque);
/* Queue dreq on connection c and wake its thread; any thread. */
void bc_nbd_queue(struct bc_nbd_conn *c, struct bc_dreq *dreq);

#endif
