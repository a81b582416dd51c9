/*
 * ota_driver.c - host test driver for the OTA receiver (runtime_c/ota/edgec_ota.c), built by
 * tests/test_ota_device.py with AddressSanitizer and UndefinedBehaviorSanitizer.
 *
 * The configuration comes from ota_cfg.h (written by the test: slots, bank and page sizes, write unit,
 * layout, keys, hashes); the initial region from a file. Built with -DSIM_FLASH the driver brings its
 * own flash HAL: NOR semantics, alignment and "program only erased units" checks (a violation aborts),
 * an operation counter, power cuts at operation N (before it, or inside it after M bytes with the rest of
 * the unit unchanged or random, or a partial/random erase) by longjmp, and injected HAL errors. Without
 * SIM_FLASH it links runtime_c/ota/edgec_flash_mem.c (EDGEC_FLASH_MEM) and only `script` is meaningful.
 *
 * Usage: ota_driver REGION_FILE COMMAND ARGS...   (exit 0 = pass; failures are printed, exit 1)
 *   script FILE                           run a script (see run_line) on the region
 *   tamper PATCH EXPECT CHUNK             flip every bit of PATCH; EXPECT has one int8 error code per bit
 *   truncate PATCH CHUNK                  every proper prefix -> TRUNCATED; one extra byte -> LENGTH
 *   fuzz N SEED PATCH...                  N mutants (never accepted, invariants kept)
 *   powercut SLOT SCRIPT OLD_TABLES OLD_COUNTER NEW_TABLES NEW_COUNTER NEXT NEXT_TABLES
 *        cut every flash operation of SCRIPT (every variant), reboot, check the invariants (the slot holds
 *        the old or the new tables, as before or after the interrupted operation; metadata; counter floors
 *        never drop), then NEXT (a higher counter) must still apply, confirm and survive a reboot
 * CHUNK: bytes per write() call, 0 = the whole patch in one call, -1 = random sizes.
 */
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgec_flash.h"
#include "edgec_ota.h"
#include "ota_cfg.h"

#define REGION_BYTES (2u * CFG_SLOTS * CFG_BANK + 2u * CFG_PAGE)
#define MAX_SNAP 4096

static uint8_t region[REGION_BYTES];
static uint8_t initial[REGION_BYTES];
static int32_t slot_state[2 * CFG_SLOTS];

const edgec_ota_config_t edgec_ota_config = {cfg_base, cfg_layout, CFG_SLOTS, CFG_BANK, CFG_PAGE, CFG_WB,
                                             CFG_LAYERS, cfg_layers, CFG_KEYS, cfg_keys, region};

static int failures;
static int ignore_rc; /* power-cut replays with an injected HAL error: return codes differ from the script's */
static uint64_t rng_state = 88172645463325252ull;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static void die(const char *msg, const char *detail)
{
    fprintf(stderr, "ota_driver: %s %s\n", msg, detail ? detail : "");
    exit(2);
}

#define EXPECT(cond, ...)                                                                                   \
    do {                                                                                                    \
        if (!ignore_rc) {                                                                                   \
            CHECK(cond, __VA_ARGS__);                                                                       \
        }                                                                                                   \
    } while (0)

#define CHECK(cond, ...)                                                                                    \
    do {                                                                                                    \
        if (!(cond)) {                                                                                      \
            if (failures++ < 20) {                                                                          \
                printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                 \
                printf(__VA_ARGS__);                                                                        \
                printf("\n");                                                                               \
            }                                                                                               \
        }                                                                                                   \
    } while (0)

typedef struct {
    uint8_t *data;
    size_t len;
} blob_t;

