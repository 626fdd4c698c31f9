/* SPDX-License-Identifier: MIT */
/* The on-disk overlay format: encode, decode and validate headers and bitmaps, create files.
 * See overlay-format.h for the layout and man/layerfs-overlay.5 for the rules. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <string.h>
#include <unistd.h>

#include "layers/layers.h"
#include "layers/overlay-format.h"

/* Every block size the configuration accepts must make a valid overlay. */
G_STATIC_ASSERT(OVL_MIN_BLOCK <= LF_MIN_BLOCK_SIZE && LF_MAX_BLOCK_SIZE <= OVL_MAX_BLOCK);

uint32_t ovl_crc32(const uint8_t *p, size_t len)
{
    uint32_t crc = 0xffffffffu;

    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1)));
    }
    return ~crc;
}

uint32_t ovl_crc32c(const uint8_t *p, size_t len)
{
    static uint32_t table[256];
    static gsize once;
    uint32_t crc = 0xffffffffu;

    if (g_once_init_enter(&once)) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
            table[i] = c;
        }
        g_once_init_leave(&once, 1);
    }
    for (size_t i = 0; i < len; i++)
        crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

uint64_t ovl_bitmap_len(uint32_t version, uint64_t nblocks)
{
    return version < 2 ? ovl_flat_len(nblocks) : ovl_nchunks(nblocks) * OVL_CHUNK;
}

/* The layout a header of this version, size and block size has when made by create. */
static void layout(struct ovl_hdr *h, uint32_t version, uint64_t size, uint32_t block_size)
{
    memset(h, 0, sizeof(*h));
    h->version = version;
    h->size = size;
    h->block_size = block_size;
    h->nblocks = (size + block_size - 1) / block_size;
    h->bitmap_off = OVL_HEADER_SIZE;
    h->bitmap_len = ovl_bitmap_len(version, h->nblocks);
    h->data_off = round_up(h->bitmap_off + h->bitmap_len, MAX(block_size, 4096u));
}

void ovl_hdr_init(struct ovl_hdr *h, uint64_t size, uint32_t block_size)
{
    layout(h, OVL_VERSION, size, block_size);
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

uint64_t ovl_place_bitmap(const struct ovl_hdr *old, uint64_t nblocks)
{
    uint64_t len = ovl_bitmap_len(2, nblocks);
    uint64_t data_end = old->data_off + nblocks * old->block_size;
    uint64_t cand[2] = { OVL_HEADER_SIZE, round_up(old->bitmap_off + old->bitmap_len, 4096) };

    /* Before the data region if there is room beside the old bitmap ... */
    for (int i = 0; i < 2; i++)
        if (cand[i] + len <= old->data_off &&
            !overlaps(cand[i], len, old->bitmap_off, old->bitmap_len))
            return cand[i];
    /* ... else after both the new data region and the old bitmap. */
    return round_up(MAX(data_end, old->bitmap_off + old->bitmap_len), 4096);
}

bool ovl_check_geometry(const char *what, uint64_t size, uint64_t block_size, GError **errp)
{
    if (block_size < OVL_MIN_BLOCK || block_size > OVL_MAX_BLOCK ||
        (block_size & (block_size - 1)) != 0) {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s: block size %" PRIu64 " is not a power of two from %u to %u", what,
                    block_size, OVL_MIN_BLOCK, OVL_MAX_BLOCK);
        return false;
    }
    if (size == 0 || size > OVL_MAX_SIZE) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s: size %" PRIu64 " is not between 1 and 2^60",
                    what, size);
        return false;
    }
    if (ovl_bitmap_len(OVL_VERSION, (size + block_size - 1) / block_size) > OVL_MAX_BITMAP) {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s: %" PRIu64 " blocks of %" PRIu64 " bytes need a larger bitmap than "
                    "this program loads; use a larger block size", what, size / block_size,
                    block_size);
        return false;
    }
    return true;
}

