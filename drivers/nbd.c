/* SPDX-License-Identifier: MIT */
/* The nbd driver: a disk on an NBD server (qemu-nbd, nbdkit, qemu-storage-daemon...) through
 * libnbd's asynchronous calls, with several connections when the server allows it and
 * reconnection within a retry window when a connection is lost. */
#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

#include "drivers/drivers.h"
#include "drivers/util.h"

/*
 * Notes on the design
 *
 * Threads.  Each connection (struct bc_nbd_conn) has a thread of its own that owns its libnbd
 * handle: it issues the requests, watches the socket with poll(2) in the direction libnbd
 * asks for (nbd_aio_get_direction) and runs libnbd's completion callbacks.  submit() (any
 * I/O thread's loop) only queues the request on the connection and kicks its eventfd; the
 * result goes back to the request's own loop with bc_loop_wake().  Why not the I/O thread's
 * own loop: (1) reconnecting takes up to the retry window (connect, TLS and option
 * handshake, backoff between attempts), and an I/O thread serves every disk of the mount, so
 * it must never wait for one server; a connection thread may, and requests simply queue;
 * (2) requests also come from short-lived private loops (bc_sync in setup paths and tools,
 * and block_status is synchronous), while a libnbd handle needs one watcher that lives as
 * long as it does; (3) one thread per handle is the one place that knows what is in flight,
 * which is what resending after a reconnect needs.  The cost is one eventfd wakeup each way
 * per batch of requests, small next to a network round trip (bench/results-nbd.md).
 *
 * Locks.  bc_nbd_conn.lock protects the connection's queue of new requests and its stop flag,
 * nothing else; everything else of a connection belongs to its thread.  bc_nbd_dev.lock
 * protects the flush bookkeeping (acked, flushed_upto, lost).  Counters are atomics.
 *
 * Multi-conn.  When the server says can_multi_conn, the driver opens `connections` of them
 * (default 4) and a loop always uses connection loop_index % n, so one loop's requests stay
 * in order; a flush on any connection then covers writes completed on all of them (the
 * multi-conn promise).  Otherwise there is one connection.
 *
 * Lost connections.  A connection is lost when libnbd's handle dies (the server went away,
 * a protocol error), when a request fails with ENOTCONN/ESHUTDOWN (the server is shutting
 * down), or when requests are in flight and the server has answered nothing for
 * retry-timeout seconds (at least one).  Requests in flight are then put back at the head of the queue and
 * sent again, in order, on a new connection; attempts are made with a backoff (0.1 s doubling
 * to 2 s) until retry-timeout seconds after the loss, and only then does every waiting
 * request fail with EIO.  After that, new requests fail at once with EIO while attempts go
 * on in the background, until one succeeds.  Resending is safe: blockcore never has two
 * overlapping writes in flight.  What a reconnect cannot make safe is a write the server
 * acknowledged but that no flush has covered yet: a restarted server may have lost it.  So
 * if a connection is lost while such writes exist, the next flush fails with EIO once (the
 * way a failed writeback surfaces at fsync), instead of pretending they are durable.
 */

#define NBD_MAX_CONNS 16
#define NBD_DEFAULT_CONNS 4
#define NBD_DEFAULT_RETRY_TIMEOUT 30
#define NBD_MAX_RETRY_TIMEOUT 3600
#define NBD_MAX_TRANSFER_CAP (4u << 20)
#define NBD_BACKOFF_MIN_MS 100
#define NBD_BACKOFF_MAX_MS 2000

struct bc_nbd;

enum bc_nbd_state {
    NBD_UP,         /* connected */
    NBD_RETRYING,   /* lost at lost_at; requests wait */
    NBD_FAILED,     /* the retry window ran out; requests fail, attempts go on */
};

struct bc_nbd_conn {
    struct bc_nbd *d;
    unsigned index;
    GThread *thread;
    int efd;                    /* eventfd: new requests or stop */

    GMutex lock;                /* protects queue and stop */
    struct bc_task *queue_head, **queue_tail;   /* dreq->task, FIFO */
    bool stop;

    /* Owned by the connection thread. */
    struct nbd_handle *h;       /* NULL while down */
    enum bc_nbd_state state;
    int64_t lost_at;            /* monotonic us: when the connection was lost */
    int64_t next_attempt;       /* monotonic us */
    unsigned backoff_ms;
    int64_t last_progress;      /* monotonic us: last reply or first request in flight */
    GQueue pending;             /* struct bc_dreq *: to issue, in order */
    GHashTable *inflight;       /* struct bc_nbd_cmd * set */
    GArray *done;               /* struct bc_nbd_done: completed by callbacks, to deliver */
};

