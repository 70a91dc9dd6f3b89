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
 * With VAES, mac_vaes below does the same with the states in registers (OpenSSL's EVP
 * path is this one).
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

#ifdef BM_VAES
/*
 * The same seeds with VAES, the chaining states in registers: 32 values in flight, four
 * per zmm (eight zmm: one VAES instruction's latency is several cycles, eight independent
 * chains keep the unit busy). Every round XORs the next 16 bytes of each value into its
 * state (a masked load of what is left of it, up to 16 bytes: no byte past the value is
 * read, so none past the buffer) and runs the 14 rounds on all eight registers; the lanes
 * whose value is done are then written out and refilled with the next value, whatever
 * their neighbours do (one loop over a 32-bit mask of the finished lanes).
 *
 * The first block of a value depends on its length only (IV zero): its encryption, the
 * state after the length block, is computed once per length under 256 in a call (on
 * first use) and taken from that table, so a value of L > 0 bytes costs ceil(L / 16)
 * rounds and an empty one none. The table and the round keys are wiped before returning.
 * Once no value is left to take, the passes narrow (see mac_vaes): long last values
 * would otherwise cost eight registers' rounds per block.
 * Needs AVX-512VL too (16-byte masked loads), which every CPU with VAES has; checked.
 */
#define MAC_H 8
#define MAC_LANES (4 * MAC_H)
_Static_assert(MAC_LANES <= 32, "lanes are bits of a uint32_t");
#define MAC_TLIM 256
#define MAC_TAIL 4
#define BM_VAES_VL_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,vaes,aes")))

static inline int mac_vaes_supported(void) {
    return __builtin_cpu_supports("avx512vl");
}

/* The state after the length block of a value of len bytes: one block, 128-bit AES-NI. */
BM_VAES_VL_TARGET static inline __m128i mac_first(const __m512i *k, int64_t len) {
    uint64_t tag;
    memcpy(&tag, PRF_TAG, 8);
    __m128i b = _mm_set_epi64x((long long)tag, (long long)__builtin_bswap64((uint64_t)len));
    b = _mm_xor_si128(b, _mm512_castsi512_si128(k[0]));
    for (int r = 1; r < 14; r++) b = _mm_aesenc_si128(b, _mm512_castsi512_si128(k[r]));
    return _mm_aesenclast_si128(b, _mm512_castsi512_si128(k[14]));
}

typedef struct {
    __m512i st[MAC_H];                       /* the chaining states, lane j at 16 j */
    int64_t pa[MAC_LANES] __attribute__((aligned(64))); /* next block of lane j */
    int64_t ea[MAC_LANES] __attribute__((aligned(64))); /* end of lane j's value */
    Py_ssize_t v[MAC_LANES];                 /* the value in lane j */
    __m128i t[MAC_TLIM];                     /* state after the length block, per length */
    unsigned char have[MAC_TLIM];
} MacLanes;

BM_VAES_VL_TARGET static inline __m128i mac_len_state(MacLanes *L, const __m512i *k,
                                                      int64_t len) {
    if (len >= MAC_TLIM) return mac_first(k, len);
    if (!L->have[len]) {
        L->t[len] = mac_first(k, len);
        L->have[len] = 1;
    }
    return L->t[len];
}

/* Lane j takes the next value that has a block (empty ones are done at once); 0 when
 * there is none left, the lane then idle (no bytes to load). */
BM_VAES_VL_TARGET static inline int mac_fill(MacLanes *L, const __m512i *k, int j,
                                             const int64_t *o, Py_ssize_t *next, Py_ssize_t n,
                                             unsigned char *out) {
    while (*next < n) {
        Py_ssize_t v = (*next)++;
        __m128i s = mac_len_state(L, k, o[v + 1] - o[v]);
        if (o[v + 1] == o[v]) {
            _mm_storeu_si128((__m128i *)(out + v * BLOCK), s);
            continue;
        }
        _mm_storeu_si128((__m128i *)((unsigned char *)L->st + j * BLOCK), s);
        L->pa[j] = o[v];
        L->ea[j] = o[v + 1];
        L->v[j] = v;
        return 1;
    }
    L->pa[j] = L->ea[j] = 0;
    return 0;
}

/* Rounds on the lanes of the first H registers while a value is left to take or more
 * than `stop` are in flight (H is a constant at each call: always inlined, so the blocks
 * are registers). */
