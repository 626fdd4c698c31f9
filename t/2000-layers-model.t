#!/bin/sh
# SPDX-License-Identifier: MIT
# Randomized model test of whole layer stacks through lf_disk_* (GTest, see t/unit/layers-model.c).  LAYERFS_TEST_SEED overrides the seed.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/layers-model" --tap
