/* SPDX-License-Identifier: MIT */
/* Helpers shared by the blockcore unit tests; see test-util.h. */
#include "t/unit/test-util.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <liburing.h>

/* ---- setup ------------------------------------------------------------------------- */

/* Not "Bail out!", which would stop prove's whole run: this program fails, by its exit
 * status and the missing results, and the other test files still run. */
static void tu_watchdog(int sig)
{
    static const char msg[] = "# watchdog: the test hung (a callback never came?)\n";
    ssize_t n = write(STDOUT_FILENO, msg, sizeof msg - 1);
    (void)n;
    _exit(1);
}

/* How the subprocess running an isolated case tells the parent that the case skipped
 * (g_test_trap_has_passed() says only whether it passed): it writes "skip:" and the reason
 * to the file this variable names, which the parent reads after the case. */
#define TU_SKIP_ENV "LAYERFS_TU_SKIP_FILE"
static char *tu_skip_dir;       /* the parent's private (0700) directory for it */
static char *tu_skip_file;      /* the parent's; set up by tu_test_init() */

static void tu_skip_cleanup(void)
{
    unlink(tu_skip_file);
    rmdir(tu_skip_dir);
}

/* In the subprocess: note a skip from the case's TAP result line "ok 1 /path # SKIP why". */
static void tu_child_note_skip(const char *line)
{
    const char *skip = strstr(line, " # SKIP");
    const char *file = g_getenv(TU_SKIP_ENV);

    if (!g_str_has_prefix(line, "ok ") || !skip || !file)
        return;
    g_autofree char *why = g_strconcat("skip:", skip + strlen(" # SKIP"), NULL);
    if (!g_file_set_contents(file, why, -1, NULL))
        g_printerr("# cannot write %s: the skipped case will show as passed\n", file);
}

/* In the subprocess running one isolated case (GLib runs it with -q, which we turn into
 * --tap): pass on its TAP comments, but neither its plan and result lines (the parent
 * prints the case's own) nor GLib's bookkeeping comments.  GLib may print a line in
 * pieces (the result, then its "# SKIP"): whole lines are handled, each as soon as it is
 * complete, and flushed at once, since a failed assertion aborts. */
static void tu_child_print(const gchar *s)
{
    static const char *const drop[] = { "# Start of ", "# End of ", "# random seed", NULL };
    static GMutex lock;         /* protects line: a case's threads print too */
    static GString *line;       /* the unfinished line */
    const char *nl;

    g_mutex_lock(&lock);
    if (!line)
        line = g_string_new(NULL);
    while ((nl = strchr(s, '\n')) != NULL) {
        g_string_append_len(line, s, nl - s);
        s = nl + 1;
        bool pass = g_str_has_prefix(line->str, "# ");
        for (int k = 0; pass && drop[k] != NULL; k++)
            pass = !g_str_has_prefix(line->str, drop[k]);
        if (pass)
            printf("%s\n", line->str);
        tu_child_note_skip(line->str);
        g_string_truncate(line, 0);
    }
    g_string_append(line, s);
    fflush(stdout);
    g_mutex_unlock(&lock);
}

/* In the parent: GLib's "Bail out!" for a failed assertion outside any case (in main, say)
 * would stop prove's whole run; make it a comment, so that only this program fails (by its
 * exit status and the missing results).  GLib prints it with one g_print(). */
static void tu_parent_print(const gchar *s)
{
    if (g_str_has_prefix(s, "Bail out!"))
        fputs("# ", stdout);
    fputs(s, stdout);
    fflush(stdout);
}

void tu_test_init(int *argc, char ***argv)
{
    bool child = false;

    for (int i = 1; i < *argc; i++)
        child |= strcmp((*argv)[i], "--GTestSubprocess") == 0;
    if (child) {
        /* --tap last: GLib turns TAP off when it meets --GTestSubprocess. */
        char **av = g_new0(char *, *argc + 2);
        int n = 0;
        for (int i = 0; i < *argc; i++)
            if (strcmp((*argv)[i], "-q") != 0)
                av[n++] = (*argv)[i];
        av[n++] = (char *)"--tap";
        *argc = n;
        *argv = av;     /* for the life of the process */
        g_set_print_handler(tu_child_print);
        /* A parent ended by its watchdog takes the hung case with it: else the case would
         * hold prove's pipe open until its own watchdog fires. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    } else {
        g_set_print_handler(tu_parent_print);
        /* Before any thread: the subprocesses inherit the environment. */
        tu_skip_dir = g_dir_make_tmp("layerfs-tu-XXXXXX", NULL);
        if (tu_skip_dir == NULL)
            g_error("cannot make a directory in %s", g_get_tmp_dir());
        tu_skip_file = g_build_filename(tu_skip_dir, "skip", NULL);
        atexit(tu_skip_cleanup);
        g_setenv(TU_SKIP_ENV, tu_skip_file, TRUE);
    }
    g_test_init(argc, argv, NULL);
}

