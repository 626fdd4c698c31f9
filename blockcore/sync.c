/* SPDX-License-Identifier: MIT */
/* Waiting synchronously for asynchronous requests: the one loop that runs a bc_loop until
 * callbacks have fired, for setup paths, tools and tests (never the I/O threads' hot path). */
#include <string.h>

#include "blockcore/loop.h"

int bc_loop_wait(struct bc_loop *loop, const unsigned *pending)
{
    /* bc_loop_run_once() runs the queued tasks last, so a callback that decremented
     * *pending in this iteration is seen here before the loop could sleep again. */
    while (*pending > 0) {
        int r = bc_loop_run_once(loop, true);
        if (r < 0)
            return r;
    }
    return 0;
}

bool bc_sync_begin(struct bc_sync *s, struct bc_loop *loop, GError **errp)
{
    memset(s, 0, sizeof(*s));
    s->pending = 1;
    s->loop = loop != NULL ? loop : bc_loop_current();
    if (s->loop == NULL) {
        s->own = bc_loop_new(0, 64, errp);
        if (s->own == NULL)
            return false;
        s->loop = s->own;
    }
    return true;
}

void bc_sync_end(struct bc_sync *s)
{
    /* After a failed bc_sync_wait() the request may still be in the ring: keep the loop
     * (a leak) rather than free memory the kernel may still complete into. */
    if (s->own != NULL && !s->stuck)
        bc_loop_free(s->own);
    else if (s->own != NULL)
        g_warning("bc_sync_end: a request is still in flight; its loop is not freed");
    s->own = NULL;
    s->loop = NULL;
}

void bc_sync_cb(void *opaque, int res)
{
    struct bc_sync *s = opaque;

    s->res = res;
    s->pending = 0;
}

int bc_sync_wait(struct bc_sync *s)
{
    int r = bc_loop_wait(s->loop, &s->pending);

    if (r < 0) {
        s->stuck = true;
        return r;
    }
    s->pending = 1;     /* ready for the next request */
    return s->res;
}
