/* SPDX-License-Identifier: MIT */
/* The event loop: deferred tasks run in order on the loop's thread, posts from other threads
 * wake a blocked loop, stop works from anywhere, fd watches and raw SQEs complete, and a full
 * SQ never runs a callback inside the submission that needed room. */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <liburing.h>

#include "t/unit/test-util.h"

struct rec_task {
    struct bc_task task;
    struct bc_loop *loop;
    int id;
    int *log;
    int *nlog;
    struct rec_task *chain;     /* deferred from inside this task's fn */
    GThread *ran_on;
};

static void rec_fn(struct bc_task *t)
{
    struct rec_task *rt = bc_container_of(t, struct rec_task, task);
    rt->log[(*rt->nlog)++] = rt->id;
    rt->ran_on = g_thread_self();
    if (rt->chain)
        bc_loop_defer(rt->loop, &rt->chain->task);
}

static struct bc_loop *new_loop(void)
{
    g_autoptr(GError) err = NULL;
    struct bc_loop *loop = bc_loop_new(0, 64, &err);
    g_assert_no_error(err);
    g_assert_nonnull(loop);
    return loop;
}

static void run_iterations(struct bc_loop *loop, int n)
{
    for (int i = 0; i < n; i++)
        g_assert_cmpint(bc_loop_run_once(loop, false), ==, 0);
}

/* ---- a rescuer: keeps a test that would sleep forever from hanging --------------------
 * If the loop under test goes to sleep when it should not, the rescuer posts no-op tasks
 * every so often so that the test can go on, and the test then fails with a message
 * instead of tripping the watchdog. */
struct rescuer {
    struct bc_loop *loop;
    GMutex lock;
    GCond cond;
    bool done;
    int rescues;
    unsigned ms;
    GThread *th;
};

static void rescue_fn(struct bc_task *t)
{
    g_free(t);
}

static gpointer rescuer_thread(gpointer p)
{
    struct rescuer *rs = p;
    g_mutex_lock(&rs->lock);
    while (!rs->done) {
        gint64 until = g_get_monotonic_time() + rs->ms * G_TIME_SPAN_MILLISECOND;
        while (!rs->done && g_cond_wait_until(&rs->cond, &rs->lock, until))
            ;
        if (rs->done)
            break;
        rs->rescues++;
        struct bc_task *t = g_new0(struct bc_task, 1);
        t->fn = rescue_fn;
        bc_loop_post(rs->loop, t);
    }
    g_mutex_unlock(&rs->lock);
    return NULL;
}

static struct rescuer *rescuer_start(struct bc_loop *loop, unsigned ms)
{
    struct rescuer *rs = g_new0(struct rescuer, 1);
    rs->loop = loop;
    rs->ms = ms;
    g_mutex_init(&rs->lock);
    g_cond_init(&rs->cond);
    rs->th = g_thread_new("rescuer", rescuer_thread, rs);
    return rs;
}

/* Stop the rescuer; fail the test if it had to step in. */
static void rescuer_finish(struct rescuer *rs, const char *what)
{
    g_mutex_lock(&rs->lock);
    rs->done = true;
    g_cond_signal(&rs->cond);
    g_mutex_unlock(&rs->lock);
    g_thread_join(rs->th);
    for (int i = 0; i < 3; i++)     /* run (free) any rescue tasks still queued */
        g_assert_cmpint(bc_loop_run_once(rs->loop, false), ==, 0);
    int rescues = rs->rescues;
    g_mutex_clear(&rs->lock);
    g_cond_clear(&rs->cond);
    g_free(rs);
    if (rescues)
        g_test_fail_printf("%s: bc_loop_run_once(loop, true) slept although the iteration "
                           "had done work (it ran a task or reaped a completion); the test "
                           "only finished because another thread posted %d extra task(s)",
                           what, rescues);
}

/* The basic "wait for my callback" pattern: a task that completes the wait is deferred;
 * one blocking iteration runs it and returns (there is nothing else to wait for). */
struct flag_task {
    struct bc_task task;
    int ran;
};

