/* SPDX-License-Identifier: MIT */
/* The power-cut replay behind t/2035-layers-powercut-replay.t: a random workload through
 * lf_disk_* over the logwrites driver, then every state a power cut could leave rebuilt
 * from the log, opened through the layers and checked against what was acknowledged.
 *
 *   powercut FORMAT BLOCK-SIZE DIR SEED
 *
 * FORMAT is the top layer's format: one that can create its image sits over a read-only
 * raw base with data and holes, any other is a lone layer over a file with that data.
 * BLOCK-SIZE is the block-size key (0: none).  DIR must be empty; it keeps the images and
 * the log.  LAYERFS_POWERCUT_OPS (default 300) workload operations,
 * LAYERFS_POWERCUT_TRIALS (default 4) random subsets per flush, LAYERFS_POWERCUT_SIZE
 * (default 4M) the disk size, LAYERFS_POWERCUT_TEAR (default 4096, 0 = off) the unit in
 * which a write may be torn.  Exit 0 if every state passed, 1 (and a message naming the
 * seed, the flush and the subset) if not, 2 on a usage or setup error. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "drivers/logwrites.h"
#include "layers/layer.h"
#include "t/unit/layers-test.h"

/*
 * Notes on the design
 *
 * The workload runs batches of one to four operations at once on one loop (writes at any
 * offset and length, some FUA; zeroing, some with unmap; discards; flushes), the operations
 * of a batch on disjoint bytes so their order does not matter.  The byte a write with
 * id i puts at offset o is val(i, o), never zero, so the model needs no copy of the data:
 * an op list, and the acknowledgements -- a flush acknowledges every operation of earlier
 * batches (they completed before it was issued), a FUA write itself -- each with the log's
 * length when it came.
 *
 * The log says which states a power cut can leave.  Cut the power right after a record
 * that is an LW_FLUSH_DONE or that an acknowledgement followed: every record before the
 * LW_FLUSH of the latest flush done by then is durable; the records after it, up to the
 * next LW_FLUSH_DONE, each may or may not have reached the medium (and a
 * write may be torn, in LAYERFS_POWERCUT_TEAR units; a discard reads as before or as
 * zeros).  Records after the next LW_FLUSH_DONE are left out: the layer may have issued
 * them only because that flush completed.  Each state is built as a file, checked with the
 * format's offline check (layerfs-img check's, for overlays), opened read-only through
 * lf_disk_open() over the same lower layers, and read whole: every byte must be what the
 * acknowledgements logged by then require, unless an operation not yet acknowledged (and
 * issued before the state's last record) wrote it -- then it may be that value instead.
 * A discarded byte may read as zero until it is written again.
 */

#define PC_MAX_BATCH 4
#define PC_ZOK 0x80000000u     /* model: the byte may also read as zero (a discard) */

enum pc_kind { PC_WRITE, PC_ZERO, PC_DISCARD, PC_FLUSH };

struct pc_op {
    enum pc_kind kind;
    unsigned flags;
    uint64_t off, len;
    uint64_t start_pos;     /* the log's length when it was issued */
};

struct pc_ack {
    uint64_t pos;           /* the log's length when it completed */
    uint32_t upto;          /* operations [0, upto) are acknowledged */
    int64_t fua;            /* or just this one (a FUA write), or -1 */
};

struct pc_span {
    uint64_t off, len;
};

struct pc_rec {
    enum lw_type type;
    uint64_t seq, off, len;
    const uint8_t *data;    /* LW_INIT, LW_WRITE: in the mapped log */
    uint64_t end;           /* the log offset just past the record */
};

/* One format the replay knows: its offline check of an image, if it has one. */
struct pc_format {
    const char *name;
    bool (*check)(const char *path, GString *why);
};

