/*
 * startup.c - reset and fault handling for QEMU mps2-an386 (Cortex-M4F); also cortex-m7 on mps2-an500, the
 * same memory map. The exception side (fault stubs, vector table, message) is edgec_cortex_m.h's.
 *
 * Reset: enable the FPU, arm the stack guard, copy .data from flash, zero .bss, run main(), exit via
 * semihosting.
 *
 * Stack guard: the stack sits at the bottom of RAM, but QEMU maps the space below RAM as
 * read-as-zero/write-ignored, so an overflow alone would not fault: the PMSAv7 MPU guard region makes the
 * first overflowing push fault.
 */
#include "edgec_cortex_m.h"

void edgec_reset_handler(void)
{
    edgec_fpu_enable();
    edgec_mpu_stack_guard();
    edgec_firmware_start();
}

/* Called by the fault stubs on a fresh stack. */
void edgec_fault_exit(int code)
{
    edgec_fault_report(edgec_mpu_guard_hit(SCB_CFSR) ? EDGEC_EXIT_STACK_OVERFLOW : code, NULL, 0);
}
