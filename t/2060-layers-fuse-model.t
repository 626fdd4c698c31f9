#!/bin/bash
# SPDX-License-Identifier: MIT
# Randomized model test of layered disks through the mounted file: stacks of 2-4 layers
# (overlay, ram, raw; read-cache and write-through; mixed sizes and block sizes) exercised
# with pwrite/pread, punch-hole, zero-range, fsync and SEEK_HOLE against an in-memory copy;
# persistent stacks are remounted and compared with the model.
. "$(dirname "$0")/tap.sh"
require_fuse
MODEL=$BUILDDIR/t/bin/layers-file-model
S=$SCRATCH
seed=${LAYERFS_TEST_SEED:-4242}

head -c $((24 << 20)) /dev/urandom >"$S/base.raw"
head -c $((12 << 20)) /dev/urandom >"$S/small.raw"

# name | persistent | layer groups (top first) | layers list
stack() {
    local name=$1 persistent=$2 layers=$3; shift 3
    local conf=$S/$name.conf
    {
        printf '[disk %s]\nlayers = %s\n\n' "$name" "$layers"
        printf '%s\n' "$@"
    } >"$conf"
    mkdir -p "$S/mnt-$name"
    start_daemon "$S/mnt-$name" -c "$conf" || { _t_result 1 "$name: mount"; return; }
    ok "$name: random I/O through the mounted file matches the model" \
        "$MODEL" "$S/mnt-$name/$name" "$seed" 1500 "$S/$name.ref"
    stop_daemon
    is "$DAEMON_STATUS" 0 "$name: layerfs exits 0"
    if [ "$persistent" = yes ]; then
        start_daemon "$S/mnt-$name" -c "$conf" || { _t_result 1 "$name: remount"; return; }
        cmp_file "$S/mnt-$name/$name" "$S/$name.ref" "$name: after remount the disk equals the model"
        stop_daemon
    fi
    seed=$((seed + 1))
}

stack ovl2 yes "top base" \
    "[layer top]
format = overlay
path = $S/ovl2.ovl
create = true
block-size = 16K" \
    "[layer base]
path = $S/base.raw
read-only = true"

stack ovl3 yes "top cache small" \
    "[layer top]
format = overlay
path = $S/ovl3-top.ovl
create = true
block-size = 4K" \
    "[layer cache]
format = overlay
path = $S/ovl3-cache.ovl
create = true
read-cache = true
block-size = 64K" \
    "[layer small]
path = $S/small.raw
read-only = true"

cp "$S/base.raw" "$S/wt-base.raw"
stack wt yes "top base" \
    "[layer top]
format = overlay
path = $S/wt.ovl
create = true
write-through = true
block-size = 1M" \
    "[layer base]
path = $S/wt-base.raw"

stack ram4 no "top mem mid base" \
    "[layer top]
format = overlay
path = $S/ram4-top.ovl
create = true
block-size = 8K" \
    "[layer mem]
format = ram
read-cache = true
block-size = 32K" \
    "[layer mid]
format = overlay
path = $S/ram4-mid.ovl
create = true
block-size = 128K" \
    "[layer base]
path = $S/small.raw
read-only = true"

done_testing
