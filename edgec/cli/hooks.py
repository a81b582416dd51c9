"""C source of the harness hooks that `edgec run` / `verify` compile into a test build.

The generic harness (runtime_c/harness/edgec_harness.c) calls two weak hooks: edgec_harness_setup() once
after edgec_init(), and edgec_harness_before_run(record) before each inference (outside the benchmark
markers). The generated file defines them to feed an OTA patch to the receiver, to simulate resets and to
set the adapter slots' scales per record.
"""

from __future__ import annotations

from pathlib import Path

_PATCH_SETUP = r"""
#include "edgec_ota.h"
#ifdef EDGEC_SEMIHOSTING
#include "edgec_semihost.h"
#endif

int edgec_harness_setup(void);

/* Append the decimal `v` and a separator to line[*n] (no printf: newlib-nano's would need a heap). */
static void edgec_hook_put(char *line, size_t *n, long v, char sep)
{
    char digits[12];
    int k = 0;
    unsigned long u = v < 0 ? 0ul - (unsigned long)v : (unsigned long)v;
    if (v < 0) {
        line[(*n)++] = '-';
    }
    do {
        digits[k++] = (char)('0' + u % 10ul);
        u /= 10ul;
    } while (u != 0ul);
    while (k > 0) {
        line[(*n)++] = digits[--k];
    }
    line[(*n)++] = sep;
}

/* "result slot major minor patch trial" of the update, into RESULT_PATH. */
static void edgec_hook_report(int rc, int slot)
{
    edgec_adapter_info_t info = {0};
    char line[96];
    size_t n = 0;
    if (slot >= 0) {
        (void)edgec_adapter_info(slot, &info);
    }
    edgec_hook_put(line, &n, rc, ' ');
    edgec_hook_put(line, &n, slot, ' ');
    edgec_hook_put(line, &n, info.version[0], ' ');
    edgec_hook_put(line, &n, info.version[1], ' ');
    edgec_hook_put(line, &n, info.version[2], ' ');
    edgec_hook_put(line, &n, info.trial, '\n');
#ifdef EDGEC_SEMIHOSTING
    {
        int fh = edgec_semihost_open(RESULT_PATH, EDGEC_SEMIHOST_MODE_WB);
        if (fh >= 0) {
            (void)edgec_semihost_write(fh, line, n);
            (void)edgec_semihost_close(fh);
        }
    }
#else
    {
        FILE *f = fopen(RESULT_PATH, "w");
        if (f != NULL) {
            fwrite(line, 1, n, f);
            fclose(f);
        }
    }
#endif
}

#ifdef EDGEC_MEASURE_PATCH
/* The harness's benchmark markers: the instruction count then covers the patch, not the inference. */
void edgec_bench_begin(void);
void edgec_bench_end(void);
#endif

/* Feed the patch file to the receiver in 256-byte chunks, as a download would arrive. */
int edgec_harness_setup(void)
{
    static uint8_t chunk[256];
    size_t n;
    int rc;
#ifdef FLASH_PATH
    if (edgec_hook_load_flash() != 0) {
        return -1;
    }
#endif
#ifdef EDGEC_MEASURE_PATCH
    edgec_bench_begin();
#endif
    rc = edgec_ota_begin();
#ifdef EDGEC_SEMIHOSTING
    int fh = edgec_semihost_open(PATCH_PATH, EDGEC_SEMIHOST_MODE_RB);
    if (fh < 0) {
        edgec_hook_report(-100, -1);
        return 0;
    }
    while ((n = edgec_semihost_read(fh, chunk, sizeof chunk)) > 0) {
        if (rc == EDGEC_OTA_OK) {
            rc = edgec_ota_write(chunk, n);
        }
    }
    (void)edgec_semihost_close(fh);
#else
    FILE *f = fopen(PATCH_PATH, "rb");
    if (f == NULL) {
        edgec_hook_report(-100, -1);
        return 0;
    }
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (rc == EDGEC_OTA_OK) {
            rc = edgec_ota_write(chunk, n);
        }
    }
    fclose(f);
#endif
    if (rc == EDGEC_OTA_OK) {
        rc = edgec_ota_finish();
    }
#ifdef EDGEC_MEASURE_PATCH
    edgec_bench_end();
#endif
    edgec_hook_report(rc, edgec_ota_last_slot());
    return 0;
}
"""

_SCHEDULE = r"""
    {
        unsigned long r = record < ROWSul ? record : LASTul;
        int slot;
        for (slot = 0; slot < SLOTS; slot++) {
            int32_t scale = edgec_schedule[r][slot];
            int rc = scale != 0 ? edgec_adapter_activate(slot, scale) : edgec_adapter_deactivate(slot);
            if (rc != EDGEC_OK) {
                return rc;
            }
        }
    }
"""


