/* SPDX-License-Identifier: MIT */
/* The FUSE low-level operations: fo_<op> for each entry of the ops table.  Data requests
 * go to lf_disk_* and are replied to from their completion callbacks. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fuse.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "fuse/front.h"

static struct fo_daemon *daemon_of(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

void fo_reply_err(fuse_req_t req, int res)
{
    /* Only errno values the kernel passes on make sense; anything else becomes EIO. */
    if (res > 0 || res < -4095)
        res = -EIO;
    fuse_reply_err(req, -res);
}

static bool is_root_dir(const struct fo_daemon *d, fuse_ino_t ino)
{
    return !d->file_mode && ino == FUSE_ROOT_ID;
}

/* How long the kernel may keep attributes whose st_blocks lags completed writes. */
#define FO_STALE_ATTR_TIMEOUT 1.0

/* The attributes of the root or of a disk's file; returns how long the kernel may keep
 * them (short while st_blocks is behind the writes). */
static double fill_attr(const struct fo_daemon *d, fuse_ino_t ino, const struct fo_disk *disk,
                        struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_uid = d->uid;
    st->st_gid = d->gid;
    st->st_atim = st->st_mtim = st->st_ctim = d->start;
    if (disk == NULL) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
        st->st_blksize = 4096;
        return FO_ATTR_TIMEOUT;
    }
    st->st_mode = S_IFREG | (disk->read_only ? 0400 : 0600);
    st->st_nlink = 1;
    st->st_size = disk->size;
    st->st_blksize = disk->blksize;
    /* What the layers hold as data (cached in the disk; see lf_disk_allocated), so that
     * du(1) and qemu-img info show a mostly empty disk as such. */
    bool fresh;
    st->st_blocks = (lf_disk_allocated(disk->disk, &fresh) + 511) / 512;
    return fresh ? FO_ATTR_TIMEOUT : FO_STALE_ATTR_TIMEOUT;
}

/* ---- lifecycle ---------------------------------------------------------------------- */

static void fo_init(void *userdata, struct fuse_conn_info *conn)
{
    struct fo_daemon *d = userdata;

    conn->max_write = FO_MAX_IO;
    conn->max_readahead = d->cache == FO_CACHE_PAGE ? FO_MAX_IO : 0;
    /* The kernel default of 12 background requests caps async direct I/O concurrency. */
    conn->max_background = 128;
    conn->congestion_threshold = 96;
    if (conn->capable & FUSE_CAP_ASYNC_DIO)
        conn->want |= FUSE_CAP_ASYNC_DIO;
    if (conn->capable & FUSE_CAP_ASYNC_READ)
        conn->want |= FUSE_CAP_ASYNC_READ;
    /* O_TRUNC is ignored at open, as on a block device. */
    if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
        conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
    /* Receive into our own aligned buffers, never through a pipe. */
    conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
    /* Nobody else changes the data behind the kernel's back. */
    conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
    conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
    fo_log(1, "FUSE %u.%u, max_write %u, max_background %u", conn->proto_major,
           conn->proto_minor, conn->max_write, conn->max_background);
    __atomic_store_n(&d->open_raw, fo_open_raw_ok(conn->proto_major, conn->proto_minor),
                     __ATOMIC_RELEASE);
    __atomic_store_n(&d->init_done, true, __ATOMIC_RELEASE);
    fo_notify_main(d);
}

static void fo_destroy(void *userdata)
{
    fo_log(1, "session destroyed");
}

/* ---- names and attributes ----------------------------------------------------------- */

static void fo_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct fo_daemon *d = daemon_of(req);

    if (!is_root_dir(d, parent)) {
        fo_reply_err(req, -ENOTDIR);
        return;
    }
    for (unsigned i = 0; i < d->ndisks; i++) {
        struct fo_disk *disk = &d->disks[i];
        if (strcmp(disk->name, name) == 0) {
            struct fuse_entry_param e = {
                .ino = disk->ino,
                .generation = 1,
                .entry_timeout = FO_ATTR_TIMEOUT,
            };
            e.attr_timeout = fill_attr(d, disk->ino, disk, &e.attr);
            fuse_reply_entry(req, &e);
            return;
        }
    }
    fo_reply_err(req, -ENOENT);
}

static void fo_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    fuse_reply_none(req);
}

static void fo_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    fuse_reply_none(req);
}

