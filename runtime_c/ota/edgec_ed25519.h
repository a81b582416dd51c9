/*
 * edgec_ed25519.h - Ed25519 signature verification (RFC 8032) for the edgec device runtime.
 *
 * API
 *   int edgec_ed25519_verify(const uint8_t sig[64], const uint8_t pub[32],
 *                            const uint8_t *msg, size_t len);
 *   Returns 1 if sig = R || S is a valid Ed25519 signature of msg[0..len) under the public key pub,
 *   0 otherwise. msg may be NULL when len is 0. No signing, no key generation.
 *
 * Semantics: RFC 8032 5.1.7 with the cofactorless equation [S]B = R + [k]A,
 * k = SHA-512(R || A || msg) mod L, checked like OpenSSL (and so python `cryptography`) does:
 * [S]B - [k]A is encoded and compared with R byte for byte. Rejected:
 *   - S >= L (non-canonical S, e.g. S + L);
 *   - a public key that does not decode (RFC 8032 5.1.3): y >= p (non-canonical), no x on the curve
 *     for y, or x = 0 with the sign bit set. (OpenSSL 3 accepts the first and the last; this is stricter.)
 *   - an R that does not decode, in the same way: a point has exactly one (canonical) encoding, so
 *     no such R can equal the encoding of [S]B - [k]A;
 *   - any signature for which the equation does not hold.
 * Small-order public keys and R are not rejected (RFC 8032 and OpenSSL do not either).
 *
 * Not constant time (all inputs are public). Portable C99 (<stdint.h>, <stddef.h>, <string.h>), no
 * allocation, no global state, reentrant. Needs edgec_sha512 (and so its constant table).
 *
 * Resources (arm-none-eabi-gcc 12.2, -mcpu=cortex-m4 -mthumb -mfloat-abi=hard):
 *   code:  about 2.9 KB at -Os, 3.7 KB at -O2 (.text + .rodata), plus edgec_sha512
 *   stack: at most EDGEC_ED25519_STACK_BYTES, callees (SHA-512) included (gcc -fcallgraph-info=su at
 *          -Os and -O2; memcpy/memset/memcmp frames not counted); 1.3 KB of it are the two
 *          precomputed tables of the double-scalar multiplication
 *   time:  about 2.56 million instructions at -Os, 2.55 million at -O2 for a 32-byte message (QEMU
 *          mps2-an386 instruction count; cycles on a real core are somewhat higher)
 *
 * References
 *   RFC 8032, Edwards-Curve Digital Signature Algorithm (EdDSA), sections 5.1 and 7.1.
 *   Hisil, Wong, Carter, Dawson, "Twisted Edwards Curves Revisited", ASIACRYPT 2008
 *     (extended coordinates; formulas dbl-2008-hwcd and add-2008-hwcd-3).
 *   Bernstein, Duif, Lange, Schwabe, Yang, "High-speed high-security signatures", CHES 2011
 *     (radix 2^25.5, the square-root and inversion exponents).
 *   Hankerson, Menezes, Vanstone, "Guide to Elliptic Curve Cryptography", Springer 2004
 *     (width-w NAF, Algorithm 3.35; interleaved multiplication, Algorithm 3.51).
 */
#ifndef EDGEC_ED25519_H
#define EDGEC_ED25519_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDGEC_ED25519_SIGNATURE_BYTES 64
#define EDGEC_ED25519_PUBLIC_KEY_BYTES 32
#define EDGEC_ED25519_STACK_BYTES 2560 /* checked by tests/test_ota_crypto.py */

int edgec_ed25519_verify(const uint8_t sig[EDGEC_ED25519_SIGNATURE_BYTES],
                         const uint8_t pub[EDGEC_ED25519_PUBLIC_KEY_BYTES], const uint8_t *msg, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* EDGEC_ED25519_H */
