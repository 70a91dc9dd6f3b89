/* biomask.lineage._evidence: kernels of biomask.lineage.evidence's residual-PII scan.
 *
 * ev_hash: a keyed 64-bit digest of every value of an Arrow string column, as is.
 * ev_scan: in one pass per value, what the collector's Arrow/NumPy path computes for the
 *   values whose normal form is cheap to get exactly: ASCII values holding no whitespace
 *   other than single spaces between words, whose normal form is their ASCII lower case.
 *   For those it writes the digest of the normal form (when at least MIN_TOKEN bytes
 *   long) and, on request, the digests of its candidates (words, tokens, 2-3 token
 *   n-grams). Every other value is only classified, for the caller's Arrow path, except,
 *   without candidates, the values whose only non-ASCII characters are U+00C0-U+00FF
 *   (accented Latin letters: C3 80-BF) and that need no splitting: for those it writes
 *   the digest of Arrow's utf8_lower of the value (lower8_latin1) when it is at least
 *   MIN_TOKEN characters long, as the Arrow path does.
 *
 * The digest is _distinct.h's (the same as evidence.py's NumPy _digest, bit for bit) under
 * a random per-run key (k0, k1). It is not a cryptographic MAC: the digests never leave
 * the process and are dropped at the end of the run, and a collision can only add a false
 * hit, never hide a real one.
 *
 * ev_distinct: the first occurrence of every distinct value (Arrow's `unique`, exact).
 * ev_bits / ev_filter: the one-bit-per-slot filters of the final set comparison.
 *
 * The classification is evidence.py's _needs_split, value by value (the NumPy version
 * reads the bytes after a lead byte across a value's end; on valid UTF-8, which Arrow
 * strings are, they are the value's own). Every offset is checked against the data
 * buffer before any byte is read; every write is checked against the output's size.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_buffers.h"
#include "_distinct.h"

#define MIN_TOKEN 3

enum { FAST = 0, OTHER = 1, SPLIT = 2 }; /* ev_scan's status per value */

/* Valid offsets (see _buffers.h), and the longest value's length when longest is not NULL
 * (a second pass over the offsets: only ev_scan's candidates need it). */
static int check_offsets(Py_buffer *offs, Py_buffer *data, Py_ssize_t *n, int64_t *longest) {
    if (!offsets_ok(offs, data->len, n)) return 0;
    if (longest == NULL) return 1;
    const int64_t *o = (const int64_t *)offs->buf;
    int64_t most = 0;
    for (Py_ssize_t v = 0; v < *n; v++) {
        int64_t len = o[v + 1] - o[v];
        most = len > most ? len : most;
    }
    *longest = most;
    return 1;
}

static int read_key(Py_buffer *key, uint64_t *k0, uint64_t *k1) {
    if (key->len != 16) {
        PyErr_SetString(PyExc_ValueError, "key must be 16 bytes");
        return 0;
    }
    *k0 = load8((const unsigned char *)key->buf);
    *k1 = load8((const unsigned char *)key->buf + 8);
    return 1;
}

static PyObject *bm_ev_hash(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer offs, data, key, out;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &offs, &data, &key, &out)) return NULL;
    PyObject *ret = NULL;
    Py_ssize_t n;
    uint64_t k0, k1;
    if (!check_offsets(&offs, &data, &n, NULL) || !read_key(&key, &k0, &k1)) goto done;
    if (out.len != n * 8) {
        PyErr_SetString(PyExc_ValueError, "out must be uint64, one per value");
        goto done;
    }
    const int64_t *o = (const int64_t *)offs.buf;
    const unsigned char *p = (const unsigned char *)data.buf;
    uint64_t *d = (uint64_t *)out.buf;
    Py_BEGIN_ALLOW_THREADS
    const unsigned char *end = p + data.len;
    for (Py_ssize_t v = 0; v < n; v++) d[v] = digest(p + o[v], o[v + 1] - o[v], end, k0, k1, 0);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    PyBuffer_Release(&out);
    return ret;
}

/* evidence.py's _needs_split for the bytes of one word of a value (p[i..e)): SPLIT for a
 * control byte, two bytes <= 0x20 in a row, one at either end of the value, or a Unicode
 * whitespace character that Arrow splits on; OTHER for any other non-ASCII byte. */
