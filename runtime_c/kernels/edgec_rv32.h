/*
 * edgec_rv32.h - int8 micro-kernels that the lowered kernels call (kernel_variant "rv32": RV32IMC cores such as
 * the ESP32-C3, no SIMD). Plain C shaped for RV32: walking pointers instead of indexed addresses (RV32 loads take
 * only a constant offset), inner loops unrolled by 2 so a loop branch and the pointer updates serve twice the
 * MACs, and the accumulators of 4 rows or 4 channels in registers (RV32 has 31). Sums wrap modulo 2^32 like the
 * int32 accumulators of the portable kernels (done in uint32: no signed overflow in C), so results are identical.
 */
#ifndef EDGEC_RV32_H
#define EDGEC_RV32_H

#include <stdint.h>

/* v saturated to [-128, 127]. */
static inline int32_t edgec_rv32_sat8(int32_t v)
{
    return v < -128 ? -128 : (v > 127 ? 127 : v);
}

/* TFLite's SaturatingRoundingDoublingHighMul(a, b) for |a| < 2^30 (the compiler proves it): floor((2ab + 2^31) /
 * 2^32) is the high word of 2ab (MULH) plus the top bit of its low word (MUL), no 64-bit carry chain. */
static inline int32_t edgec_rv32_srdhm30(int32_t a, int32_t b)
{
    const int64_t p = (int64_t)(a * 2) * b;
    return (int32_t)(p >> 32) + (int32_t)((uint32_t)p >> 31);
}

/* acc[i] += sum_{j < n} x[j] * w[i * stride + j] for the 4 weight rows i = 0..3. */
static inline void edgec_rv32_dot4(const int8_t *x, const int8_t *w, int32_t stride, int32_t n, int32_t *acc)
{
    uint32_t a0 = (uint32_t)acc[0], a1 = (uint32_t)acc[1], a2 = (uint32_t)acc[2], a3 = (uint32_t)acc[3];
    const int8_t *w0 = w, *w1 = w + stride, *w2 = w + 2 * stride, *w3 = w + 3 * stride;
    const int8_t *end = x + (n & ~1);
    while (x != end) {
        const int32_t x0 = x[0], x1 = x[1];
        a0 += (uint32_t)(x0 * w0[0]) + (uint32_t)(x1 * w0[1]);
        a1 += (uint32_t)(x0 * w1[0]) + (uint32_t)(x1 * w1[1]);
        a2 += (uint32_t)(x0 * w2[0]) + (uint32_t)(x1 * w2[1]);
        a3 += (uint32_t)(x0 * w3[0]) + (uint32_t)(x1 * w3[1]);
        x += 2;
        w0 += 2;
        w1 += 2;
        w2 += 2;
        w3 += 2;
    }
    if (n & 1) {
        const int32_t x0 = x[0];
        a0 += (uint32_t)(x0 * w0[0]);
        a1 += (uint32_t)(x0 * w1[0]);
        a2 += (uint32_t)(x0 * w2[0]);
        a3 += (uint32_t)(x0 * w3[0]);
    }
    acc[0] = (int32_t)a0;
    acc[1] = (int32_t)a1;
    acc[2] = (int32_t)a2;
    acc[3] = (int32_t)a3;
}

/* A 1x1 convolution's block of 4 pixels by 4 output channels: acc[4 * p + c] += sum_{j < n} x[p * x_stride + j] *
 * w[c * w_stride + j]. Each loaded byte serves 4 MACs (16 accumulators, 4 inputs and a weight in registers); with
 * the strides constant after inlining every row is one base pointer plus an immediate offset. */
static inline void edgec_rv32_mm4x4(const int8_t *x, int32_t x_stride, const int8_t *w, int32_t w_stride, int32_t n,
                                    int32_t *acc)
{
    /* Written out: gcc -O2 keeps an indexed accumulator array in memory. */
    uint32_t a00 = 0, a01 = 0, a02 = 0, a03 = 0, a10 = 0, a11 = 0, a12 = 0, a13 = 0;
    uint32_t a20 = 0, a21 = 0, a22 = 0, a23 = 0, a30 = 0, a31 = 0, a32 = 0, a33 = 0;
    const int8_t *end = x + n;
    int32_t i;
    for (; x != end; x++, w++) {
        const int32_t x0 = x[0], x1 = x[x_stride], x2 = x[2 * x_stride], x3 = x[3 * x_stride];
        int32_t wc = w[0];
        a00 += (uint32_t)(x0 * wc);
        a10 += (uint32_t)(x1 * wc);
        a20 += (uint32_t)(x2 * wc);
        a30 += (uint32_t)(x3 * wc);
        wc = w[w_stride];
        a01 += (uint32_t)(x0 * wc);
        a11 += (uint32_t)(x1 * wc);
        a21 += (uint32_t)(x2 * wc);
        a31 += (uint32_t)(x3 * wc);
        wc = w[2 * w_stride];
        a02 += (uint32_t)(x0 * wc);
        a12 += (uint32_t)(x1 * wc);
        a22 += (uint32_t)(x2 * wc);
        a32 += (uint32_t)(x3 * wc);
        wc = w[3 * w_stride];
        a03 += (uint32_t)(x0 * wc);
        a13 += (uint32_t)(x1 * wc);
        a23 += (uint32_t)(x2 * wc);
        a33 += (uint32_t)(x3 * wc);
    }
    {
        const uint32_t sums[16] = {a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33};
        for (i = 0; i < 16; i++) {
            acc[i] = (int32_t)((uint32_t)acc[i] + sums[i]);
        }
    }
}

/* sum_{j < n} x[j] * w[j]. */
static inline int32_t edgec_rv32_dot1(const int8_t *x, const int8_t *w, int32_t n)
{
    uint32_t a = 0;
    const int8_t *end = x + n;
    while (x != end) {
        a += (uint32_t)(*x++ * *w++);
    }
    return (int32_t)a;
}

/* Depthwise taps of 4 adjacent channels: acc[i] += sum over nh x nw taps of (x[tap + i] - zp) * w[tap + i],
 * tap (r, c) at x + r * x_row + c * x_col and w + r * w_row + c * w_col. */
static inline void edgec_rv32_dw4(const int8_t *x, int32_t x_row, int32_t x_col, const int8_t *w, int32_t w_row,
                                  int32_t w_col, int32_t nh, int32_t nw, int32_t zp, int32_t *acc)
{
    uint32_t a0 = (uint32_t)acc[0], a1 = (uint32_t)acc[1], a2 = (uint32_t)acc[2], a3 = (uint32_t)acc[3];
    int32_t r, c;
    for (r = 0; r < nh; r++) {
        const int8_t *xt = x + r * x_row, *wt = w + r * w_row;
        for (c = 0; c < nw; c++) {
            a0 += (uint32_t)((xt[0] - zp) * wt[0]);
            a1 += (uint32_t)((xt[1] - zp) * wt[1]);
            a2 += (uint32_t)((xt[2] - zp) * wt[2]);
            a3 += (uint32_t)((xt[3] - zp) * wt[3]);
            xt += x_col;
            wt += w_col;
        }
    }
    acc[0] = (int32_t)a0;
    acc[1] = (int32_t)a1;
    acc[2] = (int32_t)a2;
    acc[3] = (int32_t)a3;
}

#endif /* EDGEC_RV32_H */