/* The parent's side of an isolated case: run it again in a subprocess, pass on how it went. */
static void tu_run_isolated(void)
{
    g_autofree char *note = NULL;

    unlink(tu_skip_file);
    g_test_trap_subprocess(NULL, 0,
                           G_TEST_SUBPROCESS_INHERIT_STDOUT | G_TEST_SUBPROCESS_INHERIT_STDERR);
    if (g_file_get_contents(tu_skip_file, &note, NULL, NULL))
        unlink(tu_skip_file);
    if (!g_test_trap_has_passed()) {
        g_test_message("the case failed in its own process (its messages are above)");
        g_test_fail();
    } else if (note && g_str_has_prefix(note, "skip:")) {
        char *why = g_strstrip(note + strlen("skip:"));
        g_test_skip(*why ? why : NULL);
    }
}

bool tu_isolate(const char *path)
{
    if (g_test_subprocess())
        return true;
    g_assert_nonnull(tu_skip_file);     /* tu_test_init() came first */
    g_test_add_func(path, tu_run_isolated);
    return false;
}

void tu_add_isolated(const char *path, GTestFunc fn)
{
    if (tu_isolate(path))
        g_test_add_func(path, fn);
}

void tu_add_isolated_data(const char *path, gconstpointer data, GTestDataFunc fn)
{
    if (tu_isolate(path))
        g_test_add_data_func(path, data, fn);
}

void tu_init(int *argc, char ***argv, unsigned watchdog_s)
{
    tu_test_init(argc, argv);
    /* Drivers may log a warning (e.g. the O_DIRECT fallback); that is not a failure. */
    g_log_set_always_fatal(G_LOG_FATAL_MASK | G_LOG_LEVEL_CRITICAL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGALRM, tu_watchdog);
    alarm(watchdog_s);
}

guint32 tu_seed(guint32 fixed_seed)
{
    const char *env = g_getenv("LAYERFS_TEST_SEED");
    guint32 seed = fixed_seed;

    if (env && *env)
        seed = (guint32)g_ascii_strtoull(env, NULL, 0);
    g_test_message("seed %" G_GUINT32_FORMAT " (set LAYERFS_TEST_SEED to override)", seed);
    return seed;
}

/* ---- devices ----------------------------------------------------------------------- */

static struct bc_dev *open_va(const struct bc_driver *drv, const char *path, bool read_only,
                              bool direct, GError **errp, va_list ap)
{
    g_autoptr(GHashTable) opts = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    const char *k;

    while ((k = va_arg(ap, const char *)) != NULL) {
        const char *v = va_arg(ap, const char *);
        g_hash_table_insert(opts, g_strdup(k), g_strdup(v));
    }
    struct bc_open_args args = {
        .what = "test device",
        .path = path,
        .read_only = read_only,
        .direct = direct,
        .opts = opts,
    };
    return bc_dev_open(drv, &args, errp);
}

struct bc_dev *tu_try_open(const struct bc_driver *drv, const char *path, bool read_only,
                           bool direct, GError **errp, ...)
{
    va_list ap;
    va_start(ap, errp);
    struct bc_dev *dev = open_va(drv, path, read_only, direct, errp, ap);
    va_end(ap);
    return dev;
}

struct bc_dev *tu_open(const struct bc_driver *drv, const char *path, bool read_only,
                       bool direct, ...)
{
    g_autoptr(GError) err = NULL;
    va_list ap;
    va_start(ap, direct);
    struct bc_dev *dev = open_va(drv, path, read_only, direct, &err, ap);
    va_end(ap);
    if (!dev)
        g_error("opening %s device %s: %s", drv->name, path ? path : "(no path)",
                err ? err->message : "no error set");
    return dev;
}

