/* SPDX-License-Identifier: MIT */
/* Helpers the layer formats share: deferred completions and opening a layer's device. */
#include <errno.h>
#include <string.h>

#include "layers/layer.h"

struct lf_late {
    struct bc_task task;
    bc_cb *cb;
    void *opaque;
    int res;
};

static void late_run(struct bc_task *task)
{
    struct lf_late *l = (struct lf_late *)task;
    bc_cb *cb = l->cb;
    void *opaque = l->opaque;
    int res = l->res;

    g_free(l);
    cb(opaque, res);
}

void layer_complete_later(struct bc_loop *loop, bc_cb *cb, void *opaque, int res)
{
    struct lf_late *l = g_new0(struct lf_late, 1);

    l->task.fn = late_run;
    l->cb = cb;
    l->opaque = opaque;
    l->res = res;
    bc_loop_defer(loop, &l->task);
}

struct bc_dev *layer_open_dev(const struct lf_layer_cfg *cfg, bool read_only, bool direct,
                              enum bc_lock lock, GError **errp)
{
    const char *dname = cfg->driver ? cfg->driver : LAYER_DEFAULT_DRIVER;
    const struct bc_driver *drv = bc_driver_find(dname);

    if (drv == NULL) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s:driver: unknown driver '%s' (known: %s)",
                    cfg->origin ? cfg->origin : cfg->name, dname, bc_driver_names());
        return NULL;
    }
    /* Driver messages then read "FILE:layer NAME:KEY: reason", like the parser's. */
    g_autofree char *what = cfg->origin ? g_strdup(cfg->origin)
                                        : g_strdup_printf("layer %s", cfg->name);
    struct bc_open_args args = {
        .what = what,
        .path = cfg->path,
        .read_only = read_only,
        .direct = direct,
        .lock = lock,
        .opts = cfg->driver_opts,
    };
    return bc_dev_open(drv, &args, errp);
}

void layer_log_driver_stats(const struct layer *l, struct bc_dev *dev)
{
    g_autofree char *text = bc_dev_drv_stats_text(dev);

    if (text != NULL)
        g_message("%s: driver %s figures: %s", l->origin, bc_dev_driver_name(dev), text);
}
