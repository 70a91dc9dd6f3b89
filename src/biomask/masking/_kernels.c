/*
 * biomask.masking._kernels: the per-value loops under shaped tokens, in C.
 *
 * Why this exists: a string column of a hundred thousand distinct values (passport
 * numbers, subject ids, e-mails) is masked by classifying every byte, reading the varying
 * characters as one number, walking it through FF1 (ten AES rounds per value, cycle
 * walking) and writing it back. In numpy each of these is a chain of gathers, scatters and
 * temporary arrays over every byte; here each is one pass over the Arrow buffers, and the
 * block cipher still runs in large batches (biomask/_aes.h). The keyed PRF under the
 * tweaks is the keys package's own helper (biomask.keys._prf).
 *
 * These are raw primitives behind biomask.masking.permute, ff1 and the operators (loaded
 * through biomask.masking.shape), which keep numpy fallbacks with byte-identical output.
 * Offsets and lengths come from data files, so every one is checked against its buffer
 * before any byte is touched. The GIL is released around the work; each call expands its
 * own AES key (biomask/_aes.h), so calls from many threads are safe.
 *
 *   ff1_walk(key, x, nbits, tweaks, limit, decrypt, bad)
 *                                         FF1 radix 2, a tweak per value, cycle walking
 *   shape_scan / shape_place              the passes around it for shaped permutations
 *   phone_scan / phone_positions / phone_take / phone_put / email_scan
 *                                         layouts of phones and e-mails (_layout.c)
 *   distinct(offsets, data, key, valid, first, index)
 *                                         Arrow's dictionary_encode of a string column
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#include "_aes.h"
#include "_blocks.h"
#include "_buffers.h"
#include "_distinct.h"
#include "_layout.h"

/* ------------------------------------------------------------------------------------ */
/* The "auto" prefix of shaped values                                                    */
/* ------------------------------------------------------------------------------------ */

/* The "auto" prefix: 1-6 upper-case ASCII letters, then a separator, then at least one
 * more character. All of it is ASCII, so bytes and code points count alike here. */
#ifdef BM_BLOCKS
/* From the value's first 16 bytes x (see block_at: only its first len are the value's),
 * which shape_scan reads anyway: a mask of the upper-case ones, and the byte after them. */
static inline int64_t auto_prefix_block(__m128i x, const unsigned char *p, int64_t len) {
    unsigned up = (unsigned)_mm_movemask_epi8(bytes_in(x, 'A', 'Z'));
    if (len < 16) up &= (1u << len) - 1;
    int64_t k = __builtin_ctz(~up); /* leading upper-case bytes (16 if all are) */
    unsigned char c = k < len ? p[k] : 0;
    int sep = (c == '-') | (c == '_') | (c == '/') | (c == ':') | (c == '.');
    return (k >= 1) & (k <= 6) & (len > k + 1) & sep ? k + 1 : 0;
}
#else
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && defined(__GNUC__)
#define SWAR 1 /* 8 bytes as one little-endian word: byte i is bits 8i .. 8i + 7 */
#endif

/* `avail` is how many bytes from p on may be read (the value's and those of later values). */
static int64_t auto_prefix(const unsigned char *p, int64_t len, int64_t avail) {
    /* Branch-free: whether a value starts with a capital is close to random in ids. */
    int64_t k = 0;
#ifdef SWAR
    if (avail >= 8) {
        /* Per byte b, bit 7 of `up` is set iff 'A' <= b <= 'Z' (the | 0x80 keeps the
         * subtractions from borrowing across bytes; ~x drops non-ASCII bytes). */
        const uint64_t hi = 0x8080808080808080ULL;
        uint64_t x;
        memcpy(&x, p, 8);
        uint64_t up = ((x | hi) - 0x4141414141414141ULL) & ~((x | hi) - 0x5B5B5B5B5B5B5B5BULL);
        uint64_t stop = ~(up & ~x) & hi;
        k = stop ? __builtin_ctzll(stop) >> 3 : 8;
        k = k < len ? k : len;
    } else
#endif
    {
        int alive = 1;
        (void)avail;
        for (int i = 0; i < 7; i++) {
            unsigned char c = i < len ? p[i] : 0;
            alive &= (unsigned char)(c - 'A') < 26;
            k += alive;
        }
    }
    unsigned char c = k < len ? p[k] : 0;
    int sep = (c == '-') | (c == '_') | (c == '/') | (c == ':') | (c == '.');
    return (k >= 1) & (k <= 6) & (len > k + 1) & sep ? k + 1 : 0;
}
#endif

/* ------------------------------------------------------------------------------------ */
/* FF1 (radix 2) with a tweak per value and cycle walking: keyed permutations of [0, M)  */
/* ------------------------------------------------------------------------------------ */

/*
 * Value i is an integer x_i below limit_i (the size of its shape's space), written on
 * nbits_i bits (2**nbits_i >= limit_i, nbits_i in 20..64). It is encrypted with FF1 (NIST
 * SP 800-38G, radix 2, AES-256, ten rounds) under its own 16-byte tweak, again and again
 * until the result is below limit_i (cycle walking), which makes FF1 a permutation of
 * exactly [0, limit_i). decrypt walks back the same way.
 *
 * With radix 2 and at most 64 bits, every half is at most 32 bits, NUM(B) fits in b <= 4
 * bytes, d = 8, and "mod radix**m" is a mask. With a 16-byte tweak, Q is two blocks: the
 * tweak, then zeros, the round byte and NUM(B). The CBC-MAC state after P (one per bit
 * length) and the tweak block is computed once per value; each round is then one AES block
 * per value, and the values of a group of GROUP go through one AES-ECB call per round.
 */
#define FF1_WALK 400

static uint64_t low_mask(int m) { return m >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << m) - 1); }

/* ten rounds on the values slot[0..cnt) (indices into x); s1 holds each value's state.
 * Of a round's block only the last 8 bytes change (round byte and NUM(B)), so each value's
 * first 8 bytes and the big-endian number of its last 8 are read once, not every round;
 * the masks of both halves are found once too. */
