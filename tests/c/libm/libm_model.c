/*
 * libm_model.c - the math functions of a board without a C library (runtime_c/boards/riscv_virt/libc.c) behind
 * the harness's model interface, so the standard harness streams arguments through them under QEMU.
 *
 * Input record: N float x, then N float y.
 * Output record, per argument i (LIBM_OUTS values, float or double as listed):
 *   float logf(|x|), sqrtf(|x|), cosf(x), powf(|x|, y), expf(y), tanhf(y);
 *   double floor(x * 1000.25), frexp(x) mantissa, frexp(x) exponent, ldexp(x, (int)y).
 */
#include <math.h>
#include <stdint.h>

#include "edgec_model.h"

#define N 256

static float in[2 * N];
static struct {
    float f[N][6];
    double d[N][4];
} out;

int edgec_init(void)
{
    return 0;
}

void *edgec_input(int index)
{
    return index == 0 ? (void *)in : NULL;
}

void *edgec_output(int index)
{
    return index == 0 ? (void *)&out : NULL;
}

size_t edgec_input_bytes(int index)
{
    return index == 0 ? sizeof in : 0;
}

size_t edgec_output_bytes(int index)
{
    return index == 0 ? sizeof out : 0;
}

int edgec_run(void)
{
    int i, e;
    for (i = 0; i < N; i++) {
        const float x = in[i], y = in[N + i], ax = x < 0.0f ? -x : x;
        out.f[i][0] = logf(ax);
        out.f[i][1] = sqrtf(ax);
        out.f[i][2] = cosf(x);
        out.f[i][3] = powf(ax, y);
        out.f[i][4] = expf(y);
        out.f[i][5] = tanhf(y);
        out.d[i][0] = floor((double)x * 1000.25);
        out.d[i][1] = frexp((double)x, &e);
        out.d[i][2] = (double)e;
        out.d[i][3] = ldexp((double)x, (int)y);
    }
    return 0;
}
