/* SPDX-License-Identifier: MIT */
/* blockcore's event loop: one io_uring per I/O thread, deferred and cross-thread tasks, fd
 * watches.  Included by blockcore.h; drivers use it to complete requests on their loop. */
#ifndef LAYERFS_BLOCKCORE_LOOP_H
#define LAYERFS_BLOCKCORE_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>

/* The struct of type whose member is at ptr: the one way to get from an intrusive member
 * (a bc_task, a bc_uop, a bc_dreq...) back to the request that embeds it. */
#define bc_container_of(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

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
/* A fresh SQE with user_data set to uop; submits to make room, never runs a callback. */
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
 * queued tasks (so no callback of this iteration is missed by a caller's check after it);
 * 0/-errno.  To wait for requests, use bc_loop_wait() or bc_sync rather than a loop of it. */
int bc_loop_run_once(struct bc_loop *loop, bool block);
/* Run loop until *pending is 0 (callbacks running on loop decrement it): 0, or -errno if
 * an iteration failed.  The one way to wait for requests synchronously. */
int bc_loop_wait(struct bc_loop *loop, const unsigned *pending);
/* Iterate until bc_loop_stop(); returns 0 or -errno. */
int bc_loop_run(struct bc_loop *loop);
/* Make bc_loop_run() return; safe from any thread and from signal handlers. */
void bc_loop_stop(struct bc_loop *loop);
/* True once bc_loop_stop() was called. */
bool bc_loop_stopping(const struct bc_loop *loop);

/* Running one request at a time synchronously, for setup paths, tools and tests:
 *     bc_sync_begin(&s, NULL, errp);  start(..., s.loop, bc_sync_cb, &s);
 *     r = bc_sync_wait(&s);  ...  bc_sync_end(&s); */
struct bc_sync {
    struct bc_loop *loop;   /* the loop to start requests on */
    struct bc_loop *own;    /* a private loop made by bc_sync_begin, or NULL */
    unsigned pending;       /* 1 until the request started completes */
    int res;                /* its result */
    bool stuck;             /* the loop failed with a request still in it */
};
/* Use loop, else the calling thread's, else a private one; false + *errp on failure. */
bool bc_sync_begin(struct bc_sync *s, struct bc_loop *loop, GError **errp);
/* Free the private loop, if any (kept, as a leak, if a request is stuck in it). */
void bc_sync_end(struct bc_sync *s);
/* The bc_cb of a request run synchronously; opaque = the struct bc_sync. */
void bc_sync_cb(void *opaque, int res);
/* Run the loop until the request completes: its result, or -errno if the loop failed. */
int bc_sync_wait(struct bc_sync *s);

#endif
