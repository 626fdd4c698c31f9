#!/bin/sh
# SPDX-License-Identifier: MIT
# Which FUSE protocol versions get layerfs's own OPEN reply (GTest, see t/unit/fuse-open.c).
# Each case runs in a process of its own (tu_add_isolated) and --keep-going goes on past a
# failed one, so a failure is one "not ok" and the other cases still run.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/fuse-open" --tap --keep-going
