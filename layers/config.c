/* SPDX-License-Identifier: MIT */
/* The configuration: [disk NAME] and [layer NAME] groups of a GLib key file, and the inline
 * --disk form, parsed into struct lf_config with every check that needs no open layer. */
#include <errno.h>
#include <string.h>

#include "layers/layer.h"

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
 * GLib's key file silently merges a repeated group and lets a repeated key win, so the
 * text is scanned once for repeated groups and keys before GLib parses it.
 *
 * Checks left to the layers module (they need the opened layers): whether a read cache
 * or a write-through layer fits the sizes and formats below it, and everything a driver
 * or an image header says.
 */

static const char *const lf_layer_keys[] = {
    "format", "driver", "path", "direct", "read-only", "read-cache", "write-through",
    "create", "block-size", NULL,
};
static const char *const lf_disk_keys[] = { "layers", "read-only", NULL };

struct lf_pair {
    char *key;
    char *value;
};

static void lf_pair_free(gpointer p)
{
    struct lf_pair *pair = p;

    g_free(pair->key);
    g_free(pair->value);
    g_free(pair);
}

static void lf_layer_cfg_free(gpointer p)
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

static void lf_disk_cfg_free(gpointer p)
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

/* Cleanup attributes for the structs of layers.h, which have no typedef for g_autoptr. */
static void lf_layer_cfg_cleanup(struct lf_layer_cfg **p)
{
    lf_layer_cfg_free(*p);
}

static void lf_disk_cfg_cleanup(struct lf_disk_cfg **p)
{
    lf_disk_cfg_free(*p);
}

#define lf_auto_layer __attribute__((cleanup(lf_layer_cfg_cleanup)))
#define lf_auto_disk __attribute__((cleanup(lf_disk_cfg_cleanup)))

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
static bool lf_name_ok(const char *name)
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

static bool lf_bool_key(const char *origin, const char *key, const char *value, bool *out,
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

/* Turn one layer's key/value pairs into a checked lf_layer_cfg.  base_dir: for relative
 * paths (NULL: the current directory). */
static struct lf_layer_cfg *layer_from_pairs(const char *name, const char *origin,
                                             GPtrArray *pairs, const char *base_dir,
                                             GError **errp)
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
        } else if (drv != NULL && lf_in_list(drv->keys, k)) {
            g_hash_table_replace(lc->driver_opts, g_strdup(k), g_strdup(v));
        } else {
            g_autofree char *generic = g_strjoinv(" ", (char **)lf_layer_keys);
            g_autofree char *extra = NULL;
            if (drv != NULL && drv->keys != NULL) {
                g_autofree char *dk = g_strjoinv(" ", (char **)drv->keys);
                extra = g_strdup_printf("; driver %s adds: %s", drv->name, dk);
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
    if (lc->create && fmt->in_memory) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s:create: a layer of format %s has no image "
                    "to create", origin, fmt->format);
        return NULL;
    }
    return g_steal_pointer(&lc);
}

/* Static checks of a disk's stack: write-through layers form a run at the top that does
 * not reach the bottom layer. */
static bool check_stack(const struct lf_disk_cfg *dc, GError **errp)
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

static bool disk_name_free(const struct lf_config *cfg, const char *origin, const char *name,
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

/* ---- the key file ------------------------------------------------------------------- */

/* Reject a group or a key that appears twice, which GLib would silently merge. */
static bool scan_duplicates(const char *file, const char *text, GError **errp)
{
    g_autoptr(GHashTable) groups = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                                         NULL);
    g_autoptr(GHashTable) keys = NULL;
    g_autofree char *group = NULL;
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);

    for (char **l = lines; *l != NULL; l++) {
        char *line = g_strstrip(*l);
        if (*line == '\0' || *line == '#')
            continue;
        if (*line == '[') {
            char *end = strrchr(line, ']');
            if (end == NULL)
                continue; /* GLib reports it */
            g_free(group);
            group = g_strndup(line + 1, end - line - 1);
            if (g_hash_table_contains(groups, group)) {
                g_set_error(errp, LF_ERROR, EEXIST, "%s:%s: group defined twice", file,
                            group);
                return false;
            }
            g_hash_table_add(groups, g_strdup(group));
            g_clear_pointer(&keys, g_hash_table_unref);
            keys = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
            continue;
        }
        char *eq = strchr(line, '=');
        if (eq == NULL || keys == NULL)
            continue;
        g_autofree char *key = g_strstrip(g_strndup(line, eq - line));
        if (g_hash_table_contains(keys, key)) {
            g_set_error(errp, LF_ERROR, EEXIST, "%s:%s:%s: key set twice", file, group, key);
            return false;
        }
        g_hash_table_add(keys, g_steal_pointer(&key));
    }
    return true;
}

