/*
 * edgec_sha512.c - SHA-512 (FIPS 180-4). See edgec_sha512.h.
 */
#include "edgec_sha512.h"

#include <string.h>

/* K (FIPS 180-4 4.2.3): first 64 bits of the fractional parts of the cube roots of the first 80 primes,
 * then H(0) (5.3.5): the same of the square roots of the first 8 primes. */
const uint64_t edgec_sha512_constants[88] = {
    0x428a2f98d728ae22ull, 0x7137449123ef65cdull, 0xb5c0fbcfec4d3b2full, 0xe9b5dba58189dbbcull,
    0x3956c25bf348b538ull, 0x59f111f1b605d019ull, 0x923f82a4af194f9bull, 0xab1c5ed5da6d8118ull,
    0xd807aa98a3030242ull, 0x12835b0145706fbeull, 0x243185be4ee4b28cull, 0x550c7dc3d5ffb4e2ull,
    0x72be5d74f27b896full, 0x80deb1fe3b1696b1ull, 0x9bdc06a725c71235ull, 0xc19bf174cf692694ull,
    0xe49b69c19ef14ad2ull, 0xefbe4786384f25e3ull, 0x0fc19dc68b8cd5b5ull, 0x240ca1cc77ac9c65ull,
    0x2de92c6f592b0275ull, 0x4a7484aa6ea6e483ull, 0x5cb0a9dcbd41fbd4ull, 0x76f988da831153b5ull,
    0x983e5152ee66dfabull, 0xa831c66d2db43210ull, 0xb00327c898fb213full, 0xbf597fc7beef0ee4ull,
    0xc6e00bf33da88fc2ull, 0xd5a79147930aa725ull, 0x06ca6351e003826full, 0x142929670a0e6e70ull,
    0x27b70a8546d22ffcull, 0x2e1b21385c26c926ull, 0x4d2c6dfc5ac42aedull, 0x53380d139d95b3dfull,
    0x650a73548baf63deull, 0x766a0abb3c77b2a8ull, 0x81c2c92e47edaee6ull, 0x92722c851482353bull,
    0xa2bfe8a14cf10364ull, 0xa81a664bbc423001ull, 0xc24b8b70d0f89791ull, 0xc76c51a30654be30ull,
    0xd192e819d6ef5218ull, 0xd69906245565a910ull, 0xf40e35855771202aull, 0x106aa07032bbd1b8ull,
    0x19a4c116b8d2d0c8ull, 0x1e376c085141ab53ull, 0x2748774cdf8eeb99ull, 0x34b0bcb5e19b48a8ull,
    0x391c0cb3c5c95a63ull, 0x4ed8aa4ae3418acbull, 0x5b9cca4f7763e373ull, 0x682e6ff3d6b2b8a3ull,
    0x748f82ee5defb2fcull, 0x78a5636f43172f60ull, 0x84c87814a1f0ab72ull, 0x8cc702081a6439ecull,
    0x90befffa23631e28ull, 0xa4506cebde82bde9ull, 0xbef9a3f7b2c67915ull, 0xc67178f2e372532bull,
    0xca273eceea26619cull, 0xd186b8c721c0c207ull, 0xeada7dd6cde0eb1eull, 0xf57d4f7fee6ed178ull,
    0x06f067aa72176fbaull, 0x0a637dc5a2c898a6ull, 0x113f9804bef90daeull, 0x1b710b35131c471bull,
    0x28db77f523047d84ull, 0x32caab7b40c72493ull, 0x3c9ebe0a15c9bebcull, 0x431d67c49c100d4cull,
    0x4cc5d4becb3e42b6ull, 0x597f299cfc657e2aull, 0x5fcb6fab3ad6faecull, 0x6c44198c4a475817ull,
    0x6a09e667f3bcc908ull, 0xbb67ae8584caa73bull, 0x3c6ef372fe94f82bull, 0xa54ff53a5f1d36f1ull,
    0x510e527fade682d1ull, 0x9b05688c2b3e6c1full, 0x1f83d9abfb41bd6bull, 0x5be0cd19137e2179ull
};

static uint64_t rotr(uint64_t x, unsigned n)
{
    return (x >> n) | (x << (64u - n));
}

