/* SPDX-License-Identifier: MIT */
/* The I/O threads: one blockcore loop each, receiving FUSE requests from the non-blocking
 * session fd, per-thread pools of receive buffers and request contexts. */
#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <linux/fuse.h>
#include <liburing.h>

#include "fuse/front.h"

_Static_assert(sizeof(struct fuse_in_header) + sizeof(struct fuse_write_in) == FO_WRITE_HDR,
               "WRITE payload offset");

/* Requests received per readiness before the loop gets to reap completions. */
#define FO_RECV_BATCH 16
/* Free buffers and contexts a thread keeps; more are freed. */
#define FO_POOL_KEEP 32
#define FO_RING_ENTRIES 256

/* A receive buffer: base is page-aligned, mem = base + page - FO_WRITE_HDR so that a WRITE
 * payload lands on base + page.  The kernel never writes more than one request, at most
 * FO_MAX_IO of payload plus its headers, so FO_MAX_IO + 2 pages after base always suffice
 * (libfuse asks read() for se->bufsize bytes, but the kernel fills only the request). */
struct fo_rbuf {
    struct fo_rbuf *next;
    char *base;
    char *mem;
    size_t size;
};

struct fo_thread {
    struct fo_daemon *d;
    unsigned index;
    pthread_t tid;
    struct bc_loop *loop;
    struct bc_uop watch;        /* readiness of the session fd */
    struct bc_task rx_task;     /* continue receiving after a full batch */
    bool rx_queued;
    struct fo_rbuf *cur;        /* the buffer for the next receive (or being processed) */
    bool cur_kept;              /* the request being processed keeps cur */
    struct fo_rbuf *free_rbufs;
    unsigned n_free_rbufs;
    struct fo_io *free_ios;
    unsigned n_free_ios;
    uint64_t inflight;          /* fo_io contexts handed out and not yet put back */
    bool stopping;              /* no more receiving */
    bool drained_reported;
    struct bc_task stop_task;
    struct bc_task flush_task;
    unsigned flush_pending;
    /* Start-up handshake with fo_threads_start(). */
    GMutex start_lock;
    GCond start_cond;
    int start_state;            /* 0 starting, 1 running, -1 failed */
    char *start_error;
};

/* The thread running the current callback; NULL outside the I/O threads. */
static __thread struct fo_thread *fo_self;

static size_t fo_page(void)
{
    /* The page size; every thread computes the same value, so the race is benign. */
    static size_t page;

    if (page == 0)
        page = (size_t)sysconf(_SC_PAGESIZE);
    return page;
}

void fo_notify_main(struct fo_daemon *d)
{
    uint64_t one = 1;

    if (write(d->event_fd, &one, sizeof one) < 0 && errno != EAGAIN)
        abort();
}

/* ---- pools ------------------------------------------------------------------------- */

static struct fo_rbuf *rbuf_get(struct fo_thread *thr)
{
    struct fo_rbuf *rb = thr->free_rbufs;

    if (rb != NULL) {
        thr->free_rbufs = rb->next;
        thr->n_free_rbufs--;
        return rb;
    }
    rb = g_new0(struct fo_rbuf, 1);
    rb->base = bc_buf_alloc(FO_MAX_IO + 2 * fo_page());
    rb->mem = rb->base + fo_page() - FO_WRITE_HDR;
    rb->size = FO_MAX_IO + fo_page() + FO_WRITE_HDR;
    return rb;
}

static void rbuf_free(struct fo_rbuf *rb)
{
    bc_buf_free(rb->base);
    g_free(rb);
}

static void rbuf_put(struct fo_thread *thr, struct fo_rbuf *rb)
{
    if (thr->n_free_rbufs >= FO_POOL_KEEP) {
        rbuf_free(rb);
        return;
    }
    rb->next = thr->free_rbufs;
    thr->free_rbufs = rb;
    thr->n_free_rbufs++;
}

