/* SPDX-License-Identifier: MIT */
/* Corrupted and truncated overlay files give clear errors (file, offset, reason) and never
 * crash; a deterministic mutation loop fuzzes the header and bitmap parser. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "layers/overlay-format.h"
#include "t/unit/layers-test.h"
#include "t/unit/test-util.h"

static char *dir;
static char *opath;
static uint8_t *image;      /* a valid overlay file with some blocks present */
static size_t image_len;

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

static void fix_crc(uint8_t *h)
{
    put32(h + 68, 0);
    put32(h + 68, ovl_crc32(h, OVL_HEADER_USED));
}

/* Give chunk c of the (version 2) bitmap a valid checksum again. */
static void fix_chunk(uint8_t *img, uint64_t c)
{
    uint8_t *p = img + OVL_HEADER_SIZE + c * OVL_CHUNK;

    put32(p + OVL_CHUNK - 4, ovl_crc32c(p, OVL_CHUNK - 4));
}

static void make_image(void)
{
    g_autofree char *bpath = g_build_filename(dir, "base.raw", NULL);
    g_free(lt_make_file(bpath, 1u << 20, 21));
    struct lf_layer_cfg *top = lt_layer("top", "overlay", "file", opath);
    top->create = true;
    top->block_size = 4096;
    struct lf_disk_cfg *cfg = lt_disk("img", false, top,
                                      lt_layer("base", "raw", "file", bpath), NULL);
    g_autoptr(GError) err = NULL;
    struct lf_disk *d = lf_disk_open(cfg, false, &err);
    g_assert_no_error(err);
    uint8_t buf[10000];
    memset(buf, 0x5a, sizeof(buf));
    for (uint64_t off = 0; off < (1u << 20); off += 150000)
        g_assert_cmpint(lt_write(d, bc_loop_current(), buf, sizeof(buf), off, 0), ==, 0);
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    lt_disk_free(cfg);
    image = lt_slurp(opath, &image_len);
}

/* Write img (len bytes) as the overlay file and open it alone; returns the error or NULL. */
static GError *open_image(const uint8_t *img, size_t len)
{
    GError *err = NULL;

    unlink(opath);
    g_assert_true(g_file_set_contents(opath, (const char *)img, (gssize)len, NULL));
    struct lf_disk_cfg *cfg = lt_disk("c", true, lt_layer("ovl", "overlay", "file", opath),
                                      NULL);
    struct lf_disk *d = lf_disk_open(cfg, true, &err);
    if (d != NULL) {
        uint8_t buf[4096];
        g_assert_cmpint(lt_read(d, bc_loop_current(), buf, sizeof(buf), 0), ==, 0);
        g_assert_cmpint(lf_disk_close(d), ==, 0);
    }
    lt_disk_free(cfg);
    return err;
}

static void expect(const uint8_t *img, size_t len, const char *const *needles)
{
    g_autoptr(GError) err = open_image(img, len);

    if (err == NULL)
        g_error("opened a corrupt overlay without error (expected '%s')", needles[0]);
    g_test_message("%s", err->message);
    g_assert_nonnull(strstr(err->message, opath));
    for (; *needles; needles++)
        if (strstr(err->message, *needles) == NULL)
            g_error("error '%s' does not mention '%s'", err->message, *needles);
}

#define EXPECT(img, len, ...) expect(img, len, (const char *const[]){ __VA_ARGS__, NULL })

static void test_valid(void)
{
    g_autoptr(GError) err = open_image(image, image_len);
    g_assert_no_error(err);
}

static void test_truncated(void)
{
    EXPECT(image, 0, "truncated", "header");
    EXPECT(image, 100, "truncated", "header");
    EXPECT(image, 4096 + 100, "truncated", "bitmap");
    EXPECT(image, image_len - 4096, "truncated", "data region");
}

static void test_header_fields(void)
{
    g_autofree uint8_t *m = g_memdup2(image, image_len);

    memcpy(m, "NOTOVRL\n", 8);
    EXPECT(m, image_len, "bad magic", "offset 0");

    memcpy(m, image, image_len);
    put32(m + 8, 3);
    fix_crc(m);
    EXPECT(m, image_len, "offset 8", "version 3");

    memcpy(m, image, image_len);
    m[17] ^= 1;     /* size changed, checksum not updated */
    EXPECT(m, image_len, "offset 68", "checksum");

    memcpy(m, image, image_len);
    put32(m + 24, 1000);
    fix_crc(m);
    EXPECT(m, image_len, "offset 24", "block size 1000");

    memcpy(m, image, image_len);
    put32(m + 28, 0x80);
    fix_crc(m);
    EXPECT(m, image_len, "offset 28", "flags");

    memcpy(m, image, image_len);
    put64(m + 32, 7);
    fix_crc(m);
    EXPECT(m, image_len, "offset 32", "block count");

    memcpy(m, image, image_len);
    put64(m + 16, 0);
    fix_crc(m);
    EXPECT(m, image_len, "offset 16", "virtual size");

    memcpy(m, image, image_len);
    put64(m + 56, 12345);
    fix_crc(m);
    EXPECT(m, image_len, "offset 56", "data offset");

    memcpy(m, image, image_len);
    m[100] = 1;
    fix_crc(m);
    EXPECT(m, image_len, "offset 100", "reserved");
}