struct bc_nbd {
    char *what;
    char *uri;
    int64_t retry_us;
    uint64_t size;
    uint32_t req_align;
    bool read_only;
    bool can_flush, can_fua, can_trim, can_zero, can_bs;
    unsigned nconns;
    struct bc_nbd_conn conns[NBD_MAX_CONNS];

    GMutex lock;                /* protects acked, flushed_upto, lost */
    uint64_t acked;             /* writes acknowledged (not FUA) */
    uint64_t flushed_upto;      /* acked as of the last successful flush's sending */
    bool lost;                  /* a connection was lost with unflushed acked writes */

    struct bc_drv_stats stats;  /* atomic fields */
};

/* One libnbd command, freed by libnbd (its .free callback) once it is retired. */
struct bc_nbd_cmd {
    struct bc_nbd_conn *c;
    struct bc_dreq *dreq;       /* NULL once taken back (resent or failed) */
    void *bounce;               /* contiguous copy of a multi-iovec request, or NULL */
};

struct bc_nbd_done {
    struct bc_dreq *dreq;
    int err;
};

/* Per-request state in dreq->drv_scratch: [0] flush: the acked count when sent;
 * [1] block status: struct bc_nbd_bs *; [2] result to deliver; [3] bc_drv_complete_later. */
struct bc_nbd_bs {
    GMutex lock;                /* protects finished */
    GCond cond;
    bool finished;
    uint64_t offset, len;       /* what the caller asked */
    uint64_t pnum;
    int res;
    struct bc_dreq dreq;        /* op BC_OP_READ with iov NULL marks a block-status query */
};

static void bc_nbd_add(uint64_t *field, uint64_t n)
{
    __atomic_add_fetch(field, n, __ATOMIC_RELAXED);
}

static int64_t bc_nbd_now(void)
{
    return g_get_monotonic_time();
}

/* ---- delivering results ------------------------------------------------------------ */

static void bc_nbd_deliver_task(struct bc_task *t)
{
    struct bc_dreq *dreq = bc_container_of(t, struct bc_dreq, task);

    dreq->done(dreq, (int)(int64_t)dreq->drv_scratch[2]);
}

static bool bc_nbd_is_bs(const struct bc_dreq *dreq)
{
    return dreq->op == BC_OP_READ && dreq->iov == NULL;
}

/* Complete dreq with res on its own loop (the connection thread is no loop). */
static void bc_nbd_finish(struct bc_nbd_conn *c, struct bc_dreq *dreq, int res)
{
    if (res < 0)
        bc_nbd_add(&c->d->stats.errors, 1);
    if (bc_nbd_is_bs(dreq)) {
        struct bc_nbd_bs *bs = (struct bc_nbd_bs *)(uintptr_t)dreq->drv_scratch[1];
        g_mutex_lock(&bs->lock);
        if (res < 0)
            bs->res = res;
        bs->finished = true;
        g_cond_signal(&bs->cond);
        g_mutex_unlock(&bs->lock);
        return;
    }
    dreq->drv_scratch[2] = (uint64_t)(int64_t)res;
    dreq->task.fn = bc_nbd_deliver_task;
    bc_loop_wake(dreq->loop, &dreq->task);
}

/* ---- libnbd callbacks (run on the connection thread, inside libnbd calls) ---------- */

static void bc_nbd_cmd_free(void *opaque)
{
    struct bc_nbd_cmd *cmd = opaque;

    g_free(cmd->bounce);
    g_free(cmd);
}

static int bc_nbd_cmd_done(void *opaque, int *error)
{
    struct bc_nbd_cmd *cmd = opaque;
    struct bc_nbd_conn *c = cmd->c;
    struct bc_dreq *dreq = cmd->dreq;
    struct bc_nbd_done nd = { dreq, *error };

    if (!dreq)
        return 1;   /* taken back when the connection was lost */
    cmd->dreq = NULL;
    g_hash_table_remove(c->inflight, cmd);
    c->last_progress = bc_nbd_now();
    if (nd.err == 0 && dreq->op == BC_OP_READ && cmd->bounce)
        bc_iov_from_buf(dreq->iov, dreq->iovcnt, 0, cmd->bounce,
                        MIN(dreq->len, c->d->size - dreq->offset));
    g_array_append_val(c->done, nd);
    return 1;
}

