/* SPDX-License-Identifier: MIT */
/* The configuration parser (layers/config*.c): what the key file and the inline --disk form
 * accept, what they reject, and that every message names FILE:GROUP:KEY. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "layers/layer.h"
#include "t/unit/test-util.h"

static char *tmpdir;

/* Write text to a fresh file in tmpdir; returns its path. */
static char *conf(const char *text)
{
    static unsigned n;
    char *path = g_strdup_printf("%s/c%u.conf", tmpdir, n++);

    g_assert_true(g_file_set_contents(path, text, -1, NULL));
    return path;
}

static const struct lf_layer_cfg *layer(const struct lf_config *cfg, guint d, guint l)
{
    const struct lf_disk_cfg *dc = g_ptr_array_index(cfg->disks, d);

    return g_ptr_array_index(dc->layers, l);
}

/* Loading text must fail with a message containing want (with FILE replaced by the path). */
static void expect_error(const char *text, const char *want)
{
    g_autofree char *path = conf(text);
    g_autoptr(GError) err = NULL;
    g_autofree char *msg = NULL;
    GString *w = g_string_new(want);

    g_string_replace(w, "FILE", path, 0);
    msg = g_string_free(w, FALSE);
    struct lf_config *cfg = lf_config_load(path, &err);
    if (cfg != NULL) {
        lf_config_free(cfg);
        g_test_message("accepted, wanted an error containing: %s", msg);
        g_test_fail();
        return;
    }
    if (strstr(err->message, msg) == NULL) {
        g_test_message("got:  %s", err->message);
        g_test_message("want: ...%s...", msg);
        g_test_fail();
    }
}

static void expect_inline_error(const char *spec, const char *want)
{
    struct lf_config *cfg = lf_config_new();
    g_autoptr(GError) err = NULL;

    g_assert_true(lf_config_add_inline(cfg, "taken=/x.img", NULL));
    if (lf_config_add_inline(cfg, spec, &err)) {
        g_test_message("--disk %s accepted, wanted: %s", spec, want);
        g_test_fail();
    } else if (strstr(err->message, want) == NULL) {
        g_test_message("--disk %s: got: %s; want: ...%s...", spec, err->message, want);
        g_test_fail();
    }
    lf_config_free(cfg);
}

static void test_valid(void)
{
    g_autofree char *path = conf(
        "# two disks\n"
        "[disk vm]\n"
        "layers = top base\n"
        "\n"
        "[disk scratch]\n"
        "layers = mem\n"
        "read-only = yes\n"
        "\n"
        "[layer top]\n"
        "format = overlay\n"
        "path = top.img\n"
        "create = true\n"
        "block-size = 64K\n"
        "direct = false\n"
        "\n"
        "[layer base]\n"
        "path = /images/base.raw\n"
        "read-only = true\n"
        "\n"
        "[layer mem]\n"
        "driver = ram\n"
        "size = 16M\n"
        "align = 4096\n");
    g_autoptr(GError) err = NULL;
    struct lf_config *cfg = lf_config_load(path, &err);

    g_assert_no_error(err);
    g_assert_cmpuint(cfg->disks->len, ==, 2);
    const struct lf_disk_cfg *vm = g_ptr_array_index(cfg->disks, 0);
    const struct lf_disk_cfg *scratch = g_ptr_array_index(cfg->disks, 1);
    g_assert_cmpstr(vm->name, ==, "vm");
    g_assert_false(vm->read_only);
    g_assert_cmpuint(vm->layers->len, ==, 2);
    g_assert_cmpstr(scratch->name, ==, "scratch");
    g_assert_true(scratch->read_only);

    const struct lf_layer_cfg *top = layer(cfg, 0, 0), *base = layer(cfg, 0, 1);
    g_autofree char *want_top = g_build_filename(tmpdir, "top.img", NULL);
    g_assert_cmpstr(top->name, ==, "top");
    g_assert_cmpstr(top->format, ==, "overlay");
    g_assert_cmpstr(top->driver, ==, "file");
    g_assert_cmpstr(top->path, ==, want_top); /* relative to the config file */
    g_assert_true(top->create);
    g_assert_false(top->direct);
    g_assert_cmpuint(top->block_size, ==, 65536);
    g_assert_true(g_str_has_suffix(top->origin, ":layer top"));
    g_assert_cmpstr(base->format, ==, "raw");
    g_assert_cmpstr(base->path, ==, "/images/base.raw");
    g_assert_true(base->direct); /* the default */
    g_assert_true(base->read_only);
    g_assert_false(base->write_through);
    g_assert_false(base->read_cache);

    const struct lf_layer_cfg *mem = layer(cfg, 1, 0);
    g_assert_cmpstr(mem->driver, ==, "ram");
    g_assert_null(mem->path);
    g_assert_cmpstr(g_hash_table_lookup(mem->driver_opts, "size"), ==, "16M");
    g_assert_cmpstr(g_hash_table_lookup(mem->driver_opts, "align"), ==, "4096");
    g_assert_cmpuint(g_hash_table_size(mem->driver_opts), ==, 2);
    lf_config_free(cfg);
}

