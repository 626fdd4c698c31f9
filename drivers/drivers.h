/* SPDX-License-Identifier: MIT */
/* The one list of backend drivers: the driver table (blockcore/drivers.c) is made from it
 * and tests name drivers through it.  Each driver lives in its own file and ends with its
 * descriptor, const struct bc_driver bc_drv_NAME. */
#ifndef LAYERFS_DRIVERS_H
#define LAYERFS_DRIVERS_H

#include "blockcore/driver.h"

/* Adding a driver: its file, one line here, and its file in Makefile.am.  The order is the
 * order of the "known:" lists in messages. */
#define BC_DRIVER_LIST(X)       \
    X(file)                     \
    X(null)                     \
    X(ram)                      \
    X(fault)                    \
    X(logwrites)                \
    X(nbd)                      \
    X(virtio_blk_vhost_user)    \
    X(virtio_blk_vfio_pci)

#define BC_DRIVER_DECLARE(name) extern const struct bc_driver bc_drv_##name;
BC_DRIVER_LIST(BC_DRIVER_DECLARE)
#undef BC_DRIVER_DECLARE

#endif