static int bc_nbd_extent(void *opaque, const char *context, uint64_t offset, uint32_t *entries,
                      size_t nr, int *error)
{
    struct bc_nbd_cmd *cmd = opaque;
    struct bc_nbd_bs *bs;
    uint64_t pos = offset, end = 0;
    int status = -1;

    if (!cmd->dreq || strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
        return 0;
    bs = (struct bc_nbd_bs *)(uintptr_t)cmd->dreq->drv_scratch[1];
    /* Merge the extents from the one holding bs->offset while their status is the same;
     * validate what the server sent: lengths must make progress. */
    for (size_t i = 0; i + 1 < nr; i += 2) {
        uint64_t len = entries[i];
        int st = (entries[i + 1] & LIBNBD_STATE_ZERO) ? 0 : 1;
        if (len == 0)
            break;
        if (pos + len <= bs->offset) {
            pos += len;
            continue;
        }
        if (status >= 0 && st != status)
            break;
        status = st;
        pos += len;
        end = pos;
    }
    if (status >= 0) {
        bs->res = status;
        bs->pnum = MIN(end, bs->offset + bs->len) - bs->offset;
    }
    return 0;
}

/* ---- issuing ----------------------------------------------------------------------- */

static uint32_t bc_nbd_fua(const struct bc_nbd *d, const struct bc_dreq *dreq)
{
    return (dreq->flags & BC_REQ_FUA) && d->can_fua ? LIBNBD_CMD_FLAG_FUA : 0;
}

/* Issue dreq on c's handle: 0, or -1 with the errno in *err when libnbd refused it. */
static int bc_nbd_issue(struct bc_nbd_conn *c, struct bc_dreq *dreq, int *err)
{
    struct bc_nbd *d = c->d;
    struct bc_nbd_cmd *cmd = g_new0(struct bc_nbd_cmd, 1);
    nbd_completion_callback cb = { .callback = bc_nbd_cmd_done, .user_data = cmd,
                                   .free = bc_nbd_cmd_free };
    /* Nothing past the export's end is sent (bc_nbd_submit() zeroed it for reads). */
    uint64_t len = MIN(dreq->len, d->size - MIN(dreq->offset, d->size));
    void *buf = NULL;
    int64_t r = 0;

    cmd->c = c;
    cmd->dreq = dreq;
    if (dreq->op == BC_OP_READ || dreq->op == BC_OP_WRITE) {
        if (dreq->iov && dreq->iovcnt == 1 && len == dreq->len) {
            buf = dreq->iov[0].iov_base;
        } else if (dreq->iov) {
            buf = cmd->bounce = g_malloc(len);
            if (dreq->op == BC_OP_WRITE)
                bc_iov_to_buf(dreq->iov, dreq->iovcnt, 0, buf, len);
        }
    }
    g_hash_table_add(c->inflight, cmd);
    if (g_hash_table_size(c->inflight) == 1)
        c->last_progress = bc_nbd_now();

    switch (dreq->op) {
    case BC_OP_READ:
        if (bc_nbd_is_bs(dreq)) {
            nbd_extent_callback ecb = { .callback = bc_nbd_extent, .user_data = cmd };
            r = nbd_aio_block_status(c->h, dreq->len, dreq->offset, ecb, cb, 0);
        } else {
            r = nbd_aio_pread(c->h, buf, len, dreq->offset, cb, 0);
        }
        break;
    case BC_OP_WRITE:
        r = nbd_aio_pwrite(c->h, buf, len, dreq->offset, cb, bc_nbd_fua(d, dreq));
        break;
    case BC_OP_FLUSH:
        g_mutex_lock(&d->lock);
        dreq->drv_scratch[0] = d->acked;
        g_mutex_unlock(&d->lock);
        r = nbd_aio_flush(c->h, cb, 0);
        break;
    case BC_OP_WRITE_ZEROES:
        r = nbd_aio_zero(c->h, len, dreq->offset, cb,
                         bc_nbd_fua(d, dreq) |
                         ((dreq->flags & BC_REQ_MAY_UNMAP) ? 0 : LIBNBD_CMD_FLAG_NO_HOLE));
        break;
    case BC_OP_DISCARD:
        r = nbd_aio_trim(c->h, len, dreq->offset, cb, 0);
        break;
    }
    if (r < 0) {
        /* libnbd has called cb.free already: cmd is gone. */
        *err = nbd_get_errno() ? nbd_get_errno() : EIO;
        g_hash_table_remove(c->inflight, cmd);
        return -1;
    }
    return 0;
}

/* ---- connecting -------------------------------------------------------------------- */

/* Wait up to deadline (monotonic us) for h's socket to be ready in libnbd's direction and
 * let libnbd go on: 0, 1 on timeout, -1 on error (errno). */
static int bc_nbd_poll_once(struct nbd_handle *h, int extra_fd, int64_t deadline)
{
    struct pollfd pfd[2] = { { .fd = nbd_aio_get_fd(h) }, { .fd = extra_fd, .events = POLLIN } };
    unsigned dir = nbd_aio_get_direction(h);
    int64_t wait_ms = (deadline - bc_nbd_now() + 999) / 1000;
    int n;

    if (pfd[0].fd < 0)
        return -1;
    if (dir & LIBNBD_AIO_DIRECTION_READ)
        pfd[0].events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
        pfd[0].events |= POLLOUT;
    n = poll(pfd, extra_fd >= 0 ? 2 : 1, (int)CLAMP(wait_ms, 0, 1000));
    if (n < 0)
        return errno == EINTR ? 0 : -1;
    if (n == 0)
        return bc_nbd_now() >= deadline ? 1 : 0;
    if ((pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) && nbd_aio_notify_read(h) < 0)
        return -1;
    if ((pfd[0].revents & POLLOUT) && nbd_aio_notify_write(h) < 0)
        return -1;
    return 0;
}

/* A new connected handle for d, or NULL with the reason in *msg; waits until deadline. */
static struct nbd_handle *bc_nbd_connect(struct bc_nbd *d, int64_t deadline, char **msg)
{
    struct nbd_handle *h = nbd_create();

    if (!h) {
        *msg = g_strdup(nbd_get_error());
        return NULL;
    }
    nbd_set_handle_name(h, "layerfs");
    nbd_set_uri_allow_local_file(h, true);
    nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
    if (nbd_aio_connect_uri(h, d->uri) < 0)
        goto fail;
    while (nbd_aio_is_connecting(h)) {
        int r = bc_nbd_poll_once(h, -1, deadline);
        if (r < 0)
            goto fail;
        if (r > 0) {
            *msg = g_strdup("timed out connecting");
            nbd_close(h);
            return NULL;
        }
    }
    if (!nbd_aio_is_ready(h))
        goto fail;
    return h;

fail:
    *msg = g_strdup(nbd_get_error() ? nbd_get_error() : "connection failed");
    nbd_close(h);
    return NULL;
}

/* ---- the connection thread --------------------------------------------------------- */

static bool bc_nbd_retryable(int err)
{
    return err == ENOTCONN || err == ESHUTDOWN || err == ECONNRESET || err == EPIPE;
}

/* The connection is gone: take back what was in flight, to resend first, in order. */
static void bc_nbd_conn_lost(struct bc_nbd_conn *c, const char *why)
{
    struct bc_nbd *d = c->d;
    g_autoptr(GPtrArray) back = g_ptr_array_new();
    GHashTableIter it;
    gpointer key;

    g_hash_table_iter_init(&it, c->inflight);
    while (g_hash_table_iter_next(&it, &key, NULL)) {
        struct bc_nbd_cmd *cmd = key;
        g_ptr_array_add(back, cmd->dreq);
        cmd->dreq = NULL;
    }
    g_hash_table_remove_all(c->inflight);
    for (guint i = back->len; i-- > 0;)
        g_queue_push_head(&c->pending, g_ptr_array_index(back, i));
    if (c->h)
        nbd_close(c->h);    /* frees the commands taken back */
    c->h = NULL;
    g_mutex_lock(&d->lock);
    if (d->acked > d->flushed_upto)
        d->lost = true;
    g_mutex_unlock(&d->lock);
    g_warning("%s: %s: connection %u lost (%s); reconnecting for up to %" G_GINT64_FORMAT
              " s", d->what, d->uri, c->index, why, d->retry_us / G_USEC_PER_SEC);
    c->state = NBD_RETRYING;
    c->lost_at = c->next_attempt = bc_nbd_now();
    c->backoff_ms = NBD_BACKOFF_MIN_MS;
}

static void bc_nbd_fail_pending(struct bc_nbd_conn *c)
{
    struct bc_dreq *dreq;

    while ((dreq = g_queue_pop_head(&c->pending)))
        bc_nbd_finish(c, dreq, -EIO);
}

/* Try to reconnect if an attempt is due. */
static void bc_nbd_try_reconnect(struct bc_nbd_conn *c)
{
    struct bc_nbd *d = c->d;
    int64_t now = bc_nbd_now();
    g_autofree char *msg = NULL;

    if (now < c->next_attempt)
        return;
    c->h = bc_nbd_connect(d, now + CLAMP(d->retry_us, G_USEC_PER_SEC, 5 * G_USEC_PER_SEC), &msg);
    if (c->h) {
        if (nbd_get_size(c->h) != (int64_t)d->size)
            g_warning("%s: %s: the export changed size across a reconnect (%" G_GINT64_FORMAT
                      " bytes, was %" G_GUINT64_FORMAT ")", d->what, d->uri,
                      nbd_get_size(c->h), d->size);
        g_message("%s: %s: connection %u re-established", d->what, d->uri, c->index);
        bc_nbd_add(&d->stats.reconnects, 1);
        c->state = NBD_UP;
        return;
    }
    c->next_attempt = bc_nbd_now() + c->backoff_ms * 1000;
    c->backoff_ms = MIN(c->backoff_ms * 2, NBD_BACKOFF_MAX_MS);
    if (c->state == NBD_RETRYING && bc_nbd_now() >= c->lost_at + d->retry_us) {
        g_warning("%s: %s: could not reconnect within %" G_GINT64_FORMAT " s (%s); failing "
                  "requests with EIO until the server is back", d->what, d->uri,
                  d->retry_us / G_USEC_PER_SEC, msg);
        c->state = NBD_FAILED;
    }
}

/* Deliver what libnbd completed. */
static void bc_nbd_process_done(struct bc_nbd_conn *c)
{
    struct bc_nbd *d = c->d;

    for (guint i = 0; i < c->done->len; i++) {
        struct bc_nbd_done nd = g_array_index(c->done, struct bc_nbd_done, i);
        struct bc_dreq *dreq = nd.dreq;
        int res = -nd.err;

        if (nd.err && bc_nbd_retryable(nd.err)) {
            g_queue_push_tail(&c->pending, dreq);
            continue;
        }
        if (!nd.err) {
            bc_nbd_add(&d->stats.remote_reqs, 1);
            if (dreq->op == BC_OP_READ && !bc_nbd_is_bs(dreq))
                bc_nbd_add(&d->stats.remote_read_bytes, dreq->len);
            if (dreq->op == BC_OP_WRITE)
                bc_nbd_add(&d->stats.remote_write_bytes, dreq->len);
            g_mutex_lock(&d->lock);
            if (dreq->op == BC_OP_WRITE && !bc_nbd_fua(d, dreq))
                d->acked++;
            if (dreq->op == BC_OP_FLUSH)
                d->flushed_upto = MAX(d->flushed_upto, dreq->drv_scratch[0]);
            g_mutex_unlock(&d->lock);
        }
        bc_nbd_finish(c, dreq, res);
    }
    g_array_set_size(c->done, 0);
}

/* Issue everything pending while connected. */
static void bc_nbd_issue_pending(struct bc_nbd_conn *c)
{
    struct bc_nbd *d = c->d;
    struct bc_dreq *dreq;

    while (c->state == NBD_UP && (dreq = g_queue_pop_head(&c->pending))) {
        int err = 0;

        if (dreq->op == BC_OP_FLUSH) {
            bool lost;
            g_mutex_lock(&d->lock);
            lost = d->lost;
            d->lost = false;
            g_mutex_unlock(&d->lock);
            if (lost) {
                g_warning("%s: %s: failing a flush: the connection was lost while the "
                          "server held writes no flush had covered", d->what, d->uri);
                bc_nbd_finish(c, dreq, -EIO);
                continue;
            }
        }
        if (bc_nbd_issue(c, dreq, &err) == 0)
            continue;
        if (nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h) || bc_nbd_retryable(err)) {
            g_queue_push_head(&c->pending, dreq);
            bc_nbd_conn_lost(c, nbd_get_error() ? nbd_get_error() : g_strerror(err));
        } else {
            bc_nbd_finish(c, dreq, -err);
        }
    }
}

