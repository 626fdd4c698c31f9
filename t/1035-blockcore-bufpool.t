#!/bin/sh
# SPDX-License-Identifier: MIT
# blockcore I/O buffer arenas behind bc_buf_alloc().
# GTest program t/unit/bc-bufpool.c; LAYERFS_TEST_SEED overrides its seeds.
bin="${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/bc-bufpool"
# GTest prints "Bail out!" when an assertion fails, which would stop prove's whole run;
# turn it into a comment so that only this file fails (its exit status still says so).
exec 3>&1
rc=$({ { "$bin" --tap --keep-going; echo $? >&4; } | sed 's/^Bail out!/# Bail out!/' >&3; } 4>&1)
exit "$rc"
