/*
 * checkpoint_driver.c - the device side of on-device training checkpoints (tests/test_train_checkpoint.py):
 * edgec_train_quantize_layer (runtime_c/train) and edgec_ota_apply_local (runtime_c/ota, EDGEC_OTA_LOCAL).
 * Built with AddressSanitizer and UBSan, -DEDGEC_OTA_LOCAL -DEDGEC_OTA_LOCAL_TAP -DEDGEC_FLASH_MEM (the RAM
 * flash HAL on `region`) and the OTA configuration ota_cfg.h that tests/test_ota_device.py writes.
 *
 * `checkpoint_driver quant`: stdin, repeated until EOF: int32 r, k, oc, rank; float32 a[r k], b[oc r], ws[oc].
 * stdout per case: int32 result, int8 a_q[rank k], b_q[oc rank], int32 mult[oc 2].
 *
 * `checkpoint_driver ota REGION SCRIPT`: loads the region, runs the script; prints one line per command:
 *   boot | bootnokeys                 edgec_ota_boot (bootnokeys: the configuration with keys 0, key NULL)
 *                                     -> "boot RC"
 *   local SLOT IMAGE NAME ID V0 V1 V2 [TAP]   edgec_ota_apply_local with the image file; TAP: the stream it
 *                                     feeds is written to that file -> "local RC"
 *   train SLOT FACTORS NAME ID V0 V1 V2   per configuration layer: int32 r, then float32 a[r k], b[oc r],
 *                                     ws[oc] from FACTORS, edgec_train_quantize_layer into an image (zeroed
 *                                     first), then apply_local -> "train RC_QUANT... RC"
 *   localargs SLOT IMAGE              the argument errors -> "localargs RC RC RC RC RC RC"
 *   apply PATCH                       begin/write/finish (the whole patch in one write) -> "apply RC"
 *   partial PATCH N                   begin, then write the first N bytes -> "partial RC"
 *   begin | finish | confirm | rollback   -> "NAME RC"
 *   bank SLOT                         -> "bank N"
 *   info SLOT                         -> "info RC COUNTER SEQ TRIAL RANK FLAGS ID V0 V1 V2 NAME"
 *   state                             -> "state slot_state[1] slot_state[3] ..."
 *   save FILE                         writes the region
 * Exit 0 unless the input is malformed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgec_flash.h"
#include "edgec_ota.h"
#include "edgec_train.h"
#include "ota_cfg.h"

#define REGION_BYTES (2u * CFG_SLOTS * CFG_BANK + 2u * CFG_PAGE)

static uint8_t region[REGION_BYTES];
static int32_t slot_state[2 * CFG_SLOTS];

const edgec_ota_config_t edgec_ota_config = {cfg_base, cfg_layout, CFG_SLOTS, CFG_BANK, CFG_PAGE, CFG_WB,
                                             CFG_LAYERS, cfg_layers, CFG_KEYS, cfg_keys, region};
/* The same device with no key compiled in (a training-only build). */
static const edgec_ota_config_t no_keys = {cfg_base, cfg_layout, CFG_SLOTS, CFG_BANK, CFG_PAGE, CFG_WB,
                                           CFG_LAYERS, cfg_layers, 0u, NULL, region};

static FILE *tap;

void edgec_ota_local_tap(const uint8_t *bytes, uint32_t len)
{
    if (tap != NULL && fwrite(bytes, 1, len, tap) != len) {
        fprintf(stderr, "checkpoint_driver: tap write failed\n");
        exit(2);
    }
}

static void die(const char *msg, const char *detail)
{
    fprintf(stderr, "checkpoint_driver: %s %s\n", msg, detail ? detail : "");
    exit(2);
}

/* n bytes from f into a fresh, exactly sized heap block (ASan sees reads past it); 0 at EOF before any. */
static void *take(FILE *f, size_t n, int *eof)
{
    void *p = malloc(n ? n : 1);
    size_t got;
    if (p == NULL) {
        die("out of memory", NULL);
    }
    got = n ? fread(p, 1, n, f) : 0;
    if (eof != NULL && got == 0 && n > 0 && feof(f)) {
        free(p);
        *eof = 1;
        return NULL;
    }
    if (got != n) {
        die("short input", NULL);
    }
    return p;
}

