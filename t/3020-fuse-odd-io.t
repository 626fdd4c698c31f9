#!/bin/bash
# SPDX-License-Identifier: MIT
# Writes and reads at odd sizes and offsets (dd bs=65519, single bytes, across 512 and 4096
# boundaries) compared byte for byte with a reference file, and concurrent writers on shared
# sectors, in both cache modes and over an O_DIRECT and a buffered backing file.
. "$(dirname "$0")/tap.sh"
require_root
require_fuse
require_cmd python3 dd cmp

SIZE=$((16 << 20))
MNT=$SCRATCH/mnt
mkdir "$MNT"
head -c 2000000 /dev/urandom >"$SCRATCH/src"

# w FILE ARGS...: dd from src with conv=notrunc into FILE.
w() { local f=$1; shift; dd if="$SCRATCH/src" of="$f" conv=notrunc status=none "$@"; }

odd_writes() {
    local f=$1
    w "$f" bs=65519 count=7                       # from 0, odd block size
    w "$f" bs=65519 seek=40 count=3               # at 40*65519
    w "$f" bs=65519 seek=1000 oflag=seek_bytes count=2 skip=3
    local off
    for off in 0 1 511 512 513 1023 4095 4096 4097 8191 65535 65536 1048575 $((SIZE - 1)); do
        w "$f" bs=1 count=1 skip=$((off % 1000 + 7)) seek=$off
    done
    for off in 510 4094 4090 8190 12287 $((1 << 20)) $((SIZE - 1000)); do
        w "$f" bs=1000 count=1 skip=$((off % 999)) seek=$off oflag=seek_bytes iflag=skip_bytes
    done
    w "$f" bs=3000 count=50 seek=3 oflag=seek_bytes
    w "$f" bs=4096 count=64 seek=100                    # aligned
    w "$f" bs=1M count=1 seek=5 skip=1 iflag=fullblock   # large
    w "$f" bs=131072 count=3 seek=$(( (2 << 20) + 123 )) oflag=seek_bytes
}

# Concurrent writers: 4 processes own interleaved 37-byte cells of the same sectors and
# write them in random order, 3 passes; the final content is known.
concurrent() {
    python3 - "$1" "$2" <<'PY'
import os, random, sys
path, ref = sys.argv[1], sys.argv[2]
NPROC, CELL, SPAN, PASSES = 4, 37, 256 * 1024, 3
cells = SPAN // CELL
def data(k, p, c):
    return bytes(((k * 31 + p * 7 + c + i) % 251) + 1 for i in range(CELL))
pids = []
for k in range(NPROC):
    pid = os.fork()
    if pid == 0:
        fd = os.open(path, os.O_WRONLY)
        mine = [c for c in range(cells) if c % NPROC == k]
        rnd = random.Random(k)
        for p in range(PASSES):
            rnd.shuffle(mine)
            for c in mine:
                os.pwrite(fd, data(k, p, c), 4096 + c * CELL)
        os._exit(0)
    pids.append(pid)
bad = sum(os.waitpid(p, 0)[1] != 0 for p in pids)
fd = os.open(ref, os.O_WRONLY)
for c in range(cells):
    os.pwrite(fd, data(c % NPROC, PASSES - 1, c), 4096 + c * CELL)
sys.exit(1 if bad else 0)
PY
}

# Shell variant with dd: 3 writers of 100-byte pieces interleaved in the same sectors.
dd_concurrent() {
    local f=$1 k i pids=()
    for k in 0 1 2; do
        (for i in $(seq 0 3 120); do
            w "$f" bs=100 count=1 skip=$(( (i + k) * 100 )) iflag=skip_bytes \
                seek=$(( 300000 + (i + k) * 100 )) oflag=seek_bytes
        done) &
        pids+=($!)
    done
    wait "${pids[@]}"
    for i in $(seq 0 122); do
        w "$2" bs=100 count=1 skip=$((i * 100)) iflag=skip_bytes seek=$((300000 + i * 100)) \
            oflag=seek_bytes
    done
}

run_case() {
    local name=$1 direct=$2; shift 2
    rm -f "$SCRATCH/img" "$SCRATCH/ref"
    truncate -s $SIZE "$SCRATCH/img"
    truncate -s $SIZE "$SCRATCH/ref"
    start_daemon "$MNT" --disk "d=path=$SCRATCH/img,direct=$direct" "$@" || return 1
    local f=$MNT/d
    odd_writes "$f"
    odd_writes "$SCRATCH/ref"
    cmp_file "$f" "$SCRATCH/ref" "$name: odd writes read back as the reference"
    is "$(dd if="$f" bs=65519 skip=41 count=2 status=none | md5sum)" \
        "$(dd if="$SCRATCH/ref" bs=65519 skip=41 count=2 status=none | md5sum)" \
        "$name: reads at odd offsets"
    is "$(dd if="$f" bs=1 skip=4095 count=3 status=none | od -An -tx1)" \
        "$(dd if="$SCRATCH/ref" bs=1 skip=4095 count=3 status=none | od -An -tx1)" \
        "$name: single-byte reads across a 4096 boundary"
    ok "$name: concurrent writers" concurrent "$f" "$SCRATCH/ref"
    dd_concurrent "$f" "$SCRATCH/ref"
    cmp_file "$f" "$SCRATCH/ref" "$name: after concurrent writers on shared sectors"
    ok "$name: sync" python3 -c "import os; fd=os.open('$f', os.O_RDONLY); os.fsync(fd)"
    stop_daemon
    is "$DAEMON_STATUS" "0" "$name: clean exit"
    cmp_file "$SCRATCH/img" "$SCRATCH/ref" "$name: the backing file matches the reference"
}

run_case "direct cache, O_DIRECT backing" true -v
# The aligned-payload trick: WRITE data lands page-aligned, so O_DIRECT needs no bounce.
log=$(cat "$SCRATCH/layerfs.log")
like "$log" "serving 1 disk" "verbose log present"
ok "every WRITE payload was page-aligned" sh -c "! grep -q 'not page-aligned' '$SCRATCH/layerfs.log'"
run_case "page cache, O_DIRECT backing" true --cache=page
run_case "direct cache, buffered backing, 1 thread" false -t 1
run_case "direct cache, 4 threads" true -t 4

done_testing