static void test_stack_rules(void)
{
    g_autofree char *path = conf(
        "[disk d]\nlayers = c1, c2; mem base\n"
        "[layer c1]\nformat = ram\nwrite-through = true\n"
        "[layer c2]\nformat = overlay\npath = /c2\nwrite-through = on\nread-cache = 1\n"
        "[layer mem]\nformat = ram\n"
        "[layer base]\npath = /b\n");
    g_autoptr(GError) err = NULL;
    struct lf_config *cfg = lf_config_load(path, &err);

    g_assert_no_error(err);
    g_assert_cmpuint(((struct lf_disk_cfg *)g_ptr_array_index(cfg->disks, 0))->layers->len, ==,
                     4);
    g_assert_true(layer(cfg, 0, 0)->write_through);
    g_assert_null(layer(cfg, 0, 0)->driver);
    g_assert_true(layer(cfg, 0, 1)->read_cache);
    g_assert_false(layer(cfg, 0, 2)->write_through);
    lf_config_free(cfg);

    expect_error("[disk d]\nlayers = a b c\n[layer a]\npath=/a\n"
                 "[layer b]\npath=/b\nwrite-through=true\n[layer c]\npath=/c\n",
                 "FILE:layer b:write-through: write-through layers must all be above");
    expect_error("[disk d]\nlayers = a b\n[layer a]\npath=/a\nwrite-through=true\n"
                 "[layer b]\npath=/b\nwrite-through=true\n",
                 "FILE:layer b:write-through: the bottom layer of disk d cannot be");
    expect_error("[disk d]\nlayers = a\n[layer a]\npath=/a\nwrite-through=true\n",
                 "FILE:layer a:write-through: the bottom layer");
}

