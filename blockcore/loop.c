/* SPDX-License-Identifier: MIT */
/* The per-thread event loop: one io_uring that carries backend I/O, fd readiness (the FUSE
 * fd, virtqueue eventfds) and cross-thread wakeups, plus a queue of deferred calls. */

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <liburing.h>

#include "blockcore/bc-internal.h"
#include "blockcore/testing.h"

/*
 * Notes on the design
 *
 * A loop belongs to the thread that created it; everything but bc_loop_post() and
 * bc_loop_stop() must be called on that thread.  Posted tasks go on a list guarded by
 * post_lock and the poster writes the loop's eventfd if the loop may be asleep
 * (post_armed), which the ring watches with a multishot poll.
 *
 * Completion callbacks run only from bc_loop_run_once() (its bc_loop_reap()), never from
 * bc_loop_sqe(): a driver's submit() gets SQEs from it, so a callback run there would run
 * inside the call that started some other request -- driver.h promises it never does, and
 * a FUSE reply sent from under a submit() could re-enter the layer that is submitting.
 * When the SQ is full, bc_loop_sqe() submits, which on its own runs nothing.  The kernel
 * then takes the SQEs even when the CQ ring is full: with IORING_FEAT_NODROP (required at
 * bc_loop_new) it keeps the completions that do not fit on an overflow list.  Some 5.x
 * kernels refuse the submission with -EBUSY while that list cannot be flushed, and any
 * kernel may answer -EAGAIN when short of memory; then bc_loop_sqe() moves the ready CQEs
 * to the loop's held list, which frees the CQ ring, without running them, and retries.
 * Held completions run first at the next reap, so completion order is kept.
 */

struct bc_loop {
    struct io_uring ring;
    unsigned index;

    /* Deferred tasks, FIFO; owner thread only. */
    struct bc_task *defer_head, **defer_tail;

    /* Posted tasks from any thread, FIFO; protected by post_lock. */
    GMutex post_lock;
    struct bc_task *post_head, **post_tail;
    bool post_armed;            /* protected by post_lock: loop might be sleeping */
    int wake_fd;
    struct bc_uop wake_uop;

    /* Completions bc_loop_sqe() took off a full CQ ring, oldest first, to run at the next
     * reap; held_next is the first not yet run.  Owner thread only. */
    GArray *held;
    guint held_next;
    /* Test hook (bc_loop_emulate_busy): answer -EBUSY like a 5.x kernel would. */
    bool emulate_busy;
    unsigned busy_answers;

    volatile sig_atomic_t stop;
};

/* A completion as copied out of the CQ ring. */
struct bc_cqe {
    struct bc_uop *uop;
    int res;
    unsigned flags;
};

static __thread struct bc_loop *current_loop;

GQuark bc_error_quark(void)
{
    return g_quark_from_static_string("blockcore-error");
}

static void wake_done(struct bc_uop *uop, int res, unsigned flags)
{
    struct bc_loop *loop = bc_container_of(uop, struct bc_loop, wake_uop);
    uint64_t v;

    /* Drain the counter; the posted tasks are collected by the main iteration. */
    while (read(loop->wake_fd, &v, sizeof(v)) == sizeof(v))
        ;
    if (!(flags & IORING_CQE_F_MORE) && res != -ECANCELED)
        bc_loop_watch_fd(loop, &loop->wake_uop, loop->wake_fd);
}

struct bc_loop *bc_loop_new(unsigned index, unsigned ring_entries, GError **errp)
{
    struct bc_loop *loop = g_new0(struct bc_loop, 1);
    struct io_uring_params p = { 0 };
    int ret;

    loop->index = index;
    loop->defer_tail = &loop->defer_head;
    loop->post_tail = &loop->post_head;
    g_mutex_init(&loop->post_lock);
    loop->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->wake_fd < 0) {
        g_set_error(errp, BC_ERROR, errno, "eventfd: %s", g_strerror(errno));
        goto fail;
    }
    p.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN;
    ret = io_uring_queue_init_params(ring_entries ? ring_entries : 256, &loop->ring, &p);
    if (ret < 0) {
        /* Older kernels lack the flags; retry plain. */
        memset(&p, 0, sizeof(p));
        ret = io_uring_queue_init_params(ring_entries ? ring_entries : 256, &loop->ring, &p);
    }
    if (ret < 0) {
        g_set_error(errp, BC_ERROR, -ret, "io_uring_queue_init: %s", g_strerror(-ret));
        goto fail;
    }
    if (!(p.features & IORING_FEAT_NODROP)) {
        /* Without it a full CQ ring loses completions, and their requests never end. */
        io_uring_queue_exit(&loop->ring);
        g_set_error(errp, BC_ERROR, ENOSYS,
                    "io_uring: the kernel lacks IORING_FEAT_NODROP (Linux 5.5)");
        goto fail;
    }
    loop->held = g_array_new(FALSE, FALSE, sizeof(struct bc_cqe));
    loop->wake_uop.done = wake_done;
    bc_loop_watch_fd(loop, &loop->wake_uop, loop->wake_fd);
    current_loop = loop;
    return loop;

