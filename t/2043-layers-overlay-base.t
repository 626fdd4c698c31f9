#!/bin/bash
# SPDX-License-Identifier: MIT
# An overlay remembers the base it was made over: mounting it over another base, or
# committing it into one, is refused naming both fingerprints unless forced (base-check =
# false, commit --force); an empty overlay, a commit and a write-through overlay follow
# legitimate changes of the base; version 1 overlays open read-only without a write and
# are upgraded (and their base recorded) by a writable mount or layerfs-img upgrade.
. "$(dirname "$0")/tap.sh"
require_fuse
require_root
IMG=$LAYERFS_IMG
S=$SCRATCH
mkdir -p "$S/mnt"

head -c $((8 << 20)) /dev/urandom >"$S/base.raw"
head -c $((8 << 20)) /dev/urandom >"$S/other.raw"
cp "$S/base.raw" "$S/base.orig"

# conf OVERLAY BASE [KEY=VALUE...]: a disk d of OVERLAY over BASE, top keys added.
conf() {
    local o=$1 b=$2; shift 2
    printf '[disk d]\nlayers = top base\n\n[layer top]\nformat = overlay\npath = %s\n' "$o"
    printf 'create = true\n'
    for kv in "$@"; do printf '%s\n' "${kv/=/ = }"; done
    printf '\n[layer base]\nformat = raw\npath = %s\n' "$b"
}
# refused WHAT CONF: layerfs does not start on CONF and names both fingerprints.
refused() {
    local out rc
    out=$(timeout 20 "$LAYERFS" -f -c "$2" "$S/mnt" 2>&1); rc=$?
    [ $rc -eq 0 ] && fusermount3 -u "$S/mnt" 2>/dev/null
    _t_result $((rc == 0 || rc == 124)) "$1: refused (exit $rc)"
    like "$out" "made over a stack below of [0-9]+ bytes with fingerprint [0-9a-f]{16}, but the stack below is [0-9]+ bytes with fingerprint [0-9a-f]{16}" \
        "$1: the message names both sizes and fingerprints"
    like "$out" "base-check = false" "$1: and the way to force it"
}

# cut_before_switch OLD NEW CUT: CUT = OLD grown to NEW's size, with NEW's bitmap written
# at NEW's bitmap offset: what a crash before the header switch of a relayout leaves.
cut_before_switch() {
    local off len
    off=$(od -An -tu8 -j40 -N8 "$2" | tr -d ' ')
    len=$(od -An -tu8 -j48 -N8 "$2" | tr -d ' ')
    cp "$1" "$3"
    truncate -s "$(stat -c %s "$2")" "$3"
    dd if="$2" of="$3" bs=4096 skip=$((off / 4096)) seek=$((off / 4096)) count=$((len / 4096)) \
       conv=notrunc status=none
}

# ---- another base
conf "$S/top.ovl" "$S/base.raw" >"$S/right.conf"
conf "$S/top.ovl" "$S/other.raw" >"$S/wrong.conf"
conf "$S/top.ovl" "$S/other.raw" base-check=false >"$S/forced.conf"
start_daemon "$S/mnt" -c "$S/right.conf" || { _t_result 1 "layerfs starts"; done_testing; }
# From offset 0 on, so that the committed base differs in a sampled region.
dd if=/dev/urandom of="$S/mnt/d" bs=64k count=5 conv=notrunc,fsync status=none
cp "$S/mnt/d" "$S/want.img"
stop_daemon
like "$("$IMG" info "$S/top.ovl")" "base: +8388608 bytes, fingerprint [0-9a-f]{16}" \
    "a writable mount records the base"
refused "another base of the same size" "$S/wrong.conf"
truncate -s 9M "$S/bigger.raw"
conf "$S/top.ovl" "$S/bigger.raw" >"$S/bigger.conf"
refused "a base of another size" "$S/bigger.conf"
cp "$S/other.raw" "$S/other.orig"
out=$("$IMG" commit "$S/top.ovl" "$S/other.raw" 2>&1); rc=$?
is "$rc" 1 "commit into another base is refused (exit 1)"
like "$out" "other.raw: overlay .*top.ovl was made over a base of 8388608 bytes with fingerprint [0-9a-f]{16}, but this one is 8388608 bytes with fingerprint [0-9a-f]{16}" \
    "... naming both fingerprints"
ok "... and leaves that base alone" cmp -s "$S/other.raw" "$S/other.orig"
cp "$S/top.ovl" "$S/keep.ovl"
start_daemon "$S/mnt" -c "$S/forced.conf" || _t_result 1 "base-check = false mounts it anyway"
stop_daemon
start_daemon "$S/mnt" -c "$S/wrong.conf" ||
    _t_result 1 "a forced writable mount records the new base: it mounts unforced afterwards"
stop_daemon
cp "$S/keep.ovl" "$S/top.ovl"
ok "commit --force into another base" "$IMG" commit --force "$S/top.ovl" "$S/other.raw"
cp "$S/other.orig" "$S/other.raw"

# ---- a commit changes the base, and the overlay follows it
cp "$S/keep.ovl" "$S/top.ovl"
ok "commit into the right base" "$IMG" commit "$S/top.ovl" "$S/base.raw"
ok "... which now holds what the disk showed" cmp -s "$S/base.raw" "$S/want.img"
"$IMG" create -B "$S/base.raw" "$S/fresh.ovl"
is "$("$IMG" info "$S/top.ovl" | grep '^base:')" "$("$IMG" info "$S/fresh.ovl" | grep '^base:')" \
    "... and the overlay records the committed base"