static int classify_bytes(const unsigned char *p, int64_t i, int64_t e, int64_t len, int *space) {
    int other = 0;
    for (; i < e; i++) {
        unsigned char c = p[i];
        if (c < 0x20) return SPLIT;
        if (c == 0x20) {
            if (i == 0 || i == len - 1 || p[i - 1] <= 0x20) return SPLIT;
            *space = 1;
        } else if (c >= 0x80) {
            other = 1;
            unsigned char b1 = i + 1 < len ? p[i + 1] : 0, b2 = i + 2 < len ? p[i + 2] : 0;
            if ((c == 0xC2 && (b1 == 0x85 || b1 == 0xA0)) ||
                (c == 0xE1 && b1 == 0x9A && b2 == 0x80) ||
                (c == 0xE3 && b1 == 0x80 && b2 == 0x80) ||
                (c == 0xE2 && b1 == 0x81 && b2 == 0x9F) ||
                (c == 0xE2 && b1 == 0x80 &&
                 ((b2 >= 0x80 && b2 <= 0x8A) || b2 == 0xA8 || b2 == 0xA9 || b2 == 0xAF)))
                return SPLIT;
        }
    }
    return other ? OTHER : FAST;
}

/* The high bit of each byte of w under real (the high bits of the value's bytes) that is
 * below 0x20 or from 0x80: the bytes that classify_bytes looks at. */
static inline uint64_t odd_bytes(uint64_t w, uint64_t real) {
    return (((w - 0x20 * ONES) & ~w) | w) & real;
}

/* The high bit of each space (0x20) of w under real (exact on any bytes). */
static inline uint64_t space_bytes(uint64_t w, uint64_t real) {
    uint64_t t = w ^ (0x20 * ONES); /* exactly the 0x20 bytes are 0 */
    return ~(((t & 0x7F7F7F7F7F7F7F7FULL) + 0x7F7F7F7F7F7F7F7FULL) | t) & real;
}

#define LOW7 0x7F7F7F7F7F7F7F7FULL

/* The high bit of each byte of w equal to c (exact: no carry crosses a byte). */
static inline uint64_t bytes_equal(uint64_t w, unsigned char c) {
    uint64_t t = w ^ (c * ONES);
    return ~(((t & LOW7) + LOW7) | t) & HIGH;
}

/* Arrow's utf8_lower of a word of a value whose only non-ASCII bytes are C3 80-BF pairs
 * (U+00C0-U+00FF), byte by byte: A-Z to a-z (lower8's), and a continuation byte 80-9E but
 * 97 plus 0x20: U+00C0-U+00DE to U+00E0-U+00FE, but U+00D7 (multiplication sign); U+00DF-
 * U+00FF are their own lower case, C3 stays (the tests check all 64 against pyarrow). The
 * same bytes' count; on a word with no byte from 0x80, the same as lower8. */
static inline uint64_t lower8_latin1(uint64_t w) {
    uint64_t x = w & LOW7, high = w & HIGH; /* (x + c: no carry out of a byte) */
    uint64_t upper = (x + 0x3F * ONES) & ~(x + 0x25 * ONES) & HIGH & ~high; /* 41-5A */
    uint64_t cont = high & ~(w << 1);                                         /* 80-BF */
    uint64_t accent = cont & ~(x + 0x61 * ONES) & ~bytes_equal(x, 0x17);     /* 80-9E, not 97 */
    return w | ((upper | accent) >> 2);
}

static inline int popcount64(uint64_t x) {
#if defined(__GNUC__)
    return __builtin_popcountll(x);
#else
    int c = 0;
    for (; x; x &= x - 1) c++;
    return c;
#endif
}

/* Classifies one value (its status, and whether it holds a space) and folds its lower-cased
 * words into *h (the digest's state: only meaningful while the value is FAST, or OTHER with
 * *latin1 >= 0). A word is looked at byte by byte only when it holds a control or non-ASCII
 * byte; spaces are checked on the whole word (none at either end of the value, none next to
 * another). *latin1: for an OTHER value, the number of its C3 80-BF pairs when they are all
 * of its non-ASCII bytes (then *h is the state of its utf8_lower), else -1. */