fail:
    if (loop->wake_fd >= 0)
        close(loop->wake_fd);
    g_mutex_clear(&loop->post_lock);
    g_free(loop);
    return NULL;
}

void bc_loop_free(struct bc_loop *loop)
{
    if (!loop)
        return;
    io_uring_queue_exit(&loop->ring);
    g_array_free(loop->held, TRUE);
    close(loop->wake_fd);
    g_mutex_clear(&loop->post_lock);
    if (current_loop == loop)
        current_loop = NULL;
    g_free(loop);
}

struct bc_loop *bc_loop_current(void)
{
    return current_loop;
}

unsigned bc_loop_index(const struct bc_loop *loop)
{
    return loop->index;
}

struct io_uring *bc_loop_ring(struct bc_loop *loop)
{
    return &loop->ring;
}

/* Move the ready CQEs to the held list without running them; returns how many. */
static unsigned hold_ready(struct bc_loop *loop)
{
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;

    io_uring_for_each_cqe(&loop->ring, head, cqe) {
        struct bc_cqe c = { io_uring_cqe_get_data(cqe), cqe->res, cqe->flags };
        g_array_append_val(loop->held, c);
        n++;
    }
    io_uring_cq_advance(&loop->ring, n);
    return n;
}

/* io_uring_submit(), or the -EBUSY a 5.x kernel gives while its CQ overflow list cannot be
 * flushed into a full CQ ring, when a test asks for it. */
static int submit_for_room(struct bc_loop *loop)
{
    if (loop->emulate_busy && io_uring_cq_has_overflow(&loop->ring) &&
        io_uring_cq_ready(&loop->ring) >= loop->ring.cq.ring_entries) {
        loop->busy_answers++;
        return -EBUSY;
    }
    return io_uring_submit(&loop->ring);
}

struct io_uring_sqe *bc_loop_sqe(struct bc_loop *loop, struct bc_uop *uop)
{
    struct io_uring_sqe *sqe;

    /* Never run a callback here: see the notes on the design. */
    while (!(sqe = io_uring_get_sqe(&loop->ring))) {
        int ret = submit_for_room(loop);
        if (ret < 0 && ret != -EAGAIN && ret != -EBUSY && ret != -EINTR)
            g_error("io_uring_submit: %s", g_strerror(-ret));
        if (ret > 0 || ret == -EINTR)
            continue;
        /* The kernel took nothing: free the CQ ring, or wait until it has something to
         * free, and try again. */
        if (!hold_ready(loop)) {
            /* Bounded: after an -EAGAIN (the kernel short of memory) nothing may be on its
             * way, and the submission must simply be tried again. */
            struct __kernel_timespec ts = { .tv_nsec = 1000000 };
            struct io_uring_cqe *cqe;
            ret = io_uring_wait_cqe_timeout(&loop->ring, &cqe, &ts);
            if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME)
                g_error("io_uring_wait_cqe: %s", g_strerror(-ret));
            hold_ready(loop);
        }
    }
    io_uring_sqe_set_data(sqe, uop);
    return sqe;
}

unsigned bc_loop_emulate_busy(struct bc_loop *loop, bool on)
{
    unsigned n = loop->busy_answers;

    loop->emulate_busy = on;
    loop->busy_answers = 0;
    return n;
}

void bc_loop_defer(struct bc_loop *loop, struct bc_task *task)
{
    assert(current_loop == loop);
    task->next = NULL;
    *loop->defer_tail = task;
    loop->defer_tail = &task->next;
}

void bc_loop_post(struct bc_loop *loop, struct bc_task *task)
{
    bool kick;

    task->next = NULL;
    g_mutex_lock(&loop->post_lock);
    *loop->post_tail = task;
    loop->post_tail = &task->next;
    kick = loop->post_armed;
    loop->post_armed = false;
    g_mutex_unlock(&loop->post_lock);
    if (kick) {
        uint64_t one = 1;
        ssize_t r = write(loop->wake_fd, &one, sizeof(one));
        (void)r; /* EAGAIN means the counter is already non-zero: a wakeup is pending */
    }
}

