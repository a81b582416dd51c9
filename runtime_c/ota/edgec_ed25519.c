/*
 * edgec_ed25519.c - Ed25519 signature verification (RFC 8032 5.1.7). See edgec_ed25519.h.
 *
 * Field GF(p), p = 2^255 - 19: radix 2^25.5, ten unsigned 32-bit limbs f[i] of weight 2^ceil(25.5 i),
 * 26 bits for even i, 25 for odd i. Every field operation takes and returns limbs
 * f[i] < 2^(26 or 25) + 2^14 (add and sub end with a carry pass, mul carries between its columns); that
 * bound keeps each 64-bit column sum of a product below 2^60 (tests/test_ota_crypto.py checks it at the
 * extremes).
 * A product is 100 32x32->64-bit multiply-accumulates (UMLAL on Cortex-M4), no carries inside
 * a column; 2^255 = 19 (mod p) folds the wrapped half. Only fe_tobytes reduces fully.
 *
 * Curve: -x^2 + y^2 = 1 + d x^2 y^2, points in extended coordinates (X:Y:Z:T), x = X/Z, y = Y/Z,
 * xy = T/Z (Hisil, Wong, Carter, Dawson 2008: "dbl-2008-hwcd" and "add-2008-hwcd-3", complete for
 * this curve, so doubling and adding the neutral element or a point to itself need no special case).
 *
 * Verification computes [S]B - [k]A with one joint double-and-add over the width-4 NAFs of S and k
 * (Straus/Shamir): 253 doublings and about 2 x 51 additions of precomputed odd multiples
 * {1,3,5,7}B and {1,3,5,7}A. Everything is variable time: all inputs are public.
 */
#include "edgec_ed25519.h"

#include <string.h>

#include "edgec_sha512.h"

typedef uint32_t fe[10];

/* d = -121665/121666 mod p */
static const fe fe_d = {0x35978a3u, 0x0d37284u, 0x3156ebdu, 0x06a0a0eu, 0x001c029u,
                        0x179e898u, 0x3a03cbbu, 0x1ce7198u, 0x2e2b6ffu, 0x1480db3u};
/* sqrt(-1) = 2^((p-1)/4) mod p */
static const fe fe_sqrtm1 = {0x20ea0b0u, 0x186c9d2u, 0x08f189du, 0x035697fu, 0x0bd0c60u,
                             0x1fbd7a7u, 0x2804c9eu, 0x1e16569u, 0x004fc1du, 0x0ae0c92u};
/* Base point B (RFC 8032 5.1): y = 4/5, x positive (even). */
static const fe base_x = {0x325d51au, 0x18b5823u, 0x0f6592au, 0x104a92du, 0x1a4b31du,
                          0x1d6dc5cu, 0x27118feu, 0x07fd814u, 0x13cd6e5u, 0x085a4dbu};
static const fe base_y = {0x2666658u, 0x1999999u, 0x0ccccccu, 0x1333333u, 0x1999999u,
                          0x0666666u, 0x3333333u, 0x0ccccccu, 0x2666666u, 0x1999999u};
