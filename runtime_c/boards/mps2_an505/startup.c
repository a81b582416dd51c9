/*
 * startup.c - reset and fault handling for QEMU mps2-an505 (Cortex-M33, FPv5-SP-D16, Secure state).
 * Adapted from mps2_an386 for Armv8-M Mainline.
 *
 * Reset: enable the FPU, set the stack limit, copy .data from flash, zero .bss, run main(), exit via
 * semihosting. The core boots Secure and stays there (no Non-secure image): every register written
 * here is the Secure bank.
 * Faults: exit QEMU with a distinct code (enum edgec_exit_code) and a one-line message
 * instead of hanging until the timeout.
 *
 * Stack guard: the stack sits at the bottom of RAM. Armv8-M has a stack limit register: with MSPLIM at
 * the bottom of the stack, the first push below it raises a UsageFault (UFSR.STKOF, escalated to
 * HardFault) before anything is written. (The an386 board programs a PMSAv7 MPU region instead; the
 * Armv8-M MPU has a different register layout.)
 */
#include <stdint.h>

#include "edgec_semihost.h"

void edgec_reset_handler(void);
void edgec_fault_exit(int code);

/* Linker-script symbols (link.ld); only their addresses are meaningful. */
extern uint32_t __edgec_stack_bottom[], __edgec_stack_top[];

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define SCB_CFSR (*(volatile uint32_t *)0xE000ED28u)
#define SCB_HFSR (*(volatile uint32_t *)0xE000ED2Cu)
#define SAU_SFSR (*(volatile uint32_t *)0xE000EDE4u)
#define CFSR_STKOF (1u << 20) /* UsageFault: stack limit violation */

void edgec_reset_handler(void)
{
    /* The stack limit first: everything after this, C code included, is checked. */
    __asm__ volatile("msr msplim, %0" ::"r"(__edgec_stack_bottom) : "memory");
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    /* Full access to CP10/CP11 before any floating-point instruction runs. */
    SCB_CPACR |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    edgec_firmware_start();
}

/* Called by the fault stubs on a fresh stack. */
void edgec_fault_exit(int code)
{
    static const char *const names[] = {"NMI", "HardFault", "MemManage", "BusFault", "UsageFault",
                                        "unexpected interrupt", "stack overflow"};
    if ((SCB_CFSR & CFSR_STKOF) != 0) {
        code = EDGEC_EXIT_STACK_OVERFLOW;
    }
    edgec_semihost_write0("edgec firmware fault: ");
    edgec_semihost_write0(names[code - EDGEC_EXIT_NMI]);
    edgec_semihost_write_hex(" CFSR=", SCB_CFSR);
    edgec_semihost_write_hex(" HFSR=", SCB_HFSR);
    edgec_semihost_write_hex(" SFSR=", SAU_SFSR);
    edgec_semihost_write0("\n");
    edgec_semihost_exit(code);
}

/* A fault may come from a stack overflow: reset SP to the top of the stack in asm before running any
 * C code (which might push). */
#define EDGEC_FAULT_STUB(name, code)                                                               \
    __attribute__((naked)) static void name(void)                                                  \
    {                                                                                              \
        __asm__ volatile("ldr r0, =__edgec_stack_top\n\t"                                          \
                         "mov sp, r0\n\t"                                                          \
                         "movs r0, %0\n\t"                                                         \
                         "b edgec_fault_exit" ::"i"(code));                                        \
    }

EDGEC_FAULT_STUB(nmi_handler, EDGEC_EXIT_NMI)
EDGEC_FAULT_STUB(hardfault_handler, EDGEC_EXIT_HARDFAULT)
EDGEC_FAULT_STUB(memmanage_handler, EDGEC_EXIT_MEMMANAGE)
EDGEC_FAULT_STUB(busfault_handler, EDGEC_EXIT_BUSFAULT)
EDGEC_FAULT_STUB(usagefault_handler, EDGEC_EXIT_USAGEFAULT)
EDGEC_FAULT_STUB(default_handler, EDGEC_EXIT_UNEXPECTED_IRQ)

/* External interrupts are never enabled; 32 entries make a stray one exit cleanly. */
#define EDGEC_X4(h) h, h, h, h
#define EDGEC_X32(h) EDGEC_X4(h), EDGEC_X4(h), EDGEC_X4(h), EDGEC_X4(h), \
                     EDGEC_X4(h), EDGEC_X4(h), EDGEC_X4(h), EDGEC_X4(h)

/* Vector table: initial SP, then handlers. Placed at 0x10000000 by link.ld (.edgec_vectors). */
__attribute__((section(".edgec_vectors"), used)) static const uintptr_t vectors[16 + 32] = {
    (uintptr_t)__edgec_stack_top,
    (uintptr_t)edgec_reset_handler,
    (uintptr_t)nmi_handler,
    (uintptr_t)hardfault_handler,
    (uintptr_t)memmanage_handler,
    (uintptr_t)busfault_handler,
    (uintptr_t)usagefault_handler,
    (uintptr_t)hardfault_handler,      /* SecureFault: reported as a HardFault (SFSR in the message) */
    0, 0, 0,                           /* reserved */
    (uintptr_t)default_handler,        /* SVCall */
    (uintptr_t)default_handler,        /* DebugMonitor */
    0,                                 /* reserved */
    (uintptr_t)default_handler,        /* PendSV */
    (uintptr_t)default_handler,        /* SysTick */
    EDGEC_X32((uintptr_t)default_handler),
};
