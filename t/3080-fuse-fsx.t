#!/bin/bash
# SPDX-License-Identifier: MIT
# fsx over every stack shape the configuration allows: random reads, writes, punched holes,
# zeroed ranges, fsyncs, seeks, O_DIRECT and mmap I/O and the documented failing operations
# (t/unit/fsx.c), checked against a model after every read and across clean remounts and
# kill -9.
#
# Each shape runs three rounds of LAYERFS_FSX_OPS / 3 operations (default 1200 per shape):
# round 1, a clean unmount and remount, round 2 ending with an fsync and unsynced changes,
# kill -9 and remount (fsynced data intact, unsynced old or new), round 3, a clean remount
# and a last whole-file compare.  Volatile shapes (ram on top) must read as their base
# after a remount.  The seed is printed; LAYERFS_TEST_SEED=N repeats a run.  A bigger run by
# hand:  LAYERFS_FSX_OPS=12000 LAYERFS_BUILDDIR=$PWD/build prove -v t/3080-fuse-fsx.t
. "$(dirname "$0")/tap.sh"
require_fuse
require_cmd python3
FSX=$BUILDDIR/t/bin/fsx
S=$SCRATCH
SIZE=$((16 << 20))
OPS=${LAYERFS_FSX_OPS:-1200}
ROUND=$((OPS / 3 > 0 ? OPS / 3 : 1))
seed=${LAYERFS_TEST_SEED:-$(( $(date +%s) % 1000000 ))}
diag "seed $seed (LAYERFS_TEST_SEED=$seed repeats this run), $ROUND operations per round"
nfirst=0

# A base that holds data only in part, at unaligned places, with allocated zeros too, so
# that zeroing and punching run over partly present data.
python3 - "$S/base.raw" $SIZE "$seed" <<'EOF' || exit 1
import random, sys
path, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
with open(path, "wb") as f:
    f.truncate(size)
    for i in range(40):
        n = r.randrange(1, 300000)
        f.seek(r.randrange(0, size - n))
        f.write(bytes(n) if i % 5 == 4 else r.randbytes(n))
EOF
truncate -s $SIZE "$S/zero.raw"

# fsx_round DESC ARGS...: one fsx run; all of its output is shown when it fails.
fsx_round() {
    local desc=$1 out rc; shift
    out=$("$FSX" "$@" 2>&1); rc=$?
    _t_result $((rc != 0)) "$desc"
    if [ $rc -ne 0 ]; then
        diag "exit $rc: $FSX $*"
        printf '%s\n' "$out" | sed 's/^/#   /'
    else
        printf '%s\n' "$out" | tail -n +2 | sed 's/^/#   /'
    fi
    return $rc
}

# mount NAME [DAEMON ARGS...]: a shape that does not mount is a failure, not a skip.
mount_shape() {
    local name=$1; shift
    if ! start_daemon "$S/mnt-$name" -c "$S/$name.conf" "$@"; then
        _t_result 1 "$name: mounts"
        return 1
    fi
}

# shape NAME KIND INIT FSXARGS DAEMONARGS LAYERS GROUPS...
#   KIND: persistent (data survives remounts and kill -9 after fsync), volatile (reads as
#   INIT again after a remount) or read-only (the disk is; only reads).  INIT: the file the
#   disk must equal at the first mount, or "" to take what it reads.
shape() {
    local name=$1 kind=$2 init=$3 fargs=$4 dargs=$5 layers=$6; shift 6
    local conf=$S/$name.conf model=$S/$name.model f=$S/mnt-$name/$name
    local ro=false
    [ "$kind" = read-only ] && ro=true
    shape_ok=0
    {
        printf '[disk %s]\nlayers = %s\nread-only = %s\n\n' "$name" "$layers" "$ro"
        printf '%s\n\n' "$@"
    } >"$conf"
    mkdir -p "$S/mnt-$name"
    [ -n "$init" ] && cp "$init" "$model"
    local s1=$seed s2=$((seed + 1)) s3=$((seed + 2)) n=$nfirst
    seed=$((seed + 3))
    nfirst=$((nfirst + 3 * ROUND + 100))
    # A failed round leaves the model behind the disk: the shape stops there.
    # shellcheck disable=SC2086
    case $kind in
    read-only)
        mount_shape "$name" $dargs || return
        fsx_round "$name: $ROUND reads match, writes fail as documented" \
            -r -s $s1 -N $n -n $ROUND -m "$model" $fargs "$f"
        stop_daemon
        ;;
    persistent)
        mount_shape "$name" $dargs || return
        fsx_round "$name: round 1 matches the model" -s $s1 -N $n -n $ROUND -m "$model" \
            $fargs "$f" || { stop_daemon; return; }
        stop_daemon
        is "$DAEMON_STATUS" 0 "$name: layerfs exits 0"
        mount_shape "$name" $dargs || return
        fsx_round "$name: after a remount; round 2 matches, then unsynced changes" \
            -s $s2 -N $((n + ROUND)) -n $ROUND -u 24 -m "$model" $fargs "$f" ||
            { stop_daemon; return; }
        crash_daemon
        mount_shape "$name" $dargs || return
        fsx_round "$name: after kill -9 fsynced data is intact; round 3 matches" \
            -c -s $s3 -N $((n + 2 * ROUND + 48)) -n $ROUND -m "$model" $fargs "$f" ||
            { stop_daemon; return; }
        stop_daemon
        mount_shape "$name" $dargs || return
        fsx_round "$name: after a remount the disk equals the model" \
            -n 0 -m "$model" $fargs "$f" && shape_ok=1
        stop_daemon
        ;;
    volatile)
        mount_shape "$name" $dargs || return
        fsx_round "$name: round 1 matches the model" -s $s1 -N $n -n $ROUND -m "$model" \
            $fargs "$f" &&
        fsx_round "$name: round 2 matches the model" -s $s2 -N $((n + ROUND)) -n $ROUND \
            -m "$model" $fargs "$f" || { stop_daemon; return; }
        stop_daemon
        is "$DAEMON_STATUS" 0 "$name: layerfs exits 0"
        cp "$init" "$model"
        mount_shape "$name" $dargs || return
        fsx_round "$name: after a remount the disk reads as its base; round 3 matches" \
            -s $s3 -N $((n + 2 * ROUND)) -n $ROUND -m "$model" $fargs "$f" ||
            { stop_daemon; return; }
        crash_daemon
        cp "$init" "$model"
        mount_shape "$name" $dargs || return
        fsx_round "$name: after kill -9 the disk reads as its base" -n 0 -m "$model" \
            $fargs "$f" && shape_ok=1
        stop_daemon
        ;;
    esac
}

