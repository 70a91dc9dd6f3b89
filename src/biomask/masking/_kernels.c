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
 * before any byte is touched. The GIL is released around the work; each call uses one EVP
 * context of its own, so calls from many threads are safe.
 *
 *   ff1_walk(key, x, nbits, tweaks, limit, decrypt, bad)
 *                                         FF1 radix 2, a tweak per value, cycle walking
 *   shape_scan / shape_place              the passes around it for shaped permutations
 *   phone_scan / phone_positions / email_scan   layouts of phones and e-mails (_layout.c)
 *   distinct(offsets, data, key, valid, first, index)
 *                                         Arrow's dictionary_encode of a string column
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#include "_aes.h"
#include "_buffers.h"
#include "_distinct.h"
#include "_layout.h"

/* ------------------------------------------------------------------------------------ */
/* The "auto" prefix of shaped values                                                    */
/* ------------------------------------------------------------------------------------ */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && defined(__GNUC__)
#define SWAR 1 /* 8 bytes as one little-endian word: byte i is bits 8i .. 8i + 7 */
#endif

/* The "auto" prefix: 1-6 upper-case ASCII letters, then a separator, then at least one
 * more character. All of it is ASCII, so bytes and code points count alike here. `avail`
 * is how many bytes from p on may be read (the value's and those of later values). */
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
 * per value, and the values of a group of GROUP go through one EVP call per round.
 */
#define FF1_WALK 400

static uint64_t low_mask(int m) { return m >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << m) - 1); }

/* ten rounds on the values slot[0..cnt) (indices into x); s1 holds each value's state.
 * Of a round's block only the last 8 bytes change (round byte and NUM(B)), so each value's
 * first 8 bytes and the big-endian number of its last 8 are read once, not every round;
 * the masks of both halves are found once too. */
static int ff1_rounds(EVP_CIPHER_CTX *ctx, uint64_t *x, const int64_t *nbits,
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
        if (!ecb(ctx, enc, blk, cnt)) return 0;
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

static int ff1_walk_run(EVP_CIPHER_CTX *ctx, uint64_t *x, const int64_t *nbits,
                        const unsigned char *tweaks, const uint64_t *limit, Py_ssize_t n,
                        int decrypt, unsigned char *bad, long long max_walk) {
    unsigned char p0[65][BLOCK];
    unsigned char blk[GROUP * BLOCK], enc[GROUP * BLOCK], s1[GROUP * BLOCK], s1w[GROUP * BLOCK];
    uint64_t A[GROUP], B[GROUP];
    Py_ssize_t slot[GROUP], pend[GROUP];
    for (int nb = 20; nb <= 64; nb++) { /* CBC-MAC state after P, per bit length */
        unsigned char p[BLOCK] = {1, 2, 1, 0, 0, 2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 16};
        p[7] = (unsigned char)((nb / 2) % 256);
        p[11] = (unsigned char)nb;
        if (!ecb(ctx, p0[nb], p, 1)) return 0;
    }
    for (Py_ssize_t start = 0; start < n; start += GROUP) {
        int cnt = (int)(n - start < GROUP ? n - start : GROUP);
        for (int j = 0; j < cnt; j++) {
            Py_ssize_t i = start + j;
            xor16(blk + (Py_ssize_t)j * BLOCK, p0[nbits[i]], tweaks + i * BLOCK);
            slot[j] = i;
        }
        if (!ecb(ctx, s1, blk, cnt)) return 0;
        int live = cnt;
        for (int j = 0; j < cnt; j++) pend[j] = j; /* positions in s1 */
        for (long long walk = 0; walk < max_walk && live > 0; walk++) {
            for (int j = 0; j < live; j++) {
                memcpy(s1w + (Py_ssize_t)j * BLOCK, s1 + (Py_ssize_t)pend[j] * BLOCK, BLOCK);
                slot[j] = start + pend[j];
            }
            if (!ff1_rounds(ctx, x, nbits, s1w, slot, live, decrypt, blk, enc, A, B)) return 0;
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
        EVP_CIPHER_CTX *ctx = ecb_encryptor(key.buf);
        if (ctx != NULL) {
            Py_BEGIN_ALLOW_THREADS
            ok = ff1_walk_run(ctx, x.buf, nbits.buf, tweaks.buf, limit.buf, n, decrypt, bad.buf,
                              max_walk);
            Py_END_ALLOW_THREADS
            EVP_CIPHER_CTX_free(ctx);
        }
        if (ok) {
            result = Py_None;
            Py_INCREF(result);
        } else {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused an AES-256-ECB operation");
        }
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
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            int64_t len = o[i + 1] - o[i], lo, hi, a = 0, b = 0;
            const unsigned char *p = d + o[i];
            if (autop) kp[i] = auto_prefix(p, len, (int64_t)data.len - o[i]);
            unsigned char *q = ds + o[i];
            int any = value_span(kp, up, i, len, &lo, &hi);
            uint64_t v = 0, space = 1;
            /* kept head [0, lo) and tail [hi, len) as they are (the tail as zeros when
             * hidden); only [lo, hi) is classified (empty when nothing may vary) */
            if (!any) lo = hi;
            memcpy(q, p, (size_t)lo);
            for (int64_t k = lo; k < hi; k++) {
                int c = byte_class(p[k]);
                if (!c) {
                    q[k] = p[k];
                    continue;
                }
                q[k] = (unsigned char)c;
                if (c == 1)
                    a++;
                else
                    b++;
                if (b <= 13 && a <= ma[b]) {
                    v = v * CLASS_RADIX[c] + (uint64_t)(p[k] - CLASS_BASE[c]);
                    space *= CLASS_RADIX[c];
                }
            }
            if (hide)
                memset(q + hi, 0, (size_t)(len - hi));
            else
                memcpy(q + hi, p + hi, (size_t)(len - hi));
            x[i] = v;
            sp[i] = space;
            nc[i] = 0;
            if (len == 0) fl[i] = 3;
            else if (small_space(a, b)) fl[i] = 1;
            else if (b > 13 || a > ma[b]) fl[i] = 2;
            else fl[i] = 0;
            if (fl[i] == 2) { /* long: the numbers and spaces of its chunks */
                int64_t L = a + b, k = (L + 12) / 13, rank = 0, j = 0, edge = L / k;
                for (int64_t z = 0; z < k; z++) {
                    cx[cur + z] = 0;
                    cs[cur + z] = 1;
                }
                for (int64_t q = lo; q < hi; q++) {
                    int c = byte_class(p[q]);
                    if (!c) continue;
                    while (rank >= edge) edge = L * (++j + 1) / k; /* chunk_of, incrementally */
                    rank++;
                    cx[cur + j] = cx[cur + j] * CLASS_RADIX[c] + (uint64_t)(p[q] - CLASS_BASE[c]);
                    cs[cur + j] *= CLASS_RADIX[c];
                }
                nc[i] = k;
                cur += k;
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
            const unsigned char *p = d + o[i];
            unsigned char *q = w + o[i];
            uint64_t v = x[i];
            for (int64_t k = hi - 1; k >= lo; k--) {
                int c = byte_class(p[k]);
                if (c) q[k] = put_digit(c, &v);
            }
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
        count = distinct_run(o, p, end, n, ok, load8(k), load8(k + 8), first.buf, index.buf);
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
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "Shaped permutations (FF1 walks), phone/e-mail layouts.",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) {
    return PyModule_Create(&module);
}
