/* SPDX-License-Identifier: MIT */
/* I/O buffers from a few large memfd-backed, MAP_SHARED arenas that drivers needing
 * device-visible memory register once (vhost-user memory regions, VFIO DMA mappings), so
 * that buffers from bc_buf_alloc() reach such devices without a copy. */

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "blockcore/bc-internal.h"
#include "blockcore/pagemap.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/*
 * Notes on the design
 *
 * Arenas.  The set of arenas is fixed the first time anyone asks for a buffer or for the
 * regions (a driver opening), so a driver registers everything there will ever be in one
 * go.  The total is bounded (bc_buf_pool_set_size(), else LAYERFS_BUF_POOL in the
 * environment, else BC_BUF_POOL_DEFAULT_SIZE) and split into at most BC_BUF_MAX_REGIONS
 * arenas of at most ARENA_TARGET bytes each, rounded to 2 MiB.  Pages of a memfd are only
 * allocated when touched (except where a VFIO mapping pins them).  The mappings are
 * MAP_SHARED, so a fork() neither copies them nor breaks a pinned DMA mapping; the daemon
 * forks before it opens disks anyway.
 *
 * Allocation.  Buffers are whole 4 KiB pages.  Each arena has a page map (pagemap.h: a
 * bitmap, first fit from a rotating hint; nothing ever waits on it) and, at each buffer's
 * first page, its length in pages; one mutex covers all the maps.  In front of that, every
 * thread keeps a small cache of freed buffers (exact page counts, up to TC_SLOTS buffers
 * and tc_cap() bytes), so the steady state of a loop that allocates and frees the same
 * sizes takes no lock.  A thread's cache goes back to the arenas when it exits.  A request
 * the arenas cannot satisfy (too large, or they are full) falls back to posix_memalign():
 * correct, only copied by drivers that need device-visible memory.
 *
 * Under AddressSanitizer, free and cached arena memory is poisoned, as is the unused tail
 * of the last page of a buffer, so use after free and overruns are still caught.
 */

#define PAGE 4096u
#define ARENA_TARGET ((size_t)32 << 20)
#define ARENA_ROUND ((size_t)2 << 20)
#define TC_SLOTS 32
#define TC_MAX_BYTES ((size_t)4 << 20)

struct arena {
    uint8_t *base;
    size_t len;
    int fd;
    struct bc_pagemap map;  /* pages in use (or cached by a thread); under pool.lock */
    uint32_t *npages;       /* at a buffer's first page: its pages; owner reads freely */
};

static struct {
    pthread_once_t once;
    GMutex lock;                /* protects the arenas' page maps, in_use and peak */
    size_t total;               /* configured bytes; (size_t)-1 = not configured */
    bool created;               /* the set of arenas is fixed (set once, in create()) */
    unsigned n;
    struct arena a[BC_BUF_MAX_REGIONS];
    uintptr_t lo, hi;           /* bounds of all arenas, for a quick "not ours" */
    size_t max_pages;           /* the largest buffer an arena can hold */
    size_t in_use, peak;        /* bytes handed out, including thread caches */
    uint64_t fallbacks;         /* atomic */
    pthread_key_t tc_key;
} pool = {
    .once = PTHREAD_ONCE_INIT,
    .total = (size_t)-1,
};

/* A thread's cache of freed arena buffers, oldest first. */
struct tcache {
    unsigned n;
    size_t bytes;
    struct { uint8_t *p; uint32_t pages; } e[TC_SLOTS];
    bool registered;            /* tc_key set, so it is flushed at thread exit */
};
static __thread struct tcache tc;

/* ---- creating the arenas ------------------------------------------------------------ */

static void tc_flush(void *arg);

static bool make_arena(struct arena *a, size_t len)
{
    a->fd = memfd_create("layerfs-io-buffers", MFD_CLOEXEC);
    if (a->fd < 0)
        return false;
    if (ftruncate(a->fd, (off_t)len) < 0) {
        close(a->fd);
        return false;
    }
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, a->fd, 0);
    if (p == MAP_FAILED) {
        close(a->fd);
        return false;
    }
    a->base = p;
    a->len = len;
    bool mapped = bc_pagemap_init(&a->map, len / PAGE);
    a->npages = calloc(len / PAGE, sizeof(uint32_t));
    if (!mapped || !a->npages) {
        if (mapped)
            bc_pagemap_destroy(&a->map);
        free(a->npages);
        munmap(p, len);
        close(a->fd);
        return false;
    }
    POISON(a->base, len);
    return true;
}

