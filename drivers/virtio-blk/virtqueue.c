/* SPDX-License-Identifier: MIT */
/* The split virtqueue (descriptor table, avail and used rings, EVENT_IDX) over
 * device-visible memory.  Callers lock; nothing here blocks. */
#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <string.h>

#include <linux/virtio_ring.h>

#include <glib.h>

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