static int scan_value(const unsigned char *p, int64_t len, const unsigned char *end, int *space,
                      uint64_t *h, int64_t *latin1) {
    if (len <= 16 && p + 16 <= end) {
        /* most values: what the loop below does, without a branch on their bytes or length
         * (both words read and masked as in digest()), unless a byte is odd */
        uint64_t m0 = len >= 8 ? ~0ULL : (1ULL << ((8 * len) & 63)) - 1;
        uint64_t m1 = len >= 16 ? ~0ULL : len <= 8 ? 0 : (1ULL << ((8 * (len - 8)) & 63)) - 1;
        uint64_t w0 = load8(p) & m0, w1 = load8(p + 8) & m1;
        uint64_t r0 = HIGH & m0, r1 = HIGH & m1;
        if (!(odd_bytes(w0, r0) | odd_bytes(w1, r1))) {
            uint64_t z0 = space_bytes(w0, r0), z1 = space_bytes(w1, r1);
            uint64_t last = 0x80ULL << ((8 * (len - 1)) & 63); /* in z0 or z1 */
            uint64_t bad = (z0 & (z0 << 8)) | (z1 & (z1 << 8)) | ((z0 >> 56) & z1) | (z0 & 0x80) |
                           ((len <= 8 ? z0 : z1) & last);
            if (bad) return SPLIT;
            *space |= (z0 | z1) != 0;
            uint64_t h1 = mix(*h, lower8(w0));
            uint64_t h2 = mix(h1, lower8(w1));
            *h = len > 8 ? h2 : len > 0 ? h1 : *h;
            return FAST;
        }
    }
    int status = FAST;
    /* spaces seen; bad: a space next to another or at either end (no branch per word) */
    uint64_t state = *h, spaces = 0, bad = 0, before = 0x80; /* no space may come first */
    /* not_latin1: a non-ASCII byte outside a C3 80-BF pair; lead: a C3 ended the last word */
    uint64_t not_latin1 = 0, lead = 0;
    int64_t pairs = 0;
    for (int64_t i = 0; i < len; i += 8) {
        int64_t left = len - i;
        uint64_t w = load_le(p + i, left, end);
        uint64_t real = left >= 8 ? HIGH : HIGH & ((1ULL << (8 * left)) - 1);
        if (odd_bytes(w, real)) { /* a byte < 0x20 or >= 0x80 */
            uint64_t x = w & LOW7, high = w & HIGH; /* (w is zero past the value's end) */
            /* a control byte, or a lead byte of Unicode whitespace (C2, E1-E3: only its
             * bytes decide, which classify_bytes reads past the word): byte by byte */
            uint64_t ctrl = ~(x + 0x60 * ONES) & ~high & real;
            uint64_t ws = bytes_equal(w, 0xC2) | bytes_equal(w, 0xE1) | bytes_equal(w, 0xE2) |
                          bytes_equal(w, 0xE3);
            if (ctrl | ws) {
                int got = classify_bytes(p, i, left >= 8 ? i + 8 : len, len, space);
                if (got == SPLIT) return SPLIT;
                if (got == OTHER) status = OTHER;
                before = left > 8 && p[i + 7] == 0x20 ? 0x80 : 0;
            } else { /* non-ASCII, not whitespace: its spaces as in an ASCII word */
                status = OTHER;
                uint64_t z = space_bytes(w, real);
                uint64_t last = left <= 8 ? 0x80ULL << ((8 * (left - 1)) & 63) : 0;
                bad |= (z & (z << 8)) | (z & before) | (z & last);
                spaces |= z;
                before = (z >> 56) & 0x80;
            }
            uint64_t c3 = bytes_equal(w, 0xC3), cont = high & ~(w << 1);
            not_latin1 |= (high & ~(c3 | cont)) | (cont ^ ((c3 << 8) | lead));
            lead = c3 >> 56;
            pairs += popcount64(c3);
            state = mix(state, lower8_latin1(w));
        } else {
            uint64_t z = space_bytes(w, real);
            uint64_t last = left <= 8 ? 0x80ULL << ((8 * (left - 1)) & 63) : 0;
            bad |= (z & (z << 8)) | (z & before) | (z & last);
            spaces |= z;
            before = (z >> 56) & 0x80;
            not_latin1 |= lead; /* (a C3 with no continuation byte) */
            lead = 0;
            state = mix(state, lower8(w));
        }
    }
    if (bad) return SPLIT;
    *space |= spaces != 0;
    *h = state;
    *latin1 = not_latin1 | lead ? -1 : pairs;
    return status;
}

