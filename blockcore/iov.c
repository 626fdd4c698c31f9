/* SPDX-License-Identifier: MIT */
/* iovec slicing and copying helpers and size parsing shared by the engine, drivers and
 * layers. */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <assert.h>

#include "blockcore/blockcore.h"

uint64_t bc_iov_len(const struct iovec *iov, int iovcnt)
{
    uint64_t n = 0;

    for (int i = 0; i < iovcnt; i++)
        n += iov[i].iov_len;
    return n;
}

int bc_iov_slice(const struct iovec *iov, int iovcnt, uint64_t skip, uint64_t len,
                 struct iovec *out, int out_max, uint64_t *took)
{
    uint64_t left = len;
    int n = 0;

    for (int i = 0; i < iovcnt && left; i++) {
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;     /* also drops empty elements */
            continue;
        }
        if (n == out_max) {
            if (!took)
                return -E2BIG;
            *took = len - left;
            return n;
        }
        size_t l = MIN(iov[i].iov_len - skip, left);
        out[n].iov_base = (char *)iov[i].iov_base + skip;
        out[n].iov_len = l;
        n++;
        left -= l;
        skip = 0;
    }
    if (left)
        return -EINVAL;                 /* iov ended first */
    if (took)
        *took = len;
    return n;
}

/* Walk len bytes of iov from byte skip, calling fn on each contiguous piece. */
#define IOV_WALK(iov, iovcnt, skip, len, BODY)                                               \
    do {                                                                                     \
        uint64_t skip_ = (skip);                                                             \
        size_t left_ = (len), done_ = 0;                                                     \
        for (int i_ = 0; i_ < (iovcnt) && left_; i_++) {                                     \
            if (skip_ >= (iov)[i_].iov_len) {                                                \
                skip_ -= (iov)[i_].iov_len;                                                  \
                continue;                                                                    \
            }                                                                                \
            char *p_ = (char *)(iov)[i_].iov_base + skip_;                                   \
            size_t n_ = MIN((iov)[i_].iov_len - skip_, left_);                               \
            BODY;                                                                            \
            skip_ = 0;                                                                       \
            left_ -= n_;                                                                     \
            done_ += n_;                                                                     \
        }                                                                                    \
        assert(left_ == 0);                                                                  \
    } while (0)

void bc_iov_to_buf(const struct iovec *iov, int iovcnt, uint64_t skip, void *buf, size_t len)
{
    IOV_WALK(iov, iovcnt, skip, len, memcpy((char *)buf + done_, p_, n_));
}

void bc_iov_from_buf(const struct iovec *iov, int iovcnt, uint64_t skip, const void *buf,
                     size_t len)
{
    IOV_WALK(iov, iovcnt, skip, len, memcpy(p_, (const char *)buf + done_, n_));
}

void bc_iov_memset(const struct iovec *iov, int iovcnt, uint64_t skip, int c, size_t len)
{
    IOV_WALK(iov, iovcnt, skip, len, memset(p_, c, n_));
}

bool bc_parse_size(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    unsigned shift = 0;

    if (!s || !*s || *s == '-' || *s == '+' || g_ascii_isspace(*s))
        return false;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s)
        return false;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default: return false;
    }
    if (shift && (*end == 'i' || *end == 'I'))
        end++;
    if (shift && (*end == 'b' || *end == 'B'))
        end++;
    if (*end)
        return false;
    if (shift && v > (UINT64_MAX >> shift))
        return false;
    *out = (uint64_t)v << shift;
    return true;
}
