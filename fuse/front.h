/* SPDX-License-Identifier: MIT */
/* The FUSE front end: each configured disk as a regular file, served by N I/O threads that
 * each run a blockcore event loop.  The one header of fuse/, and the one FUSE_USE_VERSION. */
#ifndef LAYERFS_FUSE_FRONT_H
#define LAYERFS_FUSE_FRONT_H

#define FUSE_USE_VERSION 314

#include <stdbool.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/types.h>
#include <time.h>

#include <fuse_lowlevel.h>

#include "layers/layers.h"

/*
 * Notes on the design
 *
 * Threads.  The main thread parses, opens the disks, mounts, starts the I/O threads and
 * then only waits (signals, "init done", "unmounted", "drained", "flushed") and runs the
 * shutdown sequence.  Each I/O thread owns a bc_loop that watches the /dev/fuse fd
 * (non-blocking).  On readiness a thread receives and processes requests until EAGAIN (a
 * batch at a time, so that its own completions are reaped in between); several threads
 * may wake for one request and the losers see EAGAIN.  A request is handed to lf_disk_*
 * on the receiving thread's loop and replied to from its completion callback, on that
 * same thread, so the per-thread pools need no locks.
 *
 * Buffers.  Receive buffers are offset so that a WRITE payload (after fuse_in_header and
 * fuse_write_in, FO_WRITE_HDR bytes) starts on a page boundary: O_DIRECT needs no bounce.
 * A WRITE keeps its receive buffer until the disk write completes (the payload points into
 * it), so the thread takes a fresh one for the next receive.  Reads go into pooled
 * page-aligned buffers that fuse_reply_buf copies to the kernel.
 *
 * Shutdown.  A stop signal (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGXCPU; SIGUSR1 is answered
 * and the rest ignored, see fo_signals_setup) or an unmount: every thread stops receiving;
 * once its in-flight requests have all been replied to it reports "drained"; then one
 * thread flushes every disk; then the loops stop, the mount goes and the disks are closed.
 * Requests the kernel had queued but no thread had read fail with ENOTCONN: none had been
 * acknowledged.  A start that fails before the mount serves is undone (close_disks(undo)):
 * the disks are closed cleanly and overlays the start created are removed.
 */

/* sizeof(struct fuse_in_header) + sizeof(struct fuse_write_in); checked in io.c. */
#define FO_WRITE_HDR 80u
/* Largest WRITE payload and READ reply we negotiate. */
#define FO_MAX_IO (1u << 20)
/* Attribute and entry timeouts: the disks never change size while mounted. */
#define FO_ATTR_TIMEOUT 86400.0

enum fo_cache {
    FO_CACHE_DIRECT, /* FOPEN_DIRECT_IO: every read and write reaches the daemon */
    FO_CACHE_PAGE,   /* the kernel page cache, write-through */
};

/* One exposed disk. */
struct fo_disk {
    struct lf_disk *disk;
    char *name;
    fuse_ino_t ino;
    uint64_t size;
    uint32_t blksize;
    bool read_only;
};

struct fo_thread;

/* The daemon: set up by the main thread before the I/O threads start, then read-only
 * except for the fields below marked "atomic" (read and written only with __atomic builtins),
 * which carry the events the main thread waits for. */
struct fo_daemon {
    struct fuse_session *se;
    int fuse_fd;
    struct fo_disk *disks;
    unsigned ndisks;
    bool file_mode;          /* the mountpoint is a file: the root inode is disks[0] */
    enum fo_cache cache;
    int verbose;
    uid_t uid;
    gid_t gid;
    struct timespec start;   /* all timestamps of the exposed files */
    unsigned nthreads;
    struct fo_thread **threads;
    int event_fd;            /* an eventfd the I/O threads write to wake the main thread */
    bool init_done;          /* atomic: FUSE_INIT processed */
    bool open_raw;           /* atomic: set at INIT, fo_open_raw_ok() for the kernel's version */
    bool unmounted;          /* atomic: the kernel ended the session (ENODEV) */
    unsigned drained;        /* atomic: threads that stopped receiving, nothing in flight */
    bool flushed;            /* atomic: the final flush of every disk completed */
    int flush_res;           /* atomic: its first error, or 0 */
};

/* ---- setup.c ---- */

