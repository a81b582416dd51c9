/* edgec_semihost.c - ARM semihosting calls (Cortex-M and RISC-V), see edgec_semihost.h. */
#include "edgec_semihost.h"

#include <stdint.h>

#if !(defined(__arm__) && defined(__thumb__)) && !defined(__riscv)
#error "edgec_semihost.c: semihosting is implemented for Thumb (Cortex-M, bkpt 0xAB) and RISC-V (ebreak)"
#endif

#define SYS_OPEN 0x01
#define SYS_CLOSE 0x02
#define SYS_WRITE0 0x04
#define SYS_WRITE 0x05
#define SYS_READ 0x06
#define SYS_FLEN 0x0C
#define SYS_EXIT_EXTENDED 0x20
#define ADP_STOPPED_APPLICATION_EXIT 0x20026

#if defined(__riscv)
/* RISC-V semihosting (same operations and parameter blocks as Arm's): a0 = operation, a1 = argument
 * (block), result in a0. The debugger/QEMU recognizes the ebreak only inside this exact sequence of
 * uncompressed instructions, all in one page: hence norvc and the 16-byte alignment (QEMU >= 7.0,
 * M-mode). The memory clobber makes the compiler flush argument blocks and reload read buffers. */
__attribute__((noinline)) static int semihost_call(int op, const void *arg)
{
    register int a0 __asm__("a0") = op;
    register const void *a1 __asm__("a1") = arg;
    __asm__ volatile(".option push\n\t"
                     ".option norvc\n\t"
                     ".balign 16\n\t"
                     "slli x0, x0, 0x1f\n\t"
                     "ebreak\n\t"
                     "srai x0, x0, 7\n\t"
                     ".option pop"
                     : "+r"(a0)
                     : "r"(a1)
                     : "memory");
    return a0;
}
#else
/* r0 = operation, r1 = argument (block); the debugger/QEMU returns the result in r0.
 * The memory clobber makes the compiler flush argument blocks and reload read buffers. */
static int semihost_call(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}
#endif

int edgec_semihost_open(const char *path, int mode)
{
    size_t len = 0;
    while (path[len] != '\0') {
        len++;
    }
    uintptr_t args[3] = {(uintptr_t)path, (uintptr_t)mode, (uintptr_t)len};
    return semihost_call(SYS_OPEN, args);
}

int edgec_semihost_close(int handle)
{
    uintptr_t args[1] = {(uintptr_t)handle};
    return semihost_call(SYS_CLOSE, args) == 0 ? 0 : -1;
}

size_t edgec_semihost_read(int handle, void *buf, size_t len)
{
    uintptr_t args[3] = {(uintptr_t)handle, (uintptr_t)buf, (uintptr_t)len};
    /* SYS_READ returns the number of bytes NOT read. */
    size_t not_read = (size_t)semihost_call(SYS_READ, args);
    return not_read > len ? 0 : len - not_read;
}

size_t edgec_semihost_write(int handle, const void *buf, size_t len)
{
    uintptr_t args[3] = {(uintptr_t)handle, (uintptr_t)buf, (uintptr_t)len};
    /* SYS_WRITE returns the number of bytes NOT written. */
    size_t not_written = (size_t)semihost_call(SYS_WRITE, args);
    return not_written > len ? 0 : len - not_written;
}

long edgec_semihost_flen(int handle)
{
    uintptr_t args[1] = {(uintptr_t)handle};
    return (long)semihost_call(SYS_FLEN, args);
}

void edgec_semihost_write0(const char *s)
{
    (void)semihost_call(SYS_WRITE0, s);
}

void edgec_semihost_exit(int code)
{
    /* SYS_EXIT_EXTENDED passes the full exit code; plain SYS_EXIT only gives 0/1 on M-profile (and rv32). */
    uintptr_t args[2] = {ADP_STOPPED_APPLICATION_EXIT, (uintptr_t)code};
    for (;;) {
        (void)semihost_call(SYS_EXIT_EXTENDED, args);
    }
}

void edgec_semihost_write_hex(const char *label, uint32_t value)
{
    char buf[11];
    buf[0] = '0';
    buf[1] = 'x';
    for (int i = 0; i < 8; i++) {
        buf[2 + i] = "0123456789abcdef"[(value >> (28 - 4 * i)) & 0xFu];
    }
    buf[10] = '\0';
    edgec_semihost_write0(label);
    edgec_semihost_write0(buf);
}

int main(int argc, char **argv);
extern uint32_t __edgec_data_start[], __edgec_data_end[], __edgec_data_load[];
extern uint32_t __edgec_bss_start[], __edgec_bss_end[];

void edgec_firmware_start(void)
{
    const uint32_t *src = __edgec_data_load;
    for (uint32_t *dst = __edgec_data_start; dst < __edgec_data_end; dst++) {
        *dst = *src++;
    }
    for (uint32_t *dst = __edgec_bss_start; dst < __edgec_bss_end; dst++) {
        *dst = 0;
    }
    edgec_semihost_exit(main(0, 0));
}
