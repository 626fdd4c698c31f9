/* SPDX-License-Identifier: MIT */
/* The null driver: reads return zeros, writes are dropped; for benchmarks of the layers
 * above and for tests that need a large device that costs nothing. */
#include <errno.h>

#include "drivers/drivers.h"
#include "drivers/util.h"

#define BC_NULL_MAX_TRANSFER (4u << 20)

struct bc_null {
    uint64_t size;
    bool read_only;
};

static void *bc_drv_null_open(const struct bc_open_args *args, struct bc_props *props,
                              GError **errp)
{
    struct bc_null *nul;
    uint64_t size;
    uint32_t align;

    if (!bc_opt_size(args, "size", true, 0, &size, errp) ||
        !bc_opt_pow2(args, "align", 1, 65536, 512, &align, errp))
        return NULL;
    if (size == 0 || size > INT64_MAX) {
        g_set_error(errp, BC_ERROR, 0, "%s: key size: %s is not between 1 and 2^63-1 bytes",
                    bc_what(args), bc_opt(args, "size"));
        return NULL;
    }

    nul = g_new0(struct bc_null, 1);
    nul->size = size;
    nul->read_only = args->read_only;
    *props = (struct bc_props){
        .size = size,
        .req_align = align,
        .mem_align = 1,
        .max_transfer = BC_NULL_MAX_TRANSFER,
        .discard_align = align,
        .zero_align = align,
        .fua_native = true,
        .read_only = args->read_only,
    };
    return nul;
}

static void bc_drv_null_close(void *state)
{
    g_free(state);
}

static void bc_drv_null_submit(void *state, struct bc_dreq *dreq)
{
    struct bc_null *nul = state;
    int res = 0;

    if (dreq->op == BC_OP_READ)
        bc_iov_memset(dreq->iov, dreq->iovcnt, 0, 0, dreq->len);
    else if (dreq->op != BC_OP_FLUSH && nul->read_only)
        res = -EROFS;
    bc_drv_complete_later(dreq, res);
}

static int bc_drv_null_block_status(void *state, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    *pnum = len;
    return 0;
}

static const char *const bc_drv_null_keys[] = { "size", "align", NULL };

const struct bc_driver bc_drv_null = {
    .name = "null",
    .keys = bc_drv_null_keys,
    .open = bc_drv_null_open,
    .close = bc_drv_null_close,
    .submit = bc_drv_null_submit,
    .block_status = bc_drv_null_block_status,
};
