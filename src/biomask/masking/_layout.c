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

#include "_buffers.h"
#include "_layout.h"

/* ITU-T E.164 two-digit country calling codes; as in tokens.py's _CC2. */
static const int CC2[] = {20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46,
                          47, 48, 49, 51, 52, 53, 54, 55, 56, 57, 58, 60, 61, 62, 63,
                          64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98};

static int is_cc2(int64_t v) {
    for (size_t i = 0; i < sizeof(CC2) / sizeof(CC2[0]); i++)
        if (CC2[i] == v) return 1;
    return 0;
}

/* Kept leading digits and digit count of one value. The arithmetic on missing digits
 * (-1) is the numpy version's, on purpose: tokens must not change between versions. */
static void scan_one(const unsigned char *p, int64_t len, int64_t *keep, int64_t *ndig) {
    int64_t d[5] = {-1, -1, -1, -1, -1};
    int64_t count = 0;
    int lead = 0, seen = 0;
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
    int plus = lead == '+';
    int double0 = !plus && d[0] == 0 && d[1] == 0;
    int64_t skip = double0 ? 2 : 0;
    int64_t c0 = d[skip < 4 ? skip : 4], c1 = d[skip + 1 < 4 ? skip + 1 : 4];
    int64_t cc_len = (c0 == 1 || c0 == 7) ? 1 : (is_cc2(c0 * 10 + c1) ? 2 : 3);
    *keep = (plus || double0) ? skip + cc_len : (d[0] == 0 ? 1 : 0);
    *ndig = count;
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
    for (Py_ssize_t v = 0; v < n; v++) scan_one(p + o[v], o[v + 1] - o[v], &k[v], &c[v]);
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

PyObject *bm_phone_positions(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer offs, data, keep, at;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &offs, &data, &keep, &at)) return NULL;
    PyObject *ret = NULL;
    Py_ssize_t n;
    if (!offsets_ok(&offs, data.len, &n)) goto done;
    if (keep.len != n * 8 || at.len % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "keep must be int64, one per value; at int64");
        goto done;
    }
    const int64_t *o = (const int64_t *)offs.buf, *k = (const int64_t *)keep.buf;
    const unsigned char *p = (const unsigned char *)data.buf;
    int64_t *out = (int64_t *)at.buf;
    Py_ssize_t cap = at.len / 8, used = 0;
    int overflow = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t v = 0; v < n && !overflow; v++) {
        int64_t rank = 0;
        for (int64_t i = o[v]; i < o[v + 1]; i++) {
            if (p[i] < '0' || p[i] > '9') continue;
            if (rank++ < k[v]) continue;
            if (used == cap) {
                overflow = 1;
                break;
            }
            out[used++] = i;
        }
    }
    Py_END_ALLOW_THREADS
    if (overflow || used != cap) {
        PyErr_SetString(PyExc_ValueError, "at must hold exactly the changing digits");
        goto done;
    }
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&keep);
    PyBuffer_Release(&at);
    return ret;
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

static void email_one(const unsigned char *p, int64_t len, unsigned char *ok, int64_t *local) {
    int64_t at = -1, cps = 0;
    int good = 1;
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
    for (Py_ssize_t v = 0; v < n; v++) email_one(p + o[v], o[v + 1] - o[v], &g[v], &l[v]);
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