static void fo_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct fo_daemon *d = daemon_of(req);
    struct fo_disk *disk = fo_disk_of(d, ino);
    struct stat st;

    if (disk == NULL && !is_root_dir(d, ino)) {
        fo_reply_err(req, -ENOENT);
        return;
    }
    double timeout = fill_attr(d, ino, disk, &st);
    fuse_reply_attr(req, &st, timeout);
}

/* The size is fixed; mode and owner cannot change; timestamps are accepted and ignored
 * (so that touch(1) works). */
static void fo_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    struct fo_daemon *d = daemon_of(req);
    struct fo_disk *disk = fo_disk_of(d, ino);
    struct stat st;

    if (disk == NULL && !is_root_dir(d, ino)) {
        fo_reply_err(req, -ENOENT);
        return;
    }
    double timeout = fill_attr(d, ino, disk, &st);
    if ((to_set & FUSE_SET_ATTR_MODE) && (attr->st_mode & 07777) != (st.st_mode & 07777)) {
        fo_reply_err(req, -EPERM);
        return;
    }
    if (((to_set & FUSE_SET_ATTR_UID) && attr->st_uid != st.st_uid) ||
        ((to_set & FUSE_SET_ATTR_GID) && attr->st_gid != st.st_gid)) {
        fo_reply_err(req, -EPERM);
        return;
    }
    if (to_set & FUSE_SET_ATTR_SIZE) {
        if (disk == NULL) {
            fo_reply_err(req, -EISDIR);
            return;
        }
        if ((uint64_t)attr->st_size != disk->size) {
            /* Like ftruncate(2) on a block device. */
            fo_reply_err(req, -EINVAL);
            return;
        }
    }
    fuse_reply_attr(req, &st, timeout);
}

static void fo_statfs(fuse_req_t req, fuse_ino_t ino)
{
    struct fo_daemon *d = daemon_of(req);
    struct statvfs sv = {
        .f_bsize = 4096,
        .f_frsize = 4096,
        .f_files = d->ndisks + (d->file_mode ? 0 : 1),
        .f_namemax = 255,
    };

    for (unsigned i = 0; i < d->ndisks; i++)
        sv.f_blocks += (d->disks[i].size + 4095) / 4096;
    fuse_reply_statfs(req, &sv);
}

/* ---- the directory ------------------------------------------------------------------ */

static void fo_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct fo_daemon *d = daemon_of(req);

    if (!is_root_dir(d, ino)) {
        fo_reply_err(req, fo_disk_of(d, ino) != NULL ? -ENOTDIR : -ENOENT);
        return;
    }
    fuse_reply_open(req, fi);
}

static void fo_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    struct fo_daemon *d = daemon_of(req);
    g_autofree char *buf = g_malloc(size);
    size_t pos = 0;

    if (!is_root_dir(d, ino)) {
        fo_reply_err(req, -ENOTDIR);
        return;
    }
    /* Entry e: 0 ".", 1 "..", 2 + i disk i; the offset of an entry is e + 1. */
    for (off_t e = off; e < 2 + (off_t)d->ndisks; e++) {
        struct stat st = { 0 };
        const char *name;
        if (e < 2) {
            name = e == 0 ? "." : "..";
            st.st_ino = FUSE_ROOT_ID;
            st.st_mode = S_IFDIR;
        } else {
            name = d->disks[e - 2].name;
            st.st_ino = d->disks[e - 2].ino;
            st.st_mode = S_IFREG;
        }
        size_t n = fuse_add_direntry(req, buf + pos, size - pos, name, &st, e + 1);
        if (n > size - pos)
            break;
        pos += n;
    }
    fuse_reply_buf(req, buf, pos);
}

static void fo_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fo_reply_err(req, 0);
}

static void fo_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
                        struct fuse_file_info *fi)
{
    fo_reply_err(req, 0);
}

/* The set of files is the configuration's: nothing is created, removed or renamed. */
static void fo_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    fo_reply_err(req, -EPERM);
}

static void fo_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                     dev_t rdev)
{
    fo_reply_err(req, -EPERM);
}

static void fo_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    fo_reply_err(req, -EPERM);
}

static void fo_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    fo_reply_err(req, -EPERM);
}

static void fo_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    fo_reply_err(req, -EPERM);
}

static void fo_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
                      fuse_ino_t newparent, const char *newname, unsigned int flags)
{
    fo_reply_err(req, -EPERM);
}

