/*
 * edgec_npu.h - edgec's bridge to Arm's Ethos-U NPU driver (ethos-u-core-driver), for models that Vela
 * partitioned for an Ethos-U NPU (targets ethos-u55-*; docs/npu.md).
 *
 * edgec_init() calls edgec_npu_init() (ethosu_init, once); edgec_run() calls edgec_npu_invoke() for every
 * NPU partition, with the partition's command stream, the read-only blob (weights, flash) and the arena,
 * and returns EDGEC_ERR_NPU if any of them failed. No malloc: this file also provides the driver's mutex and
 * semaphore hooks (which default to malloc in the driver) over static storage, for bare-metal use.
 *
 * Board settings (compile definitions):
 *   EDGEC_NPU_BASE_ADDRESS  the NPU's register block (default 0x48102000: Ethos-U55 on Corstone-300 /
 *                           MPS3 AN547, non-secure alias; use 0x58102000 when running Secure).
 *   EDGEC_NPU_SECURE, EDGEC_NPU_PRIVILEGED  passed to ethosu_init (default 1 and 1).
 * The NPU interrupt must call edgec_npu_irq_handler() (Corstone-300: IRQ 56), e.g. from your vector table.
 * With an RTOS, define EDGEC_NPU_NO_OS_HOOKS and let the RTOS port of the driver provide the hooks.
 */
#ifndef EDGEC_NPU_H
#define EDGEC_NPU_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ethosu_driver;

/* Initialize the driver once (later calls return the first result). 0 on success. */
int edgec_npu_init(void);

/* Run one NPU partition: base_addr[0] = blob, [1] = scratch, [2] = scratch_fast (Vela's COP1 regions).
 * Returns 0 or the driver's negative error code; an error is also kept for edgec_npu_end(). */
int edgec_npu_invoke(const uint8_t *command_stream, int32_t command_stream_bytes, const uint8_t *read_only,
                     int32_t read_only_bytes, uint8_t *scratch, int32_t scratch_bytes, uint8_t *scratch_fast,
                     int32_t scratch_fast_bytes);

/* Bracket one inference: begin clears the error, end returns the first error of the inference (0 = none).
 * After an error the remaining partitions of that inference are skipped. */
void edgec_npu_begin(void);
int edgec_npu_end(void);

/* The driver instance (e.g. for ethosu_get_hw_info or PMU counters). */
struct ethosu_driver *edgec_npu_driver(void);

/* Call from the NPU's interrupt handler. */
void edgec_npu_irq_handler(void);

#ifdef __cplusplus
}
#endif

#endif /* EDGEC_NPU_H */
