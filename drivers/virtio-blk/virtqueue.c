/* SPDX-License-Identifier: MIT */
/* The split virtqueue (descriptor table, avail and used rings, EVENT_IDX) and virtio-blk
 * request building, over device-visible memory.  Callers lock; nothing here blocks. */
#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <string.h>

#include <linux/virtio_blk.h>
#include <linux/virtio_ring.h>

#include "drivers/virtio-blk/virtqueue.h"

#define RING_ALIGN 4096u

static size_t align_up(size_t x, size_t a)
{
    return (x + a - 1) & ~(a - 1);
}

static size_t desc_bytes(unsigned num)
{
    return (size_t)num * sizeof(struct bc_vring_desc);
}

static size_t avail_bytes(unsigned num)
{
    return 4 + 2 * (size_t)num + 2;
}

static size_t used_bytes(unsigned num)
{
    return 4 + 8 * (size_t)num + 2;
}

size_t bc_vq_ring_bytes(unsigned num)
{
    return align_up(desc_bytes(num), RING_ALIGN) + align_up(avail_bytes(num), RING_ALIGN) +
           align_up(used_bytes(num), RING_ALIGN);
}

void bc_vq_init(struct bc_vq *vq, unsigned num, void *mem, uint64_t dev_addr, bool event_idx)
{
    assert(num > 0 && num <= 32768 && (num & (num - 1)) == 0);
    size_t off_avail = align_up(desc_bytes(num), RING_ALIGN);
    size_t off_used = off_avail + align_up(avail_bytes(num), RING_ALIGN);

    memset(vq, 0, sizeof(*vq));
    memset(mem, 0, bc_vq_ring_bytes(num));
    vq->num = (uint16_t)num;
    vq->event_idx = event_idx;
    vq->desc = mem;
    vq->avail = (struct bc_vring_avail *)((uint8_t *)mem + off_avail);
    vq->used = (struct bc_vring_used *)((uint8_t *)mem + off_used);
    vq->desc_addr = dev_addr;
    vq->avail_addr = dev_addr + off_avail;
    vq->used_addr = dev_addr + off_used;
    vq->next = g_new(uint16_t, num);
    vq->chain_len = g_new0(uint16_t, num);
    vq->cookie = g_new0(void *, num);
    for (unsigned i = 0; i < num; i++)
        vq->next[i] = (uint16_t)((i + 1) % num);
    vq->free_head = 0;
    vq->num_free = (uint16_t)num;
    /* num may be 32768, which still fits; uint16_t num_free wraps only above that. */
}

void bc_vq_destroy(struct bc_vq *vq)
{
    g_free(vq->next);
    g_free(vq->chain_len);
    g_free(vq->cookie);
    vq->next = vq->chain_len = NULL;
    vq->cookie = NULL;
}

int bc_vq_peek_head(const struct bc_vq *vq)
{
    return vq->num_free ? vq->free_head : -ENOSPC;
}

int bc_vq_add(struct bc_vq *vq, const struct bc_vbuf *bufs, unsigned n_out, unsigned n_in,
              void *cookie)
{
    unsigned n = n_out + n_in;
    assert(n > 0 && cookie);
    if (n > vq->num_free || vq->broken)
        return -ENOSPC;

    uint16_t head = vq->free_head, i = head;
    for (unsigned k = 0; k < n; k++) {
        struct bc_vring_desc *d = &vq->desc[i];
        uint16_t flags = k < n_out ? 0 : VRING_DESC_F_WRITE;
        if (k + 1 < n)
            flags |= VRING_DESC_F_NEXT;
        d->addr = htole64(bufs[k].addr);
        d->len = htole32(bufs[k].len);
        d->flags = htole16(flags);
        d->next = htole16(vq->next[i]);
        i = vq->next[i];
    }
    vq->free_head = i;
    vq->num_free = (uint16_t)(vq->num_free - n);
    vq->chain_len[head] = (uint16_t)n;
    vq->cookie[head] = cookie;

    /* Publish: the ring entry, then (release) the index. */
    vq->avail->ring[vq->avail_idx & (vq->num - 1)] = htole16(head);
    vq->avail_idx++;
    __atomic_store_n(&vq->avail->idx, htole16(vq->avail_idx), __ATOMIC_RELEASE);
    return head;
}

bool bc_vq_kick_prepare(struct bc_vq *vq)
{
    /* The avail index store must be visible before we read the device's suppression state,
     * or we may skip a kick the device is waiting for. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t old = vq->kicked_idx, cur = vq->avail_idx;
    vq->kicked_idx = cur;
    if (old == cur)
        return false;
    if (vq->event_idx) {
        /* avail_event sits right after the used ring's num entries. */
        uint16_t *avail_event = (uint16_t *)((uint8_t *)vq->used + 4 + 8 * (size_t)vq->num);
        uint16_t ev = le16toh(__atomic_load_n(avail_event, __ATOMIC_RELAXED));
        return (uint16_t)(cur - ev - 1) < (uint16_t)(cur - old);
    }
    return !(le16toh(__atomic_load_n(&vq->used->flags, __ATOMIC_RELAXED)) &
             VRING_USED_F_NO_NOTIFY);
}

void *bc_vq_get_used(struct bc_vq *vq, uint16_t *head, uint32_t *len)
{
    if (vq->broken)
        return NULL;
    uint16_t used_idx = le16toh(__atomic_load_n(&vq->used->idx, __ATOMIC_ACQUIRE));
    if (used_idx == vq->last_used)
        return NULL;
    if ((uint16_t)(used_idx - vq->last_used) > vq->num) {
        vq->broken = true;
        return NULL;
    }
    struct bc_vring_used_elem *e = &vq->used->ring[vq->last_used & (vq->num - 1)];
    uint32_t id = le32toh(e->id);
    if (id >= vq->num || vq->chain_len[id] == 0) {
        vq->broken = true;
        return NULL;
    }
    vq->last_used++;

    /* Return the chain to the free list, walking our private links. */
    uint16_t n = vq->chain_len[id], tail = (uint16_t)id;
    for (uint16_t k = 1; k < n; k++)
        tail = vq->next[tail];
    vq->next[tail] = vq->free_head;
    vq->free_head = (uint16_t)id;
    vq->num_free = (uint16_t)(vq->num_free + n);
    vq->chain_len[id] = 0;

    void *cookie = vq->cookie[id];
    vq->cookie[id] = NULL;
    *head = (uint16_t)id;
    *len = le32toh(e->len);
    return cookie;
}

bool bc_vq_enable_cb(struct bc_vq *vq)
{
    if (vq->event_idx)
        __atomic_store_n(&vq->avail->ring[vq->num], htole16(vq->last_used), __ATOMIC_RELAXED);
    /* Our used_event store before the re-read of used->idx: else a completion landing in
     * between would be neither seen nor notified. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return le16toh(__atomic_load_n(&vq->used->idx, __ATOMIC_ACQUIRE)) != vq->last_used;
}

void *bc_vq_inflight(const struct bc_vq *vq, uint16_t i)
{
    return i < vq->num && vq->chain_len[i] ? vq->cookie[i] : NULL;
}

/* ---- virtio-blk -------------------------------------------------------------------- */

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
