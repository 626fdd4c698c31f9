/* SPDX-License-Identifier: MIT */
/* The power-cut replay behind t/2035-layers-powercut-replay.t: a random workload through
 * lf_disk_* over the logwrites driver, then every state a power cut could leave rebuilt
 * from the log, opened through the layers and checked against what was acknowledged.
 *
 *   powercut FORMAT BLOCK-SIZE DIR SEED
 *
 * FORMAT is the top layer's format: one that holds blocks (takes a block size) starts
 * empty over a read-only raw base with data and holes, any other is a lone layer over a
 * file with that data.
 * BLOCK-SIZE is the block-size key (0: none).  DIR must be empty; it keeps the images and
 * the log.  LAYERFS_POWERCUT_OPS (default 200) workload operations,
 * LAYERFS_POWERCUT_TRIALS (default 4) random subsets per state, LAYERFS_POWERCUT_SIZE
 * (default PC_DEFAULT_SIZE) the disk size, LAYERFS_POWERCUT_TEAR (default 512, 0 = off)
 * the unit in which a write may be torn.  Exit 0 if every state passed, 1 (and a message
 * naming the seed, the log record and the subset) if not, 2 on a usage or setup error. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "t/unit/powercut.h"

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

/* Formats with more than the layers API gives: a format whose layer creates its image and
 * that has no offline check needs no line here; it is checked by opening and reading it. */
static const struct pc_format pc_formats[] = {
    { "overlay", NULL, pc_check_overlay },
};

/* ---- the workload ------------------------------------------------------------------- */

struct pc_io {
    struct pc *pc;
    unsigned worker;        /* the thread that runs it */
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

struct lf_disk_cfg *pc_disk_cfg(struct pc *pc, bool workload)
{
    const char *path = workload ? pc->top : pc->img;
    struct lf_layer_cfg *top = lt_layer("top", pc->format, workload ? "logwrites" : "file",
                                        path);