static void flag_fn(struct bc_task *t)
{
    bc_container_of(t, struct flag_task, task)->ran++;
}

static void test_run_once_after_defer(void)
{
    struct bc_loop *loop = new_loop();
    struct flag_task ft = { .task.fn = flag_fn };
    run_iterations(loop, 2);    /* settle whatever the loop sets up for itself */
    struct rescuer *rs = rescuer_start(loop, 1000);
    bc_loop_defer(loop, &ft.task);
    while (!ft.ran)
        g_assert_cmpint(bc_loop_run_once(loop, true), ==, 0);
    rescuer_finish(rs, "run_once(block) after bc_loop_defer");
    g_assert_cmpint(ft.ran, ==, 1);
    bc_loop_free(loop);
}

static void test_new_current(void)
{
    g_assert_null(bc_loop_current());
    g_autoptr(GError) err = NULL;
    struct bc_loop *loop = bc_loop_new(7, 32, &err);
    g_assert_no_error(err);
    g_assert_true(bc_loop_current() == loop);
    g_assert_cmpuint(bc_loop_index(loop), ==, 7);
    g_assert_nonnull(bc_loop_ring(loop));
    g_assert_false(bc_loop_stopping(loop));
    bc_loop_free(loop);
    g_assert_null(bc_loop_current());
}

/* Tasks deferred in order run in that order; a task deferred from a task runs after all
 * those queued before it. */
static void test_defer_order(void)
{
    struct bc_loop *loop = new_loop();
    int log[16], nlog = 0;
    struct rec_task t[8];

    memset(t, 0, sizeof t);
    for (int i = 0; i < 8; i++) {
        t[i] = (struct rec_task){ .task.fn = rec_fn, .loop = loop, .id = i, .log = log,
                                  .nlog = &nlog };
    }
    /* 0..4 queued now; 1 chains 6, 3 chains 7; 5 queued after 6 would be (by 1). */
    t[1].chain = &t[6];
    t[3].chain = &t[7];
    for (int i = 0; i < 6; i++)
        bc_loop_defer(loop, &t[i].task);
    g_assert_cmpint(nlog, ==, 0);   /* deferral never runs the task inside the call */
    run_iterations(loop, 4);
    int want[] = { 0, 1, 2, 3, 4, 5, 6, 7 };
    g_assert_cmpint(nlog, ==, 8);
    g_assert_cmpmem(log, sizeof want, want, sizeof want);
    for (int i = 0; i < 8; i++)
        g_assert_true(t[i].ran_on == g_thread_self());
    bc_loop_free(loop);
}

/* A task that defers itself again runs once per iteration, not forever in one iteration. */
struct self_task {
    struct bc_task task;
    struct bc_loop *loop;
    int runs;
};

static void self_fn(struct bc_task *t)
{
    struct self_task *st = bc_container_of(t, struct self_task, task);
    if (++st->runs < 1000)
        bc_loop_defer(st->loop, &st->task);
}

static void test_defer_self(void)
{
    struct bc_loop *loop = new_loop();
    struct self_task st = { .task.fn = self_fn, .loop = loop };
    bc_loop_defer(loop, &st.task);
    run_iterations(loop, 3);
    /* A loop that ran re-deferred tasks in the same iteration would starve the ring. */
    g_assert_cmpint(st.runs, >=, 1);
    g_assert_cmpint(st.runs, <=, 3);
    while (st.runs < 1000)
        g_assert_cmpint(bc_loop_run_once(loop, false), ==, 0);
    bc_loop_free(loop);
}

/* ---- cross-thread posts -------------------------------------------------------------- */

struct poster {
    struct bc_loop *loop;
    struct bc_task *tasks;
    int n;
    unsigned delay_us;
};

static gpointer poster_thread(gpointer p)
{
    struct poster *ps = p;
    if (ps->delay_us)
        g_usleep(ps->delay_us);
    for (int i = 0; i < ps->n; i++)
        bc_loop_post(ps->loop, &ps->tasks[i]);
    return NULL;
}

