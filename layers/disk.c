/* SPDX-License-Identifier: MIT */
/* A layered disk: the lf_disk_* API of layers.h.  Opens and validates the stack, resolves
 * reads into pieces served by the topmost layer holding them, fills read caches, and sends
 * writes, zeroes and flushes to every layer a write can reach. */
#include <errno.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layers/layer.h"

G_DEFINE_QUARK(lf-error-quark, lf_error)

/*
 * Notes on the design
 *
 * The stack is immutable after open, so requests read it without locks; each format guards
 * its own presence state.  A read is resolved by stack_map() into maximal pieces: for each
 * piece, the topmost layer (from a starting index) that holds all of it, or -1 for zeros.
 * Every piece is read in parallel; then, for pieces that came from below one or more
 * read-cache layers, the data is written to those layers with LAYER_NO_OVERWRITE, and the
 * read completes when the fills have (fill errors are logged, not returned).
 *
 * Writes: layers 0..nwrite-1 are the write chain (the write-through layers and the first
 * layer that is not).  A lower layer smaller than the disk gets only the part within its
 * size.  Writes to the chain run in parallel and complete when all have.  Zeroes and
 * discards go to every layer of the chain too, but one at a time from the bottom up: a
 * layer holding blocks decides per block, under its own range lock, from what
 * layer_next_status() says of the stack below it, already zeroed.
 */

/* An image file this open created (create = true), to remove if the start is undone. */
struct lf_created {
    char *path;
    dev_t dev;
    ino_t ino;
};

struct lf_disk {
    char *name;
    bool read_only;
    unsigned nlayers;
    unsigned nwrite;        /* layers in the write chain */
    struct layer **layers;  /* top first */
    /* Space held (lf_disk_allocated), all accessed atomically: */
    uint64_t mod_gen;       /* modifying requests completed */
    uint64_t alloc_bytes;   /* the last walk's result */
    uint64_t alloc_gen;     /* mod_gen + 1 when that walk started; 0 = none yet */
    int64_t alloc_next;     /* monotonic us before which that walk is reused anyway */
    GArray *created;        /* struct lf_created, in the order of creation */
};

/* ---- resolving the stack ----------------------------------------------------------- */

/* The topmost layer at or below from holding offset (-1: zeros); *pnum bytes alike. */
static int stack_map(struct lf_disk *disk, unsigned from, uint64_t offset, uint64_t len,
                     uint64_t *pnum)
{
    for (unsigned i = from; i < disk->nlayers; i++) {
        struct layer *l = disk->layers[i];
        if (offset >= l->visible)
            break;
        len = MIN(len, l->visible - offset);
        uint64_t n = len;
        int r = l->ops->present(l, offset, len, &n);
        assert(n > 0 && n <= len);
        len = n;
        if (r > 0) {
            *pnum = len;
            return (int)i;
        }
    }
    *pnum = len;
    return -1;
}

/* Data (1) or hole (0) through the stack from layer from; *pnum bytes.  local_only: a
 * remote layer (l->remote) is taken as data without asking its device. */
static int stack_status_x(struct lf_disk *disk, unsigned from, uint64_t offset, uint64_t len,
                          uint64_t *pnum, bool local_only)
{
    uint64_t n;
    int i = stack_map(disk, from, offset, len, &n);

    if (i < 0) {
        *pnum = n;
        return 0;
    }
    struct layer *l = disk->layers[i];
    if (local_only && l->remote) {
        *pnum = n;
        return 1;
    }
    uint64_t m = n;
    int r = l->ops->block_status(l, offset, n, &m);
    if (r < 0)
        return r;
    *pnum = MAX(MIN(m, n), 1);
    return r;
}

static int stack_status(struct lf_disk *disk, unsigned from, uint64_t offset, uint64_t len,
                        uint64_t *pnum)
{
    return stack_status_x(disk, from, offset, len, pnum, false);
}

int layer_next_status(struct layer *l, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    uint64_t n = len;
    int r = stack_status(l->disk, l->index + 1, offset, len, &n);

    if (r < 0) {
        *pnum = len;    /* may hold data: the safe answer */
        return 1;
    }
    *pnum = n;
    return r;
}

