#!/bin/sh
# SPDX-License-Identifier: MIT
# The page-bitmap allocator with FIFO waiters (blockcore/pagemap.c) behind the I/O buffer
# arenas and the virtio-blk bounce pool.  GTest program t/unit/bc-pagemap.c.
# Each case runs in a process of its own (tu_add_isolated) and --keep-going goes on past a
# failed one, so a failure is one "not ok" and the other cases still run.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/bc-pagemap" --tap --keep-going
