/*
 * edgec_semihost.h - minimal ARM semihosting for edgec firmware (Cortex-M: `bkpt 0xAB`; RISC-V: the
 * `slli x0, x0, 0x1f; ebreak; srai x0, x0, 7` sequence, which uses the same operations).
 *
 * Lets firmware running under QEMU (`-semihosting-config enable=on,target=native`) or a debug
 * probe read/write host files, print messages and exit with a status code. Without a debugger
 * or semihosting-enabled QEMU attached, any call here stops the CPU: only link it into test
 * firmware. No heap, no libc dependency.
 *
 * The exit codes below are shared by the harness (host and target) and the board startup code,
 * so that the Python runner can tell errors apart by the process exit status.
 */
#ifndef EDGEC_SEMIHOST_H
#define EDGEC_SEMIHOST_H

#include <stddef.h>
#include <stdint.h>

/* Exit codes of the edgec harness and board fault handlers. */
enum edgec_exit_code {
    EDGEC_EXIT_OK = 0,
    EDGEC_EXIT_USAGE = 2,          /* host: wrong command line */
    EDGEC_EXIT_OPEN_INPUT = 3,     /* cannot open the input file */
    EDGEC_EXIT_OPEN_OUTPUT = 4,    /* cannot open/create the output file */
    EDGEC_EXIT_INPUT_SIZE = 5,     /* input file size is not a multiple of the record size */
    EDGEC_EXIT_READ = 6,           /* short read from the input file */
    EDGEC_EXIT_WRITE = 7,          /* short write to the output file */
    EDGEC_EXIT_INIT = 8,           /* edgec_init() returned non-zero */
    EDGEC_EXIT_RUN = 9,            /* edgec_run() returned non-zero */
    EDGEC_EXIT_BAD_MODEL = 10,     /* NULL input/output pointer or zero-sized record */
    EDGEC_EXIT_NMI = 90,           /* board fault handlers */
    EDGEC_EXIT_HARDFAULT = 91,
    EDGEC_EXIT_MEMMANAGE = 92,
    EDGEC_EXIT_BUSFAULT = 93,
    EDGEC_EXIT_USAGEFAULT = 94,
    EDGEC_EXIT_UNEXPECTED_IRQ = 95,
    EDGEC_EXIT_STACK_OVERFLOW = 96, /* stack guard hit */
    EDGEC_EXIT_TRAP = 97            /* any other CPU exception (RISC-V boards: mcause/mepc/mtval printed) */
};

/* SYS_OPEN modes (ISO C fopen() modes, as numbered by the semihosting spec). */
#define EDGEC_SEMIHOST_MODE_RB 1 /* "rb" */
#define EDGEC_SEMIHOST_MODE_WB 5 /* "wb" */

/* Open a host file; returns a handle >= 0, or -1 on error. */
int edgec_semihost_open(const char *path, int mode);

/* Close a handle; returns 0 on success, -1 on error. */
int edgec_semihost_close(int handle);

/* Read up to len bytes; returns the number of bytes read (less than len at end of file). */
size_t edgec_semihost_read(int handle, void *buf, size_t len);

/* Write len bytes; returns the number of bytes written (less than len on error). */
size_t edgec_semihost_write(int handle, const void *buf, size_t len);

/* Length of an open file in bytes, or -1 on error. */
long edgec_semihost_flen(int handle);

/* Print a NUL-terminated string on the debugger / QEMU console (stderr under QEMU). */
void edgec_semihost_write0(const char *s);

/* Stop the program; QEMU exits with `code` (SYS_EXIT_EXTENDED, ADP_Stopped_ApplicationExit). */
void edgec_semihost_exit(int code) __attribute__((noreturn));

/* Print `label` then `value` as 0x%08x (no printf: fault reports run on a broken stack or heap). */
void edgec_semihost_write_hex(const char *label, uint32_t value);

/* What every board's reset handler ends with, after its own core set-up: copy .data from flash and zero
 * .bss (the linker script's __edgec_data_* / __edgec_bss_* symbols, 4-byte aligned), run main(0, 0) and
 * exit with its code. */
void edgec_firmware_start(void) __attribute__((noreturn));

#endif /* EDGEC_SEMIHOST_H */
