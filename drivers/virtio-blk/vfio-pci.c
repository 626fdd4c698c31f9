/* SPDX-License-Identifier: MIT */
/* The virtio-blk-vfio-pci driver: a virtio-blk PCI function bound to vfio-pci, driven from
 * userspace (modern virtio PCI transport, MSI-X to eventfds, rings DMA-mapped via type1). */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_pci.h>

#include "drivers/drivers.h"
#include "drivers/util.h"
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
 * Teardown resets the device before the DMA mapping goes away, so it can no longer write
 * into memory we give back; it runs on close and on every setup error past the group open.
 * The config interrupt is the death fd: if the device sets DEVICE_NEEDS_RESET, every
 * request fails with -EIO.
 */

#define VF_MAX_QUEUES 64
#define VF_PAGE 4096u
#define VF_VIRTIO_VENDOR 0x1af4

struct vf_cap {
    int bar;                /* -1: not found */
    uint64_t off;
    uint32_t len;
};

struct vf_bar {
    uint8_t *map;           /* NULL: use pread/pwrite at off */
    uint64_t size, off;
};

struct vf_state {
    char *what;
    int container, group, device;
    uint64_t cfg_off;       /* config space in the device fd */
    struct vf_bar bar[6];
    struct vf_cap common, notify, isr, devcfg;
    uint32_t notify_mult;
    uint64_t notify_at[VF_MAX_QUEUES];  /* offset in the notify BAR per queue */
    bool started;           /* status written: reset on teardown */
    bool irqs;              /* MSI-X set up */
    void *mem;
    size_t mem_len;
    uint64_t iova;
    bool dma_mapped;
    bool arena_space;       /* IOVA space for the arenas after the region */
    unsigned narenas;       /* arenas DMA-mapped, at arena_iova[] */
    struct bc_buf_region arenas[BC_BUF_MAX_REGIONS];
    uint64_t arena_iova[BC_BUF_MAX_REGIONS];
    unsigned nq;
    int call_fd[VF_MAX_QUEUES];
    int cfg_fd;             /* config-change interrupt */
    struct bc_vblk_transport ops;
    struct bc_vblk *blk;
};

/* ---- register access --------------------------------------------------------------- */

static bool cfg_rw(struct vf_state *s, bool wr, uint64_t off, void *buf, size_t len)
{
    ssize_t n = wr ? pwrite(s->device, buf, len, (off_t)(s->cfg_off + off))
                   : pread(s->device, buf, len, (off_t)(s->cfg_off + off));
    return n == (ssize_t)len;
}

static uint32_t cfg_read(struct vf_state *s, uint64_t off, size_t len)
{
    uint32_t v = 0;
    if (!cfg_rw(s, false, off, &v, len))
        return UINT32_MAX;
    return le32toh(v);
}

static void cfg_write(struct vf_state *s, uint64_t off, uint32_t v, size_t len)
{
    v = htole32(v);
    cfg_rw(s, true, off, &v, len);
}

/* Read/write len (1, 2 or 4) bytes at off inside capability c. */
static uint32_t cap_read(struct vf_state *s, const struct vf_cap *c, uint64_t off, size_t len)
{
    struct vf_bar *b = &s->bar[c->bar];
    uint64_t at = c->off + off;

    if (b->map) {
        volatile void *p = b->map + at;
        switch (len) {
        case 1: return *(volatile uint8_t *)p;
        case 2: return le16toh(*(volatile uint16_t *)p);
        default: return le32toh(*(volatile uint32_t *)p);
        }
    }
    uint32_t v = 0;
    if (pread(s->device, &v, len, (off_t)(b->off + at)) != (ssize_t)len)
        return UINT32_MAX;
    return le32toh(v);
}

