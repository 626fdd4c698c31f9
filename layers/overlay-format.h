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
 *   bitmap_off   presence bitmap, bitmap_len bytes: bit b set = block b is present
 *   data_off     block b at data_off + b * block_size; the file is created sparse at its
 *                full size, and only `layerfs-img resize` and upgrades make it larger
 *
 * Version 1: the bitmap is flat (bit b is bit b%8 of byte b/8) at offset 4096, its length
 * and the data offset fixed by the size and the block size.
 * Version 2: the bitmap is a run of OVL_CHUNK-byte chunks (a multiple of 8 of them), each
 * carrying its own checksum so that every bitmap write is self-checking even when a power
 * cut tears it at any 512-byte sector boundary: chunk c holds the flat bitmap's bytes
 * [c * OVL_CHUNK_DATA, (c + 1) * OVL_CHUNK_DATA), then u32 c, then u32 CRC-32C of the
 * chunk's first OVL_CHUNK - 4 bytes.  The bitmap may sit before or after the data region
 * (a resize or an upgrade writes a new one in free space, then switches the header).
 *
 * Header fields, by byte offset:
 *    0  magic "LFSOVRL\n"          8  u32 version (1 or 2)     12  u32 header size (4096)
 *   16  u64 virtual size          24  u32 block size          28  u32 flags
 *   32  u64 block count           40  u64 bitmap offset       48  u64 bitmap length
 *   56  u64 data offset           64  u32 incompatible features (0)
 *   68  u32 CRC-32 of bytes 0..127 with this field zero
 *   72  u64 base size (v2; 0 = none recorded)   80  u64 base fingerprint (v2)   88..127 zero
 */

#define OVL_MAGIC "LFSOVRL\n"
#define OVL_VERSION 2u              /* what this program writes */
#define OVL_HEADER_SIZE 4096u
#define OVL_HEADER_USED 128u
#define OVL_DEFAULT_BLOCK (64u << 10)
#define OVL_MIN_BLOCK 512u
#define OVL_MAX_BLOCK (64u << 20)
#define OVL_MAX_SIZE (1ull << 60)
#define OVL_MAX_BITMAP (256ull << 20)   /* bitmap bytes this program loads */
#define OVL_MAX_OFFSET (1ull << 62)     /* bitmap and data offsets stay below this */
#define OVL_CHUNK 512u                  /* v2 bitmap chunk: one sector, never torn */
#define OVL_CHUNK_GROUP 8u              /* chunks per 4096-byte bitmap write unit */
#define OVL_CHUNK_DATA (OVL_CHUNK - 8u) /* bitmap bytes per chunk */
#define OVL_FP_SAMPLE 4096u             /* bytes per fingerprint sample */
#define OVL_FP_MAX_SAMPLES 20u

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
    uint64_t base_size;     /* v2: size of the stack below it was made over; 0 = unknown */
    uint64_t base_fp;       /* v2: that stack's fingerprint (ovl_fingerprint) */
};

/* The size an overlay file needs: the end of its data region or of its bitmap. */
static inline uint64_t ovl_file_size(const struct ovl_hdr *h)
{
    return MAX(h->data_off + h->nblocks * h->block_size, h->bitmap_off + h->bitmap_len);
}
/* Bytes of the flat in-memory bitmap for nblocks (a multiple of 4096, as sparse.c's). */
static inline uint64_t ovl_flat_len(uint64_t nblocks)
{
    return MAX(4096u, ((nblocks + 7) / 8 + 4095) / 4096 * 4096);
}
/* Number of v2 chunks for nblocks: whole groups, so the bitmap is a multiple of 4096. */
static inline uint64_t ovl_nchunks(uint64_t nblocks)
{
    uint64_t n = ((nblocks + 7) / 8 + OVL_CHUNK_DATA - 1) / OVL_CHUNK_DATA;

    return MAX(1u, (n + OVL_CHUNK_GROUP - 1) / OVL_CHUNK_GROUP) * OVL_CHUNK_GROUP;
}
/* Bytes of the in-memory bitmap ovl_bitmap_decode fills: the flat bitmap, and for v2 at
 * least every chunk's bytes (so that bits past the last block can be seen and cleared). */
