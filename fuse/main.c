/* SPDX-License-Identifier: MIT */
/* layerfs: the command line, the order of setup (nothing is mounted until everything that
 * can be checked has been) and the shutdown sequence. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "fuse/front.h"

#define FO_MAX_THREADS 64

/* Everything main() sets up lives here, reachable until exit. */
struct fo_options {
    const char *config;
    GPtrArray *disk_specs;  /* char *, borrowed from argv */
    bool demo;
    bool foreground;
    const char *pidfile;
    GString *mount_opts;
    bool read_only;
    unsigned threads;
    uint64_t bounce_budget; /* 0 = default */
    enum fo_cache cache;
    const char *mountpoint;
};

static struct fo_options fo_opts;
static struct lf_config *fo_cfg;
static struct fo_daemon fo_daemon;

enum {
    OPT_DISK = 0x100,
    OPT_DEMO,
    OPT_PIDFILE,
    OPT_READ_ONLY,
    OPT_BOUNCE,
    OPT_CACHE,
};

/* The options, in --help order: getopt's tables and --help are both made from this one,
 * so --help lists every option the program accepts (t/3070 checks each is documented). */
static const struct fo_opt {
    const char *name;   /* the long name, or NULL */
    int val;            /* the short letter, or an OPT_* above */
    int has_arg;
    const char *arg;    /* how --help shows the argument */
    const char *help;   /* lines after the first are indented */
} fo_opt_table[] = {
    { "config", 'c', required_argument, " FILE",
      "read disks and layers from FILE (see layerfs.conf(5))" },
    { "disk", OPT_DISK, required_argument, " SPEC",
      "define a disk inline: NAME=LAYER[:LAYER...], top first;\n"
      "LAYER is PATH or KEY=VALUE[,KEY=VALUE...] (repeatable)" },
    { "demo", OPT_DEMO, no_argument, "", "add a built-in 256M demo disk named 'demo' (in memory)" },
    { "foreground", 'f', no_argument, "", "do not daemonize" },
    { "pidfile", OPT_PIDFILE, required_argument, " FILE",
      "write the daemon's pid to FILE once the mount serves" },
    { NULL, 'o', required_argument, " OPTS",
      "FUSE mount options, comma-separated (e.g. allow_other)" },
    { "read-only", OPT_READ_ONLY, no_argument, "", "expose every disk read-only" },
    { "threads", 't', required_argument, " N",
      "number of I/O threads (default 2, at most " G_STRINGIFY(FO_MAX_THREADS) ")" },
    { "bounce-budget", OPT_BOUNCE, required_argument, " SIZE",
      "memory for bounce buffers, e.g. 64M (default 64M)" },
    { "cache", OPT_CACHE, required_argument, "=MODE",
      "direct (default: no kernel page cache) or page" },
    { "verbose", 'v', no_argument, "", "log more (twice: also libfuse's request trace)" },
    { "version", 'V', no_argument, "", "print the version and exit" },
    { "help", 'h', no_argument, "", "print this help and exit" },
};

#define FO_HELP_COLUMN 27

static void usage(FILE *f)
{
    fprintf(f,
"Usage: layerfs [OPTIONS] MOUNTPOINT\n"
"Expose each configured layered disk as a regular file: MOUNTPOINT/NAME, or MOUNTPOINT\n"
"itself when it is a regular file and exactly one disk is configured.\n"
"Unmount with: fusermount3 -u MOUNTPOINT (or send SIGTERM).\n"
"\n"
"Options:\n");
    for (size_t i = 0; i < G_N_ELEMENTS(fo_opt_table); i++) {
        const struct fo_opt *o = &fo_opt_table[i];
        g_autofree char *left = NULL;
        g_auto(GStrv) lines = g_strsplit(o->help, "\n", -1);

        if (o->name == NULL)
            left = g_strdup_printf("  -%c%s", o->val, o->arg);
        else if (o->val < OPT_DISK)
            left = g_strdup_printf("  -%c, --%s%s", o->val, o->name, o->arg);
        else
            left = g_strdup_printf("      --%s%s", o->name, o->arg);
        fprintf(f, "%-*s %s\n", FO_HELP_COLUMN - 1, left, lines[0]);
        for (int l = 1; lines[l] != NULL; l++)
            fprintf(f, "%*s%s\n", FO_HELP_COLUMN, "", lines[l]);
    }
}

