/* SPDX-License-Identifier: MIT */
/* The page-bitmap allocator with FIFO waiters (see pagemap.h); the owner locks. */

#include <assert.h>
#include <stdlib.h>

#include <glib.h>

#include "blockcore/pagemap.h"

bool bc_pagemap_init(struct bc_pagemap *m, size_t pages)
{
    assert(pages < ((size_t)1 << 32));
    m->pages = pages;
    m->bitmap = calloc((pages + 63) / 64 ? (pages + 63) / 64 : 1, sizeof(uint64_t));
    m->hint = 0;
    m->head = NULL;
    m->tail = &m->head;
    return m->bitmap != NULL;
}

void bc_pagemap_destroy(struct bc_pagemap *m)
{
    assert(!m->head);
    free(m->bitmap);
    m->bitmap = NULL;
}

/* First page >= i whose bit is want (0 or 1), or m->pages. */
static size_t next_bit(const struct bc_pagemap *m, size_t i, bool want)
{
    size_t words = (m->pages + 63) / 64;

    if (i >= m->pages)
        return m->pages;
    size_t wi = i / 64;
    uint64_t w = (want ? m->bitmap[wi] : ~m->bitmap[wi]) & (~0ull << (i % 64));
    while (!w) {
        if (++wi >= words)
            return m->pages;
        w = want ? m->bitmap[wi] : ~m->bitmap[wi];
    }
    return MIN(wi * 64 + (size_t)__builtin_ctzll(w), m->pages);
}

static void mark(struct bc_pagemap *m, size_t first, size_t n, bool used)
{
    while (n) {
        size_t bit = first % 64, k = MIN(n, 64 - bit);
        uint64_t mask = (k == 64 ? ~0ull : ((1ull << k) - 1)) << bit;
        if (used)
            m->bitmap[first / 64] |= mask;
        else
            m->bitmap[first / 64] &= ~mask;
        first += k;
        n -= k;
    }
}

/* True if pages [first, first+n) are all in use; looks at those words only. */
static bool all_used(const struct bc_pagemap *m, size_t first, size_t n)
{
    while (n) {
        size_t bit = first % 64, k = MIN(n, 64 - bit);
        uint64_t mask = (k == 64 ? ~0ull : ((1ull << k) - 1)) << bit;
        if ((m->bitmap[first / 64] & mask) != mask)
            return false;
        first += k;
        n -= k;
    }
    return true;
}

/* n free pages, first fit from the hint, wrapping once; -1 if none.  Waiters ignored. */
static ssize_t take(struct bc_pagemap *m, size_t n)
{
    assert(n);
    if (n > m->pages)
        return -1;
    for (int pass = 0; pass < 2; pass++) {
        size_t i = pass ? 0 : m->hint;
        size_t limit = pass ? MIN(m->hint + n, m->pages) : m->pages;
        for (;;) {
            i = next_bit(m, i, false);
            if (i + n > limit)
                break;
            size_t used = next_bit(m, i, true);
            if (used >= i + n) {
                mark(m, i, n, true);
                m->hint = i + n < m->pages ? i + n : 0;
                return (ssize_t)i;
            }
            i = used;
        }
    }
    return -1;
}

ssize_t bc_pagemap_take(struct bc_pagemap *m, size_t n)
{
    return m->head ? -1 : take(m, n);
}

bool bc_pagemap_take_or_wait(struct bc_pagemap *m, struct bc_pagemap_wait *w)
{
    /* A waiter that can never fit would hold every later one back for good. */
    assert(w->pages && w->pages <= m->pages);
    ssize_t first = bc_pagemap_take(m, w->pages);

    if (first >= 0) {
        w->first = (uint32_t)first;
        return true;
    }
    w->next = NULL;
    *m->tail = w;
    m->tail = &w->next;
    return false;
}

struct bc_pagemap_wait *bc_pagemap_put(struct bc_pagemap *m, size_t first, size_t n)
{
    struct bc_pagemap_wait *granted = NULL, **gtail = &granted;

    assert(n && first + n <= m->pages && all_used(m, first, n));
    mark(m, first, n, false);
    while (m->head) {
        struct bc_pagemap_wait *w = m->head;
        ssize_t got = take(m, w->pages);
        if (got < 0)
            break;
        w->first = (uint32_t)got;
        m->head = w->next;
        if (!m->head)
            m->tail = &m->head;
        w->next = NULL;
        *gtail = w;
        gtail = &w->next;
    }
    return granted;
}

struct bc_pagemap_wait *bc_pagemap_drain(struct bc_pagemap *m)
{
    struct bc_pagemap_wait *all = m->head;

    m->head = NULL;
    m->tail = &m->head;
    return all;
}