struct count_task {
    struct bc_task task;
    gint *count;
    GThread *want_thread;
    gint *wrong_thread;
    struct bc_loop *stop_loop;
};

static void count_fn(struct bc_task *t)
{
    struct count_task *ct = bc_container_of(t, struct count_task, task);
    (*ct->count)++;
    if (g_thread_self() != ct->want_thread)
        (*ct->wrong_thread)++;
    if (ct->stop_loop)
        bc_loop_stop(ct->stop_loop);
}

/* bc_loop_run_once(block) with nothing to do sleeps; a post from another thread wakes it. */
static void test_post_wakes_blocked(void)
{
    struct bc_loop *loop = new_loop();
    gint count = 0, wrong = 0;
    struct count_task ct = { .task.fn = count_fn, .count = &count,
                             .want_thread = g_thread_self(), .wrong_thread = &wrong };
    struct poster ps = { .loop = loop, .tasks = &ct.task, .n = 1, .delay_us = 100000 };

    gint64 t0 = g_get_monotonic_time();
    GThread *th = g_thread_new("poster", poster_thread, &ps);
    struct rescuer *rs = rescuer_start(loop, 1000);
    while (count == 0)
        g_assert_cmpint(bc_loop_run_once(loop, true), ==, 0);
    rescuer_finish(rs, "a post to a blocked loop");
    gint64 dt = g_get_monotonic_time() - t0;
    g_thread_join(th);
    g_assert_cmpint(count, ==, 1);
    g_assert_cmpint(wrong, ==, 0);
    /* It did wait for the post (so it really blocked) and woke promptly. */
    g_assert_cmpint(dt, >=, 90000);
    g_assert_cmpint(dt, <, 5 * G_USEC_PER_SEC);
    bc_loop_free(loop);
}

/* Many threads posting many tasks at once: each runs exactly once, on the loop thread. */
struct ptr_poster {
    struct bc_loop *loop;
    struct count_task *tasks;
    int n;
};

static gpointer ptr_poster_thread(gpointer p)
{
    struct ptr_poster *pp = p;
    for (int i = 0; i < pp->n; i++)
        bc_loop_post(pp->loop, &pp->tasks[i].task);
    return NULL;
}

static void test_post_many(void)
{
    enum { THREADS = 4, PER = 20000 };
    struct bc_loop *loop = new_loop();
    gint count = 0, wrong = 0;
    struct count_task *ct = g_new0(struct count_task, THREADS * PER);
    struct ptr_poster pp[THREADS];
    GThread *th[THREADS];

    for (int i = 0; i < THREADS * PER; i++)
        ct[i] = (struct count_task){ .task.fn = count_fn, .count = &count,
                                     .want_thread = g_thread_self(), .wrong_thread = &wrong };
    for (int t = 0; t < THREADS; t++) {
        pp[t] = (struct ptr_poster){ .loop = loop, .tasks = ct + t * PER, .n = PER };
        th[t] = g_thread_new("poster", ptr_poster_thread, &pp[t]);
    }
    /* count is only touched on this thread (the tasks run here). */
    struct rescuer *rs = rescuer_start(loop, 1000);
    while (count < THREADS * PER)
        g_assert_cmpint(bc_loop_run_once(loop, true), ==, 0);
    rescuer_finish(rs, "posts from 4 threads");
    for (int t = 0; t < THREADS; t++)
        g_thread_join(th[t]);
    run_iterations(loop, 3);    /* nothing may run twice */
    g_assert_cmpint(count, ==, THREADS * PER);
    g_assert_cmpint(wrong, ==, 0);
    g_free(ct);
    bc_loop_free(loop);
}

