#!/bin/sh
# SPDX-License-Identifier: MIT
# The configuration parser: key file and inline --disk, accepted and rejected (GTest, see t/unit/lf-config.c).
# Each case runs in a process of its own (tu_add_isolated) and --keep-going goes on past a
# failed one, so a failure is one "not ok" and the other cases still run.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/lf-config" --tap --keep-going
