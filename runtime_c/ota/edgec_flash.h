/*
 * edgec_flash.h - the flash HAL the OTA receiver (edgec_ota.c) writes the adapter region through.
 *
 * API
 *   int edgec_flash_erase_page(uint32_t offset);
 *       Erase the page at `offset` to 0xFF. offset: a multiple of the configuration's page_bytes.
 *   int edgec_flash_write(uint32_t offset, const uint8_t *data, uint32_t len);
 *       Program `len` bytes at `offset`; offset and len are multiples of write_bytes and the units
 *       are erased (the receiver never programs a unit twice between erases).
 *   Both return 0 on success, a negative value on failure (the receiver then returns
 *   EDGEC_OTA_ERR_FLASH). They may block until the operation is done.
 *
 * Offsets are byte offsets from edgec_ota_config_t.region (the start of the .edgec_adapters section:
 * 2 x slots banks, then 2 counter pages). The receiver reads the region directly (memory-mapped),
 * so after a write returns, the region must read back the programmed bytes; the receiver checks
 * this and reports EDGEC_OTA_ERR_FLASH otherwise.
 *
 * Power loss: the receiver only assumes that an interrupted erase leaves that page undefined and an
 * interrupted write leaves the units it was programming undefined ("torn"); everything else keeps
 * its contents (docs/ota-format.md, "Device storage").
 *
 * Implementations: a board with the region in real flash provides both functions with its flash
 * controller (unlock, program, wait, lock; XIP caches invalidated if any). Host and QEMU builds,
 * where the region is ordinary writable memory, compile edgec_flash_mem.c with EDGEC_FLASH_MEM
 * defined (see there why it is opt-in).
 */
#ifndef EDGEC_FLASH_H
#define EDGEC_FLASH_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int edgec_flash_erase_page(uint32_t offset);
int edgec_flash_write(uint32_t offset, const uint8_t *data, uint32_t len);

#ifdef __cplusplus
}
#endif

#endif /* EDGEC_FLASH_H */
