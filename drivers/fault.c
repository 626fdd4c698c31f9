/* SPDX-License-Identifier: MIT */
/* The fault driver (tests only): a ram disk whose reads and writes fail with a chosen
 * errno at chosen offsets or after a number of requests, set by keys or at run time. */
#include <assert.h>
#include <errno.h>

#include "drivers/ram.h"
#include "drivers/drivers.h"
#include "drivers/util.h"
#include "blockcore/testing.h"

/*
 * Notes on the design
 *
 * A rule fails the requests of its kind (reads; writes, which include write-zeroes) that
 * touch [offset, offset+len), or every request of its kind when len is 0.  With
 * after_n >= 0 the first after_n requests the rule matches pass and every later one fails.
 * A rule with len 0 and after_n < 0 is off.  The key fault-after sets a third rule that
 * counts reads and writes together.  Flush and discard never fail.  A failed request does
 * not touch the data.
 *
 * The rules and their counters are guarded by fault->lock: loops on several threads
 * submit to one device while a test changes the rules.
 */

#define BC_FAULT_MAGIC 0x466c7448u

enum { BC_FAULT_READ, BC_FAULT_WRITE, BC_FAULT_ANY, BC_FAULT_NRULES };

struct bc_fault_rule {
    uint64_t offset, len;
    int err;
    int64_t after_n;   /* -1: no count */
    uint64_t seen;     /* matching requests so far */
};

struct bc_fault {
    uint32_t magic;
    struct bc_ram *ram;
    GMutex lock;                                 /* protects rule[] */
    struct bc_fault_rule rule[BC_FAULT_NRULES];
};

static bool bc_fault_rule_on(const struct bc_fault_rule *r)
{
    return r->len > 0 || r->after_n >= 0;
}

/* Does r fail [offset, offset+len)? Counts the request when it matches. */
static bool bc_fault_rule_hit(struct bc_fault_rule *r, uint64_t offset, uint64_t len)
{
    if (!bc_fault_rule_on(r))
        return false;
    if (r->len > 0 && !(offset < r->offset + r->len && r->offset < offset + len))
        return false;
    if (r->after_n >= 0 && r->seen < (uint64_t)r->after_n) {
        r->seen++;
        return false;
    }
    return true;
}

/* 0 or the -errno dreq must fail with. */
static int bc_fault_check(struct bc_fault *f, const struct bc_dreq *dreq)
{
    int kind, err = 0;

    if (dreq->op == BC_OP_READ)
        kind = BC_FAULT_READ;
    else if (dreq->op == BC_OP_WRITE || dreq->op == BC_OP_WRITE_ZEROES)
        kind = BC_FAULT_WRITE;
    else
        return 0;

    g_mutex_lock(&f->lock);
    if (bc_fault_rule_hit(&f->rule[kind], dreq->offset, dreq->len))
        err = f->rule[kind].err;
    else if (bc_fault_rule_hit(&f->rule[BC_FAULT_ANY], dreq->offset, dreq->len))
        err = f->rule[BC_FAULT_ANY].err;
    g_mutex_unlock(&f->lock);
    return -err;
}

static void bc_fault_rule_set(struct bc_fault_rule *r, uint64_t offset, uint64_t len, int err,
                              int64_t after_n)
{
    *r = (struct bc_fault_rule){
        .offset = offset,
        .len = len,
        .err = err,
        .after_n = after_n < 0 ? -1 : after_n,
    };
}

void bc_fault_set(void *fault_state, enum bc_op op, uint64_t offset, uint64_t len, int err,
                  int64_t after_n)
{
    struct bc_fault *f = fault_state;

    g_return_if_fail(f && f->magic == BC_FAULT_MAGIC);
    g_return_if_fail(op == BC_OP_READ || op == BC_OP_WRITE);
    g_return_if_fail(err > 0 || (len == 0 && after_n < 0));
    g_mutex_lock(&f->lock);
    bc_fault_rule_set(&f->rule[op == BC_OP_READ ? BC_FAULT_READ : BC_FAULT_WRITE], offset, len,
                      err, after_n);
    g_mutex_unlock(&f->lock);
}

void bc_fault_clear(void *fault_state)
{
    struct bc_fault *f = fault_state;

    g_return_if_fail(f && f->magic == BC_FAULT_MAGIC);
    g_mutex_lock(&f->lock);
    for (int i = 0; i < BC_FAULT_NRULES; i++)
        bc_fault_rule_set(&f->rule[i], 0, 0, 0, -1);
    g_mutex_unlock(&f->lock);
}

static void bc_drv_fault_close(void *state)
{
    struct bc_fault *f = state;

    bc_ram_free(f->ram);
    g_mutex_clear(&f->lock);
    f->magic = 0;
    g_free(f);
}

static void *bc_drv_fault_open(const struct bc_open_args *args, struct bc_props *props,
                               GError **errp)
{
    struct bc_fault *f;
    uint64_t roff, woff, len;
    int64_t after;
    int err;
    bool has_r = bc_opt(args, "fault-read-offset"), has_w = bc_opt(args, "fault-write-offset");
    struct bc_ram *ram = bc_ram_new(args, props, errp);

    if (!ram)
        return NULL;
    if (!bc_opt_size(args, "fault-read-offset", false, 0, &roff, errp) ||
        !bc_opt_size(args, "fault-write-offset", false, 0, &woff, errp) ||
        !bc_opt_size(args, "fault-len", false, props->req_align, &len, errp) ||
        !bc_opt_errno(args, "fault-errno", EIO, &err, errp) ||
        !bc_opt_uint(args, "fault-after", INT64_MAX, -1, &after, errp))
        goto fail;
    if (len == 0) {
        g_set_error(errp, BC_ERROR, 0, "%s: key fault-len: must not be 0", bc_what(args));
        goto fail;
    }
    if (bc_opt(args, "fault-len") && !has_r && !has_w) {
        g_set_error(errp, BC_ERROR, 0,
                    "%s: key fault-len: needs fault-read-offset or fault-write-offset",
                    bc_what(args));
        goto fail;
    }

    f = g_new0(struct bc_fault, 1);
    f->magic = BC_FAULT_MAGIC;
    f->ram = ram;
    g_mutex_init(&f->lock);
    bc_fault_rule_set(&f->rule[BC_FAULT_READ], roff, has_r ? len : 0, err, -1);
    bc_fault_rule_set(&f->rule[BC_FAULT_WRITE], woff, has_w ? len : 0, err, -1);
    bc_fault_rule_set(&f->rule[BC_FAULT_ANY], 0, 0, err, after);
    return f;

fail:
    bc_ram_free(ram);
    return NULL;
}

static void bc_drv_fault_submit(void *state, struct bc_dreq *dreq)
{
    struct bc_fault *f = state;
    int res = bc_fault_check(f, dreq);

    if (res == 0)
        res = bc_ram_do(f->ram, dreq);
    bc_drv_complete_later(dreq, res);
}

static int bc_drv_fault_block_status(void *state, uint64_t offset, uint64_t len,
                                     uint64_t *pnum)
{
    struct bc_fault *f = state;

    return bc_ram_block_status(f->ram, offset, len, pnum);
}

static const char *const bc_drv_fault_keys[] = {
    BC_RAM_KEYS, "fault-read-offset", "fault-write-offset", "fault-len", "fault-errno",
    "fault-after", NULL,
};

const struct bc_driver bc_drv_fault = {
    .name = "fault",
    .keys = bc_drv_fault_keys,
    .open = bc_drv_fault_open,
    .close = bc_drv_fault_close,
    .submit = bc_drv_fault_submit,
    .block_status = bc_drv_fault_block_status,
};