/* bc_loop_run() returns after a posted task calls bc_loop_stop(). */
static void test_run_stop_from_task(void)
{
    struct bc_loop *loop = new_loop();
    gint count = 0, wrong = 0;
    struct count_task ct = { .task.fn = count_fn, .count = &count,
                             .want_thread = g_thread_self(), .wrong_thread = &wrong,
                             .stop_loop = loop };
    struct poster ps = { .loop = loop, .tasks = &ct.task, .n = 1, .delay_us = 50000 };
    GThread *th = g_thread_new("poster", poster_thread, &ps);
    g_assert_cmpint(bc_loop_run(loop), ==, 0);
    g_thread_join(th);
    g_assert_cmpint(count, ==, 1);
    g_assert_true(bc_loop_stopping(loop));
    bc_loop_free(loop);
}

struct stopper {
    struct bc_loop *loop;
    unsigned delay_us;
};

static gpointer stopper_thread(gpointer p)
{
    struct stopper *s = p;
    g_usleep(s->delay_us);
    bc_loop_stop(s->loop);
    return NULL;
}

/* bc_loop_stop() from another thread makes a blocked bc_loop_run() return. */
static void test_run_stop_from_thread(void)
{
    struct bc_loop *loop = new_loop();
    struct stopper s = { .loop = loop, .delay_us = 100000 };
    gint64 t0 = g_get_monotonic_time();
    GThread *th = g_thread_new("stopper", stopper_thread, &s);
    g_assert_cmpint(bc_loop_run(loop), ==, 0);
    gint64 dt = g_get_monotonic_time() - t0;
    g_thread_join(th);
    g_assert_true(bc_loop_stopping(loop));
    g_assert_cmpint(dt, >=, 90000);
    bc_loop_free(loop);
}

/* A stop that comes before bc_loop_run() (e.g. a signal during setup) is not lost. */
static void test_stop_before_run(void)
{
    struct bc_loop *loop = new_loop();
    bc_loop_stop(loop);
    g_assert_true(bc_loop_stopping(loop));
    g_assert_cmpint(bc_loop_run(loop), ==, 0);
    bc_loop_free(loop);
}

/* bc_loop_wake: on the loop thread it defers, from elsewhere it posts; both run on loop. */
static gpointer waker_thread(gpointer p)
{
    struct poster *ps = p;
    for (int i = 0; i < ps->n; i++)
        bc_loop_wake(ps->loop, &ps->tasks[i]);
    return NULL;
}

static void test_wake(void)
{
    struct bc_loop *loop = new_loop();
    gint count = 0, wrong = 0;
    struct count_task a = { .task.fn = count_fn, .count = &count,
                            .want_thread = g_thread_self(), .wrong_thread = &wrong };
    struct count_task b = a;

    bc_loop_wake(loop, &a.task);
    g_assert_cmpint(count, ==, 0);
    run_iterations(loop, 2);
    g_assert_cmpint(count, ==, 1);

    struct poster ps = { .loop = loop, .tasks = &b.task, .n = 1 };
    GThread *th = g_thread_new("waker", waker_thread, &ps);
    struct rescuer *rs = rescuer_start(loop, 1000);
    while (count < 2)
        g_assert_cmpint(bc_loop_run_once(loop, true), ==, 0);
    rescuer_finish(rs, "bc_loop_wake from another thread");
    g_thread_join(th);
    g_assert_cmpint(wrong, ==, 0);
    bc_loop_free(loop);
}

/* ---- ring integration ---------------------------------------------------------------- */

struct nop_uop {
    struct bc_uop uop;
    int res;
    int calls;
};

static void nop_done(struct bc_uop *u, int res, unsigned flags)
{
    struct nop_uop *n = bc_container_of(u, struct nop_uop, uop);
    n->res = res;
    n->calls++;
}

/* More SQEs than the ring has entries: bc_loop_sqe submits to make room; all complete. */
static void test_sqe_nop(void)
{
    enum { N = 200 };
    struct bc_loop *loop = new_loop();  /* 64 entries */
    struct nop_uop *u = g_new0(struct nop_uop, N);
    for (int i = 0; i < N; i++) {
        u[i].uop.done = nop_done;
        u[i].res = 1;
        struct io_uring_sqe *sqe = bc_loop_sqe(loop, &u[i].uop);
        g_assert_nonnull(sqe);
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data(sqe, &u[i].uop);
    }
    for (int iter = 0; iter < 1000; iter++) {
        int done = 0;
        for (int i = 0; i < N; i++)
            done += u[i].calls;
        if (done == N)
            break;
        g_assert_cmpint(bc_loop_run_once(loop, true), ==, 0);
    }
    for (int i = 0; i < N; i++) {
        g_assert_cmpint(u[i].calls, ==, 1);
        g_assert_cmpint(u[i].res, ==, 0);
    }
    g_free(u);
    bc_loop_free(loop);
}

