/* SPDX-License-Identifier: MIT */
/* The configuration model shared by its two front ends (config-keyfile.c, config-inline.c):
 * struct lf_config, one layer's key/value pairs made into a checked struct lf_layer_cfg, and
 * the checks of a disk's stack -- every check that needs no open layer. */
#include <errno.h>
#include <string.h>

#include "layers/config-int.h"

/*
 * Notes on the design
 *
 * Both front ends (the key file and the inline form) reduce a layer to a list of key/value
 * pairs plus an origin string ("FILE:layer NAME" or "--disk NAME:layer N"); one function,
 * layer_from_pairs(), turns such a list into a struct lf_layer_cfg, so both accept exactly
 * the same keys and values and produce the same messages, always "ORIGIN:KEY: reason".
 * Driver-specific keys are those in the chosen driver's bc_driver.keys and are stored,
 * unparsed, in driver_opts: the driver checks their values when it opens.  What a format
 * or a driver accepts comes from its descriptor (struct layer_ops in layers/formats.c's
 * table, struct bc_driver in blockcore/drivers.c's), never from its name.
 *
 * Checks left to the layers module (they need the opened layers): whether a read cache
 * or a write-through layer fits the sizes and formats below it, and everything a driver
 * or an image header says.
 */

static const char *const lf_layer_keys[] = {
    "format", "driver", "path", "direct", "read-only", "read-cache", "write-through",
    "create", "block-size", "base-check", "cache-size", "allow-smaller", NULL,
};

void lf_pair_free(gpointer p)
{
    struct lf_pair *pair = p;

    g_free(pair->key);
    g_free(pair->value);
    g_free(pair);
}

void lf_layer_cfg_free(gpointer p)
{
    struct lf_layer_cfg *lc = p;

    if (lc == NULL)
        return;
    g_free(lc->name);
    g_free(lc->format);
    g_free(lc->driver);
    g_free(lc->path);
    if (lc->driver_opts != NULL)
        g_hash_table_unref(lc->driver_opts);
    g_free(lc->origin);
    g_free(lc);
}

void lf_disk_cfg_free(gpointer p)
{
    struct lf_disk_cfg *dc = p;

    if (dc == NULL)
        return;
    g_free(dc->name);
    if (dc->layers != NULL)
        g_ptr_array_unref(dc->layers);
    g_free(dc->origin);
    g_free(dc);
}

struct lf_config *lf_config_new(void)
{
    struct lf_config *cfg = g_new0(struct lf_config, 1);

    cfg->disks = g_ptr_array_new_with_free_func(lf_disk_cfg_free);
    return cfg;
}

void lf_config_free(struct lf_config *cfg)
{
    if (cfg == NULL)
        return;
    g_ptr_array_unref(cfg->disks);
    g_free(cfg);
}

static bool lf_in_list(const char *const *list, const char *s)
{
    for (; list != NULL && *list != NULL; list++)
        if (strcmp(*list, s) == 0)
            return true;
    return false;
}

/* Disk names become file names and layer names are listed separated by blanks, so both
 * are restricted to a portable set: a letter, digit or '_' first, then also '.', '-', '+'. */
