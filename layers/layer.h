/* SPDX-License-Identifier: MIT */
/* The internal layer interface: what disk.c needs from each layer format (fmt-*.c), and
 * the "next" calls through which a format sees the stack below it (like an nbdkit filter). */
#ifndef LAYERFS_LAYER_H
#define LAYERFS_LAYER_H

#include "layers/layers.h"

/*
 * Notes on the design
 *
 * A layer holds some blocks of the disk ("present") and not others.  disk.c resolves every
 * read into pieces, each served by the topmost layer holding it (or zeros), and calls the
 * format's read only for ranges that format said were present.  Writes go to the top layer
 * (and on through write-through layers); formats that hold blocks partially (overlay, ram)
 * copy the rest of a partly written block up from the stack below with layer_next_read().
 *
 * All callbacks run on the loop the request was started on, never from inside the call.
 */

#include <assert.h>
#include <inttypes.h>
#include <stddef.h>

struct layer;

enum {
    LAYER_NO_OVERWRITE = 1u << 8, /* write: skip blocks already present (cache fills) */
};

/* A layer format: its rules, which the configuration parser and disk.c enforce with
 * messages that name the format, and its operations. */
struct layer_ops {
    const char *format;     /* the name the "format" key takes */
    /* Keeps its data in memory: takes no driver, no driver keys, no path and no create. */
    bool in_memory;
    /* Takes the block-size key (presence granularity). */
    bool has_block_size;
    /* Takes the cache-size key (a bounded read cache, see cache.h). */
    bool has_cache_size;
    /* Keys of this format's own, NULL-terminated (NULL for none); their values are kept
     * in lf_layer_cfg.driver_opts, beside the driver's. */
    const char *const *keys;
    /* create = true makes a new image when the path does not exist (checked at open). */
    bool can_create;
    /* Remembers the stack below it and takes the base-check key. */
    bool has_base;
    /* Open: fill l->size, l->block_size, l->read_only; set l->priv. false + *errp on error.
     * below is the layer under this one (NULL for the bottom), already open. */
    bool (*open)(struct layer *l, const struct lf_layer_cfg *cfg, struct layer *below,
                 bool writable, GError **errp);
    /* Mark clean and close; returns 0 or -errno. */
    int (*close)(struct layer *l);
    /* 1 if offset is present, 0 if not; *pnum = bytes (<= len) with that state. */
    int (*present)(struct layer *l, uint64_t offset, uint64_t len, uint64_t *pnum);
    /* For a present range: 1 data or 0 hole; *pnum bytes. <0 = -errno. */
    int (*block_status)(struct layer *l, uint64_t offset, uint64_t len, uint64_t *pnum);
    /* Read a present range. */
    void (*read)(struct layer *l, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                 uint64_t offset, bc_cb *cb, void *opaque);
    /* Write; flags: BC_REQ_FUA, LAYER_NO_OVERWRITE. The range is within l->size. */
    void (*write)(struct layer *l, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                  uint64_t offset, unsigned flags, bc_cb *cb, void *opaque);
    /* Make the range read as zeros.  A format that holds blocks decides per block, under
     * its range lock, with layer_next_status(): a block over zeros below is dropped, only a
     * block over data below is kept as a present zero block. */
    void (*zero)(struct layer *l, struct bc_loop *loop, uint64_t offset, uint64_t len,
                 unsigned flags, bc_cb *cb, void *opaque);
    /* Advisory discard: the range may read as before or as zeros afterwards, never as the
     * stack below: drop only blocks over which it reads as zeros (layer_next_status()). */
    void (*discard)(struct layer *l, struct bc_loop *loop, uint64_t offset, uint64_t len,
                    bc_cb *cb, void *opaque);
    /* Make completed writes durable. */
    void (*flush)(struct layer *l, struct bc_loop *loop, bc_cb *cb, void *opaque);
    /* Optional: a bounded read cache's figures; false if the layer is none. */
    bool (*cache_stats)(struct layer *l, struct lf_cache_stats *st);
    /* True if write() honours LAYER_NO_OVERWRITE (required for read-cache). */
    bool can_no_overwrite;
};

struct layer {
    const struct layer_ops *ops;
    char *name;
    char *origin;           /* "FILE:GROUP" for messages */
    struct lf_disk *disk;
    unsigned index;         /* 0 = top */
    uint64_t size;          /* the layer's own size in bytes */
    uint64_t visible;       /* min size of this layer and every layer above it */
    uint32_t block_size;    /* presence granularity; 1 for fully present layers */
    uint32_t io_align;      /* preferred I/O granularity (st_blksize) */
    bool read_only;         /* opened read-only */
    bool remote;            /* its device's block status costs a network round trip */
    bool read_cache;
    bool write_through;
    void *priv;
};

/* The driver of a layer whose configuration names none (and whose format is not in memory). */
#define LAYER_DEFAULT_DRIVER "file"

/* Find a format in the one table (formats.c); NULL name = the default (raw). NULL if none. */
const struct layer_ops *layer_format_find(const char *name);
/* Format i of the table, or NULL past its end. */
const struct layer_ops *layer_format_at(size_t i);
/* Space-separated list of format names, for messages. */
const char *layer_format_names(void);
/* The formats pick() accepts, as "a", "a or b", "a, b or c"; free with g_free(). */
char *layer_format_list(bool (*pick)(const struct layer_ops *ops));

/* Read [offset, offset+len) as the stack below l shows it (zeros where nothing holds it). */
void layer_next_read(struct layer *l, struct bc_loop *loop, const struct iovec *iov,
                     int iovcnt, uint64_t offset, bc_cb *cb, void *opaque);
/* The stack below l at offset: 0 reads as zeros, 1 may hold data (or the query failed);
 * *pnum = bytes (<= len, > 0) alike. */
int layer_next_status(struct layer *l, uint64_t offset, uint64_t len, uint64_t *pnum);
/* True if the stack below l reads as zeros in the whole range. */
bool layer_next_is_zero(struct layer *l, uint64_t offset, uint64_t len);
/* Deliver cb(opaque, res) from loop's next iteration. */
void layer_complete_later(struct bc_loop *loop, bc_cb *cb, void *opaque, int res);
/* Log the figures of the layer's driver, if it keeps any (at close). */
void layer_log_driver_stats(const struct layer *l, struct bc_dev *dev);
/* Open a bc_dev for a layer's configuration, locked as asked (see struct bc_open_args).
 * NULL with *errp set. */
struct bc_dev *layer_open_dev(const struct lf_layer_cfg *cfg, bool read_only, bool direct,
                              enum bc_lock lock, GError **errp);

#endif
