/*
 * edgec_sha256.c - SHA-256 (FIPS 180-4). See edgec_sha256.h.
 */
#include "edgec_sha256.h"

#include "edgec_sha512.h"

#include <string.h>

/* K (FIPS 180-4 4.2.2) and H(0) (5.3.3) are the high 32 bits of SHA-512's (see edgec_sha512.h). */
#define K(i) ((uint32_t)(edgec_sha512_constants[i] >> 32))

static uint32_t rotr(uint32_t x, unsigned n)
{
    return (x >> n) | (x << (32u - n));
}

static uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void store_be32(uint8_t *p, uint32_t x)
{
    p[0] = (uint8_t)(x >> 24);
    p[1] = (uint8_t)(x >> 16);
    p[2] = (uint8_t)(x >> 8);
    p[3] = (uint8_t)x;
}

/* FIPS 180-4 6.2.2, with the message schedule kept in a rolling 16-word window. */
static void compress(uint32_t state[8], const uint8_t block[64])
{
    uint32_t w[16];
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    unsigned i;

    for (i = 0; i < 64; i++) {
        uint32_t t1, t2;
        if (i < 16) {
            w[i] = load_be32(block + 4 * i);
        } else {
            uint32_t w15 = w[(i - 15) & 15], w2 = w[(i - 2) & 15];
            w[i & 15] += (rotr(w2, 17) ^ rotr(w2, 19) ^ (w2 >> 10)) + w[(i - 7) & 15] +
                         (rotr(w15, 7) ^ rotr(w15, 18) ^ (w15 >> 3));
        }
        t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K(i) + w[i & 15];
        t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
}

void edgec_sha256_init(edgec_sha256_ctx *ctx)
{
    unsigned i;
    for (i = 0; i < 8; i++) {
        ctx->state[i] = K(80 + i);
    }
    ctx->count = 0;
}

void edgec_sha256_update(edgec_sha256_ctx *ctx, const uint8_t *data, size_t len)
{
    size_t used = (size_t)(ctx->count & 63u);

    if (len == 0) {
        return; /* data may be NULL */
    }
    ctx->count += len;
    if (used != 0) {
        size_t take = 64 - used;
        if (take > len) {
            take = len;
        }
        memcpy(ctx->buf + used, data, take);
        data += take;
        len -= take;
        if (used + take < 64) {
            return;
        }
        compress(ctx->state, ctx->buf);
    }
    for (; len >= 64; data += 64, len -= 64) {
        compress(ctx->state, data);
    }
    if (len != 0) {
        memcpy(ctx->buf, data, len);
    }
}

void edgec_sha256_final(edgec_sha256_ctx *ctx, uint8_t out[EDGEC_SHA256_DIGEST_BYTES])
{
    static const uint8_t pad[2] = {0x80, 0};
    uint8_t len[8];
    uint64_t bits = ctx->count << 3;
    unsigned i;

    /* FIPS 180-4 5.1.1: a 1 bit, zeros up to 56 mod 64 bytes, the message length in bits (64-bit BE) */
    for (i = 0; i < 8; i++) {
        len[i] = (uint8_t)(bits >> (56 - 8 * i));
    }
    edgec_sha256_update(ctx, pad, 1);
    while ((ctx->count & 63u) != 56) {
        edgec_sha256_update(ctx, pad + 1, 1);
    }
    edgec_sha256_update(ctx, len, 8);
    for (i = 0; i < 8; i++) {
        store_be32(out + 4 * i, ctx->state[i]);
    }
}
