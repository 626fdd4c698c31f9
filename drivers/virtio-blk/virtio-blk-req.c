/* SPDX-License-Identifier: MIT */
/* virtio-blk request building on a split virtqueue, status decoding and config space
 * parsing.  Callers lock; nothing here blocks. */
#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <string.h>

#include <linux/virtio_blk.h>

#include <glib.h>

#include "drivers/virtio-blk/virtio-blk-req.h"

static uint32_t get_le32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return le32toh(v);
}

void bc_vblk_config_parse(const uint8_t *raw, size_t len, struct bc_vblk_config *cfg)
{
    uint8_t b[BC_VBLK_CONFIG_BYTES] = { 0 };
    uint64_t cap;
    uint16_t nq;

    memcpy(b, raw, MIN(len, sizeof(b)));
    memset(cfg, 0, sizeof(*cfg));
    memcpy(&cap, b + 0, 8);
    cfg->capacity = le64toh(cap);
    cfg->size_max = get_le32(b + 8);
    cfg->seg_max = get_le32(b + 12);
    /* 16: geometry (4 bytes) */
    cfg->blk_size = get_le32(b + 20);
    cfg->physical_block_exp = b[24];
    /* 25: alignment_offset, 26: min_io_size, 28: opt_io_size, 32: wce, 33: unused */
    memcpy(&nq, b + 34, 2);
    cfg->num_queues = le16toh(nq);
    cfg->max_discard_sectors = get_le32(b + 36);
    cfg->max_discard_seg = get_le32(b + 40);
    cfg->discard_sector_alignment = get_le32(b + 44);
    cfg->max_write_zeroes_sectors = get_le32(b + 48);
    cfg->max_write_zeroes_seg = get_le32(b + 52);
}

G_STATIC_ASSERT(sizeof(struct bc_vblk_slot) == 40);
G_STATIC_ASSERT(offsetof(struct bc_vblk_slot, dwz_sector) == 16);

int bc_vblk_add(struct bc_vq *vq, struct bc_vblk_slot *slots, uint64_t slots_addr,
                uint32_t type, uint64_t sector, const struct bc_vbuf *data, unsigned ndata,
                uint32_t dwz_num, uint32_t dwz_flags, void *cookie)
{
    struct bc_vbuf bufs[3], small[64];
    const struct bc_vbuf *chain = bufs;
    g_autofree struct bc_vbuf *big = NULL;
    unsigned n_out = 1, n_in = 0;

    int head = bc_vq_peek_head(vq);
    if (head < 0)
        return head;
    struct bc_vblk_slot *s = &slots[head];
    uint64_t s_addr = slots_addr + (uint64_t)head * sizeof(*s);

    s->type = htole32(type);
    s->ioprio = 0;
    s->sector = htole64(sector);
    s->status = 0xff;
    bufs[0] = (struct bc_vbuf){ s_addr, 16 };

    switch (type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT: {
        unsigned n = 2 + ndata;
        if (n > vq->num_free)
            return -ENOSPC;
        struct bc_vbuf *c = n <= G_N_ELEMENTS(small) ? small : (big = g_new(struct bc_vbuf, n));
        c[0] = bufs[0];
        memcpy(&c[1], data, ndata * sizeof(*data));
        c[n - 1] = (struct bc_vbuf){ s_addr + offsetof(struct bc_vblk_slot, status), 1 };
        chain = c;
        if (type == VIRTIO_BLK_T_OUT) {
            n_out = 1 + ndata;
            n_in = 1;
        } else {
            n_out = 1;
            n_in = ndata + 1;
        }
        break;
    }
    case VIRTIO_BLK_T_FLUSH:
        bufs[1] = (struct bc_vbuf){ s_addr + offsetof(struct bc_vblk_slot, status), 1 };
        n_in = 1;
        break;
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        s->sector = 0;
        s->dwz_sector = htole64(sector);
        s->dwz_num = htole32(dwz_num);
        s->dwz_flags = htole32(dwz_flags);
        bufs[1] = (struct bc_vbuf){ s_addr + offsetof(struct bc_vblk_slot, dwz_sector), 16 };
        bufs[2] = (struct bc_vbuf){ s_addr + offsetof(struct bc_vblk_slot, status), 1 };
        n_out = 2;
        n_in = 1;
        break;
    default:
        assert(!"bad virtio-blk request type");
        return -EINVAL;
    }
    int r = bc_vq_add(vq, chain, n_out, n_in, cookie);
    if (r < 0)
        return r;
    assert(r == head);
    return 0;
}

int bc_vblk_status(const struct bc_vblk_slot *slots, uint16_t head)
{
    uint8_t st = __atomic_load_n(&slots[head].status, __ATOMIC_RELAXED);
    switch (st) {
    case VIRTIO_BLK_S_OK:
        return 0;
    case VIRTIO_BLK_S_UNSUPP:
        return -ENOTSUP;
    default:
        return -EIO;
    }
}
