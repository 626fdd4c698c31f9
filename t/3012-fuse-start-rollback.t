#!/bin/bash
# SPDX-License-Identifier: MIT
# A start that fails undoes what it did: disk a (an overlay over a base) opens, then disk b
# (or the mount) fails in one of several ways.  Afterwards a's overlay is clean if it was
# there before, gone if this start created it, and no mount and no pidfile are left; in the
# foreground and as a daemon.
. "$(dirname "$0")/tap.sh"
require_root
require_fuse

MNT=$SCRATCH/mnt
mkdir "$MNT"
truncate -s 1M "$SCRATCH/a.img" "$SCRATCH/b.img"
truncate -s 0 "$SCRATCH/empty.img"
head -c 8192 /dev/urandom >"$SCRATCH/garbage.ovl"
A_OVL=$SCRATCH/a.ovl
PID=$SCRATCH/layerfs.pid
DISK_A="a=format=overlay,path=$A_OVL,create=true:$SCRATCH/a.img"

# state FILE: "clean", "dirty" or "missing".
state() {
    [ -e "$1" ] || { echo missing; return; }
    "$LAYERFS_IMG" info "$1" | sed -n 's/^state: *\([a-z]*\).*/\1/p'
}

# fails_undone DESC MODE OVL_BEFORE ARGS...: layerfs (MODE fg or daemon) exits 2 and leaves
# a's overlay as it was before the start (missing, or clean), no mount and no pidfile.
fails_undone() {
    local desc=$1 mode=$2 before=$3; shift 3
    local fg=() err rc
    [ "$mode" = fg ] && fg=(-f)
    rm -f "$A_OVL" "$PID"
    [ "$before" = clean ] && "$LAYERFS_IMG" create -B "$SCRATCH/a.img" "$A_OVL"
    err=$(timeout 20 "$LAYERFS" "${fg[@]}" --pidfile "$PID" "$@" "$MNT" 2>&1 >/dev/null)
    rc=$?
    is "$rc" 2 "$mode, $desc: exit status 2" || diag "stderr: $err"
    is "$(state "$A_OVL")" "$before" "$mode, $desc: a's overlay is $before afterwards"
    if mountpoint -q "$MNT"; then
        _t_result 1 "$mode, $desc: nothing mounted"
        fusermount3 -u -z "$MNT"
    else
        _t_result 0 "$mode, $desc: nothing mounted"
    fi
    ok "$mode, $desc: no pidfile" test ! -e "$PID"
}

for mode in fg daemon; do
    for before in missing clean; do
        fails_undone "b missing ($before overlay)" $mode $before \
            --disk "$DISK_A" --disk "b=$SCRATCH/nope.img"
    done
    fails_undone "b is an empty image" $mode missing --disk "$DISK_A" --disk "b=$SCRATCH/empty.img"
    fails_undone "b's overlay is garbage" $mode missing \
        --disk "$DISK_A" --disk "b=format=overlay,path=$SCRATCH/garbage.ovl:$SCRATCH/b.img"
    fails_undone "b uses a's overlay (locked)" $mode clean \
        --disk "$DISK_A" --disk "b=format=overlay,path=$A_OVL:$SCRATCH/b.img"
    fails_undone "the mount fails" $mode missing -o blksize=4096 --disk "$DISK_A"
    fails_undone "bad FUSE options" $mode missing -o no_such_option --disk "$DISK_A"
done

# Inside one disk: the middle overlay is created, then the top one fails.
rm -f "$SCRATCH/mid.ovl"
fails_undone "top layer fails over a created one" fg missing --disk "$DISK_A" \
    --disk "b=format=overlay,path=$SCRATCH/garbage.ovl:format=overlay,path=$SCRATCH/mid.ovl,create=true:$SCRATCH/b.img"
ok "the created middle overlay is gone" test ! -e "$SCRATCH/mid.ovl"

# An overlay that creates its file and then fails to open it (a cache too small for its
# own header) leaves no file either.
rm -f "$SCRATCH/cache.ovl"
fails_undone "a created overlay that then fails" fg missing --disk "$DISK_A" \
    --disk "b=format=overlay,path=$SCRATCH/top2.ovl,create=true:format=overlay,path=$SCRATCH/cache.ovl,create=true,read-cache=true,cache-size=20K:$SCRATCH/b.img"
ok "the overlay created by the failed open is gone" test ! -e "$SCRATCH/cache.ovl"

# And a start that succeeds keeps what it created.
rm -f "$A_OVL"
start_daemon "$MNT" --disk "$DISK_A" || exit 1
stop_daemon
is "$DAEMON_STATUS" 0 "a good start and stop: exit 0"
is "$(state "$A_OVL")" clean "a good start keeps the overlay it created, clean"

done_testing
