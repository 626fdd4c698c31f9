/* SPDX-License-Identifier: MIT */
/* The virtio-blk driver core's I/O path, shared by the transports: the bounce pool,
 * per-loop queues, submission and completion, device death.  See virtio-blk.h. */
#include <assert.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <linux/virtio_blk.h>
#include <linux/virtio_ring.h>
#include <liburing.h>

#include "drivers/virtio-blk/virtio-blk-int.h"

/* ---- the bounce pool --------------------------------------------------------------- */

static void issue(struct bc_vblk *b, struct bc_dreq *d);
static void finish(struct bc_vblk *b, struct bc_dreq *d, int res);

/* Continue a request that was handed bounce memory while it waited. */
static void pool_granted(struct bc_task *t)
{
    struct bc_dreq *d = dreq_of_task(t);
    struct vblk_rs *rs = rs_of(d);

    if (__atomic_load_n(&rs->b->dead, __ATOMIC_ACQUIRE))
        return finish(rs->b, d, -EIO);
    if (d->op == BC_OP_WRITE)
        bc_iov_to_buf(d->iov, d->iovcnt, 0, rs_bounce(rs->b, rs), d->len);
    issue(rs->b, d);
}

/* Bounce memory for d: true if it has it now; false if d was queued (or failed). */
static bool pool_get(struct bc_vblk *b, struct bc_dreq *d)
{
    struct vblk_rs *rs = rs_of(d);
    bool dead, got = false;

    rs->bounced = true;
    rs->pool.pages = (uint32_t)((d->len + POOL_PAGE - 1) / POOL_PAGE);
    g_mutex_lock(&b->pool_lock);
    dead = __atomic_load_n(&b->dead, __ATOMIC_ACQUIRE);
    if (!dead)
        got = bc_pagemap_take_or_wait(&b->pool_map, &rs->pool);
    g_mutex_unlock(&b->pool_lock);
    if (dead) {
        rs->bounced = false;
        finish(b, d, -EIO);
        return false;
    }
    return got;
}

/* Give d's pages back; the waiters they satisfy (in order) go on. */
static void pool_put(struct bc_vblk *b, struct vblk_rs *rs)
{
    struct bc_pagemap_wait *granted;

    g_mutex_lock(&b->pool_lock);
    granted = bc_pagemap_put(&b->pool_map, rs->pool.first, rs->pool.pages);
    g_mutex_unlock(&b->pool_lock);
    while (granted) {
        struct bc_dreq *w = dreq_of_wait(granted);
        granted = granted->next;
        w->task.fn = pool_granted;
        bc_loop_wake(w->loop, &w->task);
    }
}

/* ---- submission -------------------------------------------------------------------- */

/* The device-visible region holding [p, p+len): the arenas first (where caller buffers are),
 * then the core's own region; NULL if none does. */
static const struct bc_vmem *mem_of(const struct bc_vblk *b, const void *p, size_t len)
{
    for (unsigned i = 0; i < b->nextra; i++)
        if (bc_vmem_contains(&b->extra[i], p, len))
            return &b->extra[i];
    return bc_vmem_contains(&b->mem, p, len) ? &b->mem : NULL;
}

static struct vblk_queue *queue_of(struct bc_vblk *b, struct bc_dreq *d)
{
    return &b->q[bc_loop_index(d->loop) % b->nq];
}

static void deliver_task(struct bc_task *t)
{
    struct bc_dreq *d = dreq_of_task(t);
    d->done(d, rs_of(d)->res);
}

/* Complete d: copy out, free bounce memory, call done on d's loop (now if we are on it and
 * not inside submit, which callers ensure by passing later=true from submit paths). */
