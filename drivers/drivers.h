/* SPDX-License-Identifier: MIT */
/* The backend drivers, as the one driver table (blockcore/drivers.c) and tests name them.
 * Each lives in its own file and ends with its descriptor. */
#ifndef LAYERFS_DRIVERS_H
#define LAYERFS_DRIVERS_H

#include "blockcore/driver.h"

extern const struct bc_driver bc_drv_file;
extern const struct bc_driver bc_drv_null;
extern const struct bc_driver bc_drv_ram;
extern const struct bc_driver bc_drv_fault;
extern const struct bc_driver bc_drv_virtio_blk_vhost_user;
extern const struct bc_driver bc_drv_virtio_blk_vfio_pci;

#endif
