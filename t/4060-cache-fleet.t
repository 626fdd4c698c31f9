#!/bin/bash
# SPDX-License-Identifier: MIT
# A fleet: one base behind nbdkit's delay filter (a slow network, 10 ms a read) on a Unix
# socket; three disks in one mount, each an overlay over its own bounded cache over the
# base, plus a fourth whose cache is a quarter of the base.  A second read pass is served
# from the caches (the figures say so, and nothing more comes from the server) and is
# many times faster; no cache file ever takes more than its cache-size.
. "$(dirname "$0")/tap.sh"
. "$T_SRCDIR/nbd.sh"
require_root
require_fuse
require_cmd dd cmp
S=$SCRATCH
MIB=$((1 << 20))
BASE=$((16 * MIB))
BLOCKS=$((BASE / 65536))
BIG=$((20 * MIB))
SMALL=$((4 * MIB))
mkdir "$S/mnt"

head -c "$BASE" /dev/urandom >"$S/base.raw"
nbd_serve base nbdkit -f -r -U "$(nbd_sock base)" --filter=delay file "$S/base.raw" \
    delay-read=10ms || exit 1

# disk NAME CACHE-SIZE: overlay NAME-top over cache NAME-cache over the NBD base.
disk() {
    printf '[disk %s]\nlayers = %s-top %s-cache %s-base\n\n' "$1" "$1" "$1" "$1"
    printf '[layer %s-top]\nformat = overlay\npath = %s/%s-top.ovl\ncreate = true\n\n' \
        "$1" "$S" "$1"
    printf '[layer %s-cache]\nformat = overlay\npath = %s/%s-cache.ovl\ncreate = true\n' \
        "$1" "$S" "$1"
    printf 'read-cache = true\nblock-size = 64K\ncache-size = %s\n\n' "$2"
    nbd_layer "$1-base" "$(nbd_uri base)" read-only=true
}
{ disk a $BIG; disk b $BIG; disk c $BIG; disk small $SMALL; } >"$S/fleet.conf"

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Every cache file within its limit.
within_limits() {
    local d lim sz
    for d in a b c small; do
        lim=$BIG; [ $d = small ] && lim=$SMALL
        sz=$(($(stat -c %b "$S/$d-cache.ovl") * 512))
        [ "$sz" -le "$lim" ] || { diag "$d-cache.ovl takes $sz bytes, limit $lim"; return 1; }
    done
}

# One pass: read the three big disks in parallel (128 KiB reads, 128 requests to the server
# each when uncached) and compare with the base.
pass() {
    local d pids=() bad=0
    for d in a b c; do
        dd if="$S/mnt/$d" bs=128K status=none | cmp - "$S/base.raw" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || bad=1; done
    return $bad
}

start_daemon "$S/mnt" -c "$S/fleet.conf" || { _t_result 1 "mount"; done_testing; }
dd if="$S/mnt/small" bs=1M status=none | cmp - "$S/base.raw" >"$S/small.out" 2>&1 &
small_pid=$!
t0=$(now_ms)
ok "first pass over the slow network: three disks read the base" pass
t1=$(now_ms)
ok "second pass: three disks read the base" pass
t2=$(now_ms)
wait $small_pid
ok "the disk with a small cache reads the base" test $? -eq 0
ok "a second read of it (evicting as it goes) reads the base" \
    sh -c "dd if='$S/mnt/small' bs=1M status=none | cmp - '$S/base.raw'"
ok "no cache file takes more than its cache-size" within_limits
stop_daemon
is "$DAEMON_STATUS" 0 "layerfs exits 0"
ok "after unmount too" within_limits

first=$((t1 - t0)) second=$((t2 - t1))
[ "$second" -gt 0 ] || second=1
diag "first pass $first ms, second pass $second ms: $((first / second))x faster"
ok "the second pass is at least 3x faster ($first ms vs $second ms)" \
    test "$first" -ge $((3 * second))

# figure LAYER NAME: the figure NAME logged for LAYER at exit.
figure() {
    sed -n "s/.*layer $1: .*figures: .*$2 \([0-9]*\).*/\1/p" "$S/layerfs.log" | head -1
}
log=$(cat "$S/layerfs.log")
# Opening a disk may read a little of the base (checks of the stack): allow for it.
for d in a b c; do
    is "$(figure $d-cache misses)" $BLOCKS "$d: every block missed once, in the first pass"
    hits=$(figure $d-cache hits)
    ok "$d: the second pass hit every block ($hits hits)" test "${hits:-0}" -ge $BLOCKS
    remote=$(figure $d-base "bytes from remote")
    ok "$d: the server sent the base once ($remote bytes, not twice)" \
        test "${remote:-0}" -ge $BASE -a "${remote:-0}" -lt $((BASE + BASE / 10))
done
like "$log" "layer small-cache: cache figures: hits [0-9]+, misses [0-9]+, evictions [1-9]" \
    "small: its cache evicted"

done_testing
