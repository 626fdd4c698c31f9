/* SPDX-License-Identifier: MIT */
/* The virtio-blk-vfio-pci driver: a virtio-blk PCI function bound to vfio-pci, driven from
 * userspace: the modern virtio PCI transport (common config, notify, one MSI-X vector per
 * queue), on the VFIO plumbing of vfio.c. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <linux/pci_regs.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_pci.h>

#include "drivers/drivers.h"
#include "drivers/util.h"
#include "drivers/virtio-blk/vfio.h"
#include "drivers/virtio-blk/virtio-blk.h"

/*
 * Notes on the design
 *
 * Setup follows the virtio 1.x PCI transport: find the vendor capabilities (common,
 * notify, ISR, device config) in config space, map their BARs (or fall back to pread and
 * pwrite on the device fd), reset, negotiate VERSION_1 and ACCESS_PLATFORM with the blk
 * features, set up queues with one MSI-X vector each (vector 0 is the config interrupt),
 * then DRIVER_OK.  The driver's memory region (anonymous, MADV_DONTFORK) is DMA-mapped at an
 * IOVA taken from the usable ranges the kernel reports, and blockcore's I/O buffer arenas
 * (bc_buf_regions(), MAP_SHARED memfds) right after it, so that data in bc_buf_alloc()
 * memory (FUSE buffers, bounce buffers) needs no copy.  Mapping pins the arenas' pages; if
 * the kernel refuses (RLIMIT_MEMLOCK, no IOVA space), the device works without them and
 * every request is copied through the region as before.
 *
 * Teardown resets the device before vf_dev_close() takes the DMA mapping away, so it can no
 * longer write into memory we give back; it runs on close and on every setup error past the
 * group open.
 * The config interrupt is the death fd: if the device sets DEVICE_NEEDS_RESET, every
 * request fails with -EIO.
 */

#define VF_MAX_QUEUES 64
#define VF_VIRTIO_VENDOR 0x1af4

/* The region and every arena are DMA-mapped through one struct vf_dev. */
_Static_assert(VF_MAX_DMA_MAPS >= 1 + BC_BUF_MAX_REGIONS, "too few DMA mappings");

struct vf_state {
    char *what;
    struct vf_dev dev;      /* the PCI function through VFIO */
    struct vf_cap common, notify, isr, devcfg;
    uint32_t notify_mult;
    uint64_t notify_at[VF_MAX_QUEUES];  /* offset in the notify BAR per queue */
    bool started;           /* status written: reset on teardown */
    void *mem;
    size_t mem_len;
    uint64_t iova;
    bool arena_space;       /* IOVA space for the arenas after the region */
    unsigned narenas;       /* arenas DMA-mapped after the region */
    unsigned nq;
    int call_fd[VF_MAX_QUEUES];
    int cfg_fd;             /* config-change interrupt */
    struct bc_vblk_transport ops;
    struct bc_vblk *blk;
};

/* ---- register access --------------------------------------------------------------- */

