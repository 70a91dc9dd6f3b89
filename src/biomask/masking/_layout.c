/* Layouts for biomask.masking._kernels: which parts of a phone number or e-mail change.
 *
 * Phone numbers:
 * The numpy version (biomask.masking.operators.tokens.phone_digits) makes a dozen passes
 * over every byte of the column; this makes two, and gives the same answers. The rules
 * (see PhoneDigits in tokens.py): after a leading '+' or '00' the country code is kept
 * (1 digit for 1 and 7, 2 for the codes in CC2, else 3); a national number keeps its
 * trunk '0'; every other digit changes. Only ASCII bytes matter (digits, '+', space, tab)
 * and UTF-8 never uses them inside a multi-byte character, so bytes are enough.
 *
 * Every offset is checked against the data buffer before any byte is read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_blocks.h"
#include "_buffers.h"
#include "_layout.h"

/* ITU-T E.164 two-digit country calling codes; as in tokens.py's _CC2. Asked once per
 * value, so a table indexed by the two digits (0..99) rather than a search of the list. */
static const unsigned char CC2[100] = {
    [20] = 1, [27] = 1, [30] = 1, [31] = 1, [32] = 1, [33] = 1, [34] = 1, [36] = 1, [39] = 1,
    [40] = 1, [41] = 1, [43] = 1, [44] = 1, [45] = 1, [46] = 1, [47] = 1, [48] = 1, [49] = 1,
    [51] = 1, [52] = 1, [53] = 1, [54] = 1, [55] = 1, [56] = 1, [57] = 1, [58] = 1, [60] = 1,
    [61] = 1, [62] = 1, [63] = 1, [64] = 1, [65] = 1, [66] = 1, [81] = 1, [82] = 1, [84] = 1,
    [86] = 1, [90] = 1, [91] = 1, [92] = 1, [93] = 1, [94] = 1, [95] = 1, [98] = 1};

/* v is c0 * 10 + c1 with missing digits as -1, so -11 .. 99 */
static int is_cc2(int64_t v) { return v >= 0 && v < 100 && CC2[v]; }

#ifdef BM_BLOCKS
/* Values of up to 64 bytes (nearly all phone numbers and e-mail addresses) are read 16
 * bytes at a time (_blocks.h) into bit masks, bit k for byte k, of the bytes that matter
 * (digits, '@', ...): a handful of instructions per 16 bytes instead of a few branches per
 * byte. What the rules ask is then answered from the masks. Longer values, and machines
 * without SSE2, take the byte loops, which give the same answers. */
static inline uint64_t bits_of(__m128i t, int64_t i) { /* a byte test's mask, at bit i */
    return (uint64_t)(unsigned)_mm_movemask_epi8(t) << i;
}

static inline uint64_t own_bits(int64_t len) { /* the bits of a value of len <= 64 bytes */
    return len >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << len) - 1;
}

static inline int64_t popcount64(uint64_t v) { /* no POPCNT in baseline x86-64 */
    v -= (v >> 1) & 0x5555555555555555ULL;
    v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (int64_t)((v * 0x0101010101010101ULL) >> 56);
}
#endif

/* Kept leading digits and digit count of one value, from its first non-blank byte (0 if
 * none) and its first five digits (-1 where missing). The arithmetic on missing digits is
 * the numpy version's, on purpose: tokens must not change between versions. */
static void phone_rules(int lead, const int64_t *d, int64_t count, int64_t *keep,
                        int64_t *ndig) {
    int plus = lead == '+';
    int double0 = !plus && d[0] == 0 && d[1] == 0;
    int64_t skip = double0 ? 2 : 0;
    int64_t c0 = d[skip < 4 ? skip : 4], c1 = d[skip + 1 < 4 ? skip + 1 : 4];
    int64_t cc_len = (c0 == 1 || c0 == 7) ? 1 : (is_cc2(c0 * 10 + c1) ? 2 : 3);
    *keep = (plus || double0) ? skip + cc_len : (d[0] == 0 ? 1 : 0);
    *ndig = count;
}

static void scan_one(const unsigned char *p, int64_t len, int64_t avail, int64_t *keep,
                     int64_t *ndig) {
    int64_t d[5] = {-1, -1, -1, -1, -1};
    int64_t count = 0;
    int lead = 0;
#ifdef BM_BLOCKS
    if (len <= 64) {
        uint64_t dig = 0, blank = 0, own = own_bits(len);
        for (int64_t i = 0; i < len; i += 16) {
            __m128i x = block_at(p, i, len, avail);
            dig |= bits_of(bytes_in(x, '0', '9'), i);
            blank |= bits_of(_mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8(' ')),
                                          _mm_cmpeq_epi8(x, _mm_set1_epi8('\t'))), i);
        }
        dig &= own;
        uint64_t solid = ~blank & own;
        lead = solid ? p[__builtin_ctzll(solid)] : 0;
        count = popcount64(dig);
        for (int k = 0; k < 5 && dig; k++, dig &= dig - 1) d[k] = p[__builtin_ctzll(dig)] - '0';
        phone_rules(lead, d, count, keep, ndig);
        return;
    }
