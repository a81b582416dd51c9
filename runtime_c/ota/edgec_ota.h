/*
 * edgec_ota.h - device-side receiver of signed LoRA adapter patches (docs/ota-format.md), with A/B slot
 * banks, trial/confirm/rollback and a monotonic security counter per slot.
 *
 * Storage (the .edgec_adapters region, read memory-mapped through cfg->region, written only through
 * edgec_flash.h): banks 2s and 2s+1 belong to slot s (bank b at byte offset b * bank_bytes; tables at
 * the layout offsets, metadata in the bank's last 128 bytes), then two counter pages.
 *
 * Usage
 *   edgec_ota_boot(&edgec_ota_config, edgec_adapter_state);     once at start-up (edgec_init does it)
 *   edgec_ota_begin();
 *   edgec_ota_write(chunk, n); ...                               the patch bytes, any chunking
 *   edgec_ota_finish();                                          verified: the slot runs the new
 *                                                                tables ON TRIAL (RAM only)
 *   ... run the model, then edgec_ota_confirm() or edgec_ota_rollback()
 *       (or edgec_ota_check(healthy, user) to decide with a callback).
 *   A reset before confirm() reverts the trial (edgec_ota_boot writes its revert unit).
 *
 * Sequence rules
 *   - begin() is refused (EDGEC_OTA_ERR_STATE) while a trial is pending: confirm or roll it back first.
 *     A second begin() abandons an unfinished update (its bank has no valid metadata).
 *   - After an error write() and finish() keep returning that error until the next begin().
 *   - No error changes the slot's active bank or slot_state; before finish() succeeds only the
 *     slot's inactive bank is erased and programmed.
 *   - Header checks, in this order, as soon as its 128 bytes arrived: magic, version, flags (the
 *     local-origin bit is refused: only edgec_ota_apply_local's own stream carries it), header size,
 *     reserved fields, name NUL-terminated (FORMAT); base model hash (BASE); layout hash (LAYOUT);
 *     slot (SLOT); record count and payload size against the layout (FORMAT); key id (KEY; not for a
 *     local stream); counter > the slot's floor (COUNTER; = the floor for a local stream). Then the inactive bank
 *     is erased (its last page, which holds the metadata, first). Record headers: layer, tensor,
 *     dtype and dims must equal the layout (LAYOUT; the quantization field is covered by the digest
 *     only). finish(): TRUNCATED, then DIGEST, then SIGNATURE, then the metadata is written.
 *   - The counter floor of slot s is max(stored counter in the counter pages, counters of the
 *     slot's valid confirmed banks).
 *   - The rank in the bank metadata written for a patch is the effective rank of the adapter: the
 *     largest (last non-zero row of A + 1) over the layers (tables are zero-padded to the layout
 *     rank, and the build scales every used row of A to max |.| = 127). Its flags are the header's (0;
 *     bit 0 for a local-origin update).
 *   - Counter pages: with no valid page (a new device), the first confirm() writes page 0 as a
 *     compaction would (one entry per slot, then the header with sequence 1). New entries go after the
 *     last non-erased entry, so a torn entry is skipped, never programmed again.
 *   - Calling edgec_ota_boot again (a second edgec_init) reverts a pending trial, as a reset does.
 *
 * Local-origin updates (compiled only with -DEDGEC_OTA_LOCAL): edgec_ota_apply_local writes tables made on
 * the device (on-device training's checkpoints) through the same receiver as an unsigned patch flagged
 * local origin; see its declaration below. Without the define neither the function nor any of its code is
 * compiled: over-the-air-only builds keep their code size and state (checked by tests/test_train_checkpoint.py).
 * Training-only builds may compile no key at all (keys = 0, key = NULL): boot accepts that, and every
 * over-the-air patch is then refused with EDGEC_OTA_ERR_KEY.
 *
 * Resources: one static state object of 456 bytes on cortex-m4 (the 128-byte header, the 16-byte record
 * header, the 96-byte trailer, a SHA-256 context, one 16-byte write unit, a few words). No allocation, no
 * recursion; the deepest stack is finish() -> edgec_ed25519_verify. Not reentrant: call from one thread.
 * Code: about 2.9 KB of .text at -Os on cortex-m4 (plus SHA-256, SHA-512 and Ed25519). The patch is
 * hashed byte by byte (smaller code; flash programming dominates the time).
 *
 * Configuration (generated with the project, src/adapters.c): edgec_ota_boot refuses with
 * EDGEC_OTA_ERR_ARG NULL pointers, slots outside 1..EDGEC_OTA_MAX_SLOTS, write_bytes other than 1, 2, 4,
 * 8 or 16, page_bytes below 16 * (slots + 2) (a counter page holds its header and slots + 1 entries),
 * bank_bytes not a whole number of pages or not above 128, and a last layer whose rescale table
 * reaches into the metadata. Not checked (the generator derives them): page_bytes a multiple of 16
 * (flash pages are), layers listed in increasing bank offsets (A, B, the 4-byte aligned rescale
 * table, the next layer); a layout out of order would program a unit twice, which the read-back
 * reports as EDGEC_OTA_ERR_FLASH. Little-endian targets only (as the slot kernels).
 */
