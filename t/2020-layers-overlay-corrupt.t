#!/bin/sh
# SPDX-License-Identifier: MIT
# Corrupted and truncated overlays: clear errors, no crash; a mutation fuzz loop over the parser (GTest, see t/unit/layers-overlay.c).
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/layers-overlay" --tap
