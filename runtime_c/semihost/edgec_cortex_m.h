/*
 * edgec_cortex_m.h - the start-up pieces that the Armv7-M / Armv8-M Mainline boards' startup.c share
 * (runtime_c/boards/mps2_an386, netduinoplus2, mps2_an505, mps3_an547). Include it once, from the board's
 * startup.c; the board defines edgec_reset_handler() and edgec_fault_exit(code) (which may call the helpers
 * below), or, on an Armv8-M board in Secure state, defines EDGEC_ARMV8M_SECURE_STARTUP and takes both from
 * here. Options, defined before the include:
 *   EDGEC_EXT_IRQS     external interrupt entries in the vector table (default 32);
 *   EDGEC_SECUREFAULT  the SecureFault entry goes to the HardFault stub (Armv8-M Security Extension).
 *
 * Faults exit QEMU with a distinct code (enum edgec_exit_code) and a one-line message instead of hanging
 * until the timeout.
 */
#ifndef EDGEC_CORTEX_M_H
#define EDGEC_CORTEX_M_H

#include <stddef.h>
#include <stdint.h>

#include "edgec_semihost.h"

void edgec_reset_handler(void);
void edgec_fault_exit(int code);

/* Linker-script symbols (the board's link.ld); only their addresses are meaningful. */
extern uint32_t __edgec_stack_bottom[], __edgec_stack_top[];

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define SCB_CFSR (*(volatile uint32_t *)0xE000ED28u)
#define SCB_HFSR (*(volatile uint32_t *)0xE000ED2Cu)
#define SCB_MMFAR (*(volatile uint32_t *)0xE000ED34u)
#define SCB_BFAR (*(volatile uint32_t *)0xE000ED38u)

/* Full access to CP10/CP11 before any floating-point or MVE instruction runs (on Armv8.1-M the same two
 * fields enable both). */
static inline void edgec_fpu_enable(void)
{
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    SCB_CPACR |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
}

/* PMSAv7 stack guard (Armv7-M): an MPU region with no access over the lowest EDGEC_STACK_GUARD_BYTES of the
 * stack (at the bottom of RAM) makes the first overflowing push fault. */
#define EDGEC_STACK_GUARD_BYTES 32u /* smallest PMSAv7 region */

static inline void edgec_mpu_stack_guard(void)
{
    volatile uint32_t *const mpu = (volatile uint32_t *)0xE000ED90u; /* TYPE, CTRL, RNR, RBAR, RASR */
    if (((mpu[0] >> 8) & 0xFFu) == 0) {
        return; /* no MPU */
    }
    mpu[2] = 0;
    mpu[3] = (uint32_t)(uintptr_t)__edgec_stack_bottom; /* RAM origin: aligned to the size */
    /* XN, AP = no access, SIZE = log2(32) - 1, enable. */
    mpu[4] = (1u << 28) | (0u << 24) | (4u << 1) | 1u;
    /* PRIVDEFENA: the default memory map still applies everywhere else. */
    mpu[1] = (1u << 2) | 1u;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
}

/* Whether CFSR shows the PMSAv7 guard hit: a MemManage stacking error, or a data access violation inside the
 * guard region. */
static inline int edgec_mpu_guard_hit(uint32_t cfsr)
{
    const uint32_t guard = (uint32_t)(uintptr_t)__edgec_stack_bottom;
    return (cfsr & 0x10u) != 0 || ((cfsr & 0x82u) == 0x82u && SCB_MMFAR - guard < EDGEC_STACK_GUARD_BYTES);
}

/* The fault message (name, CFSR, HFSR and, if extra_label is not NULL, one more register), then the exit. */
static inline void edgec_fault_report(int code, const char *extra_label, uint32_t extra)
{
    static const char *const names[] = {"NMI", "HardFault", "MemManage", "BusFault", "UsageFault",
                                        "unexpected interrupt", "stack overflow"};
    edgec_semihost_write0("edgec firmware fault: ");
    edgec_semihost_write0(names[code - EDGEC_EXIT_NMI]);
    edgec_semihost_write_hex(" CFSR=", SCB_CFSR);
    edgec_semihost_write_hex(" HFSR=", SCB_HFSR);
    if (extra_label != NULL) {
        edgec_semihost_write_hex(extra_label, extra);
    }
    edgec_semihost_write0("\n");
    edgec_semihost_exit(code);
}

#ifdef EDGEC_ARMV8M_SECURE_STARTUP
/* Armv8-M in Secure state (no Non-secure image: every register written here is the Secure bank). Stack
 * guard: the stack limit register. With MSPLIM at the bottom of the stack the first push below it raises a
 * UsageFault (UFSR.STKOF, escalated to HardFault) before anything is written. (The Armv8-M MPU has another
 * register layout than PMSAv7's.) */
#define EDGEC_SECUREFAULT 1
#define SAU_SFSR (*(volatile uint32_t *)0xE000EDE4u)
#define CFSR_STKOF (1u << 20) /* UsageFault: stack limit violation */

void edgec_reset_handler(void)
{
    /* The stack limit first: everything after this, C code included, is checked. */
    __asm__ volatile("msr msplim, %0" ::"r"(__edgec_stack_bottom) : "memory");
    edgec_fpu_enable();
    edgec_firmware_start();
}

/* Called by the fault stubs on a fresh stack. */
void edgec_fault_exit(int code)
{
    edgec_fault_report((SCB_CFSR & CFSR_STKOF) != 0 ? EDGEC_EXIT_STACK_OVERFLOW : code, " SFSR=", SAU_SFSR);
}
#endif

/* A fault may come from a stack overflow, so SP can point at unmapped memory: reset SP to the top of the
 * stack in asm before running any C code (which might push). */
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

#ifndef EDGEC_EXT_IRQS
#define EDGEC_EXT_IRQS 32
#endif

/* Vector table: initial SP, then handlers; external interrupts are never enabled, so a stray one exits
 * cleanly. Placed at the address the core boots from by the board's link.ld (.edgec_vectors). */
__attribute__((section(".edgec_vectors"), used)) static const uintptr_t vectors[16 + EDGEC_EXT_IRQS] = {
    (uintptr_t)__edgec_stack_top,
    (uintptr_t)edgec_reset_handler,
    (uintptr_t)nmi_handler,
    (uintptr_t)hardfault_handler,
    (uintptr_t)memmanage_handler,
    (uintptr_t)busfault_handler,
    (uintptr_t)usagefault_handler,
#ifdef EDGEC_SECUREFAULT
    (uintptr_t)hardfault_handler, /* SecureFault: reported as a HardFault (SFSR in the message) */
#else
    0, /* reserved */
#endif
    0, 0, 0,                      /* reserved */
    (uintptr_t)default_handler,   /* SVCall */
    (uintptr_t)default_handler,   /* DebugMonitor */
    0,                            /* reserved */
    (uintptr_t)default_handler,   /* PendSV */
    (uintptr_t)default_handler,   /* SysTick */
    [16 ... 16 + EDGEC_EXT_IRQS - 1] = (uintptr_t)default_handler,
};

#endif /* EDGEC_CORTEX_M_H */
