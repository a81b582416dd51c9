/*
 * edgec_mve.h - int8 micro-kernels that the lowered kernels call (kernel_variant "mve": Armv8.1-M cores with
 * Helium, the Cortex-M55). With __ARM_FEATURE_MVE a row of 16 int8 products is one VMLADAVA, 4 depthwise
 * channels one VMUL + VADD on int32 lanes, and 4 output channels are requantized together (VQRDMULH is
 * TFLite's SaturatingRoundingDoublingHighMul; VRSHL after a -1 on negative lanes is its RoundingDivideByPOT).
 * Elsewhere (the host, for tests) the same arithmetic in plain C. Sums wrap modulo 2^32 like the int32
 * accumulators of the portable kernels: both paths give identical results. Loads need no alignment beyond
 * the element size (the int32 tables and accumulators are word-aligned).
 */
#ifndef EDGEC_MVE_H
#define EDGEC_MVE_H

#include <stdint.h>

#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
#define EDGEC_MVE 1
#include <arm_acle.h>
#include <arm_mve.h>
#else
#define EDGEC_MVE 0
#endif

/* v saturated to [-128, 127] (one SSAT). */
static inline int32_t edgec_mve_sat8(int32_t v)
{
#if EDGEC_MVE
    return __ssat(v, 8);
#else
    return v < -128 ? -128 : (v > 127 ? 127 : v);
#endif
}

static inline int32_t edgec_mve_wrap_add(int32_t a, int32_t b)
{
    return (int32_t)((uint32_t)a + (uint32_t)b);
}

/* acc[i] += sum_{j < n} x[j] * w[i * stride + j] for the 4 weight rows i = 0..3. */
static inline void edgec_mve_dot4(const int8_t *x, const int8_t *w, int32_t stride, int32_t n, int32_t *acc)
{
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    const int8_t *w0 = w, *w1 = w + stride, *w2 = w + 2 * stride, *w3 = w + 3 * stride;
    int32_t j = 0;
#if EDGEC_MVE
    for (; j + 16 <= n; j += 16) {
        const int8x16_t xv = vldrbq_s8(x + j);
        a0 = vmladavaq_s8(a0, xv, vldrbq_s8(w0 + j));
        a1 = vmladavaq_s8(a1, xv, vldrbq_s8(w1 + j));
        a2 = vmladavaq_s8(a2, xv, vldrbq_s8(w2 + j));
        a3 = vmladavaq_s8(a3, xv, vldrbq_s8(w3 + j));
    }
    if (j < n) { /* the last n % 16: predicated loads read nothing past the rows and give 0 lanes */
        const mve_pred16_t p = vctp8q((uint32_t)(n - j));
        const int8x16_t xv = vldrbq_z_s8(x + j, p);
        a0 = vmladavaq_s8(a0, xv, vldrbq_z_s8(w0 + j, p));
        a1 = vmladavaq_s8(a1, xv, vldrbq_z_s8(w1 + j, p));
        a2 = vmladavaq_s8(a2, xv, vldrbq_z_s8(w2 + j, p));
        a3 = vmladavaq_s8(a3, xv, vldrbq_z_s8(w3 + j, p));
    }
#else
    for (; j < n; j++) {
        const int32_t xv = x[j];
        a0 = edgec_mve_wrap_add(a0, xv * w0[j]);
        a1 = edgec_mve_wrap_add(a1, xv * w1[j]);
        a2 = edgec_mve_wrap_add(a2, xv * w2[j]);
        a3 = edgec_mve_wrap_add(a3, xv * w3[j]);
    }
#endif
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* sum_{j < n} x[j] * w[j]. */
static inline int32_t edgec_mve_dot1(const int8_t *x, const int8_t *w, int32_t n)
{
    int32_t a = 0, j = 0;
#if EDGEC_MVE
    for (; j + 16 <= n; j += 16) {
        a = vmladavaq_s8(a, vldrbq_s8(x + j), vldrbq_s8(w + j));
    }
    if (j < n) {
        const mve_pred16_t p = vctp8q((uint32_t)(n - j));
        a = vmladavaq_s8(a, vldrbq_z_s8(x + j, p), vldrbq_z_s8(w + j, p));
    }
#else
    for (; j < n; j++) {
        a = edgec_mve_wrap_add(a, x[j] * w[j]);
    }
#endif
    return a;
}

/* Depthwise taps of 4 adjacent channels: acc[i] += sum over nh x nw taps of (x[tap + i] - zp) * w[tap + i],
 * tap (r, c) at x + r * x_row + c * x_col and w + r * w_row + c * w_col. */
static inline void edgec_mve_dw4(const int8_t *x, int32_t x_row, int32_t x_col, const int8_t *w, int32_t w_row,
                                 int32_t w_col, int32_t nh, int32_t nw, int32_t zp, int32_t *acc)
{
    int32_t r, c;
#if EDGEC_MVE
    int32x4_t a = vldrwq_s32(acc);
    for (r = 0; r < nh; r++) {
        const int8_t *xr = x + r * x_row, *wr = w + r * w_row;
        for (c = 0; c < nw; c++) {
            /* zp is 0 for interior windows (the input zero point is folded into the bias): no VSUB then. */
            int32x4_t xv = vldrbq_s32(xr + c * x_col);
            if (zp != 0) {
                xv = vsubq_n_s32(xv, zp);
            }
            a = vaddq_s32(a, vmulq_s32(xv, vldrbq_s32(wr + c * w_col)));
        }
    }
    vstrwq_s32(acc, a);
#else
    for (r = 0; r < nh; r++) {
        for (c = 0; c < nw; c++) {
            const int8_t *xt = x + r * x_row + c * x_col, *wt = w + r * w_row + c * w_col;
            int32_t i;
            for (i = 0; i < 4; i++) {
                acc[i] = edgec_mve_wrap_add(acc[i], (xt[i] - zp) * wt[i]);
            }
        }
    }
#endif
}

#if !EDGEC_MVE
/* TFLite's SaturatingRoundingDoublingHighMul and RoundingDivideByPOT (what VQRDMULH and the VRSHL fix-up
 * compute), for the plain-C edgec_mve_rq4. */
static inline int32_t edgec_mve_srdhm(int32_t a, int32_t b)
{
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX;
    }
    return (int32_t)(((int64_t)a * b + ((int64_t)1 << 30)) >> 31);
}

