#!/bin/bash
# SPDX-License-Identifier: MIT
# layerfs over qemu-storage-daemon's vhost-user-blk export (512- and 4096-byte blocks), end
# to end through the mounted file: odd writes, concurrent writers on shared sectors, punch
# and zero ranges, fsync, then the image checked from the host; FUSE reads and writes reaching
# the device without a copy (FUSE buffers and bounce buffers live in blockcore's registered
# arenas), shown by the driver's counters; and a layered stack whose base is the virtio-blk
# device (read-only) under an overlay file, the base left untouched.
. "$(dirname "$0")/tap.sh"
require_root
require_fuse
require_cmd qemu-storage-daemon python3 dd cmp fallocate
[ -x "$LAYERFS" ] || skip_all "layerfs not built"

SIZE=$((16 << 20))
MNT=$SCRATCH/mnt
mkdir "$MNT"
head -c 2000000 /dev/urandom >"$SCRATCH/src"
QSD_PID=

start_qsd() {
    local img=$1 blk=$2 ro=${3:-off}
    SOCK=$SCRATCH/vhost.sock
    rm -f "$SOCK"
    local wr=on ro_opt=
    [ "$ro" = on ] && { wr=off; ro_opt=,read-only=on; }
    qemu-storage-daemon \
        --blockdev "driver=file,node-name=f,filename=$img,cache.direct=on,discard=unmap$ro_opt" \
        --export "type=vhost-user-blk,id=v,node-name=f,addr.type=unix,addr.path=$SOCK,writable=$wr,num-queues=2,logical-block-size=$blk" \
        >"$SCRATCH/qsd.log" 2>&1 &
    QSD_PID=$!
    on_exit "kill -KILL $QSD_PID 2>/dev/null; wait $QSD_PID 2>/dev/null"
    local i
    for ((i = 0; i < 200; i++)); do
        [ -S "$SOCK" ] && return 0
        sleep 0.05
    done
    diag "qemu-storage-daemon did not start:"
    sed 's/^/#   /' "$SCRATCH/qsd.log"
    return 1
}

stop_qsd() {
    kill -TERM "$QSD_PID" 2>/dev/null
    wait "$QSD_PID" 2>/dev/null
    QSD_PID=
}

w() { local f=$1; shift; dd if="$SCRATCH/src" of="$f" conv=notrunc status=none "$@"; }

odd_writes() {
    local f=$1 off
    w "$f" bs=65519 count=7
    w "$f" bs=65519 seek=40 count=3
    for off in 0 1 511 512 513 4095 4096 4097 65535 $((SIZE - 1)); do
        w "$f" bs=1 count=1 skip=$((off % 1000 + 7)) seek=$off
    done
    for off in 510 4094 8190 $((1 << 20)) $((SIZE - 1000)); do
        w "$f" bs=1000 count=1 skip=$((off % 999)) seek=$off oflag=seek_bytes iflag=skip_bytes
    done
    w "$f" bs=1M count=1 seek=5 skip=1 iflag=fullblock
    w "$f" bs=131072 count=3 seek=$(( (2 << 20) + 123 )) oflag=seek_bytes
}

# 4 processes write interleaved 37-byte cells of the same sectors; the result is known.
concurrent() {
    python3 - "$1" "$2" <<'PY'
import os, random, sys
path, ref = sys.argv[1], sys.argv[2]
NPROC, CELL, SPAN = 4, 37, 128 * 1024
cells = SPAN // CELL
def data(k, c):
    return bytes(((k * 31 + c + i) % 251) + 1 for i in range(CELL))
pids = []
for k in range(NPROC):
    pid = os.fork()
    if pid == 0:
        fd = os.open(path, os.O_WRONLY)
        mine = [c for c in range(cells) if c % NPROC == k]
        random.Random(k).shuffle(mine)
        for c in mine:
            os.pwrite(fd, data(k, c), 8192 + c * CELL)
        os._exit(0)
    pids.append(pid)
bad = sum(os.waitpid(p, 0)[1] != 0 for p in pids)
fd = os.open(ref, os.O_WRONLY)
for c in range(cells):
    os.pwrite(fd, data(c % NPROC, c), 8192 + c * CELL)
sys.exit(1 if bad else 0)
PY
}