#ifndef EDGEC_OTA_H
#define EDGEC_OTA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDGEC_OTA_OK 0
#define EDGEC_OTA_ERR_STATE (-10)     /* call out of order (write before begin, confirm without trial, ...) */
#define EDGEC_OTA_ERR_FORMAT (-11)    /* magic, version, flags, header size, payload size, reserved, name,
                                         record count */
#define EDGEC_OTA_ERR_BASE (-12)      /* base model hash */
#define EDGEC_OTA_ERR_LAYOUT (-13)    /* layout hash, or a record that does not match the layout */
#define EDGEC_OTA_ERR_SLOT (-14)      /* slot index out of range (info: also an empty slot) */
#define EDGEC_OTA_ERR_COUNTER (-15)   /* security counter not greater than the slot's floor */
#define EDGEC_OTA_ERR_KEY (-16)       /* key id not compiled in */
#define EDGEC_OTA_ERR_DIGEST (-17)    /* SHA-256 mismatch */
#define EDGEC_OTA_ERR_SIGNATURE (-18) /* Ed25519 signature invalid */
#define EDGEC_OTA_ERR_TRUNCATED (-19) /* finish() before the whole patch arrived */
#define EDGEC_OTA_ERR_LENGTH (-20)    /* bytes after the end of the patch */
#define EDGEC_OTA_ERR_FLASH (-21)     /* the flash HAL failed, or the region did not read back */
#define EDGEC_OTA_ERR_ARG (-22)       /* a NULL pointer, or an invalid configuration (boot) */

#define EDGEC_OTA_MAX_SLOTS 32

/* One adapted layer: byte offsets of A [rank, k] int8, B [oc, rank] int8 and the rescale table
 * [oc, 2] int32 inside every bank. */
typedef struct {
    uint32_t a_offset, b_offset, m_offset, rank, k, oc;
} edgec_ota_layer_t;

/* A public key that may sign patches; id = first 8 bytes of SHA-256(public_key). */
typedef struct {
    uint8_t id[8];
    uint8_t public_key[32];
} edgec_ota_key_t;

typedef struct {
    const uint8_t *base_sha256;   /* 32 bytes: the model the firmware was built from */
    const uint8_t *layout_sha256; /* 32 bytes: docs/ota-format.md "Slot layout and its hash" */
    uint32_t slots;               /* banks 2s and 2s+1 belong to slot s */
    uint32_t bank_bytes;          /* whole pages; the metadata is the last 128 bytes of a bank */
    uint32_t page_bytes, write_bytes;
    uint32_t layers;
    const edgec_ota_layer_t *layer;
    uint32_t keys;                /* may be 0 (key NULL): every over-the-air patch fails with ERR_KEY */
    const edgec_ota_key_t *key;
    const uint8_t *region; /* 2*slots banks, then 2 counter pages; read memory-mapped */
} edgec_ota_config_t;

/* The generated project's configuration (src/adapters.c); edgec_flash_mem.c takes the region from it. */
extern const edgec_ota_config_t edgec_ota_config;

/* At start-up (edgec_init): resets the receiver, chooses each slot's active bank (the valid, confirmed,
 * not reverted bank with the higher sequence number), writes the revert unit of every unconfirmed
 * trial, sets slot_state[2s+1] to the active bank's byte offset in the region (bank 2s's when the slot
 * is empty) and leaves the scales slot_state[2s] alone. cfg and slot_state must stay valid; cfg->key may be
 * NULL when cfg->keys is 0. Returns 0,
 * EDGEC_OTA_ERR_ARG (bad configuration: nothing else works until a good boot) or EDGEC_OTA_ERR_FLASH
 * (a revert unit could not be written; the slots are set up anyway and the trial is not used). */
int edgec_ota_boot(const edgec_ota_config_t *cfg, int32_t *slot_state);

/* The bank slot `slot` uses now (2s or 2s+1; the trial's bank during a trial), -1 if the slot is
 * empty, out of range or edgec_ota_boot has not succeeded. */
