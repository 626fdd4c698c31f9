#!/bin/sh
# SPDX-License-Identifier: MIT
# The configuration parser: key file and inline --disk, accepted and rejected (GTest, see t/unit/lf-config.c).
exec "${LAYERFS_BUILDDIR:-$(dirname "$0")/..}/t/bin/lf-config" --tap
