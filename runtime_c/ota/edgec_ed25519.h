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
 * k = SHA-512(R || A || msg) mod L, as OpenSSL (and so python `cryptography`) checks it. Rejected:
 *   - S >= L (non-canonical S, e.g. S + L);
 *   - a public key that does not decode (RFC 8032 5.1.3): y >= p (non-canonical), no x on the
 *     curve for y, or x = 0 with the sign bit set;
 *   - an R that does not decode, in the same way: [S]B - [k]A is encoded and compared with R
 *     byte for byte, and a point has exactly one (canonical) encoding;
 *   - any signature for which the equation does not hold.
 * Small-order public keys and R are not rejected (RFC 8032 does not ask for it).
 *
 * Not constant time (the inputs are public). Portable C99, no allocation, no global state;
 * reentrant. Uses edgec_sha512.
 *
 * Resources (arm-none-eabi-gcc 12.2, -mcpu=cortex-m4 -mthumb -mfloat-abi=hard, -fstack-usage):
 *   stack: STACK_ED25519 bytes at -Os, STACK_ED25519_O2 bytes at -O2 (deepest call chain,
 *          including SHA-512)
 *   time:  see docs / report
 *
 * References
 *   RFC 8032, Edwards-Curve Digital Signature Algorithm (EdDSA), sections 5.1 and 7.1.
 *   Hisil, Wong, Carter, Dawson, "Twisted Edwards Curves Revisited", ASIACRYPT 2008
 *     (extended coordinates; formulas dbl-2008-hwcd and add-2008-hwcd-3).
 *   Bernstein, Duif, Lange, Schwabe, Yang, "High-speed high-security signatures", 2011
 *     (the square-root and inversion exponents).
 *   Hankerson, Menezes, Vanstone, "Guide to Elliptic Curve Cryptography", 2004
 *     (width-w NAF, Algorithm 3.35; interleaving, Algorithm 3.51).
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

int edgec_ed25519_verify(const uint8_t sig[EDGEC_ED25519_SIGNATURE_BYTES],
                         const uint8_t pub[EDGEC_ED25519_PUBLIC_KEY_BYTES], const uint8_t *msg, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* EDGEC_ED25519_H */