/* ---- a full SQ: bc_loop_sqe frees room without running callbacks ----------------------
 * Real operations -- reads through the file driver's submit(), eventfd and pipe reads,
 * expired timeouts -- many more than the SQ (64) and the CQ ring (128) hold, with no loop
 * iteration in between.  A callback that runs while a submission is under way breaks
 * driver.h's promise; none may run before the loop does, and then each exactly once. */
enum { FULL_N = 512, FULL_BLK = 4096 };

struct full_ctx {
    int in_submit;      /* > 0 while a submission (driver submit or raw SQE) is under way */
    int in_callback;    /* callbacks seen while in_submit */
    unsigned pending;
    int pipe_next;      /* the pipe read whose callback should run next */
    int pipe_disorder;
};

struct full_op {
    struct bc_uop uop;  /* raw SQEs */
    struct bc_dreq dreq;/* file driver reads */
    struct full_ctx *ctx;
    int kind;
    int seq;            /* pipe reads: order of submission */
    int res;
    int calls;
    uint64_t val;       /* eventfd and pipe reads land here */
    struct __kernel_timespec ts;
    struct iovec iov;
};

static void full_note(struct full_op *op, int res)
{
    struct full_ctx *c = op->ctx;
    if (c->in_submit)
        c->in_callback++;
    op->res = res;
    if (op->calls++ == 0)
        c->pending--;
    if (op->kind == 2) {
        if (op->seq != c->pipe_next)
            c->pipe_disorder++;
        c->pipe_next = op->seq + 1;
    }
}

static void full_uop_done(struct bc_uop *u, int res, unsigned flags)
{
    full_note(bc_container_of(u, struct full_op, uop), res);
}

static void full_dreq_done(struct bc_dreq *d, int res)
{
    full_note(bc_container_of(d, struct full_op, dreq), res);
}