/* Route GLib's and libfuse's messages through fo_emit (setup.c); call first. */
void fo_log_init(void);
/* Log an error: "layerfs: MESSAGE" on stderr, or to syslog once detached. */
void fo_err(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* Log a notice the same way (always shown). */
void fo_note(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* Log at info (level 1) or debug (2) when verbose >= level. */
void fo_log(int level, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
extern int fo_verbose;

/* Set the signal dispositions (see layerfs(1) SIGNALS) and return a signalfd for the
 * signals the main thread handles (blocked in every thread); exits 1 on failure. */
int fo_signals_setup(void);

/* Check that mnt exists, is a directory or (with exactly one disk) a regular file, and is
 * not already a mount; *abs = its absolute path. false and *errp otherwise. */
bool fo_check_mountpoint(const char *mnt, unsigned ndisks, bool *file_mode, char **abs,
                         GError **errp);

/* The pidfile we created, to remove at exit only if it is still ours. */
struct fo_pidfile {
    char *path;
    dev_t dev;
    ino_t ino;
};
/* Before mounting: refuse a live pidfile, remove a stale one of ours. false and *errp. */
bool fo_pidfile_check(const char *path, GError **errp);
/* Create (O_EXCL|O_NOFOLLOW) and write our pid. false and *errp. */
bool fo_pidfile_write(struct fo_pidfile *pf, const char *path, GError **errp);
/* Remove it if it is still the file we created. */
void fo_pidfile_remove(struct fo_pidfile *pf);

/* Fork; the parent waits for the child's status (fo_daemon_ready or fo_exit) and exits. */
void fo_daemonize(void);
/* Tell the waiting parent we serve (status 0); stdio to /dev/null, cwd to /. */
void fo_daemon_ready(void);
/* Exit with status, passing it to a waiting parent first. */
G_NORETURN void fo_exit(int status);

#define FO_DEMO_NAME "demo"
/* Add the built-in demo disk to cfg. false and *errp. */
bool fo_demo_config(struct lf_config *cfg, GError **errp);
/* Write the demo disk's recognisable pattern into its first MiB. false and *errp. */
bool fo_demo_fill(struct lf_disk *disk, GError **errp);

/* ---- ops.c ---- */

/* The low-level operations table. */
extern const struct fuse_lowlevel_ops fo_ops;
/* Reply to req with res (0 or -errno): the one place -errno becomes a FUSE reply. */
void fo_reply_err(fuse_req_t req, int res);

/* ---- io.c ---- */

/* One disk request in flight, from the receiving thread's pool. */
struct fo_io {
    struct fo_io *next;      /* pool free list */
    struct fo_thread *thr;
    fuse_req_t req;
    struct fo_disk *disk;
    struct iovec iov;
    void *buf;               /* read buffer (bc_buf_alloc), or the kept receive buffer */
    bool buf_is_rbuf;        /* buf is a receive buffer (a WRITE's payload) */
    uint64_t len;
};

/* Start threads: each creates its loop and watches the session fd. false and *errp. */
bool fo_threads_start(struct fo_daemon *d, GError **errp);
/* Ask every thread to stop receiving; each reports drained when nothing is in flight. */
void fo_threads_stop_receiving(struct fo_daemon *d);
/* Flush every disk from thread 0; d->flushed/flush_res report the result. */
void fo_threads_flush_all(struct fo_daemon *d);
/* Stop the loops and join the threads (nothing may be in flight). */
void fo_threads_join(struct fo_daemon *d);
/* Wake the main thread. */
void fo_notify_main(struct fo_daemon *d);

/* On an I/O thread: a request context for req on disk, counted as in flight. */
struct fo_io *fo_io_get(fuse_req_t req, struct fo_disk *disk);
/* Return io to its thread's pool, with any buffer it holds; ends "in flight". */
void fo_io_put(struct fo_io *io);
/* The receiving thread's loop. */
struct bc_loop *fo_io_loop(const struct fo_io *io);
/* A pooled page-aligned read buffer of at least len bytes for io (freed by fo_io_put). */
void *fo_io_read_buf(struct fo_io *io, uint64_t len);
/* Keep the receive buffer holding the request being processed until fo_io_put(io). */
void fo_io_keep_receive_buf(struct fo_io *io);

/* On an I/O thread, for the OPEN being processed: reply with open_flags (FOPEN_*) that
 * libfuse 3.14 cannot send.  false (nothing sent) if the request is not at hand or the
 * kernel does not know the flags. */
bool fo_reply_open_direct(fuse_req_t req, fuse_ino_t ino, uint64_t fh, uint32_t open_flags);

/* The FUSE minor version that added FOPEN_PARALLEL_DIRECT_WRITES. */
#define FO_MINOR_PARALLEL_DIRECT_WRITES 38

/* true if a kernel whose INIT said FUSE major.minor knows fo_reply_open_direct()'s flags. */
static inline bool fo_open_raw_ok(unsigned major, unsigned minor)
{
    return major == 7 && minor >= FO_MINOR_PARALLEL_DIRECT_WRITES;
}

/* ---- main.c ---- */

/* The disk behind inode ino, or NULL. */
struct fo_disk *fo_disk_of(struct fo_daemon *d, fuse_ino_t ino);

#endif
