#!/bin/bash
# SPDX-License-Identifier: MIT
# Bounded read caches through the mounted file: random reads over a base eight times the
# cache never make the cache file take more than cache-size (du) and always return the
# base's data; the contents persist across a restart; a smaller cache-size evicts down at
# open; the figures logged at unmount match known traffic.
. "$(dirname "$0")/tap.sh"
require_fuse
require_cmd python3
S=$SCRATCH
BS=65536

head -c $((32 << 20)) /dev/urandom >"$S/base.raw"

# conf FILE CACHE-SIZE: a read-only disk "d": a bounded cache over the base.
conf() {
    cat >"$1" <<EOF
[disk d]
layers = cache base
read-only = true

[layer cache]
format = overlay
path = $S/cache.ovl
create = true
read-cache = true
block-size = 64K
cache-size = $2

[layer base]
path = $S/base.raw
read-only = true
EOF
}

# mount_or_stop WHAT: mount disk d per c.conf, or fail and end the test.
mount_or_stop() {
    start_daemon "$S/mnt" -c "$S/c.conf" || { _t_result 1 "$1"; done_testing; }
}

du_bytes() { echo $(($(stat -c %b "$1") * 512)); }

# Random reads at arbitrary offsets and lengths, each compared with the base; the cache
# file's size checked every 20 reads.  Prints the largest size seen.
random_reads() {
    python3 - "$S/mnt/d" "$S/base.raw" "$S/cache.ovl" "$1" "$2" <<'EOF'
import os, random, sys
disk, base, cache, limit, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ref = open(base, 'rb').read()
fd = os.open(disk, os.O_RDONLY)
r = random.Random(seed)
most = 0
for i in range(1500):
    off = r.randrange(len(ref))
    n = min(r.randrange(1, 300000), len(ref) - off)
    if os.pread(fd, n, off) != ref[off:off + n]:
        print("read %d at %d+%d: wrong data" % (i, off, n)); sys.exit(1)
    if i % 20 == 0:
        most = max(most, os.stat(cache).st_blocks * 512)
        if most > limit:
            print("cache file takes %d bytes after read %d, limit %d" % (most, i, limit)); sys.exit(1)
print(most)
EOF
}

mkdir -p "$S/mnt"
conf "$S/c.conf" 4M
mount_or_stop "mount"
most=$(random_reads $((4 << 20)) 1)
ok "random reads return the base's data and the cache stays within 4M (most: $most)" \
    test "$?" -eq 0 -a -n "$most"
stop_daemon
cp "$S/layerfs.log" "$S/log1"
like "$(cat "$S/log1")" "cache figures: hits [1-9][0-9]*, misses [1-9][0-9]*, evictions [1-9]" \
    "the figures show hits, misses and evictions"
ok "after unmount the cache file takes at most 4M" test "$(du_bytes "$S/cache.ovl")" -le $((4 << 20))

# Restart: the contents persist; the whole disk still reads as the base.
mount_or_stop "remount"
held=$(du_bytes "$S/cache.ovl")
ok "the cache contents persist across the restart ($held bytes)" test "$held" -gt $((2 << 20))
cmp_file "$S/mnt/d" "$S/base.raw" "after restart the disk reads as the base"
stop_daemon
ok "still within 4M" test "$(du_bytes "$S/cache.ovl")" -le $((4 << 20))

# A smaller cache-size: evicted down at open, data still right.
conf "$S/c.conf" 1M
mount_or_stop "remount with 1M"
ok "at open the cache is evicted down to the new 1M" \
    test "$(du_bytes "$S/cache.ovl")" -le $((1 << 20))
like "$(cat "$S/layerfs.log")" "evicted [0-9]+ blocks at open to fit cache-size" \
    "the eviction at open is logged"
most=$(random_reads $((1 << 20)) 2)
ok "random reads with the smaller cache: right data, within 1M (most: $most)" \
    test "$?" -eq 0 -a -n "$most"
stop_daemon
is "$DAEMON_STATUS" 0 "layerfs exits 0"

# Known traffic: 50 distinct blocks read twice with room for all, in two mounts.
rm -f "$S/cache.ovl"
conf "$S/c.conf" 8M
read_blocks() {
    python3 - "$S/mnt/d" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
for i in range(50):
    assert len(os.pread(fd, 65536, (i * 7 % 512) * 65536)) == 65536
EOF
}
for pass in 1 2; do
    mount_or_stop "mount for pass $pass"
    ok "pass $pass: 50 blocks read" read_blocks
    stop_daemon
    cp "$S/layerfs.log" "$S/log-pass$pass"
done
want1="hits 0, misses 50, evictions 0, bytes filled $((50 * BS)), bytes from below $((50 * BS))"
want2="hits 50, misses 0, evictions 0, bytes filled 0, bytes from below 0"
like "$(cat "$S/log-pass1")" "cache figures: $want1," "first pass: 50 misses, 50 blocks filled"
like "$(cat "$S/log-pass2")" "cache figures: $want2," "second pass (after a restart): 50 hits"

done_testing
