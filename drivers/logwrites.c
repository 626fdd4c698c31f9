/* SPDX-License-Identifier: MIT */
/* The logwrites driver (tests only): the file driver at path, plus a log of the device's
 * contents at open and of every write, write-zeroes, discard and flush in completion
 * order, from which the power-cut replay rebuilds any state a power cut could leave. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "drivers/drivers.h"
#include "drivers/logwrites.h"
#include "drivers/util.h"

/*
 * Notes on the design
 *
 * Like Linux's dm-log-writes: requests pass to the file driver unchanged, and each one the
 * file driver completes successfully is appended to the log (the key log, a new file)
 * before it is completed to the layer above; flushes are logged as well when they are
 * submitted (drivers/logwrites.h has the layout and the meaning of each record).  So the
 * log holds the order a power cut cares about: a write logged before a flush's LW_FLUSH
 * completed before that flush was issued and is durable once its LW_FLUSH_DONE is logged;
 * writes logged after may or may not have reached the medium, in any subset.  The driver
 * reports no native FUA, so the engine turns a FUA write into a write and a flush.
 *
 * The log is appended with pwrite at lw->end under lw->lock, which also keeps seq: loops
 * on several threads complete requests at once.  A log write that fails fails its request
 * with EIO, and so does every write and flush after it (the log would no longer tell the
 * truth); reads go on.
 */

#define LW_RUN (1u << 20)   /* bytes of initial contents per record */

struct bc_lw {
    void *inner;            /* the file driver's state */
    GMutex lock;            /* protects everything below */
    int fd;                 /* the log */
    uint64_t end;           /* where the next record goes */
    uint64_t seq;           /* the last record's seq */
    bool broken;            /* a log write failed */
};

/* One request on its way through the file driver. */
struct lw_req {
    struct bc_dreq inner;
    struct bc_dreq *outer;
    struct bc_lw *lw;
    uint64_t flush_seq;     /* a flush: the seq of its LW_FLUSH */
};