bool layer_next_is_zero(struct layer *l, uint64_t offset, uint64_t len)
{
    while (len > 0) {
        uint64_t n;
        if (layer_next_status(l, offset, len, &n) != 0)
            return false;
        offset += n;
        len -= n;
    }
    return true;
}

/* ---- reads ------------------------------------------------------------------------- */

struct rd_piece {
    struct rd_req *req;
    uint64_t offset, len;
    int layer;              /* -1 = zeros */
    int iovcnt;
    struct iovec *iov;
};

struct rd_req {
    struct lf_disk *disk;
    struct bc_loop *loop;
    bc_cb *cb;
    void *opaque;
    unsigned from;
    unsigned pending;
    int err;
    bool filling;
    GArray *pieces;         /* struct rd_piece */
    struct bc_task task;
};

static void rd_finish(struct rd_req *req)
{
    bc_cb *cb = req->cb;
    void *opaque = req->opaque;
    int err = req->err;

    for (guint i = 0; i < req->pieces->len; i++)
        g_free(g_array_index(req->pieces, struct rd_piece, i).iov);
    g_array_free(req->pieces, true);
    g_free(req);
    cb(opaque, err);
}

static void rd_fill_done(void *opaque, int res)
{
    struct rd_req *req = opaque;

    if (res < 0)
        g_warning("disk %s: failed to fill read cache: %s", req->disk->name, g_strerror(-res));
    if (--req->pending == 0)
        rd_finish(req);
}

static void rd_fill(struct rd_req *req)
{
    struct lf_disk *disk = req->disk;

    req->filling = true;
    req->pending = 1;
    for (guint p = 0; p < req->pieces->len; p++) {
        struct rd_piece *pc = &g_array_index(req->pieces, struct rd_piece, p);
        unsigned below = pc->layer < 0 ? disk->nlayers : (unsigned)pc->layer;
        for (unsigned j = req->from; j < below; j++) {
            struct layer *l = disk->layers[j];
            if (!l->read_cache || pc->offset >= l->size)
                continue;
            req->pending++;
            l->ops->write(l, req->loop, pc->iov, pc->iovcnt, pc->offset, LAYER_NO_OVERWRITE,
                          rd_fill_done, req);
        }
    }
    if (--req->pending == 0)
        rd_finish(req);
}

static void rd_phase_done(struct rd_req *req)
{
    if (req->err == 0 && !req->filling) {
        for (unsigned j = req->from; j < req->disk->nlayers; j++) {
            if (req->disk->layers[j]->read_cache) {
                rd_fill(req);
                return;
            }
        }
    }
    rd_finish(req);
}

static void rd_piece_done(void *opaque, int res)
{
    struct rd_req *req = opaque;

    if (res < 0 && req->err == 0)
        req->err = res;
    if (--req->pending == 0)
        rd_phase_done(req);
}

static void rd_task(struct bc_task *task)
{
    rd_phase_done(bc_container_of(task, struct rd_req, task));
}

/* Read [offset, offset+len of iov) as the stack from layer from shows it. */
static void stack_read(struct lf_disk *disk, unsigned from, struct bc_loop *loop,
                       const struct iovec *iov, int iovcnt, uint64_t offset, bc_cb *cb,
                       void *opaque)
{
    uint64_t len = bc_iov_len(iov, iovcnt);
    uint64_t pos = 0;
    uint64_t n0;

    /* The usual case -- a raw disk, or blocks the top overlay holds: the first layer asked
     * holds the whole range, so there are no pieces to track and nothing to fill (fills
     * only go into layers above the data's source). */
    if (len && from < disk->nlayers && stack_map(disk, from, offset, len, &n0) == (int)from &&
        n0 == len) {
        struct layer *l = disk->layers[from];
        l->ops->read(l, loop, iov, iovcnt, offset, cb, opaque);
        return;
    }

    struct rd_req *req = g_new0(struct rd_req, 1);

    req->disk = disk;
    req->loop = loop;
    req->cb = cb;
    req->opaque = opaque;
    req->from = from;
    req->pieces = g_array_new(false, true, sizeof(struct rd_piece));
    while (pos < len) {
        struct rd_piece pc = { .req = req, .offset = offset + pos };
        uint64_t n;
        if (from >= disk->nlayers || pc.offset < offset /* overflow */) {
            pc.layer = -1;
            n = len - pos;
        } else {
            pc.layer = stack_map(disk, from, pc.offset, len - pos, &n);
        }
        pc.len = n;
        pc.iov = g_new(struct iovec, iovcnt);
        pc.iovcnt = bc_iov_slice(iov, iovcnt, pos, n, pc.iov, iovcnt, NULL);
        assert(pc.iovcnt >= 0);
        g_array_append_val(req->pieces, pc);
        pos += n;
    }

    req->pending = 1;
    for (guint p = 0; p < req->pieces->len; p++) {
        struct rd_piece *pc = &g_array_index(req->pieces, struct rd_piece, p);
        if (pc->layer < 0) {
            bc_iov_memset(pc->iov, pc->iovcnt, 0, 0, pc->len);
            continue;
        }
        struct layer *l = disk->layers[pc->layer];
        req->pending++;
        l->ops->read(l, loop, pc->iov, pc->iovcnt, pc->offset, rd_piece_done, req);
    }
    if (--req->pending == 0) {
        req->task.fn = rd_task;
        bc_loop_defer(loop, &req->task);
    }
}

