/* SPDX-License-Identifier: MIT */
/* layerfs-img: create, inspect, check, map and commit layerfs overlay files (offline).
 * See man/layerfs-img.1.  Drives blockcore with one loop on the main thread. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layers/overlay.h"
#include "layers/sparse.h"

#define PROG "layerfs-img"

enum { EXIT_PROBLEMS = 1, EXIT_USAGE = 2 };

static void G_GNUC_PRINTF(1, 2) die_usage(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, PROG ": ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '" PROG " --help'.\n");
    exit(EXIT_USAGE);
}

static int fail_err(GError *err)
{
    fprintf(stderr, PROG ": %s\n", err->message);
    g_error_free(err);
    return EXIT_USAGE;
}

static void usage(void)
{
    printf("Usage: " PROG " COMMAND [OPTIONS] ARGS\n"
           "Manage layerfs overlay files (offline: not while layerfs uses them).\n"
           "\n"
           "Commands:\n"
           "  create [-s SIZE | -B BACKING] [-b BLOCKSIZE] OVERLAY\n"
           "                      create an empty overlay of SIZE bytes, or sized to BACKING\n"
           "  info [--json] OVERLAY\n"
           "                      size, block size, blocks present, clean or dirty\n"
           "  check [--repair] OVERLAY\n"
           "                      verify the overlay; --repair fixes what it can\n"
           "  map [--json] -c CONFIG DISK\n"
           "                      which layer of DISK's stack holds each extent\n"
           "  commit [--force] OVERLAY BASE\n"
           "                      merge OVERLAY into the raw file BASE below it (resumable)\n"
           "\n"
           "Options:\n"
           "  -s, --size SIZE         virtual size (K, M, G, T suffixes)\n"
           "  -B, --backing FILE      take the size from FILE\n"
           "  -b, --block-size SIZE   overlay block size (default 64K)\n"
           "      --json              machine-readable output\n"
           "      --repair            fix problems check finds\n"
           "  -c, --config FILE       layerfs configuration file (for map)\n"
           "      --force             commit an overlay whose header says it is in use\n"
           "  -h, --help              show this help\n"
           "  -V, --version           show the version\n"
           "\n"
           "Exit status: 0 success, 1 check found problems (or a command failed), 2 usage\n"
           "or open errors.\n");
}

enum { OPT_JSON = 256, OPT_REPAIR, OPT_FORCE };

static const struct option long_opts[] = {
    { "size", required_argument, NULL, 's' },
    { "backing", required_argument, NULL, 'B' },
    { "block-size", required_argument, NULL, 'b' },
    { "json", no_argument, NULL, OPT_JSON },
    { "repair", no_argument, NULL, OPT_REPAIR },
    { "config", required_argument, NULL, 'c' },
    { "force", no_argument, NULL, OPT_FORCE },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
};

struct opts {
    const char *size, *backing, *block_size, *config;
    bool json, repair, force;
};

/* s as the inside of a JSON string: quotes, backslashes and control bytes escaped. */
static char *json_str(const char *s)
{
    GString *g = g_string_new(NULL);

    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            g_string_append_printf(g, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            g_string_append_printf(g, "\\u%04x", *p);
        else
            g_string_append_c(g, (char)*p);
    }
    return g_string_free(g, false);
}

/* ---- create ------------------------------------------------------------------------ */

static uint64_t backing_size(const char *path, GError **errp)
{
    struct lf_layer_cfg c = { .name = (char *)path, .driver = (char *)"file",
                              .path = (char *)path, .origin = (char *)path };
    struct bc_dev *dev = layer_open_dev(&c, true, false, errp);

    if (dev == NULL)
        return 0;
    uint64_t size = bc_dev_size(dev);
    bc_dev_close(dev);
    if (size == 0)
        g_set_error(errp, LF_ERROR, EINVAL, "%s: backing file is empty", path);
    return size;
}