static gpointer bc_nbd_conn_thread(gpointer opaque)
{
    struct bc_nbd_conn *c = opaque;
    struct bc_nbd *d = c->d;

    for (;;) {
        struct bc_task *list;
        bool stop;
        uint64_t v;
        ssize_t rd = read(c->efd, &v, sizeof(v));
        (void)rd;

        g_mutex_lock(&c->lock);
        list = c->queue_head;
        c->queue_head = NULL;
        c->queue_tail = &c->queue_head;
        stop = c->stop;
        g_mutex_unlock(&c->lock);
        for (; list; list = list->next)
            g_queue_push_tail(&c->pending, bc_container_of(list, struct bc_dreq, task));
        if (stop && g_queue_is_empty(&c->pending) && !g_hash_table_size(c->inflight))
            break;

        if (c->state != NBD_UP) {
            bc_nbd_try_reconnect(c);
            if (c->state == NBD_FAILED || (stop && c->state != NBD_UP))
                bc_nbd_fail_pending(c);
        }
        bc_nbd_issue_pending(c);

        int64_t deadline = bc_nbd_now() + G_USEC_PER_SEC;
        if (c->state != NBD_UP) {
            struct pollfd p = { .fd = c->efd, .events = POLLIN };
            int64_t ms = (c->next_attempt - bc_nbd_now()) / 1000;
            if (poll(&p, 1, (int)CLAMP(ms, 0, 1000)) < 0 && errno != EINTR)
                g_usleep(1000);
            continue;
        }
        if (bc_nbd_poll_once(c->h, c->efd, deadline) < 0 || nbd_aio_is_dead(c->h) ||
            nbd_aio_is_closed(c->h)) {
            bc_nbd_process_done(c);
            bc_nbd_conn_lost(c, nbd_get_error() ? nbd_get_error() : "connection closed");
            continue;
        }
        bc_nbd_process_done(c);
        if (g_hash_table_size(c->inflight) &&
            bc_nbd_now() > c->last_progress + MAX(d->retry_us, G_USEC_PER_SEC))
            bc_nbd_conn_lost(c, "the server stopped answering");
    }
    return NULL;
}

