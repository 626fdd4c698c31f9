#!/bin/bash
# SPDX-License-Identifier: MIT
# nbd driver errors: nbdkit's error filter failing reads and writes with EIO (the caller
# gets EIO, the daemon lives, I/O works again once the faults stop), a server that is down
# at start (a clear error naming the URI, after the retry window), a read-only export opened
# for writing, and bad keys.
. "$(dirname "$0")/tap.sh"
. "$T_SRCDIR/nbd.sh"
require_root
require_fuse
require_cmd python3
S=$SCRATCH
mkdir "$S/mnt"

# io FILE r|w OFFSET: one 4K O_DIRECT read or write; prints OK or the errno name.
io() {
    python3 - "$@" <<'PY'
import errno, mmap, os, sys
path, op, off = sys.argv[1], sys.argv[2], int(sys.argv[3])
buf = mmap.mmap(-1, 4096)
buf.write(b"x" * 4096)
try:
    fd = os.open(path, (os.O_RDONLY if op == "r" else os.O_WRONLY) | os.O_DIRECT)
    (os.preadv if op == "r" else os.pwritev)(fd, [buf], off)
    print("OK")
except OSError as e:
    print(errno.errorcode[e.errno])
PY
}

# 1. The error filter: while $S/faults exists, every read and write fails with EIO.
nbd_serve err nbdkit -f -U "$(nbd_sock err)" --filter=error memory 8M \
    error=EIO error-rate=100% error-file="$S/faults" || exit 1
{ printf '[disk d]\nlayers = base\n\n'; nbd_layer base "$(nbd_uri err)" retry-timeout=5; } \
    >"$S/err.conf"
start_daemon "$S/mnt" -c "$S/err.conf" || exit 1
is "$(io "$S/mnt/d" w 65536) $(io "$S/mnt/d" r 65536)" "OK OK" "no faults: write and read"
touch "$S/faults"
is "$(io "$S/mnt/d" r 65536)" "EIO" "injected read error: the caller gets EIO"
is "$(io "$S/mnt/d" w 65536)" "EIO" "injected write error: the caller gets EIO"
is "$(io "$S/mnt/d" w 1000)" "EIO" "injected error under a read-modify-write: EIO"
ok "the daemon lives" kill -0 "$_t_daemon_pid"
rm "$S/faults"
is "$(io "$S/mnt/d" w 65536) $(io "$S/mnt/d" r 65536)" "OK OK" "faults gone: I/O works again"
stop_daemon
is "$DAEMON_STATUS" 0 "layerfs exits 0"
like "$(grep 'driver nbd figures' "$S/layerfs.log")" "remote requests [1-9][0-9]*, .*errors [3-9]\$" \
    "errors counted"
is "$(grep -c 'driver nbd figures.*reconnects' "$S/layerfs.log")" 0 "no reconnect"

# 2. Server down at start: a clear error naming the URI, after the retry window.
{ printf '[disk d]\nlayers = base\n\n'; nbd_layer base "$(nbd_uri none)" retry-timeout=2; } \
    >"$S/down.conf"
t0=$(date +%s)
out=$("$LAYERFS" -f -c "$S/down.conf" "$S/mnt" 2>&1)
rc=$?
t1=$(date +%s)
is "$rc" 2 "server down at start: layerfs exits 2 (a disk that could not be opened)"
like "$out" "down.conf:layer base:uri: nbd\+unix:///\?socket=.*none.sock: cannot connect \(tried for 2 s\)" \
    "the error names the layer, the URI and the window ($out)"
ok "it waited for the window, and not much longer ($((t1 - t0)) s)" \
    test $((t1 - t0)) -ge 1 -a $((t1 - t0)) -le 6
ok "nothing is left mounted" sh -c "! mountpoint -q '$S/mnt'"

# 3. A read-only export opened for writing.
nbd_serve ro nbdkit -f -r -U "$(nbd_sock ro)" memory 1M || exit 1
{ printf '[disk d]\nlayers = base\n\n'; nbd_layer base "$(nbd_uri ro)"; } >"$S/ro.conf"
like "$("$LAYERFS" -f -c "$S/ro.conf" "$S/mnt" 2>&1)" \
    "layer base:uri: .*ro.sock: the export is read-only, but the layer is opened for writing" \
    "read-only export opened for writing: a clear error"
{ printf '[disk d]\nlayers = base\nread-only = true\n\n'; nbd_layer base "$(nbd_uri ro)" read-only=true; } \
    >"$S/ro2.conf"
start_daemon "$S/mnt" -c "$S/ro2.conf" || exit 1
is "$(io "$S/mnt/d" r 0)" "OK" "read-only export as a read-only layer: reads work"
stop_daemon

# 4. Bad keys.
bad() { "$LAYERFS" -f --disk "d=driver=nbd,$1" "$S/mnt" 2>&1; }
like "$(bad read-only=true)" "uri: required for driver nbd" "no uri: an error"
like "$(bad uri=x,retry-timeout=soon)" "retry-timeout: 'soon' is not a whole number" "bad retry-timeout"
like "$(bad uri=x,connections=0)" "connections: must be from 1 to 16" "connections=0"
like "$(bad uri=x,connections=17)" "connections: '17' is not a whole number between 0 and 16" "connections=17"
like "$(bad uri=x,path=/tmp/x)" "path: driver nbd takes a uri, not a path" "a path: an error"
like "$(bad 'uri=http\://x/,retry-timeout=0')" "uri: http://x/: cannot connect \(tried for 0 s\): .*unknown NBD URI scheme" \
    "a URI libnbd refuses (inline, with the ':' escaped)"

done_testing
