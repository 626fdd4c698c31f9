#!/bin/bash
# SPDX-License-Identifier: MIT
# Where the time of one request goes in layerfs: syscalls per I/O (strace -c) for a fixed
# number of 4 KiB requests, and a perf profile of the daemon during a 4 KiB QD1 random read.

#
# Notes on the design
#
# strace slows every syscall down by an order of magnitude, so it only counts: each workload
# runs a fixed number of I/Os (--ios) and the counts are divided by that number. The perf
# profile is taken without strace, on the same mounted file. perf falls back to the cpu-clock
# software event where the machine has no hardware counters (these VMs have none); samples
# taken with interrupts disabled then land on the next place that enables them
# (finish_task_switch, _raw_spin_unlock_irqrestore), so read the call chains, not only the
# leaf symbols. The daemon's CPU time per I/O comes from /proc/PID/stat around an unprofiled
# run.
#

set -u -o pipefail

ME=${0##*/}
LAYERFS=${LAYERFS:-./layerfs}
BASEDIR=${BENCH_DIR:-/var/tmp}
SIZE_MIB=1024 IOS=20000 SECS=10 THREADS= KEEP=0

usage() {
    cat <<EOF
Usage: $ME [OPTIONS]
Profile layerfs exposing one raw file (file driver, O_DIRECT).

  --layerfs PATH   the layerfs binary (default \$LAYERFS or ./layerfs)
  --dir DIR        scratch directory parent, not tmpfs (default \$BENCH_DIR or /var/tmp)
  --size MIB       raw file size (default 1024)
  --ios N          I/Os per workload for the syscall counts (default 20000)
  --seconds N      length of the perf recording and of the CPU-time run (default 10)
  --threads N      layerfs I/O threads (-t)
  --keep           keep the scratch directory (perf.data, strace output)
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
    --layerfs) LAYERFS=$2; shift ;;
    --dir) BASEDIR=$2; shift ;;
    --size) SIZE_MIB=$2; shift ;;
    --ios) IOS=$2; shift ;;
    --seconds) SECS=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
    shift
done

