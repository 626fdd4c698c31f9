/* SPDX-License-Identifier: MIT */
/* The ram driver: a sparse anonymous mapping as a disk, for tests and scratch layers.
 * Requests are copied at submission and completed from the loop's next iteration. */
#include <assert.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "drivers/ram.h"
#include "drivers/drivers.h"
#include "drivers/util.h"

/*
 * Notes on the design
 *
 * The disk is one MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE mapping, so untouched pages cost
 * nothing and read as zeros.  A bitmap (itself a sparse mapping) has one bit per page:
 * set before a write copies into the page, cleared when a write-zeroes with MAY_UNMAP or
 * a discard gives the page back with MADV_DONTNEED.  A clear bit therefore always means
 * "all zeros", which is what block_status reports as a hole and what lets write-zeroes
 * skip pages without touching (and allocating) them.
 *
 * Threads: any number of loops may use one ram disk at once.  The data is not locked:
 * overlapping requests are ordered by the generic layer.  Bitmap words are updated with
 * atomic read-modify-write operations because different pages share a word.
 */

#define BC_RAM_MAX_ALIGN 65536u
#define BC_RAM_DEFAULT_MAX_TRANSFER (4u << 20)
#define BC_RAM_LONG_BITS (8 * sizeof(unsigned long))

struct bc_ram {
    uint8_t *mem;            /* map_len bytes */
    size_t map_len;          /* size rounded up to the request alignment and the page size */
    uint64_t size;
    uint32_t align, mem_align;
    size_t page;
    unsigned long *written;  /* one bit per page: may hold non-zero bytes (atomic) */
    size_t written_len;      /* bytes mapped for the bitmap */
    bool read_only;
};

static size_t bc_ram_round_up(uint64_t n, uint64_t to)
{
    return (n + to - 1) / to * to;
}

static void bc_ram_mark(struct bc_ram *ram, uint64_t start, uint64_t end, bool set)
{
    for (uint64_t p = start; p < end; p++) {
        unsigned long bit = 1ul << (p % BC_RAM_LONG_BITS);
        unsigned long *w = &ram->written[p / BC_RAM_LONG_BITS];

        if (set) {
            if (!(__atomic_load_n(w, __ATOMIC_RELAXED) & bit))
                __atomic_fetch_or(w, bit, __ATOMIC_RELAXED);
        } else {
            __atomic_fetch_and(w, ~bit, __ATOMIC_RELAXED);
        }
    }
}

static bool bc_ram_test(const struct bc_ram *ram, uint64_t p)
{
    return __atomic_load_n(&ram->written[p / BC_RAM_LONG_BITS], __ATOMIC_RELAXED) &
           (1ul << (p % BC_RAM_LONG_BITS));
}

/* Zero [start, end), skipping pages that are known to be zero already. */
static void bc_ram_zero_written(struct bc_ram *ram, uint64_t start, uint64_t end)
{
    while (start < end) {
        uint64_t p = start / ram->page;
        uint64_t stop = MIN(end, (p + 1) * ram->page);

        if (bc_ram_test(ram, p))
            memset(ram->mem + start, 0, stop - start);
        start = stop;
    }
}

/* Make [start, end) read as zeros; with unmap, hand whole pages back to the kernel. */
static void bc_ram_zero(struct bc_ram *ram, uint64_t start, uint64_t end, bool unmap)
{
    uint64_t a = bc_ram_round_up(start, ram->page);
    uint64_t b = end / ram->page * ram->page;

    if (unmap && a < b && madvise(ram->mem + a, b - a, MADV_DONTNEED) == 0) {
        bc_ram_mark(ram, a / ram->page, b / ram->page, false);
        bc_ram_zero_written(ram, start, a);
        bc_ram_zero_written(ram, b, end);
    } else {
        bc_ram_zero_written(ram, start, end);
    }
}

static bool bc_ram_iov_aligned(const struct bc_ram *ram, const struct bc_dreq *dreq)
{
    for (int i = 0; i < dreq->iovcnt; i++) {
        if ((uintptr_t)dreq->iov[i].iov_base % ram->mem_align ||
            dreq->iov[i].iov_len % ram->align)
            return false;
    }
    return bc_iov_len(dreq->iov, dreq->iovcnt) == dreq->len;
}

int bc_ram_do(struct bc_ram *ram, const struct bc_dreq *dreq)
{
    uint64_t off = dreq->offset;
    /* Bytes of the request inside the device; the rest is the padding up to req_align. */
    uint64_t n = off < ram->size ? MIN(dreq->len, ram->size - off) : 0;

    assert(off % ram->align == 0 && dreq->len % ram->align == 0);
    assert(off + dreq->len <= ram->map_len);
    if (dreq->op != BC_OP_READ && dreq->op != BC_OP_FLUSH && ram->read_only)
        return -EROFS;

    switch (dreq->op) {
    case BC_OP_READ:
        assert(bc_ram_iov_aligned(ram, dreq));
        if (n)
            bc_iov_from_buf(dreq->iov, dreq->iovcnt, 0, ram->mem + off, n);
        if (n < dreq->len)
            bc_iov_memset(dreq->iov, dreq->iovcnt, n, 0, dreq->len - n);
        return 0;
    case BC_OP_WRITE:
        assert(bc_ram_iov_aligned(ram, dreq));
        if (n) {
            bc_ram_mark(ram, off / ram->page, bc_ram_round_up(off + n, ram->page) / ram->page,
                        true);
            bc_iov_to_buf(dreq->iov, dreq->iovcnt, 0, ram->mem + off, n);
        }
        return 0;
    case BC_OP_WRITE_ZEROES:
        bc_ram_zero(ram, off, off + n, dreq->flags & BC_REQ_MAY_UNMAP);
        return 0;
    case BC_OP_DISCARD:
        /* Advisory: give back whole pages only, leave partial ones as they are. */
        n = (off + n) / ram->page * ram->page; /* now the end of the whole pages */
        off = bc_ram_round_up(off, ram->page);
        if (off < n && madvise(ram->mem + off, n - off, MADV_DONTNEED) == 0)
            bc_ram_mark(ram, off / ram->page, n / ram->page, false);
        return 0;
    case BC_OP_FLUSH:
        return 0;
    }
    return -EINVAL;
}

