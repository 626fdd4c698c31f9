/* SPDX-License-Identifier: MIT */
/* Randomized model test of whole layer stacks (2-4 layers, raw/overlay/ram, mixed sizes and
 * block sizes, write-through and read-cache) through lf_disk_*, against a byte model. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "t/unit/layers-test.h"
#include "t/unit/test-util.h"

enum kind { K_READ, K_WRITE, K_ZERO, K_DISCARD, K_FLUSH };

struct op {
    enum kind kind;
    uint64_t off, len;
    uint8_t *buf;
    struct iovec iov[TU_MAX_IOV];
    int iovcnt;
    struct tu_io io;
};

struct stack {
    char *dir;
    struct lf_disk_cfg *cfg;
    struct lf_disk *disk;
    bool volatile_layers;   /* a ram layer: cannot reopen */
    char desc[512];
};

static uint64_t rsize(GRand *r)
{
    static const uint64_t sizes[] = { 192 << 10, 256 << 10, 512 << 10, 1 << 20, 3 << 20 };
    uint64_t s = sizes[g_rand_int_range(r, 0, G_N_ELEMENTS(sizes))];
    if (g_rand_boolean(r))
        s += (uint64_t)g_rand_int_range(r, 1, 64) * 512;
    return s;
}

/* Build a random valid stack in dir; fills model with what it shows initially. */
static void build(struct stack *st, GRand *r, struct tu_model *m)
{
    unsigned n = (unsigned)g_rand_int_range(r, 2, 5);
    struct lf_layer_cfg *lcs[4] = { 0 };
    uint64_t sizes[4];
    char *p = st->desc;

    /* Bottom: a raw file with random contents. */
    uint64_t base_size = rsize(r);
    g_autofree char *base = g_build_filename(st->dir, "base.raw", NULL);
    g_autofree uint8_t *data = lt_make_file(base, base_size, g_rand_int(r) | 1);
    lcs[n - 1] = lt_layer("base", "raw", "file", base);
    sizes[n - 1] = base_size;
    p += sprintf(p, "base raw %" PRIu64, base_size);

    unsigned nwt = (unsigned)g_rand_int_range(r, 0, (gint32)n);   /* write-through run */
    if (g_rand_int_range(r, 0, 3) != 0)
        nwt = 0;
    st->volatile_layers = false;
    for (unsigned i = n - 1; i-- > 0;) {
        g_autofree char *name = g_strdup_printf("l%u", i);
        bool ram = g_rand_int_range(r, 0, 3) == 0;
        uint64_t bs = 1u << g_rand_int_range(r, 12, 17);
        if (ram) {
            lcs[i] = lt_layer(name, "ram", NULL, NULL);
            st->volatile_layers = true;
            sizes[i] = sizes[i + 1];
        } else {
            g_autofree char *path = g_strdup_printf("%s/%s.ovl", st->dir, name);
            lcs[i] = lt_layer(name, "overlay", "file", path);
            lcs[i]->create = true;
            sizes[i] = sizes[i + 1];
            if (g_rand_int_range(r, 0, 3) == 0) {
                sizes[i] = rsize(r);
                g_autofree char *s = g_strdup_printf("%" PRIu64, sizes[i]);
                lt_opt(lcs[i], "size", s);
            }
        }
        lcs[i]->block_size = bs;
        lcs[i]->allow_smaller = true;   /* mixed sizes are the point */
        lcs[i]->write_through = i < nwt;
        lcs[i]->read_cache = g_rand_int_range(r, 0, 3) == 0;
        p += sprintf(p, " / %s %s %" PRIu64 " bs=%" PRIu64 "%s%s", name, ram ? "ram" : "overlay",
                     sizes[i], bs, lcs[i]->write_through ? " wt" : "",
                     lcs[i]->read_cache ? " rc" : "");
    }
    st->cfg = lt_disk("model", false, lcs[0], n > 1 ? lcs[1] : NULL, n > 2 ? lcs[2] : NULL,
                      n > 3 ? lcs[3] : NULL, NULL);

    uint64_t visible = sizes[0];
    for (unsigned i = 0; i < n; i++)
        visible = MIN(visible, sizes[i]);
    tu_model_init(m, sizes[0], true);
    memcpy(m->data, data, MIN(visible, base_size));
}

