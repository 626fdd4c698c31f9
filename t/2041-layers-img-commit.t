#!/bin/bash
# SPDX-License-Identifier: MIT
# layerfs-img commit zeroes (punches) the base where present blocks read as zeros, so a
# sparse base stays sparse, and leaves the overlay taking almost no space; check --repair
# says when there was nothing to repair; map --json numbers layers from 1, as messages do.
. "$(dirname "$0")/tap.sh"
require_fuse
require_cmd python3 fallocate stat
IMG=$LAYERFS_IMG
S=$SCRATCH
MIB=$((1 << 20))

# alloc FILE: the bytes FILE has allocated (st_blocks).
alloc() { echo $(( $(stat -c '%b * %B' "$1") )); }
# seek FILE OFFSET WHENCE: the offset lseek returns, or the errno name.
seek() {
    python3 -c "
import os, sys, errno
fd = os.open(sys.argv[1], os.O_RDONLY)
try: print(os.lseek(fd, int(sys.argv[2]), getattr(os, sys.argv[3])))
except OSError as e: print(errno.errorcode[e.errno])" "$@"
}

# A sparse 16 MiB base with data in [0, 1M) and [8M, 9M).
truncate -s $((16 * MIB)) "$S/base.raw"
dd if=/dev/urandom of="$S/base.raw" bs=1M count=1 conv=notrunc status=none
dd if=/dev/urandom of="$S/base.raw" bs=1M seek=8 count=1 conv=notrunc status=none
cat >"$S/layerfs.conf" <<CONF
[disk d]
layers = top base

[layer top]
format = overlay
path = $S/top.ovl
create = true
block-size = 64K

[layer base]
path = $S/base.raw
CONF
mkdir -p "$S/mnt"
start_daemon "$S/mnt" -c "$S/layerfs.conf" || done_testing
# Zeros written as data over a hole of the base and over [8M, 8.5M) of its data; that
# data's next quarter zeroed (a zeroed range in the overlay file); data in [12M, 12.25M);
# a block that is half data, half zeros.  Only 0.25 MiB + 64 KiB of it is data.
dd if=/dev/zero of="$S/mnt/d" bs=1M seek=2 count=4 conv=notrunc,fsync status=none
dd if=/dev/zero of="$S/mnt/d" bs=512K seek=16 count=1 conv=notrunc,fsync status=none
dd if=/dev/urandom of="$S/mnt/d" bs=256K seek=48 count=1 conv=notrunc,fsync status=none
dd if=/dev/urandom of="$S/mnt/d" bs=32K seek=449 count=1 conv=notrunc,fsync status=none
fallocate -z -o $((8 * MIB + MIB / 2)) -l $((MIB / 4)) "$S/mnt/d"
cp "$S/mnt/d" "$S/view"
stop_daemon
is "$DAEMON_STATUS" 0 "layerfs wrote the overlay and exited 0"

# ---- map --json: the top is layer 1, as in messages
json=$("$IMG" map --json -c "$S/layerfs.conf" d)
like "$json" '"offset": 0, "length": 2097152, "layer": "base", "index": 2, "format": "raw"' \
    "map --json: the base is layer 2"
like "$json" '"offset": 2097152, "length": 4194304, "layer": "top", "index": 1, "format": "overlay"' \
    "map --json: the top is layer 1"
is "$(printf '%s\n' "$json" | grep -c '"index": 0\|"index": -1')" 0 \
    "map --json: no layer is numbered 0 or -1"
# A disk of one empty overlay reads as zeros: no layer, no index.
ok "create a lone overlay" "$IMG" create -s 1M "$S/lone.ovl"
printf '[disk z]\nlayers = lone\n\n[layer lone]\nformat = overlay\npath = %s\n' \
    "$S/lone.ovl" >"$S/lone.conf"
like "$("$IMG" map --json -c "$S/lone.conf" z)" \
    '"offset": 0, "length": 1048576, "layer": null, "index": null, "zero": true' \
    "map --json: zeros have no index"

