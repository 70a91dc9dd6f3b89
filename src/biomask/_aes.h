/* AES-256-ECB in groups of blocks: shared by the keys PRF (keys/_prf.c: CBC-MAC seeds,
 * counter-mode keystreams) and masking's FF1 walk (masking/_kernels.c). One call per group
 * of blocks, never one per 16-byte block: the cost of an EVP call is close to that of the
 * cipher on a single block.
 *
 * Two implementations, one output: OpenSSL's EVP (whose AES-NI code does one 128-bit
 * block per instruction), and, where the CPU has VAES and AVX-512, our own that does four
 * blocks per instruction. Which one runs is chosen once per module (aes_select, at import)
 * and can be changed by the module's private _aes_impl() for the tests that compare them;
 * BIOMASK_AES=evp at import forces EVP. Only the functions marked BM_VAES_TARGET use
 * AVX-512: the rest of the module is built for any x86-64, and never reaches them on a CPU
 * without the instructions. */
#ifndef BIOMASK_AES_H
#define BIOMASK_AES_H
#include <Python.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 16
#define KEY 32
/* Blocks per call: enough for the cipher to pipeline and to amortize the call, small
 * enough (4 KiB in, 4 KiB out) to stay in L1 with the state of the values in flight. */
#define GROUP 256

#if defined(__x86_64__) && (defined(__clang__) ? __clang_major__ >= 8 : __GNUC__ >= 9)
#include <immintrin.h>
#define BM_VAES 1
#define BM_VAES_TARGET __attribute__((target("avx512f,avx512bw,vaes,aes")))
#endif

/* The key of one call, expanded once. With VAES the 15 round keys live here (and nowhere
 * else: no EVP context is made); otherwise evp holds OpenSSL's context. Either way
 * aes_free wipes what it held. Never exposed to Python, so never printed or pickled. */
typedef struct {
    EVP_CIPHER_CTX *evp;
    int vaes;
#ifdef BM_VAES
    __m128i rk[15];
#endif
} Aes256;

/* The module's choice: 1 VAES, 0 EVP. A call reads it once, in aes_init. */
static inline int *aes_vaes_flag(void) {
    static int flag = 0;
    return &flag;
}

static inline int aes_vaes_supported(void) {
#ifdef BM_VAES
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("vaes");
#else
    return 0;
#endif
}

/* At module init: VAES where the CPU has it, unless BIOMASK_AES=evp. */
static inline void aes_select(void) {
    const char *env = getenv("BIOMASK_AES");
    *aes_vaes_flag() = aes_vaes_supported() && !(env != NULL && strcmp(env, "evp") == 0);
}

/* _aes_impl([name]): the implementation calls use now ("vaes" or "evp"), after switching
 * to `name` when given. For the tests that compare the two; not thread-safe against calls
 * that start meanwhile (they use one or the other, and both give the same bytes). */
static PyObject *aes_impl(PyObject *self, PyObject *args) {
    const char *name = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "|s", &name)) return NULL;
    if (name != NULL) {
        if (strcmp(name, "evp") == 0) {
            *aes_vaes_flag() = 0;
        } else if (strcmp(name, "vaes") == 0 && aes_vaes_supported()) {
            *aes_vaes_flag() = 1;
        } else {
            PyErr_Format(PyExc_ValueError, "_aes_impl: %s is not available here", name);
            return NULL;
        }
    }
    return PyUnicode_FromString(*aes_vaes_flag() ? "vaes" : "evp");
}

#define AES_IMPL_METHOD                                                                      \
    {"_aes_impl", aes_impl, METH_VARARGS,                                                    \
     "_aes_impl([name]) -> str: AES-256 implementation in use, 'vaes' or 'evp' (tests)"}

#ifdef BM_VAES
/* AES-256 key expansion (FIPS 197, 5.2) with AES-NI. A round key's words are
 * w[i] = w[i-8] ^ f(w[i-1]), then w[i+1] = w[i-7] ^ w[i], ...: the prefix XOR of the
 * round key two back, each word XORed with f(w[i-1]). w[i-1] is word 3 of the previous
 * round key, and aeskeygenassist gives SubWord of it (dword 2) and RotWord(SubWord) ^ rcon
 * (dword 3), the f of odd and even round keys. */