static void complete(struct bc_vblk *b, struct bc_dreq *d, int res, bool later)
{
    struct vblk_rs *rs = rs_of(d);

    if (rs->bounced) {
        if (res == 0 && d->op == BC_OP_READ)
            bc_iov_from_buf(d->iov, d->iovcnt, 0, rs_bounce(b, rs), d->len);
        rs->bounced = false;
        pool_put(b, rs);
    }
    rs->res = (int16_t)res;
    if (!later && bc_loop_current() == d->loop) {
        d->done(d, res);
    } else {
        d->task.fn = deliver_task;
        bc_loop_wake(d->loop, &d->task);
    }
}

/* From submission paths: never call done directly. */
static void finish(struct bc_vblk *b, struct bc_dreq *d, int res)
{
    complete(b, d, res, true);
}

/* Build and queue the next virtio request of d; q->lock held.  0 or -ENOSPC. */
static int add_locked(struct bc_vblk *b, struct vblk_queue *q, struct bc_dreq *d)
{
    struct vblk_rs *rs = rs_of(d);
    struct bc_vbuf small[64];
    g_autofree struct bc_vbuf *big = NULL;
    struct bc_vbuf *segs = small;
    unsigned n = 0;

    switch (d->op) {
    case BC_OP_FLUSH:
        return bc_vblk_add(&q->vq, q->slots, q->slots_addr, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0,
                           0, d);
    case BC_OP_DISCARD:
    case BC_OP_WRITE_ZEROES: {
        bool dis = d->op == BC_OP_DISCARD;
        uint64_t chunk = MIN(d->offset + d->len - rs->next, dis ? b->max_discard : b->max_zeroes);
        uint32_t flags = !dis && (d->flags & BC_REQ_MAY_UNMAP) ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                                                             : 0;
        int r = bc_vblk_add(&q->vq, q->slots, q->slots_addr,
                            dis ? VIRTIO_BLK_T_DISCARD : VIRTIO_BLK_T_WRITE_ZEROES,
                            rs->next / 512, NULL, 0, (uint32_t)(chunk / 512), flags, d);
        if (r == 0)
            rs->next += chunk;
        return r;
    }
    case BC_OP_READ:
    case BC_OP_WRITE:
        break;
    }

    /* Data descriptors: the bounce buffer, or the caller's iovecs (already in device
     * memory: the region or an arena), each cut at seg_len. */
    unsigned cap = G_N_ELEMENTS(small);
    if (b->max_segs + 0u > cap) {
        cap = b->max_segs;
        segs = big = g_new(struct bc_vbuf, cap);
    }
    if (rs->bounced) {
        for (uint64_t off = 0; off < d->len; off += b->seg_len) {
            assert(n < cap);
            segs[n++] = (struct bc_vbuf){ bc_vmem_addr(&b->mem, rs_bounce(b, rs) + off),
                                          (uint32_t)MIN(b->seg_len, d->len - off) };
        }
    } else {
        for (int i = 0; i < d->iovcnt; i++) {
            const uint8_t *base = d->iov[i].iov_base;
            const struct bc_vmem *m = mem_of(b, base, d->iov[i].iov_len);
            assert(m);
            for (size_t off = 0; off < d->iov[i].iov_len; off += b->seg_len) {
                assert(n < cap);
                segs[n++] = (struct bc_vbuf){
                    bc_vmem_addr(m, base + off),
                    (uint32_t)MIN((size_t)b->seg_len, d->iov[i].iov_len - off) };
            }
        }
    }
    int r = bc_vblk_add(&q->vq, q->slots, q->slots_addr,
                        d->op == BC_OP_READ ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT,
                        d->offset / 512, segs, n, 0, 0, d);
    if (r == 0) {
        if (rs->bounced) {
            q->stats.copied_reqs++;
            q->stats.copied_bytes += d->len;
        } else {
            q->stats.zero_copy_reqs++;
            q->stats.zero_copy_bytes += d->len;
        }
    }
    return r;
}

