/* SPDX-License-Identifier: MIT */
/* The virtio-blk-vhost-user driver: a vhost-user front end (qemu-storage-daemon, SPDK) over a
 * unix socket, with rings and bounce buffers in one memfd region shared with the back end. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <linux/vhost_types.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>

#include "drivers/drivers.h"
#include "drivers/util.h"
#include "drivers/virtio-blk/virtio-blk.h"

/*
 * Notes on the design
 *
 * Addresses.  Every memory region is registered with guest_phys_addr equal to its
 * userspace_addr, both our own mapping address, so ring addresses (translated by the back
 * end through userspace_addr) and descriptor addresses (through guest_phys_addr) are simply
 * our pointers.
 *
 * Memory.  The driver's own memfd region (rings, request headers, the bounce pool) comes
 * first; then blockcore's I/O buffer arenas (bc_buf_regions()), each its own region, so
 * that data in bc_buf_alloc() memory (FUSE buffers, bounce buffers) needs no copy.  A back
 * end without VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS takes at most VU_MAX_REGIONS
 * regions in SET_MEM_TABLE; blockcore has at most BC_BUF_MAX_REGIONS arenas, well below.
 * A back end that refuses the table with the arenas gets the region alone, and every
 * request is copied as before.
 *
 * The socket carries only the setup handshake (with a receive timeout so that a stuck back
 * end cannot hang open()).  Afterwards the core watches it: the back end never writes to it
 * unasked, so readability means it closed the connection, and every request fails -EIO.
 */

enum {
    VU_GET_FEATURES = 1,
    VU_SET_FEATURES = 2,
    VU_SET_OWNER = 3,
    VU_SET_MEM_TABLE = 5,
    VU_SET_VRING_NUM = 8,
    VU_SET_VRING_ADDR = 9,
    VU_SET_VRING_BASE = 10,
    VU_SET_VRING_KICK = 12,
    VU_SET_VRING_CALL = 13,
    VU_GET_PROTOCOL_FEATURES = 15,
    VU_SET_PROTOCOL_FEATURES = 16,
    VU_GET_QUEUE_NUM = 17,
    VU_SET_VRING_ENABLE = 18,
    VU_GET_CONFIG = 24,
};

#define VU_VERSION 0x1u
#define VU_FLAG_REPLY (1u << 2)
#define VU_FLAG_NEED_REPLY (1u << 3)
#define VU_F_PROTOCOL_FEATURES 30
#define VU_PROTOCOL_F_MQ 0
#define VU_PROTOCOL_F_REPLY_ACK 3
#define VU_PROTOCOL_F_CONFIG 9
#define VU_TIMEOUT_S 10
#define VU_MAX_QUEUES 64
#define VU_MAX_REGIONS 8    /* VHOST_MEMORY_BASELINE_NREGIONS */

struct vu_mem_region {
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
    uint64_t mmap_offset;
};

struct vu_msg {
    uint32_t request;
    uint32_t flags;
    uint32_t size;
    union {
        uint64_t u64;
        struct vhost_vring_state state;
        struct vhost_vring_addr addr;
        struct {
            uint32_t nregions;
            uint32_t padding;
            struct vu_mem_region regions[VU_MAX_REGIONS];
        } mem;
        struct {
            uint32_t offset;
            uint32_t size;
            uint32_t flags;
            uint8_t region[BC_VBLK_CONFIG_BYTES];
        } config;
    } payload;
} __attribute__((packed));

#define VU_HDR_SIZE 12u

struct vu_state {
    char *what;             /* "layer base: virtio-blk-vhost-user: /path" */
    int sock;
    bool reply_ack;
    int memfd;
    void *mem;
    size_t mem_len;
    unsigned nq;
    unsigned narenas;       /* I/O buffer arenas in the memory table */
    int kick_fd[VU_MAX_QUEUES];
    int call_fd[VU_MAX_QUEUES];
    struct bc_vblk_transport ops;
    struct bc_vblk *blk;
};

/* ---- messages ---------------------------------------------------------------------- */