# ---- commit: the zeroed blocks do not grow the base
base_before=$(alloc "$S/base.raw")
ovl_before=$(alloc "$S/top.ovl")
ovl_size=$(stat -c %s "$S/top.ovl")
diag "before commit: base allocates $base_before bytes, overlay $ovl_before"
ok "the overlay holds the zeros as data before commit" test "$ovl_before" -ge $((4 * MIB))
out=$("$IMG" commit "$S/top.ovl" "$S/base.raw"); rc=$?
is "$rc" 0 "commit succeeds"
like "$out" "committed [0-9]+ blocks" "commit says how much it committed"
cmp_file "$S/base.raw" "$S/view" "after commit the base equals what the disk showed"
base_after=$(alloc "$S/base.raw")
diag "after commit: base allocates $base_after bytes"
ok "the base grew by no more than the data (not the 4.75 MiB of zeros)" \
    test "$base_after" -le $((base_before + MIB / 2))
is "$(seek "$S/base.raw" $((2 * MIB)) SEEK_DATA)" "$((8 * MIB + 3 * MIB / 4))" \
    "the base is still a hole from 2M, and [8M, 8.75M) was punched"

# ---- the emptied overlay takes almost no space, keeps its size, mounts empty
ovl_after=$(alloc "$S/top.ovl")
diag "after commit: overlay allocates $ovl_after bytes"
ok "the overlay's data area was given back" test "$ovl_after" -le $((128 << 10))
is "$(stat -c %s "$S/top.ovl")" "$ovl_size" "the overlay keeps its size"
like "$("$IMG" info "$S/top.ovl")" "blocks present: +0 " "no block is present"
ok "the overlay checks clean" "$IMG" check "$S/top.ovl"
start_daemon "$S/mnt" -c "$S/layerfs.conf" || done_testing
cmp_file "$S/mnt/d" "$S/view" "the stack mounts and reads the same"
stop_daemon
ok "commit again is a no-op" "$IMG" commit "$S/top.ovl" "$S/base.raw"
cmp_file "$S/base.raw" "$S/view" "base unchanged by a second commit"

# ---- blocks larger than the 8 MiB commit chunk (they once overran its buffer; with the
# buffer from the heap, not the arenas, that crashed)
truncate -s $((64 * MIB)) "$S/big.raw"
ok "create an overlay of 64 MiB blocks" "$IMG" create -B "$S/big.raw" -b 64M "$S/big.ovl"
cat >"$S/big.conf" <<CONF
[disk b]
layers = top base

[layer top]
format = overlay
path = $S/big.ovl
block-size = 64M

[layer base]
path = $S/big.raw
CONF
start_daemon "$S/mnt" -c "$S/big.conf" || done_testing
dd if=/dev/urandom of="$S/mnt/b" bs=1M seek=30 count=2 conv=notrunc,fsync status=none
cp "$S/mnt/b" "$S/big.view"
stop_daemon
ok "commit of 64 MiB blocks" env LAYERFS_BUF_POOL=0 "$IMG" commit "$S/big.ovl" "$S/big.raw"
cmp_file "$S/big.raw" "$S/big.view" "the base equals what the disk showed"

# ---- check --repair says what it did, or that there was nothing to do
out=$("$IMG" check --repair "$S/top.ovl"); rc=$?
is "$rc" 0 "check --repair on a clean overlay exits 0"
like "$out" "top.ovl: ok: 0 of 256 blocks present; nothing to repair" \
    "check --repair says the overlay is clean and nothing was repaired"
cp "$S/top.ovl" "$S/bad.ovl"
printf '\xff' | dd of="$S/bad.ovl" bs=1 seek=$((4096 + 100)) conv=notrunc status=none
out=$("$IMG" check --repair "$S/bad.ovl")
# A flipped bitmap byte breaks its chunk's checksum (overlay version 2): repair drops it.
like "$out" "bad.ovl: DROPPED the blocks of 1 bitmap chunks" "check --repair says what it repaired"
is "$(printf '%s\n' "$out" | grep -c 'nothing to repair')" 0 \
    "and does not claim there was nothing to repair"
done_testing
