/* 16 bytes at a time with SSE2 (part of every x86-64), for masking's kernels (_kernels.c,
 * _layout.c). BM_BLOCKS is defined where it is available; elsewhere the kernels use their
 * byte loops, which give the same results.
 *
 * Why: the values these kernels scan are short (ids, phone numbers, e-mail addresses) and
 * their characters change class from one byte to the next, so loops over bytes spend their
 * time in mispredicted branches and in per-byte bookkeeping. Comparing 16 bytes at once
 * gives a whole value's classes as masks, without a branch. */
#ifndef BIOMASK_BLOCKS_H
#define BIOMASK_BLOCKS_H

#if defined(__SSE2__) && defined(__x86_64__) && defined(__GNUC__)
#include <emmintrin.h>
#include <stdint.h>
#include <string.h>
#define BM_BLOCKS 1

/* Bytes p[i .. i + 16) of a value of len bytes (i < len). Read in place where the buffer
 * has them (`avail` bytes from p on); else the value's bytes are copied and the rest are
 * zeros. Either way the bytes past the value's end are not the value's: callers mask them. */
static inline __m128i block_at(const unsigned char *p, int64_t i, int64_t len, int64_t avail) {
    if (i + 16 <= avail) return _mm_loadu_si128((const __m128i *)(p + i));
    unsigned char tmp[16] = {0};
    memcpy(tmp, p + i, (size_t)(len - i < 16 ? len - i : 16));
    return _mm_loadu_si128((const __m128i *)tmp);
}

/* 0xFF in each byte from `first` to `last` (ASCII). The compares are signed, so no byte of
 * 0x80 or more (UTF-8 beyond ASCII) is ever in range. */
static inline __m128i bytes_in(__m128i x, char first, char last) {
    return _mm_and_si128(_mm_cmpgt_epi8(x, _mm_set1_epi8((char)(first - 1))),
                         _mm_cmplt_epi8(x, _mm_set1_epi8((char)(last + 1))));
}

/* The first m bytes of d (0 <= m <= 16) into q, and nothing past them. Written from
 * registers (a copy through memory would be read back before it is forwarded). */
static inline void store_head(unsigned char *q, __m128i d, int64_t m) {
    if (m == 16) {
        _mm_storeu_si128((__m128i *)q, d);
        return;
    }
    uint64_t w = (uint64_t)_mm_cvtsi128_si64(d);
    if (m & 8) {
        memcpy(q, &w, 8);
        q += 8;
        w = (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(d, d));
    }
    if (m & 4) {
        uint32_t t = (uint32_t)w;
        memcpy(q, &t, 4);
        q += 4;
        w >>= 32;
    }
    if (m & 2) {
        uint16_t t = (uint16_t)w;
        memcpy(q, &t, 2);
        q += 2;
        w >>= 16;
    }
    if (m & 1) *q = (unsigned char)w;
}
#endif

#endif
