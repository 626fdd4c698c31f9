/* SPDX-License-Identifier: MIT */
/* Zeroing and discarding decide per block: over a base holding data only in part, every
 * sparse layer of the stack (plain, write-through, over a read cache) keeps only the blocks
 * over that data, and a 64 GiB range stays fast. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include "t/unit/layers-test.h"
#include "t/unit/test-util.h"

#define BS (64u << 10)
#define SIZE (4u << 20)
#define NBLK (SIZE / BS)
#define MIB (1u << 20)

/* The base's data: blocks 4-6, 32 and 48 lie over it, the rest over holes. */
static const struct {
    uint64_t off, len;
} base_data[] = {
    { 300u << 10, 100u << 10 },
    { 2u << 20, 64u << 10 },
    { (3u << 20) + (8u << 10), 1024 },
};
#define OVER_DATA 5u

/* A stack shape, top first, over the raw base: FORMAT[-wt|-rc] words. */
static const char *const shapes[] = {
    "overlay",
    "ram",
    "ram-wt overlay",
    "overlay-wt overlay",
    "overlay ram-rc",
};

struct fixture {
    char *dir;
    char *base;
    uint8_t *want;          /* what the base holds */
};

static void fx_init(struct fixture *fx, uint64_t size)
{
    g_autoptr(GError) err = NULL;

    fx->dir = g_dir_make_tmp("layers-zero-XXXXXX", &err);
    g_assert_no_error(err);
    fx->base = g_build_filename(fx->dir, "base.raw", NULL);
    int fd = open(fx->base, O_WRONLY | O_CREAT | O_EXCL, 0600);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, (off_t)size), ==, 0);
    fx->want = size <= SIZE ? g_malloc0(size) : NULL;
    GRand *r = g_rand_new_with_seed(7);
    for (size_t i = 0; i < G_N_ELEMENTS(base_data); i++) {
        g_autofree uint8_t *buf = g_malloc(base_data[i].len);
        tu_fill_random(r, buf, base_data[i].len);
        g_assert_cmpint(pwrite(fd, buf, base_data[i].len, (off_t)base_data[i].off), ==,
                        (ssize_t)base_data[i].len);
        if (fx->want != NULL)
            memcpy(fx->want + base_data[i].off, buf, base_data[i].len);
    }
    g_rand_free(r);
    g_assert_cmpint(close(fd), ==, 0);
}

static void fx_free(struct fixture *fx)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", fx->dir);
    g_assert_cmpint(system(cmd), ==, 0);
    g_free(fx->dir);
    g_free(fx->base);
    g_free(fx->want);
}

/* The disk for shape over the fixture's base; overlay i is at DIR/i.ovl. */
static struct lf_disk_cfg *shape_cfg(const struct fixture *fx, const char *shape)
{
    g_auto(GStrv) words = g_strsplit(shape, " ", -1);
    struct lf_disk_cfg *cfg = lt_disk("z", false, NULL);

    for (unsigned i = 0; words[i] != NULL; i++) {
        g_auto(GStrv) w = g_strsplit(words[i], "-", 2);
        g_autofree char *name = g_strdup_printf("l%u", i);
        g_autofree char *path = g_strdup_printf("%s/%u.ovl", fx->dir, i);
        bool ovl = strcmp(w[0], "overlay") == 0;
        struct lf_layer_cfg *lc = lt_layer(name, w[0], ovl ? "file" : NULL,
                                           ovl ? path : NULL);
        lc->create = ovl;
        lc->block_size = BS;
        lc->write_through = w[1] != NULL && strcmp(w[1], "wt") == 0;
        lc->read_cache = w[1] != NULL && strcmp(w[1], "rc") == 0;
        g_ptr_array_add(cfg->layers, lc);
    }
    g_ptr_array_add(cfg->layers, lt_layer("base", "raw", "file", fx->base));
    return cfg;
}

static bool over_data(uint64_t b)
{
    for (size_t i = 0; i < G_N_ELEMENTS(base_data); i++)
        if (b * BS < base_data[i].off + base_data[i].len && base_data[i].off < (b + 1) * BS)
            return true;
    return false;
}

/* Blocks the top layer serves. */
static unsigned top_blocks(struct lf_disk *d)
{
    unsigned n = 0;

    for (uint64_t b = 0; b < NBLK; b++) {
        uint64_t pnum;
        if (lf_disk_map(d, b * BS, BS, &pnum) == 0)
            n++;
    }
    return n;
}

/* Blocks present in overlay i of the fixture, or -1 if there is none. */
static int64_t ovl_blocks(const struct fixture *fx, unsigned i)
{
    g_autofree char *path = g_strdup_printf("%s/%u.ovl", fx->dir, i);
    struct lf_img_info info;
    g_autoptr(GError) err = NULL;

    if (!g_file_test(path, G_FILE_TEST_EXISTS))
        return -1;
    g_assert_true(lf_img_info(path, &info, &err));
    return (int64_t)info.blocks_present;
}

static int do_discard(struct lf_disk *d, struct bc_loop *loop, uint64_t off, uint64_t len)
{
    struct bc_sync s;

    if (!bc_sync_begin(&s, loop, NULL))
        return -ENOMEM;
    lf_disk_discard(d, loop, off, len, bc_sync_cb, &s);
    int r = bc_sync_wait(&s);
    bc_sync_end(&s);
    return r;
}

enum how { HOW_ZERO, HOW_PUNCH, HOW_DISCARD };

/* Write 1 MiB over the base's hole (blocks 16-31), then zero, punch or discard the whole
 * disk: the sparse layers keep only blocks over the base's data (none for a discard, which
 * never writes), and the disk reads as zeros (a discard: each block as before or zeros). */
