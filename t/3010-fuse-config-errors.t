#!/bin/bash
# SPDX-License-Identifier: MIT
# Every configuration and command-line error: exit status 2, a "layerfs: FILE:GROUP:KEY:"
# message, and nothing mounted.
. "$(dirname "$0")/tap.sh"
require_root
require_fuse

MNT=$SCRATCH/mnt
mkdir "$MNT"
truncate -s 1M "$SCRATCH/a.img"
C=$SCRATCH/c.conf

# fails DESC REGEX ARGS...: layerfs exits 2, stderr matches REGEX, the mountpoint is untouched.
fails() {
    local desc=$1 re=$2; shift 2
    local err rc
    err=$(timeout 20 "$LAYERFS" -f "$@" 2>&1 >/dev/null); rc=$?
    if mountpoint -q "$MNT"; then
        fusermount3 -u -z "$MNT"
        _t_result 1 "$desc: nothing mounted"
        return
    fi
    is "$rc" "2" "$desc: exit status 2" || diag "stderr: $err"
    like "$err" "$re" "$desc: message"
}

conf() { printf '%s\n' "$@" >"$C"; }

conf "[disc d]" "layers = a" "[layer a]" "path = $SCRATCH/a.img"
fails "unknown group" "^layerfs: $C:disc d: unknown group" -c "$C" "$MNT"

conf "[disk d]" "layers = a" "size = 1G" "[layer a]" "path = $SCRATCH/a.img"
fails "unknown disk key" "^layerfs: $C:disk d:size: unknown key" -c "$C" "$MNT"

conf "[disk d]" "layers = a" "[layer a]" "path = $SCRATCH/a.img" "cache = yes"
fails "unknown layer key" "^layerfs: $C:layer a:cache: unknown key" -c "$C" "$MNT"

conf "[disk d]" "layers = a" "[layer a]" "path = $SCRATCH/a.img" "direct = sometimes"
fails "bad boolean" "^layerfs: $C:layer a:direct: not a boolean" -c "$C" "$MNT"

conf "[disk d]" "layers = a" "[layer a]" "driver = ram" "size = lots"
fails "bad size (driver key)" "^layerfs: $C:layer a:size: 'lots' is not a size" -c "$C" "$MNT"

conf "[disk d]" "layers = a" "[layer a]" "format = overlay" "path = $SCRATCH/o.img" \
    "block-size = 1000"
fails "bad block size" "^layerfs: $C:layer a:block-size: '1000' is not a power of two" \
    -c "$C" "$MNT"

conf "[disk d]" "layers = a" "[layer a]" "path = $SCRATCH/a.img" "format = vmdk"
fails "unknown format" "^layerfs: $C:layer a:format: unknown format" -c "$C" "$MNT"

conf "[disk d]" "layers = a" "[layer a]" "driver = floppy"
fails "unknown driver" "^layerfs: $C:layer a:driver: unknown driver 'floppy'" -c "$C" "$MNT"

conf "[disk d]" "layers = a b" "[layer a]" "path = $SCRATCH/a.img"
fails "unknown layer referenced" "^layerfs: $C:disk d:layers: no \[layer b\]" -c "$C" "$MNT"

conf "[disk d]" "layers = a" "[disk e]" "layers = a" "[layer a]" "path = $SCRATCH/a.img"
fails "layer used by two disks" "^layerfs: $C:disk e:layers: layer a is already used by disk d" \
    -c "$C" "$MNT"

conf "[disk d]" "layers =" "[layer a]" "path = $SCRATCH/a.img"
fails "disk with no layers" "^layerfs: $C:disk d:layers: a disk needs at least one layer" \
    -c "$C" "$MNT"

conf "[disk d]" "read-only = true"
fails "disk without a layers key" "^layerfs: $C:disk d:layers: missing" -c "$C" "$MNT"

conf "[disk d]" "layers = a" "[layer a]" "path = $SCRATCH/a.img" "[disk d]" "layers = a"
fails "duplicate disk" "^layerfs: $C:disk d: group defined twice" -c "$C" "$MNT"

conf "[disk d]" "layers = a" "[layer a]" "path = $SCRATCH/a.img" "path = /x"
fails "duplicate key" "^layerfs: $C:layer a:path: key set twice" -c "$C" "$MNT"

conf "[disk d]" "layers = a" "[layer a]" "path = $SCRATCH/a.img"
fails "disk name given twice (file and --disk)" "^layerfs: --disk d: disk d is already defined" \
    -c "$C" --disk "d=$SCRATCH/a.img" "$MNT"

conf "[disk d]" "layers = a" "[layer a]" "format = raw"
fails "missing path for the file driver" "^layerfs: $C:layer a:path: required for driver file" \
    -c "$C" "$MNT"

conf "[disk d]" "layers = a b" "[layer a]" "format = ram" "path = /x" "[layer b]" \
    "path = $SCRATCH/a.img"
fails "format ram with a path" "^layerfs: $C:layer a:path: a layer of format ram" -c "$C" "$MNT"

conf "[disk d]" "layers = a b" "[layer a]" "path = $SCRATCH/a.img" "[layer b]" \
    "path = $SCRATCH/a.img" "write-through = true"
fails "write-through at the bottom" "^layerfs: $C:layer b:write-through:" -c "$C" "$MNT"

conf "[disk d]" "layers = a" "[layer a]" "path = $SCRATCH/a.img" "[layer spare]" "path = /x"
fails "layer used by no disk" "^layerfs: $C:layer spare: not used by any disk" -c "$C" "$MNT"