static blob_t load(const char *path)
{
    blob_t b = {NULL, 0};
    FILE *f = fopen(path, "rb");
    long n;
    if (f == NULL) {
        die("cannot open", path);
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    b.len = (size_t)n;
    b.data = malloc(b.len ? b.len : 1);
    if (b.data == NULL || fread(b.data, 1, b.len, f) != b.len) {
        die("cannot read", path);
    }
    fclose(f);
    return b;
}

/* ---------------------------------------------------------------- simulated flash */

#ifdef SIM_FLASH
enum { CUT_NONE, CUT_BEFORE, CUT_TORN_KEEP, CUT_TORN_RANDOM, CUT_ERASE_HALF, CUT_ERASE_RANDOM, FAIL_OP };

static long ops;             /* flash operations so far */
static long cut_at = -1;     /* operation to interrupt */
static int cut_mode;         /* CUT_... */
static uint32_t cut_bytes;   /* torn write: bytes fully programmed before the cut */
static jmp_buf cut_jump;
static int snapshots;        /* dry run: region copies after every operation */
static uint8_t *snap;        /* [MAX_SNAP][REGION_BYTES] */
static long op_len[MAX_SNAP]; /* dry run: bytes of each write, -1 for an erase */
static uint32_t op_off[MAX_SNAP];

/* Dry run: snapshot i = the region after i completed operations. */
static void snapshot(void)
{
    if (snapshots && ops < MAX_SNAP) {
        memcpy(snap + (size_t)ops * REGION_BYTES, region, REGION_BYTES);
    }
}

int edgec_flash_erase_page(uint32_t offset)
{
    uint32_t i;
    if (offset % CFG_PAGE != 0u || offset >= REGION_BYTES) {
        fprintf(stderr, "erase: bad offset %u\n", (unsigned)offset);
        abort();
    }
    if (snapshots && ops < MAX_SNAP) {
        op_len[ops] = -1;
        op_off[ops] = offset;
    }
    if (ops == cut_at) {
        ops++;
        if (cut_mode == FAIL_OP) {
            return -1;
        }
        if (cut_mode == CUT_ERASE_HALF) {
            memset(region + offset, 0xFF, CFG_PAGE / 2u);
        } else if (cut_mode == CUT_ERASE_RANDOM) {
            for (i = 0; i < CFG_PAGE; i++) {
                region[offset + i] = (uint8_t)rnd();
            }
        }
        longjmp(cut_jump, 1);
    }
    ops++;
    memset(region + offset, 0xFF, CFG_PAGE);
    snapshot();
    return 0;
}

int edgec_flash_write(uint32_t offset, const uint8_t *data, uint32_t len)
{
    uint32_t i;
    if (offset % CFG_WB != 0u || len % CFG_WB != 0u || len == 0u || offset + len > REGION_BYTES) {
        fprintf(stderr, "write: bad offset %u len %u\n", (unsigned)offset, (unsigned)len);
        abort();
    }
    for (i = 0; i < len; i++) {
        if (region[offset + i] != 0xFF) {
            fprintf(stderr, "write: unit at %u is not erased\n", (unsigned)(offset + i));
            abort();
        }
    }
    if (snapshots && ops < MAX_SNAP) {
        op_len[ops] = (long)len;
        op_off[ops] = offset;
    }
    if (ops == cut_at) {
        ops++;
        if (cut_mode == FAIL_OP) {
            return -1;
        }
        if (cut_mode == CUT_TORN_KEEP || cut_mode == CUT_TORN_RANDOM) {
            uint32_t end = (cut_bytes / CFG_WB + 1u) * CFG_WB; /* the unit being programmed */
            for (i = 0; i < cut_bytes; i++) {
                region[offset + i] &= data[i];
            }
            for (; cut_mode == CUT_TORN_RANDOM && i < end && i < len; i++) {
                region[offset + i] = (uint8_t)rnd();
            }
        }
        longjmp(cut_jump, 1);
    }
    ops++;
    for (i = 0; i < len; i++) {
        region[offset + i] &= data[i];
    }
    snapshot();
    return 0;
}
#endif

/* ---------------------------------------------------------------- helpers */

static int chunk_len(long chunk, size_t left)
{
    size_t n;
    if (chunk == 0) {
        return (int)left;
    }
    if (chunk > 0) {
        n = (size_t)chunk;
    } else {
        uint32_t r = rnd() % 8u;
        n = r < 3 ? 1u + rnd() % 4u : r < 6 ? 1u + rnd() % 64u : 1u + rnd() % 512u;
    }
    return (int)(n < left ? n : left);
}

/* begin, write in chunks, finish: the first error, or 0. */
static int apply(const uint8_t *p, size_t len, long chunk)
{
    int r = edgec_ota_begin();
    size_t off = 0;
    if (r != 0) {
        return r;
    }
    if (len == 0) {
        r = edgec_ota_write(NULL, 0);
    }
    while (r == 0 && off < len) {
        size_t n = (size_t)chunk_len(chunk, len - off);
        /* an exactly sized heap copy: ASan catches reads past the chunk */
        uint8_t *c = malloc(n);
        memcpy(c, p + off, n);
        r = edgec_ota_write(c, n);
        free(c);
        off += n;
    }
    if (r == 0) {
        r = edgec_ota_finish();
    } else {
        int again = edgec_ota_finish(); /* sticky */
        CHECK(again == r, "finish after error %d returned %d", r, again);
    }
    return r;
}

static const edgec_ota_layer_t *layer(int i)
{
    return &cfg_layers[i];
}

/* Do the tables of `bank` equal the layout image `img` (only the bytes the tables cover)? */
static int tables_equal(int bank, const uint8_t *img)
{
    const uint8_t *b = region + (size_t)bank * CFG_BANK;
    int i;
    for (i = 0; i < CFG_LAYERS; i++) {
        const edgec_ota_layer_t *l = layer(i);
        if (memcmp(b + l->a_offset, img + l->a_offset, l->rank * l->k) != 0 ||
            memcmp(b + l->b_offset, img + l->b_offset, l->oc * l->rank) != 0 ||
            memcmp(b + l->m_offset, img + l->m_offset, 8u * l->oc) != 0) {
            return 0;
        }
    }
    return 1;
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Independent reading of the counter pages: stored counter of slot s. */
static uint32_t stored_counter(int s)
{
    const uint8_t *base = region + 2u * CFG_SLOTS * CFG_BANK, *cur = NULL;
    uint32_t seq = 0, c = 0, i;
    int p;
    for (p = 0; p < 2; p++) {
        const uint8_t *h = base + p * CFG_PAGE;
        if (memcmp(h, "EDGC", 4) == 0 && rd32(h + 8) == ~rd32(h + 4) && rd32(h + 12) == 0 &&
            (cur == NULL || rd32(h + 4) > seq)) {
            cur = h;
            seq = rd32(h + 4);
        }
    }
    for (i = 16; cur != NULL && i < CFG_PAGE; i += 16) {
        const uint8_t *e = cur + i;
        uint32_t es = (uint32_t)e[0] | (uint32_t)e[1] << 8, ns = (uint32_t)e[2] | (uint32_t)e[3] << 8;
        if (es == (uint32_t)s && ns == (~es & 0xFFFFu) && rd32(e + 8) == ~rd32(e + 4) &&
            memcmp(e + 12, "CNTR", 4) == 0 && rd32(e + 4) > c) {
            c = rd32(e + 4);
        }
    }
    return c;
}

/* Counter floor: stored counter and the counters of the slot's valid confirmed banks. */
static uint32_t crc32_ref(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    size_t i;
    int k;
    for (i = 0; i < n; i++) {
        c ^= p[i];
        for (k = 0; k < 8; k++) {
            c = (c & 1u) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
        }
    }
    return ~c;
}

static const uint8_t *meta_of(int bank)
{
    return region + (size_t)(bank + 1) * CFG_BANK - 128u;
}

static int meta_valid(int bank)
{
    const uint8_t *m = meta_of(bank);
    return memcmp(m, "EDGB", 4) == 0 && crc32_ref(m, 60) == rd32(m + 60);
}

static int meta_confirmed(int bank)
{
    return meta_valid(bank) && memcmp(meta_of(bank) + 64, "EDGEC-CONFIRMED.", 16) == 0;
}

static uint32_t floor_counter(int s)
{
    uint32_t c = stored_counter(s);
    int b;
    for (b = 2 * s; b < 2 * s + 2; b++) {
        if (meta_confirmed(b) && rd32(meta_of(b) + 8) > c) {
            c = rd32(meta_of(b) + 8);
        }
    }
    return c;
}

/* slot_state[2s+1] agrees with edgec_ota_slot_bank. */
static void check_slot_state(const char *where)
{
    int s;
    for (s = 0; s < CFG_SLOTS; s++) {
        int b = edgec_ota_slot_bank(s);
        int32_t want = (int32_t)((b < 0 ? 2 * s : b) * (int)CFG_BANK);
        CHECK(slot_state[2 * s + 1] == want, "%s: slot %d: slot_state %d, bank %d", where, s,
              (int)slot_state[2 * s + 1], b);
        CHECK(b < 0 || meta_valid(b), "%s: slot %d uses bank %d without valid metadata", where, s, b);
    }
}

static int healthy_answer;
static int healthy_calls;

static int healthy(int slot, void *user)
{
    healthy_calls++;
    CHECK(user == &healthy_answer, "check: user pointer");
    CHECK(slot == edgec_ota_last_slot(), "check: slot %d", slot);
    return healthy_answer;
}

/* ---------------------------------------------------------------- script */

static blob_t cache_blob[64];
static char cache_name[64][512];
static int cache_n;

static blob_t file(const char *path)
{
    int i;
    for (i = 0; i < cache_n; i++) {
        if (strcmp(cache_name[i], path) == 0) {
            return cache_blob[i];
        }
    }
    if (cache_n == 64) {
        die("too many files", path);
    }
    cache_blob[cache_n] = load(path);
    snprintf(cache_name[cache_n], sizeof(cache_name[0]), "%s", path);
    return cache_blob[cache_n++];
}

/*
 * One script line; returns 0, or 1 for an unknown command.
 *   boot RC                      edgec_ota_boot == RC
 *   apply PATCH RC [CHUNK]       begin/write/finish: first error == RC
 *   confirm RC | rollback RC | check HEALTHY RC | last SLOT
 *   bank SLOT BANK               edgec_ota_slot_bank
 *   tables SLOT IMAGE            the slot's bank holds IMAGE's tables
 *   info SLOT RC [COUNTER SEQ TRIAL RANK ID VMAJ VMIN VPATCH NAME]
 *   meta BANK VALID CONFIRMED REVERTED   the bank's metadata (independent reading), 0/1 each
 *   stored SLOT COUNTER          counter pages (independent reading)
 *   floor SLOT COUNTER
 *   begin RC | write PATCH OFFSET LEN RC | finish RC   (single calls)
 *   failop N                     the Nth flash operation from now returns an error (once)
 */
static int run_line(char *line)
{
    char cmd[32], a[512], name[64];
    long x = 0, y = 0, z = 0;
    int n, r, s;
    if (sscanf(line, "%31s", cmd) != 1 || cmd[0] == '#') {
        return 0;
    }
    if (strcmp(cmd, "boot") == 0 && sscanf(line, "%*s %ld", &x) == 1) {
        r = edgec_ota_boot(&edgec_ota_config, slot_state);
        EXPECT(r == x, "boot: %d, expected %ld", r, x);
        check_slot_state("boot");
    } else if (strcmp(cmd, "apply") == 0 && (n = sscanf(line, "%*s %511s %ld %ld", a, &x, &y)) >= 2) {
        blob_t b = file(a);
        uint8_t before[REGION_BYTES];
        int32_t ss[2 * CFG_SLOTS];
        int banks[CFG_SLOTS];
        for (s = 0; s < CFG_SLOTS; s++) {
            banks[s] = edgec_ota_slot_bank(s);
        }
        memcpy(before, region, REGION_BYTES);
        memcpy(ss, slot_state, sizeof(ss));
        r = apply(b.data, b.len, n == 3 ? y : 0);
        EXPECT(r == x, "apply %s: %d, expected %ld", a, r, x);
        if (r != 0) {
            CHECK(memcmp(ss, slot_state, sizeof(ss)) == 0, "apply %s: slot_state changed on error", a);
            for (s = 0; s < CFG_SLOTS; s++) {
                CHECK(edgec_ota_slot_bank(s) == banks[s], "apply: slot %d bank changed on error", s);
                if (banks[s] >= 0) {
                    CHECK(memcmp(before + (size_t)banks[s] * CFG_BANK, region + (size_t)banks[s] * CFG_BANK,
                                 CFG_BANK) == 0,
                          "apply %s: active bank %d changed on error", a, banks[s]);
                }
            }
        }
        check_slot_state("apply");
    } else if (strcmp(cmd, "confirm") == 0 && sscanf(line, "%*s %ld", &x) == 1) {
        r = edgec_ota_confirm();
        EXPECT(r == x, "confirm: %d, expected %ld", r, x);
        check_slot_state("confirm");
    } else if (strcmp(cmd, "rollback") == 0 && sscanf(line, "%*s %ld", &x) == 1) {
        r = edgec_ota_rollback();
        EXPECT(r == x, "rollback: %d, expected %ld", r, x);
        check_slot_state("rollback");
    } else if (strcmp(cmd, "check") == 0 && sscanf(line, "%*s %ld %ld", &y, &x) == 2) {
        healthy_answer = (int)y;
        healthy_calls = 0;
        r = edgec_ota_check(healthy, &healthy_answer);
        EXPECT(r == x, "check: %d, expected %ld", r, x);
        EXPECT(healthy_calls == (r == EDGEC_OTA_ERR_STATE ? 0 : 1), "check: callback called %d times", healthy_calls);
        check_slot_state("check");
    } else if (strcmp(cmd, "checknull") == 0 && sscanf(line, "%*s %ld", &x) == 1) {
        r = edgec_ota_check(NULL, NULL);
        CHECK(r == x, "check(NULL): %d, expected %ld", r, x);
    } else if (strcmp(cmd, "last") == 0 && sscanf(line, "%*s %ld", &x) == 1) {
        EXPECT(edgec_ota_last_slot() == x, "last slot %d, expected %ld", edgec_ota_last_slot(), x);
    } else if (strcmp(cmd, "bank") == 0 && sscanf(line, "%*s %d %ld", &s, &x) == 2) {
        EXPECT(edgec_ota_slot_bank(s) == x, "slot %d: bank %d, expected %ld", s, edgec_ota_slot_bank(s), x);
    } else if (strcmp(cmd, "tables") == 0 && sscanf(line, "%*s %d %511s", &s, a) == 2) {
        blob_t b = file(a);
        int bank = edgec_ota_slot_bank(s);
        CHECK(bank >= 0 && tables_equal(bank, b.data), "slot %d (bank %d) does not hold the tables of %s", s,
              bank, a);
        CHECK(bank < 0 || slot_state[2 * s + 1] == bank * (int)CFG_BANK, "slot %d: slot_state", s);
    } else if (strcmp(cmd, "info") == 0 && (n = sscanf(line, "%*s %d %ld", &s, &x)) == 2) {
        edgec_ota_info_t info;
        long counter, seq, trial, rank, id, v0, v1, v2;
        memset(&info, 0xA5, sizeof(info));
        r = edgec_ota_info(s, &info);
        CHECK(r == x, "info %d: %d, expected %ld", s, r, x);
        if (r == 0 && sscanf(line, "%*s %*d %*d %ld %ld %ld %ld %ld %ld %ld %ld %63s", &counter, &seq, &trial,
                             &rank, &id, &v0, &v1, &v2, name) == 9) {
            CHECK(info.counter == (uint32_t)counter && info.sequence == (uint32_t)seq && info.trial == trial &&
                      info.rank == rank && info.id == (uint32_t)id && info.version[0] == v0 &&
                      info.version[1] == v1 && info.version[2] == v2 && strcmp(info.name, name) == 0,
                  "info %d: counter %u seq %u trial %d rank %u id %u version %u.%u.%u name %.16s; expected: %s", s,
                  (unsigned)info.counter, (unsigned)info.sequence, info.trial, info.rank, (unsigned)info.id,
                  info.version[0], info.version[1], info.version[2], info.name, line);
        }
    } else if (strcmp(cmd, "infonull") == 0 && sscanf(line, "%*s %ld", &x) == 1) {
        r = edgec_ota_info(0, NULL);
        CHECK(r == x, "info(NULL): %d, expected %ld", r, x);
    } else if (strcmp(cmd, "meta") == 0 && sscanf(line, "%*s %d %ld %ld %ld", &s, &x, &y, &z) == 4) {
        int v = meta_valid(s), c = meta_confirmed(s), rv = v && memcmp(meta_of(s) + 80, "\xff\xff\xff\xff\xff\xff\xff\xff"
                                                                               "\xff\xff\xff\xff\xff\xff\xff\xff", 16) != 0;
        CHECK(v == x && c == y && rv == z, "bank %d: valid %d confirmed %d reverted %d; expected %ld %ld %ld", s, v, c,
              rv, x, y, z);
    } else if (strcmp(cmd, "stored") == 0 && sscanf(line, "%*s %d %ld", &s, &x) == 2) {
        CHECK(stored_counter(s) == (uint32_t)x, "slot %d: stored counter %u, expected %ld", s,
              (unsigned)stored_counter(s), x);
    } else if (strcmp(cmd, "floor") == 0 && sscanf(line, "%*s %d %ld", &s, &x) == 2) {
        CHECK(floor_counter(s) == (uint32_t)x, "slot %d: floor %u, expected %ld", s, (unsigned)floor_counter(s),
              x);
    } else if (strcmp(cmd, "begin") == 0 && sscanf(line, "%*s %ld", &x) == 1) {
        r = edgec_ota_begin();
        EXPECT(r == x, "begin: %d, expected %ld", r, x);
    } else if (strcmp(cmd, "write") == 0 && sscanf(line, "%*s %511s %ld %ld %ld", a, &y, &z, &x) == 4) {
        blob_t b = file(a);
        CHECK((size_t)(y + z) <= b.len, "write: range");
        r = edgec_ota_write(z ? b.data + y : NULL, (size_t)z);
        EXPECT(r == x, "write %s [%ld, +%ld): %d, expected %ld", a, y, z, r, x);
    } else if (strcmp(cmd, "finish") == 0 && sscanf(line, "%*s %ld", &x) == 1) {
        r = edgec_ota_finish();
        EXPECT(r == x, "finish: %d, expected %ld", r, x);
        check_slot_state("finish");
#ifdef SIM_FLASH
    } else if (strcmp(cmd, "failop") == 0 && sscanf(line, "%*s %ld", &x) == 1) {
        cut_at = ops + x;
        cut_mode = FAIL_OP;
#endif
    } else {
        return 1;
    }
    return 0;
}

static char **read_lines(const char *path, int *count)
{
    blob_t b = load(path);
    char **lines = malloc(sizeof(char *) * (b.len + 1)), *p;
    int n = 0;
    b.data = realloc(b.data, b.len + 1);
    b.data[b.len] = 0;
    for (p = strtok((char *)b.data, "\n"); p != NULL; p = strtok(NULL, "\n")) {
        lines[n++] = p;
    }
    *count = n;
    return lines;
}

static void cmd_script(const char *path)
{
    int n, i;
    char **lines = read_lines(path, &n);
    for (i = 0; i < n; i++) {
        if (run_line(lines[i]) != 0) {
            die("bad script line:", lines[i]);
        }
    }
    printf("script: %d lines\n", n);
}

/* ---------------------------------------------------------------- tamper, truncate, fuzz */

/* Boot on the initial region, apply `p`; the result code, with the invariants checked. */
static int try_patch(const uint8_t *p, size_t len, long chunk, const char *what, long i)
{
    int32_t ss[2 * CFG_SLOTS];
    int banks[CFG_SLOTS], s, r;
    memcpy(region, initial, REGION_BYTES);
    r = edgec_ota_boot(&edgec_ota_config, slot_state);
    CHECK(r == 0, "boot %d", r);
    memcpy(ss, slot_state, sizeof(ss));
    for (s = 0; s < CFG_SLOTS; s++) {
        banks[s] = edgec_ota_slot_bank(s);
    }
    r = apply(p, len, chunk);
    if (r != 0) {
        CHECK(memcmp(ss, slot_state, sizeof(ss)) == 0, "%s %ld: slot_state changed", what, i);
        for (s = 0; s < CFG_SLOTS; s++) {
            CHECK(edgec_ota_slot_bank(s) == banks[s], "%s %ld: slot %d bank changed", what, i, s);
            if (banks[s] >= 0) {
                CHECK(memcmp(initial + (size_t)banks[s] * CFG_BANK, region + (size_t)banks[s] * CFG_BANK, CFG_BANK) ==
                          0,
                      "%s %ld: active bank %d changed", what, i, banks[s]);
            }
        }
        CHECK(memcmp(initial + 2u * CFG_SLOTS * CFG_BANK, region + 2u * CFG_SLOTS * CFG_BANK, 2u * CFG_PAGE) == 0,
              "%s %ld: counter pages changed", what, i);
        CHECK(edgec_ota_confirm() == EDGEC_OTA_ERR_STATE, "%s %ld: confirm after a failed update", what, i);
    }
    return r;
}

static void cmd_tamper(const char *patch, const char *expect, long chunk)
{
    blob_t p = load(patch), e = load(expect);
    long bit, counts[32] = {0};
    if (e.len != 8 * p.len) {
        die("expect file size", expect);
    }
    for (bit = 0; bit < (long)(8 * p.len); bit++) {
        int want = (int8_t)e.data[bit], r;
        p.data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        r = try_patch(p.data, p.len, chunk, "bit", bit);
        p.data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        CHECK(r == want, "bit %ld (byte %ld): %d, expected %d", bit, bit / 8, r, want);
        counts[-r < 32 && r <= 0 ? -r : 0]++;
    }
    printf("tamper: %ld bits; codes:", bit);
    for (bit = 0; bit < 32; bit++) {
        if (counts[bit]) {
            printf(" %ld:%ld", -bit, counts[bit]);
        }
    }
    printf("\n");
}

static void cmd_truncate(const char *patch, long chunk)
{
    blob_t p = load(patch);
    uint8_t *longer = malloc(p.len + 1);
    size_t n;
    int r;
    for (n = 0; n < p.len; n++) {
        r = try_patch(p.data, n, chunk, "length", (long)n);
        CHECK(r == EDGEC_OTA_ERR_TRUNCATED, "prefix of %zu bytes: %d", n, r);
    }
    memcpy(longer, p.data, p.len);
    longer[p.len] = 0;
    r = try_patch(longer, p.len + 1, chunk, "longer", 0);
    CHECK(r == EDGEC_OTA_ERR_LENGTH, "one byte more: %d", r);
    r = try_patch(p.data, p.len, chunk, "valid", 0);
    CHECK(r == 0, "the valid patch: %d", r);
    /* more bytes after a complete patch: LENGTH from write, sticky */
    memcpy(region, initial, REGION_BYTES);
    edgec_ota_boot(&edgec_ota_config, slot_state);
    edgec_ota_begin();
    CHECK(edgec_ota_write(p.data, p.len) == 0, "write whole");
    CHECK(edgec_ota_write(p.data, 1) == EDGEC_OTA_ERR_LENGTH, "write extra");
    CHECK(edgec_ota_finish() == EDGEC_OTA_ERR_LENGTH, "finish after extra");
    free(longer);
    printf("truncate: %zu prefixes\n", p.len);
}

static void cmd_fuzz(long n, unsigned long seed, int npatch, char **paths)
{
    blob_t pats[8];
    long i, accepted = 0, skipped = 0, counts[32] = {0};
    size_t cap = 0;
    uint8_t *buf = NULL;
    int k;
    if (npatch > 8) {
        die("too many patches", NULL);
    }
    for (k = 0; k < npatch; k++) {
        pats[k] = load(paths[k]);
        if (pats[k].len * 2 + 64 > cap) {
            cap = pats[k].len * 2 + 64;
        }
    }
    buf = malloc(cap);
    rng_state = seed * 2654435761ull + 1;
    for (i = 0; i < n; i++) {
        const blob_t *src = &pats[rnd() % (uint32_t)npatch];
        size_t len = src->len;
        int m, muts = 1 + (int)(rnd() % 4u), r, same;
        memcpy(buf, src->data, len);
        for (m = 0; m < muts; m++) {
            uint32_t kind = rnd() % 7u;
            size_t pos = len ? rnd() % len : 0;
            if (kind == 0 && len) { /* bit flip */
                buf[pos] ^= (uint8_t)(1u << (rnd() % 8u));
            } else if (kind == 1 && len) { /* byte set, often to a boundary value */
                static const uint8_t vals[] = {0, 1, 0x7F, 0x80, 0xFF, 3, 128, 16};
                buf[pos] = (rnd() & 1u) ? vals[rnd() % 8u] : (uint8_t)rnd();
            } else if (kind == 2 && len + 16 < cap) { /* insertion */
                size_t k2 = 1 + rnd() % 16u, j;
                memmove(buf + pos + k2, buf + pos, len - pos);
                for (j = 0; j < k2; j++) {
                    buf[pos + j] = (uint8_t)rnd();
                }
                len += k2;
            } else if (kind == 3 && len) { /* deletion */
                size_t k2 = 1 + rnd() % 16u;
                if (k2 > len - pos) {
                    k2 = len - pos;
                }
                memmove(buf + pos, buf + pos + k2, len - pos - k2);
                len -= k2;
            } else if (kind == 4) { /* splice: a piece of another patch at the same or another place */
                const blob_t *o = &pats[rnd() % (uint32_t)npatch];
                size_t from = rnd() % o->len, k2 = 1 + rnd() % 64u;
                if ((rnd() & 1u) && from < len) {
                    pos = from;
                }
                if (from + k2 > o->len) {
                    k2 = o->len - from;
                }
                if (pos + k2 > len) {
                    k2 = len - pos;
                }
                memcpy(buf + pos, o->data + from, k2);
            } else if (kind == 5) { /* truncation */
                len = len ? rnd() % len : 0;
            } else if (kind == 6 && len >= 4) { /* a 32-bit field to an interesting value */
                static const uint32_t vals[] = {0, 1, 0xFFFFFFFFu, 0x80000000u, 128, 96, 0x7FFFFFFFu, 16};
                uint32_t v = vals[rnd() % 8u];
                pos &= ~(size_t)3;
                if (pos + 4 <= len) {
                    memcpy(buf + pos, &v, 4);
                }
            }
        }
        same = 0;
        for (k = 0; k < npatch; k++) {
            same |= len == pats[k].len && memcmp(buf, pats[k].data, len) == 0;
        }
        if (same) {
            skipped++;
            continue;
        }
        {
            uint8_t *exact = malloc(len ? len : 1);
            memcpy(exact, buf, len);
            r = try_patch(exact, len, -1, "fuzz", i);
            free(exact);
        }
        if (r == 0) {
            accepted++;
            CHECK(0, "fuzz %ld: mutant accepted", i);
        }
        counts[-r < 32 && r <= 0 ? -r : 0]++;
    }
    printf("fuzz: %ld mutants, %ld identical skipped, %ld accepted; codes:", n, skipped, accepted);
    for (i = 0; i < 32; i++) {
        if (counts[i]) {
            printf(" %ld:%ld", -i, counts[i]);
        }
    }
    printf("\n");
    free(buf);
}

/* ---------------------------------------------------------------- power cuts */

#ifdef SIM_FLASH
/* Outcome after a reboot on the current region for `slot`: 0 old, 1 new, 2 next, -1 empty, -2 other. */
static const uint8_t *img_old, *img_new, *img_next;

static int outcome(int slot)
{
    int b;
    long save = cut_at;
    cut_at = -1;
    edgec_ota_boot(&edgec_ota_config, slot_state);
    cut_at = save;
    b = edgec_ota_slot_bank(slot);
    if (b < 0) {
        return -1;
    }
    return tables_equal(b, img_old) ? 0 : tables_equal(b, img_new) ? 1 : img_next && tables_equal(b, img_next) ? 2 : -2;
}

static void run_script_lines(char **lines, int n)
{
    int i;
    for (i = 0; i < n; i++) {
        if (run_line(lines[i]) != 0) {
            die("bad script line:", lines[i]);
        }
    }
}

/* Run the script until the power cut (1) or to its end (0). */
static int run_cut(char **lines, int n)
{
    if (setjmp(cut_jump) != 0) {
        return 1;
    }
    run_script_lines(lines, n);
    return 0;
}

/*
 * The script must start with "boot 0"; its apply/confirm/... lines give expected codes for the
 * uninterrupted run (ignored after a cut: the run stops there).
 */
static void cmd_powercut(int slot, const char *script, const char *old_img, uint32_t old_counter, const char *new_img,
                         uint32_t new_counter, const char *next, const char *next_img)
{
    int n, k, outcomes[MAX_SNAP + 1];
    char **lines = read_lines(script, &n);
    blob_t nextp = load(next), io = load(old_img), in = load(new_img), inx = load(next_img);
    long total, runs = 0, op;
    uint32_t floors[MAX_SNAP + 1][CFG_SLOTS];
    img_old = io.data;
    img_new = in.data;
    img_next = inx.data;
    snap = malloc((size_t)MAX_SNAP * REGION_BYTES);
    /* dry run: the region after every operation */
    memcpy(region, initial, REGION_BYTES);
    memcpy(snap, region, REGION_BYTES);
    ops = 0;
    cut_at = -1;
    snapshots = 1;
    run_script_lines(lines, n);
    snapshots = 0;
    total = ops;
    if (total >= MAX_SNAP) {
        die("too many operations", script);
    }
    if (failures) {
        printf("powercut: the uninterrupted run failed\n");
        return;
    }
    for (k = 0; k <= total; k++) {
        int s;
        memcpy(region, snap + (size_t)k * REGION_BYTES, REGION_BYTES);
        outcomes[k] = outcome(slot);
        for (s = 0; s < CFG_SLOTS; s++) {
            floors[k][s] = floor_counter(s);
        }
    }
    printf("powercut: %ld operations; outcome after each: ", total);
    for (k = 0; k <= total; k++) {
        printf("%c", outcomes[k] == -1 ? 'x' : outcomes[k] < 0 ? '?' : '0' + outcomes[k]);
    }
    printf("\nops:");
    for (op = 0; op < total; op++) {
        printf(" %s%ld@%u", op_len[op] < 0 ? "E" : "W", op_len[op] < 0 ? 0 : op_len[op], (unsigned)op_off[op]);
    }
    printf("\n");
    for (op = 0; op < total; op++) {
        int variants[160][2], nv = 0, v;
        if (op_len[op] < 0) {
            variants[nv][0] = CUT_BEFORE, variants[nv++][1] = 0;
            variants[nv][0] = CUT_ERASE_HALF, variants[nv++][1] = 0;
            variants[nv][0] = CUT_ERASE_RANDOM, variants[nv++][1] = 0;
            variants[nv][0] = FAIL_OP, variants[nv++][1] = 0;
        } else {
            long m;
            variants[nv][0] = CUT_BEFORE, variants[nv++][1] = 0;
            variants[nv][0] = FAIL_OP, variants[nv++][1] = 0;
            for (m = 0; m < op_len[op] && nv < 158; m++) { /* every byte of a write of up to 78 bytes */
                variants[nv][0] = CUT_TORN_KEEP, variants[nv++][1] = (int)m;
                variants[nv][0] = CUT_TORN_RANDOM, variants[nv++][1] = (int)m;
            }
        }
        for (v = 0; v < nv; v++) {
            int o, s, r;
            char where[96];
            snprintf(where, sizeof(where), "op %ld (%s %ld) variant %d/%d", op, op_len[op] < 0 ? "erase" : "write",
                     op_len[op], variants[v][0], variants[v][1]);
            memcpy(region, initial, REGION_BYTES);
            ops = 0;
            cut_at = op;
            cut_mode = variants[v][0];
            cut_bytes = (uint32_t)variants[v][1];
            runs++;
            ignore_rc = cut_mode == FAIL_OP;
            CHECK(run_cut(lines, n) != (cut_mode == FAIL_OP), "%s: cut %s", where,
                  cut_mode == FAIL_OP ? "with FAIL_OP" : "did not happen");
            ignore_rc = 0;
            cut_at = -1;
            /* reboot */
            r = edgec_ota_boot(&edgec_ota_config, slot_state);
            CHECK(r == 0, "%s: reboot %d", where, r);
            check_slot_state(where);
            o = outcome(slot);
            if (cut_mode == CUT_BEFORE) {
                CHECK(o == outcomes[op], "%s: outcome %d, expected %d (before the operation)", where, o, outcomes[op]);
            } else if (cut_mode != FAIL_OP) {
                CHECK(o == outcomes[op] || o == outcomes[op + 1], "%s: outcome %d, expected %d or %d", where, o,
                      outcomes[op], outcomes[op + 1]);
            } else {
                CHECK(o == 0 || o == 1 || o == outcomes[0], "%s: outcome %d after a HAL error", where, o);
            }
            if (o == 0 || o == 1) {
                edgec_ota_info_t info;
                r = edgec_ota_info(slot, &info);
                CHECK(r == 0 && info.counter == (o ? new_counter : old_counter) && info.trial == 0,
                      "%s: info %d: counter %u, trial %d (outcome %d)", where, r, (unsigned)info.counter, info.trial, o);
            }
            for (s = 0; s < CFG_SLOTS; s++) {
                uint32_t f = floor_counter(s);
                CHECK(f >= floors[op][s], "%s: slot %d floor %u < %u before the operation", where, s, (unsigned)f,
                      (unsigned)floors[op][s]);
                if (cut_mode == CUT_BEFORE) {
                    CHECK(f == floors[op][s], "%s: slot %d floor %u != %u", where, s, (unsigned)f,
                          (unsigned)floors[op][s]);
                } else if (cut_mode != FAIL_OP) {
                    CHECK(f == floors[op][s] || f == floors[op + 1][s], "%s: slot %d floor %u, expected %u or %u",
                          where, s, (unsigned)f, (unsigned)floors[op][s], (unsigned)floors[op + 1][s]);
                }
            }
            /* a new update still works */
            r = apply(nextp.data, nextp.len, -1);
            CHECK(r == 0, "%s: next update: %d", where, r);
            r = edgec_ota_confirm();
            CHECK(r == 0, "%s: next confirm: %d", where, r);
            r = edgec_ota_boot(&edgec_ota_config, slot_state);
            CHECK(r == 0 && outcome(slot) == 2, "%s: after the next update: outcome %d", where, outcome(slot));
            if (failures > 20) {
                break;
            }
        }
    }
    printf("powercut: %ld interrupted runs\n", runs);
    free(snap);
}
#endif

int main(int argc, char **argv)
{
    blob_t reg;
    if (argc < 3) {
        die("usage: ota_driver REGION COMMAND ...", NULL);
    }
    reg = load(argv[1]);
    if (reg.len != REGION_BYTES) {
        die("region size does not match ota_cfg.h:", argv[1]);
    }
    memcpy(initial, reg.data, REGION_BYTES);
    memcpy(region, reg.data, REGION_BYTES);
    if (strcmp(argv[2], "script") == 0 && argc == 4) {
        cmd_script(argv[3]);
    } else if (strcmp(argv[2], "tamper") == 0 && argc == 6) {
        cmd_tamper(argv[3], argv[4], atol(argv[5]));
    } else if (strcmp(argv[2], "truncate") == 0 && argc == 5) {
        cmd_truncate(argv[3], atol(argv[4]));
    } else if (strcmp(argv[2], "fuzz") == 0 && argc >= 6) {
        cmd_fuzz(atol(argv[3]), strtoul(argv[4], NULL, 10), argc - 5, argv + 5);
#ifdef SIM_FLASH
    } else if (strcmp(argv[2], "powercut") == 0 && argc == 11) {
        cmd_powercut(atoi(argv[3]), argv[4], argv[5], (uint32_t)atol(argv[6]), argv[7], (uint32_t)atol(argv[8]),
                     argv[9], argv[10]);
#endif
    } else {
        die("unknown command", argv[2]);
    }
    free(reg.data);
    printf("%s\n", failures ? "FAILED" : "OK");
    return failures ? 1 : 0;
}