static void lw_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void lw_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Write iov fully at lw->end; 0 or -errno.  Called with lw->lock held. */
static int lw_pwritev_all(struct bc_lw *lw, struct iovec *iov, int iovcnt)
{
    uint64_t off = lw->end;

    while (iovcnt > 0) {
        ssize_t n = pwritev(lw->fd, iov, MIN(iovcnt, 1024), (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        off += (uint64_t)n;
        while (iovcnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    lw->end = off;
    return 0;
}

/* Append a record with the data in iov (NULL for none); returns its seq, or 0 when the
 * log cannot be written (the log is then broken for good). */
static uint64_t lw_append(struct bc_lw *lw, enum lw_type type, uint64_t offset, uint64_t len,
                          const struct iovec *data, int datacnt)
{
    uint8_t hdr[LW_REC_SIZE] = { 0 };
    struct iovec *v = g_new(struct iovec, (size_t)datacnt + 1);
    uint64_t seq = 0;

    v[0] = (struct iovec){ hdr, sizeof(hdr) };
    if (datacnt > 0)
        memcpy(v + 1, data, sizeof(*data) * (size_t)datacnt);
    g_mutex_lock(&lw->lock);
    if (!lw->broken) {
        lw_put32(hdr, type);
        lw_put64(hdr + 8, lw->seq + 1);
        lw_put64(hdr + 16, offset);
        lw_put64(hdr + 24, len);
        if (lw_pwritev_all(lw, v, datacnt + 1) == 0)
            seq = ++lw->seq;
        else
            lw->broken = true;
    }
    g_mutex_unlock(&lw->lock);
    g_free(v);
    return seq;
}

static void lw_done(struct bc_dreq *d, int res)
{
    struct lw_req *r = bc_container_of(d, struct lw_req, inner);
    struct bc_dreq *outer = r->outer;
    struct bc_lw *lw = r->lw;
    uint64_t logged = 1;    /* the record's seq; 0 if the log could not be written */

    if (res == 0) {
        switch (d->op) {
        case BC_OP_WRITE:
            logged = lw_append(lw, LW_WRITE, d->offset, d->len, d->iov, d->iovcnt);
            break;
        case BC_OP_WRITE_ZEROES:
            logged = lw_append(lw, LW_ZERO, d->offset, d->len, NULL, 0);
            break;
        case BC_OP_DISCARD:
            logged = lw_append(lw, LW_DISCARD, d->offset, d->len, NULL, 0);
            break;
        case BC_OP_FLUSH:
            logged = lw_append(lw, LW_FLUSH_DONE, r->flush_seq, 0, NULL, 0);
            break;
        case BC_OP_READ:
            break;
        }
    }
    g_free(r);
    outer->done(outer, res == 0 && logged == 0 ? -EIO : res);
}

static void bc_drv_lw_submit(void *state, struct bc_dreq *dreq)
{
    struct bc_lw *lw = state;
    struct lw_req *r = g_new0(struct lw_req, 1);

    r->outer = dreq;
    r->lw = lw;
    r->inner = (struct bc_dreq){
        .loop = dreq->loop,
        .op = dreq->op,
        .flags = dreq->flags,
        .offset = dreq->offset,
        .len = dreq->len,
        .iov = dreq->iov,
        .iovcnt = dreq->iovcnt,
        .done = lw_done,
    };
    if (dreq->op == BC_OP_FLUSH && (r->flush_seq = lw_append(lw, LW_FLUSH, 0, 0, NULL, 0)) == 0) {
        g_free(r);
        bc_drv_complete_later(dreq, -EIO);
        return;
    }
    bc_drv_file.submit(lw->inner, &r->inner);
}

static int bc_drv_lw_block_status(void *state, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    struct bc_lw *lw = state;

    return bc_drv_file.block_status(lw->inner, offset, len, pnum);
}

/* Log the file's contents, its data extents as LW_INIT records, and the log's header. */
static bool lw_snapshot(struct bc_lw *lw, const struct bc_open_args *args,
                        const struct bc_props *props, GError **errp)
{
    uint8_t hdr[LW_HDR_SIZE] = { 0 };
    struct iovec v = { hdr, sizeof(hdr) };
    int fd = open(args->path, O_RDONLY | O_CLOEXEC);
    uint8_t *buf = g_malloc(LW_RUN);
    int err = 0;

    memcpy(hdr, LW_MAGIC, 8);
    lw_put32(hdr + 8, LW_VERSION);
    lw_put32(hdr + 12, LW_REC_SIZE);
    lw_put64(hdr + 16, props->size);
    lw_put32(hdr + 24, props->req_align);
    if (fd < 0)
        err = errno;
    else
        err = -lw_pwritev_all(lw, &v, 1);
    for (uint64_t off = 0; err == 0 && off < props->size;) {
        off_t d = lseek(fd, (off_t)off, SEEK_DATA);
        if (d < 0 && errno == ENXIO)
            break;
        if (d >= 0)     /* no SEEK_DATA (a block device): every byte is data */
            off = (uint64_t)d;
        if (off >= props->size)
            break;
        ssize_t n = pread(fd, buf, MIN(LW_RUN, props->size - off), (off_t)off);
        if (n <= 0) {
            err = n < 0 ? errno : EIO;
            break;
        }
        struct iovec data = { buf, (size_t)n };
        if (lw_append(lw, LW_INIT, off, (uint64_t)n, &data, 1) == 0)
            err = EIO;
        off += (uint64_t)n;
    }
    if (fd >= 0)
        close(fd);
    g_free(buf);
    if (err != 0)
        g_set_error(errp, BC_ERROR, 0, "%s: %s: cannot log the contents at open: %s",
                    bc_what(args), args->path, g_strerror(err));
    return err == 0;
}

static void bc_drv_lw_close(void *state)
{
    struct bc_lw *lw = state;

    if (lw->inner != NULL)
        bc_drv_file.close(lw->inner);
    if (lw->fd >= 0) {
        if (fsync(lw->fd) < 0)
            g_warning("logwrites: cannot fsync the log: %s", g_strerror(errno));
        close(lw->fd);
    }
    g_mutex_clear(&lw->lock);
    g_free(lw);
}

static void *bc_drv_lw_open(const struct bc_open_args *args, struct bc_props *props,
                            GError **errp)
{
    const char *log = bc_opt(args, "log");

    if (log == NULL || *log == '\0') {
        g_set_error(errp, BC_ERROR, 0, "%s:log: a value is required (the log file to create)",
                    bc_what(args));
        return NULL;
    }
    struct bc_lw *lw = g_new0(struct bc_lw, 1);
    g_mutex_init(&lw->lock);
    lw->fd = open(log, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (lw->fd < 0) {
        g_set_error(errp, BC_ERROR, 0, "%s:log: %s: cannot create: %s", bc_what(args), log,
                    g_strerror(errno));
        bc_drv_lw_close(lw);
        return NULL;
    }
    lw->inner = bc_drv_file.open(args, props, errp);
    if (lw->inner == NULL || !lw_snapshot(lw, args, props, errp)) {
        bc_drv_lw_close(lw);
        unlink(log);
        return NULL;
    }
    props->fua_native = false;  /* the engine makes FUA a write and a flush */
    return lw;
}

static const char *const bc_drv_lw_keys[] = { "log", NULL };

const struct bc_driver bc_drv_logwrites = {
    .name = "logwrites",
    .keys = bc_drv_lw_keys,
    .needs_path = true,
    .open = bc_drv_lw_open,
    .close = bc_drv_lw_close,
    .submit = bc_drv_lw_submit,
    .block_status = bc_drv_lw_block_status,
};