static bool vu_send(struct vu_state *s, uint32_t req, uint32_t flags, const void *payload,
                    uint32_t size, const int *fds, unsigned nfds, GError **errp)
{
    struct vu_msg m = { .request = req, .flags = VU_VERSION | flags, .size = size };
    union {
        char buf[CMSG_SPACE(sizeof(int) * VU_MAX_REGIONS)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = { &m, VU_HDR_SIZE + size };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

    g_assert(size <= sizeof(m.payload) && nfds <= VU_MAX_REGIONS);
    if (size)
        memcpy(&m.payload, payload, size);
    if (nfds) {
        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    for (;;) {
        ssize_t n = sendmsg(s->sock, &mh, MSG_NOSIGNAL);
        if (n == (ssize_t)iov.iov_len)
            return true;
        if (n < 0 && errno == EINTR)
            continue;
        g_set_error(errp, BC_ERROR, n < 0 ? errno : EIO, "%s: sending vhost-user message %u: %s",
                    s->what, req, n < 0 ? g_strerror(errno) : "short write");
        return false;
    }
}

static bool read_full(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = ECONNRESET;
            return false;
        }
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* Read the reply to req into *m; false with *errp on a broken or mismatched reply. */
static bool vu_recv(struct vu_state *s, uint32_t req, struct vu_msg *m, GError **errp)
{
    if (!read_full(s->sock, m, VU_HDR_SIZE)) {
        int e = errno;
        g_set_error(errp, BC_ERROR, e, "%s: waiting for the reply to vhost-user message %u: %s",
                    s->what, req, e == EAGAIN ? "timed out" : g_strerror(e));
        return false;
    }
    if (m->request != req || !(m->flags & VU_FLAG_REPLY) || m->size > sizeof(m->payload)) {
        g_set_error(errp, BC_ERROR, EPROTO,
                    "%s: bad vhost-user reply (request %u, flags %#x, size %u) to message %u",
                    s->what, m->request, m->flags, m->size, req);
        return false;
    }
    if (m->size && !read_full(s->sock, &m->payload, m->size)) {
        g_set_error(errp, BC_ERROR, errno, "%s: reading vhost-user reply %u: %s", s->what, req,
                    g_strerror(errno));
        return false;
    }
    return true;
}

static bool vu_get_u64(struct vu_state *s, uint32_t req, uint64_t *out, GError **errp)
{
    struct vu_msg m;

    if (!vu_send(s, req, 0, NULL, 0, NULL, 0, errp) || !vu_recv(s, req, &m, errp))
        return false;
    if (m.size != 8) {
        g_set_error(errp, BC_ERROR, EPROTO, "%s: vhost-user reply %u has size %u", s->what, req,
                    m.size);
        return false;
    }
    *out = m.payload.u64;
    return true;
}

/* Send a message that changes state; with REPLY_ACK, wait for the back end's verdict. */
static bool vu_set(struct vu_state *s, uint32_t req, const void *payload, uint32_t size,
                   const int *fds, unsigned nfds, GError **errp)
{
    struct vu_msg m;

    if (!vu_send(s, req, s->reply_ack ? VU_FLAG_NEED_REPLY : 0, payload, size, fds, nfds, errp))
        return false;
    if (!s->reply_ack)
        return true;
    if (!vu_recv(s, req, &m, errp))
        return false;
    if (m.size != 8 || m.payload.u64 != 0) {
        g_set_error(errp, BC_ERROR, EIO, "%s: the vhost-user back end refused message %u",
                    s->what, req);
        return false;
    }
    return true;
}

static bool vu_set_u64(struct vu_state *s, uint32_t req, uint64_t v, const int *fds,
                       unsigned nfds, GError **errp)
{
    return vu_set(s, req, &v, sizeof(v), fds, nfds, errp);
}

static bool vu_set_state(struct vu_state *s, uint32_t req, unsigned index, unsigned num,
                         GError **errp)
{
    struct vhost_vring_state st = { .index = index, .num = num };
    return vu_set(s, req, &st, sizeof(st), NULL, 0, errp);
}

/* ---- transport ops for the core ---------------------------------------------------- */

static void vu_kick(void *t, unsigned qi)
{
    struct vu_state *s = t;
    uint64_t one = 1;
    ssize_t r = write(s->kick_fd[qi], &one, sizeof(one));
    (void)r;    /* EAGAIN: the counter is saturated, the back end will look anyway */
}

static bool vu_alive(void *t)
{
    struct vu_state *s = t;
    char buf[256];

    for (;;) {
        ssize_t n = recv(s->sock, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0)
            continue;   /* unasked data: ignore it */
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
}

/* ---- open and close ---------------------------------------------------------------- */

/* SET_MEM_TABLE: the driver's region and the first narenas arenas. */
static bool vu_set_mem_table(struct vu_state *s, const struct bc_buf_region *arenas,
                             unsigned narenas, GError **errp)
{
    struct {
        uint32_t nregions, padding;
        struct vu_mem_region r[VU_MAX_REGIONS];
    } mt = { 1 + narenas, 0, { { (uintptr_t)s->mem, s->mem_len, (uintptr_t)s->mem, 0 } } };
    int fds[VU_MAX_REGIONS] = { s->memfd };

    g_assert(1 + narenas <= VU_MAX_REGIONS);
    for (unsigned i = 0; i < narenas; i++) {
        uintptr_t a = (uintptr_t)arenas[i].base;
        mt.r[1 + i] = (struct vu_mem_region){ a, arenas[i].len, a, 0 };
        fds[1 + i] = arenas[i].fd;
    }
    return vu_set(s, VU_SET_MEM_TABLE, &mt,
                  (uint32_t)(8 + (1 + narenas) * sizeof(struct vu_mem_region)), fds,
                  1 + narenas, errp);
}

static void vu_free(struct vu_state *s)
{
    bc_vblk_free(s->blk);
    if (s->sock >= 0) {
        /* The core's watch may still hold the socket open in a ring: make the back end
         * see the disconnect now. */
        shutdown(s->sock, SHUT_RDWR);
        close(s->sock);
    }
    for (unsigned i = 0; i < VU_MAX_QUEUES; i++) {
        if (s->kick_fd[i] >= 0)
            close(s->kick_fd[i]);
        if (s->call_fd[i] >= 0)
            close(s->call_fd[i]);
    }
    if (s->mem)
        munmap(s->mem, s->mem_len);
    if (s->memfd >= 0)
        close(s->memfd);
    g_free(s->what);
    g_free(s);
}

static bool vu_connect(struct vu_state *s, const char *path, GError **errp)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct timeval tv = { .tv_sec = VU_TIMEOUT_S };

    if (strlen(path) >= sizeof(sa.sun_path)) {
        g_set_error(errp, BC_ERROR, ENAMETOOLONG, "%s: socket path too long", s->what);
        return false;
    }
    strcpy(sa.sun_path, path);
    s->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->sock < 0 || connect(s->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: connect: %s", s->what, g_strerror(errno));
        return false;
    }
    setsockopt(s->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(s->sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return true;
}

/* ---- the steps of bc_vblk_setup() -------------------------------------------------- */

static bool vu_read_config(void *t, uint8_t *raw, GError **errp)
{
    struct vu_state *s = t;
    struct vu_msg m;

    memset(&m.payload.config, 0, sizeof(m.payload.config));
    m.payload.config.size = BC_VBLK_CONFIG_BYTES;
    if (!vu_send(s, VU_GET_CONFIG, 0, &m.payload.config, 12 + BC_VBLK_CONFIG_BYTES, NULL, 0,
                 errp) ||
        !vu_recv(s, VU_GET_CONFIG, &m, errp))
        return false;
    if (m.size != 12 + BC_VBLK_CONFIG_BYTES || m.payload.config.size != BC_VBLK_CONFIG_BYTES) {
        g_set_error(errp, BC_ERROR, EPROTO, "%s: the back end refused to report its "
                    "configuration (reply size %u, config size %u)", s->what, m.size,
                    m.payload.config.size);
        return false;
    }
    memcpy(raw, m.payload.config.region, BC_VBLK_CONFIG_BYTES);
    return true;
}

/* Shared memory (rings, request headers and the bounce pool), and the eventfds. */
static bool vu_alloc(void *t, unsigned nq, size_t len, struct bc_vmem *mem, GError **errp)
{
    struct vu_state *s = t;

    s->nq = nq;
    s->mem_len = len;
    s->memfd = memfd_create("layerfs-virtio-blk", MFD_CLOEXEC);
    if (s->memfd < 0 || ftruncate(s->memfd, (off_t)s->mem_len) < 0) {
        g_set_error(errp, BC_ERROR, errno, "%s: shared memory: %s", s->what, g_strerror(errno));
        return false;
    }
    s->mem = mmap(NULL, s->mem_len, PROT_READ | PROT_WRITE, MAP_SHARED, s->memfd, 0);
    if (s->mem == MAP_FAILED) {
        s->mem = NULL;
        g_set_error(errp, BC_ERROR, errno, "%s: mmap of shared memory: %s", s->what,
                    g_strerror(errno));
        return false;
    }
    for (unsigned i = 0; i < s->nq; i++) {
        s->kick_fd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        s->call_fd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (s->kick_fd[i] < 0 || s->call_fd[i] < 0) {
            g_set_error(errp, BC_ERROR, errno, "%s: eventfd: %s", s->what, g_strerror(errno));
            return false;
        }
    }
    *mem = (struct bc_vmem){ .base = s->mem, .len = s->mem_len,
                             .dev_base = (uintptr_t)s->mem };
    return true;
}

/* Hand the back end the features and the memory, with the I/O buffer arenas if it takes
 * them. */
static bool vu_attach(void *t, struct bc_vblk *b, uint64_t features, GError **errp)
{
    struct vu_state *s = t;
    struct bc_buf_region arenas[BC_BUF_MAX_REGIONS];
    unsigned narenas = bc_buf_regions(arenas, MIN(BC_BUF_MAX_REGIONS, VU_MAX_REGIONS - 1));

    if (!vu_set_u64(s, VU_SET_FEATURES, features, NULL, 0, errp))
        return false;
    if (narenas) {
        GError *e = NULL;
        if (!vu_set_mem_table(s, arenas, narenas, &e)) {
            /* A refusal (REPLY_ACK) leaves the connection usable: go on without them. */
            bool refused = e->code == EIO && s->reply_ack;
            g_debug("%s: %s", s->what, e->message);
            if (!refused) {
                g_propagate_error(errp, e);
                return false;
            }
            g_error_free(e);
            narenas = 0;
        }
    }
    if (!narenas && !vu_set_mem_table(s, NULL, 0, errp))
        return false;
    for (unsigned i = 0; i < narenas; i++)
        bc_vblk_add_mem(b, &(struct bc_vmem){ .base = arenas[i].base, .len = arenas[i].len,
                                              .dev_base = (uintptr_t)arenas[i].base });
    s->narenas = narenas;
    return true;
}

static bool vu_set_queue(void *t, unsigned i, unsigned size, uint64_t desc, uint64_t avail,
                         uint64_t used, GError **errp)
{
    struct vu_state *s = t;
    struct vhost_vring_addr a = { .index = i, .desc_user_addr = desc,
                                  .used_user_addr = used, .avail_user_addr = avail };

    return vu_set_state(s, VU_SET_VRING_NUM, i, size, errp) &&
           vu_set_state(s, VU_SET_VRING_BASE, i, 0, errp) &&
           vu_set(s, VU_SET_VRING_ADDR, &a, sizeof(a), NULL, 0, errp) &&
           vu_set_u64(s, VU_SET_VRING_CALL, i, &s->call_fd[i], 1, errp) &&
           vu_set_u64(s, VU_SET_VRING_KICK, i, &s->kick_fd[i], 1, errp) &&
           vu_set_state(s, VU_SET_VRING_ENABLE, i, 1, errp);
}

static const struct bc_vblk_setup_ops vu_setup_ops = {
    .read_config = vu_read_config,
    .alloc = vu_alloc,
    .attach = vu_attach,
    .set_queue = vu_set_queue,
};

static void *vu_open(const struct bc_open_args *args, struct bc_props *props, GError **errp)
{
    struct vu_state *s = g_new0(struct vu_state, 1);
    uint64_t dev_features, pfeatures, maxq = 1;
    uint32_t queue_size;
    int64_t want_queues;

    s->sock = s->memfd = -1;
    for (unsigned i = 0; i < VU_MAX_QUEUES; i++)
        s->kick_fd[i] = s->call_fd[i] = -1;
    s->what = g_strdup_printf("%s: virtio-blk-vhost-user: %s", bc_what(args),
                              args->path ? args->path : "(no path)");
    if (!args->path || !*args->path) {
        g_set_error(errp, BC_ERROR, EINVAL, "%s: path (the vhost-user socket) is required",
                    s->what);
        goto fail;
    }
    if (!bc_opt_pow2(args, "queue-size", 4, 32768, 256, &queue_size, errp) ||
        !bc_opt_uint(args, "num-queues", VU_MAX_QUEUES, 0, &want_queues, errp))
        goto fail;
    if (!vu_connect(s, args->path, errp))
        goto fail;

    /* Features and protocol features. */
    if (!vu_get_u64(s, VU_GET_FEATURES, &dev_features, errp))
        goto fail;
    if (!(dev_features & (1ull << VU_F_PROTOCOL_FEATURES)) ||
        !(dev_features & (1ull << VIRTIO_F_VERSION_1))) {
        g_set_error(errp, BC_ERROR, ENOTSUP,
                    "%s: the back end lacks VIRTIO_F_VERSION_1 or vhost-user protocol "
                    "features (features %#llx)", s->what, (unsigned long long)dev_features);
        goto fail;
    }
    if (!vu_get_u64(s, VU_GET_PROTOCOL_FEATURES, &pfeatures, errp))
        goto fail;
    if (!(pfeatures & (1ull << VU_PROTOCOL_F_CONFIG))) {
        g_set_error(errp, BC_ERROR, ENOTSUP,
                    "%s: the back end cannot report its configuration (no CONFIG protocol "
                    "feature)", s->what);
        goto fail;
    }
    pfeatures &= (1ull << VU_PROTOCOL_F_MQ) | (1ull << VU_PROTOCOL_F_REPLY_ACK) |
                 (1ull << VU_PROTOCOL_F_CONFIG);
    if (!vu_send(s, VU_SET_PROTOCOL_FEATURES, 0, &pfeatures, 8, NULL, 0, errp) ||
        !vu_send(s, VU_SET_OWNER, 0, NULL, 0, NULL, 0, errp))
        goto fail;
    s->reply_ack = pfeatures & (1ull << VU_PROTOCOL_F_REPLY_ACK);
    if ((pfeatures & (1ull << VU_PROTOCOL_F_MQ)) &&
        !vu_get_u64(s, VU_GET_QUEUE_NUM, &maxq, errp))
        goto fail;

    s->ops = (struct bc_vblk_transport){ .kick = vu_kick, .death_fd = s->sock,
                                         .alive = vu_alive };
    struct bc_vblk_setup vs = {
        .what = s->what,
        .dev_features = dev_features,
        .extra_features = 1ull << VU_F_PROTOCOL_FEATURES,
        .dev_queues = (unsigned)MIN(MAX(maxq, 1), (uint64_t)UINT16_MAX), /* 16-bit field */
        .want_queues = want_queues,
        .queue_size = queue_size,
        .read_only = args->read_only,
        .call_fds = s->call_fd,
        .io = &s->ops,
    };
    if (!bc_vblk_setup(&vs, &vu_setup_ops, s, props, &s->blk, errp))
        goto fail;
    /* Without REPLY_ACK, a round trip proves the back end took all of the above. */
    if (!s->reply_ack && !vu_get_u64(s, VU_GET_FEATURES, &dev_features, errp))
        goto fail;
    g_debug("%s: features %#" G_GINT64_MODIFIER "x, protocol features %#" G_GINT64_MODIFIER
            "x, %u queues of %u, block size %u, max transfer %u, %u I/O buffer arenas",
            s->what, vs.features, pfeatures, s->nq, vs.queue_size, props->req_align,
            props->max_transfer, s->narenas);
    return s;

fail:
    vu_free(s);
    return NULL;
}

static void vu_close(void *state)
{
    vu_free(state);
}

static void vu_submit(void *state, struct bc_dreq *dreq)
{
    struct vu_state *s = state;
    bc_vblk_submit(s->blk, dreq);
}

static void vu_get_stats(void *state, struct bc_drv_stats *st)
{
    struct vu_state *s = state;
    bc_vblk_stats(s->blk, st);
}

static const char *const vu_keys[] = { "num-queues", "queue-size", NULL };

const struct bc_driver bc_drv_virtio_blk_vhost_user = {
    .name = "virtio-blk-vhost-user",
    .keys = vu_keys,
    .open = vu_open,
    .close = vu_close,
    .submit = vu_submit,
    .get_stats = vu_get_stats,
};