static inline uint64_t ovl_bitmap_mem_len(const struct ovl_hdr *h)
{
    uint64_t flat = ovl_flat_len(h->nblocks);

    if (h->version < 2)
        return flat;
    return MAX(flat, (ovl_nchunks(h->nblocks) * OVL_CHUNK_DATA + 4095) / 4096 * 4096);
}
/* The file offset of byte i of the flat bitmap. */
static inline uint64_t ovl_bitmap_byte_off(const struct ovl_hdr *h, uint64_t i)
{
    if (h->version < 2)
        return h->bitmap_off + i;
    return h->bitmap_off + i / OVL_CHUNK_DATA * OVL_CHUNK + i % OVL_CHUNK_DATA;
}
/* Fill h with the layout of a new version-2 overlay of size bytes in blocks of block_size. */
void ovl_hdr_init(struct ovl_hdr *h, uint64_t size, uint32_t block_size);
/* The bitmap length of an overlay of this version with nblocks blocks. */
uint64_t ovl_bitmap_len(uint32_t version, uint64_t nblocks);
/* Offset for old's new v2 bitmap of nblocks: clear of header, old bitmap, new data. */
uint64_t ovl_place_bitmap(const struct ovl_hdr *old, uint64_t nblocks);
/* Check size and block size; false + *errp ("what: reason"). */
bool ovl_check_geometry(const char *what, uint64_t size, uint64_t block_size, GError **errp);
/* Encode into buf (OVL_HEADER_SIZE bytes). */
void ovl_hdr_encode(const struct ovl_hdr *h, uint8_t *buf);
/* Decode and validate buf (len bytes read from offset 0 of a file of file_size bytes).
 * Errors name path, the offset and the reason. */
bool ovl_hdr_decode(const uint8_t *buf, size_t len, uint64_t file_size, const char *path,
                    struct ovl_hdr *h, GError **errp);
/* Encode chunk c of a v2 bitmap from the flat bitmap into out (OVL_CHUNK bytes). */
void ovl_chunk_encode(const uint8_t *flat, uint64_t c, uint8_t *out);
/* Encode the whole on-disk bitmap (h->bitmap_len bytes) from the flat one. */
void ovl_bitmap_encode(const struct ovl_hdr *h, const uint8_t *flat, uint8_t *out);
/* Decode disk into flat, bad v2 chunks left zero and counted; false + *errp (first one). */
bool ovl_bitmap_decode(const struct ovl_hdr *h, const uint8_t *disk, uint8_t *flat,
                       const char *path, uint64_t *nbad_chunks, GError **errp);
/* Validate a flat bitmap of ovl_bitmap_mem_len(h) bytes: no bits past the last block, and
 * every present block inside the file.  *bad = number of bad bits found (may be NULL). */
bool ovl_bitmap_check(const struct ovl_hdr *h, const uint8_t *bm, uint64_t file_size,
                      const char *path, uint64_t *bad, GError **errp);
/* Clear every bad bit ovl_bitmap_check would complain about; returns how many. */
uint64_t ovl_bitmap_repair(const struct ovl_hdr *h, uint8_t *bm, uint64_t file_size);
/* Number of bits set for blocks 0..nblocks-1. */
uint64_t ovl_count_present(const uint8_t *bm, uint64_t nblocks);
/* Create an overlay file (O_EXCL|O_NOFOLLOW, 0600), durably, recording a base; false. */
bool ovl_create_file(const char *path, uint64_t size, uint32_t block_size, uint64_t base_size,
                     uint64_t base_fp, GError **errp);
/* CRC-32 (IEEE) of len bytes (the header's checksum). */
uint32_t ovl_crc32(const uint8_t *p, size_t len);
/* CRC-32C (Castagnoli) of len bytes, table-driven (the bitmap chunks' checksum). */
uint32_t ovl_crc32c(const uint8_t *p, size_t len);
/* Read callback for ovl_fingerprint: len bytes at off into buf; 0 or -errno. */
typedef int ovl_read_fn(void *opaque, uint8_t *buf, uint64_t len, uint64_t off);
/* *fp of a stack of size bytes read with rd into buf (OVL_FP_SAMPLE bytes): 0 or -errno. */
int ovl_fingerprint(uint64_t size, ovl_read_fn *rd, void *opaque, uint8_t *buf, uint64_t *fp);

#endif