static int ff1_rounds(const Aes256 *aes, uint64_t *x, const int64_t *nbits,
                      const unsigned char *s1, const Py_ssize_t *slot, int cnt, int decrypt,
                      unsigned char *blk, unsigned char *enc, uint64_t *A, uint64_t *B) {
    unsigned char V[GROUP], SH[GROUP];
    uint64_t MU[GROUP], MV[GROUP], HI[GROUP], LO[GROUP];
    for (int j = 0; j < cnt; j++) {
        Py_ssize_t i = slot[j];
        int n = (int)nbits[i], v = n - n / 2;
        uint64_t hi, lo;
        V[j] = (unsigned char)v;
        SH[j] = (unsigned char)(8 * ((v + 7) / 8)); /* the round byte sits above NUM(B) */
        MU[j] = low_mask(n / 2);
        MV[j] = low_mask(v);
        A[j] = x[i] >> v;
        B[j] = x[i] & MV[j];
        memcpy(&hi, s1 + (Py_ssize_t)j * BLOCK, 8);
        memcpy(&lo, s1 + (Py_ssize_t)j * BLOCK + 8, 8);
        HI[j] = hi;
        LO[j] = __builtin_bswap64(lo);
    }
    for (int r = 0; r < 10; r++) {
        int round = decrypt ? 9 - r : r;
        const uint64_t *src = decrypt ? A : B, *mask = (round % 2 == 0) ? MU : MV;
        for (int j = 0; j < cnt; j++) {
            unsigned char *q = blk + (Py_ssize_t)j * BLOCK;
            uint64_t lo = __builtin_bswap64(LO[j] ^ ((uint64_t)round << SH[j]) ^ src[j]);
            memcpy(q, &HI[j], 8);
            memcpy(q + 8, &lo, 8);
        }
        if (!ecb(aes, enc, blk, cnt)) return 0;
        for (int j = 0; j < cnt; j++) {
            uint64_t m = mask[j], y;
            memcpy(&y, enc + (Py_ssize_t)j * BLOCK, 8);
            y = __builtin_bswap64(y) & m;
            if (decrypt) {
                uint64_t c = (B[j] - y) & m;
                B[j] = A[j];
                A[j] = c;
            } else {
                uint64_t c = (A[j] + y) & m;
                A[j] = B[j];
                B[j] = c;
            }
        }
    }
    for (int j = 0; j < cnt; j++) x[slot[j]] = (A[j] << V[j]) | B[j];
    return 1;
}

#ifdef BM_VAES
/* Bits 0..3 of m, each doubled: the mask of the 64-bit halves of four 16-byte blocks. */
static inline __mmask8 ff1_spread(unsigned m) {
    m &= 0xF;
    m = (m | (m << 2)) & 0x33;
    m = (m | (m << 1)) & 0x55;
    return (__mmask8)(m * 3);
}

/* The same ten rounds as ff1_rounds, with VAES, on the 8 * H values x[0..cnt) (fewer at
 * the end: lanes past cnt are masked off on every load and store), in place. Everything
 * stays in registers from reading x to writing it back: eight values per zmm for A, B,
 * the masks and shifts, four blocks per zmm for the AES. The scalar version spends as
 * much time building each round's blocks and parsing its output through memory as in
 * AES-NI itself; here that is a few vector instructions per eight values. H is a
 * constant at each call (always inlined), so the arrays below are registers. */
