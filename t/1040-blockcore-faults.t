#!/bin/sh
# SPDX-License-Identifier: MIT
# blockcore error paths through the fault driver.
# GTest program t/unit/bc-faults.c; LAYERFS_TEST_SEED overrides its seeds.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/bc-faults" --tap --keep-going
