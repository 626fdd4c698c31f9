/* SPDX-License-Identifier: MIT */
/* virtio-blk requests on a split virtqueue: the config space fields the drivers use, and
 * building requests (header, data, status) with one header/status slot per descriptor. */
#ifndef LAYERFS_VIRTIO_BLK_REQ_H
#define LAYERFS_VIRTIO_BLK_REQ_H

#include <stddef.h>
#include <stdint.h>

#include "drivers/virtio-blk/virtqueue.h"

/* ---- virtio-blk requests ----------------------------------------------------------- */

/* The virtio-blk config fields we use, host-endian. */
struct bc_vblk_config {
    uint64_t capacity;              /* 512-byte sectors */
    uint32_t size_max, seg_max, blk_size;
    uint8_t physical_block_exp;
    uint16_t num_queues;
    uint32_t max_discard_sectors, max_discard_seg, discard_sector_alignment;
    uint32_t max_write_zeroes_sectors, max_write_zeroes_seg;
};

/* Bytes of the device's config space we read (up to write_zeroes_may_unmap). */
#define BC_VBLK_CONFIG_BYTES 60u
/* Decode little-endian config space (BC_VBLK_CONFIG_BYTES long). */
void bc_vblk_config_parse(const uint8_t *raw, size_t len, struct bc_vblk_config *cfg);

/* Header, discard/write-zeroes segment and status of one request; one per descriptor. */
struct bc_vblk_slot {
    uint32_t type;      /* le: VIRTIO_BLK_T_* */
    uint32_t ioprio;
    uint64_t sector;    /* le */
    uint64_t dwz_sector;
    uint32_t dwz_num;
    uint32_t dwz_flags;
    uint8_t status;
    uint8_t pad[7];
};

/* Queue a virtio-blk request: type VIRTIO_BLK_T_*, data buffers (IN/OUT), or the range and
 * flags for DISCARD/WRITE_ZEROES.  Returns 0 or -ENOSPC (not enough descriptors). */
int bc_vblk_add(struct bc_vq *vq, struct bc_vblk_slot *slots, uint64_t slots_addr,
                uint32_t type, uint64_t sector, const struct bc_vbuf *data, unsigned ndata,
                uint32_t dwz_num, uint32_t dwz_flags, void *cookie);
/* The result of a completed request from its status byte: 0, -EIO or -ENOTSUP. */
int bc_vblk_status(const struct bc_vblk_slot *slots, uint16_t head);

#endif
