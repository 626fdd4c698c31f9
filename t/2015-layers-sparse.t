#!/bin/sh
# SPDX-License-Identifier: MIT
# The sparse engine's range locks grant in arrival order (GTest, see t/unit/layers-sparse.c).
# Each case runs in a process of its own (tu_add_isolated) and --keep-going goes on past a
# failed one, so a failure is one "not ok" and the other cases still run.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/layers-sparse" --tap --keep-going
