#!/bin/bash
# SPDX-License-Identifier: MIT
# The libFuzzer target for the overlay header and bitmap parser (t/fuzz/overlay-fuzz.c):
# every input of the seed corpus t/fuzz/corpus/overlay/ runs clean, then a bounded fuzzing
# run from it finds no crash.  LAYERFS_FUZZ_SECONDS sets its length (20).  Each input is
# an overlay's header and bitmap then its file size (u64, little-endian): valid-* made by
# layerfs-img create (some with blocks marked present), the others corrupted from those;
# v2-* are version 2 files (whole, when small: one with its bitmap moved past the data
# by a resize) and two with a bad bitmap chunk.
. "$(dirname "$0")/tap.sh"
FUZZ=$BUILDDIR/t/bin/overlay-fuzz
CORPUS=$T_SRCDIR/fuzz/corpus/overlay
[ -x "$FUZZ" ] || skip_all "t/bin/overlay-fuzz not built (configure found no clang that" \
    "links -fsanitize=fuzzer: install clang and libclang-rt-14-dev)"

n=$(find "$CORPUS" -type f | wc -l)
ok "the seed corpus has inputs ($n)" test "$n" -ge 5
ok "every seed input runs clean" "$FUZZ" -runs=0 -artifact_prefix="$SCRATCH/" "$CORPUS"
# New inputs go to the first directory: a scratch copy, never the source tree.
mkdir -p "$SCRATCH/corpus"
ok "no crash in ${LAYERFS_FUZZ_SECONDS:-20} s of fuzzing" \
    "$FUZZ" -max_total_time="${LAYERFS_FUZZ_SECONDS:-20}" -seed="${LAYERFS_TEST_SEED:-2025}" \
    -artifact_prefix="$SCRATCH/" -print_final_stats=1 "$SCRATCH/corpus" "$CORPUS"
done_testing