static int quant(void)
{
    for (;;) {
        int eof = 0, rc;
        int32_t *d = take(stdin, 4 * sizeof(int32_t), &eof);
        int r, k, oc, rank;
        float *a, *b, *ws;
        int8_t *aq, *bq;
        int32_t *m;
        if (eof) {
            return 0;
        }
        r = d[0];
        k = d[1];
        oc = d[2];
        rank = d[3];
        a = take(stdin, sizeof(float) * (size_t)r * (size_t)k, NULL);
        b = take(stdin, sizeof(float) * (size_t)oc * (size_t)r, NULL);
        ws = take(stdin, sizeof(float) * (size_t)oc, NULL);
        aq = malloc((size_t)rank * (size_t)k + 1u);
        bq = malloc((size_t)oc * (size_t)rank + 1u);
        m = malloc(sizeof(int32_t) * 2u * (size_t)oc);
        if (aq == NULL || bq == NULL || m == NULL) {
            die("out of memory", NULL);
        }
        memset(aq, 0x5A, (size_t)rank * (size_t)k); /* every output byte must be written */
        memset(bq, 0x5A, (size_t)oc * (size_t)rank);
        memset(m, 0x5A, sizeof(int32_t) * 2u * (size_t)oc);
        rc = edgec_train_quantize_layer(r ? a : NULL, r ? b : NULL, r, k, oc, rank, ws, aq, bq, m);
        fwrite(&rc, sizeof(rc), 1, stdout);
        fwrite(aq, 1, (size_t)rank * (size_t)k, stdout);
        fwrite(bq, 1, (size_t)oc * (size_t)rank, stdout);
        fwrite(m, sizeof(int32_t), 2u * (size_t)oc, stdout);
        free(d);
        free(a);
        free(b);
        free(ws);
        free(aq);
        free(bq);
        free(m);
    }
}