static void sqe_full_run(bool emulate_busy)
{
    struct bc_loop *loop = new_loop();  /* 64 SQ entries, 128 CQ entries */
    struct full_ctx ctx = { 0 };
    struct full_op *ops = g_new0(struct full_op, FULL_N);
    uint8_t *data = g_malloc(FULL_BLK * FULL_N / 4), *got = g_malloc0(FULL_BLK * FULL_N / 4);
    g_autoptr(GError) err = NULL;
    g_autofree char *path = NULL;
    int pfd[2];

    /* The file driver's source: a file with a pattern, read FULL_BLK at a time. */
    int tfd = g_file_open_tmp("bc-loop-XXXXXX", &path, &err);
    g_assert_no_error(err);
    for (size_t i = 0; i < FULL_BLK * FULL_N / 4; i++)
        data[i] = (uint8_t)(i * 7 + i / FULL_BLK);
    g_assert_true(write(tfd, data, FULL_BLK * FULL_N / 4) == FULL_BLK * FULL_N / 4);
    close(tfd);
    struct bc_open_args args = { .what = "test", .path = path, .read_only = true };
    struct bc_props props = { 0 };
    void *file = bc_drv_file.open(&args, &props, &err);
    g_assert_no_error(err);
    g_assert_nonnull(file);

    int efd = eventfd(FULL_N, EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC);
    g_assert_cmpint(efd, >=, 0);
    g_assert_cmpint(pipe(pfd), ==, 0);
    for (uint64_t k = 0; k < FULL_N / 4; k++)
        g_assert_true(write(pfd[1], &k, sizeof k) == sizeof k);

    bc_loop_emulate_busy(loop, emulate_busy);
    ctx.pending = FULL_N;
    for (int i = 0; i < FULL_N; i++) {
        struct full_op *op = &ops[i];
        struct io_uring_sqe *sqe;

        *op = (struct full_op){ .ctx = &ctx, .kind = i % 4, .seq = i / 4, .res = 1 };
        op->uop.done = full_uop_done;
        ctx.in_submit++;
        switch (op->kind) {
        case 0:         /* a driver request: the file driver's own submit path */
            op->iov = (struct iovec){ got + (size_t)(i / 4) * FULL_BLK, FULL_BLK };
            op->dreq = (struct bc_dreq){ .loop = loop, .op = BC_OP_READ,
                                         .offset = (uint64_t)(i / 4) * FULL_BLK,
                                         .len = FULL_BLK, .iov = &op->iov, .iovcnt = 1,
                                         .done = full_dreq_done };
            bc_drv_file.submit(file, &op->dreq);
            break;
        case 1:         /* one unit off a semaphore eventfd */
            sqe = bc_loop_sqe(loop, &op->uop);
            io_uring_prep_read(sqe, efd, &op->val, sizeof op->val, 0);
            break;
        case 2:         /* the next 8 bytes of the pipe */
            sqe = bc_loop_sqe(loop, &op->uop);
            io_uring_prep_read(sqe, pfd[0], &op->val, sizeof op->val, 0);
            break;
        default:        /* a timeout that has already expired */
            sqe = bc_loop_sqe(loop, &op->uop);
            io_uring_prep_timeout(sqe, &op->ts, 0, 0);
            break;
        }
        ctx.in_submit--;
    }
    unsigned busy = bc_loop_emulate_busy(loop, false);
    g_assert_cmpint(ctx.in_callback, ==, 0);
    g_assert_cmpuint(ctx.pending, ==, FULL_N);  /* nothing completes before the loop runs */
    if (emulate_busy)
        g_assert_cmpuint(busy, >, 0);           /* the -EBUSY path was taken */

    tu_run_until_done(loop, &ctx.pending);
    g_assert_cmpint(ctx.in_callback, ==, 0);
    for (int i = 0; i < FULL_N; i++) {
        struct full_op *op = &ops[i];
        g_assert_cmpint(op->calls, ==, 1);
        switch (op->kind) {
        case 0:
            g_assert_cmpint(op->res, ==, 0);
            break;
        case 1:
            g_assert_cmpint(op->res, ==, sizeof op->val);
            g_assert_cmpuint(op->val, ==, 1);
            break;
        case 2:
            g_assert_cmpint(op->res, ==, sizeof op->val);
            g_assert_cmpuint(op->val, ==, (uint64_t)op->seq);
            break;
        default:
            g_assert_cmpint(op->res, ==, -ETIME);
            break;
        }
    }
    g_assert_cmpmem(got, FULL_BLK * FULL_N / 4, data, FULL_BLK * FULL_N / 4);
    /* Held completions run before the newer ones left in the ring. */
    g_assert_cmpint(ctx.pipe_disorder, ==, 0);

    bc_drv_file.close(file);
    unlink(path);
    close(efd);
    close(pfd[0]);
    close(pfd[1]);
    g_free(data);
    g_free(got);
    g_free(ops);
    tu_loop_free(loop);
}

/* Today's kernels take a full SQ even when the CQ ring overflows (IORING_FEAT_NODROP). */
static void test_sqe_full(void)
{
    sqe_full_run(false);
}

/* Kernels that answer -EBUSY while the CQ overflow list cannot be flushed. */
static void test_sqe_full_busy(void)
{
    sqe_full_run(true);
}

struct fd_watch {
    struct bc_uop uop;
    int fd;
    int calls;
    int revents;
};

static void watch_done(struct bc_uop *u, int res, unsigned flags)
{
    struct fd_watch *w = bc_container_of(u, struct fd_watch, uop);
    w->revents = res;
    uint64_t v;
    if (res > 0 && (res & POLLIN)) {
        ssize_t n = read(w->fd, &v, sizeof v);
        g_assert_cmpint(n, ==, sizeof v);
    }
    __atomic_add_fetch(&w->calls, 1, __ATOMIC_ACQ_REL);
}

