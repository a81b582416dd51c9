/*
 * edgec_dsp.h - int8 micro-kernels that the lowered kernels call (kernel_variant "dsp": targets with the
 * Armv7E-M / Armv8-M DSP extension). On a core with __ARM_FEATURE_DSP each pair of int8 products is one
 * SMLAD on sign-extended halfword pairs (SXTB16); elsewhere (the host, for tests) the same sums in plain C.
 * Sums wrap modulo 2^32 exactly like the int32 accumulators of the portable kernels, so both paths give
 * identical results. Unaligned word loads go through memcpy (one LDR on Cortex-M3 and up).
 */
#ifndef EDGEC_DSP_H
#define EDGEC_DSP_H

#include <stdint.h>
#include <string.h>

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>

static inline uint32_t edgec_dsp_load4(const int8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* [b0, b2] and [b1, b3] of a word of 4 int8, sign-extended to halfwords (SXTB16, SXTB16 with ROR #8: gcc
 * does not fold the rotation into the instruction by itself). */
static inline int32_t edgec_dsp_lo(uint32_t v)
{
    return (int32_t)__sxtb16(v);
}

static inline int32_t edgec_dsp_hi(uint32_t v)
{
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}
#define EDGEC_DSP_LO(v) edgec_dsp_lo(v)
#define EDGEC_DSP_HI(v) edgec_dsp_hi(v)
#endif

/* v saturated to [-128, 127] (one SSAT). */
static inline int32_t edgec_dsp_sat8(int32_t v)
{
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
    return __ssat(v, 8);
#else
    return v < -128 ? -128 : (v > 127 ? 127 : v);
#endif
}

/* TFLite's SaturatingRoundingDoublingHighMul(a, b) for |a| < 2^30 (the compiler proves it): floor((2ab + 2^31) /
 * 2^32), one SMMULR of 2a and b. */
static inline int32_t edgec_dsp_srdhm30(int32_t a, int32_t b)
{
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
    int32_t r;
    __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a * 2), "r"(b));
    return r;
#else
    return (int32_t)(((int64_t)a * b + ((int64_t)1 << 30)) >> 31);
#endif
}

