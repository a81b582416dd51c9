/*
 * ota_qemu.c - the OTA receiver on cortex-m4 under QEMU (mps2-an386), with the RAM flash HAL
 * (edgec_flash_mem.c, EDGEC_FLASH_MEM): the region is a non-const array in section .edgec_adapters (the
 * board's "flash" at 0x0, writable memory in QEMU), as in generated projects.
 *
 * ota_qemu_data.h (written by tests/test_ota_device.py): the configuration (as ota_cfg.h) plus
 *   REGION_BYTES and REGION_WORDS (the initial region, int32 words), PATCH[] (a valid patch of slot 0)
 *   and NEW_IMAGE[] (its tables as a bank image).
 * Exit status 0 and "OTA OK" on the semihosting console, else 1 and the failing step.
 */
#include <stdint.h>
#include <string.h>

#include "edgec_flash.h"
#include "edgec_ota.h"
#include "edgec_semihost.h"
#include "ota_qemu_data.h"

int32_t edgec_adapter_banks[REGION_BYTES / 4]
    __attribute__((section(".edgec_adapters"), aligned(CFG_PAGE))) = REGION_WORDS;

const edgec_ota_config_t edgec_ota_config = {cfg_base, cfg_layout, CFG_SLOTS, CFG_BANK, CFG_PAGE, CFG_WB,
                                             CFG_LAYERS, cfg_layers, CFG_KEYS, cfg_keys,
                                             (const uint8_t *)edgec_adapter_banks};

static int32_t slot_state[2 * CFG_SLOTS];

static int fail(const char *step)
{
    edgec_semihost_write0("OTA FAILED at ");
    edgec_semihost_write0(step);
    edgec_semihost_write0("\n");
    return 1;
}

static int apply(const uint8_t *p, uint32_t len, uint32_t chunk)
{
    uint32_t off;
    int r = edgec_ota_begin();
    for (off = 0; r == 0 && off < len; off += chunk) {
        r = edgec_ota_write(p + off, len - off < chunk ? len - off : chunk);
    }
    return r != 0 ? r : edgec_ota_finish();
}

static int tables_equal(int bank)
{
    const uint8_t *b = (const uint8_t *)edgec_adapter_banks + (uint32_t)bank * CFG_BANK;
    uint32_t i;
    for (i = 0; i < CFG_LAYERS; i++) {
        const edgec_ota_layer_t *l = &cfg_layers[i];
        if (memcmp(b + l->a_offset, NEW_IMAGE + l->a_offset, l->rank * l->k) != 0 ||
            memcmp(b + l->b_offset, NEW_IMAGE + l->b_offset, l->oc * l->rank) != 0 ||
            memcmp(b + l->m_offset, NEW_IMAGE + l->m_offset, 8u * l->oc) != 0) {
            return 0;
        }
    }
    return 1;
}

int main(int argc, char **argv)
{
    static uint8_t bad[sizeof(PATCH)];
    (void)argc;
    (void)argv;
    if (edgec_ota_boot(&edgec_ota_config, slot_state) != 0 || edgec_ota_slot_bank(0) != 0) {
        return fail("boot");
    }
    memcpy(bad, PATCH, sizeof(PATCH));
    bad[200] ^= 1u;
    if (apply(bad, sizeof(bad), 64) != EDGEC_OTA_ERR_DIGEST || edgec_ota_slot_bank(0) != 0) {
        return fail("tampered patch");
    }
    if (apply(PATCH, sizeof(PATCH), 7) != 0 || edgec_ota_slot_bank(0) != 1 ||
        slot_state[1] != (int32_t)CFG_BANK || !tables_equal(1)) {
        return fail("apply");
    }
    if (edgec_ota_confirm() != 0) {
        return fail("confirm");
    }
    if (edgec_ota_boot(&edgec_ota_config, slot_state) != 0 || edgec_ota_slot_bank(0) != 1 || !tables_equal(1) ||
        apply(PATCH, sizeof(PATCH), 1000) != EDGEC_OTA_ERR_COUNTER) {
        return fail("reboot");
    }
    edgec_semihost_write0("OTA OK\n");
    return 0;
}
