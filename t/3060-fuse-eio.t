#!/bin/bash
# SPDX-License-Identifier: MIT
# Backend errors: the fault driver fails reads or writes at chosen offsets with EIO; the
# reader or writer sees EIO, and the daemon stays up and keeps serving everything else.
. "$(dirname "$0")/tap.sh"
require_root
require_fuse
require_cmd python3 dd

MIB=$((1 << 20))
MNT=$SCRATCH/mnt
mkdir "$MNT"
truncate -s 4M "$SCRATCH/good.img"
start_daemon "$MNT" \
    --disk "bad=driver=fault,size=16M,fault-read-offset=1M,fault-len=4096" \
    --disk "wbad=driver=fault,size=16M,fault-write-offset=2M,fault-len=65536" \
    --disk "good=$SCRATCH/good.img" || exit 1
pid=$(cat "$SCRATCH/layerfs.pid")

err=$(dd if="$MNT/bad" of=/dev/null bs=4096 skip=256 count=1 2>&1)
is "$?" "1" "reading the failing block fails"
like "$err" "Input/output error" "with EIO"
err=$(dd if="$MNT/bad" of=/dev/null bs=1M count=4 2>&1)
like "$err" "Input/output error" "a large read covering it fails with EIO too"
ok "the daemon survived" kill -0 "$pid"
ok "reading other offsets works" dd if="$MNT/bad" of=/dev/null bs=4096 skip=255 count=1 \
    status=none
ok "and after the failing block" dd if="$MNT/bad" of=/dev/null bs=1M skip=2 count=14 status=none
head -c 8192 /dev/urandom >"$SCRATCH/data"
ok "writing the failing disk elsewhere works" dd if="$SCRATCH/data" of="$MNT/bad" bs=8192 \
    seek=100 conv=notrunc status=none
is "$(dd if="$MNT/bad" bs=8192 skip=100 count=1 status=none | md5sum)" \
    "$(md5sum <"$SCRATCH/data")" "and reads back"

err=$(dd if="$SCRATCH/data" of="$MNT/wbad" bs=4096 count=1 seek=$((2 * 256 + 3)) \
    conv=notrunc,fsync 2>&1)
like "$err" "Input/output error" "a failing write reports EIO"
err=$(python3 -c "
import os, errno
fd = os.open('$MNT/wbad', os.O_WRONLY)
try:
    os.pwrite(fd, b'x' * 100, 2 * 1024 * 1024 + 10)
    print('ok')
except OSError as e:
    print(errno.errorcode[e.errno])")
is "$err" "EIO" "an unaligned write into the failing range: EIO"
ok "a write outside the range works" dd if="$SCRATCH/data" of="$MNT/wbad" bs=4096 count=1 \
    conv=notrunc,fsync status=none
ok "the daemon survived" kill -0 "$pid"
ok "the other disk is unaffected" dd if="$SCRATCH/data" of="$MNT/good" bs=8192 conv=notrunc,fsync \
    status=none
cmp_file <(head -c 8192 "$MNT/good") "$SCRATCH/data" "and reads back"
for i in $(seq 20); do dd if="$MNT/bad" of=/dev/null bs=4096 skip=256 count=1 2>/dev/null; done
ok "still up after repeated errors" dd if="$MNT/bad" of=/dev/null bs=4096 count=1 status=none

stop_daemon
is "$DAEMON_STATUS" "0" "clean exit"

done_testing