static void cap_write(struct vf_state *s, const struct vf_cap *c, uint64_t off, uint32_t v,
                      size_t len)
{
    struct vf_bar *b = &s->bar[c->bar];
    uint64_t at = c->off + off;

    if (b->map) {
        volatile void *p = b->map + at;
        switch (len) {
        case 1: *(volatile uint8_t *)p = (uint8_t)v; break;
        case 2: *(volatile uint16_t *)p = htole16((uint16_t)v); break;
        default: *(volatile uint32_t *)p = htole32(v); break;
        }
        return;
    }
    v = htole32(v);
    ssize_t r = pwrite(s->device, &v, len, (off_t)(b->off + at));
    (void)r;
}

#define COMMON_R(s, field, len) cap_read((s), &(s)->common, VIRTIO_PCI_COMMON_##field, (len))
#define COMMON_W(s, field, v, len) cap_write((s), &(s)->common, VIRTIO_PCI_COMMON_##field, (v), (len))

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
    cap_write(s, &c, 0, qi, 2);
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
    if (s->irqs) {
        struct vfio_irq_set off = { .argsz = sizeof(off),
                                    .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                                    .index = VFIO_PCI_MSIX_IRQ_INDEX, .start = 0, .count = 0 };
        ioctl(s->device, VFIO_DEVICE_SET_IRQS, &off);
    }
    if (s->started)
        cfg_write(s, PCI_COMMAND, cfg_read(s, PCI_COMMAND, 2) & ~PCI_COMMAND_MASTER, 2);
    for (int i = 0; i < 6; i++)
        if (s->bar[i].map)
            munmap(s->bar[i].map, s->bar[i].size);
    if (s->device >= 0)
        close(s->device);
    if (s->dma_mapped) {
        struct vfio_iommu_type1_dma_unmap um = { .argsz = sizeof(um), .iova = s->iova,
                                                 .size = s->mem_len };
        ioctl(s->container, VFIO_IOMMU_UNMAP_DMA, &um);
    }
    for (unsigned i = 0; i < s->narenas; i++) {
        struct vfio_iommu_type1_dma_unmap um = { .argsz = sizeof(um),
                                                 .iova = s->arena_iova[i],
                                                 .size = s->arenas[i].len };
        ioctl(s->container, VFIO_IOMMU_UNMAP_DMA, &um);
    }
    if (s->group >= 0)
        close(s->group);
    if (s->container >= 0)
        close(s->container);
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

/* The device's sysfs state: exists, bound to vfio-pci; returns its IOMMU group or -1. */
static int sysfs_group(struct vf_state *s, const char *addr, GError **errp)
{
    g_autofree char *dir = g_strdup_printf("/sys/bus/pci/devices/%s", addr);
    g_autofree char *drv_link = g_strdup_printf("%s/driver", dir);
    g_autofree char *grp_link = g_strdup_printf("%s/iommu_group", dir);
    g_autofree char *drv = g_file_read_link(drv_link, NULL);
    g_autofree char *grp = NULL;

    if (!g_file_test(dir, G_FILE_TEST_IS_DIR)) {
        g_set_error(errp, BC_ERROR, ENODEV, "%s: no such PCI device", s->what);
        return -1;
    }
    if (!drv || strcmp(strrchr(drv, '/') ? strrchr(drv, '/') + 1 : drv, "vfio-pci") != 0) {
        g_set_error(errp, BC_ERROR, ENODEV,
                    "%s: not bound to vfio-pci (%s%s); see layerfs-virtio(7) for binding it",
                    s->what, drv ? "bound to " : "bound to no driver",
                    drv ? (strrchr(drv, '/') ? strrchr(drv, '/') + 1 : drv) : "");
        return -1;
    }
    grp = g_file_read_link(grp_link, NULL);
    if (!grp) {
        g_set_error(errp, BC_ERROR, ENODEV, "%s: no IOMMU group (is the IOMMU enabled?)",
                    s->what);
        return -1;
    }
    return atoi(strrchr(grp, '/') ? strrchr(grp, '/') + 1 : grp);
}

