/* SPDX-License-Identifier: MIT */
/* The sparse-layer engine behind overlay and ram: presence bitmap, range locks, copy-up.
 * See "Notes on the design" in sparse.h. */
#include <errno.h>
#include <string.h>

#include "layers/sparse.h"

enum sp_kind { SP_WRITE, SP_ZERO, SP_DISCARD };

/* One piece of store I/O an operation issues under its range lock. */
struct sp_seg {
    uint64_t offset, len;   /* layer bytes written */
    uint64_t skip;          /* source: bytes into the operation's iov (SP_WRITE) */
    void *buf;              /* copy-up buffer of one block, or NULL */
    uint64_t blk;           /* the block a copy-up buffer holds */
    bool zero;              /* store zero instead of write */
    bool punch;             /* give back the space of dropped blocks */
    bool mark;              /* mark [offset, offset+len) present on success */
};

/* A range [start, end) of layer bytes where the stack below reads as zeros. */
struct sp_zext {
    uint64_t start, end;
};

struct sp_op {
    struct sparse *sp;
    struct bc_loop *loop;
    bc_cb *cb;
    void *opaque;
    enum sp_kind kind;
    const struct iovec *iov;
    int iovcnt;
    uint64_t offset, len;
    unsigned flags;
    GArray *zmap;           /* SP_ZERO, SP_DISCARD: struct sp_zext, where the stack below
                             * reads as zeros in [b0, b1), sorted and merged */
    guint zcur;             /* first zmap entry that may still matter to plan() */
    uint64_t b0, b1;        /* locked blocks [b0, b1) */
    struct bc_blocker range;    /* the range lock on [b0, b1), in sp->locks */
    struct bc_task task;
    unsigned pending;
    int err;
    GArray *segs;           /* struct sp_seg */
    struct iovec *wiov;     /* scratch for one segment's iovecs */
};

/* Under sp->lock; returns how many bits changed. */
static uint64_t set_bits(struct sparse *sp, uint64_t b0, uint64_t b1, bool on)
{
    uint64_t n = 0;

    for (uint64_t b = b0; b < b1; b++) {
        uint8_t *p = &sp->bitmap[b >> 3];
        uint8_t m = 1u << (b & 7);
        if (((*p & m) != 0) == on)
            continue;
        *p = on ? (*p | m) : (*p & ~m);
        n++;
        uint64_t page = (b >> 3) / SPARSE_PAGE;
        if (!sp->dirty[page]) {
            sp->dirty[page] = 1;
            sp->ndirty++;
        }
    }
    if (n > 0)
        __atomic_store_n(&sp->npresent, on ? sp->npresent + n : sp->npresent - n,
                         __ATOMIC_RELAXED);
    return n;
}

void sparse_init(struct sparse *sp, struct layer *l, uint64_t size, uint32_t bs,
                 const struct sparse_store_ops *ops, void *store)
{
    memset(sp, 0, sizeof(*sp));
    sp->layer = l;
    sp->ops = ops;
    sp->store = store;
    sp->size = size;
    sp->bs = bs;
    sp->shift = (unsigned)__builtin_ctz(bs);
    sp->nblocks = (size + bs - 1) >> sp->shift;
    sp->bitmap_len = MAX(SPARSE_PAGE, (((sp->nblocks + 7) / 8) + SPARSE_PAGE - 1) /
                                          SPARSE_PAGE * SPARSE_PAGE);
    sp->bitmap = g_malloc0(sp->bitmap_len);
    sp->dirty = g_malloc0(sp->bitmap_len / SPARSE_PAGE);
    g_mutex_init(&sp->lock);
    bc_blockers_init(&sp->locks);
}

void sparse_destroy(struct sparse *sp)
{
    bc_blockers_destroy(&sp->locks);
    g_free(sp->bitmap);
    g_free(sp->dirty);
    g_mutex_clear(&sp->lock);
    sp->bitmap = NULL;
    sp->dirty = NULL;
}