static int cmd_create(const struct opts *o, int argc, char **argv)
{
    uint64_t size = 0, bs = OVL_DEFAULT_BLOCK;
    GError *err = NULL;

    if (argc != 1)
        die_usage("create: expected one OVERLAY argument");
    if ((o->size != NULL) == (o->backing != NULL))
        die_usage("create: give exactly one of --size and --backing");
    if (o->size != NULL && !bc_parse_size(o->size, &size))
        die_usage("create: --size: '%s' is not a size", o->size);
    if (o->block_size != NULL && !bc_parse_size(o->block_size, &bs))
        die_usage("create: --block-size: '%s' is not a size", o->block_size);
    if (o->backing != NULL && (size = backing_size(o->backing, &err)) == 0)
        return fail_err(err);
    if (!ovl_create_file(argv[0], size, (uint32_t)MIN(bs, UINT32_MAX), &err))
        return fail_err(err);
    return 0;
}

/* ---- info -------------------------------------------------------------------------- */

static uint64_t count_bits(const uint8_t *bm, uint64_t nblocks)
{
    uint64_t n = 0;

    for (uint64_t i = 0; i < (nblocks + 7) / 8; i++)
        n += (uint64_t)__builtin_popcount(bm[i]);
    return n;
}

static int cmd_info(const struct opts *o, int argc, char **argv, struct bc_sync *s)
{
    struct ovl_file f;
    GError *err = NULL;

    if (argc != 1)
        die_usage("info: expected one OVERLAY argument");
    if (!ovl_file_open(&f, argv[0], NULL, true, false, OVL_OPEN_NO_LOCK, s, &err))
        return fail_err(err);
    uint64_t present = count_bits(f.bitmap, f.h.nblocks);
    bool dirty = f.h.flags & OVL_FLAG_DIRTY, commit = f.h.flags & OVL_FLAG_COMMIT;
    if (o->json) {
        g_autofree char *path = json_str(argv[0]);
        printf("{\"file\": \"%s\", \"format\": \"overlay\", \"version\": %u, "
               "\"virtual-size\": %" PRIu64 ", \"block-size\": %u, \"blocks\": %" PRIu64 ", "
               "\"blocks-present\": %" PRIu64 ", \"bytes-present\": %" PRIu64 ", "
               "\"clean\": %s, \"commit-in-progress\": %s}\n", path, f.h.version, f.h.size,
               f.h.block_size, f.h.nblocks, present, present * f.h.block_size,
               dirty ? "false" : "true", commit ? "true" : "false");
    } else {
        printf("file:            %s\n"
               "format:          overlay, version %u\n"
               "virtual size:    %" PRIu64 " bytes\n"
               "block size:      %u bytes\n"
               "blocks:          %" PRIu64 "\n"
               "blocks present:  %" PRIu64 " (%" PRIu64 " bytes)\n"
               "state:           %s%s\n", argv[0], f.h.version, f.h.size, f.h.block_size,
               f.h.nblocks, present, present * f.h.block_size,
               dirty ? "dirty (in use, or not closed cleanly)" : "clean",
               commit ? ", commit in progress" : "");
    }
    ovl_file_close(&f);
    return 0;
}

/* ---- check ------------------------------------------------------------------------- */