/* ---- the driver interface ---------------------------------------------------------- */

static void bc_nbd_queue(struct bc_nbd_conn *c, struct bc_dreq *dreq)
{
    uint64_t one = 1;
    ssize_t w;

    dreq->task.next = NULL;
    g_mutex_lock(&c->lock);
    *c->queue_tail = &dreq->task;
    c->queue_tail = &dreq->task.next;
    g_mutex_unlock(&c->lock);
    w = write(c->efd, &one, sizeof(one));
    (void)w;    /* EAGAIN: a wakeup is pending anyway */
}

static void bc_nbd_submit(void *state, struct bc_dreq *dreq)
{
    struct bc_nbd *d = state;

    assert(dreq->offset % d->req_align == 0 && dreq->len % d->req_align == 0);
    if (d->read_only && dreq->op != BC_OP_READ && dreq->op != BC_OP_FLUSH) {
        bc_drv_complete_later(dreq, -EROFS);
        return;
    }
    if (dreq->op == BC_OP_FLUSH && !d->can_flush) {
        bc_drv_complete_later(dreq, 0);
        return;
    }
    if ((dreq->op == BC_OP_READ || dreq->op == BC_OP_WRITE) && dreq->len == 0) {
        bc_drv_complete_later(dreq, 0);
        return;
    }
    /* Past the end (up to req_align): reads see zeros, writes change nothing there;
     * bc_nbd_issue() sends only the part before the end. */
    if (dreq->op != BC_OP_FLUSH && dreq->offset + dreq->len > d->size) {
        uint64_t keep = dreq->offset < d->size ? d->size - dreq->offset : 0;
        if (dreq->op == BC_OP_READ)
            bc_iov_memset(dreq->iov, dreq->iovcnt, keep, 0, dreq->len - keep);
        if (keep == 0) {
            bc_drv_complete_later(dreq, 0);
            return;
        }
    }
    bc_nbd_queue(&d->conns[bc_loop_index(dreq->loop) % d->nconns], dreq);
}

