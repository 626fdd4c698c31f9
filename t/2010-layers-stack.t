#!/bin/sh
# SPDX-License-Identifier: MIT
# Read caches, write-through, unmap and stack validation (GTest, see t/unit/layers-stack.c).
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/layers-stack" --tap