void layer_next_read(struct layer *l, struct bc_loop *loop, const struct iovec *iov,
                     int iovcnt, uint64_t offset, bc_cb *cb, void *opaque)
{
    stack_read(l->disk, l->index + 1, loop, iov, iovcnt, offset, cb, opaque);
}

void lf_disk_readv(struct lf_disk *disk, struct bc_loop *loop, const struct iovec *iov,
                   int iovcnt, uint64_t offset, bc_cb *cb, void *opaque)
{
    stack_read(disk, 0, loop, iov, iovcnt, offset, cb, opaque);
}

/* ---- writes, zeroes, discards, flushes --------------------------------------------- */

enum mod_kind { MOD_WRITE, MOD_ZERO, MOD_DISCARD, MOD_FLUSH };

struct mod_req {
    bc_cb *cb;
    void *opaque;
    unsigned pending;
    int err;
    struct bc_task task;
    GPtrArray *iovs;        /* clipped copies for smaller layers, freed at the end */
    struct lf_disk *disk;
    bool changes;           /* a write, zero or discard: bumps disk->mod_gen when done */
    /* Zeroes and discards, which climb the chain one layer at a time: */
    enum mod_kind kind;
    struct bc_loop *loop;
    uint64_t offset, len;
    unsigned flags;
    unsigned layer;         /* the chain layer issued last; the next one is above it */
};

static void mod_finish(struct mod_req *req)
{
    bc_cb *cb = req->cb;
    void *opaque = req->opaque;
    int err = req->err;

    if (req->changes)
        __atomic_add_fetch(&req->disk->mod_gen, 1, __ATOMIC_RELEASE);
    if (req->iovs != NULL)
        g_ptr_array_free(req->iovs, true);
    g_free(req);
    cb(opaque, err);
}

static void mod_done(void *opaque, int res)
{
    struct mod_req *req = opaque;

    if (res < 0 && req->err == 0)
        req->err = res;
    if (--req->pending == 0)
        mod_finish(req);
}

static void mod_task(struct bc_task *task)
{
    mod_finish(bc_container_of(task, struct mod_req, task));
}

/* The next zero or discard up the chain, or the end of the request (res: the last one's). */
static void zd_next(void *opaque, int res)
{
    struct mod_req *req = opaque;

    if (res < 0 && req->err == 0)
        req->err = res;
    while (req->layer-- > 0) {
        struct layer *l = req->disk->layers[req->layer];
        if (req->offset >= l->size)
            continue;
        uint64_t n = MIN(req->len, l->size - req->offset);
        if (req->kind == MOD_ZERO)
            l->ops->zero(l, req->loop, req->offset, n, req->flags, zd_next, req);
        else
            l->ops->discard(l, req->loop, req->offset, n, zd_next, req);
        return;
    }
    mod_finish(req);
}

