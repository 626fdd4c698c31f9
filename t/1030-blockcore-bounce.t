#!/bin/sh
# SPDX-License-Identifier: MIT
# blockcore bounce-buffer budget.
# GTest program t/unit/bc-bounce.c; LAYERFS_TEST_SEED overrides its seeds.
# Each case runs in a process of its own (tu_add_isolated) and --keep-going goes on past a
# failed one, so a failure is one "not ok" and the other cases still run.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/bc-bounce" --tap --keep-going
