/* SPDX-License-Identifier: MIT */
/* A page-bitmap allocator with FIFO waiters: the one behind blockcore's I/O buffer arenas
 * (bufpool.c) and the virtio-blk drivers' bounce pool. */
#ifndef LAYERFS_BLOCKCORE_PAGEMAP_H
#define LAYERFS_BLOCKCORE_PAGEMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Notes on the design
 *
 * A map hands out runs of pages of some memory it does not know about (page i is the
 * owner's business); it only keeps a bitmap of pages in use.  Allocation is first fit from
 * a rotating hint (just past the last run handed out), wrapping once, so that a busy map
 * spreads its runs instead of crowding its start.
 *
 * Waiters.  An owner that would rather wait than fail queues a struct bc_pagemap_wait.
 * Waiters are served strictly in order: nothing is handed out while anyone waits, and
 * giving pages back grants them to the waiters from the oldest while the oldest fits, so
 * memory stays bounded and a large request cannot be starved by small ones.  An owner that
 * never waits (bufpool.c, which falls back to the heap) pays one pointer test for this.
 *
 * Locking.  None inside: the owner's lock protects the whole map (bitmap, hint and
 * waiters), so an owner can keep several maps and its own counters under one lock
 * (bufpool.c's pool.lock) or check its own state in the same critical section as it
 * queues (virtio-blk's pool_lock and its dead flag).  The owner wakes granted waiters
 * after dropping its lock.
 */

/* A request for pages that may wait; owned by the caller until granted or drained. */
struct bc_pagemap_wait {
    struct bc_pagemap_wait *next;   /* the queue, then the list bc_pagemap_put() returns */
    uint32_t pages;                 /* wanted, at least 1 */
    uint32_t first;                 /* once granted: the first of them */
};

struct bc_pagemap {
    size_t pages;
    uint64_t *bitmap;               /* 1 = page in use */
    size_t hint;                    /* where the next search starts */
    struct bc_pagemap_wait *head, **tail;   /* waiters, oldest first */
};

/* Set up a map of pages free pages (fewer than 2^32); false if out of memory. */
bool bc_pagemap_init(struct bc_pagemap *m, size_t pages);
/* Free the bitmap; no waiters may be left. */
void bc_pagemap_destroy(struct bc_pagemap *m);
/* Take n pages now: the first of them, or -1 if they do not fit or others wait. */
ssize_t bc_pagemap_take(struct bc_pagemap *m, size_t n);
/* Take w->pages now (true, w->first set), else queue w behind the other waiters (false). */
bool bc_pagemap_take_or_wait(struct bc_pagemap *m, struct bc_pagemap_wait *w);
/* Give back n pages from first; returns the waiters now granted (oldest first) to wake. */
struct bc_pagemap_wait *bc_pagemap_put(struct bc_pagemap *m, size_t first, size_t n);
/* Remove every waiter, oldest first (linked by next), e.g. to fail them. */
struct bc_pagemap_wait *bc_pagemap_drain(struct bc_pagemap *m);

#endif