/* -EROFS, -ENOSPC or 0 for a modifying request on [offset, offset+len). */
static int check_write(struct lf_disk *disk, uint64_t offset, uint64_t len)
{
    uint64_t size = lf_disk_size(disk);

    if (disk->read_only)
        return -EROFS;
    if (offset > size || len > size - offset)
        return -ENOSPC;
    return 0;
}

static void stack_modify(struct lf_disk *disk, enum mod_kind kind, struct bc_loop *loop,
                         const struct iovec *iov, int iovcnt, uint64_t offset, uint64_t len,
                         unsigned flags, bc_cb *cb, void *opaque)
{
    if (kind != MOD_FLUSH) {
        int r = check_write(disk, offset, len);
        if (r < 0) {
            layer_complete_later(loop, cb, opaque, r);
            return;
        }
    } else if (disk->read_only) {
        /* Read caches may still hold unflushed fills. */
    }

    struct mod_req *req = g_new0(struct mod_req, 1);
    req->cb = cb;
    req->opaque = opaque;
    req->pending = 1;
    req->disk = disk;
    req->changes = kind != MOD_FLUSH;
    if ((kind == MOD_ZERO || kind == MOD_DISCARD) && len > 0) {
        /* Bottom of the chain first: each layer decides per block from what the layers
         * below it hold once this request is done with them, so zeroing a write-through
         * stack leaves no layer a block the one below makes redundant.  The top layer
         * holds the whole range (check_write), so a layer completes, never this call. */
        req->kind = kind;
        req->loop = loop;
        req->offset = offset;
        req->len = len;
        req->flags = flags;
        req->layer = disk->nwrite;
        zd_next(req, 0);
        return;
    }
    for (unsigned i = 0; i < disk->nlayers; i++) {
        struct layer *l = disk->layers[i];
        bool in_chain = !disk->read_only && i < disk->nwrite;

        if (kind == MOD_FLUSH) {
            if (in_chain || (l->read_cache && !l->read_only)) {
                req->pending++;
                l->ops->flush(l, loop, mod_done, req);
            }
            continue;
        }
        if (!in_chain)
            break;
        if (offset >= l->size || len == 0)
            continue;
        uint64_t n = MIN(len, l->size - offset);
        switch (kind) {
        case MOD_WRITE:
            req->pending++;
            if (n < len) {
                struct iovec *sub = g_new(struct iovec, iovcnt);
                int cnt = bc_iov_slice(iov, iovcnt, 0, n, sub, iovcnt, NULL);
                assert(cnt >= 0);
                if (req->iovs == NULL)
                    req->iovs = g_ptr_array_new_with_free_func(g_free);
                g_ptr_array_add(req->iovs, sub);
                l->ops->write(l, loop, sub, cnt, offset, flags, mod_done, req);
            } else {
                l->ops->write(l, loop, iov, iovcnt, offset, flags, mod_done, req);
            }
            break;
        case MOD_ZERO:
        case MOD_DISCARD:   /* handled above */
        case MOD_FLUSH:
            break;
        }
    }
    if (--req->pending == 0) {
        req->task.fn = mod_task;
        bc_loop_defer(loop, &req->task);
    }
}

void lf_disk_writev(struct lf_disk *disk, struct bc_loop *loop, const struct iovec *iov,
                    int iovcnt, uint64_t offset, unsigned flags, bc_cb *cb, void *opaque)
{
    stack_modify(disk, MOD_WRITE, loop, iov, iovcnt, offset, bc_iov_len(iov, iovcnt),
                 flags & BC_REQ_FUA, cb, opaque);
}

void lf_disk_write_zeroes(struct lf_disk *disk, struct bc_loop *loop, uint64_t offset,
                          uint64_t len, unsigned flags, bc_cb *cb, void *opaque)
{
    stack_modify(disk, MOD_ZERO, loop, NULL, 0, offset, len, flags, cb, opaque);
}

void lf_disk_discard(struct lf_disk *disk, struct bc_loop *loop, uint64_t offset, uint64_t len,
                     bc_cb *cb, void *opaque)
{
    stack_modify(disk, MOD_DISCARD, loop, NULL, 0, offset, len, 0, cb, opaque);
}

void lf_disk_flush(struct lf_disk *disk, struct bc_loop *loop, bc_cb *cb, void *opaque)
{
    stack_modify(disk, MOD_FLUSH, loop, NULL, 0, 0, 0, 0, cb, opaque);
}

