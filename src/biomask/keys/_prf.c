/*
 * biomask.keys._prf: the keys package's deterministic PRF over whole Arrow buffers, in C.
 *
 * Why this exists: a batch of a hundred thousand distinct values needs a keyed seed per
 * value (AES-256 CBC-MAC) and, for longer outputs, a keystream per value (AES-256 in
 * counter mode). The block cipher runs in large batches across values (biomask/_aes.h),
 * and each value's bytes are read once from the Arrow buffers.
 *
 * These are raw primitives behind biomask.keys.primitives (DeterministicPrf's seeds and
 * streams), which keeps a numpy/cryptography fallback with byte-identical output.
 * Offsets and lengths are checked against their buffers before any byte is touched; the
 * GIL is released around the work; each call expands its own AES key (biomask/_aes.h).
 *
 *   cbc_mac(key, offsets, data, out)      seeds: out[16 i .. +16] = CBC-MAC of value i
 *   ctr_stream(key, seeds, lengths, out)  keystreams back to back, lengths[i] bytes each
 *   _ecb(key, data, out)                  AES-256-ECB itself, for the tests (_aes_impl too)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#include "_aes.h"
#include "_buffers.h"

static const unsigned char PRF_TAG[8] = {'b', 'm', '-', 'p', 'r', 'f', '-', '1'};

/* MASKS + 16 - k: k bytes 0xFF, then zeros (16 bytes read in all, for 0 <= k <= 16). */
static const unsigned char MASKS[2 * BLOCK] = {
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};

static void and16(unsigned char *dst, const unsigned char *mask) {
    uint64_t x[2], m[2];
    memcpy(x, dst, BLOCK);
    memcpy(m, mask, BLOCK);
    x[0] &= m[0];
    x[1] &= m[1];
    memcpy(dst, x, BLOCK);
}

/* ------------------------------------------------------------------------------------ */
/* CBC-MAC seeds                                                                         */
/* ------------------------------------------------------------------------------------ */

/*
 * Seed of value v (bytes d, length L): AES-256 CBC-MAC with a zero IV over
 *     [L as 8 big-endian bytes || "bm-prf-1"] || d zero-padded to a multiple of 16.
 * CBC-MAC is sequential within a value, so the batching is across values: GROUP slots
 * each hold one value in flight; every round builds the next block of every slot (the
 * length block for a fresh value, else its next data block XOR its chaining state),
 * encrypts all of them in one AES-ECB call, and refills the slots whose value is done.
 * Short and long values mix freely without leaving slots idle until the very end.
 */
static int mac_run(const Aes256 *aes, const int64_t *o, const unsigned char *data,
                   int64_t data_len, Py_ssize_t n, unsigned char *out) {
    unsigned char in[GROUP * BLOCK], state[GROUP * BLOCK];
    Py_ssize_t slot_v[GROUP];
    int64_t slot_pos[GROUP]; /* 0: the length block is next; k: data block k - 1 is next */
    int active = 0;
    Py_ssize_t next = 0;
    while (active < GROUP && next < n) {
        slot_v[active] = next++;
        slot_pos[active++] = 0;
    }
    while (active > 0) {
        for (int s = 0; s < active; s++) {
            Py_ssize_t v = slot_v[s];
            int64_t len = o[v + 1] - o[v];
            unsigned char *blk = in + (Py_ssize_t)s * BLOCK;
            if (slot_pos[s] == 0) {
                uint64_t u = (uint64_t)len;
                unsigned char be[8] = {(unsigned char)(u >> 56), (unsigned char)(u >> 48),
                                       (unsigned char)(u >> 40), (unsigned char)(u >> 32),
                                       (unsigned char)(u >> 24), (unsigned char)(u >> 16),
                                       (unsigned char)(u >> 8),  (unsigned char)u};
                memcpy(blk, be, 8);
                memcpy(blk + 8, PRF_TAG, 8);
                continue;
            }
            int64_t at = o[v] + BLOCK * (slot_pos[s] - 1);
            int64_t take = o[v + 1] - at < BLOCK ? o[v + 1] - at : BLOCK;
            unsigned char pad[BLOCK] = {0};
            if (data_len - at >= BLOCK) {
                /* 16 bytes are there to read (the rest belong to later values): load
                 * them and zero what is past this value, without a variable memcpy. */
                memcpy(pad, data + at, BLOCK);
                and16(pad, MASKS + BLOCK - take);
            } else {
                memcpy(pad, data + at, (size_t)take);
            }
            xor16(blk, pad, state + (Py_ssize_t)s * BLOCK);
        }
        if (!ecb(aes, state, in, active)) return 0;
        /* Backwards, so that the last slot moved into a finished one was already advanced. */
        for (int s = active - 1; s >= 0; s--) {
            Py_ssize_t v = slot_v[s];
            int64_t nb = (o[v + 1] - o[v] + BLOCK - 1) / BLOCK;
            if (++slot_pos[s] <= nb) continue;
            memcpy(out + v * BLOCK, state + (Py_ssize_t)s * BLOCK, BLOCK);
            if (next < n) {
                slot_v[s] = next++;
                slot_pos[s] = 0;
            } else if (s != --active) {
                slot_v[s] = slot_v[active];
                slot_pos[s] = slot_pos[active];
                memcpy(state + (Py_ssize_t)s * BLOCK, state + (Py_ssize_t)active * BLOCK, BLOCK);
            }
        }
    }
    return 1;
}