/* The pairs of one group, values unescaped by GLib. */
static GPtrArray *group_pairs(GKeyFile *kf, const char *file, const char *group,
                              GError **errp)
{
    g_autoptr(GPtrArray) pairs = g_ptr_array_new_with_free_func(lf_pair_free);
    g_auto(GStrv) keys = g_key_file_get_keys(kf, group, NULL, NULL);

    for (char **k = keys; k != NULL && *k != NULL; k++) {
        g_autoptr(GError) err = NULL;
        char *v = g_key_file_get_string(kf, group, *k, &err);
        if (v == NULL) {
            g_set_error(errp, LF_ERROR, EINVAL, "%s:%s:%s: %s", file, group, *k,
                        err->message);
            return NULL;
        }
        struct lf_pair *p = g_new0(struct lf_pair, 1);
        p->key = g_strdup(*k);
        p->value = g_strstrip(v);
        g_ptr_array_add(pairs, p);
    }
    return g_steal_pointer(&pairs);
}

static bool load_layers(GKeyFile *kf, const char *file, const char *base_dir,
                        GHashTable *layers, GError **errp)
{
    g_auto(GStrv) groups = g_key_file_get_groups(kf, NULL);

    for (char **g = groups; *g != NULL; g++) {
        const char *name;
        if (g_str_has_prefix(*g, "disk ")) {
            name = *g + 5;
        } else if (g_str_has_prefix(*g, "layer ")) {
            name = *g + 6;
        } else {
            g_set_error(errp, LF_ERROR, EINVAL,
                        "%s:%s: unknown group (expected [disk NAME] or [layer NAME])", file,
                        *g);
            return false;
        }
        if (!lf_name_ok(name)) {
            g_set_error(errp, LF_ERROR, EINVAL,
                        "%s:%s: bad name '%s' (use letters, digits, '_', '.', '-' and '+', "
                        "starting with a letter, digit or '_')", file, *g, name);
            return false;
        }
        if (**g == 'd')
            continue;
        g_autoptr(GPtrArray) pairs = group_pairs(kf, file, *g, errp);
        if (pairs == NULL)
            return false;
        g_autofree char *origin = g_strdup_printf("%s:%s", file, *g);
        struct lf_layer_cfg *lc = layer_from_pairs(name, origin, pairs, base_dir, errp);
        if (lc == NULL)
            return false;
        g_hash_table_insert(layers, lc->name, lc);
    }
    return true;
}

static bool load_disks(GKeyFile *kf, const char *file, struct lf_config *cfg,
                       GHashTable *layers, GHashTable *owner, GError **errp)
{
    g_auto(GStrv) groups = g_key_file_get_groups(kf, NULL);

    for (char **g = groups; *g != NULL; g++) {
        if (!g_str_has_prefix(*g, "disk "))
            continue;
        lf_auto_disk struct lf_disk_cfg *dc = g_new0(struct lf_disk_cfg, 1);
        dc->name = g_strdup(*g + 5);
        dc->origin = g_strdup_printf("%s:%s", file, *g);
        dc->layers = g_ptr_array_new_with_free_func(lf_layer_cfg_free);

        g_autoptr(GPtrArray) pairs = group_pairs(kf, file, *g, errp);
        if (pairs == NULL)
            return false;
        const char *list = NULL;
        for (guint i = 0; i < pairs->len; i++) {
            struct lf_pair *p = g_ptr_array_index(pairs, i);
            if (strcmp(p->key, "layers") == 0) {
                list = p->value;
            } else if (strcmp(p->key, "read-only") == 0) {
                if (!lf_bool_key(dc->origin, p->key, p->value, &dc->read_only, errp))
                    return false;
            } else {
                g_autofree char *known = g_strjoinv(" ", (char **)lf_disk_keys);
                g_set_error(errp, LF_ERROR, EINVAL, "%s:%s: unknown key (disk keys: %s)",
                            dc->origin, p->key, known);
                return false;
            }
        }
        if (list == NULL) {
            g_set_error(errp, LF_ERROR, EINVAL,
                        "%s:layers: missing (list the disk's layers, top first)", dc->origin);
            return false;
        }
        g_auto(GStrv) names = g_strsplit_set(list, " \t,;", -1);
        for (char **n = names; *n != NULL; n++) {
            if (**n == '\0')
                continue;
            struct lf_layer_cfg *lc = g_hash_table_lookup(layers, *n);
            if (lc == NULL) {
                const char *user = g_hash_table_lookup(owner, *n);
                if (user != NULL && strcmp(user, dc->name) == 0)
                    g_set_error(errp, LF_ERROR, EINVAL, "%s:layers: layer %s is listed "
                                "twice", dc->origin, *n);
                else if (user != NULL)
                    g_set_error(errp, LF_ERROR, EINVAL, "%s:layers: layer %s is already "
                                "used by disk %s", dc->origin, *n, user);
                else
                    g_set_error(errp, LF_ERROR, ENOENT, "%s:layers: no [layer %s] in %s",
                                dc->origin, *n, file);
                return false;
            }
            g_hash_table_steal(layers, *n);
            g_hash_table_insert(owner, g_strdup(*n), dc->name);
            g_ptr_array_add(dc->layers, lc);
        }
        if (!check_stack(dc, errp))
            return false;
        if (!disk_name_free(cfg, dc->origin, dc->name, errp))
            return false;
        g_ptr_array_add(cfg->disks, g_steal_pointer(&dc));
    }
    return true;
}