int lf_disk_block_status(struct lf_disk *disk, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    if (len == 0) {
        *pnum = 0;
        return 0;
    }
    return stack_status(disk, 0, offset, len, pnum);
}

int lf_disk_map(struct lf_disk *disk, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    return stack_map(disk, 0, offset, len, pnum);
}

/* ---- space held -------------------------------------------------------------------- */

/* CPU time this thread has used, in microseconds. */
static int64_t thread_cpu_us(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return g_get_monotonic_time();
    return (int64_t)ts.tv_sec * G_USEC_PER_SEC + ts.tv_nsec / 1000;
}

/* Bytes the stack reads as data (what SEEK_DATA finds), walked in extents; -errno.  It runs
 * in getattr, on an I/O thread: remote layers count as data rather than make the thread
 * wait for a server (a walk of a large NBD export took tens of seconds). */
static int walk_allocated(struct lf_disk *disk, uint64_t *bytes)
{
    uint64_t size = lf_disk_size(disk), pos = 0, sum = 0;

    while (pos < size) {
        uint64_t n = size - pos;
        int r = stack_status_x(disk, 0, pos, size - pos, &n, true);
        if (r < 0)
            return r;
        if (r > 0)
            sum += n;
        pos += n;
    }
    *bytes = sum;
    return 0;
}

uint64_t lf_disk_allocated(struct lf_disk *disk, bool *fresh)
{
    uint64_t gen = __atomic_load_n(&disk->mod_gen, __ATOMIC_ACQUIRE);
    uint64_t have = __atomic_load_n(&disk->alloc_gen, __ATOMIC_ACQUIRE);
    int64_t now = g_get_monotonic_time();

    /* Walk again only after a change, and then no sooner than 100 times the CPU time the
     * last walk took after it: a getattr storm during writes costs at most ~1% of a core
     * (CPU time, so that a walk merely preempted on a busy machine does not count). */
    *fresh = have == gen + 1;
    if (have != 0 && (*fresh || now < __atomic_load_n(&disk->alloc_next, __ATOMIC_ACQUIRE)))
        return __atomic_load_n(&disk->alloc_bytes, __ATOMIC_ACQUIRE);
    uint64_t bytes;
    int64_t cpu = thread_cpu_us();
    *fresh = false;
    if (walk_allocated(disk, &bytes) < 0)
        return lf_disk_size(disk);      /* unknown: claim everything, cache nothing */
    *fresh = true;
    cpu = thread_cpu_us() - cpu;
    __atomic_store_n(&disk->alloc_bytes, bytes, __ATOMIC_RELEASE);
    __atomic_store_n(&disk->alloc_next, g_get_monotonic_time() + 100 * cpu, __ATOMIC_RELEASE);
    __atomic_store_n(&disk->alloc_gen, gen + 1, __ATOMIC_RELEASE);
    return bytes;
}

/* ---- open and close ---------------------------------------------------------------- */

static bool fmt_can_create(const struct layer_ops *ops)
{
    return ops->can_create;
}

static bool fmt_can_cache(const struct layer_ops *ops)
{
    return ops->can_no_overwrite;
}

/* Remove the image files this open created, each only if its path still names the file
 * made then. */
static void remove_created(struct lf_disk *disk)
{
    for (guint i = 0; i < disk->created->len; i++) {
        struct lf_created *c = &g_array_index(disk->created, struct lf_created, i);
        struct stat st;
        if (lstat(c->path, &st) == 0 && st.st_dev == c->dev && st.st_ino == c->ino &&
            unlink(c->path) < 0)
            g_warning("disk %s: cannot remove %s, created by this start: %s", disk->name,
                      c->path, g_strerror(errno));
    }
}

/* Close every open layer (res: the first error) and free disk; undo: then also remove the
 * image files this open created. */
