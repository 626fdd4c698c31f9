/* SPDX-License-Identifier: MIT */
/* Bounded read caches: cache-size on an overlay read-cache layer.  Counts the space the
 * cache file takes, evicts with a clock when a fill needs room, keeps the figures. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "layers/cache.h"

/*
 * Notes on the design
 *
 * Space.  The overlay file is sparse at its full size; what it takes is its header and
 * bitmap (meta), one allocation unit (the block size, at least 4 KiB) per block that holds
 * data, and the file system's map of the file's extents (allowed for at 16 bytes a block,
 * plus two blocks).  The bound, limit, is in such units.  Blocks hold data when present
 * (sp->npresent), while being evicted (cleared but not yet punched: evicting) and while a
 * fill writes them (reserved: every block a fill spans, reserved before it is written,
 * released when it completes).  A fill starts only if npresent + evicting + reserved stays
 * within limit, so the file never takes more than the bound.  At open, data found in
 * absent blocks (a crash between a write and its mark, or between clearing a bit and
 * punching) is punched and a cache over its bound is evicted down to it.
 *
 * Eviction is a clock (second chance) over the present blocks: a block read from the
 * cache gets its reference bit; the hand clears the bits it passes and takes the first
 * present block without one.  The bits live only in memory: after a restart every block
 * starts unreferenced.  A fill that finds no room starts a batch (at least limit/16 blocks)
 * or waits for the running one, then tries again; after FILL_MAX_WAITS batches without
 * room (other fills took it) it is skipped: the read it serves already has its data.
 *
 * One batch runs at a time, on the loop of the fill that started it: it takes a strong
 * range lock (sp->locks) on each victim that no read or fill holds or awaits (the others
 * are left out of the batch, so it never waits for a lock while holding one), clears their
 * presence bits, runs a flush cycle of the overlay so that the cleared bits are durable,
 * and only then punches the data and drops the locks.  A crash before the flush leaves
 * the bits set over intact data; after it, the blocks are absent.  Reads from the cache
 * hold a weak range lock over their blocks from the presence check to the end of the store
 * read, so a block is never punched under a read; a read finding a block evicted meanwhile
 * reads from the layers below.  A refill of an evicted block waits behind the batch's
 * lock, so it is written after the punch.  If the flush fails the bits are set again (the
 * data was never touched).
 *
 * Only fills reach a bounded cache: disk.c refuses cache-size on a layer in a writable
 * disk's write chain, so every block is a copy of the layers below and eviction loses
 * nothing.
 *
 * c->lock protects reserved, evicting, running and waiters; the figures are relaxed
 * atomics; the reference bits are updated with atomic byte operations; hand is used only
 * by the running batch.  c->lock is never held with sp->lock or a blocker list's lock.
 */

#define FILL_MAX_WAITS 4    /* batches a fill waits for before it is skipped */

struct fill {
    struct lf_cache *c;
    struct bc_loop *loop;
    const struct iovec *iov;
    int iovcnt;
    uint64_t offset, len;
    uint64_t nres;          /* blocks reserved */
    unsigned waits;         /* eviction batches waited for */
    bc_cb *cb;
    void *opaque;
    struct bc_task task;
    struct fill *next;
};

struct victim {
    struct bc_blocker lock;
    struct evict *ev;
    uint64_t b;
    bool dropped;           /* its bit was cleared by this batch */
    bool freed;             /* its data was punched */
};

struct evict {
    struct lf_cache *c;
    struct bc_loop *loop;
    struct victim *v;
    unsigned n, pending, ndropped;
    struct bc_task task;
};

struct lf_cache {
    struct layer *l;
    struct sparse *sp;
    uint64_t limit;         /* allocation units the data may take */
    uint64_t batch;         /* blocks a batch evicts at least */
    uint64_t marked0;       /* sp->nmarked at open */
    uint8_t *ref;           /* clock reference bits, one per block */
    uint64_t hand;
    GMutex lock;
    uint64_t reserved;
    uint64_t evicting;
    bool running;
    struct fill *waiters;
    uint64_t hits, misses, evictions, below_bytes;
};

unsigned cache_test_read_delay_us;
unsigned cache_test_evict_delay_us;

static void add(uint64_t *ctr, uint64_t n)
{
    __atomic_fetch_add(ctr, n, __ATOMIC_RELAXED);
}