__attribute__((always_inline)) BM_VAES_TARGET static inline void
ff1_vaes_pass(const __m512i *k, uint64_t *x, const int64_t *nbits, const unsigned char *s1,
              int cnt, int decrypt, const int H) {
    /* reverses the bytes of each 64-bit lane (the big-endian numbers of the blocks) */
    const __m512i swap = _mm512_broadcast_i32x4(
        _mm_set_epi8(8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
    const __m512i one = _mm512_set1_epi64(1), seven = _mm512_set1_epi64(7);
    const __m512i even = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1);
    __m512i a[4], b[4], hi[4], lo[4], mu[4], mv[4], sh[4], v[4], blk[8];
    __mmask8 live[4];
    for (int h = 0; h < H; h++) {
        int at = 8 * h, left = cnt - at;
        live[h] = left >= 8 ? 0xFF : left <= 0 ? 0 : (__mmask8)((1u << left) - 1);
        __m512i xv = _mm512_maskz_loadu_epi64(live[h], x + at);
        __m512i n = _mm512_maskz_loadu_epi64(live[h], nbits + at);
        __m512i u = _mm512_srli_epi64(n, 1); /* u = n / 2 <= 32, v = n - u <= 32 */
        v[h] = _mm512_sub_epi64(n, u);
        mu[h] = _mm512_sub_epi64(_mm512_sllv_epi64(one, u), one);
        mv[h] = _mm512_sub_epi64(_mm512_sllv_epi64(one, v[h]), one);
        /* the round byte sits above NUM(B), which takes ceil(v / 8) bytes */
        sh[h] = _mm512_slli_epi64(_mm512_srli_epi64(_mm512_add_epi64(v[h], seven), 3), 3);
        a[h] = _mm512_srlv_epi64(xv, v[h]);
        b[h] = _mm512_and_si512(xv, mv[h]);
        const unsigned char *p = s1 + (Py_ssize_t)at * BLOCK;
        __m512i s0 = _mm512_maskz_loadu_epi64(ff1_spread(live[h]), p);
        __m512i s4 = _mm512_maskz_loadu_epi64(ff1_spread(live[h] >> 4), p + 64);
        hi[h] = _mm512_permutex2var_epi64(s0, even, s4);
        lo[h] = _mm512_shuffle_epi8(_mm512_permutex2var_epi64(s0, odd, s4), swap);
    }
    for (int r = 0; r < 10; r++) {
        int round = decrypt ? 9 - r : r;
        __m512i rnd = _mm512_set1_epi64(round);
        for (int h = 0; h < H; h++) {
            __m512i w = _mm512_xor_si512(lo[h], _mm512_sllv_epi64(rnd, sh[h]));
            w = _mm512_shuffle_epi8(_mm512_xor_si512(w, decrypt ? a[h] : b[h]), swap);
            /* the block of value 2L (2L + 1) in lane L of blk[2h] (blk[2h + 1]) */
            blk[2 * h] = _mm512_xor_si512(_mm512_unpacklo_epi64(hi[h], w), k[0]);
            blk[2 * h + 1] = _mm512_xor_si512(_mm512_unpackhi_epi64(hi[h], w), k[0]);
        }
        for (int t = 1; t < 14; t++)
            for (int q = 0; q < 2 * H; q++) blk[q] = _mm512_aesenc_epi128(blk[q], k[t]);
        for (int q = 0; q < 2 * H; q++) blk[q] = _mm512_aesenclast_epi128(blk[q], k[14]);
        for (int h = 0; h < H; h++) {
            __m512i m = round % 2 == 0 ? mu[h] : mv[h];
            /* the first 8 bytes of each block, back in value order */
            __m512i y = _mm512_unpacklo_epi64(blk[2 * h], blk[2 * h + 1]);
            y = _mm512_and_si512(_mm512_shuffle_epi8(y, swap), m);
            if (decrypt) {
                __m512i c = _mm512_and_si512(_mm512_sub_epi64(b[h], y), m);
                b[h] = a[h];
                a[h] = c;
            } else {
                __m512i c = _mm512_and_si512(_mm512_add_epi64(a[h], y), m);
                a[h] = b[h];
                b[h] = c;
            }
        }
    }
    for (int h = 0; h < H; h++)
        _mm512_mask_storeu_epi64(x + 8 * h, live[h],
                                 _mm512_or_si512(_mm512_sllv_epi64(a[h], v[h]), b[h]));
}

/* Values x[0..cnt) (bit lengths nbits[0..cnt), states s1[0..cnt), all contiguous) through
 * ten rounds, 32 at a time (eight zmm of blocks in flight: measured 5% faster than 16,
 * though the values' state then spills to the stack), the last 16 or fewer in a pass of
 * 16: one pass costs ten rounds of AES latency whatever its width, and the walkers left
 * after the first step are often only a few. */
BM_VAES_TARGET static void ff1_vaes(const __m128i *rk, uint64_t *x, const int64_t *nbits,
                                    const unsigned char *s1, int cnt, int decrypt) {
    __m512i k[15];
    aes_broadcast_keys(k, rk);
    for (int j = 0; j < cnt; j += 32) {
        const unsigned char *p = s1 + (Py_ssize_t)j * BLOCK;
        if (cnt - j > 16)
            ff1_vaes_pass(k, x + j, nbits + j, p, cnt - j, decrypt, 4);
        else
            ff1_vaes_pass(k, x + j, nbits + j, p, cnt - j, decrypt, 2);
    }
    aes_wipe_keys(k);
}
#endif

static int ff1_walk_run(const Aes256 *aes, uint64_t *x, const int64_t *nbits,
                        const unsigned char *tweaks, const uint64_t *limit, Py_ssize_t n,
                        int decrypt, unsigned char *bad, long long max_walk) {
    unsigned char p0[65][BLOCK];
    unsigned char blk[GROUP * BLOCK], enc[GROUP * BLOCK], s1[GROUP * BLOCK], s1w[GROUP * BLOCK];
    uint64_t A[GROUP], B[GROUP];
    Py_ssize_t slot[GROUP], pend[GROUP];
#ifdef BM_VAES
    uint64_t xw[GROUP];
    int64_t nbw[GROUP];
#endif
    for (int nb = 20; nb <= 64; nb++) { /* CBC-MAC state after P, per bit length */
        unsigned char p[BLOCK] = {1, 2, 1, 0, 0, 2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 16};
        p[7] = (unsigned char)((nb / 2) % 256);
        p[11] = (unsigned char)nb;
        if (!ecb(aes, p0[nb], p, 1)) return 0;
    }
    for (Py_ssize_t start = 0; start < n; start += GROUP) {
        int cnt = (int)(n - start < GROUP ? n - start : GROUP);
        for (int j = 0; j < cnt; j++) {
            Py_ssize_t i = start + j;
            xor16(blk + (Py_ssize_t)j * BLOCK, p0[nbits[i]], tweaks + i * BLOCK);
            slot[j] = i;
        }
        if (!ecb(aes, s1, blk, cnt)) return 0;
        int live = cnt;
        for (int j = 0; j < cnt; j++) pend[j] = j; /* positions in s1 */
        for (long long walk = 0; walk < max_walk && live > 0; walk++) {
#ifdef BM_VAES
            if (aes->vaes) {
                if (live == cnt) { /* nobody left yet: pend is 0..cnt, read in place */
                    ff1_vaes(aes->rk, x + start, nbits + start, s1, cnt, decrypt);
                } else { /* the walkers, packed */
                    for (int j = 0; j < live; j++) {
                        Py_ssize_t i = start + pend[j];
                        memcpy(s1w + (Py_ssize_t)j * BLOCK, s1 + (Py_ssize_t)pend[j] * BLOCK,
                               BLOCK);
                        xw[j] = x[i];
                        nbw[j] = nbits[i];
                    }
                    ff1_vaes(aes->rk, xw, nbw, s1w, live, decrypt);
                    for (int j = 0; j < live; j++) x[start + pend[j]] = xw[j];
                }
                for (int j = 0; j < live; j++) slot[j] = start + pend[j];
            } else
#endif
            {
                for (int j = 0; j < live; j++) {
                    memcpy(s1w + (Py_ssize_t)j * BLOCK, s1 + (Py_ssize_t)pend[j] * BLOCK,
                           BLOCK);
                    slot[j] = start + pend[j];
                }
                if (!ff1_rounds(aes, x, nbits, s1w, slot, live, decrypt, blk, enc, A, B))
                    return 0;
            }
            int keep = 0;
            for (int j = 0; j < live; j++)
                if (x[slot[j]] >= limit[slot[j]]) pend[keep++] = pend[j];
            live = keep;
        }
        for (int j = 0; j < live; j++) bad[start + pend[j]] = 1;
    }
    return 1;
}

static PyObject *ff1_walk(PyObject *self, PyObject *args) {
    Py_buffer key, x, nbits, tweaks, limit, bad;
    int decrypt = 0;
    long long max_walk = FF1_WALK;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*w*y*y*pw*|L", &key, &x, &nbits, &tweaks, &limit, &decrypt,
                          &bad, &max_walk))
        return NULL;
    Py_ssize_t n = x.len / 8;
    int ok_args = key_ok(&key) && out_size_ok(&x, n * 8, "x") &&
                  out_size_ok(&nbits, n * 8, "nbits") &&
                  out_size_ok(&tweaks, n * BLOCK, "tweaks") &&
                  out_size_ok(&limit, n * 8, "limit") && out_size_ok(&bad, n, "bad");
    if (ok_args) {
        int64_t *nb = nbits.buf;
        const uint64_t *lim = limit.buf, *xs = x.buf;
        for (Py_ssize_t i = 0; i < n && ok_args; i++) {
            if (nb[i] == 0 && lim[i] > 1) { /* 0: bitlen(limit - 1), at least 20 */
                int bits = 64 - __builtin_clzll(lim[i] - 1);
                nb[i] = bits < 20 ? 20 : bits;
            }
            if (nb[i] < 20 || nb[i] > 64 || (nb[i] < 64 && (lim[i] - 1) >> nb[i]) ||
                lim[i] == 0 || xs[i] >= lim[i]) {
                PyErr_SetString(PyExc_ValueError,
                                "ff1_walk: needs 20 <= nbits <= 64, x < limit <= 2**nbits");
                ok_args = 0;
            }
        }
    }
    if (ok_args) {
        int ok = 0;
        Aes256 aes;
        if (aes_init(&aes, key.buf)) {
            Py_BEGIN_ALLOW_THREADS
            ok = ff1_walk_run(&aes, x.buf, nbits.buf, tweaks.buf, limit.buf, n, decrypt, bad.buf,
                              max_walk);
            Py_END_ALLOW_THREADS
            aes_free(&aes);
        }
        result = aes_result(ok);
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&x);
    PyBuffer_Release(&nbits);
    PyBuffer_Release(&tweaks);
    PyBuffer_Release(&limit);
    PyBuffer_Release(&bad);
    return result;
}