static int bc_nbd_block_status(void *state, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    struct bc_nbd *d = state;
    struct bc_nbd_bs bs = { .offset = offset, .len = len, .res = 1 };
    uint64_t a = offset - offset % d->req_align;
    uint64_t end = MIN(offset + MIN(len, 1u << 30), d->size);

    *pnum = len;
    if (!d->can_bs)
        return 1;
    end = (end + d->req_align - 1) / d->req_align * d->req_align;
    g_mutex_init(&bs.lock);
    g_cond_init(&bs.cond);
    bs.pnum = len;
    bs.dreq.op = BC_OP_READ;
    bs.dreq.offset = a;
    bs.dreq.len = end - a;
    bs.dreq.drv_scratch[1] = (uintptr_t)&bs;
    bc_nbd_queue(&d->conns[0], &bs.dreq);
    g_mutex_lock(&bs.lock);
    while (!bs.finished)
        g_cond_wait(&bs.cond, &bs.lock);
    g_mutex_unlock(&bs.lock);
    g_mutex_clear(&bs.lock);
    g_cond_clear(&bs.cond);
    if (bs.res < 0)
        return bs.res;
    *pnum = MAX(MIN(bs.pnum, len), 1);
    return bs.res;
}

static void bc_nbd_get_stats(void *state, struct bc_drv_stats *st)
{
    struct bc_nbd *d = state;

    memset(st, 0, sizeof(*st));
    st->remote_reqs = __atomic_load_n(&d->stats.remote_reqs, __ATOMIC_RELAXED);
    st->remote_read_bytes = __atomic_load_n(&d->stats.remote_read_bytes, __ATOMIC_RELAXED);
    st->remote_write_bytes = __atomic_load_n(&d->stats.remote_write_bytes, __ATOMIC_RELAXED);
    st->reconnects = __atomic_load_n(&d->stats.reconnects, __ATOMIC_RELAXED);
    st->errors = __atomic_load_n(&d->stats.errors, __ATOMIC_RELAXED);
}