struct pc {
    const char *format;
    const struct pc_format *fmt;
    uint32_t bs;
    char *dir, *base, *top, *log, *img;
    guint32 seed;
    uint64_t size;          /* the disk */
    unsigned nops, trials;
    uint32_t tear;
    bool over_base;
    GArray *ops;            /* struct pc_op */
    GArray *acks;           /* struct pc_ack */
    /* The replay. */
    GArray *recs;           /* struct pc_rec */
    uint64_t dev_size;      /* the logged device */
    uint8_t *durable;       /* the device as of the durable records */
    int img_fd;
    uint8_t *want;          /* the model: what the acknowledged operations require */
    uint32_t *wid;          /* op index + 1 that set want[o] (0: the initial data) | PC_ZOK */
    uint8_t *got;
    uint8_t *bad;           /* pc_verify's scratch: 1 = a byte not yet explained */
    unsigned failures;
};

/* ---- data ------------------------------------------------------------------------ */

/* The byte write id puts at offset o (id 0: the initial data); never zero. */
static inline uint8_t pc_val(uint32_t id, uint64_t o)
{
    uint64_t x = (o ^ ((uint64_t)id << 40)) * 0x9E3779B97F4A7C15ull;
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 32;
    return (uint8_t)(x | 1);
}

/* The initial data: 256 KiB regions, every third a hole. */
static inline uint8_t pc_initial(uint64_t o)
{
    return (o >> 18) % 3 == 1 ? 0 : pc_val(0, o);
}

static void pc_make_initial(const char *path, uint64_t size)
{
    g_autofree uint8_t *buf = g_malloc(size);

    for (uint64_t o = 0; o < size; o++)
        buf[o] = pc_initial(o);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
        g_error("%s: %s", path, g_strerror(errno));
    for (uint64_t o = 0; o < size; o += 1u << 18)
        if (buf[o] != 0 && pwrite(fd, buf + o, MIN(1u << 18, size - o), (off_t)o) < 0)
            g_error("%s: %s", path, g_strerror(errno));
    close(fd);
}

/* ---- formats ------------------------------------------------------------------------ */

/* What layerfs-img check calls a problem (a dirty flag alone is not one). */
static bool pc_check_overlay(const char *path, GString *why)
{
    struct lf_img_check c;
    g_autoptr(GError) err = NULL;

    if (!lf_img_check(path, false, &c, &err)) {
        g_string_append(why, err->message);
        return false;
    }
    if (c.file_size < c.want_size)
        g_string_append_printf(why, "truncated: the data region ends at %" PRIu64
                               " but the file is %" PRIu64 " bytes", c.want_size, c.file_size);
    if (c.bitmap_problem != NULL)
        g_string_append(why, c.bitmap_problem);
    g_free(c.bitmap_problem);
    return why->len == 0;
}

/* Formats with an offline check; any other format is checked by opening and reading it. */
static const struct pc_format pc_formats[] = {
    { "overlay", pc_check_overlay },
};

/* ---- the workload ------------------------------------------------------------------- */

struct pc_io {
    struct pc *pc;
    unsigned *pending;
    int res;
    uint64_t end_pos;       /* the log's length when it completed */
    uint8_t *buf;
    struct iovec iov;       /* a write's, alive until it completes */
};

static uint64_t pc_log_len(struct pc *pc)
{
    struct stat st;

    if (stat(pc->log, &st) < 0)
        g_error("%s: %s", pc->log, g_strerror(errno));
    return (uint64_t)st.st_size;
}

static void pc_io_cb(void *opaque, int res)
{
    struct pc_io *io = opaque;

    io->res = res;
    io->end_pos = pc_log_len(io->pc);
    --*io->pending;
}

static struct lf_disk_cfg *pc_disk_cfg(struct pc *pc, bool workload)
{
    const char *path = workload ? pc->top : pc->img;
    struct lf_layer_cfg *top = lt_layer("top", pc->format, workload ? "logwrites" : "file",
                                        path);

    top->direct = workload;     /* as configured by default; the states are read buffered */
    if (workload) {
        lt_opt(top, "log", pc->log);
        top->create = pc->over_base;
    }
    top->block_size = pc->bs;
    if (!pc->over_base)
        return lt_disk("d", false, top, NULL);
    struct lf_layer_cfg *base = lt_layer("base", "raw", "file", pc->base);
    base->read_only = true;
    base->direct = false;
    return lt_disk("d", false, top, base, NULL);
}

