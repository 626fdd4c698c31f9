/* SPDX-License-Identifier: MIT */
/* The nbd driver's connection threads: each owns a libnbd handle, issues the queued requests
 * with libnbd's aio calls, polls the socket, resends after a reconnect.  See nbd-int.h. */
#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "drivers/nbd-int.h"

/* ---- delivering results -------------------------------------------------------------- */

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

/* ---- libnbd callbacks (run on the connection thread, inside libnbd calls) ------------ */

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

/* ---- issuing ------------------------------------------------------------------------- */

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

/* ---- connecting ---------------------------------------------------------------------- */

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
struct nbd_handle *bc_nbd_connect(struct bc_nbd *d, int64_t deadline, char **msg)
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

char *bc_nbd_changed(const struct bc_nbd *d, struct nbd_handle *h)
{
    int64_t size = nbd_get_size(h), min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);

    if (size != (int64_t)d->size)
        return g_strdup_printf("the export size changed (%" G_GINT64_FORMAT " bytes, was %"
                               G_GUINT64_FORMAT ")", size, d->size);
    if (!d->read_only && nbd_is_read_only(h) != 0)
        return g_strdup("the export became read-only");
    if (MAX(min, 1) > d->req_align)
        return g_strdup_printf("the minimum block size grew (%" G_GINT64_FORMAT ", was %u)",
                               min, d->req_align);
    const struct { bool had; int (*now)(struct nbd_handle *); const char *what; } caps[] = {
        { d->can_flush, nbd_can_flush, "flush" },
        { d->can_fua, nbd_can_fua, "FUA" },
        { d->can_trim, nbd_can_trim, "trim" },
        { d->can_zero, nbd_can_zero, "write zeroes" },
        { d->nconns > 1, nbd_can_multi_conn, "multi-conn" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(caps); i++)
        if (caps[i].had && caps[i].now(h) != 1)
            return g_strdup_printf("the server no longer offers %s", caps[i].what);
    return NULL;
}

/* ---- the connection thread ----------------------------------------------------------- */

static bool bc_nbd_retryable(int err)
{
    return err == ENOTCONN || err == ESHUTDOWN || err == ECONNRESET || err == EPIPE;
}

/* The connection is gone: take back what was in flight, to send again first. */
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
    c->warned = false;
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
    if (c->h && (msg = bc_nbd_changed(d, c->h))) {
        /* Not the export the first connection had: using it could break a promise made to
         * the caller (flush covering every connection, FUA, the size), so keep trying. */
        if (!c->warned)
            g_warning("%s: %s: connection %u: the server came back, but %s; not using it",
                      d->what, d->uri, c->index, msg);
        c->warned = true;
        nbd_close(c->h);
        c->h = NULL;
    }
    if (c->h) {
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

/* Deliver what libnbd completed; requests that failed because the connection is going away
 * are queued again.  Returns the errno of the last such failure, or 0. */
static int bc_nbd_process_done(struct bc_nbd_conn *c)
{
    struct bc_nbd *d = c->d;
    int retry_err = 0;

    for (guint i = 0; i < c->done->len; i++) {
        struct bc_nbd_done nd = g_array_index(c->done, struct bc_nbd_done, i);
        struct bc_dreq *dreq = nd.dreq;
        int res = -nd.err;

        if (nd.err && bc_nbd_retryable(nd.err)) {
            g_queue_push_tail(&c->pending, dreq);
            retry_err = nd.err;
            continue;
        }
        if (!nd.err) {
            bc_nbd_add(&d->stats.remote_reqs, 1);
            if (dreq->op == BC_OP_READ && !bc_nbd_is_bs(dreq))
                bc_nbd_add(&d->stats.remote_read_bytes, dreq->len);
            if (dreq->op == BC_OP_WRITE)
                bc_nbd_add(&d->stats.remote_write_bytes, dreq->len);
            g_mutex_lock(&d->lock);
            if (dreq->op != BC_OP_READ && dreq->op != BC_OP_FLUSH && !bc_nbd_fua(d, dreq))
                d->acked++;     /* data the server may still lose until a flush */
            if (dreq->op == BC_OP_FLUSH)
                d->flushed_upto = MAX(d->flushed_upto, dreq->drv_scratch[0]);
            g_mutex_unlock(&d->lock);
        }
        bc_nbd_finish(c, dreq, res);
    }
    g_array_set_size(c->done, 0);
    return retry_err;
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

gpointer bc_nbd_conn_thread(gpointer opaque)
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
        bc_nbd_process_done(c);     /* libnbd may have completed some while issuing */

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
        int retry_err = bc_nbd_process_done(c);
        if (retry_err) {
            /* The server refuses requests on a live connection (ESHUTDOWN while it shuts
             * down): reconnect rather than resend into it at once. */
            bc_nbd_conn_lost(c, g_strerror(retry_err));
            continue;
        }
        if (g_hash_table_size(c->inflight) &&
            bc_nbd_now() > c->last_progress + MAX(d->retry_us, G_USEC_PER_SEC))
            bc_nbd_conn_lost(c, "the server stopped answering");
    }
    return NULL;
}

/* ---- setting up; queueing from any thread -------------------------------------------- */

void bc_nbd_conn_init(struct bc_nbd *d, unsigned i)
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

void bc_nbd_queue(struct bc_nbd_conn *c, struct bc_dreq *dreq)
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
