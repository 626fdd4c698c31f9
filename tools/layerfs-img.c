/* SPDX-License-Identifier: MIT */
/* layerfs-img: create, inspect, check, map, commit, resize and upgrade layerfs overlay
 * files (offline).
 * See man/layerfs-img.1.  A thin command line over the lf_img_* calls of layers/layers.h. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers/layers.h"

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
           "  resize [-B BASE] OVERLAY [SIZE]\n"
           "                      grow OVERLAY to SIZE (or BASE's size) and record BASE\n"
           "  upgrade [-B BASE] OVERLAY\n"
           "                      convert OVERLAY to the current format version\n"
           "\n"
           "Options:\n"
           "  -s, --size SIZE         virtual size (K, M, G, T suffixes)\n"
           "  -B, --backing FILE      take the size (and the base fingerprint) from FILE\n"
           "  -b, --block-size SIZE   overlay block size (default 64K)\n"
           "      --json              machine-readable output\n"
           "      --repair            fix problems check finds\n"
           "  -c, --config FILE       layerfs configuration file (for map)\n"
           "      --force             commit an overlay whose header says it is in use, or\n"
           "                          into a base other than the one it was made over\n"
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

static int cmd_create(const struct opts *o, int argc, char **argv)
{
    uint64_t size = 0, bs = LF_IMG_DEFAULT_BLOCK;
    GError *err = NULL;

    if (argc != 1)
        die_usage("create: expected one OVERLAY argument");
    if ((o->size != NULL) == (o->backing != NULL))
        die_usage("create: give exactly one of --size and --backing");
    if (o->size != NULL && !bc_parse_size(o->size, &size))
        die_usage("create: --size: '%s' is not a size", o->size);
    if (o->block_size != NULL && !bc_parse_size(o->block_size, &bs))
        die_usage("create: --block-size: '%s' is not a size", o->block_size);
    if (!lf_img_create(argv[0], size, o->backing, bs, &err))
        return fail_err(err);
    return 0;
}

/* ---- info -------------------------------------------------------------------------- */

static int cmd_info(const struct opts *o, int argc, char **argv)
{
    struct lf_img_info f;
    GError *err = NULL;

    if (argc != 1)
        die_usage("info: expected one OVERLAY argument");
    if (!lf_img_info(argv[0], &f, &err))
        return fail_err(err);
    uint64_t present = f.blocks_present;
    if (o->json) {
        g_autofree char *path = json_str(argv[0]);
        printf("{\"file\": \"%s\", \"format\": \"overlay\", \"version\": %u, "
               "\"virtual-size\": %" PRIu64 ", \"block-size\": %u, \"blocks\": %" PRIu64 ", "
               "\"blocks-present\": %" PRIu64 ", \"bytes-present\": %" PRIu64 ", "
               "\"clean\": %s, \"commit-in-progress\": %s, \"base-size\": %" PRIu64 ", "
               "\"base-fingerprint\": \"%016" PRIx64 "\"}\n", path, f.version, f.size,
               f.block_size, f.blocks, present, present * f.block_size,
               f.dirty ? "false" : "true", f.commit ? "true" : "false", f.base_size,
               f.base_fp);
    } else {
        printf("file:            %s\n"
               "format:          overlay, version %u\n"
               "virtual size:    %" PRIu64 " bytes\n"
               "block size:      %u bytes\n"
               "blocks:          %" PRIu64 "\n"
               "blocks present:  %" PRIu64 " (%" PRIu64 " bytes)\n"
               "state:           %s%s\n", argv[0], f.version, f.size, f.block_size,
               f.blocks, present, present * f.block_size,
               f.dirty ? "dirty (in use, or not closed cleanly)" : "clean",
               f.commit ? ", commit in progress" : "");
        if (f.base_size != 0)
            printf("base:            %" PRIu64 " bytes, fingerprint %016" PRIx64 "\n",
                   f.base_size, f.base_fp);
        else
            printf("base:            not recorded\n");
    }
    return 0;
}

/* ---- check ------------------------------------------------------------------------- */

