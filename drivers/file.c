/* SPDX-License-Identifier: MIT */
/* The file driver: a regular file or a block device, I/O through the calling thread's
 * io_uring, O_DIRECT when asked for (alignment from statx, BLKSSZGET or probing). */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <liburing.h>

#include "drivers/drivers.h"
#include "drivers/util.h"

/*
 * Notes on the design
 *
 * State.  struct bc_file is immutable after open except for the two "answered
 * EOPNOTSUPP" flags, which are set atomically, so any number of loops share one file.
 * Each request keeps its progress in dreq->drv_scratch: [0] bytes transferred (read and
 * write) or the fallocate mode tried (write-zeroes), [1] the struct bc_file, [2] flags
 * of the request's phase; [3] belongs to bc_drv_complete_later().
 *
 * Short transfers.  A read that stops at or past the size the file had at open is at
 * EOF: the rest of the request reads as zeros (the end-of-device rule).  Any other short
 * transfer is resubmitted for the remainder without allocating: when the remainder
 * starts inside an iovec we transfer the rest of that one iovec, then continue with the
 * untouched tail of the caller's array.
 *
 * End of device.  A write may run past props.size up to the next req_align boundary; the
 * file then grows, and we truncate it back once the write completes.  Reads zero
 * everything past props.size, so a read racing with such a write never shows the bytes
 * that are about to be cut off.
 */

#ifndef BLOCK_URING_CMD_DISCARD
#define BLOCK_URING_CMD_DISCARD _IO(0x12, 0) /* linux/fs.h since 6.12 */
#endif

#define BC_FILE_MAX_TRANSFER (1u << 20)
#define BC_FILE_MAX_ALIGN (1u << 16)

struct bc_file {
    int fd;
    char *path;
    uint64_t size;      /* props.size: the size at open */
    uint32_t req_align;
    bool blockdev;
    bool read_only;
    int no_punch;       /* atomic: FALLOC_FL_PUNCH_HOLE answered -EOPNOTSUPP */
    int no_zero_range;  /* atomic: FALLOC_FL_ZERO_RANGE answered -EOPNOTSUPP */
};

enum {
    BC_FILE_PHASE_SYNC = 1, /* write-zeroes done, now the fdatasync for FUA */
};

static struct bc_dreq *bc_file_dreq(struct bc_uop *uop)
{
    return bc_container_of(uop, struct bc_dreq, uop);
}

static struct bc_file *bc_file_of(const struct bc_dreq *dreq)
{
    return (struct bc_file *)(uintptr_t)dreq->drv_scratch[1];
}

/* ---- read and write ---------------------------------------------------------------- */

static void bc_file_rw_done(struct bc_uop *uop, int res, unsigned cqe_flags);

/* Submit the part of dreq not transferred yet. */
static void bc_file_rw_issue(struct bc_file *f, struct bc_dreq *dreq)
{
    uint64_t done = dreq->drv_scratch[0];
    uint64_t skip = done;
    bool write = dreq->op == BC_OP_WRITE;
    struct io_uring_sqe *sqe;
    int i = 0;

    assert(done < dreq->len);
    while (i < dreq->iovcnt && skip >= dreq->iov[i].iov_len)
        skip -= dreq->iov[i++].iov_len;
    assert(i < dreq->iovcnt);

    dreq->uop.done = bc_file_rw_done;
    sqe = bc_loop_sqe(dreq->loop, &dreq->uop);
    if (skip || i == dreq->iovcnt - 1) {
        char *base = (char *)dreq->iov[i].iov_base + skip;
        unsigned n = (unsigned)(dreq->iov[i].iov_len - skip);

        if (write)
            io_uring_prep_write(sqe, f->fd, base, n, dreq->offset + done);
        else
            io_uring_prep_read(sqe, f->fd, base, n, dreq->offset + done);
    } else if (write) {
        io_uring_prep_writev(sqe, f->fd, &dreq->iov[i], (unsigned)(dreq->iovcnt - i),
                             dreq->offset + done);
    } else {
        io_uring_prep_readv(sqe, f->fd, &dreq->iov[i], (unsigned)(dreq->iovcnt - i),
                            dreq->offset + done);
    }
    if (write && (dreq->flags & BC_REQ_FUA))
        sqe->rw_flags = RWF_DSYNC;
}