/* acc[i] += sum_{j < n} x[j] * w[i * stride + j] for the 4 weight rows i = 0..3. */
static inline void edgec_dsp_dot4(const int8_t *x, const int8_t *w, int32_t stride, int32_t n, int32_t *acc)
{
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    const int8_t *w0 = w, *w1 = w + stride, *w2 = w + 2 * stride, *w3 = w + 3 * stride;
    int32_t j = 0;
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
    for (; j + 4 <= n; j += 4) {
        const uint32_t xv = edgec_dsp_load4(x + j);
        const int32_t xl = EDGEC_DSP_LO(xv), xh = EDGEC_DSP_HI(xv);
        uint32_t wv = edgec_dsp_load4(w0 + j);
        a0 = __smlad(xl, EDGEC_DSP_LO(wv), a0);
        a0 = __smlad(xh, EDGEC_DSP_HI(wv), a0);
        wv = edgec_dsp_load4(w1 + j);
        a1 = __smlad(xl, EDGEC_DSP_LO(wv), a1);
        a1 = __smlad(xh, EDGEC_DSP_HI(wv), a1);
        wv = edgec_dsp_load4(w2 + j);
        a2 = __smlad(xl, EDGEC_DSP_LO(wv), a2);
        a2 = __smlad(xh, EDGEC_DSP_HI(wv), a2);
        wv = edgec_dsp_load4(w3 + j);
        a3 = __smlad(xl, EDGEC_DSP_LO(wv), a3);
        a3 = __smlad(xh, EDGEC_DSP_HI(wv), a3);
    }
#endif
    for (; j < n; j++) {
        const int32_t xv = x[j];
        a0 = (int32_t)((uint32_t)a0 + (uint32_t)(xv * w0[j]));
        a1 = (int32_t)((uint32_t)a1 + (uint32_t)(xv * w1[j]));
        a2 = (int32_t)((uint32_t)a2 + (uint32_t)(xv * w2[j]));
        a3 = (int32_t)((uint32_t)a3 + (uint32_t)(xv * w3[j]));
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* Two inputs by two weight rows (a 1x1 convolution's pixel pair and channel pair): acc[2 * p + c] +=
 * sum_{j < n} x_p[j] * w_c[j] for p, c in {0, 1}. s_p holds x_p[0 .. n & ~3) already sign-extended to int16
 * and ordered per group of 4 as (x0, x2, x1, x3), the lanes SXTB16 gives the weights, so the inner loop
 * extends only the weights (the caller extends each pixel once for all its channel pairs); the last n % 4
 * elements come from x_p. */
static inline void edgec_dsp_mm2x2(const int16_t *s0, const int16_t *s1, const int8_t *x0, const int8_t *x1,
                                   const int8_t *w0, const int8_t *w1, int32_t n, int32_t *acc)
{
    int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    int32_t j = 0;
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
    for (; j + 4 <= n; j += 4) {
        int32_t x0l, x0h, x1l, x1h;
        const uint32_t v0 = edgec_dsp_load4(w0 + j), v1 = edgec_dsp_load4(w1 + j);
        const int32_t w0l = EDGEC_DSP_LO(v0), w0h = EDGEC_DSP_HI(v0), w1l = EDGEC_DSP_LO(v1), w1h = EDGEC_DSP_HI(v1);
        memcpy(&x0l, s0 + j, 4);
        memcpy(&x0h, s0 + j + 2, 4);
        memcpy(&x1l, s1 + j, 4);
        memcpy(&x1h, s1 + j + 2, 4);
        a00 = __smlad(x0h, w0h, __smlad(x0l, w0l, a00));
        a01 = __smlad(x0h, w1h, __smlad(x0l, w1l, a01));
        a10 = __smlad(x1h, w0h, __smlad(x1l, w0l, a10));
        a11 = __smlad(x1h, w1h, __smlad(x1l, w1l, a11));
    }
#else
    (void)s0;
    (void)s1;
#endif
    for (; j < n; j++) {
        a00 = (int32_t)((uint32_t)a00 + (uint32_t)(x0[j] * w0[j]));
        a01 = (int32_t)((uint32_t)a01 + (uint32_t)(x0[j] * w1[j]));
        a10 = (int32_t)((uint32_t)a10 + (uint32_t)(x1[j] * w0[j]));
        a11 = (int32_t)((uint32_t)a11 + (uint32_t)(x1[j] * w1[j]));
    }
    acc[0] = a00;
    acc[1] = a01;
    acc[2] = a10;
    acc[3] = a11;
}

/* sum_{j < n} x[j] * w[j]. */
static inline int32_t edgec_dsp_dot1(const int8_t *x, const int8_t *w, int32_t n)
{
    int32_t a = 0, j = 0;
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
    for (; j + 4 <= n; j += 4) {
        const uint32_t xv = edgec_dsp_load4(x + j), wv = edgec_dsp_load4(w + j);
        a = __smlad(EDGEC_DSP_LO(xv), EDGEC_DSP_LO(wv), a);
        a = __smlad(EDGEC_DSP_HI(xv), EDGEC_DSP_HI(wv), a);
    }
#endif
    for (; j < n; j++) {
        a = (int32_t)((uint32_t)a + (uint32_t)(x[j] * w[j]));
    }
    return a;
}

/* Depthwise taps of 4 adjacent channels: acc[i] += sum over nh x nw taps of (x[tap + i] - zp) * w[tap + i],
 * tap (r, c) at x + r * x_row + c * x_col and w + r * w_row + c * w_col. */
static inline void edgec_dsp_dw4(const int8_t *x, int32_t x_row, int32_t x_col, const int8_t *w, int32_t w_row,
                                 int32_t w_col, int32_t nh, int32_t nw, int32_t zp, int32_t *acc)
{
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    int32_t r, c;
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
    /* zp is 0 for interior windows (the input zero point is folded into the bias): no SSUB16 then. */
    const int32_t zp2 = (int32_t)(((uint32_t)zp & 0xFFFFu) | ((uint32_t)zp << 16));
    /* Interior windows have constant taps after inlining: unrolled, no loop overhead per tap. */
#pragma GCC unroll 8
    for (r = 0; r < nh; r++) {
        const int8_t *xr = x + r * x_row, *wr = w + r * w_row;
#pragma GCC unroll 8
        for (c = 0; c < nw; c++) {
            const uint32_t xv = edgec_dsp_load4(xr + c * x_col), wv = edgec_dsp_load4(wr + c * w_col);
            const int32_t xl = zp != 0 ? __ssub16(EDGEC_DSP_LO(xv), zp2) : EDGEC_DSP_LO(xv);
            const int32_t xh = zp != 0 ? __ssub16(EDGEC_DSP_HI(xv), zp2) : EDGEC_DSP_HI(xv);
            const int32_t wl = EDGEC_DSP_LO(wv), wh = EDGEC_DSP_HI(wv);
            a0 = __smlabb(xl, wl, a0);
            a2 = __smlatt(xl, wl, a2);
            a1 = __smlabb(xh, wh, a1);
            a3 = __smlatt(xh, wh, a3);
        }
    }
#else
    for (r = 0; r < nh; r++) {
        for (c = 0; c < nw; c++) {
            const int8_t *xt = x + r * x_row + c * x_col, *wt = w + r * w_row + c * w_col;
            a0 = (int32_t)((uint32_t)a0 + (uint32_t)((xt[0] - zp) * wt[0]));
            a1 = (int32_t)((uint32_t)a1 + (uint32_t)((xt[1] - zp) * wt[1]));
            a2 = (int32_t)((uint32_t)a2 + (uint32_t)((xt[2] - zp) * wt[2]));
            a3 = (int32_t)((uint32_t)a3 + (uint32_t)((xt[3] - zp) * wt[3]));
        }
    }
#endif
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

#endif /* EDGEC_DSP_H */
