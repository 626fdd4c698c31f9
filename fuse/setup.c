/* SPDX-License-Identifier: MIT */
/* Setup helpers of the daemon: logging (ours, GLib's and libfuse's, to stderr or syslog),
 * signal dispositions, mountpoint checks, the pidfile, daemonizing with a status pipe, the
 * demo disk. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "fuse/front.h"

int fo_verbose;

/* ---- logging ------------------------------------------------------------------------ */

/*
 * Every message -- ours, GLib's (g_warning() and friends from the layers and drivers) and
 * libfuse's -- goes through fo_emit(): "layerfs: MESSAGE" on stderr, or, once a daemon has
 * detached (fo_daemon_ready()), to syslog(3) as ident "layerfs" with the pid, facility
 * daemon, at the message's priority.  Info and debug messages need -v.
 */

/* Set once by fo_daemon_ready(), read by any thread (atomic). */
static bool fo_detached;

static void fo_emit(int prio, const char *msg, int len)
{
    if (__atomic_load_n(&fo_detached, __ATOMIC_ACQUIRE))
        syslog(prio, "%.*s", len, msg);
    else
        fprintf(stderr, "layerfs: %.*s\n", len, msg);
}

static void fo_vemit(int prio, const char *fmt, va_list ap)
{
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);

    fo_emit(prio, msg, (int)strlen(msg));
}

void fo_err(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fo_vemit(LOG_ERR, fmt, ap);
    va_end(ap);
}

void fo_note(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fo_vemit(LOG_NOTICE, fmt, ap);
    va_end(ap);
}

void fo_log(int level, const char *fmt, ...)
{
    va_list ap;

    if (fo_verbose < level)
        return;
    va_start(ap, fmt);
    fo_vemit(level > 1 ? LOG_DEBUG : LOG_INFO, fmt, ap);
    va_end(ap);
}

static GLogWriterOutput fo_glib_writer(GLogLevelFlags level, const GLogField *fields,
                                       gsize nfields, gpointer unused)
{
    static const struct { GLogLevelFlags level; int prio; } map[] = {
        { G_LOG_LEVEL_ERROR, LOG_CRIT }, { G_LOG_LEVEL_CRITICAL, LOG_CRIT },
        { G_LOG_LEVEL_WARNING, LOG_WARNING }, { G_LOG_LEVEL_MESSAGE, LOG_NOTICE },
        { G_LOG_LEVEL_INFO, LOG_INFO }, { G_LOG_LEVEL_DEBUG, LOG_DEBUG },
    };
    int prio = LOG_DEBUG;

    (void)unused;
    for (size_t i = 0; i < G_N_ELEMENTS(map); i++) {
        if (level & map[i].level) {
            prio = map[i].prio;
            break;
        }
    }
    if (prio >= LOG_INFO && fo_verbose < 1)
        return G_LOG_WRITER_HANDLED;
    for (gsize i = 0; i < nfields; i++) {
        if (strcmp(fields[i].key, "MESSAGE") == 0) {
            const char *m = fields[i].value;
            fo_emit(prio, m, fields[i].length < 0 ? (int)strlen(m) : (int)fields[i].length);
            break;
        }
    }
    return G_LOG_WRITER_HANDLED;
}

/* libfuse writes some lines in pieces: each thread gathers them up to the newline. */
static __thread char fo_fuse_line[1024];
static __thread size_t fo_fuse_len;

static void fo_fuse_log(enum fuse_log_level level, const char *fmt, va_list ap)
{
    int prio = (int)level;  /* libfuse's levels are syslog's */
    g_autofree char *msg = NULL;

    if (prio >= LOG_INFO && fo_verbose < 1)
        return;
    msg = g_strdup_vprintf(fmt, ap);
    for (const char *p = msg; *p != '\0'; p++) {
        if (*p != '\n' && fo_fuse_len < sizeof fo_fuse_line)
            fo_fuse_line[fo_fuse_len++] = *p;
        if ((*p == '\n' && fo_fuse_len > 0) || fo_fuse_len == sizeof fo_fuse_line) {
            fo_emit(prio, fo_fuse_line, (int)fo_fuse_len);
            fo_fuse_len = 0;
        }
    }
}

void fo_log_init(void)
{
    g_log_set_writer_func(fo_glib_writer, NULL, NULL);
    fuse_set_log_func(fo_fuse_log);
}

/* ---- signals ------------------------------------------------------------------------ */

/* Stop the daemon cleanly (drain, flush, unmount): read from the signalfd. */
static const int fo_stop_signals[] = { SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGXCPU };
/* Ignored: none of them may kill or stop a daemon whose clients would hang. */
static const int fo_ignored_signals[] = {
    SIGPIPE, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGXFSZ, SIGPWR, SIGSTKFLT,
    SIGTSTP, SIGTTIN, SIGTTOU,
};