/* Complete a read or write: zeros past the size for reads, the size restored after
 * writes that ran past it (whether or not they succeeded). */
static void bc_file_rw_finish(struct bc_file *f, struct bc_dreq *dreq, int res)
{
    if (dreq->offset + dreq->len > f->size) {
        if (dreq->op == BC_OP_READ) {
            uint64_t keep = dreq->offset < f->size ? f->size - dreq->offset : 0;

            if (res == 0)
                bc_iov_memset(dreq->iov, dreq->iovcnt, keep, 0, dreq->len - keep);
        } else if (!f->blockdev && ftruncate(f->fd, (off_t)f->size) < 0 && res == 0) {
            res = -errno;
        }
    }
    dreq->done(dreq, res);
}

static void bc_file_rw_done(struct bc_uop *uop, int res, unsigned cqe_flags)
{
    struct bc_dreq *dreq = bc_file_dreq(uop);
    struct bc_file *f = bc_file_of(dreq);
    uint64_t pos;

    if (res == -EAGAIN || res == -EINTR) {
        bc_file_rw_issue(f, dreq);
        return;
    }
    if (res < 0) {
        bc_file_rw_finish(f, dreq, res);
        return;
    }
    dreq->drv_scratch[0] += (unsigned)res;
    pos = dreq->offset + dreq->drv_scratch[0];
    if (dreq->drv_scratch[0] < dreq->len) {
        if (dreq->op == BC_OP_WRITE && res == 0) {
            bc_file_rw_finish(f, dreq, -EIO);
            return;
        }
        if (dreq->op == BC_OP_WRITE || (res > 0 && pos < f->size)) {
            bc_file_rw_issue(f, dreq);
            return;
        }
        /* A read at EOF: the rest reads as zeros. */
        bc_iov_memset(dreq->iov, dreq->iovcnt, dreq->drv_scratch[0], 0,
                      dreq->len - dreq->drv_scratch[0]);
    }
    bc_file_rw_finish(f, dreq, 0);
}

/* ---- flush, write-zeroes, discard -------------------------------------------------- */

static void bc_file_simple_done(struct bc_uop *uop, int res, unsigned cqe_flags)
{
    struct bc_dreq *dreq = bc_file_dreq(uop);

    dreq->done(dreq, res < 0 ? res : 0);
}

static void bc_file_flush(struct bc_file *f, struct bc_dreq *dreq)
{
    struct io_uring_sqe *sqe;

    dreq->uop.done = bc_file_simple_done;
    sqe = bc_loop_sqe(dreq->loop, &dreq->uop);
    io_uring_prep_fsync(sqe, f->fd, IORING_FSYNC_DATASYNC);
}

static void bc_file_zero_done(struct bc_uop *uop, int res, unsigned cqe_flags);

/* Issue fallocate for write-zeroes or discard with the first mode not known to fail;
 * false if there is none left. */
static bool bc_file_falloc(struct bc_file *f, struct bc_dreq *dreq)
{
    int mode, tried = (int)dreq->drv_scratch[0];
    bool punch = dreq->op == BC_OP_DISCARD || (dreq->flags & BC_REQ_MAY_UNMAP);
    struct io_uring_sqe *sqe;

    if (punch && !tried && !__atomic_load_n(&f->no_punch, __ATOMIC_RELAXED))
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    else if (dreq->op == BC_OP_WRITE_ZEROES && !(tried & FALLOC_FL_ZERO_RANGE) &&
             !__atomic_load_n(&f->no_zero_range, __ATOMIC_RELAXED))
        mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    else
        return false;

    dreq->drv_scratch[0] = (uint64_t)mode;
    dreq->uop.done = bc_file_zero_done;
    sqe = bc_loop_sqe(dreq->loop, &dreq->uop);
    io_uring_prep_fallocate(sqe, f->fd, mode, (off_t)dreq->offset, (off_t)dreq->len);
    return true;
}

/* Discard on a block device: a real discard (REQ_OP_DISCARD) through the block layer's
 * io_uring command; fallocate(PUNCH_HOLE) on a block device writes zeros instead. */