static PyObject *cbc_mac(PyObject *self, PyObject *args) {
    Py_buffer key, offs, data, out;
    Py_ssize_t n = 0;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &key, &offs, &data, &out)) return NULL;
    if (key_ok(&key) && offsets_ok(&offs, data.len, &n) &&
        out_size_ok(&out, n * BLOCK, "out")) {
        int ok = 0;
        Aes256 aes;
        if (aes_init(&aes, key.buf)) {
            Py_BEGIN_ALLOW_THREADS
            ok = mac_run(&aes, offs.buf, data.buf, data.len, n, out.buf);
            Py_END_ALLOW_THREADS
            aes_free(&aes);
        }
        if (ok) {
            result = Py_None;
            Py_INCREF(result);
        } else {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused an AES-256-ECB operation");
        }
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

/* ------------------------------------------------------------------------------------ */
/* Counter-mode keystreams                                                               */
/* ------------------------------------------------------------------------------------ */

/* Copy the kept part of each encrypted block to the output; a whole block is written
 * where the output has room, since the next block's bytes overwrite the excess. */
static unsigned char *emit(unsigned char *out, unsigned char *end, const unsigned char *enc,
                           const int *take, int nblocks) {
    for (int b = 0; b < nblocks; b++) {
        if (end - out >= BLOCK)
            memcpy(out, enc + b * BLOCK, BLOCK);
        else
            memcpy(out, enc + b * BLOCK, (size_t)take[b]);
        out += take[b];
    }
    return out;
}

/*
 * Keystream of value i: blocks AES(seed_i with its last 4 bytes XOR the big-endian block
 * counter 0, 1, 2, ...), of which the first lengths[i] bytes are kept; the streams of all
 * values are written back to back. Blocks are generated GROUP at a time across values and
 * encrypted in one AES-ECB call, then copied out in order (each block knows how much of it
 * is kept), so memory beyond the output is 8 KiB whatever the lengths.
 */
static int ctr_run(const Aes256 *aes, const unsigned char *seeds, const int64_t *lengths,
                   Py_ssize_t n, unsigned char *out, unsigned char *end) {
    unsigned char in[GROUP * BLOCK], enc[GROUP * BLOCK];
    int take[GROUP];
    int fill = 0;
    for (Py_ssize_t v = 0; v < n; v++) {
        uint64_t s0, s1;
        int64_t len = lengths[v];
        uint32_t c = 0;
        memcpy(&s0, seeds + v * BLOCK, 8);
        memcpy(&s1, seeds + v * BLOCK + 8, 8);
        for (int64_t at = 0; at < len; at += BLOCK, c++) {
            /* The counter, big-endian, in the last 4 of the seed's second 8 bytes. */
            unsigned char cb[8] = {0, 0, 0, 0, (unsigned char)(c >> 24), (unsigned char)(c >> 16),
                                   (unsigned char)(c >> 8), (unsigned char)c};
            uint64_t x;
            unsigned char *blk = in + fill * BLOCK;
            memcpy(&x, cb, 8);
            x ^= s1;
            memcpy(blk, &s0, 8);
            memcpy(blk + 8, &x, 8);
            take[fill++] = len - at < BLOCK ? (int)(len - at) : BLOCK;
            if (fill == GROUP) {
                if (!ecb(aes, enc, in, fill)) return 0;
                out = emit(out, end, enc, take, fill);
                fill = 0;
            }
        }
    }
    if (fill > 0) {
        if (!ecb(aes, enc, in, fill)) return 0;
        emit(out, end, enc, take, fill);
    }
    return 1;
}

static PyObject *ctr_stream(PyObject *self, PyObject *args) {
    Py_buffer key, seeds, lengths, out;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &key, &seeds, &lengths, &out)) return NULL;
    Py_ssize_t n = lengths.len / (Py_ssize_t)sizeof(int64_t);
    const int64_t *ln = lengths.buf;
    int ok = key_ok(&key) && aligned(&lengths, sizeof(int64_t), "lengths");
    if (ok && (lengths.len % (Py_ssize_t)sizeof(int64_t) != 0 || seeds.len != n * BLOCK)) {
        PyErr_SetString(PyExc_ValueError, "seeds: expected 16 bytes per int64 length");
        ok = 0;
    }
    /* The sum is bounded by the output's size as it goes, so it cannot overflow; a
     * counter past 2**32 blocks would repeat, so no single stream may be that long. */
    int64_t total = 0;
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        if (ln[i] < 0 || ln[i] > ((int64_t)1 << 36) || ln[i] > (int64_t)out.len - total) {
            PyErr_SetString(PyExc_ValueError,
                            "lengths: negative, over 2**36 bytes, or past the output");
            ok = 0;
        } else {
            total += ln[i];
        }
    }
    if (ok && out_size_ok(&out, (Py_ssize_t)total, "out")) {
        Aes256 aes;
        ok = 0;
        if (aes_init(&aes, key.buf)) {
            Py_BEGIN_ALLOW_THREADS
            ok = ctr_run(&aes, seeds.buf, ln, n, out.buf, (unsigned char *)out.buf + total);
            Py_END_ALLOW_THREADS
            aes_free(&aes);
        }
        if (ok) {
            result = Py_None;
            Py_INCREF(result);
        } else {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused an AES-256-ECB operation");
        }
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&seeds);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&out);
    return result;
}

