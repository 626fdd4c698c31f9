/* SPDX-License-Identifier: MIT */
/* fsx for layerfs (t/3080-fuse-fsx.t): random reads, writes, punched holes, zeroed ranges,
 * fsyncs, SEEK_HOLE/SEEK_DATA, mmap, O_DIRECT and O_DSYNC I/O on an exposed disk file, checked
 * against an in-memory model; a model file carries the expected contents across remounts. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/*
 * Notes on the design
 *
 * One run is one "round": load the model (MODEL, or the file's own contents when MODEL does
 * not exist yet) and compare the whole file with it -- after a remount this is the check
 * that the data survived -- then run OPS random operations, fsync, compare the whole file
 * again and save the model.  The test script runs rounds between clean unmounts and kills.
 *
 * Crash rounds: -u K ends the round with K writes, holes and zeroings and an fsync, saves
 * the model as it was then, and does K more without an fsync, logged to MODEL.pending.
 * After the daemon is killed and the disk remounted, -c compares: every byte must hold its
 * fsynced value or a value one of the unsynced operations put there.  What it holds
 * becomes the model.
 *
 * Operations that the documentation (layerfs(1), NOTES) says fail are done too, and must
 * fail with the documented errno; the few whose errno is not documented are checked
 * against the daemon's code and marked so.
 *
 * Everything is driven by one xorshift generator seeded with SEED, so SEED and the first
 * op number (-N) replay a round exactly; a failure prints both, the last operations and
 * the first differing offset.
 */

#define LOG_LEN 48
#define MAX_LEN (3u << 20)
#define DIO_ALIGN 512u

struct logent {
    unsigned long n;
    char what[24];
    uint64_t off, len;
    long res;
};

struct pend {              /* one unsynced operation of a crash round */
    uint64_t off, len;
    uint8_t *data;          /* NULL: zeros */
};

static struct {
    const char *path, *model_path;
    uint64_t seed, rng;
    unsigned long first, nops, cur;
    uint64_t size, bs;
    int fd, dfd, sfd;       /* dfd: O_DIRECT, or -1; sfd: O_DSYNC (FUA writes) */
    unsigned direct_pct;
    bool use_mmap, read_only, no_dsync;
    uint8_t *model, *buf, *dbuf, *map;
    struct logent log[LOG_LEN];
    unsigned long nlog;
    struct pend *pend;
    size_t npend;
    unsigned long count[16];
} g = { .fd = -1, .dfd = -1, .sfd = -1, .bs = 4096 };

enum { C_READ, C_WRITE, C_PUNCH, C_ZERO, C_SYNC, C_SEEK, C_MREAD, C_MWRITE, C_ERR, C_DIRECT };
static const char *const count_names[] = {
    "reads", "writes", "punches", "zeroings", "fsyncs", "seeks", "map reads", "map writes",
    "error checks", "O_DIRECT", NULL,
};