RO_BASE="[layer base]
path = $S/base.raw
read-only = true"
# overlay LAYER FILE BLOCK-SIZE ['KEY = VALUE'...]: an overlay layer group; FILE.ovl is
# created in the scratch directory.
overlay() {
    local layer=$1 file=$2 bs=$3; shift 3
    printf '[layer %s]\nformat = overlay\npath = %s\ncreate = true\nblock-size = %s' \
        "$layer" "$S/$file.ovl" "$bs"
    [ $# -gt 0 ] && printf '\n%s' "$@"
}
ramdrv() {
    printf '[layer %s]\ndriver = ram\nsize = %s' "$1" $SIZE
}

# ---- raw and ram at the bottom ----------------------------------------------------------
cp "$S/base.raw" "$S/raw.raw"
shape raw persistent "$S/base.raw" "-d 25" "" "r" "[layer r]
path = $S/raw.raw"
cp "$S/base.raw" "$S/rawpage.raw"
shape raw-page persistent "$S/base.raw" "-M -d 10" "--cache=page" "r" "[layer r]
path = $S/rawpage.raw
direct = false"
shape ram volatile "$S/zero.raw" "-d 25" "" "m" "$(ramdrv m)"
cp "$S/base.raw" "$S/fault.raw"
shape raw-fault-cache persistent "$S/base.raw" "" "" "r" "[layer r]
driver = fault
path = $S/fault.raw
fault-writeback = 30"

# ---- an overlay over a read-only base holding data in part ------------------------------
shape ovl-4k persistent "$S/base.raw" "-b 4096 -d 10" "" "top base" \
    "$(overlay top ovl-4k 4K)" "$RO_BASE"
shape ovl-64k persistent "$S/base.raw" "-b 65536 -d 10" "" "top base" \
    "$(overlay top ovl-64k 64K)" "$RO_BASE"
ovl64k_ok=$shape_ok
shape ovl-1m persistent "$S/base.raw" "-b 1048576" "" "top base" \
    "$(overlay top ovl-1m 1M)" "$RO_BASE"
shape ovl-page persistent "$S/base.raw" "-b 16384 -M -d 10" "--cache=page" "top base" \
    "$(overlay top ovl-page 16K)" "$RO_BASE"
shape ovl-ram persistent "$S/zero.raw" "-b 16384" "" "top m" \
    "$(overlay top ovl-ram 16K)" "$(ramdrv m)"
shape ram-raw volatile "$S/base.raw" "-b 65536 -d 10" "" "top base" \
    "[layer top]
format = ram" "$RO_BASE"

# ---- deeper stacks ------------------------------------------------------------------------
# The 64K overlay above, holding data now, under a new 4K overlay; and as a read-only disk.
[ "$ovl64k_ok" = 1 ] || _t_result 1 "ovl-ovl, read-only-disk: ovl-64k passed (they use it)"
cp "$S/ovl-64k.model" "$S/ovl-64k.final"
shape ovl-ovl persistent "$S/ovl-64k.final" "-b 4096" "" "top mid base" \
    "$(overlay top ovl-ovl 4K)" "[layer mid]
format = overlay
path = $S/ovl-64k.ovl
read-only = true" "$RO_BASE"
shape read-only-disk read-only "$S/ovl-64k.final" "-d 20" "" "mid base" "[layer mid]
format = overlay
path = $S/ovl-64k.ovl
read-only = true" "$RO_BASE"
shape ovl-rcache-ovl persistent "$S/base.raw" "-b 4096" "" "top cache base" \
    "$(overlay top ovl-rc 4K)" "$(overlay cache ovl-rc-cache 64K 'read-cache = true')" "$RO_BASE"
shape ovl-rcache-ram persistent "$S/base.raw" "-b 65536" "" "top cache base" \
    "$(overlay top ovl-rcram 64K)" "[layer cache]
format = ram
read-cache = true
block-size = 4K" "$RO_BASE"

# ---- write-through ------------------------------------------------------------------------
cp "$S/base.raw" "$S/wt1.raw"
shape wt-ovl-raw persistent "$S/base.raw" "-b 1048576 -d 10" "" "top base" \
    "$(overlay top wt-ovl 1M 'write-through = true')" "[layer base]
path = $S/wt1.raw"
cp "$S/base.raw" "$S/wt2.raw"
shape wt-ram-raw persistent "$S/base.raw" "-b 4096" "" "top base" "[layer top]
format = ram
write-through = true
block-size = 4K" "[layer base]
path = $S/wt2.raw
direct = false"
shape wt-ovl-ovl-raw persistent "$S/base.raw" "-b 65536" "" "top mid base" \
    "$(overlay top wt-top 64K 'write-through = true')" "$(overlay mid wt-mid 4K)" "$RO_BASE"

done_testing