static void test_errors(void)
{
    expect_error("[disks d]\nlayers = a\n", "FILE:disks d: unknown group");
    expect_error("[layer]\npath=/a\n", "FILE:layer: unknown group");
    expect_error("[disk d]\nlayers = a\ncolour = red\n[layer a]\npath=/a\n",
                 "FILE:disk d:colour: unknown key (disk keys: layers read-only)");
    expect_error("[disk d]\nlayers = a\n[layer a]\npath=/a\nsize = 1M\n",
                 "FILE:layer a:size: unknown key (layer keys:");
    expect_error("[disk d]\nlayers = a\n[layer a]\ndriver=null\nfault-len = 1M\n",
                 "FILE:layer a:fault-len: unknown key (layer keys: format driver path direct "
                 "read-only read-cache write-through create block-size base-check cache-size "
                 "allow-smaller; "
                 "driver null adds: size align)");
    expect_error("[disk d]\nlayers = a\nread-only = maybe\n[layer a]\npath=/a\n",
                 "FILE:disk d:read-only: not a boolean: 'maybe'");
    expect_error("[disk d]\nlayers = a\n[layer a]\npath=/a\ndirect = 2\n",
                 "FILE:layer a:direct: not a boolean: '2'");
    expect_error("[disk d]\nlayers = a\n[layer a]\npath=/a\nformat=overlay\nblock-size=3K\n",
                 "FILE:layer a:block-size: '3K' is not a power of two");
    expect_error("[disk d]\nlayers = a\n[layer a]\npath=/a\nformat=overlay\nblock-size=1X\n",
                 "FILE:layer a:block-size: '1X' is not a power of two");
    expect_error("[disk d]\nlayers = a\n[layer a]\npath=/a\nblock-size=64K\n",
                 "FILE:layer a:block-size: only layers of format overlay or ram");
    expect_error("[disk d]\nlayers = a\n[layer a]\npath=/a\nformat=overlay\ncache-size=1G\n",
                 "FILE:layer a:cache-size: only a read cache has a size (set read-cache");
    expect_error("[disk d]\nlayers = a\n[layer a]\nformat=ram\nread-cache=1\ncache-size=1G\n",
                 "FILE:layer a:cache-size: only layers of format overlay can be bounded");
    expect_error("[disk d]\nlayers = a\n[layer a]\npath=/a\nformat=overlay\ncache-size=0\n",
                 "FILE:layer a:cache-size: '0' is not a size above zero");
    expect_error("[disk d]\nlayers = a\n[layer a]\npath=/a\nformat=qcow2\n",
                 "FILE:layer a:format: unknown format 'qcow2'");
    expect_error("[disk d]\nlayers = a\n[layer a]\npath=/a\ndriver=nfs\n",
                 "FILE:layer a:driver: unknown driver 'nfs' (known:");
    expect_error("[disk d]\nlayers = a b\n[layer a]\npath=/a\n",
                 "FILE:disk d:layers: no [layer b] in FILE");
    expect_error("[disk d]\nlayers = a\n[disk e]\nlayers = a\n[layer a]\npath=/a\n",
                 "FILE:disk e:layers: layer a is already used by disk d");
    expect_error("[disk d]\nlayers = a a\n[layer a]\npath=/a\n",
                 "FILE:disk d:layers: layer a is listed twice");
    expect_error("[disk d]\nlayers = \n[layer a]\npath=/a\n",
                 "FILE:disk d:layers: a disk needs at least one layer");
    expect_error("[disk d]\nread-only = false\n", "FILE:disk d:layers: missing");
    expect_error("[disk d]\nlayers = a\n[disk d]\nlayers = a\n[layer a]\npath=/a\n",
                 "FILE:disk d: group defined twice");
    expect_error("[disk d]\nlayers = a\n[layer a]\npath=/a\npath=/b\n",
                 "FILE:layer a:path: key set twice");
    expect_error("[disk d]\nlayers = a\n[layer a]\nformat=raw\n",
                 "FILE:layer a:path: required for driver file");
    expect_error("[disk d]\nlayers = a\n[layer a]\npath=\n", "FILE:layer a:path: empty path");
    expect_error("[disk d]\nlayers = a\n[layer a]\nformat=ram\npath=/a\n",
                 "FILE:layer a:path: a layer of format ram");
    expect_error("[disk d]\nlayers = a\n[layer a]\nformat=ram\ndriver=ram\n",
                 "FILE:layer a:driver: a layer of format ram");
    expect_error("[disk d]\nlayers = a\n[layer a]\npath=/a\n[layer b]\npath=/b\n",
                 "FILE:layer b: not used by any disk");
    expect_error("[disk a/b]\nlayers = a\n[layer a]\npath=/a\n", "FILE:disk a/b: bad name");
    expect_error("[disk ..]\nlayers = a\n[layer a]\npath=/a\n", "FILE:disk ..: bad name");
    expect_error("[disk d]\nlayers = a\n[layer a]\npath=/a\n[broken\n", "FILE: ");
    expect_error("layers = a\n", "FILE: ");

    g_autoptr(GError) err = NULL;
    g_autofree char *missing = g_build_filename(tmpdir, "no-such.conf", NULL);
    g_assert_null(lf_config_load(missing, &err));
    g_assert_true(g_str_has_prefix(err->message, missing));
    g_assert_nonnull(strstr(err->message, "No such file"));
}

