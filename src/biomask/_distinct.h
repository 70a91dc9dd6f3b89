/* Keyed 64-bit digests of byte strings and a table of distinct values, shared by
 * lineage's residual-PII scan (lineage/_evidence.c) and masking's dictionary encoding
 * (masking/_kernels.c).
 *
 * The digest (the same as lineage/evidence.py's NumPy _digest, bit for bit): over the
 * bytes in 8-byte little-endian words, the last one zero-padded,
 *     h = k0 ^ (len * P0);  for each word w: h = (h ^ w) * P1; h ^= h >> 31;
 *     h ^= k1;  h = fmix64(h)   (MurmurHash3's finalizer)
 * with a key drawn at random per process or run. It is not a cryptographic MAC: it only
 * spreads values over a table (where equal digests are confirmed byte for byte) or stands
 * for them in memory for one run, and a random key keeps any input from piling up in one
 * slot. */
#ifndef BIOMASK_DISTINCT_H
#define BIOMASK_DISTINCT_H
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define P0 0x9E3779B97F4A7C15ULL
#define P1 0xBF58476D1CE4E5B9ULL
#define ONES 0x0101010101010101ULL
#define HIGH 0x8080808080808080ULL

static inline uint64_t load8(const unsigned char *p) {
    uint64_t w;
    memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

/* The len bytes at p as a little-endian word, zero-padded when len < 8. Reads 8 bytes
 * when p + 8 <= end (the end of the buffer p points into), else byte by byte. */
static inline uint64_t load_le(const unsigned char *p, int64_t len, const unsigned char *end) {
    if (len >= 8) return load8(p);
    if (p + 8 <= end) return load8(p) & ((1ULL << (8 * len)) - 1);
    uint64_t w = 0;
    for (int64_t i = 0; i < len; i++) w |= (uint64_t)p[i] << (8 * i);
    return w;
}

/* ASCII lower case of a word whose bytes are all below 0x80 (no carry crosses a byte). */
static inline uint64_t lower8(uint64_t w) {
    uint64_t upper = (w + 0x3F * ONES) & ~(w + 0x25 * ONES) & HIGH;
    return w | (upper >> 2);
}

static inline uint64_t mix(uint64_t h, uint64_t w) {
    h = (h ^ w) * P1;
    return h ^ (h >> 31);
}

static inline uint64_t fin(uint64_t h, uint64_t k1) {
    h ^= k1;
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 33;
    return h;
}

/* (inlined into every loop that calls it: the compiler would otherwise keep one shared
 * out-of-line copy, and the table below would pay a call per value) */
#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

/* The digest of len bytes at p (of their ASCII lower case with `lower`); end is the end of
 * the buffer p points into, so whole words are read only where they lie inside it. */
static ALWAYS_INLINE uint64_t digest(const unsigned char *p, int64_t len,
                                     const unsigned char *end, uint64_t k0, uint64_t k1,
                                     int lower) {
    uint64_t h = k0 ^ ((uint64_t)len * P0);
    if (len <= 16 && p + 16 <= end) {
        /* the same, without a branch to mispredict: both words read, the empty ones
         * (all of a value's past its end) left out by selection */
        uint64_t m0 = len >= 8 ? ~0ULL : (1ULL << ((8 * len) & 63)) - 1;
        uint64_t m1 = len >= 16 ? ~0ULL : len <= 8 ? 0 : (1ULL << ((8 * (len - 8)) & 63)) - 1;
        uint64_t w0 = load8(p) & m0, w1 = load8(p + 8) & m1;
        if (lower) w0 = lower8(w0), w1 = lower8(w1);
        uint64_t h1 = mix(h, w0);
        uint64_t h2 = mix(h1, w1);
        h = len > 8 ? h2 : len > 0 ? h1 : h;
        return fin(h, k1);
    }
    for (int64_t i = 0; i < len; i += 8) {
        uint64_t w = load_le(p + i, len - i, end);
        h = mix(h, lower ? lower8(w) : w);
    }
    return fin(h, k1);
}

/* Whether len bytes at a and b are equal; two masked words each when both lie 16 bytes
 * inside the buffer (most ids and codes), so the common case has no loop to mispredict. */
static inline int same_bytes(const unsigned char *a, const unsigned char *b, int64_t len,
                             const unsigned char *end) {
    if (len <= 16 && a + 16 <= end && b + 16 <= end) {
        uint64_t m0 = len >= 8 ? ~0ULL : (1ULL << ((8 * len) & 63)) - 1;
        uint64_t m1 = len >= 16 ? ~0ULL : len <= 8 ? 0 : (1ULL << ((8 * (len - 8)) & 63)) - 1;
        return (((load8(a) ^ load8(b)) & m0) | ((load8(a + 8) ^ load8(b + 8)) & m1)) == 0;
    }
    return memcmp(a, b, (size_t)len) == 0;
}

/* The distinct values of n strings (offsets o into the bytes p .. end), in the order of
 * their first occurrence, as Arrow's hash kernels (`unique`, `dictionary_encode`) give
 * them. first[k] is the row where distinct value k first occurs; with `index`, index[v]
 * is the number of row v's value (-1 where `valid` says the row is null, or the value is
 * shorter than min_len bytes: such a row has no value here). Returns the number of distinct values, or -1 when no memory could be had (or n
 * is beyond 32-bit numbering).
 *
 * One open-addressing table sized once, to at least twice the rows, so it never grows;
 * calloc leaves the pages a column of few values never reaches untouched. A slot is 8
 * bytes (the digest's high half and the value's number + 1), so a 65,536-row batch's
 * table is 1 MiB; equal digests are confirmed byte for byte, so the result is exact
 * whatever the digests. */
typedef struct {
    uint32_t tag;
    int32_t k1; /* distinct value number + 1; 0: empty */
} distinct_slot;

static Py_ssize_t distinct_run(const int64_t *o, const unsigned char *p, const unsigned char *end,
                               Py_ssize_t n, const unsigned char *valid, int64_t min_len,
                               uint64_t k0, uint64_t k1, int64_t *first, int32_t *index) {
    if (n >= INT32_MAX / 2) return -1;
    uint64_t size = 16;
    while (size < 2 * (uint64_t)n) size *= 2;
    uint64_t mask = size - 1;
    distinct_slot *table = calloc(size, sizeof(distinct_slot));
    if (table == NULL) return -1;
    Py_ssize_t count = 0;
    for (Py_ssize_t v = 0; v < n; v++) {
        int64_t len = o[v + 1] - o[v];
        if ((valid != NULL && !valid[v]) || len < min_len) {
            if (index != NULL) index[v] = -1;
            continue;
        }
        uint64_t d = digest(p + o[v], len, end, k0, k1, 0);
        uint32_t tag = (uint32_t)(d >> 32);
        for (uint64_t s = d & mask;; s = (s + 1) & mask) {
            distinct_slot *t = &table[s];
            if (t->k1 == 0) {
                t->tag = tag;
                t->k1 = (int32_t)count + 1;
                first[count] = v;
                if (index != NULL) index[v] = (int32_t)count;
                count++;
                break;
            }
            if (t->tag == tag) {
                int64_t u = first[t->k1 - 1];
                if (o[u + 1] - o[u] == len && same_bytes(p + o[u], p + o[v], len, end)) {
                    if (index != NULL) index[v] = t->k1 - 1;
                    break;
                }
            }
        }
    }
    free(table);
    return count;
}

#endif