int edgec_ota_slot_bank(int slot);

typedef struct {
    char name[16]; /* NUL-terminated */
    uint32_t id, counter, sequence;
    uint16_t version[3], rank, flags;
    int trial; /* 1: the bank is an unconfirmed trial */
} edgec_ota_info_t;

/* Metadata of the bank the slot uses now (edgec_ota_slot_bank). EDGEC_OTA_ERR_SLOT if the slot is out of
 * range or empty, EDGEC_OTA_ERR_ARG for a NULL out, EDGEC_OTA_ERR_STATE before boot. */
int edgec_ota_info(int slot, edgec_ota_info_t *out);

/* Start receiving a patch (abandons an unfinished one). EDGEC_OTA_ERR_STATE before boot or while a
 * trial is pending. */
int edgec_ota_begin(void);

/* The next `len` bytes of the patch (any chunk size; len 0 is a no-op). Checks the header once complete,
 * then erases the inactive bank; programs record data as it arrives. */
int edgec_ota_write(const uint8_t *chunk, size_t len);

/* Verify (TRUNCATED, DIGEST, SIGNATURE); write the bank metadata (sequence = active + 1); the slot then
 * uses the new bank ON TRIAL: slot_state[2s+1] = its offset, in RAM only. */
int edgec_ota_finish(void);

/* Make the trial permanent: append the counter entry (not for a local-origin trial, whose counter is the
 * floor already), then write the confirm unit. ERR_STATE without a trial. */
int edgec_ota_confirm(void);

/* Revert the trial (its revert unit; the slot goes back to its active bank). With no trial: revert the
 * last updated slot's active bank (edgec_ota_last_slot) to its other bank if that one is valid,
 * confirmed and not reverted, else EDGEC_OTA_ERR_STATE (also after a reset: no last slot). */
int edgec_ota_rollback(void);

/* Health check of the trial: healthy(slot, user) != 0 -> confirm(), else rollback(); returns their
 * result. EDGEC_OTA_ERR_STATE without a trial, EDGEC_OTA_ERR_ARG for a NULL callback. */
int edgec_ota_check(int (*healthy)(int slot, void *user), void *user);

/* Slot of the last successful begin..finish (or edgec_ota_apply_local) since boot, -1 if none. */
int edgec_ota_last_slot(void);

#ifdef EDGEC_OTA_LOCAL
/* Write a slot's tables produced on the device (e.g. by on-device training) as a local-origin update: builds
 * the patch stream (docs/ota-format.md: header with flags bit 0 = local origin, the configuration's base and
 * layout hashes, counter = the slot's current floor, key id 0, the records of every layer from `image`, the
 * SHA-256 trailer, a zero signature) and feeds it through begin/write/finish, which for this stream only
 * accept the local flag, skip the key id and signature checks and require counter == floor (every other check
 * and error code is the same as for a patch). On success the slot runs the new bank ON TRIAL exactly as after
 * edgec_ota_finish(); confirm()/rollback()/check() as usual; confirming a local trial appends no counter entry
 * (the floor stays, carried by the bank's counter). `image`: layout-sized (the bytes the configuration's
 * layers span, i.e. the bank minus its metadata), the tables at the layers' a/b/m offsets (only those bytes
 * are read; rows of A and columns of B beyond an adapter's rank must be zero, as edgec_train_quantize_layer
 * writes them). name: NUL-terminated, at most 15 characters. version: major, minor, patch.
 * Returns 0, EDGEC_OTA_ERR_STATE (before boot, or while a trial is pending; it abandons an unfinished
 * over-the-air update like begin()), EDGEC_OTA_ERR_ARG (a NULL pointer, a name of 16 or more characters),
 * EDGEC_OTA_ERR_SLOT, EDGEC_OTA_ERR_FLASH; as for a patch, no error changes the active bank. Stack: its own
 * frame (272 bytes on cortex-m4 -Os: a header buffer and a SHA-256 context) plus write()/finish() without
 * Ed25519, far below an over-the-air finish(). */
int edgec_ota_apply_local(int slot, const uint8_t *image, const char *name, uint32_t id,
                          const uint16_t version[3]);

#ifdef EDGEC_OTA_LOCAL_TAP
/* Test builds only (tests/test_train_checkpoint.py): edgec_ota_apply_local passes every part of the stream it
 * feeds to this function, which the test driver defines, before writing it. */
void edgec_ota_local_tap(const uint8_t *bytes, uint32_t len);
#endif
#endif

#ifdef __cplusplus
}
#endif

#endif /* EDGEC_OTA_H */