static void test_inline(void)
{
    struct lf_config *cfg = lf_config_new();
    g_autoptr(GError) err = NULL;
    g_autofree char *cwd = g_get_current_dir();
    g_autofree char *rel = g_build_filename(cwd, "rel.img", NULL);

    g_assert_true(lf_config_add_inline(cfg, "a=/img/a.raw", &err));
    g_assert_no_error(err);
    g_assert_true(lf_config_add_inline(cfg, "b=format=ram:driver=ram,size=1G", &err));
    g_assert_no_error(err);
    g_assert_true(lf_config_add_inline(
                      cfg, "c=format=overlay,path=/x\\,y\\:z.img,create=yes:rel.img", &err));
    g_assert_no_error(err);
    g_assert_true(lf_config_add_inline(cfg, "d=path=/ro.img,read-only=true", &err));
    g_assert_no_error(err);
    g_assert_true(lf_config_add_inline(cfg, "e=/odd,name.img", &err));
    g_assert_no_error(err);
    g_assert_cmpuint(cfg->disks->len, ==, 5);

    g_assert_cmpstr(layer(cfg, 0, 0)->format, ==, "raw");
    g_assert_cmpstr(layer(cfg, 0, 0)->driver, ==, "file");
    g_assert_cmpstr(layer(cfg, 0, 0)->path, ==, "/img/a.raw");
    g_assert_true(layer(cfg, 0, 0)->direct);
    g_assert_cmpstr(layer(cfg, 0, 0)->origin, ==, "--disk a:layer 1");

    g_assert_cmpstr(layer(cfg, 1, 0)->format, ==, "ram");
    g_assert_null(layer(cfg, 1, 0)->driver);
    g_assert_cmpstr(layer(cfg, 1, 1)->driver, ==, "ram");
    g_assert_cmpstr(g_hash_table_lookup(layer(cfg, 1, 1)->driver_opts, "size"), ==, "1G");
    g_assert_cmpstr(layer(cfg, 1, 1)->origin, ==, "--disk b:layer 2");

    g_assert_cmpstr(layer(cfg, 2, 0)->path, ==, "/x,y:z.img");
    g_assert_true(layer(cfg, 2, 0)->create);
    g_assert_cmpstr(layer(cfg, 2, 1)->path, ==, rel);

    const struct lf_disk_cfg *d = g_ptr_array_index(cfg->disks, 3);
    g_assert_true(d->read_only); /* the top layer is */
    g_assert_false(((struct lf_disk_cfg *)g_ptr_array_index(cfg->disks, 0))->read_only);
    g_assert_cmpstr(layer(cfg, 4, 0)->path, ==, "/odd,name.img");
    lf_config_free(cfg);

    expect_inline_error("taken=/y.img", "--disk taken: disk taken is already defined");
    expect_inline_error("noequals", "--disk noequals: expected NAME=LAYER");
    expect_inline_error("=/a", "expected NAME=LAYER");
    expect_inline_error("x=", "expected NAME=LAYER");
    expect_inline_error("a/b=/x", "--disk a/b: bad disk name");
    expect_inline_error("x=/a::/b", "--disk x:layer 2: empty layer");
    expect_inline_error("x=path=/a,junk", "--disk x:layer 1: 'junk' is not KEY=VALUE");
    expect_inline_error("x=path=/a,colour=red", "--disk x:layer 1:colour: unknown key");
    expect_inline_error("x=path=/a,direct=perhaps", "--disk x:layer 1:direct: not a boolean");
    expect_inline_error("x=path=/a,path=/b", "--disk x:layer 1:path: key set twice");
    expect_inline_error("x=format=raw", "--disk x:layer 1:path: required for driver file");
    expect_inline_error("x=path=/a,write-through=true",
                        "--disk x:layer 1:write-through: the bottom layer");
    expect_inline_error("x=format=ram,path=/a", "--disk x:layer 1:path: a layer of format ram");
}

/* The parser's message for the one-disk inline spec, or NULL if it accepts it. */
static char *inline_msg(const char *spec)
{
    struct lf_config *cfg = lf_config_new();
    g_autoptr(GError) err = NULL;
    char *msg = lf_config_add_inline(cfg, spec, &err) ? NULL : g_strdup(err->message);

    lf_config_free(cfg);
    return msg;
}

/* Parse and open the one-disk inline spec: NULL if both succeed, else the message. */
static char *open_msg(const char *spec)
{
    struct lf_config *cfg = lf_config_new();
    g_autoptr(GError) err = NULL;
    char *msg = NULL;

    if (!lf_config_add_inline(cfg, spec, &err)) {
        msg = g_strdup_printf("parse: %s", err->message);
    } else {
        struct lf_disk *d = lf_disk_open(g_ptr_array_index(cfg->disks, 0), false, &err);
        if (d == NULL)
            msg = g_strdup(err->message);
        else
            g_assert_cmpint(lf_disk_close(d), ==, 0);
    }
    lf_config_free(cfg);
    return msg;
}

/* spec must be accepted (want == NULL) or rejected with a message containing want. */
static void expect(const char *spec, char *got, const char *want)
{
    if (want == NULL && got != NULL) {
        g_test_message("%s: rejected: %s", spec, got);
        g_test_fail();
    } else if (want != NULL && got == NULL) {
        g_test_message("%s: accepted, wanted: ...%s...", spec, want);
        g_test_fail();
    } else if (want != NULL && strstr(got, want) == NULL) {
        g_test_message("%s: got: %s; want: ...%s...", spec, got, want);
        g_test_fail();
    }
    g_free(got);
}