/* Whether any byte of p[0..len) is <= 0x20 or >= 0x80. */
static int any_special(const unsigned char *p, int64_t len) {
    uint64_t acc = 0;
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w = load8(p + i);
        acc |= ((w - 0x21 * ONES) & ~w) | w;
    }
    for (; i < len; i++) acc |= p[i] <= 0x20 || p[i] >= 0x80 ? HIGH : 0;
    return (acc & HIGH) != 0;
}

static unsigned char STRIP[256], ALNUM[256];

static void init_tables(void) {
    static int done = 0;
    if (done) return;
    for (const char *c = "\"'`.,;:!?()[]{}<>"; *c; c++) STRIP[(unsigned char)*c] = 1;
    for (int c = '0'; c <= '9'; c++) ALNUM[c] = 1;
    for (int c = 'a'; c <= 'z'; c++) ALNUM[c] = 1;
    done = 1;
}

#define is_strip(c) STRIP[(unsigned char)(c)]
#define is_alnum(c) ALNUM[(unsigned char)(c)]

typedef struct {
    uint64_t k0, k1;
    uint64_t *cand;
    Py_ssize_t cap, used;
    unsigned char *gram; /* room for a value's length + 8 bytes */
} cands;

static int emit(cands *c, const unsigned char *p, int64_t len) {
    /* (p lies in the lower-cased copy or the n-gram buffer: 8 spare bytes after both) */
    const unsigned char *end = p + len + 8;
    if (len < MIN_TOKEN) return 1;
    if (c->used == c->cap) return 0;
    c->cand[c->used++] = digest(p, len, end, c->k0, c->k1, 0);
    return 1;
}

/* The candidates of one lower-cased FAST value besides itself: evidence.py's _words,
 * then its tokens and n-grams (spaced) or its punctuation-trimmed self (not spaced). */
static int candidates(cands *c, const unsigned char *p, int64_t len, int spaced) {
    int64_t i = 0;
    while (i < len) {
        if (!is_alnum(p[i])) {
            i++;
            continue;
        }
        int64_t s = i;
        while (i < len && is_alnum(p[i])) i++;
        if (!emit(c, p + s, i - s)) return 0;
    }
    if (!spaced) {
        if (len > 0 && (is_strip(p[0]) || is_strip(p[len - 1]))) {
            int64_t s = 0, e = len;
            while (s < e && is_strip(p[s])) s++;
            while (e > s && is_strip(p[e - 1])) e--;
            if (!emit(c, p + s, e - s)) return 0;
        }
        return 1;
    }
    /* tokens: split on ' ', each trimmed; (start, length) of the last three */
    int64_t ts[3] = {0, 0, 0}, tl[3] = {0, 0, 0};
    int64_t count = 0, start = 0;
    for (int64_t j = 0; j <= len; j++) {
        if (j < len && p[j] != ' ') continue;
        int64_t s = start, e = j;
        start = j + 1;
        while (s < e && is_strip(p[s])) s++;
        while (e > s && is_strip(p[e - 1])) e--;
        ts[0] = ts[1], tl[0] = tl[1];
        ts[1] = ts[2], tl[1] = tl[2];
        ts[2] = s, tl[2] = e - s;
        count++;
        if (!emit(c, p + s, e - s)) return 0;
        for (int k = 1; k <= 2 && k < count; k++) { /* the 2-gram, then the 3-gram */
            int64_t at = 0;
            for (int t = 2 - k; t <= 2; t++) {
                if (t > 2 - k) c->gram[at++] = ' ';
                memcpy(c->gram + at, p + ts[t], (size_t)tl[t]);
                at += tl[t];
            }
            if (!emit(c, c->gram, at)) return 0;
        }
    }
    return 1;
}

