/*
 * string.h - the part of <string.h> that edgec's generated code, runtime and harness use, for targets
 * linked without a C library (-ffreestanding -nostdlib: Debian's riscv64-unknown-elf-gcc has no libc for
 * rv32). Implemented in ../libc.c. GCC may also call memcpy/memset/memmove/memcmp by itself.
 */
#ifndef EDGEC_BOARD_STRING_H
#define EDGEC_BOARD_STRING_H

#include <stddef.h>

void *memcpy(void *restrict dst, const void *restrict src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
void *memchr(const void *s, int c, size_t n);
size_t strlen(const char *s);

#endif /* EDGEC_BOARD_STRING_H */
