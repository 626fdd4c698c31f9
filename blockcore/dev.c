/* SPDX-License-Identifier: MIT */
/* The generic device layer: any read/write becomes aligned driver I/O.  Padding, bounce
 * buffers, head/tail read-modify-write, write serialization, splitting, FUA emulation and
 * the write-zeroes fallback live here and nowhere else. */

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/mman.h>

#include "blockcore/bc-internal.h"
#include "blockcore/testing.h"

/*
 * Notes on the design
 *
 * Every request is a struct bc_req driven by a small state machine.  It has at most one
 * driver request (req->dreq) in flight at a time; steps chain from its completion.  The
 * "direct" path (aligned offset, length and memory) hands the caller's iovecs to the
 * driver, split at max_transfer.  Everything else goes through the "bounce" path: the
 * padded range [pstart, pend) is processed in chunks of at most `chunk` bytes, each with
 * a bounce buffer taken from the budget and given back before the next chunk; for writes
 * the head and tail blocks of the padded range are read first (read-modify-write).
 *
 * A write takes its blocker before the first chunk and keeps it until the last one is
 * written, so a big unaligned write is atomic with respect to other writes even though
 * its bounce memory is bounded.  Blockers are taken before bounce memory and never the
 * other way round, so the two waits cannot deadlock.
 */

struct bc_dev {
    const struct bc_driver *drv;
    void *state;
    struct bc_props props;
    uint32_t unit;              /* max(req_align, mem_align) */
    bool serialize;             /* test hook */
    struct bc_blocker_list blockers;

    /* Statistics, updated with atomics. */
    uint64_t inflight, inflight_max, writes_inflight, writes_max;
    uint64_t n_rmw, n_bounced, n_blocker_waits;
};

enum bc_step {
    ST_DIRECT,          /* caller's buffers straight to the driver */
    ST_CHUNK_READ,      /* bounce path: read a chunk */
    ST_CHUNK_RMW,       /* bounce path: RMW read of the head and/or tail */
    ST_CHUNK_WRITE,     /* bounce path: write a chunk */
    ST_ZEROES,          /* driver write-zeroes of the aligned part */
    ST_ZERO_PIECE,      /* write of zero buffers for the unaligned parts / fallback */
    ST_DISCARD,
    ST_FLUSH,           /* a flush request, or the flush after an emulated FUA write */
};

struct bc_req {
    struct bc_dev *dev;
    struct bc_loop *loop;
    enum bc_op op;
    unsigned flags;
    const struct iovec *iov;
    int iovcnt;
    uint64_t offset, len;       /* the caller's request */
    uint64_t end;               /* offset + len, clamped to the device for reads */
    bc_cb *cb;
    void *opaque;

    enum bc_step step;
    uint64_t pos;               /* direct path: next byte; bounce path: chunk start */
    uint64_t pstart, pend;      /* bounce path: padded range */
    uint64_t chunk_end;
    uint32_t chunk;
    bool have_blocker;
    bool tail_saved;            /* multi-chunk RMW: tail block kept after the chunk area */
    unsigned rmw, rmw_reading;  /* RMW_* reads still needed / in flight */
    uint64_t zr[2][2];          /* write-zeroes: regions written with zero buffers */
    int zi;                     /* write-zeroes: current region */
    struct bc_blocker blocker;
    struct bc_bounce_wait bw;
    void *bounce;
    size_t bounce_len;
    struct iovec *slice;        /* direct path split: part of the caller's iovecs */
    struct iovec one;           /* bounce path: the iovec handed to the driver */
    int ret;
    struct bc_task task;
    struct bc_dreq dreq;
};

static void step(struct bc_req *req);
static void bounce_start(struct bc_req *req);
static void chunk_write_step(struct bc_req *req);

/* ---- shared zero source ---------------------------------------------------------- */

#define ZERO_BUF_LEN (1u << 20)

