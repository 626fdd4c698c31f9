#!/bin/bash
# SPDX-License-Identifier: MIT
# Power cuts, replayed: a random workload (writes at any offset, FUA writes, zeroing,
# discards, flushes, several at once) runs through lf_disk_* on a top layer whose driver
# is logwrites, which logs every write and flush the file sees, in completion order (like
# dm-log-writes).  t/bin/powercut (t/unit/powercut.c) then rebuilds, from the log, the
# device after each flush and each acknowledgement, plus random subsets (some torn) of
# the writes that followed before the next flush completed, and checks every such state:
# the format's own check (layerfs-img check's, for overlays), then, opened read-only
# through the layers over the same base, every byte fsync or FUA acknowledged reads back
# and every other byte is its old value or one a later operation wrote -- never garbage.
#
# How this differs from t/2030-layers-crash.t: that test cuts power in a running layerfs
# (the fault driver's volatile cache, FUSE, kill -9) and checks the one state each cut
# left; this one checks, offline and in-process, every state the I/O order allows at
# every flush, so an ordering bug (a presence bit durable before its data) cannot hide
# behind a lucky write-back order.
#
# Adding a format is one line in the table below: a format that holds blocks (takes a
# block size) starts empty over a base with data and holes, made by its create = true,
# and any other is a lone layer over a file with that data.  If the format has an offline
# check (or its layer cannot create an image), that is one line in pc_formats[] in
# t/unit/powercut.c.
#
# Environment (bigger runs than CI's few seconds each): LAYERFS_TEST_SEED (base seed,
# default 2035), LAYERFS_POWERCUT_OPS (operations per run, default 200),
# LAYERFS_POWERCUT_TRIALS (random subsets per state, default 4), LAYERFS_POWERCUT_SIZE
# (disk size, default 4206037: 4 MiB and a part block, so every block size ends in a
# partial block; 20M with block size 512 gives the overlay a bitmap of two pages),
# LAYERFS_POWERCUT_TEAR (the unit a write may be torn in, default 512, a sector; 0 = never torn).
# A failure prints the seed, the log record the power was cut after and the subset, and
# keeps that state's image in the scratch directory.
. "$(dirname "$0")/tap.sh"
PC=$BUILDDIR/t/bin/powercut
[ -x "$PC" ] || skip_all "t/bin/powercut not built"

# format  block sizes (0: the format takes none)
formats="
overlay 512 4K 64K 1M
raw     0
"

seed=${LAYERFS_TEST_SEED:-2035}
while read -r fmt sizes; do
    [ -n "$fmt" ] || continue
    for bs in $sizes; do
        seed=$((seed + 1))
        dir=$SCRATCH/$fmt-$bs
        mkdir -p "$dir"
        out=$("$PC" "$fmt" "$bs" "$dir" "$seed" 2>&1)
        _t_result $? "$fmt, block size $bs, seed $seed: every state a power cut can leave is sound"
        printf '%s\n' "$out" | head -n 30 | sed 's/^#* */# /'
        # Keep only what a failure needs.
        [ "$_t_failed" -eq 0 ] && rm -rf "$dir"
    done
done <<<"$formats"
done_testing