static void close_layers(struct lf_disk *disk, bool undo, int *res)
{
    for (unsigned i = 0; i < disk->nlayers; i++) {
        struct layer *l = disk->layers[i];
        if (l == NULL)
            continue;
        if (l->priv != NULL) {
            int r = l->ops->close(l);
            if (r < 0 && *res == 0)
                *res = r;
        }
        g_free(l->name);
        g_free(l->origin);
        g_free(l);
    }
    if (undo)
        remove_created(disk);
    for (guint i = 0; i < disk->created->len; i++)
        g_free(g_array_index(disk->created, struct lf_created, i).path);
    g_array_free(disk->created, true);
    g_free(disk->layers);
    g_free(disk->name);
    g_free(disk);
}

/* Before opening layer l (lc) with create = true: refuse what creating must not do.
 * *is_new: nothing is at the path yet, so an image there after the open was made by it. */
static bool check_create(const struct layer *l, const struct lf_layer_cfg *lc,
                         const struct layer *below, bool writable, bool *is_new,
                         GError **errp)
{
    struct stat st;

    *is_new = false;
    if (!lc->create || lc->path == NULL)
        return true;
    if (lstat(lc->path, &st) == 0) {
        if (S_ISLNK(st.st_mode) && stat(lc->path, &st) < 0 && errno == ENOENT) {
            g_autofree char *target = g_file_read_link(lc->path, NULL);
            g_set_error(errp, LF_ERROR, ENOENT,
                        "%s:create: %s is a dangling symlink (to %s); layerfs does not "
                        "create images through symlinks: create the image at the target, "
                        "or give its own path", l->origin, lc->path,
                        target ? target : "?");
            return false;
        }
        return true;
    }
    if (errno != ENOENT)
        return true;    /* the open reports it */
    if (!writable && (l->disk->read_only || lc->read_only)) {
        g_set_error(errp, LF_ERROR, EROFS,
                    "%s:create: %s does not exist, and a layer opened read-only (--read-only, "
                    "or read-only = true) is not created; create it with layerfs-img create "
                    "or open the disk writable", l->origin, lc->path);
        return false;
    }
    if (below != NULL && below->size == 0 &&
        !(lc->driver_opts != NULL && g_hash_table_contains(lc->driver_opts, "size"))) {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s:create: cannot size %s from layer %s below it: that layer is empty "
                    "(0 bytes)", l->origin, lc->path, below->name);
        return false;
    }
    *is_new = true;
    return true;
}

/* After opening layer l: if is_new, remember the image it created at lc->path. */
static void note_created(struct lf_disk *disk, const struct lf_layer_cfg *lc, bool is_new)
{
    struct stat st;

    if (is_new && lstat(lc->path, &st) == 0 && S_ISREG(st.st_mode)) {
        struct lf_created c = { g_strdup(lc->path), st.st_dev, st.st_ino };
        g_array_append_val(disk->created, c);
    }
}

/* A layer smaller than one below it hides the end of that layer's data: an error unless the
 * smaller layer says allow-smaller. */
static bool check_sizes(const struct lf_disk *disk, const struct lf_disk_cfg *cfg,
                        GError **errp)
{
    for (unsigned i = 0; i < disk->nlayers; i++) {
        const struct lf_layer_cfg *lc = g_ptr_array_index(cfg->layers, i);
        struct layer *l = disk->layers[i];
        struct layer *big = NULL;

        if (lc->allow_smaller)
            continue;
        for (unsigned j = i + 1; j < disk->nlayers; j++)
            if (disk->layers[j]->size > l->size &&
                (big == NULL || disk->layers[j]->size > big->size))
                big = disk->layers[j];
        if (big != NULL) {
            g_set_error(errp, LF_ERROR, EINVAL,
                        "%s: layer %s (%" PRIu64 " bytes) is smaller than layer %s below it "
                        "(%" PRIu64 " bytes) and would hide its last %" PRIu64 " bytes; make "
                        "%s as large, or set allow-smaller = true on layer %s", l->origin,
                        l->name, l->size, big->name, big->size, big->size - l->size, l->name,
                        l->name);
            return false;
        }
    }
    return true;
}