void ovl_hdr_encode(const struct ovl_hdr *h, uint8_t *buf)
{
    memset(buf, 0, OVL_HEADER_SIZE);
    memcpy(buf, OVL_MAGIC, 8);
    put32(buf + 8, h->version);
    put32(buf + 12, OVL_HEADER_SIZE);
    put64(buf + 16, h->size);
    put32(buf + 24, h->block_size);
    put32(buf + 28, h->flags);
    put64(buf + 32, h->nblocks);
    put64(buf + 40, h->bitmap_off);
    put64(buf + 48, h->bitmap_len);
    put64(buf + 56, h->data_off);
    put32(buf + 64, 0);
    if (h->version >= 2) {
        put64(buf + 72, h->base_size);
        put64(buf + 80, h->base_fp);
    }
    put32(buf + 68, ovl_crc32(buf, OVL_HEADER_USED));
}

#define BAD(off, ...)                                                                  \
    do {                                                                               \
        g_autofree char *why_ = g_strdup_printf(__VA_ARGS__);                          \
        g_set_error(errp, LF_ERROR, EINVAL, "%s: corrupt overlay header at offset %u: %s", \
                    path, (unsigned)(off), why_);                                      \
        return false;                                                                  \
    } while (0)

bool ovl_hdr_decode(const uint8_t *buf, size_t len, uint64_t file_size, const char *path,
                    struct ovl_hdr *h, GError **errp)
{
    uint8_t tmp[OVL_HEADER_USED];

    if (file_size < OVL_HEADER_SIZE || len < OVL_HEADER_USED) {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s: truncated overlay: the file is %" PRIu64 " bytes, the header alone "
                    "needs %u", path, MIN(file_size, (uint64_t)len), OVL_HEADER_SIZE);
        return false;
    }
    if (memcmp(buf, OVL_MAGIC, 8) != 0) {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s: not a layerfs overlay: bad magic at offset 0", path);
        return false;
    }
    memset(h, 0, sizeof(*h));
    h->version = get32(buf + 8);
    if (h->version != 1 && h->version != 2)
        BAD(8, "unsupported version %u (this program reads versions 1 and 2)", h->version);
    memcpy(tmp, buf, sizeof(tmp));
    put32(tmp + 68, 0);
    uint32_t want = get32(buf + 68), got = ovl_crc32(tmp, sizeof(tmp));
    if (want != got)
        BAD(68, "header checksum is %08x but the header's contents sum to %08x", want, got);
    if (get32(buf + 12) != OVL_HEADER_SIZE)
        BAD(12, "header size %u, expected %u", get32(buf + 12), OVL_HEADER_SIZE);
    h->size = get64(buf + 16);
    h->block_size = get32(buf + 24);
    h->flags = get32(buf + 28);
    h->nblocks = get64(buf + 32);
    h->bitmap_off = get64(buf + 40);
    h->bitmap_len = get64(buf + 48);
    h->data_off = get64(buf + 56);
    if (h->size == 0 || h->size > OVL_MAX_SIZE)
        BAD(16, "virtual size %" PRIu64 " is not between 1 and 2^60", h->size);
    if (h->block_size < OVL_MIN_BLOCK || h->block_size > OVL_MAX_BLOCK ||
        (h->block_size & (h->block_size - 1)) != 0)
        BAD(24, "block size %u is not a power of two from %u to %u", h->block_size,
            OVL_MIN_BLOCK, OVL_MAX_BLOCK);
    if (h->flags & ~(uint32_t)OVL_FLAGS_KNOWN)
        BAD(28, "unknown flags 0x%x", h->flags & ~(uint32_t)OVL_FLAGS_KNOWN);
    struct ovl_hdr ref;
    layout(&ref, h->version, h->size, h->block_size);
    if (h->nblocks != ref.nblocks)
        BAD(32, "block count %" PRIu64 " does not match size/block size (%" PRIu64 ")",
            h->nblocks, ref.nblocks);
    if (h->bitmap_len != ref.bitmap_len)
        BAD(48, "bitmap length %" PRIu64 ", expected %" PRIu64, h->bitmap_len, ref.bitmap_len);
    if (h->bitmap_len > OVL_MAX_BITMAP)
        BAD(48, "a bitmap of %" PRIu64 " bytes is larger than this program loads (%llu)",
            h->bitmap_len, OVL_MAX_BITMAP);
    if (h->version == 1) {
        if (h->bitmap_off != ref.bitmap_off)
            BAD(40, "bitmap offset %" PRIu64 ", expected %" PRIu64, h->bitmap_off,
                ref.bitmap_off);
        if (h->data_off != ref.data_off)
            BAD(56, "data offset %" PRIu64 ", expected %" PRIu64, h->data_off, ref.data_off);
    } else {
        /* Resizes and upgrades move the bitmap: any 4096-aligned place clear of the header
         * and the data region. */
        if (h->bitmap_off < OVL_HEADER_SIZE || h->bitmap_off % 4096 != 0 ||
            h->bitmap_off > OVL_MAX_OFFSET)
            BAD(40, "bitmap offset %" PRIu64 " is not a multiple of 4096 from %u to 2^62",
                h->bitmap_off, OVL_HEADER_SIZE);
        uint64_t align = MAX(h->block_size, 4096u);
        if (h->data_off < OVL_HEADER_SIZE || h->data_off % align != 0 ||
            h->data_off > OVL_MAX_OFFSET)
            BAD(56, "data offset %" PRIu64 " is not a multiple of %" PRIu64 " from %u to 2^62",
                h->data_off, align, OVL_HEADER_SIZE);
        if (overlaps(h->bitmap_off, h->bitmap_len, h->data_off, h->nblocks * h->block_size))
            BAD(40, "the bitmap at offset %" PRIu64 " overlaps the data region at %" PRIu64
                "..%" PRIu64, h->bitmap_off, h->data_off,
                h->data_off + h->nblocks * h->block_size);
    }
    if (get32(buf + 64) != 0)
        BAD(64, "unknown incompatible features 0x%x", get32(buf + 64));
    if (h->version >= 2) {
        h->base_size = get64(buf + 72);
        h->base_fp = get64(buf + 80);
    }
    for (unsigned i = h->version >= 2 ? 88 : 72; i < OVL_HEADER_USED; i++)
        if (buf[i] != 0)
            BAD(i, "reserved byte is not zero");
    if (file_size < h->bitmap_off + h->bitmap_len) {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s: truncated overlay: the bitmap ends at offset %" PRIu64
                    " but the file is %" PRIu64 " bytes", path, h->bitmap_off + h->bitmap_len,
                    file_size);
        return false;
    }
    return true;
}

