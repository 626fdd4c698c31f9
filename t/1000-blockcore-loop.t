#!/bin/sh
# SPDX-License-Identifier: MIT
# blockcore event loop: defer order, cross-thread posts, stop.
# GTest program t/unit/bc-loop.c; LAYERFS_TEST_SEED overrides its seeds.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/bc-loop" --tap --keep-going