static struct bc_dev *open_memlike(const struct bc_driver *drv, uint64_t size, uint32_t align,
                                   uint32_t mem_align, uint32_t max_transfer)
{
    g_autofree char *s = g_strdup_printf("%" PRIu64, size);
    g_autofree char *a = g_strdup_printf("%" PRIu32, align);
    g_autofree char *ma = g_strdup_printf("%" PRIu32, mem_align ? mem_align : align);
    g_autofree char *mt = max_transfer ? g_strdup_printf("%" PRIu32, max_transfer) : NULL;

    struct bc_dev *dev;
    if (mt)
        dev = tu_open(drv, NULL, false, false, "size", s, "align", a, "mem-align", ma,
                      "max-transfer", mt, NULL);
    else
        dev = tu_open(drv, NULL, false, false, "size", s, "align", a, "mem-align", ma, NULL);
    const struct bc_props *p = bc_dev_props(dev);
    g_assert_cmpuint(p->size, ==, size);
    g_assert_cmpuint(p->req_align, ==, align);
    if (mem_align)
        g_assert_cmpuint(p->mem_align, ==, mem_align);
    if (max_transfer)
        g_assert_cmpuint(p->max_transfer, ==, max_transfer);
    return dev;
}

struct bc_dev *tu_open_ram(uint64_t size, uint32_t align, uint32_t mem_align,
                           uint32_t max_transfer)
{
    return open_memlike(&bc_drv_ram, size, align, mem_align, max_transfer);
}

struct bc_dev *tu_open_fault(uint64_t size, uint32_t align, uint32_t mem_align,
                             uint32_t max_transfer)
{
    return open_memlike(&bc_drv_fault, size, align, mem_align, max_transfer);
}

/* ---- synchronous wrappers ---------------------------------------------------------- */

void tu_io_cb(void *opaque, int res)
{
    struct tu_io *io = opaque;

    g_assert_false(io->done);   /* exactly once */
    io->done = true;
    io->res = res;
    g_assert_cmpuint(*io->pending, >, 0);
    (*io->pending)--;
}

void tu_io_start(struct tu_io *io, unsigned *pending)
{
    io->res = 1;
    io->done = false;
    io->pending = pending;
    (*pending)++;
}

/* The per-thread safety tick: an IORING_OP_TIMEOUT of a few ms. */
struct tu_tick {
    struct bc_uop uop;
    struct bc_loop *loop;   /* armed on this loop, NULL when not armed */
    struct __kernel_timespec ts;
};
static __thread struct tu_tick tu_tick;

static void tu_tick_done(struct bc_uop *uop, int res, unsigned flags)
{
    tu_tick.loop = NULL;
}

static void tu_tick_arm(struct bc_loop *loop)
{
    if (tu_tick.loop)
        return;
    tu_tick.uop.done = tu_tick_done;
    tu_tick.ts = (struct __kernel_timespec){ .tv_sec = 0, .tv_nsec = 5 * 1000 * 1000 };
    struct io_uring_sqe *sqe = bc_loop_sqe(loop, &tu_tick.uop);
    io_uring_prep_timeout(sqe, &tu_tick.ts, 0, 0);
    io_uring_sqe_set_data(sqe, &tu_tick.uop);
    tu_tick.loop = loop;
}

struct bc_loop *tu_loop_new(void)
{
    g_autoptr(GError) err = NULL;
    struct bc_loop *loop = bc_loop_new(0, 256, &err);
    g_assert_no_error(err);
    g_assert_nonnull(loop);
    return loop;
}

void tu_loop_free(struct bc_loop *loop)
{
    while (tu_tick.loop == loop)
        g_assert_cmpint(bc_loop_run_once(loop, true), ==, 0);
    bc_loop_free(loop);
}

void tu_run_once(struct bc_loop *loop)
{
    tu_tick_arm(loop);
    int r = bc_loop_run_once(loop, true);
    g_assert_cmpint(r, ==, 0);
}

void tu_run_until_done(struct bc_loop *loop, unsigned *pending)
{
    /* A few non-blocking iterations first: completions that come through tasks (the
     * ram driver, blocker and bounce wake-ups) then need no sleep and no tick at all. */
    for (int i = 0; i < 64 && *pending > 0; i++)
        g_assert_cmpint(bc_loop_run_once(loop, false), ==, 0);
    if (*pending > 0) {
        tu_tick_arm(loop);
        g_assert_cmpint(bc_loop_wait(loop, pending), ==, 0);
    }
}

/* Run one started request to completion; asserts the callback did not run inside the call. */
static int finish(struct bc_loop *loop, struct tu_io *io, unsigned *pending, const char *what)
{
    if (io->done)
        g_error("%s: callback ran inside the submitting call", what);
    tu_run_until_done(loop, pending);
    g_assert_true(io->done);
    g_assert_cmpint(io->res, <=, 0);
    return io->res;
}

