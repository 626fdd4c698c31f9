/* SPDX-License-Identifier: MIT */
/* The one table of layer formats: adding a format is its own fmt-*.c, one line here and its
 * file in Makefile.am.  The configuration parser and disk.c find formats and rules here. */
#include <string.h>

#include "layers/layer.h"

/* Every format, as layer_fmt_NAME in fmt-NAME.c; the first is the default.  The order is
 * the order of the "known:" lists in messages. */
#define LAYER_FORMAT_LIST(X)    \
    X(raw)                      \
    X(overlay)                  \
    X(ram)

#define LAYER_FORMAT_DECLARE(name) extern const struct layer_ops layer_fmt_##name;
LAYER_FORMAT_LIST(LAYER_FORMAT_DECLARE)
#undef LAYER_FORMAT_DECLARE

#define LAYER_FORMAT_ENTRY(name) &layer_fmt_##name,
static const struct layer_ops *const layer_formats[] = { LAYER_FORMAT_LIST(LAYER_FORMAT_ENTRY) };
#undef LAYER_FORMAT_ENTRY

const struct layer_ops *layer_format_find(const char *name)
{
    if (name == NULL)
        return layer_formats[0];
    for (size_t i = 0; i < G_N_ELEMENTS(layer_formats); i++)
        if (strcmp(layer_formats[i]->format, name) == 0)
            return layer_formats[i];
    return NULL;
}

const struct layer_ops *layer_format_at(size_t i)
{
    return i < G_N_ELEMENTS(layer_formats) ? layer_formats[i] : NULL;
}

const char *layer_format_names(void)
{
    /* Built once from the table; immutable afterwards. */
    static const char *names;

    if (g_once_init_enter(&names)) {
        GString *s = g_string_new(NULL);

        for (size_t i = 0; i < G_N_ELEMENTS(layer_formats); i++)
            g_string_append_printf(s, "%s%s", i ? " " : "", layer_formats[i]->format);
        g_once_init_leave(&names, g_string_free(s, FALSE));
    }
    return names;
}

char *layer_format_list(bool (*pick)(const struct layer_ops *ops))
{
    GString *s = g_string_new(NULL);
    const char *last = NULL;

    /* "a", "a or b", "a, b or c": each name is written once the next one is known. */
    for (size_t i = 0; i < G_N_ELEMENTS(layer_formats); i++) {
        if (!pick(layer_formats[i]))
            continue;
        if (last != NULL)
            g_string_append_printf(s, "%s%s", s->len ? ", " : "", last);
        last = layer_formats[i]->format;
    }
    if (last != NULL)
        g_string_append_printf(s, "%s%s", s->len ? " or " : "", last);
    return g_string_free(s, FALSE);
}
