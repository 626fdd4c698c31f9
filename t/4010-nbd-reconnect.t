#!/bin/bash
# SPDX-License-Identifier: MIT
# The nbd driver when the server goes away: killed mid-run and restarted within the retry
# window (no error reaches the caller, service resumes, the data equals a model), down for
# longer than the window (EIO, only after the window, the daemon lives and recovers when the
# server is back), and stopped (SIGSTOP: a server that answers nothing is treated the same).
. "$(dirname "$0")/tap.sh"
. "$T_SRCDIR/nbd.sh"
require_root
require_fuse
require_cmd python3
S=$SCRATCH
mkdir "$S/mnt"
head -c $((16 << 20)) /dev/urandom >"$S/base.raw"
serve() { nbd_serve base nbdkit -f -U "$(nbd_sock base)" file "$S/base.raw"; }
conf() {
    printf '[disk d]\nlayers = base\n\n'
    nbd_layer base "$(nbd_uri base)" "retry-timeout=$1"
}

# 1. Killed mid-run, back after 1.5 s, within a 20 s window; then stopped cleanly, and back
# again.  The workload writes and reads
# at random offsets, checks every read against its model and fsyncs every 16 writes; it
# prints its errors, and the model at the end.  Reads and writes must not fail; an fsync
# may, once per loss, with EIO: the server may have lost writes it acknowledged before it died
# (nbdkit's file plugin does not, so the data must still equal the model).
serve || exit 1
conf 20 >"$S/a.conf"
start_daemon "$S/mnt" -c "$S/a.conf" || exit 1
python3 - "$S/mnt/d" "$S/model" 8 >"$S/work.out" 2>&1 <<'PY' &
import os, random, sys, time
path, ref, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
fd = os.open(path, os.O_RDWR)
size = os.lseek(fd, 0, os.SEEK_END)
model = bytearray(os.pread(fd, size, 0))
rnd = random.Random(4010)
errors, syncerr, ops, end = [], 0, 0, time.time() + secs
while time.time() < end:
    ops += 1
    off = rnd.randrange(size - 70000)
    n = rnd.randrange(1, 70000)
    try:
        if rnd.random() < 0.5:
            data = os.urandom(n)
            os.pwrite(fd, data, off)
            model[off:off + n] = data
            if ops % 16 == 0:
                try:
                    os.fsync(fd)
                except OSError as e:
                    syncerr += 1
                    if e.errno != 5:
                        raise
        elif os.pread(fd, n, off) != bytes(model[off:off + n]):
            errors.append("op %d: read %d+%d differs from the model" % (ops, off, n))
    except OSError as e:
        errors.append("op %d: %s" % (ops, e))
open(ref, "wb").write(model)
print("ops", ops, "errors", len(errors), "fsync-eio", syncerr)
for e in errors[:10]:
    print(e)
PY
work=$!
sleep 1.5
nbd_kill base KILL
sleep 1.5
serve || exit 1
sleep 1.5
nbd_kill base TERM      # a clean shutdown this time: ESHUTDOWN, then the socket closes
sleep 1.5
serve || exit 1
wait $work
out=$(cat "$S/work.out")
like "$out" "^ops [0-9]+ errors 0 fsync-eio [012]$" "killed and restarted within the window: no errors ($(echo $out | head -c 200))"
like "$(grep -c 'connection [0-9]* lost' "$S/layerfs.log")" "^[1-9]" "the loss was logged"
like "$(cat "$S/layerfs.log")" "connection [0-9]* re-established" "the reconnection was logged"
cmp_file "$S/mnt/d" "$S/model" "after the restart the disk equals the model"
ok "fsync after the restart" python3 -c "import os; os.fsync(os.open('$S/mnt/d', os.O_RDONLY))"
stop_daemon
is "$DAEMON_STATUS" 0 "layerfs exits 0"
# The figures line lists the figures that are not zero.
like "$(grep 'driver nbd figures' "$S/layerfs.log")" "remote requests .*, reconnects [1-9][0-9]*(, errors [12])?\$" \
    "the figures count the reconnects"
cmp_file "$S/base.raw" "$S/model" "the served file equals the model"

# 2. Down for longer than a 2 s window: EIO after the window, not before; the daemon lives;
# service resumes when the server is back.
conf 2 >"$S/b.conf"
start_daemon "$S/mnt" -c "$S/b.conf" || exit 1
is "$(readtime "$S/mnt/d")" "OK 0" "window 2 s: a read with the server up"
nbd_kill base KILL
r=$(readtime "$S/mnt/d")
like "$r" "^EIO ([2-9]|1[0-9])$" "server down: the read fails with EIO after the window ($r)"
is "$(readtime "$S/mnt/d" | cut -d' ' -f1)" "EIO" "server still down: reads fail (at once)"
ok "the daemon lives" kill -0 "$_t_daemon_pid"
serve || exit 1
for i in $(seq 1 40); do
    [ "$(readtime "$S/mnt/d" | cut -d' ' -f1)" = OK ] && break
    sleep 0.25
done
is "$(readtime "$S/mnt/d" | cut -d' ' -f1)" "OK" "server back: reads succeed again"

# 3. A server that stops answering (SIGSTOP) is a lost connection too: EIO, no hang.
kill -STOP "$NBD_PID_base"
r=$(timeout 60 bash -c "$(declare -f readtime); readtime '$S/mnt/d'")
like "$r" "^EIO ([2-9]|1[0-9])$" "stopped server: the read fails with EIO within bounds ($r)"
kill -CONT "$NBD_PID_base"
for i in $(seq 1 40); do
    [ "$(readtime "$S/mnt/d" | cut -d' ' -f1)" = OK ] && break
    sleep 0.25
done
is "$(readtime "$S/mnt/d" | cut -d' ' -f1)" "OK" "server continued: reads succeed again"
stop_daemon
is "$DAEMON_STATUS" 0 "layerfs exits 0"

done_testing