/* The two passes of permute.py around the FF1 walk, for values of one walk (spaces up to
 * 2**63.5). shape_scan classifies each byte (ASCII digit, upper, lower; everything else,
 * the kept prefix and the tail past upto are kept), writes the tweak descriptor (class
 * code for a varying byte, the byte itself for a kept one, 0 for a hidden tail), the
 * mixed-radix number of the varying bytes and the size of the space, and a flag per
 * value: 0 one walk, 1 too small (fewer than 10^6 values, or nothing to vary in a
 * non-empty value), 2 long (chunks; done in numpy), 3 empty. shape_place writes the
 * permuted numbers back as characters of the same classes. */
static const unsigned char BYTE_CLASS[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 2, ['B'] = 2, ['C'] = 2, ['D'] = 2, ['E'] = 2, ['F'] = 2, ['G'] = 2, ['H'] = 2,
    ['I'] = 2, ['J'] = 2, ['K'] = 2, ['L'] = 2, ['M'] = 2, ['N'] = 2, ['O'] = 2, ['P'] = 2,
    ['Q'] = 2, ['R'] = 2, ['S'] = 2, ['T'] = 2, ['U'] = 2, ['V'] = 2, ['W'] = 2, ['X'] = 2,
    ['Y'] = 2, ['Z'] = 2,
    ['a'] = 3, ['b'] = 3, ['c'] = 3, ['d'] = 3, ['e'] = 3, ['f'] = 3, ['g'] = 3, ['h'] = 3,
    ['i'] = 3, ['j'] = 3, ['k'] = 3, ['l'] = 3, ['m'] = 3, ['n'] = 3, ['o'] = 3, ['p'] = 3,
    ['q'] = 3, ['r'] = 3, ['s'] = 3, ['t'] = 3, ['u'] = 3, ['v'] = 3, ['w'] = 3, ['x'] = 3,
    ['y'] = 3, ['z'] = 3};

static inline int byte_class(unsigned char c) { return BYTE_CLASS[c]; }

static const unsigned char CLASS_BASE[4] = {0, '0', 'A', 'a'};
static const uint64_t CLASS_RADIX[4] = {1, 10, 26, 26};

static int value_span(const int64_t *keep, const int64_t *upto, Py_ssize_t i, int64_t len,
                      int64_t *lo, int64_t *hi) {
    *lo = keep[i] < 0 ? 0 : (keep[i] > len ? len : keep[i]);
    *hi = upto[i] < 0 ? 0 : (upto[i] > len ? len : upto[i]);
    return *lo < *hi;
}

/* The last numeral of *v in its class, as a character; *v loses it. Constant divisors,
 * so the compiler multiplies instead of dividing. */
static inline unsigned char put_digit(int c, uint64_t *v) {
    uint64_t d;
    if (c == 1) {
        d = *v % 10;
        *v /= 10;
        return (unsigned char)('0' + d);
    }
    d = *v % 26;
    *v /= 26;
    return (unsigned char)(CLASS_BASE[c] + d);
}

static int small_space(int64_t a, int64_t b) { /* 10**a * 26**b < 10**6, exactly */
    return (b == 0 && a < 6) || (b == 1 && a <= 4) || (b == 2 && a <= 3) ||
           (b == 3 && a <= 1) || (b == 4 && a == 0);
}

/* 10**a * 26**b modulo 2**64: the product of the radices of a digits and b letters, as
 * the scan's running product was (a table for the sizes permute.py's maxa allows). */
static const uint64_t POW10[20] = {1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL,
    1000000ULL, 10000000ULL, 100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL,
    1000000000000ULL, 10000000000000ULL, 100000000000000ULL, 1000000000000000ULL,
    10000000000000000ULL, 100000000000000000ULL, 1000000000000000000ULL,
    10000000000000000000ULL};
static const uint64_t POW26[14] = {1ULL, 26ULL, 676ULL, 17576ULL, 456976ULL, 11881376ULL,
    308915776ULL, 8031810176ULL, 208827064576ULL, 5429503678976ULL, 141167095653376ULL,
    3670344486987776ULL, 95428956661682176ULL, 2481152873203736576ULL};

static uint64_t space_of(int64_t a, int64_t b) {
    if (a < 20 && b < 14) return POW10[a] * POW26[b];
    uint64_t s = 1;
    for (int64_t j = 0; j < a; j++) s *= 10;
    for (int64_t j = 0; j < b; j++) s *= 26;
    return s;
}

/* The number and space of the varying bytes of p[lo .. hi) up to the first at which the
 * counts so far (a digits, b letters) pass maxa: what the scan writes for a long value
 * (nothing reads its x and space, but they stay as they were). When maxa never grows with
 * b (as permute.py's), the counts only grow, so a value that is not long has no such byte
 * and its number is that of all its varying bytes, which the scan finds without this. */
static void limited_number(const unsigned char *p, int64_t lo, int64_t hi, const int64_t *ma,
                           uint64_t *x, uint64_t *space) {
    uint64_t v = 0, s = 1;
    int64_t a = 0, b = 0;
    for (int64_t k = lo; k < hi; k++) {
        int c = byte_class(p[k]);
        if (!c) continue;
        if (c == 1)
            a++;
        else
            b++;
        if (b <= 13 && a <= ma[b]) {
            v = v * CLASS_RADIX[c] + (uint64_t)(p[k] - CLASS_BASE[c]);
            s *= CLASS_RADIX[c];
        }
    }
    *x = v;
    *space = s;
}