int fo_signals_setup(void)
{
    sigset_t sigs;

    sigemptyset(&sigs);
    for (size_t i = 0; i < G_N_ELEMENTS(fo_stop_signals); i++)
        sigaddset(&sigs, fo_stop_signals[i]);
    sigaddset(&sigs, SIGUSR1);
    /* Blocked here, so the I/O threads (which inherit the mask) never take them. */
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    for (size_t i = 0; i < G_N_ELEMENTS(fo_ignored_signals); i++)
        signal(fo_ignored_signals[i], SIG_IGN);
    for (int s = SIGRTMIN; s <= SIGRTMAX; s++)
        signal(s, SIG_IGN);
    int sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
    if (sfd < 0) {
        fo_err("signalfd: %s", g_strerror(errno));
        fo_exit(1);
    }
    return sfd;
}

/* ---- the mountpoint ----------------------------------------------------------------- */

bool fo_check_mountpoint(const char *mnt, unsigned ndisks, bool *file_mode, char **abs,
                         GError **errp)
{
    struct statx stx;

    if (statx(AT_FDCWD, mnt, AT_NO_AUTOMOUNT, STATX_TYPE | STATX_MODE, &stx) < 0) {
        int e = errno;
        if (e == ENOTCONN)
            g_set_error(errp, LF_ERROR, e, "%s: a dead FUSE mount is in the way (unmount it "
                        "with fusermount3 -u)", mnt);
        else if (e == ENOENT)
            g_set_error(errp, LF_ERROR, e, "%s: mountpoint does not exist", mnt);
        else
            g_set_error(errp, LF_ERROR, e, "%s: %s", mnt, g_strerror(e));
        return false;
    }
    if ((stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) &&
        (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT)) {
        g_set_error(errp, LF_ERROR, EBUSY, "%s: already a mount point (busy)", mnt);
        return false;
    }
    if (S_ISDIR(stx.stx_mode)) {
        *file_mode = false;
    } else if (S_ISREG(stx.stx_mode)) {
        if (ndisks != 1) {
            g_set_error(errp, LF_ERROR, EINVAL, "%s: a regular file mountpoint shows exactly "
                        "one disk, but %u are configured", mnt, ndisks);
            return false;
        }
        *file_mode = true;
    } else {
        g_set_error(errp, LF_ERROR, EINVAL, "%s: mountpoint must be a directory or a regular "
                    "file", mnt);
        return false;
    }
    char *r = realpath(mnt, NULL);
    if (r == NULL) {
        g_set_error(errp, LF_ERROR, errno, "%s: %s", mnt, g_strerror(errno));
        return false;
    }
    *abs = g_strdup(r);
    free(r);
    return true;
}

/* ---- the pidfile -------------------------------------------------------------------- */

/*
 * The pidfile is created with O_CREAT|O_EXCL|O_NOFOLLOW only once the mount serves, and
 * removed at a clean exit if it is still the file we created.  A pidfile left behind is
 * handled before anything is mounted: if it names a live process we refuse to start; if it
 * is a regular file owned by us whose process is gone, it is stale and removed; anything
 * else (a symlink, a directory, another user's file, no pid) is an error to sort out by hand.
 */
bool fo_pidfile_check(const char *path, GError **errp)
{
    struct stat st;

    if (lstat(path, &st) < 0) {
        if (errno == ENOENT)
            return true;
        g_set_error(errp, LF_ERROR, errno, "%s: %s", path, g_strerror(errno));
        return false;
    }
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
        g_set_error(errp, LF_ERROR, EEXIST, "%s: pidfile exists and is not a regular file "
                    "of ours; remove it by hand", path);
        return false;
    }
    g_autofree char *text = NULL;
    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        g_set_error(errp, LF_ERROR, EEXIST, "%s: pidfile exists and cannot be read", path);
        return false;
    }
    char *end;
    long pid = strtol(text, &end, 10);
    if (end == text || pid <= 0 || (*end != '\n' && *end != '\0')) {
        g_set_error(errp, LF_ERROR, EEXIST, "%s: pidfile exists and holds no pid; remove it "
                    "by hand", path);
        return false;
    }
    if (kill((pid_t)pid, 0) == 0 || errno == EPERM) {
        g_set_error(errp, LF_ERROR, EEXIST, "%s: pidfile names process %ld, which is "
                    "running", path, pid);
        return false;
    }
    fo_err("%s: removing stale pidfile of process %ld", path, pid);
    if (unlink(path) < 0 && errno != ENOENT) {
        g_set_error(errp, LF_ERROR, errno, "%s: %s", path, g_strerror(errno));
        return false;
    }
    return true;
}

