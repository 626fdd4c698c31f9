#!/bin/bash
# SPDX-License-Identifier: MIT
# The nbd driver and what the server says about blocks: block-size constraints (nbdkit's
# blocksize-policy filter rejecting any request that breaks them, so every request must be
# padded and split right) under random I/O and writers sharing blocks; block status
# (base:allocation) feeding SEEK_DATA/SEEK_HOLE, directly and through an overlay; trim and
# write-zeroes reaching the server.
. "$(dirname "$0")/tap.sh"
. "$T_SRCDIR/nbd.sh"
require_root
require_fuse
require_cmd python3 nbdinfo
MODEL=$BUILDDIR/t/bin/layers-file-model
S=$SCRATCH
mkdir "$S/mnt"
disk() { printf '[disk d]\nlayers = base\n\n'; nbd_layer base "$@"; }

# 1. Minimum 4K, preferred 64K, maximum 256K; anything else is an error from the server.
nbd_serve bs nbdkit -f -U "$(nbd_sock bs)" --filter=blocksize-policy memory 24M \
    blocksize-minimum=4096 blocksize-preferred=65536 blocksize-maximum=262144 \
    blocksize-error-policy=error || exit 1
like "$(nbdinfo "$(nbd_uri bs)")" "block_size_minimum: 4096" "the server advertises its constraints"
disk "$(nbd_uri bs)" >"$S/bs.conf"
start_daemon "$S/mnt" -c "$S/bs.conf" -t 3 || exit 1
ok "constrained server: random I/O at any offset and length matches the model" \
    "$MODEL" "$S/mnt/d" 4030 1500 "$S/bs.ref"
python3 - "$S/mnt/d" "$S/bs.ref" <<'PY'
import os, sys
# Three writers own interleaved 100-byte cells of the same 4K blocks.
path, ref = sys.argv[1], sys.argv[2]
pids = []
for k in range(3):
    pid = os.fork()
    if pid == 0:
        fd = os.open(path, os.O_WRONLY)
        for c in range(k, 3000, 3):
            os.pwrite(fd, bytes([c % 250 + 1]) * 100, 777 + c * 100)
        os._exit(0)
    pids.append(pid)
for p in pids:
    os.waitpid(p, 0)
fd = os.open(ref, os.O_WRONLY)
for c in range(3000):
    os.pwrite(fd, bytes([c % 250 + 1]) * 100, 777 + c * 100)
PY
cmp_file "$S/mnt/d" "$S/bs.ref" "constrained server: writers sharing 4K blocks"
ok "constrained server: fsync" python3 -c "import os; os.fsync(os.open('$S/mnt/d', os.O_RDONLY))"
stop_daemon
is "$DAEMON_STATUS" 0 "layerfs exits 0"
like "$(grep 'driver nbd figures' "$S/layerfs.log")" "remote requests [1-9]" "the figures are logged"
is "$(grep -c 'driver nbd figures.*errors' "$S/layerfs.log")" 0 "the server rejected no request"

# 2. Block status.  A sparse file: data at 1M (64K) and at 8M (4K), holes elsewhere.
truncate -s 16M "$S/sparse.raw"
head -c 65536 /dev/urandom | dd of="$S/sparse.raw" bs=64K seek=16 conv=notrunc status=none
head -c 4096 /dev/urandom | dd of="$S/sparse.raw" bs=4K seek=2048 conv=notrunc status=none
nbd_serve sp nbdkit -f -r -U "$(nbd_sock sp)" file "$S/sparse.raw" || exit 1
seeks() {
    python3 - "$1" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
out = []
for whence, off in ((os.SEEK_DATA, 0), (os.SEEK_HOLE, 1 << 20), (os.SEEK_DATA, (1 << 20) + 65536),
                    (os.SEEK_HOLE, 8 << 20), (os.SEEK_HOLE, 0)):
    out.append(str(os.lseek(fd, off, whence)))
try:
    os.lseek(fd, (8 << 20) + 4096, os.SEEK_DATA)
    out.append("data")
except OSError as e:
    out.append("ENXIO" if e.errno == 6 else str(e))
print(" ".join(out))
PY
}
want="1048576 1114112 8388608 8392704 0 ENXIO"
{ printf '[disk d]\nlayers = base\nread-only = true\n\n'; nbd_layer base "$(nbd_uri sp)" read-only=true; } \
    >"$S/sp.conf"
start_daemon "$S/mnt" -c "$S/sp.conf" || exit 1
is "$(seeks "$S/mnt/d")" "$want" "SEEK_DATA/SEEK_HOLE on an NBD disk follow the server's extents"
cmp_file "$S/mnt/d" "$S/sparse.raw" "the sparse disk reads as the file"
# st_blocks does not ask the server (stat must never wait for the network): the NBD layer
# counts as data in full.
is "$(stat -c %b "$S/mnt/d")" $(((16 << 20) / 512)) "stat counts an NBD layer as data, without asking"
stop_daemon
{
    printf '[disk d]\nlayers = top base\n\n[layer top]\nformat = overlay\npath = %s\n' "$S/top.ovl"
    printf 'create = true\nblock-size = 4K\n\n'
    nbd_layer base "$(nbd_uri sp)" read-only=true
} >"$S/ovl.conf"
start_daemon "$S/mnt" -c "$S/ovl.conf" || exit 1
is "$(seeks "$S/mnt/d")" "$want" "... and through an overlay over it"
stop_daemon

# 3. Trim and write-zeroes reach the server: punching a hole in a writable file export
# deallocates it there, zeroing a range zeroes it.
head -c $((4 << 20)) /dev/urandom >"$S/w.raw"
nbd_serve w nbdkit -f -U "$(nbd_sock w)" file "$S/w.raw" || exit 1
disk "$(nbd_uri w)" >"$S/w.conf"
start_daemon "$S/mnt" -c "$S/w.conf" || exit 1
ok "punch a 1M hole at 1M" fallocate -p -o 1M -l 1M "$S/mnt/d"
ok "zero 64K at 3M" fallocate -z -o 3M -l 64K "$S/mnt/d"
ok "fsync" python3 -c "import os; os.fsync(os.open('$S/mnt/d', os.O_RDONLY))"
stop_daemon
is "$(dd if="$S/w.raw" bs=64K skip=16 count=16 status=none | tr -d '\0' | wc -c)" 0 \
    "the punched range reads as zeros on the server"
is "$(dd if="$S/w.raw" bs=64K skip=48 count=1 status=none | tr -d '\0' | wc -c)" 0 \
    "the zeroed range reads as zeros on the server"
ok "the punched range is deallocated on the server ($(du -k "$S/w.raw" | cut -f1) KiB left)" test "$(du -k "$S/w.raw" | cut -f1)" -le 3200

done_testing