static void bc_file_bdev_discard(struct bc_file *f, struct bc_dreq *dreq)
{
    struct io_uring_sqe *sqe;

    dreq->drv_scratch[0] = 0;
    dreq->uop.done = bc_file_zero_done;
    sqe = bc_loop_sqe(dreq->loop, &dreq->uop);
    io_uring_prep_rw(IORING_OP_URING_CMD, sqe, f->fd, NULL, 0, 0);
    sqe->cmd_op = BLOCK_URING_CMD_DISCARD;
    sqe->addr = dreq->offset;
    sqe->addr3 = dreq->len;
}

static void bc_file_zero_done(struct bc_uop *uop, int res, unsigned cqe_flags)
{
    struct bc_dreq *dreq = bc_file_dreq(uop);
    struct bc_file *f = bc_file_of(dreq);
    int mode = (int)dreq->drv_scratch[0];

    if (dreq->drv_scratch[2] & BC_FILE_PHASE_SYNC) {
        dreq->done(dreq, res < 0 ? res : 0);
        return;
    }
    if (res == -EOPNOTSUPP || (res == -EINVAL && mode == 0)) {
        /* Remember, so that later requests go straight to what works. */
        if (mode & FALLOC_FL_PUNCH_HOLE)
            __atomic_store_n(&f->no_punch, 1, __ATOMIC_RELAXED);
        else if (mode & FALLOC_FL_ZERO_RANGE)
            __atomic_store_n(&f->no_zero_range, 1, __ATOMIC_RELAXED);
        if (mode && bc_file_falloc(f, dreq))
            return;
        dreq->done(dreq, -EOPNOTSUPP);
        return;
    }
    if (res == 0 && dreq->op == BC_OP_WRITE_ZEROES && (dreq->flags & BC_REQ_FUA)) {
        dreq->drv_scratch[2] |= BC_FILE_PHASE_SYNC;
        dreq->uop.done = bc_file_zero_done;
        io_uring_prep_fsync(bc_loop_sqe(dreq->loop, &dreq->uop), f->fd, IORING_FSYNC_DATASYNC);
        return;
    }
    dreq->done(dreq, res < 0 ? res : 0);
}

static void bc_file_submit(void *state, struct bc_dreq *dreq)
{
    struct bc_file *f = state;

    assert(dreq->offset % f->req_align == 0 && dreq->len % f->req_align == 0);
    dreq->drv_scratch[0] = 0;
    dreq->drv_scratch[1] = (uintptr_t)f;
    dreq->drv_scratch[2] = 0;
    if (f->read_only && dreq->op != BC_OP_READ && dreq->op != BC_OP_FLUSH) {
        bc_drv_complete_later(dreq, -EROFS);
        return;
    }

    switch (dreq->op) {
    case BC_OP_READ:
    case BC_OP_WRITE:
        if (dreq->len == 0) {
            bc_drv_complete_later(dreq, 0);
            return;
        }
        bc_file_rw_issue(f, dreq);
        return;
    case BC_OP_FLUSH:
        bc_file_flush(f, dreq);
        return;
    case BC_OP_DISCARD:
        if (f->blockdev) {
            bc_file_bdev_discard(f, dreq);
            return;
        }
        /* fall through */
    case BC_OP_WRITE_ZEROES:
        if (!bc_file_falloc(f, dreq))
            bc_drv_complete_later(dreq, -EOPNOTSUPP);
        return;
    }
    bc_drv_complete_later(dreq, -EINVAL);
}

/* ---- block status ------------------------------------------------------------------ */

static int bc_file_block_status(void *state, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    struct bc_file *f = state;
    off_t data, hole;

    *pnum = len;
    if (f->blockdev)
        return 1;
    data = lseek(f->fd, (off_t)offset, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO)
            return 0; /* no data from offset to EOF */
        if (errno == EINVAL || errno == EOPNOTSUPP)
            return 1; /* no SEEK_DATA: call it data */
        return -errno;
    }
    if ((uint64_t)data > offset) {
        *pnum = MIN((uint64_t)data - offset, len);
        return 0;
    }
    hole = lseek(f->fd, (off_t)offset, SEEK_HOLE);
    if (hole < 0)
        return errno == ENXIO ? 0 : -errno; /* ENXIO: truncated under us */
    if ((uint64_t)hole > offset)
        *pnum = MIN((uint64_t)hole - offset, len);
    return 1;
}

