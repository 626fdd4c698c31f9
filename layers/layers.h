/* SPDX-License-Identifier: MIT */
/* layers: layered disks (a stack of layers, top first), their configuration and offline
 * overlay files.  The FUSE front end and layerfs-img see layers only through this header. */
#ifndef LAYERFS_LAYERS_H
#define LAYERFS_LAYERS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include <glib.h>

#include "blockcore/blockcore.h"

/* What the block-size key accepts: a power of two in this range. */
#define LF_MIN_BLOCK_SIZE 512u
#define LF_MAX_BLOCK_SIZE (64u << 20)

/* One [layer NAME] group of the configuration, parsed and checked. */
struct lf_layer_cfg {
    char *name;
    char *format;           /* raw | overlay | ram */
    char *driver;           /* a blockcore driver name */
    char *path;             /* may be NULL */
    bool direct;
    bool read_only;
    bool read_cache;
    bool write_through;
    bool create;
    bool allow_smaller;     /* may be smaller than a layer below, hiding its end */
    uint64_t block_size;    /* overlay block size; 0 = format default */
    bool no_base_check;     /* base-check = false: use an overlay over any base */
    uint64_t cache_size;    /* bound on a read cache's file space; 0 = unbounded */
    GHashTable *driver_opts;/* driver-specific keys, char* -> char* */
    char *origin;           /* "FILE:GROUP" for messages */
};

/* One [disk NAME] group, with its layers resolved top to bottom. */
struct lf_disk_cfg {
    char *name;
    bool read_only;
    GPtrArray *layers;      /* struct lf_layer_cfg *, top first, owned */
    char *origin;
};

struct lf_config {
    GPtrArray *disks;       /* struct lf_disk_cfg *, owned */
};

/* Parse a GLib key file; messages are "FILE:GROUP:KEY: reason". NULL on error. */
struct lf_config *lf_config_load(const char *path, GError **errp);
/* Parse one inline disk definition (see layerfs(1) --disk) into cfg; false on error. */
bool lf_config_add_inline(struct lf_config *cfg, const char *spec, GError **errp);
/* An empty configuration. */
struct lf_config *lf_config_new(void);
/* Free a configuration. */
void lf_config_free(struct lf_config *cfg);

struct lf_disk;

/* Open every layer of a disk and validate the stack. NULL with *errp set on error. */
struct lf_disk *lf_disk_open(const struct lf_disk_cfg *cfg, bool force_read_only,
                             GError **errp);
/* Flush, mark layers clean and close. Returns 0 or -errno from the final flush. */
int lf_disk_close(struct lf_disk *disk);
/* Close as lf_disk_close, then remove the images its open created (if still those files). */
int lf_disk_close_undo(struct lf_disk *disk);
/* Disk name. */
const char *lf_disk_name(const struct lf_disk *disk);
/* Virtual size in bytes. */
uint64_t lf_disk_size(const struct lf_disk *disk);
/* True if the disk refuses writes. */
bool lf_disk_read_only(const struct lf_disk *disk);
/* Preferred I/O granularity for st_blksize. */
uint32_t lf_disk_block_size(const struct lf_disk *disk);

/* Read at any offset/length; zeros past the end. cb runs on loop with 0 or -errno. */
void lf_disk_readv(struct lf_disk *disk, struct bc_loop *loop, const struct iovec *iov,
                   int iovcnt, uint64_t offset, bc_cb *cb, void *opaque);
/* Write at any offset/length (flags: BC_REQ_FUA); -ENOSPC past the end, -EROFS if r/o. */
void lf_disk_writev(struct lf_disk *disk, struct bc_loop *loop, const struct iovec *iov,
                    int iovcnt, uint64_t offset, unsigned flags, bc_cb *cb, void *opaque);
/* Make the range read as zeros through the whole stack (flags: BC_REQ_MAY_UNMAP). */
void lf_disk_write_zeroes(struct lf_disk *disk, struct bc_loop *loop, uint64_t offset,
                          uint64_t len, unsigned flags, bc_cb *cb, void *opaque);
/* Advisory discard. */
void lf_disk_discard(struct lf_disk *disk, struct bc_loop *loop, uint64_t offset, uint64_t len,
                     bc_cb *cb, void *opaque);
/* Flush every layer a write can reach. */
void lf_disk_flush(struct lf_disk *disk, struct bc_loop *loop, bc_cb *cb, void *opaque);
/* Data (1) or hole (0) at offset through the whole stack; *pnum bytes. <0 = -errno. */
int lf_disk_block_status(struct lf_disk *disk, uint64_t offset, uint64_t len, uint64_t *pnum);

/* Which layer serves offset: its index (0 = top) or -1 where the disk reads as zeros because
 * no layer holds it; *pnum = bytes (<= len) served the same way. */