void ovl_chunk_encode(const uint8_t *flat, uint64_t c, uint8_t *out)
{
    memcpy(out, flat + c * OVL_CHUNK_DATA, OVL_CHUNK_DATA);
    put32(out + OVL_CHUNK_DATA, (uint32_t)c);
    put32(out + OVL_CHUNK - 4, ovl_crc32c(out, OVL_CHUNK - 4));
}

void ovl_bitmap_encode(const struct ovl_hdr *h, const uint8_t *flat, uint8_t *out)
{
    if (h->version < 2) {
        memcpy(out, flat, h->bitmap_len);
        return;
    }
    for (uint64_t c = 0; c < h->bitmap_len / OVL_CHUNK; c++)
        ovl_chunk_encode(flat, c, out + c * OVL_CHUNK);
}

bool ovl_bitmap_decode(const struct ovl_hdr *h, const uint8_t *disk, uint8_t *flat,
                       const char *path, uint64_t *nbad_chunks, GError **errp)
{
    uint64_t nbad = 0;

    memset(flat, 0, ovl_bitmap_mem_len(h));
    if (h->version < 2) {
        memcpy(flat, disk, h->bitmap_len);
    } else {
        for (uint64_t c = 0; c < h->bitmap_len / OVL_CHUNK; c++) {
            const uint8_t *p = disk + c * OVL_CHUNK;
            uint32_t want = get32(p + OVL_CHUNK - 4), got = ovl_crc32c(p, OVL_CHUNK - 4);
            g_autofree char *why = NULL;
            if (want != got)
                why = g_strdup_printf("checksum is %08x but the chunk's contents sum to %08x",
                                      want, got);
            else if (get32(p + OVL_CHUNK_DATA) != c)
                why = g_strdup_printf("it holds chunk number %u, expected %" PRIu64,
                                      get32(p + OVL_CHUNK_DATA), c);
            if (why == NULL) {
                memcpy(flat + c * OVL_CHUNK_DATA, p, OVL_CHUNK_DATA);
                continue;
            }
            if (nbad++ == 0) {
                uint64_t b0 = c * OVL_CHUNK_DATA * 8;
                g_set_error(errp, LF_ERROR, EINVAL,
                            "%s: corrupt overlay bitmap chunk at offset %" PRIu64 ": %s "
                            "(it covers blocks %" PRIu64 " to %" PRIu64 "; layerfs-img "
                            "check --repair drops them)", path, h->bitmap_off + c * OVL_CHUNK,
                            why, b0, MIN(b0 + OVL_CHUNK_DATA * 8, h->nblocks) - 1);
            }
        }
    }
    if (nbad_chunks != NULL)
        *nbad_chunks = nbad;
    return nbad == 0;
}

