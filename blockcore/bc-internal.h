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

/* Round helpers for powers of two. */
static inline uint64_t bc_align_down(uint64_t v, uint64_t a) { return v & ~(a - 1); }
static inline uint64_t bc_align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

#endif