int sparse_present(struct sparse *sp, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    if (offset >= (sp->nblocks << sp->shift)) {
        *pnum = len;
        return 0;
    }
    uint64_t b = offset >> sp->shift;
    g_mutex_lock(&sp->lock);
    bool state = bit_get(sp->bitmap, b);
    uint64_t e = b + 1;
    uint64_t last = MIN(sp->nblocks, ((offset + len - 1) >> sp->shift) + 1);
    uint8_t same = state ? 0xff : 0;
    while (e < last) {
        if ((e & 7) == 0 && e + 8 <= last && sp->bitmap[e >> 3] == same) {
            e += 8;     /* a whole byte in the same state */
            continue;
        }
        if (bit_get(sp->bitmap, e) != state)
            break;
        e++;
    }
    g_mutex_unlock(&sp->lock);
    *pnum = MIN(len, (e << sp->shift) - offset);
    return state ? 1 : 0;
}

uint64_t sparse_count(struct sparse *sp)
{
    uint64_t n = 0;

    g_mutex_lock(&sp->lock);
    for (uint64_t i = 0; i < (sp->nblocks + 7) / 8; i++)
        n += (uint64_t)__builtin_popcount(sp->bitmap[i]);
    g_mutex_unlock(&sp->lock);
    return n;
}

void sparse_load(struct sparse *sp, const uint8_t *bm)
{
    memcpy(sp->bitmap, bm, sp->bitmap_len);
    uint64_t n = sparse_count(sp);
    __atomic_store_n(&sp->npresent, n, __ATOMIC_RELAXED);
}

bool sparse_set(struct sparse *sp, uint64_t b, bool on)
{
    g_mutex_lock(&sp->lock);
    bool changed = set_bits(sp, b, b + 1, on) > 0;
    g_mutex_unlock(&sp->lock);
    return changed;
}

void sparse_read(struct sparse *sp, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                 uint64_t offset, bc_cb *cb, void *opaque)
{
    sp->ops->read(sp->store, loop, iov, iovcnt, offset, cb, opaque);
}

uint64_t sparse_take_dirty(struct sparse *sp, uint8_t *copy, uint8_t *pages)
{
    uint64_t n = 0;

    g_mutex_lock(&sp->lock);
    for (uint64_t p = 0; p < sp->bitmap_len / SPARSE_PAGE; p++) {
        pages[p] = sp->dirty[p];
        if (!sp->dirty[p])
            continue;
        memcpy(copy + p * SPARSE_PAGE, sp->bitmap + p * SPARSE_PAGE, SPARSE_PAGE);
        sp->dirty[p] = 0;
        n++;
    }
    sp->ndirty = 0;
    g_mutex_unlock(&sp->lock);
    return n;
}

void sparse_redirty(struct sparse *sp, const uint8_t *pages)
{
    g_mutex_lock(&sp->lock);
    for (uint64_t p = 0; p < sp->bitmap_len / SPARSE_PAGE; p++)
        if (pages[p] && !sp->dirty[p]) {
            sp->dirty[p] = 1;
            sp->ndirty++;
        }
    g_mutex_unlock(&sp->lock);
}

/* ---- operations -------------------------------------------------------------------- */

static void op_finish(struct sp_op *op)
{
    struct sparse *sp = op->sp;
    bc_cb *cb = op->cb;
    void *opaque = op->opaque;
    int err = op->err;

    g_mutex_lock(&sp->lock);
    if (err == 0) {
        for (guint i = 0; i < op->segs->len; i++) {
            struct sp_seg *s = &g_array_index(op->segs, struct sp_seg, i);
            if (s->mark) {
                uint64_t n = set_bits(sp, s->offset >> sp->shift,
                                      ((s->offset + s->len - 1) >> sp->shift) + 1, true);
                __atomic_store_n(&sp->nmarked, sp->nmarked + n, __ATOMIC_RELAXED);
            }
        }
    }
    g_mutex_unlock(&sp->lock);

    /* The blocks are marked: let the next operations on them in. */
    bc_blocker_release(&sp->locks, &op->range);
    for (guint i = 0; i < op->segs->len; i++)
        bc_buf_free(g_array_index(op->segs, struct sp_seg, i).buf);
    g_array_free(op->segs, true);
    if (op->zmap != NULL)
        g_array_free(op->zmap, true);
    g_free(op->wiov);
    g_free(op);
    cb(opaque, err);
}

static void op_write_done(void *opaque, int res)
{
    struct sp_op *op = opaque;

    if (res < 0 && op->err == 0)
        op->err = res;
    if (--op->pending == 0)
        op_finish(op);
}

static void op_finish_task(struct bc_task *task)
{
    op_finish(bc_container_of(task, struct sp_op, task));
}

