/* SPDX-License-Identifier: MIT */
/* The one table of backend drivers, made from drivers/drivers.h's list. */
#include <string.h>

#include "drivers/drivers.h"

#define BC_DRIVER_ENTRY(name) &bc_drv_##name,
static const struct bc_driver *const bc_drivers[] = { BC_DRIVER_LIST(BC_DRIVER_ENTRY) };
#undef BC_DRIVER_ENTRY

const struct bc_driver *bc_driver_find(const char *name)
{
    for (size_t i = 0; i < G_N_ELEMENTS(bc_drivers); i++) {
        if (strcmp(bc_drivers[i]->name, name) == 0)
            return bc_drivers[i];
    }
    return NULL;
}

const char *bc_driver_names(void)
{
    /* Built once from the table; immutable afterwards. */
    static const char *names;

    if (g_once_init_enter(&names)) {
        GString *s = g_string_new(NULL);

        for (size_t i = 0; i < G_N_ELEMENTS(bc_drivers); i++)
            g_string_append_printf(s, "%s%s", i ? " " : "", bc_drivers[i]->name);
        g_once_init_leave(&names, g_string_free(s, FALSE));
    }
    return names;
}
