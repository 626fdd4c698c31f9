/* SPDX-License-Identifier: MIT */
/* Helpers for the layers tests; see layers-test.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <unistd.h>

#include "t/unit/layers-test.h"

struct lf_layer_cfg *lt_layer(const char *name, const char *format, const char *driver,
                              const char *path)
{
    struct lf_layer_cfg *lc = g_new0(struct lf_layer_cfg, 1);

    lc->name = g_strdup(name);
    lc->format = g_strdup(format);
    lc->driver = g_strdup(driver);
    lc->path = g_strdup(path);
    lc->direct = true;
    lc->driver_opts = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    lc->origin = g_strdup_printf("test:layer %s", name);
    return lc;
}

void lt_opt(struct lf_layer_cfg *lc, const char *key, const char *value)
{
    g_hash_table_replace(lc->driver_opts, g_strdup(key), g_strdup(value));
}

static void layer_free(gpointer p)
{
    struct lf_layer_cfg *lc = p;

    g_free(lc->name);
    g_free(lc->format);
    g_free(lc->driver);
    g_free(lc->path);
    g_free(lc->origin);
    g_hash_table_unref(lc->driver_opts);
    g_free(lc);
}

struct lf_disk_cfg *lt_disk(const char *name, bool read_only, ...)
{
    struct lf_disk_cfg *cfg = g_new0(struct lf_disk_cfg, 1);
    va_list ap;

    cfg->name = g_strdup(name);
    cfg->read_only = read_only;
    cfg->origin = g_strdup_printf("test:disk %s", name);
    cfg->layers = g_ptr_array_new_with_free_func(layer_free);
    va_start(ap, read_only);
    for (struct lf_layer_cfg *lc; (lc = va_arg(ap, struct lf_layer_cfg *)) != NULL;)
        g_ptr_array_add(cfg->layers, lc);
    va_end(ap);
    return cfg;
}

void lt_disk_free(struct lf_disk_cfg *cfg)
{
    g_ptr_array_free(cfg->layers, true);
    g_free(cfg->name);
    g_free(cfg->origin);
    g_free(cfg);
}

/* Run a request started with bc_sync_cb on w to completion. */
static int lt_run(struct bc_sync *w)
{
    g_assert_cmpuint(w->pending, ==, 1);    /* never completed inside the call */
    int r = bc_sync_wait(w);
    bc_sync_end(w);
    return r;
}

static struct bc_sync lt_sync(struct bc_loop *loop)
{
    struct bc_sync w;

    g_assert_true(bc_sync_begin(&w, loop, NULL));
    return w;
}

int lt_read(struct lf_disk *d, struct bc_loop *loop, void *buf, size_t len, uint64_t off)
{
    struct bc_sync w = lt_sync(loop);
    struct iovec iov = { buf, len };

    lf_disk_readv(d, loop, &iov, 1, off, bc_sync_cb, &w);
    return lt_run(&w);
}

int lt_write(struct lf_disk *d, struct bc_loop *loop, const void *buf, size_t len,
             uint64_t off, unsigned flags)
{
    struct bc_sync w = lt_sync(loop);
    struct iovec iov = { (void *)buf, len };

    lf_disk_writev(d, loop, &iov, 1, off, flags, bc_sync_cb, &w);
    return lt_run(&w);
}

int lt_zero(struct lf_disk *d, struct bc_loop *loop, uint64_t off, uint64_t len,
            unsigned flags)
{
    struct bc_sync w = lt_sync(loop);

    lf_disk_write_zeroes(d, loop, off, len, flags, bc_sync_cb, &w);
    return lt_run(&w);
}

int lt_flush(struct lf_disk *d, struct bc_loop *loop)
{
    struct bc_sync w = lt_sync(loop);

    lf_disk_flush(d, loop, bc_sync_cb, &w);
    return lt_run(&w);
}

uint8_t *lt_make_file(const char *path, size_t len, guint32 seed)
{
    uint8_t *data = g_malloc0(MAX(len, 1));

    if (seed != 0) {
        GRand *r = g_rand_new_with_seed(seed);
        for (size_t i = 0; i < len; i++)
            data[i] = (uint8_t)g_rand_int(r);
        g_rand_free(r);
    }
    g_autoptr(GError) err = NULL;
    if (!g_file_set_contents(path, (const char *)data, (gssize)len, &err))
        g_error("%s", err->message);
    return data;
}

uint8_t *lt_slurp(const char *path, size_t *len)
{
    gchar *data = NULL;
    gsize n = 0;
    g_autoptr(GError) err = NULL;

    if (!g_file_get_contents(path, &data, &n, &err))
        g_error("%s", err->message);
    *len = n;
    return (uint8_t *)data;
}