static int cmd_check(const struct opts *o, int argc, char **argv)
{
    struct lf_img_check c;
    GError *err = NULL;
    unsigned problems = 0, fixed = 0;
    const char *path;

    if (argc != 1)
        die_usage("check: expected one OVERLAY argument");
    path = argv[0];
    if (!lf_img_check(path, o->repair, &c, &err))
        return fail_err(err);

    if (c.file_size < c.want_size) {
        printf("%s: truncated: the data region ends at %" PRIu64 " but the file is %" PRIu64
               " bytes\n", path, c.want_size, c.file_size);
        problems++;
    }
    if (c.chunk_problem != NULL) {
        printf("%s\n", c.chunk_problem);
        if (c.bad_chunks > 1)
            printf("%s: %" PRIu64 " bitmap chunks in all have a bad checksum\n", path,
                   c.bad_chunks);
        g_free(c.chunk_problem);
        problems++;
    }
    if (c.bitmap_problem != NULL) {
        printf("%s\n", c.bitmap_problem);
        g_free(c.bitmap_problem);
        problems++;
    }
    if (c.info.dirty)
        printf("%s: not closed cleanly (or in use); presence bits only cover durable data, "
               "so this alone is harmless%s\n", path, o->repair ? "" : " (--repair marks it "
               "clean)");
    if (c.info.commit)
        printf("%s: a commit was interrupted; rerun '" PROG " commit' to finish it\n", path);
    if (c.info.version < 2)
        printf("%s: version 1: its bitmap has no checksums ('" PROG " upgrade' adds them)\n",
               path);

    if (o->repair) {
        if (c.chunks_dropped > 0) {
            printf("%s: DROPPED the blocks of %" PRIu64 " bitmap chunks with a bad checksum: "
                   "those blocks now read from the layers below (their data is still in the "
                   "file)\n", path, c.chunks_dropped);
            fixed++;
        }
        if (c.bits_cleared > 0) {
            printf("%s: cleared %" PRIu64 " bad presence bits\n", path, c.bits_cleared);
            fixed++;
        }
        if (c.extended) {
            printf("%s: extended the file to %" PRIu64 " bytes\n", path, c.want_size);
            fixed++;
        }
        if (c.marked_clean)
            printf("%s: marked clean\n", path);
        if (c.repair_err < 0) {
            fprintf(stderr, PROG ": %s: repair failed: %s\n", path, g_strerror(-c.repair_err));
            return EXIT_PROBLEMS;
        }
        if (problems == 0 && !c.marked_clean)
            printf("%s: ok: %" PRIu64 " of %" PRIu64 " blocks present; nothing to repair\n",
                   path, c.info.blocks_present, c.info.blocks);
        return fixed == problems ? 0 : EXIT_PROBLEMS;
    }
    if (problems == 0)
        printf("%s: ok: %" PRIu64 " of %" PRIu64 " blocks present\n", path,
               c.info.blocks_present, c.info.blocks);
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
        int i = lf_disk_map(disk, off, size - off, &n);   /* 0 = top */
        /* Merge with the following extents served the same way. */
        for (uint64_t m; off + n < size; n += m)
            if (lf_disk_map(disk, off + n, size - off - n, &m) != i)
                break;
        const char *name = i >= 0 ? lf_disk_layer_name(disk, (unsigned)i) : NULL;
        if (o->json) {
            g_autofree char *esc = name ? json_str(name) : NULL;
            printf("%s\n  {\"offset\": %" PRIu64 ", \"length\": %" PRIu64 ", \"layer\": ",
                   first ? "" : ",", off, n);
            /* Layers count from 1 for the top, as in every message. */
            if (name)
                printf("\"%s\", \"index\": %d, \"format\": \"%s\"}", esc, i + 1,
                       lf_disk_layer_format(disk, (unsigned)i));
            else
                printf("null, \"index\": null, \"zero\": true}");
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

/* ---- resize, upgrade ----------------------------------------------------------------- */

static int cmd_resize(const struct opts *o, int argc, char **argv)
{
    uint64_t size = 0;
    GError *err = NULL;

    if (argc < 1 || argc > 2 || (argc == 1 && o->backing == NULL))
        die_usage("resize: expected OVERLAY and SIZE (or -B BASE and OVERLAY)");
    if (argc == 2 && !bc_parse_size(argv[1], &size))
        die_usage("resize: '%s' is not a size", argv[1]);
    if (!lf_img_resize(argv[0], size, o->backing, &err))
        return fail_err(err);
    return 0;
}

static int cmd_upgrade(const struct opts *o, int argc, char **argv)
{
    GError *err = NULL;
    bool upgraded;

    if (argc != 1)
        die_usage("upgrade: expected one OVERLAY argument");
    if (!lf_img_upgrade(argv[0], o->backing, &upgraded, &err))
        return fail_err(err);
    printf("%s: %s\n", argv[0], upgraded ? "upgraded to version 2" : "already version 2");
    return 0;
}

/* ---- commit ------------------------------------------------------------------------ */

static int cmd_commit(const struct opts *o, int argc, char **argv)
{
    GError *err = NULL;
    const char *opath, *bpath;
    uint64_t committed;
    uint32_t bs;

    if (argc != 2)
        die_usage("commit: expected OVERLAY and BASE arguments");
    opath = argv[0];
    bpath = argv[1];
    switch (lf_img_commit(opath, bpath, o->force, &committed, &bs, &err)) {
    case LF_IMG_COMMITTED:
        printf("%s: committed %" PRIu64 " blocks (%" PRIu64 " bytes) into %s\n", opath,
               committed, committed * bs, bpath);
        return 0;
    case LF_IMG_CANNOT_OPEN:
        return fail_err(err);
    case LF_IMG_IN_USE:
        fprintf(stderr, PROG ": %s: the overlay is in use or was not closed cleanly; stop "
                "layerfs (or run '" PROG " check --repair') first, or pass --force\n", opath);
        return EXIT_USAGE;
    case LF_IMG_BAD_BASE:
        fprintf(stderr, PROG ": %s\n", err->message);
        break;
    case LF_IMG_IO_ERROR:
        fprintf(stderr, PROG ": commit of %s into %s failed: %s; both files are still "
                "readable as a stack, rerun the command to finish\n", opath, bpath,
                err->message);
        break;
    }
    g_clear_error(&err);
    return EXIT_PROBLEMS;
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

    if (strcmp(cmd, "create") == 0)
        return cmd_create(&o, argc, argv);
    if (strcmp(cmd, "map") == 0)
        return cmd_map(&o, argc, argv);
    if (strcmp(cmd, "info") == 0)
        return cmd_info(&o, argc, argv);
    if (strcmp(cmd, "check") == 0)
        return cmd_check(&o, argc, argv);
    if (strcmp(cmd, "commit") == 0)
        return cmd_commit(&o, argc, argv);
    if (strcmp(cmd, "resize") == 0)
        return cmd_resize(&o, argc, argv);
    if (strcmp(cmd, "upgrade") == 0)
        return cmd_upgrade(&o, argc, argv);
    die_usage("unknown command '%s'", cmd);
    return EXIT_USAGE;
}