static uint64_t blocks_spanned(struct sparse *sp, uint64_t offset, uint64_t len)
{
    if (len == 0 || offset >= sp->size)
        return 0;
    uint64_t end = MIN(offset + len, sp->size);
    return ((end - 1) >> sp->shift) - (offset >> sp->shift) + 1;
}

/* Blocks of data the file holds or is about to; under c->lock. */
static uint64_t used(struct lf_cache *c)
{
    return __atomic_load_n(&c->sp->npresent, __ATOMIC_RELAXED) + c->evicting + c->reserved;
}

/* ---- eviction -------------------------------------------------------------------------- */

static void fill_try(struct fill *f);

static void fill_retry_task(struct bc_task *task)
{
    fill_try(bc_container_of(task, struct fill, task));
}

static void ev_end(struct evict *ev)
{
    struct lf_cache *c = ev->c;
    uint64_t freed = 0;

    for (unsigned i = 0; i < ev->n; i++) {
        bc_blocker_release(&c->sp->locks, &ev->v[i].lock);
        freed += ev->v[i].freed;
    }
    add(&c->evictions, freed);
    g_mutex_lock(&c->lock);
    /* A block whose punch failed may still take space: it stays counted. */
    c->evicting -= freed;
    c->running = false;
    struct fill *w = c->waiters;
    c->waiters = NULL;
    g_mutex_unlock(&c->lock);
    while (w != NULL) {
        struct fill *nx = w->next;
        w->task.fn = fill_retry_task;
        bc_loop_wake(w->loop, &w->task);
        w = nx;
    }
    g_free(ev->v);
    g_free(ev);
}

static void ev_punched(void *opaque, int res)
{
    struct victim *v = opaque;
    struct evict *ev = v->ev;

    if (res < 0)
        g_warning("%s: cannot punch evicted cache block %" PRIu64 ": %s", ev->c->l->origin,
                  v->b, g_strerror(-res));
    else
        v->freed = true;
    if (--ev->pending == 0)
        ev_end(ev);
}

static void ev_flushed(void *opaque, int res)
{
    struct evict *ev = opaque;
    struct lf_cache *c = ev->c;
    struct sparse *sp = c->sp;

    if (res < 0) {
        /* The bits may still be set on disk: keep the data, and the blocks. */
        g_warning("%s: cannot evict from the read cache: flush failed: %s", c->l->origin,
                  g_strerror(-res));
        for (unsigned i = 0; i < ev->n; i++)
            if (ev->v[i].dropped)
                sparse_set(sp, ev->v[i].b, true);
        g_mutex_lock(&c->lock);
        c->evicting -= ev->ndropped;
        g_mutex_unlock(&c->lock);
        ev_end(ev);
        return;
    }
    ev->pending = 1;
    for (unsigned i = 0; i < ev->n; i++) {
        struct victim *v = &ev->v[i];
        if (!v->dropped)
            continue;
        ev->pending++;
        sp->ops->punch(sp->store, ev->loop, v->b << sp->shift, sp->bs, ev_punched, v);
    }
    if (--ev->pending == 0)
        ev_end(ev);
}

static void ev_end_task(struct bc_task *task)
{
    ev_end(bc_container_of(task, struct evict, task));
}

/* Every victim is locked: clear their bits, make that durable, then punch. */
static void ev_locked(struct evict *ev)
{
    struct lf_cache *c = ev->c;

    for (unsigned i = 0; i < ev->n; i++) {
        struct victim *v = &ev->v[i];
        /* Counted as evicting before the bit goes, so used() never undercounts. */
        g_mutex_lock(&c->lock);
        c->evicting++;
        g_mutex_unlock(&c->lock);
        v->dropped = sparse_set(c->sp, v->b, false);
        if (v->dropped) {
            ev->ndropped++;
        } else {
            g_mutex_lock(&c->lock);
            c->evicting--;
            g_mutex_unlock(&c->lock);
        }
    }
    if (ev->ndropped == 0) {
        ev->task.fn = ev_end_task;
        bc_loop_defer(ev->loop, &ev->task);
        return;
    }
    c->l->ops->flush(c->l, ev->loop, ev_flushed, ev);
}

