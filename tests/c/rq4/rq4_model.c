/*
 * rq4_model.c - edgec_mve_rq4 (runtime_c/kernels/edgec_mve.h) behind the harness's model interface, so the
 * standard harness (runtime_c/harness/edgec_harness.c) streams test cases through it on the host (plain C)
 * and under QEMU on the Cortex-M55 (Helium).
 *
 * Input record: RQ4_CASES cases of RQ4_WORDS int32:
 *   acc[4], mult[4], shift[4], bias[4], mode, shift_const, yzp, lo, hi   (RQ4_WORDS = 21)
 * Output record: int32 EDGEC_MVE (1: the MVE path was compiled in), then RQ4_CASES x int8 y[4].
 */
#include <stdint.h>

#include "edgec_model.h"
#include "edgec_mve.h"

#define RQ4_CASES 256
#define RQ4_WORDS 21

static int32_t in[RQ4_CASES * RQ4_WORDS];
static union {
    struct {
        int32_t mve;
        int8_t y[RQ4_CASES * 4];
    } s;
    int32_t align;
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
    return index == 0 ? (void *)&out.s : NULL;
}

size_t edgec_input_bytes(int index)
{
    return index == 0 ? sizeof in : 0;
}

size_t edgec_output_bytes(int index)
{
    return index == 0 ? sizeof out.s : 0;
}

int edgec_run(void)
{
    int i;
    out.s.mve = EDGEC_MVE;
    for (i = 0; i < RQ4_CASES; i++) {
        const int32_t *c = in + i * RQ4_WORDS;
        edgec_mve_rq4(c, c + 4, c + 8, c[16], c[17], c + 12, c[18], c[19], c[20], out.s.y + 4 * i);
    }
    return 0;
}
