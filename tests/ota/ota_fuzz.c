/*
 * ota_fuzz.c - libFuzzer target for the OTA receiver (built by tests/test_ota_device.py with
 * clang -fsanitize=fuzzer,address,undefined and the same ota_cfg.h as ota_driver.c).
 *
 * Each input is fed as a patch, in chunks of varying size, to a device whose region is reset to the image in
 * $OTA_FUZZ_REGION. Only the valid patches listed in $OTA_FUZZ_VALID (a file of concatenated patches, each
 * preceded by its 4-byte little-endian length) may be accepted; any other accepted input, or any change to
 * the active bank, slot state or counter pages after a rejection, aborts (a crash for libFuzzer).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgec_flash.h"
#include "edgec_ota.h"
#include "ota_cfg.h"

#define REGION_BYTES (2u * CFG_SLOTS * CFG_BANK + 2u * CFG_PAGE)

static uint8_t region[REGION_BYTES];
static uint8_t initial[REGION_BYTES];
static uint8_t after_boot[REGION_BYTES];
static int32_t slot_state[2 * CFG_SLOTS];
static int32_t state_after_boot[2 * CFG_SLOTS];
static int occupied[CFG_SLOTS];
static uint8_t *valid;
static long valid_bytes;

const edgec_ota_config_t edgec_ota_config = {cfg_base, cfg_layout, CFG_SLOTS, CFG_BANK, CFG_PAGE, CFG_WB,
                                             CFG_LAYERS, cfg_layers, CFG_KEYS, cfg_keys, region};

int edgec_flash_erase_page(uint32_t offset)
{
    if (offset % CFG_PAGE != 0u || offset >= REGION_BYTES) {
        abort();
    }
    memset(region + offset, 0xFF, CFG_PAGE);
    return 0;
}

int edgec_flash_write(uint32_t offset, const uint8_t *data, uint32_t len)
{
    uint32_t i;
    if (offset % CFG_WB != 0u || len % CFG_WB != 0u || offset > REGION_BYTES || len > REGION_BYTES - offset) {
        abort();
    }
    for (i = 0; i < len; i++) {
        region[offset + i] &= data[i];
    }
    return 0;
}

static uint8_t *read_file(const char *path, long *size)
{
    FILE *f = path ? fopen(path, "rb") : NULL;
    uint8_t *buf;
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (*size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "ota_fuzz: cannot read %s\n", path ? path : "(unset)");
        exit(2);
    }
    buf = malloc((size_t)*size + 1u);
    if (buf == NULL || fread(buf, 1, (size_t)*size, f) != (size_t)*size) {
        exit(2);
    }
    fclose(f);
    return buf;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    long size;
    uint8_t *img = read_file(getenv("OTA_FUZZ_REGION"), &size);
    (void)argc;
    (void)argv;
    if (size != (long)REGION_BYTES) {
        fprintf(stderr, "ota_fuzz: region image has %ld bytes, expected %u\n", size, (unsigned)REGION_BYTES);
        exit(2);
    }
    memcpy(initial, img, REGION_BYTES);
    free(img);
    valid = read_file(getenv("OTA_FUZZ_VALID"), &valid_bytes);
    memcpy(region, initial, REGION_BYTES);
    if (edgec_ota_boot(&edgec_ota_config, slot_state) != EDGEC_OTA_OK) {
        exit(2);
    }
    memcpy(after_boot, region, REGION_BYTES);
    memcpy(state_after_boot, slot_state, sizeof(slot_state));
    for (size = 0; size < CFG_SLOTS; size++) {
        occupied[size] = edgec_ota_slot_bank((int)size) >= 0;
    }
    return 0;
}

static int is_valid(const uint8_t *data, size_t size)
{
    long off = 0;
    while (off + 4 <= valid_bytes) {
        uint32_t n = (uint32_t)valid[off] | (uint32_t)valid[off + 1] << 8 | (uint32_t)valid[off + 2] << 16 |
                     (uint32_t)valid[off + 3] << 24;
        if (n == size && memcmp(valid + off + 4, data, size) == 0) {
            return 1;
        }
        off += 4 + (long)n;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0, step = 1;
    int rc, s;
    memcpy(region, after_boot, REGION_BYTES);
    if (edgec_ota_boot(&edgec_ota_config, slot_state) != EDGEC_OTA_OK) {
        abort();
    }
    rc = edgec_ota_begin();
    while (rc == EDGEC_OTA_OK && off < size) {
        size_t n = size - off < step ? size - off : step;
        rc = edgec_ota_write(data + off, n);
        off += n;
        step = step * 3u % 97u + 1u; /* 1, 4, 13, 40, 24, ...: chunks of many sizes */
    }
    if (rc == EDGEC_OTA_OK) {
        rc = edgec_ota_finish();
    }
    if (rc == EDGEC_OTA_OK) {
        if (!is_valid(data, size)) {
            fprintf(stderr, "ota_fuzz: accepted a patch that is not one of the valid ones\n");
            abort();
        }
        return 0;
    }
    /* Rejected: every slot with an adapter still runs its bank, whose tables and metadata are untouched, and
     * the counter pages are as they were (an empty slot's banks hold nothing to protect). */
    for (s = 0; s < CFG_SLOTS; s++) {
        uint32_t bank = (uint32_t)state_after_boot[2 * s + 1];
        if (!occupied[s]) {
            continue;
        }
        if (slot_state[2 * s + 1] != state_after_boot[2 * s + 1] ||
            memcmp(region + bank, after_boot + bank, CFG_BANK) != 0) {
            fprintf(stderr, "ota_fuzz: a rejected patch changed slot %d\n", s);
            abort();
        }
    }
    if (memcmp(region + 2u * CFG_SLOTS * CFG_BANK, after_boot + 2u * CFG_SLOTS * CFG_BANK, 2u * CFG_PAGE) != 0) {
        fprintf(stderr, "ota_fuzz: a rejected patch changed the counter pages\n");
        abort();
    }
    return 0;
}
