/* SPDX-License-Identifier: MIT */
/* Hooks for tests only: switches that turn a mechanism off to show that the tests catch its
 * absence, an old kernel's answer to emulate, and runtime fault injection for the fault
 * driver (drivers/fault.c). */
#ifndef LAYERFS_BLOCKCORE_TESTING_H
#define LAYERFS_BLOCKCORE_TESTING_H

#include "blockcore/blockcore.h"

/* Turn write serialization off (and on again) on one device. */
void bc_dev_set_serialize(struct bc_dev *dev, bool on);

/* While on, bc_loop_sqe() meets -EBUSY on CQ overflow (as on 5.x); returns how often since. */
unsigned bc_loop_emulate_busy(struct bc_loop *loop, bool on);

/* Runtime fault injection for the test-only fault driver: fail ops of kind op (READ or
 * WRITE) that touch [offset, offset+len) with -err, once armed; after_n: fail every
 * request of that kind after the first after_n (-1 = off). */
void bc_fault_set(void *fault_state, enum bc_op op, uint64_t offset, uint64_t len, int err,
                  int64_t after_n);
/* Clear all fault rules. */
void bc_fault_clear(void *fault_state);

#endif