bool lf_name_ok(const char *name)
{
    size_t n = strlen(name);

    if (n == 0 || n > 200 || !(g_ascii_isalnum(name[0]) || name[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++) {
        char c = name[i];
        if (!(g_ascii_isalnum(c) || c == '_' || c == '.' || c == '-' || c == '+'))
            return false;
    }
    return true;
}

static bool lf_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = { "true", "yes", "on", "1", NULL };
    static const char *const no[] = { "false", "no", "off", "0", NULL };

    for (int i = 0; yes[i] != NULL; i++) {
        if (g_ascii_strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (g_ascii_strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

bool lf_bool_key(const char *origin, const char *key, const char *value, bool *out,
                 GError **errp)
{
    if (!lf_parse_bool(value, out)) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s:%s: not a boolean: '%s' (use true or false)",
                    origin, key, value);
        return false;
    }
    return true;
}

static bool fmt_has_block_size(const struct layer_ops *ops)
{
    return ops->has_block_size;
}

static bool fmt_has_cache_size(const struct layer_ops *ops)
{
    return ops->has_cache_size;
}

/* Turn one layer's key/value pairs into a checked lf_layer_cfg.  base_dir: for relative
 * paths (NULL: the current directory). */
struct lf_layer_cfg *layer_from_pairs(const char *name, const char *origin, GPtrArray *pairs,
                                      const char *base_dir, GError **errp)
{
    lf_auto_layer struct lf_layer_cfg *lc = g_new0(struct lf_layer_cfg, 1);
    const struct bc_driver *drv = NULL;
    const struct layer_ops *fmt;
    const char *format = NULL, *driver = NULL;
    bool has_path = false;

    lc->name = g_strdup(name);
    lc->origin = g_strdup(origin);
    lc->direct = true;
    lc->driver_opts = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);

    /* First the keys that decide what the others mean. */
    for (guint i = 0; i < pairs->len; i++) {
        struct lf_pair *p = g_ptr_array_index(pairs, i);
        if (strcmp(p->key, "format") == 0)
            format = p->value;
        else if (strcmp(p->key, "driver") == 0)
            driver = p->value;
    }
    fmt = layer_format_find(format);
    if (fmt == NULL) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s:format: unknown format '%s' (known: %s)",
                    origin, format, layer_format_names());
        return NULL;
    }
    lc->format = g_strdup(fmt->format);
    if (fmt->in_memory) {
        if (driver != NULL) {
            g_set_error(errp, LF_ERROR, EINVAL,
                        "%s:driver: a layer of format %s keeps its data in memory and "
                        "takes no driver", origin, fmt->format);
            return NULL;
        }
    } else {
        if (driver == NULL)
            driver = LAYER_DEFAULT_DRIVER;
        drv = bc_driver_find(driver);
        if (drv == NULL) {
            g_set_error(errp, LF_ERROR, EINVAL, "%s:driver: unknown driver '%s' (known: %s)",
                        origin, driver, bc_driver_names());
            return NULL;
        }
        lc->driver = g_strdup(driver);
    }

    for (guint i = 0; i < pairs->len; i++) {
        struct lf_pair *p = g_ptr_array_index(pairs, i);
        const char *k = p->key, *v = p->value;
        bool ok = true;

        if (strcmp(k, "format") == 0 || strcmp(k, "driver") == 0) {
            continue;
        } else if (strcmp(k, "path") == 0) {
            if (fmt->in_memory) {
                g_set_error(errp, LF_ERROR, EINVAL,
                            "%s:path: a layer of format %s keeps its data in memory and "
                            "takes no path", origin, fmt->format);
                return NULL;
            }
            if (*v == '\0') {
                g_set_error(errp, LF_ERROR, EINVAL, "%s:path: empty path", origin);
                return NULL;
            }
            g_free(lc->path);
            lc->path = g_canonicalize_filename(v, base_dir);
            has_path = true;
        } else if (strcmp(k, "direct") == 0) {
            ok = lf_bool_key(origin, k, v, &lc->direct, errp);
        } else if (strcmp(k, "read-only") == 0) {
            ok = lf_bool_key(origin, k, v, &lc->read_only, errp);
        } else if (strcmp(k, "read-cache") == 0) {
            ok = lf_bool_key(origin, k, v, &lc->read_cache, errp);
        } else if (strcmp(k, "write-through") == 0) {
            ok = lf_bool_key(origin, k, v, &lc->write_through, errp);
        } else if (strcmp(k, "create") == 0) {
            ok = lf_bool_key(origin, k, v, &lc->create, errp);
        } else if (strcmp(k, "base-check") == 0) {
            bool check = true;
            if (!fmt->has_base) {
                g_set_error(errp, LF_ERROR, EINVAL, "%s:base-check: only overlay layers "
                            "remember their base", origin);
                return NULL;
            }
            ok = lf_bool_key(origin, k, v, &check, errp);
            lc->no_base_check = !check;
        } else if (strcmp(k, "allow-smaller") == 0) {
            ok = lf_bool_key(origin, k, v, &lc->allow_smaller, errp);
        } else if (strcmp(k, "block-size") == 0) {
            uint64_t bs;
            if (!bc_parse_size(v, &bs) || bs < LF_MIN_BLOCK_SIZE || bs > LF_MAX_BLOCK_SIZE ||
                (bs & (bs - 1)) != 0) {
                g_set_error(errp, LF_ERROR, EINVAL, "%s:block-size: '%s' is not a power of "
                            "two from 512 to 64M", origin, v);
                return NULL;
            }
            if (!fmt->has_block_size) {
                g_autofree char *have = layer_format_list(fmt_has_block_size);
                g_set_error(errp, LF_ERROR, EINVAL, "%s:block-size: only layers of format "
                            "%s have a block size", origin, have);
                return NULL;
            }
            lc->block_size = bs;
        } else if (strcmp(k, "cache-size") == 0) {
            if (!bc_parse_size(v, &lc->cache_size) || lc->cache_size == 0) {
                g_set_error(errp, LF_ERROR, EINVAL, "%s:cache-size: '%s' is not a size "
                            "above zero", origin, v);
                return NULL;
            }
            if (!fmt->has_cache_size) {
                g_autofree char *have = layer_format_list(fmt_has_cache_size);
                g_set_error(errp, LF_ERROR, EINVAL, "%s:cache-size: only layers of format "
                            "%s can be bounded read caches", origin, have);
                return NULL;
            }
        } else if ((drv != NULL && lf_in_list(drv->keys, k)) || lf_in_list(fmt->keys, k)) {
            g_hash_table_replace(lc->driver_opts, g_strdup(k), g_strdup(v));
        } else {
            g_autofree char *generic = g_strjoinv(" ", (char **)lf_layer_keys);
            g_autofree char *extra = NULL;
            if (drv != NULL && drv->keys != NULL) {
                g_autofree char *dk = g_strjoinv(" ", (char **)drv->keys);
                extra = g_strdup_printf("; driver %s adds: %s", drv->name, dk);
            } else if (fmt->keys != NULL) {
                g_autofree char *fk = g_strjoinv(" ", (char **)fmt->keys);
                extra = g_strdup_printf("; format %s adds: %s", fmt->format, fk);
            }
            g_set_error(errp, LF_ERROR, EINVAL, "%s:%s: unknown key (layer keys: %s%s)",
                        origin, k, generic, extra ? extra : "");
            return NULL;
        }
        if (!ok)
            return NULL;
    }

    if (drv != NULL && drv->needs_path && !has_path) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s:path: required for driver %s", origin,
                    drv->name);
        return NULL;
    }
    if (lc->cache_size != 0 && !lc->read_cache) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s:cache-size: only a read cache has a size "
                    "(set read-cache = true)", origin);
        return NULL;
    }
    if (lc->create && fmt->in_memory) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s:create: a layer of format %s has no image "
                    "to create", origin, fmt->format);
        return NULL;
    }
    return g_steal_pointer(&lc);
}