static void check_drained(struct fo_thread *thr)
{
    if (thr->stopping && thr->inflight == 0 && !thr->drained_reported) {
        thr->drained_reported = true;
        __atomic_add_fetch(&thr->d->drained, 1, __ATOMIC_RELEASE);
        fo_notify_main(thr->d);
    }
}

struct fo_io *fo_io_get(fuse_req_t req, struct fo_disk *disk)
{
    struct fo_thread *thr = fo_self;
    struct fo_io *io;

    assert(thr != NULL);
    io = thr->free_ios;
    if (io != NULL) {
        thr->free_ios = io->next;
        thr->n_free_ios--;
    } else {
        io = g_new(struct fo_io, 1);
    }
    memset(io, 0, sizeof *io);
    io->thr = thr;
    io->req = req;
    io->disk = disk;
    thr->inflight++;
    return io;
}

void *fo_io_read_buf(struct fo_io *io, uint64_t len)
{
    assert(len <= FO_MAX_IO && io->buf == NULL);
    /* Sized to the request: blockcore's buffer pool caches freed buffers per thread and
     * size, so a 4 KiB read costs 4 KiB of device-visible memory, not a whole 1 MiB. */
    io->buf = bc_buf_alloc((len + fo_page() - 1) & ~(fo_page() - 1));
    return io->buf;
}

void fo_io_keep_receive_buf(struct fo_io *io)
{
    struct fo_thread *thr = io->thr;

    assert(thr->cur != NULL && !thr->cur_kept && io->buf == NULL);
    thr->cur_kept = true;
    io->buf = thr->cur;
    io->buf_is_rbuf = true;
}

struct bc_loop *fo_io_loop(const struct fo_io *io)
{
    return io->thr->loop;
}

void fo_io_put(struct fo_io *io)
{
    struct fo_thread *thr = io->thr;

    assert(thr == fo_self);
    if (io->buf != NULL) {
        if (io->buf_is_rbuf)
            rbuf_put(thr, io->buf);
        else
            bc_buf_free(io->buf);
    }
    if (thr->n_free_ios >= FO_POOL_KEEP) {
        g_free(io);
    } else {
        io->next = thr->free_ios;
        thr->free_ios = io;
        thr->n_free_ios++;
    }
    assert(thr->inflight > 0);
    thr->inflight--;
    check_drained(thr);
}

/* ---- a raw OPEN reply ---------------------------------------------------------------- */

/*
 * libfuse 3.14 cannot set FOPEN_PARALLEL_DIRECT_WRITES (3.14.1+ can); without it the kernel
 * takes the inode lock exclusively around every direct write, serialising writers of one
 * file.  The OPEN request being processed is still in this thread's receive buffer, so its
 * unique id is known: send the reply ourselves and let libfuse free the request.
 *
 * Only to a kernel whose INIT announced FUSE 7.38 or later (conn->proto_minor; d->open_raw
 * is set at INIT), the version that added the flag; older ones get libfuse's reply.  The
 * reply itself (fuse_out_header, then the 16-byte fuse_open_out) has not changed since
 * 7.0.  The minor libfuse 3.14.0 answers INIT with is 31, so the protocol's "smaller of
 * the two" would rule out this flag (and FOPEN_NOFLUSH, 7.35, which libfuse sends
 * itself) on every kernel; but a kernel acts on the open_flags it knows whatever minor
 * the daemon announced, so it is the kernel's minor that decides.
 */
