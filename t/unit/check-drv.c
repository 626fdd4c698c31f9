/* SPDX-License-Identifier: MIT */
/* The checking test driver (see check-drv.h): ram underneath, the driver contract of
 * blockcore.h checked on top. */
#include "t/unit/check-drv.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>

/*
 * Notes on the design
 *
 * Requests go to bc_drv_ram unchanged; the engine's completion (dreq->done) is swapped
 * for ours while the request is in the ram driver, kept in drv_scratch[0] (ram uses only
 * dreq->task and drv_scratch[3]).  All state is guarded by lock: loops on several threads
 * may share the device.
 */

#define CHK_MAX_INFLIGHT 4096
#define CHK_IOV_MAX 1024

struct chk_inflight {
    struct bc_dreq *dreq;
    uint64_t start, end;
    enum bc_op op;
};

struct chk {
    void *ram;
    struct bc_props props;
    GMutex lock;                        /* protects everything below */
    struct tu_check_stats st;
    struct chk_inflight inflight[CHK_MAX_INFLIGHT];
    unsigned ninflight;
};

static const char *op_name(enum bc_op op)
{
    static const char *const n[] = { "READ", "WRITE", "FLUSH", "WRITE_ZEROES", "DISCARD" };
    return (unsigned)op < G_N_ELEMENTS(n) ? n[op] : "?";
}

/* Lock held. */
static void violation(struct chk *c, const struct bc_dreq *d, const char *what)
{
    if (!c->st.violations++)
        snprintf(c->st.first_violation, sizeof c->st.first_violation,
                 "%s [%" PRIu64 ", +%" PRIu64 ") flags %#x iovcnt %d: %s", op_name(d->op),
                 d->offset, d->len, d->flags, d->iovcnt, what);
}

static void log_event(struct chk *c, const struct bc_dreq *d, bool done)
{
    if (c->st.nlog < TU_CHECK_LOG)
        c->st.log[c->st.nlog++] = (struct tu_check_event){
            .op = d->op, .done = done, .flags = d->flags, .offset = d->offset, .len = d->len,
        };
}

static bool writes_data(enum bc_op op)
{
    return op == BC_OP_WRITE || op == BC_OP_WRITE_ZEROES || op == BC_OP_DISCARD;
}

/* Lock held: everything blockcore.h promises about one driver request. */
static void check_request(struct chk *c, const struct bc_dreq *d)
{
    const struct bc_props *p = &c->props;
    uint64_t limit = (p->size + p->req_align - 1) / p->req_align * p->req_align;

    if (d->op == BC_OP_FLUSH) {
        if (d->len || d->iovcnt)
            violation(c, d, "flush with a length or buffers");
        return;
    }
    if (d->offset % p->req_align || d->len % p->req_align)
        violation(c, d, "offset or length not a multiple of req_align");
    if (d->offset + d->len > limit || d->offset + d->len < d->offset)
        violation(c, d, "runs past the req_align boundary after the end of the device");
    if (d->op == BC_OP_WRITE_ZEROES && p->zero_align && d->offset % p->zero_align)
        violation(c, d, "write-zeroes offset not a multiple of zero_align");
    if (d->op == BC_OP_DISCARD && (d->offset % p->discard_align || d->len % p->discard_align))
        violation(c, d, "discard not aligned to discard_align");
    if (d->op == BC_OP_WRITE && (d->flags & BC_REQ_FUA) && !p->fua_native)
        violation(c, d, "BC_REQ_FUA passed to a driver without native FUA");
    if (d->op != BC_OP_READ && d->op != BC_OP_WRITE)
        return;
    if (d->len > p->max_transfer)
        violation(c, d, "longer than max_transfer");
    if (d->iovcnt < 1 || d->iovcnt > CHK_IOV_MAX)
        violation(c, d, "iovcnt outside 1..IOV_MAX");
    uint64_t total = 0;
    for (int i = 0; i < d->iovcnt; i++) {
        if ((uintptr_t)d->iov[i].iov_base % p->mem_align)
            violation(c, d, "iovec base not aligned to mem_align");
        if (d->iov[i].iov_len % p->req_align)
            violation(c, d, "iovec length not a multiple of req_align");
        total += d->iov[i].iov_len;
    }
    if (total != d->len)
        violation(c, d, "iovec total differs from the request length");
}