/* Visit each bad bit: past the last block, or a present block whose data is past EOF. */
static uint64_t scan_bad(const struct ovl_hdr *h, uint8_t *bm, uint64_t file_size, bool fix,
                         uint64_t *first)
{
    uint64_t bad = 0;
    uint64_t in_file = file_size > h->data_off ? (file_size - h->data_off) / h->block_size : 0;

    for (uint64_t i = 0; i < ovl_bitmap_mem_len(h); i++) {
        if (bm[i] == 0)
            continue;
        for (unsigned k = 0; k < 8; k++) {
            uint64_t b = i * 8 + k;
            if (!((bm[i] >> k) & 1) || (b < h->nblocks && b < in_file))
                continue;
            if (bad++ == 0 && first != NULL)
                *first = b;
            if (fix)
                bm[i] &= (uint8_t)~(1u << k);
        }
    }
    return bad;
}

bool ovl_bitmap_check(const struct ovl_hdr *h, const uint8_t *bm, uint64_t file_size,
                      const char *path, uint64_t *bad, GError **errp)
{
    uint64_t first = 0;
    uint64_t n = scan_bad(h, (uint8_t *)bm, file_size, false, &first);

    if (bad != NULL)
        *bad = n;
    if (n == 0)
        return true;
    if (first >= h->nblocks)
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s: corrupt overlay bitmap at offset %" PRIu64 ": block %" PRIu64
                    " is marked present but the overlay has only %" PRIu64 " blocks "
                    "(%" PRIu64 " bad bits; layerfs-img check --repair clears them)",
                    path, ovl_bitmap_byte_off(h, first / 8), first, h->nblocks, n);
    else
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s: corrupt overlay bitmap at offset %" PRIu64 ": block %" PRIu64
                    " is marked present but its data (offset %" PRIu64 ") is past the end "
                    "of the %" PRIu64 "-byte file (%" PRIu64 " bad bits; layerfs-img check "
                    "--repair clears them)", path, ovl_bitmap_byte_off(h, first / 8), first,
                    h->data_off + first * h->block_size, file_size, n);
    return false;
}

uint64_t ovl_bitmap_repair(const struct ovl_hdr *h, uint8_t *bm, uint64_t file_size)
{
    return scan_bad(h, bm, file_size, true, NULL);
}

uint64_t ovl_count_present(const uint8_t *bm, uint64_t nblocks)
{
    uint64_t n = 0;

    for (uint64_t i = 0; i < nblocks / 8; i++)
        n += (uint64_t)__builtin_popcount(bm[i]);
    for (uint64_t b = nblocks / 8 * 8; b < nblocks; b++)
        n += (bm[b >> 3] >> (b & 7)) & 1;
    return n;
}