/* A long value (flag 2), whose L varying bytes are cut into k chunks (cx, cs: k each):
 * each chunk's number and space, and the value's x and space as limited_number finds
 * them, in one pass. A chunk is built in registers and stored when the next one starts. */
static void scan_long(const unsigned char *p, int64_t lo, int64_t hi, int64_t L, int64_t k,
                      const int64_t *ma, uint64_t *cx, uint64_t *cs, uint64_t *x,
                      uint64_t *space) {
    int64_t rank = 0, j = 0, edge = L / k, a = 0, b = 0;
    uint64_t v = 0, s = 1, cv = 0, cr = 1;
    for (int64_t z = 0; z < k; z++) {
        cx[z] = 0;
        cs[z] = 1;
    }
    for (int64_t q = lo; q < hi; q++) {
        int c = byte_class(p[q]);
        if (!c) continue;
        uint64_t r = CLASS_RADIX[c], d = (uint64_t)(p[q] - CLASS_BASE[c]);
        if (rank >= edge) { /* chunk j is complete; chunk_of, incrementally */
            cx[j] = cv;
            cs[j] = cr;
            cv = 0;
            cr = 1;
            while (rank >= edge) edge = L * (++j + 1) / k;
        }
        rank++;
        cv = cv * r + d;
        cr *= r;
        if (c == 1)
            a++;
        else
            b++;
        if (b <= 13 && a <= ma[b]) {
            v = v * r + d;
            s *= r;
        }
    }
    if (rank > 0) {
        cx[j] = cv;
        cs[j] = cr;
    }
    *x = v;
    *space = s;
}

#ifdef BM_BLOCKS
/* ------------------------------------------------------------------------------------ */
/* shape_scan and shape_place 16 bytes at a time (SSE2, see _blocks.h)                   */
/* ------------------------------------------------------------------------------------ */

/* Why: a loop over the bytes branches on each byte's class (in ids like 8KKN42RO2 that is
 * close to random, so often mispredicted) and chains a multiply-add (scan) or a division
 * (place) from each varying byte to the next. Here the classes of 16 bytes are masks, and
 * the mixed-radix number of a block is built as a tree: numerals of pairs of bytes, of
 * fours, of eights, each level one multiply for all its lanes. The byte loops (scan_span,
 * place_number) remain for other machines, and for the values place_block leaves. */

static inline uint64_t lane0(__m128i v) { return (uint64_t)_mm_cvtsi128_si64(v); }
static inline uint64_t lane1(__m128i v) { return lane0(_mm_unpackhi_epi64(v, v)); }
static inline int64_t clamp16(int64_t k) { return k < 0 ? 0 : (k > 16 ? 16 : k); }

static inline __m128i span_mask(int64_t lo, int64_t hi) { /* bytes lo .. hi - 1 of 16 */
    const __m128i idx = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return _mm_andnot_si128(_mm_cmplt_epi8(idx, _mm_set1_epi8((char)lo)),
                            _mm_cmplt_epi8(idx, _mm_set1_epi8((char)hi)));
}

/* The classes of 16 bytes within a span, as masks; each byte's radix (10 for a digit, 26
 * for a letter, 1 for a kept byte) and the byte of its numeral 0 ('0', 'A', 'a'; 0). */
typedef struct {
    __m128i dig, up, low, let, var, rad, base;
} Classes;

static inline Classes classes_of(__m128i x, __m128i span) {
    Classes c;
    c.dig = _mm_and_si128(bytes_in(x, '0', '9'), span);
    c.up = _mm_and_si128(bytes_in(x, 'A', 'Z'), span);
    c.low = _mm_and_si128(bytes_in(x, 'a', 'z'), span);
    c.let = _mm_or_si128(c.up, c.low);
    c.var = _mm_or_si128(c.dig, c.let);
    c.rad = _mm_or_si128(_mm_or_si128(_mm_and_si128(c.dig, _mm_set1_epi8(10)),
                                      _mm_and_si128(c.let, _mm_set1_epi8(26))),
                         _mm_andnot_si128(c.var, _mm_set1_epi8(1)));
    c.base = _mm_or_si128(_mm_and_si128(c.dig, _mm_set1_epi8('0')),
                          _mm_or_si128(_mm_and_si128(c.up, _mm_set1_epi8('A')),
                                       _mm_and_si128(c.low, _mm_set1_epi8('a'))));
    return c;
}

/* The radices multiplied up the tree: r2 has 8 lanes of 16 bits (bytes 2k and 2k + 1, at
 * most 26 * 26), r4 4 lanes of 32 bits, r8 2 lanes of 64 bits (bytes 0-7 and 8-15). */
static inline void radix_tree(__m128i rad, __m128i *r2, __m128i *r4, __m128i *r8) {
    *r2 = _mm_mullo_epi16(_mm_and_si128(rad, _mm_set1_epi16(0xFF)), _mm_srli_epi16(rad, 8));
    /* pmaddwd: r2[2k] * r2[2k + 1] + r2[2k + 1] * 0; pmuludq: r4[2k] * r4[2k + 1] */
    *r4 = _mm_madd_epi16(*r2, _mm_srli_epi32(*r2, 16));
    *r8 = _mm_mul_epu32(*r4, _mm_srli_epi64(*r4, 32));
}

/* shape_scan on bytes j .. j + m (m <= 16) of a value, in x: their descriptor bytes into q,
 * the block's number (its numerals in mixed radix) into *n and the product of its radices
 * into *r (both modulo 2**64), its digits and letters added to *a and *b. lo and hi are
 * the value's span [lo, hi) in the block's coordinates (clamped to 0 .. 16). */
