/*
 * edgec_train_rng.c - a deterministic edgec_hal_random() for tests and reproducible training runs
 * (edgec_train.h). Compiled to nothing unless EDGEC_TRAIN_TEST_RNG is defined: a device must take its
 * DP-SGD noise from a real entropy source, so a missing hook is a link error, not silent determinism.
 */
#include "edgec_train.h"

#ifdef EDGEC_TRAIN_TEST_RNG

static uint64_t state = 0x9E3779B97F4A7C15ull;

void edgec_train_rng_seed(uint64_t seed)
{
    state = seed ? seed : 0x9E3779B97F4A7C15ull; /* xorshift must not start at 0 */
}

uint32_t edgec_hal_random(void)
{
    /* xorshift64* (Vigna 2016): the high 32 bits of the product. */
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return (uint32_t)((state * 0x2545F4914F6CDD1Dull) >> 32);
}

#else
typedef int edgec_train_rng_unused; /* ISO C: a translation unit must declare something */
#endif
