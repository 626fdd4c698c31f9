#!/bin/sh
# SPDX-License-Identifier: MIT
# blockcore file driver: O_DIRECT on ext4, tmpfs, read-only, loop devices; the logwrites
# driver's log.
# GTest program t/unit/bc-file.c; LAYERFS_TEST_SEED overrides its seeds.
bin="${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/bc-file"
# This run's scratch directory (on /var/tmp: it must be a disk file system), so that
# the clean-up below touches only this run's loop devices, not a concurrent run's.
dir=$(mktemp -d /var/tmp/layerfs-1050-XXXXXX) || { echo "1..0 # SKIP no /var/tmp"; exit 0; }
# Each case runs in a process of its own (tu_add_isolated) and --keep-going goes on past a
# failed one, so a failure is one "not ok" and the other cases still run.
LAYERFS_1050_SCRATCH=$dir "$bin" --tap --keep-going
rc=$?
# Detach loop devices an aborted run left behind on this run's images.
for img in "$dir"/loop-*.img; do
    [ -e "$img" ] || continue
    losetup -j "$img" 2>/dev/null | cut -d: -f1 | while read -r dev; do
        losetup -d "$dev" 2>/dev/null
    done
done
rmdir "$dir" 2>/dev/null    # kept (with its files) when a check failed
exit "$rc"