/* Static checks of a disk's stack: write-through layers form a run at the top that does
 * not reach the bottom layer. */
bool lf_check_stack(const struct lf_disk_cfg *dc, GError **errp)
{
    guint n = dc->layers->len;
    bool below_plain = false;

    if (n == 0) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s:layers: a disk needs at least one layer",
                    dc->origin);
        return false;
    }
    for (guint i = 0; i < n; i++) {
        const struct lf_layer_cfg *lc = g_ptr_array_index(dc->layers, i);
        if (!lc->write_through) {
            below_plain = true;
            continue;
        }
        if (below_plain) {
            g_set_error(errp, LF_ERROR, EINVAL,
                        "%s:write-through: write-through layers must all be above every "
                        "other layer of disk %s", lc->origin, dc->name);
            return false;
        }
        if (i == n - 1) {
            g_set_error(errp, LF_ERROR, EINVAL,
                        "%s:write-through: the bottom layer of disk %s cannot be "
                        "write-through: there is nothing below it to write through to",
                        lc->origin, dc->name);
            return false;
        }
    }
    return true;
}

bool lf_disk_name_unused(const struct lf_config *cfg, const char *origin, const char *name,
                         GError **errp)
{
    for (guint i = 0; i < cfg->disks->len; i++) {
        const struct lf_disk_cfg *dc = g_ptr_array_index(cfg->disks, i);
        if (strcmp(dc->name, name) == 0) {
            g_set_error(errp, LF_ERROR, EEXIST, "%s: disk %s is already defined (%s)", origin,
                        name, dc->origin);
            return false;
        }
    }
    return true;
}
