/*
 * edgec_flash_mem.c - the flash HAL (edgec_flash.h) for builds whose adapter region is ordinary writable
 * memory: the host build and QEMU (mps2-an386 maps its "flash" at 0x0 as RAM). Erase sets a page to 0xFF,
 * a write programs with NOR semantics (new = old & data), like real NOR flash.
 *
 * Opt-in: the functions exist only when EDGEC_FLASH_MEM is defined (-DEDGEC_FLASH_MEM for the host and
 * QEMU builds). Without it this file is empty, so a firmware for a real board that forgets its flash
 * driver fails to link ("undefined reference to edgec_flash_write") instead of storing into flash with
 * plain writes (a bus fault, or silently nothing). Weak symbols were not used: a weak default is
 * silently kept when the board's driver sits in a static library that the linker never searches for an
 * already defined symbol, and __attribute__((weak)) is not C99.
 *
 * The region is edgec_ota_config.region (src/adapters.c), declared const because the receiver only reads
 * through it. Casting the const away to write is well defined here: the object it points to,
 * edgec_adapter_banks, is defined without const in OTA builds (modifying an object through a pointer is
 * undefined only when the object itself was defined const, C99 6.7.3p5), and with this HAL it lives in
 * writable memory.
 */
#include "edgec_flash.h"
#include "edgec_ota.h"

#ifdef EDGEC_FLASH_MEM

#include <string.h>

/* Region bytes: 2 banks per slot, then 2 counter pages. */
static uint32_t region_bytes(void)
{
    return (2u * edgec_ota_config.slots * edgec_ota_config.bank_bytes) + 2u * edgec_ota_config.page_bytes;
}

static uint8_t *region(void)
{
    return (uint8_t *)(uintptr_t)edgec_ota_config.region; /* see the comment at the top */
}

int edgec_flash_erase_page(uint32_t offset)
{
    uint32_t page = edgec_ota_config.page_bytes;
    if (page == 0u || offset % page != 0u || offset >= region_bytes()) {
        return -1;
    }
    memset(region() + offset, 0xFF, page);
    return 0;
}

int edgec_flash_write(uint32_t offset, const uint8_t *data, uint32_t len)
{
    uint32_t unit = edgec_ota_config.write_bytes, i;
    uint8_t *p = region() + offset;
    if (data == NULL || unit == 0u || offset % unit != 0u || len % unit != 0u || offset > region_bytes() ||
        len > region_bytes() - offset) {
        return -1;
    }
    for (i = 0; i < len; i++) {
        p[i] &= data[i];
    }
    return 0;
}

#else

typedef int edgec_flash_mem_unused; /* ISO C: a translation unit is not empty */

#endif