static void bc_nbd_close_dev(void *state)
{
    struct bc_nbd *d = state;
    struct bc_drv_stats st;

    if (!d)
        return;
    for (unsigned i = 0; i < d->nconns; i++) {
        struct bc_nbd_conn *c = &d->conns[i];
        if (c->thread) {
            uint64_t one = 1;
            ssize_t w;
            g_mutex_lock(&c->lock);
            c->stop = true;
            g_mutex_unlock(&c->lock);
            w = write(c->efd, &one, sizeof(one));
            (void)w;
            g_thread_join(c->thread);
        }
        if (c->h)
            nbd_close(c->h);
        if (c->efd >= 0)
            close(c->efd);
        g_mutex_clear(&c->lock);
        g_hash_table_unref(c->inflight);
        g_array_unref(c->done);
    }
    bc_nbd_get_stats(d, &st);
    g_message("%s: %s: %" G_GUINT64_FORMAT " requests, %" G_GUINT64_FORMAT " bytes read, %"
              G_GUINT64_FORMAT " bytes written, %" G_GUINT64_FORMAT " reconnects, %"
              G_GUINT64_FORMAT " errors", d->what, d->uri, st.remote_reqs,
              st.remote_read_bytes, st.remote_write_bytes, st.reconnects, st.errors);
    g_mutex_clear(&d->lock);
    g_free(d->what);
    g_free(d->uri);
    g_free(d);
}

static void bc_nbd_conn_init(struct bc_nbd *d, unsigned i)
{
    struct bc_nbd_conn *c = &d->conns[i];

    c->d = d;
    c->index = i;
    c->efd = -1;
    g_mutex_init(&c->lock);
    c->queue_tail = &c->queue_head;
    g_queue_init(&c->pending);
    c->inflight = g_hash_table_new(NULL, NULL);
    c->done = g_array_new(FALSE, FALSE, sizeof(struct bc_nbd_done));
}

/* Block-size constraints as alignment and transfer limits; false with *errp on junk. */
static bool bc_nbd_limits(const struct bc_open_args *args, struct bc_nbd *d,
                       struct nbd_handle *h, struct bc_props *props, GError **errp)
{
    int64_t min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
    int64_t pref = nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED);
    int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);

    if (min <= 0)
        min = 1;
    if (pref <= 0)
        pref = MAX(min, 4096);
    if (max <= 0)
        max = NBD_MAX_TRANSFER_CAP;
    if ((min & (min - 1)) || min > 65536 || (pref & (pref - 1)) || pref < min ||
        max < min) {
        g_set_error(errp, BC_ERROR, 0, "%s: %s: the server's block sizes make no sense "
                    "(minimum %" G_GINT64_FORMAT ", preferred %" G_GINT64_FORMAT ", maximum %"
                    G_GINT64_FORMAT ")", bc_what(args), d->uri, min, pref, max);
        return false;
    }
    max = MIN(max, NBD_MAX_TRANSFER_CAP);
    max -= max % MAX(pref, min) ? max % MAX(pref, min) : 0;
    if (max < min)
        max = min;
    d->req_align = (uint32_t)min;
    *props = (struct bc_props){
        .size = d->size,
        .req_align = (uint32_t)min,
        .mem_align = 1,
        .max_transfer = (uint32_t)max,
        .discard_align = d->can_trim ? (uint32_t)pref : 0,
        .zero_align = d->can_zero ? (uint32_t)min : 0,
        .fua_native = d->can_fua,
        .read_only = d->read_only,
        .can_grow = false,
    };
    return true;
}