static PyObject *bm_ev_scan(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer offs, data, key, status, whole, cand;
    int want;
    if (!PyArg_ParseTuple(args, "y*y*y*pw*w*w*", &offs, &data, &key, &want, &status, &whole,
                          &cand))
        return NULL;
    PyObject *ret = NULL;
    Py_ssize_t n;
    int64_t longest = 0;
    cands c = {0, 0, NULL, 0, 0, NULL};
    unsigned char *lower = NULL;
    if (!check_offsets(&offs, &data, &n, want ? &longest : NULL) ||
        !read_key(&key, &c.k0, &c.k1))
        goto done;
    if (status.len != n || whole.len != n * 8 || cand.len % 8 != 0) {
        PyErr_SetString(PyExc_ValueError,
                        "status must be one byte and whole one uint64 per value; cand uint64");
        goto done;
    }
    init_tables();
    if (want) { /* the candidates' buffers */
        lower = calloc((size_t)longest + 8, 1);
        c.gram = calloc((size_t)longest + 8, 1);
        if (lower == NULL || c.gram == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    c.cand = (uint64_t *)cand.buf;
    c.cap = cand.len / 8;
    const int64_t *o = (const int64_t *)offs.buf;
    const unsigned char *p = (const unsigned char *)data.buf, *end = p + data.len;
    unsigned char *st = (unsigned char *)status.buf;
    uint64_t *wh = (uint64_t *)whole.buf;
    Py_ssize_t n_whole = 0, n_slow = 0;
    int spaced = 0, ok = 1;
    Py_BEGIN_ALLOW_THREADS
    int64_t span = n ? o[n] - o[0] : 0;
    /* all of the values' bytes at once: most columns have no space, control or non-ASCII
     * byte in them, and then every value is FAST */
    int special = n && any_special(p + o[0], span);
    for (Py_ssize_t v = 0; v < n; v++) {
        int space = 0; /* (set by scan_value and classify_bytes) */
        int64_t len = o[v + 1] - o[v];
        if (!special) {
            st[v] = FAST;
            if (len >= MIN_TOKEN) wh[n_whole++] = digest(p + o[v], len, end, c.k0, c.k1, 1);
            continue;
        }
        uint64_t h = c.k0 ^ ((uint64_t)len * P0);
        int64_t pairs = -1;
        st[v] = (unsigned char)scan_value(p + o[v], len, end, &space, &h, &pairs);
        if (st[v] != SPLIT) spaced |= space;
        /* without candidates, an OTHER value of U+00C0-U+00FF letters is hashed here as
         * well (FAST: among the others, in row order), MIN_TOKEN in characters (_long) */
        if (st[v] == OTHER && !want && pairs >= 0) st[v] = FAST;
        else pairs = 0;
        if (st[v] == FAST && len - pairs >= MIN_TOKEN) wh[n_whole++] = fin(h, c.k1);
        n_slow += st[v] != FAST;
    }
    /* candidates: only now is it known whether the plain values hold a space */
    for (Py_ssize_t v = 0; v < n && ok && want; v++) {
        if (st[v] != FAST) continue;
        int64_t len = o[v + 1] - o[v];
        const unsigned char *q = p + o[v];
        for (int64_t i = 0; i < len; i += 8) {
            uint64_t w = lower8(load_le(q + i, len - i, end));
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
            w = __builtin_bswap64(w);
#endif
            memcpy(lower + i, &w, 8);
        }
        ok = candidates(&c, lower, len, spaced);
    }
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "cand: too small for the candidates");
        goto done;
    }
    ret = Py_BuildValue("nnin", n_whole, c.used, spaced, n_slow);
done:
    free(lower);
    free(c.gram);
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    PyBuffer_Release(&status);
    PyBuffer_Release(&whole);
    PyBuffer_Release(&cand);
    return ret;
}

/* The set comparison at the end of the scan: a table of one bit per slot, indexed by the
 * bits of each digest from `shift` up (the digests are uniform). ev_bits sets the keys'
 * bits; ev_filter keeps the probes whose bit is set (the members, and the few others that
 * share a slot with one), in order. */
static int check_table(Py_buffer *table, Py_ssize_t shift, uint64_t *mask) {
    uint64_t slots = (uint64_t)table->len * 8;
    if (table->len < 8 || (slots & (slots - 1)) != 0 || shift < 0 || shift > 63) {
        PyErr_SetString(PyExc_ValueError, "table: a power of two bytes, at least 8; shift: 0-63");
        return 0;
    }
    *mask = slots - 1;
    return 1;
}

static PyObject *bm_ev_bits(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer keys, table;
    Py_ssize_t shift;
    if (!PyArg_ParseTuple(args, "y*nw*", &keys, &shift, &table)) return NULL;
    PyObject *ret = NULL;
    uint64_t mask;
    if (!check_table(&table, shift, &mask)) goto done;
    if (keys.len % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "keys must be uint64");
        goto done;
    }
    const uint64_t *k = (const uint64_t *)keys.buf;
    unsigned char *t = (unsigned char *)table.buf;
    Py_ssize_t n = keys.len / 8;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t s = (k[i] >> shift) & mask;
        t[s >> 3] |= (unsigned char)(1u << (s & 7));
    }
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&keys);
    PyBuffer_Release(&table);
    return ret;
}

