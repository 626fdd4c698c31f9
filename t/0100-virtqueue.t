#!/bin/sh
# SPDX-License-Identifier: MIT
# Split virtqueue and virtio-blk request building against an in-process fake device, config
# parsing and derived properties (GTest, see t/unit/vq.c).
# Each case runs in a process of its own (tu_add_isolated) and --keep-going goes on past a
# failed one, so a failure is one "not ok" and the other cases still run.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/vq" --tap --keep-going
