#!/bin/bash
# SPDX-License-Identifier: MIT
# Holes: fallocate punch-hole and zero-range, SEEK_DATA/SEEK_HOLE, cp --sparse=always, and
# qemu-img info/compare on the exposed file.
. "$(dirname "$0")/tap.sh"
require_root
require_fuse
require_cmd python3 fallocate qemu-img cp

MIB=$((1 << 20))
SIZE=$((16 * MIB))
MNT=$SCRATCH/mnt
mkdir "$MNT"
truncate -s $SIZE "$SCRATCH/img"
truncate -s $SIZE "$SCRATCH/ref"
start_daemon "$MNT" --disk "d=$SCRATCH/img" || exit 1
F=$MNT/d

both() { # both DD-ARGS...: the same dd into the disk and the reference
    dd of="$F" conv=notrunc status=none "$@" && dd of="$SCRATCH/ref" conv=notrunc status=none "$@"
}
head -c $((2 * MIB)) /dev/urandom >"$SCRATCH/src"
both if="$SCRATCH/src" bs=1M count=1 seek=1
both if="$SCRATCH/src" bs=4096 count=1 seek=$((5 * 256))
cmp_file "$F" "$SCRATCH/ref" "data written"

# seek F OFFSET WHENCE: the offset lseek returns, or the errno name.
seek() {
    python3 -c "
import os, sys, errno
fd = os.open(sys.argv[1], os.O_RDONLY)
try: print(os.lseek(fd, int(sys.argv[2]), getattr(os, sys.argv[3])))
except OSError as e: print(errno.errorcode[e.errno])" "$@"
}
is "$(seek "$F" 0 SEEK_DATA)" "$MIB" "SEEK_DATA from 0 finds the first data"
is "$(seek "$F" 0 SEEK_HOLE)" "0" "SEEK_HOLE at a hole stays"
is "$(seek "$F" $MIB SEEK_HOLE)" "$((2 * MIB))" "SEEK_HOLE from data finds its end"
is "$(seek "$F" $((2 * MIB)) SEEK_DATA)" "$((5 * MIB))" "SEEK_DATA skips the hole"
is "$(seek "$F" $((5 * MIB)) SEEK_HOLE)" "$((5 * MIB + 4096))" "SEEK_HOLE after a 4K extent"
is "$(seek "$F" $((5 * MIB + 4096)) SEEK_DATA)" "ENXIO" "SEEK_DATA with no data after: ENXIO"
is "$(seek "$F" $((SIZE - 1)) SEEK_HOLE)" "$((SIZE - 1))" "SEEK_HOLE in the last hole"
is "$(seek "$F" $SIZE SEEK_DATA)" "ENXIO" "SEEK_DATA at the end: ENXIO"
is "$(seek "$F" $SIZE SEEK_HOLE)" "ENXIO" "SEEK_HOLE at the end: ENXIO"

# Punch a hole: reads zeros, the backing file deallocates, SEEK_HOLE sees it.
ok "fallocate --punch-hole" fallocate -p -o $((MIB + 8192)) -l 65536 "$F"
ref0() { dd of="$SCRATCH/ref" if=/dev/zero conv=notrunc status=none "$@"; }
ref0 bs=65536 count=1 seek=$((MIB + 8192)) oflag=seek_bytes
cmp_file "$F" "$SCRATCH/ref" "punched range reads as zeros"
is "$(seek "$F" $MIB SEEK_HOLE)" "$((MIB + 8192))" "SEEK_HOLE finds the punched hole"
is "$(seek "$F" $((MIB + 8192)) SEEK_DATA)" "$((MIB + 8192 + 65536))" "and data after it"
ok "unaligned punch-hole" fallocate -p -o $((MIB + 300000)) -l 12345 "$F"
ref0 bs=12345 count=1 seek=$((MIB + 300000)) oflag=seek_bytes
cmp_file "$F" "$SCRATCH/ref" "unaligned punched range reads as zeros, neighbours intact"

# Zero range: zeros, the neighbours untouched.
ok "fallocate --zero-range, unaligned" fallocate -z -o $((MIB + 500001)) -l 70000 "$F"
ref0 bs=70000 count=1 seek=$((MIB + 500001)) oflag=seek_bytes
cmp_file "$F" "$SCRATCH/ref" "zero-range reads as zeros"
ok "zero-range with keep-size past the end is clipped" \
    fallocate -z -n -o $((SIZE - 4096)) -l 65536 "$F"
not_ok_cmd "zero-range growing the file fails" fallocate -z -o $((SIZE - 4096)) -l 65536 "$F"
ok "fallocate mode 0 inside the disk succeeds" fallocate -o 0 -l $MIB "$F"
not_ok_cmd "fallocate mode 0 past the end fails" fallocate -o $((SIZE - 10)) -l 100 "$F"
err=$(fallocate --collapse-range -o 0 -l 65536 "$F" 2>&1)
like "$err" "not supported" "collapse-range: EOPNOTSUPP"
err=$(fallocate --insert-range -o 0 -l 65536 "$F" 2>&1)
like "$err" "not supported" "insert-range: EOPNOTSUPP"
is "$(stat -c %s "$F")" "$SIZE" "the size never changed"
ref0 bs=4096 count=1 seek=$((SIZE / 4096 - 1))
cmp_file "$F" "$SCRATCH/ref" "everything still matches"

# cp --sparse=always and qemu-img.
ok "cp --sparse=always" cp --sparse=always "$F" "$SCRATCH/copy"
cmp_file "$SCRATCH/copy" "$SCRATCH/ref" "the copy matches"
used=$(du -k "$SCRATCH/copy" | cut -f1)
ok "the copy is sparse ($used KiB used)" test "$used" -lt 4096
info=$(qemu-img info "$F" 2>&1)
like "$info" "file format: raw" "qemu-img info: raw"
like "$info" "virtual size: 16 MiB" "qemu-img info: size"
like "$(qemu-img compare -f raw -F raw "$F" "$SCRATCH/ref" 2>&1)" "Images are identical" \
    "qemu-img compare with the reference"
ok "qemu-img convert from the exposed file" qemu-img convert -f raw -O qcow2 "$F" \
    "$SCRATCH/c.qcow2"
like "$(qemu-img compare -f qcow2 -F raw "$SCRATCH/c.qcow2" "$SCRATCH/ref" 2>&1)" \
    "Images are identical" "and the converted image matches"

stop_daemon
is "$DAEMON_STATUS" "0" "clean exit"
cmp_file "$SCRATCH/img" "$SCRATCH/ref" "the backing file matches"
alloc=$(du -k "$SCRATCH/img" | cut -f1)
ok "the backing file stayed sparse ($alloc KiB)" test "$alloc" -lt 4096

done_testing