BM_VAES_TARGET static inline __m128i aes_expand_step(__m128i prev2, __m128i t) {
    prev2 = _mm_xor_si128(prev2, _mm_slli_si128(prev2, 4));
    prev2 = _mm_xor_si128(prev2, _mm_slli_si128(prev2, 8));
    return _mm_xor_si128(prev2, t);
}

/* rcon is an immediate operand of aeskeygenassist, hence a macro: round keys 2i and
 * 2i + 1 (the odd one from SubWord without rotation or rcon). */
#define AES_EXPAND_PAIR(rk, i, rcon)                                                         \
    do {                                                                                     \
        (rk)[2 * (i)] = aes_expand_step(                                                     \
            (rk)[2 * (i)-2],                                                                 \
            _mm_shuffle_epi32(_mm_aeskeygenassist_si128((rk)[2 * (i)-1], rcon), 0xff));      \
        if ((i) < 7)                                                                         \
            (rk)[2 * (i) + 1] = aes_expand_step(                                             \
                (rk)[2 * (i)-1],                                                             \
                _mm_shuffle_epi32(_mm_aeskeygenassist_si128((rk)[2 * (i)], 0), 0xaa));       \
    } while (0)

BM_VAES_TARGET static void aes_expand_key(__m128i *rk, const unsigned char *key) {
    rk[0] = _mm_loadu_si128((const __m128i *)key);
    rk[1] = _mm_loadu_si128((const __m128i *)(key + 16));
    AES_EXPAND_PAIR(rk, 1, 0x01);
    AES_EXPAND_PAIR(rk, 2, 0x02);
    AES_EXPAND_PAIR(rk, 3, 0x04);
    AES_EXPAND_PAIR(rk, 4, 0x08);
    AES_EXPAND_PAIR(rk, 5, 0x10);
    AES_EXPAND_PAIR(rk, 6, 0x20);
    AES_EXPAND_PAIR(rk, 7, 0x40);
}

/* Four 128-bit lanes, one block each: the whole cipher on one zmm register. */
#define AES_ZMM_ROUNDS(k, b)                                                                 \
    do {                                                                                     \
        for (int r_ = 1; r_ < 14; r_++) (b) = _mm512_aesenc_epi128((b), (k)[r_]);           \
        (b) = _mm512_aesenclast_epi128((b), (k)[14]);                                        \
    } while (0)

/* Zeroes the broadcast round keys of a call before it returns: the compiler spills some
 * of them to the stack, where they would outlive the call. A memset of a dead array may be
 * dropped; the empty asm that "reads" it keeps it (as OPENSSL_cleanse's volatile call
 * does, at a fraction of its cost on every group). */
static inline void aes_wipe_keys(__m512i *k) {
    memset(k, 0, 15 * sizeof *k);
    __asm__ __volatile__("" : : "r"(k) : "memory");
}

/* Every round key in all four lanes of a zmm register (15 of the 32). */
BM_VAES_TARGET static inline void aes_broadcast_keys(__m512i *k, const __m128i *rk) {
    for (int r = 0; r < 15; r++) k[r] = _mm512_broadcast_i32x4(rk[r]);
}

/* The cipher on blocks in groups of 16 (four registers in flight: one VAES instruction's
 * latency is several cycles, four independent ones keep the unit busy), then 4 at a time,
 * the last 1-3 blocks with masked loads and stores (no byte past in or out is touched). */