bool fo_pidfile_write(struct fo_pidfile *pf, const char *path, GError **errp)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    struct stat st;

    if (fd < 0) {
        g_set_error(errp, LF_ERROR, errno, "%s: cannot create pidfile: %s", path,
                    g_strerror(errno));
        return false;
    }
    g_autofree char *text = g_strdup_printf("%ld\n", (long)getpid());
    size_t n = strlen(text);
    if (write(fd, text, n) != (ssize_t)n || fstat(fd, &st) < 0 || close(fd) < 0) {
        g_set_error(errp, LF_ERROR, errno, "%s: cannot write pidfile: %s", path,
                    g_strerror(errno));
        unlink(path);
        return false;
    }
    pf->path = g_strdup(path);
    pf->dev = st.st_dev;
    pf->ino = st.st_ino;
    return true;
}

void fo_pidfile_remove(struct fo_pidfile *pf)
{
    struct stat st;

    if (pf->path == NULL)
        return;
    if (lstat(pf->path, &st) == 0 && st.st_dev == pf->dev && st.st_ino == pf->ino)
        unlink(pf->path);
    g_clear_pointer(&pf->path, g_free);
}

/* ---- daemonizing -------------------------------------------------------------------- */

/* The write end of the pipe the waiting parent reads our status from, or -1. */
static int fo_status_fd = -1;

void fo_daemonize(void)
{
    int p[2];

    fflush(NULL);
    if (pipe2(p, O_CLOEXEC) < 0) {
        fo_err("pipe: %s", g_strerror(errno));
        exit(1);
    }
    pid_t pid = fork();
    if (pid < 0) {
        fo_err("fork: %s", g_strerror(errno));
        exit(1);
    }
    if (pid > 0) {
        unsigned char status;
        close(p[1]);
        ssize_t n;
        do
            n = read(p[0], &status, 1);
        while (n < 0 && errno == EINTR);
        _exit(n == 1 ? status : 1);
    }
    close(p[0]);
    fo_status_fd = p[1];
    openlog("layerfs", LOG_PID | LOG_NDELAY, LOG_DAEMON);
    if (setsid() < 0)
        fo_err("setsid: %s", g_strerror(errno));
}

void fo_daemon_ready(void)
{
    if (fo_status_fd < 0)
        return;
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        dup2(fd, STDIN_FILENO);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        close(fd);
    }
    __atomic_store_n(&fo_detached, true, __ATOMIC_RELEASE);
    if (chdir("/") < 0)
        fo_err("chdir /: %s", g_strerror(errno));
    unsigned char ok = 0;
    if (write(fo_status_fd, &ok, 1) < 0)
        fo_err("status pipe: %s", g_strerror(errno));
    close(fo_status_fd);
    fo_status_fd = -1;
}

void fo_exit(int status)
{
    if (fo_status_fd >= 0) {
        unsigned char s = (unsigned char)status;
        if (write(fo_status_fd, &s, 1) < 0)
            status = 1;
    }
    exit(status);
}

/* ---- the demo disk ------------------------------------------------------------------ */

/* The demo disk: a ram-format top layer over a 256M raw layer on the ram driver. */
bool fo_demo_config(struct lf_config *cfg, GError **errp)
{
    return lf_config_add_inline(cfg, FO_DEMO_NAME "=format=ram:driver=ram,size=256M", errp);
}

/* Fill the first MiB: each 512-byte sector starts with "layerfs demo sector N\n" and is
 * padded with the sector number's low byte. */
bool fo_demo_fill(struct lf_disk *disk, GError **errp)
{
    const size_t len = 1u << 20;
    char *buf = bc_buf_alloc(len);
    struct iovec iov = { buf, len };
    struct bc_sync w;

    for (size_t s = 0; s < len / 512; s++) {
        char *sec = buf + s * 512;
        memset(sec, (int)(s & 0xff), 512);
        snprintf(sec, 512, "layerfs demo sector %zu\n", s);
    }
    if (!bc_sync_begin(&w, NULL, errp)) {
        bc_buf_free(buf);
        return false;
    }
    lf_disk_writev(disk, w.loop, &iov, 1, 0, 0, bc_sync_cb, &w);
    int res = bc_sync_wait(&w);
    bc_sync_end(&w);
    bc_buf_free(buf);
    if (res < 0) {
        g_set_error(errp, LF_ERROR, -res, "demo disk: cannot write its pattern: %s",
                    g_strerror(-res));
        return false;
    }
    return true;
}