static int cmd_check(const struct opts *o, int argc, char **argv, struct bc_sync *s)
{
    struct ovl_file f;
    GError *err = NULL;
    unsigned problems = 0, fixed = 0;
    const char *path;

    if (argc != 1)
        die_usage("check: expected one OVERLAY argument");
    path = argv[0];
    if (!ovl_file_open(&f, path, NULL, !o->repair, false,
                       OVL_OPEN_NO_BITMAP_CHECK | OVL_OPEN_NO_SIZE_CHECK, s, &err))
        return fail_err(err);

    uint64_t want = ovl_file_size(&f.h);
    if (f.file_size < want) {
        printf("%s: truncated: the data region ends at %" PRIu64 " but the file is %" PRIu64
               " bytes\n", path, want, f.file_size);
        problems++;
    }
    uint64_t bad = 0;
    if (!ovl_bitmap_check(&f.h, f.bitmap, f.file_size, path, &bad, &err)) {
        printf("%s\n", err->message);
        g_clear_error(&err);
        problems++;
    }
    if (f.h.flags & OVL_FLAG_DIRTY)
        printf("%s: not closed cleanly (or in use); presence bits only cover durable data, "
               "so this alone is harmless%s\n", path, o->repair ? "" : " (--repair marks it "
               "clean)");
    if (f.h.flags & OVL_FLAG_COMMIT)
        printf("%s: a commit was interrupted; rerun '" PROG " commit' to finish it\n", path);

    if (o->repair) {
        int r = 0;
        if (bad > 0) {
            ovl_bitmap_repair(&f.h, f.bitmap, f.file_size);
            r = ovl_file_write_bitmap(&f, s);
            if (r == 0) {
                printf("%s: cleared %" PRIu64 " bad presence bits\n", path, bad);
                fixed++;
            }
        }
        if (r == 0 && f.file_size < want) {
            if (truncate(path, (off_t)want) < 0)
                r = -errno;
            else {
                printf("%s: extended the file to %" PRIu64 " bytes\n", path, want);
                fixed++;
            }
        }
        if (r == 0 && (f.h.flags & OVL_FLAG_DIRTY)) {
            f.h.flags &= ~(uint32_t)OVL_FLAG_DIRTY;
            r = ovl_file_write_header(&f, s);
            if (r == 0)
                printf("%s: marked clean\n", path);
        }
        if (r < 0) {
            fprintf(stderr, PROG ": %s: repair failed: %s\n", path, g_strerror(-r));
            ovl_file_close(&f);
            return EXIT_PROBLEMS;
        }
        ovl_file_close(&f);
        return fixed == problems ? 0 : EXIT_PROBLEMS;
    }
    if (problems == 0)
        printf("%s: ok: %" PRIu64 " of %" PRIu64 " blocks present\n", path,
               count_bits(f.bitmap, f.h.nblocks), f.h.nblocks);
    ovl_file_close(&f);
    return problems ? EXIT_PROBLEMS : 0;
}

/* ---- map --------------------------------------------------------------------------- */

static int cmd_map(const struct opts *o, int argc, char **argv)
{
    GError *err = NULL;

    if (o->config == NULL || argc != 1)
        die_usage("map: expected -c CONFIG and one DISK argument");
    struct lf_config *cfg = lf_config_load(o->config, &err);
    if (cfg == NULL)
        return fail_err(err);
    const struct lf_disk_cfg *dc = NULL;
    for (guint i = 0; i < cfg->disks->len; i++) {
        const struct lf_disk_cfg *d = g_ptr_array_index(cfg->disks, i);
        if (strcmp(d->name, argv[0]) == 0)
            dc = d;
    }
    if (dc == NULL) {
        fprintf(stderr, PROG ": %s: no [disk %s] in the configuration\n", o->config, argv[0]);
        lf_config_free(cfg);
        return EXIT_USAGE;
    }
    struct lf_disk *disk = lf_disk_open(dc, true, &err);
    if (disk == NULL) {
        lf_config_free(cfg);
        return fail_err(err);
    }
    uint64_t size = lf_disk_size(disk);
    if (o->json)
        printf("[");
    else
        printf("%-20s %-20s %s\n", "offset", "length", "layer");
    bool first = true;
    for (uint64_t off = 0; off < size;) {
        uint64_t n = 0;
        int i = lf_disk_map(disk, off, size - off, &n);
        /* Merge with the following extents served the same way. */
        for (uint64_t m; off + n < size; n += m)
            if (lf_disk_map(disk, off + n, size - off - n, &m) != i)
                break;
        const char *name = i >= 0 ? lf_disk_layer_name(disk, (unsigned)i) : NULL;
        if (o->json) {
            g_autofree char *esc = name ? json_str(name) : NULL;
            printf("%s\n  {\"offset\": %" PRIu64 ", \"length\": %" PRIu64 ", \"layer\": ",
                   first ? "" : ",", off, n);
            if (name)
                printf("\"%s\", \"index\": %d, \"format\": \"%s\"}", esc, i,
                       lf_disk_layer_format(disk, (unsigned)i));
            else
                printf("null, \"index\": -1, \"zero\": true}");
        } else {
            printf("%-20" PRIu64 " %-20" PRIu64 " %s\n", off, n, name ? name : "(zeros)");
        }
        first = false;
        off += n;
    }
    if (o->json)
        printf("\n]\n");
    int r = lf_disk_close(disk);
    lf_config_free(cfg);
    return r < 0 ? EXIT_PROBLEMS : 0;
}

