#!/bin/bash
# SPDX-License-Identifier: MIT
# Crash safety of overlays: kill -9 layerfs repeatedly while a writer does random writes
# with periodic fsync to an overlay-over-raw disk; after each crash, layerfs-img check is
# clean and, remounted, every write fsync acknowledged is intact.
. "$(dirname "$0")/tap.sh"
require_fuse
CRASH=$BUILDDIR/t/bin/layers-crash
[ -x "$CRASH" ] || skip_all "t/bin/layers-crash not built"
cycles=${LAYERFS_CRASH_CYCLES:-6}
bss=(4K 64K 1M)

for ((c = 1; c <= cycles; c++)); do
    seed=$((${LAYERFS_TEST_SEED:-1000} + c))
    dir=$SCRATCH/c$c
    mkdir -p "$dir/mnt"
    "$CRASH" init "$dir/base.raw" $((16 << 20)) "$seed"
    cat >"$dir/layerfs.conf" <<CONF
[disk d]
layers = top base

[layer top]
format = overlay
path = $dir/top.ovl
create = true
block-size = ${bss[$((c % 3))]}

[layer base]
format = raw
path = $dir/base.raw
read-only = true
CONF
    start_daemon "$dir/mnt" -c "$dir/layerfs.conf" || { _t_result 1 "cycle $c: mount"; continue; }
    "$CRASH" write "$dir/mnt/d" "$seed" "$dir/ack" >/dev/null 2>&1 &
    wpid=$!
    sleep "0.$((RANDOM % 9 + 3))"
    _t_force_stop                   # kill -9 the daemon, lazily unmount
    wait "$wpid" 2>/dev/null
    acked=$(od -An -t u8 "$dir/ack" | tr -d ' ')
    diag "cycle $c: block size ${bss[$((c % 3))]}, $acked writes acknowledged before kill -9"
    ok "cycle $c: layerfs-img check is clean after kill -9" "$LAYERFS_IMG" check "$dir/top.ovl"
    start_daemon "$dir/mnt" -c "$dir/layerfs.conf" || { _t_result 1 "cycle $c: remount"; continue; }
    ok "cycle $c: every write fsync acknowledged is intact" \
        "$CRASH" verify "$dir/mnt/d" "$seed" "$dir/ack"
    stop_daemon
    like "$("$LAYERFS_IMG" info "$dir/top.ovl")" "state: +clean" "cycle $c: clean after unmount"
done
done_testing
