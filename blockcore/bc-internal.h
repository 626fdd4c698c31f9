/* SPDX-License-Identifier: MIT */
/* blockcore internals shared by loop.c, dev.c, bounce.c and blocker.c; not for drivers. */
#ifndef LAYERFS_BC_INTERNAL_H
#define LAYERFS_BC_INTERNAL_H

#include <assert.h>
#include <pthread.h>
#include <signal.h>

#include "blockcore/blockcore.h"

/* ---- bounce budget (bounce.c) ---- */

/* A request waiting for bounce memory; fn runs on loop with buf set. */
struct bc_bounce_wait {
    struct bc_task task;
    struct bc_loop *loop;
    size_t len;
    void *buf;
    struct bc_bounce_wait *next;
};

/* Take len bytes of bounce memory: returns it, or NULL after queueing w (whose
 * task.fn must be set) to be woken on loop with w->buf once memory is free. */
void *bc_bounce_get(size_t len, struct bc_bounce_wait *w, struct bc_loop *loop);
/* Give back a bounce buffer of len bytes; wakes waiters that now fit. */
void bc_bounce_put(void *buf, size_t len);

/* ---- write blockers (blocker.c) ---- */

/*
 * Write serialization.  Every write-like request holds a blocker over the range it
 * writes.  Aligned writes take weak blockers; read-modify-write takes strong ones.  Two
 * blockers conflict when their ranges intersect and at least one is strong.  Blockers
 * are granted in arrival order: one is granted when no blocker that arrived earlier
 * (granted or still waiting) conflicts with it, so strong waiters cannot starve.
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
    pthread_mutex_t lock;       /* protects the list and every member's granted flag */
    struct bc_blocker *head, *tail;
};

void bc_blockers_init(struct bc_blocker_list *l);
void bc_blockers_destroy(struct bc_blocker_list *l);
/* Enqueue b; true if granted now, else b->task.fn runs on loop once granted. */
bool bc_blocker_acquire(struct bc_blocker_list *l, struct bc_blocker *b, struct bc_loop *loop);
/* Drop a granted blocker and grant the waiters it was holding back. */
void bc_blocker_release(struct bc_blocker_list *l, struct bc_blocker *b);

/* Round helpers for powers of two. */
static inline uint64_t bc_align_down(uint64_t v, uint64_t a) { return v & ~(a - 1); }
static inline uint64_t bc_align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

#endif
