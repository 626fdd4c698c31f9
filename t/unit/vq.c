/* SPDX-License-Identifier: MIT */
/* Unit tests of the split virtqueue and virtio-blk request building against a fake device
 * in this process: chain layouts, 16-bit index wraparound, out-of-order completion, EVENT_IDX
 * kick and interrupt suppression, garbage from the device; config parsing and properties. */
#include <endian.h>
#include <errno.h>
#include <string.h>

#include <linux/virtio_blk.h>
#include <linux/virtio_ring.h>

#include "drivers/virtio-blk/virtio-blk.h"
#include "drivers/virtio-blk/virtio-blk-req.h"
#include "drivers/virtio-blk/virtqueue.h"
#include "t/unit/test-util.h"

/* The device side of one queue: reads avail, writes used, as a device would. */
struct fakedev {
    struct bc_vq *vq;       /* only its ring pointers and num are used */
    uint8_t *mem;           /* device address 0 is mem[0] */
    uint16_t last_avail;
    uint16_t used_idx;
    bool event_idx;
};

static void *dev_ptr(struct fakedev *f, uint64_t addr)
{
    return f->mem + addr;
}

/* Take the next available chain: its head and its descriptors (up to max). */
static bool dev_pop(struct fakedev *f, uint16_t *head, struct bc_vring_desc *out, unsigned *n,
                    unsigned max)
{
    struct bc_vq *vq = f->vq;
    if (le16toh(vq->avail->idx) == f->last_avail)
        return false;
    *head = le16toh(vq->avail->ring[f->last_avail & (vq->num - 1)]);
    f->last_avail++;
    if (f->event_idx)   /* kick me when you publish past this */
        *(uint16_t *)((uint8_t *)vq->used + 4 + 8 * (size_t)vq->num) = htole16(f->last_avail);
    uint16_t i = *head;
    *n = 0;
    for (;;) {
        g_assert_cmpuint(*n, <, max);
        struct bc_vring_desc *d = &vq->desc[i];
        out[(*n)++] = (struct bc_vring_desc){ le64toh(d->addr), le32toh(d->len),
                                              le16toh(d->flags), le16toh(d->next) };
        if (!(le16toh(d->flags) & VRING_DESC_F_NEXT))
            break;
        i = le16toh(d->next);
    }
    return true;
}

/* Publish a used element; true if the driver asked to be notified (EVENT_IDX). */
static bool dev_push(struct fakedev *f, uint16_t head, uint32_t len)
{
    struct bc_vq *vq = f->vq;
    uint16_t old = f->used_idx;
    vq->used->ring[f->used_idx & (vq->num - 1)] = (struct bc_vring_used_elem){
        htole32(head), htole32(len) };
    f->used_idx++;
    __atomic_store_n(&vq->used->idx, htole16(f->used_idx), __ATOMIC_RELEASE);
    if (!f->event_idx)
        return true;
    uint16_t ev = le16toh(vq->avail->ring[vq->num]);
    return (uint16_t)(f->used_idx - ev - 1) < (uint16_t)(f->used_idx - old);
}

struct qfix {
    struct bc_vq vq;
    uint8_t *mem;
    struct bc_vblk_slot *slots;
    uint64_t slots_addr;
    struct fakedev dev;
};

static void qfix_init(struct qfix *q, unsigned num, bool event_idx)
{
    size_t ring = bc_vq_ring_bytes(num);
    q->mem = g_malloc0(ring + num * sizeof(struct bc_vblk_slot) + (1 << 20));
    bc_vq_init(&q->vq, num, q->mem, 0, event_idx);
    q->slots = (struct bc_vblk_slot *)(q->mem + ring);
    q->slots_addr = ring;
    q->dev = (struct fakedev){ .vq = &q->vq, .mem = q->mem, .event_idx = event_idx };
}

static void qfix_free(struct qfix *q)
{
    bc_vq_destroy(&q->vq);
    g_free(q->mem);
}