static inline void scan_block(__m128i x, int64_t m, int64_t lo, int64_t hi, int hide,
                              unsigned char *q, uint64_t *n, uint64_t *r, int64_t *a,
                              int64_t *b) {
    Classes c = classes_of(x, span_mask(lo, hi));
    /* the descriptor: 1, 2, 3 for a digit, upper, lower; a kept byte as it is, the tail
     * past the span as zeros when it is hidden */
    __m128i code = _mm_or_si128(_mm_and_si128(c.dig, _mm_set1_epi8(1)),
                                _mm_or_si128(_mm_and_si128(c.up, _mm_set1_epi8(2)),
                                             _mm_and_si128(c.low, _mm_set1_epi8(3))));
    __m128i kept = hide ? _mm_andnot_si128(span_mask(hi, 16), x) : x;
    store_head(q, _mm_or_si128(code, _mm_andnot_si128(c.var, kept)), m);
    /* the counts: a digit is 1, a letter 32, summed over the bytes (psadbw: at most 512) */
    __m128i tally = _mm_sad_epu8(_mm_or_si128(_mm_and_si128(c.dig, _mm_set1_epi8(1)),
                                              _mm_and_si128(c.let, _mm_set1_epi8(32))),
                                 _mm_setzero_si128());
    int64_t t = (int64_t)(lane0(tally) + lane1(tally));
    *a += t & 31;
    *b += t >> 5;
    /* the number: the numerals (0 where kept) up the same tree, n = n_first * r_second +
     * n_second at each level (pmaddwd with (r, 1) for the fours, pmuludq for the eights) */
    __m128i num = _mm_sub_epi8(_mm_and_si128(x, c.var), c.base), r2, r4, r8;
    radix_tree(c.rad, &r2, &r4, &r8);
    __m128i n2 = _mm_add_epi16(
        _mm_mullo_epi16(_mm_and_si128(num, _mm_set1_epi16(0xFF)), _mm_srli_epi16(c.rad, 8)),
        _mm_srli_epi16(num, 8));
    __m128i r2_1 = _mm_or_si128(_mm_srli_epi32(r2, 16), _mm_set1_epi32(1 << 16));
    __m128i n4 = _mm_madd_epi16(n2, r2_1);
    __m128i n8 = _mm_add_epi64(_mm_mul_epu32(n4, _mm_srli_epi64(r4, 32)),
                               _mm_srli_epi64(n4, 32));
    *n = lane0(n8) * lane1(r8) + lane1(n8);
    *r = lane0(r8) * lane1(r8);
}

/* "00" .. "99" */
static const char DIGITS2[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* The m last decimal digits of v < 10**m into q[0 .. m): four at a time from the end, so
 * that a division waits for one division before it per four digits, not per digit. */
static inline void place_decimal(unsigned char *q, int64_t m, uint64_t v) {
    for (; m >= 4; m -= 4) {
        uint64_t t = v / 10000;
        uint32_t r = (uint32_t)(v - t * 10000), h = r / 100;
        memcpy(q + m - 4, DIGITS2 + 2 * h, 2);
        memcpy(q + m - 2, DIGITS2 + 2 * (r - 100 * h), 2);
        v = t;
    }
    if (m >= 2) {
        uint64_t t = v / 100;
        memcpy(q + m - 2, DIGITS2 + 2 * (v - 100 * t), 2);
        v = t;
        m -= 2;
    }
    if (m) q[0] = (unsigned char)('0' + v);
}

/* shape_place for a value whose span [lo, hi) has at most 16 bytes and whose number v is
 * below the product of its radices; returns 0, having written nothing, for any other v
 * (the byte loop then writes what it always wrote).
 *
 * A span of digits only (SUBJ-42903202) is written as a decimal number. Any other goes
 * back down the tree of scan_block: v is split at the middle of the block (v = h *
 * r_second + l), each half at its middle, and so on. The divisors vary from value to
 * value, and SSE2 has no integer division, so below the first split (numbers under 26**8
 * < 2**38) the splits divide in floating point: a quotient of integers below 2**53 (2**24
 * in single precision), rounded, never reaches the next integer, so truncating it gives
 * the integer quotient exactly. The last split (pairs into bytes, below 676, by 10, 26 or
 * 1) multiplies by 6554 / 2**16 or 2521 / 2**16, which is exact in that range. */
static int place_block(const unsigned char *p, unsigned char *q, int64_t lo, int64_t hi,
                       int64_t avail_p, int64_t avail_q, uint64_t v) {
    __m128i span = span_mask(0, hi - lo);
    Classes c = classes_of(block_at(p, lo, hi, avail_p), span);
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(c.dig, span)) == 0xFFFF) {
        if (v >= POW10[hi - lo]) return 0;
        place_decimal(q + lo, hi - lo, v);
        return 1;
    }
    __m128i r2, r4, r8;
    radix_tree(c.rad, &r2, &r4, &r8);
    uint64_t first = lane0(r8), second = lane1(r8), space;
    if (!__builtin_mul_overflow(first, second, &space) && v >= space) return 0;
    /* halves, in 64-bit integers; then fours, in double precision */
    uint64_t h = v / second, l = v - h * second;
    __m128d n8 = _mm_set_pd((double)(int64_t)l, (double)(int64_t)h);
    __m128d d8 = _mm_cvtepi32_pd(_mm_shuffle_epi32(r4, _MM_SHUFFLE(3, 3, 3, 1)));
    __m128i q8 = _mm_cvttpd_epi32(_mm_div_pd(n8, d8));
    __m128i m8 = _mm_cvttpd_epi32(_mm_sub_pd(n8, _mm_mul_pd(_mm_cvtepi32_pd(q8), d8)));
    __m128i n4 = _mm_unpacklo_epi32(q8, m8); /* bytes 0-3, 4-7, 8-11, 12-15 */
    /* pairs, in single precision */
    __m128i d4 = _mm_srli_epi32(r2, 16);
    __m128i q4 = _mm_cvttps_epi32(_mm_div_ps(_mm_cvtepi32_ps(n4), _mm_cvtepi32_ps(d4)));
    __m128i m4 = _mm_sub_epi32(n4, _mm_madd_epi16(q4, d4));
    __m128i n2 = _mm_or_si128(q4, _mm_slli_epi32(m4, 16)); /* bytes 0-1, 2-3, ... */
    /* bytes */
    __m128i d2 = _mm_srli_epi16(c.rad, 8);
    __m128i magic = _mm_or_si128(
        _mm_and_si128(_mm_cmpeq_epi16(d2, _mm_set1_epi16(10)), _mm_set1_epi16(6554)),
        _mm_and_si128(_mm_cmpeq_epi16(d2, _mm_set1_epi16(26)), _mm_set1_epi16(2521)));
    __m128i q2 = _mm_or_si128(_mm_mulhi_epu16(n2, magic),
                              _mm_and_si128(_mm_cmpeq_epi16(d2, _mm_set1_epi16(1)), n2));
    __m128i m2 = _mm_sub_epi16(n2, _mm_mullo_epi16(q2, d2));
    __m128i num = _mm_or_si128(q2, _mm_slli_epi16(m2, 8));
    /* the characters where bytes vary; elsewhere the output stays as it was */
    __m128i was = block_at(q, lo, hi, avail_q);
    store_head(q + lo,
               _mm_or_si128(_mm_and_si128(c.var, _mm_add_epi8(num, c.base)),
                            _mm_andnot_si128(c.var, was)),
               hi - lo);
    return 1;
}
#else
/* The descriptor bytes of p[lo .. hi) into q; the number of its varying bytes (modulo
 * 2**64) and how many are digits (*a) and letters (*b). */