/* Rotation amounts of FIPS 180-4 (4.10)-(4.13): Sigma0, Sigma1, sigma0, sigma1; for the last two the
 * third amount is a plain shift. */
static const uint8_t rot[4][3] = {{28, 34, 39}, {14, 18, 41}, {1, 8, 7}, {19, 61, 6}};

static uint64_t sigma(uint64_t x, unsigned which)
{
    const uint8_t *r = rot[which];
    return rotr(x, r[0]) ^ rotr(x, r[1]) ^ (which < 2 ? rotr(x, r[2]) : x >> r[2]);
}

static uint64_t load_be64(const uint8_t *p)
{
    uint64_t x = 0;
    unsigned i;
    for (i = 0; i < 8; i++) {
        x = (x << 8) | p[i];
    }
    return x;
}

static void store_be64(uint8_t *p, uint64_t x)
{
    unsigned i;
    for (i = 0; i < 8; i++) {
        p[i] = (uint8_t)(x >> (56 - 8 * i));
    }
}

/* FIPS 180-4 6.4.2. The message schedule is a rolling 16-word window, and instead of shifting the
 * working variables a..h down each round, round i finds variable n (a = 0 .. h = 7) at v[(n - i) & 7]
 * (small code; SHA-512 only hashes a block or two per signature check). */
static void compress(uint64_t state[8], const uint8_t block[128])
{
    uint64_t w[16], v[8];
    unsigned i;

    memcpy(v, state, sizeof v);
    for (i = 0; i < 80; i++) {
        uint64_t t1, t2, a, b, c, e;
        if (i < 16) {
            w[i] = load_be64(block + 8 * i);
        } else {
            w[i & 15] += sigma(w[(i - 2) & 15], 3) + w[(i - 7) & 15] + sigma(w[(i - 15) & 15], 2);
        }
        a = v[-i & 7];
        b = v[(1 - i) & 7];
        c = v[(2 - i) & 7];
        e = v[(4 - i) & 7];
        t1 = v[(7 - i) & 7] + sigma(e, 1) + ((e & v[(5 - i) & 7]) ^ (~e & v[(6 - i) & 7])) +
             edgec_sha512_constants[i] + w[i & 15];
        t2 = sigma(a, 0) + ((a & b) ^ (a & c) ^ (b & c));
        v[(3 - i) & 7] += t1;    /* d + t1: the next round's e */
        v[(7 - i) & 7] = t1 + t2; /* the next round's a */
    }
    for (i = 0; i < 8; i++) {
        state[i] += v[i];
    }
}

void edgec_sha512_init(edgec_sha512_ctx *ctx)
{
    memcpy(ctx->state, edgec_sha512_constants + 80, sizeof ctx->state);
    ctx->count = 0;
}

void edgec_sha512_update(edgec_sha512_ctx *ctx, const uint8_t *data, size_t len)
{
    size_t used = (size_t)(ctx->count & 127u);

    if (len == 0) {
        return; /* data may be NULL */
    }
    ctx->count += len;
    if (used != 0) {
        size_t take = 128 - used;
        if (take > len) {
            take = len;
        }
        memcpy(ctx->buf + used, data, take);
        data += take;
        len -= take;
        if (used + take < 128) {
            return;
        }
        compress(ctx->state, ctx->buf);
    }
    for (; len >= 128; data += 128, len -= 128) {
        compress(ctx->state, data);
    }
    if (len != 0) {
        memcpy(ctx->buf, data, len);
    }
}

void edgec_sha512_final(edgec_sha512_ctx *ctx, uint8_t out[EDGEC_SHA512_DIGEST_BYTES])
{
    static const uint8_t pad[2] = {0x80, 0};
    uint8_t len[16];
    unsigned i;

    /* FIPS 180-4 5.1.2: a 1 bit, zeros up to 112 mod 128 bytes, the length in bits (128-bit BE) */
    store_be64(len, ctx->count >> 61);
    store_be64(len + 8, ctx->count << 3);
    edgec_sha512_update(ctx, pad, 1);
    while ((ctx->count & 127u) != 112) {
        edgec_sha512_update(ctx, pad + 1, 1);
    }
    edgec_sha512_update(ctx, len, 16);
    for (i = 0; i < 8; i++) {
        store_be64(out + 8 * i, ctx->state[i]);
    }
}