/* ---- open and close ---------------------------------------------------------------- */

/* Alignment for O_DIRECT: statx, then the block device's sector size, then probing. */
static bool bc_file_dio_align(const struct bc_open_args *args, int fd, bool blockdev,
                              uint32_t *req, uint32_t *mem, GError **errp)
{
    struct statx stx;
    int ssz;

    *req = *mem = 0;
#ifdef STATX_DIOALIGN
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align) {
        *req = stx.stx_dio_offset_align;
        *mem = stx.stx_dio_mem_align ? stx.stx_dio_mem_align : *req;
    }
#endif
    if (!*req && blockdev && ioctl(fd, BLKSSZGET, &ssz) == 0 && ssz > 0)
        *req = *mem = (uint32_t)ssz;
    if (!*req) {
        void *buf = aligned_alloc(4096, 4096);

        for (uint32_t sz = 512; sz <= 4096 && !*req; sz *= 2) {
            if (pread(fd, buf, sz, 0) >= 0)
                *req = *mem = sz;
            else if (errno != EINVAL)
                break;
        }
        free(buf);
        if (!*req) {
            g_set_error(errp, BC_ERROR, 0,
                        "%s: %s: cannot find the O_DIRECT alignment (reads of 512 to 4096 "
                        "bytes at offset 0 fail: %s)", bc_what(args), args->path,
                        g_strerror(errno));
            return false;
        }
    }
    if ((*req & (*req - 1)) || *req > BC_FILE_MAX_ALIGN || (*mem & (*mem - 1)) ||
        *mem > BC_FILE_MAX_ALIGN) {
        g_set_error(errp, BC_ERROR, 0, "%s: %s: unsupported O_DIRECT alignment (offset %u, "
                    "memory %u)", bc_what(args), args->path, *req, *mem);
        return false;
    }
    return true;
}

/* Discard granularity of a block device; 0 if it cannot discard. */
static uint32_t bc_file_bdev_discard_align(int fd, const struct stat *st, uint32_t req)
{
    g_autofree char *path = g_strdup_printf("/sys/dev/block/%u:%u/queue/discard_max_bytes",
                                            major(st->st_rdev), minor(st->st_rdev));
    g_autofree char *text = NULL;
    unsigned pbsz = 0;

    if (g_file_get_contents(path, &text, NULL, NULL) && g_ascii_strtoull(text, NULL, 10) == 0)
        return 0;
    if (ioctl(fd, BLKPBSZGET, &pbsz) < 0 || pbsz == 0 || (pbsz & (pbsz - 1)) ||
        pbsz > BC_FILE_MAX_ALIGN)
        pbsz = 0;
    return MAX(req, pbsz);
}

static const char *bc_file_type_name(mode_t mode)
{
    switch (mode & S_IFMT) {
    case S_IFDIR: return "directory";
    case S_IFCHR: return "character device";
    case S_IFIFO: return "FIFO";
    case S_IFSOCK: return "socket";
    case S_IFLNK: return "symbolic link";
    default: return "special file";
    }
}

static void bc_file_close(void *state)
{
    struct bc_file *f = state;

    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    g_free(f->path);
    g_free(f);
}

/* Open args->path, falling back to read-only and to buffered I/O where that helps. */
static int bc_file_do_open(const struct bc_open_args *args, bool regular, bool *ro,
                           bool *direct, GError **errp)
{
    struct statfs sfs;

    /* tmpfs accepts O_DIRECT since Linux 6.6 but still goes through its page cache:
     * the alignment would only cost read-modify-write cycles. */
    if (*direct && regular && statfs(args->path, &sfs) == 0 && sfs.f_type == TMPFS_MAGIC) {
        g_info("%s: %s: on tmpfs, using buffered I/O", bc_what(args), args->path);
        *direct = false;
    }
    for (;;) {
        int fd = open(args->path, (*ro ? O_RDONLY : O_RDWR) | O_CLOEXEC |
                      (*direct ? O_DIRECT : 0));
        int err = errno;

        if (fd >= 0)
            return fd;
        if (!*ro && (err == EACCES || err == EROFS || err == EPERM)) {
            g_message("%s: %s: opening read-only: %s", bc_what(args), args->path,
                      g_strerror(err));
            *ro = true;
        } else if (*direct && err == EINVAL) {
            g_warning("%s: %s: O_DIRECT is not supported here, using buffered I/O",
                      bc_what(args), args->path);
            *direct = false;
        } else {
            g_set_error(errp, BC_ERROR, 0, "%s: %s: cannot open: %s", bc_what(args),
                        args->path, g_strerror(err));
            return -1;
        }
    }
}

