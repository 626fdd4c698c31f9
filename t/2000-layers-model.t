#!/bin/sh
# SPDX-License-Identifier: MIT
# Randomized model test of whole layer stacks through lf_disk_* (GTest, see t/unit/layers-model.c).  LAYERFS_TEST_SEED overrides the seed.
# Each case runs in a process of its own (tu_add_isolated) and --keep-going goes on past a
# failed one, so a failure is one "not ok" and the other cases still run.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/layers-model" --tap --keep-going
