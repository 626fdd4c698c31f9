#!/bin/bash
# SPDX-License-Identifier: MIT
# The nbd driver against real servers: random I/O at arbitrary offsets and lengths checked
# against a model, through an overlay over a read-only NBD base (nbdkit file plugin; the
# base file stays untouched), on a writable nbdkit memory export and on qemu-nbd over a
# file; concurrent writers sharing sectors; the driver's figures in the log.
. "$(dirname "$0")/tap.sh"
. "$T_SRCDIR/nbd.sh"
require_root
require_fuse
require_cmd qemu-nbd python3 md5sum
MODEL=$BUILDDIR/t/bin/layers-file-model
S=$SCRATCH
seed=${LAYERFS_TEST_SEED:-4000}
mkdir "$S/mnt"

# model NAME CONF [ARGS]: mount CONF, run the model on disk d, compare with it before
# unmounting.
model() {
    local name=$1 conf=$2; shift 2
    start_daemon "$S/mnt" -c "$conf" "$@" || { _t_result 1 "$name: mount"; return 1; }
    ok "$name: random I/O through the mounted file matches the model" \
        "$MODEL" "$S/mnt/d" "$seed" 1200 "$S/$name.ref"
    cmp_file "$S/mnt/d" "$S/$name.ref" "$name: the whole disk equals the model"
    seed=$((seed + 1))
}

# Concurrent writers: 4 processes own interleaved 29-byte cells of the same sectors and
# write them in random order; then every cell holds its owner's last pass.
concurrent() {
    python3 - "$1" "$2" <<'PY'
import os, random, sys
path, ref = sys.argv[1], sys.argv[2]
NPROC, CELL, BASE, PASSES = 4, 29, 12345, 2
cells = 192 * 1024 // CELL
def data(k, p, c):
    return bytes(((k * 13 + p * 5 + c + i) % 253) + 1 for i in range(CELL))
pids = []
for k in range(NPROC):
    pid = os.fork()
    if pid == 0:
        fd = os.open(path, os.O_WRONLY)
        mine = [c for c in range(cells) if c % NPROC == k]
        rnd = random.Random(k + 7)
        for p in range(PASSES):
            rnd.shuffle(mine)
            for c in mine:
                os.pwrite(fd, data(k, p, c), BASE + c * CELL)
        os._exit(0)
    pids.append(pid)
bad = sum(os.waitpid(p, 0)[1] != 0 for p in pids)
fd = os.open(ref, os.O_WRONLY)
for c in range(cells):
    os.pwrite(fd, data(c % NPROC, PASSES - 1, c), BASE + c * CELL)
sys.exit(1 if bad else 0)
PY
}

# 1. An overlay over a read-only base served by nbdkit's file plugin.
head -c $((24 << 20)) /dev/urandom >"$S/base.raw"
sum=$(md5sum <"$S/base.raw")
nbd_serve base nbdkit -f -r -U "$(nbd_sock base)" file "$S/base.raw" || exit 1
{
    printf '[disk d]\nlayers = top base\n\n[layer top]\nformat = overlay\n'
    printf 'path = %s\ncreate = true\nblock-size = 16K\n\n' "$S/top.ovl"
    nbd_layer base "$(nbd_uri base)" read-only=true
} >"$S/ovl.conf"
model overlay "$S/ovl.conf"
stop_daemon
is "$DAEMON_STATUS" 0 "overlay: layerfs exits 0"
like "$(cat "$S/layerfs.log")" "driver nbd figures: remote requests [1-9][0-9]*, bytes from remote [1-9][0-9]*\$" \
    "overlay: the driver's figures are logged at exit"
is "$(md5sum <"$S/base.raw")" "$sum" "overlay: the NBD base file is untouched"
start_daemon "$S/mnt" -c "$S/ovl.conf" || _t_result 1 "overlay: remount"
cmp_file "$S/mnt/d" "$S/overlay.ref" "overlay: after remount the disk equals the model"
stop_daemon

# 2. A writable nbdkit memory export (sparse, multi-conn), three I/O threads; its log filter
# shows the connections the driver opened.
nbd_serve mem nbdkit -f -U "$(nbd_sock mem)" --filter=log memory 20M logfile="$S/mem.nbdlog" ||
    exit 1
nbd_layer base "$(nbd_uri mem)" | sed '1i [disk d]\nlayers = base\n' >"$S/mem.conf"
model memory "$S/mem.conf" -t 3
truncate -s 20M "$S/memory.ref"
ok "memory: concurrent writers on shared sectors" concurrent "$S/mnt/d" "$S/memory.ref"
cmp_file "$S/mnt/d" "$S/memory.ref" "memory: after concurrent writers the disk equals the model"
ok "memory: fsync" python3 -c "import os; os.fsync(os.open('$S/mnt/d', os.O_RDONLY))"
stop_daemon
is "$DAEMON_STATUS" 0 "memory: layerfs exits 0"
is "$(grep -c ' Connect ' "$S/mem.nbdlog")" 4 "memory: multi-conn: the driver opened 4 connections"
ok "memory: fsync sent flushes" grep -q ' Flush id=' "$S/mem.nbdlog"

# 2b. The same over TLS (a pre-shared key), with an nbds+unix URI.
printf 'alice:%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$S/psk"
chmod 600 "$S/psk"
nbd_serve tls nbdkit -f --tls=require --tls-psk="$S/psk" -U "$(nbd_sock tls)" memory 8M ||
    exit 1
nbd_layer base "nbds+unix://alice@/?socket=$(nbd_sock tls)&tls-psk-file=$S/psk" |
    sed '1i [disk d]\nlayers = base\n' >"$S/tls.conf"
model tls "$S/tls.conf"
stop_daemon
is "$DAEMON_STATUS" 0 "tls: layerfs exits 0"
nbd_layer base "$(nbd_uri tls)" retry-timeout=0 | sed '1i [disk d]\nlayers = base\n' >"$S/notls.conf"
like "$("$LAYERFS" -f -c "$S/notls.conf" "$S/mnt" 2>&1)" "cannot connect" \
    "tls: a server requiring TLS refuses a plain nbd+unix URI"

# 3. qemu-nbd over a raw file (one client at a time unless -e: one connection).
head -c $((16 << 20)) /dev/urandom >"$S/q.raw"
nbd_serve q qemu-nbd -t -f raw -k "$(nbd_sock q)" "$S/q.raw" || exit 1
nbd_layer base "$(nbd_uri q)" | sed '1i [disk d]\nlayers = base\n' >"$S/q.conf"
model qemu-nbd "$S/q.conf"
ok "qemu-nbd: concurrent writers on shared sectors" concurrent "$S/mnt/d" "$S/qemu-nbd.ref"
ok "qemu-nbd: fsync" python3 -c "import os; os.fsync(os.open('$S/mnt/d', os.O_RDONLY))"
stop_daemon
is "$DAEMON_STATUS" 0 "qemu-nbd: layerfs exits 0"
nbd_kill q TERM
cmp_file "$S/q.raw" "$S/qemu-nbd.ref" "qemu-nbd: the served file equals the model"

done_testing