static bool open_container(struct vf_state *s, int group_id, const char *addr, GError **errp)
{
    char path[64];
    struct vfio_group_status gs = { .argsz = sizeof(gs) };

    s->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
    if (s->container < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: /dev/vfio/vfio: %s", s->what, g_strerror(errno));
        return false;
    }
    if (ioctl(s->container, VFIO_GET_API_VERSION) != VFIO_API_VERSION ||
        !ioctl(s->container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU)) {
        g_set_error(errp, BC_ERROR, ENOTSUP, "%s: the kernel's VFIO lacks the type1v2 IOMMU",
                    s->what);
        return false;
    }
    snprintf(path, sizeof(path), "/dev/vfio/%d", group_id);
    s->group = open(path, O_RDWR | O_CLOEXEC);
    if (s->group < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: %s: %s", s->what, path, g_strerror(errno));
        return false;
    }
    if (ioctl(s->group, VFIO_GROUP_GET_STATUS, &gs) < 0 ||
        !(gs.flags & VFIO_GROUP_FLAGS_VIABLE)) {
        g_set_error(errp, BC_ERROR, EBUSY,
                    "%s: IOMMU group %d is not viable: bind every device in "
                    "/sys/kernel/iommu_groups/%d/devices to vfio-pci", s->what, group_id,
                    group_id);
        return false;
    }
    if (ioctl(s->group, VFIO_GROUP_SET_CONTAINER, &s->container) < 0 ||
        ioctl(s->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: setting up the IOMMU container: %s", s->what,
                    g_strerror(errno));
        return false;
    }
    s->device = ioctl(s->group, VFIO_GROUP_GET_DEVICE_FD, addr);
    if (s->device < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: opening the device: %s", s->what,
                    g_strerror(errno));
        return false;
    }
    return true;
}

/* Pick an IOVA for len bytes inside the usable ranges (default: from 1 MiB). */
static bool pick_iova(struct vf_state *s, size_t len, GError **errp)
{
    struct vfio_iommu_type1_info probe = { .argsz = sizeof(probe) };
    g_autofree uint8_t *buf = NULL;
    uint64_t lo = 1u << 20;

    if (ioctl(s->container, VFIO_IOMMU_GET_INFO, &probe) < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: IOMMU info: %s", s->what, g_strerror(errno));
        return false;
    }
    s->iova = lo;
    if (!(probe.flags & VFIO_IOMMU_INFO_CAPS) || probe.argsz <= sizeof(probe))
        return true;
    buf = g_malloc0(probe.argsz);
    struct vfio_iommu_type1_info *info = (void *)buf;
    info->argsz = probe.argsz;
    if (ioctl(s->container, VFIO_IOMMU_GET_INFO, info) < 0 || !info->cap_offset)
        return true;
    /* The kernel packs capabilities without regard to alignment: copy fields out. */
    for (uint32_t off = info->cap_offset, hops = 0;
         off && off + sizeof(struct vfio_info_cap_header) <= info->argsz && hops < 64; hops++) {
        struct vfio_info_cap_header h;
        memcpy(&h, buf + off, sizeof(h));
        if (h.id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
            struct vfio_iommu_type1_info_cap_iova_range r;
            size_t at = off + sizeof(r);
            if (off + sizeof(r) > info->argsz)
                break;
            memcpy(&r, buf + off, sizeof(r));
            for (uint32_t i = 0; i < r.nr_iovas && at + sizeof(struct vfio_iova_range) <=
                                                     info->argsz; i++, at += sizeof(struct vfio_iova_range)) {
                struct vfio_iova_range range;
                memcpy(&range, buf + at, sizeof(range));
                uint64_t start = MAX(range.start, lo);
                start = (start + (2u << 20) - 1) & ~(uint64_t)((2u << 20) - 1);
                if (start <= range.end && range.end - start + 1 >= len) {
                    s->iova = start;
                    return true;
                }
            }
            g_set_error(errp, BC_ERROR, ENOSPC, "%s: no usable IOVA range for %zu bytes",
                        s->what, len);
            return false;
        }
        off = h.next;
    }
    return true;
}