/* Pick up to want victims with the clock; returns how many. */
static unsigned ev_pick(struct lf_cache *c, struct victim *v, unsigned want)
{
    struct sparse *sp = c->sp;
    unsigned n = 0;

    g_mutex_lock(&sp->lock);
    for (uint64_t step = 0; step < 2 * sp->nblocks && n < want; step++) {
        uint64_t b = c->hand;
        c->hand = b + 1 < sp->nblocks ? b + 1 : 0;
        if ((b & 7) == 0 && sp->bitmap[b >> 3] == 0 && b + 8 <= sp->nblocks) {
            c->hand = b + 8 < sp->nblocks ? b + 8 : 0;
            step += 7;
            continue;
        }
        if (!bit_get(sp->bitmap, b))
            continue;
        uint8_t m = (uint8_t)(1u << (b & 7));
        if (__atomic_fetch_and(&c->ref[b >> 3], (uint8_t)~m, __ATOMIC_RELAXED) & m)
            continue;   /* referenced: a second chance */
        v[n++].b = b;
    }
    g_mutex_unlock(&sp->lock);
    return n;
}

/* Start a batch freeing at least need blocks (c->running was set by the caller).  Each
 * victim is locked only if no read or fill holds or awaits it, else dropped from the batch
 * (it is in use, so hardly the one to evict): a batch that kept some locks while it waited
 * for others could wait behind a read that waits for one it keeps. */
static void ev_start(struct lf_cache *c, struct bc_loop *loop, uint64_t need)
{
    struct evict *ev = g_new0(struct evict, 1);
    unsigned want = (unsigned)MIN(MAX(need, c->batch), (uint64_t)c->sp->nblocks);
    unsigned picked, n = 0;

    ev->c = c;
    ev->loop = loop;
    ev->v = g_new0(struct victim, MAX(want, 1u));
    picked = ev_pick(c, ev->v, want);
    for (unsigned i = 0; i < picked; i++) {
        struct victim *v = &ev->v[n];
        v->b = ev->v[i].b;
        v->ev = ev;
        v->lock.start = v->b;
        v->lock.end = v->b + 1;
        v->lock.strong = true;
        if (bc_blocker_try_acquire(&c->sp->locks, &v->lock))
            n++;
        unsigned delay = __atomic_load_n(&cache_test_evict_delay_us, __ATOMIC_RELAXED);
        if (delay > 0)
            g_usleep(delay);    /* a batch preempted between two of its victims */
    }
    ev->n = n;
    if (ev->n == 0) {
        ev->task.fn = ev_end_task;
        bc_loop_defer(loop, &ev->task);
    } else {
        ev_locked(ev);
    }
}

/* ---- fills ----------------------------------------------------------------------------- */

static void fill_finish(struct fill *f, int res)
{
    bc_cb *cb = f->cb;
    void *opaque = f->opaque;

    g_free(f);
    cb(opaque, res);
}

static void fill_done(void *opaque, int res)
{
    struct fill *f = opaque;
    struct lf_cache *c = f->c;

    g_mutex_lock(&c->lock);
    c->reserved -= f->nres;
    g_mutex_unlock(&c->lock);
    fill_finish(f, res);
}

static void fill_skip_task(struct bc_task *task)
{
    fill_finish(bc_container_of(task, struct fill, task), 0);
}

static void fill_try(struct fill *f)
{
    struct lf_cache *c = f->c;
    uint64_t n = blocks_spanned(c->sp, f->offset, f->len);

    g_mutex_lock(&c->lock);
    uint64_t u = used(c);
    if (u + n <= c->limit) {
        c->reserved += n;
        f->nres = n;
        g_mutex_unlock(&c->lock);
        sparse_write(c->sp, f->loop, f->iov, f->iovcnt, f->offset, LAYER_NO_OVERWRITE,
                     fill_done, f);
        return;
    }
    if (n > c->limit || f->waits == FILL_MAX_WAITS) {
        g_mutex_unlock(&c->lock);
        f->task.fn = fill_skip_task;
        bc_loop_defer(f->loop, &f->task);
        return;
    }
    f->waits++;
    f->next = c->waiters;
    c->waiters = f;
    bool start = !c->running;
    c->running = true;
    g_mutex_unlock(&c->lock);
    if (start)
        ev_start(c, f->loop, u + n - c->limit);
}

void cache_fill(struct lf_cache *c, struct bc_loop *loop, const struct iovec *iov,
                int iovcnt, uint64_t offset, bc_cb *cb, void *opaque)
{
    struct fill *f = g_new0(struct fill, 1);

    *f = (struct fill){ .c = c, .loop = loop, .iov = iov, .iovcnt = iovcnt, .offset = offset,
                        .len = bc_iov_len(iov, iovcnt), .cb = cb, .opaque = opaque };
    add(&c->misses, blocks_spanned(c->sp, offset, f->len));
    add(&c->below_bytes, f->len);
    fill_try(f);
}

