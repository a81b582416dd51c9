/*
 * startup.c - reset and fault handling for QEMU microbit (nRF51822, Cortex-M0, ARMv6-M).
 * Adapted from mps2_an386 for ARMv6-M: no FPU, no MPU, no configurable fault handlers and no fault
 * status registers (CFSR/HFSR/MMFAR do not exist: every fault is a HardFault), Thumb-1 only.
 * Code built for the Cortex-M0+ (-mcpu=cortex-m0plus) runs here unchanged: same ARMv6-M instruction set.
 *
 * Reset: copy .data from flash, zero .bss, run main(), exit via semihosting.
 * Faults: exit QEMU with a distinct code (enum edgec_exit_code) and a one-line message
 * instead of hanging until the timeout.
 *
 * Stack overflow: the stack sits at the bottom of SRAM (0x20000000) and nothing is mapped below it
 * (in QEMU; reserved space on the chip),
 * so the first push past the bottom faults. Without a fault status register, the HardFault handler
 * tells an overflow from other faults by the stack pointer it was entered with: within
 * STACK_OVERFLOW_MARGIN bytes of the bottom of the stack (or below it) means the stack ran out.
 */
#include <stdint.h>

#include "edgec_semihost.h"

void edgec_reset_handler(void);
void edgec_fault_exit(int code, uint32_t sp);

/* Linker-script symbols (link.ld); only their addresses are meaningful. */
extern uint32_t __edgec_stack_bottom[], __edgec_stack_top[];

/* Exception entry pushes 32 bytes; a push of up to 32 more (push {r4-r7, lr} and friends) faults
 * before moving SP. */
#define STACK_OVERFLOW_MARGIN 64u
/* The fault handler's own stack need (put_hex, semihosting blocks) with room to spare. */
#define FRAME_KEEP_BYTES 512

void edgec_reset_handler(void)
{
    edgec_firmware_start();
}

/* Called by the fault stubs on a fresh stack, with the stack pointer the exception was taken with. */
void edgec_fault_exit(int code, uint32_t sp)
{
    static const char *const names[] = {"NMI", "HardFault", "MemManage", "BusFault", "UsageFault",
                                        "unexpected interrupt", "stack overflow"};
    uint32_t bottom = (uint32_t)(uintptr_t)__edgec_stack_bottom;
    uint32_t top = (uint32_t)(uintptr_t)__edgec_stack_top;
    if (code == EDGEC_EXIT_HARDFAULT && sp < bottom + STACK_OVERFLOW_MARGIN) {
        code = EDGEC_EXIT_STACK_OVERFLOW;
    }
    edgec_semihost_write0("edgec firmware fault: ");
    edgec_semihost_write0(names[code - EDGEC_EXIT_NMI]);
    edgec_semihost_write_hex(" SP=", sp);
    /* The exception frame (r0-r3, r12, lr, pc, xPSR), if the stub kept it (enough stack left). */
    if (sp >= bottom + FRAME_KEEP_BYTES && sp + 32u <= top && (sp & 3u) == 0) {
        const uint32_t *frame = (const uint32_t *)(uintptr_t)sp;
        edgec_semihost_write_hex(" PC=", frame[6]);
        edgec_semihost_write_hex(" LR=", frame[5]);
    }
    edgec_semihost_write0("\n");
    edgec_semihost_exit(code);
}

/* A fault may come from a stack overflow, so SP can point at unmapped memory. With less than
 * FRAME_KEEP_BYTES of stack left, the stub resets SP to the top of the stack in asm before running any C
 * code (which might push); otherwise it keeps SP, so the exception frame (PC, LR) stays intact for the
 * message. Thumb-1: `b` reaches only +-2 KB, so the handler is entered through a register. */
#define EDGEC_FAULT_STUB(name, code)                                                               \
    __attribute__((naked)) static void name(void)                                                  \
    {                                                                                              \
        __asm__ volatile("mov r1, sp\n\t"                                                          \
                         "ldr r0, =__edgec_stack_bottom + %c1\n\t"                                 \
                         "cmp r1, r0\n\t"                                                          \
                         "bhs 1f\n\t"                                                              \
                         "ldr r0, =__edgec_stack_top\n\t"                                          \
                         "mov sp, r0\n"                                                            \
                         "1:\n\t"                                                                  \
                         "movs r0, %0\n\t"                                                         \
                         "ldr r2, =edgec_fault_exit\n\t"                                           \
                         "bx r2" ::"i"(code), "i"(FRAME_KEEP_BYTES));                              \
    }

EDGEC_FAULT_STUB(nmi_handler, EDGEC_EXIT_NMI)
EDGEC_FAULT_STUB(hardfault_handler, EDGEC_EXIT_HARDFAULT)
EDGEC_FAULT_STUB(default_handler, EDGEC_EXIT_UNEXPECTED_IRQ)

/* External interrupts are never enabled; all 32 ARMv6-M interrupt lines (the nRF51 uses 26) make a
 * stray one exit cleanly. */
#define EDGEC_X4(h) h, h, h, h
#define EDGEC_X32(h) EDGEC_X4(h), EDGEC_X4(h), EDGEC_X4(h), EDGEC_X4(h), \
                     EDGEC_X4(h), EDGEC_X4(h), EDGEC_X4(h), EDGEC_X4(h)

/* Vector table: initial SP, then handlers. Placed at 0x0 by link.ld (.edgec_vectors). */
__attribute__((section(".edgec_vectors"), used)) static const uintptr_t vectors[16 + 32] = {
    (uintptr_t)__edgec_stack_top,
    (uintptr_t)edgec_reset_handler,
    (uintptr_t)nmi_handler,
    (uintptr_t)hardfault_handler,
    0, 0, 0, 0, 0, 0, 0,               /* reserved (no MemManage/BusFault/UsageFault on ARMv6-M) */
    (uintptr_t)default_handler,        /* SVCall */
    0, 0,                              /* reserved */
    (uintptr_t)default_handler,        /* PendSV */
    (uintptr_t)default_handler,        /* SysTick */
    EDGEC_X32((uintptr_t)default_handler),
};
