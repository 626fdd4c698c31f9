/* SPDX-License-Identifier: MIT */
/* The nbd driver: a disk on an NBD server (qemu-nbd, nbdkit, qemu-storage-daemon...) through
 * libnbd's asynchronous calls, with several connections when the server allows it and
 * reconnection within a retry window when a connection is lost.  The design: nbd-int.h. */
#include <assert.h>
#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "drivers/nbd-int.h"

/* ---- the driver interface ------------------------------------------------------------ */

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
    g_mutex_clear(&d->lock);
    g_free(d->what);
    g_free(d->uri);
    g_free(d);
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
    max -= max % min;   /* blockcore needs a multiple of the minimum, not of the preferred */
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
        .remote = true,
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
        } else if ((msg = bc_nbd_changed(d, c->h))) {
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
