#!/bin/bash
# SPDX-License-Identifier: MIT
# Overlay metadata checksums: a bit flipped in the header or in any bitmap chunk (bits,
# chunk number or checksum) makes both layerfs and layerfs-img check refuse the file,
# naming it, the offset and the reason; check --repair drops the bad chunk's blocks (they
# read from the base again), says so, and leaves a file that checks clean and mounts.
. "$(dirname "$0")/tap.sh"
require_fuse
require_root
IMG=$LAYERFS_IMG
S=$SCRATCH
mkdir -p "$S/mnt" "$S/mnt2"

# 40 MiB in 512-byte blocks: 81920 blocks, 24 bitmap chunks of 512 bytes (504 bytes of
# bits: 4032 blocks, 1.97 MiB) from 4096; data is written under the first three.
CHUNK=512
CHUNK_BYTES=$((4032 * 512))
head -c $((40 << 20)) /dev/urandom >"$S/base.raw"
ok "create a 24-chunk overlay" "$IMG" create -B "$S/base.raw" -b 512 "$S/top.ovl"
disk="d=format=overlay,path=$S/top.ovl:format=raw,path=$S/base.raw,read-only=true"
start_daemon "$S/mnt" --disk "$disk" || { _t_result 1 "layerfs starts"; done_testing; }
for c in 0 1 2; do
    dd if=/dev/urandom of="$S/mnt/d" bs=64k seek=$(((c * CHUNK_BYTES + (1 << 20)) / 65536)) \
       count=4 conv=notrunc,fsync status=none
done
cp "$S/mnt/d" "$S/want.img"
stop_daemon
ok "the written overlay checks clean" "$IMG" check "$S/top.ovl"
like "$("$IMG" info "$S/top.ovl")" "blocks present: +1536 " "1536 blocks present (512 per chunk)"

# flip FILE OFFSET: invert the byte at OFFSET.
flip() {
    local b
    b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
    printf "\\$(printf '%03o' $((b ^ 0x10)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# refused FILE PATTERN WHAT: check and mount both refuse FILE with a message matching
# PATTERN (and naming the file).
refused() {
    local out rc
    out=$("$IMG" check "$1" 2>&1); rc=$?
    _t_result $((rc == 0)) "check refuses $3 (exit $rc)"
    like "$out" "$(basename "$1"): .*$2" "... naming the file and $2"
    out=$(timeout 20 "$LAYERFS" -f --disk "d=format=overlay,path=$1:format=raw,path=$S/base.raw,read-only=true" \
          "$S/mnt2" 2>&1); rc=$?
    [ $rc -eq 0 ] && fusermount3 -u "$S/mnt2" 2>/dev/null
    _t_result $((rc == 0 || rc == 124)) "layerfs refuses $3 (exit $rc)"
    like "$out" "$2" "... naming $2"
}

# ---- the header: every used byte is under its checksum
for off in 17 24 40 48 75 83 100; do
    cp "$S/top.ovl" "$S/h.ovl"
    flip "$S/h.ovl" $off
    refused "$S/h.ovl" "corrupt overlay header at offset 68: header checksum" "a flip at header byte $off"
done

# ---- each bitmap chunk, in its bits, its number and its checksum
for c in 0 1 2; do
    base_off=$((4096 + c * CHUNK))
    for rel in 100 504 511; do
        cp "$S/top.ovl" "$S/b.ovl"
        flip "$S/b.ovl" $((base_off + rel))
        refused "$S/b.ovl" "corrupt overlay bitmap chunk at offset $base_off: " \
            "a flip in chunk $c at byte $rel"
    done
    # The repair: drop the chunk's blocks, say so, and leave a clean, mountable file.
    out=$("$IMG" check --repair "$S/b.ovl" 2>&1); rc=$?
    is "$rc" 0 "check --repair of chunk $c exits 0"
    like "$out" "DROPPED the blocks of 1 bitmap chunks" "... and says it dropped the chunk's blocks"
    ok "... the repaired file checks clean" "$IMG" check "$S/b.ovl"
    like "$("$IMG" info "$S/b.ovl")" "blocks present: +1024 " "... 512 blocks fewer present"
    start_daemon "$S/mnt" --read-only --disk "d=format=overlay,path=$S/b.ovl:$S/base.raw" ||
        { _t_result 1 "the repaired overlay mounts"; continue; }
    lo=$((c * CHUNK_BYTES)); n=$CHUNK_BYTES
    ok "... chunk $c's range reads from the base" cmp -s -i $lo:$lo -n $n "$S/mnt/d" "$S/base.raw"
    for o in 0 1 2; do
        [ $o -eq $c ] && continue
        lo=$((o * CHUNK_BYTES + (1 << 20)))
        ok "... chunk $o's blocks are kept" cmp -s -i $lo:$lo -n $((256 << 10)) "$S/mnt/d" "$S/want.img"
    done
    stop_daemon
done
done_testing
