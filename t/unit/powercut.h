/* SPDX-License-Identifier: MIT */
/* The power-cut replay (t/unit/powercut.c runs the workload, powercut-replay.c rebuilds and
 * checks the states): what the two halves share. */
#ifndef LAYERFS_T_POWERCUT_H
#define LAYERFS_T_POWERCUT_H

#include "drivers/logwrites.h"
#include "layers/layer.h"
#include "t/unit/layers-test.h"

/*
 * Notes on the design
 *
 * The workload runs batches of one to four operations at once, spread over two I/O threads
 * with a loop each (writes at any offset and length, some FUA; zeroing, some with unmap or
 * FUA; discards; flushes), the operations of a batch on disjoint bytes so their order does
 * not matter.  The byte a
 * write with id i puts at offset o is val(i, o), never zero, so the model needs no copy of
 * the data: an op list, and the acknowledgements -- a flush acknowledges every operation
 * of earlier batches (they completed before it was issued), a FUA write or zeroing itself
 * -- each with the log's length when it came.
 *
 * The log says which states a power cut can leave.  Cut the power right after a record
 * that is an LW_FLUSH_DONE or that an acknowledgement followed: every record before the
 * LW_FLUSH of the latest flush done by then is durable; the records after it, up to the
 * next LW_FLUSH_DONE, each may or may not have reached the medium (and a
 * write may be torn, in LAYERFS_POWERCUT_TEAR units; a discard reads as before or as
 * zeros).  Records after the next LW_FLUSH_DONE are left out: the layer may have issued
 * them only because that flush completed.  Each state is built as a file, checked with the
 * format's offline check (layerfs-img check's, for overlays), opened read-only through
 * lf_disk_open() over the same lower layers, and read whole: every byte must be what the
 * acknowledgements logged by then require, unless an operation not yet acknowledged (and
 * issued before the state's last record) wrote it -- then it may be that value instead.
 * A discarded byte may read as zero until it is written again.
 */

#define PC_MAX_BATCH 4
#define PC_WORKERS 2           /* I/O threads of the workload */
#define PC_DEFAULT_SIZE 4206037u  /* 4 MiB and a part block: the last block is partial */
#define PC_ZOK 0x80000000u     /* model: the byte may also read as zero (a discard) */

enum pc_kind { PC_WRITE, PC_ZERO, PC_DISCARD, PC_FLUSH };

struct pc_op {
    enum pc_kind kind;
    unsigned flags;
    uint64_t off, len;
    uint64_t start_pos;     /* the log's length when it was issued */
};

struct pc_ack {
    uint64_t pos;           /* the log's length when it completed */
    uint32_t upto;          /* operations [0, upto) are acknowledged */
    int64_t fua;            /* or just this one (a FUA write), or -1 */
};

/* What the replay needs from a format beyond the layers API, where it has it. */
struct pc_format {
    const char *name;
    /* Create an empty image of size bytes at path, for a format whose layer cannot
     * (create = true); false + *errp. */
    bool (*create)(const char *path, uint64_t size, uint32_t block_size, GError **errp);
    /* The format's offline check of an image: false and why. */
    bool (*check)(const char *path, GString *why);
};

struct pc {
    const char *format;
    const struct pc_format *fmt;
    uint32_t bs;
    char *dir, *base, *top, *log, *img;
    guint32 seed;
    uint64_t size;          /* the disk */
    unsigned nops, trials;
    uint32_t tear;
    bool over_base;         /* the top holds blocks: over a base, created empty */
    GArray *ops;            /* struct pc_op */
    GArray *acks;           /* struct pc_ack */
    /* The replay. */
    GArray *recs;           /* struct pc_rec */
    uint64_t dev_size;      /* the logged device */
    uint8_t *durable;       /* the device as of the durable records */
    int img_fd;
    uint8_t *want;          /* the model: what the acknowledged operations require */
    uint32_t *wid;          /* op index + 1 that set want[o] (0: the initial data) | PC_ZOK */
    struct bc_loop *loop;   /* the replay's, the thread's current loop */
    uint8_t *got;
    uint8_t *bad;           /* pc_verify's scratch: 1 = a byte not yet explained */
    unsigned failures;
};

/* The byte write id puts at offset o (id 0: the initial data); never zero. */
static inline uint8_t pc_val(uint32_t id, uint64_t o)
{
    uint64_t x = (o ^ ((uint64_t)id << 40)) * 0x9E3779B97F4A7C15ull;
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 32;
    return (uint8_t)(x | 1);
}

/* The initial data: 256 KiB regions, every third a hole. */
static inline uint8_t pc_initial(uint64_t o)
{
    return (o >> 18) % 3 == 1 ? 0 : pc_val(0, o);
}

/* The disk: the workload's (the top layer on logwrites) or a state's (on the replayed image). */
struct lf_disk_cfg *pc_disk_cfg(struct pc *pc, bool workload);
/* Rebuild and check every state the log allows; false (and messages) if one failed. */
bool pc_replay(struct pc *pc);

#endif
