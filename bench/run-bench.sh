#!/bin/bash
# SPDX-License-Identifier: MIT
# The layerfs benchmark: fio on one 1 GiB raw file read directly (the ceiling), through
# qemu-storage-daemon's FUSE export (the anchor) and through layerfs, in one run; prints one
# markdown table. Also a 2-layer set (layerfs overlay vs a qcow2 overlay), a vhost-user set and,
# on request (--sets nbd), the same overlays over an NBD export of the raw file.

#
# Notes on the design
#
# Every daemon is started once per row set and stays mounted while the workloads run, so a
# run measures I/O, not start-up. For each workload the targets are run in turn (raw, qsd,
# layerfs, ...) and the whole turn is repeated --pairs times; format-table.py keeps the best
# run of each target. Runs alternate so that a slow minute on this shared machine hurts both
# sides rather than one.
#
# Each run records, besides fio's JSON, the daemon's CPU time (utime+stime of the whole
# process, all threads) over the run, so the table can say how many CPU microseconds one I/O
# costs each daemon: that number is much steadier than IOPS when the machine is busy.
#
# The 2-layer set starts from fresh overlays (qcow2 for qsd, layerfs's own format for
# layerfs), both with 64 KiB blocks, and runs the read workloads before the write ones, so
# reads see an empty overlay (all data from the base) and writes first copy blocks up. Both
# sides see the same history, run for run.
#
# Everything lives in a fresh directory under --dir, removed on exit with every mount and
# daemon, also on Ctrl-C (SIGINT), SIGTERM and SIGHUP.
#

set -u -o pipefail

ME=${0##*/}
HERE=$(cd "$(dirname "$0")" && pwd)

usage() {
    cat <<EOF
Usage: $ME [OPTIONS]
Benchmark layerfs against qemu-storage-daemon's FUSE export and the raw file, with fio.

Options:
  --layerfs PATH     the layerfs binary (default \$LAYERFS or ./layerfs)
  --before PATH      another layerfs binary (say, built from the commit before a change):
                     mounted beside the first in the single and overlay sets, run in the
                     same turns, and compared with it in a "before/after" table
  --dir DIR          where the scratch directory goes (default \$BENCH_DIR or /var/tmp);
                     must be a real file system with O_DIRECT (tmpfs is refused)
  --size MIB         size of the raw file in MiB (default 1024)
  --runtime SEC      seconds per fio run (default 10)
  --ramp SEC         fio ramp time before measuring (default 1)
  --pairs N          runs of each target per workload, the best is kept (default 2)
  --quick            smoke test: --runtime 3 --ramp 0 --pairs 1
  --only LIST        comma-separated workloads (default: all; see below)
  --sets LIST        comma-separated row sets: single, overlay, vhost-user, nbd
                     (default: the first three; nbd needs nbdkit)
  --threads N        layerfs I/O threads (-t; default: layerfs's own default)
  --layerfs-args S   extra arguments for layerfs (word-split)
  --out FILE         also write the table to FILE
  --keep             keep the scratch directory (fio JSON, daemon logs)
  -h, --help         this help

Workloads: $(printf '%s ' "${WORKLOADS[@]}")
EOF
}

WORKLOADS=(randread-4k-qd1 randread-4k-qd32 read-1m-qd8 randwrite-4k-qd32 randrw-4k-4jobs
           write-1m-qd8 write-3000-unaligned)

# wl_args WORKLOAD: the fio arguments of one workload.
wl_args() {
    case $1 in
    randread-4k-qd1) echo "--rw=randread --bs=4k --ioengine=psync --iodepth=1 --direct=1" ;;
    randread-4k-qd32) echo "--rw=randread --bs=4k --ioengine=io_uring --iodepth=32 --direct=1" ;;
    randwrite-4k-qd32) echo "--rw=randwrite --bs=4k --ioengine=io_uring --iodepth=32 --direct=1" ;;
    randrw-4k-4jobs) echo "--rw=randrw --bs=4k --ioengine=psync --numjobs=4 --direct=1" ;;
    read-1m-qd8) echo "--rw=read --bs=1m --ioengine=io_uring --iodepth=8 --direct=1" ;;
    write-1m-qd8) echo "--rw=write --bs=1m --ioengine=io_uring --iodepth=8 --direct=1" ;;
    # 3000-byte writes at byte-granular offsets: O_DIRECT cannot do that on the raw file, so
    # this one is buffered everywhere (the FUSE files are direct_io anyway).
    write-3000-unaligned) echo "--rw=randwrite --bs=3000 --blockalign=1 --ioengine=psync --direct=0" ;;
    *) return 1 ;;
    esac
}

