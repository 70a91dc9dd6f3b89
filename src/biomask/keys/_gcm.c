/*
 * biomask.keys._gcm: AES-256-GCM over many rows of one buffer in one call.
 *
 * Why this exists: a template column is ~100k independent AES-GCM messages of ~2 KiB.
 * Each one through a Python call costs about as much as the cipher itself, and the
 * cipher call holds the GIL. Here a whole batch is one call: the rows are split over a few
 * threads that run without the GIL, each with its own OpenSSL EVP context.
 *
 * This is a raw primitive behind biomask.keys.aead (which has a pure-Python fallback with
 * identical output); it does no key management and chooses no nonces. Every offset it is
 * given is bounds-checked before any byte is touched, because ciphertext positions come
 * from data files.
 *
 * Per row i (all int64 arrays have one entry per row; mid_off has n + 1):
 *   key   = keys[32 * key_idx[i] .. +32]
 *   nonce = nonce_buf[nonce_at[i] .. +12]
 *   aad   = prefix || mid[mid_off[i] .. mid_off[i+1]] || tails[tail_off[k] .. tail_off[k+1]]
 *   seal: dst[dst_at[i] .. +len[i]] = ct, dst[dst_at[i] + len[i] .. +16] = tag
 *   open: dst[dst_at[i] .. +len[i]] = pt of src[src_at[i] .. +len[i]] with the tag after it
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define KEY 32
#define NONCE 12
#define TAG 16
#define MAX_THREADS 16

typedef struct {
    int seal;
    Py_ssize_t lo, hi;
    const unsigned char *keys;
    Py_ssize_t nkeys;
    const int64_t *key_idx; /* NULL: every row uses key 0 */
    const unsigned char *nonce_buf;
    const int64_t *nonce_at;
    const unsigned char *src;
    const int64_t *src_at;
    const int64_t *len;
    const unsigned char *prefix;
    Py_ssize_t prefix_len;
    const unsigned char *mid;
    const int64_t *mid_off;
    const unsigned char *tails;
    const int64_t *tail_off;
    unsigned char *dst;
    const int64_t *dst_at;
    int failed; /* open: a tag did not verify; either: OpenSSL refused */
} job_t;

static int aad(EVP_CIPHER_CTX *ctx, int seal, const unsigned char *p, int64_t n) {
    int outl;
    if (n <= 0) return 1;
    return seal ? EVP_EncryptUpdate(ctx, NULL, &outl, p, (int)n)
                : EVP_DecryptUpdate(ctx, NULL, &outl, p, (int)n);
}

static void *run(void *arg) {
    job_t *j = (job_t *)arg;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int64_t cur = -1;
    int outl, fin;
    if (ctx == NULL) {
        j->failed = 2;
        return NULL;
    }
    if (!(j->seal ? EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL)
                  : EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL)) ||
        !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE, NULL)) {
        j->failed = 2;
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    for (Py_ssize_t i = j->lo; i < j->hi; i++) {
        int64_t k = j->key_idx ? j->key_idx[i] : 0;
        const unsigned char *key = k != cur ? j->keys + KEY * k : NULL;
        const unsigned char *iv = j->nonce_buf + j->nonce_at[i];
        int64_t k0 = j->tail_off[k], k1 = j->tail_off[k + 1];
        int64_t n = j->len[i];
        unsigned char *out = j->dst + j->dst_at[i];
        const unsigned char *in = j->src + j->src_at[i];
        cur = k;
        if (j->seal) {
            if (!EVP_EncryptInit_ex(ctx, NULL, NULL, key, iv) ||
                !aad(ctx, 1, j->prefix, j->prefix_len) ||
                !aad(ctx, 1, j->mid + j->mid_off[i], j->mid_off[i + 1] - j->mid_off[i]) ||
                !aad(ctx, 1, j->tails + k0, k1 - k0) ||
                (n > 0 && !EVP_EncryptUpdate(ctx, out, &outl, in, (int)n)) ||
                !EVP_EncryptFinal_ex(ctx, out + n, &fin) ||
                !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG, out + n)) {
                j->failed = 2;
                break;
            }
        } else {
            if (!EVP_DecryptInit_ex(ctx, NULL, NULL, key, iv) ||
                !aad(ctx, 0, j->prefix, j->prefix_len) ||
                !aad(ctx, 0, j->mid + j->mid_off[i], j->mid_off[i + 1] - j->mid_off[i]) ||
                !aad(ctx, 0, j->tails + k0, k1 - k0) ||
                (n > 0 && !EVP_DecryptUpdate(ctx, out, &outl, in, (int)n)) ||
                !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG, (void *)(in + n)) ||
                EVP_DecryptFinal_ex(ctx, out + n, &fin) <= 0) {
                j->failed = 1;
                break;
            }
        }
    }
    EVP_CIPHER_CTX_free(ctx);
    return NULL;
}

/* An int64 array argument with exactly `want` entries. */
static int int64s(Py_buffer *b, Py_ssize_t want, const char *name) {
    if (b->len != want * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd int64 values", name, want);
        return 0;
    }
    return 1;
}

static int span_ok(int64_t at, int64_t n, Py_ssize_t size) {
    return at >= 0 && n >= 0 && n <= INT32_MAX && at <= (int64_t)size && n <= (int64_t)size - at;
}