/* ---- commit ------------------------------------------------------------------------ */

#define COMMIT_CHUNK (8u << 20)

static int sync_io(struct bc_dev *dev, struct bc_sync *s, bool write, void *buf,
                   uint64_t len, uint64_t off)
{
    struct iovec iov = { buf, len };

    if (write)
        bc_dev_writev(dev, s->loop, &iov, 1, off, 0, bc_sync_cb, s);
    else
        bc_dev_readv(dev, s->loop, &iov, 1, off, bc_sync_cb, s);
    return bc_sync_wait(s);
}

static int sync_flush(struct bc_dev *dev, struct bc_sync *s)
{
    bc_dev_flush(dev, s->loop, bc_sync_cb, s);
    return bc_sync_wait(s);
}

/*
 * Crash safety: the COMMIT flag is set durably first; blocks are copied to the base and the
 * base is flushed before their presence bits are cleared and the bitmap is flushed; the
 * flag is cleared last.  Interrupted anywhere, every block is either still present in the
 * overlay (and the base may or may not hold the same bytes: the stack reads the same) or
 * durably in the base; rerunning the command finishes the job.
 */
static int cmd_commit(const struct opts *o, int argc, char **argv, struct bc_sync *s)
{
    struct ovl_file f;
    GError *err = NULL;
    const char *opath, *bpath;
    int r = 0;

    if (argc != 2)
        die_usage("commit: expected OVERLAY and BASE arguments");
    opath = argv[0];
    bpath = argv[1];
    if (!ovl_file_open(&f, opath, NULL, false, true, 0, s, &err))
        return fail_err(err);
    if ((f.h.flags & OVL_FLAG_DIRTY) && !(f.h.flags & OVL_FLAG_COMMIT) && !o->force) {
        fprintf(stderr, PROG ": %s: the overlay is in use or was not closed cleanly; stop "
                "layerfs (or run '" PROG " check --repair') first, or pass --force\n", opath);
        ovl_file_close(&f);
        return EXIT_USAGE;
    }
    struct lf_layer_cfg bc = { .name = (char *)bpath, .driver = (char *)"file",
                               .path = (char *)bpath, .origin = (char *)bpath };
    struct bc_dev *base = layer_open_dev(&bc, false, true, &err);
    if (base == NULL) {
        ovl_file_close(&f);
        return fail_err(err);
    }
    if (bc_dev_props(base)->read_only || bc_dev_size(base) < f.h.size) {
        fprintf(stderr, PROG ": %s: %s\n", bpath, bc_dev_props(base)->read_only ?
                "cannot be opened for writing" : "is smaller than the overlay");
        r = -EINVAL;
        goto out;
    }

    f.h.flags |= OVL_FLAG_COMMIT | OVL_FLAG_DIRTY;
    if ((r = ovl_file_write_header(&f, s)) < 0)
        goto io_fail;

    uint8_t *buf = bc_buf_alloc(COMMIT_CHUNK);
    uint32_t bs = f.h.block_size;
    uint64_t per = MAX(COMMIT_CHUNK / bs, 1), committed = 0;
    for (uint64_t b = 0; b < f.h.nblocks && r == 0;) {
        /* Copy up to `per` blocks' worth of runs, flush the base, then clear their bits. */
        uint64_t start = b, done = 0;
        while (b < f.h.nblocks && done < per && r == 0) {
            if (!bit_get(f.bitmap, b)) {
                b++;
                continue;
            }
            uint64_t e = b + 1;
            while (e < f.h.nblocks && e - b < per - done && bit_get(f.bitmap, e))
                e++;
            uint64_t off = b * bs, len = MIN(e * (uint64_t)bs, f.h.size) - off;
            r = sync_io(f.dev, s, false, buf, len, f.h.data_off + off);
            if (r == 0)
                r = sync_io(base, s, true, buf, len, off);
            done += e - b;
            b = e;
        }
        if (r == 0 && done > 0)
            r = sync_flush(base, s);
        if (r == 0 && done > 0) {
            for (uint64_t k = start; k < b; k++)
                f.bitmap[k >> 3] &= (uint8_t)~(1u << (k & 7));
            r = ovl_file_write_bitmap(&f, s);
            committed += done;
        }
    }
    bc_buf_free(buf);
    if (r < 0)
        goto io_fail;
    f.h.flags &= ~(uint32_t)(OVL_FLAG_COMMIT | OVL_FLAG_DIRTY);
    if ((r = ovl_file_write_header(&f, s)) < 0)
        goto io_fail;
    printf("%s: committed %" PRIu64 " blocks (%" PRIu64 " bytes) into %s\n", opath, committed,
           committed * bs, bpath);
    goto out;

io_fail:
    fprintf(stderr, PROG ": commit of %s into %s failed: %s; both files are still readable "
            "as a stack, rerun the command to finish\n", opath, bpath, g_strerror(-r));
out:
    bc_dev_close(base);
    ovl_file_close(&f);
    return r < 0 ? EXIT_PROBLEMS : 0;
}