/* Phase 2: every copy-up is in; merge and issue the store writes. */
static void op_write(struct sp_op *op)
{
    struct sparse *sp = op->sp;

    op->pending = 1;
    if (op->err == 0) {
        for (guint i = 0; i < op->segs->len; i++) {
            struct sp_seg *s = &g_array_index(op->segs, struct sp_seg, i);
            op->pending++;
            if (s->buf != NULL) {
                /* Merge the operation's bytes within this block into the copy. */
                uint64_t bstart = s->blk << sp->shift;
                uint64_t a = MAX(op->offset, bstart);
                uint64_t e = MIN(op->offset + op->len, bstart + sp->bs);
                if (op->kind == SP_WRITE)
                    bc_iov_to_buf(op->iov, op->iovcnt, a - op->offset,
                                  (char *)s->buf + (a - bstart), e - a);
                else
                    memset((char *)s->buf + (a - bstart), 0, e - a);
                struct iovec *one = &op->wiov[i * (size_t)op->iovcnt];
                one->iov_base = s->buf;
                one->iov_len = sp->bs;
                sp->ops->write(sp->store, op->loop, one, 1, bstart,
                               op->flags & BC_REQ_FUA, op_write_done, op);
            } else if (s->punch) {
                sp->ops->punch(sp->store, op->loop, s->offset, s->len, op_write_done, op);
            } else if (s->zero) {
                sp->ops->zero(sp->store, op->loop, s->offset, s->len,
                              op->flags & (BC_REQ_FUA | BC_REQ_MAY_UNMAP), op_write_done, op);
            } else {
                /* Each segment gets its own slice of the scratch array, alive until
                 * the operation finishes. */
                struct iovec *v = op->wiov + (size_t)i * (size_t)op->iovcnt;
                int n = bc_iov_slice(op->iov, op->iovcnt, s->skip, s->len, v, op->iovcnt,
                                     NULL);
                assert(n >= 0);
                sp->ops->write(sp->store, op->loop, v, n, s->offset, op->flags & BC_REQ_FUA,
                               op_write_done, op);
            }
        }
    }
    if (--op->pending == 0) {
        op->task.fn = op_finish_task;
        bc_loop_defer(op->loop, &op->task);
    }
}

static void op_copyup_done(void *opaque, int res)
{
    struct sp_op *op = opaque;

    if (res < 0 && op->err == 0)
        op->err = res;
    if (--op->pending == 0)
        op_write(op);
}

static void op_write_task(struct bc_task *task)
{
    op_write(bc_container_of(task, struct sp_op, task));
}

static void add_seg(struct sp_op *op, struct sp_seg s)
{
    g_array_append_val(op->segs, s);
}

/* Fill op->zmap: where the stack below reads as zeros within the locked blocks, walked in
 * extents (presence runs and block status), not block by block.  Runs under the range lock,
 * so the decision holds for this operation; without a disk (the engine alone, in unit
 * tests) there is nothing known below, so nothing is zero. */
static void map_below(struct sp_op *op)
{
    struct sparse *sp = op->sp;
    uint64_t pos = op->b0 << sp->shift;
    uint64_t end = MIN(op->b1 << sp->shift, sp->size);

    op->zmap = g_array_new(false, false, sizeof(struct sp_zext));
    if (sp->layer == NULL || sp->layer->disk == NULL)
        return;
    while (pos < end) {
        uint64_t n;
        int r = layer_next_status(sp->layer, pos, end - pos, &n);
        assert(n > 0 && n <= end - pos);
        if (r == 0) {
            struct sp_zext *last = op->zmap->len == 0 ? NULL
                                   : &g_array_index(op->zmap, struct sp_zext, op->zmap->len - 1);
            if (last != NULL && last->end == pos) {
                last->end += n;
            } else {
                struct sp_zext z = { pos, pos + n };
                g_array_append_val(op->zmap, z);
            }
        }
        pos += n;
    }
}

/* The zmap entry holding offset, or NULL; moves the cursor past entries before offset
 * (plan() asks in increasing order). */
static const struct sp_zext *zext_at(struct sp_op *op, uint64_t offset)
{
    while (op->zcur < op->zmap->len &&
           g_array_index(op->zmap, struct sp_zext, op->zcur).end <= offset)
        op->zcur++;
    if (op->zcur == op->zmap->len)
        return NULL;
    const struct sp_zext *z = &g_array_index(op->zmap, struct sp_zext, op->zcur);
    return z->start <= offset ? z : NULL;
}

