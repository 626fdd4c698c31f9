#!/bin/bash
# SPDX-License-Identifier: MIT
# layerfs-img commit killed with SIGKILL part way: the stack still reads exactly as before,
# and running commit again finishes the job (the base then equals what the disk showed).
. "$(dirname "$0")/tap.sh"
require_fuse
S=$SCRATCH

head -c $((64 << 20)) /dev/urandom >"$S/base.raw"
cat >"$S/layerfs.conf" <<CONF
[disk d]
layers = top base

[layer top]
format = overlay
path = $S/top.ovl
create = true
block-size = 64K

[layer base]
path = $S/base.raw
CONF
mkdir -p "$S/mnt"
start_daemon "$S/mnt" -c "$S/layerfs.conf" || { done_testing; }
dd if=/dev/urandom of="$S/mnt/d" bs=1M seek=4 count=48 conv=notrunc,fsync status=none
dd if=/dev/urandom of="$S/mnt/d" bs=4000 seek=3 count=50 conv=notrunc,fsync status=none
cp "$S/mnt/d" "$S/view"
stop_daemon
is "$DAEMON_STATUS" 0 "layerfs wrote the overlay and exited 0"

interrupted=0
for delay in 0.02 0.05 0.1 0.2; do
    "$LAYERFS_IMG" commit "$S/top.ovl" "$S/base.raw" >/dev/null 2>&1 &
    pid=$!
    sleep "$delay"
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    if "$LAYERFS_IMG" info "$S/top.ovl" | grep -q "commit in progress"; then
        interrupted=$((interrupted + 1))
    fi
    start_daemon "$S/mnt" -c "$S/layerfs.conf" || break
    cmp_file "$S/mnt/d" "$S/view" "killed after ${delay}s: the stack reads the same"
    stop_daemon
done
diag "$interrupted of 4 kills interrupted a commit"
ok "commit finishes the job" "$LAYERFS_IMG" commit "$S/top.ovl" "$S/base.raw"
cmp_file "$S/base.raw" "$S/view" "the base equals what the disk showed"
like "$("$LAYERFS_IMG" info "$S/top.ovl")" "blocks present: +0 .*" "the overlay is empty"
unlike=$("$LAYERFS_IMG" info "$S/top.ovl" | grep -c "commit in progress")
is "$unlike" 0 "no commit in progress any more"
done_testing