static uint8_t *load(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *p;
    long n;
    if (f == NULL) {
        die("cannot open", path);
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    p = take(f, (size_t)n, NULL);
    fclose(f);
    *len = (size_t)n;
    return p;
}

/* Bytes of the image (the layout: the end of the last layer's rescale table). */
static size_t layout_bytes(void)
{
    const edgec_ota_layer_t *l = &cfg_layers[CFG_LAYERS - 1];
    return l->m_offset + 8u * l->oc;
}

static int apply(const uint8_t *p, size_t len)
{
    int r = edgec_ota_begin();
    if (r == 0) {
        r = edgec_ota_write(p, len);
    }
    if (r == 0) {
        r = edgec_ota_finish();
    }
    return r;
}

/* `train`: quantize each layer's factors into an image, then apply it as a local update. */
static void train(int slot, const char *path, const char *name, uint32_t id, const uint16_t v[3])
{
    FILE *f = fopen(path, "rb");
    size_t n = layout_bytes();
    uint8_t *img = calloc(n, 1);
    int i;
    if (f == NULL || img == NULL) {
        die("cannot open", path);
    }
    printf("train");
    for (i = 0; i < CFG_LAYERS; i++) {
        const edgec_ota_layer_t *l = &cfg_layers[i];
        int32_t *r = take(f, sizeof(int32_t), NULL);
        float *a = take(f, sizeof(float) * (size_t)*r * l->k, NULL);
        float *b = take(f, sizeof(float) * (size_t)l->oc * (size_t)*r, NULL);
        float *ws = take(f, sizeof(float) * l->oc, NULL);
        int32_t mult[64];
        if (l->oc > 32u) {
            die("layer too wide for the driver", NULL);
        }
        printf(" %d", edgec_train_quantize_layer(a, b, *r, (int)l->k, (int)l->oc, (int)l->rank, ws,
                                                 (int8_t *)img + l->a_offset, (int8_t *)img + l->b_offset, mult));
        memcpy(img + l->m_offset, mult, 8u * l->oc);
        free(r);
        free(a);
        free(b);
        free(ws);
    }
    fclose(f);
    printf(" %d\n", edgec_ota_apply_local(slot, img, name, id, v));
    free(img);
}

static void run_line(char *line)
{
    char cmd[32], a[512], b[512], name[64];
    long s, id, v0, v1, v2;
    int n;
    if (sscanf(line, "%31s", cmd) != 1 || cmd[0] == '#') {
        return;
    }
    if (strcmp(cmd, "boot") == 0) {
        printf("boot %d\n", edgec_ota_boot(&edgec_ota_config, slot_state));
    } else if (strcmp(cmd, "bootnokeys") == 0) {
        printf("boot %d\n", edgec_ota_boot(&no_keys, slot_state));
    } else if (strcmp(cmd, "local") == 0 &&
               (n = sscanf(line, "%*s %ld %511s %63s %ld %ld %ld %ld %511s", &s, a, name, &id, &v0, &v1, &v2, b)) >=
                   7) {
        size_t len;
        uint8_t *img = load(a, &len);
        const uint16_t v[3] = {(uint16_t)v0, (uint16_t)v1, (uint16_t)v2};
        if (len != layout_bytes()) {
            die("image size", a);
        }
        if (n == 8 && (tap = fopen(b, "wb")) == NULL) {
            die("cannot write", b);
        }
        printf("local %d\n", edgec_ota_apply_local((int)s, img, strcmp(name, "-") == 0 ? "" : name, (uint32_t)id, v));
        if (tap != NULL) {
            fclose(tap);
            tap = NULL;
        }
        free(img);
    } else if (strcmp(cmd, "train") == 0 &&
               sscanf(line, "%*s %ld %511s %63s %ld %ld %ld %ld", &s, a, name, &id, &v0, &v1, &v2) == 7) {
        const uint16_t v[3] = {(uint16_t)v0, (uint16_t)v1, (uint16_t)v2};
        train((int)s, a, name, (uint32_t)id, v);
    } else if (strcmp(cmd, "localargs") == 0 && sscanf(line, "%*s %ld %511s", &s, a) == 2) {
        size_t len;
        uint8_t *img = load(a, &len);
        const uint16_t v[3] = {1, 2, 3};
        printf("localargs %d %d %d %d %d %d\n", edgec_ota_apply_local((int)s, NULL, "x", 1u, v),
               edgec_ota_apply_local((int)s, img, NULL, 1u, v), edgec_ota_apply_local((int)s, img, "x", 1u, NULL),
               edgec_ota_apply_local((int)s, img, "abcdefghijklmnop", 1u, v),
               edgec_ota_apply_local(-1, img, "x", 1u, v), edgec_ota_apply_local(CFG_SLOTS, img, "x", 1u, v));
        free(img);
    } else if (strcmp(cmd, "apply") == 0 && sscanf(line, "%*s %511s", a) == 1) {
        size_t len;
        uint8_t *p = load(a, &len);
        printf("apply %d\n", apply(p, len));
        free(p);
    } else if (strcmp(cmd, "partial") == 0 && sscanf(line, "%*s %511s %ld", a, &s) == 2) {
        size_t len;
        uint8_t *p = load(a, &len);
        int r = edgec_ota_begin();
        if ((size_t)s > len) {
            die("partial: too long", a);
        }
        printf("partial %d\n", r != 0 ? r : edgec_ota_write(p, (size_t)s));
        free(p);
    } else if (strcmp(cmd, "finish") == 0) {
        printf("finish %d\n", edgec_ota_finish());
    } else if (strcmp(cmd, "begin") == 0) {
        printf("begin %d\n", edgec_ota_begin());
    } else if (strcmp(cmd, "confirm") == 0) {
        printf("confirm %d\n", edgec_ota_confirm());
    } else if (strcmp(cmd, "rollback") == 0) {
        printf("rollback %d\n", edgec_ota_rollback());
    } else if (strcmp(cmd, "bank") == 0 && sscanf(line, "%*s %ld", &s) == 1) {
        printf("bank %d\n", edgec_ota_slot_bank((int)s));
    } else if (strcmp(cmd, "info") == 0 && sscanf(line, "%*s %ld", &s) == 1) {
        edgec_ota_info_t info;
        int r;
        memset(&info, 0, sizeof(info));
        r = edgec_ota_info((int)s, &info);
        printf("info %d %u %u %d %u %u %u %u %u %u %s\n", r, (unsigned)info.counter, (unsigned)info.sequence,
               info.trial, (unsigned)info.rank, (unsigned)info.flags, (unsigned)info.id, (unsigned)info.version[0],
               (unsigned)info.version[1], (unsigned)info.version[2], info.name[0] ? info.name : "-");
    } else if (strcmp(cmd, "state") == 0) {
        printf("state");
        for (n = 0; n < CFG_SLOTS; n++) {
            printf(" %d", (int)slot_state[2 * n + 1]);
        }
        printf("\n");
    } else if (strcmp(cmd, "save") == 0 && sscanf(line, "%*s %511s", a) == 1) {
        FILE *f = fopen(a, "wb");
        if (f == NULL || fwrite(region, 1, REGION_BYTES, f) != REGION_BYTES || fclose(f) != 0) {
            die("cannot write", a);
        }
    } else {
        die("bad script line:", line);
    }
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "quant") == 0) {
        return quant();
    }
    if (argc == 4 && strcmp(argv[1], "ota") == 0) {
        size_t len, i, start;
        uint8_t *r = load(argv[2], &len);
        char *script;
        if (len != REGION_BYTES) {
            die("region size", argv[2]);
        }
        memcpy(region, r, len);
        free(r);
        script = (char *)load(argv[3], &len);
        script = realloc(script, len + 1);
        if (script == NULL) {
            die("out of memory", NULL);
        }
        script[len] = '\0';
        for (i = start = 0; i <= len; i++) {
            if (script[i] == '\n' || script[i] == '\0') {
                script[i] = '\0';
                run_line(script + start);
                start = i + 1;
            }
        }
        free(script);
        return 0;
    }
    fprintf(stderr, "usage: checkpoint_driver quant | ota REGION SCRIPT\n");
    return 2;
}
