/* SPDX-License-Identifier: MIT */
/* Synchronous access to an overlay file through a bc_dev, shared by fmt-overlay.c and
 * img.c (layerfs-img): open and validate, write the header and the bitmap, re-lay out
 * (upgrade to version 2, grow). */
#ifndef LAYERFS_OVERLAY_H
#define LAYERFS_OVERLAY_H

#include "layers/layer.h"
#include "layers/overlay-format.h"

struct ovl_file {
    char *path;
    struct bc_dev *dev;
    uint64_t file_size;
    struct ovl_hdr h;
    uint8_t *bitmap;        /* the flat bitmap, ovl_bitmap_mem_len(&h) bytes (g_malloc) */
    uint64_t bad_chunks;    /* v2 chunks that failed their checksum (their bits are 0) */
    char *chunk_problem;    /* the first one's message, or NULL */
    bool read_only;
    bool direct;            /* how dev was opened, to reopen it after growing the file */
    enum bc_lock lock;
};

enum {
    OVL_OPEN_NO_BITMAP_CHECK = 1u << 0, /* load a bad bitmap anyway (check --repair) */
    OVL_OPEN_NO_SIZE_CHECK = 1u << 1,   /* accept a truncated data region (check --repair) */
    OVL_OPEN_NO_LOCK = 1u << 2,         /* do not lock (info on an overlay in use) */
};

/* Open path (driver "file" unless cfg says otherwise), read and validate header and bitmap.
 * cfg may be NULL. false + *errp naming the file, offset and reason. */
bool ovl_file_open(struct ovl_file *f, const char *path, const struct lf_layer_cfg *cfg,
                   bool read_only, bool direct, unsigned flags, struct bc_sync *s,
                   GError **errp);
/* Write the header from f->h and flush: 0 or -errno. */
int ovl_file_write_header(struct ovl_file *f, struct bc_sync *s);
/* Write the whole bitmap from f->bitmap (encoded for f->h.version) and flush: 0 or -errno. */
int ovl_file_write_bitmap(struct ovl_file *f, struct bc_sync *s);
/* Crash-safely make f a v2 overlay of size (>= its) bytes, cfg as at open; false + *errp. */
bool ovl_file_relayout(struct ovl_file *f, const struct lf_layer_cfg *cfg, uint64_t size,
                       struct bc_sync *s, GError **errp);
/* Fingerprint the raw device dev (ovl_fingerprint over its whole size): 0 or -errno. */
int ovl_dev_fingerprint(struct bc_dev *dev, struct bc_sync *s, uint64_t *fp);
/* Close the device and free. */
void ovl_file_close(struct ovl_file *f);

#endif