static void create(void)
{
    size_t total;

    g_mutex_lock(&pool.lock);     /* against bc_buf_pool_set_size() */
    total = pool.total;
    if (total == (size_t)-1) {
        const char *env = getenv("LAYERFS_BUF_POOL");
        uint64_t v;
        total = BC_BUF_POOL_DEFAULT_SIZE;
        if (env && *env) {
            if (bc_parse_size(env, &v) && v <= ((uint64_t)1 << 40))
                total = (size_t)v;
            else
                g_warning("LAYERFS_BUF_POOL=%s: not a size; using %zu bytes", env, total);
        }
    }
    pthread_key_create(&pool.tc_key, tc_flush);
    if (total >= PAGE) {
        unsigned n = (unsigned)MIN((total + ARENA_TARGET - 1) / ARENA_TARGET,
                                   (size_t)BC_BUF_MAX_REGIONS);
        size_t each = (total / n + ARENA_ROUND - 1) / ARENA_ROUND * ARENA_ROUND;
        for (unsigned i = 0; i < n; i++) {
            if (!make_arena(&pool.a[pool.n], each)) {
                g_warning("I/O buffer arena of %zu bytes: %s; buffers beyond %zu bytes are "
                          "ordinary memory", each, g_strerror(errno), (size_t)pool.n * each);
                break;
            }
            pool.n++;
        }
    }
    pool.lo = UINTPTR_MAX;
    for (unsigned i = 0; i < pool.n; i++) {
        pool.lo = MIN(pool.lo, (uintptr_t)pool.a[i].base);
        pool.hi = MAX(pool.hi, (uintptr_t)pool.a[i].base + pool.a[i].len);
        pool.max_pages = MAX(pool.max_pages, pool.a[i].map.pages);
    }
    __atomic_store_n(&pool.created, true, __ATOMIC_RELEASE);
    g_mutex_unlock(&pool.lock);
}

static inline void ensure(void)
{
    if (G_UNLIKELY(!__atomic_load_n(&pool.created, __ATOMIC_ACQUIRE)))
        pthread_once(&pool.once, create);
}

bool bc_buf_pool_set_size(size_t bytes)
{
    bool ok;

    g_mutex_lock(&pool.lock);
    ok = !__atomic_load_n(&pool.created, __ATOMIC_ACQUIRE);
    if (ok)
        pool.total = bytes;
    g_mutex_unlock(&pool.lock);
    return ok;
}

unsigned bc_buf_regions(struct bc_buf_region *out, unsigned max)
{
    unsigned n;

    ensure();
    n = MIN(pool.n, max);
    for (unsigned i = 0; i < n; i++)
        out[i] = (struct bc_buf_region){ pool.a[i].base, pool.a[i].len, pool.a[i].fd };
    return n;
}

void bc_buf_pool_stats(struct bc_buf_pool_stats *st)
{
    ensure();
    memset(st, 0, sizeof(*st));
    g_mutex_lock(&pool.lock);
    for (unsigned i = 0; i < pool.n; i++)
        st->total += pool.a[i].len;
    st->in_use = pool.in_use;
    st->peak = pool.peak;
    g_mutex_unlock(&pool.lock);
    st->fallbacks = __atomic_load_n(&pool.fallbacks, __ATOMIC_RELAXED);
}

/* ---- allocation -------------------------------------------------------------------- */

static struct arena *arena_of(const void *p)
{
    uintptr_t a = (uintptr_t)p;

    if (a < pool.lo || a >= pool.hi)
        return NULL;
    for (unsigned i = 0; i < pool.n; i++)
        if (a - (uintptr_t)pool.a[i].base < pool.a[i].len)
            return &pool.a[i];
    return NULL;
}

static uint8_t *global_take(size_t pages)
{
    uint8_t *p = NULL;

    g_mutex_lock(&pool.lock);
    for (unsigned i = 0; i < pool.n && !p; i++) {
        struct arena *a = &pool.a[i];
        ssize_t first = bc_pagemap_take(&a->map, pages);
        if (first >= 0) {
            a->npages[first] = (uint32_t)pages;
            p = a->base + (size_t)first * PAGE;
        }
    }
    if (p) {
        pool.in_use += pages * PAGE;
        pool.peak = MAX(pool.peak, pool.in_use);
    }
    g_mutex_unlock(&pool.lock);
    return p;
}