static bool open_stack(struct stack *st)
{
    g_autoptr(GError) err = NULL;

    st->disk = lf_disk_open(st->cfg, false, &err);
    if (st->disk == NULL) {
        g_test_message("%s: %s", st->desc, err->message);
        return false;
    }
    return true;
}

static bool overlaps(const struct op *ops, int n, uint64_t off, uint64_t len)
{
    for (int i = 0; i < n; i++)
        if (ops[i].kind != K_FLUSH && off < ops[i].off + ops[i].len && ops[i].off < off + len)
            return true;
    return false;
}

static bool run_stack(guint32 seed)
{
    GRand *r = g_rand_new_with_seed(seed);
    struct stack st = { 0 };
    struct tu_model m;
    g_autoptr(GError) err = NULL;
    bool ok = true;

    st.dir = g_dir_make_tmp("layers-model-XXXXXX", &err);
    g_assert_no_error(err);
    build(&st, r, &m);
    g_test_message("seed %u: %s", seed, st.desc);
    if (!open_stack(&st)) {
        ok = false;
        goto out;
    }
    g_assert_cmpuint(lf_disk_size(st.disk), ==, m.size);
    struct bc_loop *loop = bc_loop_current();

    for (unsigned round = 0; round < 60 && ok; round++) {
        struct op ops[6];
        int n = g_rand_int_range(r, 1, 7);
        unsigned pending = 0;
        int k = 0;

        for (int i = 0; i < n; i++) {
            struct op *o = &ops[k];
            memset(o, 0, sizeof(*o));
            int pick = g_rand_int_range(r, 0, 100);
            o->kind = pick < 40 ? K_READ : pick < 80 ? K_WRITE : pick < 90 ? K_ZERO
                      : pick < 96 ? K_DISCARD : K_FLUSH;
            uint64_t maxlen = g_rand_boolean(r) ? 8192 : 300000;
            o->len = (uint64_t)g_rand_int_range(r, 1, (gint32)maxlen);
            if (g_rand_boolean(r))
                o->len = (o->len + 4095) & ~4095ull;
            o->off = (uint64_t)g_rand_int_range(r, 0, (gint32)(m.size + 8192));
            if (g_rand_boolean(r))
                o->off &= ~4095ull;
            if (o->kind != K_READ && o->kind != K_FLUSH) {
                if (o->off >= m.size)
                    o->off = m.size - 1;
                o->len = MIN(o->len, m.size - o->off);
            }
            if (o->kind != K_FLUSH && overlaps(ops, k, o->off, o->len))
                continue;
            if (o->kind == K_READ || o->kind == K_WRITE) {
                o->buf = g_malloc(o->len);
                if (o->kind == K_WRITE)
                    tu_fill_random(r, o->buf, o->len);
                o->iovcnt = tu_split_iov(r, o->buf, o->len, o->iov, TU_MAX_IOV);
            }
            tu_io_start(&o->io, &pending);
            switch (o->kind) {
            case K_READ:
                lf_disk_readv(st.disk, loop, o->iov, o->iovcnt, o->off, tu_io_cb, &o->io);
                break;
            case K_WRITE:
                lf_disk_writev(st.disk, loop, o->iov, o->iovcnt, o->off,
                               g_rand_int_range(r, 0, 8) == 0 ? BC_REQ_FUA : 0, tu_io_cb,
                               &o->io);
                tu_model_write(&m, o->off, o->buf, o->len);
                break;
            case K_ZERO:
                lf_disk_write_zeroes(st.disk, loop, o->off, o->len,
                                     g_rand_boolean(r) ? BC_REQ_MAY_UNMAP : 0, tu_io_cb,
                                     &o->io);
                tu_model_zero(&m, o->off, o->len);
                break;
            case K_DISCARD:
                lf_disk_discard(st.disk, loop, o->off, o->len, tu_io_cb, &o->io);
                tu_model_forget(&m, o->off, o->len);
                break;
            case K_FLUSH:
                lf_disk_flush(st.disk, loop, tu_io_cb, &o->io);
                break;
            }
            g_assert_false(o->io.done);
            if (g_getenv("LT_DEBUG"))
                g_test_message("round %u op %d kind %d off %" PRIu64 " len %" PRIu64, round,
                               k, o->kind, o->off, o->len);
            k++;
        }
        tu_run_until_done(loop, &pending);
        for (int i = 0; i < k; i++) {
            struct op *o = &ops[i];
            if (o->io.res != 0) {
                g_test_message("round %u op %d kind %d off %" PRIu64 " len %" PRIu64
                               ": res %d", round, i, o->kind, o->off, o->len, o->io.res);
                ok = false;
            }
            if (o->kind == K_READ && o->io.res == 0) {
                g_autofree char *ctx = g_strdup_printf("seed %u round %u read", seed, round);
                ok &= tu_model_check(&m, o->off, o->buf, o->len, ctx);
            }
            g_free(o->buf);
        }

        /* Holes reported through the stack must read as zeros. */
        uint64_t off = (uint64_t)g_rand_int_range(r, 0, (gint32)m.size), pnum = 0;
        int bs = lf_disk_block_status(st.disk, off, m.size - off, &pnum);
        g_assert_cmpint(bs, >=, 0);
        g_assert_cmpuint(pnum, >, 0);
        if (bs == 0) {
            for (uint64_t x = off; x < off + pnum && x < m.size; x++) {
                if (m.known[x] && m.data[x] != 0) {
                    g_test_message("seed %u: hole at %" PRIu64 "+%" PRIu64
                                   " but byte %" PRIu64 " is %02x", seed, off, pnum, x,
                                   m.data[x]);
                    ok = false;
                    break;
                }
            }
        }

        if (!st.volatile_layers && g_rand_int_range(r, 0, 20) == 0) {
            g_assert_cmpint(lf_disk_close(st.disk), ==, 0);
            if (!open_stack(&st)) {
                ok = false;
                break;
            }
        }
    }

    if (ok) {
        uint8_t *all = g_malloc(m.size);
        g_assert_cmpint(lt_read(st.disk, loop, all, m.size, 0), ==, 0);
        ok = tu_model_check(&m, 0, all, m.size, "final");
        g_free(all);
    }
    if (st.disk != NULL)
        g_assert_cmpint(lf_disk_close(st.disk), ==, 0);
out:
    if (!ok)
        g_test_message("failed: seed %u: %s (files kept in %s)", seed, st.desc, st.dir);
    else {
        g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", st.dir);
        g_assert_cmpint(system(cmd), ==, 0);
    }
    lt_disk_free(st.cfg);
    tu_model_free(&m);
    g_free(st.dir);
    g_rand_free(r);
    return ok;
}

static void test_model(void)
{
    guint32 seed = tu_seed(20261121);
    unsigned nstacks = g_test_slow() ? 200 : 40;

    unsigned failed = 0;

    for (unsigned i = 0; i < nstacks; i++)     /* all of them: a failure prints its seed */
        failed += !run_stack(seed + i);
    g_assert_cmpuint(failed, ==, 0);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv, 600);
    struct bc_loop *loop = bc_loop_new(0, 256, NULL);
    g_assert_nonnull(loop);
    tu_add_isolated("/layers/model/random-stacks", test_model);
    int rc = g_test_run();
    bc_loop_free(loop);
    return rc;
}
