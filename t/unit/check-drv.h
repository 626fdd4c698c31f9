/* SPDX-License-Identifier: MIT */
/* A checking test driver: a ram disk that verifies, on every driver request, what the
 * generic layer promises drivers (alignment, limits, no overlapping writes in flight). */
#ifndef LAYERFS_TEST_CHECK_DRV_H
#define LAYERFS_TEST_CHECK_DRV_H

#include <stdbool.h>
#include <stdint.h>

#include "blockcore/blockcore.h"
#include "blockcore/testing.h"
#include "drivers/drivers.h"

/* Keys: the ram driver's (size, align, mem-align, max-transfer) and fua-native (0 or 1,
 * default 1).  Every driver request is checked; violations are counted, the first one
 * described.  Overlapping WRITE/WRITE_ZEROES/DISCARD requests in flight together count as
 * violations: callers must only issue byte-disjoint requests at once (as the model tests
 * do), so any overlap comes from the engine's serialization. */
extern const struct bc_driver tu_drv_check;

/* One logged driver event. */
struct tu_check_event {
    enum bc_op op;
    bool done;              /* false: submitted, true: completed */
    unsigned flags;
    uint64_t offset, len;
};

#define TU_CHECK_LOG 64

struct tu_check_stats {
    uint64_t requests[5];   /* by enum bc_op */
    uint64_t fua_flags;     /* WRITE requests that carried BC_REQ_FUA */
    uint64_t violations;
    char first_violation[256];
    unsigned nlog;          /* events in log[] since tu_check_log_reset() */
    struct tu_check_event log[TU_CHECK_LOG];
};

/* Snapshot the counters of dev (which must use tu_drv_check). */
void tu_check_get(struct bc_dev *dev, struct tu_check_stats *st);
/* Start a fresh event log. */
void tu_check_log_reset(struct bc_dev *dev);

#endif