start_daemon "$S/mnt" -c "$S/right.conf" || _t_result 1 "the overlay mounts over the committed base"
dd if=/dev/urandom of="$S/mnt/d" bs=64k seek=20 count=1 conv=notrunc,fsync status=none
stop_daemon
conf "$S/top.ovl" "$S/base.orig" >"$S/orig.conf"
refused "after a commit, the base as it was" "$S/orig.conf"

# ---- an empty overlay reads the same over any base
rm -f "$S/e.ovl"
"$IMG" create -B "$S/base.raw" "$S/e.ovl"
conf "$S/e.ovl" "$S/other.raw" >"$S/empty.conf"
start_daemon "$S/mnt" -c "$S/empty.conf" || _t_result 1 "an empty overlay mounts over another base"
stop_daemon

# ---- write-through: writes change the base, and the record follows at close
conf "$S/wt.ovl" "$S/base.raw" write-through=true >"$S/wt.conf"
start_daemon "$S/mnt" -c "$S/wt.conf" || _t_result 1 "a write-through overlay mounts"
dd if=/dev/urandom of="$S/mnt/d" bs=4k count=16 conv=notrunc,fsync status=none
dd if=/dev/urandom of="$S/mnt/d" bs=4k seek=256 count=16 conv=notrunc,fsync status=none
stop_daemon
start_daemon "$S/mnt" -c "$S/wt.conf" ||
    _t_result 1 "a write-through overlay mounts again after writing through to its base"
stop_daemon

# ---- version 1: from the seed corpus (header and bitmap; the data region is all holes)
CORPUS=$T_SRCDIR/fuzz/corpus/overlay
head -c 8192 "$CORPUS/valid-1M-64K" >"$S/v1.ovl"
truncate -s $(((1 << 20) + (64 << 10))) "$S/v1.ovl"
head -c $((1 << 20)) /dev/urandom >"$S/small.raw"
cp "$S/v1.ovl" "$S/v1b.ovl"
cp "$S/v1.ovl" "$S/v1.orig"
like "$("$IMG" info "$S/v1.ovl")" "version 1" "a version 1 overlay opens"
ok "... and checks clean" "$IMG" check "$S/v1.ovl"
conf "$S/v1.ovl" "$S/small.raw" >"$S/v1.conf"
start_daemon "$S/mnt" --read-only -c "$S/v1.conf" || _t_result 1 "v1 mounts read-only"
ok "... reading the base" cmp -s "$S/mnt/d" "$S/small.raw"
stop_daemon
ok "a read-only mount leaves a version 1 file untouched" cmp -s "$S/v1.ovl" "$S/v1.orig"
start_daemon "$S/mnt" -c "$S/v1.conf" || _t_result 1 "v1 mounts writable"
dd if=/dev/urandom of="$S/mnt/d" bs=4k seek=7 count=3 conv=notrunc,fsync status=none
cp "$S/mnt/d" "$S/v1want.img"
stop_daemon
like "$(cat "$S/layerfs.log")" "upgraded overlay .*v1.ovl to version 2" "a writable mount upgrades it"
info=$("$IMG" info "$S/v1.ovl")
like "$info" "version 2" "... to version 2"
like "$info" "base: +1048576 bytes, fingerprint" "... recording its base"
ok "... and it checks clean" "$IMG" check "$S/v1.ovl"
start_daemon "$S/mnt" --read-only -c "$S/v1.conf" || _t_result 1 "the upgraded overlay mounts"
ok "... with the data written" cmp -s "$S/mnt/d" "$S/v1want.img"
stop_daemon
out=$("$IMG" upgrade -B "$S/small.raw" "$S/v1b.ovl"); rc=$?
is "$rc" 0 "layerfs-img upgrade exits 0"
like "$out" "upgraded to version 2" "... and says so"
like "$("$IMG" info "$S/v1b.ovl")" "base: +1048576 bytes" "... recording the base given with -B"
ok "... and the result checks clean" "$IMG" check "$S/v1b.ovl"
like "$("$IMG" upgrade "$S/v1b.ovl")" "already version 2" "upgrading again does nothing"
# A version 1 overlay with blocks present keeps them.
head -c $((4096 + 4096)) "$CORPUS/valid-100M-1M-present" >"$S/v1p.ovl"
truncate -s $(((101 << 20))) "$S/v1p.ovl"
n=$("$IMG" info "$S/v1p.ovl" | sed -n 's/^blocks present: *\([0-9]*\).*/\1/p')
cp "$S/v1p.ovl" "$S/v1p.orig"
ok "upgrade of a version 1 overlay holding $n blocks" "$IMG" upgrade "$S/v1p.ovl"
like "$("$IMG" info "$S/v1p.ovl")" "blocks present: +$n " "... keeps them"
ok "... and checks clean" "$IMG" check "$S/v1p.ovl"
# Interrupted before the header switched: the original file with the new bitmap written
# where the upgrade put it must still be the valid version 1 overlay.
cut_before_switch "$S/v1p.orig" "$S/v1p.ovl" "$S/v1p.cut"
info=$("$IMG" info "$S/v1p.cut")
like "$info" "version 1" "an interrupted upgrade leaves the version 1 overlay"
like "$info" "blocks present: +$n " "... with its blocks"
ok "... valid" "$IMG" check "$S/v1p.cut"
done_testing