/* Queue d's next virtio request on its loop's queue, or park it until descriptors free. */
static void issue(struct bc_vblk *b, struct bc_dreq *d)
{
    struct vblk_queue *q = queue_of(b, d);
    bool kick = false, dead;

    g_mutex_lock(&q->lock);
    dead = __atomic_load_n(&b->dead, __ATOMIC_ACQUIRE);
    if (!dead) {
        if (q->wait_head || add_locked(b, q, d) < 0) {
            d->task.next = NULL;
            *q->wait_tail = &d->task;
            q->wait_tail = &d->task.next;
        } else {
            kick = bc_vq_kick_prepare(&q->vq);
        }
    }
    g_mutex_unlock(&q->lock);
    if (dead)
        return finish(b, d, -EIO);
    if (kick)
        b->ops->kick(b->t, q->index);
}

/* Does the iovec array lie in device memory and fit the segment limits? */
static bool iov_in_mem(const struct bc_vblk *b, const struct bc_dreq *d)
{
    uint64_t segs = 0;

    for (int i = 0; i < d->iovcnt; i++) {
        if (!mem_of(b, d->iov[i].iov_base, d->iov[i].iov_len))
            return false;
        segs += (d->iov[i].iov_len + b->seg_len - 1) / b->seg_len;
    }
    return segs <= b->max_segs;
}

static void watch_call_done(struct bc_uop *uop, int res, unsigned flags);
static void watch_death_done(struct bc_uop *uop, int res, unsigned flags);

/* Make the current loop (d's) watch q's call eventfd and the death fd. */
static void ensure_watches(struct bc_vblk *b, struct vblk_queue *q, struct bc_loop *loop)
{
    struct vblk_watch *w, *nw = NULL;

    g_mutex_lock(&q->lock);
    for (w = q->watches; w; w = w->next)
        if (w->loop == loop)
            break;
    if (!w) {
        nw = g_new0(struct vblk_watch, 1);
        g_mutex_init(&nw->lock);
        nw->uop.done = watch_call_done;
        nw->death_uop.done = watch_death_done;
        nw->q = q;
        nw->loop = loop;
        nw->call_fd = q->call_fd;
        nw->death_fd = b->ops->death_fd;
        nw->next = q->watches;
        q->watches = nw;
    }
    g_mutex_unlock(&q->lock);
    if (nw) {
        bc_loop_watch_fd(loop, &nw->uop, nw->call_fd);
        if (nw->death_fd >= 0)
            bc_loop_watch_fd(loop, &nw->death_uop, nw->death_fd);
    }
}

static void submit_task(struct bc_task *t)
{
    struct bc_dreq *d = dreq_of_task(t);
    bc_vblk_submit(rs_of(d)->b, d);
}

void bc_vblk_submit(struct bc_vblk *b, struct bc_dreq *d)
{
    struct vblk_rs *rs = rs_of(d);

    /* props.fua_native is false, so blockcore emulates FUA with a flush of its own. */
    assert(!(d->flags & BC_REQ_FUA));
    memset(rs, 0, sizeof(*rs));
    rs->b = b;
    if (bc_loop_current() != d->loop) {
        /* Watches are armed by the loop's own thread: go there first. */
        d->task.fn = submit_task;
        return bc_loop_post(d->loop, &d->task);
    }
    if (__atomic_load_n(&b->dead, __ATOMIC_ACQUIRE))
        return finish(b, d, -EIO);
    ensure_watches(b, queue_of(b, d), d->loop);

    switch (d->op) {
    case BC_OP_READ:
    case BC_OP_WRITE:
        if (d->op == BC_OP_WRITE && b->props.read_only)
            return finish(b, d, -EROFS);
        if (d->len == 0)
            return finish(b, d, 0);
        rs->phase = PH_IO;
        if (!iov_in_mem(b, d)) {
            if (!pool_get(b, d))
                return;     /* queued for memory (or failed) */
            if (d->op == BC_OP_WRITE)
                bc_iov_to_buf(d->iov, d->iovcnt, 0, rs_bounce(b, rs), d->len);
        }
        break;
    case BC_OP_FLUSH:
        if (!vblk_has(b, VIRTIO_BLK_F_FLUSH))
            return finish(b, d, 0);
        rs->phase = PH_IO;
        break;
    case BC_OP_DISCARD:
    case BC_OP_WRITE_ZEROES:
        if (b->props.read_only)
            return finish(b, d, -EROFS);
        if (!vblk_has(b, d->op == BC_OP_DISCARD ? VIRTIO_BLK_F_DISCARD : VIRTIO_BLK_F_WRITE_ZEROES))
            return finish(b, d, -ENOTSUP);
        if (d->len == 0)
            return finish(b, d, 0);
        rs->phase = PH_DWZ;
        rs->next = d->offset;
        break;
    }
    issue(b, d);
}

