/* SPDX-License-Identifier: MIT */
/* The key-file front end of the configuration: [disk NAME] and [layer NAME] groups of a GLib
 * key file, read into struct lf_config (lf_config_load()). */
#include <errno.h>
#include <string.h>

#include "layers/config-int.h"

/*
 * Notes on the design
 *
 * GLib's key file silently merges a repeated group and lets a repeated key win, so the
 * text is scanned once for repeated groups and keys before GLib parses it.  A [layer NAME]
 * group becomes a struct lf_layer_cfg through layer_from_pairs() (config.c) when it is
 * read; a [disk NAME] group then takes the layers it lists, each at most once.
 */

static const char *const lf_disk_keys[] = { "layers", "read-only", NULL };

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
        if (!lf_check_stack(dc, errp))
            return false;
        if (!lf_disk_name_unused(cfg, dc->origin, dc->name, errp))
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
