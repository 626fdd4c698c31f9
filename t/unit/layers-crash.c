/* SPDX-License-Identifier: MIT */
/* The crash test's workload (t/2030-layers-crash.t): a deterministic stream of random
 * writes with periodic fsync, recording what fsync acknowledged, and a verifier.
 *
 *   layers-crash init BASE SIZE SEED      write BASE with SIZE bytes of seeded data
 *   layers-crash write FILE SEED ACK      write forever; after every fsync, ACK holds
 *                                         the number of writes it covered (made durable)
 *   layers-crash verify FILE SEED ACK     every byte written by an acknowledged write
 *                                         and not touched later, and every byte never
 *                                         written, is intact (exit 1 and a message if not)
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>

#define SYNC_EVERY 16u
#define MAX_LEN 70000u

struct wr {
    uint64_t off;
    uint32_t len;
    uint32_t seed;
};

/* Write number i of the stream for a file of size bytes. */
static struct wr nth(GRand *r, uint64_t size)
{
    struct wr w;

    w.len = (uint32_t)g_rand_int_range(r, 1, MAX_LEN);
    if (g_rand_boolean(r))
        w.len = (w.len + 4095) & ~4095u;
    w.len = (uint32_t)MIN(w.len, size);
    w.off = (uint64_t)g_rand_double_range(r, 0, (double)(size - w.len + 1));
    if (g_rand_int_range(r, 0, 3) == 0)
        w.off &= ~4095ull;
    w.seed = g_rand_int(r);
    return w;
}

static void fill(uint8_t *buf, const struct wr *w)
{
    GRand *r = g_rand_new_with_seed(w->seed);
    for (uint32_t i = 0; i < w->len; i++)
        buf[i] = (uint8_t)g_rand_int(r);
    g_rand_free(r);
}

static void base_data(uint8_t *buf, uint64_t size, guint32 seed)
{
    GRand *r = g_rand_new_with_seed(seed ^ 0x5eed);
    for (uint64_t i = 0; i < size; i++)
        buf[i] = (uint8_t)g_rand_int(r);
    g_rand_free(r);
}

static uint64_t file_size(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        perror(path);
        exit(2);
    }
    off_t s = lseek(fd, 0, SEEK_END);
    close(fd);
    return (uint64_t)s;
}

static int do_init(const char *path, uint64_t size, guint32 seed)
{
    uint8_t *buf = g_malloc(size);
    base_data(buf, size, seed);
    g_autoptr(GError) err = NULL;
    if (!g_file_set_contents(path, (const char *)buf, (gssize)size, &err)) {
        fprintf(stderr, "%s\n", err->message);
        return 2;
    }
    g_free(buf);
    return 0;
}

static void write_ack(int afd, uint64_t n)
{
    if (pwrite(afd, &n, sizeof(n), 0) != (ssize_t)sizeof(n) || fsync(afd) < 0) {
        perror("ack");
        exit(2);
    }
}

static int do_write(const char *path, guint32 seed, const char *ack)
{
    uint64_t size = file_size(path);
    int fd = open(path, O_WRONLY);
    int afd = open(ack, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    GRand *r = g_rand_new_with_seed(seed);
    uint8_t *buf = g_malloc(MAX_LEN + 4096);

    if (fd < 0 || afd < 0) {
        perror("open");
        return 2;
    }
    write_ack(afd, 0);
    for (uint64_t i = 0;; i++) {
        struct wr w = nth(r, size);
        fill(buf, &w);
        if (pwrite(fd, buf, w.len, (off_t)w.off) != (ssize_t)w.len) {
            perror("pwrite");
            return 1;
        }
        if ((i + 1) % SYNC_EVERY == 0) {
            if (fsync(fd) < 0) {
                perror("fsync");
                return 1;
            }
            write_ack(afd, i + 1);
        }
    }
}

static int do_verify(const char *path, guint32 seed, const char *ack)
{
    uint64_t size = file_size(path), acked = 0;
    int afd = open(ack, O_RDONLY);

    if (afd < 0 || pread(afd, &acked, sizeof(acked), 0) != (ssize_t)sizeof(acked)) {
        perror(ack);
        return 2;
    }
    close(afd);
    uint8_t *want = g_malloc(size), *got = g_malloc(size), *maybe = g_malloc0(size);
    uint8_t *buf = g_malloc(MAX_LEN + 4096);
    base_data(want, size, seed);
    GRand *r = g_rand_new_with_seed(seed);
    /* Acknowledged writes must be there; the ones after may or may not be. */
    for (uint64_t i = 0; i < acked + 2 * SYNC_EVERY + 2; i++) {
        struct wr w = nth(r, size);
        if (i < acked) {
            fill(buf, &w);
            memcpy(want + w.off, buf, w.len);
        } else {
            memset(maybe + w.off, 1, w.len);
        }
    }
    int fd = open(path, O_RDONLY);
    if (fd < 0 || pread(fd, got, size, 0) != (ssize_t)size) {
        perror(path);
        return 2;
    }
    close(fd);
    uint64_t bad = 0, first = 0;
    for (uint64_t x = 0; x < size; x++)
        if (!maybe[x] && got[x] != want[x] && bad++ == 0)
            first = x;
    g_free(want);
    g_free(maybe);
    g_free(buf);
    g_rand_free(r);
    if (bad) {
        printf("%s: %" PRIu64 " bytes lost or wrong after %" PRIu64 " acknowledged writes; "
               "first at offset %" PRIu64 " (got %02x)\n", path, bad, acked, first, got[first]);
        g_free(got);
        return 1;
    }
    g_free(got);
    printf("%s: intact after %" PRIu64 " acknowledged writes\n", path, acked);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "init") == 0)
        return do_init(argv[2], g_ascii_strtoull(argv[3], NULL, 10),
                       (guint32)g_ascii_strtoull(argv[4], NULL, 10));
    if (argc == 5 && strcmp(argv[1], "write") == 0)
        return do_write(argv[2], (guint32)g_ascii_strtoull(argv[3], NULL, 10), argv[4]);
    if (argc == 5 && strcmp(argv[1], "verify") == 0)
        return do_verify(argv[2], (guint32)g_ascii_strtoull(argv[3], NULL, 10), argv[4]);
    fprintf(stderr, "usage: layers-crash init BASE SIZE SEED | write FILE SEED ACK | "
            "verify FILE SEED ACK\n");
    return 2;
}
