/* SPDX-License-Identifier: MIT */
/* Bounce buffers under a process-wide budget: when it is used up, requests queue (FIFO)
 * and are woken on their own loop when memory comes back; memory never grows unbounded. */

#include <stdlib.h>
#include <string.h>

#include "blockcore/bc-internal.h"

/* All of these are protected by lock (a static GMutex needs no initialisation). */
static struct {
    GMutex lock;
    size_t budget;
    size_t in_use;
    size_t peak;
    struct bc_bounce_wait *head, *tail;     /* waiters, FIFO */
} bounce = {
    .budget = BC_BOUNCE_DEFAULT_BUDGET,
};

void bc_bounce_set_budget(size_t bytes)
{
    g_mutex_lock(&bounce.lock);
    bounce.budget = MAX(bytes, (size_t)64 << 10);
    g_mutex_unlock(&bounce.lock);
}

size_t bc_bounce_budget(void)
{
    size_t b;

    g_mutex_lock(&bounce.lock);
    b = bounce.budget;
    g_mutex_unlock(&bounce.lock);
    return b;
}

void bc_bounce_usage(size_t *in_use, size_t *peak)
{
    g_mutex_lock(&bounce.lock);
    if (in_use)
        *in_use = bounce.in_use;
    if (peak)
        *peak = bounce.peak;
    g_mutex_unlock(&bounce.lock);
}

void bc_bounce_reset_peak(void)
{
    g_mutex_lock(&bounce.lock);
    bounce.peak = bounce.in_use;
    g_mutex_unlock(&bounce.lock);
}

/* Called with the lock held: can len bytes be handed out now?  A request larger than
 * the whole budget runs alone rather than never. */
static bool fits(size_t len)
{
    return bounce.in_use + len <= bounce.budget || bounce.in_use == 0;
}

static void account(size_t len)
{
    bounce.in_use += len;
    if (bounce.in_use > bounce.peak)
        bounce.peak = bounce.in_use;
}

void *bc_bounce_get(size_t len, struct bc_bounce_wait *w, struct bc_loop *loop)
{
    g_mutex_lock(&bounce.lock);
    if (!bounce.head && fits(len)) {
        account(len);
        g_mutex_unlock(&bounce.lock);
        return bc_buf_alloc(len);
    }
    w->loop = loop;
    w->len = len;
    w->buf = NULL;
    w->next = NULL;
    if (bounce.tail)
        bounce.tail->next = w;
    else
        bounce.head = w;
    bounce.tail = w;
    g_mutex_unlock(&bounce.lock);
    return NULL;
}

void bc_bounce_put(void *buf, size_t len)
{
    struct bc_bounce_wait *ready = NULL, **rtail = &ready;

    bc_buf_free(buf);
    g_mutex_lock(&bounce.lock);
    assert(bounce.in_use >= len);
    bounce.in_use -= len;
    while (bounce.head && fits(bounce.head->len)) {
        struct bc_bounce_wait *w = bounce.head;
        bounce.head = w->next;
        if (!bounce.head)
            bounce.tail = NULL;
        account(w->len);
        w->next = NULL;
        *rtail = w;
        rtail = &w->next;
    }
    g_mutex_unlock(&bounce.lock);

    /* Allocate and wake outside the lock. */
    while (ready) {
        struct bc_bounce_wait *w = ready;
        ready = w->next;
        w->buf = bc_buf_alloc(w->len);
        bc_loop_wake(w->loop, &w->task);
    }
}
