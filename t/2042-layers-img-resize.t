#!/bin/bash
# SPDX-License-Identifier: MIT
# layerfs-img resize: growing an overlay (with its bitmap staying before the data, moving
# within the gap, or moving past the data region) keeps what it held, the new range reads
# from the base, writes past the old end work and survive a remount; the grow-a-disk recipe
# of layerfs-img(1) works; shrinking is refused; an interrupted resize (the file grown and
# the new bitmap written, the header not yet switched) leaves the old overlay intact.
. "$(dirname "$0")/tap.sh"
require_fuse
require_root
IMG=$LAYERFS_IMG
S=$SCRATCH
mkdir -p "$S/mnt"

# grow BS OLD NEW WHAT: an overlay of block size BS over a random base of OLD MiB, written
# in its first, a middle and its last block; the base grows to NEW MiB (random data in
# the new range) and the overlay is resized with -B; then everything is compared.
grow() {
    local bs=$1 old=$(($2 << 20)) new=$(($3 << 20)) what=$4
    local disk="d=format=overlay,path=$S/top.ovl:format=raw,path=$S/base.raw,read-only=true"
    rm -f "$S/top.ovl"
    head -c $old /dev/urandom >"$S/base.raw"
    ok "$what: create" "$IMG" create -B "$S/base.raw" -b "$bs" "$S/top.ovl"
    start_daemon "$S/mnt" --disk "$disk" || { _t_result 1 "layerfs starts"; return; }
    dd if=/dev/urandom of="$S/mnt/d" bs=1000 count=3 conv=notrunc status=none
    dd if=/dev/urandom of="$S/mnt/d" bs=4096 seek=$((old / 8192)) count=5 conv=notrunc status=none
    dd if=/dev/urandom of="$S/mnt/d" bs=512 seek=$((old / 512 - 1)) count=1 conv=notrunc,fsync status=none
    cp "$S/mnt/d" "$S/old.img"
    stop_daemon
    head -c $((new - old)) /dev/urandom >>"$S/base.raw"
    out=$(timeout 20 "$LAYERFS" -f --disk "$disk" "$S/mnt" 2>&1)
    like "$out" "made over a stack below of $old bytes .* but the stack below is $new bytes" \
        "$what: the grown base is refused before the resize, naming both sizes"
    ok "$what: resize -B to the base's size" "$IMG" resize -B "$S/base.raw" "$S/top.ovl"
    info=$("$IMG" info "$S/top.ovl")
    like "$info" "virtual size: +$new bytes" "$what: info shows the new size"
    like "$info" "base: +$new bytes" "$what: and the new base"
    ok "$what: check is clean" "$IMG" check "$S/top.ovl"
    start_daemon "$S/mnt" --disk "$disk" || { _t_result 1 "layerfs starts after resize"; return; }
    is "$(stat -c %s "$S/mnt/d")" "$new" "$what: the disk has the new size"
    ok "$what: the old range reads as before" cmp -s -n $old "$S/mnt/d" "$S/old.img"
    ok "$what: the new range reads from the base" cmp -s -i $old:$old "$S/mnt/d" "$S/base.raw"
    dd if=/dev/urandom of="$S/mnt/d" bs=4096 seek=$(((new - 8192) / 4096)) count=2 \
       conv=notrunc,fsync status=none
    dd if=/dev/urandom of="$S/mnt/d" bs=1000 seek=$((old / 1000)) count=3 conv=notrunc,fsync \
       status=none
    cp "$S/mnt/d" "$S/new.img"
    stop_daemon
    ok "$what: check is clean after writes past the old end" "$IMG" check "$S/top.ovl"
    start_daemon "$S/mnt" --read-only --disk "$disk" || { _t_result 1 "layerfs restarts"; return; }
    ok "$what: everything reads back after a remount" cmp -s "$S/mnt/d" "$S/new.img"
    stop_daemon
}

# 64K blocks: the bitmap moves into the gap before the data region (twice: ping-pong).
grow 64K 8 24 "64K blocks, 8M to 24M"
ok "64K: a second resize" "$IMG" resize "$S/top.ovl" 32M
like "$("$IMG" info "$S/top.ovl")" "base: +not recorded" "a resize without -B forgets the base"
ok "64K: check is clean after the second resize" "$IMG" check "$S/top.ovl"
# 4K blocks: no gap, the bitmap moves past the data region, and the file grows.
grow 4K 4 12 "4K blocks, 4M to 12M"
# 512-byte blocks past one chunk: 16M has 32768 blocks, 2 chunks after growing.
grow 512 15 17 "512-byte blocks, 15M to 17M"

out=$("$IMG" resize "$S/top.ovl" 1M 2>&1); rc=$?
is "$rc" 2 "shrinking is refused (exit 2)"
like "$out" "cannot shrink an overlay from 17825792 to 1048576 bytes" "... with the reason"
out=$("$IMG" resize "$S/top.ovl" 2>&1); rc=$?
is "$rc" 2 "resize needs a size or -B"

# An interrupted resize: with the file grown and the new bitmap written past the data but
# the header not switched (the state a crash between the two flushes leaves: the old
# file, grown, with the new bitmap at its new place), the old overlay is intact.
"$IMG" create -s 4M -b 4K "$S/c.ovl"
cp "$S/c.ovl" "$S/c2.ovl"
ok "resize an overlay with no gap before its data" "$IMG" resize "$S/c2.ovl" 8M
off=$(od -An -tu8 -j40 -N8 "$S/c2.ovl" | tr -d ' ')
is "$off" $(((8 << 20) + 8192)) "... its bitmap moved past the new data region"
cp "$S/c.ovl" "$S/c3.ovl"
truncate -s "$(stat -c %s "$S/c2.ovl")" "$S/c3.ovl"
dd if="$S/c2.ovl" of="$S/c3.ovl" bs=4096 skip=$((off / 4096)) seek=$((off / 4096)) count=1 \
   conv=notrunc status=none
ok "an interrupted resize leaves a valid old overlay" "$IMG" check "$S/c3.ovl"
like "$("$IMG" info "$S/c3.ovl")" "virtual size: +4194304 bytes" "... of the old size"
ok "... which resizes again" "$IMG" resize "$S/c3.ovl" 8M
ok "... to a valid overlay" "$IMG" check "$S/c3.ovl"
done_testing