int main(int argc, char **argv)
{
    struct opts o = { 0 };
    int c;

    if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        usage();
        return 0;
    }
    if (argc >= 2 && (strcmp(argv[1], "-V") == 0 || strcmp(argv[1], "--version") == 0)) {
        printf(PROG " " PACKAGE_VERSION "\n");
        return 0;
    }
    if (argc < 2)
        die_usage("missing command");
    const char *cmd = argv[1];
    argv++;
    argc--;
    while ((c = getopt_long(argc, argv, "s:B:b:c:hV", long_opts, NULL)) != -1) {
        switch (c) {
        case 's': o.size = optarg; break;
        case 'B': o.backing = optarg; break;
        case 'b': o.block_size = optarg; break;
        case 'c': o.config = optarg; break;
        case OPT_JSON: o.json = true; break;
        case OPT_REPAIR: o.repair = true; break;
        case OPT_FORCE: o.force = true; break;
        case 'h': usage(); return 0;
        case 'V': printf(PROG " " PACKAGE_VERSION "\n"); return 0;
        default: die_usage("bad option");
        }
    }
    argc -= optind;
    argv += optind;

    struct bc_sync s;
    GError *err = NULL;
    if (strcmp(cmd, "create") == 0)
        return cmd_create(&o, argc, argv);
    if (strcmp(cmd, "map") == 0)
        return cmd_map(&o, argc, argv);
    if (strcmp(cmd, "info") != 0 && strcmp(cmd, "check") != 0 && strcmp(cmd, "commit") != 0)
        die_usage("unknown command '%s'", cmd);
    if (!bc_sync_begin(&s, NULL, &err))
        return fail_err(err);
    int rc = strcmp(cmd, "info") == 0 ? cmd_info(&o, argc, argv, &s)
           : strcmp(cmd, "check") == 0 ? cmd_check(&o, argc, argv, &s)
           : cmd_commit(&o, argc, argv, &s);
    bc_sync_end(&s);
    return rc;
}