/* Check the stack top-down once every layer is open. */
static bool validate(struct lf_disk *disk, const struct lf_disk_cfg *cfg, GError **errp)
{
    unsigned n = disk->nlayers;

    for (unsigned i = 0; i < n; i++) {
        struct layer *l = disk->layers[i];
        const char *where = l->origin;

        if (l->write_through && (i == n - 1 || (i > 0 && !disk->layers[i - 1]->write_through))) {
            g_set_error(errp, LF_ERROR, EINVAL,
                        "%s:write-through: useless write-through (%s); write-through layers "
                        "must come first and the last layer may not be write-through",
                        where, i == n - 1 ? "it is the last layer" : "a layer above is not "
                        "write-through");
            return false;
        }
        if (l->read_cache && !l->ops->can_no_overwrite) {
            g_autofree char *can = layer_format_list(fmt_can_cache);
            g_set_error(errp, LF_ERROR, EINVAL,
                        "%s:read-cache: format %s cannot be a read cache (it cannot do "
                        "no-overwrite writes); use %s", where, l->ops->format, can);
            return false;
        }
        if (l->block_size == 0 || (l->block_size & (l->block_size - 1)) != 0) {
            g_set_error(errp, LF_ERROR, EINVAL, "%s: block size %u is not a power of two",
                        where, l->block_size);
            return false;
        }
    }
    if (disk->layers[0]->size == 0) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s: layer %s is empty (0 bytes): disk %s would "
                    "have no data", disk->layers[0]->origin, disk->layers[0]->name, cfg->name);
        return false;
    }
    if (!check_sizes(disk, cfg, errp))
        return false;
    if (!disk->read_only) {
        for (unsigned i = 0; i < disk->nwrite; i++) {
            struct layer *l = disk->layers[i];
            if (l->read_only) {
                g_set_error(errp, LF_ERROR, EROFS,
                            "%s:read-only: layer %s is read-only but disk %s writes to it (set "
                            "read-only = true on the disk or make the layer writable)",
                            l->origin, l->name, cfg->name);
                return false;
            }
        }
    }
    return true;
}

struct lf_disk *lf_disk_open(const struct lf_disk_cfg *cfg, bool force_read_only,
                             GError **errp)
{
    if (cfg->layers == NULL || cfg->layers->len == 0) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s:layers: disk %s has no layers",
                    cfg->origin ? cfg->origin : cfg->name, cfg->name);
        return NULL;
    }

    struct lf_disk *disk = g_new0(struct lf_disk, 1);
    int ignore = 0;
    disk->name = g_strdup(cfg->name);
    disk->read_only = cfg->read_only || force_read_only;
    disk->nlayers = cfg->layers->len;
    disk->layers = g_new0(struct layer *, disk->nlayers);
    disk->created = g_array_new(false, true, sizeof(struct lf_created));
    disk->nwrite = disk->nlayers;
    for (unsigned i = 0; i < disk->nlayers; i++) {
        const struct lf_layer_cfg *lc = g_ptr_array_index(cfg->layers, i);
        if (!lc->write_through) {
            disk->nwrite = i + 1;
            break;
        }
    }

    /* Open bottom-up: a created overlay is sized to the layer below it. */
    for (unsigned k = disk->nlayers; k-- > 0;) {
        const struct lf_layer_cfg *lc = g_ptr_array_index(cfg->layers, k);
        struct layer *l = g_new0(struct layer, 1);
        disk->layers[k] = l;
        l->name = g_strdup(lc->name);
        l->origin = g_strdup_printf("%s", lc->origin ? lc->origin : lc->name);
        l->disk = disk;
        l->index = k;
        l->read_cache = lc->read_cache;
        l->write_through = lc->write_through;
        l->ops = layer_format_find(lc->format);
        if (l->ops == NULL) {
            g_set_error(errp, LF_ERROR, EINVAL, "%s:format: unknown format '%s' (known: %s)",
                        l->origin, lc->format, layer_format_names());
            goto fail;
        }
        if (lc->create && !l->ops->can_create) {
            g_autofree char *can = layer_format_list(fmt_can_create);
            g_set_error(errp, LF_ERROR, EINVAL, "%s:create: only %s layers can be created",
                        l->origin, can);
            goto fail;
        }
        bool writable = (!disk->read_only && k < disk->nwrite) || lc->read_cache;
        if (writable && lc->read_only) {
            g_set_error(errp, LF_ERROR, EROFS,
                        "%s:read-only: layer %s is read-only but %s", l->origin, l->name,
                        lc->read_cache ? "it is a read cache" : "the disk writes to it");
            goto fail;
        }
        /* Eviction drops blocks: it must never meet one that is not a copy, and the
         * space bound admits only fills, which may be skipped (never writes). */
        if (lc->cache_size != 0 && !disk->read_only && k < disk->nwrite) {
            g_set_error(errp, LF_ERROR, EINVAL,
                        "%s:cache-size: disk %s writes to layer %s (%s); a bounded read "
                        "cache holds only copies of the layers below it and must sit below "
                        "the disk's writable layer", l->origin,
                        disk->name, l->name, lc->write_through ? "it is write-through"
                                                               : "it is the top layer");
            goto fail;
        }
        struct layer *below = k + 1 < disk->nlayers ? disk->layers[k + 1] : NULL;
        bool is_new;
        if (!check_create(l, lc, below, writable, &is_new, errp))
            goto fail;
        if (!l->ops->open(l, lc, below, writable, errp)) {
            /* A format may have created its image before failing: undo that too. */
            note_created(disk, lc, is_new);
            goto fail;
        }
        assert(l->priv != NULL);
        note_created(disk, lc, is_new);
        if (writable && l->read_only) {
            g_set_error(errp, LF_ERROR, EROFS,
                        "%s: layer %s can only be opened read-only, but %s", l->origin,
                        l->name, lc->read_cache ? "it is a read cache" : "the disk writes to it");
            goto fail;
        }
        /* The layers open so far read as a stack of their own (an overlay opened next
         * fingerprints it); the loop below sets the final values. */
        uint64_t v = UINT64_MAX;
        for (unsigned i = k; i < disk->nlayers; i++)
            disk->layers[i]->visible = v = MIN(v, disk->layers[i]->size);
    }
    uint64_t visible = UINT64_MAX;
    for (unsigned i = 0; i < disk->nlayers; i++) {
        visible = MIN(visible, disk->layers[i]->size);
        disk->layers[i]->visible = visible;
    }
    if (!validate(disk, cfg, errp))
        goto fail;
    return disk;