/* The spec printf'd from fmt must be accepted by the parser (open: and open) if want is
 * NULL, else rejected with a message containing want. */
static void G_GNUC_PRINTF(3, 4) rule(bool open, const char *want, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_autofree char *spec = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    expect(spec, open ? open_msg(spec) : inline_msg(spec), want);
}

/* Every format in the table has each rule its descriptor states enforced, at parse time
 * (driver, path, create, block-size) or at open time (create, read-cache). */
static void test_format_rules(void)
{
    const struct layer_ops *f;

    for (size_t i = 0; (f = layer_format_at(i)) != NULL; i++) {
        const char *n = f->format;
        /* A layer meeting every rule of its format. */
        g_autofree char *ok = f->in_memory ? g_strdup_printf("x=format=%s", n)
                                           : g_strdup_printf("x=format=%s,path=/a", n);
        g_autofree char *no_driver = g_strdup_printf(
            "--disk x:layer 1:driver: a layer of format %s keeps its data in memory and "
            "takes no driver", n);
        g_autofree char *no_path = g_strdup_printf(
            "--disk x:layer 1:path: a layer of format %s keeps its data in memory and takes "
            "no path", n);
        g_autofree char *no_image = g_strdup_printf(
            "--disk x:layer 1:create: a layer of format %s has no image to create", n);
        g_autofree char *no_cache = g_strdup_printf(
            "--disk x:layer 1:read-cache: format %s cannot be a read cache", n);

        g_test_message("format %s", n);
        g_assert_true(layer_format_find(n) == f);
        rule(false, NULL, "%s", ok);
        rule(false, f->in_memory ? no_driver : NULL, "x=format=%s,driver=file,path=/a", n);
        rule(false, f->in_memory ? no_path : NULL, "x=format=%s,path=/a", n);
        rule(false, f->in_memory ? NULL : "--disk x:layer 1:path: required for driver file",
             "x=format=%s", n);
        rule(false, f->has_block_size ? NULL
             : "--disk x:layer 1:block-size: only layers of format ", "%s,block-size=4096", ok);
        rule(false, f->in_memory ? no_image : NULL, "%s,create=true", ok);

        /* Opened over a 1M raw layer on the ram driver: creating, and being a read cache. */
        g_autofree char *top = f->in_memory ? g_strdup_printf("format=%s", n)
            : f->can_create ? g_strdup_printf("format=%s,path=%s/%s.img", n, tmpdir, n)
            : g_strdup_printf("format=%s,driver=ram,size=1M", n);
        if (!f->in_memory)
            rule(true, f->can_create ? NULL
                 : "--disk x:layer 1:create: only overlay layers can be created",
                 "x=%s,create=true:driver=ram,size=1M", top);
        rule(true, f->can_no_overwrite ? NULL : no_cache,
             "x=%s,read-cache=true:driver=ram,size=1M", top);
    }
    g_assert_cmpstr(layer_format_names(), ==, "raw overlay ram");
}

/* Every driver in the table that needs a path gets one, whatever it is called. */
static void test_driver_rules(void)
{
    g_auto(GStrv) names = g_strsplit(bc_driver_names(), " ", -1);

    for (char **n = names; *n != NULL; n++) {
        const struct bc_driver *drv = bc_driver_find(*n);
        g_autofree char *spec = g_strdup_printf("x=driver=%s", *n);
        g_autofree char *want = g_strdup_printf("--disk x:layer 1:path: required for driver "
                                                "%s", *n);

        g_assert_nonnull(drv);
        expect(spec, inline_msg(spec), drv->needs_path ? want : NULL);
    }
}

int main(int argc, char **argv)
{
    tu_test_init(&argc, &argv);
    tmpdir = g_dir_make_tmp("lf-config-XXXXXX", NULL);
    g_assert_nonnull(tmpdir);
    tu_add_isolated("/config/valid", test_valid);
    tu_add_isolated("/config/stack-rules", test_stack_rules);
    tu_add_isolated("/config/errors", test_errors);
    tu_add_isolated("/config/inline", test_inline);
    tu_add_isolated("/config/format-rules", test_format_rules);
    tu_add_isolated("/config/driver-rules", test_driver_rules);
    int r = g_test_run();
    g_autofree char *rm = g_strdup_printf("rm -rf '%s'", tmpdir);
    if (system(rm) != 0)
        g_printerr("could not remove %s\n", tmpdir);
    return r;
}