die() { echo "$ME: $*" >&2; exit 2; }
note() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

LAYERFS=${LAYERFS:-./layerfs}
BEFORE=
BASEDIR=${BENCH_DIR:-/var/tmp}
SIZE_MIB=1024 RUNTIME=10 RAMP=1 PAIRS=2 ONLY= SETS=single,overlay,vhost-user
THREADS= LF_EXTRA= OUT= KEEP=0

while [ $# -gt 0 ]; do
    case $1 in
    --layerfs) LAYERFS=$2; shift ;;
    --before) BEFORE=$2; shift ;;
    --dir) BASEDIR=$2; shift ;;
    --size) SIZE_MIB=$2; shift ;;
    --runtime) RUNTIME=$2; shift ;;
    --ramp) RAMP=$2; shift ;;
    --pairs) PAIRS=$2; shift ;;
    --quick) RUNTIME=3 RAMP=0 PAIRS=1 ;;
    --only) ONLY=$2; shift ;;
    --sets) SETS=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --layerfs-args) LF_EXTRA=$2; shift ;;
    --out) OUT=$2; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
    shift
done

for v in SIZE_MIB RUNTIME RAMP PAIRS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "${v,,}: '${!v}' is not a number"
done
[ "$PAIRS" -ge 1 ] && [ "$RUNTIME" -ge 1 ] || die "--pairs and --runtime must be at least 1"
if [ -n "$ONLY" ]; then
    IFS=, read -r -a sel <<<"$ONLY"
    for w in "${sel[@]}"; do wl_args "$w" >/dev/null || die "--only: unknown workload '$w'"; done
    WORKLOADS=("${sel[@]}")
fi
IFS=, read -r -a SET_LIST <<<"$SETS"
for s in "${SET_LIST[@]}"; do
    case $s in single | overlay | vhost-user | nbd) ;; *) die "--sets: unknown row set '$s'" ;; esac
done
want_set() { [[ ",$SETS," == *",$1,"* ]]; }

[ "$(id -u)" = 0 ] || die "run as root (FUSE mounts, qemu-storage-daemon's allow_other)"
for c in fio qemu-storage-daemon qemu-img fusermount3 python3 dd stat; do
    command -v "$c" >/dev/null || die "$c not found (/work/main/.ci/install-deps installs it)"
done
[ -e /dev/fuse ] || die "/dev/fuse is missing"
if want_set nbd; then
    command -v nbdkit >/dev/null || die "nbdkit not found (the nbd set serves the base with it)"
fi
case $LAYERFS in */*) ;; *) LAYERFS=./$LAYERFS ;; esac
[ -x "$LAYERFS" ] || die "layerfs binary '$LAYERFS' not found or not executable (--layerfs or \$LAYERFS)"
LAYERFS=$(cd "$(dirname "$LAYERFS")" && pwd)/$(basename "$LAYERFS")
if [ -n "$BEFORE" ]; then
    [ -x "$BEFORE" ] || die "--before: '$BEFORE' is not an executable"
    BEFORE=$(cd "$(dirname "$BEFORE")" && pwd)/$(basename "$BEFORE")
fi

# --- the scratch directory: a real file system, never tmpfs -----------------------------
[ -d "$BASEDIR" ] || die "--dir: $BASEDIR is not a directory"
# statfs's magic number decides (findmnt can list a file system twice, one line each);
# findmnt only names it for the table (statfs says "ext2/ext3" for ext4).
magic=$(stat -f -c %T "$BASEDIR") || die "cannot tell the file system of $BASEDIR"
fstype=$(findmnt -n -o FSTYPE -T "$BASEDIR" 2>/dev/null | head -1)
fstype=${fstype:-$magic}
case "$magic/$fstype" in
tmpfs/* | ramfs/* | */tmpfs | */ramfs) die "$BASEDIR is on $fstype: the numbers would be memory speed, not a disk's; use a disk (e.g. --dir /var/tmp)" ;;
esac
need_kib=$(( SIZE_MIB * 1024 * 3 + 65536 ))
avail_kib=$(df -Pk "$BASEDIR" | awk 'NR == 2 { print $4 }')
[ "$avail_kib" -ge "$need_kib" ] || die "$BASEDIR has ${avail_kib} KiB free, this run needs about ${need_kib} KiB"

