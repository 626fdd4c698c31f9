#!/bin/bash
# SPDX-License-Identifier: MIT
# Every signal a user can send either leaves the daemon serving (SIGUSR1 also logs per-disk
# figures) or shuts it down cleanly: exit 0, data flushed, overlay marked clean, no mount and
# no pidfile left (layerfs(1) SIGNALS).
. "$(dirname "$0")/tap.sh"
require_root
require_fuse
require_cmd dd

MNT=$SCRATCH/mnt
mkdir "$MNT"
truncate -s 4M "$SCRATCH/base.img"
OVL=$SCRATCH/top.ovl
PIDFILE=$SCRATCH/layerfs.pid
DISK="d=format=overlay,path=$OVL,create=true:$SCRATCH/base.img"
head -c 65536 /dev/urandom >"$SCRATCH/data"

KEEP="USR1 USR2 PIPE ALRM VTALRM PROF IO PWR STKFLT XFSZ TSTP TTIN TTOU RTMIN RTMIN+1 RTMAX"
STOP="TERM INT HUP QUIT XCPU"

state() { "$LAYERFS_IMG" info "$1" | sed -n 's/^state: *\([a-z]*\).*/\1/p'; }
# put N: write the data at block N (no fsync: the shutdown must flush it).
put() {
    timeout -s KILL 10 dd if="$SCRATCH/data" of="$MNT/d" bs=64k seek="$1" conv=notrunc \
        status=none
}
# got N: the data at block N reads back.
got() {
    cmp -s <(timeout -s KILL 10 dd if="$MNT/d" bs=64k skip="$1" count=1 status=none) \
        "$SCRATCH/data"
}

# Signals that leave it serving: one daemon for all of them.
rm -f "$OVL"
start_daemon "$MNT" --disk "$DISK" || exit 1
pid=$(cat "$PIDFILE")
n=0
for s in $KEEP; do
    put $n
    kill -s "$s" "$pid" 2>/dev/null || kill -"$s" "$pid"
    sleep 0.2
    ok "SIG$s: the daemon is still running" kill -0 "$pid"
    if ok "SIG$s: and not stopped" test "$(ps -o stat= -p "$pid" | cut -c1)" != T; then
        ok "SIG$s: the disk still serves what was written" got $n
    fi
    [ "$s" = USR1 ] && like "$(cat "$SCRATCH/layerfs.log")" \
        "^layerfs: disk d: 4194304 bytes, read-write; layer d:1 \(overlay\) serves 65536; layer d:2 \(raw\) serves 4128768; zeros 0$" \
        "SIGUSR1 logged the figures of disk d"
    n=$((n + 1))
    if ! kill -0 "$pid" 2>/dev/null || [ "$(ps -o stat= -p "$pid" | cut -c1)" = T ]; then
        _t_force_stop       # dead or stopped: go on with a fresh one
        start_daemon "$MNT" --disk "$DISK" || exit 1
        pid=$(cat "$PIDFILE")
    fi
done
stop_daemon
is "$DAEMON_STATUS" 0 "after them, SIGTERM: exit 0"

# Signals that stop it: each on a fresh daemon, with unflushed writes.
for s in $STOP; do
    rm -f "$OVL"
    start_daemon "$MNT" --disk "$DISK" || exit 1
    pid=$(cat "$PIDFILE")
    put 3
    kill -s "$s" "$pid"
    for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    if ! ok "SIG$s: the daemon exited" sh -c "! kill -0 $pid 2>/dev/null"; then
        _t_force_stop
        continue
    fi
    wait "$pid"
    is "$?" 0 "SIG$s: exit status 0"
    _t_daemon_pid=
    ok "SIG$s: nothing left mounted" sh -c "! mountpoint -q '$MNT'"
    ok "SIG$s: the pidfile is gone" test ! -e "$PIDFILE"
    is "$(state "$OVL")" clean "SIG$s: the overlay was flushed and marked clean"
    start_daemon "$MNT" --disk "$DISK" --read-only || exit 1
    ok "SIG$s: the data written before it is there" got 3
    stop_daemon
done

done_testing