static inline int32_t edgec_mve_rdpot(int32_t v, int32_t e)
{
    const int32_t mask = (int32_t)((1u << e) - 1u);
    const int32_t threshold = (mask >> 1) + (v < 0 ? 1 : 0);
    return (v >> e) + ((v & mask) > threshold ? 1 : 0);
}
#endif

#if EDGEC_MVE
/* clamp(MultiplyByQuantizedMultiplier(v + bias, mult, shift) + yzp, lo, hi) on 4 int32 lanes (the sum wraps);
 * shift modes as in edgec_mve_rq4. */
static inline int32x4_t edgec_mve_requant(int32x4_t v, const int32_t *mult, const int32_t *shift, int32_t mode,
                                          int32_t shift_const, const int32_t *bias, int32_t yzp, int32_t lo,
                                          int32_t hi)
{
    int32x4_t left, right;
    v = vaddq_s32(v, vldrwq_s32(bias));
    if (mode == 0) {
        left = vdupq_n_s32(shift_const > 0 ? shift_const : 0);
        right = vdupq_n_s32(shift_const < 0 ? -shift_const : 0);
    } else if (mode == 1) {
        left = vdupq_n_s32(0);
        right = vldrwq_s32(shift);
    } else {
        const int32x4_t s = vldrwq_s32(shift);
        left = vmaxq_s32(s, vdupq_n_s32(0));
        right = vmaxq_s32(vnegq_s32(s), vdupq_n_s32(0));
    }
    if (mode != 0 || shift_const > 0) {
        v = vshlq_s32(v, left); /* wraps like TFLite's x * (1 << left) */
    }
    v = vqrdmulhq_s32(v, vldrwq_s32(mult));
    if (mode != 0 || shift_const < 0) {
        /* VRSHL rounds ties up; TFLite rounds them away from zero: one less on negative lanes that shift. */
        const int32x4_t fix = vandq_s32(vshrq_n_s32(v, 31), vshrq_n_s32(vnegq_s32(right), 31));
        v = vrshlq_s32(vqaddq_s32(v, fix), vnegq_s32(right));
    }
    return vminq_s32(vmaxq_s32(vaddq_n_s32(v, yzp), vdupq_n_s32(lo)), vdupq_n_s32(hi));
}
#endif

