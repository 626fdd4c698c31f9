#!/bin/sh
# SPDX-License-Identifier: MIT
# Corrupted and truncated overlays: clear errors, no crash; a mutation fuzz loop over the parser (GTest, see t/unit/layers-overlay.c).
# Each case runs in a process of its own (tu_add_isolated) and --keep-going goes on past a
# failed one, so a failure is one "not ok" and the other cases still run.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/layers-overlay" --tap --keep-going