struct lf_config *lf_config_load(const char *path, GError **errp)
{
    g_autofree char *text = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(GKeyFile) kf = g_key_file_new();
    gsize len;

    if (!g_file_get_contents(path, &text, &len, &err)) {
        g_set_error(errp, LF_ERROR, ENOENT, "%s: %s", path, err->message);
        return NULL;
    }
    if (strlen(text) != len) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s: not a text file (contains NUL bytes)", path);
        return NULL;
    }
    if (!scan_duplicates(path, text, errp))
        return NULL;
    if (!g_key_file_load_from_data(kf, text, len, G_KEY_FILE_NONE, &err)) {
        g_set_error(errp, LF_ERROR, EINVAL, "%s: %s", path, err->message);
        return NULL;
    }

    g_autofree char *abs = g_canonicalize_filename(path, NULL);
    g_autofree char *base_dir = g_path_get_dirname(abs);
    /* Layers by name until a disk takes them; then owner says which disk did. */
    g_autoptr(GHashTable) layers = g_hash_table_new_full(g_str_hash, g_str_equal, NULL,
                                                         lf_layer_cfg_free);
    g_autoptr(GHashTable) owner = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                                        NULL);
    struct lf_config *cfg = lf_config_new();

    if (!load_layers(kf, path, base_dir, layers, errp) ||
        !load_disks(kf, path, cfg, layers, owner, errp))
        goto fail;
    if (g_hash_table_size(layers) != 0) {
        GHashTableIter it;
        struct lf_layer_cfg *lc;
        g_hash_table_iter_init(&it, layers);
        g_hash_table_iter_next(&it, NULL, (gpointer *)&lc);
        g_set_error(errp, LF_ERROR, EINVAL, "%s: not used by any disk (list it in the "
                    "layers key of a [disk NAME] group, or remove it)", lc->origin);
        goto fail;
    }
    return cfg;

fail:
    lf_config_free(cfg);
    return NULL;
}

/* ---- the inline form ---------------------------------------------------------------- */

/*
 * --disk NAME=LAYER[:LAYER...]      layers top first
 * LAYER is either KEY=VALUE[,KEY=VALUE...] with the keys of a [layer] group, or a bare
 * path (no unescaped '='), short for path=PATH (format raw, driver file).  A backslash
 * makes the next character literal, so paths may hold '\:', '\,', '\=' and '\\'.  The
 * disk is read-only when its top layer is.
 */

/* Split s at unescaped delim; escapes are kept for the next level. */
static GPtrArray *split_escaped(const char *s, char delim)
{
    GPtrArray *parts = g_ptr_array_new_with_free_func(g_free);
    GString *cur = g_string_new(NULL);

    for (const char *p = s; *p != '\0'; p++) {
        if (*p == '\\' && p[1] != '\0') {
            g_string_append_c(cur, *p++);
            g_string_append_c(cur, *p);
        } else if (*p == delim) {
            g_ptr_array_add(parts, g_string_free(cur, FALSE));
            cur = g_string_new(NULL);
        } else {
            g_string_append_c(cur, *p);
        }
    }
    g_ptr_array_add(parts, g_string_free(cur, FALSE));
    return parts;
}