#endif
    (void)avail;
    int seen = 0;
    for (int64_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        if (!seen && c != ' ' && c != '\t') {
            lead = c;
            seen = 1;
        }
        if (c >= '0' && c <= '9') {
            if (count < 5) d[count] = c - '0';
            count++;
        }
    }
    phone_rules(lead, d, count, keep, ndig);
}

PyObject *bm_phone_scan(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer offs, data, keep, ndig;
    if (!PyArg_ParseTuple(args, "y*y*w*w*", &offs, &data, &keep, &ndig)) return NULL;
    PyObject *ret = NULL;
    Py_ssize_t n;
    if (!offsets_ok(&offs, data.len, &n)) goto done;
    if (keep.len != n * 8 || ndig.len != n * 8) {
        PyErr_SetString(PyExc_ValueError, "keep and ndig must be int64, one per value");
        goto done;
    }
    const int64_t *o = (const int64_t *)offs.buf;
    const unsigned char *p = (const unsigned char *)data.buf;
    int64_t *k = (int64_t *)keep.buf, *c = (int64_t *)ndig.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t v = 0; v < n; v++)
        scan_one(p + o[v], o[v + 1] - o[v], (int64_t)data.len - o[v], &k[v], &c[v]);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&keep);
    PyBuffer_Release(&ndig);
    return ret;
}

/* The digits that change, in one walk over the bytes with three uses: phone_take copies
 * them out (the national numbers the permutation keys on, back to back), phone_put writes
 * new ones in their places (the tokens), and phone_positions gives their byte positions
 * (int64, for the numpy paths that gather and scatter through them). `keep` is
 * phone_scan's, and the digits or positions given must be exactly the changing digits of
 * all the values (sum of ndig - keep, none below zero). */
enum { PHONE_TAKE, PHONE_PUT, PHONE_AT };
static int64_t changing_digits(const unsigned char *p, int64_t len, int64_t avail,
                               int64_t keep, uint64_t *mask) {
#ifdef BM_BLOCKS
    if (len <= 64) {
        uint64_t dig = 0;
        for (int64_t i = 0; i < len; i += 16)
            dig |= bits_of(bytes_in(block_at(p, i, len, avail), '0', '9'), i);
        dig &= own_bits(len);
        for (int64_t r = 0; r < keep && dig; r++) dig &= dig - 1;
        *mask = dig;
        return -1;
    }
#endif
    (void)p;
    (void)avail;
    (void)keep;
    (void)mask;
    return len; /* the caller walks the bytes */
}

/* One changing digit, the used-th, at byte pos of the data. */
static inline void phone_digit(int mode, Py_ssize_t used, int64_t pos, const unsigned char *p,
                               unsigned char *digits, int64_t *at, unsigned char *out) {
    if (mode == PHONE_TAKE)
        digits[used] = p[pos];
    else if (mode == PHONE_PUT)
        out[pos] = digits[used];
    else
        at[used] = pos;
}

/* 1 when the values have exactly cap changing digits; 0, at the first one too many or
 * when fewer remain. */
static int phone_walk(int mode, const int64_t *o, const unsigned char *p, Py_ssize_t size,
                      Py_ssize_t n, const int64_t *k, unsigned char *digits, int64_t *at,
                      Py_ssize_t cap, unsigned char *out) {
    Py_ssize_t used = 0;
    for (Py_ssize_t v = 0; v < n; v++) {
        const unsigned char *q = p + o[v];
        int64_t len = o[v + 1] - o[v];
        uint64_t mask = 0;
        if (changing_digits(q, len, (int64_t)size - o[v], k[v], &mask) < 0) {
            for (; mask; mask &= mask - 1) {
                if (used == cap) return 0;
                phone_digit(mode, used++, o[v] + __builtin_ctzll(mask), p, digits, at, out);
            }
            continue;
        }
        int64_t rank = 0;
        for (int64_t i = 0; i < len; i++) {
            if (q[i] < '0' || q[i] > '9' || rank++ < k[v]) continue;
            if (used == cap) return 0;
            phone_digit(mode, used++, o[v] + i, p, digits, at, out);
        }
    }
    return used == cap;
}

static PyObject *phone_digits_call(PyObject *args, int mode) {
    Py_buffer offs, data, keep, dst, out;
    out.buf = NULL;
    out.obj = NULL;
    int put = mode == PHONE_PUT, pos = mode == PHONE_AT;
    int parsed = put ? PyArg_ParseTuple(args, "y*y*y*y*w*", &offs, &data, &keep, &dst, &out)
                     : PyArg_ParseTuple(args, "y*y*y*w*", &offs, &data, &keep, &dst);
    if (!parsed) return NULL;
    PyObject *ret = NULL;
    Py_ssize_t n;
    if (!offsets_ok(&offs, data.len, &n)) goto done;
    if (keep.len != n * 8 || !aligned(&keep, 8, "keep") || (put && out.len != data.len) ||
        (pos && (dst.len % 8 != 0 || !aligned(&dst, 8, "at")))) {
        PyErr_SetString(PyExc_ValueError,
                        pos ? "keep must be int64, one per value; at int64"
                            : "keep must be int64, one per value; out as long as the data");
        goto done;
    }
    int ok;
    Py_BEGIN_ALLOW_THREADS
    if (put) memcpy(out.buf, data.buf, (size_t)data.len);
    ok = phone_walk(mode, offs.buf, data.buf, data.len, n, keep.buf, pos ? NULL : dst.buf,
                    pos ? dst.buf : NULL, pos ? dst.len / 8 : dst.len, put ? out.buf : NULL);
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, pos ? "at must hold exactly the changing digits"
                                              : "digits must hold exactly the changing digits");
        goto done;
    }
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&keep);
    PyBuffer_Release(&dst);
    if (put) PyBuffer_Release(&out);
    return ret;
}

