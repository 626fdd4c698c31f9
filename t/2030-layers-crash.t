#!/bin/bash
# SPDX-License-Identifier: MIT
# Crash safety of overlays across power cuts: the overlay sits on the fault driver's
# volatile write cache, so a cut loses every write not flushed (but a random half reached
# the file early, in any order); after each cut, layerfs-img check is clean and every
# write fsync acknowledged is intact.  LAYERFS_CRASH_CYCLES sets the number of cuts.
. "$(dirname "$0")/tap.sh"
require_fuse
CRASH=$BUILDDIR/t/bin/layers-crash
[ -x "$CRASH" ] || skip_all "t/bin/layers-crash not built"
cycles=${LAYERFS_CRASH_CYCLES:-10}
bss=(4K 64K 1M)

# conf DIR BLOCK-SIZE DRIVER-KEYS: a disk d of an overlay over a read-only raw base.
conf() {
    cat <<CONF
[disk d]
layers = top base

[layer top]
format = overlay
path = $1/top.ovl
create = true
block-size = $2
$3

[layer base]
format = raw
path = $1/base.raw
read-only = true
CONF
}

acked() { od -An -t u8 "$1/ack" 2>/dev/null | tr -d ' '; }

for ((c = 1; c <= cycles; c++)); do
    seed=$((${LAYERFS_TEST_SEED:-1000} + c))
    RANDOM=$seed
    dir=$SCRATCH/c$c
    bs=${bss[$((c % 3))]}
    mkdir -p "$dir/mnt"
    "$CRASH" init "$dir/base.raw" $((16 << 20)) "$seed"
    # Two cycles in three cut the power when a chosen flush arrives (the crash lands right
    # inside a flush cycle of the overlay); the third at a random moment, by kill -9.
    keys="driver = fault
fault-writeback = 50
fault-seed = $seed"
    how="kill -9 at a random moment"
    if ((c % 3)); then
        cut=$((RANDOM % 40 + 4))
        keys="$keys
fault-power-cut = $cut"
        how="power cut at flush $cut"
    fi
    conf "$dir" "$bs" "$keys" >"$dir/crash.conf"
    conf "$dir" "$bs" "" >"$dir/layerfs.conf"
    start_daemon "$dir/mnt" -c "$dir/crash.conf" || { _t_result 1 "cycle $c: mount"; continue; }
    "$CRASH" write "$dir/mnt/d" "$seed" "$dir/ack" >"$dir/writer.log" 2>&1 &
    wpid=$!
    # Run until the writer stops (the power cut failed its I/O) or, once fsync has
    # acknowledged something, for a random 0.1 to 0.9 s more (3 s for a cut that should
    # have come); 20 s at most.
    until_ms=$((c % 3 ? 3000 : RANDOM % 9 * 100 + 100))
    end=$((SECONDS + 20))
    for ((t = 0, since = -1; SECONDS < end; t++)); do
        kill -0 "$wpid" 2>/dev/null || break
        a=$(acked "$dir")
        if ((since < 0)) && [ "${a:-0}" -gt 0 ]; then since=$t; fi
        if ((since >= 0 && (t - since) * 10 >= until_ms)); then break; fi
        sleep 0.01
    done
    _t_force_stop                   # kill -9: the cache's unflushed writes are gone
    wait "$wpid" 2>/dev/null
    a=$(acked "$dir")
    ok "cycle $c ($how, block size $bs, seed $seed): fsync acknowledged writes (${a:-none})" \
        test "${a:-0}" -gt 0
    if ((c % 3)); then
        # Else this was a kill -9 cycle in disguise: the cut must have failed the writer.
        ok "cycle $c: the power cut came (the writer saw EIO)" \
            grep -q "Input/output error" "$dir/writer.log"
    fi
    ok "cycle $c: layerfs-img check is clean after the power cut" \
        "$LAYERFS_IMG" check "$dir/top.ovl"
    # Remount on the file driver: what verify reads is what reached the file.
    start_daemon "$dir/mnt" -c "$dir/layerfs.conf" || { _t_result 1 "cycle $c: remount"; continue; }
    ok "cycle $c: every write fsync acknowledged is intact" \
        "$CRASH" verify "$dir/mnt/d" "$seed" "$dir/ack"
    stop_daemon
    like "$("$LAYERFS_IMG" info "$dir/top.ovl")" "state: +clean" "cycle $c: clean after unmount"
done
done_testing
