/*
 * libc.c - the C library functions edgec firmware needs on targets linked without one (-ffreestanding
 * -nostdlib -lgcc: Debian's riscv64-unknown-elf-gcc has no rv32 libc). Declared in include/.
 * Plain byte loops: small, and correct for any alignment. NO_LIBCALL keeps GCC from recognizing a loop
 * here as memcpy/memset and compiling it into a call to itself.
 */
#include <stddef.h>
#include <stdint.h>

#include "math.h"
#include "string.h"

#define NO_LIBCALL __attribute__((optimize("no-tree-loop-distribute-patterns")))

NO_LIBCALL void *memcpy(void *restrict dst, const void *restrict src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) {
        *d++ = *s++;
    }
    return dst;
}

NO_LIBCALL void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d < s) {
        while (n--) {
            *d++ = *s++;
        }
    } else if (d > s) {
        while (n--) {
            d[n] = s[n];
        }
    }
    return dst;
}

NO_LIBCALL void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    while (n--) {
        *d++ = (unsigned char)c;
    }
    return dst;
}

NO_LIBCALL int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    for (; n; n--, x++, y++) {
        if (*x != *y) {
            return *x < *y ? -1 : 1;
        }
    }
    return 0;
}

NO_LIBCALL void *memchr(const void *s, int c, size_t n)
{
    const unsigned char *p = s;
    for (; n; n--, p++) {
        if (*p == (unsigned char)c) {
            return (void *)p;
        }
    }
    return NULL;
}

NO_LIBCALL size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n] != '\0') {
        n++;
    }
    return n;
}

/* ---- math: expf and tanhf for the float32 kernels (LOGISTIC, SOFTMAX, TANH) ----
 * Evaluated in double (software floating point through libgcc without an FPU) and rounded once to float:
 * within 1 ulp of the exact value, in practice the correctly rounded result that glibc's expf gives. */

union edgec_f64_bits {
    double d;
    uint64_t u;
};

union edgec_f32_bits {
    float f;
    uint32_t u;
};

/* exp(r) - 1 for |r| <= 0.35 (Taylor series to r^13 / 13!: error below 1e-17 relative). */
static double expm1_small(double r)
{
    double term = r, sum = r;
    for (int n = 2; n <= 13; n++) {
        term *= r / n;
        sum += term;
    }
    return sum;
}

/* exp(x) for finite x in [-104, 89] (the float range, with margin). */
static double exp_double(double x)
{
    static const double ln2_hi = 6.93147180369123816490e-01; /* ln 2, high bits (exact product with k) */
    static const double ln2_lo = 1.90821492927058770002e-10; /* ln 2 - ln2_hi */
    static const double inv_ln2 = 1.44269504088896338700e+00;
    double t = x * inv_ln2;
    int k = (int)(t < 0 ? t - 0.5 : t + 0.5); /* round to nearest: |r| <= ln2 / 2 + rounding */
    double r = (x - k * ln2_hi) - k * ln2_lo;
    union edgec_f64_bits scale;
    scale.u = (uint64_t)(k + 1023) << 52; /* 2^k, k in [-151, 129]: a normal double */
    return (1.0 + expm1_small(r)) * scale.d;
}

float expf(float x)
{
    if (x != x) {
        return x + x; /* NaN */
    }
    if (x > 88.8f) {
        return INFINITY; /* expf overflows above 88.7228 */
    }
    if (x < -104.0f) {
        return 0.0f; /* below half the smallest subnormal */
    }
    return (float)exp_double((double)x);
}

float tanhf(float x)
{
    union edgec_f32_bits bits;
    bits.f = x;
    uint32_t sign = bits.u & 0x80000000u;
    bits.u &= 0x7FFFFFFFu;
    float ax = bits.f;
    double t;
    if (ax != ax) {
        return x + x; /* NaN */
    }
    if (ax > 10.0f) {
        t = 1.0; /* tanh(10) rounds to 1 in float; also +-inf */
    } else {
        double y = 2.0 * (double)ax;
        /* tanh = (e^y - 1) / (e^y + 1), with e^y - 1 computed without cancellation near 0. */
        double em1 = y <= 0.35 ? expm1_small(y) : exp_double(y) - 1.0;
        t = em1 / (em1 + 2.0);
    }
    bits.f = (float)t;
    bits.u |= sign; /* odd function; keeps the sign of -0 */
    return bits.f;
}

/* ---- math: logf, sqrtf, powf and cosf for the training runtime (loss, Adam, DP noise) ----
 * Like expf: evaluated in double, rounded once to float. */

/* log(x) for finite x > 0: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1),
 * |s| <= 0.1716: the odd series to s^21 leaves an error below 1e-17. */
