/* SPDX-License-Identifier: MIT */
/* Synchronous access to an overlay file through a bc_dev, shared by fmt-overlay.c and
 * img.c (layerfs-img): open and validate, write the header, write the bitmap. */
#ifndef LAYERFS_OVERLAY_H
#define LAYERFS_OVERLAY_H

#include "layers/layer.h"
#include "layers/overlay-format.h"

struct ovl_file {
    char *path;
    struct bc_dev *dev;
    uint64_t file_size;
    struct ovl_hdr h;
    uint8_t *bitmap;        /* h.bitmap_len bytes (bc_buf_alloc) */
    bool read_only;
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
/* Write the whole bitmap from f->bitmap and flush: 0 or -errno. */
int ovl_file_write_bitmap(struct ovl_file *f, struct bc_sync *s);
/* Close the device and free. */
void ovl_file_close(struct ovl_file *f);

#endif