static void *bc_nbd_open(const struct bc_open_args *args, struct bc_props *props, GError **errp)
{
    const char *uri = bc_opt(args, "uri");
    struct bc_nbd *d;
    struct nbd_handle *h;
    g_autofree char *msg = NULL;
    int64_t retry, conns, size;

    if (!uri || !*uri) {
        g_set_error(errp, BC_ERROR, 0, "%s:uri: required for driver nbd (nbd://HOST[:PORT]/"
                    "EXPORT, nbd+unix:///EXPORT?socket=PATH, nbds://...)", bc_what(args));
        return NULL;
    }
    if (args->path) {
        g_set_error(errp, BC_ERROR, 0, "%s:path: driver nbd takes a uri, not a path",
                    bc_what(args));
        return NULL;
    }
    if (!bc_opt_uint(args, "retry-timeout", NBD_MAX_RETRY_TIMEOUT, NBD_DEFAULT_RETRY_TIMEOUT,
                     &retry, errp) ||
        !bc_opt_uint(args, "connections", NBD_MAX_CONNS, 0, &conns, errp))
        return NULL;
    if (bc_opt(args, "connections") && conns == 0) {
        g_set_error(errp, BC_ERROR, 0, "%s:connections: must be from 1 to %d", bc_what(args),
                    NBD_MAX_CONNS);
        return NULL;
    }

    d = g_new0(struct bc_nbd, 1);
    d->what = g_strdup(bc_what(args));
    d->uri = g_strdup(uri);
    d->retry_us = retry * G_USEC_PER_SEC;
    g_mutex_init(&d->lock);

    /* The first connection: a server that is down gets retry-timeout seconds to come up. */
    int64_t deadline = bc_nbd_now() + MAX(d->retry_us, G_USEC_PER_SEC / 10);
    unsigned backoff = NBD_BACKOFF_MIN_MS;
    while (!(h = bc_nbd_connect(d, deadline, &msg)) && bc_nbd_now() + backoff * 1000 < deadline) {
        g_clear_pointer(&msg, g_free);
        g_usleep(backoff * 1000);
        backoff = MIN(backoff * 2, NBD_BACKOFF_MAX_MS);
    }
    if (!h) {
        g_set_error(errp, BC_ERROR, ECONNREFUSED, "%s:uri: %s: cannot connect (tried for %"
                    G_GINT64_FORMAT " s): %s", bc_what(args), uri, retry, msg);
        goto fail_dev;
    }
    size = nbd_get_size(h);
    d->read_only = args->read_only || nbd_is_read_only(h) == 1;
    if (!args->read_only && nbd_is_read_only(h) == 1) {
        g_set_error(errp, BC_ERROR, EROFS, "%s:uri: %s: the export is read-only, but the "
                    "layer is opened for writing (set read-only = true, or put an overlay "
                    "on it)", bc_what(args), uri);
        goto fail_h;
    }
    if (size < 0) {
        g_set_error(errp, BC_ERROR, 0, "%s:uri: %s: cannot get the export size: %s",
                    bc_what(args), uri, nbd_get_error());
        goto fail_h;
    }
    d->size = (uint64_t)size;
    d->can_flush = nbd_can_flush(h) == 1;
    d->can_fua = nbd_can_fua(h) == 1;
    d->can_trim = nbd_can_trim(h) == 1 && !d->read_only;
    d->can_zero = nbd_can_zero(h) == 1 && !d->read_only;
    d->can_bs = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
    if (!bc_nbd_limits(args, d, h, props, errp))
        goto fail_h;
    d->nconns = nbd_can_multi_conn(h) == 1 ? (unsigned)(conns ? conns : NBD_DEFAULT_CONNS) : 1;
    if (conns > 1 && d->nconns == 1)
        g_message("%s: %s: the server does not allow multi-conn; using one connection",
                  d->what, uri);

    for (unsigned i = 0; i < d->nconns; i++) {
        struct bc_nbd_conn *c = &d->conns[i];
        bc_nbd_conn_init(d, i);
        if (i == 0) {
            c->h = h;
        } else if (!(c->h = bc_nbd_connect(d, bc_nbd_now() + MAX(d->retry_us, G_USEC_PER_SEC),
                                         &msg))) {
            g_set_error(errp, BC_ERROR, 0, "%s:uri: %s: connection %u of %u: %s",
                        bc_what(args), uri, i + 1, d->nconns, msg);
            d->nconns = i + 1;
            goto fail;
        }
        c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (c->efd < 0) {
            g_set_error(errp, BC_ERROR, 0, "%s: eventfd: %s", bc_what(args),
                        g_strerror(errno));
            d->nconns = i + 1;
            goto fail;
        }
    }
    for (unsigned i = 0; i < d->nconns; i++)
        d->conns[i].thread = g_thread_new("nbd-conn", bc_nbd_conn_thread, &d->conns[i]);
    return d;

fail_h:
    nbd_close(h);
fail_dev:
    g_mutex_clear(&d->lock);
    g_free(d->what);
    g_free(d->uri);
    g_free(d);
    return NULL;
fail:
    bc_nbd_close_dev(d);
    return NULL;
}

static const char *const bc_nbd_keys[] = { "uri", "retry-timeout", "connections", NULL };

const struct bc_driver bc_drv_nbd = {
    .name = "nbd",
    .keys = bc_nbd_keys,
    .needs_path = false,
    .open = bc_nbd_open,
    .close = bc_nbd_close_dev,
    .submit = bc_nbd_submit,
    .block_status = bc_nbd_block_status,
    .get_stats = bc_nbd_get_stats,
};
