/* SPDX-License-Identifier: MIT */
/* The VFIO plumbing of the virtio-blk-vfio-pci driver, which knows nothing of virtio: open a
 * PCI function through its IOMMU group, reach its config space and BARs, map DMA, wire MSI-X. */
#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/pci_regs.h>
#include <linux/vfio.h>

#include "blockcore/blockcore.h"
#include "drivers/virtio-blk/vfio.h"

/*
 * Notes on the design
 *
 * Everything goes through the device fd: config space and each BAR are regions of it at
 * offsets VFIO reports.  A BAR is mmapped when VFIO allows it, else reached with pread and
 * pwrite at its region offset; either way the access is little-endian, 1, 2 or 4 bytes.
 *
 * The DMA mappings are remembered and undone by vf_dev_close(), after MSI-X and bus
 * mastering are off and the device fd is closed.  Whoever drives the device stops it before
 * (vfio-pci.c resets the virtio device), so that it can no longer write into memory that is
 * about to be given back.
 */

void vf_dev_init(struct vf_dev *d)
{
    *d = (struct vf_dev){ .container = -1, .group = -1, .device = -1 };
}

void vf_dev_close(struct vf_dev *d)
{
    if (d->irqs) {
        struct vfio_irq_set off = { .argsz = sizeof(off),
                                    .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                                    .index = VFIO_PCI_MSIX_IRQ_INDEX, .start = 0, .count = 0 };
        ioctl(d->device, VFIO_DEVICE_SET_IRQS, &off);
    }
    if (d->master)
        vf_cfg_write(d, PCI_COMMAND, vf_cfg_read(d, PCI_COMMAND, 2) & ~PCI_COMMAND_MASTER, 2);
    for (int i = 0; i < 6; i++)
        if (d->bar[i].map)
            munmap(d->bar[i].map, d->bar[i].size);
    if (d->device >= 0)
        close(d->device);
    for (unsigned i = 0; i < d->nmaps; i++) {
        struct vfio_iommu_type1_dma_unmap um = { .argsz = sizeof(um), .iova = d->maps[i].iova,
                                                 .size = d->maps[i].len };
        ioctl(d->container, VFIO_IOMMU_UNMAP_DMA, &um);
    }
    if (d->group >= 0)
        close(d->group);
    if (d->container >= 0)
        close(d->container);
}

/* ---- register access --------------------------------------------------------------- */

static bool cfg_rw(struct vf_dev *d, bool wr, uint64_t off, void *buf, size_t len)
{
    ssize_t n = wr ? pwrite(d->device, buf, len, (off_t)(d->cfg_off + off))
                   : pread(d->device, buf, len, (off_t)(d->cfg_off + off));
    return n == (ssize_t)len;
}

uint32_t vf_cfg_read(struct vf_dev *d, uint64_t off, size_t len)
{
    uint32_t v = 0;
    if (!cfg_rw(d, false, off, &v, len))
        return UINT32_MAX;
    return le32toh(v);
}

void vf_cfg_write(struct vf_dev *d, uint64_t off, uint32_t v, size_t len)
{
    v = htole32(v);
    cfg_rw(d, true, off, &v, len);
}

void vf_bus_master(struct vf_dev *d)
{
    d->master = true;
    vf_cfg_write(d, PCI_COMMAND, vf_cfg_read(d, PCI_COMMAND, 2) | PCI_COMMAND_MEMORY |
                                     PCI_COMMAND_MASTER, 2);
}

uint32_t vf_cap_read(struct vf_dev *d, const struct vf_cap *c, uint64_t off, size_t len)
{
    struct vf_bar *b = &d->bar[c->bar];
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
    if (pread(d->device, &v, len, (off_t)(b->off + at)) != (ssize_t)len)
        return UINT32_MAX;
    return le32toh(v);
}

void vf_cap_write(struct vf_dev *d, const struct vf_cap *c, uint64_t off, uint32_t v,
                  size_t len)
{
    struct vf_bar *b = &d->bar[c->bar];
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
    ssize_t r = pwrite(d->device, &v, len, (off_t)(b->off + at));
    (void)r;
}

/* ---- opening ----------------------------------------------------------------------- */