/* ---- files -------------------------------------------------------------------------- */

static void fo_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct fo_daemon *d = daemon_of(req);
    struct fo_disk *disk = fo_disk_of(d, ino);

    if (disk == NULL) {
        fo_reply_err(req, is_root_dir(d, ino) ? -EISDIR : -ENOENT);
        return;
    }
    if ((fi->flags & O_ACCMODE) != O_RDONLY && disk->read_only) {
        fo_reply_err(req, -EROFS);
        return;
    }
    fi->direct_io = d->cache == FO_CACHE_DIRECT;
    fi->keep_cache = d->cache == FO_CACHE_PAGE;
    fi->noflush = 1;
    fi->fh = disk - d->disks;
    /* Writers of one file need not wait for each other: blockcore orders overlapping
     * writes itself. */
    if (fi->direct_io && fo_reply_open_direct(req, ino, fi->fh, FOPEN_DIRECT_IO | FOPEN_NOFLUSH |
                                              FOPEN_PARALLEL_DIRECT_WRITES))
        return;
    fuse_reply_open(req, fi);
}

static void read_done(void *opaque, int res)
{
    struct fo_io *io = opaque;

    if (res < 0)
        fo_reply_err(io->req, res);
    else
        fuse_reply_buf(io->req, io->iov.iov_base, io->len);
    fo_io_put(io);
}

static void fo_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    struct fo_daemon *d = daemon_of(req);
    struct fo_disk *disk = fo_disk_of(d, ino);

    if (disk == NULL) {
        fo_reply_err(req, -EBADF);
        return;
    }
    if (off < 0) {
        fo_reply_err(req, -EINVAL);
        return;
    }
    if ((uint64_t)off >= disk->size || size == 0) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if (size > FO_MAX_IO)
        size = FO_MAX_IO;
    struct fo_io *io = fo_io_get(req, disk);
    io->len = MIN((uint64_t)size, disk->size - off);
    io->iov.iov_base = fo_io_read_buf(io, io->len);
    io->iov.iov_len = io->len;
    lf_disk_readv(disk->disk, fo_io_loop(io), &io->iov, 1, off, read_done, io);
}

static void write_done(void *opaque, int res)
{
    struct fo_io *io = opaque;

    if (res < 0)
        fo_reply_err(io->req, res);
    else
        fuse_reply_write(io->req, io->len);
    fo_io_put(io);
}

static void fo_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    struct fo_daemon *d = daemon_of(req);
    struct fo_disk *disk = fo_disk_of(d, ino);

    if (disk == NULL) {
        fo_reply_err(req, -EBADF);
        return;
    }
    if (disk->read_only) {
        fo_reply_err(req, -EROFS);
        return;
    }
    if (off < 0) {
        fo_reply_err(req, -EINVAL);
        return;
    }
    /* Nothing fits past the end; a write that crosses it is short, like a block device's,
     * and the next one gets ENOSPC. */
    if ((uint64_t)off >= disk->size) {
        fo_reply_err(req, size == 0 ? 0 : -ENOSPC);
        return;
    }
    if (((uintptr_t)buf & 4095) != 0 && size >= 4096) {
        static bool said;
        if (!__atomic_exchange_n(&said, true, __ATOMIC_RELAXED))
            fo_log(1, "WRITE payload is not page-aligned (%p): O_DIRECT will bounce", buf);
    }
    struct fo_io *io = fo_io_get(req, disk);
    io->len = MIN((uint64_t)size, disk->size - off);
    io->iov.iov_base = (void *)buf;
    io->iov.iov_len = io->len;
    fo_io_keep_receive_buf(io);
    unsigned flags = (fi->flags & O_DSYNC) ? BC_REQ_FUA : 0;
    lf_disk_writev(disk->disk, fo_io_loop(io), &io->iov, 1, off, flags, write_done, io);
}

static void status_done(void *opaque, int res)
{
    struct fo_io *io = opaque;

    fo_reply_err(io->req, res < 0 ? res : 0);
    fo_io_put(io);
}

static void fo_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    struct fo_daemon *d = daemon_of(req);
    struct fo_disk *disk = fo_disk_of(d, ino);

    if (disk == NULL) {
        fo_reply_err(req, -EBADF);
        return;
    }
    struct fo_io *io = fo_io_get(req, disk);
    lf_disk_flush(disk->disk, fo_io_loop(io), status_done, io);
}

