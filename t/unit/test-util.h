/* SPDX-License-Identifier: MIT */
/* Helpers shared by the blockcore unit tests: GTest setup with a watchdog, seeds, device
 * opening, synchronous wrappers that run a loop until callbacks fire, buffers and models. */
#ifndef LAYERFS_TEST_UTIL_H
#define LAYERFS_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <glib.h>

#include "blockcore/blockcore.h"
#include "blockcore/testing.h"
#include "drivers/drivers.h"

/* g_test_init() for programs that register cases with tu_add_isolated(): in the
 * subprocess that runs one case, the case's TAP comments still reach the parent's output;
 * a failure outside any case prints no "Bail out!", which would stop prove's whole run. */
void tu_test_init(int *argc, char ***argv);
/* g_test_add_func(), but the case runs in a subprocess of its own, so that a failed
 * assertion or a crash makes only this case "not ok" (run the program with --keep-going
 * and the other cases still run); a g_test_skip() there skips the case. */
void tu_add_isolated(const char *path, GTestFunc fn);
/* g_test_add_data_func() with the case in a subprocess of its own, as tu_add_isolated(). */
void tu_add_isolated_data(const char *path, gconstpointer data, GTestDataFunc fn);
/* g_test_add() (a fresh fixture around the case) in a subprocess of its own, likewise. */
#define tu_add_isolated_fixture(path, Fixture, tdata, fsetup, ftest, fteardown)          \
    G_STMT_START {                                                                      \
        if (tu_isolate(path))                                                           \
            g_test_add(path, Fixture, tdata, fsetup, ftest, fteardown);                 \
    } G_STMT_END
/* For tu_add_isolated*(): false after registering path as a case that runs it again in a
 * subprocess; true in that subprocess, where the caller registers the real case at path. */
bool tu_isolate(const char *path);
/* tu_test_init() plus: warnings are not fatal (drivers log fallbacks), a watchdog that
 * ends the program after watchdog_s seconds instead of hanging CI. */
void tu_init(int *argc, char ***argv, unsigned watchdog_s);
/* The seed for a test: LAYERFS_TEST_SEED if set, else fixed_seed; printed as a TAP comment. */
guint32 tu_seed(guint32 fixed_seed);

/* Open drv with NULL-terminated key/value option pairs; aborts the test on failure. */
struct bc_dev *tu_open(const struct bc_driver *drv, const char *path, bool read_only,
                       bool direct, ...) G_GNUC_NULL_TERMINATED;
/* Same, returning NULL and *errp on failure. */
struct bc_dev *tu_try_open(const struct bc_driver *drv, const char *path, bool read_only,
                           bool direct, GError **errp, ...) G_GNUC_NULL_TERMINATED;
/* A ram device; 0 for mem_align/max_transfer leaves the driver default. */
struct bc_dev *tu_open_ram(uint64_t size, uint32_t align, uint32_t mem_align,
                           uint32_t max_transfer);
/* A fault device over ram, same parameters. */
struct bc_dev *tu_open_fault(uint64_t size, uint32_t align, uint32_t mem_align,
                             uint32_t max_transfer);

/* One outstanding request: the callback records res and decrements *pending. */
struct tu_io {
    int res;
    bool done;
    unsigned *pending;
    uint64_t tag;
};
/* bc_cb for struct tu_io. */
void tu_io_cb(void *opaque, int res);
/* Prepare io for a request and count it in *pending. */
void tu_io_start(struct tu_io *io, unsigned *pending);
/* A loop for the calling thread; aborts the test on failure. */
struct bc_loop *tu_loop_new(void);
/* Free a loop made by tu_loop_new() once its safety tick (if any) has fired. */
void tu_loop_free(struct bc_loop *loop);
/* Run loop until *pending is 0 with bc_loop_wait(), as the layers and tools wait.  A short
 * io_uring timeout bounds its first sleep; a loop that sleeps after running the completing
 * task (see /loop/run-once-after-defer) hangs and the watchdog fails the test. */
void tu_run_until_done(struct bc_loop *loop, unsigned *pending);
/* One blocking iteration with the safety tick armed. */
void tu_run_once(struct bc_loop *loop);

/* Synchronous wrappers: start, check the callback did not run inside, run the loop. */
int tu_preadv(struct bc_dev *dev, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
              uint64_t off);
int tu_pwritev(struct bc_dev *dev, struct bc_loop *loop, const struct iovec *iov, int iovcnt,
               uint64_t off, unsigned flags);
int tu_pread(struct bc_dev *dev, struct bc_loop *loop, void *buf, size_t len, uint64_t off);
int tu_pwrite(struct bc_dev *dev, struct bc_loop *loop, const void *buf, size_t len,
              uint64_t off);
int tu_zero(struct bc_dev *dev, struct bc_loop *loop, uint64_t off, uint64_t len,
            unsigned flags);
int tu_discard(struct bc_dev *dev, struct bc_loop *loop, uint64_t off, uint64_t len);
int tu_flush(struct bc_dev *dev, struct bc_loop *loop);

/* A buffer at a chosen misalignment from a page boundary, with guard bytes both sides. */
struct tu_buf {
    uint8_t *base;
    uint8_t *p;
    size_t len;
    size_t misalign;
};
#define TU_GUARD 64
/* Allocate len bytes at p = page boundary + misalign; guards filled with a pattern. */
void tu_buf_init(struct tu_buf *b, size_t len, size_t misalign);
/* Assert the guards are intact. */
void tu_buf_check_guards(const struct tu_buf *b, const char *what);
/* Free. */
void tu_buf_free(struct tu_buf *b);

#define TU_MAX_IOV 64
/* Split [buf, buf+len) into at most max random iovecs (some may be empty); returns count. */
int tu_split_iov(GRand *r, uint8_t *buf, size_t len, struct iovec *iov, int max);
/* Fill with pseudo-random bytes. */
void tu_fill_random(GRand *r, uint8_t *buf, size_t len);

/* The in-memory model of a device: bytes and whether each is known. */
struct tu_model {
    uint64_t size;
    uint8_t *data;
    uint8_t *known;         /* 1 = data[] is what the device must return */
};
/* A model of size bytes, all known, all zero (or unknown if !known). */
void tu_model_init(struct tu_model *m, uint64_t size, bool known);
/* Free. */
void tu_model_free(struct tu_model *m);
/* Record a write of buf at off (clipped to size). */
void tu_model_write(struct tu_model *m, uint64_t off, const uint8_t *buf, uint64_t len);
/* Record zeroes. */
void tu_model_zero(struct tu_model *m, uint64_t off, uint64_t len);
/* Record that [off, off+len) may now hold anything. */
void tu_model_forget(struct tu_model *m, uint64_t off, uint64_t len);
/* Compare a read of got at off; bytes past size must be zero. False and a diagnostic
 * naming ctx and the first differing byte on mismatch. */
bool tu_model_check(const struct tu_model *m, uint64_t off, const uint8_t *got, uint64_t len,
                    const char *ctx);
/* Read the whole device in chunks and compare with the model. */
bool tu_model_verify_dev(const struct tu_model *m, struct bc_dev *dev, struct bc_loop *loop,
                         const char *ctx);

/* Compare two byte arrays, printing the first difference; false on mismatch. */
bool tu_cmp(const uint8_t *got, const uint8_t *want, size_t len, uint64_t base,
            const char *ctx);

#endif