static double log_double(double x)
{
    static const double ln2 = 6.93147180559945286227e-01;
    union edgec_f64_bits bits;
    bits.d = x;
    int e = (int)((bits.u >> 52) & 0x7FF) - 1023;
    if (e == -1023) { /* subnormal: scale into the normal range first */
        bits.d = x * 18014398509481984.0; /* 2^54 */
        e = (int)((bits.u >> 52) & 0x7FF) - 1023 - 54;
    }
    bits.u = (bits.u & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull; /* m in [1, 2) */
    double m = bits.d;
    if (m > 1.41421356237309504880) {
        m *= 0.5;
        e += 1;
    }
    double s = (m - 1.0) / (m + 1.0), s2 = s * s, term = s, sum = s;
    for (int n = 3; n <= 21; n += 2) {
        term *= s2;
        sum += term / n;
    }
    return 2.0 * sum + e * ln2;
}

float logf(float x)
{
    if (x != x || x == INFINITY) {
        return x + x; /* NaN, +inf */
    }
    if (x < 0.0f) {
        return NAN;
    }
    if (x == 0.0f) {
        return -INFINITY;
    }
    return (float)log_double((double)x);
}

float sqrtf(float x)
{
    if (x != x || x == INFINITY || x == 0.0f) {
        return x + x * 0.0f; /* NaN, +inf, +-0 */
    }
    if (x < 0.0f) {
        return NAN;
    }
    /* Newton's iteration in double from a guess within a factor 2 (half the exponent): quadratic convergence
     * reaches double precision in 6 steps for any float. */
    double d = (double)x, r;
    union edgec_f64_bits bits;
    bits.d = d;
    bits.u = (uint64_t)(((int)(bits.u >> 52) - 1023) / 2 + 1023) << 52; /* x > 0: no sign bit */
    r = bits.d;
    for (int i = 0; i < 6; i++) {
        r = 0.5 * (r + d / r);
    }
    return (float)r;
}

float powf(float x, float y)
{
    if (y == 0.0f || x == 1.0f) {
        return 1.0f;
    }
    if (x != x || y != y) {
        return x + y; /* NaN */
    }
    float ay = y < 0.0f ? -y : y;
    int integral = ay < 16777216.0f && (float)(long)ay == ay; /* exact integers below 2^24 */
    float sign = 1.0f;
    if (x < 0.0f) {
        if (!integral) {
            return NAN;
        }
        sign = ((long)ay & 1) ? -1.0f : 1.0f;
        x = -x;
    }
    if (x == 0.0f) {
        return y > 0.0f ? 0.0f * sign : sign * INFINITY;
    }
    double t = (double)y * log_double((double)x);
    if (t > 88.8) {
        return sign * INFINITY;
    }
    if (t < -104.0) {
        return 0.0f * sign;
    }
    return sign * (float)exp_double(t);
}

float cosf(float x)
{
    /* 2 pi split Cody-Waite style: the first part has 33 significant bits, so k * part1 is exact for the
     * |k| < 2^20 allowed here. */
    static const double two_pi_1 = 6.28318530693650245668e+00, two_pi_1t = 2.43084020260247689973e-10;
    static const double inv_two_pi = 1.59154943091895345608e-01, pi = 3.14159265358979323846;
    if (x != x || x > 1e5f || x < -1e5f) {
        return NAN; /* NaN, infinities, and arguments beyond the exact reduction: loud, not approximate */
    }
    /* Reduce to [-pi, pi], then cos(r) = -cos(pi - |r|) for |r| > pi / 2 and the Taylor series to r^22 on
     * [0, pi / 2] (error below 1e-19). */
    double r = (double)x;
    double k = (double)(long)(r * inv_two_pi + (r < 0 ? -0.5 : 0.5));
    r = (r - k * two_pi_1) - k * two_pi_1t;
    double sign = 1.0;
    if (r < 0) {
        r = -r;
    }
    if (r > pi / 2) {
        r = pi - r;
        sign = -1.0;
    }
    double r2 = r * r, term = 1.0, sum = 1.0;
    for (int n = 2; n <= 22; n += 2) {
        term *= -r2 / ((n - 1) * n);
        sum += term;
    }
    return (float)(sign * sum);
}

/* ---- double helpers of the training runtime's slot-table quantization (edgec_train_quantize_layer) ---- */

double fabs(double x)
{
    union edgec_f64_bits bits;
    bits.d = x;
    bits.u &= 0x7FFFFFFFFFFFFFFFull;
    return bits.d;
}

double floor(double x)
{
    if (x != x || fabs(x) >= 4503599627370496.0) { /* NaN, infinities, and |x| >= 2^52: already integral */
        return x;
    }
    double t = (double)(int64_t)x; /* truncated toward zero, exact below 2^52 (-0.0 gives +0.0) */
    return t > x ? t - 1.0 : t;
}

double frexp(double x, int *exp)
{
    union edgec_f64_bits bits;
    int scale = 0;
    *exp = 0;
    if (x == 0.0 || x != x || fabs(x) == INFINITY) {
        return x;
    }
    bits.d = x;
    if (((bits.u >> 52) & 0x7FF) == 0) { /* subnormal */
        bits.d = x * 18014398509481984.0; /* 2^54 */
        scale = -54;
    }
    *exp = (int)((bits.u >> 52) & 0x7FF) - 1022 + scale;
    bits.u = (bits.u & 0x800FFFFFFFFFFFFFull) | 0x3FE0000000000000ull; /* |m| in [0.5, 1) */
    return bits.d;
}

double ldexp(double x, int n)
{
    union edgec_f64_bits scale;
    for (; n > 1023; n -= 1023) {
        x *= 8.98846567431157953865e+307; /* 2^1023 */
    }
    for (; n < -1022; n += 1022) {
        x *= 2.22507385850720138309e-308; /* 2^-1022 */
    }
    scale.u = (uint64_t)(n + 1023) << 52; /* 2^n, a normal double */
    return x * scale.d;
}

