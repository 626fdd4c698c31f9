#!/bin/sh
# SPDX-License-Identifier: MIT
# Split virtqueue and virtio-blk request building against an in-process fake device, config
# parsing and derived properties (GTest, see t/unit/vq.c).
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/vq" --tap
