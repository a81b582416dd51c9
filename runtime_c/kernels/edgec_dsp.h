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

#endif /* EDGEC_DSP_H */
