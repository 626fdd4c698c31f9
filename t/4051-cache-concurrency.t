#!/bin/sh
# SPDX-License-Identifier: MIT
# Bounded read caches (GTest, see t/unit/layers-cache.c): figures against known traffic,
# readers on three threads racing evictions, batches that lock among queued multi-block
# reads without hanging (a one-minute bound), a restart with a smaller cache-size, power
# cuts while evicting (no present block ever reads as a punched one), and the
# refusal of a bounded cache that a writable disk writes to.
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/layers-cache" --tap --keep-going