die() { echo "$ME: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "run as root"
for c in fio strace perf fusermount3 python3; do
    command -v "$c" >/dev/null || die "$c not found"
done
case $LAYERFS in */*) ;; *) LAYERFS=./$LAYERFS ;; esac
[ -x "$LAYERFS" ] || die "layerfs binary '$LAYERFS' not found"
case $(stat -f -c %T "$BASEDIR") in
tmpfs | ramfs) die "$BASEDIR is tmpfs; use a disk (e.g. --dir /var/tmp)" ;;
esac

WORK=$(mktemp -d "$BASEDIR/layerfs-profile.XXXXXX") || die "cannot create a directory in $BASEDIR"
MNT=$WORK/disk.mnt
LF_PID= AUX_PID=
cleanup() {
    [ -n "$AUX_PID" ] && kill -INT "$AUX_PID" 2>/dev/null && wait "$AUX_PID" 2>/dev/null
    if awk -v m="$MNT" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; then
        fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -uz "$MNT"
    fi
    if [ -n "$LF_PID" ]; then
        local i
        for ((i = 0; i < 100; i++)); do kill -0 "$LF_PID" 2>/dev/null || break; sleep 0.1; done
        kill -TERM "$LF_PID" 2>/dev/null
        wait "$LF_PID" 2>/dev/null
    fi
    if [ "$KEEP" = 1 ]; then echo "$ME: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

dd if=/dev/urandom of="$WORK/base.raw" bs=1M count="$SIZE_MIB" oflag=direct status=none ||
    die "cannot write the raw file with O_DIRECT"
dd if="$WORK/base.raw" of=/dev/null bs=1M iflag=direct status=none
printf '[disk bench]\nlayers = base\n\n[layer base]\nformat = raw\ndriver = file\npath = %s\ndirect = true\n' \
    "$WORK/base.raw" >"$WORK/lf.conf"
: >"$MNT"
args=(-f --pidfile "$WORK/lf.pid" -c "$WORK/lf.conf")
[ -n "$THREADS" ] && args+=(-t "$THREADS")
"$LAYERFS" "${args[@]}" "$MNT" >"$WORK/lf.log" 2>&1 &
LF_PID=$!
for ((i = 0; i < 300; i++)); do
    [ -s "$WORK/lf.pid" ] && break
    kill -0 "$LF_PID" 2>/dev/null || { cat "$WORK/lf.log" >&2; die "layerfs exited"; }
    sleep 0.1
done
[ -s "$WORK/lf.pid" ] || die "layerfs did not mount"

declare -A WL=(
    [randread-4k-qd1]="--rw=randread --bs=4k --ioengine=psync --direct=1"
    [randread-4k-qd32]="--rw=randread --bs=4k --ioengine=io_uring --iodepth=32 --direct=1"
    [randwrite-4k-qd32]="--rw=randwrite --bs=4k --ioengine=io_uring --iodepth=32 --direct=1"
    [write-3000-unaligned]="--rw=randwrite --bs=3000 --blockalign=1 --ioengine=psync --direct=0"
)
ORDER=(randread-4k-qd1 randread-4k-qd32 randwrite-4k-qd32 write-3000-unaligned)
fio_common=(--filename="$MNT" --allow_file_create=0 --norandommap --randrepeat=0
            --output-format=json)

echo "## layerfs profile, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "- $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) CPUs, kernel $(uname -r);" \
     "load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- $("$LAYERFS" --version 2>&1 | head -1), threads ${THREADS:-default}" \
     "($(ls /proc/"$LF_PID"/task | wc -l) in the process)"
echo
echo "### Syscalls per I/O (strace -c -f on the daemon, $IOS I/Os each)"
echo
for wl in "${ORDER[@]}"; do
    # shellcheck disable=SC2086
    strace -c -f -p "$LF_PID" -o "$WORK/strace.$wl" 2>/dev/null &
    AUX_PID=$!
    sleep 1
    # shellcheck disable=SC2086
    fio --name="$wl" "${fio_common[@]}" --number_ios="$IOS" ${WL[$wl]} \
        --output="$WORK/fio.strace.$wl.json" >/dev/null 2>&1 || die "fio $wl failed"
    sleep 0.5
    kill -INT "$AUX_PID"
    wait "$AUX_PID" 2>/dev/null
    AUX_PID=
done
python3 - "$WORK" "${ORDER[@]}" <<'PY'
import json, sys
work, wls = sys.argv[1], sys.argv[2:]
print("| workload | syscalls/IO | breakdown per I/O (errors) |")
print("|---|--:|---|")
for wl in wls:
    with open("%s/fio.strace.%s.json" % (work, wl)) as f:
        t = f.read()
    job = json.loads(t[t.index("{"):])["jobs"][0]
    ios = job["read"]["total_ios"] + job["write"]["total_ios"]
    calls, parts = 0, []
    for line in open("%s/strace.%s" % (work, wl)):
        f = line.split()
        if len(f) < 5 or not f[0][0].isdigit() or f[-1] == "total":
            continue
        n = int(f[3])
        err = int(f[4]) if len(f) == 6 else 0
        calls += n
        parts.append((n, "%s %.2f%s" % (f[-1], n / ios, " (%.2f)" % (err / ios) if err else "")))
    parts.sort(reverse=True)
    print("| %s | %.2f | %s |" % (wl, calls / ios, ", ".join(p for _, p in parts)))
PY
echo

# CPU time per I/O and latency without any tracer attached.
echo "### Daemon CPU per I/O and latency, no tracer ($SECS s each)"
echo
echo "| workload | IOPS | mean latency (us) | daemon CPU (us/IO) | daemon CPU % |"
echo "|---|--:|--:|--:|--:|"
tck=$(getconf CLK_TCK)
for wl in "${ORDER[@]}"; do
    c0=$(awk '{ print $14 + $15 }' "/proc/$LF_PID/stat")
    # shellcheck disable=SC2086
    fio --name="$wl" "${fio_common[@]}" --time_based --runtime="$SECS" ${WL[$wl]} \
        --output="$WORK/fio.cpu.$wl.json" >/dev/null 2>&1 || die "fio $wl failed"
    c1=$(awk '{ print $14 + $15 }' "/proc/$LF_PID/stat")
    python3 - "$WORK/fio.cpu.$wl.json" "$wl" "$((c1 - c0))" "$tck" "$SECS" <<'PY'
import json, sys
path, wl, ticks, tck, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
t = open(path).read()
job = json.loads(t[t.index("{"):])["jobs"][0]
iops = job["read"]["iops"] + job["write"]["iops"]
d = job["read"] if job["read"]["iops"] else job["write"]
cpu = ticks / tck
print("| %s | %.0f | %.1f | %.1f | %.0f%% |" % (wl, iops, d["clat_ns"]["mean"] / 1000.0,
      cpu * 1e6 / (iops * secs) if iops else 0, 100 * cpu / secs))
PY
done
echo

echo "### perf: the daemon during a 4 KiB QD1 random read ($SECS s, cpu-clock)"
echo
perf record -q -g -e cpu-clock -F 4999 -p "$LF_PID" -o "$WORK/perf.data" -- sleep "$SECS" \
    >/dev/null 2>&1 &
AUX_PID=$!
# shellcheck disable=SC2086
fio --name=qd1 "${fio_common[@]}" --time_based --runtime="$SECS" ${WL[randread-4k-qd1]} \
    --output="$WORK/fio.perf.json" >/dev/null 2>&1
wait "$AUX_PID"
AUX_PID=
echo "By object (self time):"
echo '```'
perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
    grep '%' | head -8
echo '```'
echo "Inclusive time of the kernel paths that matter (children):"
echo '```'
perf report -i "$WORK/perf.data" --children --sort sym --stdio -g none 2>/dev/null |
    grep -E '\] (io_cqring_wait|schedule|__io_read|ext4_file_read_iter|virtqueue_notify|iowrite16|fuse_dev_write|fuse_dev_read|fuse_dev_do_read|__x64_sys_read|ksys_read|do_writev|fuse_request_end|common_interrupt|io_submit_sqes|gup_fast_fallback|__pi_memcpy|memcpy)$' |
    head -20
echo '```'
echo "Top leaf symbols:"
echo '```'
perf report -i "$WORK/perf.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
    grep '%' | head -15
echo '```'
echo "layerfs's own functions (self time, share of all daemon samples):"
echo '```'
perf report -i "$WORK/perf.data" --no-children --sort sym --stdio -g none --dsos "$(basename "$LAYERFS")" \
    2>/dev/null | grep '%' | head -8
echo '```'