static void fo_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fo_reply_err(req, 0);
}

static void fo_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fo_reply_err(req, 0);
}

static void fo_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                         struct fuse_file_info *fi)
{
    struct fo_daemon *d = daemon_of(req);
    struct fo_disk *disk = fo_disk_of(d, ino);
    unsigned flags;

    if (disk == NULL) {
        fo_reply_err(req, -EBADF);
        return;
    }
    if (off < 0 || len <= 0) {
        fo_reply_err(req, -EINVAL);
        return;
    }
    uint64_t end = (uint64_t)off + (uint64_t)len;
    if (mode == 0) {
        /* Every byte below the size already exists. */
        fo_reply_err(req, end <= disk->size ? 0 : -EOPNOTSUPP);
        return;
    }
    if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
        flags = BC_REQ_MAY_UNMAP;
    } else if (mode == FALLOC_FL_ZERO_RANGE || mode == (FALLOC_FL_ZERO_RANGE |
                                                        FALLOC_FL_KEEP_SIZE)) {
        flags = 0;
        if (!(mode & FALLOC_FL_KEEP_SIZE) && end > disk->size) {
            fo_reply_err(req, -ENOSPC);
            return;
        }
    } else {
        fo_reply_err(req, -EOPNOTSUPP);
        return;
    }
    if (disk->read_only) {
        fo_reply_err(req, -EROFS);
        return;
    }
    /* With KEEP_SIZE the part past the end is nothing to do. */
    end = MIN(end, disk->size);
    if ((uint64_t)off >= end) {
        fo_reply_err(req, 0);
        return;
    }
    struct fo_io *io = fo_io_get(req, disk);
    lf_disk_write_zeroes(disk->disk, fo_io_loop(io), off, end - off, flags, status_done, io);
}

/* SEEK_DATA/SEEK_HOLE from the disk's block status; the kernel does the other kinds. */
static int seek_data_hole(struct fo_disk *disk, uint64_t pos, int whence, uint64_t *out)
{
    if (pos >= disk->size)
        return -ENXIO;
    while (pos < disk->size) {
        uint64_t pnum = 0;
        int r = lf_disk_block_status(disk->disk, pos, disk->size - pos, &pnum);
        if (r < 0)
            return r;
        if ((whence == SEEK_DATA && r == 1) || (whence == SEEK_HOLE && r == 0)) {
            *out = pos;
            return 0;
        }
        if (pnum == 0)
            return -EIO;
        pos += pnum;
    }
    if (whence == SEEK_DATA)
        return -ENXIO;
    *out = disk->size; /* the end counts as a hole */
    return 0;
}

static void fo_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                     struct fuse_file_info *fi)
{
    struct fo_daemon *d = daemon_of(req);
    struct fo_disk *disk = fo_disk_of(d, ino);
    uint64_t pos;

    if (disk == NULL) {
        fo_reply_err(req, -EBADF);
        return;
    }
    if (whence != SEEK_DATA && whence != SEEK_HOLE) {
        fo_reply_err(req, -EINVAL);
        return;
    }
    if (off < 0) {
        fo_reply_err(req, -ENXIO);
        return;
    }
    int r = seek_data_hole(disk, off, whence, &pos);
    if (r < 0)
        fo_reply_err(req, r);
    else
        fuse_reply_lseek(req, pos);
}

const struct fuse_lowlevel_ops fo_ops = {
    .init = fo_init,
    .destroy = fo_destroy,
    .lookup = fo_lookup,
    .forget = fo_forget,
    .forget_multi = fo_forget_multi,
    .getattr = fo_getattr,
    .setattr = fo_setattr,
    .statfs = fo_statfs,
    .opendir = fo_opendir,
    .readdir = fo_readdir,
    .releasedir = fo_releasedir,
    .create = fo_create,
    .mknod = fo_mknod,
    .mkdir = fo_mkdir,
    .unlink = fo_unlink,
    .rmdir = fo_rmdir,
    .rename = fo_rename,
    .fsyncdir = fo_fsyncdir,
    .open = fo_open,
    .read = fo_read,
    .write = fo_write,
    .flush = fo_flush,
    .release = fo_release,
    .fsync = fo_fsync,
    .fallocate = fo_fallocate,
    .lseek = fo_lseek,
};
