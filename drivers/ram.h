/* SPDX-License-Identifier: MIT */
/* Internals of the ram driver, shared with the fault driver (a ram disk with fault rules). */
#ifndef LAYERFS_BLOCKCORE_DRV_RAM_H
#define LAYERFS_BLOCKCORE_DRV_RAM_H

#include "blockcore/blockcore.h"

struct bc_ram;

/* The ram driver's keys, for drivers that extend them: size, align, mem-align, max-transfer. */
#define BC_RAM_KEYS "size", "align", "mem-align", "max-transfer"

/* Parse the ram keys from args, map the memory and fill *props; NULL with *errp set. */
struct bc_ram *bc_ram_new(const struct bc_open_args *args, struct bc_props *props,
                          GError **errp);
/* Unmap and free. */
void bc_ram_free(struct bc_ram *ram);
/* Perform dreq synchronously (the caller completes it): 0 or -errno. Thread-safe. */
int bc_ram_do(struct bc_ram *ram, const struct bc_dreq *dreq);
/* block_status for a ram disk: holes are pages never written or unmapped since. */
int bc_ram_block_status(struct bc_ram *ram, uint64_t offset, uint64_t len, uint64_t *pnum);

#endif