__attribute__((always_inline)) BM_VAES_VL_TARGET static inline void
mac_pass(MacLanes *L, const __m512i *k, const int64_t *o, const unsigned char *data,
         Py_ssize_t n, unsigned char *out, Py_ssize_t *next, uint32_t *active, const int H,
         int stop) {
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi64(1);
    const __m512i sixteen = _mm512_set1_epi64(BLOCK);
    uint16_t m16[MAC_LANES] __attribute__((aligned(64)));
    while (*active && (*next < n || __builtin_popcount(*active) > stop)) {
        /* per lane: the bytes of its next block (mask), whether it is the last one */
        uint32_t last = 0;
        for (int i = 0; i < (4 * H + 7) / 8; i++) {
            __m512i p = _mm512_load_si512(L->pa + 8 * i);
            __m512i d = _mm512_sub_epi64(_mm512_load_si512(L->ea + 8 * i), p);
            last |= (uint32_t)_mm512_cmple_epi64_mask(d, sixteen) << (8 * i);
            d = _mm512_min_epi64(_mm512_max_epi64(d, zero), sixteen);
            d = _mm512_sub_epi64(_mm512_sllv_epi64(one, d), one);
            _mm_store_si128((__m128i *)(m16 + 8 * i), _mm512_cvtepi64_epi16(d));
        }
        __m512i b[MAC_H];
        for (int h = 0; h < H; h++) {
            __m512i x = _mm512_setzero_si512();
#define MAC_LOAD(q)                                                                          \
    x = _mm512_inserti32x4(                                                                  \
        x, _mm_maskz_loadu_epi8((__mmask16)m16[4 * h + (q)], data + L->pa[4 * h + (q)]), (q))
            MAC_LOAD(0);
            MAC_LOAD(1);
            MAC_LOAD(2);
            MAC_LOAD(3);
#undef MAC_LOAD
            b[h] = _mm512_ternarylogic_epi64(L->st[h], x, k[0], 0x96);
        }
        for (int r = 1; r < 14; r++)
            for (int h = 0; h < H; h++) b[h] = _mm512_aesenc_epi128(b[h], k[r]);
        for (int h = 0; h < H; h++) L->st[h] = _mm512_aesenclast_epi128(b[h], k[14]);
        for (int i = 0; i < (4 * H + 7) / 8; i++)
            _mm512_store_si512(L->pa + 8 * i,
                               _mm512_add_epi64(_mm512_load_si512(L->pa + 8 * i), sixteen));
        uint32_t done = last & *active;
        while (done) {
            int j = __builtin_ctz(done);
            done &= done - 1;
            memcpy(out + L->v[j] * BLOCK, (unsigned char *)L->st + j * BLOCK, BLOCK);
            if (!mac_fill(L, k, j, o, next, n, out)) *active &= ~(1u << j);
        }
    }
}

/* The lanes in flight moved to the first ones, in order; the others idle. */
static void mac_compact(MacLanes *L, uint32_t *active) {
    int c = 0;
    for (uint32_t a = *active; a; a &= a - 1, c++) {
        int j = __builtin_ctz(a);
        if (j == c) continue;
        memcpy((unsigned char *)L->st + c * BLOCK, (unsigned char *)L->st + j * BLOCK, BLOCK);
        L->pa[c] = L->pa[j];
        L->ea[c] = L->ea[j];
        L->v[c] = L->v[j];
    }
    for (int j = c; j < MAC_LANES; j++) L->pa[j] = L->ea[j] = 0;
    *active = c == 32 ? ~0u : (1u << c) - 1;
}

BM_VAES_VL_TARGET static void mac_vaes(const __m128i *rk, const int64_t *o,
                                       const unsigned char *data, Py_ssize_t n,
                                       unsigned char *out) {
    __m512i k[15];
    MacLanes L;
    aes_broadcast_keys(k, rk);
    memset(L.have, 0, sizeof L.have);
    memset(L.st, 0, sizeof L.st);
    Py_ssize_t next = 0;
    uint32_t active = 0;
    for (int j = 0; j < MAC_LANES; j++)
        if (mac_fill(&L, k, j, o, &next, n, out)) active |= 1u << j;
    /* Once no value is left to take: eight registers while more than eight values are in
     * flight, then two, then the last four or fewer one by one. */
    mac_pass(&L, k, o, data, n, out, &next, &active, MAC_H, 8);
    mac_compact(&L, &active);
    mac_pass(&L, k, o, data, n, out, &next, &active, 2, MAC_TAIL);
    while (active) {
        int j = __builtin_ctz(active);
        active &= active - 1;
        __m128i x = _mm_loadu_si128((const __m128i *)((unsigned char *)L.st + j * BLOCK));
        for (int64_t p = L.pa[j]; p < L.ea[j]; p += BLOCK) {
            int64_t left = L.ea[j] - p;
            __mmask16 m = left >= BLOCK ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
            x = _mm_ternarylogic_epi64(x, _mm_maskz_loadu_epi8(m, data + p),
                                       _mm512_castsi512_si128(k[0]), 0x96);
            for (int r = 1; r < 14; r++) x = _mm_aesenc_si128(x, _mm512_castsi512_si128(k[r]));
            x = _mm_aesenclast_si128(x, _mm512_castsi512_si128(k[14]));
        }
        _mm_storeu_si128((__m128i *)(out + L.v[j] * BLOCK), x);
    }
    aes_wipe_keys(k);
    OPENSSL_cleanse(&L, sizeof L);
}
#endif

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
#ifdef BM_VAES
            if (aes.vaes && mac_vaes_supported()) {
                mac_vaes(aes.rk, offs.buf, data.buf, n, out.buf);
                ok = 1;
            } else
#endif
                ok = mac_run(&aes, offs.buf, data.buf, data.len, n, out.buf);
            Py_END_ALLOW_THREADS
            aes_free(&aes);
        }
        result = aes_result(ok);
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
        result = aes_result(ok);
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
            result = aes_result(ok);
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
