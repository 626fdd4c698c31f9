#!/bin/sh
# SPDX-License-Identifier: MIT
# Zeroing and discarding decide per block in every stack shape (GTest, see
# t/unit/layers-zero.c); each case runs in a process of its own.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/layers-zero" --tap --keep-going