static PyObject *bm_ev_filter(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer table, probes, out;
    Py_ssize_t shift;
    if (!PyArg_ParseTuple(args, "y*ny*w*", &table, &shift, &probes, &out)) return NULL;
    PyObject *ret = NULL;
    uint64_t mask;
    if (!check_table(&table, shift, &mask)) goto done;
    if (probes.len % 8 != 0 || out.len < probes.len) {
        PyErr_SetString(PyExc_ValueError, "probes must be uint64, out room for every probe");
        goto done;
    }
    if (!aligned(&probes, 8, "probes") || !aligned(&out, 8, "out")) goto done;
    const uint64_t *k = (const uint64_t *)probes.buf;
    const unsigned char *t = (const unsigned char *)table.buf;
    uint64_t *o = (uint64_t *)out.buf;
    Py_ssize_t n = probes.len / 8, kept = 0;
    Py_BEGIN_ALLOW_THREADS
    /* every probe is written, and only the set ones advance: no branch per probe */
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t s = (k[i] >> shift) & mask;
        o[kept] = k[i];
        kept += (t[s >> 3] >> (s & 7)) & 1;
    }
    Py_END_ALLOW_THREADS
    ret = PyLong_FromSsize_t(kept);
done:
    PyBuffer_Release(&table);
    PyBuffer_Release(&probes);
    PyBuffer_Release(&out);
    return ret;
}

/* ev_distinct: the index of the first occurrence of every distinct value, in order (what
 * Arrow's hash `unique` keeps), for the columns whose values repeat (_distinct.h's table);
 * values shorter than min_len bytes (optional, default 0) are left out (the scan finds
 * nothing in a value shorter than MIN_TOKEN bytes: it has fewer characters, and so has
 * each candidate). */
static PyObject *bm_ev_distinct(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer offs, data, key, first;
    Py_ssize_t min_len = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*w*|n", &offs, &data, &key, &first, &min_len)) return NULL;
    PyObject *ret = NULL;
    Py_ssize_t n, count = 0;
    uint64_t k0, k1;
    if (!check_offsets(&offs, &data, &n, NULL) || !read_key(&key, &k0, &k1)) goto done;
    if (first.len != n * 8) {
        PyErr_SetString(PyExc_ValueError, "first must be int64, one per value");
        goto done;
    }
    const int64_t *o = (const int64_t *)offs.buf;
    const unsigned char *p = (const unsigned char *)data.buf, *end = p + data.len;
    Py_BEGIN_ALLOW_THREADS
    count = distinct_run(o, p, end, n, NULL, min_len, k0, k1, (int64_t *)first.buf, NULL);
    Py_END_ALLOW_THREADS
    if (count < 0)
        PyErr_NoMemory();
    else
        ret = PyLong_FromSsize_t(count);
done:
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    PyBuffer_Release(&first);
    return ret;
}

static PyMethodDef methods[] = {
    {"ev_hash", bm_ev_hash, METH_VARARGS,
     "ev_hash(offsets, data, key, out) -> None: keyed 64-bit digest per value"},
    {"ev_scan", bm_ev_scan, METH_VARARGS,
     "ev_scan(offsets, data, key, candidates, status, whole, cand) -> (n_whole, n_cand, "
     "spaced, n_slow): residual-PII scan digests of the plain ASCII values (and, without "
     "candidates, of the plain ones whose only non-ASCII characters are U+00C0-U+00FF)"},
    {"ev_bits", bm_ev_bits, METH_VARARGS,
     "ev_bits(keys, shift, table) -> None: sets the keys' bits in a one-bit-per-slot table"},
    {"ev_filter", bm_ev_filter, METH_VARARGS,
     "ev_filter(table, shift, probes, out) -> int: the probes whose bit is set, into out; "
     "how many"},
    {"ev_distinct", bm_ev_distinct, METH_VARARGS,
     "ev_distinct(offsets, data, key, first[, min_len]) -> int: first occurrence of each "
     "distinct value of at least min_len bytes"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_evidence",
                                    "Residual-PII scan digests and set filters of lineage.",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__evidence(void) {
    return PyModule_Create(&module);
}
