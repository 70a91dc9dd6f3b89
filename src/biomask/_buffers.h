/* Argument checks shared by biomask's compiled helpers (keys/_prf.c, masking/_kernels.c,
 * masking/_layout.c, lineage/_evidence.c; see biomask/_native.py for how they load).
 *
 * Offsets and lengths come from data files and callers, so every kernel validates them
 * here, once, before it touches a byte of the buffers they point into. */
#ifndef BIOMASK_BUFFERS_H
#define BIOMASK_BUFFERS_H
#include <Python.h>
#include <stdint.h>

/* Whether an array argument may be read as `size`-byte integers in place (numpy and
 * Arrow allocations always are; a misaligned view would be undefined behaviour in C). */
static inline int aligned(Py_buffer *b, size_t size, const char *name) {
    if ((uintptr_t)b->buf % size != 0) {
        PyErr_Format(PyExc_ValueError, "%s: not aligned to %zu bytes", name, size);
        return 0;
    }
    return 1;
}

/* `n + 1` int64 offsets into a buffer of `size` bytes: non-negative, non-decreasing, the
 * last one within the buffer. Sets n (the number of values) on success. */
static inline int offsets_ok(Py_buffer *offs, Py_ssize_t size, Py_ssize_t *n) {
    const int64_t *o = offs->buf;
    Py_ssize_t m = offs->len / (Py_ssize_t)sizeof(int64_t);
    if (offs->len % (Py_ssize_t)sizeof(int64_t) != 0 || m < 1) {
        PyErr_SetString(PyExc_ValueError, "offsets: expected n + 1 >= 1 int64 values");
        return 0;
    }
    if (!aligned(offs, sizeof(int64_t), "offsets")) return 0;
    int ok = o[0] >= 0;
    for (Py_ssize_t i = 0; ok && i < m - 1; i++) ok = o[i + 1] >= o[i];
    if (!ok || o[m - 1] > (int64_t)size) {
        PyErr_SetString(PyExc_ValueError, "offsets: a value lies outside the data buffer");
        return 0;
    }
    *n = m - 1;
    return 1;
}

/* An output (or fixed-size input) argument of exactly `want` bytes. */
static inline int out_size_ok(Py_buffer *out, Py_ssize_t want, const char *name) {
    if (out->len != want) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd bytes, got %zd", name, want, out->len);
        return 0;
    }
    return 1;
}

#endif
