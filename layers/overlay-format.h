/* SPDX-License-Identifier: MIT */
/* The on-disk overlay format (man/layerfs-overlay.5): header codec, validation and layout,
 * shared by fmt-overlay.c and img.c.  Pure functions on buffers, so they can be fuzzed. */
#ifndef LAYERFS_OVERLAY_FORMAT_H
#define LAYERFS_OVERLAY_FORMAT_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

/*
 * Layout (all integers little-endian):
 *
 *   0            header, OVL_HEADER_SIZE bytes (fields below, rest zero)
 *   bitmap_off   presence bitmap, bitmap_len bytes: bit b (byte b/8, bit b%8, least
 *                significant first) set = block b is present
 *   data_off     block b at data_off + b * block_size; the file is created sparse at its
 *                full size, data_off + block count * block size, and never grows
 *
 * Header fields, by byte offset:
 *    0  magic "LFSOVRL\n"          8  u32 version (1)          12  u32 header size (4096)
 *   16  u64 virtual size          24  u32 block size          28  u32 flags
 *   32  u64 block count           40  u64 bitmap offset       48  u64 bitmap length
 *   56  u64 data offset           64  u32 incompatible features (0)
 *   68  u32 CRC-32 of bytes 0..127 with this field zero       72..127 zero
 */

#define OVL_MAGIC "LFSOVRL\n"
#define OVL_VERSION 1u
#define OVL_HEADER_SIZE 4096u
#define OVL_HEADER_USED 128u
#define OVL_DEFAULT_BLOCK (64u << 10)
#define OVL_MIN_BLOCK 512u
#define OVL_MAX_BLOCK (64u << 20)
#define OVL_MAX_SIZE (1ull << 60)
#define OVL_MAX_BITMAP (256ull << 20)   /* bitmap bytes this program loads */

enum {
    OVL_FLAG_DIRTY = 1u << 0,   /* open for writing; not closed cleanly if found at open */
    OVL_FLAG_COMMIT = 1u << 1,  /* a commit into the layer below was started */
    OVL_FLAGS_KNOWN = OVL_FLAG_DIRTY | OVL_FLAG_COMMIT,
};

struct ovl_hdr {
    uint32_t version;
    uint64_t size;
    uint32_t block_size;
    uint32_t flags;
    uint64_t nblocks;
    uint64_t bitmap_off;
    uint64_t bitmap_len;
    uint64_t data_off;
};

/* The size an overlay file has: it is created sparse at its full size and never grows. */
static inline uint64_t ovl_file_size(const struct ovl_hdr *h)
{
    return h->data_off + h->nblocks * h->block_size;
}
/* Fill h with the layout for an overlay of size bytes in blocks of block_size. */
void ovl_hdr_init(struct ovl_hdr *h, uint64_t size, uint32_t block_size);
/* Check size and block size; false + *errp ("what: reason"). */
bool ovl_check_geometry(const char *what, uint64_t size, uint64_t block_size, GError **errp);
/* Encode into buf (OVL_HEADER_SIZE bytes). */
void ovl_hdr_encode(const struct ovl_hdr *h, uint8_t *buf);
/* Decode and validate buf (len bytes read from offset 0 of a file of file_size bytes).
 * Errors name path, the offset and the reason. */
bool ovl_hdr_decode(const uint8_t *buf, size_t len, uint64_t file_size, const char *path,
                    struct ovl_hdr *h, GError **errp);
/* Validate a bitmap of h->bitmap_len bytes: no bits past the last block, and every present
 * block inside the file.  *bad = number of bad bits found (may be NULL). */
bool ovl_bitmap_check(const struct ovl_hdr *h, const uint8_t *bm, uint64_t file_size,
                      const char *path, uint64_t *bad, GError **errp);
/* Clear every bad bit ovl_bitmap_check would complain about; returns how many. */
uint64_t ovl_bitmap_repair(const struct ovl_hdr *h, uint8_t *bm, uint64_t file_size);
/* Create an overlay file (O_EXCL|O_NOFOLLOW, mode 0600) and make it durable. */
bool ovl_create_file(const char *path, uint64_t size, uint32_t block_size, GError **errp);
/* CRC-32 (IEEE) of len bytes. */
uint32_t ovl_crc32(const uint8_t *p, size_t len);

#endif