/* The device's sysfs state: exists, bound to vfio-pci; returns its IOMMU group or -1. */
static int sysfs_group(struct vf_dev *d, const char *addr, GError **errp)
{
    g_autofree char *dir = g_strdup_printf("/sys/bus/pci/devices/%s", addr);
    g_autofree char *drv_link = g_strdup_printf("%s/driver", dir);
    g_autofree char *grp_link = g_strdup_printf("%s/iommu_group", dir);
    g_autofree char *drv = g_file_read_link(drv_link, NULL);
    g_autofree char *grp = NULL;

    if (!g_file_test(dir, G_FILE_TEST_IS_DIR)) {
        g_set_error(errp, BC_ERROR, ENODEV, "%s: no such PCI device", d->what);
        return -1;
    }
    if (!drv || strcmp(strrchr(drv, '/') ? strrchr(drv, '/') + 1 : drv, "vfio-pci") != 0) {
        g_set_error(errp, BC_ERROR, ENODEV,
                    "%s: not bound to vfio-pci (%s%s); see layerfs-virtio(7) for binding it",
                    d->what, drv ? "bound to " : "bound to no driver",
                    drv ? (strrchr(drv, '/') ? strrchr(drv, '/') + 1 : drv) : "");
        return -1;
    }
    grp = g_file_read_link(grp_link, NULL);
    if (!grp) {
        g_set_error(errp, BC_ERROR, ENODEV, "%s: no IOMMU group (is the IOMMU enabled?)",
                    d->what);
        return -1;
    }
    return atoi(strrchr(grp, '/') ? strrchr(grp, '/') + 1 : grp);
}

static bool open_container(struct vf_dev *d, int group_id, const char *addr, GError **errp)
{
    char path[64];
    struct vfio_group_status gs = { .argsz = sizeof(gs) };

    d->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
    if (d->container < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: /dev/vfio/vfio: %s", d->what, g_strerror(errno));
        return false;
    }
    if (ioctl(d->container, VFIO_GET_API_VERSION) != VFIO_API_VERSION ||
        !ioctl(d->container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU)) {
        g_set_error(errp, BC_ERROR, ENOTSUP, "%s: the kernel's VFIO lacks the type1v2 IOMMU",
                    d->what);
        return false;
    }
    snprintf(path, sizeof(path), "/dev/vfio/%d", group_id);
    d->group = open(path, O_RDWR | O_CLOEXEC);
    if (d->group < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: %s: %s", d->what, path, g_strerror(errno));
        return false;
    }
    if (ioctl(d->group, VFIO_GROUP_GET_STATUS, &gs) < 0 ||
        !(gs.flags & VFIO_GROUP_FLAGS_VIABLE)) {
        g_set_error(errp, BC_ERROR, EBUSY,
                    "%s: IOMMU group %d is not viable: bind every device in "
                    "/sys/kernel/iommu_groups/%d/devices to vfio-pci", d->what, group_id,
                    group_id);
        return false;
    }
    if (ioctl(d->group, VFIO_GROUP_SET_CONTAINER, &d->container) < 0 ||
        ioctl(d->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: setting up the IOMMU container: %s", d->what,
                    g_strerror(errno));
        return false;
    }
    d->device = ioctl(d->group, VFIO_GROUP_GET_DEVICE_FD, addr);
    if (d->device < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: opening the device: %s", d->what,
                    g_strerror(errno));
        return false;
    }
    return true;
}

bool vf_dev_open(struct vf_dev *d, const char *what, const char *addr, GError **errp)
{
    d->what = what;
    int group_id = sysfs_group(d, addr, errp);
    if (group_id < 0 || !open_container(d, group_id, addr, errp))
        return false;

    struct vfio_region_info cr = { .argsz = sizeof(cr), .index = VFIO_PCI_CONFIG_REGION_INDEX };
    if (ioctl(d->device, VFIO_DEVICE_GET_REGION_INFO, &cr) < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: config space: %s", d->what, g_strerror(errno));
        return false;
    }
    d->cfg_off = cr.offset;
    return true;
}

/* ---- capabilities and BARs --------------------------------------------------------- */

unsigned vf_find_caps(struct vf_dev *d, uint8_t id, uint32_t *pos, unsigned max)
{
    unsigned guard = 0, n = 0;

    if (!(vf_cfg_read(d, PCI_STATUS, 2) & PCI_STATUS_CAP_LIST))
        return 0;
    for (uint32_t p = vf_cfg_read(d, PCI_CAPABILITY_LIST, 1) & ~3u; p && guard < 48 && n < max;
         p = vf_cfg_read(d, p + 1, 1) & ~3u, guard++)
        if (vf_cfg_read(d, p, 1) == id)
            pos[n++] = p;
    return n;
}