struct efd_writer {
    int fd;
    int times;
    int *calls;         /* the watch's: each write waits until the last one was seen */
};

static gpointer efd_writer_thread(gpointer p)
{
    struct efd_writer *e = p;
    for (int i = 0; i < e->times; i++) {
        g_usleep(20000);
        uint64_t one = 1;
        ssize_t n = write(e->fd, &one, sizeof one);
        g_assert_cmpint(n, ==, sizeof one);
        /* Two writes the loop has not read yet make one wakeup, not two. */
        while (__atomic_load_n(e->calls, __ATOMIC_ACQUIRE) <= i)
            g_usleep(1000);
    }
    return NULL;
}

/* A watched eventfd written from another thread wakes the loop, repeatedly (multishot). */
static void test_watch_fd(void)
{
    struct bc_loop *loop = new_loop();
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    g_assert_cmpint(fd, >=, 0);
    struct fd_watch w = { .uop.done = watch_done, .fd = fd };
    bc_loop_watch_fd(loop, &w.uop, fd);
    struct efd_writer e = { .fd = fd, .times = 3, .calls = &w.calls };
    GThread *th = g_thread_new("efd", efd_writer_thread, &e);
    struct rescuer *rs = rescuer_start(loop, 1000);
    while (__atomic_load_n(&w.calls, __ATOMIC_ACQUIRE) < 3)
        g_assert_cmpint(bc_loop_run_once(loop, true), ==, 0);
    rescuer_finish(rs, "eventfd watch");
    g_thread_join(th);
    g_assert_cmpint(w.calls, ==, 3);
    g_assert_true(w.revents & POLLIN);
    close(fd);
    /* The multishot poll may complete once more (cancelled); let it, then free. */
    run_iterations(loop, 2);
    bc_loop_free(loop);
}

/* A loop per thread: each thread's bc_loop_current() is its own. */
static gpointer own_loop_thread(gpointer p)
{
    struct bc_loop **out = p;
    g_assert_null(bc_loop_current());
    struct bc_loop *loop = new_loop();
    g_assert_true(bc_loop_current() == loop);
    *out = loop;
    bc_loop_free(loop);
    return NULL;
}

static void test_loop_per_thread(void)
{
    struct bc_loop *mine = new_loop();
    struct bc_loop *theirs = NULL;
    GThread *th = g_thread_new("own", own_loop_thread, &theirs);
    g_thread_join(th);
    g_assert_nonnull(theirs);
    g_assert_true(theirs != mine);
    g_assert_true(bc_loop_current() == mine);
    bc_loop_free(mine);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv, 60);
    tu_add_isolated("/loop/new-current", test_new_current);
    tu_add_isolated("/loop/defer-order", test_defer_order);
    tu_add_isolated("/loop/run-once-after-defer", test_run_once_after_defer);
    tu_add_isolated("/loop/defer-self", test_defer_self);
    tu_add_isolated("/loop/post-wakes-blocked", test_post_wakes_blocked);
    tu_add_isolated("/loop/post-many-threads", test_post_many);
    tu_add_isolated("/loop/run-stop-from-task", test_run_stop_from_task);
    tu_add_isolated("/loop/run-stop-from-thread", test_run_stop_from_thread);
    tu_add_isolated("/loop/stop-before-run", test_stop_before_run);
    tu_add_isolated("/loop/wake", test_wake);
    tu_add_isolated("/loop/sqe-nop", test_sqe_nop);
    tu_add_isolated("/loop/sqe-full", test_sqe_full);
    tu_add_isolated("/loop/sqe-full-busy", test_sqe_full_busy);
    tu_add_isolated("/loop/watch-fd", test_watch_fd);
    tu_add_isolated("/loop/per-thread", test_loop_per_thread);
    return g_test_run();
}
