/* SPDX-License-Identifier: MIT */
/* The power-cut replay's second half: read the logwrites log, rebuild every state a power
 * cut could leave, check each (see "Notes on the design" in powercut.h). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "t/unit/powercut.h"

struct pc_span {
    uint64_t off, len;
};

struct pc_rec {
    enum lw_type type;
    uint64_t seq, off, len;
    const uint8_t *data;    /* LW_INIT, LW_WRITE: in the mapped log */
    uint64_t end;           /* the log offset just past the record */
};

/* ---- the log -------------------------------------------------------------------------- */

static uint64_t pc_get(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Parse the log (mapped at m, len bytes) into pc->recs; exit 2 if it is malformed. */
static void pc_parse_log(struct pc *pc, const uint8_t *m, uint64_t len)
{
    if (len < LW_HDR_SIZE || memcmp(m, LW_MAGIC, 8) != 0 || pc_get(m + 8, 4) != LW_VERSION ||
        pc_get(m + 12, 4) != LW_REC_SIZE) {
        fprintf(stderr, "powercut: %s: not a version %u log\n", pc->log, LW_VERSION);
        exit(2);
    }
    pc->dev_size = pc_get(m + 16, 8);
    /* Requests may run past the size up to the next req_align boundary (blockcore.h). */
    uint64_t align = MAX(pc_get(m + 24, 4), 1);
    uint64_t limit = (pc->dev_size + align - 1) / align * align;
    for (uint64_t p = LW_HDR_SIZE; p < len;) {
        struct pc_rec rec = {
            .type = (enum lw_type)pc_get(m + p, 4),
            .seq = pc_get(m + p + 8, 8),
            .off = pc_get(m + p + 16, 8),
            .len = pc_get(m + p + 24, 8),
        };
        bool data = rec.type == LW_INIT || rec.type == LW_WRITE;
        if (p + LW_REC_SIZE > len || rec.type < LW_INIT || rec.type > LW_FLUSH_DONE ||
            rec.seq != pc->recs->len + 1 ||
            (rec.type <= LW_DISCARD && (rec.off > limit || rec.len > limit - rec.off)) ||
            (data && p + LW_REC_SIZE + rec.len > len) ||
            (rec.type == LW_FLUSH_DONE && (rec.off == 0 || rec.off >= rec.seq ||
                                           g_array_index(pc->recs, struct pc_rec,
                                                         rec.off - 1).type != LW_FLUSH))) {
            fprintf(stderr, "powercut: %s: bad record at offset %" PRIu64 "\n", pc->log, p);
            exit(2);
        }
        rec.data = m + p + LW_REC_SIZE;
        p += LW_REC_SIZE + (data ? rec.len : 0);
        rec.end = p;
        g_array_append_val(pc->recs, rec);
    }
}

/* ---- building and checking one state ----------------------------------------------------- */

static void pc_pwrite(struct pc *pc, const void *buf, uint64_t len, uint64_t off)
{
    len = MIN(len, pc->dev_size - MIN(off, pc->dev_size));
    if (len > 0 && pwrite(pc->img_fd, buf, len, (off_t)off) != (ssize_t)len)
        g_error("%s: %s", pc->img, g_strerror(errno));
}

/* Apply [off, off+len) of rec (all of it: off = rec->off, len = rec->len) to mem (if not
 * NULL) and the image file; a discard as zeros when zero_discard, else left as it was. */
static void pc_apply(struct pc *pc, uint8_t *mem, const struct pc_rec *rec, uint64_t off,
                     uint64_t len, bool zero_discard)
{
    static const uint8_t zeros[65536];

    len = MIN(len, pc->dev_size - MIN(off, pc->dev_size));
    if (rec->type == LW_INIT || rec->type == LW_WRITE) {
        const uint8_t *src = rec->data + (off - rec->off);
        if (mem != NULL)
            memcpy(mem + off, src, len);
        pc_pwrite(pc, src, len, off);
    } else if (rec->type == LW_ZERO || (rec->type == LW_DISCARD && zero_discard)) {
        if (mem != NULL)
            memset(mem + off, 0, len);
        for (uint64_t o = 0; o < len; o += sizeof(zeros))
            pc_pwrite(pc, zeros, MIN(sizeof(zeros), len - o), off + o);
    }
}

/* Apply acknowledged operation i to the model, byte by byte unless a later one set it. */
static void pc_model_apply(struct pc *pc, uint32_t i)
{
    const struct pc_op *op = &g_array_index(pc->ops, struct pc_op, i);

    if (op->kind == PC_FLUSH)
        return;
    for (uint64_t o = op->off; o < op->off + op->len; o++) {
        if ((pc->wid[o] & ~PC_ZOK) >= i + 1)
            continue;
        if (op->kind == PC_WRITE)
            pc->want[o] = pc_val(i + 1, o);
        else if (op->kind == PC_ZERO)
            pc->want[o] = 0;
        pc->wid[o] = (i + 1) | (op->kind == PC_DISCARD ? PC_ZOK : 0);
    }
}

/* Check the state now in pc->img: the format's check, then every byte through the layers. */
static bool pc_verify(struct pc *pc, uint32_t upto, uint64_t end_pos, GString *why)
{
    if (pc->fmt != NULL && pc->fmt->check != NULL && !pc->fmt->check(pc->img, why)) {
        g_string_prepend(why, "the format's check: ");
        return false;
    }
    g_autoptr(GError) err = NULL;
    struct lf_disk_cfg *cfg = pc_disk_cfg(pc, false);
    struct lf_disk *d = lf_disk_open(cfg, true, &err);
    lt_disk_free(cfg);
    if (d == NULL) {
        g_string_append_printf(why, "does not open: %s", err->message);
        return false;
    }
    int r = lt_read(d, pc->loop, pc->got, pc->size, 0);
    lf_disk_close(d);
    if (r < 0) {
        g_string_append_printf(why, "read: %s", g_strerror(-r));
        return false;
    }
    /* The bytes that are not what the acknowledgements require... */
    uint64_t nbad = 0, first = UINT64_MAX;
    g_autoptr(GArray) marked = g_array_new(false, false, sizeof(uint64_t));
    for (uint64_t c = 0; c < pc->size; c += 4096) {
        uint64_t n = MIN(4096, pc->size - c);
        if (memcmp(pc->got + c, pc->want + c, n) == 0)
            continue;
        g_array_append_val(marked, c);
        for (uint64_t o = c; o < c + n; o++)
            if (pc->got[o] != pc->want[o] && !(pc->got[o] == 0 && (pc->wid[o] & PC_ZOK))) {
                pc->bad[o] = 1;
                nbad++;
            }
    }
    /* ... may be what an operation not acknowledged yet, issued by then, wrote. */
    for (uint32_t i = upto; i < pc->ops->len && nbad > 0; i++) {
        const struct pc_op *op = &g_array_index(pc->ops, struct pc_op, i);
        if (op->start_pos >= end_pos)
            break;
        if (op->kind == PC_FLUSH)
            continue;
        for (uint64_t o = op->off; o < op->off + op->len; o++)
            if (pc->bad[o] && pc->got[o] == (op->kind == PC_WRITE ? pc_val(i + 1, o) : 0)) {
                pc->bad[o] = 0;
                nbad--;
            }
    }
    for (first = 0; nbad > 0 && !pc->bad[first]; first++)
        ;
    for (guint i = 0; i < marked->len; i++) {     /* pc->bad is all zeros between calls */
        uint64_t c = g_array_index(marked, uint64_t, i);
        memset(pc->bad + c, 0, MIN(4096, pc->size - c));
    }
    if (nbad == 0)
        return true;
    uint32_t w = pc->wid[first] & ~PC_ZOK;
    g_autofree char *by = w ? g_strdup_printf("operation %u", w - 1) : g_strdup("initial data");
    g_string_append_printf(why, "disk offset %" PRIu64 " reads 0x%02x (and %" PRIu64 " more "
                           "bytes are wrong): acknowledged is 0x%02x (%s) and no operation "
                           "since wrote that there", first, pc->got[first], nbad - 1,
                           pc->want[first], by);
    return false;
}

static const char *const pc_type_names[] = {
    [LW_INIT] = "init", [LW_WRITE] = "write", [LW_ZERO] = "zero", [LW_DISCARD] = "discard",
    [LW_FLUSH] = "flush", [LW_FLUSH_DONE] = "flush-done",
};

/* Replay every state; false if one failed. */
bool pc_replay(struct pc *pc)
{
    struct stat st;
    int lfd = open(pc->log, O_RDONLY | O_CLOEXEC);

    if (lfd < 0 || fstat(lfd, &st) < 0)
        g_error("%s: %s", pc->log, g_strerror(errno));
    uint8_t *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, lfd, 0);
    if (m == MAP_FAILED)
        g_error("%s: mmap: %s", pc->log, g_strerror(errno));
    close(lfd);
    g_autoptr(GError) err = NULL;
    /* The thread's loop: every synchronous open, check and close of a state uses it. */
    pc->loop = bc_loop_new(0, 64, &err);
    if (pc->loop == NULL)
        g_error("powercut: %s", err->message);
    pc->recs = g_array_new(false, false, sizeof(struct pc_rec));
    pc_parse_log(pc, m, (uint64_t)st.st_size);

    guint nrec = pc->recs->len;
    const struct pc_rec *rec = (const struct pc_rec *)(void *)pc->recs->data;
    pc->durable = g_malloc0(pc->dev_size);
    pc->img_fd = open(pc->img, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (pc->img_fd < 0 || ftruncate(pc->img_fd, (off_t)pc->dev_size) < 0)
        g_error("%s: %s", pc->img, g_strerror(errno));
    pc->want = g_malloc(pc->size);
    pc->wid = g_malloc0(pc->size * sizeof(uint32_t));
    pc->got = g_malloc(pc->size);
    pc->bad = g_malloc0(pc->size);
    for (uint64_t o = 0; o < pc->size; o++)
        pc->want[o] = pc_initial(o);

    /* The flushes done so far: the durable records are those before the latest LW_FLUSH
     * of them. */
    guint durable = 0, applied = 0, ack = 0;
    uint32_t upto = 0;
    unsigned states = 0;
    while (durable < nrec && rec[durable].type == LW_INIT)
        durable++;
    for (gint point = -1; point < (gint)nrec && pc->failures < 3; point++) {
        /* A power cut right after a flush is done, or right after an acknowledgement. */
        bool acked = ack < pc->acks->len && point >= 0 &&
                     g_array_index(pc->acks, struct pc_ack, ack).pos <= rec[point].end;
        if (point >= 0 && rec[point].type != LW_FLUSH_DONE && !acked)
            continue;
        if (point >= 0 && rec[point].type == LW_FLUSH_DONE)
            durable = MAX(durable, (guint)rec[point].off - 1);  /* seq - 1 = index */
        uint64_t point_end = point >= 0 ? rec[point].end
                             : durable > 0 ? rec[durable - 1].end : LW_HDR_SIZE;
        for (; applied < durable; applied++)
            pc_apply(pc, pc->durable, &rec[applied], rec[applied].off, rec[applied].len, true);
        /* The acknowledgements logged by now. */
        for (; ack < pc->acks->len; ack++) {
            const struct pc_ack *a = &g_array_index(pc->acks, struct pc_ack, ack);
            if (a->pos > point_end)
                break;
            if (a->fua >= 0) {
                pc_model_apply(pc, (uint32_t)a->fua);
                continue;
            }
            for (; upto < a->upto; upto++)
                pc_model_apply(pc, upto);
        }
        /* The window: after the durable records, up to the next LW_FLUSH_DONE. */
        guint wend = MAX((guint)(point + 1), durable);
        while (wend < nrec && rec[wend].type != LW_FLUSH_DONE)
            wend++;
        guint nwin = 0;
        for (guint k = durable; k < wend; k++)
            nwin += rec[k].type <= LW_DISCARD;
        uint64_t end_pos = wend < nrec ? rec[wend].end : (uint64_t)st.st_size;
        unsigned ntrials = nwin == 0 ? 1 : 2 + pc->trials;
        for (unsigned t = 0; t < ntrials && pc->failures < 3; t++) {
            guint32 tseed = pc->seed ^ ((guint32)(point + 2) * 2654435761u) ^ (t * 40503u);
            GRand *r = g_rand_new_with_seed(tseed);
            g_autoptr(GString) chosen = g_string_new(NULL);
            g_autoptr(GString) why = g_string_new(NULL);
            GArray *undo = g_array_new(false, false, sizeof(struct pc_span));

            /* Trial 0: none of the window; 1: all of it; then random subsets. */
            for (guint k = durable; k < wend; k++) {
                const struct pc_rec *w = &rec[k];
                if (w->type > LW_DISCARD)
                    continue;
                int how = t == 0 ? 0 : t == 1 ? 1 : g_rand_int_range(r, 0, 3);
                if (how == 2 && (pc->tear == 0 || w->len <= pc->tear))
                    how = g_rand_boolean(r);
                if (how == 0)
                    continue;
                g_string_append_printf(chosen, " %s#%" PRIu64 "%s", pc_type_names[w->type],
                                       w->seq, how == 2 ? "(torn)" : "");
                struct pc_span span = { w->off, w->len };
                g_array_append_val(undo, span);
                bool zd = g_rand_boolean(r);
                if (how == 1) {
                    pc_apply(pc, NULL, w, w->off, w->len, zd);
                    continue;
                }
                /* Torn: each tear unit (at its absolute offset) made it or not. */
                for (uint64_t o = w->off, e; o < w->off + w->len; o = e) {
                    e = MIN((o / pc->tear + 1) * pc->tear, w->off + w->len);
                    if (g_rand_boolean(r))
                        pc_apply(pc, NULL, w, o, e - o, zd);
                }
            }
            states++;
            if (!pc_verify(pc, upto, end_pos, why)) {
                pc->failures++;
                g_autofree char *keep = g_strdup_printf("%s.%u", pc->img, pc->failures);
                g_autofree char *cmd = g_strdup_printf("cp --sparse=always '%s' '%s'", pc->img,
                                                       keep);
                fprintf(stderr, "powercut: %s block size %u seed %u: power cut after log "
                        "record %d (%s), trial %u (seed %u): %s\n  durable: records 1..%u; "
                        "also applied:%s\n  state kept as %s\n", pc->format, pc->bs, pc->seed,
                        point + 1, point < 0 ? "before any flush" : pc_type_names[rec[point].type],
                        t, tseed, why->str, durable, chosen->len ? chosen->str : " none",
                        system(cmd) == 0 ? keep : "(cannot copy)");
            }
            /* Back to the durable state. */
            for (guint u = 0; u < undo->len; u++) {
                const struct pc_span *span = &g_array_index(undo, struct pc_span, u);
                if (span->off < pc->dev_size)
                    pc_pwrite(pc, pc->durable + span->off, span->len, span->off);
            }
            g_array_free(undo, true);
            g_rand_free(r);
        }
    }
    printf("# %s block size %u seed %u: %u operations, %u acknowledgements, %u log records, "
           "%u states replayed, %u failed\n", pc->format, pc->bs, pc->seed, pc->ops->len,
           pc->acks->len, nrec, states, pc->failures);
    munmap(m, (size_t)st.st_size);
    close(pc->img_fd);
    g_free(pc->durable);
    g_free(pc->want);
    g_free(pc->wid);
    g_free(pc->got);
    g_free(pc->bad);
    g_array_free(pc->recs, true);
    bc_loop_free(pc->loop);
    return pc->failures == 0;
}