int lf_disk_map(struct lf_disk *disk, uint64_t offset, uint64_t len, uint64_t *pnum);
/* Bytes of the disk some layer holds as data (what SEEK_DATA finds), for st_blocks: walked
 * in extents, cached until a write, zero or discard completes, then walked again at most
 * every 100 times the last walk's CPU time; *fresh false when it lags completed writes. */
uint64_t lf_disk_allocated(struct lf_disk *disk, bool *fresh);
/* Number of layers in the stack. */
unsigned lf_disk_layer_count(const struct lf_disk *disk);
/* Name of layer i (0 = top). */
const char *lf_disk_layer_name(const struct lf_disk *disk, unsigned i);
/* Format of layer i: "raw", "overlay" or "ram". */
const char *lf_disk_layer_format(const struct lf_disk *disk, unsigned i);

/* The figures of a bounded read cache since the disk opened (layerfs.conf(5)). */
struct lf_cache_stats {
    uint64_t hits;          /* cache blocks read from the cache */
    uint64_t misses;        /* cache blocks read from below on behalf of the cache */
    uint64_t evictions;     /* blocks evicted */
    uint64_t filled_bytes;  /* bytes written into the cache by fills */
    uint64_t below_bytes;   /* bytes read from the layers below through the cache */
    uint64_t used_blocks;   /* blocks the cache file holds now */
    uint64_t limit_blocks;  /* blocks it may hold */
};
/* Figures of layer i: true if it is a bounded read cache (cache-size), else false. */
bool lf_disk_cache_stats(struct lf_disk *disk, unsigned i, struct lf_cache_stats *st);

/* ---- overlay files, offline (layerfs-img; not while a disk uses them) --------------- */

#define LF_IMG_DEFAULT_BLOCK (64u << 10)    /* block size of a new overlay */

/* What an overlay's header and bitmap say. */
struct lf_img_info {
    uint32_t version;
    uint64_t size;              /* virtual size in bytes */
    uint32_t block_size;
    uint64_t blocks;
    uint64_t blocks_present;
    bool dirty;                 /* in use, or not closed cleanly */
    bool commit;                /* a commit into the layer below was interrupted */
    uint64_t base_size;         /* the stack below it was made over: size (0: unknown) */
    uint64_t base_fp;           /* and fingerprint */
};

/* What lf_img_check found and, with repair, fixed. */
struct lf_img_check {
    struct lf_img_info info;
    uint64_t file_size;         /* a problem when below want_size */
    uint64_t want_size;         /* where the data region ends */
    char *bitmap_problem;       /* the bitmap's first problem, or NULL; g_free() it */
    char *chunk_problem;        /* the first bitmap chunk with a bad checksum, or NULL;
                                 * g_free() it */
    uint64_t bad_chunks;        /* how many chunks have one */
    uint64_t chunks_dropped;    /* repair: bad chunks rewritten empty (blocks dropped) */
    uint64_t bits_cleared;      /* repair: bad presence bits cleared */
    bool extended;              /* repair: the file was extended to want_size */
    bool marked_clean;          /* repair: the dirty flag was cleared */
    int repair_err;             /* repair: 0, or -errno of the step that failed (and
                                 * stopped the repair) */
};

/* How lf_img_commit ended. */
enum lf_img_commit_status {
    LF_IMG_COMMITTED,           /* done; *blocks were copied */
    LF_IMG_CANNOT_OPEN,         /* the overlay or the base did not open: *errp says why */
    LF_IMG_IN_USE,              /* the overlay is dirty with no commit pending, no force */
    LF_IMG_BAD_BASE,            /* *errp: "BASE: cannot be opened for writing" or smaller */
    LF_IMG_IO_ERROR,            /* I/O failed part way (*errp: strerror); rerun to finish */
};

/* Create an overlay of size bytes (or backing's size if not NULL); false + *errp. */
bool lf_img_create(const char *path, uint64_t size, const char *backing, uint64_t block_size,
                   GError **errp);
/* Read an overlay's header and bitmap without locking it.  false + *errp. */
bool lf_img_info(const char *path, struct lf_img_info *info, GError **errp);
/* Check (with repair, fix) an overlay into *c; false + *errp if it does not open. */
bool lf_img_check(const char *path, bool repair, struct lf_img_check *c, GError **errp);
/* Grow an overlay to size bytes (0: base's size), crash-safely; record base (may be NULL)
 * as the stack below.  false + *errp (also for a smaller size). */
bool lf_img_resize(const char *path, uint64_t size, const char *base, GError **errp);
/* Upgrade an overlay to the current version, crash-safely (*upgraded: it was older);
 * record base (may be NULL) as the stack below.  false + *errp. */
bool lf_img_upgrade(const char *path, const char *base, bool *upgraded, GError **errp);
/* Merge overlay into the raw file base below it, resumably: how it ended, *blocks copied. */
enum lf_img_commit_status lf_img_commit(const char *overlay, const char *base, bool force,
                                        uint64_t *blocks, uint32_t *block_size,
                                        GError **errp);

#define LF_ERROR lf_error_quark()
GQuark lf_error_quark(void);

#endif
