/* SPDX-License-Identifier: MIT */
/* Bounded read caches (cache-size on an overlay read-cache layer): space accounting, clock
 * eviction and the cache's figures, on top of the sparse engine of fmt-overlay.c. */
#ifndef LAYERFS_CACHE_H
#define LAYERFS_CACHE_H

#include "layers/sparse.h"

struct lf_cache;

/* The figures of one cache since it was opened (see layerfs.conf(5), FIGURES). */
struct lf_cache_stats {
    uint64_t hits;          /* cache blocks read from the cache */
    uint64_t misses;        /* cache blocks read from below on behalf of the cache */
    uint64_t evictions;     /* blocks evicted */
    uint64_t filled_bytes;  /* bytes written into the cache by fills */
    uint64_t below_bytes;   /* bytes read from the layers below through the cache */
    uint64_t used_blocks;   /* blocks the cache file holds now */
    uint64_t limit_blocks;  /* blocks it may hold */
};

/* Bound l (an open overlay whose engine is sp; meta = bytes of its header and bitmap) to
 * size bytes: count and reclaim its space, evict down to the bound.  NULL + *errp. */
struct lf_cache *cache_open(struct layer *l, struct sparse *sp, uint64_t size, uint64_t meta,
                            GError **errp);
/* Log the figures and free; no request may be in flight. */
void cache_close(struct lf_cache *c);
/* Read a range the layer said was present (falls back to below if evicted meanwhile). */
void cache_read(struct lf_cache *c, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                uint64_t offset, bc_cb *cb, void *opaque);
/* A fill (LAYER_NO_OVERWRITE write): evicts to make room; skipped (0) if none can be made. */
void cache_fill(struct lf_cache *c, struct bc_loop *loop, const struct iovec *iov,
                int iovcnt, uint64_t offset, bc_cb *cb, void *opaque);
/* Snapshot the figures (any thread). */
void cache_get_stats(struct lf_cache *c, struct lf_cache_stats *st);

#endif
