/* SPDX-License-Identifier: MIT */
/* The sparse layer engine's range locks (layers/sparse.c), driven through a store that holds
 * every write until the test lets it finish: overlapping operations run in arrival order. */
#include <errno.h>
#include <string.h>

#include "layers/sparse.h"
#include "t/unit/test-util.h"

#define BS 4096u
#define NBLOCKS 16u

/* A store write or zero in flight, held by the test. */
struct held {
    char name;              /* the operation's name: first byte written, or 'z' */
    uint64_t offset, len;
    bc_cb *cb;
    void *opaque;
};

/* The store: logs what reaches it, in order, and holds it. */
struct gated {
    struct held held[16];
    unsigned nheld;         /* ever issued */
    unsigned nreleased;     /* completed by release() */
};

static void gated_read(void *store, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                       uint64_t offset, bc_cb *cb, void *opaque)
{
    g_assert_not_reached();     /* whole-block operations never read */
}

static void gated_hold(struct gated *g, char name, uint64_t offset, uint64_t len, bc_cb *cb,
                       void *opaque)
{
    g_assert_cmpuint(g->nheld, <, G_N_ELEMENTS(g->held));
    g->held[g->nheld++] = (struct held){ name, offset, len, cb, opaque };
}

static void gated_write(void *store, struct bc_loop *loop, const struct iovec *iov,
                        int iovcnt, uint64_t offset, unsigned flags, bc_cb *cb, void *opaque)
{
    g_assert_cmpint(iovcnt, >, 0);
    gated_hold(store, *(const char *)iov[0].iov_base, offset, bc_iov_len(iov, iovcnt), cb,
               opaque);
}

static void gated_zero(void *store, struct bc_loop *loop, uint64_t offset, uint64_t len,
                       unsigned flags, bc_cb *cb, void *opaque)
{
    gated_hold(store, 'z', offset, len, cb, opaque);
}

static const struct sparse_store_ops gated_ops = {
    .read = gated_read,
    .write = gated_write,
    .zero = gated_zero,
};

/* Which operations' store I/O has been issued so far, in order, e.g. "AB". */
static char *issued(const struct gated *g)
{
    GString *s = g_string_new(NULL);

    for (unsigned i = 0; i < g->nheld; i++)
        g_string_append_c(s, g->held[i].name);
    return g_string_free(s, false);
}

/* Complete the oldest held store I/O. */
static void release(struct gated *g)
{
    g_assert_cmpuint(g->nreleased, <, g->nheld);
    struct held *h = &g->held[g->nreleased++];
    h->cb(h->opaque, 0);
}

/* Run whatever the loop has queued (deferred starts, grants, completions). */
static void settle(struct bc_loop *loop)
{
    for (int i = 0; i < 20; i++)
        g_assert_cmpint(bc_loop_run_once(loop, false), ==, 0);
}

/* One operation: a write of whole blocks filled with its name (or a zero, name 'z'). */
struct op {
    char name;
    uint8_t *buf;
    struct iovec iov;
    GString *done;          /* names of completed operations, in order */
};

static void op_done(void *opaque, int res)
{
    struct op *o = opaque;

    g_assert_cmpint(res, ==, 0);
    g_string_append_c(o->done, o->name);
}

static void start_write(struct sparse *sp, struct bc_loop *loop, struct op *o, char name,
                        uint64_t b0, uint64_t b1, GString *done)
{
    o->name = name;
    o->done = done;
    o->buf = g_malloc((b1 - b0) * BS);
    memset(o->buf, name, (b1 - b0) * BS);
    o->iov = (struct iovec){ o->buf, (b1 - b0) * BS };
    sparse_write(sp, loop, &o->iov, 1, b0 * BS, 0, op_done, o);
}

static void start_zero(struct sparse *sp, struct bc_loop *loop, struct op *o, uint64_t b0,
                       uint64_t b1, GString *done)
{
    o->name = 'z';
    o->done = done;
    o->buf = NULL;
    sparse_zero(sp, loop, b0 * BS, (b1 - b0) * BS, 0, op_done, o);
}