WORK=$(mktemp -d "$BASEDIR/layerfs-bench.XXXXXX") || die "cannot create a directory in $BASEDIR"
[[ $WORK == *[[:space:]]* ]] && { rmdir "$WORK"; die "the scratch path must not contain spaces"; }

# --- cleanup: every mount and every process we started, whatever happens ----------------
DAEMON_PIDS=()
MOUNTS=()
FIO_PID=
CLEANED=0

is_mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$ME: pid $pid ignored SIGTERM for 10 s, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    [ "$CLEANED" = 1 ] && return
    CLEANED=1
    [ -n "$FIO_PID" ] && stop_pid "$FIO_PID"
    local m p
    for m in "${MOUNTS[@]}"; do
        is_mounted "$m" && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null; }
    done
    for p in "${DAEMON_PIDS[@]}"; do stop_pid "$p"; done
    for m in "${MOUNTS[@]}"; do
        is_mounted "$m" && { fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; }
    done
    if [ "$KEEP" = 1 ]; then
        echo "$ME: kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'echo "$ME: interrupted, cleaning up" >&2; cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap 'cleanup; exit 129' HUP

# --- daemons ------------------------------------------------------------------------------
# wait_ready PID WHAT CHECK...: wait up to 30 s for CHECK to succeed while PID lives.
wait_ready() {
    local pid=$1 what=$2 i
    shift 2
    for ((i = 0; i < 300; i++)); do
        "$@" && return 0
        kill -0 "$pid" 2>/dev/null || { echo "$ME: $what exited before it was ready" >&2; return 1; }
        sleep 0.1
    done
    echo "$ME: $what not ready after 30 s" >&2
    return 1
}

ready_mount() { [ -s "$1" ] && is_mounted "$2"; }

# start_layerfs NAME CONFIG: mount $WORK/NAME.mnt, set LF_PID; 1 if it fails (see NAME.log).
# The binary is $LF_BIN if set (the --before one), else $LAYERFS.
start_layerfs() {
    local name=$1 conf=$2 mnt=$WORK/$1.mnt
    : >"$mnt"
    local args=(-f --pidfile "$WORK/$name.pid" -c "$conf")
    [ -n "$THREADS" ] && args+=(-t "$THREADS")
    # shellcheck disable=SC2206
    [ -n "$LF_EXTRA" ] && args+=($LF_EXTRA)
    "${LF_BIN:-$LAYERFS}" "${args[@]}" "$mnt" >"$WORK/$name.log" 2>&1 &
    LF_PID=$!
    DAEMON_PIDS+=("$LF_PID")
    MOUNTS+=("$mnt")
    wait_ready "$LF_PID" "layerfs ($name)" ready_mount "$WORK/$name.pid" "$mnt" || {
        sed 's/^/    /' "$WORK/$name.log" >&2
        return 1
    }
}

# start_qsd NAME CHECK-ARGS... -- QSD-ARGS...: start qemu-storage-daemon, set QSD_PID.
start_qsd() {
    local name=$1
    shift
    local check=()
    while [ "$1" != -- ]; do check+=("$1"); shift; done
    shift
    qemu-storage-daemon "$@" --pidfile "$WORK/$name.pid" >"$WORK/$name.log" 2>&1 &
    QSD_PID=$!
    DAEMON_PIDS+=("$QSD_PID")
    wait_ready "$QSD_PID" "qemu-storage-daemon ($name)" "${check[@]}" || {
        sed 's/^/    /' "$WORK/$name.log" >&2
        return 1
    }
}

start_qsd_fuse() {  # NAME IMAGE-BLOCKDEV-ARGS...: export node "top" on $WORK/NAME.mnt
    local name=$1 mnt=$WORK/$1.mnt
    shift
    : >"$mnt"
    MOUNTS+=("$mnt")
    start_qsd "$name" ready_mount "$WORK/$name.pid" "$mnt" -- "$@" \
        --export "type=fuse,id=e,node-name=top,mountpoint=$mnt,writable=on"
}