/* y[i] = clamp(MultiplyByQuantizedMultiplier(acc[i] + bias[i], mult[i], shift_i) + yzp, lo, hi) for the 4
 * channels i = 0..3 (the int32 sum wraps). shift_i: mode 0: shift_const for all; 1: -shift[i] (the table holds
 * right-shift amounts); 2: shift[i] (left positive). */
static inline void edgec_mve_rq4(const int32_t *acc, const int32_t *mult, const int32_t *shift, int32_t mode,
                                 int32_t shift_const, const int32_t *bias, int32_t yzp, int32_t lo, int32_t hi,
                                 int8_t *y)
{
#if EDGEC_MVE
    vstrbq_s32(y, edgec_mve_requant(vldrwq_s32(acc), mult, shift, mode, shift_const, bias, yzp, lo, hi));
#else
    int32_t i;
    for (i = 0; i < 4; i++) {
        const int32_t s = mode == 0 ? shift_const : (mode == 1 ? -shift[i] : shift[i]);
        const int32_t total = edgec_mve_wrap_add(acc[i], bias[i]);
        const int32_t shifted = (int32_t)((uint32_t)total << (s > 0 ? s : 0));
        int32_t v = edgec_mve_wrap_add(edgec_mve_rdpot(edgec_mve_srdhm(shifted, mult[i]), s < 0 ? -s : 0), yzp);
        v = v < lo ? lo : (v > hi ? hi : v);
        y[i] = (int8_t)v;
    }
#endif
}

/* A depthwise output pixel's first 4 * blocks channels (depth multiplier 1): per block of 4, the taps as in
 * edgec_mve_dw4 from 0, then requantized as in edgec_mve_rq4; x, w, the tables and y advance by 4 per block.
 * One call per pixel keeps the sums in a register from the first tap to the store. */
static inline void edgec_mve_dw_rq(const int8_t *x, int32_t x_row, int32_t x_col, const int8_t *w, int32_t w_row,
                                   int32_t w_col, int32_t nh, int32_t nw, int32_t zp, int32_t blocks,
                                   const int32_t *mult, const int32_t *shift, int32_t mode, int32_t shift_const,
                                   const int32_t *bias, int32_t yzp, int32_t lo, int32_t hi, int8_t *y)
{
    int32_t b;
    for (b = 0; b < blocks; b++) {
#if EDGEC_MVE
        int32x4_t a = vdupq_n_s32(0);
        int32_t r, c;
        /* Interior windows have constant taps after inlining: unrolled, each tap is 2 loads, VMUL, VADD. */
#pragma GCC unroll 8
        for (r = 0; r < nh; r++) {
            const int8_t *xr = x + r * x_row, *wr = w + r * w_row;
#pragma GCC unroll 8
            for (c = 0; c < nw; c++) {
                int32x4_t xv = vldrbq_s32(xr + c * x_col);
                if (zp != 0) {
                    xv = vsubq_n_s32(xv, zp);
                }
                a = vaddq_s32(a, vmulq_s32(xv, vldrbq_s32(wr + c * w_col)));
            }
        }
        vstrbq_s32(y, edgec_mve_requant(a, mult, shift, mode, shift_const, bias, yzp, lo, hi));
#else
        int32_t acc[4] = {0, 0, 0, 0};
        edgec_mve_dw4(x, x_row, x_col, w, w_row, w_col, nh, nw, zp, acc);
        edgec_mve_rq4(acc, mult, shift, mode, shift_const, bias, yzp, lo, hi, y);
#endif
        x += 4;
        w += 4;
        mult += 4;
        shift += 4;
        bias += 4;
        y += 4;
    }
}

