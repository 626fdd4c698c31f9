#!/bin/sh
# SPDX-License-Identifier: MIT
# blockcore randomized model test against the ram driver.
# GTest program t/unit/bc-model.c; LAYERFS_TEST_SEED overrides its seeds.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/bc-model" --tap --keep-going