/* A random range inside the disk: sometimes tiny, sometimes blocks, sometimes aligned. */
static void pc_range(struct pc *pc, GRand *r, uint64_t *off, uint64_t *len)
{
    uint64_t unit = pc->bs ? pc->bs : 4096;
    uint64_t l;

    switch (g_rand_int_range(r, 0, 4)) {
    case 0:
        l = (uint64_t)g_rand_int_range(r, 1, 600);
        break;
    case 1:
        l = (uint64_t)g_rand_int_range(r, 1, (gint32)MIN(unit * 2, 1u << 20) + 1);
        break;
    case 2:
        l = unit * (uint64_t)g_rand_int_range(r, 1, 4);
        break;
    default:
        l = (uint64_t)g_rand_int_range(r, 1, 256 << 10);
        break;
    }
    l = MIN(l, pc->size);
    uint64_t o = (uint64_t)g_rand_double_range(r, 0, (double)(pc->size - l + 1));
    if (g_rand_boolean(r))
        o = MIN(o / unit * unit, pc->size - l);
    *off = MIN(o, pc->size - l);
    *len = l;
}

static bool pc_overlaps(const struct pc_op *a, const struct pc_op *b)
{
    return a->off < b->off + b->len && b->off < a->off + a->len;
}

/* Run the workload; false (with a message) if the disk failed. */
static bool pc_workload(struct pc *pc)
{
    g_autoptr(GError) err = NULL;
    struct lf_disk_cfg *cfg = pc_disk_cfg(pc, true);
    struct lf_disk *d = lf_disk_open(cfg, false, &err);
    GRand *r = g_rand_new_with_seed(pc->seed);
    struct bc_loop *loop = bc_loop_new(0, 256, &err);
    bool ok = true;

    if (d == NULL || loop == NULL) {
        fprintf(stderr, "powercut: %s\n", err->message);
        exit(2);
    }
    pc->size = MIN(pc->size, lf_disk_size(d));
    for (unsigned done = 0; done < pc->nops && ok;) {
        unsigned n = (unsigned)g_rand_int_range(r, 1, PC_MAX_BATCH + 1), nb = 0;
        uint32_t first = pc->ops->len;
        struct pc_io io[PC_MAX_BATCH] = { 0 };
        unsigned pending = 0;
        bool flush = false;

        for (unsigned i = 0; i < n; i++) {
            struct pc_op op = { .start_pos = pc_log_len(pc) };
            int k = g_rand_int_range(r, 0, 100);
            op.kind = k < 55 ? PC_WRITE : k < 65 ? PC_ZERO : k < 72 ? PC_DISCARD : PC_FLUSH;
            if (op.kind == PC_FLUSH && flush)
                continue;
            if (op.kind == PC_FLUSH) {
                flush = true;
            } else {
                bool clash = true;
                for (int t = 0; t < 8 && clash; t++) {
                    pc_range(pc, r, &op.off, &op.len);
                    clash = false;
                    for (uint32_t j = first; j < pc->ops->len; j++)
                        clash |= pc_overlaps(&op, &g_array_index(pc->ops, struct pc_op, j));
                }
                if (clash)
                    continue;
                if (op.kind == PC_WRITE && g_rand_int_range(r, 0, 10) == 0)
                    op.flags = BC_REQ_FUA;
                if (op.kind == PC_ZERO && g_rand_boolean(r))
                    op.flags = BC_REQ_MAY_UNMAP;
            }
            g_array_append_val(pc->ops, op);
        }
        nb = pc->ops->len - first;
        for (unsigned i = 0; i < nb; i++) {
            struct pc_op *op = &g_array_index(pc->ops, struct pc_op, first + i);
            struct pc_io *x = &io[i];
            uint32_t id = first + i + 1;

            *x = (struct pc_io){ .pc = pc, .pending = &pending };
            pending++;
            switch (op->kind) {
            case PC_WRITE: {
                x->buf = g_malloc(op->len);
                for (uint64_t b = 0; b < op->len; b++)
                    x->buf[b] = pc_val(id, op->off + b);
                x->iov = (struct iovec){ x->buf, op->len };
                lf_disk_writev(d, loop, &x->iov, 1, op->off, op->flags, pc_io_cb, x);
                break;
            }
            case PC_ZERO:
                lf_disk_write_zeroes(d, loop, op->off, op->len, op->flags, pc_io_cb, x);
                break;
            case PC_DISCARD:
                lf_disk_discard(d, loop, op->off, op->len, pc_io_cb, x);
                break;
            case PC_FLUSH:
                lf_disk_flush(d, loop, pc_io_cb, x);
                break;
            }
        }
        if (bc_loop_wait(loop, &pending) < 0)
            g_error("powercut: the loop failed");
        for (unsigned i = 0; i < nb; i++) {
            const struct pc_op *op = &g_array_index(pc->ops, struct pc_op, first + i);
            g_free(io[i].buf);
            if (io[i].res < 0) {
                fprintf(stderr, "powercut: seed %u: operation %u failed: %s\n", pc->seed,
                        first + i, g_strerror(-io[i].res));
                ok = false;
            } else if (op->kind == PC_FLUSH) {
                /* It was issued after every earlier batch completed. */
                struct pc_ack a = { io[i].end_pos, first, -1 };
                g_array_append_val(pc->acks, a);
            } else if (op->flags & BC_REQ_FUA) {
                struct pc_ack a = { io[i].end_pos, 0, first + i };
                g_array_append_val(pc->acks, a);
            }
        }
        done += nb;
    }
    /* A clean close: flushed, so everything is acknowledged. */
    int r2 = lf_disk_close(d);
    if (r2 < 0) {
        fprintf(stderr, "powercut: seed %u: close: %s\n", pc->seed, g_strerror(-r2));
        ok = false;
    }
    struct pc_ack a = { pc_log_len(pc), pc->ops->len, -1 };
    g_array_append_val(pc->acks, a);
    /* Acknowledgements in the order they came (a batch's FUA write may beat its flush). */
    for (guint i = 1; i < pc->acks->len; i++)
        for (guint j = i; j > 0; j--) {
            struct pc_ack *x = &g_array_index(pc->acks, struct pc_ack, j - 1);
            struct pc_ack *y = &g_array_index(pc->acks, struct pc_ack, j);
            if (x->pos <= y->pos)
                break;
            struct pc_ack t = *x;
            *x = *y;
            *y = t;
        }
    bc_loop_free(loop);
    lt_disk_free(cfg);
    g_rand_free(r);
    return ok;
}