# stop_daemon PID [MOUNT]: with MOUNT, unmount it and give the daemon (layerfs) 30 s to
# flush and exit by itself -- a SIGTERM then would be its "second signal", skipping the final
# flush; without, SIGTERM (qemu-storage-daemon).
stop_daemon() {
    local pid=$1 mnt=${2:-} i
    if [ -n "$mnt" ] && is_mounted "$mnt" && fusermount3 -u "$mnt"; then
        for ((i = 0; i < 300; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    stop_pid "$pid"
}

hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# --- fio ----------------------------------------------------------------------------------
RUNS=$WORK/runs.tsv
printf 'set\tworkload\ttarget\trun\tjson\tcpu_ticks\tload1\n' >"$RUNS"

# run_fio SET WORKLOAD TARGET RUN FILE DAEMON-PID|-
run_fio() {
    local set=$1 wl=$2 target=$3 run=$4 file=$5 dpid=$6
    local out=$WORK/fio/$set.$wl.$target.$run.json load c0=0 c1=0
    if [ "$target" != raw ] && ! is_mounted "$file"; then
        echo "$ME: $file is not mounted any more (the daemon died?)" >&2
        return 1
    fi
    load=$(cut -d' ' -f1 /proc/loadavg)
    [ "$dpid" != - ] && c0=$(cpu_ticks "$dpid")
    # shellcheck disable=SC2046
    fio --name="$wl" --filename="$file" --allow_file_create=0 --time_based \
        --runtime="$RUNTIME" --ramp_time="$RAMP" --group_reporting --norandommap \
        --randrepeat=0 --output-format=json --output="$out" $(wl_args "$wl") \
        >"$out.stderr" 2>&1 &
    FIO_PID=$!
    wait "$FIO_PID"
    local rc=$?
    FIO_PID=
    [ "$dpid" != - ] && c1=$(cpu_ticks "$dpid")
    if [ "$rc" != 0 ]; then
        echo "$ME: fio $wl on $target failed (exit $rc):" >&2
        sed 's/^/    /' "$out.stderr" "$out" >&2 2>/dev/null | tail -20 >&2
        return 1
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$set" "$wl" "$target" "$run" "$out" \
        "$((c1 - c0))" "$load" >>"$RUNS"
}

# run_set SET TARGET=FILE=PID...: every workload, every target in turn, PAIRS times.
run_set() {
    local set=$1 wl r spec target file pid
    shift
    for wl in "${WORKLOADS[@]}"; do
        for ((r = 1; r <= PAIRS; r++)); do
            for spec in "$@"; do
                IFS='=' read -r target file pid <<<"$spec"
                note "$set: $wl: $target (run $r/$PAIRS)"
                run_fio "$set" "$wl" "$target" "$r" "$file" "$pid" || return 1
            done
        done
    done
}

mkdir -p "$WORK/fio"
META=$WORK/meta.tsv
meta() { printf '%s\t%s\n' "$1" "$2" >>"$META"; }
: >"$META"
meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta cpu "$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) CPUs"
meta kernel "$(uname -r)"
meta fs "$fstype on $(df -P "$BASEDIR" | awk 'NR == 2 { print $1 }') ($BASEDIR)"
meta fio "$(fio --version)"
meta qsd "$(qemu-storage-daemon --version | head -1)"
meta layerfs "$("$LAYERFS" --version 2>&1 | head -1) ($LAYERFS)"
[ -n "$BEFORE" ] && meta before "$("$BEFORE" --version 2>&1 | head -1) ($BEFORE)"
if git -C "$HERE" rev-parse --git-dir >/dev/null 2>&1; then
    meta commit "$(git -C "$HERE" describe --always --dirty 2>/dev/null)"
fi
meta method "$RUNTIME s per run after ${RAMP} s ramp, best of $PAIRS alternating runs, ${SIZE_MIB} MiB file"
meta load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
meta clk_tck "$(getconf CLK_TCK)"
meta threads "${THREADS:-default}"

# --- the base image -----------------------------------------------------------------------
BASE=$WORK/base.raw
note "writing the ${SIZE_MIB} MiB base image $BASE"
dd if=/dev/urandom of="$BASE" bs=1M count="$SIZE_MIB" oflag=direct conv=fsync status=none ||
    die "cannot write $BASE with O_DIRECT (does $BASEDIR support O_DIRECT?)"
note "warming: reading it once with O_DIRECT"
dd if="$BASE" of=/dev/null bs=1M iflag=direct status=none || die "cannot read $BASE with O_DIRECT"

cfg_raw_layer() {  # NAME PATH [READ-ONLY]
    printf '[layer %s]\nformat = raw\ndriver = file\npath = %s\ndirect = true\n' "$1" "$2"
    [ -n "${3:-}" ] && printf 'read-only = true\n'
    printf '\n'
}

FAILED=0

# --- row set 1: one raw layer -------------------------------------------------------------
if want_set single || want_set vhost-user; then
    start_qsd_fuse qsd \
        --blockdev "driver=file,node-name=top,filename=$BASE,cache.direct=on,aio=io_uring" ||
        die "qemu-storage-daemon's FUSE export did not start"
    QSD1=$QSD_PID
    targets=("raw=$BASE=-" "qsd=$WORK/qsd.mnt=$QSD1")
    if want_set single; then
        { printf '[disk bench]\nlayers = base\n\n'; cfg_raw_layer base "$BASE"; } >"$WORK/lf.conf"
        start_layerfs lf "$WORK/lf.conf" || die "layerfs did not mount a single raw layer"
        LF1=$LF_PID
        targets+=("layerfs=$WORK/lf.mnt=$LF1")
        if [ -n "$BEFORE" ]; then
            LF_BIN=$BEFORE start_layerfs lfb "$WORK/lf.conf" ||
                die "the --before layerfs did not mount a single raw layer"
            LFB1=$LF_PID
            targets+=("before=$WORK/lfb.mnt=$LFB1")
        fi
    fi
    if want_set vhost-user; then
        SOCK=$WORK/vhost.sock
        if start_qsd qsdvu test -S "$SOCK" -- \
            --blockdev "driver=file,node-name=f,filename=$BASE,cache.direct=on,aio=io_uring" \
            --export "type=vhost-user-blk,id=v,node-name=f,addr.type=unix,addr.path=$SOCK,writable=on,num-queues=2"; then
            QSDVU=$QSD_PID
            printf '[disk bench]\nlayers = base\n\n[layer base]\nformat = raw\ndriver = virtio-blk-vhost-user\npath = %s\nnum-queues = 2\n' \
                "$SOCK" >"$WORK/lfvu.conf"
            if start_layerfs lfvu "$WORK/lfvu.conf"; then
                LFVU=$LF_PID
                targets+=("layerfs-vu=$WORK/lfvu.mnt=$LFVU")
            else
                meta vhost_user_na "layerfs did not start with the virtio-blk-vhost-user driver (see its log)"
                stop_pid "$QSDVU"
            fi
        else
            meta vhost_user_na "qemu-storage-daemon's vhost-user-blk export did not start"
        fi
    fi
    run_set single "${targets[@]}" || FAILED=1
    meta qsd_hwm_kib "$(hwm_kib "$QSD1")"
    [ -n "${LF1:-}" ] && meta lf_hwm_kib "$(hwm_kib "$LF1")"
    [ -n "${LFVU:-}" ] && meta lfvu_hwm_kib "$(hwm_kib "$LFVU")"
    [ -n "${LF1:-}" ] && stop_daemon "$LF1" "$WORK/lf.mnt"
    [ -n "${LFB1:-}" ] && stop_daemon "$LFB1" "$WORK/lfb.mnt"
    [ -n "${LFVU:-}" ] && { stop_daemon "$LFVU" "$WORK/lfvu.mnt"; stop_pid "$QSDVU"; }
    stop_daemon "$QSD1"
fi

# --- row set 2: an overlay over the raw base ----------------------------------------------
if [ "$FAILED" = 0 ] && want_set overlay; then
    qemu-img create -q -f qcow2 -o cluster_size=65536 -b "$BASE" -F raw "$WORK/top.qcow2" ||
        die "qemu-img create failed"
    {
        printf '[disk bench]\nlayers = top base\n\n'
        printf '[layer top]\nformat = overlay\ndriver = file\npath = %s\n' "$WORK/top.lfo"
        printf 'create = true\nblock-size = 65536\ndirect = true\n\n'
        cfg_raw_layer base "$BASE" ro
    } >"$WORK/lfo.conf"
    if start_layerfs lfo "$WORK/lfo.conf"; then
        LFO=$LF_PID
        start_qsd_fuse qsdo \
            --blockdev "driver=file,node-name=bf,filename=$BASE,cache.direct=on,aio=io_uring,read-only=on" \
            --blockdev "driver=file,node-name=tf,filename=$WORK/top.qcow2,cache.direct=on,aio=io_uring" \
            --blockdev "driver=qcow2,node-name=top,file=tf,backing=bf" ||
            die "qemu-storage-daemon did not export the qcow2 overlay"
        QSDO=$QSD_PID
        otargets=("qsd=$WORK/qsdo.mnt=$QSDO" "layerfs=$WORK/lfo.mnt=$LFO")
        if [ -n "$BEFORE" ]; then
            sed "s|$WORK/top.lfo|$WORK/topb.lfo|" "$WORK/lfo.conf" >"$WORK/lfob.conf"
            LF_BIN=$BEFORE start_layerfs lfob "$WORK/lfob.conf" ||
                die "the --before layerfs did not mount the overlay"
            LFOB=$LF_PID
            otargets+=("before=$WORK/lfob.mnt=$LFOB")
        fi
        run_set overlay "${otargets[@]}" || FAILED=1
        meta qsdo_hwm_kib "$(hwm_kib "$QSDO")"
        meta lfo_hwm_kib "$(hwm_kib "$LFO")"
        stop_daemon "$LFO" "$WORK/lfo.mnt"
        [ -n "${LFOB:-}" ] && stop_daemon "$LFOB" "$WORK/lfob.mnt"
        stop_daemon "$QSDO"
    else
        reason=$(grep -m1 -i 'format\|overlay' "$WORK/lfo.log" | head -c 200)
        meta overlay_na "overlay format not available${reason:+: $reason}"
    fi
fi

# --- row set 3: the overlays over an NBD export of the raw base --------------------------
# nbdkit's file plugin serves the base read-only on a Unix socket; layerfs's overlay uses it
# through driver = nbd, qemu-storage-daemon's qcow2 overlay through an nbd blockdev as its
# backing.  Both daemons talk to the same server, in alternating runs.
if [ "$FAILED" = 0 ] && want_set nbd; then
    NBDSOCK=$WORK/nbd.sock
    NBDURI="nbd+unix:///?socket=$NBDSOCK"
    nbdkit -f -r -U "$NBDSOCK" file "$BASE" >"$WORK/nbdkit.log" 2>&1 &
    NBDKIT=$!
    DAEMON_PIDS+=("$NBDKIT")
    wait_ready "$NBDKIT" nbdkit test -S "$NBDSOCK" || die "nbdkit did not start"
    qemu-img create -q -f qcow2 -o cluster_size=65536 -u -b "$NBDURI" -F raw \
        "$WORK/topn.qcow2" "${SIZE_MIB}M" || die "qemu-img create failed"
    {
        printf '[disk bench]\nlayers = top base\n\n'
        printf '[layer top]\nformat = overlay\ndriver = file\npath = %s\n' "$WORK/topn.lfo"
        printf 'create = true\nblock-size = 65536\ndirect = true\n\n'
        printf '[layer base]\ndriver = nbd\nuri = %s\nread-only = true\n' "$NBDURI"
    } >"$WORK/lfn.conf"
    start_layerfs lfn "$WORK/lfn.conf" || die "layerfs did not mount the overlay over NBD"
    LFN=$LF_PID
    start_qsd_fuse qsdn \
        --blockdev "driver=nbd,node-name=bf,server.type=unix,server.path=$NBDSOCK,read-only=on" \
        --blockdev "driver=file,node-name=tf,filename=$WORK/topn.qcow2,cache.direct=on,aio=io_uring" \
        --blockdev "driver=qcow2,node-name=top,file=tf,backing=bf" ||
        die "qemu-storage-daemon did not export the qcow2 overlay over NBD"
    QSDN=$QSD_PID
    run_set nbd "qsd=$WORK/qsdn.mnt=$QSDN" "layerfs=$WORK/lfn.mnt=$LFN" || FAILED=1
    meta qsdn_hwm_kib "$(hwm_kib "$QSDN")"
    meta lfn_hwm_kib "$(hwm_kib "$LFN")"
    stop_daemon "$LFN" "$WORK/lfn.mnt"
    stop_daemon "$QSDN"
    stop_pid "$NBDKIT"
    grep -h 'driver nbd figures: ' "$WORK/lfn.log" | sed 's/.*driver nbd figures: //' |
        head -1 | while read -r l; do meta lfn_figures "$l"; done
fi

meta load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
[ "$FAILED" = 0 ] || echo "$ME: some runs failed; the table shows what completed" >&2

TABLE=$WORK/table.md
python3 "$HERE/format-table.py" --meta "$META" --runs "$RUNS" \
    --workloads "$(IFS=,; echo "${WORKLOADS[*]}")" --sets "$SETS" >"$TABLE" ||
    die "format-table.py failed (results kept in $WORK)"
cat "$TABLE"
[ -n "$OUT" ] && cp "$TABLE" "$OUT"
exit "$FAILED"