static uint64_t rnd(void)
{
    uint64_t x = g.rng;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    g.rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [0, n); n > 0. */
static uint64_t below(uint64_t n)
{
    return rnd() % n;
}

static void fill_random(uint8_t *p, uint64_t len)
{
    for (uint64_t i = 0; i < len; i += 8) {
        uint64_t v = rnd();
        memcpy(p + i, &v, len - i < 8 ? len - i : 8);
    }
}

static void logop(const char *what, uint64_t off, uint64_t len, long res)
{
    struct logent *e = &g.log[g.nlog++ % LOG_LEN];

    e->n = g.cur;
    snprintf(e->what, sizeof e->what, "%s", what);
    e->off = off;
    e->len = len;
    e->res = res;
}

static void dump_log(uint64_t at)
{
    unsigned long n = g.nlog < LOG_LEN ? g.nlog : LOG_LEN;

    printf("fsx: last %lu operations (* = covers byte %" PRIu64 "):\n", n, at);
    for (unsigned long i = g.nlog - n; i < g.nlog; i++) {
        const struct logent *e = &g.log[i % LOG_LEN];
        bool covers = at >= e->off && at - e->off < e->len;
        printf("fsx: %c op %lu %-14s %10" PRIu64 " +%-8" PRIu64 " (to %" PRIu64 ") = %ld\n",
               covers ? '*' : ' ', e->n, e->what, e->off, e->len, e->off + e->len, e->res);
    }
}

__attribute__((noreturn, format(printf, 2, 3)))
static void fail_at(uint64_t at, const char *fmt, ...)
{
    va_list ap;

    printf("fsx: FAILED at op %lu (seed %" PRIu64 ", first op %lu) on %s: ", g.cur, g.seed,
           g.first, g.path);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    dump_log(at);
    fflush(stdout);
    exit(1);
}

/* got[] is what the file holds at off; check it against the model. */
static void check(const uint8_t *got, uint64_t off, uint64_t len, const char *what)
{
    const uint8_t *want = g.model + off;

    if (memcmp(got, want, len) == 0)
        return;
    uint64_t k = 0;
    while (got[k] == want[k])
        k++;
    uint64_t x = off + k, end = k;
    while (end < len && got[end] != want[end])
        end++;
    printf("fsx: %s %" PRIu64 "+%" PRIu64 ": first difference at byte %" PRIu64
           " (differs up to %" PRIu64 "); got / model from there:\n", what, off, len, x,
           off + end);
    for (int row = 0; row < 2; row++) {
        const uint8_t *p = row ? want : got;
        printf("fsx:  ");
        for (uint64_t i = k; i < len && i < k + 16; i++)
            printf(" %02x", p[i]);
        printf("\n");
    }
    fail_at(x, "%s mismatch at byte %" PRIu64, what, x);
}

static void full_read(int fd, uint8_t *dst)
{
    for (uint64_t pos = 0; pos < g.size;) {
        ssize_t n = pread(fd, dst + pos, g.size - pos < (1u << 20) ? g.size - pos : 1u << 20,
                          (off_t)pos);
        if (n <= 0)
            fail_at(pos, "reading the whole file at %" PRIu64 ": %s", pos,
                    n < 0 ? strerror(errno) : "unexpected end of file");
        pos += (uint64_t)n;
    }
}

static void full_compare(const char *what)
{
    uint8_t *all = malloc(g.size);

    if (all == NULL)
        fail_at(0, "out of memory");
    full_read(g.fd, all);
    check(all, 0, g.size, what);
    free(all);
}

/* An offset, biased to the top layer's block boundaries and to the ends of the disk. */
static uint64_t pick_off(uint64_t align)
{
    uint64_t off;

    switch (below(6)) {
    case 0: case 1:
        off = below(g.size);
        break;
    case 2: case 3: {
        uint64_t b = below(g.size / g.bs + 1) * g.bs;
        off = b + below(1024) - 512;
        if (off > g.size)  /* wrapped below 0 or past the end */
            off = b > g.size ? g.size : b;
        break;
    }
    case 4:
        off = below(g.size) & ~4095ull;
        break;
    default:
        off = g.size - below(g.size < 3 * g.bs ? g.size : 3 * g.bs) - 1;
        break;
    }
    off -= off % align;
    return off >= g.size ? g.size - align : off;
}

static uint64_t pick_len(uint64_t off, uint64_t align)
{
    uint64_t len;

    switch (below(10)) {
    case 0: case 1: case 2: case 3:
        len = 1 + below(700);
        break;
    case 4: case 5: case 6:
        len = 1 + below(2 * g.bs + 1024);
        break;
    case 7: case 8:
        len = 1 + below(192u << 10);
        break;
    default:
        len = 1 + below(MAX_LEN / 2);
        break;
    }
    len = (len < MAX_LEN ? len + align - 1 : MAX_LEN) / align * align;
    return len < g.size - off ? len : g.size - off;
}

static void do_read(bool direct)
{
    uint64_t a = direct ? DIO_ALIGN : 1, off = pick_off(a), len = pick_len(off, a);
    uint8_t *b = direct ? g.dbuf : g.buf;
    ssize_t n = pread(direct ? g.dfd : g.fd, b, len, (off_t)off);

    logop(direct ? "read O_DIRECT" : "read", off, len, n);
    if (n != (ssize_t)len)
        fail_at(off, "pread %" PRIu64 "+%" PRIu64 " returned %zd (%s)", off, len, n,
                n < 0 ? strerror(errno) : "short");
    check(b, off, len, "read");
    g.count[direct ? C_DIRECT : C_READ]++;
}

static void record_pending(uint64_t off, uint64_t len, const uint8_t *data)
{
    struct pend *p;

    g.pend = realloc(g.pend, (g.npend + 1) * sizeof *g.pend);
    p = &g.pend[g.npend++];
    p->off = off;
    p->len = len;
    p->data = data ? malloc(len) : NULL;
    if (data)
        memcpy(p->data, data, len);
}

static void do_write(bool direct, bool pending)
{
    uint64_t a = direct ? DIO_ALIGN : 1, off = pick_off(a), len = pick_len(off, a);
    uint8_t *b = direct ? g.dbuf : g.buf;

    bool dsync = !direct && !pending && !g.no_dsync && g.sfd >= 0 && below(8) == 0;

    fill_random(b, len);
    ssize_t n = pwrite(direct ? g.dfd : dsync ? g.sfd : g.fd, b, len, (off_t)off);
    logop(direct ? "write O_DIRECT" : dsync ? "write O_DSYNC" : "write", off, len, n);
    if (n != (ssize_t)len)
        fail_at(off, "pwrite %" PRIu64 "+%" PRIu64 " returned %zd (%s)", off, len, n,
                n < 0 ? strerror(errno) : "short");
    memcpy(g.model + off, b, len);
    if (pending)
        record_pending(off, len, b);
    g.count[direct ? C_DIRECT : C_WRITE]++;
}

/* PUNCH_HOLE|KEEP_SIZE or ZERO_RANGE (with or without KEEP_SIZE) over a range that may run
 * past the end when KEEP_SIZE is set. */
static void do_zero(bool punch, bool pending)
{
    uint64_t off = pick_off(1), len = pick_len(off, 1);
    bool keep = punch || below(2);
    int mode = punch ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                     : FALLOC_FL_ZERO_RANGE | (keep ? FALLOC_FL_KEEP_SIZE : 0);
    uint64_t flen = len;

    if (keep && below(8) == 0) {  /* on past the end: the rest is nothing to do */
        len = g.size - off;
        flen = len + 1 + below(1u << 20);
    }

    int r = fallocate(g.fd, mode, (off_t)off, (off_t)flen);
    logop(punch ? "punch" : keep ? "zero keep-size" : "zero", off, flen, r < 0 ? -errno : r);
    if (r < 0)
        fail_at(off, "fallocate(%#x) %" PRIu64 "+%" PRIu64 ": %s", mode, off, flen,
                strerror(errno));
    memset(g.model + off, 0, len);
    if (pending)
        record_pending(off, len, NULL);
    g.count[punch ? C_PUNCH : C_ZERO]++;
}

static void do_sync(void)
{
    bool data = below(2);
    int r = data ? fdatasync(g.fd) : fsync(g.fd);

    logop(data ? "fdatasync" : "fsync", 0, 0, r < 0 ? -errno : r);
    if (r < 0)
        fail_at(0, "%s: %s", data ? "fdatasync" : "fsync", strerror(errno));
    g.count[C_SYNC]++;
}

/* What SEEK_HOLE and SEEK_DATA report as holes must read as zeros. */
static void do_seek(void)
{
    uint64_t off = pick_off(1);
    bool hole = below(2);
    off_t r = lseek(g.fd, (off_t)off, hole ? SEEK_HOLE : SEEK_DATA);

    logop(hole ? "seek hole" : "seek data", off, 0, r < 0 ? -errno : (long)r);
    if (r < 0 && !(errno == ENXIO && !hole))
        fail_at(off, "lseek %s from %" PRIu64 ": %s", hole ? "SEEK_HOLE" : "SEEK_DATA", off,
                strerror(errno));
    uint64_t from = off, to = r < 0 ? g.size : (uint64_t)r;
    if (to < off || to > g.size)
        fail_at(off, "lseek from %" PRIu64 " returned %" PRIu64 ", outside [from, size]", off,
                to);
    if (hole) {  /* [r, next data) is a hole */
        if (to == g.size)
            return;
        from = to;
        off_t d = lseek(g.fd, (off_t)from, SEEK_DATA);
        if (d < 0 && errno != ENXIO)
            fail_at(from, "lseek SEEK_DATA from %" PRIu64 ": %s", from, strerror(errno));
        to = d < 0 ? g.size : (uint64_t)d;
        if (to < from)
            fail_at(from, "SEEK_DATA from %" PRIu64 " went back to %" PRIu64, from, to);
    }
    for (uint64_t x = from; x < to; x++)
        if (g.model[x] != 0)
            fail_at(x, "[%" PRIu64 ", %" PRIu64 ") is reported a hole but byte %" PRIu64
                    " is %02x in the model", from, to, x, g.model[x]);
    g.count[C_SEEK]++;
}

static void do_map(bool write)
{
    uint64_t off = pick_off(1), len = pick_len(off, 1);

    if (write) {
        fill_random(g.buf, len);
        memcpy(g.map + off, g.buf, len);
        memcpy(g.model + off, g.buf, len);
        uint64_t start = off & ~4095ull;
        int r = msync(g.map + start, off + len - start, MS_SYNC);
        logop("map write", off, len, r < 0 ? -errno : r);
        if (r < 0)
            fail_at(off, "msync %" PRIu64 "+%" PRIu64 ": %s", off, len, strerror(errno));
    } else {
        logop("map read", off, len, 0);
        check(g.map + off, off, len, "map read");
    }
    g.count[write ? C_MWRITE : C_MREAD]++;
}

static void expect(long got, long want, const char *what, uint64_t off, uint64_t len)
{
    logop(what, off, len, got);
    if (got != want)
        fail_at(off, "%s %" PRIu64 "+%" PRIu64 ": got %ld (%s), documented result %ld (%s)",
                what, off, len, got, got < 0 ? strerror((int)-got) : "ok", want,
                want < 0 ? strerror((int)-want) : "ok");
}

static long res(long r)
{
    return r < 0 ? -errno : r;
}

/* The documented edges: each must give exactly the documented result (layerfs(1), NOTES). */
static void do_edge(void)
{
    uint64_t off = below(g.size) & ~4095ull, len = 4096 * (1 + below(4));
    uint64_t tail = 1 + below(g.size < 8192 ? g.size : 8192), past = below(8192);
    long r;

    if (off + len > g.size)
        len = g.size - off;
    switch (below(11)) {
    case 0:     /* mode 0 inside the disk succeeds and changes nothing */
        expect(res(fallocate(g.fd, 0, (off_t)off, (off_t)len)), 0, "fallocate 0", off, len);
        break;
    case 1:     /* "anything else fails with EOPNOTSUPP": mode 0 past the end ... */
        expect(res(fallocate(g.fd, 0, (off_t)(g.size - tail), (off_t)(tail + 1 + past))),
               -EOPNOTSUPP, "fallocate 0 end", g.size - tail, tail + 1 + past);
        break;
    case 2:     /* ... collapse and insert range ... */
        expect(res(fallocate(g.fd, FALLOC_FL_COLLAPSE_RANGE, (off_t)off, 4096)), -EOPNOTSUPP,
               "collapse range", off, 4096);
        break;
    case 3:
        expect(res(fallocate(g.fd, FALLOC_FL_INSERT_RANGE, (off_t)off, 4096)), -EOPNOTSUPP,
               "insert range", off, 4096);
        break;
    case 4:     /* ... and a punched hole that would change the size */
        expect(res(fallocate(g.fd, FALLOC_FL_PUNCH_HOLE, (off_t)off, (off_t)len)),
               -EOPNOTSUPP, "punch no-keep", off, len);
        break;
    case 5:     /* the size cannot change: "truncate to another size fails with EINVAL" */
        expect(res(ftruncate(g.fd, (off_t)(below(2) ? g.size + 1 + past : g.size - tail))),
               -EINVAL, "ftruncate", g.size, 0);
        expect(res(ftruncate(g.fd, (off_t)g.size)), 0, "ftruncate same", g.size, 0);
        break;
    case 6:     /* "one [write] past it fails with ENOSPC" */
        fill_random(g.buf, tail);
        expect(res(pwrite(g.fd, g.buf, tail, (off_t)(g.size + past))), -ENOSPC,
               "write past end", g.size + past, tail);
        break;
    case 7:     /* "a write that crosses the end is short" */
        fill_random(g.buf, tail + 1 + past);
        r = res(pwrite(g.fd, g.buf, tail + 1 + past, (off_t)(g.size - tail)));
        if (r > 0)
            memcpy(g.model + g.size - tail, g.buf, (size_t)r);
        expect(r, (long)tail, "write across end", g.size - tail, tail + 1 + past);
        break;
    case 8:     /* reads stop at the end */
        r = res(pread(g.fd, g.buf, tail + 1 + past, (off_t)(g.size - tail)));
        expect(r, (long)tail, "read across end", g.size - tail, tail + 1 + past);
        check(g.buf, g.size - tail, tail, "read across end");
        expect(res(pread(g.fd, g.buf, 512, (off_t)(g.size + past))), 0, "read past end",
               g.size + past, 512);
        break;
    case 9:     /* "Mode and owner cannot change" (the errno is the daemon's: EPERM) */
        expect(res(fchmod(g.fd, 0644)), -EPERM, "fchmod", 0, 0);
        break;
    default:    /* ZERO_RANGE that would grow the disk: ENOSPC (the daemon's errno) */
        expect(res(fallocate(g.fd, FALLOC_FL_ZERO_RANGE, (off_t)(g.size - tail),
                             (off_t)(tail + 1 + past))), -ENOSPC, "zero grow", g.size - tail,
               tail + 1 + past);
        break;
    }
    g.count[C_ERR]++;
}

/* A read-only disk: opening it for writing fails with EROFS, writing through a read-only
 * descriptor with EBADF. */
static void do_edge_ro(void)
{
    int fd = open(g.path, O_RDWR);
    long r = fd < 0 ? -errno : 0;

    if (fd >= 0)
        close(fd);
    expect(r, -EROFS, "open O_RDWR", 0, 0);
    expect(res(pwrite(g.fd, g.buf, 512, 0)), -EBADF, "write read-only", 0, 512);
    expect(res(fallocate(g.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096)), -EBADF,
           "punch read-only", 0, 4096);
    g.count[C_ERR]++;
}

/* A write, punch or zeroing; record: it is part of the unsynced tail. */
static void change_op(bool direct, bool record)
{
    unsigned p = (unsigned)below(100);

    if (p < 60)
        do_write(direct, record);
    else
        do_zero(p < 80, record);
}

static void one_op(bool pending)
{
    unsigned p = (unsigned)below(100);
    bool direct = g.dfd >= 0 && below(100) < g.direct_pct;

    if (g.read_only) {
        if (p < 80)
            do_read(direct);
        else if (p < 95)
            do_seek();
        else
            do_edge_ro();
        return;
    }
    if (pending) {  /* a crash round's unsynced tail: only what changes the data */
        change_op(direct, true);
        return;
    }
    if (p < 28)
        do_read(direct);
    else if (p < 58)
        do_write(direct, false);
    else if (p < 66)
        do_zero(true, false);
    else if (p < 74)
        do_zero(false, false);
    else if (p < 78)
        do_sync();
    else if (p < 84)
        do_seek();
    else if (p < 96 && g.map != NULL)
        do_map(p < 90);
    else if (p < 96)
        p < 90 ? do_read(direct) : do_write(direct, false);
    else if (p < 98)
        do_edge();
    else
        do_read(direct);
}

static uint8_t *load(const char *path, uint64_t want, bool *exists)
{
    int fd = open(path, O_RDONLY);
    struct stat st;

    *exists = fd >= 0;
    if (fd < 0) {
        if (errno == ENOENT)
            return NULL;
        perror(path);
        exit(2);
    }
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != want) {
        fprintf(stderr, "fsx: %s: %lld bytes, the disk has %" PRIu64 "\n", path,
                (long long)st.st_size, want);
        exit(2);
    }
    uint8_t *p = malloc(want ? want : 1);
    if (p == NULL || (want && pread(fd, p, want, 0) != (ssize_t)want)) {
        perror(path);
        exit(2);
    }
    close(fd);
    return p;
}