/* Read/write a field of the common config structure. */
#define COMMON_R(s, field, len)                                                         \
    vf_cap_read(&(s)->dev, &(s)->common, VIRTIO_PCI_COMMON_##field, (len))
#define COMMON_W(s, field, v, len)                                                      \
    vf_cap_write(&(s)->dev, &(s)->common, VIRTIO_PCI_COMMON_##field, (v), (len))

static void set_status(struct vf_state *s, uint8_t bits)
{
    COMMON_W(s, STATUS, COMMON_R(s, STATUS, 1) | bits, 1);
}

/* Reset and wait (up to a second) for the device to acknowledge. */
static bool reset_device(struct vf_state *s)
{
    COMMON_W(s, STATUS, 0, 1);
    for (int i = 0; i < 1000; i++) {
        if (COMMON_R(s, STATUS, 1) == 0)
            return true;
        g_usleep(1000);
    }
    return false;
}

/* ---- transport ops ----------------------------------------------------------------- */

static void vf_kick(void *t, unsigned qi)
{
    struct vf_state *s = t;
    struct vf_cap c = s->notify;
    c.off += s->notify_at[qi];
    vf_cap_write(&s->dev, &c, 0, qi, 2);
}

static bool vf_alive(void *t)
{
    struct vf_state *s = t;
    uint64_t v;
    ssize_t r = read(s->cfg_fd, &v, sizeof(v));
    (void)r;
    uint32_t st = COMMON_R(s, STATUS, 1);
    return st != UINT32_MAX && !(st & VIRTIO_CONFIG_S_NEEDS_RESET) && st != 0xff;
}

/* ---- teardown ---------------------------------------------------------------------- */

static void vf_free(struct vf_state *s)
{
    if (s->started && s->common.bar >= 0)
        reset_device(s);    /* no more DMA into memory about to go */
    bc_vblk_free(s->blk);
    vf_dev_close(&s->dev);
    if (s->mem)
        munmap(s->mem, s->mem_len);
    for (unsigned i = 0; i < VF_MAX_QUEUES; i++)
        if (s->call_fd[i] >= 0)
            close(s->call_fd[i]);
    if (s->cfg_fd >= 0)
        close(s->cfg_fd);
    g_free(s->what);
    g_free(s);
}

/* ---- setup steps ------------------------------------------------------------------- */

/* Find the virtio structures among the vendor capabilities; map their BARs. */
static bool find_caps(struct vf_state *s, GError **errp)
{
    struct vf_cap *caps[] = { NULL, &s->common, &s->notify, &s->isr, &s->devcfg };
    uint32_t pos[48];
    unsigned n = vf_find_caps(&s->dev, PCI_CAP_ID_VNDR, pos, G_N_ELEMENTS(pos));

    s->common.bar = s->notify.bar = s->isr.bar = s->devcfg.bar = -1;
    for (unsigned k = 0; k < n; k++) {
        uint32_t p = pos[k];
        uint32_t type = vf_cfg_read(&s->dev, p + VIRTIO_PCI_CAP_CFG_TYPE, 1);
        uint32_t bar = vf_cfg_read(&s->dev, p + VIRTIO_PCI_CAP_BAR, 1);
        if (type < 1 || type > 4 || bar > 5 || caps[type]->bar >= 0)
            continue;   /* the first of each type is the preferred one */
        caps[type]->bar = (int)bar;
        caps[type]->off = vf_cfg_read(&s->dev, p + VIRTIO_PCI_CAP_OFFSET, 4);
        caps[type]->len = vf_cfg_read(&s->dev, p + VIRTIO_PCI_CAP_LENGTH, 4);
        if (type == VIRTIO_PCI_CAP_NOTIFY_CFG)
            s->notify_mult = vf_cfg_read(&s->dev, p + sizeof(struct virtio_pci_cap), 4);
    }
    if (s->common.bar < 0 || s->notify.bar < 0 || s->devcfg.bar < 0)
        goto missing;

    for (int i = 1; i <= 4; i++) {
        int b = caps[i]->bar;
        if (b < 0 || s->dev.bar[b].size)
            continue;
        if (!vf_map_bar(&s->dev, b, errp))
            return false;
        if (caps[i]->off + caps[i]->len > s->dev.bar[b].size) {
            g_set_error(errp, BC_ERROR, EIO, "%s: virtio capability outside BAR %d", s->what,
                        b);
            return false;
        }
    }
    return true;

missing:
    g_set_error(errp, BC_ERROR, ENODEV,
                "%s: no virtio 1.x PCI capabilities (a legacy-only device?)", s->what);
    return false;
}

/* ---- the steps of bc_vblk_setup() -------------------------------------------------- */

/* Write the features and have the device accept them. */
static bool vf_set_features(void *t, uint64_t features, GError **errp)
{
    struct vf_state *s = t;

    COMMON_W(s, GFSELECT, 0, 4);
    COMMON_W(s, GF, (uint32_t)features, 4);
    COMMON_W(s, GFSELECT, 1, 4);
    COMMON_W(s, GF, (uint32_t)(features >> 32), 4);
    set_status(s, VIRTIO_CONFIG_S_FEATURES_OK);
    if (!(COMMON_R(s, STATUS, 1) & VIRTIO_CONFIG_S_FEATURES_OK)) {
        g_set_error(errp, BC_ERROR, ENOTSUP, "%s: the device refused features %#llx", s->what,
                    (unsigned long long)features);
        return false;
    }
    return true;
}

/* A consistent snapshot of config space (the generation unchanged across the read). */
static bool vf_read_config(void *t, uint8_t *raw, GError **errp)
{
    struct vf_state *s = t;
    size_t n = MIN((size_t)BC_VBLK_CONFIG_BYTES, s->devcfg.len);

    for (int tries = 0; tries < 100; tries++) {
        uint32_t gen = COMMON_R(s, CFGGENERATION, 1);
        for (size_t i = 0; i < n; i++)
            raw[i] = (uint8_t)vf_cap_read(&s->dev, &s->devcfg, i, 1);
        if (COMMON_R(s, CFGGENERATION, 1) == gen)
            return true;
    }
    g_set_error(errp, BC_ERROR, EIO, "%s: the device config keeps changing", s->what);
    return false;
}

/* One MSI-X vector per queue plus the config vector. */
static bool vf_limit_queues(void *t, int64_t want, unsigned *queues, GError **errp)
{
    struct vf_state *s = t;
    unsigned vectors = vf_msix_count(&s->dev);

    if (vectors < 2) {
        g_set_error(errp, BC_ERROR, ENOTSUP, "%s: the device has no usable MSI-X", s->what);
        return false;
    }
    *queues = MIN(*queues, vectors - 1);
    if (want > (int64_t)*queues) {
        g_set_error(errp, BC_ERROR, EINVAL, "%s: num-queues %lld: the device has MSI-X "
                    "vectors for only %u", s->what, (long long)want, *queues);
        return false;
    }
    return true;
}

static unsigned vf_queue_max(void *t, unsigned qi)
{
    struct vf_state *s = t;

    COMMON_W(s, Q_SELECT, qi, 2);
    return COMMON_R(s, Q_SIZE, 2);
}

/* DMA-map the I/O buffer arenas after the region (if vf_alloc() found IOVA space for both
 * together); those the kernel refuses are left out, with a message for -v. */
static bool vf_attach(void *t, struct bc_vblk *b, uint64_t features, GError **errp)
{
    struct vf_state *s = t;
    struct bc_buf_region arenas[BC_BUF_MAX_REGIONS];
    unsigned n = s->arena_space ? bc_buf_regions(arenas, BC_BUF_MAX_REGIONS) : 0;
    uint64_t iova = s->iova + s->mem_len;

    (void)features;
    (void)errp;

    for (unsigned i = 0; i < n; i++) {
        int r = vf_dma_map(&s->dev, arenas[i].base, arenas[i].len, iova);
        if (r < 0) {
            g_debug("%s: the IOMMU refused to map I/O buffer arena %u (%zu bytes): %s; data "
                    "outside the mapped ones is copied", s->what, i, arenas[i].len,
                    g_strerror(-r));
            return true;
        }
        s->narenas++;
        bc_vblk_add_mem(b, &(struct bc_vmem){ .base = arenas[i].base, .len = arenas[i].len,
                                              .dev_base = iova });
        iova += arenas[i].len;
    }
    return true;
}

/* Vector 0 to the config interrupt, vector i + 1 to queue i's call eventfd. */
static bool setup_irqs(struct vf_state *s, GError **errp)
{
    int fds[VF_MAX_QUEUES + 1];

    fds[0] = s->cfg_fd;
    for (unsigned i = 0; i < s->nq; i++)
        fds[i + 1] = s->call_fd[i];
    return vf_msix_wire(&s->dev, fds, s->nq + 1, errp);
}

static bool vf_set_queue(void *t, unsigned i, unsigned size, uint64_t desc, uint64_t avail,
                         uint64_t used, GError **errp)
{
    struct vf_state *s = t;

    COMMON_W(s, Q_SELECT, i, 2);
    COMMON_W(s, Q_SIZE, size, 2);
    COMMON_W(s, Q_MSIX, i + 1, 2);
    if (COMMON_R(s, Q_MSIX, 2) != i + 1) {
        g_set_error(errp, BC_ERROR, EIO, "%s: queue %u: the device refused MSI-X vector %u",
                    s->what, i, i + 1);
        return false;
    }
    COMMON_W(s, Q_DESCLO, (uint32_t)desc, 4);
    COMMON_W(s, Q_DESCHI, (uint32_t)(desc >> 32), 4);
    COMMON_W(s, Q_AVAILLO, (uint32_t)avail, 4);
    COMMON_W(s, Q_AVAILHI, (uint32_t)(avail >> 32), 4);
    COMMON_W(s, Q_USEDLO, (uint32_t)used, 4);
    COMMON_W(s, Q_USEDHI, (uint32_t)(used >> 32), 4);
    s->notify_at[i] = (uint64_t)COMMON_R(s, Q_NOFF, 2) * s->notify_mult;
    if (s->notify_at[i] + 2 > s->notify.len) {
        g_set_error(errp, BC_ERROR, EIO, "%s: queue %u: notify offset outside its capability",
                    s->what, i);
        return false;
    }
    COMMON_W(s, Q_ENABLE, 1, 2);
    return true;
}

/* Device memory (anonymous, kept out of children, pinned and mapped for DMA, with IOVA
 * space for the arenas after it if there is some), the eventfds and MSI-X wired to them. */
static bool vf_alloc(void *t, unsigned nq, size_t len, struct bc_vmem *mem, GError **errp)
{
    struct vf_state *s = t;

    s->nq = nq;
    s->mem_len = (len + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
    s->mem = mmap(NULL, s->mem_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s->mem == MAP_FAILED) {
        s->mem = NULL;
        g_set_error(errp, BC_ERROR, errno, "%s: mmap: %s", s->what, g_strerror(errno));
        return false;
    }
    madvise(s->mem, s->mem_len, MADV_DONTFORK);
    /* IOVA space for the region and the arenas together, else for the region alone. */
    struct bc_buf_region arenas[BC_BUF_MAX_REGIONS];
    unsigned narenas = bc_buf_regions(arenas, BC_BUF_MAX_REGIONS);
    size_t all = s->mem_len;
    for (unsigned i = 0; i < narenas; i++)
        all += arenas[i].len;
    s->arena_space = narenas && vf_pick_iova(&s->dev, all, &s->iova, NULL);
    if (!s->arena_space && !vf_pick_iova(&s->dev, s->mem_len, &s->iova, errp))
        return false;
    int e = -vf_dma_map(&s->dev, s->mem, s->mem_len, s->iova);
    if (e != 0) {
        struct rlimit rl = { 0 };
        getrlimit(RLIMIT_MEMLOCK, &rl);
        g_set_error(errp, BC_ERROR, e,
                    "%s: the IOMMU refused to map %zu bytes: %s (RLIMIT_MEMLOCK is %llu; "
                    "raise it with ulimit -l or run with CAP_IPC_LOCK)", s->what, s->mem_len,
                    g_strerror(e), (unsigned long long)rl.rlim_cur);
        return false;
    }
    *mem = (struct bc_vmem){ .base = s->mem, .len = s->mem_len, .dev_base = s->iova };

    s->cfg_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    for (unsigned i = 0; i < s->nq; i++)
        s->call_fd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    for (unsigned i = 0; i < s->nq; i++)
        if (s->call_fd[i] < 0 || s->cfg_fd < 0) {
            g_set_error(errp, BC_ERROR, errno, "%s: eventfd: %s", s->what, g_strerror(errno));
            return false;
        }
    if (!setup_irqs(s, errp))
        return false;
    COMMON_W(s, MSIX, 0, 2);
    if (COMMON_R(s, MSIX, 2) != 0) {
        g_set_error(errp, BC_ERROR, EIO, "%s: the device refused its config vector", s->what);
        return false;
    }
    s->ops.death_fd = s->cfg_fd;
    return true;
}

static const struct bc_vblk_setup_ops vf_setup_ops = {
    .set_features = vf_set_features,
    .read_config = vf_read_config,
    .limit_queues = vf_limit_queues,
    .queue_max = vf_queue_max,
    .alloc = vf_alloc,
    .attach = vf_attach,
    .set_queue = vf_set_queue,
};

static void *vf_open(const struct bc_open_args *args, struct bc_props *props, GError **errp)
{
    struct vf_state *s = g_new0(struct vf_state, 1);
    uint32_t queue_size;
    int64_t want_queues;
    uint64_t dev_features;

    vf_dev_init(&s->dev);
    s->cfg_fd = -1;
    for (unsigned i = 0; i < VF_MAX_QUEUES; i++)
        s->call_fd[i] = -1;
    s->common.bar = -1;
    s->what = g_strdup_printf("%s: virtio-blk-vfio-pci: %s", bc_what(args),
                              args->path ? args->path : "(no path)");
    /* The address, or any path ending in it (/sys/bus/pci/devices/ADDR, or what a config
     * parser made of a relative path). */
    const char *addr = args->path ? strrchr(args->path, '/') : NULL;
    addr = addr ? addr + 1 : args->path;
    unsigned dom, bus, slot, fn;
    char tail;
    if (!addr || strlen(addr) != 12 ||
        sscanf(addr, "%4x:%2x:%2x.%1x%c", &dom, &bus, &slot, &fn, &tail) != 4) {
        g_set_error(errp, BC_ERROR, EINVAL,
                    "%s: path must be a PCI address such as 0000:01:00.0", s->what);
        goto fail;
    }
    g_free(s->what);
    s->what = g_strdup_printf("%s: virtio-blk-vfio-pci: %s", bc_what(args), addr);
    if (!bc_opt_pow2(args, "queue-size", 4, 32768, 256, &queue_size, errp) ||
        !bc_opt_uint(args, "num-queues", VF_MAX_QUEUES, 0, &want_queues, errp))
        goto fail;
    if (!vf_dev_open(&s->dev, s->what, addr, errp))
        goto fail;
    uint32_t vendor = vf_cfg_read(&s->dev, PCI_VENDOR_ID, 2);
    uint32_t devid = vf_cfg_read(&s->dev, PCI_DEVICE_ID, 2);
    if (vendor != VF_VIRTIO_VENDOR || (devid != 0x1042 && devid != 0x1001)) {
        g_set_error(errp, BC_ERROR, ENODEV, "%s: %04x:%04x is not a virtio-blk device",
                    s->what, vendor, devid);
        goto fail;
    }
    if (!find_caps(s, errp))
        goto fail;

    /* Bus mastering on, then the virtio status handshake. */
    s->started = true;
    vf_bus_master(&s->dev);
    if (!reset_device(s)) {
        g_set_error(errp, BC_ERROR, EIO, "%s: the device does not reset", s->what);
        goto fail;
    }
    set_status(s, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    set_status(s, VIRTIO_CONFIG_S_DRIVER);
    COMMON_W(s, DFSELECT, 0, 4);
    dev_features = COMMON_R(s, DF, 4);
    COMMON_W(s, DFSELECT, 1, 4);
    dev_features |= (uint64_t)COMMON_R(s, DF, 4) << 32;
    if (!(dev_features & (1ull << VIRTIO_F_VERSION_1))) {
        g_set_error(errp, BC_ERROR, ENOTSUP, "%s: the device lacks VIRTIO_F_VERSION_1",
                    s->what);
        goto fail;
    }

    s->ops = (struct bc_vblk_transport){ .kick = vf_kick, .death_fd = -1,
                                         .alive = vf_alive };
    struct bc_vblk_setup vs = {
        .what = s->what,
        .dev_features = dev_features,
        .extra_features = 1ull << VIRTIO_F_ACCESS_PLATFORM,
        .dev_queues = COMMON_R(s, NUMQ, 2),
        .want_queues = want_queues,
        .queue_size = queue_size,
        .read_only = args->read_only,
        .call_fds = s->call_fd,
        .io = &s->ops,      /* death_fd: the config interrupt, once vf_alloc() has it */
    };
    if (!bc_vblk_setup(&vs, &vf_setup_ops, s, props, &s->blk, errp))
        goto fail;
    set_status(s, VIRTIO_CONFIG_S_DRIVER_OK);
    if (COMMON_R(s, STATUS, 1) & VIRTIO_CONFIG_S_NEEDS_RESET) {
        g_set_error(errp, BC_ERROR, EIO, "%s: the device failed at start", s->what);
        goto fail;
    }
    g_debug("%s: features %#" G_GINT64_MODIFIER "x, %u queues of %u, block size %u, "
            "IOVA %#" G_GINT64_MODIFIER "x, %u I/O buffer arenas mapped, BARs %s", s->what,
            vs.features, s->nq, vs.queue_size, props->req_align, s->iova, s->narenas,
            s->dev.bar[s->common.bar].map ? "mapped" : "via pread");
    return s;

fail:
    vf_free(s);
    return NULL;
}

static void vf_close(void *state)
{
    vf_free(state);
}

static void vf_submit(void *state, struct bc_dreq *dreq)
{
    struct vf_state *s = state;
    bc_vblk_submit(s->blk, dreq);
}

static void vf_get_stats(void *state, struct bc_drv_stats *st)
{
    struct vf_state *s = state;
    bc_vblk_stats(s->blk, st);
}

static const char *const vf_keys[] = { "num-queues", "queue-size", NULL };

const struct bc_driver bc_drv_virtio_blk_vfio_pci = {
    .name = "virtio-blk-vfio-pci",
    .keys = vf_keys,
    .open = vf_open,
    .close = vf_close,
    .submit = vf_submit,
    .get_stats = vf_get_stats,
};