void bc_vblk_stats(struct bc_vblk *b, struct bc_drv_stats *st)
{
    memset(st, 0, sizeof(*st));
    for (unsigned i = 0; i < b->nq; i++) {
        struct vblk_queue *q = &b->q[i];
        g_mutex_lock(&q->lock);
        st->zero_copy_reqs += q->stats.zero_copy_reqs;
        st->zero_copy_bytes += q->stats.zero_copy_bytes;
        st->copied_reqs += q->stats.copied_reqs;
        st->copied_bytes += q->stats.copied_bytes;
        g_mutex_unlock(&q->lock);
    }
}

/* ---- completion -------------------------------------------------------------------- */

/* A virtio request of d finished with res: true if d is complete, false if its next virtio
 * request is wanted (discard and write-zeroes go in chunks). */
static bool step_done(struct bc_dreq *d, int res)
{
    struct vblk_rs *rs = rs_of(d);

    return res < 0 || rs->phase != PH_DWZ || rs->next >= d->offset + d->len;
}

/* Reap q's used ring, start waiting requests and kick.  Returns the finished requests
 * (linked through dreq->task) for deliver(). */
static struct bc_task *process_queue(struct bc_vblk *b, struct vblk_queue *q)
{
    struct bc_task *done = NULL, **dtail = &done;
    bool kick = false, broken;
    void *cookie;
    uint16_t head;
    uint32_t len;

    g_mutex_lock(&q->lock);
    do {
        while ((cookie = bc_vq_get_used(&q->vq, &head, &len))) {
            struct bc_dreq *d = cookie;
            int res = bc_vblk_status(q->slots, head);
            if (!step_done(d, res) && !__atomic_load_n(&b->dead, __ATOMIC_ACQUIRE)) {
                if (!q->wait_head && add_locked(b, q, d) == 0)
                    continue;
                /* Out of descriptors: go ahead of the waiters, it started first. */
                d->task.next = q->wait_head;
                q->wait_head = &d->task;
                if (!d->task.next)
                    q->wait_tail = &d->task.next;
                continue;
            }
            rs_of(d)->res = (int16_t)(res < 0 ? res : 0);
            d->task.next = NULL;
            *dtail = &d->task;
            dtail = &d->task.next;
        }
    } while (!q->vq.broken && bc_vq_enable_cb(&q->vq));
    while (q->wait_head && !q->vq.broken) {
        struct bc_dreq *d = dreq_of_task(q->wait_head);
        if (add_locked(b, q, d) < 0)
            break;
        q->wait_head = d->task.next;
        if (!q->wait_head)
            q->wait_tail = &q->wait_head;
    }
    broken = q->vq.broken;
    if (!broken)
        kick = bc_vq_kick_prepare(&q->vq);
    g_mutex_unlock(&q->lock);

    if (kick)
        b->ops->kick(b->t, q->index);
    if (broken && !__atomic_load_n(&b->dead, __ATOMIC_ACQUIRE)) {
        g_warning("%s: virtio-blk device returned a bad used ring entry; failing all I/O",
                  b->what);
        bc_vblk_kill(b);
    }
    return done;
}