/* ---- reads ----------------------------------------------------------------------------- */

struct crd {
    struct lf_cache *c;
    struct bc_loop *loop;
    const struct iovec *iov;
    int iovcnt;
    uint64_t offset, len;
    struct bc_blocker lock;
    bc_cb *cb;
    void *opaque;
};

static void crd_done(void *opaque, int res)
{
    struct crd *r = opaque;
    bc_cb *cb = r->cb;
    void *op = r->opaque;

    bc_blocker_release(&r->c->sp->locks, &r->lock);
    g_free(r);
    cb(op, res);
}

/* Under the read's range lock: from the cache if still all present, else from below. */
static void crd_go(struct crd *r)
{
    struct lf_cache *c = r->c;
    struct sparse *sp = c->sp;
    uint64_t n = 0;

    if (sparse_present(sp, r->offset, r->len, &n) == 1 && n == r->len) {
        for (uint64_t b = r->lock.start; b < r->lock.end; b++)
            __atomic_fetch_or(&c->ref[b >> 3], (uint8_t)(1u << (b & 7)), __ATOMIC_RELAXED);
        add(&c->hits, r->lock.end - r->lock.start);
        unsigned delay = __atomic_load_n(&cache_test_read_delay_us, __ATOMIC_RELAXED);
        if (delay > 0)
            g_usleep(delay);    /* a thread preempted between its check and its read */
        sparse_read(sp, r->loop, r->iov, r->iovcnt, r->offset, crd_done, r);
        return;
    }
    add(&c->below_bytes, r->len);
    layer_next_read(c->l, r->loop, r->iov, r->iovcnt, r->offset, crd_done, r);
}

static void crd_granted_task(struct bc_task *task)
{
    crd_go(bc_container_of(task, struct crd, lock.task));
}

void cache_read(struct lf_cache *c, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
                uint64_t offset, bc_cb *cb, void *opaque)
{
    struct crd *r = g_new0(struct crd, 1);

    *r = (struct crd){ .c = c, .loop = loop, .iov = iov, .iovcnt = iovcnt, .offset = offset,
                       .len = bc_iov_len(iov, iovcnt), .cb = cb, .opaque = opaque };
    if (r->len == 0 || offset >= c->sp->size) {
        int res = r->len == 0 ? 0 : -EIO;
        g_free(r);
        layer_complete_later(loop, cb, opaque, res);
        return;
    }
    r->lock.start = offset >> c->sp->shift;
    r->lock.end = r->lock.start + blocks_spanned(c->sp, offset, r->len);
    r->lock.strong = false;     /* readers share; evictions and fills exclude them */
    r->lock.task.fn = crd_granted_task;
    if (bc_blocker_acquire(&c->sp->locks, &r->lock, loop))
        crd_go(r);
}

/* ---- open and close -------------------------------------------------------------------- */

static int sync_punch(struct sparse *sp, struct bc_sync *s, uint64_t offset, uint64_t len)
{
    sp->ops->punch(sp->store, s->loop, offset, len, bc_sync_cb, s);
    return bc_sync_wait(s);
}

/* Evict (in bitmap order: no reference bits survive a restart) until within the limit. */
static bool trim(struct lf_cache *c, struct bc_sync *s, GError **errp)
{
    struct sparse *sp = c->sp;
    uint64_t over = sp->npresent - c->limit;
    GArray *gone = g_array_new(false, false, sizeof(uint64_t));
    int r;

    for (uint64_t b = 0; b < sp->nblocks && gone->len < over; b++)
        if (sparse_set(sp, b, false))
            g_array_append_val(gone, b);
    c->l->ops->flush(c->l, s->loop, bc_sync_cb, s);
    r = bc_sync_wait(s);
    for (guint i = 0; r == 0 && i < gone->len; i++)
        r = sync_punch(sp, s, g_array_index(gone, uint64_t, i) << sp->shift, sp->bs);
    if (r == 0)
        add(&c->evictions, gone->len);
    if (r == 0)
        g_message("%s: evicted %u blocks at open to fit cache-size", c->l->origin, gone->len);
    else
        g_set_error(errp, LF_ERROR, -r, "%s:cache-size: cannot evict down to the size: %s",
                    c->l->origin, g_strerror(-r));
    g_array_free(gone, true);
    return r == 0;
}

/* Punch data left in absent blocks (a crash between a write and its mark, or between a
 * durable eviction and its punch), so that the count of present blocks is the space. */