fails "missing config file" "^layerfs: $SCRATCH/none.conf: .*No such file" \
    -c "$SCRATCH/none.conf" "$MNT"

conf "[disk d]" "layers = a" "[layer a]" "path = $SCRATCH/missing.img"
fails "missing image file" "^layerfs: .*missing.img" -c "$C" "$MNT"

conf "[disk d" "layers = a"
fails "key file syntax error" "^layerfs: $C: " -c "$C" "$MNT"

# The inline form.
fails "--disk without NAME=" "^layerfs: --disk x: expected NAME=LAYER" --disk x "$MNT"
fails "--disk unknown key" "^layerfs: --disk x:layer 2:colour: unknown key" \
    --disk "x=format=ram:path=$SCRATCH/a.img,colour=red" "$MNT"
fails "--disk bad boolean" "^layerfs: --disk x:layer 1:read-only: not a boolean" \
    --disk "x=path=$SCRATCH/a.img,read-only=perhaps" "$MNT"
fails "--disk ram at the bottom without a size" \
    "^layerfs: --disk x:layer 1:size: a ram layer at the bottom of a stack needs a size" \
    --disk "x=format=ram" "$MNT"
fails "--disk size on a raw layer" "^layerfs: --disk x:layer 1:size: unknown key" \
    --disk "x=format=raw,path=$SCRATCH/a.img,size=1M" "$MNT"
fails "--disk missing overlay, said once" \
    "^layerfs: --disk x:layer 1: [^:]*/nope.ovl: No such file or directory\$" \
    --disk "x=format=overlay,path=$SCRATCH/nope.ovl:format=ram,size=1M" "$MNT"
fails "--disk bad name" "^layerfs: --disk a/b: bad disk name" --disk "a/b=$SCRATCH/a.img" "$MNT"
fails "--disk missing image" "^layerfs: .*nope.img" --disk "x=$SCRATCH/nope.img" "$MNT"

# Without -f the error is found after forking: the parent still exits 2.
err=$(timeout 20 "$LAYERFS" --disk "x=$SCRATCH/nope.img" "$MNT" 2>&1); rc=$?
is "$rc" "2" "daemonizing, missing image: the parent exits 2"
like "$err" "^layerfs: .*nope.img" "daemonizing, missing image: message"
ok "daemonizing, missing image: nothing mounted" sh -c "! mountpoint -q '$MNT'"

# The command line and the mountpoint.
fails "no disks" "^layerfs: no disks" "$MNT"
fails "no mountpoint" "^layerfs: no MOUNTPOINT" --disk "x=$SCRATCH/a.img"
fails "missing mountpoint" "^layerfs: $SCRATCH/nodir: mountpoint does not exist" \
    --disk "x=$SCRATCH/a.img" "$SCRATCH/nodir"
mkfifo "$SCRATCH/fifo"
fails "mountpoint neither directory nor file" "^layerfs: .*directory or a regular file" \
    --disk "x=$SCRATCH/a.img" "$SCRATCH/fifo"
fails "unknown option" "unrecognized option" --frobnicate --disk "x=$SCRATCH/a.img" "$MNT"
fails "bad --threads" "^layerfs: --threads: 'many'" -t many --disk "x=$SCRATCH/a.img" "$MNT"
fails "--threads 0" "^layerfs: --threads: '0'" -t 0 --disk "x=$SCRATCH/a.img" "$MNT"
fails "bad --cache" "^layerfs: --cache: 'some'" --cache=some --disk "x=$SCRATCH/a.img" "$MNT"
fails "bad --bounce-budget" "^layerfs: --bounce-budget: '1K'" --bounce-budget 1K \
    --disk "x=$SCRATCH/a.img" "$MNT"
fails "two mountpoints" "^layerfs: unexpected argument" --disk "x=$SCRATCH/a.img" "$MNT" "$MNT"
fails "bad FUSE option" "^layerfs: bad FUSE options" -o no_such_option \
    --disk "x=$SCRATCH/a.img" "$MNT"

# Pidfiles: a live one refuses, a symlink refuses, a stale one of ours is replaced.
echo $$ >"$SCRATCH/live.pid"
fails "pidfile of a running process" "^layerfs: .*live.pid: pidfile names process $$" \
    --pidfile "$SCRATCH/live.pid" --disk "x=$SCRATCH/a.img" "$MNT"
ln -s "$SCRATCH/elsewhere" "$SCRATCH/link.pid"
fails "pidfile is a symlink" "^layerfs: .*link.pid: pidfile exists and is not a regular file" \
    --pidfile "$SCRATCH/link.pid" --disk "x=$SCRATCH/a.img" "$MNT"
ok "the symlink's target was not created" test ! -e "$SCRATCH/elsewhere"
sh -c 'exit 0' & dead=$!; wait $dead
echo $dead >"$SCRATCH/stale.pid"
"$LAYERFS" --pidfile "$SCRATCH/stale.pid" --disk "x=$SCRATCH/a.img" "$MNT" 2>"$SCRATCH/stale.err"
is "$?" "0" "a stale pidfile is replaced"
like "$(cat "$SCRATCH/stale.err")" "removing stale pidfile" "and that is said"
ok "the new pidfile names the daemon" kill -0 "$(cat "$SCRATCH/stale.pid")"
pid=$(cat "$SCRATCH/stale.pid")
kill -TERM "$pid"
for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
ok "daemon gone after SIGTERM" sh -c "! kill -0 $pid 2>/dev/null"
ok "nothing left mounted" sh -c "! mountpoint -q '$MNT'"

done_testing
