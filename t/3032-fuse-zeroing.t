#!/bin/bash
# SPDX-License-Identifier: MIT
# Zeroing decides per overlay block: fallocate -p/-z, blkdiscard and mkfs's discard over a
# base that holds data only in part leave present only the overlay blocks over that data.
. "$(dirname "$0")/tap.sh"
require_root
require_fuse
require_cmd python3 fallocate cmp

KIB=1024
MIB=$((1 << 20))
BS=$((64 * KIB))
MNT=$SCRATCH/mnt
mkdir "$MNT"

# A 64 MiB base with 1 MiB of data in four 256 KiB pieces; the one at 10340 KiB straddles
# five 64 KiB blocks, the others four each: 17 blocks lie over data.
truncate -s $((64 * MIB)) "$SCRATCH/base.raw"
for o in 1024 10340 30720 51200; do
    head -c $((256 * KIB)) /dev/urandom |
        dd of="$SCRATCH/base.raw" bs=1K seek=$o conv=notrunc status=none
done
cp "$SCRATCH/base.raw" "$SCRATCH/base.orig"
OVER_DATA=17

# present OVERLAY: blocks present, from layerfs-img info.
present() {
    "$LAYERFS_IMG" info "$1" | sed -n 's/^blocks present: *\([0-9]*\).*/\1/p'
}
# mount_over BASE: a fresh overlay with 64 KiB blocks over BASE, exposed as $MNT/d.
mount_over() {
    rm -f "$SCRATCH/top.ovl"
    start_daemon "$MNT" --disk "d=format=overlay,path=$SCRATCH/top.ovl,create=true,block-size=64K:$1"
}
# reads_zero FILE LEN: the first LEN bytes of FILE are zeros.
reads_zero() {
    cmp -s -n "$2" "$1" /dev/zero
}

for mode in p z; do
    mount_over "$SCRATCH/base.raw" || exit 1
    # 1 MiB written over a hole of the base first: its blocks are present, then dropped.
    head -c $MIB /dev/urandom | dd of="$MNT/d" bs=64K seek=$((20 * 16)) conv=notrunc,fsync \
        status=none
    ok "fallocate -$mode over the whole 64 MiB disk" fallocate -$mode -o 0 -l $((64 * MIB)) \
        "$MNT/d"
    ok "-$mode: the disk reads as zeros" reads_zero "$MNT/d" $((64 * MIB))
    stop_daemon
    n=$(present "$SCRATCH/top.ovl")
    diag "fallocate -$mode: $n of 1024 blocks present"
    is "$n" "$OVER_DATA" "-$mode: only the blocks over the base's data are present"
done
cmp_file "$SCRATCH/base.raw" "$SCRATCH/base.orig" "the base is untouched"

# Unaligned edges: a partial block over a hole stays absent, one over data is copied up.
mount_over "$SCRATCH/base.raw" || exit 1
ok "fallocate -p, unaligned, over a hole and the edge of data" \
    fallocate -p -o $((5 * MIB + 1000)) -l $((5 * MIB + 200 * KIB)) "$MNT/d"
cp "$SCRATCH/base.orig" "$SCRATCH/want"
python3 - "$SCRATCH/want" $((5 * MIB + 1000)) $((5 * MIB + 200 * KIB)) <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2]))
    f.write(bytes(int(sys.argv[3])))
EOF
cmp_file "$MNT/d" "$SCRATCH/want" "unaligned punch: zeros inside, neighbours intact"
stop_daemon
# [5 MiB + 1000, 10 MiB + 200 KiB + 1000): blocks 80 (partial) to 160 lie over the base's
# hole and stay absent; 161 and 162 (whole, over data) and 163 (partial, over data) are
# present.
is "$(present "$SCRATCH/top.ovl")" 3 "unaligned punch: only the 3 blocks over data present"

# blkdiscard through a loop device on the exposed file.
if command -v losetup >/dev/null && command -v blkdiscard >/dev/null; then
    mount_over "$SCRATCH/base.raw" || exit 1
    LOOP=$(losetup -f --show "$MNT/d" 2>"$SCRATCH/losetup.err")
    if [ -n "$LOOP" ]; then
        on_exit "losetup -n -O NAME -j '$MNT/d' | xargs -r -n1 losetup -d"
        ok "blkdiscard $LOOP" blkdiscard "$LOOP"
        ok "blkdiscard: the disk reads as zeros" reads_zero "$MNT/d" $((64 * MIB))
        losetup -d "$LOOP"
        stop_daemon
        n=$(present "$SCRATCH/top.ovl")
        diag "blkdiscard: $n of 1024 blocks present"
        is "$n" "$OVER_DATA" "blkdiscard: only the blocks over the base's data are present"
    else
        diag "losetup failed: $(cat "$SCRATCH/losetup.err")"
        _t_result 0 "# SKIP blkdiscard: no loop device"
        stop_daemon
    fi
else
    _t_result 0 "# SKIP blkdiscard: no losetup or blkdiscard"
fi

# mkfs.ext4 discards the whole device first, then writes its metadata: on a 512 MiB disk
# whose base holds a little old data, few of the 8192 blocks end up present.
if command -v mkfs.ext4 >/dev/null && command -v fsck.ext4 >/dev/null; then
    truncate -s $((512 * MIB)) "$SCRATCH/big.raw"
    for o in 0 100 200 300 400 500; do
        head -c $((256 * KIB)) /dev/urandom |
            dd of="$SCRATCH/big.raw" bs=1M seek=$o conv=notrunc status=none
    done
    mount_over "$SCRATCH/big.raw" || exit 1
    ok "mkfs.ext4 -E discard on the exposed file" mkfs.ext4 -q -F -E discard "$MNT/d"
    ok "fsck.ext4 -n: clean" fsck.ext4 -n -f "$MNT/d"
    stop_daemon
    n=$(present "$SCRATCH/top.ovl")
    diag "mkfs.ext4: $n of 8192 blocks present"
    ok "mkfs.ext4: few blocks present ($n of 8192)" test "$n" -lt 1024
else
    _t_result 0 "# SKIP mkfs.ext4: not installed"
fi

done_testing
