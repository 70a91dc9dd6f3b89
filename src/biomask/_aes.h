/* AES-256-ECB through OpenSSL's EVP, in groups of blocks: shared by the keys PRF
 * (keys/_prf.c: CBC-MAC seeds, counter-mode keystreams) and masking's FF1 walk
 * (masking/_kernels.c). One EVP call per group of blocks, never one per 16-byte block: the
 * cost of a call is close to that of the cipher on a single block. */
#ifndef BIOMASK_AES_H
#define BIOMASK_AES_H
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 16
#define KEY 32
/* Blocks per EVP call: enough for AES-NI to pipeline and to amortize the call, small
 * enough (4 KiB in, 4 KiB out) to stay in L1 with the state of the values in flight. */
#define GROUP 256

/* An AES-256-ECB encryptor without padding; NULL (with a Python error set by the caller)
 * when OpenSSL refuses. */
static inline EVP_CIPHER_CTX *ecb_encryptor(const unsigned char *key) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) return NULL;
    if (!EVP_EncryptInit_ex(ctx, EVP_aes_256_ecb(), NULL, key, NULL) ||
        !EVP_CIPHER_CTX_set_padding(ctx, 0)) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static inline int ecb(EVP_CIPHER_CTX *ctx, unsigned char *out, const unsigned char *in,
                      int nblocks) {
    int outl = 0;
    return EVP_EncryptUpdate(ctx, out, &outl, in, nblocks * BLOCK) && outl == nblocks * BLOCK;
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
