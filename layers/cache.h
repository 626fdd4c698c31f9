/* SPDX-License-Identifier: MIT */
/* Bounded read caches (cache-size on an overlay read-cache layer): space accounting, clock
 * eviction and the cache's figures, on top of the sparse engine of fmt-overlay.c. */
#ifndef LAYERFS_CACHE_H
#define LAYERFS_CACHE_H

#include "layers/sparse.h"

struct lf_cache;


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

/* Tests only: microseconds a read from the cache sleeps between its presence check and
 * its read (0 = off), to widen the window an eviction must not slip into. */
extern unsigned cache_test_read_delay_us;
/* Tests only: microseconds an eviction batch sleeps after each victim's lock request (0 =
 * off), so that reads on other threads queue between a batch's locks. */
extern unsigned cache_test_evict_delay_us;

#endif
