/* SPDX-License-Identifier: MIT */
/* libFuzzer entry point for the overlay header and bitmap parser (layers/overlay-format.c).
 * Built as t/bin/overlay-fuzz with clang when configure finds libFuzzer, and run by
 * t/2025 from the seed corpus t/fuzz/corpus/overlay/; by hand, for longer:
 *   build/t/bin/overlay-fuzz -max_total_time=600 NEW-DIR t/fuzz/corpus/overlay
 * The input is an overlay's header and bitmap (version 1 or 2), then its file size (u64, little-endian) in
 * the last 8 bytes when the input is longer than the header plus 8; a shorter input is
 * taken as the whole file, its length the file size.  t/unit/layers-overlay.c runs a
 * deterministic mutation loop over the same functions in every test run. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "layers/layers.h"
#include "layers/overlay-format.h"

G_DEFINE_QUARK(lf-error-quark, lf_error)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t file_size = size;
    struct ovl_hdr h;
    GError *err = NULL;

    if (size > OVL_HEADER_SIZE + 8) {
        memcpy(&file_size, data + size - 8, 8);
        size -= 8;
    }
    if (!ovl_hdr_decode(data, size, file_size, "fuzz", &h, &err)) {
        g_clear_error(&err);
        return 0;
    }
    if (h.bitmap_off + h.bitmap_len <= size) {
        uint8_t *bm = g_malloc(ovl_bitmap_mem_len(&h));
        uint64_t nbad = 0;
        if (!ovl_bitmap_decode(&h, data + h.bitmap_off, bm, "fuzz", &nbad, &err))
            g_clear_error(&err);
        if (!ovl_bitmap_check(&h, bm, file_size, "fuzz", NULL, &err))
            g_clear_error(&err);
        ovl_bitmap_repair(&h, bm, file_size);
        uint64_t bad = 0;
        if (!ovl_bitmap_check(&h, bm, file_size, "fuzz", &bad, &err))
            __builtin_trap();   /* repair must leave nothing to complain about */
        /* What repair writes back decodes to the same bits. */
        uint8_t *disk = g_malloc(h.bitmap_len), *again = g_malloc(ovl_bitmap_mem_len(&h));
        ovl_bitmap_encode(&h, bm, disk);
        if (!ovl_bitmap_decode(&h, disk, again, "fuzz", NULL, NULL) ||
            memcmp(bm, again, ovl_bitmap_mem_len(&h)) != 0)
            __builtin_trap();
        g_free(disk);
        g_free(again);
        g_free(bm);
    }
    return 0;
}