#define CHECK_ISSUED(g, want, when)                                                          \
    do {                                                                                     \
        g_autofree char *got_ = issued(g);                                                   \
        if (strcmp(got_, (want)) != 0)                                                       \
            g_test_fail_printf("%s: store I/O issued for \"%s\", want \"%s\"", (when), got_, \
                               (want));                                                      \
    } while (0)

/*
 * A chain of conflicts: A holds block 0; B (blocks 0-1) waits for A; C (block 1) overlaps
 * only B.  C must wait for B, which arrived first, although nothing running is in its
 * way; D (block 5) overlaps nobody and runs at once.  B is a zero, so kinds mix.
 */
static void test_no_overtaking(void)
{
    struct bc_loop *loop = tu_loop_new();
    struct gated g = { 0 };
    struct sparse sp;
    struct op a, b, c, d;
    GString *done = g_string_new(NULL);

    sparse_init(&sp, NULL, NBLOCKS * BS, BS, &gated_ops, &g);
    start_write(&sp, loop, &a, 'A', 0, 1, done);
    settle(loop);
    CHECK_ISSUED(&g, "A", "A alone");
    start_zero(&sp, loop, &b, 0, 2, done);
    start_write(&sp, loop, &c, 'C', 1, 2, done);
    start_write(&sp, loop, &d, 'D', 5, 6, done);
    settle(loop);
    CHECK_ISSUED(&g, "AD", "A running, B, C and D started (C overlaps only B, D nobody)");
    release(&g);                        /* A */
    settle(loop);
    CHECK_ISSUED(&g, "ADz", "A finished");
    release(&g);                        /* D */
    settle(loop);
    CHECK_ISSUED(&g, "ADz", "D finished");
    release(&g);                        /* B */
    settle(loop);
    CHECK_ISSUED(&g, "ADzC", "B finished");
    release(&g);                        /* C */
    settle(loop);
    if (strcmp(done->str, "ADzC") != 0)
        g_test_fail_printf("completed in the order \"%s\", want \"ADzC\"", done->str);
    for (uint64_t blk = 0; blk < NBLOCKS; blk++) {
        uint64_t n;
        bool want = blk < 2 || blk == 5;
        g_assert_cmpint(sparse_present(&sp, blk * BS, BS, &n), ==, want);
    }
    sparse_destroy(&sp);
    g_string_free(done, true);
    g_free(a.buf);
    g_free(c.buf);
    g_free(d.buf);
    tu_loop_free(loop);
}

/* Three writes of the same block: the two that wait get it in the order they came. */
static void test_same_range_fifo(void)
{
    struct bc_loop *loop = tu_loop_new();
    struct gated g = { 0 };
    struct sparse sp;
    struct op o[4];
    GString *done = g_string_new(NULL);

    sparse_init(&sp, NULL, NBLOCKS * BS, BS, &gated_ops, &g);
    start_write(&sp, loop, &o[0], 'A', 3, 4, done);
    settle(loop);
    start_write(&sp, loop, &o[1], 'B', 3, 4, done);
    settle(loop);
    start_write(&sp, loop, &o[2], 'C', 3, 4, done);
    settle(loop);
    start_write(&sp, loop, &o[3], 'D', 2, 5, done);
    settle(loop);
    CHECK_ISSUED(&g, "A", "A running, B, C and D waiting");
    for (unsigned i = 0; i < 4; i++) {
        release(&g);
        settle(loop);
    }
    CHECK_ISSUED(&g, "ABCD", "all finished");
    if (strcmp(done->str, "ABCD") != 0)
        g_test_fail_printf("completed in the order \"%s\", want \"ABCD\"", done->str);
    sparse_destroy(&sp);
    g_string_free(done, true);
    for (unsigned i = 0; i < 4; i++)
        g_free(o[i].buf);
    tu_loop_free(loop);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv, 60);
    tu_add_isolated("/layers/sparse/range-lock/no-overtaking", test_no_overtaking);
    tu_add_isolated("/layers/sparse/range-lock/same-range-fifo", test_same_range_fifo);
    return g_test_run();
}