int tu_preadv(struct bc_dev *dev, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
              uint64_t off)
{
    unsigned pending = 0;
    struct tu_io io;
    tu_io_start(&io, &pending);
    bc_dev_readv(dev, loop, iov, iovcnt, off, tu_io_cb, &io);
    return finish(loop, &io, &pending, "bc_dev_readv");
}

int tu_pwritev(struct bc_dev *dev, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
               uint64_t off, unsigned flags)
{
    unsigned pending = 0;
    struct tu_io io;
    tu_io_start(&io, &pending);
    bc_dev_writev(dev, loop, iov, iovcnt, off, flags, tu_io_cb, &io);
    return finish(loop, &io, &pending, "bc_dev_writev");
}

int tu_pread(struct bc_dev *dev, struct bc_loop *loop, void *buf, size_t len, uint64_t off)
{
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    return tu_preadv(dev, loop, &iov, 1, off);
}

int tu_pwrite(struct bc_dev *dev, struct bc_loop *loop, const void *buf, size_t len,
              uint64_t off)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    return tu_pwritev(dev, loop, &iov, 1, off, 0);
}

int tu_zero(struct bc_dev *dev, struct bc_loop *loop, uint64_t off, uint64_t len,
            unsigned flags)
{
    unsigned pending = 0;
    struct tu_io io;
    tu_io_start(&io, &pending);
    bc_dev_write_zeroes(dev, loop, off, len, flags, tu_io_cb, &io);
    return finish(loop, &io, &pending, "bc_dev_write_zeroes");
}

int tu_discard(struct bc_dev *dev, struct bc_loop *loop, uint64_t off, uint64_t len)
{
    unsigned pending = 0;
    struct tu_io io;
    tu_io_start(&io, &pending);
    bc_dev_discard(dev, loop, off, len, tu_io_cb, &io);
    return finish(loop, &io, &pending, "bc_dev_discard");
}

int tu_flush(struct bc_dev *dev, struct bc_loop *loop)
{
    unsigned pending = 0;
    struct tu_io io;
    tu_io_start(&io, &pending);
    bc_dev_flush(dev, loop, tu_io_cb, &io);
    return finish(loop, &io, &pending, "bc_dev_flush");
}

/* ---- buffers ----------------------------------------------------------------------- */

#define TU_PAGE 4096u

static uint8_t guard_byte(size_t i)
{
    return (uint8_t)(0xC3 ^ (i * 7));
}

void tu_buf_init(struct tu_buf *b, size_t len, size_t misalign)
{
    size_t front = ((TU_GUARD + misalign + TU_PAGE - 1) / TU_PAGE) * TU_PAGE;
    void *base = NULL;

    /* p sits at a page boundary plus misalign, with at least TU_GUARD bytes before it. */
    size_t total = front + misalign + len + TU_GUARD;
    g_assert_cmpint(posix_memalign(&base, TU_PAGE, total), ==, 0);
    b->base = base;
    b->p = b->base + front + misalign;
    b->len = len;
    b->misalign = misalign;
    for (size_t i = 0; i < TU_GUARD; i++) {
        b->p[-(ptrdiff_t)TU_GUARD + (ptrdiff_t)i] = guard_byte(i);
        b->p[len + i] = guard_byte(i + 1000);
    }
}

void tu_buf_check_guards(const struct tu_buf *b, const char *what)
{
    for (size_t i = 0; i < TU_GUARD; i++) {
        if (b->p[-(ptrdiff_t)TU_GUARD + (ptrdiff_t)i] != guard_byte(i))
            g_error("%s: byte %zd before the buffer was overwritten", what,
                    (ptrdiff_t)i - TU_GUARD);
        if (b->p[b->len + i] != guard_byte(i + 1000))
            g_error("%s: byte %zu after the buffer (len %zu) was overwritten", what, i, b->len);
    }
}

void tu_buf_free(struct tu_buf *b)
{
    free(b->base);
    b->base = b->p = NULL;
}