def _c_string(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def hook_source(schedule: list[list[int]] | None, patch: Path | None = None, result: Path | None = None,
                resets: tuple[int, ...] = (), measure_patch: bool = False, flash: Path | None = None) -> str:
    """The hooks: edgec_harness_setup() feeds `patch` to the OTA receiver and writes "result slot major minor
    patch trial" to `result`; edgec_harness_before_run(r) runs edgec_init() again before the records in
    `resets` (a simulated reset: unconfirmed OTA trials revert, every slot is deactivated), then sets every
    slot's scale (Q16) to schedule[r] (the last row for the records after it). `measure_patch`: the
    benchmark markers (the QEMU instruction count) enclose the patch's reception instead of the inference
    (including the few guest instructions of each semihosting file read). `flash`: an adapter region image
    (`edgec train`'s device-flash.bin) loaded before everything else, followed by a boot."""
    out = ["/* Generated by edgec run/verify: harness hooks. */", "#include <stdint.h>", "#include <stdio.h>",
           '#include "edgec_model.h"']
    if flash is not None:
        out += [f"#define FLASH_PATH {_c_string(flash)}", _FILE_LAYER, _FLASH_LOAD]
        if patch is None:
            out.append("int edgec_harness_setup(void);\n\nint edgec_harness_setup(void)\n{\n"
                       "    return edgec_hook_load_flash();\n}\n")
    if patch is not None:
        out += [f"#define PATCH_PATH {_c_string(patch)}", f"#define RESULT_PATH {_c_string(result)}"]
        out += ["#define EDGEC_MEASURE_PATCH 1"] if measure_patch else []
        out.append(_PATCH_SETUP)
    out.append("int edgec_harness_before_run(unsigned long record);")
    body = ""
    if schedule:
        rows = ",\n".join("    { " + ", ".join(str(int(v)) for v in rec) + " }" for rec in schedule)
        out.append(f"static const int32_t edgec_schedule[{len(schedule)}][{len(schedule[0])}] = {{\n{rows}\n}};")
        body = (_SCHEDULE.replace("ROWS", str(len(schedule))).replace("LAST", str(len(schedule) - 1))
                .replace("SLOTS", str(len(schedule[0]))))
    resets_c = " || ".join(f"record == {r}ul" for r in resets)
    reset = f"    if ({resets_c}) {{\n        if (edgec_init() != EDGEC_OK) {{\n            return -1;\n        }}\n    }}\n" \
        if resets else ""
    out.append("int edgec_harness_before_run(unsigned long record)\n{\n" + (reset or "") + body
               + ("    (void)record;\n" if not (reset or body) else "") + "    return 0;\n}\n")
    return "\n".join(out)


_FILE_LAYER = r"""
#include <string.h>

#include "edgec_ota.h"
#ifdef EDGEC_SEMIHOSTING
#include "edgec_semihost.h"
typedef int hook_file;
#define HOOK_NONE (-1)
static inline hook_file hook_open(const char *path, int write)
{
    return edgec_semihost_open(path, write ? EDGEC_SEMIHOST_MODE_WB : EDGEC_SEMIHOST_MODE_RB);
}
static inline size_t hook_read(hook_file f, void *p, size_t n) { return edgec_semihost_read(f, p, n); }
static inline size_t hook_write(hook_file f, const void *p, size_t n) { return edgec_semihost_write(f, p, n); }
static inline void hook_close(hook_file f) { (void)edgec_semihost_close(f); }
#else
typedef FILE *hook_file;
#define HOOK_NONE NULL
static inline hook_file hook_open(const char *path, int write) { return fopen(path, write ? "wb" : "rb"); }
static inline size_t hook_read(hook_file f, void *p, size_t n) { return fread(p, 1, n, f); }
static inline size_t hook_write(hook_file f, const void *p, size_t n) { return fwrite(p, 1, n, f); }
static inline void hook_close(hook_file f) { (void)fclose(f); }
#endif
"""

_FLASH_LOAD = r"""
/* The simulated device's flash: the adapter region saved by `edgec train`, then a boot (edgec_init). */
static int edgec_hook_load_flash(void)
{
    const edgec_ota_config_t *cfg = &edgec_ota_config;
    size_t n = 2u * cfg->slots * cfg->bank_bytes + 2u * cfg->page_bytes;
    hook_file f = hook_open(FLASH_PATH, 0);
    size_t got;
    if (f == HOOK_NONE) {
        return -1;
    }
    got = hook_read(f, (uint8_t *)(uintptr_t)cfg->region, n); /* writable: see edgec_flash_mem.c */
    hook_close(f);
    return got == n ? edgec_init() : -1;
}
"""

_TRAIN_SETUP = r"""
#include "edgec_training.h"

int edgec_harness_setup(void);
void edgec_bench_begin(void);
void edgec_bench_end(void);

static uint8_t edgec_hook_storage[CAPACITY * EDGEC_TRAIN_RECORD_BYTES];

/* One log entry: kind (0 start, 1 step, 2 checkpoint), step, code, two floats. */
static void edgec_hook_log(hook_file log, int32_t kind, int32_t step, int32_t code, float a, float b)
{
    uint8_t entry[20];
    memcpy(entry, &kind, 4);
    memcpy(entry + 4, &step, 4);
    memcpy(entry + 8, &code, 4);
    memcpy(entry + 12, &a, 4);
    memcpy(entry + 16, &b, 4);
    (void)hook_write(log, entry, sizeof entry);
}

/* Train on SAMPLES_PATH (records), log to LOG_PATH, save the adapter region to FLASH_PATH; the harness then
 * runs its input records with the trained slot active. */
int edgec_harness_setup(void)
{
    static edgec_train_buffer_t buf;
    static uint8_t record[EDGEC_TRAIN_RECORD_BYTES];
    const edgec_ota_config_t *cfg = &edgec_ota_config;
    hook_file f;
    int32_t step;
    edgec_train_rng_seed(SEED);
#ifdef FLASH_PATH
    if (edgec_hook_load_flash() != 0) { /* the device's flash from the last session */
        return -5;
    }
#endif
    if (edgec_train_init() != EDGEC_OK) {
        return -1;
    }
    edgec_train_buffer_init(&buf, edgec_hook_storage, EDGEC_TRAIN_RECORD_BYTES, CAPACITY, HOLDOUT);
    f = hook_open(SAMPLES_PATH, 0);
    if (f == HOOK_NONE) {
        return -2;
    }
    while (hook_read(f, record, sizeof record) == sizeof record) {
        edgec_train_buffer_push(&buf, record);
    }
    hook_close(f);
    f = hook_open(LOG_PATH, 1);
    if (f == HOOK_NONE) {
        return -3;
    }
    edgec_hook_log(f, 0, 0, 0, edgec_train_validate(&buf), 0.0f);
    for (step = 1; step <= STEPS; step++) {
        float loss;
        if (step == 1) {
            edgec_bench_begin();
        }
        loss = edgec_train_step(&buf);
        if (step == 1) {
            edgec_bench_end();
        }
        edgec_hook_log(f, 1, step, 0, loss, 0.0f);
        if (step % VALIDATE_EVERY == 0 || step == STEPS) {
            float val = 0.0f;
            int rc = edgec_train_checkpoint(&buf, &val);
            edgec_hook_log(f, 2, step, rc, val, edgec_train_best_loss());
        }
    }
    hook_close(f);
    f = hook_open(FLASH_OUT_PATH, 1);
    if (f == HOOK_NONE) {
        return -4;
    }
    (void)hook_write(f, cfg->region, 2u * cfg->slots * cfg->bank_bytes + 2u * cfg->page_bytes);
    hook_close(f);
    return edgec_adapter_activate(EDGEC_TRAIN_SLOT, EDGEC_ADAPTER_SCALE_ONE);
}
"""


def train_hook_source(samples: Path, log: Path, flash: Path, steps: int, validate_every: int, holdout: int,
                      capacity: int, seed: int, flash_in: Path | None = None) -> str:
    """The hooks of `edgec train`: edgec_harness_setup() loads the training records into the sample buffer
    (every `holdout`-th held out), runs `steps` training steps (the benchmark markers around the first),
    checkpoints every `validate_every` steps and after the last, logs (20-byte entries: kind, step, code,
    two floats) and saves the adapter region (the simulated device's flash) to `flash`; the harness's
    inferences then run with the trained slot active. `flash_in`: the region a previous session saved, loaded
    (and booted) first."""
    defines = {"SAMPLES_PATH": _c_string(samples), "LOG_PATH": _c_string(log), "FLASH_OUT_PATH": _c_string(flash),
               "STEPS": steps, "VALIDATE_EVERY": validate_every, "HOLDOUT": f"{holdout}u",
               "CAPACITY": f"{capacity}u", "SEED": f"{seed}ull"}
    out = ["/* Generated by edgec train: harness hooks. */", "#include <stdint.h>", "#include <stdio.h>",
           '#include "edgec_model.h"']
    out += [f"#define {k} {v}" for k, v in defines.items()]
    out.append(_FILE_LAYER)
    if flash_in is not None:
        out += [f"#define FLASH_PATH {_c_string(flash_in)}", _FLASH_LOAD]
    return "\n".join(out) + _TRAIN_SETUP
