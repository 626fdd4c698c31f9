#!/bin/bash
# SPDX-License-Identifier: MIT
# Messages (layerfs(1) LOGGING): one "layerfs: WHERE: message" format for ours, GLib's and
# libfuse's, info only with -v, syslog once detached; and the refusals: an empty disk, a
# layer smaller than one below it, create = true on a read-only disk, a dangling symlink.
# Plus -V.
. "$(dirname "$0")/tap.sh"
require_root
require_fuse

MNT=$SCRATCH/mnt
mkdir "$MNT"
truncate -s 1M "$SCRATCH/base.img"
truncate -s 0 "$SCRATCH/empty.img"
OVL=$SCRATCH/top.ovl

# run ARGS...: layerfs -f ARGS MNT with a 20 s limit; $out = stderr, $rc = exit status.
run() {
    out=$(timeout 20 "$LAYERFS" -f "$@" "$MNT" 2>&1 >/dev/null); rc=$?
    if mountpoint -q "$MNT"; then fusermount3 -u -z "$MNT"; fi
}
# refused DESC REGEX ARGS...: exit 2, stderr is one line matching REGEX.
refused() {
    local desc=$1 re=$2; shift 2
    run "$@"
    is "$rc" 2 "$desc: exit status 2" || diag "stderr: $out"
    like "$out" "$re" "$desc: message"
    is "$(printf '%s\n' "$out" | wc -l)" 1 "$desc: one line"
}

# ---- -V --------------------------------------------------------------------------------
like "$("$LAYERFS" -V | head -1)" "^layerfs [0-9][0-9.]*$" "-V prints 'layerfs VERSION'"
is "$("$LAYERFS" -V | head -1)" "$("$LAYERFS" --version | head -1)" "-V is --version"
is "$("$LAYERFS" -V | head -1 | sed 's/^layerfs //')" \
    "$("$LAYERFS_IMG" --version | sed 's/^layerfs-img //')" "the same version as layerfs-img"

# ---- GLib's messages: "layerfs: ", no "** Message", info only with -v ------------------
rm -f "$OVL"
DISK="d=format=overlay,path=$OVL,create=true:$SCRATCH/base.img"
start_daemon "$MNT" --disk "$DISK" || exit 1
log=$(cat "$SCRATCH/layerfs.log")
is "$log" "" "without -v a good start says nothing (not even 'created overlay')"
stop_daemon
rm -f "$OVL"
start_daemon "$MNT" -v --disk "$DISK" || exit 1
log=$(cat "$SCRATCH/layerfs.log")
like "$log" "^layerfs: --disk d:layer 1: created overlay $OVL$" "-v: GLib's info message"
like "$log" "^layerfs: serving 1 disk" "-v: our own info message"
is "$(printf '%s\n' "$log" | grep -vc '^layerfs: ')" 0 "-v: every line starts 'layerfs: '"
# Leave the overlay dirty (kill -9) for the notice below.
kill -KILL "$(cat "$SCRATCH/layerfs.pid")"
_t_force_stop
start_daemon "$MNT" --disk "$DISK" || exit 1
log=$(cat "$SCRATCH/layerfs.log")
like "$log" "^layerfs: --disk d:layer 1: overlay $OVL was not closed cleanly" \
    "a notice is shown without -v, in the format"
ok "no GLib '** Message' line" sh -c "! grep -q '\*\*' '$SCRATCH/layerfs.log'"
stop_daemon
run -vv --disk "d=$SCRATCH/base.img" -o no_such_option
like "$out" "^layerfs: fuse: unknown option\(s\): \`-o no_such_option'$" \
    "libfuse's message, gathered into one line"
start_daemon "$MNT" -vv --disk "d=$SCRATCH/base.img" || exit 1
stop_daemon
log=$(cat "$SCRATCH/layerfs.log")
like "$log" "^layerfs: .*opcode: INIT" "-vv: libfuse's request trace"
is "$(printf '%s\n' "$log" | grep -vc '^layerfs: ')" 0 "-vv: every line starts 'layerfs: '"

# ---- syslog once detached ------------------------------------------------------------
# In a private mount namespace, /dev is a tmpfs whose /dev/log is our socket.
if command -v unshare >/dev/null && command -v python3 >/dev/null; then
    SOCK=$SCRATCH/log.sock
    python3 - "$SOCK" "$SCRATCH/syslog" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "ab", buffering=0) as f:
    while True:
        f.write(s.recv(65536) + b"\n")
