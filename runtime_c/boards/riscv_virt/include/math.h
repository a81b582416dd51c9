/*
 * math.h - the part of <math.h> that edgec's generated code uses, for targets linked without a C library
 * (-ffreestanding -nostdlib). Functions are implemented in ../libc.c (single precision, software floating
 * point through libgcc on cores without an FPU).
 */
#ifndef EDGEC_BOARD_MATH_H
#define EDGEC_BOARD_MATH_H

#define INFINITY (__builtin_inff())
#define NAN (__builtin_nanf(""))
#define HUGE_VALF (__builtin_huge_valf())
#define isnan(x) __builtin_isnan(x)
#define isinf(x) __builtin_isinf(x)
#define isfinite(x) __builtin_isfinite(x)

float expf(float x);
float tanhf(float x);
float logf(float x);
float sqrtf(float x);
float powf(float x, float y);
float cosf(float x);
double fabs(double x);
double floor(double x);
double frexp(double x, int *exp);
double ldexp(double x, int n);

#endif /* EDGEC_BOARD_MATH_H */
