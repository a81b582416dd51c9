/*
 * edgec_sha512.h - SHA-512 (FIPS 180-4) for the edgec device runtime: incremental, no allocation.
 * Used by edgec_ed25519 (k = SHA-512(R || A || M)).
 *
 * API
 *   edgec_sha512_ctx ctx;
 *   edgec_sha512_init(&ctx);
 *   edgec_sha512_update(&ctx, data, len);   any number of calls, any chunk sizes (len 0 allowed,
 *                                           data may then be NULL)
 *   edgec_sha512_final(&ctx, digest);       64-byte digest; call init again before reusing ctx
 *
 * Messages up to 2^64 - 1 bytes. The context holds only public data and is not wiped. Contexts are
 * independent (no global state). Portable C99 (<stdint.h>, <stddef.h>, <string.h>); big-endian words
 * are assembled byte by byte, so any endianness and any buffer alignment work. Written for small code
 * rather than speed: Ed25519 hashes one or two blocks per signature.
 *
 * Resources (arm-none-eabi-gcc 12.2, -mcpu=cortex-m4 -mthumb -mfloat-abi=hard):
 *   code:    about 1.1 KB at -Os, 1.25 KB at -O2, plus the 704-byte constant table (shared with SHA-256)
 *   context: 200 bytes (sizeof(edgec_sha512_ctx))
 *   stack:   at most EDGEC_SHA512_STACK_BYTES for update or final, callees included (gcc
 *            -fcallgraph-info=su at -Os and -O2; memcpy/memset frames not counted)
 *
 * References
 *   NIST FIPS 180-4, Secure Hash Standard, sections 4.1.3, 4.2.3, 5.1.2, 5.3.5, 6.4.
 *   RFC 6234, US Secure Hash Algorithms (SHA and SHA-based HMAC and HKDF), test vectors in section 8.5.
 */
#ifndef EDGEC_SHA512_H
#define EDGEC_SHA512_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDGEC_SHA512_DIGEST_BYTES 64
#define EDGEC_SHA512_BLOCK_BYTES 128
#define EDGEC_SHA512_STACK_BYTES 384 /* checked by tests/test_ota_crypto.py */

typedef struct {
    uint64_t state[8]; /* H0..H7 */
    uint64_t count;    /* message bytes hashed so far; count % 128 of them wait in buf */
    uint8_t buf[EDGEC_SHA512_BLOCK_BYTES];
} edgec_sha512_ctx;

void edgec_sha512_init(edgec_sha512_ctx *ctx);
void edgec_sha512_update(edgec_sha512_ctx *ctx, const uint8_t *data, size_t len);
void edgec_sha512_final(edgec_sha512_ctx *ctx, uint8_t out[EDGEC_SHA512_DIGEST_BYTES]);

/* Internal, shared with edgec_sha256.c: SHA-512's 80 round constants K, then its 8 initial hash words.
 * SHA-256's 64 K and 8 initial words are the high 32 bits of the first 64 K and of the 8 initial words
 * (same primes; FIPS 180-4 4.2.2 and 5.3.3 keep 32 fractional bits, 4.2.3 and 5.3.5 keep 64). */
extern const uint64_t edgec_sha512_constants[88];

#ifdef __cplusplus
}
#endif

#endif /* EDGEC_SHA512_H */
