/*
 * startup.c - reset and fault handling for QEMU mps2-an505 (Cortex-M33, FPv5-SP-D16, Secure state): edgec_cortex_m.h's Armv8-M Secure start-up (the
 * FPU enabled, MSPLIM as the stack guard, .data copied, .bss zeroed, main(), exit via semihosting) and its
 * exception side. The board's own part is its link.ld.
 */
#define EDGEC_ARMV8M_SECURE_STARTUP
#include "edgec_cortex_m.h"