bool vf_map_bar(struct vf_dev *d, int b, GError **errp)
{
    struct vfio_region_info ri = { .argsz = sizeof(ri), .index = (uint32_t)b };

    if (ioctl(d->device, VFIO_DEVICE_GET_REGION_INFO, &ri) < 0 || !ri.size) {
        g_set_error(errp, BC_ERROR, EIO, "%s: BAR %d: %s", d->what, b, g_strerror(errno));
        return false;
    }
    d->bar[b].size = ri.size;
    d->bar[b].off = ri.offset;
    if (ri.flags & VFIO_REGION_INFO_FLAG_MMAP) {
        void *m = mmap(NULL, ri.size, PROT_READ | PROT_WRITE, MAP_SHARED, d->device,
                       (off_t)ri.offset);
        d->bar[b].map = m == MAP_FAILED ? NULL : m;
    }
    return true;
}

/* ---- DMA --------------------------------------------------------------------------- */

bool vf_pick_iova(struct vf_dev *d, size_t len, uint64_t *iova, GError **errp)
{
    struct vfio_iommu_type1_info probe = { .argsz = sizeof(probe) };
    g_autofree uint8_t *buf = NULL;
    uint64_t lo = 1u << 20;

    if (ioctl(d->container, VFIO_IOMMU_GET_INFO, &probe) < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: IOMMU info: %s", d->what, g_strerror(errno));
        return false;
    }
    *iova = lo;
    if (!(probe.flags & VFIO_IOMMU_INFO_CAPS) || probe.argsz <= sizeof(probe))
        return true;
    buf = g_malloc0(probe.argsz);
    struct vfio_iommu_type1_info *info = (void *)buf;
    info->argsz = probe.argsz;
    if (ioctl(d->container, VFIO_IOMMU_GET_INFO, info) < 0 || !info->cap_offset)
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
                    *iova = start;
                    return true;
                }
            }
            g_set_error(errp, BC_ERROR, ENOSPC, "%s: no usable IOVA range for %zu bytes",
                        d->what, len);
            return false;
        }
        off = h.next;
    }
    return true;
}

int vf_dma_map(struct vf_dev *d, void *vaddr, size_t len, uint64_t iova)
{
    struct vfio_iommu_type1_dma_map dm = {
        .argsz = sizeof(dm),
        .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        .vaddr = (uintptr_t)vaddr,
        .iova = iova,
        .size = len,
    };

    assert(d->nmaps < VF_MAX_DMA_MAPS);
    if (ioctl(d->container, VFIO_IOMMU_MAP_DMA, &dm) < 0)
        return -errno;
    d->maps[d->nmaps].iova = iova;
    d->maps[d->nmaps++].len = len;
    return 0;
}

/* ---- MSI-X ------------------------------------------------------------------------- */

unsigned vf_msix_count(struct vf_dev *d)
{
    struct vfio_irq_info ii = { .argsz = sizeof(ii), .index = VFIO_PCI_MSIX_IRQ_INDEX };

    if (ioctl(d->device, VFIO_DEVICE_GET_IRQ_INFO, &ii) < 0)
        return 0;
    return ii.count;
}

bool vf_msix_wire(struct vf_dev *d, const int *fds, unsigned n, GError **errp)
{
    unsigned have = vf_msix_count(d);

    if (have < n) {
        g_set_error(errp, BC_ERROR, ENOTSUP, "%s: the device has %u MSI-X vectors, %u needed",
                    d->what, have, n);
        return false;
    }
    g_autofree struct vfio_irq_set *set = g_malloc0(sizeof(*set) + n * sizeof(int));
    set->argsz = (uint32_t)(sizeof(*set) + n * sizeof(int));
    set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    set->index = VFIO_PCI_MSIX_IRQ_INDEX;
    set->start = 0;
    set->count = n;
    memcpy(set->data, fds, n * sizeof(int));
    if (ioctl(d->device, VFIO_DEVICE_SET_IRQS, set) < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: wiring MSI-X to eventfds: %s", d->what,
                    g_strerror(errno));
        return false;
    }
    d->irqs = true;
    return true;
}