static PyObject *batch(PyObject *args, int seal) {
    Py_buffer keys, key_idx, nonce_buf, nonce_at, src, src_at, len, prefix, mid, mid_off;
    Py_buffer tails, tail_off, dst, dst_at;
    int threads;
    PyObject *result = NULL;
    memset(&key_idx, 0, sizeof key_idx);
    if (!PyArg_ParseTuple(args, "y*z*y*y*y*y*y*y*y*y*y*y*w*y*i", &keys, &key_idx, &nonce_buf,
                          &nonce_at, &src, &src_at, &len, &prefix, &mid, &mid_off, &tails,
                          &tail_off, &dst, &dst_at, &threads))
        return NULL;
    Py_ssize_t n = len.len / (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t nkeys = keys.len / KEY;
    int ok = keys.len > 0 && keys.len % KEY == 0 && len.len % (Py_ssize_t)sizeof(int64_t) == 0;
    if (!ok) PyErr_SetString(PyExc_ValueError, "keys: a positive multiple of 32 bytes");
    ok = ok && int64s(&nonce_at, n, "nonce_at") && int64s(&src_at, n, "src_at") &&
         int64s(&mid_off, n + 1, "mid_off") && int64s(&dst_at, n, "dst_at") &&
         int64s(&tail_off, nkeys + 1, "tail_off") &&
         (key_idx.buf == NULL || int64s(&key_idx, n, "key_idx"));
    if (ok && prefix.len > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "prefix too long");
        ok = 0;
    }
    const int64_t *ki = key_idx.buf, *na = nonce_at.buf, *sa = src_at.buf, *ln = len.buf;
    const int64_t *mo = mid_off.buf, *da = dst_at.buf, *to = tail_off.buf;
    for (Py_ssize_t k = 0; ok && k < nkeys; k++)
        if (!span_ok(to[k], to[k + 1] - to[k], tails.len)) ok = 0;
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        int64_t k = ki ? ki[i] : 0;
        if (k < 0 || k >= nkeys || !span_ok(na[i], NONCE, nonce_buf.len) ||
            !span_ok(mo[i], mo[i + 1] - mo[i], mid.len) ||
            !span_ok(sa[i], ln[i] + (seal ? 0 : TAG), src.len) ||
            !span_ok(da[i], ln[i] + (seal ? TAG : 0), dst.len))
            ok = 0;
    }
    if (ok && PyErr_Occurred() == NULL) {
        job_t jobs[MAX_THREADS];
        pthread_t tids[MAX_THREADS];
        int started[MAX_THREADS] = {0};
        int t = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
        if (t > n) t = n > 0 ? (int)n : 1;
        for (int x = 0; x < t; x++) {
            job_t *j = &jobs[x];
            j->seal = seal;
            j->lo = n * x / t;
            j->hi = n * (x + 1) / t;
            j->keys = keys.buf;
            j->nkeys = nkeys;
            j->key_idx = ki;
            j->nonce_buf = nonce_buf.buf;
            j->nonce_at = na;
            j->src = src.buf;
            j->src_at = sa;
            j->len = ln;
            j->prefix = prefix.buf;
            j->prefix_len = prefix.len;
            j->mid = mid.buf;
            j->mid_off = mo;
            j->tails = tails.buf;
            j->tail_off = to;
            j->dst = dst.buf;
            j->dst_at = da;
            j->failed = 0;
        }
        int failed = 0;
        Py_BEGIN_ALLOW_THREADS
        for (int x = 1; x < t; x++)
            started[x] = pthread_create(&tids[x], NULL, run, &jobs[x]) == 0;
        run(&jobs[0]);
        for (int x = 1; x < t; x++) {
            if (started[x])
                pthread_join(tids[x], NULL);
            else
                run(&jobs[x]); /* no thread to be had: do its share here */
        }
        Py_END_ALLOW_THREADS
        for (int x = 0; x < t; x++)
            if (jobs[x].failed > failed) failed = jobs[x].failed;
        if (failed == 2)
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused an AES-GCM operation");
        else
            result = PyBool_FromLong(!failed);
    } else if (PyErr_Occurred() == NULL) {
        PyErr_SetString(PyExc_ValueError, "a row's position is outside its buffer");
    }
    PyBuffer_Release(&keys);
    if (key_idx.buf != NULL) PyBuffer_Release(&key_idx);
    PyBuffer_Release(&nonce_buf);
    PyBuffer_Release(&nonce_at);
    PyBuffer_Release(&src);
    PyBuffer_Release(&src_at);
    PyBuffer_Release(&len);
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&mid);
    PyBuffer_Release(&mid_off);
    PyBuffer_Release(&tails);
    PyBuffer_Release(&tail_off);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&dst_at);
    return result;
}

static PyObject *seal_rows(PyObject *self, PyObject *args) {
    (void)self;
    return batch(args, 1);
}

static PyObject *open_rows(PyObject *self, PyObject *args) {
    (void)self;
    return batch(args, 0);
}

static PyMethodDef methods[] = {
    {"seal_rows", seal_rows, METH_VARARGS,
     "seal_rows(keys, key_idx, nonce_buf, nonce_at, src, src_at, len, prefix, mid, mid_off, "
     "tails, tail_off, dst, dst_at, threads) -> True"},
    {"open_rows", open_rows, METH_VARARGS,
     "open_rows(keys, key_idx, nonce_buf, nonce_at, src, src_at, len, prefix, mid, mid_off, "
     "tails, tail_off, dst, dst_at, threads) -> bool (False: some row did not verify)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gcm",
                                    "Batched AES-256-GCM over rows of one buffer (OpenSSL).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__gcm(void) {
    return PyModule_Create(&module);
}