static uint64_t scan_span(const unsigned char *p, unsigned char *q, int64_t lo, int64_t hi,
                          int64_t *a, int64_t *b) {
    uint64_t v = 0;
    for (int64_t k = lo; k < hi; k++) {
        int c = byte_class(p[k]);
        q[k] = c ? (unsigned char)c : p[k];
        if (!c) continue;
        if (c == 1)
            (*a)++;
        else
            (*b)++;
        v = v * CLASS_RADIX[c] + (uint64_t)(p[k] - CLASS_BASE[c]);
    }
    return v;
}
#endif

static PyObject *shape_scan(PyObject *self, PyObject *args) {
    Py_buffer offs, data, keep, upto, maxa, desc, xo, so, fo, cxo, cso, nco;
    int hide = 0, autop = 0;
    Py_ssize_t n = 0;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*y*py*w*w*w*w*w*w*w*|p", &offs, &data, &keep, &upto, &hide,
                          &maxa, &desc, &xo, &so, &fo, &cxo, &cso, &nco, &autop))
        return NULL;
    if (offsets_ok(&offs, data.len, &n) && out_size_ok(&keep, n * 8, "keep") &&
        out_size_ok(&upto, n * 8, "upto") && out_size_ok(&maxa, 14 * 8, "maxa") &&
        out_size_ok(&desc, data.len, "desc") && out_size_ok(&xo, n * 8, "x") &&
        out_size_ok(&so, n * 8, "space") && out_size_ok(&fo, n, "flags") &&
        out_size_ok(&cso, cxo.len, "chunk_space") && out_size_ok(&nco, n * 8, "nchunks") &&
        cxo.len >= (Py_ssize_t)8 * (data.len / 13 + n + 1)) {
        const int64_t *o = offs.buf, *up = upto.buf, *ma = maxa.buf;
        int64_t *kp = keep.buf;
        const unsigned char *d = data.buf;
        unsigned char *ds = desc.buf, *fl = fo.buf;
        uint64_t *x = xo.buf, *sp = so.buf, *cx = cxo.buf, *cs = cso.buf;
        int64_t *nc = nco.buf, cur = 0;
        int mono = 1; /* maxa never grows with b: see limited_number */
        for (int j = 1; j < 14; j++) mono &= ma[j] <= ma[j - 1];
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            int64_t len = o[i + 1] - o[i], lo, hi, a = 0, b = 0;
            const unsigned char *p = d + o[i];
            unsigned char *q = ds + o[i];
            uint64_t v = 0;
#ifdef BM_BLOCKS
            int64_t avail = (int64_t)data.len - o[i];
            __m128i x0 = len ? block_at(p, 0, len, avail) : _mm_setzero_si128();
            if (autop) kp[i] = auto_prefix_block(x0, p, len);
#else
            if (autop) kp[i] = auto_prefix(p, len, (int64_t)data.len - o[i]);
#endif
            int any = value_span(kp, up, i, len, &lo, &hi);
            /* kept head [0, lo) and tail [hi, len) as they are (the tail as zeros when
             * hidden); only [lo, hi) is classified (empty when nothing may vary). Whether
             * the value is long is decided once, from its counts at the end, not per byte. */
            if (!any) lo = hi;
#ifdef BM_BLOCKS
            for (int64_t j = 0; j < len; j += 16) {
                uint64_t bn, br;
                __m128i x = j ? block_at(p, j, len, avail) : x0;
                scan_block(x, clamp16(len - j), clamp16(lo - j), clamp16(hi - j), hide, q + j,
                           &bn, &br, &a, &b);
                v = v * br + bn;
            }
#else
            memcpy(q, p, (size_t)lo);
            v = scan_span(p, q, lo, hi, &a, &b);
            if (hide)
                memset(q + hi, 0, (size_t)(len - hi));
            else
                memcpy(q + hi, p + hi, (size_t)(len - hi));
#endif
            nc[i] = 0;
            if (len == 0) fl[i] = 3;
            else if (small_space(a, b)) fl[i] = 1;
            else if (b > 13 || a > ma[b]) fl[i] = 2;
            else fl[i] = 0;
            if (fl[i] == 2) { /* long: the numbers and spaces of its chunks */
                int64_t k = (a + b + 12) / 13;
                scan_long(p, lo, hi, a + b, k, ma, cx + cur, cs + cur, &x[i], &sp[i]);
                nc[i] = k;
                cur += k;
            } else if (!mono) {
                limited_number(p, lo, hi, ma, &x[i], &sp[i]);
            } else {
                x[i] = v;
                sp[i] = space_of(a, b);
            }
        }
        Py_END_ALLOW_THREADS
        result = Py_None;
        Py_INCREF(result);
    } else if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "shape_scan: chunk buffers too small");
    }
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&keep);
    PyBuffer_Release(&upto);
    PyBuffer_Release(&maxa);
    PyBuffer_Release(&desc);
    PyBuffer_Release(&xo);
    PyBuffer_Release(&so);
    PyBuffer_Release(&fo);
    PyBuffer_Release(&cxo);
    PyBuffer_Release(&cso);
    PyBuffer_Release(&nco);
    return result;
}

/* The numerals of v written into the varying bytes of p[lo .. hi) of q, from the last. */
static void place_number(const unsigned char *p, unsigned char *q, int64_t lo, int64_t hi,
                         uint64_t v) {
    for (int64_t k = hi - 1; k >= lo; k--) {
        int c = byte_class(p[k]);
        if (c) q[k] = put_digit(c, &v);
    }
}

