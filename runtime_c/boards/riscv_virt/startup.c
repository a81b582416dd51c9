/*
 * startup.c - reset and trap handling for QEMU's riscv32 virt board (ESP32-C3 stand-in: RV32IMC, M-mode,
 * `-bios none`).
 *
 * Reset (edgec_start, at 0x80000000 where QEMU jumps): set gp and sp, point mtvec at the trap entry, then
 * in C arm the stack guard, copy .data from flash, zero .bss, run main(), exit via semihosting.
 * Traps: exit QEMU with a distinct code (enum edgec_exit_code) and a one-line message (mcause, mepc,
 * mtval) instead of looping in the trap vector until the timeout.
 *
 * Stack guard: the stack sits at the bottom of RAM, just above the flash region, which QEMU maps as
 * writable RAM. A locked PMP region (locked entries bind M-mode too) with no access from the end of the
 * firmware image up to the bottom of the stack makes an overflowing access fault, however large the
 * frame that overflows, instead of silently writing below the stack.
 */
#include <stdint.h>

#include "edgec_semihost.h"

void edgec_reset_handler(void);
void edgec_trap_exit(void);

/* Linker-script symbols (link.ld); only their addresses are meaningful. */
extern uint32_t __edgec_stack_bottom[], __edgec_stack_top[];
extern uint32_t __edgec_image_end[];

#define PMP_L 0x80u   /* locked: applies to M-mode */
#define PMP_TOR 0x08u /* address matching: top of range, [pmpaddr(i-1), pmpaddr(i)) */

/* Entry: QEMU's reset vector jumps here with a0 = hart id, a1 = device tree. gp must be loaded without
 * relaxation (the linker would otherwise turn `la gp` into an access relative to gp itself). mtvec is
 * set first so that even a fault in the C startup exits cleanly; its target must be 4-byte aligned.
 * The trap entry resets sp to the top of the stack before any C code runs: a trap may come from a stack
 * overflow, so sp can point below the stack. */
__asm__(".section .text.edgec_start, \"ax\", @progbits\n"
        ".globl edgec_start\n"
        "edgec_start:\n"
        "    .option push\n"
        "    .option norelax\n"
        "    la gp, __global_pointer$\n"
        "    .option pop\n"
        "    la sp, __edgec_stack_top\n"
        "    la t0, edgec_trap_entry\n"
        "    csrw mtvec, t0\n"
        "    j edgec_reset_handler\n"
        "\n"
        ".balign 4\n"
        "edgec_trap_entry:\n"
        "    la sp, __edgec_stack_top\n"
        "    j edgec_trap_exit\n"
        ".text\n");

static void stack_guard_enable(void)
{
    /* Entry 0 (off) gives the bottom, entry 1 (TOR, locked, no R/W/X) the region [image end, stack
     * bottom). pmpaddr registers hold address bits 33..2; link.ld aligns both symbols to 4 KB pages. */
    uint32_t bottom = (uint32_t)(uintptr_t)__edgec_image_end >> 2;
    uint32_t top = (uint32_t)(uintptr_t)__edgec_stack_bottom >> 2;
    __asm__ volatile("csrw pmpaddr0, %0" ::"r"(bottom));
    __asm__ volatile("csrw pmpaddr1, %0" ::"r"(top));
    __asm__ volatile("csrw pmpcfg0, %0" ::"r"((PMP_L | PMP_TOR) << 8));
}

void edgec_reset_handler(void)
{
    stack_guard_enable();
    edgec_firmware_start();
}

static const char *cause_name(uint32_t cause)
{
    static const char *const names[] = {
        "instruction address misaligned", "instruction access fault", "illegal instruction", "breakpoint",
        "load address misaligned", "load access fault", "store address misaligned", "store access fault",
        "ecall from U-mode", "ecall from S-mode", "reserved", "ecall from M-mode",
        "instruction page fault", "load page fault", "reserved", "store page fault"};
    return cause < sizeof names / sizeof names[0] ? names[cause] : "reserved";
}

/* Reached from edgec_trap_entry on a fresh stack; never returns. */
void edgec_trap_exit(void)
{
    uint32_t mcause, mepc, mtval;
    __asm__ volatile("csrr %0, mcause" : "=r"(mcause));
    __asm__ volatile("csrr %0, mepc" : "=r"(mepc));
    __asm__ volatile("csrr %0, mtval" : "=r"(mtval));
    uint32_t image_end = (uint32_t)(uintptr_t)__edgec_image_end;
    uint32_t stack_bottom = (uint32_t)(uintptr_t)__edgec_stack_bottom;
    int code = EDGEC_EXIT_TRAP;
    const char *what;
    if ((mcause >> 31) != 0) {
        code = EDGEC_EXIT_UNEXPECTED_IRQ;
        what = "unexpected interrupt";
    } else if ((mcause == 5u || mcause == 7u) && mtval >= image_end && mtval < stack_bottom) {
        code = EDGEC_EXIT_STACK_OVERFLOW;
        what = "stack overflow";
    } else {
        what = cause_name(mcause);
    }
    edgec_semihost_write0("edgec firmware fault: ");
    edgec_semihost_write0(what);
    edgec_semihost_write_hex(" mcause=", mcause);
    edgec_semihost_write_hex(" mepc=", mepc);
    edgec_semihost_write_hex(" mtval=", mtval);
    edgec_semihost_write0("\n");
    edgec_semihost_exit(code);
}