#if EDGEC_MVE
/* MultiplyByQuantizedMultiplierSmallerThanOneExp on 4 lanes: RoundingDivideByPOT(SRDHM(v, m), right). */
static inline int32x4_t edgec_mve_scale(int32x4_t v, int32_t m, int32_t right)
{
    v = vqrdmulhq_n_s32(v, m);
    if (right > 0) { /* ties away from zero: one less on negative lanes, then VRSHL's ties up */
        v = vrshlq_n_s32(vqaddq_s32(v, vshrq_n_s32(v, 31)), -right);
    }
    return v;
}

static inline int32x4_t edgec_mve_add4(int32x4_t va, int32x4_t vb, int32_t za, int32_t zb, int32_t ma, int32_t ra,
                                       int32_t mb, int32_t rb, int32_t sub, int32_t my, int32_t ry, int32_t zy,
                                       int32_t lo, int32_t hi)
{
    va = edgec_mve_scale(vshlq_n_s32(vsubq_n_s32(va, za), 20), ma, ra);
    vb = edgec_mve_scale(vshlq_n_s32(vsubq_n_s32(vb, zb), 20), mb, rb);
    va = vaddq_n_s32(edgec_mve_scale(sub ? vsubq_s32(va, vb) : vaddq_s32(va, vb), my, ry), zy);
    return vminq_s32(vmaxq_s32(va, vdupq_n_s32(lo)), vdupq_n_s32(hi));
}
#else
static inline int32_t edgec_mve_scale1(int32_t v, int32_t m, int32_t right)
{
    return edgec_mve_rdpot(edgec_mve_srdhm(v, m), right);
}
#endif

/* TFLite's int8 ADD (sub = 0) or SUB (sub = 1) of two arrays of n elements of the output's shape: each input
 * (x - z) * 2^20 scaled by its (multiplier, right shift) as MultiplyByQuantizedMultiplierSmallerThanOneExp does,
 * summed or subtracted, scaled to the output the same way, + zy, clamped to [lo, hi]. Four lanes at a time. */
static inline void edgec_mve_add(const int8_t *a, const int8_t *b, int8_t *y, int32_t n, int32_t za, int32_t zb,
                                 int32_t ma, int32_t ra, int32_t mb, int32_t rb, int32_t sub, int32_t my, int32_t ry,
                                 int32_t zy, int32_t lo, int32_t hi)
{
    int32_t i = 0;
#if EDGEC_MVE
    for (; i + 4 <= n; i += 4) {
        vstrbq_s32(y + i, edgec_mve_add4(vldrbq_s32(a + i), vldrbq_s32(b + i), za, zb, ma, ra, mb, rb, sub, my, ry,
                                         zy, lo, hi));
    }
    if (i < n) { /* the last n % 4: predicated loads and store touch nothing past the arrays */
        const mve_pred16_t p = vctp32q((uint32_t)(n - i));
        vstrbq_p_s32(y + i, edgec_mve_add4(vldrbq_z_s32(a + i, p), vldrbq_z_s32(b + i, p), za, zb, ma, ra, mb, rb,
                                           sub, my, ry, zy, lo, hi), p);
    }
#else
    for (; i < n; i++) {
        const int32_t va = edgec_mve_scale1((a[i] - za) * (1 << 20), ma, ra);
        const int32_t vb = edgec_mve_scale1((b[i] - zb) * (1 << 20), mb, rb);
        int32_t v = edgec_mve_scale1(sub ? va - vb : va + vb, my, ry) + zy;
        y[i] = (int8_t)(v < lo ? lo : (v > hi ? hi : v));
    }
#endif
}

#endif /* EDGEC_MVE_H */