static PyObject *shape_place(PyObject *self, PyObject *args) {
    Py_buffer offs, data, keep, upto, xo, fo, cxo, nco, out;
    Py_ssize_t n = 0;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*w*", &offs, &data, &keep, &upto, &xo, &fo,
                          &cxo, &nco, &out))
        return NULL;
    int ok = offsets_ok(&offs, data.len, &n) && out_size_ok(&keep, n * 8, "keep") &&
             out_size_ok(&upto, n * 8, "upto") && out_size_ok(&xo, n * 8, "x") &&
             out_size_ok(&fo, n, "flags") && out_size_ok(&nco, n * 8, "nchunks") &&
             out_size_ok(&out, data.len, "out");
    if (ok) {
        const int64_t *nc = nco.buf;
        int64_t total = 0;
        for (Py_ssize_t i = 0; i < n; i++) total += nc[i] < 0 ? 0 : nc[i];
        if (cxo.len < total * 8) {
            PyErr_SetString(PyExc_ValueError, "shape_place: chunk buffer too small");
            ok = 0;
        }
    }
    if (ok) {
        const int64_t *o = offs.buf, *kp = keep.buf, *up = upto.buf, *nc = nco.buf;
        const unsigned char *d = data.buf, *fl = fo.buf;
        const uint64_t *x = xo.buf, *cx = cxo.buf;
        unsigned char *w = out.buf;
        int64_t cur = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            int64_t len = o[i + 1] - o[i], lo, hi;
            int64_t k = nc[i] < 0 ? 0 : nc[i];
            if (fl[i] == 2 && k > 0 && value_span(kp, up, i, len, &lo, &hi)) {
                const unsigned char *p = d + o[i];
                unsigned char *q = w + o[i];
                int64_t L = 0;
                for (int64_t z = lo; z < hi; z++) L += byte_class(p[z]) != 0;
                int64_t rank = L, j = k - 1, edge = L * j / k; /* chunk j starts at edge */
                uint64_t v = cx[cur + j];
                for (int64_t z = hi - 1; z >= lo; z--) {
                    int c = byte_class(p[z]);
                    if (!c) continue;
                    if (--rank < edge) {
                        while (rank < edge) edge = L * --j / k;
                        v = cx[cur + j];
                    }
                    q[z] = put_digit(c, &v);
                }
            }
            cur += k;
            if (fl[i] != 0 || !value_span(kp, up, i, len, &lo, &hi)) continue;
#ifdef BM_BLOCKS
            if (hi - lo <= 16 && place_block(d + o[i], w + o[i], lo, hi,
                                             (int64_t)data.len - o[i], (int64_t)out.len - o[i],
                                             x[i]))
                continue;
#endif
            place_number(d + o[i], w + o[i], lo, hi, x[i]);
        }
        Py_END_ALLOW_THREADS
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&keep);
    PyBuffer_Release(&upto);
    PyBuffer_Release(&xo);
    PyBuffer_Release(&fo);
    PyBuffer_Release(&cxo);
    PyBuffer_Release(&nco);
    PyBuffer_Release(&out);
    return result;
}

/* ------------------------------------------------------------------------------------ */
/* Distinct values of a column                                                           */
/* ------------------------------------------------------------------------------------ */

/* What Arrow's dictionary_encode gives a string column (distinct values in the order they
 * first occur; a number per row, none for a null), from _distinct.h's table: every token
 * operator finds a batch's distinct values before it runs its crypto once per value, and
 * Arrow's hash kernel spends about twice as long on a column of ids. `valid` is one byte
 * per row, or empty when no row is null. Returns the number of distinct values. */
static PyObject *bm_distinct(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer offs, data, key, valid, first, index;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*w*", &offs, &data, &key, &valid, &first, &index))
        return NULL;
    PyObject *ret = NULL;
    Py_ssize_t n = 0, count = 0;
    if (offsets_ok(&offs, data.len, &n) && out_size_ok(&key, 16, "key") &&
        (valid.len == 0 || out_size_ok(&valid, n, "valid")) &&
        out_size_ok(&first, n * 8, "first") && out_size_ok(&index, n * 4, "index") &&
        aligned(&first, 8, "first") && aligned(&index, 4, "index")) {
        const int64_t *o = offs.buf;
        const unsigned char *p = data.buf, *end = p + data.len, *k = key.buf;
        const unsigned char *ok = valid.len ? valid.buf : NULL;
        Py_BEGIN_ALLOW_THREADS
        count = distinct_run(o, p, end, n, ok, 0, load8(k), load8(k + 8), first.buf,
                             index.buf);
        Py_END_ALLOW_THREADS
        if (count < 0)
            PyErr_NoMemory();
        else
            ret = PyLong_FromSsize_t(count);
    }
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    PyBuffer_Release(&valid);
    PyBuffer_Release(&first);
    PyBuffer_Release(&index);
    return ret;
}

static PyMethodDef methods[] = {
    {"phone_scan", bm_phone_scan, METH_VARARGS,
     "phone_scan(offsets, data, keep, ndig) -> None: kept leading digits and digit count"},
    {"phone_positions", bm_phone_positions, METH_VARARGS,
     "phone_positions(offsets, data, keep, at) -> None: positions of the digits that change"},
    {"phone_take", bm_phone_take, METH_VARARGS,
     "phone_take(offsets, data, keep, digits) -> None: the digits that change, back to back"},
    {"phone_put", bm_phone_put, METH_VARARGS,
     "phone_put(offsets, data, keep, digits, out) -> None: data with those digits replaced"},
    {"email_scan", bm_email_scan, METH_VARARGS,
     "email_scan(offsets, data, ok, local) -> None: valid address? code points before '@'"},
    {"ff1_walk", ff1_walk, METH_VARARGS,
     "ff1_walk(key, x, nbits, tweaks, limit, decrypt, bad) -> None: FF1 (radix 2) with a "
     "tweak per value, cycle-walked into [0, limit)"},
    {"shape_scan", shape_scan, METH_VARARGS,
     "shape_scan(offsets, data, keep, upto, hide_tail, maxa, desc, x, space, flags, "
     "chunk_x, chunk_space, nchunks[, auto_prefix]) -> None"},
    {"shape_place", shape_place, METH_VARARGS,
     "shape_place(offsets, data, keep, upto, x, flags, chunk_x, nchunks, out) -> None"},
    {"distinct", bm_distinct, METH_VARARGS,
     "distinct(offsets, data, key, valid, first, index) -> int: distinct values in order of "
     "first occurrence, and each row's"},
    AES_IMPL_METHOD,
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "Shaped permutations (FF1 walks), phone/e-mail layouts.",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) {
    aes_select();
    return PyModule_Create(&module);
}