static char *unescape(const char *s, size_t n)
{
    GString *out = g_string_sized_new(n);

    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n)
            i++;
        g_string_append_c(out, s[i]);
    }
    return g_string_free(out, FALSE);
}

/* Position of the first unescaped c in s, or -1. */
static gssize find_unescaped(const char *s, char c)
{
    for (gssize i = 0; s[i] != '\0'; i++) {
        if (s[i] == '\\' && s[i + 1] != '\0')
            i++;
        else if (s[i] == c)
            return i;
    }
    return -1;
}

static GPtrArray *inline_pairs(const char *origin, const char *token, GError **errp)
{
    g_autoptr(GPtrArray) pairs = g_ptr_array_new_with_free_func(lf_pair_free);

    if (find_unescaped(token, '=') < 0) {
        struct lf_pair *p = g_new0(struct lf_pair, 1);
        p->key = g_strdup("path");
        p->value = unescape(token, strlen(token));
        g_ptr_array_add(pairs, p);
        return g_steal_pointer(&pairs);
    }
    g_autoptr(GPtrArray) items = split_escaped(token, ',');
    for (guint i = 0; i < items->len; i++) {
        const char *item = g_ptr_array_index(items, i);
        gssize eq = find_unescaped(item, '=');
        if (eq <= 0) {
            g_set_error(errp, LF_ERROR, EINVAL, "%s: '%s' is not KEY=VALUE", origin, item);
            return NULL;
        }
        struct lf_pair *p = g_new0(struct lf_pair, 1);
        p->key = unescape(item, eq);
        p->value = unescape(item + eq + 1, strlen(item + eq + 1));
        for (guint j = 0; j < pairs->len; j++) {
            struct lf_pair *q = g_ptr_array_index(pairs, j);
            if (strcmp(q->key, p->key) == 0) {
                g_set_error(errp, LF_ERROR, EEXIST, "%s:%s: key set twice", origin, p->key);
                lf_pair_free(p);
                return NULL;
            }
        }
        g_ptr_array_add(pairs, p);
    }
    return g_steal_pointer(&pairs);
}

bool lf_config_add_inline(struct lf_config *cfg, const char *spec, GError **errp)
{
    const char *eq = strchr(spec, '=');

    if (eq == NULL || eq == spec || eq[1] == '\0') {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "--disk %s: expected NAME=LAYER[:LAYER...] (see layerfs(1))", spec);
        return false;
    }
    lf_auto_disk struct lf_disk_cfg *dc = g_new0(struct lf_disk_cfg, 1);
    dc->name = g_strndup(spec, eq - spec);
    dc->origin = g_strdup_printf("--disk %s", dc->name);
    dc->layers = g_ptr_array_new_with_free_func(lf_layer_cfg_free);
    if (!lf_name_ok(dc->name)) {
        g_set_error(errp, LF_ERROR, EINVAL,
                    "%s: bad disk name (use letters, digits, '_', '.', '-' and '+', "
                    "starting with a letter, digit or '_')", dc->origin);
        return false;
    }
    if (!disk_name_free(cfg, dc->origin, dc->name, errp))
        return false;

    g_autoptr(GPtrArray) tokens = split_escaped(eq + 1, ':');
    for (guint i = 0; i < tokens->len; i++) {
        const char *token = g_ptr_array_index(tokens, i);
        g_autofree char *origin = g_strdup_printf("%s:layer %u", dc->origin, i + 1);
        g_autofree char *name = g_strdup_printf("%s:%u", dc->name, i + 1);
        if (*token == '\0') {
            g_set_error(errp, LF_ERROR, EINVAL, "%s: empty layer", origin);
            return false;
        }
        g_autoptr(GPtrArray) pairs = inline_pairs(origin, token, errp);
        if (pairs == NULL)
            return false;
        struct lf_layer_cfg *lc = layer_from_pairs(name, origin, pairs, NULL, errp);
        if (lc == NULL)
            return false;
        g_ptr_array_add(dc->layers, lc);
    }
    const struct lf_layer_cfg *top = g_ptr_array_index(dc->layers, 0);
    dc->read_only = top->read_only;
    if (!check_stack(dc, errp))
        return false;
    g_ptr_array_add(cfg->disks, g_steal_pointer(&dc));
    return true;
}