/* Walk the capability list for the virtio structures; map their BARs. */
static bool find_caps(struct vf_state *s, GError **errp)
{
    struct vf_cap *caps[] = { NULL, &s->common, &s->notify, &s->isr, &s->devcfg };
    unsigned guard = 0;

    s->common.bar = s->notify.bar = s->isr.bar = s->devcfg.bar = -1;
    if (!(cfg_read(s, PCI_STATUS, 2) & PCI_STATUS_CAP_LIST))
        goto missing;
    for (uint32_t p = cfg_read(s, PCI_CAPABILITY_LIST, 1) & ~3u; p && guard < 48;
         p = cfg_read(s, p + 1, 1) & ~3u, guard++) {
        if (cfg_read(s, p, 1) != PCI_CAP_ID_VNDR)
            continue;
        uint32_t type = cfg_read(s, p + VIRTIO_PCI_CAP_CFG_TYPE, 1);
        uint32_t bar = cfg_read(s, p + VIRTIO_PCI_CAP_BAR, 1);
        if (type < 1 || type > 4 || bar > 5 || caps[type]->bar >= 0)
            continue;   /* the first of each type is the preferred one */
        caps[type]->bar = (int)bar;
        caps[type]->off = cfg_read(s, p + VIRTIO_PCI_CAP_OFFSET, 4);
        caps[type]->len = cfg_read(s, p + VIRTIO_PCI_CAP_LENGTH, 4);
        if (type == VIRTIO_PCI_CAP_NOTIFY_CFG)
            s->notify_mult = cfg_read(s, p + sizeof(struct virtio_pci_cap), 4);
    }
    if (s->common.bar < 0 || s->notify.bar < 0 || s->devcfg.bar < 0)
        goto missing;

    for (int i = 1; i <= 4; i++) {
        int b = caps[i]->bar;
        struct vfio_region_info ri = { .argsz = sizeof(ri), .index = (uint32_t)b };
        if (b < 0 || s->bar[b].size)
            continue;
        if (ioctl(s->device, VFIO_DEVICE_GET_REGION_INFO, &ri) < 0 || !ri.size) {
            g_set_error(errp, BC_ERROR, EIO, "%s: BAR %d: %s", s->what, b, g_strerror(errno));
            return false;
        }
        s->bar[b].size = ri.size;
        s->bar[b].off = ri.offset;
        if (ri.flags & VFIO_REGION_INFO_FLAG_MMAP) {
            void *m = mmap(NULL, ri.size, PROT_READ | PROT_WRITE, MAP_SHARED, s->device,
                           (off_t)ri.offset);
            s->bar[b].map = m == MAP_FAILED ? NULL : m;
        }
        if (caps[i]->off + caps[i]->len > ri.size) {
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
            raw[i] = (uint8_t)cap_read(s, &s->devcfg, i, 1);
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
    struct vfio_irq_info ii = { .argsz = sizeof(ii), .index = VFIO_PCI_MSIX_IRQ_INDEX };

    if (ioctl(s->device, VFIO_DEVICE_GET_IRQ_INFO, &ii) < 0 || ii.count < 2) {
        g_set_error(errp, BC_ERROR, ENOTSUP, "%s: the device has no usable MSI-X", s->what);
        return false;
    }
    *queues = MIN(*queues, ii.count - 1);
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
        struct vfio_iommu_type1_dma_map dm = {
            .argsz = sizeof(dm),
            .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            .vaddr = (uintptr_t)arenas[i].base,
            .iova = iova,
            .size = arenas[i].len,
        };
        if (ioctl(s->container, VFIO_IOMMU_MAP_DMA, &dm) < 0) {
            g_debug("%s: the IOMMU refused to map I/O buffer arena %u (%zu bytes): %s; data "
                    "outside the mapped ones is copied", s->what, i, arenas[i].len,
                    g_strerror(errno));
            return true;
        }
        s->arenas[s->narenas] = arenas[i];
        s->arena_iova[s->narenas++] = iova;
        bc_vblk_add_mem(b, &(struct bc_vmem){ .base = arenas[i].base, .len = arenas[i].len,
                                              .dev_base = iova });
        iova += arenas[i].len;
    }
    return true;
}

static bool setup_irqs(struct vf_state *s, GError **errp)
{
    struct vfio_irq_info ii = { .argsz = sizeof(ii), .index = VFIO_PCI_MSIX_IRQ_INDEX };
    unsigned n = s->nq + 1;

    if (ioctl(s->device, VFIO_DEVICE_GET_IRQ_INFO, &ii) < 0 || ii.count < n) {
        g_set_error(errp, BC_ERROR, ENOTSUP, "%s: the device has %u MSI-X vectors, %u needed",
                    s->what, ii.count, n);
        return false;
    }
    g_autofree struct vfio_irq_set *set = g_malloc0(sizeof(*set) + n * sizeof(int));
    set->argsz = (uint32_t)(sizeof(*set) + n * sizeof(int));
    set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    set->index = VFIO_PCI_MSIX_IRQ_INDEX;
    set->start = 0;
    set->count = n;
    int *fds = (int *)set->data;
    fds[0] = s->cfg_fd;
    for (unsigned i = 0; i < s->nq; i++)
        fds[i + 1] = s->call_fd[i];
    if (ioctl(s->device, VFIO_DEVICE_SET_IRQS, set) < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: wiring MSI-X to eventfds: %s", s->what,
                    g_strerror(errno));
        return false;
    }
    s->irqs = true;
    return true;
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
    s->arena_space = narenas && pick_iova(s, all, NULL);
    if (!s->arena_space && !pick_iova(s, s->mem_len, errp))
        return false;
    struct vfio_iommu_type1_dma_map dm = {
        .argsz = sizeof(dm),
        .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        .vaddr = (uintptr_t)s->mem,
        .iova = s->iova,
        .size = s->mem_len,
    };
    if (ioctl(s->container, VFIO_IOMMU_MAP_DMA, &dm) < 0) {
        int e = errno;
        struct rlimit rl = { 0 };
        getrlimit(RLIMIT_MEMLOCK, &rl);
        g_set_error(errp, BC_ERROR, e,
                    "%s: the IOMMU refused to map %zu bytes: %s (RLIMIT_MEMLOCK is %llu; "
                    "raise it with ulimit -l or run with CAP_IPC_LOCK)", s->what, s->mem_len,
                    g_strerror(e), (unsigned long long)rl.rlim_cur);
        return false;
    }
    s->dma_mapped = true;
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
    int group_id;

    s->container = s->group = s->device = s->cfg_fd = -1;
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
    group_id = sysfs_group(s, addr, errp);
    if (group_id < 0 || !open_container(s, group_id, addr, errp))
        goto fail;

    struct vfio_region_info cr = { .argsz = sizeof(cr), .index = VFIO_PCI_CONFIG_REGION_INDEX };
    if (ioctl(s->device, VFIO_DEVICE_GET_REGION_INFO, &cr) < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: config space: %s", s->what, g_strerror(errno));
        goto fail;
    }
    s->cfg_off = cr.offset;
    uint32_t vendor = cfg_read(s, PCI_VENDOR_ID, 2), devid = cfg_read(s, PCI_DEVICE_ID, 2);
    if (vendor != VF_VIRTIO_VENDOR || (devid != 0x1042 && devid != 0x1001)) {
        g_set_error(errp, BC_ERROR, ENODEV, "%s: %04x:%04x is not a virtio-blk device",
                    s->what, vendor, devid);
        goto fail;
    }
    if (!find_caps(s, errp))
        goto fail;

    /* Bus mastering on, then the virtio status handshake. */
    s->started = true;
    cfg_write(s, PCI_COMMAND, cfg_read(s, PCI_COMMAND, 2) | PCI_COMMAND_MEMORY |
                                  PCI_COMMAND_MASTER, 2);
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
            s->bar[s->common.bar].map ? "mapped" : "via pread");
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