bool fo_reply_open_direct(fuse_req_t req, fuse_ino_t ino, uint64_t fh, uint32_t open_flags)
{
    struct fo_thread *thr = fo_self;

    if (thr == NULL || thr->cur == NULL ||
        !__atomic_load_n(&thr->d->open_raw, __ATOMIC_ACQUIRE))
        return false;
    const struct fuse_in_header *in = (const struct fuse_in_header *)thr->cur->mem;
    if (in->opcode != FUSE_OPEN || in->nodeid != ino)
        return false;
    struct fuse_open_out arg = { .fh = fh, .open_flags = open_flags };
    struct fuse_out_header out = {
        .len = sizeof out + sizeof arg,
        .error = 0,
        .unique = in->unique,
    };
    struct iovec iov[2] = { { &out, sizeof out }, { &arg, sizeof arg } };
    ssize_t n = writev(thr->d->fuse_fd, iov, 2);
    if (n != (ssize_t)out.len)
        fo_log(1, "open reply: %s", n < 0 ? g_strerror(errno) : "short write");
    fuse_reply_none(req);
    return true;
}

/* ---- receiving --------------------------------------------------------------------- */

static void receive_batch(struct fo_thread *thr)
{
    struct fo_daemon *d = thr->d;

    for (unsigned n = 0; !thr->stopping; n++) {
        if (n == FO_RECV_BATCH) {
            /* Let the loop submit and reap; continue on its next iteration. */
            if (!thr->rx_queued) {
                thr->rx_queued = true;
                bc_loop_defer(thr->loop, &thr->rx_task);
            }
            return;
        }
        if (thr->cur == NULL)
            thr->cur = rbuf_get(thr);
        struct fuse_buf fb = { .mem = thr->cur->mem, .size = thr->cur->size };
        int r = fuse_session_receive_buf(d->se, &fb);
        if (r == -EAGAIN)
            return;
        if (r == -EINTR)
            continue;
        if (r <= 0) {
            if (fuse_session_exited(d->se)) {
                fo_log(1, "the kernel ended the session (unmounted)");
                thr->stopping = true;
                __atomic_store_n(&d->unmounted, true, __ATOMIC_RELEASE);
                fo_notify_main(d);
                check_drained(thr);
            } else {
                fo_err("reading /dev/fuse: %s", g_strerror(-r));
            }
            return;
        }
        thr->cur_kept = false;
        fuse_session_process_buf(d->se, &fb);
        if (thr->cur_kept)
            thr->cur = NULL;
    }
}

static void rx_task_run(struct bc_task *task)
{
    struct fo_thread *thr = bc_container_of(task, struct fo_thread, rx_task);

    thr->rx_queued = false;
    receive_batch(thr);
}

static void on_readable(struct bc_uop *uop, int res, unsigned cqe_flags)
{
    struct fo_thread *thr = bc_container_of(uop, struct fo_thread, watch);

    if (res == -ECANCELED || thr->stopping)
        return;
    if (!(cqe_flags & IORING_CQE_F_MORE))
        bc_loop_watch_fd(thr->loop, &thr->watch, thr->d->fuse_fd);
    if (res < 0) {
        fo_err("polling /dev/fuse: %s", g_strerror(-res));
        return;
    }
    receive_batch(thr);
}

/* ---- thread life ------------------------------------------------------------------- */

static void *thread_main(void *arg)
{
    struct fo_thread *thr = arg;
    GError *err = NULL;

    fo_self = thr;
    thr->loop = bc_loop_new(thr->index, FO_RING_ENTRIES, &err);
    g_mutex_lock(&thr->start_lock);
    if (thr->loop == NULL) {
        thr->start_error = g_strdup(err->message);
        g_error_free(err);
        thr->start_state = -1;
    } else {
        thr->start_state = 1;
    }
    g_cond_signal(&thr->start_cond);
    g_mutex_unlock(&thr->start_lock);
    if (thr->loop == NULL)
        return NULL;

    thr->watch.done = on_readable;
    thr->rx_task.fn = rx_task_run;
    bc_loop_watch_fd(thr->loop, &thr->watch, thr->d->fuse_fd);
    int r = bc_loop_run(thr->loop);
    if (r < 0)
        fo_err("I/O thread %u: event loop failed: %s", thr->index, g_strerror(-r));

    assert(thr->inflight == 0);
    if (thr->cur != NULL)
        rbuf_free(thr->cur);
    while (thr->free_rbufs != NULL) {
        struct fo_rbuf *rb = thr->free_rbufs;
        thr->free_rbufs = rb->next;
        rbuf_free(rb);
    }
    while (thr->free_ios != NULL) {
        struct fo_io *io = thr->free_ios;
        thr->free_ios = io->next;
        g_free(io);
    }
    bc_loop_free(thr->loop);
    return NULL;
}

