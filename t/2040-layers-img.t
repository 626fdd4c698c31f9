#!/bin/bash
# SPDX-License-Identifier: MIT
# layerfs-img: create, info, check (and --repair), map, and commit of an overlay written
# through layerfs: afterwards the base alone equals what the disk showed.
. "$(dirname "$0")/tap.sh"
IMG=$LAYERFS_IMG
S=$SCRATCH

head -c $((8 << 20)) /dev/urandom >"$S/base.raw"
cp "$S/base.raw" "$S/base.orig"

# ---- create / info / check, offline
ok "create from a backing file" "$IMG" create -B "$S/base.raw" -b 16K "$S/a.ovl"
not_ok_cmd "create refuses to overwrite" "$IMG" create -s 1M "$S/a.ovl"
ln -s "$S/nowhere" "$S/link.ovl"
not_ok_cmd "create does not follow a symlink" "$IMG" create -s 1M "$S/link.ovl"
not_ok_cmd "create rejects a bad block size" "$IMG" create -s 1M -b 3000 "$S/bad.ovl"
info=$("$IMG" info "$S/a.ovl")
like "$info" "virtual size: +8388608 bytes" "info: size from the backing file"
like "$info" "block size: +16384 bytes" "info: block size"
like "$info" "blocks present: +0 " "info: nothing present"
like "$info" "state: +clean" "info: clean"
like "$("$IMG" info --json "$S/a.ovl")" '"virtual-size": 8388608, "block-size": 16384, .*"blocks-present": 0, .*"clean": true' "info --json"
ok "check: a new overlay is clean" "$IMG" check "$S/a.ovl"

# A bit set past the last block: check finds it, --repair clears it.
cp "$S/a.ovl" "$S/b.ovl"
printf '\xff' | dd of="$S/b.ovl" bs=1 seek=$((4096 + 100)) conv=notrunc status=none
not_ok_cmd "check finds a bad bitmap bit" "$IMG" check "$S/b.ovl"
ok "check --repair fixes it" "$IMG" check --repair "$S/b.ovl"
ok "check is clean after repair" "$IMG" check "$S/b.ovl"
# A truncated overlay: found, and repaired by extending the file.
cp "$S/a.ovl" "$S/c.ovl"
truncate -s $((8 << 20)) "$S/c.ovl"
not_ok_cmd "check finds a truncated overlay" "$IMG" check "$S/c.ovl"
ok "check --repair extends it" "$IMG" check --repair "$S/c.ovl"
ok "check is clean after extending" "$IMG" check "$S/c.ovl"
head -c 100 "$S/a.ovl" >"$S/d.ovl"
out=$("$IMG" info "$S/d.ovl" 2>&1); rc=$?
is "$rc" 2 "info on a 100-byte file exits 2"
like "$out" "d.ovl: truncated overlay" "and says why"

# ---- write through layerfs, then map and commit
cat >"$S/layerfs.conf" <<CONF
[disk d]
layers = top base

[layer top]
format = overlay
path = $S/top.ovl
create = true
block-size = 64K

[layer base]
format = raw
path = $S/base.raw
read-only = true
CONF
if [ -c /dev/fuse ] && command -v fusermount3 >/dev/null; then
    mkdir -p "$S/mnt"
    start_daemon "$S/mnt" -c "$S/layerfs.conf"
    dd if=/dev/urandom of="$S/mnt/d" bs=65519 seek=3 count=7 conv=notrunc status=none
    dd if=/dev/urandom of="$S/mnt/d" bs=1 seek=5000000 count=3 conv=notrunc status=none
    dd if=/dev/urandom of="$S/mnt/d" bs=1M seek=6 count=1 conv=notrunc,fsync status=none
    fallocate -p -o $((7 << 20)) -l 65536 "$S/mnt/d" 2>/dev/null
    cp "$S/mnt/d" "$S/view"
    out=$("$IMG" check "$S/top.ovl" 2>&1)
    like "$out" "in use" "check refuses an overlay layerfs uses"
    not_ok_cmd "commit refuses an overlay layerfs uses" "$IMG" commit "$S/top.ovl" "$S/base.raw"
    like "$("$IMG" info "$S/top.ovl")" "state: +dirty" "info works on it and says dirty"
    stop_daemon
    is "$DAEMON_STATUS" 0 "layerfs exits 0"
    cmp_file "$S/base.raw" "$S/base.orig" "the read-only base is untouched"
    like "$("$IMG" info "$S/top.ovl")" "state: +clean" "overlay clean after unmount"
    ok "overlay checks clean" "$IMG" check "$S/top.ovl"
    map=$("$IMG" map -c "$S/layerfs.conf" d)
    # dd wrote [196557, 655190): blocks 2-9 of 64K; the 1M write and the punched block
    # over base data (zeroed in the overlay) are blocks 96-112.
    like "$map" "^0 +131072 +base" "map: the start comes from base"
    like "$map" "^131072 +524288 +top" "map: the blocks dd wrote come from top"
    like "$map" "^6291456 +1114112 +top" "map: the 1M write and the punched block come from top"
    json=$("$IMG" map --json -c "$S/layerfs.conf" d)
    like "$json" '"offset": 131072, "length": 524288, "layer": "top", "index": 1, "format": "overlay"' "map --json"
    ok "commit into the base" "$IMG" commit "$S/top.ovl" "$S/base.raw"
    cmp_file "$S/base.raw" "$S/view" "after commit the base equals what the disk showed"
    like "$("$IMG" info "$S/top.ovl")" "blocks present: +0 " "the overlay is empty after commit"
    ok "commit again is a no-op" "$IMG" commit "$S/top.ovl" "$S/base.raw"
    cmp_file "$S/base.raw" "$S/view" "base unchanged by a second commit"
else
    diag "no FUSE: skipping the checks through layerfs"
fi
done_testing