/* Give buffers back to their arenas; they are poisoned already. */
static void global_give(uint8_t *const *ps, const uint32_t *pages, unsigned n)
{
    g_mutex_lock(&pool.lock);
    for (unsigned i = 0; i < n; i++) {
        struct arena *a = arena_of(ps[i]);
        struct bc_pagemap_wait *none =
            bc_pagemap_put(&a->map, (size_t)(ps[i] - a->base) / PAGE, pages[i]);
        assert(!none);
        (void)none;
        pool.in_use -= (size_t)pages[i] * PAGE;
    }
    g_mutex_unlock(&pool.lock);
}

/* Bytes a thread may keep cached: a sixteenth of the arenas, at most TC_MAX_BYTES. */
static size_t tc_cap(void)
{
    return MIN(TC_MAX_BYTES, pool.n * pool.a[0].len / 16);
}

/* Return the oldest k cached buffers to the arenas. */
static void tc_evict(struct tcache *c, unsigned k)
{
    uint8_t *ps[TC_SLOTS];
    uint32_t pages[TC_SLOTS];

    k = MIN(k, c->n);
    for (unsigned i = 0; i < k; i++) {
        ps[i] = c->e[i].p;
        pages[i] = c->e[i].pages;
        c->bytes -= (size_t)pages[i] * PAGE;
    }
    memmove(&c->e[0], &c->e[k], (c->n - k) * sizeof(c->e[0]));
    c->n -= k;
    global_give(ps, pages, k);
}

/* At thread exit.  A buffer freed by a later destructor registers the cache again. */
static void tc_flush(void *arg)
{
    struct tcache *c = arg;
    tc_evict(c, c->n);
    c->registered = false;
}

void *bc_buf_alloc(size_t len)
{
    uint8_t *p = NULL;
    void *m;

    ensure();
    if (len <= pool.max_pages * PAGE) {
        size_t pages = len ? (len + PAGE - 1) / PAGE : 1;
        for (unsigned i = tc.n; i-- > 0;) {
            if (tc.e[i].pages == pages) {
                p = tc.e[i].p;
                tc.bytes -= pages * PAGE;
                tc.n--;
                memmove(&tc.e[i], &tc.e[i + 1], (tc.n - i) * sizeof(tc.e[0]));
                break;
            }
        }
        if (!p)
            p = global_take(pages);
        if (p) {
            UNPOISON(p, len ? len : 1);
            return p;
        }
    }
    __atomic_add_fetch(&pool.fallbacks, 1, __ATOMIC_RELAXED);
    if (posix_memalign(&m, PAGE, len ? len : 1))
        g_error("out of memory allocating %zu bytes of I/O buffer", len);
    return m;
}

void bc_buf_free(void *buf)
{
    struct arena *a = buf ? arena_of(buf) : NULL;

    if (!a) {
        free(buf);
        return;
    }
    uint8_t *p = buf;
    size_t first = (size_t)(p - a->base) / PAGE;
    uint32_t pages = a->npages[first];
    size_t bytes = (size_t)pages * PAGE;

    assert((size_t)(p - a->base) % PAGE == 0 && pages && first + pages <= a->map.pages);
    POISON(p, bytes);
    if (bytes > tc_cap()) {
        global_give(&p, &pages, 1);
        return;
    }
    if (!tc.registered) {
        tc.registered = true;
        pthread_setspecific(pool.tc_key, &tc);
    }
    if (tc.n == TC_SLOTS)
        tc_evict(&tc, TC_SLOTS / 2);
    if (tc.bytes + bytes > tc_cap()) {
        /* Make room, oldest first, in one go. */
        unsigned k = 0;
        size_t freed = 0;
        while (k < tc.n && tc.bytes - freed + bytes > tc_cap())
            freed += (size_t)tc.e[k++].pages * PAGE;
        tc_evict(&tc, k);
    }
    tc.e[tc.n].p = p;
    tc.e[tc.n].pages = pages;
    tc.n++;
    tc.bytes += bytes;
}
