/* SPDX-License-Identifier: MIT */
/* Randomized model test of the generic device layer: batches of concurrent random reads,
 * writes, write-zeroes and discards against the ram driver, checked against a byte model. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "t/unit/check-drv.h"
#include "t/unit/test-util.h"

enum op_kind { K_READ, K_WRITE, K_ZERO, K_DISCARD, K_FLUSH };
static const char *const kind_names[] = { "read", "write", "write-zeroes", "discard", "flush" };

struct op {
    unsigned seq;
    enum op_kind kind;
    unsigned flags;
    uint64_t off, len;
    struct tu_buf buf;
    struct iovec iov[TU_MAX_IOV];
    int iovcnt;
    int expect;             /* expected res; 1 = "0 or -ENOSPC" (discard past the end) */
    struct tu_io io;
};

struct run {
    const char *name;
    struct bc_dev *dev;
    struct bc_loop *loop;
    struct tu_model model;
    uint64_t size;
    uint32_t align, mem_align, max_transfer;
    GRand *rand;
    unsigned failures;
};

static void describe(const struct run *r, const struct op *o, char *out, size_t n)
{
    snprintf(out, n, "%s op #%u %s%s%s off=%" PRIu64 " len=%" PRIu64 " iovcnt=%d misalign=%zu",
             r->name, o->seq, kind_names[o->kind],
             (o->flags & BC_REQ_MAY_UNMAP) ? "+unmap" : "",
             (o->flags & BC_REQ_FUA) ? "+fua" : "", o->off, o->len, o->iovcnt,
             o->buf.misalign);
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

static uint64_t rand_u64(GRand *r, uint64_t lo, uint64_t hi)   /* [lo, hi] */
{
    if (hi <= lo)
        return lo;
    uint64_t span = hi - lo + 1;
    uint64_t v = ((uint64_t)g_rand_int(r) << 32) | g_rand_int(r);
    return lo + v % span;
}

/* Pick an offset and length with a mix of shapes that reach every path in dev.c. */
static void pick_range(struct run *r, uint64_t *off, uint64_t *len)
{
    uint64_t size = r->size, a = r->align;
    int shape = g_rand_int_range(r->rand, 0, 100);

    if (shape < 8) {                        /* empty */
        *len = 0;
        *off = rand_u64(r->rand, 0, size);
    } else if (shape < 16) {                /* one byte */
        *len = 1;
        *off = rand_u64(r->rand, 0, size - 1);
    } else if (shape < 40) {                /* small, sector-sharing */
        *len = rand_u64(r->rand, 1, 700);
        *off = rand_u64(r->rand, 0, size - 1);
    } else if (shape < 60) {                /* a few sectors, unaligned */
        *len = rand_u64(r->rand, 1, 5 * a);
        *off = rand_u64(r->rand, 0, size - 1);
    } else if (shape < 75) {                /* aligned: the pass-through path */
        *len = a * rand_u64(r->rand, 1, 16);
        *off = a * rand_u64(r->rand, 0, size / a - 1);
    } else if (shape < 85) {                /* larger than max_transfer */
        *len = rand_u64(r->rand, r->max_transfer / 2, 3 * (uint64_t)r->max_transfer + a + 7);
        *off = rand_u64(r->rand, 0, size - 1);
    } else if (shape < 92) {                /* aligned head, unaligned tail or v.v. */
        *len = rand_u64(r->rand, 1, 4 * a);
        *off = a * rand_u64(r->rand, 0, size / a - 1);
        if (g_rand_boolean(r->rand))
            *off += a - (*len % a);
    } else {                                /* around the end of the device */
        *off = rand_u64(r->rand, size > 3 * a ? size - 3 * a : 0, size + a);
        *len = rand_u64(r->rand, 1, 4 * a);
    }
}

static void op_done(void *opaque, int res);

struct batch_ctx {
    struct run *r;
    unsigned pending;
};

/* Check a finished op against the model, then apply it to the model. */
static void complete_op(struct run *r, struct op *o)
{
    char d[256];
    int res = o->io.res;
    describe(r, o, d, sizeof d);

    bool res_ok = o->expect == 1 ? (res == 0 || res == -ENOSPC) : res == o->expect;
    if (!res_ok) {
        g_test_message("FAIL %s: result %d (%s), expected %d (%s)", d, res,
                       res < 0 ? g_strerror(-res) : "ok", o->expect,
                       o->expect < 0 ? g_strerror(-o->expect) : "ok or -ENOSPC");
        r->failures++;
    }
    switch (o->kind) {
    case K_READ:
        tu_buf_check_guards(&o->buf, d);
        if (res == 0 && !tu_model_check(&r->model, o->off, o->buf.p, o->len, d))
            r->failures++;
        break;
    case K_WRITE:
        tu_buf_check_guards(&o->buf, d);
        if (res == 0)
            tu_model_write(&r->model, o->off, o->buf.p, o->len);
        break;
    case K_ZERO:
        if (res == 0)
            tu_model_zero(&r->model, o->off, o->len);
        break;
    case K_DISCARD:
        /* Advisory: the range may now read as anything, whatever the result. */
        tu_model_forget(&r->model, o->off, o->len);
        break;
    case K_FLUSH:
        break;
    }
}

static void op_done(void *opaque, int res)
{
    tu_io_cb(opaque, res);
}

/* Build, start and complete one batch of up to n ops on pairwise disjoint byte ranges. */
static void run_batch(struct run *r, unsigned *seq, int n)
{
    struct op *ops = g_new0(struct op, n);
    unsigned pending = 0;
    int count = 0;

    for (int i = 0; i < n; i++) {
        struct op *o = &ops[count];
        int roll = g_rand_int_range(r->rand, 0, 100);
        o->kind = roll < 40 ? K_READ : roll < 75 ? K_WRITE : roll < 87 ? K_ZERO
                  : roll < 96 ? K_DISCARD : K_FLUSH;
        if (o->kind != K_FLUSH) {
            bool placed = false;
            for (int tries = 0; tries < 20 && !placed; tries++) {
                pick_range(r, &o->off, &o->len);
                placed = true;
                for (int j = 0; j < count; j++)
                    if (overlaps(o->off, o->len, ops[j].off, ops[j].len))
                        placed = false;
            }
            if (!placed)
                continue;
        }
        /* Zero-length writes past the end are not something to pin down here. */
        if (o->len == 0 && o->off > r->size)
            o->off = r->size;
        bool past_end = o->off + o->len > r->size;

        switch (o->kind) {
        case K_READ:
        case K_WRITE: {
            size_t mis;
            int m = g_rand_int_range(r->rand, 0, 3);
            if (m == 0)
                mis = 0;
            else if (m == 1)
                mis = r->mem_align * (size_t)g_rand_int_range(r->rand, 0, 4096 / r->mem_align + 1)
                      % 4096;
            else
                mis = (size_t)g_rand_int_range(r->rand, 0, 4096);
            tu_buf_init(&o->buf, o->len, mis);
            if (o->kind == K_READ)
                memset(o->buf.p, 0xEE, o->len);
            else
                tu_fill_random(r->rand, o->buf.p, o->len);
            if (g_rand_boolean(r->rand)) {
                o->iov[0] = (struct iovec){ .iov_base = o->buf.p, .iov_len = o->len };
                o->iovcnt = 1;
            } else {
                o->iovcnt = tu_split_iov(r->rand, o->buf.p, o->len, o->iov,
                                         g_rand_int_range(r->rand, 1, 5) == 1 ? TU_MAX_IOV : 8);
            }
            if (o->kind == K_WRITE && g_rand_int_range(r->rand, 0, 8) == 0)
                o->flags |= BC_REQ_FUA;
            o->expect = (o->kind == K_WRITE && past_end && o->len) ? -ENOSPC : 0;
            break;
        }
        case K_ZERO:
            if (g_rand_boolean(r->rand))
                o->flags |= BC_REQ_MAY_UNMAP;
            o->expect = (past_end && o->len) ? -ENOSPC : 0;
            break;
        case K_DISCARD:
            o->expect = past_end ? 1 : 0;
            break;
        case K_FLUSH:
            o->off = o->len = 0;
            o->expect = 0;
            break;
        }
        o->seq = (*seq)++;
        count++;
    }

    for (int i = 0; i < count; i++) {
        struct op *o = &ops[i];
        tu_io_start(&o->io, &pending);
        switch (o->kind) {
        case K_READ:
            bc_dev_readv(r->dev, r->loop, o->iov, o->iovcnt, o->off, op_done, &o->io);
            break;
        case K_WRITE:
            bc_dev_writev(r->dev, r->loop, o->iov, o->iovcnt, o->off, o->flags, op_done, &o->io);
            break;
        case K_ZERO:
            bc_dev_write_zeroes(r->dev, r->loop, o->off, o->len, o->flags, op_done, &o->io);
            break;
        case K_DISCARD:
            bc_dev_discard(r->dev, r->loop, o->off, o->len, op_done, &o->io);
            break;
        case K_FLUSH:
            bc_dev_flush(r->dev, r->loop, op_done, &o->io);
            break;
        }
        if (o->io.done) {
            char d[256];
            describe(r, o, d, sizeof d);
            g_error("%s: callback ran inside the submitting call", d);
        }
    }
    tu_run_until_done(r->loop, &pending);
    for (int i = 0; i < count; i++) {
        complete_op(r, &ops[i]);
        if (ops[i].kind == K_READ || ops[i].kind == K_WRITE)
            tu_buf_free(&ops[i].buf);
    }
    g_free(ops);
}

enum { DRV_RAM, DRV_CHECK, DRV_CHECK_NO_FUA };

struct model_cfg {
    const char *name;
    uint64_t size;
    uint32_t align, mem_align, max_transfer;
    int ops;
    guint32 seed;
    int drv;                /* DRV_*: ram, or the checking driver over ram */
};

static struct bc_dev *open_cfg(const struct model_cfg *c)
{
    if (c->drv == DRV_RAM)
        return tu_open_ram(c->size, c->align, c->mem_align, c->max_transfer);
    g_autofree char *s = g_strdup_printf("%" PRIu64, c->size);
    g_autofree char *a = g_strdup_printf("%" PRIu32, c->align);
    g_autofree char *ma = g_strdup_printf("%" PRIu32, c->mem_align);
    g_autofree char *mt = g_strdup_printf("%" PRIu32, c->max_transfer);
    struct bc_dev *dev = tu_open(&tu_drv_check, NULL, false, false, "size", s, "align", a,
                                 "mem-align", ma, "max-transfer", mt, "fua-native",
                                 c->drv == DRV_CHECK_NO_FUA ? "0" : "1", NULL);
    g_assert_cmpuint(bc_dev_props(dev)->fua_native, ==, c->drv != DRV_CHECK_NO_FUA);
    return dev;
}

/* The checking driver saw nothing the engine promised it would not send. */
static void check_contract(const struct model_cfg *c, struct bc_dev *dev)
{
    if (c->drv == DRV_RAM)
        return;
    struct tu_check_stats st;
    tu_check_get(dev, &st);
    g_test_message("%s: driver saw %" PRIu64 " reads, %" PRIu64 " writes (%" PRIu64 " FUA), %"
                   PRIu64 " flushes, %" PRIu64 " write-zeroes, %" PRIu64 " discards", c->name,
                   st.requests[BC_OP_READ], st.requests[BC_OP_WRITE], st.fua_flags,
                   st.requests[BC_OP_FLUSH], st.requests[BC_OP_WRITE_ZEROES],
                   st.requests[BC_OP_DISCARD]);
    if (st.violations)
        g_test_fail_printf("%s: %" PRIu64 " driver contract violations; first: %s", c->name,
                           st.violations, st.first_violation);
    if (c->drv == DRV_CHECK_NO_FUA)
        g_assert_cmpuint(st.fua_flags, ==, 0);
}

static void model_run(gconstpointer data)
{
    const struct model_cfg *c = data;
    struct run r = { .name = c->name, .size = c->size, .align = c->align,
                     .mem_align = c->mem_align, .max_transfer = c->max_transfer };

    r.loop = tu_loop_new();
    r.dev = open_cfg(c);
    guint32 seed = tu_seed(c->seed);
    r.rand = g_rand_new_with_seed(seed);

    /* Start from known random contents so stale data cannot pass for new. */
    tu_model_init(&r.model, c->size, true);
    uint8_t *init = bc_buf_alloc(c->size);
    tu_fill_random(r.rand, init, c->size);
    g_assert_cmpint(tu_pwrite(r.dev, r.loop, init, c->size, 0), ==, 0);
    tu_model_write(&r.model, 0, init, c->size);
    bc_buf_free(init);
    g_assert_true(tu_model_verify_dev(&r.model, r.dev, r.loop, "initial contents"));

    unsigned seq = 0;
    while (seq < (unsigned)c->ops) {
        int n = g_rand_int_range(r.rand, 1, 100) < 15 ? 1 : g_rand_int_range(r.rand, 2, 17);
        unsigned before = r.failures;
        run_batch(&r, &seq, n);
        if (r.failures != before) {
            g_test_message("%s: failing batch ended at op #%u (seed %" G_GUINT32_FORMAT ")",
                           c->name, seq, seed);
            break;
        }
    }
    g_assert_cmpuint(r.failures, ==, 0);
    g_assert_true(tu_model_verify_dev(&r.model, r.dev, r.loop, "final contents"));

    struct bc_dev_stats st;
    bc_dev_get_stats(r.dev, &st);
    g_test_message("%s: %u ops; driver inflight max %" PRIu64 ", rmw %" PRIu64
                   ", bounced %" PRIu64 ", blocker waits %" PRIu64, c->name, seq,
                   st.driver_inflight_max, st.rmw, st.bounced, st.blocker_waits);
    g_assert_cmpuint(st.driver_inflight, ==, 0);
    g_assert_cmpuint(st.driver_inflight_max, >, 1);    /* the batches really were concurrent */
    g_assert_cmpuint(st.rmw, >, 0);
    g_assert_cmpuint(st.bounced, >, 0);
    size_t in_use, peak;
    bc_bounce_usage(&in_use, &peak);
    g_assert_cmpuint(in_use, ==, 0);                   /* every bounce buffer came back */

    check_contract(c, r.dev);
    g_rand_free(r.rand);
    tu_model_free(&r.model);
    bc_dev_close(r.dev);
    tu_loop_free(r.loop);
}

/* ---- hand-picked edge cases, so a failure names its case ----------------------------- */

static void edge_run(gconstpointer data)
{
    const struct model_cfg *c = data;
    struct bc_loop *loop = tu_loop_new();
    struct bc_dev *dev = open_cfg(c);
    const uint64_t S = c->size, A = c->align, MT = c->max_transfer;
    struct tu_model m;
    GRand *rand = g_rand_new_with_seed(c->seed);

    tu_model_init(&m, S, true);
    uint8_t *init = bc_buf_alloc(S);
    tu_fill_random(rand, init, S);
    g_assert_cmpint(tu_pwrite(dev, loop, init, S, 0), ==, 0);
    tu_model_write(&m, 0, init, S);
    bc_buf_free(init);

    struct { const char *what; uint64_t off, len; } writes[] = {
        { "1 byte at 0", 0, 1 },
        { "1 byte at align-1", A - 1, 1 },
        { "1 byte at align", A, 1 },
        { "2 bytes across a sector boundary", 2 * A - 1, 2 },
        { "one whole sector, aligned", 3 * A, A },
        { "one sector's worth, unaligned", 5 * A + 1, A },
        { "many sectors, unaligned both ends", 7 * A + 3, 9 * A + 5 },
        { "max_transfer+1, aligned start", 32 * A, MT + 1 },
        { "3*max_transfer+odd, unaligned", 64 * A + 77, 3 * MT + 333 },
        { "last byte of the device", S - 1, 1 },
        { "tail of the device, unaligned start", S - A - 17, A + 17 },
        { "0 bytes at the end", S, 0 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(writes); i++) {
        uint64_t off = writes[i].off, len = writes[i].len;
        struct tu_buf b;
        tu_buf_init(&b, len, i % 2 ? 1 : 0);
        tu_fill_random(rand, b.p, len);
        int res = tu_pwrite(dev, loop, b.p, len, off);
        if (res != 0)
            g_error("%s: write %s [%" PRIu64 ", +%" PRIu64 "): %s", c->name, writes[i].what,
                    off, len, g_strerror(-res));
        tu_model_write(&m, off, b.p, len);
        tu_buf_free(&b);
        g_autofree char *ctx = g_strdup_printf("%s: after write %s", c->name, writes[i].what);
        /* Read back the written range plus a sector either side. */
        uint64_t roff = off > A ? off - A : 0, rlen = len + 2 * A;
        uint8_t *rb = g_malloc(rlen);
        g_assert_cmpint(tu_pread(dev, loop, rb, rlen, roff), ==, 0);
        g_assert_true(tu_model_check(&m, roff, rb, rlen, ctx));
        g_free(rb);
    }

    /* Writes and write-zeroes that cross or start past the end fail and change nothing. */
    struct { const char *what; uint64_t off, len; } bad[] = {
        { "crossing the end by 1", S - 10, 11 },
        { "crossing the end, aligned", (S / A - 1) * A, 2 * A },
        { "starting at the end", S, 1 },
        { "starting past the end", S + 5 * A, A },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        uint8_t *wb = g_malloc(bad[i].len);
        memset(wb, 0x5A, bad[i].len);
        int res = tu_pwrite(dev, loop, wb, bad[i].len, bad[i].off);
        if (res != -ENOSPC)
            g_error("%s: write %s: got %d, want -ENOSPC", c->name, bad[i].what, res);
        res = tu_zero(dev, loop, bad[i].off, bad[i].len, 0);
        if (res != -ENOSPC)
            g_error("%s: write-zeroes %s: got %d, want -ENOSPC", c->name, bad[i].what, res);
        res = tu_zero(dev, loop, bad[i].off, bad[i].len, BC_REQ_MAY_UNMAP);
        if (res != -ENOSPC)
            g_error("%s: write-zeroes+unmap %s: got %d, want -ENOSPC", c->name, bad[i].what,
                    res);
        g_free(wb);
    }
    g_assert_true(tu_model_verify_dev(&m, dev, loop, "after failed writes past the end"));

    /* Reads past the end fill zeros, whatever was in the buffer. */
    struct { const char *what; uint64_t off, len; } reads[] = {
        { "crossing the end", S - 100, 300 },
        { "crossing the end by a lot", S - A - 3, 5 * A },
        { "entirely past the end", S + 1, 1000 },
        { "far past the end", S + (1u << 30), 4096 },
        { "0 bytes past the end", S + 100, 0 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(reads); i++) {
        struct tu_buf b;
        tu_buf_init(&b, reads[i].len, 3);
        memset(b.p, 0xEE, reads[i].len);
        int res = tu_pread(dev, loop, b.p, reads[i].len, reads[i].off);
        if (res != 0)
            g_error("%s: read %s: %s", c->name, reads[i].what, g_strerror(-res));
        g_autofree char *ctx = g_strdup_printf("%s: read %s", c->name, reads[i].what);
        g_assert_true(tu_model_check(&m, reads[i].off, b.p, reads[i].len, ctx));
        tu_buf_check_guards(&b, ctx);
        tu_buf_free(&b);
    }

    /* Zero-length requests of every kind complete with 0. */
    g_assert_cmpint(tu_pread(dev, loop, NULL, 0, 123), ==, 0);
    g_assert_cmpint(tu_pwrite(dev, loop, NULL, 0, 123), ==, 0);
    g_assert_cmpint(tu_pwritev(dev, loop, NULL, 0, 123, 0), ==, 0);
    g_assert_cmpint(tu_zero(dev, loop, 123, 0, 0), ==, 0);
    g_assert_cmpint(tu_discard(dev, loop, 123, 0), ==, 0);

    /* Write-zeroes, both flavours, unaligned and aligned, read back as zeros. */
    g_assert_cmpint(tu_zero(dev, loop, A + 5, 3 * A, 0), ==, 0);
    tu_model_zero(&m, A + 5, 3 * A);
    g_assert_cmpint(tu_zero(dev, loop, 10 * A + 7, 2 * A + 9, BC_REQ_MAY_UNMAP), ==, 0);
    tu_model_zero(&m, 10 * A + 7, 2 * A + 9);
    g_assert_cmpint(tu_zero(dev, loop, 20 * A, 8 * A, BC_REQ_MAY_UNMAP), ==, 0);
    tu_model_zero(&m, 20 * A, 8 * A);
    g_assert_cmpint(tu_zero(dev, loop, 30 * A, MT * 2 + A, 0), ==, 0);
    tu_model_zero(&m, 30 * A, MT * 2 + A);
    g_assert_true(tu_model_verify_dev(&m, dev, loop, "after write-zeroes"));

    /* Discard leaves everything outside its range alone. */
    g_assert_cmpint(tu_discard(dev, loop, 40 * A + 3, 4 * A), ==, 0);
    tu_model_forget(&m, 40 * A + 3, 4 * A);
    g_assert_true(tu_model_verify_dev(&m, dev, loop, "after discard"));

    g_assert_cmpint(tu_flush(dev, loop), ==, 0);

    /* Block status: write-zeroes with MAY_UNMAP of whole pages leaves a hole, a write
     * makes data, and past the end is a hole. */
    const uint64_t h0 = 64u << 10, hl = 64u << 10;
    uint64_t pnum = 0;
    g_assert_cmpint(tu_zero(dev, loop, h0, hl, BC_REQ_MAY_UNMAP), ==, 0);
    tu_model_zero(&m, h0, hl);
    g_assert_cmpint(bc_dev_block_status(dev, h0, hl, &pnum), ==, 0);
    g_assert_cmpuint(pnum, ==, hl);
    g_assert_cmpint(tu_pwrite(dev, loop, "x", 1, h0 + 5), ==, 0);
    tu_model_write(&m, h0 + 5, (const uint8_t *)"x", 1);
    g_assert_cmpint(bc_dev_block_status(dev, h0, hl, &pnum), ==, 1);
    g_assert_cmpuint(pnum, >, 0);
    g_assert_cmpint(bc_dev_block_status(dev, S + 4096, 4096, &pnum), ==, 0);
    g_assert_cmpuint(pnum, >, 0);
    g_assert_true(tu_model_verify_dev(&m, dev, loop, "after block status checks"));

    check_contract(c, dev);
    g_rand_free(rand);
    tu_model_free(&m);
    bc_dev_close(dev);
    tu_loop_free(loop);
}

/* The null driver: a huge device that reads zeros and accepts writes, at any offset. */
static void test_null(void)
{
    struct bc_loop *loop = tu_loop_new();
    struct bc_dev *dev = tu_open(&bc_drv_null, NULL, false, false, "size", "1T", "align",
                                 "4096", NULL);
    const uint64_t S = UINT64_C(1) << 40;
    struct tu_buf b;

    g_assert_cmpuint(bc_dev_size(dev), ==, S);
    tu_buf_init(&b, 10000, 3);
    memset(b.p, 0xEE, 10000);
    g_assert_cmpint(tu_pread(dev, loop, b.p, 10000, S - 5000), ==, 0);
    for (int i = 0; i < 10000; i++)
        g_assert_cmpuint(b.p[i], ==, 0);
    tu_buf_check_guards(&b, "null read across the end");
    g_assert_cmpint(tu_pwrite(dev, loop, b.p, 5000, S - 5000), ==, 0);
    g_assert_cmpint(tu_pwrite(dev, loop, b.p, 5001, S - 5000), ==, -ENOSPC);
    g_assert_cmpint(tu_zero(dev, loop, 12345, 1u << 20, BC_REQ_MAY_UNMAP), ==, 0);
    g_assert_cmpint(tu_discard(dev, loop, 0, S), ==, 0);
    g_assert_cmpint(tu_flush(dev, loop), ==, 0);
    tu_buf_free(&b);
    bc_dev_close(dev);
    tu_loop_free(loop);
}

/* FUA: a driver without native FUA gets the write(s) without the flag and then a flush,
 * issued after the last write completed and finished before the caller hears back; a
 * driver with native FUA gets the flag and no flush.  Write-zeroes with FUA flushes. */
static void fua_case(bool native, bool zeroes, uint64_t off, uint64_t len)
{
    const struct model_cfg c = { "fua", 1u << 20, 4096, 4096, 16u << 10, 0, 0,
                                 native ? DRV_CHECK : DRV_CHECK_NO_FUA };
    struct bc_loop *loop = tu_loop_new();
    struct bc_dev *dev = open_cfg(&c);
    g_autofree uint8_t *buf = g_malloc0(len);
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct tu_check_stats st;
    g_autofree char *what = g_strdup_printf("%s FUA %s of [%" PRIu64 ", +%" PRIu64 ")",
                                            native ? "native" : "emulated",
                                            zeroes ? "write-zeroes" : "write", off, len);

    tu_check_log_reset(dev);
    int r = zeroes ? tu_zero(dev, loop, off, len, BC_REQ_FUA)
                   : tu_pwritev(dev, loop, &iov, 1, off, BC_REQ_FUA);
    g_assert_cmpint(r, ==, 0);
    tu_check_get(dev, &st);
    g_assert_cmpuint(st.violations, ==, 0);
    g_assert_cmpuint(st.nlog, <, TU_CHECK_LOG);

    int last_write_done = -1, flush_submit = -1, flush_done = -1, writes_with_fua = 0;
    for (unsigned i = 0; i < st.nlog; i++) {
        const struct tu_check_event *e = &st.log[i];
        if ((e->op == BC_OP_WRITE || e->op == BC_OP_WRITE_ZEROES) && e->done)
            last_write_done = (int)i;
        if (e->op == BC_OP_WRITE && !e->done && (e->flags & BC_REQ_FUA))
            writes_with_fua++;
        if (e->op == BC_OP_FLUSH && !e->done && flush_submit < 0)
            flush_submit = (int)i;
        if (e->op == BC_OP_FLUSH && e->done)
            flush_done = (int)i;
    }
    bool want_flush = !native || zeroes;
    if (want_flush) {
        if (flush_submit < 0 || flush_done < 0)
            g_test_fail_printf("%s: no flush reached the driver", what);
        else if (flush_submit < last_write_done)
            g_test_fail_printf("%s: the flush was sent before the write completed", what);
        if (!zeroes && writes_with_fua)
            g_test_fail_printf("%s: the driver got BC_REQ_FUA it cannot honour", what);
    } else {
        if (flush_submit >= 0)
            g_test_fail_printf("%s: a flush although the driver does FUA itself", what);
        if (!writes_with_fua)
            g_test_fail_printf("%s: no driver write carried BC_REQ_FUA", what);
    }
    bc_dev_close(dev);
    tu_loop_free(loop);
}

static void test_fua(void)
{
    for (int native = 0; native < 2; native++) {
        fua_case(native, false, 8192, 8192);            /* direct path */
        fua_case(native, false, 100, 300);              /* RMW */
        fua_case(native, false, 4095, 40000);           /* several chunks */
        fua_case(native, true, 8192, 65536);            /* efficient write-zeroes */
        fua_case(native, true, 10, 5000);               /* zero buffers */
    }
}

/* The direct path's splitting: aligned requests made of many aligned iovecs of random
 * sizes, longer than max_transfer, so the cuts fall inside iovecs.  Through the checking
 * driver (every piece aligned, within max_transfer) and against the model. */
static void test_direct_split(void)
{
    const struct model_cfg c = { "direct-split", 1u << 20, 512, 512, 4096, 0, 0,
                                 DRV_CHECK_NO_FUA };
    struct bc_loop *loop = tu_loop_new();
    struct bc_dev *dev = open_cfg(&c);
    GRand *rand = g_rand_new_with_seed(tu_seed(1019));
    struct tu_model m;
    uint8_t *buf = bc_buf_alloc(64u << 10);
    struct iovec iov[TU_MAX_IOV];

    tu_model_init(&m, c.size, true);
    for (int round = 0; round < 300; round++) {
        int n = 0;
        size_t len = 0;
        while (n < TU_MAX_IOV && len < (60u << 10)) {
            size_t piece = 512 * (size_t)g_rand_int_range(rand, 0, 13);   /* 0..6 KiB */
            if (len + piece > (60u << 10))
                break;
            iov[n++] = (struct iovec){ .iov_base = buf + len, .iov_len = piece };
            len += piece;
        }
        uint64_t off = 512 * (uint64_t)g_rand_int_range(rand, 0, (gint32)((c.size - len) / 512));
        bool write = g_rand_boolean(rand);
        if (write)
            tu_fill_random(rand, buf, len);
        else
            memset(buf, 0xEE, len);
        int r = write ? tu_pwritev(dev, loop, iov, n, off, g_rand_boolean(rand) ? BC_REQ_FUA : 0)
                      : tu_preadv(dev, loop, iov, n, off);
        g_assert_cmpint(r, ==, 0);
        if (write) {
            tu_model_write(&m, off, buf, len);
        } else {
            g_autofree char *ctx = g_strdup_printf("direct-split round %d: %d iovecs, [%"
                                                   PRIu64 ", +%zu)", round, n, off, len);
            g_assert_true(tu_model_check(&m, off, buf, len, ctx));
        }
    }
    struct bc_dev_stats st;
    bc_dev_get_stats(dev, &st);
    g_assert_cmpuint(st.bounced, ==, 0);      /* all of it went straight through */
    check_contract(&c, dev);
    g_assert_true(tu_model_verify_dev(&m, dev, loop, "after direct-split"));
    bc_buf_free(buf);
    tu_model_free(&m);
    g_rand_free(rand);
    bc_dev_close(dev);
    tu_loop_free(loop);
}

/* ---- the small helpers the engine is built on ----------------------------------------- */

/* bc_iov_to_buf/from_buf/memset at random skips over random splits, against flat memcpy. */
static void test_iov_helpers(void)
{
    GRand *rand = g_rand_new_with_seed(tu_seed(1015));
    enum { LEN = 5000 };
    uint8_t flat[LEN], iovmem[LEN], tmp[LEN], want[LEN];
    struct iovec iov[TU_MAX_IOV];

    for (int round = 0; round < 2000; round++) {
        tu_fill_random(rand, flat, LEN);
        memcpy(iovmem, flat, LEN);
        int n = tu_split_iov(rand, iovmem, LEN, iov, g_rand_int_range(rand, 1, TU_MAX_IOV + 1));
        g_assert_cmpuint(bc_iov_len(iov, n), ==, LEN);
        size_t skip = (size_t)g_rand_int_range(rand, 0, LEN + 1);
        size_t len = (size_t)g_rand_int_range(rand, 0, (gint32)(LEN - skip) + 1);

        bc_iov_to_buf(iov, n, skip, tmp, len);
        g_assert_cmpmem(tmp, len, flat + skip, len);

        tu_fill_random(rand, tmp, len);
        memcpy(want, flat, LEN);
        memcpy(want + skip, tmp, len);
        bc_iov_from_buf(iov, n, skip, tmp, len);
        g_assert_cmpmem(iovmem, LEN, want, LEN);

        int c = g_rand_int_range(rand, 0, 256);
        memset(want + skip, c, len);
        bc_iov_memset(iov, n, skip, c, len);
        g_assert_cmpmem(iovmem, LEN, want, LEN);
    }
    g_assert_cmpuint(bc_iov_len(NULL, 0), ==, 0);
    g_rand_free(rand);
}

/* One bc_iov_slice() call and what it should give: the count (or -errno), the bytes taken
 * when partial slices are allowed, and the pieces as (element, offset, length). */
struct slice_case {
    uint64_t skip, len;
    int out_max;
    bool partial;               /* pass took */
    int want;
    uint64_t want_took;
    struct { int el; size_t off, len; } piece[4];
};

/* Fixed cases over elements of 10, 0, 5, 0 and 7 bytes (22 in all): skips inside and at
 * the edges of elements, empty elements (never handed out), the slice running to the very
 * end, ranges past the end and out arrays that are too small. */
static void test_iov_slice_cases(void)
{
    static char a[10], c[5], e[7];
    const struct iovec iov[] = { { a, 10 }, { a + 10, 0 }, { c, 5 }, { c, 0 }, { e, 7 } };
    static const struct slice_case cases[] = {
        { 0, 22, 8, false, 3, 0, { { 0, 0, 10 }, { 2, 0, 5 }, { 4, 0, 7 } } },
        { 3, 4, 8, false, 1, 0, { { 0, 3, 4 } } },              /* inside one element */
        { 0, 10, 8, false, 1, 0, { { 0, 0, 10 } } },            /* exactly one element */
        { 9, 2, 8, false, 2, 0, { { 0, 9, 1 }, { 2, 0, 1 } } }, /* across an empty one */
        { 10, 5, 8, false, 1, 0, { { 2, 0, 5 } } },             /* skip at a boundary */
        { 10, 1, 8, false, 1, 0, { { 2, 0, 1 } } },
        { 15, 7, 8, false, 1, 0, { { 4, 0, 7 } } },             /* the last element */
        { 14, 8, 8, false, 2, 0, { { 2, 4, 1 }, { 4, 0, 7 } } },/* len to the end */
        { 21, 1, 8, false, 1, 0, { { 4, 6, 1 } } },             /* the last byte */
        { 0, 0, 8, false, 0, 0, { { 0 } } },                    /* nothing */
        { 22, 0, 8, false, 0, 0, { { 0 } } },                   /* nothing, at the end */
        { 5, 0, 0, false, 0, 0, { { 0 } } },                    /* nothing, no room */
        { 21, 2, 8, false, -EINVAL, 0, { { 0 } } },             /* past the end */
        { 0, 23, 8, false, -EINVAL, 0, { { 0 } } },
        { 22, 1, 8, false, -EINVAL, 0, { { 0 } } },
        { 22, 1, 8, true, -EINVAL, 0, { { 0 } } },
        { 0, 22, 3, false, 3, 0, { { 0, 0, 10 }, { 2, 0, 5 }, { 4, 0, 7 } } }, /* just fits */
        { 0, 22, 2, false, -E2BIG, 0, { { 0 } } },              /* out_max too small */
        { 9, 2, 1, false, -E2BIG, 0, { { 0 } } },
        { 0, 1, 0, false, -E2BIG, 0, { { 0 } } },
        { 0, 22, 2, true, 2, 15, { { 0, 0, 10 }, { 2, 0, 5 } } },  /* partial: stops */
        { 9, 13, 1, true, 1, 1, { { 0, 9, 1 } } },
        { 0, 1, 0, true, 0, 0, { { 0 } } },
        { 3, 19, 3, true, 3, 19, { { 0, 3, 7 }, { 2, 0, 5 }, { 4, 0, 7 } } }, /* all fits */
    };

    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        const struct slice_case *t = &cases[i];
        struct iovec out[9];
        uint64_t took = 12345;
        for (int k = 0; k < 9; k++)
            out[k] = (struct iovec){ (void *)1, 99 };
        int r = bc_iov_slice(iov, G_N_ELEMENTS(iov), t->skip, t->len, out, t->out_max,
                             t->partial ? &took : NULL);
        g_autofree char *ctx = g_strdup_printf("bc_iov_slice(skip %" PRIu64 ", len %" PRIu64
                                               ", out_max %d%s)", t->skip, t->len,
                                               t->out_max, t->partial ? ", took" : "");
        if (r != t->want) {
            g_test_fail_printf("%s returned %d, want %d", ctx, r, t->want);
            continue;
        }
        if (t->partial && r >= 0 && took != t->want_took)
            g_test_fail_printf("%s: took %" PRIu64, ctx, took);
        for (int k = 0; k < MAX(r, 0); k++) {
            const struct iovec *el = &iov[t->piece[k].el];
            if (out[k].iov_base != (char *)el->iov_base + t->piece[k].off ||
                out[k].iov_len != t->piece[k].len)
                g_test_fail_printf("%s: piece %d is element %d +%td len %zu, want +%zu len %zu",
                                   ctx, k, t->piece[k].el,
                                   (char *)out[k].iov_base - (char *)el->iov_base,
                                   out[k].iov_len, t->piece[k].off, t->piece[k].len);
        }
        /* Nothing written past the out_max entries it was given. */
        for (int k = MAX(t->out_max, 0); k < 9; k++)
            if (out[k].iov_base != (void *)1 || out[k].iov_len != 99)
                g_test_fail_printf("%s wrote out[%d] (out_max %d)", ctx, k, t->out_max);
    }
}

/* bc_iov_slice() at random skips over random splits with empty elements: the pieces are
 * the bytes [skip, skip+len) in order, none empty, as few as the elements allow; with too
 * few entries and took, the longest prefix that fits. */
static void test_iov_slice_random(void)
{
    GRand *rand = g_rand_new_with_seed(tu_seed(1016));
    enum { LEN = 3000 };
    uint8_t flat[LEN], tmp[LEN];
    struct iovec iov[TU_MAX_IOV], out[TU_MAX_IOV];

    for (int round = 0; round < 2000; round++) {
        tu_fill_random(rand, flat, LEN);
        int n = tu_split_iov(rand, flat, LEN, iov, g_rand_int_range(rand, 1, TU_MAX_IOV + 1));
        uint64_t skip = (uint64_t)g_rand_int_range(rand, 0, LEN + 1);
        uint64_t len = (uint64_t)g_rand_int_range(rand, 0, (gint32)(LEN - skip) + 1);
        int out_max = g_rand_int_range(rand, 0, n + 1);
        bool partial = g_rand_boolean(rand);
        uint64_t took = UINT64_MAX;

        /* The elements holding [skip, skip+len): the count a full slice needs. */
        int need = 0;
        uint64_t at = 0;
        for (int k = 0; k < n; k++) {
            if (len && iov[k].iov_len && at + iov[k].iov_len > skip && at < skip + len)
                need++;
            at += iov[k].iov_len;
        }
        int r = bc_iov_slice(iov, n, skip, len, out, out_max, partial ? &took : NULL);
        g_autofree char *ctx = g_strdup_printf("round %d: %d elements, skip %" PRIu64 " len %"
                                               PRIu64 " out_max %d%s", round, n, skip, len,
                                               out_max, partial ? " took" : "");
        if (need > out_max && !partial) {
            if (r != -E2BIG)
                g_test_fail_printf("%s: returned %d, want -E2BIG (%d needed)", ctx, r, need);
            continue;
        }
        int want = MIN(need, out_max);
        if (r != want) {
            g_test_fail_printf("%s: returned %d, want %d", ctx, r, want);
            continue;
        }
        uint64_t got = 0;
        for (int k = 0; k < r; k++) {
            if (out[k].iov_len == 0)
                g_test_fail_printf("%s: piece %d is empty", ctx, k);
            if ((uint8_t *)out[k].iov_base != flat + skip + got)
                g_test_fail_printf("%s: piece %d does not continue the range", ctx, k);
            got += out[k].iov_len;
        }
        if (partial ? took != got : got != len)
            g_test_fail_printf("%s: %" PRIu64 " bytes in the pieces, took %" PRIu64, ctx, got,
                               took);
        if (need <= out_max && got != len)
            g_test_fail_printf("%s: %" PRIu64 " bytes, want all %" PRIu64, ctx, got, len);
        bc_iov_to_buf(out, r, 0, tmp, got);
        g_assert_cmpmem(tmp, got, flat + skip, got);
    }
    g_rand_free(rand);
}

static void test_parse_size(void)
{
    static const struct { const char *s; bool ok; uint64_t v; } cases[] = {
        { "0", true, 0 }, { "4096", true, 4096 }, { "64K", true, 64u << 10 },
        { "64k", true, 64u << 10 }, { "1M", true, 1u << 20 }, { "2G", true, 2ull << 30 },
        { "1T", true, 1ull << 40 }, { "16383P", false, 0 }, { "", false, 0 },
        { "K", false, 0 }, { "-1", false, 0 }, { " 1", false, 0 }, { "1 ", false, 0 },
        { "1X", false, 0 }, { "1.5M", false, 0 }, { "0x10", false, 0 },
        { "18446744073709551615", true, UINT64_MAX }, { "18446744073709551616", false, 0 },
        { "16777216T", false, 0 }, { "16777215T", true, 16777215ull << 40 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        uint64_t v = 12345;
        bool ok = bc_parse_size(cases[i].s, &v);
        if (ok != cases[i].ok || (ok && v != cases[i].v))
            g_test_fail_printf("bc_parse_size(\"%s\"): %s %" PRIu64 ", want %s %" PRIu64,
                               cases[i].s, ok ? "true" : "false", v,
                               cases[i].ok ? "true" : "false", cases[i].v);
    }
    g_assert_false(bc_parse_size(NULL, &(uint64_t){ 0 }));
}

/* Offsets near 2^64: no wrap-around, an error (or zeros for a read), never a crash. */
static void test_offset_overflow(void)
{
    struct bc_loop *loop = tu_loop_new();
    struct bc_dev *dev = tu_open_ram(1u << 20, 4096, 4096, 0);
    uint8_t buf[100];
    const uint64_t off = UINT64_MAX - 10;

    memset(buf, 0xEE, sizeof buf);
    int r = tu_pread(dev, loop, buf, sizeof buf, off);
    g_assert_true(r == 0 || r == -EINVAL);
    if (r == 0)
        for (size_t i = 0; i < sizeof buf; i++)
            g_assert_cmpuint(buf[i], ==, 0);
    r = tu_pwrite(dev, loop, buf, sizeof buf, off);
    g_assert_true(r == -EINVAL || r == -ENOSPC);
    r = tu_zero(dev, loop, off, 100, 0);
    g_assert_true(r == -EINVAL || r == -ENOSPC);
    r = tu_zero(dev, loop, 4096, UINT64_MAX, BC_REQ_MAY_UNMAP);
    g_assert_true(r == -EINVAL || r == -ENOSPC);
    r = tu_discard(dev, loop, off, 100);
    g_assert_true(r == 0 || r == -EINVAL || r == -ENOSPC);
    r = tu_discard(dev, loop, 4096, UINT64_MAX);
    g_assert_true(r == 0 || r == -EINVAL || r == -ENOSPC);
    uint64_t pnum = 0;
    g_assert_cmpint(bc_dev_block_status(dev, off, 100, &pnum), ==, 0);
    bc_dev_close(dev);
    tu_loop_free(loop);
}

int main(int argc, char **argv)
{
    static const struct model_cfg cfgs[] = {
        { "align512",            (2u << 20),        512,  512,  64u << 10, 3000, 1010 },
        { "align4096",           (2u << 20),        4096, 4096, 64u << 10, 3000, 1011 },
        { "align512-mem4096",    (2u << 20) + 1000, 512,  4096, 64u << 10, 2000, 1012 },
        { "align4096-mem512",    (2u << 20) + 1000, 4096, 512,  32u << 10, 2000, 1013 },
        { "align4096-odd-size",  (1u << 20) + 1000, 4096, 4096, 16u << 10, 2000, 1014 },
        /* The same through the checking driver, with and without native FUA. */
        { "checked-512",         (2u << 20) + 1000, 512,  512,  64u << 10, 2000, 1016,
          DRV_CHECK_NO_FUA },
        { "checked-4096-mem512", (2u << 20) + 1000, 4096, 512,  32u << 10, 2000, 1017,
          DRV_CHECK },
        { "checked-512-mem4096", (1u << 20) + 1000, 512,  4096, 16u << 10, 2000, 1018,
          DRV_CHECK_NO_FUA },
    };
    tu_init(&argc, &argv, 150);
    for (size_t i = 0; i < G_N_ELEMENTS(cfgs); i++) {
        g_autofree char *p1 = g_strdup_printf("/model/edge/%s", cfgs[i].name);
        g_autofree char *p2 = g_strdup_printf("/model/random/%s", cfgs[i].name);
        tu_add_isolated_data(p1, &cfgs[i], edge_run);
        tu_add_isolated_data(p2, &cfgs[i], model_run);
    }
    tu_add_isolated("/model/null-driver", test_null);
    tu_add_isolated("/model/offset-overflow", test_offset_overflow);
    tu_add_isolated("/model/fua", test_fua);
    tu_add_isolated("/model/direct-split", test_direct_split);
    tu_add_isolated("/helpers/iov", test_iov_helpers);
    tu_add_isolated("/helpers/iov-slice", test_iov_slice_cases);
    tu_add_isolated("/helpers/iov-slice-random", test_iov_slice_random);
    tu_add_isolated("/helpers/parse-size", test_parse_size);
    return g_test_run();
}
