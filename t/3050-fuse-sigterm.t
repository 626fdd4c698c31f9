#!/bin/bash
# SPDX-License-Identifier: MIT
# SIGTERM while writers are busy: layerfs drains, flushes, unmounts and exits 0, and every
# block whose fsync was acknowledged is in the backing file.
. "$(dirname "$0")/tap.sh"
require_root
require_fuse
require_cmd python3

MNT=$SCRATCH/mnt
mkdir "$MNT"
BS=65536
NW=4
BLOCKS=256   # per writer

for cache in direct page; do
    rm -f "$SCRATCH/img" "$SCRATCH"/ack.*
    truncate -s $((NW * BLOCKS * BS)) "$SCRATCH/img"
    start_daemon "$MNT" --disk "d=$SCRATCH/img" --cache=$cache -t 2 || exit 1
    # Writer k writes its blocks in order, each stamped with (k, i), fsyncs every 4 and
    # appends the acknowledged count to ack.k; it stops at the first error.
    pids=()
    for k in $(seq 0 $((NW - 1))); do
        python3 - "$MNT/d" "$SCRATCH/ack.$k" $k $BLOCKS $BS <<'PY' &
import os, sys
path, ack, k, blocks, bs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
fd = os.open(path, os.O_WRONLY)
done = 0
try:
    for i in range(blocks):
        stamp = b"writer %d block %d " % (k, i)
        os.pwrite(fd, (stamp * (bs // len(stamp) + 1))[:bs], (k * blocks + i) * bs)
        if i % 4 == 3:
            os.fsync(fd)
            done = i + 1
            # Atomically: the shell polls these files while writers rewrite them.
            with open(ack + ".tmp", "w") as f:
                f.write(str(done))
            os.replace(ack + ".tmp", ack)
except OSError:
    pass
PY
        pids+=($!)
    done
    # SIGTERM once every writer has had an fsync acknowledged (at most 20 s).
    for i in $(seq 200); do
        n=0
        for k in $(seq 0 $((NW - 1))); do [ -s "$SCRATCH/ack.$k" ] && n=$((n + 1)); done
        [ $n -eq $NW ] && break
        sleep 0.1
    done
    acked_before=0
    for k in $(seq 0 $((NW - 1))); do
        f=$SCRATCH/ack.$k
        [ -s "$f" ] && acked_before=$((acked_before + $(cat "$f")))
    done
    stop_daemon
    is "$DAEMON_STATUS" "0" "$cache: SIGTERM with writes in flight: exit 0"
    wait "${pids[@]}"
    ok "$cache: nothing left mounted" sh -c "! mountpoint -q '$MNT'"
    ok "$cache: some writes were acknowledged before SIGTERM ($acked_before blocks)" \
        test "$acked_before" -gt 0
    ok "$cache: and the writers had not finished" test "$acked_before" -lt $((NW * BLOCKS))
    out=$(python3 - "$SCRATCH/img" "$SCRATCH" $NW $BLOCKS $BS <<'PY'
import os, sys
img, d, nw, blocks, bs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
fd = os.open(img, os.O_RDONLY)
bad = total = 0
for k in range(nw):
    try:
        n = int(open(os.path.join(d, "ack.%d" % k)).read() or 0)
    except FileNotFoundError:
        n = 0
    for i in range(n):
        stamp = b"writer %d block %d " % (k, i)
        want = (stamp * (bs // len(stamp) + 1))[:bs]
        total += 1
        if os.pread(fd, bs, (k * blocks + i) * bs) != want:
            bad += 1
print("checked %d lost %d" % (total, bad))
PY
)
    like "$out" "lost 0$" "$cache: every acknowledged block is in the backing file ($out)"
done

done_testing
