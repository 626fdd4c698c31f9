#!/bin/sh
# SPDX-License-Identifier: MIT
# blockcore file driver: O_DIRECT on ext4, tmpfs, read-only, loop devices (GTest, see
# t/unit/bc-file.c).  Detaches loop devices a crashed run left behind.
bin="${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/bc-file"
# GTest prints "Bail out!" when an assertion fails, which would stop prove's whole run;
# turn it into a comment so that only this file fails (its exit status still says so).
exec 3>&1
rc=$({ { "$bin" --tap --keep-going; echo $? >&4; } | sed 's/^Bail out!/# Bail out!/' >&3; } 4>&1)
if command -v losetup >/dev/null 2>&1; then
    for img in /var/tmp/layerfs-1050-*/loop-*.img; do
        [ -e "$img" ] || continue
        losetup -j "$img" 2>/dev/null | cut -d: -f1 | while read -r dev; do
            losetup -d "$dev" 2>/dev/null
        done
    done
fi
exit $rc