BM_VAES_TARGET static void vaes_ecb(const __m128i *rk, unsigned char *out,
                                    const unsigned char *in, int nblocks) {
    __m512i k[15];
    aes_broadcast_keys(k, rk);
    int i = 0;
    for (; i + 16 <= nblocks; i += 16) {
        const unsigned char *p = in + (Py_ssize_t)i * BLOCK;
        __m512i b0 = _mm512_xor_si512(_mm512_loadu_si512(p), k[0]);
        __m512i b1 = _mm512_xor_si512(_mm512_loadu_si512(p + 64), k[0]);
        __m512i b2 = _mm512_xor_si512(_mm512_loadu_si512(p + 128), k[0]);
        __m512i b3 = _mm512_xor_si512(_mm512_loadu_si512(p + 192), k[0]);
        for (int r = 1; r < 14; r++) {
            b0 = _mm512_aesenc_epi128(b0, k[r]);
            b1 = _mm512_aesenc_epi128(b1, k[r]);
            b2 = _mm512_aesenc_epi128(b2, k[r]);
            b3 = _mm512_aesenc_epi128(b3, k[r]);
        }
        unsigned char *q = out + (Py_ssize_t)i * BLOCK;
        _mm512_storeu_si512(q, _mm512_aesenclast_epi128(b0, k[14]));
        _mm512_storeu_si512(q + 64, _mm512_aesenclast_epi128(b1, k[14]));
        _mm512_storeu_si512(q + 128, _mm512_aesenclast_epi128(b2, k[14]));
        _mm512_storeu_si512(q + 192, _mm512_aesenclast_epi128(b3, k[14]));
    }
    for (; i < nblocks; i += 4) {
        int left = nblocks - i;
        __mmask8 m = left >= 4 ? (__mmask8)0xFF : (__mmask8)((1u << (2 * left)) - 1);
        __m512i b = _mm512_maskz_loadu_epi64(m, in + (Py_ssize_t)i * BLOCK);
        b = _mm512_xor_si512(b, k[0]);
        AES_ZMM_ROUNDS(k, b);
        _mm512_mask_storeu_epi64(out + (Py_ssize_t)i * BLOCK, m, b);
    }
    aes_wipe_keys(k);
}
#endif

/* The key of one call, on the implementation the module chose; 0 (with a Python error set
 * by the caller) when OpenSSL refuses. */
static inline int aes_init(Aes256 *a, const unsigned char *key) {
    a->evp = NULL;
    a->vaes = *aes_vaes_flag();
#ifdef BM_VAES
    if (a->vaes) {
        aes_expand_key(a->rk, key);
        return 1;
    }
#endif
    a->vaes = 0;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) return 0;
    if (!EVP_EncryptInit_ex(ctx, EVP_aes_256_ecb(), NULL, key, NULL) ||
        !EVP_CIPHER_CTX_set_padding(ctx, 0)) {
        EVP_CIPHER_CTX_free(ctx);
        return 0;
    }
    a->evp = ctx;
    return 1;
}

/* Wipes the round keys (OPENSSL_cleanse is a memset the compiler may not drop); EVP
 * wipes its own context when freeing it. */
static inline void aes_free(Aes256 *a) {
    if (a->evp != NULL) EVP_CIPHER_CTX_free(a->evp);
    a->evp = NULL;
#ifdef BM_VAES
    OPENSSL_cleanse(a->rk, sizeof a->rk);
#endif
}

static inline int ecb(const Aes256 *a, unsigned char *out, const unsigned char *in,
                      int nblocks) {
#ifdef BM_VAES
    if (a->vaes) {
        vaes_ecb(a->rk, out, in, nblocks);
        return 1;
    }
#endif
    int outl = 0;
    return EVP_EncryptUpdate(a->evp, out, &outl, in, nblocks * BLOCK) &&
           outl == nblocks * BLOCK;
}

/* What a call that ran the cipher returns: None, or the one error for a refusal. */
static inline PyObject *aes_result(int ok) {
    if (ok) Py_RETURN_NONE;
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused an AES-256-ECB operation");
    return NULL;
}

static inline int key_ok(Py_buffer *key) {
    if (key->len != KEY) {
        PyErr_SetString(PyExc_ValueError, "key: expected 32 bytes");
        return 0;
    }
    return 1;
}

static inline void xor16(unsigned char *dst, const unsigned char *a, const unsigned char *b) {
    uint64_t x[2], y[2];
    memcpy(x, a, BLOCK);
    memcpy(y, b, BLOCK);
    x[0] ^= y[0];
    x[1] ^= y[1];
    memcpy(dst, x, BLOCK);
}

#endif