/* True if the stack below reads as zeros in all of [a, e). */
static bool below_zero(struct sp_op *op, uint64_t a, uint64_t e)
{
    const struct sp_zext *z = zext_at(op, a);

    return z != NULL && z->end >= e;
}

/* A run of whole blocks from b (b < limit) all alike below: over zeros (*zero) or over
 * some data each.  Returns the run's end, at most limit; one step per zmap entry. */
static uint64_t below_run(struct sp_op *op, uint64_t b, uint64_t limit, bool *zero)
{
    struct sparse *sp = op->sp;
    uint64_t bstart = b << sp->shift;
    const struct sp_zext *z = zext_at(op, bstart);

    *zero = z != NULL && z->end >= bstart + sp->bs;
    if (*zero)
        return MIN(limit, z->end >> sp->shift);
    /* Over data: up to the first later block that some entry covers whole. */
    for (guint i = op->zcur; i < op->zmap->len; i++) {
        const struct sp_zext *x = &g_array_index(op->zmap, struct sp_zext, i);
        uint64_t c = MAX(b + 1, (x->start + sp->bs - 1) >> sp->shift);
        if (c >= limit)
            break;
        if (((c + 1) << sp->shift) <= x->end)
            return c;
    }
    return limit;
}

/* Plan the segments for blocks [b0, b1) of the operation; called under sp->lock.  Zeroing
 * decides per block: a block over zeros below is dropped (with a partial one over zeros
 * left absent), a block over data below becomes a present zero block; a discard drops
 * only blocks over zeros. */
static void plan(struct sp_op *op)
{
    struct sparse *sp = op->sp;
    uint64_t end = op->offset + op->len;

    for (uint64_t b = op->b0; b < op->b1;) {
        bool present = bit_get(sp->bitmap, b);
        uint64_t bstart = b << sp->shift;
        uint64_t a = MAX(op->offset, bstart);
        bool whole = a == bstart && end >= bstart + sp->bs;

        if (op->kind == SP_WRITE && (op->flags & LAYER_NO_OVERWRITE) && present) {
            b++;
            continue;
        }
        if (!whole) {
            uint64_t e = MIN(end, bstart + sp->bs);
            if (present) {
                if (op->kind == SP_WRITE)
                    add_seg(op, (struct sp_seg){ .offset = a, .len = e - a,
                                                 .skip = a - op->offset });
                else if (op->kind == SP_ZERO)
                    add_seg(op, (struct sp_seg){ .offset = a, .len = e - a, .zero = true });
            } else if (op->kind == SP_WRITE ||
                       (op->kind == SP_ZERO && !below_zero(op, a, e))) {
                add_seg(op, (struct sp_seg){ .offset = bstart, .len = sp->bs,
                                             .buf = bc_buf_alloc(sp->bs), .blk = b,
                                             .mark = true });
            }
            b++;
            continue;
        }
        /* A run of whole blocks with the same handling. */
        uint64_t last_whole = end >> sp->shift;   /* blocks < this are whole (from a) */
        uint64_t e = MIN(op->b1, last_whole);
        bool zero = false;
        if (op->kind == SP_WRITE && (op->flags & LAYER_NO_OVERWRITE)) {
            for (uint64_t x = b + 1; x < e; x++) {
                if (bit_get(sp->bitmap, x)) {
                    e = x;
                    break;
                }
            }
        } else if (op->kind != SP_WRITE) {
            e = below_run(op, b, e, &zero);
        }
        uint64_t off = bstart, len = (e - b) << sp->shift;
        switch (op->kind) {
        case SP_WRITE:
            add_seg(op, (struct sp_seg){ .offset = off, .len = len, .skip = off - op->offset,
                                         .mark = true });
            break;
        case SP_ZERO:
            if (!zero) {
                add_seg(op, (struct sp_seg){ .offset = off, .len = len, .zero = true,
                                             .mark = true });
                break;
            }
            /* below reads as zeros, so dropping the blocks zeroes them */
            G_GNUC_FALLTHROUGH;
        case SP_DISCARD:
            if (!zero)
                break;      /* advisory: keep what the stack below does not make redundant */
            set_bits(sp, b, e, false);
            if (sp->ops->dropped != NULL)
                sp->ops->dropped(sp->store, b, e);
            if (sp->ops->punch != NULL)
                add_seg(op, (struct sp_seg){ .offset = off, .len = len, .punch = true });
            break;
        }
        b = e;
    }
}