int tu_split_iov(GRand *r, uint8_t *buf, size_t len, struct iovec *iov, int max)
{
    g_assert_cmpint(max, >=, 1);
    g_assert_cmpint(max, <=, TU_MAX_IOV);
    int n = g_rand_int_range(r, 1, max + 1);
    if ((size_t)n > len + 1)
        n = (int)len + 1;
    /* n-1 random cut points in [0, len], sorted; duplicates make empty iovecs. */
    size_t cuts[TU_MAX_IOV + 1];
    cuts[0] = 0;
    cuts[n] = len;
    for (int i = 1; i < n; i++)
        cuts[i] = len ? (size_t)g_rand_int_range(r, 0, (gint32)len + 1) : 0;
    for (int i = 1; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (cuts[j] < cuts[i]) {
                size_t t = cuts[i];
                cuts[i] = cuts[j];
                cuts[j] = t;
            }
    for (int i = 0; i < n; i++) {
        iov[i].iov_base = buf + cuts[i];
        iov[i].iov_len = cuts[i + 1] - cuts[i];
    }
    return n;
}

void tu_fill_random(GRand *r, uint8_t *buf, size_t len)
{
    size_t i = 0;
    for (; i + 4 <= len; i += 4) {
        guint32 v = g_rand_int(r);
        memcpy(buf + i, &v, 4);
    }
    for (; i < len; i++)
        buf[i] = (uint8_t)g_rand_int(r);
}

/* ---- model ------------------------------------------------------------------------- */

void tu_model_init(struct tu_model *m, uint64_t size, bool known)
{
    m->size = size;
    m->data = g_malloc0(size ? size : 1);
    m->known = g_malloc(size ? size : 1);
    memset(m->known, known ? 1 : 0, size);
}

void tu_model_free(struct tu_model *m)
{
    g_free(m->data);
    g_free(m->known);
    m->data = m->known = NULL;
}

static uint64_t clip(const struct tu_model *m, uint64_t off, uint64_t len)
{
    if (off >= m->size)
        return 0;
    return MIN(len, m->size - off);
}

void tu_model_write(struct tu_model *m, uint64_t off, const uint8_t *buf, uint64_t len)
{
    len = clip(m, off, len);
    memcpy(m->data + off, buf, len);
    memset(m->known + off, 1, len);
}

void tu_model_zero(struct tu_model *m, uint64_t off, uint64_t len)
{
    len = clip(m, off, len);
    memset(m->data + off, 0, len);
    memset(m->known + off, 1, len);
}

void tu_model_forget(struct tu_model *m, uint64_t off, uint64_t len)
{
    len = clip(m, off, len);
    memset(m->known + off, 0, len);
}

bool tu_model_check(const struct tu_model *m, uint64_t off, const uint8_t *got, uint64_t len,
                    const char *ctx)
{
    uint64_t bad = 0, first = UINT64_MAX;
    for (uint64_t i = 0; i < len; i++) {
        uint64_t o = off + i;
        bool okb;
        uint8_t want = 0;
        if (o >= m->size)
            okb = got[i] == 0;
        else {
            want = m->data[o];
            okb = !m->known[o] || got[i] == want;
        }
        if (!okb) {
            if (first == UINT64_MAX) {
                first = o;
                g_test_message("%s: first mismatch at device offset %" PRIu64
                               " (byte %" PRIu64 " of read [%" PRIu64 ", +%" PRIu64
                               ")): got 0x%02x want 0x%02x%s", ctx, o, i, off, len, got[i],
                               want, o >= m->size ? " (past the end)" : "");
            }
            bad++;
        }
    }
    if (bad)
        g_test_message("%s: %" PRIu64 " bytes differ", ctx, bad);
    return bad == 0;
}

bool tu_model_verify_dev(const struct tu_model *m, struct bc_dev *dev, struct bc_loop *loop,
                         const char *ctx)
{
    const size_t chunk = 1u << 20;
    uint8_t *buf = bc_buf_alloc(chunk);
    bool good = true;

    for (uint64_t off = 0; off < m->size && good; off += chunk) {
        size_t n = (size_t)MIN((uint64_t)chunk, m->size - off);
        int r = tu_pread(dev, loop, buf, n, off);
        if (r != 0) {
            g_test_message("%s: reading [%" PRIu64 ", +%zu) failed: %s", ctx, off, n,
                           g_strerror(-r));
            good = false;
            break;
        }
        good = tu_model_check(m, off, buf, n, ctx);
    }
    bc_buf_free(buf);
    return good;
}

bool tu_cmp(const uint8_t *got, const uint8_t *want, size_t len, uint64_t base,
            const char *ctx)
{
    size_t bad = 0;
    for (size_t i = 0; i < len; i++)
        if (got[i] != want[i]) {
            if (!bad)
                g_test_message("%s: first difference at offset %" PRIu64
                               ": got 0x%02x want 0x%02x", ctx, base + i, got[i], want[i]);
            bad++;
        }
    if (bad)
        g_test_message("%s: %zu of %zu bytes differ", ctx, bad, len);
    return bad == 0;
}