/* A read-only mapping of zeros used as the source of zero writes; never freed. */
static const void *zero_buf(void)
{
    static gsize once;
    static void *buf;

    if (g_once_init_enter(&once)) {
        buf = mmap(NULL, ZERO_BUF_LEN, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (buf == MAP_FAILED)
            g_error("mmap of the zero buffer failed: %s", g_strerror(errno));
        g_once_init_leave(&once, 1);
    }
    return buf;
}

/* ---- open/close ------------------------------------------------------------------ */

static bool is_pow2(uint64_t v)
{
    return v && !(v & (v - 1));
}

struct bc_dev *bc_dev_open(const struct bc_driver *drv, const struct bc_open_args *args,
                           GError **errp)
{
    struct bc_props props = { 0 };
    void *state = drv->open(args, &props, errp);
    struct bc_dev *dev;

    if (!state)
        return NULL;
    if (args->read_only)
        props.read_only = true;
    if (!props.max_transfer)
        props.max_transfer = 1u << 20;
    if (!is_pow2(props.req_align) || !is_pow2(props.mem_align) || props.mem_align > 4096 ||
        props.max_transfer % props.req_align ||
        (props.zero_align && !is_pow2(props.zero_align)) ||
        (props.discard_align && !is_pow2(props.discard_align))) {
        g_set_error(errp, BC_ERROR, EINVAL,
                    "%s: driver %s reported unusable alignment (request %u, memory %u, "
                    "max transfer %u)", args->what, drv->name, props.req_align,
                    props.mem_align, props.max_transfer);
        drv->close(state);
        return NULL;
    }
    dev = g_new0(struct bc_dev, 1);
    dev->drv = drv;
    dev->state = state;
    dev->props = props;
    dev->unit = MAX(props.req_align, props.mem_align);
    dev->serialize = true;
    bc_blockers_init(&dev->blockers);
    return dev;
}

void bc_dev_close(struct bc_dev *dev)
{
    if (!dev)
        return;
    assert(!__atomic_load_n(&dev->inflight, __ATOMIC_RELAXED));
    dev->drv->close(dev->state);
    bc_blockers_destroy(&dev->blockers);
    g_free(dev);
}

const struct bc_props *bc_dev_props(const struct bc_dev *dev) { return &dev->props; }
uint64_t bc_dev_size(const struct bc_dev *dev) { return dev->props.size; }
void *bc_dev_driver_state(struct bc_dev *dev) { return dev->state; }
const char *bc_dev_driver_name(const struct bc_dev *dev) { return dev->drv->name; }
void bc_dev_set_serialize(struct bc_dev *dev, bool on) { dev->serialize = on; }

void bc_dev_get_stats(struct bc_dev *dev, struct bc_dev_stats *st)
{
    st->driver_inflight = __atomic_load_n(&dev->inflight, __ATOMIC_RELAXED);
    st->driver_inflight_max = __atomic_load_n(&dev->inflight_max, __ATOMIC_RELAXED);
    st->driver_writes_max = __atomic_load_n(&dev->writes_max, __ATOMIC_RELAXED);
    st->rmw = __atomic_load_n(&dev->n_rmw, __ATOMIC_RELAXED);
    st->bounced = __atomic_load_n(&dev->n_bounced, __ATOMIC_RELAXED);
    st->blocker_waits = __atomic_load_n(&dev->n_blocker_waits, __ATOMIC_RELAXED);
}

char *bc_dev_drv_stats_text(struct bc_dev *dev)
{
    struct bc_drv_stats st = { 0 };

    if (dev->drv->get_stats == NULL)
        return NULL;
    dev->drv->get_stats(dev->state, &st);
    const struct { const char *name; uint64_t v; } f[] = {
        { "zero-copy requests", st.zero_copy_reqs }, { "zero-copy bytes", st.zero_copy_bytes },
        { "copied requests", st.copied_reqs }, { "copied bytes", st.copied_bytes },
        { "remote requests", st.remote_reqs }, { "bytes from remote", st.remote_read_bytes },
        { "bytes to remote", st.remote_write_bytes }, { "reconnects", st.reconnects },
        { "errors", st.errors },
    };
    GString *s = g_string_new(NULL);
    /* The figures that apply to the driver: it leaves the others at zero. */
    for (size_t i = 0; i < G_N_ELEMENTS(f); i++)
        if (f[i].v != 0)
            g_string_append_printf(s, "%s%s %" PRIu64, s->len ? ", " : "", f[i].name, f[i].v);
    if (s->len == 0)
        g_string_append(s, "no traffic");
    return g_string_free(s, false);
}

static void stat_max(uint64_t *max, uint64_t v)
{
    uint64_t cur = __atomic_load_n(max, __ATOMIC_RELAXED);

    while (v > cur && !__atomic_compare_exchange_n(max, &cur, v, false, __ATOMIC_RELAXED,
                                                   __ATOMIC_RELAXED))
        ;
}

/* ---- request lifecycle ----------------------------------------------------------- */

static struct bc_req *req_new(struct bc_dev *dev, struct bc_loop *loop, enum bc_op op,
                              const struct iovec *iov, int iovcnt, uint64_t offset,
                              uint64_t len, unsigned flags, bc_cb *cb, void *opaque)
{
    struct bc_req *req = g_new(struct bc_req, 1);

    *req = (struct bc_req){
        .dev = dev, .loop = loop, .op = op, .flags = flags, .iov = iov, .iovcnt = iovcnt,
        .offset = offset, .len = len, .end = offset + len, .cb = cb, .opaque = opaque,
    };
    return req;
}

static void req_free_and_call(struct bc_req *req, int ret)
{
    bc_cb *cb = req->cb;
    void *opaque = req->opaque;

    assert(!req->bounce && !req->have_blocker);
    g_free(req->slice);
    g_free(req);
    cb(opaque, ret);
}

static void finish_task(struct bc_task *t)
{
    struct bc_req *req = bc_container_of(t, struct bc_req, task);

    req_free_and_call(req, req->ret);
}

/* Complete from the submitting call: the callback must run from the loop. */
static void complete_later(struct bc_req *req, int ret)
{
    req->ret = ret;
    req->task.fn = finish_task;
    bc_loop_defer(req->loop, &req->task);
}

static void release_blocker(struct bc_req *req)
{
    if (req->have_blocker) {
        req->have_blocker = false;
        bc_blocker_release(&req->dev->blockers, &req->blocker);
    }
}

static void release_bounce(struct bc_req *req)
{
    if (req->bounce) {
        bc_bounce_put(req->bounce, req->bounce_len);
        req->bounce = NULL;
    }
}

/* The request's I/O is over (successfully or not). */
static void req_done(struct bc_req *req, int ret)
{
    struct bc_dev *dev = req->dev;

    release_bounce(req);
    release_blocker(req);
    if (ret == 0 && req->op == BC_OP_READ && req->offset + req->len > req->end) {
        /* Past the end of the device: zeros. */
        uint64_t skip = req->end - req->offset;
        bc_iov_memset(req->iov, req->iovcnt, skip, 0, req->len - skip);
    }
    /* Emulated FUA: one flush after the I/O; clearing the flag ends the request next time. */
    if (ret == 0 && (req->flags & BC_REQ_FUA) &&
        (!dev->props.fua_native || req->op != BC_OP_WRITE)) {
        req->flags &= ~BC_REQ_FUA;
        req->step = ST_FLUSH;
        step(req);
        return;
    }
    req_free_and_call(req, ret);
}

/* ---- driver requests ------------------------------------------------------------- */

static void dreq_done(struct bc_dreq *dreq, int res);

static void submit(struct bc_req *req, enum bc_op op, uint64_t offset, uint64_t len,
                   struct iovec *iov, int iovcnt, unsigned flags)
{
    struct bc_dev *dev = req->dev;
    struct bc_dreq *d = &req->dreq;
    uint64_t n;

    assert(op == BC_OP_FLUSH ||
           (offset % dev->props.req_align == 0 && len % dev->props.req_align == 0));
    assert((op != BC_OP_READ && op != BC_OP_WRITE) || len <= dev->props.max_transfer);
    memset(d, 0, sizeof(*d));
    d->loop = req->loop;
    d->op = op;
    d->flags = flags;
    d->offset = offset;
    d->len = len;
    d->iov = iov;
    d->iovcnt = iovcnt;
    d->done = dreq_done;
    n = __atomic_add_fetch(&dev->inflight, 1, __ATOMIC_RELAXED);
    stat_max(&dev->inflight_max, n);
    if (op == BC_OP_WRITE) {
        n = __atomic_add_fetch(&dev->writes_inflight, 1, __ATOMIC_RELAXED);
        stat_max(&dev->writes_max, n);
    }
    dev->drv->submit(dev->state, d);
}

static void dreq_done(struct bc_dreq *d, int res)
{
    struct bc_req *req = bc_container_of(d, struct bc_req, dreq);
    struct bc_dev *dev = req->dev;

    __atomic_sub_fetch(&dev->inflight, 1, __ATOMIC_RELAXED);
    if (d->op == BC_OP_WRITE)
        __atomic_sub_fetch(&dev->writes_inflight, 1, __ATOMIC_RELAXED);
    assert(res <= 0);

    switch (req->step) {
    case ST_DIRECT:
        if (res < 0)
            return req_done(req, res);
        req->pos += d->len;
        step(req);
        return;
    case ST_CHUNK_READ:
        if (res < 0)
            return req_done(req, res);
        {
            uint64_t from = MAX(req->pos, req->offset), to = MIN(req->chunk_end, req->end);
            bc_iov_from_buf(req->iov, req->iovcnt, from - req->offset,
                            (char *)req->bounce + (from - req->pos), to - from);
        }
        req->pos = req->chunk_end;
        if (req->pos == req->pend)
            return req_done(req, 0);
        step(req);
        return;
    case ST_CHUNK_RMW:
        if (res < 0)
            return req_done(req, res);
        req->rmw &= ~req->rmw_reading;
        chunk_write_step(req);
        return;
    case ST_CHUNK_WRITE:
        if (res < 0)
            return req_done(req, res);
        req->pos = req->chunk_end;
        if (req->pos == req->pend)
            return req_done(req, 0);
        chunk_write_step(req);
        return;
    case ST_ZEROES:
        release_blocker(req);
        if (res == -EOPNOTSUPP) {
            /* No efficient path: write zero buffers over the whole range. */
            req->zr[0][1] = req->zr[1][0] = req->zr[1][1];
            res = 0;
        }
        if (res < 0)
            return req_done(req, res);
        req->step = ST_ZERO_PIECE;
        step(req);
        return;
    case ST_DISCARD:
        release_blocker(req);
        /* Discard is advisory: a driver that cannot do it has done nothing wrong. */
        return req_done(req, res == -EOPNOTSUPP ? 0 : res);
    case ST_FLUSH:
        return req_done(req, res);
    case ST_ZERO_PIECE:
        break;
    }
    g_assert_not_reached();
}

/* ---- blockers -------------------------------------------------------------------- */

static void blocker_granted(struct bc_task *t)
{
    struct bc_req *req = bc_container_of(t, struct bc_req, blocker.task);

    step(req);
}

/* Take a blocker over [start, end); true if held now, else step() runs once it is. */
static bool take_blocker(struct bc_req *req, uint64_t start, uint64_t end, bool strong)
{
    struct bc_dev *dev = req->dev;

    if (!dev->serialize || start >= end)
        return true;
    req->have_blocker = true;
    req->blocker.start = start;
    req->blocker.end = end;
    req->blocker.strong = strong;
    req->blocker.task.fn = blocker_granted;
    if (bc_blocker_acquire(&dev->blockers, &req->blocker, req->loop))
        return true;
    __atomic_add_fetch(&dev->n_blocker_waits, 1, __ATOMIC_RELAXED);
    return false;
}

/* ---- the direct path ------------------------------------------------------------- */

/* Are the first len bytes of iov aligned for the driver? */
static bool iov_aligned(const struct iovec *iov, int iovcnt, uint64_t len, uint32_t mem_align,
                        uint32_t req_align)
{
    for (int i = 0; i < iovcnt && len; i++) {
        uint64_t n = MIN(iov[i].iov_len, len);
        if (((uintptr_t)iov[i].iov_base & (mem_align - 1)) || (n & (req_align - 1)))
            return false;
        len -= n;
    }
    return true;
}

/* Driver requests carry at most this many iovecs (the kernel's UIO_MAXIOV). */
#define BC_MAX_IOV 1024

static void direct_next(struct bc_req *req)
{
    uint64_t n = MIN(req->end - req->pos, req->dev->props.max_transfer);
    struct iovec *iov;
    int iovcnt;

    if (req->pos == req->end)
        return req_done(req, 0);
    if (req->pos == req->offset && n == req->len && req->iovcnt <= BC_MAX_IOV) {
        iov = (struct iovec *)req->iov;     /* drivers never modify iovec arrays */
        iovcnt = req->iovcnt;
    } else {
        /* Up to n bytes in at most BC_MAX_IOV pieces; n becomes what was taken.  On the
         * direct path every iovec is a multiple of req_align, so the cut stays aligned. */
        int max = MIN(req->iovcnt, BC_MAX_IOV);
        if (!req->slice)
            req->slice = g_new(struct iovec, max);
        iovcnt = bc_iov_slice(req->iov, req->iovcnt, req->pos - req->offset, n, req->slice,
                              max, &n);
        assert(iovcnt > 0);
        iov = req->slice;
    }
    assert(n % req->dev->props.req_align == 0);
    submit(req, req->op, req->pos, n, iov, iovcnt,
           req->dev->props.fua_native ? (req->flags & BC_REQ_FUA) : 0);
}

/* ---- the bounce path ------------------------------------------------------------- */

static void bounce_granted(struct bc_task *t)
{
    struct bc_req *req = bc_container_of(t, struct bc_req, bw.task);

    req->bounce = req->bw.buf;
    step(req);
}

/* Bounce-path chunk size: a multiple of the unit that fits max_transfer and, with room
 * for a saved tail block, the budget. */
static uint32_t chunk_size(const struct bc_dev *dev)
{
    uint64_t budget = bc_bounce_budget();
    uint64_t c = MIN(MIN((uint64_t)1 << 20, budget - MIN(budget / 2, dev->unit)),
                     dev->props.max_transfer);

    return MAX(bc_align_down(c, dev->unit), dev->unit);
}

/* Which RMW reads a write still needs. */
enum { RMW_HEAD = 1, RMW_TAIL = 2 };

/* Up to this padded size, an RMW write with both ends partial reads its whole range at
 * once: a few KiB more transfer costs less than a second serial round trip. */
#define RMW_ONE_READ_MAX (64u << 10)

/*
 * Start the bounce path over [pstart, pend) (a write holds its blocker by now): one
 * buffer of up to one chunk serves every chunk in turn.  For a write, every RMW read is
 * done before anything is written, so a failed read changes nothing; when the tail
 * block lies in a later chunk it is kept in an extra block after the chunk area.
 */
static void bounce_start(struct bc_req *req)
{
    struct bc_dev *dev = req->dev;
    uint64_t total = req->pend - req->pstart;

    req->chunk = chunk_size(dev);
    req->pos = req->pstart;
    req->rmw = 0;
    if (req->op == BC_OP_WRITE) {
        req->rmw = (req->pstart < req->offset ? RMW_HEAD : 0) |
                   (req->pend > req->end ? RMW_TAIL : 0);
        if (req->rmw)
            __atomic_add_fetch(&dev->n_rmw, 1, __ATOMIC_RELAXED);
    }
    req->tail_saved = total > req->chunk && (req->rmw & RMW_TAIL);
    req->bounce_len = MIN(total, req->chunk) + (req->tail_saved ? dev->unit : 0);
    req->step = req->op == BC_OP_READ ? ST_CHUNK_READ : ST_CHUNK_WRITE;
    req->bw.task.fn = bounce_granted;
    req->bounce = bc_bounce_get(req->bounce_len, &req->bw, req->loop);
    if (req->bounce)
        step(req);
}

/* Driver I/O between bounce + boff and [from, to) of the device. */
static void submit_bounce(struct bc_req *req, enum bc_op op, size_t boff, uint64_t from,
                          uint64_t to)
{
    req->one.iov_base = (char *)req->bounce + boff;
    req->one.iov_len = to - from;
    submit(req, op, from, to - from, &req->one, 1,
           op == BC_OP_WRITE && req->dev->props.fua_native ? (req->flags & BC_REQ_FUA) : 0);
}

static void chunk_read_step(struct bc_req *req)
{
    req->chunk_end = MIN(req->pend, req->pos + req->chunk);
    submit_bounce(req, BC_OP_READ, 0, req->pos, req->chunk_end);
}

/* The bounce-path write step: the next RMW read, or copy in and write the next chunk. */
static void chunk_write_step(struct bc_req *req)
{
    uint64_t ps = req->pstart, pe = req->pend, total = pe - ps;
    uint32_t unit = req->dev->unit, ra = req->dev->props.req_align;
    uint64_t cs = req->pos, ce;

    if (req->rmw) {
        req->step = ST_CHUNK_RMW;
        if (req->rmw == (RMW_HEAD | RMW_TAIL) && total <= MIN(MAX(RMW_ONE_READ_MAX, 2 * (uint64_t)unit), req->chunk)) {
            /* Small write with both ends partial: one read covers head and tail, one trip
             * to the disk instead of two in a row. */
            req->rmw_reading = RMW_HEAD | RMW_TAIL;
            return submit_bounce(req, BC_OP_READ, 0, ps, pe);
        }
        if (req->rmw & RMW_HEAD) {
            req->rmw_reading = RMW_HEAD;
            return submit_bounce(req, BC_OP_READ, 0, ps, ps + MIN(total, unit));
        }
        req->rmw_reading = RMW_TAIL;
        if (req->tail_saved)
            return submit_bounce(req, BC_OP_READ, req->chunk, pe - ra, pe);
        /* Single chunk: read the tail in place, from a memory-aligned spot. */
        uint64_t t = ps + bc_align_down(total - ra, unit);
        return submit_bounce(req, BC_OP_READ, t - ps, t, pe);
    }

    /* Modify and write. */
    ce = req->chunk_end = MIN(pe, cs + req->chunk);
    if (req->tail_saved && ce == pe)
        memcpy((char *)req->bounce + (pe - ra - cs), (char *)req->bounce + req->chunk, ra);
    uint64_t from = MAX(cs, req->offset), to = MIN(ce, req->end);
    bc_iov_to_buf(req->iov, req->iovcnt, from - req->offset, (char *)req->bounce + (from - cs),
                  to - from);
    req->step = ST_CHUNK_WRITE;
    submit_bounce(req, BC_OP_WRITE, 0, cs, ce);
}

/* ---- write-zeroes: efficient aligned middle, zero buffers for the rest ------------- */

static void zero_piece_done(void *opaque, int res)
{
    struct bc_req *req = opaque;

    if (res < 0)
        return req_done(req, res);
    req->pos += req->one.iov_len;
    step(req);
}

/* Write the next piece of zero buffers, moving through the regions in req->zr. */
static void zero_piece_next(struct bc_req *req)
{
    while (req->zi < 2 && req->pos >= req->zr[req->zi][1]) {
        req->zi++;
        if (req->zi < 2)
            req->pos = req->zr[req->zi][0];
    }
    if (req->zi == 2)
        return req_done(req, 0);
    req->one.iov_base = (void *)zero_buf();
    req->one.iov_len = MIN(req->zr[req->zi][1] - req->pos, ZERO_BUF_LEN);
    bc_dev_writev(req->dev, req->loop, &req->one, 1, req->pos, 0, zero_piece_done, req);
}

/* ---- the state machine driver ---------------------------------------------------- */

static void step(struct bc_req *req)
{
    switch (req->step) {
    case ST_DIRECT:
        return direct_next(req);
    case ST_CHUNK_READ:
        return chunk_read_step(req);
    case ST_CHUNK_RMW:
    case ST_CHUNK_WRITE:
        if (!req->bounce)
            return bounce_start(req);   /* the blocker was just granted */
        return chunk_write_step(req);
    case ST_ZEROES:
        return submit(req, BC_OP_WRITE_ZEROES, req->pstart, req->pend - req->pstart, NULL, 0,
                      req->flags & BC_REQ_MAY_UNMAP);
    case ST_ZERO_PIECE:
        return zero_piece_next(req);
    case ST_DISCARD:
        return submit(req, BC_OP_DISCARD, req->pstart, req->pend - req->pstart, NULL, 0, 0);
    case ST_FLUSH:
        return submit(req, BC_OP_FLUSH, 0, 0, NULL, 0, 0);
    }
    g_assert_not_reached();
}

/* ---- entry points ---------------------------------------------------------------- */

void bc_dev_readv(struct bc_dev *dev, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                  uint64_t offset, bc_cb *cb, void *opaque)
{
    uint64_t len = bc_iov_len(iov, iovcnt);
    struct bc_req *req = req_new(dev, loop, BC_OP_READ, iov, iovcnt, offset, len, 0, cb, opaque);
    const struct bc_props *p = &dev->props;

    if (offset + len < offset)
        return complete_later(req, -EINVAL);
    req->end = MIN(req->end, MAX(offset, p->size));
    if (req->end == offset) {
        /* All past the end of the device. */
        bc_iov_memset(iov, iovcnt, 0, 0, len);
        return complete_later(req, 0);
    }
    req->pos = offset;
    if (offset % p->req_align == 0 && (req->end - offset) % p->req_align == 0 &&
        iov_aligned(iov, iovcnt, req->end - offset, p->mem_align, p->req_align)) {
        req->step = ST_DIRECT;
        return direct_next(req);
    }
    __atomic_add_fetch(&dev->n_bounced, 1, __ATOMIC_RELAXED);
    req->pstart = req->pos = bc_align_down(offset, p->req_align);
    req->pend = bc_align_up(req->end, p->req_align);
    bounce_start(req);
}

/* Common checks for anything that writes; false if req was completed with an error. */
static bool write_checks(struct bc_req *req)
{
    const struct bc_props *p = &req->dev->props;

    if (p->read_only) {
        complete_later(req, -EROFS);
        return false;
    }
    if (req->end < req->offset) {
        complete_later(req, -EINVAL);
        return false;
    }
    if (req->end > p->size && !p->can_grow) {
        complete_later(req, -ENOSPC);
        return false;
    }
    if (req->len == 0) {
        complete_later(req, 0);
        return false;
    }
    return true;
}

void bc_dev_writev(struct bc_dev *dev, struct bc_loop *loop, const struct iovec *iov,
                   int iovcnt, uint64_t offset, unsigned flags, bc_cb *cb, void *opaque)
{
    uint64_t len = bc_iov_len(iov, iovcnt);
    struct bc_req *req = req_new(dev, loop, BC_OP_WRITE, iov, iovcnt, offset, len,
                                 flags & BC_REQ_FUA, cb, opaque);
    const struct bc_props *p = &dev->props;
    bool offsets_aligned;

    if (!write_checks(req))
        return;
    offsets_aligned = offset % p->req_align == 0 && len % p->req_align == 0;
    req->pos = offset;
    if (offsets_aligned && iov_aligned(iov, iovcnt, len, p->mem_align, p->req_align)) {
        req->step = ST_DIRECT;
        if (take_blocker(req, offset, req->end, false))
            direct_next(req);
        return;
    }
    __atomic_add_fetch(&dev->n_bounced, 1, __ATOMIC_RELAXED);
    req->pstart = req->pos = bc_align_down(offset, p->req_align);
    req->pend = bc_align_up(req->end, p->req_align);
    req->step = ST_CHUNK_WRITE;
    /* Only read-modify-write needs exclusion; bouncing misaligned memory does not. */
    if (take_blocker(req, req->pstart, req->pend, !offsets_aligned))
        bounce_start(req);
}

void bc_dev_write_zeroes(struct bc_dev *dev, struct bc_loop *loop, uint64_t offset,
                         uint64_t len, unsigned flags, bc_cb *cb, void *opaque)
{
    struct bc_req *req = req_new(dev, loop, BC_OP_WRITE_ZEROES, NULL, 0, offset, len,
                                 flags & (BC_REQ_FUA | BC_REQ_MAY_UNMAP), cb, opaque);
    uint32_t za = dev->props.zero_align;
    uint64_t a0, a1;

    if (!write_checks(req))
        return;
    a0 = za ? bc_align_up(offset, za) : req->end;
    a1 = za ? bc_align_down(req->end, za) : req->end;
    if (a1 <= a0) {
        /* No aligned middle: zero buffers over the whole range. */
        a0 = a1 = req->end;
    }
    req->zr[0][0] = offset;
    req->zr[0][1] = a0;
    req->zr[1][0] = a1;
    req->zr[1][1] = req->end;
    req->pos = offset;
    if (a1 > a0) {
        req->pstart = a0;
        req->pend = a1;
        req->step = ST_ZEROES;
        if (take_blocker(req, a0, a1, false))
            step(req);
        return;
    }
    req->step = ST_ZERO_PIECE;
    step(req);
}

void bc_dev_discard(struct bc_dev *dev, struct bc_loop *loop, uint64_t offset, uint64_t len,
                    bc_cb *cb, void *opaque)
{
    struct bc_req *req = req_new(dev, loop, BC_OP_DISCARD, NULL, 0, offset, len, 0, cb, opaque);
    uint32_t da = dev->props.discard_align;
    uint64_t end = MIN(offset + len, dev->props.size);

    if (offset + len < offset)
        return complete_later(req, -EINVAL);
    if (dev->props.read_only)
        return complete_later(req, -EROFS);
    if (!da || offset >= end)
        return complete_later(req, 0);
    req->pstart = bc_align_up(offset, da);
    req->pend = bc_align_down(end, da);
    if (req->pend <= req->pstart)
        return complete_later(req, 0);      /* nothing aligned: advisory, so done */
    req->step = ST_DISCARD;
    if (take_blocker(req, req->pstart, req->pend, false))
        step(req);
}

void bc_dev_flush(struct bc_dev *dev, struct bc_loop *loop, bc_cb *cb, void *opaque)
{
    struct bc_req *req = req_new(dev, loop, BC_OP_FLUSH, NULL, 0, 0, 0, 0, cb, opaque);

    req->step = ST_FLUSH;
    step(req);
}

int bc_dev_block_status(struct bc_dev *dev, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    uint64_t size = dev->props.size;

    if (offset >= size) {
        *pnum = len;
        return 0;
    }
    len = MIN(len, size - offset);
    if (!dev->drv->block_status) {
        *pnum = len;
        return 1;
    }
    return dev->drv->block_status(dev->state, offset, len, pnum);
}
