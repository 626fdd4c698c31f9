/* SPDX-License-Identifier: MIT */
/* The log the test-only logwrites driver (drivers/logwrites.c) writes, and that the
 * power-cut replay (t/unit/powercut.c) reads: the layout, shared by both. */
#ifndef LAYERFS_DRIVERS_LOGWRITES_H
#define LAYERFS_DRIVERS_LOGWRITES_H

#include <stdint.h>

/*
 * Layout (all integers little-endian):
 *
 *   0   file header, LW_HDR_SIZE bytes:
 *         0 magic "LFSLOGW\n"   8 u32 version (1)   12 u32 record header size (32)
 *        16 u64 device size    24 u32 req_align    28 u32 zero
 *   then records, each a LW_REC_SIZE-byte header followed, for LW_INIT and LW_WRITE, by
 *   len bytes of data:
 *         0 u32 type (enum lw_type)   4 u32 zero   8 u64 seq   16 u64 offset   24 u64 len
 *
 * seq numbers the records from 1.  The records open with the device's contents at open
 * (LW_INIT, data extents only: the rest is zeros), then come in completion order, each
 * written before the request is completed to the layer above: a write, write-zeroes or
 * discard once it has succeeded; a flush twice, LW_FLUSH when it is submitted (so every
 * write before it had completed when the flush was issued: the flush makes them durable)
 * and LW_FLUSH_DONE, offset = the seq of its LW_FLUSH, when it has succeeded.  FUA reaches
 * the driver as a write and a flush.  Failed requests are not logged.
 */

#define LW_MAGIC "LFSLOGW\n"
#define LW_VERSION 1u
#define LW_HDR_SIZE 32u
#define LW_REC_SIZE 32u

enum lw_type {
    LW_INIT = 1,        /* initial contents (data) */
    LW_WRITE = 2,       /* a completed write (data) */
    LW_ZERO = 3,        /* a completed write-zeroes */
    LW_DISCARD = 4,     /* a completed discard: the range reads as before or as zeros */
    LW_FLUSH = 5,       /* a flush was submitted */
    LW_FLUSH_DONE = 6,  /* the flush whose LW_FLUSH has seq = offset succeeded */
};

#endif
