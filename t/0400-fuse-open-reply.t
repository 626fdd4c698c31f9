#!/bin/sh
# SPDX-License-Identifier: MIT
# Which FUSE protocol versions get layerfs's own OPEN reply (GTest, see t/unit/fuse-open.c).
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/fuse-open" --tap