fail:
    close_layers(disk, true, &ignore);
    return NULL;
}

/* Flush and close disk; undo: then remove the images its open created. */
static int disk_close(struct lf_disk *disk, bool undo)
{
    int res = 0;
    struct bc_sync s;

    if (disk == NULL)
        return 0;
    if (bc_sync_begin(&s, NULL, NULL)) {
        lf_disk_flush(disk, s.loop, bc_sync_cb, &s);
        res = bc_sync_wait(&s);
        bc_sync_end(&s);
    } else {
        res = -ENOMEM;
    }
    close_layers(disk, undo, &res);
    return res;
}

int lf_disk_close(struct lf_disk *disk)
{
    return disk_close(disk, false);
}

int lf_disk_close_undo(struct lf_disk *disk)
{
    return disk_close(disk, true);
}

const char *lf_disk_name(const struct lf_disk *disk)
{
    return disk->name;
}

uint64_t lf_disk_size(const struct lf_disk *disk)
{
    return disk->layers[0]->size;
}

bool lf_disk_read_only(const struct lf_disk *disk)
{
    return disk->read_only;
}

uint32_t lf_disk_block_size(const struct lf_disk *disk)
{
    struct layer *top = disk->layers[0];
    uint32_t bs = MAX(4096u, top->io_align);

    if (top->block_size > 1)
        bs = MAX(bs, top->block_size);
    return MIN(bs, 1u << 20);
}

unsigned lf_disk_layer_count(const struct lf_disk *disk)
{
    return disk->nlayers;
}

const char *lf_disk_layer_name(const struct lf_disk *disk, unsigned i)
{
    return i < disk->nlayers ? disk->layers[i]->name : NULL;
}

bool lf_disk_cache_stats(struct lf_disk *disk, unsigned i, struct lf_cache_stats *st)
{
    struct layer *l = i < disk->nlayers ? disk->layers[i] : NULL;

    return l != NULL && l->ops->cache_stats != NULL && l->ops->cache_stats(l, st);
}

const char *lf_disk_layer_format(const struct lf_disk *disk, unsigned i)
{
    return i < disk->nlayers ? disk->layers[i]->ops->format : NULL;
}