static void check_shape(const char *shape, enum how how)
{
    struct fixture fx;
    struct bc_loop *loop = bc_loop_current();
    g_autoptr(GError) err = NULL;

    fx_init(&fx, SIZE);
    struct lf_disk_cfg *cfg = shape_cfg(&fx, shape);
    struct lf_disk *d = lf_disk_open(cfg, false, &err);
    g_assert_no_error(err);
    g_autofree uint8_t *buf = g_malloc(SIZE);
    g_autofree uint8_t *before = g_malloc(SIZE);
    g_assert_cmpint(lt_read(d, loop, buf, SIZE, 0), ==, 0);   /* fills any read cache */
    g_assert_true(tu_cmp(buf, fx.want, SIZE, 0, "the base through the stack"));
    memset(buf, 0x5a, MIB);
    g_assert_cmpint(lt_write(d, loop, buf, MIB, MIB, 0), ==, 0);
    g_assert_cmpint(lt_read(d, loop, before, SIZE, 0), ==, 0);
    g_assert_cmpuint(top_blocks(d), ==, 16);

    int r = how == HOW_DISCARD ? do_discard(d, loop, 0, SIZE)
            : lt_zero(d, loop, 0, SIZE, how == HOW_PUNCH ? BC_REQ_MAY_UNMAP : 0);
    g_assert_cmpint(r, ==, 0);
    g_assert_cmpint(lt_read(d, loop, buf, SIZE, 0), ==, 0);
    unsigned want_top = how == HOW_DISCARD ? 0 : OVER_DATA;
    for (uint64_t b = 0; b < NBLK; b++) {
        uint64_t pnum;
        int l = lf_disk_map(d, b * BS, BS, &pnum);
        if (l == 0 && !over_data(b))
            g_test_fail_printf("%s: block %" PRIu64 " over a hole is present", shape, b);
        if (how != HOW_DISCARD) {
            g_autofree uint8_t *zero = g_malloc0(BS);
            if (memcmp(buf + b * BS, zero, BS) != 0)
                g_test_fail_printf("%s: block %" PRIu64 " does not read as zeros", shape, b);
        } else if (memcmp(buf + b * BS, before + b * BS, BS) != 0) {
            g_autofree uint8_t *zero = g_malloc0(BS);
            if (memcmp(buf + b * BS, zero, BS) != 0)
                g_test_fail_printf("%s: block %" PRIu64 " reads neither as before nor zeros",
                                   shape, b);
        }
    }
    /* The bottom of the write chain keeps exactly the blocks over data; a write-through
     * layer above it keeps at most those (none where the blocks below read as holes). */
    bool wt = strstr(shape, "-wt") != NULL;
    if (wt)
        g_assert_cmpuint(top_blocks(d), <=, want_top);
    else
        g_assert_cmpuint(top_blocks(d), ==, want_top);
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    lt_disk_free(cfg);
    for (unsigned i = 0; i < 2; i++) {
        int64_t n = ovl_blocks(&fx, i);
        if (n < 0)
            continue;
        if (wt && i == 0)
            g_assert_cmpint(n, <=, (int64_t)want_top);
        else if (i == (wt ? 1u : 0u))
            g_assert_cmpint(n, ==, (int64_t)want_top);
    }
    fx_free(&fx);
}

static void test_zero(gconstpointer data)
{
    check_shape(data, HOW_ZERO);
}

static void test_punch(gconstpointer data)
{
    check_shape(data, HOW_PUNCH);
}

static void test_discard(gconstpointer data)
{
    check_shape(data, HOW_DISCARD);
}

/* Punching all of a 64 GiB overlay (a million 64 KiB blocks) walks the base in extents:
 * it leaves the 5 blocks over data and takes well under the watchdog's time. */
static void test_big(void)
{
    struct fixture fx;
    struct bc_loop *loop = bc_loop_current();
    g_autoptr(GError) err = NULL;
    const uint64_t big = 64ull << 30;

    fx_init(&fx, big);
    struct lf_disk_cfg *cfg = shape_cfg(&fx, "overlay");
    struct lf_disk *d = lf_disk_open(cfg, false, &err);
    g_assert_no_error(err);
    gint64 t0 = g_get_monotonic_time();
    g_assert_cmpint(lt_zero(d, loop, 0, big, BC_REQ_MAY_UNMAP), ==, 0);
    gint64 us = g_get_monotonic_time() - t0;
    g_test_message("punching 64 GiB took %" G_GINT64_FORMAT " us", us);
    g_assert_cmpint(us, <, 10 * G_USEC_PER_SEC);
    g_assert_cmpint(lf_disk_close(d), ==, 0);
    lt_disk_free(cfg);
    g_assert_cmpint(ovl_blocks(&fx, 0), ==, OVER_DATA);
    fx_free(&fx);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv, 300);
    struct bc_loop *loop = bc_loop_new(0, 256, NULL);
    g_assert_nonnull(loop);
    for (size_t i = 0; i < G_N_ELEMENTS(shapes); i++) {
        g_autofree char *z = g_strdup_printf("/layers/zero/per-block/%s", shapes[i]);
        g_autofree char *p = g_strdup_printf("/layers/punch/per-block/%s", shapes[i]);
        g_autofree char *dc = g_strdup_printf("/layers/discard/per-block/%s", shapes[i]);
        g_strdelimit(z, " ", '+');
        g_strdelimit(p, " ", '+');
        g_strdelimit(dc, " ", '+');
        tu_add_isolated_data(z, shapes[i], test_zero);
        tu_add_isolated_data(p, shapes[i], test_punch);
        tu_add_isolated_data(dc, shapes[i], test_discard);
    }
    tu_add_isolated("/layers/punch/big-range", test_big);
    int rc = g_test_run();
    bc_loop_free(loop);
    return rc;
}