/* fsync the directory holding path, so a new file's name is durable. */
static int sync_dir(const char *path)
{
    g_autofree char *dir = g_path_get_dirname(path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int r = 0;

    if (fd < 0)
        return -errno;
    if (fsync(fd) < 0)
        r = -errno;
    close(fd);
    return r;
}

bool ovl_create_file(const char *path, uint64_t size, uint32_t block_size, uint64_t base_size,
                     uint64_t base_fp, GError **errp)
{
    struct ovl_hdr h;
    uint8_t buf[OVL_HEADER_SIZE];
    const char *step;

    if (!ovl_check_geometry(path, size, block_size, errp))
        return false;
    ovl_hdr_init(&h, size, block_size);
    h.base_size = base_size;
    h.base_fp = base_fp;
    ovl_hdr_encode(&h, buf);
    g_autofree uint8_t *flat = g_malloc0(ovl_bitmap_mem_len(&h));
    g_autofree uint8_t *bm = g_malloc(h.bitmap_len);
    ovl_bitmap_encode(&h, flat, bm);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        g_set_error(errp, LF_ERROR, errno, "%s: cannot create overlay: %s", path,
                    g_strerror(errno));
        return false;
    }
    step = "write header";
    if (pwrite(fd, buf, sizeof(buf), 0) != (ssize_t)sizeof(buf))
        goto fail;
    /* Every chunk carries its checksum, even an empty one. */
    step = "write bitmap";
    if (pwrite(fd, bm, h.bitmap_len, (off_t)h.bitmap_off) != (ssize_t)h.bitmap_len)
        goto fail;
    /* The file has its full size from the start, all holes: every block absent. */
    step = "set size";
    if (ftruncate(fd, (off_t)ovl_file_size(&h)) < 0)
        goto fail;
    step = "fsync";
    if (fsync(fd) < 0)
        goto fail;
    close(fd);
    int r = sync_dir(path);
    if (r < 0) {
        g_set_error(errp, LF_ERROR, -r, "%s: cannot sync its directory: %s", path,
                    g_strerror(-r));
        return false;
    }
    return true;

fail:;
    int e = errno ? errno : EIO;
    close(fd);
    unlink(path);
    g_set_error(errp, LF_ERROR, e, "%s: cannot create overlay (%s): %s", path, step,
                g_strerror(e));
    return false;
}

/* The sample offsets for a stack of size bytes, sorted and distinct; returns the count. */
static unsigned fp_samples(uint64_t size, uint64_t *offs)
{
    uint64_t c[OVL_FP_MAX_SAMPLES];
    unsigned n = 0, m = 0;

    c[n++] = 0;
    c[n++] = 64u << 10;     /* superblocks of several file systems */
    c[n++] = 1u << 20;      /* where the first partition usually starts */
    for (unsigned i = 1; i < 16; i++)
        c[n++] = (uint64_t)((unsigned __int128)size * i / 16) / OVL_FP_SAMPLE * OVL_FP_SAMPLE;
    c[n++] = size > OVL_FP_SAMPLE ? (size - OVL_FP_SAMPLE) / OVL_FP_SAMPLE * OVL_FP_SAMPLE : 0;
    for (unsigned i = 0; i < n; i++) {      /* insertion sort, dropping repeats */
        unsigned j = i;
        while (j > 0 && c[j - 1] > c[j]) {
            uint64_t t = c[j];
            c[j] = c[j - 1];
            c[j - 1] = t;
            j--;
        }
    }
    for (unsigned i = 0; i < n; i++)
        if (c[i] < size && (m == 0 || offs[m - 1] != c[i]))
            offs[m++] = c[i];
    return m;
}

static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* FNV-1a 64 over the size (u64, little-endian) and then the bytes of each sample of
 * OVL_FP_SAMPLE bytes (fewer at the end) at the offsets fp_samples() gives, in order;
 * cheap (at most 19 reads of 4 KiB) and blind to anything between the samples. */
int ovl_fingerprint(uint64_t size, ovl_read_fn *rd, void *opaque, uint8_t *buf, uint64_t *fp)
{
    uint64_t offs[OVL_FP_MAX_SAMPLES];
    unsigned n = fp_samples(size, offs);
    uint8_t le[8];
    uint64_t h = 0xcbf29ce484222325ull;

    put64(le, size);
    h = fnv1a(h, le, sizeof(le));
    for (unsigned i = 0; i < n; i++) {
        uint64_t len = MIN(OVL_FP_SAMPLE, size - offs[i]);
        int r = rd(opaque, buf, len, offs[i]);
        if (r < 0)
            return r;
        h = fnv1a(h, buf, len);
    }
    *fp = h;
    return 0;
}
