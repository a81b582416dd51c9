/*
 * edgec_sha256.h - SHA-256 (FIPS 180-4) for the edgec device runtime: incremental, no allocation.
 *
 * API
 *   edgec_sha256_ctx ctx;
 *   edgec_sha256_init(&ctx);
 *   edgec_sha256_update(&ctx, data, len);   any number of calls, any chunk sizes (len 0 allowed,
 *                                           data may then be NULL)
 *   edgec_sha256_final(&ctx, digest);       32-byte digest; call init again before reusing ctx
 *
 * Messages up to 2^61 - 1 bytes. The context holds only public data and is not wiped. Contexts are
 * independent (no global state). Portable C99 (<stdint.h>, <stddef.h>, <string.h>); big-endian words
 * are assembled byte by byte, so any endianness and any buffer alignment work.
 *
 * Link with edgec_sha512.c: SHA-256's round constants and initial hash value are the high 32 bits of
 * SHA-512's, and the two share that table (edgec_sha512_constants, 704 bytes).
 *
 * Resources (arm-none-eabi-gcc 12.2, -mcpu=cortex-m4 -mthumb -mfloat-abi=hard):
 *   code:    about 680 bytes at -Os or -O2 (plus the shared constant table)
 *   context: 104 bytes (sizeof(edgec_sha256_ctx))
 *   stack:   at most EDGEC_SHA256_STACK_BYTES for update or final, callees included (gcc
 *            -fcallgraph-info=su at -Os and -O2; memcpy/memset frames not counted)
 *   time:    about 65 instructions per byte (QEMU mps2-an386 count, -O2 or -Os, 4 KB message)
 *
 * References
 *   NIST FIPS 180-4, Secure Hash Standard, sections 4.1.2, 4.2.2, 5.1.1, 5.3.3, 6.2.
 *   RFC 6234, US Secure Hash Algorithms (SHA and SHA-based HMAC and HKDF), test vectors in section 8.5.
 */
#ifndef EDGEC_SHA256_H
#define EDGEC_SHA256_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDGEC_SHA256_DIGEST_BYTES 32
#define EDGEC_SHA256_BLOCK_BYTES 64
#define EDGEC_SHA256_STACK_BYTES 256 /* checked by tests/test_ota_crypto.py */

typedef struct {
    uint32_t state[8]; /* H0..H7 */
    uint64_t count;    /* message bytes hashed so far; count % 64 of them wait in buf */
    uint8_t buf[EDGEC_SHA256_BLOCK_BYTES];
} edgec_sha256_ctx;

void edgec_sha256_init(edgec_sha256_ctx *ctx);
void edgec_sha256_update(edgec_sha256_ctx *ctx, const uint8_t *data, size_t len);
void edgec_sha256_final(edgec_sha256_ctx *ctx, uint8_t out[EDGEC_SHA256_DIGEST_BYTES]);

#ifdef __cplusplus
}
#endif

#endif /* EDGEC_SHA256_H */