/* ------------------------------------------------------------------------------------ */
/* AES-256-ECB itself: the tests pin both implementations of _aes.h to cryptography's    */
/* ------------------------------------------------------------------------------------ */

static PyObject *ecb_py(PyObject *self, PyObject *args) {
    Py_buffer key, data, out;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*", &key, &data, &out)) return NULL;
    if (key_ok(&key) && out_size_ok(&out, data.len, "out")) {
        Aes256 aes;
        int ok = 0;
        if (data.len % BLOCK != 0) {
            PyErr_SetString(PyExc_ValueError, "data: expected whole 16-byte blocks");
        } else {
            if (aes_init(&aes, key.buf)) {
                ok = 1;
                for (Py_ssize_t at = 0; ok && at < data.len; at += GROUP * BLOCK) {
                    Py_ssize_t left = (data.len - at) / BLOCK;
                    ok = ecb(&aes, (unsigned char *)out.buf + at,
                             (const unsigned char *)data.buf + at,
                             (int)(left < GROUP ? left : GROUP));
                }
                aes_free(&aes);
            }
            if (ok) {
                result = Py_None;
                Py_INCREF(result);
            } else {
                PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused an AES-256-ECB operation");
            }
        }
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"cbc_mac", cbc_mac, METH_VARARGS,
     "cbc_mac(key, offsets, data, out) -> None: 16-byte AES-256 CBC-MAC seed per value"},
    {"ctr_stream", ctr_stream, METH_VARARGS,
     "ctr_stream(key, seeds, lengths, out) -> None: counter-mode keystreams back to back"},
    {"_ecb", ecb_py, METH_VARARGS, "_ecb(key, data, out) -> None: AES-256-ECB (tests)"},
    AES_IMPL_METHOD,
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_prf",
                                    "Batched PRF seeds and keystreams (OpenSSL's AES).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__prf(void) {
    aes_select();
    return PyModule_Create(&module);
}
