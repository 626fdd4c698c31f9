/* SPDX-License-Identifier: MIT */
/* layers: layered disks (a stack of layers, top first) and their configuration.  The FUSE
 * front end and layerfs-img see disks only through this header. */
#ifndef LAYERFS_LAYERS_H
#define LAYERFS_LAYERS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include <glib.h>

#include "blockcore/blockcore.h"

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
    uint64_t block_size;    /* overlay block size; 0 = format default */
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
/* Number of layers in the stack. */
unsigned lf_disk_layer_count(const struct lf_disk *disk);
/* Name of layer i (0 = top). */
const char *lf_disk_layer_name(const struct lf_disk *disk, unsigned i);
/* Format of layer i: "raw", "overlay" or "ram". */
const char *lf_disk_layer_format(const struct lf_disk *disk, unsigned i);

#define LF_ERROR lf_error_quark()
GQuark lf_error_quark(void);

#endif