PY
    lpid=$!
    on_exit "kill $lpid"
    for i in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
    PF=$SCRATCH/d.pid
    unshare -m sh -c "mount -t tmpfs none /dev && mknod -m 666 /dev/fuse c 10 229 &&
        mknod -m 666 /dev/null c 1 3 && ln -s '$SOCK' /dev/log &&
        exec '$LAYERFS' -v --pidfile '$PF' --disk 'd=$SCRATCH/base.img' '$MNT'" \
        >"$SCRATCH/detached.out" 2>&1
    is "$?" 0 "detached: the daemon started"
    dpid=$(cat "$PF")
    on_exit "kill -KILL $dpid"
    kill -USR1 "$dpid"
    sleep 0.3
    kill -TERM "$dpid"
    for i in $(seq 100); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.05; done
    sleep 0.2
    sys=$(cat "$SCRATCH/syslog" 2>/dev/null)
    like "$sys" "^<29>.* layerfs\[$dpid\]: disk d: 1048576 bytes, read-write" \
        "detached: SIGUSR1's notice went to syslog (daemon.notice, ident, pid)"
    like "$sys" "^<30>.* layerfs\[$dpid\]: Terminated: shutting down" \
        "detached: -v's info went to syslog (daemon.info)"
    like "$(cat "$SCRATCH/detached.out")" "^layerfs: serving" \
        "before detaching, messages go to stderr"
    ok "after detaching, nothing more on stderr" \
        sh -c "! grep -q 'disk d: 1048576 bytes, read-write' '$SCRATCH/detached.out'"
else
    diag "no unshare or python3: syslog not checked"
fi

# ---- refusals --------------------------------------------------------------------------
refused "an empty base" "^layerfs: --disk e:layer 1: layer e:1 is empty \(0 bytes\)" \
    --disk "e=$SCRATCH/empty.img"
refused "an overlay created over an empty base" \
    "^layerfs: --disk e:layer 1:create: cannot size $SCRATCH/e.ovl from layer e:2 below it: that layer is empty \(0 bytes\)$" \
    --disk "e=format=overlay,path=$SCRATCH/e.ovl,create=true:$SCRATCH/empty.img"
ok "and it is not created" test ! -e "$SCRATCH/e.ovl"

"$LAYERFS_IMG" create -s 512K "$SCRATCH/small.ovl"
refused "a top layer smaller than the base" \
    "^layerfs: --disk s:layer 1: layer s:1 \(524288 bytes\) is smaller than layer s:2 below it \(1048576 bytes\) and would hide its last 524288 bytes; .*allow-smaller = true" \
    --disk "s=format=overlay,path=$SCRATCH/small.ovl:$SCRATCH/base.img"
C=$SCRATCH/c.conf
printf '%s\n' "[disk s]" "layers = top base" "[layer top]" "format = overlay" \
    "path = $SCRATCH/small.ovl" "[layer base]" "path = $SCRATCH/base.img" >"$C"
refused "the same from a file" "^layerfs: $C:layer top: layer top \(524288 bytes\) is smaller" \
    -c "$C"
printf '%s\n' "[disk s]" "layers = top base" "[layer top]" "format = overlay" \
    "path = $SCRATCH/small.ovl" "allow-smaller = true" "[layer base]" \
    "path = $SCRATCH/base.img" >"$C"
start_daemon "$MNT" -c "$C" || exit 1
is "$(stat -c %s "$MNT/s")" 524288 "allow-smaller = true: the disk has the top layer's size"
stop_daemon

rm -f "$SCRATCH/r.ovl"
refused "--read-only with create = true" \
    "^layerfs: --disk r:layer 1:create: $SCRATCH/r.ovl does not exist, and a layer opened read-only" \
    --read-only --disk "r=format=overlay,path=$SCRATCH/r.ovl,create=true:$SCRATCH/base.img"
ok "--read-only: the overlay was not created" test ! -e "$SCRATCH/r.ovl"
"$LAYERFS_IMG" create -B "$SCRATCH/base.img" "$SCRATCH/r.ovl"
start_daemon "$MNT" --read-only \
    --disk "r=format=overlay,path=$SCRATCH/r.ovl,create=true:$SCRATCH/base.img" || exit 1
ok "--read-only with create = true and the overlay there: it opens" test -r "$MNT/r"
stop_daemon

ln -s "$SCRATCH/nowhere.ovl" "$SCRATCH/dangling.ovl"
refused "a dangling symlink with create = true" \
    "^layerfs: --disk l:layer 1:create: $SCRATCH/dangling.ovl is a dangling symlink \(to $SCRATCH/nowhere.ovl\); layerfs does not create images through symlinks" \
    --disk "l=format=overlay,path=$SCRATCH/dangling.ovl,create=true:$SCRATCH/base.img"
ok "nothing was created at the symlink's target" test ! -e "$SCRATCH/nowhere.ovl"

done_testing
