/* SPDX-License-Identifier: MIT */
/* Helpers for the layers tests: building disk configurations in code, synchronous wrappers
 * around lf_disk_*, files with known contents. */
#ifndef LAYERFS_LAYERS_TEST_H
#define LAYERFS_LAYERS_TEST_H

#include "layers/layers.h"

/* A new layer configuration; format "raw"/"overlay"/"ram", driver may be NULL. */
struct lf_layer_cfg *lt_layer(const char *name, const char *format, const char *driver,
                              const char *path);
/* Set a driver option. */
void lt_opt(struct lf_layer_cfg *lc, const char *key, const char *value);
/* A disk configuration owning the layers (top first); NULL-terminated. */
struct lf_disk_cfg *lt_disk(const char *name, bool read_only, ...) G_GNUC_NULL_TERMINATED;
/* Free a disk configuration and its layers. */
void lt_disk_free(struct lf_disk_cfg *cfg);

/* Synchronous wrappers on loop; each checks the callback did not run inside the call. */
int lt_read(struct lf_disk *d, struct bc_loop *loop, void *buf, size_t len, uint64_t off);
int lt_write(struct lf_disk *d, struct bc_loop *loop, const void *buf, size_t len,
             uint64_t off, unsigned flags);
int lt_zero(struct lf_disk *d, struct bc_loop *loop, uint64_t off, uint64_t len,
            unsigned flags);
int lt_flush(struct lf_disk *d, struct bc_loop *loop);

/* Write a file of len bytes of pattern data (seeded) or zeros (seed 0); returns the data. */
uint8_t *lt_make_file(const char *path, size_t len, guint32 seed);
/* Read a whole file (aborts on error); *len set. */
uint8_t *lt_slurp(const char *path, size_t *len);

#endif
