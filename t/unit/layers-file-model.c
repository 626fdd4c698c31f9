/* SPDX-License-Identifier: MIT */
/* Randomized model test of a disk through its exposed file (t/2060-layers-fuse-model.t):
 * pwrite/pread at random offsets and lengths, PUNCH_HOLE and ZERO_RANGE, fsync and
 * SEEK_DATA/SEEK_HOLE, against an in-memory copy of the file.
 *
 *   layers-file-model FILE SEED OPS REF    run OPS operations, then write the model to REF
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>

static int check(const uint8_t *got, const uint8_t *want, uint64_t off, uint64_t len,
                 const char *what, unsigned i)
{
    for (uint64_t k = 0; k < len; k++) {
        if (got[k] != want[k]) {
            printf("op %u: %s at %" PRIu64 "+%" PRIu64 ": byte %" PRIu64
                   " is %02x, model says %02x\n", i, what, off, len, off + k, got[k], want[k]);
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: layers-file-model FILE SEED OPS REF\n");
        return 2;
    }
    const char *path = argv[1];
    GRand *r = g_rand_new_with_seed((guint32)strtoul(argv[2], NULL, 10));
    unsigned nops = (unsigned)strtoul(argv[3], NULL, 10);
    int fd = open(path, O_RDWR);
    if (fd < 0) {
        perror(path);
        return 2;
    }
    off_t end = lseek(fd, 0, SEEK_END);
    uint64_t size = (uint64_t)end;
    uint8_t *model = g_malloc(size), *buf = g_malloc(1 << 20);
    if (pread(fd, model, size, 0) != (ssize_t)size) {
        perror("initial read");
        return 2;
    }
    unsigned fails = 0, holes = 0, punches = 0;
    for (unsigned i = 0; i < nops && fails == 0; i++) {
        uint64_t len = (uint64_t)g_rand_int_range(r, 1, g_rand_boolean(r) ? 9000 : 1 << 20);
        uint64_t off = (uint64_t)g_rand_double_range(r, 0, (double)size);
        if (g_rand_boolean(r))
            off &= ~4095ull;
        len = MIN(len, size - off);
        if (len == 0)
            continue;
        int pick = g_rand_int_range(r, 0, 100);
        if (pick < 40) {
            for (uint64_t k = 0; k < len; k++)
                buf[k] = (uint8_t)g_rand_int(r);
            if (pwrite(fd, buf, len, (off_t)off) != (ssize_t)len) {
                printf("op %u: pwrite %" PRIu64 "+%" PRIu64 ": %s\n", i, off, len,
                       strerror(errno));
                fails++;
            }
            memcpy(model + off, buf, len);
        } else if (pick < 80) {
            ssize_t n = pread(fd, buf, len, (off_t)off);
            if (n != (ssize_t)len) {
                printf("op %u: pread %" PRIu64 "+%" PRIu64 ": %zd %s\n", i, off, len, n,
                       strerror(errno));
                fails++;
            } else {
                fails += check(buf, model + off, off, len, "read", i);
            }
        } else if (pick < 88) {
            int mode = FALLOC_FL_KEEP_SIZE |
                       (g_rand_boolean(r) ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE);
            if (fallocate(fd, mode, (off_t)off, (off_t)len) < 0) {
                printf("op %u: fallocate %x %" PRIu64 "+%" PRIu64 ": %s\n", i, mode, off, len,
                       strerror(errno));
                fails++;
            }
            memset(model + off, 0, len);
            punches++;
        } else if (pick < 93) {
            if (fsync(fd) < 0) {
                printf("op %u: fsync: %s\n", i, strerror(errno));
                fails++;
            }
        } else {
            /* A hole the file reports must read as zeros in the model. */
            off_t h = lseek(fd, (off_t)off, SEEK_HOLE);
            if (h < 0 || (uint64_t)h > size) {
                printf("op %u: SEEK_HOLE from %" PRIu64 ": %lld %s\n", i, off, (long long)h,
                       strerror(errno));
                fails++;
                continue;
            }
            if ((uint64_t)h == size)
                continue;
            off_t d = lseek(fd, h, SEEK_DATA);
            uint64_t hend = d < 0 ? size : (uint64_t)d;
            if (d < 0 && errno != ENXIO) {
                printf("op %u: SEEK_DATA from %lld: %s\n", i, (long long)h, strerror(errno));
                fails++;
                continue;
            }
            for (uint64_t x = (uint64_t)h; x < hend; x++) {
                if (model[x] != 0) {
                    printf("op %u: hole [%lld, %" PRIu64 ") but byte %" PRIu64 " is %02x\n",
                           i, (long long)h, hend, x, model[x]);
                    fails++;
                    break;
                }
            }
            holes++;
        }
    }
    if (fails == 0) {
        uint8_t *all = g_malloc(size);
        if (pread(fd, all, size, 0) != (ssize_t)size)
            fails++;
        else
            fails += check(all, model, 0, size, "final read", nops);
        g_free(all);
    }
    close(fd);
    g_autoptr(GError) err = NULL;
    if (!g_file_set_contents(argv[4], (const char *)model, (gssize)size, &err)) {
        fprintf(stderr, "%s\n", err->message);
        g_free(model);
        return 2;
    }
    g_free(model);
    g_free(buf);
    g_rand_free(r);
    printf("%u operations on %s (%" PRIu64 " bytes): %s; %u holes checked, %u punches\n",
           nops, path, size, fails ? "FAILED" : "all matched the model", holes, punches);
    return fails ? 1 : 0;
}