G_NORETURN static void bad_usage(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static void bad_usage(const char *fmt, ...)
{
    va_list ap;
    char *msg;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    fo_err("%s", msg);
    g_free(msg);
    fprintf(stderr, "Try 'layerfs --help' for more information.\n");
    exit(2);
}

/* Print err's message, free it and exit with status (telling a waiting parent). */
G_NORETURN static void die(int status, GError *err)
{
    fo_err("%s", err->message);
    g_error_free(err);
    fo_exit(status);
}

static void parse_options(int argc, char **argv, struct fo_options *o)
{
    struct option longopts[G_N_ELEMENTS(fo_opt_table) + 1] = { { NULL, 0, NULL, 0 } };
    GString *shortopts = g_string_new("+");
    size_t nlong = 0;

    for (size_t i = 0; i < G_N_ELEMENTS(fo_opt_table); i++) {
        const struct fo_opt *t = &fo_opt_table[i];
        if (t->name != NULL)
            longopts[nlong++] = (struct option){ t->name, t->has_arg, NULL, t->val };
        if (t->val < OPT_DISK)
            g_string_append_printf(shortopts, "%c%s", t->val,
                                   t->has_arg == required_argument ? ":" : "");
    }
    int c;
    char *end;

    o->disk_specs = g_ptr_array_new();
    o->mount_opts = g_string_new(NULL);
    o->threads = 2;
    o->cache = FO_CACHE_DIRECT;
    while ((c = getopt_long(argc, argv, shortopts->str, longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            if (o->config != NULL)
                bad_usage("-c/--config given twice");
            o->config = optarg;
            break;
        case OPT_DISK:
            g_ptr_array_add(o->disk_specs, optarg);
            break;
        case OPT_DEMO:
            o->demo = true;
            break;
        case 'f':
            o->foreground = true;
            break;
        case OPT_PIDFILE:
            if (*optarg == '\0')
                bad_usage("--pidfile: empty file name");
            o->pidfile = optarg;
            break;
        case 'o':
            if (*optarg == '\0')
                bad_usage("-o: empty option list");
            if (o->mount_opts->len > 0)
                g_string_append_c(o->mount_opts, ',');
            g_string_append(o->mount_opts, optarg);
            break;
        case OPT_READ_ONLY:
            o->read_only = true;
            break;
        case 't': {
            errno = 0;
            unsigned long n = strtoul(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0' || n < 1 || n > FO_MAX_THREADS)
                bad_usage("--threads: '%s' is not a number from 1 to %d", optarg,
                          FO_MAX_THREADS);
            o->threads = (unsigned)n;
            break;
        }
        case OPT_BOUNCE:
            if (!bc_parse_size(optarg, &o->bounce_budget) || o->bounce_budget < (64u << 10))
                bad_usage("--bounce-budget: '%s' is not a size of at least 64K", optarg);
            break;
        case OPT_CACHE:
            if (strcmp(optarg, "direct") == 0)
                o->cache = FO_CACHE_DIRECT;
            else if (strcmp(optarg, "page") == 0)
                o->cache = FO_CACHE_PAGE;
            else
                bad_usage("--cache: '%s' is neither direct nor page", optarg);
            break;
        case 'v':
            fo_verbose++;
            break;
        case 'V':
            /* The first line as layerfs-img prints it. */
            printf("layerfs %s\nlibfuse %s\n", PACKAGE_VERSION, fuse_pkgversion());
            exit(0);
        case 'h':
            usage(stdout);
            exit(0);
        default:
            fprintf(stderr, "Try 'layerfs --help' for more information.\n");
            exit(2);
        }
    }
    g_string_free(shortopts, TRUE);
    if (optind == argc)
        bad_usage("no MOUNTPOINT given");
    if (optind + 1 < argc)
        bad_usage("unexpected argument '%s' after MOUNTPOINT", argv[optind + 1]);
    o->mountpoint = argv[optind];
}

/* Build the configuration from -c, --disk and --demo; exits 2 on any error. */
static struct lf_config *build_config(const struct fo_options *o)
{
    GError *err = NULL;

    fo_cfg = o->config != NULL ? lf_config_load(o->config, &err) : lf_config_new();
    if (fo_cfg == NULL)
        die(2, err);
    for (guint i = 0; i < o->disk_specs->len; i++) {
        if (!lf_config_add_inline(fo_cfg, g_ptr_array_index(o->disk_specs, i), &err))
            die(2, err);
    }
    if (o->demo && !fo_demo_config(fo_cfg, &err))
        die(2, err);
    if (fo_cfg->disks->len == 0) {
        fo_err("no disks: give -c FILE, --disk SPEC or --demo");
        exit(2);
    }
    return fo_cfg;
}

static void close_disks(struct fo_daemon *d, bool undo, int *status);

/* A start failed with err: undo the disks opened so far, print err and exit with status. */
G_NORETURN static void undo_and_die(struct fo_daemon *d, int status, GError *err)
{
    int ignore = 0;

    close_disks(d, true, &ignore);
    die(status, err);
}

/* Open every disk (as the daemon, after forking); on error undoes what it opened and
 * exits 2. */
static void open_disks(struct fo_daemon *d, const struct lf_config *cfg, bool demo,
                       bool read_only)
{
    GError *err = NULL;

    d->ndisks = cfg->disks->len;
    d->disks = g_new0(struct fo_disk, d->ndisks);
    for (unsigned i = 0; i < d->ndisks; i++) {
        const struct lf_disk_cfg *dc = g_ptr_array_index(cfg->disks, i);
        struct fo_disk *disk = &d->disks[i];
        disk->disk = lf_disk_open(dc, read_only, &err);
        if (disk->disk == NULL)
            undo_and_die(d, 2, err);
        disk->name = g_strdup(dc->name);
        disk->ino = d->file_mode ? FUSE_ROOT_ID : 2 + i;
        disk->size = lf_disk_size(disk->disk);
        disk->blksize = lf_disk_block_size(disk->disk);
        disk->read_only = lf_disk_read_only(disk->disk);
        if (demo && strcmp(dc->name, FO_DEMO_NAME) == 0 && !disk->read_only &&
            !fo_demo_fill(disk->disk, &err))
            undo_and_die(d, 2, err);
        fo_log(1, "disk %s: %" G_GUINT64_FORMAT " bytes%s", disk->name, disk->size,
               disk->read_only ? ", read-only" : "");
    }
}

/* Close the disks opened so far; undo (a failed start): also remove the images their
 * opens created. */
static void close_disks(struct fo_daemon *d, bool undo, int *status)
{
    for (unsigned i = 0; i < d->ndisks; i++) {
        struct lf_disk *disk = d->disks[i].disk;
        int r = undo ? lf_disk_close_undo(disk) : lf_disk_close(disk);
        if (r < 0) {
            fo_err("disk %s: closing: %s", d->disks[i].name, g_strerror(-r));
            *status = 1;
        }
        g_free(d->disks[i].name);
    }
    g_free(d->disks);
    d->disks = NULL;
}

struct fo_disk *fo_disk_of(struct fo_daemon *d, fuse_ino_t ino)
{
    if (d->file_mode)
        return ino == FUSE_ROOT_ID ? &d->disks[0] : NULL;
    if (ino >= 2 && ino - 2 < d->ndisks)
        return &d->disks[ino - 2];
    return NULL;
}

/* SIGUSR1: log, for each disk, how many of its bytes each layer serves. */
static void report_disks(struct fo_daemon *d)
{
    for (unsigned i = 0; i < d->ndisks; i++) {
        struct fo_disk *fd = &d->disks[i];
        unsigned n = lf_disk_layer_count(fd->disk);
        g_autofree uint64_t *held = g_new0(uint64_t, n + 1);   /* [n]: zeros */
        g_autoptr(GString) line = g_string_new(NULL);

        for (uint64_t off = 0, len; off < fd->size; off += len) {
            int l = lf_disk_map(fd->disk, off, fd->size - off, &len);
            held[l < 0 ? n : (unsigned)l] += len;
        }
        g_string_printf(line, "disk %s: %" G_GUINT64_FORMAT " bytes, %s", fd->name, fd->size,
                        fd->read_only ? "read-only" : "read-write");
        for (unsigned l = 0; l < n; l++)
            g_string_append_printf(line, "; layer %s (%s) serves %" G_GUINT64_FORMAT,
                                   lf_disk_layer_name(fd->disk, l),
                                   lf_disk_layer_format(fd->disk, l), held[l]);
        g_string_append_printf(line, "; zeros %" G_GUINT64_FORMAT, held[n]);
        fo_note("%s", line->str);
    }
}

/* Wait for an event from the I/O threads or a signal.  Returns the number of a signal that
 * stops the daemon, or 0 (SIGUSR1 is answered here). */
static int wait_event(struct fo_daemon *d, int sfd)
{
    struct pollfd p[2] = { { .fd = sfd, .events = POLLIN }, { .fd = d->event_fd,
                                                              .events = POLLIN } };
    uint64_t v;

    while (poll(p, 2, -1) < 0)
        if (errno != EINTR)
            return 0;
    if (p[1].revents & POLLIN) {
        if (read(d->event_fd, &v, sizeof v) < 0 && errno != EAGAIN)
            fo_err("eventfd: %s", g_strerror(errno));
    }
    if (p[0].revents & POLLIN) {
        struct signalfd_siginfo si;
        if (read(sfd, &si, sizeof si) != (ssize_t)sizeof si)
            return 0;
        if (si.ssi_signo == SIGUSR1) {
            report_disks(d);
            return 0;
        }
        return (int)si.ssi_signo;
    }
    return 0;
}

static struct fuse_session *make_session(struct fo_daemon *d, const struct fo_options *o)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    /* No max_read: the kernel's default is unlimited and max_pages (from max_write) caps
     * reads at FO_MAX_IO. */
    const char *fixed = "default_permissions,fsname=layerfs,subtype=layerfs";

    g_ptr_array_add(argv, g_strdup("layerfs"));
    g_ptr_array_add(argv, g_strdup("-o"));
    g_ptr_array_add(argv, g_strdup(fixed));
    if (o->mount_opts->len > 0) {
        g_ptr_array_add(argv, g_strdup("-o"));
        g_ptr_array_add(argv, g_strdup(o->mount_opts->str));
    }
    if (fo_verbose >= 2)
        g_ptr_array_add(argv, g_strdup("-d"));
    struct fuse_args args = FUSE_ARGS_INIT((int)argv->len, (char **)argv->pdata);
    struct fuse_session *se = fuse_session_new(&args, &fo_ops, sizeof fo_ops, d);
    fuse_opt_free_args(&args);
    return se;
}

int main(int argc, char **argv)
{
    struct fo_options *o = &fo_opts;
    struct fo_daemon *d = &fo_daemon;
    struct fo_pidfile pf = { 0 };
    GError *err = NULL;
    static char *mnt, *pidfile;
    int status = 0;

    fo_log_init();
    parse_options(argc, argv, o);
    struct lf_config *cfg = build_config(o);
    if (!fo_check_mountpoint(o->mountpoint, cfg->disks->len, &d->file_mode, &mnt, &err))
        die(2, err);
    pidfile = o->pidfile ? g_canonicalize_filename(o->pidfile, NULL) : NULL;
    if (pidfile != NULL && !fo_pidfile_check(pidfile, &err))
        die(2, err);
    if (o->bounce_budget != 0)
        bc_bounce_set_budget(o->bounce_budget);

    if (!o->foreground)
        fo_daemonize();

    int sfd = fo_signals_setup();
    d->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (d->event_fd < 0) {
        fo_err("eventfd: %s", g_strerror(errno));
        fo_exit(1);
    }

    d->cache = o->cache;
    d->verbose = fo_verbose;
    d->uid = getuid();
    d->gid = getgid();
    clock_gettime(CLOCK_REALTIME, &d->start);
    d->nthreads = o->threads;
    open_disks(d, cfg, o->demo, o->read_only);
    /* From here on a failure before the mount serves undoes the start (close_disks). */
    lf_config_free(cfg);
    fo_cfg = NULL;

    d->se = make_session(d, o);
    if (d->se == NULL) {
        fo_err("bad FUSE options: %s", o->mount_opts->str);
        close_disks(d, true, &status);
        fo_exit(2);
    }
    if (fuse_session_mount(d->se, mnt) != 0) {
        fo_err("%s: cannot mount", mnt);
        close_disks(d, true, &status);
        fuse_session_destroy(d->se);
        fo_exit(2);
    }
    bool ready = false, started = false;
    int sig = 0;
    d->fuse_fd = fuse_session_fd(d->se);
    if (fcntl(d->fuse_fd, F_SETFL, fcntl(d->fuse_fd, F_GETFL) | O_NONBLOCK) < 0 ||
        !fo_threads_start(d, &err)) {
        fo_err("%s", err ? err->message : g_strerror(errno));
        g_clear_error(&err);
        status = 1;
        goto unmount;
    }

    /* Serve; the pidfile appears once FUSE_INIT has been answered. */
    while (sig == 0 && !__atomic_load_n(&d->unmounted, __ATOMIC_ACQUIRE)) {
        if (!ready && __atomic_load_n(&d->init_done, __ATOMIC_ACQUIRE)) {
            ready = true;
            if (pidfile != NULL && !fo_pidfile_write(&pf, pidfile, &err)) {
                fo_err("%s", err->message);
                g_clear_error(&err);
                status = 1;
                break;
            }
            fo_log(1, "serving %u disk(s) on %s with %u I/O thread(s)", d->ndisks, mnt,
                   d->nthreads);
            fo_daemon_ready();
            started = true;
        }
        sig = wait_event(d, sfd);
    }
    if (sig != 0)
        fo_log(1, "%s: shutting down", strsignal(sig));
    if (!ready && sig == 0 && status == 0) {
        fo_err("%s: the kernel ended the session before it was set up", mnt);
        status = 1;
    }

    /* Drain, then flush every disk; a second signal while waiting gives up waiting. */
    fo_threads_stop_receiving(d);
    while (__atomic_load_n(&d->drained, __ATOMIC_ACQUIRE) < d->nthreads) {
        if (wait_event(d, sfd) != 0) {
            fo_err("second signal: not waiting for requests in flight");
            fuse_session_unmount(d->se);
            fo_exit(1);
        }
    }
    fo_threads_flush_all(d);
    while (!__atomic_load_n(&d->flushed, __ATOMIC_ACQUIRE)) {
        if (wait_event(d, sfd) != 0) {
            fo_err("second signal: not waiting for the final flush");
            fuse_session_unmount(d->se);
            fo_exit(1);
        }
    }
    if (__atomic_load_n(&d->flush_res, __ATOMIC_ACQUIRE) < 0) {
        fo_err("flushing the disks: %s",
               g_strerror(-__atomic_load_n(&d->flush_res, __ATOMIC_ACQUIRE)));
        status = 1;
    }
    fo_threads_join(d);

unmount:
    if (d->threads != NULL) {
        /* Threads started only partly: nothing was received yet. */
        fo_threads_stop_receiving(d);
        fo_threads_join(d);
    }
    fuse_session_unmount(d->se);
    close_disks(d, !started && status != 0, &status);
    fuse_session_destroy(d->se);
    fo_pidfile_remove(&pf);
    g_string_free(o->mount_opts, TRUE);
    g_ptr_array_unref(o->disk_specs);
    fo_exit(status);
}
