/* SPDX-License-Identifier: MIT */
/* Range blockers: weak or strong range locks granted in arrival order (see the notes in
 * blockcore.h); dev.c's write serialization and the sparse layer's block locks. */

#include "blockcore/bc-internal.h"

void bc_blockers_init(struct bc_blocker_list *l)
{
    g_mutex_init(&l->lock);
    l->head = l->tail = NULL;
}

void bc_blockers_destroy(struct bc_blocker_list *l)
{
    assert(!l->head);
    g_mutex_clear(&l->lock);
}

static bool conflicts(const struct bc_blocker *a, const struct bc_blocker *b)
{
    return (a->strong || b->strong) && a->start < b->end && b->start < a->end;
}

/* Lock held: may b be granted, given everything queued before it? */
static bool grantable(const struct bc_blocker *b)
{
    for (const struct bc_blocker *e = b->prev; e; e = e->prev)
        if (conflicts(e, b))
            return false;
    return true;
}

bool bc_blocker_acquire(struct bc_blocker_list *l, struct bc_blocker *b, struct bc_loop *loop)
{
    bool granted;

    assert(b->start < b->end);
    b->loop = loop;
    b->next = NULL;
    g_mutex_lock(&l->lock);
    b->prev = l->tail;
    if (l->tail)
        l->tail->next = b;
    else
        l->head = b;
    l->tail = b;
    granted = b->granted = grantable(b);
    g_mutex_unlock(&l->lock);
    /* Not b->granted: once unlocked, another thread may grant b and post its task. */
    return granted;
}

bool bc_blocker_try_acquire(struct bc_blocker_list *l, struct bc_blocker *b)
{
    bool ok = true;

    assert(b->start < b->end);
    b->loop = NULL;
    b->next = NULL;
    g_mutex_lock(&l->lock);
    /* Nothing granted or waiting may conflict: b overtakes no one and waits for no one. */
    for (const struct bc_blocker *e = l->head; e && ok; e = e->next)
        ok = !conflicts(e, b);
    if (ok) {
        b->prev = l->tail;
        if (l->tail)
            l->tail->next = b;
        else
            l->head = b;
        l->tail = b;
        b->granted = true;
    }
    g_mutex_unlock(&l->lock);
    return ok;
}

void bc_blocker_release(struct bc_blocker_list *l, struct bc_blocker *b)
{
    struct bc_blocker *wake[64];
    unsigned nwake = 0;
    bool more;

    do {
        more = false;
        g_mutex_lock(&l->lock);
        if (b) {
            assert(b->granted);
            if (b->prev)
                b->prev->next = b->next;
            else
                l->head = b->next;
            if (b->next)
                b->next->prev = b->prev;
            else
                l->tail = b->prev;
            b = NULL;
        }
        for (struct bc_blocker *e = l->head; e; e = e->next) {
            if (e->granted || !grantable(e))
                continue;
            if (nwake == G_N_ELEMENTS(wake)) {
                more = true;
                break;
            }
            e->granted = true;
            wake[nwake++] = e;
        }
        g_mutex_unlock(&l->lock);
        /* Wake outside the lock; a woken request may release (and free) its blocker at
         * once on another thread, so nothing here touches e after this point. */
        for (unsigned i = 0; i < nwake; i++)
            bc_loop_wake(wake[i]->loop, &wake[i]->task);
        nwake = 0;
    } while (more);
}