/* Complete a list from process_queue().  The last done() may close the device, so nothing
 * here touches b after it. */
static void deliver(struct bc_vblk *b, struct bc_task *done)
{
    while (done) {
        struct bc_task *t = done;
        struct bc_dreq *d = dreq_of_task(t);
        done = t->next;
        complete(b, d, rs_of(d)->res, false);
    }
}

/* A multishot poll that ended (no IORING_CQE_F_MORE) is armed again. */
static void rearm(struct vblk_watch *w, struct bc_uop *uop, int fd, int res, unsigned flags)
{
    if (!(flags & IORING_CQE_F_MORE) && res != -ECANCELED)
        bc_loop_watch_fd(w->loop, uop, fd);
}

static void watch_call_done(struct bc_uop *uop, int res, unsigned flags)
{
    struct vblk_watch *w = bc_container_of(uop, struct vblk_watch, uop);
    struct bc_task *done = NULL;
    struct bc_vblk *b = NULL;
    uint64_t v;

    /* The watch lock keeps bc_vblk_free() from freeing the queue while we reap.  It is
     * dropped before done() runs: a done() may close the device, which orphans w. */
    g_mutex_lock(&w->lock);
    if (w->q) {
        struct vblk_queue *q = w->q;
        ssize_t r = read(q->call_fd, &v, sizeof(v));
        (void)r;    /* EAGAIN: another loop drained it; reap anyway */
        rearm(w, uop, w->call_fd, res, flags);
        b = q->b;
        done = process_queue(b, q);
    }
    g_mutex_unlock(&w->lock);
    deliver(b, done);
}

static void watch_death_done(struct bc_uop *uop, int res, unsigned flags)
{
    struct vblk_watch *w =
        bc_container_of(uop, struct vblk_watch, death_uop);

    /* Every loop watches; the first to see the device gone kills it (kill is idempotent
     * and completes requests on their own loops, never here). */
    g_mutex_lock(&w->lock);
    if (w->q && !__atomic_load_n(&w->q->b->dead, __ATOMIC_ACQUIRE)) {
        struct bc_vblk *b = w->q->b;
        if (!b->ops->alive(b->t)) {
            g_warning("%s: virtio-blk device is gone; failing all I/O", b->what);
            bc_vblk_kill(b);
        } else {
            rearm(w, uop, w->death_fd, res, flags);
        }
    }
    g_mutex_unlock(&w->lock);
}

void bc_vblk_kill(struct bc_vblk *b)
{
    struct bc_task *list = NULL, **tail = &list;

    if (__atomic_exchange_n(&b->dead, 1, __ATOMIC_ACQ_REL))
        return;
    for (unsigned i = 0; i < b->nq; i++) {
        struct vblk_queue *q = &b->q[i];
        g_mutex_lock(&q->lock);
        q->vq.broken = true;
        for (unsigned k = 0; k < q->vq.num; k++) {
            struct bc_dreq *d = bc_vq_inflight(&q->vq, (uint16_t)k);
            if (d) {
                d->task.next = NULL;
                *tail = &d->task;
                tail = &d->task.next;
            }
        }
        if (q->wait_head) {
            *tail = q->wait_head;
            tail = q->wait_tail;
            q->wait_head = NULL;
            q->wait_tail = &q->wait_head;
        }
        g_mutex_unlock(&q->lock);
    }
    g_mutex_lock(&b->pool_lock);
    struct bc_pagemap_wait *waiting = bc_pagemap_drain(&b->pool_map);
    g_mutex_unlock(&b->pool_lock);
    while (waiting) {
        struct bc_dreq *d = dreq_of_wait(waiting);
        waiting = waiting->next;
        rs_of(d)->bounced = false;     /* it never got any */
        d->task.next = NULL;
        *tail = &d->task;
        tail = &d->task.next;
    }
    while (list) {
        struct bc_task *t = list;
        list = t->next;
        finish(b, dreq_of_task(t), -EIO);
    }
}

