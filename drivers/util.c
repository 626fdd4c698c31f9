/* SPDX-License-Identifier: MIT */
/* Helpers shared by the backend drivers: validated option parsing and deferred completion. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>

#include "drivers/util.h"

const char *bc_what(const struct bc_open_args *args)
{
    return args->what ? args->what : "device";
}

bool bc_drv_lock_fd(const struct bc_open_args *args, int fd, GError **errp)
{
    if (args->lock == BC_LOCK_NONE)
        return true;
    int op = (args->lock == BC_LOCK_SHARED ? LOCK_SH : LOCK_EX) | LOCK_NB;
    while (flock(fd, op) < 0) {
        int e = errno;
        if (e == EINTR)
            continue;
        g_set_error(errp, BC_ERROR, e == EAGAIN ? EWOULDBLOCK : e, "%s: %s: %s", bc_what(args),
                    args->path, e == EWOULDBLOCK ? "in use (locked by another process or disk)"
                                                 : g_strerror(e));
        return false;
    }
    return true;
}

const char *bc_opt(const struct bc_open_args *args, const char *key)
{
    return args->opts ? g_hash_table_lookup(args->opts, key) : NULL;
}

bool bc_opt_size(const struct bc_open_args *args, const char *key, bool required, uint64_t def,
                 uint64_t *out, GError **errp)
{
    const char *v = bc_opt(args, key);

    if (!v) {
        if (required) {
            g_set_error(errp, BC_ERROR, 0, "%s:%s: a value is required", bc_what(args), key);
            return false;
        }
        *out = def;
        return true;
    }
    if (!bc_parse_size(v, out)) {
        g_set_error(errp, BC_ERROR, 0,
                    "%s:%s: '%s' is not a size (a number with an optional K, M, G or T)",
                    bc_what(args), key, v);
        return false;
    }
    return true;
}

bool bc_opt_pow2(const struct bc_open_args *args, const char *key, uint32_t min, uint32_t max,
                 uint32_t def, uint32_t *out, GError **errp)
{
    const char *v = bc_opt(args, key);
    uint64_t n;

    if (!v) {
        *out = def;
        return true;
    }
    if (!bc_parse_size(v, &n) || n < min || n > max || (n & (n - 1)) != 0) {
        g_set_error(errp, BC_ERROR, 0, "%s:%s: %s is not a power of two between %u and %u",
                    bc_what(args), key, v, min, max);
        return false;
    }
    *out = (uint32_t)n;
    return true;
}

bool bc_opt_uint(const struct bc_open_args *args, const char *key, uint64_t max, int64_t def,
                 int64_t *out, GError **errp)
{
    const char *v = bc_opt(args, key);
    guint64 n;

    assert(max <= INT64_MAX);
    if (!v) {
        *out = def;
        return true;
    }
    if (!g_ascii_string_to_unsigned(v, 10, 0, max, &n, NULL)) {
        g_set_error(errp, BC_ERROR, 0, "%s:%s: '%s' is not a whole number between 0 and %"
                    G_GUINT64_FORMAT, bc_what(args), key, v, (guint64)max);
        return false;
    }
    *out = (int64_t)n;
    return true;
}

#define E(name) { #name, name }
static const struct {
    const char *name;
    int err;
} bc_errno_names[] = {
    E(EIO), E(ENOSPC), E(EROFS), E(EPERM), E(EACCES), E(EINVAL), E(ENOMEM), E(EAGAIN),
    E(EDQUOT), E(EFBIG), E(ENODEV), E(ENXIO), E(EOPNOTSUPP), E(ETIMEDOUT), E(ECANCELED),
    E(EBADF), E(ESTALE), E(ENOTCONN), E(ESHUTDOWN), E(EINTR), E(EBUSY), E(ENOTSUP),
    E(EMEDIUMTYPE), E(ENOMEDIUM), E(EREMOTEIO), E(EILSEQ), E(EOVERFLOW), E(ENOLINK),
};
#undef E

bool bc_opt_errno(const struct bc_open_args *args, const char *key, int def, int *out,
                  GError **errp)
{
    const char *v = bc_opt(args, key);
    guint64 n;

    if (!v) {
        *out = def;
        return true;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(bc_errno_names); i++) {
        if (g_ascii_strcasecmp(v, bc_errno_names[i].name) == 0) {
            *out = bc_errno_names[i].err;
            return true;
        }
    }
    if (g_ascii_string_to_unsigned(v, 10, 1, 4095, &n, NULL)) {
        *out = (int)n;
        return true;
    }
    g_set_error(errp, BC_ERROR, 0,
                "%s:%s: '%s' is neither a known errno name (like EIO) nor a number 1..4095",
                bc_what(args), key, v);
    return false;
}

static void bc_drv_complete_task(struct bc_task *task)
{
    struct bc_dreq *dreq = bc_container_of(task, struct bc_dreq, task);

    dreq->done(dreq, (int)(int64_t)dreq->drv_scratch[3]);
}

void bc_drv_complete_later(struct bc_dreq *dreq, int res)
{
    assert(res <= 0);
    dreq->drv_scratch[3] = (uint64_t)(int64_t)res;
    dreq->task.fn = bc_drv_complete_task;
    bc_loop_defer(dreq->loop, &dreq->task);
}
