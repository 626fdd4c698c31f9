/* SPDX-License-Identifier: MIT */
/* Inside the configuration parser: what its front ends, the key file (config-keyfile.c) and
 * the inline --disk form (config-inline.c), share from the model in config.c. */
#ifndef LAYERFS_CONFIG_INT_H
#define LAYERFS_CONFIG_INT_H

#include "layers/layer.h"

/* One KEY=VALUE of a layer or a disk, as a front end read it. */
struct lf_pair {
    char *key;
    char *value;
};

/* Free a struct lf_pair (a GPtrArray free function). */
void lf_pair_free(gpointer p);
/* Free a struct lf_layer_cfg; NULL is allowed (a GPtrArray/GHashTable free function). */
void lf_layer_cfg_free(gpointer p);
/* Free a struct lf_disk_cfg; NULL is allowed (a GPtrArray free function). */
void lf_disk_cfg_free(gpointer p);

/* Cleanup attributes for the structs of layers.h, which have no typedef for g_autoptr. */
static inline void lf_layer_cfg_cleanup(struct lf_layer_cfg **p)
{
    lf_layer_cfg_free(*p);
}

static inline void lf_disk_cfg_cleanup(struct lf_disk_cfg **p)
{
    lf_disk_cfg_free(*p);
}

#define lf_auto_layer __attribute__((cleanup(lf_layer_cfg_cleanup)))
#define lf_auto_disk __attribute__((cleanup(lf_disk_cfg_cleanup)))

/* True if name may name a disk or a layer (a portable set of characters, see config.c). */
bool lf_name_ok(const char *name);
/* Parse value as a boolean into *out: true, or false + *errp "ORIGIN:KEY: not a boolean". */
bool lf_bool_key(const char *origin, const char *key, const char *value, bool *out,
                 GError **errp);
/* One layer's pairs as a checked lf_layer_cfg (base_dir NULL: the cwd); NULL + *errp. */
struct lf_layer_cfg *layer_from_pairs(const char *name, const char *origin, GPtrArray *pairs,
                                      const char *base_dir, GError **errp);
/* The static checks of a disk's stack (layers, write-through run): true, or false + *errp. */
bool lf_check_stack(const struct lf_disk_cfg *dc, GError **errp);
/* True if cfg has no disk called name yet, else false + *errp (EEXIST) naming both origins. */
bool lf_disk_name_unused(const struct lf_config *cfg, const char *origin, const char *name,
                         GError **errp);

#endif
