#!/bin/bash
# SPDX-License-Identifier: MIT
# st_blocks of the exposed file is what the layers hold as data: du(1), stat(1) and
# qemu-img info show a mostly empty disk as such, and follow writes and punched holes.
# Also mmap(2), as layerfs(1) documents it: ENODEV shared in the default cache mode.
. "$(dirname "$0")/tap.sh"
require_root
require_fuse
require_cmd du stat fallocate qemu-img

MIB=$((1 << 20))
MNT=$SCRATCH/mnt
mkdir "$MNT"

# A 64 MiB base holding 1 MiB at 5 MiB; an overlay over it.
truncate -s $((64 * MIB)) "$SCRATCH/base.raw"
truncate -s 1G "$SCRATCH/hole.raw"
head -c $MIB /dev/urandom | dd of="$SCRATCH/base.raw" bs=1M seek=5 conv=notrunc status=none
start_daemon "$MNT" --disk "d=format=overlay,path=$SCRATCH/top.ovl,create=true:$SCRATCH/base.raw" \
    --disk "empty=format=ram:$SCRATCH/hole.raw" || exit 1
F=$MNT/d

kib() { du -k "$1" | cut -f1; }
# kib_is FILE WANT DESC: du shows WANT KiB, within the moment st_blocks may lag writes.
kib_is() {
    local i got
    for ((i = 0; i < 30; i++)); do
        got=$(kib "$1")
        [ "$got" = "$2" ] && break
        sleep 0.1
    done
    is "$got" "$2" "$3"
}
is "$(kib "$F")" 1024 "du: the base's 1 MiB of data, not the 64 MiB size"
is "$(stat -c %b "$F")" 2048 "stat: 2048 blocks of 512 bytes"
is "$(stat -c %s "$F")" $((64 * MIB)) "the size is still the whole disk"
like "$(qemu-img info "$F")" "disk size: 1 MiB" "qemu-img info: disk size 1 MiB"
is "$(kib "$MNT/empty")" 0 "a ram layer over a 1 GiB hole uses nothing"

head -c $((2 * MIB)) /dev/urandom >"$SCRATCH/two"
dd if="$SCRATCH/two" of="$F" bs=1M seek=20 conv=notrunc,fsync status=none
kib_is "$F" 3072 "after writing 2 MiB: 3 MiB"
dd if="$SCRATCH/two" of="$F" bs=1M seek=5 conv=notrunc,fsync status=none
kib_is "$F" 4096 "overwriting the base's data and 1 MiB after it: 4 MiB"
dd if="$SCRATCH/two" of="$MNT/empty" bs=64K count=3 seek=100 oflag=direct conv=notrunc \
    status=none
kib_is "$MNT/empty" 192 "the ram disk after 192 KiB of writes"
ok "punch 2 MiB at 20 MiB" fallocate -p -o $((20 * MIB)) -l $((2 * MIB)) "$F"
kib_is "$F" 2048 "after the punch: 2 MiB"
ok "punch the whole disk" fallocate -p -o 0 -l $((64 * MIB)) "$F"
kib_is "$F" 0 "after punching everything: nothing"

# mmap: the default cache mode opens with FOPEN_DIRECT_IO, which the kernel cannot keep
# coherent with a shared mapping (ENODEV, as layerfs(1) says); --cache=page can.
map() { # map FILE shared|private: mmap 4 KiB, print "ok" or the errno name
    python3 -c '
import errno, mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
flags = mmap.MAP_SHARED if sys.argv[2] == "shared" else mmap.MAP_PRIVATE
try:
    m = mmap.mmap(fd, 4096, flags=flags)
    m[0:5] = b"hello"
    m.flush()
    print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])' "$@"
}
if command -v python3 >/dev/null; then
    is "$(map "$F" shared)" ENODEV "default cache mode: a shared mmap fails with ENODEV"
    is "$(map "$F" private)" ok "default cache mode: a private mmap works"
fi
stop_daemon
is "$DAEMON_STATUS" 0 "clean exit"

if command -v python3 >/dev/null; then
    start_daemon "$MNT" --cache=page --disk "d=$SCRATCH/base.raw" || exit 1
    is "$(map "$MNT/d" shared)" ok "--cache=page: a shared mmap works"
    stop_daemon
    is "$(head -c 5 "$SCRATCH/base.raw")" hello "and what it wrote reached the disk"
fi

done_testing