static void test_layouts(void)
{
    struct qfix q;
    struct bc_vring_desc d[8];
    unsigned n;
    uint16_t head;
    int cookie[4];

    qfix_init(&q, 16, false);
    struct bc_vbuf data[2] = { { 0x10000, 4096 }, { 0x20000, 512 } };
    g_assert_cmpint(bc_vblk_add(&q.vq, q.slots, q.slots_addr, VIRTIO_BLK_T_IN, 24, data, 2,
                                0, 0, &cookie[0]), ==, 0);
    g_assert_true(dev_pop(&q.dev, &head, d, &n, 8));
    g_assert_cmpuint(n, ==, 4);
    g_assert_cmpuint(d[0].addr, ==, q.slots_addr + head * sizeof(struct bc_vblk_slot));
    g_assert_cmpuint(d[0].len, ==, 16);
    g_assert_cmpuint(d[0].flags & VRING_DESC_F_WRITE, ==, 0);
    g_assert_cmpuint(d[1].addr, ==, 0x10000);
    g_assert_cmpuint(d[1].flags & VRING_DESC_F_WRITE, !=, 0);
    g_assert_cmpuint(d[2].len, ==, 512);
    g_assert_cmpuint(d[3].len, ==, 1);
    g_assert_cmpuint(d[3].flags, ==, VRING_DESC_F_WRITE);
    struct virtio_blk_outhdr *h = dev_ptr(&q.dev, d[0].addr);
    g_assert_cmpuint(le32toh(h->type), ==, VIRTIO_BLK_T_IN);
    g_assert_cmpuint(le64toh(h->sector), ==, 24);
    *(uint8_t *)dev_ptr(&q.dev, d[3].addr) = VIRTIO_BLK_S_OK;
    dev_push(&q.dev, head, 4097);

    /* OUT: data readable; DISCARD: header, segment, status; FLUSH: header, status. */
    g_assert_cmpint(bc_vblk_add(&q.vq, q.slots, q.slots_addr, VIRTIO_BLK_T_OUT, 8, data, 1, 0,
                                0, &cookie[1]), ==, 0);
    g_assert_true(dev_pop(&q.dev, &head, d, &n, 8));
    g_assert_cmpuint(n, ==, 3);
    g_assert_cmpuint(d[1].flags & VRING_DESC_F_WRITE, ==, 0);
    *(uint8_t *)dev_ptr(&q.dev, d[2].addr) = VIRTIO_BLK_S_IOERR;
    dev_push(&q.dev, head, 1);
    g_assert_cmpint(bc_vblk_add(&q.vq, q.slots, q.slots_addr, VIRTIO_BLK_T_WRITE_ZEROES, 100,
                                NULL, 0, 50, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, &cookie[2]),
                    ==, 0);
    g_assert_true(dev_pop(&q.dev, &head, d, &n, 8));
    g_assert_cmpuint(n, ==, 3);
    struct virtio_blk_discard_write_zeroes *seg = dev_ptr(&q.dev, d[1].addr);
    g_assert_cmpuint(d[1].len, ==, sizeof(*seg));
    g_assert_cmpuint(le64toh(seg->sector), ==, 100);
    g_assert_cmpuint(le32toh(seg->num_sectors), ==, 50);
    g_assert_cmpuint(le32toh(seg->flags), ==, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    *(uint8_t *)dev_ptr(&q.dev, d[2].addr) = VIRTIO_BLK_S_UNSUPP;
    dev_push(&q.dev, head, 1);
    g_assert_cmpint(bc_vblk_add(&q.vq, q.slots, q.slots_addr, VIRTIO_BLK_T_FLUSH, 0, NULL, 0,
                                0, 0, &cookie[3]), ==, 0);
    g_assert_true(dev_pop(&q.dev, &head, d, &n, 8));
    g_assert_cmpuint(n, ==, 2);
    *(uint8_t *)dev_ptr(&q.dev, d[1].addr) = VIRTIO_BLK_S_OK;
    dev_push(&q.dev, head, 1);

    /* The driver sees them in order with the right results. */
    const int want[4] = { 0, -EIO, -ENOTSUP, 0 };
    for (int i = 0; i < 4; i++) {
        uint32_t len;
        void *c = bc_vq_get_used(&q.vq, &head, &len);
        g_assert_true(c == &cookie[i]);
        g_assert_cmpint(bc_vblk_status(q.slots, head), ==, want[i]);
    }
    g_assert_null(bc_vq_get_used(&q.vq, &head, &(uint32_t){ 0 }));
    g_assert_cmpuint(q.vq.num_free, ==, 16);
    qfix_free(&q);
}

/* Many rounds through a small queue: indices wrap, chains complete out of order. */
static void test_wrap_out_of_order(void)
{
    struct qfix q;
    GRand *r = g_rand_new_with_seed(7);
    uint64_t issued = 0, completed = 0;
    struct { uint16_t head; uintptr_t tag; } held[16];
    unsigned nheld = 0;

    qfix_init(&q, 16, true);
    while (completed < 100000) {
        /* Add chains of 1..4 data buffers while they fit. */
        for (;;) {
            unsigned nd = (unsigned)g_rand_int_range(r, 1, 5);
            struct bc_vbuf data[4] = { { 0x1000, 1 }, { 0x2000, 2 }, { 0x3000, 3 }, { 0x4000, 4 } };
            int rc = bc_vblk_add(&q.vq, q.slots, q.slots_addr, VIRTIO_BLK_T_IN, issued, data, nd,
                                 0, 0, (void *)(uintptr_t)(issued + 1));
            if (rc == -ENOSPC) {
                g_assert_cmpuint(q.vq.num_free, <, nd + 2);
                break;
            }
            g_assert_cmpint(rc, ==, 0);
            issued++;
        }
        /* The device takes everything, completes a random subset in random order. */
        struct bc_vring_desc d[8];
        unsigned n;
        uint16_t head;
        while (dev_pop(&q.dev, &head, d, &n, 8)) {
            struct virtio_blk_outhdr *h = dev_ptr(&q.dev, d[0].addr);
            held[nheld].head = head;
            held[nheld].tag = le64toh(h->sector) + 1;
            *(uint8_t *)dev_ptr(&q.dev, d[n - 1].addr) = VIRTIO_BLK_S_OK;
            nheld++;
        }
        unsigned k = (unsigned)g_rand_int_range(r, 1, (gint32)nheld + 1);
        for (unsigned i = 0; i < k; i++) {
            unsigned j = (unsigned)g_rand_int_range(r, 0, (gint32)nheld);
            dev_push(&q.dev, held[j].head, 1);
            uint32_t len;
            uint16_t h2;
            void *c = bc_vq_get_used(&q.vq, &h2, &len);
            g_assert_cmpuint((uintptr_t)c, ==, held[j].tag);
            g_assert_cmpuint(h2, ==, held[j].head);
            held[j] = held[--nheld];
            completed++;
        }
    }
    g_assert_false(q.vq.broken);
    g_assert_cmpuint(q.vq.avail_idx, ==, (uint16_t)issued);
    g_rand_free(r);
    qfix_free(&q);
}

static void test_event_idx(void)
{
    struct qfix q;
    struct bc_vbuf data = { 0x1000, 512 };
    struct bc_vring_desc d[4];
    unsigned n;
    uint16_t head;
    int c;

    qfix_init(&q, 16, true);
    /* Device idle (avail_event 0): the first request must kick, a second one not until the
     * device has caught up and asked again. */
    g_assert_cmpint(bc_vblk_add(&q.vq, q.slots, q.slots_addr, VIRTIO_BLK_T_IN, 0, &data, 1, 0,
                                0, &c), ==, 0);
    g_assert_true(bc_vq_kick_prepare(&q.vq));
    g_assert_false(bc_vq_kick_prepare(&q.vq));     /* nothing new */
    g_assert_cmpint(bc_vblk_add(&q.vq, q.slots, q.slots_addr, VIRTIO_BLK_T_IN, 0, &data, 1, 0,
                                0, &c), ==, 0);
    g_assert_false(bc_vq_kick_prepare(&q.vq));     /* device has not consumed #1 yet */
    g_assert_true(dev_pop(&q.dev, &head, d, &n, 4));
    g_assert_true(dev_pop(&q.dev, &head, d, &n, 4)); /* avail_event now 2 */
    g_assert_cmpint(bc_vblk_add(&q.vq, q.slots, q.slots_addr, VIRTIO_BLK_T_IN, 0, &data, 1, 0,
                                0, &c), ==, 0);
    g_assert_true(bc_vq_kick_prepare(&q.vq));

    /* Interrupt suppression: with used_event at 0, the first completion notifies; after
     * enable_cb() at last_used, the next does again, not before. */
    g_assert_true(dev_push(&q.dev, 0, 1));
    g_assert_false(dev_push(&q.dev, 3, 1));         /* driver has not reaped: no new IRQ */
    uint32_t len;
    g_assert_nonnull(bc_vq_get_used(&q.vq, &head, &len));
    g_assert_nonnull(bc_vq_get_used(&q.vq, &head, &len));
    g_assert_false(bc_vq_enable_cb(&q.vq));         /* nothing raced in */
    g_assert_true(dev_pop(&q.dev, &head, d, &n, 4));
    g_assert_true(dev_push(&q.dev, head, 1));
    g_assert_true(bc_vq_enable_cb(&q.vq));          /* used moved past last_used */
    qfix_free(&q);

    /* Without EVENT_IDX: kick unless the device set VRING_USED_F_NO_NOTIFY. */
    qfix_init(&q, 8, false);
    bc_vblk_add(&q.vq, q.slots, q.slots_addr, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0, 0, &c);
    g_assert_true(bc_vq_kick_prepare(&q.vq));
    q.vq.used->flags = htole16(VRING_USED_F_NO_NOTIFY);
    bc_vblk_add(&q.vq, q.slots, q.slots_addr, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0, 0, &c);
    g_assert_false(bc_vq_kick_prepare(&q.vq));
    qfix_free(&q);
}

static void test_garbage(void)
{
    struct qfix q;
    int c;
    uint16_t head;
    uint32_t len;

    /* A used id that is not in flight. */
    qfix_init(&q, 8, false);
    bc_vblk_add(&q.vq, q.slots, q.slots_addr, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0, 0, &c);
    dev_push(&q.dev, 5, 1);
    g_assert_null(bc_vq_get_used(&q.vq, &head, &len));
    g_assert_true(q.vq.broken);
    g_assert_true(bc_vq_inflight(&q.vq, 0) == &c);
    g_assert_cmpint(bc_vq_add(&q.vq, &(struct bc_vbuf){ 0, 1 }, 1, 0, &c), ==, -ENOSPC);
    qfix_free(&q);

    /* An id out of range, and a used index that jumps too far. */
    qfix_init(&q, 8, false);
    dev_push(&q.dev, 900, 1);
    g_assert_null(bc_vq_get_used(&q.vq, &head, &len));
    g_assert_true(q.vq.broken);
    qfix_free(&q);
    qfix_init(&q, 8, false);
    q.vq.used->idx = htole16(9);
    g_assert_null(bc_vq_get_used(&q.vq, &head, &len));
    g_assert_true(q.vq.broken);
    qfix_free(&q);
}

static void test_config_props(void)
{
    uint8_t raw[BC_VBLK_CONFIG_BYTES] = { 0 };
    struct bc_vblk_config cfg;
    struct bc_props p;
    g_autoptr(GError) err = NULL;
    uint64_t f = (1ull << VIRTIO_BLK_F_BLK_SIZE) | (1ull << VIRTIO_BLK_F_SIZE_MAX) |
                 (1ull << VIRTIO_BLK_F_SEG_MAX) | (1ull << VIRTIO_BLK_F_DISCARD) |
                 (1ull << VIRTIO_BLK_F_WRITE_ZEROES) | (1ull << VIRTIO_BLK_F_RO);

    uint64_t cap = htole64(20001);      /* sectors: not a multiple of 8 */
    uint32_t v;
    memcpy(raw, &cap, 8);
    v = htole32(65536); memcpy(raw + 8, &v, 4);     /* size_max */
    v = htole32(4); memcpy(raw + 12, &v, 4);        /* seg_max */
    v = htole32(4096); memcpy(raw + 20, &v, 4);     /* blk_size */
    raw[34] = 3;                                    /* num_queues */
    v = htole32(3); memcpy(raw + 44, &v, 4);        /* discard_sector_alignment */
    bc_vblk_config_parse(raw, sizeof(raw), &cfg);
    g_assert_cmpuint(cfg.capacity, ==, 20001);
    g_assert_cmpuint(cfg.size_max, ==, 65536);
    g_assert_cmpuint(cfg.seg_max, ==, 4);
    g_assert_cmpuint(cfg.blk_size, ==, 4096);
    g_assert_cmpuint(cfg.num_queues, ==, 3);
    g_assert_cmpuint(cfg.discard_sector_alignment, ==, 3);

    g_assert_true(bc_vblk_props("t", f, &cfg, 256, &p, &err));
    g_assert_cmpuint(p.req_align, ==, 4096);
    g_assert_cmpuint(p.size, ==, 20000 * 512);      /* the partial last block is unusable */
    g_assert_cmpuint(p.max_transfer, ==, 4 * 65536);
    g_assert_cmpuint(p.discard_align, ==, 4096);    /* 1536 rounded to a power of 2, >= blk */
    g_assert_cmpuint(p.zero_align, ==, 4096);
    g_assert_true(p.read_only);
    g_assert_false(p.fua_native);

    /* No BLK_SIZE: 512; no size_max/seg_max: the queue bounds it, capped at 1 MiB. */
    g_assert_true(bc_vblk_props("t", 0, &cfg, 8, &p, &err));
    g_assert_cmpuint(p.req_align, ==, 512);
    g_assert_cmpuint(p.max_transfer, ==, 1u << 20);
    g_assert_cmpuint(p.discard_align, ==, 0);
    g_assert_false(p.read_only);

    /* Junk block size. */
    cfg.blk_size = 1000;
    g_assert_false(bc_vblk_props("t", f, &cfg, 256, &p, &err));
    g_assert_nonnull(strstr(err->message, "block size 1000"));
}

int main(int argc, char **argv)
{
    tu_test_init(&argc, &argv);
    tu_add_isolated("/virtqueue/layouts", test_layouts);
    tu_add_isolated("/virtqueue/wrap-out-of-order", test_wrap_out_of_order);
    tu_add_isolated("/virtqueue/event-idx", test_event_idx);
    tu_add_isolated("/virtqueue/garbage", test_garbage);
    tu_add_isolated("/virtqueue/config-props", test_config_props);
    return g_test_run();
}