bool fo_threads_start(struct fo_daemon *d, GError **errp)
{
    d->threads = g_new0(struct fo_thread *, d->nthreads);
    for (unsigned i = 0; i < d->nthreads; i++) {
        struct fo_thread *thr = g_new0(struct fo_thread, 1);
        thr->d = d;
        thr->index = i;
        g_mutex_init(&thr->start_lock);
        g_cond_init(&thr->start_cond);
        int e = pthread_create(&thr->tid, NULL, thread_main, thr);
        if (e != 0) {
            g_set_error(errp, LF_ERROR, e, "cannot start I/O thread %u: %s", i,
                        g_strerror(e));
            g_free(thr);
            d->nthreads = i;
            return false;
        }
        d->threads[i] = thr;
        g_mutex_lock(&thr->start_lock);
        while (thr->start_state == 0)
            g_cond_wait(&thr->start_cond, &thr->start_lock);
        g_mutex_unlock(&thr->start_lock);
        if (thr->start_state < 0) {
            g_set_error(errp, LF_ERROR, EIO, "I/O thread %u: %s", i, thr->start_error);
            pthread_join(thr->tid, NULL);
            g_free(thr->start_error);
            g_free(thr);
            d->threads[i] = NULL;
            d->nthreads = i;
            return false;
        }
    }
    return true;
}

static void stop_task_run(struct bc_task *task)
{
    struct fo_thread *thr = bc_container_of(task, struct fo_thread, stop_task);

    thr->stopping = true;
    check_drained(thr);
}

void fo_threads_stop_receiving(struct fo_daemon *d)
{
    for (unsigned i = 0; i < d->nthreads; i++) {
        struct fo_thread *thr = d->threads[i];
        thr->stop_task.fn = stop_task_run;
        bc_loop_post(thr->loop, &thr->stop_task);
    }
}

static void flush_one_done(void *opaque, int res)
{
    struct fo_thread *thr = opaque;
    struct fo_daemon *d = thr->d;

    if (res < 0) {
        int zero = 0;
        __atomic_compare_exchange_n(&d->flush_res, &zero, res, false, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE);
    }
    if (--thr->flush_pending == 0) {
        __atomic_store_n(&d->flushed, true, __ATOMIC_RELEASE);
        fo_notify_main(d);
    }
}

static void flush_task_run(struct bc_task *task)
{
    struct fo_thread *thr = bc_container_of(task, struct fo_thread, flush_task);
    struct fo_daemon *d = thr->d;

    thr->flush_pending = 1;
    for (unsigned i = 0; i < d->ndisks; i++) {
        thr->flush_pending++;
        lf_disk_flush(d->disks[i].disk, thr->loop, flush_one_done, thr);
    }
    flush_one_done(thr, 0);
}

void fo_threads_flush_all(struct fo_daemon *d)
{
    struct fo_thread *thr = d->threads[0];

    thr->flush_task.fn = flush_task_run;
    bc_loop_post(thr->loop, &thr->flush_task);
}

void fo_threads_join(struct fo_daemon *d)
{
    for (unsigned i = 0; i < d->nthreads; i++)
        bc_loop_stop(d->threads[i]->loop);
    for (unsigned i = 0; i < d->nthreads; i++) {
        struct fo_thread *thr = d->threads[i];
        pthread_join(thr->tid, NULL);
        g_mutex_clear(&thr->start_lock);
        g_cond_clear(&thr->start_cond);
        g_free(thr);
    }
    g_free(d->threads);
    d->threads = NULL;
    d->nthreads = 0;
}