static void save(const char *path, const uint8_t *p, uint64_t len)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0600);

    if (fd < 0 || write(fd, p, len) != (ssize_t)len || close(fd) < 0 || rename(tmp, path) < 0) {
        perror(tmp);
        exit(2);
    }
}

static void save_pending(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s.pending", g.model_path);
    FILE *f = fopen(path, "w");

    for (size_t i = 0; f != NULL && i < g.npend; i++) {
        const struct pend *p = &g.pend[i];
        uint8_t kind = p->data != NULL;
        fwrite(&p->off, sizeof p->off, 1, f);
        fwrite(&p->len, sizeof p->len, 1, f);
        fwrite(&kind, 1, 1, f);
        if (kind)
            fwrite(p->data, 1, p->len, f);
    }
    if (f == NULL || fclose(f) != 0) {
        perror(path);
        exit(2);
    }
}

/* After a kill: each byte holds its fsynced value or one an unsynced operation wrote. */
static void crash_check(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s.pending", g.model_path);
    FILE *f = fopen(path, "r");
    uint8_t *all = malloc(g.size);
    struct pend p;
    uint8_t kind;

    if (f == NULL || all == NULL) {
        perror(path);
        exit(2);
    }
    while (fread(&p.off, sizeof p.off, 1, f) == 1 && fread(&p.len, sizeof p.len, 1, f) == 1 &&
           fread(&kind, 1, 1, f) == 1) {
        p.data = NULL;
        if (p.off > g.size || p.len > g.size - p.off ||
            (kind && ((p.data = malloc(p.len)) == NULL || fread(p.data, 1, p.len, f) != p.len))) {
            fprintf(stderr, "fsx: %s: bad record\n", path);
            exit(2);
        }
        record_pending(p.off, p.len, p.data);
        free(p.data);
    }
    fclose(f);
    full_read(g.fd, all);
    uint64_t changed = 0;
    for (uint64_t x = 0; x < g.size; x++) {
        if (all[x] == g.model[x])
            continue;
        bool ok = false;
        for (size_t i = 0; i < g.npend && !ok; i++) {
            const struct pend *q = &g.pend[i];
            if (x >= q->off && x - q->off < q->len)
                ok = all[x] == (q->data ? q->data[x - q->off] : 0);
        }
        if (!ok) {
            for (size_t i = 0; i < g.npend; i++)
                logop(g.pend[i].data ? "unsynced write" : "unsynced zero", g.pend[i].off,
                      g.pend[i].len, 0);
            fail_at(x, "after the kill byte %" PRIu64 " is %02x: neither its fsynced value "
                    "%02x nor one an unsynced operation wrote", x, all[x], g.model[x]);
        }
        changed++;
    }
    printf("fsx: after the kill: fsynced data intact; %" PRIu64 " bytes hold unsynced data "
           "of %zu operations\n", changed, g.npend);
    memcpy(g.model, all, g.size);
    free(all);
    unlink(path);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: fsx [-s SEED] [-n OPS] [-N FIRST] [-m MODEL] [-b BLOCK] [-d PCT] [-M] [-r]\n"
            "           [-u UNSYNCED | -c] FILE\n"
            "  -s SEED      random seed (default: from the clock); printed\n"
            "  -n OPS       operations in this round (default 1000)\n"
            "  -N FIRST     number of the first operation, to continue a numbering\n"
            "  -m MODEL     expected contents: compared first, saved at the end (absent: the\n"
            "               file's contents)\n"
            "  -b BLOCK     block size whose boundaries offsets favour (default 4096)\n"
            "  -d PCT       percentage of reads and writes done with O_DIRECT, aligned\n"
            "  -M           mmap reads and writes too (needs --cache=page)\n"
            "  -r           the disk is read-only: reads, and writes that must fail\n"
            "  -u UNSYNCED  end with UNSYNCED changes, an fsync, UNSYNCED unsynced changes\n"
            "  -c           check after a kill: fsynced data intact, MODEL.pending old or new\n");
    exit(2);
}