static void *bc_file_open(const struct bc_open_args *args, struct bc_props *props,
                          GError **errp)
{
    struct bc_file *f;
    struct stat st;
    bool ro = args->read_only, direct = args->direct;
    uint32_t req = 1, mem = 1, zero, discard;
    int ssz;

    if (!args->path || !*args->path) {
        g_set_error(errp, BC_ERROR, 0, "%s: the file driver needs a path", bc_what(args));
        return NULL;
    }
    if (stat(args->path, &st) < 0) {
        int err = errno;
        g_set_error(errp, BC_ERROR, 0, "%s: %s: %s", bc_what(args), args->path,
                    g_strerror(err));
        return NULL;
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        goto bad_type;

    f = g_new0(struct bc_file, 1);
    f->path = g_strdup(args->path);
    f->fd = bc_file_do_open(args, S_ISREG(st.st_mode), &ro, &direct, errp);
    if (f->fd < 0)
        goto fail;
    if (fstat(f->fd, &st) < 0) {
        g_set_error(errp, BC_ERROR, 0, "%s: %s: fstat: %s", bc_what(args), args->path,
                    g_strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        bc_file_close(f);
        goto bad_type;
    }
    if (!bc_drv_lock_fd(args, f->fd, errp))
        goto fail;
    f->blockdev = S_ISBLK(st.st_mode);
    f->read_only = ro;
    f->size = (uint64_t)st.st_size;
    if (f->blockdev && ioctl(f->fd, BLKGETSIZE64, &f->size) < 0) {
        g_set_error(errp, BC_ERROR, 0, "%s: %s: cannot get the device size (BLKGETSIZE64): %s",
                    bc_what(args), args->path, g_strerror(errno));
        goto fail;
    }
    if (direct && !bc_file_dio_align(args, f->fd, f->blockdev, &req, &mem, errp))
        goto fail;
    f->req_align = req;
    zero = req;
    /* fallocate and discard on a block device need whole logical blocks, even buffered. */
    if (f->blockdev && ioctl(f->fd, BLKSSZGET, &ssz) == 0 && ssz > 0 && !(ssz & (ssz - 1)))
        zero = MAX(req, (uint32_t)ssz);

    if (f->blockdev)
        discard = bc_file_bdev_discard_align(f->fd, &st, zero);
    else if (st.st_blksize > 0 && !(st.st_blksize & (st.st_blksize - 1)) &&
             st.st_blksize <= BC_FILE_MAX_ALIGN)
        discard = MAX(req, (uint32_t)st.st_blksize); /* punch whole fs blocks only */
    else
        discard = req;

    *props = (struct bc_props){
        .size = f->size,
        .req_align = req,
        .mem_align = mem,
        .max_transfer = BC_FILE_MAX_TRANSFER,
        .discard_align = discard,
        .zero_align = zero,
        .fua_native = true,
        .read_only = ro,
        .can_grow = false,
    };
    return f;

fail:
    bc_file_close(f);
    return NULL;
bad_type:
    g_set_error(errp, BC_ERROR, 0, "%s: %s: is a %s, not a regular file or block device",
                bc_what(args), args->path, bc_file_type_name(st.st_mode));
    return NULL;
}

const struct bc_driver bc_drv_file = {
    .name = "file",
    .keys = NULL,
    .needs_path = true,
    .open = bc_file_open,
    .close = bc_file_close,
    .submit = bc_file_submit,
    .block_status = bc_file_block_status,
};