/* ---- the log -------------------------------------------------------------------------- */

static uint64_t pc_get(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Parse the log (mapped at m, len bytes) into pc->recs; exit 2 if it is malformed. */
static void pc_parse_log(struct pc *pc, const uint8_t *m, uint64_t len)
{
    if (len < LW_HDR_SIZE || memcmp(m, LW_MAGIC, 8) != 0 || pc_get(m + 8, 4) != LW_VERSION ||
        pc_get(m + 12, 4) != LW_REC_SIZE) {
        fprintf(stderr, "powercut: %s: not a version %u log\n", pc->log, LW_VERSION);
        exit(2);
    }
    pc->dev_size = pc_get(m + 16, 8);
    for (uint64_t p = LW_HDR_SIZE; p < len;) {
        struct pc_rec rec = {
            .type = (enum lw_type)pc_get(m + p, 4),
            .seq = pc_get(m + p + 8, 8),
            .off = pc_get(m + p + 16, 8),
            .len = pc_get(m + p + 24, 8),
        };
        bool data = rec.type == LW_INIT || rec.type == LW_WRITE;
        if (p + LW_REC_SIZE > len || rec.type < LW_INIT || rec.type > LW_FLUSH_DONE ||
            rec.seq != pc->recs->len + 1 ||
            (rec.type <= LW_DISCARD && rec.off + rec.len > ((pc->dev_size + 4095) & ~4095ull)) ||
            (data && p + LW_REC_SIZE + rec.len > len)) {
            fprintf(stderr, "powercut: %s: bad record at offset %" PRIu64 "\n", pc->log, p);
            exit(2);
        }
        rec.data = m + p + LW_REC_SIZE;
        p += LW_REC_SIZE + (data ? rec.len : 0);
        rec.end = p;
        g_array_append_val(pc->recs, rec);
    }
}

/* ---- building and checking one state ----------------------------------------------------- */

static void pc_pwrite(struct pc *pc, const void *buf, uint64_t len, uint64_t off)
{
    len = MIN(len, pc->dev_size - MIN(off, pc->dev_size));
    if (len > 0 && pwrite(pc->img_fd, buf, len, (off_t)off) != (ssize_t)len)
        g_error("%s: %s", pc->img, g_strerror(errno));
}

/* Apply [off, off+len) of rec (all of it: off = rec->off, len = rec->len) to mem (if not
 * NULL) and the image file; a discard as zeros when zero_discard, else left as it was. */
static void pc_apply(struct pc *pc, uint8_t *mem, const struct pc_rec *rec, uint64_t off,
                     uint64_t len, bool zero_discard)
{
    static const uint8_t zeros[65536];

    len = MIN(len, pc->dev_size - MIN(off, pc->dev_size));
    if (rec->type == LW_INIT || rec->type == LW_WRITE) {
        const uint8_t *src = rec->data + (off - rec->off);
        if (mem != NULL)
            memcpy(mem + off, src, len);
        pc_pwrite(pc, src, len, off);
    } else if (rec->type == LW_ZERO || (rec->type == LW_DISCARD && zero_discard)) {
        if (mem != NULL)
            memset(mem + off, 0, len);
        for (uint64_t o = 0; o < len; o += sizeof(zeros))
            pc_pwrite(pc, zeros, MIN(sizeof(zeros), len - o), off + o);
    }
}

/* Apply acknowledged operation i to the model, byte by byte unless a later one set it. */
static void pc_model_apply(struct pc *pc, uint32_t i)
{
    const struct pc_op *op = &g_array_index(pc->ops, struct pc_op, i);

    if (op->kind == PC_FLUSH)
        return;
    for (uint64_t o = op->off; o < op->off + op->len; o++) {
        if ((pc->wid[o] & ~PC_ZOK) >= i + 1)
            continue;
        if (op->kind == PC_WRITE)
            pc->want[o] = pc_val(i + 1, o);
        else if (op->kind == PC_ZERO)
            pc->want[o] = 0;
        pc->wid[o] = (i + 1) | (op->kind == PC_DISCARD ? PC_ZOK : 0);
    }
}

/* Check the state now in pc->img: the format's check, then every byte through the layers. */
static bool pc_verify(struct pc *pc, uint32_t upto, uint64_t end_pos, GString *why)
{
    if (pc->fmt != NULL && pc->fmt->check != NULL && !pc->fmt->check(pc->img, why)) {
        g_string_prepend(why, "the format's check: ");
        return false;
    }
    g_autoptr(GError) err = NULL;
    struct lf_disk_cfg *cfg = pc_disk_cfg(pc, false);
    struct lf_disk *d = lf_disk_open(cfg, true, &err);
    lt_disk_free(cfg);
    if (d == NULL) {
        g_string_append_printf(why, "does not open: %s", err->message);
        return false;
    }
    struct bc_loop *loop = bc_loop_new(0, 64, &err);
    g_assert_nonnull(loop);
    int r = lt_read(d, loop, pc->got, pc->size, 0);
    bc_loop_free(loop);
    lf_disk_close(d);
    if (r < 0) {
        g_string_append_printf(why, "read: %s", g_strerror(-r));
        return false;
    }
    /* The bytes that are not what the acknowledgements require... */
    uint64_t nbad = 0, first = UINT64_MAX;
    g_autoptr(GArray) marked = g_array_new(false, false, sizeof(uint64_t));
    for (uint64_t c = 0; c < pc->size; c += 4096) {
        uint64_t n = MIN(4096, pc->size - c);
        if (memcmp(pc->got + c, pc->want + c, n) == 0)
            continue;
        g_array_append_val(marked, c);
        for (uint64_t o = c; o < c + n; o++)
            if (pc->got[o] != pc->want[o] && !(pc->got[o] == 0 && (pc->wid[o] & PC_ZOK))) {
                pc->bad[o] = 1;
                nbad++;
            }
    }
    /* ... may be what an operation not acknowledged yet, issued by then, wrote. */
    for (uint32_t i = upto; i < pc->ops->len && nbad > 0; i++) {
        const struct pc_op *op = &g_array_index(pc->ops, struct pc_op, i);
        if (op->start_pos >= end_pos)
            break;
        if (op->kind == PC_FLUSH)
            continue;
        for (uint64_t o = op->off; o < op->off + op->len; o++)
            if (pc->bad[o] && pc->got[o] == (op->kind == PC_WRITE ? pc_val(i + 1, o) : 0)) {
                pc->bad[o] = 0;
                nbad--;
            }
    }
    for (first = 0; nbad > 0 && !pc->bad[first]; first++)
        ;
    for (guint i = 0; i < marked->len; i++) {     /* pc->bad is all zeros between calls */
        uint64_t c = g_array_index(marked, uint64_t, i);
        memset(pc->bad + c, 0, MIN(4096, pc->size - c));
    }
    if (nbad == 0)
        return true;
    uint32_t w = pc->wid[first] & ~PC_ZOK;
    g_autofree char *by = w ? g_strdup_printf("operation %u", w - 1) : g_strdup("initial data");
    g_string_append_printf(why, "disk offset %" PRIu64 " reads 0x%02x (and %" PRIu64 " more "
                           "bytes are wrong): acknowledged is 0x%02x (%s) and no operation "
                           "since wrote that there", first, pc->got[first], nbad - 1,
                           pc->want[first], by);
    return false;
}

static const char *const pc_type_names[] = {
    [LW_INIT] = "init", [LW_WRITE] = "write", [LW_ZERO] = "zero", [LW_DISCARD] = "discard",
    [LW_FLUSH] = "flush", [LW_FLUSH_DONE] = "flush-done",
};

/* Replay every state; false if one failed. */
static bool pc_replay(struct pc *pc)
{
    struct stat st;
    int lfd = open(pc->log, O_RDONLY | O_CLOEXEC);

    if (lfd < 0 || fstat(lfd, &st) < 0)
        g_error("%s: %s", pc->log, g_strerror(errno));
    uint8_t *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, lfd, 0);
    if (m == MAP_FAILED)
        g_error("%s: mmap: %s", pc->log, g_strerror(errno));
    close(lfd);
    pc_parse_log(pc, m, (uint64_t)st.st_size);

    guint nrec = pc->recs->len;
    const struct pc_rec *rec = (const struct pc_rec *)(void *)pc->recs->data;
    pc->durable = g_malloc0(pc->dev_size);
    pc->img_fd = open(pc->img, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (pc->img_fd < 0 || ftruncate(pc->img_fd, (off_t)pc->dev_size) < 0)
        g_error("%s: %s", pc->img, g_strerror(errno));
    pc->want = g_malloc(pc->size);
    pc->wid = g_malloc0(pc->size * sizeof(uint32_t));
    pc->got = g_malloc(pc->size);
    pc->bad = g_malloc0(pc->size);
    for (uint64_t o = 0; o < pc->size; o++)
        pc->want[o] = pc_initial(o);

    /* The flushes done so far: the durable records are those before the latest LW_FLUSH
     * of them. */
    guint durable = 0, applied = 0, ack = 0;
    uint32_t upto = 0;
    unsigned states = 0;
    while (durable < nrec && rec[durable].type == LW_INIT)
        durable++;
    for (gint point = -1; point < (gint)nrec && pc->failures < 3; point++) {
        /* A power cut right after a flush is done, or right after an acknowledgement. */
        bool acked = ack < pc->acks->len && point >= 0 &&
                     g_array_index(pc->acks, struct pc_ack, ack).pos <= rec[point].end;
        if (point >= 0 && rec[point].type != LW_FLUSH_DONE && !acked)
            continue;
        if (point >= 0 && rec[point].type == LW_FLUSH_DONE)
            durable = MAX(durable, (guint)rec[point].off - 1);  /* seq - 1 = index */
        uint64_t point_end = point >= 0 ? rec[point].end
                             : durable > 0 ? rec[durable - 1].end : LW_HDR_SIZE;
        for (; applied < durable; applied++)
            pc_apply(pc, pc->durable, &rec[applied], rec[applied].off, rec[applied].len, true);
        /* The acknowledgements logged by now. */
        for (; ack < pc->acks->len; ack++) {
            const struct pc_ack *a = &g_array_index(pc->acks, struct pc_ack, ack);
            if (a->pos > point_end)
                break;
            if (a->fua >= 0) {
                pc_model_apply(pc, (uint32_t)a->fua);
                continue;
            }
            for (; upto < a->upto; upto++)
                pc_model_apply(pc, upto);
        }
        /* The window: after the durable records, up to the next LW_FLUSH_DONE. */
        guint wend = MAX((guint)(point + 1), durable);
        while (wend < nrec && rec[wend].type != LW_FLUSH_DONE)
            wend++;
        guint nwin = 0;
        for (guint k = durable; k < wend; k++)
            nwin += rec[k].type <= LW_DISCARD;
        uint64_t end_pos = wend < nrec ? rec[wend].end : (uint64_t)st.st_size;
        unsigned ntrials = nwin == 0 ? 1 : 2 + pc->trials;
        for (unsigned t = 0; t < ntrials && pc->failures < 3; t++) {
            guint32 tseed = pc->seed ^ ((guint32)(point + 2) * 2654435761u) ^ (t * 40503u);
            GRand *r = g_rand_new_with_seed(tseed);
            g_autoptr(GString) chosen = g_string_new(NULL);
            g_autoptr(GString) why = g_string_new(NULL);
            GArray *undo = g_array_new(false, false, sizeof(struct pc_span));

            /* Trial 0: none of the window; 1: all of it; then random subsets. */
            for (guint k = durable; k < wend; k++) {
                const struct pc_rec *w = &rec[k];
                if (w->type > LW_DISCARD)
                    continue;
                int how = t == 0 ? 0 : t == 1 ? 1 : g_rand_int_range(r, 0, 3);
                if (how == 2 && (pc->tear == 0 || w->len <= pc->tear))
                    how = g_rand_boolean(r);
                if (how == 0)
                    continue;
                g_string_append_printf(chosen, " %s#%" PRIu64 "%s", pc_type_names[w->type],
                                       w->seq, how == 2 ? "(torn)" : "");
                struct pc_span span = { w->off, w->len };
                g_array_append_val(undo, span);
                bool zd = g_rand_boolean(r);
                if (how == 1) {
                    pc_apply(pc, NULL, w, w->off, w->len, zd);
                    continue;
                }
                /* Torn: each tear unit (at its absolute offset) made it or not. */
                for (uint64_t o = w->off, e; o < w->off + w->len; o = e) {
                    e = MIN((o / pc->tear + 1) * pc->tear, w->off + w->len);
                    if (g_rand_boolean(r))
                        pc_apply(pc, NULL, w, o, e - o, zd);
                }
            }
            states++;
            if (!pc_verify(pc, upto, end_pos, why)) {
                pc->failures++;
                g_autofree char *keep = g_strdup_printf("%s.%u", pc->img, pc->failures);
                g_autofree char *cmd = g_strdup_printf("cp --sparse=always '%s' '%s'", pc->img,
                                                       keep);
                fprintf(stderr, "powercut: %s block size %u seed %u: power cut after log "
                        "record %d (%s), trial %u (seed %u): %s\n  durable: records 1..%u; "
                        "also applied:%s\n  state kept as %s\n", pc->format, pc->bs, pc->seed,
                        point + 1, point < 0 ? "before any flush" : pc_type_names[rec[point].type],
                        t, tseed, why->str, durable, chosen->len ? chosen->str : " none",
                        system(cmd) == 0 ? keep : "(cannot copy)");
            }
            /* Back to the durable state. */
            for (guint u = 0; u < undo->len; u++) {
                const struct pc_span *span = &g_array_index(undo, struct pc_span, u);
                if (span->off < pc->dev_size)
                    pc_pwrite(pc, pc->durable + span->off, span->len, span->off);
            }
            g_array_free(undo, true);
            g_rand_free(r);
        }
    }
    printf("# %s block size %u seed %u: %u operations, %u acknowledgements, %u log records, "
           "%u states replayed, %u failed\n", pc->format, pc->bs, pc->seed, pc->ops->len,
           pc->acks->len, nrec, states, pc->failures);
    munmap(m, (size_t)st.st_size);
    close(pc->img_fd);
    g_free(pc->durable);
    g_free(pc->want);
    g_free(pc->wid);
    g_free(pc->got);
    g_free(pc->bad);
    return pc->failures == 0;
}

/* ---- main ------------------------------------------------------------------------------ */

static void pc_log_handler(const gchar *domain, GLogLevelFlags level, const gchar *msg,
                           gpointer data)
{
    /* Opening a state after a power cut says so (not closed cleanly): expected here. */
    if (level & (G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_INFO | G_LOG_LEVEL_DEBUG))
        return;
    g_log_default_handler(domain, level, msg, data);
}

static uint64_t pc_env(const char *name, uint64_t def)
{
    const char *v = getenv(name);
    uint64_t n;

    if (v == NULL || *v == '\0')
        return def;
    if (!bc_parse_size(v, &n)) {
        fprintf(stderr, "powercut: %s: '%s' is not a number\n", name, v);
        exit(2);
    }
    return n;
}

int main(int argc, char **argv)
{
    struct pc pc = { 0 };
    uint64_t bs;
    guint64 seed;

    if (argc != 5 || !bc_parse_size(argv[2], &bs) || bs > UINT32_MAX ||
        !g_ascii_string_to_unsigned(argv[4], 10, 0, UINT32_MAX, &seed, NULL)) {
        fprintf(stderr, "usage: powercut FORMAT BLOCK-SIZE DIR SEED\n");
        return 2;
    }
    g_log_set_default_handler(pc_log_handler, NULL);
    const struct layer_ops *ops = layer_format_find(argv[1]);
    if (ops == NULL || ops->in_memory) {
        fprintf(stderr, "powercut: %s: not a format whose image a power cut leaves\n",
                argv[1]);
        return 2;
    }
    pc.format = argv[1];
    for (size_t i = 0; i < G_N_ELEMENTS(pc_formats); i++)
        if (strcmp(pc_formats[i].name, pc.format) == 0)
            pc.fmt = &pc_formats[i];
    pc.bs = (uint32_t)bs;
    pc.dir = argv[3];
    pc.seed = (guint32)seed;
    pc.over_base = ops->can_create;
    pc.size = pc_env("LAYERFS_POWERCUT_SIZE", 4u << 20);
    pc.nops = (unsigned)pc_env("LAYERFS_POWERCUT_OPS", 300);
    pc.trials = (unsigned)pc_env("LAYERFS_POWERCUT_TRIALS", 4);
    pc.tear = (uint32_t)pc_env("LAYERFS_POWERCUT_TEAR", 4096);
    pc.base = g_build_filename(pc.dir, "base.raw", NULL);
    pc.top = g_build_filename(pc.dir, "top.img", NULL);
    pc.log = g_build_filename(pc.dir, "top.log", NULL);
    pc.img = g_build_filename(pc.dir, "replay.img", NULL);
    pc.ops = g_array_new(false, false, sizeof(struct pc_op));
    pc.acks = g_array_new(false, false, sizeof(struct pc_ack));
    pc.recs = g_array_new(false, false, sizeof(struct pc_rec));
    pc_make_initial(pc.over_base ? pc.base : pc.top, pc.size);

    bool ok = pc_workload(&pc) && pc_replay(&pc);

    g_array_free(pc.ops, true);
    g_array_free(pc.acks, true);
    g_array_free(pc.recs, true);
    g_free(pc.base);
    g_free(pc.top);
    g_free(pc.log);
    g_free(pc.img);
    return ok ? 0 : 1;
}
