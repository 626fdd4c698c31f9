#!/bin/sh
# SPDX-License-Identifier: MIT
# blockcore write serialization and parallelism.
# GTest program t/unit/bc-concurrency.c; LAYERFS_TEST_SEED overrides its seeds.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/bc-concurrency" --tap --keep-going
