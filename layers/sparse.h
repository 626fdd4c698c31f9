/* SPDX-License-Identifier: MIT */
/* A block-granular sparse layer shared by the overlay and ram formats: the presence bitmap,
 * per-block write serialization, copy-up of partly written blocks, no-overwrite fills. */
#ifndef LAYERFS_SPARSE_H
#define LAYERFS_SPARSE_H

#include "layers/layer.h"

/*
 * Notes on the design
 *
 * State of a block: absent (reads go to the stack below) or present (reads come from the
 * store at the block's own offset).  The in-memory bitmap is authoritative while running;
 * the overlay format persists it at flush time (see fmt-overlay.c).
 *
 * Every modifying operation locks the whole-block range it touches with a strong blocker
 * (blockcore.h), so overlapping operations run one at a time in the order they arrived: a
 * waiting operation starts on its own loop once every earlier one it overlaps has finished,
 * and no later one overtakes it.  Under the range lock an operation decides, per block,
 * what to do:
 *   - whole block written: write it; mark present when the write completes;
 *   - partial block, present: write just the bytes;
 *   - partial block, absent: read the block from the stack below (copy-up), merge, write
 *     the whole block, mark present when the write completes;
 *   - LAYER_NO_OVERWRITE (cache fill): skip blocks that are present;
 *   - zero or discard: ask the stack below (in extents, under the range lock) where it
 *     reads as zeros; blocks over zeros are dropped, zeroing keeps a present zero block
 *     only over data below, a discard leaves the others alone.
 * A block becomes present only once its data write has completed, so concurrent readers
 * see either the old (below) or the new contents, never a half-written block.
 *
 * sp->lock (a mutex) protects bitmap, dirty, ndirty and the counters npresent and nmarked
 * (written under it with atomic stores, so a bounded cache (cache.c) may read them
 * without it); it is never held across I/O.  The
 * range locks live in sp->locks, under that list's own lock; the two are never held
 * together.
 */

struct sparse_store_ops {
    /* Read/write/zero the store at layer offset. */
    void (*read)(void *store, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                 uint64_t offset, bc_cb *cb, void *opaque);
    void (*write)(void *store, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                  uint64_t offset, unsigned flags, bc_cb *cb, void *opaque);
    void (*zero)(void *store, struct bc_loop *loop, uint64_t offset, uint64_t len,
                 unsigned flags, bc_cb *cb, void *opaque);
    /* Optional: blocks [b0, b1) became absent (the store may free them); under sp->lock. */
    void (*dropped)(void *store, uint64_t b0, uint64_t b1);
    /* Optional: give back the space of absent blocks at [offset, offset+len); the range
     * must read as zeros afterwards (a crash before the next flush may still show the
     * blocks present).  Runs under the operation's range lock. */
    void (*punch)(void *store, struct bc_loop *loop, uint64_t offset, uint64_t len,
                  bc_cb *cb, void *opaque);
};

#define SPARSE_PAGE 4096u   /* bitmap bytes per dirty-tracking page */

struct sparse {
    struct layer *layer;
    const struct sparse_store_ops *ops;
    void *store;
    uint64_t size;
    uint32_t bs;
    unsigned shift;
    uint64_t nblocks;
    uint64_t bitmap_len;    /* bytes, a multiple of SPARSE_PAGE */
    GMutex lock;
    uint8_t *bitmap;        /* bit b of byte b/8, least significant first */
    uint8_t *dirty;         /* per bitmap page: changed since last taken */
    uint64_t ndirty;
    uint64_t npresent;      /* present blocks */
    uint64_t nmarked;       /* blocks operations made present since sparse_init */
    struct bc_blocker_list locks;   /* range locks of the operations, in blocks */
};

/* Set up for size bytes in blocks of bs (a power of two). */
void sparse_init(struct sparse *sp, struct layer *l, uint64_t size, uint32_t bs,
                 const struct sparse_store_ops *ops, void *store);
/* Free the bitmap; no operations may be running. */
void sparse_destroy(struct sparse *sp);
/* Presence at offset; see layer_ops.present. */
int sparse_present(struct sparse *sp, uint64_t offset, uint64_t len, uint64_t *pnum);
/* Number of present blocks. */
uint64_t sparse_count(struct sparse *sp);
/* Load a bitmap of bitmap_len bytes (an overlay's at open) and count its present blocks. */
void sparse_load(struct sparse *sp, const uint8_t *bm);
/* Set block b present or absent (the caller holds b's range lock); true if it changed. */
bool sparse_set(struct sparse *sp, uint64_t b, bool on);
/* Read a present range from the store. */
void sparse_read(struct sparse *sp, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                 uint64_t offset, bc_cb *cb, void *opaque);
/* Write (flags: BC_REQ_FUA, LAYER_NO_OVERWRITE). */
void sparse_write(struct sparse *sp, struct bc_loop *loop, const struct iovec *iov,
                  int iovcnt, uint64_t offset, unsigned flags, bc_cb *cb, void *opaque);
/* Make the range read as zeros, deciding per block from the stack below (see plan()). */
void sparse_zero(struct sparse *sp, struct bc_loop *loop, uint64_t offset, uint64_t len,
                 unsigned flags, bc_cb *cb, void *opaque);
/* Drop the whole blocks of the range over which the stack below reads as zeros. */
void sparse_discard(struct sparse *sp, struct bc_loop *loop, uint64_t offset, uint64_t len,
                    bc_cb *cb, void *opaque);
/* Copy the dirty bitmap pages into a new buffer of bitmap_len bytes (only dirty pages are
 * meaningful), set pages[i] for each, clear their dirty marks; returns the count. */
uint64_t sparse_take_dirty(struct sparse *sp, uint8_t *copy, uint8_t *pages);
/* Mark pages dirty again (after a failed bitmap write). */
void sparse_redirty(struct sparse *sp, const uint8_t *pages);

static inline bool bit_get(const uint8_t *bm, uint64_t b)
{
    return (bm[b >> 3] >> (b & 7)) & 1;
}

#endif