static void test_bitmap(void)
{
    g_autofree uint8_t *m = g_memdup2(image, image_len);
    /* 1 MiB in 4 KiB blocks: 256 blocks, 32 bitmap bytes; set a bit past the last block. */
    m[4096 + 40] = 0x10;
    EXPECT(m, image_len, "bitmap chunk at offset 4096", "checksum", "blocks 0 to 255");
    fix_chunk(m, 0);
    EXPECT(m, image_len, "bitmap at offset 4136", "block 324", "256 blocks");
    /* A valid chunk in the wrong place. */
    memcpy(m, image, image_len);
    put32(m + 4096 + OVL_CHUNK_DATA, 7);
    fix_chunk(m, 0);
    EXPECT(m, image_len, "bitmap chunk at offset 4096", "chunk number 7, expected 0");
}

/* Deterministic mutations of header and bitmap through the pure parser, plus a sample of
 * full opens: every outcome is an error message or a consistent overlay, never a crash. */
static void test_fuzz(void)
{
    GRand *r = g_rand_new_with_seed(tu_seed(31));
    unsigned iters = g_test_slow() ? 1000000 : 100000, accepted = 0;
    size_t cap = MIN(image_len, (size_t)3 * 4096);
    g_autofree uint8_t *m = g_malloc(cap);

    for (unsigned i = 0; i < iters; i++) {
        memcpy(m, image, cap);
        unsigned nflip = (unsigned)g_rand_int_range(r, 1, 9);
        for (unsigned k = 0; k < nflip; k++) {
            size_t at = g_rand_boolean(r) ? (size_t)g_rand_int_range(r, 0, OVL_HEADER_USED)
                                          : (size_t)g_rand_int_range(r, 0, (gint32)cap);
            m[at] = g_rand_boolean(r) ? (uint8_t)g_rand_int(r) : (uint8_t)(m[at] ^ (1u << g_rand_int_range(r, 0, 8)));
        }
        if (g_rand_int_range(r, 0, 3) != 0)
            fix_crc(m);
        size_t len = g_rand_int_range(r, 0, 8) == 0 ? (size_t)g_rand_int_range(r, 0, (gint32)cap)
                                                    : cap;
        uint64_t fsize = g_rand_int_range(r, 0, 8) == 0 ? g_rand_int(r) : image_len;
        struct ovl_hdr h;
        GError *err = NULL;
        if (!ovl_hdr_decode(m, len, fsize, "fuzz", &h, &err)) {
            g_assert_nonnull(err);
            g_assert_true(g_str_has_prefix(err->message, "fuzz: "));
            g_error_free(err);
            continue;
        }
        g_assert_cmpuint(h.bitmap_off + h.bitmap_len, <=, fsize);
        if (h.bitmap_off + h.bitmap_len <= len) {
            uint64_t bad = 0;
            g_autofree uint8_t *flat = g_malloc(ovl_bitmap_mem_len(&h));
            if (!ovl_bitmap_decode(&h, m + h.bitmap_off, flat, "fuzz", NULL, &err)) {
                g_assert_true(g_str_has_prefix(err->message, "fuzz: corrupt overlay bitmap"));
                g_clear_error(&err);
            }
            if (!ovl_bitmap_check(&h, flat, fsize, "fuzz", &bad, &err)) {
                g_assert_cmpuint(bad, >, 0);
                g_error_free(err);
            }
        }
        accepted++;
    }
    g_test_message("%u of %u mutated headers accepted by the parser", accepted, iters);

    /* A sample through the whole open path (files, blockcore, lf_disk). */
    g_autofree uint8_t *f = g_malloc(image_len);
    for (unsigned i = 0; i < 150; i++) {
        memcpy(f, image, image_len);
        unsigned nflip = (unsigned)g_rand_int_range(r, 1, 5);
        for (unsigned k = 0; k < nflip; k++) {
            size_t at = (size_t)g_rand_int_range(r, 0, 4096 + 64);
            f[at] ^= (uint8_t)g_rand_int_range(r, 1, 256);
        }
        if (g_rand_boolean(r))
            fix_crc(f);
        GError *err = open_image(f, g_rand_int_range(r, 0, 6) == 0
                                        ? (size_t)g_rand_int_range(r, 0, (gint32)image_len)
                                        : image_len);
        if (err != NULL) {
            g_assert_nonnull(strstr(err->message, opath));
            g_error_free(err);
        }
    }
    g_rand_free(r);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv, 300);
    struct bc_loop *loop = bc_loop_new(0, 64, NULL);
    g_autoptr(GError) err = NULL;
    dir = g_dir_make_tmp("layers-overlay-XXXXXX", &err);
    g_assert_no_error(err);
    opath = g_build_filename(dir, "o.ovl", NULL);
    make_image();
    tu_add_isolated("/layers/overlay/valid", test_valid);
    tu_add_isolated("/layers/overlay/truncated", test_truncated);
    tu_add_isolated("/layers/overlay/header-fields", test_header_fields);
    tu_add_isolated("/layers/overlay/bitmap", test_bitmap);
    tu_add_isolated("/layers/overlay/fuzz", test_fuzz);
    int rc = g_test_run();
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", dir);
    if (rc == 0 && system(cmd) != 0)
        rc = 1;
    bc_loop_free(loop);
    g_free(image);
    return rc;
}