void bc_loop_wake(struct bc_loop *loop, struct bc_task *task)
{
    if (current_loop == loop)
        bc_loop_defer(loop, task);
    else
        bc_loop_post(loop, task);
}

void bc_loop_watch_fd(struct bc_loop *loop, struct bc_uop *uop, int fd)
{
    struct io_uring_sqe *sqe = bc_loop_sqe(loop, uop);

    io_uring_prep_poll_multishot(sqe, fd, POLLIN);
    io_uring_sqe_set_data(sqe, uop);
}

/* Run the held completions, oldest first.  A callback may hold more (they are newer) or
 * reap recursively, so take one at a time and reset the list only once it is empty. */
static void run_held(struct bc_loop *loop)
{
    if (!loop->held->len)
        return;
    while (loop->held_next < loop->held->len) {
        struct bc_cqe c = g_array_index(loop->held, struct bc_cqe, loop->held_next++);
        if (c.uop)
            c.uop->done(c.uop, c.res, c.flags);
    }
    g_array_set_size(loop->held, 0);
    loop->held_next = 0;
}

/* Run the completions that are ready; the one place callbacks are called from. */
static void bc_loop_reap(struct bc_loop *loop)
{
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    /* Collect first, then run: a callback may submit, and may run the loop again (a
     * bc_sync_wait() nested in it), which reaps recursively. */
    struct bc_cqe batch[64];

    for (;;) {
        /* Held completions are older than anything still in the ring. */
        run_held(loop);
        n = 0;
        io_uring_for_each_cqe(&loop->ring, head, cqe) {
            batch[n].uop = io_uring_cqe_get_data(cqe);
            batch[n].res = cqe->res;
            batch[n].flags = cqe->flags;
            if (++n == G_N_ELEMENTS(batch))
                break;
        }
        if (!n)
            return;
        io_uring_cq_advance(&loop->ring, n);
        for (unsigned i = 0; i < n; i++)
            if (batch[i].uop)
                batch[i].uop->done(batch[i].uop, batch[i].res, batch[i].flags);
    }
}

/* Run deferred and posted tasks; returns the number run. */
static unsigned run_tasks(struct bc_loop *loop)
{
    unsigned count = 0;
    struct bc_task *list;

    g_mutex_lock(&loop->post_lock);
    list = loop->post_head;
    loop->post_head = NULL;
    loop->post_tail = &loop->post_head;
    g_mutex_unlock(&loop->post_lock);
    if (list) {
        /* Posted tasks go behind the deferred ones, in order. */
        *loop->defer_tail = list;
        while (list->next)
            list = list->next;
        loop->defer_tail = &list->next;
    }

    /* Run only what is queued now; tasks deferred while running wait for the next round
     * so that a self-rescheduling task cannot starve the ring. */
    list = loop->defer_head;
    loop->defer_head = NULL;
    loop->defer_tail = &loop->defer_head;
    while (list) {
        struct bc_task *t = list;
        list = t->next;
        t->next = NULL;
        t->fn(t);
        count++;
    }
    return count;
}

int bc_loop_run_once(struct bc_loop *loop, bool block)
{
    int ret;

    /* Sleep only when nothing is queued, and only with post_armed set so that a
     * poster knows to kick the eventfd.  Tasks run last, so a caller checking its own
     * completion flag after we return sees everything this iteration did. */
    if (loop->defer_head || loop->stop || loop->held->len)
        block = false;
    if (block) {
        g_mutex_lock(&loop->post_lock);
        if (loop->post_head)
            block = false;
        else
            loop->post_armed = true;
        g_mutex_unlock(&loop->post_lock);
    }
    if (block) {
        ret = io_uring_submit_and_wait(&loop->ring, 1);
        g_mutex_lock(&loop->post_lock);
        loop->post_armed = false;
        g_mutex_unlock(&loop->post_lock);
    } else {
        ret = io_uring_submit(&loop->ring);
    }
    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME)
        return ret;
    bc_loop_reap(loop);
    run_tasks(loop);
    return 0;
}

int bc_loop_run(struct bc_loop *loop)
{
    while (!loop->stop) {
        int ret = bc_loop_run_once(loop, true);
        if (ret < 0)
            return ret;
    }
    /* Let the callbacks of what is already queued run. */
    run_tasks(loop);
    return 0;
}

void bc_loop_stop(struct bc_loop *loop)
{
    uint64_t one = 1;
    ssize_t r;

    loop->stop = 1;
    r = write(loop->wake_fd, &one, sizeof(one));
    (void)r;
}

bool bc_loop_stopping(const struct bc_loop *loop)
{
    return loop->stop;
}
