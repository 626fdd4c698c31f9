/* SPDX-License-Identifier: MIT */
/* A PCI function bound to vfio-pci, whatever it is: the container, group and device fds,
 * config space and BARs, type1 DMA mapping and MSI-X to eventfds (used by vfio-pci.c). */
#ifndef LAYERFS_VIRTIO_BLK_VFIO_H
#define LAYERFS_VIRTIO_BLK_VFIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>

#define VF_MAX_DMA_MAPS 8   /* DMA mappings one device holds at most */

/* A BAR: mapped, or reached with pread/pwrite on the device fd. */
struct vf_bar {
    uint8_t *map;           /* NULL: use pread/pwrite at off */
    uint64_t size, off;     /* size 0: not looked up yet */
};

/* A structure in a BAR, as a PCI capability points at it: len bytes at off in BAR bar. */
struct vf_cap {
    int bar;                /* -1: not found */
    uint64_t off;
    uint32_t len;
};

struct vf_dev {
    const char *what;       /* prefix for messages, owned by the caller */
    int container, group, device;   /* -1: not open */
    uint64_t cfg_off;       /* config space in the device fd */
    struct vf_bar bar[6];
    bool master;            /* bus mastering on: turned off on close */
    bool irqs;              /* MSI-X set up: turned off on close */
    unsigned nmaps;         /* DMA mappings made, undone on close in this order */
    struct { uint64_t iova, len; } maps[VF_MAX_DMA_MAPS];
};

/* Mark everything unopened, so that vf_dev_close() may follow at any point. */
void vf_dev_init(struct vf_dev *d);
/* Open PCI function addr (bound to vfio-pci, its group viable) in a type1v2 container and
 * find its config space; d->what = what. false + *errp saying what to fix. */
bool vf_dev_open(struct vf_dev *d, const char *what, const char *addr, GError **errp);
/* MSI-X off, bus mastering off, BARs unmapped, device closed, DMA unmapped, group and
 * container closed; the caller has stopped the device's DMA before. */
void vf_dev_close(struct vf_dev *d);

/* Read len (1, 2 or 4) bytes of config space at off; UINT32_MAX on error. */
uint32_t vf_cfg_read(struct vf_dev *d, uint64_t off, size_t len);
/* Write len (1, 2 or 4) bytes of config space at off; errors are ignored. */
void vf_cfg_write(struct vf_dev *d, uint64_t off, uint32_t v, size_t len);
/* Turn memory decoding and bus mastering on (bus mastering goes off on close). */
void vf_bus_master(struct vf_dev *d);
/* Config space offsets of the capabilities with ID id, in list order, in pos[]: how many. */
unsigned vf_find_caps(struct vf_dev *d, uint8_t id, uint32_t *pos, unsigned max);
/* Size BAR b and map it if VFIO lets us (else pread/pwrite); false + *errp. */
bool vf_map_bar(struct vf_dev *d, int b, GError **errp);
/* Read len (1, 2 or 4) bytes at off inside c (its BAR found); UINT32_MAX on error. */
uint32_t vf_cap_read(struct vf_dev *d, const struct vf_cap *c, uint64_t off, size_t len);
/* Write len (1, 2 or 4) bytes at off inside c (its BAR found); errors are ignored. */
void vf_cap_write(struct vf_dev *d, const struct vf_cap *c, uint64_t off, uint32_t v,
                  size_t len);

/* An IOVA for len bytes in the usable ranges (default: from 1 MiB) in *iova; false + *errp. */
bool vf_pick_iova(struct vf_dev *d, size_t len, uint64_t *iova, GError **errp);
/* DMA-map len bytes at vaddr to iova for reading and writing: 0 or -errno. */
int vf_dma_map(struct vf_dev *d, void *vaddr, size_t len, uint64_t iova);
/* The number of MSI-X vectors; 0 if there are none or they cannot be asked for. */
unsigned vf_msix_count(struct vf_dev *d);
/* Signal fds[i] on MSI-X vector i, for i < n; false + *errp. */
bool vf_msix_wire(struct vf_dev *d, const int *fds, unsigned n, GError **errp);

#endif
