#!/bin/sh
# SPDX-License-Identifier: MIT
# blockcore bounce-buffer budget.
# GTest program t/unit/bc-bounce.c; LAYERFS_TEST_SEED overrides its seeds.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/bc-bounce" --tap --keep-going