    top->direct = workload;     /* as configured by default; the states are read buffered */
    if (workload) {
        lt_opt(top, "log", pc->log);
        top->create = pc->over_base && layer_format_find(pc->format)->can_create;
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

/* Start operation i of pc->ops on loop; io->pending counts it. */
static void pc_issue(struct pc *pc, struct lf_disk *d, struct bc_loop *loop, uint32_t i,
                     struct pc_io *io)
{
    const struct pc_op *op = &g_array_index(pc->ops, struct pc_op, i);

    ++*io->pending;
    switch (op->kind) {
    case PC_WRITE:
        io->buf = g_malloc(op->len);
        for (uint64_t b = 0; b < op->len; b++)
            io->buf[b] = pc_val(i + 1, op->off + b);
        io->iov = (struct iovec){ io->buf, op->len };
        lf_disk_writev(d, loop, &io->iov, 1, op->off, op->flags, pc_io_cb, io);
        break;
    case PC_ZERO:
        lf_disk_write_zeroes(d, loop, op->off, op->len, op->flags, pc_io_cb, io);
        break;
    case PC_DISCARD:
        lf_disk_discard(d, loop, op->off, op->len, pc_io_cb, io);
        break;
    case PC_FLUSH:
        lf_disk_flush(d, loop, pc_io_cb, io);
        break;
    }
}

/* The workload's I/O threads, each with its loop: every batch is spread over them, so that
 * flushes, writes and their completions meet across loops as in the daemon. */
struct pc_crew {
    struct pc *pc;
    struct lf_disk *d;
    GMutex lock;            /* protects everything below */
    GCond cond;             /* a new batch, a worker done, or quit */
    unsigned gen;           /* batches handed out so far */
    unsigned left;          /* workers still running the current batch */
    bool quit;
    struct pc_io *io;       /* the batch: io[i] runs operation first + i */
    uint32_t first, n;
};

struct pc_worker {
    struct pc_crew *crew;
    unsigned index;
    GThread *thread;
};

static gpointer pc_worker_main(gpointer data)
{
    struct pc_worker *w = data;
    struct pc_crew *c = w->crew;
    g_autoptr(GError) err = NULL;
    struct bc_loop *loop = bc_loop_new(w->index, 256, &err);
    unsigned seen = 0;

    if (loop == NULL)
        g_error("powercut: %s", err->message);
    for (;;) {
        g_mutex_lock(&c->lock);
        while (c->gen == seen && !c->quit)
            g_cond_wait(&c->cond, &c->lock);
        bool quit = c->quit;
        struct pc_io *io = c->io;
        uint32_t first = c->first, n = c->n;
        seen = c->gen;
        g_mutex_unlock(&c->lock);
        if (quit)
            break;
        unsigned pending = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (io[i].worker != w->index)
                continue;
            io[i].pending = &pending;
            pc_issue(c->pc, c->d, loop, first + i, &io[i]);
        }
        if (bc_loop_wait(loop, &pending) < 0)
            g_error("powercut: the loop failed");
        g_mutex_lock(&c->lock);
        c->left--;
        g_cond_broadcast(&c->cond);
        g_mutex_unlock(&c->lock);
    }
    bc_loop_free(loop);
    return NULL;
}

/* Run the workload; false (with a message) if the disk failed. */
static bool pc_workload(struct pc *pc)
{
    g_autoptr(GError) err = NULL;
    struct lf_disk_cfg *cfg = pc_disk_cfg(pc, true);
    struct lf_disk *d = lf_disk_open(cfg, false, &err);
    GRand *r = g_rand_new_with_seed(pc->seed);
    struct pc_crew crew = { .pc = pc, .d = d };
    struct pc_worker wk[PC_WORKERS];
    bool ok = true;

    if (d == NULL) {
        fprintf(stderr, "powercut: %s\n", err->message);
        exit(2);
    }
    pc->size = MIN(pc->size, lf_disk_size(d));
    g_mutex_init(&crew.lock);
    g_cond_init(&crew.cond);
    for (unsigned i = 0; i < PC_WORKERS; i++) {
        wk[i] = (struct pc_worker){ &crew, i, NULL };
        wk[i].thread = g_thread_new("powercut", pc_worker_main, &wk[i]);
    }
    for (unsigned done = 0; done < pc->nops && ok;) {
        unsigned n = (unsigned)g_rand_int_range(r, 1, PC_MAX_BATCH + 1), nb = 0;
        uint32_t first = pc->ops->len;
        struct pc_io io[PC_MAX_BATCH] = { 0 };
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
                if (op.kind == PC_ZERO && g_rand_int_range(r, 0, 10) == 0)
                    op.flags |= BC_REQ_FUA;
            }
            g_array_append_val(pc->ops, op);
        }
        nb = pc->ops->len - first;
        for (unsigned i = 0; i < nb; i++)
            io[i] = (struct pc_io){ .pc = pc,
                                    .worker = (unsigned)g_rand_int_range(r, 0, PC_WORKERS) };
        g_mutex_lock(&crew.lock);
        crew.io = io;
        crew.first = first;
        crew.n = nb;
        crew.left = PC_WORKERS;
        crew.gen++;
        g_cond_broadcast(&crew.cond);
        while (crew.left > 0)
            g_cond_wait(&crew.cond, &crew.lock);
        g_mutex_unlock(&crew.lock);
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
    g_mutex_lock(&crew.lock);
    crew.quit = true;
    g_cond_broadcast(&crew.cond);
    g_mutex_unlock(&crew.lock);
    for (unsigned i = 0; i < PC_WORKERS; i++)
        g_thread_join(wk[i].thread);
    g_cond_clear(&crew.cond);
    g_mutex_clear(&crew.lock);
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
    lt_disk_free(cfg);
    g_rand_free(r);
    return ok;
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
        if (ops == NULL)
            fprintf(stderr, "powercut: %s: unknown format (known: %s)\n", argv[1],
                    layer_format_names());
        else
            fprintf(stderr, "powercut: %s: kept in memory: a power cut leaves nothing\n",
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
    pc.over_base = ops->has_block_size;
    pc.size = pc_env("LAYERFS_POWERCUT_SIZE", PC_DEFAULT_SIZE);
    pc.nops = (unsigned)pc_env("LAYERFS_POWERCUT_OPS", 200);
    pc.trials = (unsigned)pc_env("LAYERFS_POWERCUT_TRIALS", 4);
    pc.tear = (uint32_t)pc_env("LAYERFS_POWERCUT_TEAR", 512);
    pc.base = g_build_filename(pc.dir, "base.raw", NULL);
    pc.top = g_build_filename(pc.dir, "top.img", NULL);
    pc.log = g_build_filename(pc.dir, "top.log", NULL);
    pc.img = g_build_filename(pc.dir, "replay.img", NULL);
    pc.ops = g_array_new(false, false, sizeof(struct pc_op));
    pc.acks = g_array_new(false, false, sizeof(struct pc_ack));
    pc_make_initial(pc.over_base ? pc.base : pc.top, pc.size);
    if (pc.over_base && !ops->can_create) {
        g_autoptr(GError) err = NULL;
        if (pc.fmt == NULL || pc.fmt->create == NULL) {
            fprintf(stderr, "powercut: %s: its layer cannot create an image: give pc_formats[] "
                    "a create function\n", pc.format);
            return 2;
        }
        if (!pc.fmt->create(pc.top, pc.size, pc.bs, &err)) {
            fprintf(stderr, "powercut: %s\n", err->message);
            return 2;
        }
    }

    bool ok = pc_workload(&pc) && pc_replay(&pc);

    g_array_free(pc.ops, true);
    g_array_free(pc.acks, true);
    g_free(pc.base);
    g_free(pc.top);
    g_free(pc.log);
    g_free(pc.img);
    return ok ? 0 : 1;
}
