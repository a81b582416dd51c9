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
