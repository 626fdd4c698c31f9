/* SPDX-License-Identifier: MIT */
/* The inline front end of the configuration: a --disk NAME=LAYER[:LAYER...] argument added
 * to struct lf_config (lf_config_add_inline()). */
#include <errno.h>
#include <string.h>

#include "layers/config-int.h"

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
    if (!lf_disk_name_unused(cfg, dc->origin, dc->name, errp))
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
    if (!lf_check_stack(dc, errp))
        return false;
    g_ptr_array_add(cfg->disks, g_steal_pointer(&dc));
    return true;
}
