/*
 * startup.c - reset and fault handling for QEMU netduinoplus2 (STM32F405RG, Cortex-M4F).
 * Adapted from mps2_an386: same core, same PMSAv7 MPU (8 regions) and fault registers.
 *
 * Reset: enable the FPU, arm the stack guard, copy .data from flash, zero .bss, run main(),
 * exit via semihosting.
 * Faults: exit QEMU with a distinct code (enum edgec_exit_code) and a one-line message
 * instead of hanging until the timeout.
 *
 * Stack guard: the stack sits at the bottom of SRAM (0x20000000). Below it QEMU maps nothing and
 * the chip has reserved space and its system memory (boot ROM, OTP), so what an overflow does
 * would depend on the address. An MPU region with no access over the lowest 32 bytes of the stack
 * makes the first overflowing push fault the same way on both.
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
#define SCB_MMFAR (*(volatile uint32_t *)0xE000ED34u)
#define SCB_BFAR (*(volatile uint32_t *)0xE000ED38u)
#define MPU_TYPE (*(volatile uint32_t *)0xE000ED90u)
#define MPU_CTRL (*(volatile uint32_t *)0xE000ED94u)
#define MPU_RNR (*(volatile uint32_t *)0xE000ED98u)
#define MPU_RBAR (*(volatile uint32_t *)0xE000ED9Cu)
#define MPU_RASR (*(volatile uint32_t *)0xE000EDA0u)
#define STACK_GUARD_BYTES 32u /* smallest PMSAv7 region */
#define STACK_BELOW_BYTES 4096u /* a bus error this close below the stack is an overflow */

static void stack_guard_enable(void)
{
    if (((MPU_TYPE >> 8) & 0xFFu) == 0) {
        return; /* no MPU */
    }
    MPU_RNR = 0;
    MPU_RBAR = (uint32_t)(uintptr_t)__edgec_stack_bottom; /* RAM origin: aligned to the size */
    /* XN, AP = no access, SIZE = log2(32) - 1, enable. */
    MPU_RASR = (1u << 28) | (0u << 24) | (4u << 1) | 1u;
    /* PRIVDEFENA: the default memory map still applies everywhere else. */
    MPU_CTRL = (1u << 2) | 1u;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
}

void edgec_reset_handler(void)
{
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    /* Full access to CP10/CP11 before any floating-point instruction runs. */
    SCB_CPACR |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    stack_guard_enable();
    edgec_firmware_start();
}

/* Called by the fault stubs on a fresh stack. */
void edgec_fault_exit(int code)
{
    static const char *const names[] = {"NMI", "HardFault", "MemManage", "BusFault", "UsageFault",
                                        "unexpected interrupt", "stack overflow"};
    uint32_t cfsr = SCB_CFSR;
    uint32_t guard = (uint32_t)(uintptr_t)__edgec_stack_bottom;
    /* MemManage stacking error, or a data access violation inside the guard region. A stack frame larger
     * than the guard can skip it and hit the unmapped space below SRAM: a BusFault stacking error, or a
     * precise bus error just below the stack. */
    if ((cfsr & 0x10u) != 0 ||
        ((cfsr & 0x82u) == 0x82u && SCB_MMFAR - guard < STACK_GUARD_BYTES) ||
        (cfsr & 0x1000u) != 0 ||
        ((cfsr & 0x8200u) == 0x8200u && guard - SCB_BFAR - 1u < STACK_BELOW_BYTES)) {
        code = EDGEC_EXIT_STACK_OVERFLOW;
    }
    edgec_semihost_write0("edgec firmware fault: ");
    edgec_semihost_write0(names[code - EDGEC_EXIT_NMI]);
    edgec_semihost_write_hex(" CFSR=", SCB_CFSR);
    edgec_semihost_write_hex(" HFSR=", SCB_HFSR);
    edgec_semihost_write0("\n");
    edgec_semihost_exit(code);
}

/* A fault may come from a stack overflow, so SP can point at unmapped memory: reset SP to the
 * top of the stack in asm before running any C code (which might push). */
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

/* External interrupts are never enabled; one entry for each of the STM32F405's 82 interrupt lines
 * makes a stray one exit cleanly. */
#define EDGEC_EXT_IRQS 82
#define EDGEC_X2(h) h, h
#define EDGEC_X4(h) h, h, h, h
#define EDGEC_X16(h) EDGEC_X4(h), EDGEC_X4(h), EDGEC_X4(h), EDGEC_X4(h)
#define EDGEC_X82(h) EDGEC_X16(h), EDGEC_X16(h), EDGEC_X16(h), EDGEC_X16(h), EDGEC_X16(h), EDGEC_X2(h)

/* Vector table: initial SP, then handlers. Placed at the start of flash (0x08000000, seen at 0x0 at
 * reset) by link.ld (.edgec_vectors). */
__attribute__((section(".edgec_vectors"), used)) static const uintptr_t vectors[16 + EDGEC_EXT_IRQS] = {
    (uintptr_t)__edgec_stack_top,
    (uintptr_t)edgec_reset_handler,
    (uintptr_t)nmi_handler,
    (uintptr_t)hardfault_handler,
    (uintptr_t)memmanage_handler,
    (uintptr_t)busfault_handler,
    (uintptr_t)usagefault_handler,
    0, 0, 0, 0,                        /* reserved */
    (uintptr_t)default_handler,        /* SVCall */
    (uintptr_t)default_handler,        /* DebugMonitor */
    0,                                 /* reserved */
    (uintptr_t)default_handler,        /* PendSV */
    (uintptr_t)default_handler,        /* SysTick */
    EDGEC_X82((uintptr_t)default_handler),
};
