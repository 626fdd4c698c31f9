#!/bin/bash
# SPDX-License-Identifier: MIT
# The virtio-blk-vhost-user driver against qemu-storage-daemon's vhost-user-blk export with
# 512- and 4096-byte logical blocks: odd offsets and sizes from several loops and queues,
# sector-sharing concurrent writes, flush, discard and write-zeroes, the image then compared
# with the host's view byte for byte; I/O in blockcore's registered buffer arenas going to
# the device without a copy; copied I/O beyond the bounce pool; device errors, a read-only
# device, the back end dying.
. "$(dirname "$0")/tap.sh"

require_cmd qemu-storage-daemon cmp
VBLK=$BUILDDIR/t/bin/vblk-io
[ -x "$VBLK" ] || skip_all "t/bin/vblk-io not built (make check builds it)"
SIZE=$((64 << 20))
QSD_PID=

# start_qsd NAME ARGS...: qemu-storage-daemon with ARGS; waits for $SCRATCH/NAME.sock.
start_qsd() {
    local name=$1; shift
    SOCK=$SCRATCH/$name.sock
    rm -f "$SOCK"
    qemu-storage-daemon "$@" >"$SCRATCH/$name.qsd.log" 2>&1 &
    QSD_PID=$!
    on_exit "kill -KILL $QSD_PID 2>/dev/null; wait $QSD_PID 2>/dev/null"
    local i
    for ((i = 0; i < 200; i++)); do
        [ -S "$SOCK" ] && return 0
        kill -0 "$QSD_PID" 2>/dev/null || break
        sleep 0.05
    done
    diag "qemu-storage-daemon did not start:"
    sed 's/^/#   /' "$SCRATCH/$name.qsd.log"
    return 1
}

stop_qsd() {
    kill -TERM "$QSD_PID" 2>/dev/null
    wait "$QSD_PID" 2>/dev/null
    QSD_PID=
}

# export_args IMG SOCK EXTRA-EXPORT-OPTS: a writable vhost-user-blk export of IMG.
export_args() {
    echo "--blockdev driver=file,node-name=f,filename=$1,cache.direct=on,discard=unmap" \
        "--export type=vhost-user-blk,id=v,node-name=f,addr.type=unix,addr.path=$2,writable=on$3"
}

for blk in 512 4096; do
    img=$SCRATCH/disk-$blk.img
    head -c $SIZE /dev/urandom >"$img"
    # shellcheck disable=SC2046
    start_qsd "b$blk" $(export_args "$img" "$SCRATCH/b$blk.sock" ",num-queues=2,logical-block-size=$blk") ||
        { _t_result 1 "qemu-storage-daemon starts (block size $blk)"; continue; }

    ok "block size $blk: 3 loops on 2 queues, random odd I/O checked against a model" \
        "$VBLK" --mode io --blk "$blk" --loops 3 --seed 11 --image "$img" \
        --out "$SCRATCH/out-$blk-a" "$SOCK"
    cmp_file "$img" "$SCRATCH/out-$blk-a" "block size $blk: the host sees what the driver reads"

    ok "block size $blk: 5 loops sharing 1 queue of 8 entries" \
        "$VBLK" --mode io --blk "$blk" --loops 5 --num-queues 1 --queue-size 8 --ops 150 \
        --seed 12 --image "$img" --out "$SCRATCH/out-$blk-b" "$SOCK"
    cmp_file "$img" "$SCRATCH/out-$blk-b" "block size $blk: host view after the shared queue"

    ok "block size $blk: aligned I/O in bc_buf_alloc() memory and bounce-buffered I/O need no copy" \
        "$VBLK" --mode zc --blk "$blk" "$SOCK"
    # The same check without arenas must fail: the counters really tell.
    out=$(LAYERFS_BUF_POOL=0 "$VBLK" --mode zc --blk "$blk" "$SOCK" 2>&1)
    like "$out" "aligned I/O in arena memory was copied" \
        "block size $blk: without arenas the same I/O is copied, and the check says so"
    ok "block size $blk: copied I/O beyond the bounce pool waits its turn and completes" \
        "$VBLK" --mode pool --blk "$blk" --timeout 60 "$SOCK"
    stop_qsd
done

# Device errors: blkdebug fails reads and writes of sector 20480 once a write arms it.
img=$SCRATCH/eio.img
truncate -s $SIZE "$img"
start_qsd eio --blockdev "driver=file,node-name=f,filename=$img,cache.direct=on" \
    --blockdev "driver=blkdebug,node-name=bd,image=f,inject-error.0.event=pwritev,inject-error.0.iotype=read,inject-error.0.errno=5,inject-error.0.sector=20480,inject-error.0.once=off,inject-error.1.event=pwritev,inject-error.1.iotype=write,inject-error.1.errno=5,inject-error.1.sector=20480,inject-error.1.once=off" \
    --export "type=vhost-user-blk,id=v,node-name=bd,addr.type=unix,addr.path=$SCRATCH/eio.sock,writable=on" &&
    ok "device errors reach the caller as EIO; other I/O goes on" \
        "$VBLK" --mode eio --eio-offset $((20480 * 512)) "$SOCK"
stop_qsd

# A read-only export.
img=$SCRATCH/ro.img
truncate -s $SIZE "$img"
start_qsd ro --blockdev "driver=file,node-name=f,filename=$img,read-only=on" \
    --export "type=vhost-user-blk,id=v,node-name=f,addr.type=unix,addr.path=$SCRATCH/ro.sock,writable=off" &&
    ok "read-only device: read-write open refused with a clear message, read-only works" \
        "$VBLK" --mode ro "$SOCK"
stop_qsd

# Setup errors name the problem.
out=$("$VBLK" --mode open "$SCRATCH/nonexistent.sock" 2>&1)
like "$out" "nonexistent.sock: connect: No such file or directory" "missing socket: clear error"

# The back end dies with writes in flight.
img=$SCRATCH/kill.img
truncate -s $SIZE "$img"
# shellcheck disable=SC2046
start_qsd kill $(export_args "$img" "$SCRATCH/kill.sock" "") && {
    out=$("$VBLK" --mode open --num-queues 9 "$SOCK" 2>&1)
    like "$out" "num-queues 9: the device has only 1" "too many queues: clear error"
    out=$("$VBLK" --mode open --queue-size 100 "$SOCK" 2>&1)
    like "$out" "queue-size: 100 is not a power of two" "bad queue size: clear error"
    ok "back end killed: in-flight and later requests fail with EIO, no hang" \
        "$VBLK" --mode kill --kill-pid "$QSD_PID" "$SOCK"
    wait "$QSD_PID" 2>/dev/null
}
QSD_PID=

done_testing