for blk in 512 4096; do
    img=$SCRATCH/disk.img
    head -c $SIZE /dev/urandom >"$img"
    cp "$img" "$SCRATCH/ref"
    start_qsd "$img" "$blk" || { _t_result 1 "qemu-storage-daemon starts"; continue; }
    start_daemon "$MNT" -t 2 \
        --disk "d=driver=virtio-blk-vhost-user,path=$SOCK,num-queues=2,queue-size=64" ||
        { _t_result 1 "blk $blk: layerfs starts"; stop_qsd; continue; }
    f=$MNT/d
    cmp_file "$f" "$SCRATCH/ref" "blk $blk: the mounted file reads as the image"
    odd_writes "$f"
    odd_writes "$SCRATCH/ref"
    cmp_file "$f" "$SCRATCH/ref" "blk $blk: odd writes read back"
    ok "blk $blk: concurrent writers on shared sectors" concurrent "$f" "$SCRATCH/ref"
    for r in "-p -o 1000 -l 70000" "-z -o 200000 -l 12345" "-p -o 3M -l 1M"; do
        # shellcheck disable=SC2086
        fallocate $r "$f" && fallocate $r "$SCRATCH/ref"
    done
    cmp_file "$f" "$SCRATCH/ref" "blk $blk: after concurrent writes, punch and zero ranges"
    ok "blk $blk: fsync" python3 -c "import os; fd=os.open('$f', os.O_RDONLY); os.fsync(fd)"
    stop_daemon
    is "$DAEMON_STATUS" "0" "blk $blk: layerfs exits cleanly"
    stop_qsd
    cmp_file "$img" "$SCRATCH/ref" "blk $blk: the image on the host matches, byte for byte"
done

# Zero copy: direct I/O through the file, aligned and not, then the driver's counters, which
# it logs at close (a debug message: -v): nothing was copied.  Without arenas
# (LAYERFS_BUF_POOL=0) the same run must show copies, or the check proves nothing.
# zc_run POOL: sets ZC_LINE to the driver's counter line.
zc_run() {
    local f=$MNT/d
    ZC_LINE=
    LAYERFS_BUF_POOL=$1 start_daemon "$MNT" -v -t 2 \
        --disk "d=driver=virtio-blk-vhost-user,path=$SOCK,num-queues=2" || return 1
    dd if="$SCRATCH/src" of="$f" bs=1M count=1 oflag=direct conv=notrunc status=none
    dd if="$SCRATCH/src" of="$f" bs=64K count=8 seek=40 oflag=direct conv=notrunc status=none
    w "$f" bs=65519 count=3 seek=7
    dd if="$f" of=/dev/null bs=1M count=4 iflag=direct status=none
    dd if="$f" of=/dev/null bs=4K count=64 skip=100 iflag=direct status=none
    cmp_file "$f" "$SCRATCH/ref" "zero copy (arenas: ${1:-default}): the file reads as expected"
    stop_daemon
    ZC_LINE=$(grep -o 'zero-copy): .*' "$SCRATCH/layerfs.log")
    diag "arenas ${1:-default}: $ZC_LINE"
}
img=$SCRATCH/zc.img
head -c $SIZE /dev/urandom >"$img"
cp "$img" "$SCRATCH/ref"
dd if="$SCRATCH/src" of="$SCRATCH/ref" bs=1M count=1 conv=notrunc status=none
dd if="$SCRATCH/src" of="$SCRATCH/ref" bs=64K count=8 seek=40 conv=notrunc status=none
w "$SCRATCH/ref" bs=65519 count=3 seek=7
start_qsd "$img" 4096 && {
    zc_run ""
    like "$ZC_LINE" "^zero-copy\): [1-9][0-9]* requests, [0-9]+ bytes; copied: 0 requests" \
        "zero copy: FUSE reads and writes reached the device in place, none copied"
    zc_run 0
    like "$ZC_LINE" "copied: [1-9][0-9]* requests" \
        "zero copy: without arenas the same I/O is copied, and the check says so"
    stop_qsd
}

# A read-only virtio-blk base under an overlay file.
img=$SCRATCH/base.img
head -c $SIZE /dev/urandom >"$img"
cp "$img" "$SCRATCH/base.orig"
cp "$img" "$SCRATCH/ref"
start_qsd "$img" 4096 on && {
    start_daemon "$MNT" \
        --disk "d=format=overlay,path=$SCRATCH/top.ovl,create=true:driver=virtio-blk-vhost-user,path=$SOCK,read-only=true" &&
    {
        odd_writes "$MNT/d"
        odd_writes "$SCRATCH/ref"
        cmp_file "$MNT/d" "$SCRATCH/ref" "overlay over virtio-blk: reads show base and writes"
        stop_daemon
        is "$DAEMON_STATUS" "0" "overlay over virtio-blk: clean exit"
        start_daemon "$MNT" \
            --disk "d=format=overlay,path=$SCRATCH/top.ovl:driver=virtio-blk-vhost-user,path=$SOCK,read-only=true" &&
            cmp_file "$MNT/d" "$SCRATCH/ref" "overlay over virtio-blk: same after a restart"
        stop_daemon
    }
    stop_qsd
}
cmp_file "$img" "$SCRATCH/base.orig" "overlay over virtio-blk: the base image is untouched"

done_testing