int bc_ram_block_status(struct bc_ram *ram, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    uint64_t end = MIN(offset + len, ram->map_len);
    uint64_t p, q, last;
    bool data;

    if (offset >= end) {
        *pnum = len;
        return 0;
    }
    p = offset / ram->page;
    last = bc_ram_round_up(end, ram->page) / ram->page;
    data = bc_ram_test(ram, p);
    for (q = p + 1; q < last && bc_ram_test(ram, q) == data; q++)
        ;
    *pnum = MIN(q * ram->page, end) - offset;
    return data ? 1 : 0;
}

static void *bc_ram_map(const struct bc_open_args *args, size_t len, GError **errp)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

    if (p == MAP_FAILED) {
        int err = errno;
        g_set_error(errp, BC_ERROR, 0, "%s: cannot map %zu bytes of memory: %s",
                    bc_what(args), len, g_strerror(err));
        return NULL;
    }
    return p;
}

struct bc_ram *bc_ram_new(const struct bc_open_args *args, struct bc_props *props,
                          GError **errp)
{
    uint64_t size, max_transfer;
    uint32_t align, mem_align;
    g_autofree struct bc_ram *ram = NULL;
    size_t npages;

    if (!bc_opt_size(args, "size", true, 0, &size, errp) ||
        !bc_opt_pow2(args, "align", 1, BC_RAM_MAX_ALIGN, 512, &align, errp) ||
        !bc_opt_pow2(args, "mem-align", 1, 4096, MIN(align, 4096u), &mem_align,
                     errp) ||
        !bc_opt_size(args, "max-transfer", false, BC_RAM_DEFAULT_MAX_TRANSFER, &max_transfer,
                     errp))
        return NULL;
    if (size == 0 || size > (UINT64_C(1) << 50)) {
        g_set_error(errp, BC_ERROR, 0, "%s: key size: %s is not between 1 and 1P",
                    bc_what(args), bc_opt(args, "size"));
        return NULL;
    }
    if (max_transfer < align || max_transfer % align || max_transfer > (1u << 30)) {
        g_set_error(errp, BC_ERROR, 0,
                    "%s: key max-transfer: %s is not a multiple of align (%u) up to 1G",
                    bc_what(args), bc_opt(args, "max-transfer"), align);
        return NULL;
    }

    ram = g_new0(struct bc_ram, 1);
    ram->size = size;
    ram->align = align;
    ram->mem_align = mem_align;
    ram->page = (size_t)sysconf(_SC_PAGESIZE);
    ram->read_only = args->read_only;
    ram->map_len = bc_ram_round_up(size, MAX(align, ram->page));
    npages = ram->map_len / ram->page;
    ram->written_len = bc_ram_round_up(bc_ram_round_up(npages, BC_RAM_LONG_BITS) / 8, ram->page);
    ram->mem = bc_ram_map(args, ram->map_len, errp);
    if (!ram->mem)
        return NULL;
    ram->written = bc_ram_map(args, ram->written_len, errp);
    if (!ram->written) {
        munmap(ram->mem, ram->map_len);
        return NULL;
    }

    *props = (struct bc_props){
        .size = size,
        .req_align = align,
        .mem_align = mem_align,
        .max_transfer = (uint32_t)max_transfer,
        .discard_align = MAX(align, (uint32_t)ram->page),
        .zero_align = align,
        .fua_native = true, /* nothing to make durable */
        .read_only = args->read_only,
        .can_grow = false,
    };
    return g_steal_pointer(&ram);
}

void bc_ram_free(struct bc_ram *ram)
{
    if (!ram)
        return;
    munmap(ram->mem, ram->map_len);
    munmap(ram->written, ram->written_len);
    g_free(ram);
}

static void *bc_drv_ram_open(const struct bc_open_args *args, struct bc_props *props,
                             GError **errp)
{
    return bc_ram_new(args, props, errp);
}

static void bc_drv_ram_close(void *state)
{
    bc_ram_free(state);
}

static void bc_drv_ram_submit(void *state, struct bc_dreq *dreq)
{
    bc_drv_complete_later(dreq, bc_ram_do(state, dreq));
}

static int bc_drv_ram_block_status(void *state, uint64_t offset, uint64_t len, uint64_t *pnum)
{
    return bc_ram_block_status(state, offset, len, pnum);
}

static const char *const bc_drv_ram_keys[] = { BC_RAM_KEYS, NULL };

const struct bc_driver bc_drv_ram = {
    .name = "ram",
    .keys = bc_drv_ram_keys,
    .open = bc_drv_ram_open,
    .close = bc_drv_ram_close,
    .submit = bc_drv_ram_submit,
    .block_status = bc_drv_ram_block_status,
};