static const fe fe_one = {1u, 0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
/* Group order L = 2^252 + 27742317777372353535851937790883648493 */
static const uint32_t order[8] = {0x5cf5d3edu, 0x5812631au, 0xa2f79cd6u, 0x14def9deu,
                                  0u,          0u,          0u,          0x10000000u};

static uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void store_le32(uint8_t *p, uint32_t x)
{
    p[0] = (uint8_t)x;
    p[1] = (uint8_t)(x >> 8);
    p[2] = (uint8_t)(x >> 16);
    p[3] = (uint8_t)(x >> 24);
}

/* ---------------------------------------------------------------- field arithmetic mod p */

/* For code size (fe_column), and to keep the one-shot steps (decoding, hashing) out of the frame that holds
 * the scalar multiplication's tables. */
#if defined(__GNUC__)
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE
#endif

#define MASK26 0x3ffffffu
#define MASK25 0x1ffffffu

/* Carry pass: limbs below 2^29 in, limbs within the invariant bound out. */
static void fe_carry(fe h)
{
    uint32_t c = 0;
    unsigned i;
    for (i = 0; i < 10; i += 2) {
        h[i] += c;
        c = h[i] >> 26;
        h[i] &= MASK26;
        h[i + 1] += c;
        c = h[i + 1] >> 25;
        h[i + 1] &= MASK25;
    }
    h[0] += 19 * c; /* c < 2^4: h[0] < 2^26 + 2^9 */
}

static void fe_add(fe h, const fe f, const fe g)
{
    unsigned i;
    for (i = 0; i < 10; i++) {
        h[i] = f[i] + g[i];
    }
    fe_carry(h);
}

/* h = f - g + 2p; the limbs of 2p (2^27 - 38, 2^26 - 2, 2^27 - 2, ...) exceed any g[i]. */
static void fe_sub(fe h, const fe f, const fe g)
{
    unsigned i;
    for (i = 0; i < 10; i++) {
        h[i] = f[i] + (i == 0 ? 0x7ffffdau : (i & 1) ? 0x3fffffeu : 0x7fffffeu) - g[i];
    }
    fe_carry(h);
}

/* Column sum_i f[i] g[-i] of the product: 10 multiply-accumulates, unrolled, out of line (one copy of
 * the straight-line code for both column kinds). */
NOINLINE static uint64_t fe_column(const uint32_t *f, const uint32_t *g)
{
    uint64_t s = 0;
    unsigned i;
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 10
#endif
    for (i = 0; i < 10; i++) {
        s += (uint64_t)f[i] * g[-(int)i];
    }
    return s;
}

/* h = f g (h may alias f or g). Column k sums f[i] g[k-i] (i + j = k) and 19 f[i] g[k-i+10]
 * (i + j = k + 10, 2^255 = 19). A product of two odd-index limbs counts twice
 * (2^ceil(25.5 i) 2^ceil(25.5 j) = 2 * 2^ceil(25.5 (i+j)) then), which happens only in even columns:
 * they use ff[0..9] (odd limbs doubled), odd columns ff[10..19] = f. gg = (19 g, g), so column k reads
 * gg[k + 10 - i]. Each column sum stays below 2^60. */
static void fe_mul(fe h, const fe f, const fe g)
{
    uint32_t ff[20], gg[20];
    uint64_t s = 0;
    unsigned i;

    for (i = 0; i < 10; i++) {
        ff[i] = f[i] << (i & 1);
        ff[i + 10] = f[i];
        gg[i] = 19 * g[i];
        gg[i + 10] = g[i];
    }
    for (i = 0; i < 10; i += 2) {
        s += fe_column(ff, gg + i + 10);
        h[i] = (uint32_t)s & MASK26;
        s >>= 26;
        s += fe_column(ff + 10, gg + i + 11);
        h[i + 1] = (uint32_t)s & MASK25;
        s >>= 25;
    }
    s = h[0] + 19 * s; /* s < 2^36 before */
    h[0] = (uint32_t)s & MASK26;
    h[1] += (uint32_t)(s >> 26);
}

static void fe_sq(fe h, const fe f)
{
    fe_mul(h, f, f);
}

/* Canonical 32-byte little-endian encoding of f mod p (bit 255 clear). */
static void fe_tobytes(uint8_t s[32], const fe f)
{
    fe t;
    uint32_t q = 19;
    unsigned i, pos = 0;

    memcpy(t, f, sizeof t);
    fe_carry(t); /* limbs 1..9 exact, t[0] < 2^26 + 2^9: t < 2^255 + 2^9 < 2p */
    /* q = (t + 19) >> 255: 1 exactly if t >= p */
    for (i = 0; i < 10; i++) {
        q = (t[i] + q) >> (26 - (i & 1));
    }
    /* t - q p = t + 19 q - 2^255 q: add 19 q, carry, drop the carry out of bit 255 */
    t[0] += 19 * q;
    for (i = 0; i < 9; i++) {
        t[i + 1] += t[i] >> (26 - (i & 1));
        t[i] &= (i & 1) ? MASK25 : MASK26;
    }
    t[9] &= MASK25;
    /* limb i holds bits ceil(25.5 i) ..; shifted to its byte offset it still fits in 32 bits */
    memset(s, 0, 32);
    for (i = 0; i < 10; i++) {
        uint32_t v = t[i] << (pos & 7);
        unsigned k;
        for (k = 0; k < 4 && (pos >> 3) + k < 32; k++) {
            s[(pos >> 3) + k] |= (uint8_t)(v >> (8 * k));
        }
        pos += 26 - (i & 1);
    }
}

/* f = bits 0..254 of the little-endian s (bit 255 ignored). Limb i starts at bit ceil(25.5 i); with
 * that bit offset, limb i always fits in the 32-bit word at byte ceil(25.5 i) / 8 (offset + width <= 32). */
static void fe_frombytes(fe f, const uint8_t s[32])
{
    unsigned i, pos = 0;
    for (i = 0; i < 10; i++) {
        f[i] = (load_le32(s + (pos >> 3)) >> (pos & 7)) & ((i & 1) ? MASK25 : MASK26);
        pos += 26 - (i & 1);
    }
}

static int is_zero32(const uint8_t b[32])
{
    uint8_t acc = 0;
    unsigned i;
    for (i = 0; i < 32; i++) {
        acc |= b[i];
    }
    return acc == 0;
}

static int fe_is_zero(const fe f)
{
    uint8_t b[32];
    fe_tobytes(b, f);
    return is_zero32(b);
}

/* r = a^(2^n) * b */
static void fe_sqn_mul(fe r, const fe a, unsigned n, const fe b)
{
    fe t;
    memcpy(t, a, sizeof t);
    while (n-- != 0) {
        fe_sq(t, t);
    }
    fe_mul(r, t, b);
}

/* r = z^(p-2) = 1/z if invert, else r = z^((p-5)/8) = z^(2^252-3) (for square roots).
 * Both exponents are (2^250 - 1) * 2^k + small; 254 squarings and 11 multiplications. */
static void fe_pow(fe r, const fe z, int invert)
{
    fe z11, a, b, c;

    fe_sq(a, z);                /* z^2 */
    fe_sqn_mul(b, a, 2, z);     /* z^9 */
    fe_mul(z11, b, a);          /* z^11 */
    fe_sqn_mul(a, z11, 1, b);   /* z^31 = z^(2^5 - 1) */
    fe_sqn_mul(b, a, 5, a);     /* z^(2^10 - 1) */
    fe_sqn_mul(c, b, 10, b);    /* z^(2^20 - 1) */
    fe_sqn_mul(c, c, 20, c);    /* z^(2^40 - 1) */
    fe_sqn_mul(b, c, 10, b);    /* z^(2^50 - 1) */
    fe_sqn_mul(c, b, 50, b);    /* z^(2^100 - 1) */
    fe_sqn_mul(c, c, 100, c);   /* z^(2^200 - 1) */
    fe_sqn_mul(c, c, 50, b);    /* z^(2^250 - 1) */
    if (invert) {
        fe_sqn_mul(r, c, 5, z11); /* z^(2^255 - 21) */
    } else {
        fe_sqn_mul(r, c, 2, z);   /* z^(2^252 - 3) */
    }
}

/* ---------------------------------------------------------------- group arithmetic */

typedef struct {
    fe x, y, z, t;
} ge; /* extended coordinates */

typedef struct {
    fe ypx, ymx, z, t2d;
} ge_cached; /* Y+X, Y-X, Z, 2dT: the second operand of an addition */

/* (E F : G H : F G : E H), shared tail of addition and doubling; T only if need_t */
static void ge_finish(ge *r, const fe e, const fe f, const fe g, const fe h, int need_t)
{
    fe_mul(r->x, e, f);
    fe_mul(r->y, g, h);
    fe_mul(r->z, f, g);
    if (need_t) {
        fe_mul(r->t, e, h);
    }
}

/* r = 2p (dbl-2008-hwcd, a = -1); r may be p. F and H are negated, which negates all four outputs:
 * the same point. Doubling does not read T, so r->t is only computed if need_t (an addition follows). */
static void ge_dbl(ge *r, const ge *p, int need_t)
{
    fe a, b, c, e, g;

    fe_sq(a, p->x);             /* A = X^2 */
    fe_sq(b, p->y);             /* B = Y^2 */
    fe_sq(c, p->z);
    fe_add(c, c, c);            /* C = 2 Z^2 */
    fe_add(e, p->x, p->y);
    fe_sq(e, e);                /* (X+Y)^2 */
    fe_sub(g, b, a);            /* G = B - A */
    fe_add(a, a, b);            /* -H = A + B */
    fe_sub(e, e, a);            /* E = (X+Y)^2 - A - B */
    fe_sub(c, c, g);            /* -F = C - G */
    ge_finish(r, e, c, g, a, need_t);
}

/* r = p + q, or p - q if negate (add-2008-hwcd-3, a = -1, k = 2d); r may be p. */
static void ge_add(ge *r, const ge *p, const ge_cached *q, int negate)
{
    fe a, b, c, d, e;

    /* -q = (-X, Y, Z, -T): swaps Y+X with Y-X and negates 2dT */
    fe_sub(a, p->y, p->x);
    fe_mul(a, a, negate ? q->ypx : q->ymx);    /* A = (Y1-X1)(Y2-X2) */
    fe_add(b, p->y, p->x);
    fe_mul(b, b, negate ? q->ymx : q->ypx);    /* B = (Y1+X1)(Y2+X2) */
    fe_mul(c, p->t, q->t2d);                   /* C = T1 2d T2 */
    fe_mul(d, p->z, q->z);
    fe_add(d, d, d);                           /* D = 2 Z1 Z2 */
    fe_sub(e, b, a);                           /* E = B - A */
    fe_add(b, b, a);                           /* H = B + A */
    fe_add(a, d, c);                           /* D + C */
    fe_sub(d, d, c);                           /* D - C */
    /* F = D - C, G = D + C; for -q, C changes sign */
    if (negate) {
        ge_finish(r, e, a, d, b, 1);
    } else {
        ge_finish(r, e, d, a, b, 1);
    }
}

static void ge_cache(ge_cached *r, const ge *p)
{
    fe_add(r->ypx, p->y, p->x);
    fe_sub(r->ymx, p->y, p->x);
    memcpy(r->z, p->z, sizeof r->z);
    fe_mul(r->t2d, p->t, fe_d);
    fe_add(r->t2d, r->t2d, r->t2d);
}

/* table[j] = (2j+1) p for j = 0..3, computed in place: p is left at 7p. */
static void ge_odd_multiples(ge_cached table[4], ge *p)
{
    unsigned j;

    ge_cache(&table[0], p);
    ge_dbl(p, p, 1);
    ge_cache(&table[3], p);                    /* 2p, until the last entry replaces it */
    ge_add(p, p, &table[0], 0);                /* 3p */
    for (j = 1; j < 4; j++) {
        if (j > 1) {
            ge_add(p, p, &table[3], 0);
        }
        ge_cache(&table[j], p);
    }
}

/* RFC 8032 5.1.3 decoding. Returns 0 if y >= p, if x^2 = (y^2 - 1)/(d y^2 + 1) has no root, or for
 * x = 0 with the sign bit set. */
NOINLINE static int ge_frombytes(ge *r, const uint8_t s[32])
{
    uint8_t check[32];
    fe u, v, v3, t;

    fe_frombytes(r->y, s);
    fe_tobytes(check, r->y);
    check[31] |= s[31] & 0x80u;
    if (memcmp(check, s, 32) != 0) {
        return 0;                              /* y >= p: non-canonical */
    }
    fe_sq(u, r->y);
    fe_mul(v, u, fe_d);
    fe_sub(u, u, fe_one);                      /* u = y^2 - 1 */
    fe_add(v, v, fe_one);                      /* v = d y^2 + 1 */
    fe_sq(v3, v);
    fe_mul(v3, v3, v);                         /* v^3 */
    fe_sq(t, v3);
    fe_mul(t, t, v);
    fe_mul(t, t, u);                           /* u v^7 */
    fe_pow(t, t, 0);
    fe_mul(t, t, v3);
    fe_mul(r->x, t, u);                        /* candidate root x = u v^3 (u v^7)^((p-5)/8) */
    fe_sq(t, r->x);
    fe_mul(t, t, v);                           /* v x^2 */
    fe_sub(v, t, u);
    if (!fe_is_zero(v)) {
        fe_add(v, t, u);
        if (!fe_is_zero(v)) {
            return 0;                          /* v x^2 is neither u nor -u: no square root */
        }
        fe_mul(r->x, r->x, fe_sqrtm1);         /* v x^2 = -u: x sqrt(-1) is the root */
    }
    /* here v = 0 (mod p) */
    fe_tobytes(check, r->x);
    if ((check[0] & 1u) != (s[31] >> 7)) {     /* parity of x differs from the sign bit */
        if (is_zero32(check)) {
            return 0;                          /* x = 0 cannot have the sign bit set */
        }
        fe_sub(r->x, v, r->x);
    }
    memcpy(r->z, fe_one, sizeof r->z);
    fe_mul(r->t, r->x, r->y);
    return 1;
}

static void ge_tobytes(uint8_t s[32], const ge *p)
{
    fe zi, t;
    uint8_t sx[32];

    fe_pow(zi, p->z, 1);
    fe_mul(t, p->x, zi);
    fe_tobytes(sx, t);
    fe_mul(t, p->y, zi);
    fe_tobytes(s, t);
    s[31] |= (uint8_t)((sx[0] & 1u) << 7);
}

/* ---------------------------------------------------------------- scalars mod L */

/* d = a - L over 8 words; returns the borrow (1 if a < L). */
static uint32_t sc_sub_order(uint32_t d[8], const uint32_t a[8])
{
    uint32_t borrow = 0;
    unsigned i;
    for (i = 0; i < 8; i++) {
        uint64_t u = (uint64_t)a[i] - order[i] - borrow;
        d[i] = (uint32_t)u;
        borrow = (uint32_t)(u >> 63);
    }
    return borrow;
}

/* s < L (RFC 8032 5.1.7: reject a non-canonical S) */
static int sc_is_canonical(const uint8_t s[32])
{
    uint32_t a[8];
    unsigned i;
    for (i = 0; i < 8; i++) {
        a[i] = load_le32(s + 4 * i);
    }
    return sc_sub_order(a, a) != 0;
}

/* out = h mod L for a 64-byte little-endian h, bit by bit from the top: r = 2r + bit, then r - L
 * if that does not go negative (r < L < 2^253 throughout). Small code; about 50k instructions. */
static void sc_reduce(uint8_t out[32], const uint8_t h[64])
{
    uint32_t r[8], d[8];
    int n;
    unsigned i;

    memset(r, 0, sizeof r);
    for (n = 511; n >= 0; n--) {
        uint32_t carry = (h[n >> 3] >> (n & 7)) & 1u;
        for (i = 0; i < 8; i++) {
            uint32_t top = r[i] >> 31;
            r[i] = (r[i] << 1) | carry;
            carry = top;
        }
        if (sc_sub_order(d, r) == 0) {
            memcpy(r, d, sizeof r);
        }
    }
    for (i = 0; i < 8; i++) {
        store_le32(out + 4 * i, r[i]);
    }
}

/* Width-4 NAF of a scalar below 2^253: s = sum d[i] 2^i with digits 0 or odd in [-7, 7], a nonzero digit
 * followed by at least three zeros. One 256-byte array holds the digits of two scalars as d[i] + 8 in
 * the low (shift 0) or high (shift 4) nibble of naf[i]; the caller fills it with 0x88 (all zero). */
static void sc_naf(uint8_t naf[256], const uint8_t s[32], unsigned shift)
{
    unsigned i = 0, carry = 0;

    while (i < 256) {
        unsigned v = s[i >> 3] >> (i & 7);
        if (((v & 1u) ^ carry) == 0) {
            i++;                               /* bit + carry even: digit 0, carry unchanged */
            continue;
        }
        if ((i >> 3) < 31) {
            v |= (unsigned)s[(i >> 3) + 1] << (8 - (i & 7));
        }
        v = (v & 15u) + carry;                 /* odd, 1..15: digit v or v - 16 */
        carry = v > 8;
        /* the nibble 8 becomes 8 ^ v: v + 8 for v < 8, (v - 16) + 8 for v > 8 */
        naf[i] ^= (uint8_t)(v << shift);
        i += 4;
    }
}

/* ---------------------------------------------------------------- verification */

/* k = SHA-512(R || A || M) mod L */
NOINLINE static void challenge(uint8_t k[32], const uint8_t sig[64], const uint8_t pub[32],
                               const uint8_t *msg, size_t len)
{
    edgec_sha512_ctx ctx;
    uint8_t h[EDGEC_SHA512_DIGEST_BYTES];

    edgec_sha512_init(&ctx);
    edgec_sha512_update(&ctx, sig, 32);
    edgec_sha512_update(&ctx, pub, 32);
    edgec_sha512_update(&ctx, msg, len);
    edgec_sha512_final(&ctx, h);
    sc_reduce(k, h);
}

/* Encoding of [S]B - [k]A, written to out. a (A, decoded) is clobbered. The large tables live in this
 * frame only, not in the frames of decoding and hashing. */
NOINLINE static void double_scalarmult(uint8_t out[32], ge *a, const uint8_t s[32], const uint8_t k[32])
{
    ge_cached table_a[4], table_b[4];
    uint8_t naf[256];
    ge *p = a;
    int i;

    ge_odd_multiples(table_a, a);
    memcpy(p->x, base_x, sizeof p->x);
    memcpy(p->y, base_y, sizeof p->y);
    memcpy(p->z, fe_one, sizeof p->z);
    fe_mul(p->t, base_x, base_y);
    ge_odd_multiples(table_b, p);
    memset(naf, 0x88, sizeof naf);
    sc_naf(naf, s, 0);
    sc_naf(naf, k, 4);

    /* joint double-and-add from the top nonzero digit down, starting at the neutral element */
    memset(p, 0, sizeof *p);
    p->y[0] = 1;
    p->z[0] = 1;
    for (i = 255; i >= 0 && naf[i] == 0x88u; i--) {
    }
    for (; i >= 0; i--) {
        int ds = (naf[i] & 15) - 8, dk = (naf[i] >> 4) - 8;
        ge_dbl(p, p, naf[i] != 0x88u);
        if (ds != 0) {
            ge_add(p, p, &table_b[(ds < 0 ? -ds : ds) >> 1], ds < 0);
        }
        if (dk != 0) {
            ge_add(p, p, &table_a[(dk < 0 ? -dk : dk) >> 1], dk > 0); /* subtracts [k]A */
        }
    }
    ge_tobytes(out, p);
}

int edgec_ed25519_verify(const uint8_t sig[64], const uint8_t pub[32], const uint8_t *msg, size_t len)
{
    ge a;
    uint8_t k[32], check[32];

    if (!sc_is_canonical(sig + 32) || !ge_frombytes(&a, pub)) {
        return 0;
    }
    challenge(k, sig, pub, msg, len);
    double_scalarmult(check, &a, sig + 32, k);
    /* Cofactorless check [S]B = R + [k]A, compared as encodings: since a point has exactly one
     * encoding, this also rejects an R that is non-canonical or not on the curve. */
    return memcmp(check, sig, 32) == 0;
}