static void chk_done(struct bc_dreq *d, int res)
{
    struct chk *c = (struct chk *)(uintptr_t)d->drv_scratch[1];
    void (*done)(struct bc_dreq *, int) =
        (void (*)(struct bc_dreq *, int))(uintptr_t)d->drv_scratch[0];

    g_mutex_lock(&c->lock);
    for (unsigned i = 0; i < c->ninflight; i++)
        if (c->inflight[i].dreq == d) {
            c->inflight[i] = c->inflight[--c->ninflight];
            break;
        }
    log_event(c, d, true);
    g_mutex_unlock(&c->lock);
    d->done = done;
    done(d, res);
}

static void chk_submit(void *state, struct bc_dreq *d)
{
    struct chk *c = state;

    g_mutex_lock(&c->lock);
    check_request(c, d);
    c->st.requests[d->op]++;
    if (d->op == BC_OP_WRITE && (d->flags & BC_REQ_FUA))
        c->st.fua_flags++;
    if (writes_data(d->op)) {
        for (unsigned i = 0; i < c->ninflight; i++) {
            const struct chk_inflight *f = &c->inflight[i];
            if (writes_data(f->op) && d->offset < f->end && f->start < d->offset + d->len) {
                char what[128];
                snprintf(what, sizeof what, "overlaps %s [%" PRIu64 ", %" PRIu64
                         ") still in flight", op_name(f->op), f->start, f->end);
                violation(c, d, what);
            }
        }
    }
    if (c->ninflight < CHK_MAX_INFLIGHT)
        c->inflight[c->ninflight++] = (struct chk_inflight){
            .dreq = d, .start = d->offset, .end = d->offset + d->len, .op = d->op,
        };
    else
        violation(c, d, "more requests in flight than the checker tracks");
    log_event(c, d, false);
    g_mutex_unlock(&c->lock);

    d->drv_scratch[0] = (uint64_t)(uintptr_t)d->done;
    d->drv_scratch[1] = (uint64_t)(uintptr_t)c;
    d->done = chk_done;
    bc_drv_ram.submit(c->ram, d);
}

static void *chk_open(const struct bc_open_args *args, struct bc_props *props, GError **errp)
{
    const char *fua = args->opts ? g_hash_table_lookup(args->opts, "fua-native") : NULL;
    struct chk *c = g_new0(struct chk, 1);

    c->ram = bc_drv_ram.open(args, props, errp);
    if (!c->ram) {
        g_free(c);
        return NULL;
    }
    if (fua && strcmp(fua, "0") == 0)
        props->fua_native = false;
    c->props = *props;
    g_mutex_init(&c->lock);
    return c;
}

static void chk_close(void *state)
{
    struct chk *c = state;

    g_assert_cmpuint(c->ninflight, ==, 0);
    bc_drv_ram.close(c->ram);
    g_mutex_clear(&c->lock);
    g_free(c);
}

static int chk_block_status(void *state, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    struct chk *c = state;
    return bc_drv_ram.block_status(c->ram, offset, len, pnum);
}

void tu_check_get(struct bc_dev *dev, struct tu_check_stats *st)
{
    struct chk *c = bc_dev_driver_state(dev);

    g_mutex_lock(&c->lock);
    *st = c->st;
    g_mutex_unlock(&c->lock);
}

void tu_check_log_reset(struct bc_dev *dev)
{
    struct chk *c = bc_dev_driver_state(dev);

    g_mutex_lock(&c->lock);
    c->st.nlog = 0;
    g_mutex_unlock(&c->lock);
}

static const char *const chk_keys[] = {
    "size", "align", "mem-align", "max-transfer", "fua-native", NULL,
};

const struct bc_driver tu_drv_check = {
    .name = "check",
    .keys = chk_keys,
    .open = chk_open,
    .close = chk_close,
    .submit = chk_submit,
    .block_status = chk_block_status,
};