int main(int argc, char **argv)
{
    unsigned long unsynced = 0;
    bool crashed = false, have_model = false, seeded = false;
    int c;

    g.nops = 1000;
    while ((c = getopt(argc, argv, "s:n:N:m:b:d:Mru:c")) != -1) {
        switch (c) {
        case 's': g.seed = strtoull(optarg, NULL, 0); seeded = true; break;
        case 'n': g.nops = strtoul(optarg, NULL, 0); break;
        case 'N': g.first = strtoul(optarg, NULL, 0); break;
        case 'm': g.model_path = optarg; break;
        case 'b': g.bs = strtoull(optarg, NULL, 0); break;
        case 'd': g.direct_pct = (unsigned)strtoul(optarg, NULL, 0); break;
        case 'M': g.use_mmap = true; break;
        case 'r': g.read_only = true; break;
        case 'u': unsynced = strtoul(optarg, NULL, 0); break;
        case 'c': crashed = true; break;
        default: usage();
        }
    }
    if (optind + 1 != argc || g.bs == 0 || ((unsynced || crashed) && g.model_path == NULL))
        usage();
    g.path = argv[optind];
    if (!seeded)
        g.seed = (uint64_t)time(NULL) ^ (uint64_t)getpid();
    g.rng = (g.seed ^ ((uint64_t)g.first << 32)) * 0x9E3779B97F4A7C15ull + 1;
    g.cur = g.first;

    g.fd = open(g.path, g.read_only ? O_RDONLY : O_RDWR);
    if (g.fd < 0) {
        perror(g.path);
        return 2;
    }
    off_t end = lseek(g.fd, 0, SEEK_END);
    if (end <= 0) {
        fprintf(stderr, "fsx: %s: empty or unseekable\n", g.path);
        return 2;
    }
    g.size = (uint64_t)end;
    if (g.direct_pct > 0) {
        g.dfd = open(g.path, (g.read_only ? O_RDONLY : O_RDWR) | O_DIRECT);
        if (g.dfd < 0) {
            perror("O_DIRECT open");
            return 1;
        }
    }
    if (!g.read_only && (g.sfd = open(g.path, O_RDWR | O_DSYNC)) < 0) {
        perror("O_DSYNC open");
        return 1;
    }
    if (g.use_mmap) {
        g.map = mmap(NULL, g.size, PROT_READ | (g.read_only ? 0 : PROT_WRITE), MAP_SHARED,
                     g.fd, 0);
        if (g.map == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
    }
    g.buf = malloc(MAX_LEN + 16384);
    if (g.buf == NULL || posix_memalign((void **)&g.dbuf, 4096, MAX_LEN) != 0) {
        perror("malloc");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("fsx: seed %" PRIu64 ", ops %lu from %lu, %s (%" PRIu64 " bytes)\n", g.seed, g.nops,
           g.first, g.path, g.size);

    if (g.model_path != NULL)
        g.model = load(g.model_path, g.size, &have_model);
    if (!have_model) {
        g.model = malloc(g.size);
        if (g.model == NULL)
            return 2;
        full_read(g.fd, g.model);
    } else if (crashed) {
        crash_check();
    } else {
        full_compare("at the start, the whole file");
    }

    for (; g.cur < g.first + g.nops; g.cur++)
        one_op(false);
    /* Before a crash round's fsync, changes that no O_DSYNC write flushes by the way: only
     * that fsync makes them durable. */
    g.no_dsync = true;
    for (unsigned long i = 0; i < unsynced; i++, g.cur++)
        change_op(false, false);
    if (!g.read_only)
        do_sync();
    full_compare("after the round, the whole file");
    if (g.model_path != NULL)
        save(g.model_path, g.model, g.size);
    if (unsynced > 0) {
        for (unsigned long i = 0; i < unsynced; i++, g.cur++)
            one_op(true);
        full_compare("after the unsynced operations, the whole file");
        save_pending();
    }

    if (g.cur == g.first) {
        printf("fsx: the whole file matches the model\n");
        return 0;
    }
    printf("fsx: seed %" PRIu64 ": ops %lu-%lu matched the model:", g.seed, g.first,
           g.cur - 1);
    for (int i = 0; count_names[i] != NULL; i++)
        if (g.count[i])
            printf(" %lu %s", g.count[i], count_names[i]);
    printf("\n");
    return 0;
}