PyObject *bm_phone_positions(PyObject *self, PyObject *args) {
    (void)self;
    return phone_digits_call(args, PHONE_AT);
}

PyObject *bm_phone_take(PyObject *self, PyObject *args) {
    (void)self;
    return phone_digits_call(args, PHONE_TAKE);
}

PyObject *bm_phone_put(PyObject *self, PyObject *args) {
    (void)self;
    return phone_digits_call(args, PHONE_PUT);
}

/* E-mail addresses: whether each value is one the email operator accepts, and how many
 * code points its local part has (the part that is tokenized; the domain is kept).
 *
 * Accepted is what the regex ^[^@\s]+@[^@\s.][^@\s]*\.[^@\s]+$ matches (RE2's \s
 * is [\t\n\f\r ]): one '@', a non-empty local part, no white space, and a domain that
 * does not start with '.' and has a '.' with something on both sides of it. */
static int is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r';
}

static void email_one(const unsigned char *p, int64_t len, int64_t avail, unsigned char *ok,
                      int64_t *local) {
#ifdef BM_BLOCKS
    if (len <= 64) {
        uint64_t at = 0, dot = 0, cont = 0, low = 0, own = own_bits(len);
        for (int64_t i = 0; i < len; i += 16) {
            __m128i x = block_at(p, i, len, avail); /* signed: 0x80 .. 0xBF are < -64 */
            at |= bits_of(_mm_cmpeq_epi8(x, _mm_set1_epi8('@')), i);
            dot |= bits_of(_mm_cmpeq_epi8(x, _mm_set1_epi8('.')), i);
            cont |= bits_of(_mm_cmplt_epi8(x, _mm_set1_epi8((char)0xC0)), i);
            low |= bits_of(_mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(' ')), x), i);
        }
        at &= own;
        int space = 0; /* white space is at most ' ': look closer at the rare such byte */
        for (uint64_t w = low & own; w && !space; w &= w - 1)
            space = is_space(p[__builtin_ctzll(w)]);
        int64_t first = at ? __builtin_ctzll(at) : len; /* the first '@', or the end */
        uint64_t before = at ? (at & -at) - 1 : own;
        *local = first - popcount64(cont & before); /* code points before the '@' */
        /* one '@', not first nor last, not followed by '.', and a '.' in [first + 2,
         * len - 1) */
        *ok = at && !(at & (at - 1)) && !space && first > 0 && first + 1 < len &&
              p[first + 1] != '.' && first + 2 < 64 && ((dot & (own >> 1)) >> (first + 2)) != 0;
        return;
    }
#endif
    int64_t at = -1, cps = 0;
    int good = 1;
    (void)avail;
    for (int64_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        if (c == '@') {
            if (at >= 0) good = 0;
            at = i;
        } else if (is_space(c)) {
            good = 0;
        }
        if (at < 0 && (c & 0xC0) != 0x80) cps++; /* code points before the '@' */
    }
    if (good && at > 0 && at + 1 < len && p[at + 1] != '.') {
        int dot = 0;
        for (int64_t i = at + 2; i + 1 < len; i++) dot |= p[i] == '.';
        good = dot;
    } else {
        good = 0;
    }
    *ok = (unsigned char)good;
    *local = cps; /* all of it when there is no "@": such a value is refused anyway */
}

PyObject *bm_email_scan(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer offs, data, ok, local;
    if (!PyArg_ParseTuple(args, "y*y*w*w*", &offs, &data, &ok, &local)) return NULL;
    PyObject *ret = NULL;
    Py_ssize_t n;
    if (!offsets_ok(&offs, data.len, &n)) goto done;
    if (ok.len != n || local.len != n * 8) {
        PyErr_SetString(PyExc_ValueError, "ok must be one byte and local one int64 per value");
        goto done;
    }
    const int64_t *o = (const int64_t *)offs.buf;
    const unsigned char *p = (const unsigned char *)data.buf;
    unsigned char *g = (unsigned char *)ok.buf;
    int64_t *l = (int64_t *)local.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t v = 0; v < n; v++)
        email_one(p + o[v], o[v + 1] - o[v], (int64_t)data.len - o[v], &g[v], &l[v]);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&ok);
    PyBuffer_Release(&local);
    return ret;
}
