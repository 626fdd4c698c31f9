/* SPDX-License-Identifier: MIT */
/* Helpers shared by the backend drivers (not by the generic layer): option parsing with
 * messages naming the key and value, and completing a request on the next loop iteration. */
#ifndef LAYERFS_BLOCKCORE_DRV_UTIL_H
#define LAYERFS_BLOCKCORE_DRV_UTIL_H

#include "blockcore/blockcore.h"

/* The value of key in args->opts, or NULL when absent. */
const char *bc_opt(const struct bc_open_args *args, const char *key);
/* Parse key as a size ("64K", "1G"); if absent: error when required, else *out = def. */
bool bc_opt_size(const struct bc_open_args *args, const char *key, bool required, uint64_t def,
                 uint64_t *out, GError **errp);
/* Parse key as a power of two in [min, max]; *out = def when absent. */
bool bc_opt_pow2(const struct bc_open_args *args, const char *key, uint32_t min, uint32_t max,
                 uint32_t def, uint32_t *out, GError **errp);
/* Parse key as a decimal integer in [0, max]; *out = def when absent. */
bool bc_opt_uint(const struct bc_open_args *args, const char *key, uint64_t max, int64_t def,
                 int64_t *out, GError **errp);
/* Parse key as an errno name ("EIO", "ENOSPC") or a positive number; *out = def when absent. */
bool bc_opt_errno(const struct bc_open_args *args, const char *key, int def, int *out,
                  GError **errp);
/* Take the lock args->lock asks for on fd, the file args->path was opened as; false with
 * *errp (code EWOULDBLOCK if another holder conflicts, else the errno) on failure. */
bool bc_drv_lock_fd(const struct bc_open_args *args, int fd, GError **errp);
/* The prefix for messages about args: args->what, or "device". */
const char *bc_what(const struct bc_open_args *args);

/* Complete dreq with res from the loop's next iteration (never from inside submit).
 * Uses dreq->task and dreq->drv_scratch[3]. */
void bc_drv_complete_later(struct bc_dreq *dreq, int res);

#endif