static bool reclaim(struct lf_cache *c, struct bc_sync *s, GError **errp)
{
    struct sparse *sp = c->sp;
    struct layer *l = c->l;
    uint64_t freed = 0;

    for (uint64_t off = 0; off < sp->size;) {
        uint64_t n = 0;
        if (sparse_present(sp, off, sp->size - off, &n) == 1) {
            off += n;
            continue;
        }
        for (uint64_t end = off + n; off < end;) {
            uint64_t m = 0;
            int st = l->ops->block_status(l, off, end - off, &m);
            m = MAX(MIN(m, end - off), 1);
            if (st > 0) {
                uint64_t a = off & ~(uint64_t)(sp->bs - 1);
                uint64_t e = MIN((off + m + sp->bs - 1) & ~(uint64_t)(sp->bs - 1), end);
                int r = sync_punch(sp, s, a, e - a);
                if (r < 0) {
                    g_set_error(errp, LF_ERROR, -r, "%s: cannot free unused cache space at "
                                "offset %" PRIu64 ": %s", l->origin, a, g_strerror(-r));
                    return false;
                }
                freed += e - a;
                m = e - off;
            }
            off += m;
        }
    }
    if (freed > 0)
        g_message("%s: freed %" PRIu64 " bytes of cache space no block used", l->origin,
                  freed);
    return true;
}

static void cache_free(struct lf_cache *c)
{
    g_mutex_clear(&c->lock);
    g_free(c->ref);
    g_free(c);
}

struct lf_cache *cache_open(struct layer *l, struct sparse *sp, uint64_t size, uint64_t meta,
                            GError **errp)
{
    uint64_t unit = MAX(sp->bs, 4096u);
    struct bc_sync s;

    /* The file system's own map of a fragmented sparse file (ext4's extent blocks hold
     * some 340 extents each, one extent per run of blocks) counts in du too: allow a
     * block of it per 256 blocks, and two more for the tree's upper levels. */
    meta += 2 * 4096;
    if (size <= meta || (size - meta) / (unit + 16) == 0) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s:cache-size: %" PRIu64 " bytes cannot hold "
                    "the cache's header and bitmap (%" PRIu64 " bytes) and one block of %"
                    PRIu64, l->origin, size, meta, unit);
        return NULL;
    }
    struct lf_cache *c = g_new0(struct lf_cache, 1);
    c->l = l;
    c->sp = sp;
    c->limit = (size - meta) / (unit + 16);
    c->batch = MIN(MAX(c->limit / 16, 1), 4096);
    c->ref = g_malloc0(sp->bitmap_len);
    g_mutex_init(&c->lock);
    if (!bc_sync_begin(&s, NULL, errp)) {
        cache_free(c);
        return NULL;
    }
    bool ok = (sp->npresent <= c->limit || trim(c, &s, errp)) && reclaim(c, &s, errp);
    bc_sync_end(&s);
    if (!ok) {
        cache_free(c);
        return NULL;
    }
    c->marked0 = sp->nmarked;
    return c;
}

void cache_get_stats(struct lf_cache *c, struct lf_cache_stats *st)
{
    st->hits = __atomic_load_n(&c->hits, __ATOMIC_RELAXED);
    st->misses = __atomic_load_n(&c->misses, __ATOMIC_RELAXED);
    st->evictions = __atomic_load_n(&c->evictions, __ATOMIC_RELAXED);
    st->filled_bytes = (__atomic_load_n(&c->sp->nmarked, __ATOMIC_RELAXED) - c->marked0)
                       << c->sp->shift;
    st->below_bytes = __atomic_load_n(&c->below_bytes, __ATOMIC_RELAXED);
    g_mutex_lock(&c->lock);
    st->used_blocks = used(c);
    g_mutex_unlock(&c->lock);
    st->limit_blocks = c->limit;
}

void cache_close(struct lf_cache *c)
{
    struct lf_cache_stats st;

    if (c == NULL)
        return;
    assert(!c->running && c->waiters == NULL);
    cache_get_stats(c, &st);
    g_message("%s: cache figures: hits %" PRIu64 ", misses %" PRIu64 ", evictions %" PRIu64
              ", bytes filled %" PRIu64 ", bytes from below %" PRIu64 ", blocks held %"
              PRIu64 " of %" PRIu64, c->l->origin, st.hits, st.misses, st.evictions,
              st.filled_bytes, st.below_bytes, st.used_blocks, st.limit_blocks);
    cache_free(c);
}
