/*
 * startup.c - reset and fault handling for QEMU netduinoplus2 (STM32F405RG, Cortex-M4F): as mps2_an386
 * (same core, same PMSAv7 MPU and fault registers); the exception side is edgec_cortex_m.h's.
 *
 * Reset: enable the FPU, arm the stack guard, copy .data from flash, zero .bss, run main(), exit via
 * semihosting.
 *
 * Stack guard: the stack sits at the bottom of SRAM (0x20000000). Below it QEMU maps nothing and the chip
 * has reserved space and its system memory (boot ROM, OTP), so what an overflow does would depend on the
 * address. The PMSAv7 MPU guard region makes the first overflowing push fault the same way on both.
 */
/* One vector for each of the STM32F405's 82 interrupt lines. */
#define EDGEC_EXT_IRQS 82
#include "edgec_cortex_m.h"

#define STACK_BELOW_BYTES 4096u /* a bus error this close below the stack is an overflow */

void edgec_reset_handler(void)
{
    edgec_fpu_enable();
    edgec_mpu_stack_guard();
    edgec_firmware_start();
}

/* Called by the fault stubs on a fresh stack. */
void edgec_fault_exit(int code)
{
    const uint32_t cfsr = SCB_CFSR, guard = (uint32_t)(uintptr_t)__edgec_stack_bottom;
    /* The guard region, or, for a stack frame larger than the guard that skips it and hits the unmapped space
     * below SRAM: a BusFault stacking error, or a precise bus error just below the stack. */
    if (edgec_mpu_guard_hit(cfsr) || (cfsr & 0x1000u) != 0 ||
        ((cfsr & 0x8200u) == 0x8200u && guard - SCB_BFAR - 1u < STACK_BELOW_BYTES)) {
        code = EDGEC_EXIT_STACK_OVERFLOW;
    }
    edgec_fault_report(code, NULL, 0);
}