/* Runs with the range lock held: plan, copy up, write. */
static void op_locked(struct sp_op *op)
{
    struct sparse *sp = op->sp;

    op->pending = 1;
    for (guint i = 0; i < op->segs->len; i++) {
        struct sp_seg *s = &g_array_index(op->segs, struct sp_seg, i);
        if (s->buf == NULL)
            continue;
        op->pending++;
        struct iovec *one = &op->wiov[i * (size_t)op->iovcnt];
        one->iov_base = s->buf;
        one->iov_len = sp->bs;
        layer_next_read(sp->layer, op->loop, one, 1, s->blk << sp->shift, op_copyup_done, op);
    }
    if (--op->pending == 0) {
        op->task.fn = op_write_task;
        bc_loop_defer(op->loop, &op->task);
    }
}

/* The range lock is held: plan the segments, then start the I/O. */
static void op_granted(struct sp_op *op)
{
    struct sparse *sp = op->sp;

    if (op->kind != SP_WRITE)
        map_below(op);
    g_mutex_lock(&sp->lock);
    plan(op);
    g_mutex_unlock(&sp->lock);
    /* Scratch iovecs: one slice of iovcnt entries per segment. */
    op->wiov = g_new0(struct iovec, (size_t)MAX(op->segs->len, 1) * (size_t)op->iovcnt);
    op_locked(op);
}

static void op_granted_task(struct bc_task *task)
{
    op_granted(bc_container_of(task, struct sp_op, range.task));
}

/* Take the range lock, or wait behind every earlier operation it overlaps. */
static void op_try_task(struct bc_task *task)
{
    struct sp_op *op = bc_container_of(task, struct sp_op, task);

    op->range.start = op->b0;
    op->range.end = op->b1;
    op->range.strong = true;     /* any two overlapping operations exclude each other */
    op->range.task.fn = op_granted_task;
    if (bc_blocker_acquire(&op->sp->locks, &op->range, op->loop))
        op_granted(op);
}

static void op_begin(struct sparse *sp, enum sp_kind kind, struct bc_loop *loop,
                     const struct iovec *iov, int iovcnt, uint64_t offset, uint64_t len,
                     unsigned flags, bc_cb *cb, void *opaque)
{
    if (len == 0 || offset >= sp->size) {
        layer_complete_later(loop, cb, opaque, len == 0 ? 0 : -ENOSPC);
        return;
    }
    struct sp_op *op = g_new0(struct sp_op, 1);
    op->sp = sp;
    op->loop = loop;
    op->cb = cb;
    op->opaque = opaque;
    op->kind = kind;
    op->iov = iov;
    op->iovcnt = MAX(iovcnt, 1);
    op->offset = offset;
    op->len = MIN(len, sp->size - offset);
    op->flags = flags;
    op->b0 = offset >> sp->shift;
    op->b1 = ((offset + op->len - 1) >> sp->shift) + 1;
    op->segs = g_array_new(false, true, sizeof(struct sp_seg));
    op->task.fn = op_try_task;
    /* Never complete inside the call: start from the loop. */
    bc_loop_defer(loop, &op->task);
}

void sparse_write(struct sparse *sp, struct bc_loop *loop, const struct iovec *iov,
                  int iovcnt, uint64_t offset, unsigned flags, bc_cb *cb, void *opaque)
{
    op_begin(sp, SP_WRITE, loop, iov, iovcnt, offset, bc_iov_len(iov, iovcnt), flags, cb,
             opaque);
}

void sparse_zero(struct sparse *sp, struct bc_loop *loop, uint64_t offset, uint64_t len,
                 unsigned flags, bc_cb *cb, void *opaque)
{
    op_begin(sp, SP_ZERO, loop, NULL, 0, offset, len, flags, cb, opaque);
}

void sparse_discard(struct sparse *sp, struct bc_loop *loop, uint64_t offset, uint64_t len,
                    bc_cb *cb, void *opaque)
{
    op_begin(sp, SP_DISCARD, loop, NULL, 0, offset, len, 0, cb, opaque);
}
