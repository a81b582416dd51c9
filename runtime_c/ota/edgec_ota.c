/*
 * edgec_ota.c - device-side receiver of signed LoRA adapter patches; see edgec_ota.h and
 * docs/ota-format.md (the byte format and the storage rules).
 *
 * Streaming: the patch goes byte by byte through a small state machine (header, record header, record
 * data, trailer, done); the header, record header and trailer are buffered, record data goes through
 * one write unit buffer that is programmed when the data leaves it. The layout lists the tables in
 * increasing bank offsets, so each write unit is programmed once; bytes of a unit that no table covers
 * (the padding before a rescale table) stay 0xFF. Every program operation is read back.
 *
 * Little-endian targets (as the slot kernels, which read the rescale tables as int32 words).
 *
 * EDGEC_OTA_LOCAL adds edgec_ota_apply_local: it builds a local-origin patch and feeds it through the same
 * begin/write/finish; S.local (set only there, cleared by begin()) lets that one stream carry the local flag,
 * skip the key id and signature checks and take counter == floor. Without the define the code is the
 * over-the-air receiver alone (IS_LOCAL is 0: the same object code as before the option existed).
 */
#include "edgec_ota.h"

#include <string.h>

#include "edgec_ed25519.h"
#include "edgec_flash.h"
#include "edgec_sha256.h"

/* Keeps GCC from inlining helpers called from several places (smaller code at -Os). */
#if defined(__GNUC__)
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE
#endif

#define HDR 128u
#define REC 16u
#define TRL 96u
#define META 128u

enum { PH_HEADER, PH_RECORD, PH_DATA, PH_TRAILER, PH_DONE };
enum { ST_IDLE = 0, ST_RX = 1 }; /* st < 0: failed with that error */

static struct {
    const edgec_ota_config_t *cfg;
    int32_t *slot_state;
    uint32_t odd;     /* bit s: slot s's active bank is 2s+1 (also set for an empty slot: updates go to 2s) */
    uint32_t empty;   /* bit s: slot s has no active bank */
    int trial, last;  /* slot on trial, slot of the last finish(); -1: none */
    int st;
#ifdef EDGEC_OTA_LOCAL
    int local;        /* the stream being received comes from edgec_ota_apply_local */
#endif
    uint32_t phase, slot, key, layer, t, left, idx, rank; /* layer, t: current record */
    uint32_t bank;    /* region offset of the bank being written */
    uint32_t cur, cseq, cfree; /* counter page scan (see scan()) */
    uint32_t dst;     /* region offset of the next data byte */
    uint32_t uoff;    /* region offset of the buffered write unit */
    uint32_t ufill;   /* the unit buffer holds data */
    uint8_t *at;      /* where the next buffered byte goes (header, record header, trailer); NULL: data */
    edgec_sha256_ctx sha;
    uint8_t hdr[HDR], rh[REC], trl[TRL], unit[16];
} S;

#ifdef EDGEC_OTA_LOCAL
#define IS_LOCAL S.local
#else
#define IS_LOCAL 0
#endif

static const uint8_t CONFIRMED[16] = {'E', 'D', 'G', 'E', 'C', '-', 'C', 'O', 'N', 'F', 'I', 'R', 'M', 'E', 'D', '.'};

static uint32_t rd16(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static uint32_t rd32(const uint8_t *p)
{
    return rd16(p) | rd16(p + 2) << 16;
}

static void wr32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

#define TAG(a, b, c, d) ((uint32_t)(a) | (uint32_t)(b) << 8 | (uint32_t)(c) << 16 | (uint32_t)(d) << 24)

static uint32_t crc32(const uint8_t *p, uint32_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    int k;
    while (n--) {
        c ^= *p++;
        for (k = 0; k < 8; k++) {
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
        }
    }
    return ~c;
}

static int erased(const uint8_t *p, uint32_t n)
{
    while (n--) {
        if (*p++ != 0xFFu) {
            return 0;
        }
    }
    return 1;
}

/* Program and read back. */
static int prog(uint32_t off, const uint8_t *data, uint32_t len)
{
    if (edgec_flash_write(off, data, len) != 0 || memcmp(S.cfg->region + off, data, len) != 0) {
        return EDGEC_OTA_ERR_FLASH;
    }
    return EDGEC_OTA_OK;
}

/* ---- banks ---- */

/* Region offset of a bank's metadata. */
static uint32_t moff(uint32_t bank)
{
    return (bank + 1u) * S.cfg->bank_bytes - META;
}

static const uint8_t *meta(uint32_t bank)
{
    return S.cfg->region + moff(bank);
}

#define B_VALID 1
#define B_CONFIRMED 2
#define B_REVERTED 4
#define B_ACTIVE (B_VALID | B_CONFIRMED) /* may be active: valid, confirmed, not reverted */

/* 0 (no valid metadata) or B_VALID with B_CONFIRMED and B_REVERTED. */
static int bstate(uint32_t bank)
{
    const uint8_t *m = meta(bank);
    if (rd32(m) != TAG('E', 'D', 'G', 'B') || crc32(m, 60) != rd32(m + 60)) {
        return 0;
    }
    return B_VALID | (memcmp(m + 64, CONFIRMED, 16) == 0 ? B_CONFIRMED : 0) | (erased(m + 80, 16) ? 0 : B_REVERTED);
}

static uint32_t active(uint32_t s)
{
    return 2u * s + (S.odd >> s & 1u);
}

static uint32_t empty(uint32_t s)
{
    return S.empty >> s & 1u;
}

/* Point the slot at its active bank (bank 2s when empty). */
static void point(uint32_t s)
{
    S.slot_state[2u * s + 1u] = (int32_t)((empty(s) ? 2u * s : active(s)) * S.cfg->bank_bytes);
}

static int write_revert(uint32_t bank)
{
    static const uint8_t zero[16];
    return prog(moff(bank) + 80u, zero, 16);
}

/* ---- counter pages ---- */

/* A counter page header {EDGC, seq, ~seq, 0} or entry {slot | ~slot << 16, counter, ~counter, CNTR}
 * (little-endian words). */
static void mk(uint32_t *t, uint32_t x, uint32_t v, uint32_t y)
{
    t[0] = x;
    t[1] = v;
    t[2] = ~v;
    t[3] = y;
}

static int is(const uint8_t *e, uint32_t x, uint32_t y)
{
    uint32_t t[4];
    mk(t, x, rd32(e + 4), y);
    return memcmp(t, e, 16) == 0;
}

NOINLINE static int put16(uint32_t off, uint32_t x, uint32_t v, uint32_t y)
{
    uint32_t t[4];
    mk(t, x, v, y);
    return prog(off, (const uint8_t *)t, 16);
}

#define CNTR TAG('C', 'N', 'T', 'R')

static uint32_t entry_x(uint32_t s)
{
    return s | (~s << 16);
}

/* The stored counter of slot s (0 if none). Sets S.cur (region offset of the current counter page,
 * 0 if none), S.cseq (its sequence) and S.cfree (page offset after its last used or torn entry). */
static uint32_t scan(uint32_t s)
{
    const uint32_t pb = S.cfg->page_bytes;
    uint32_t off = 2u * S.cfg->slots * S.cfg->bank_bytes, c = 0, i;
    S.cur = S.cseq = 0;
    S.cfree = 16u;
    for (i = 0; i < 2u; i++, off += pb) {
        const uint8_t *p = S.cfg->region + off;
        if (is(p, TAG('E', 'D', 'G', 'C'), 0u) && (S.cur == 0u || rd32(p + 4) > S.cseq)) {
            S.cur = off;
            S.cseq = rd32(p + 4);
        }
    }
    for (i = 16u; S.cur != 0u && i < pb; i += 16u) {
        const uint8_t *e = S.cfg->region + S.cur + i;
        if (!erased(e, 16)) {
            S.cfree = i + 16u;
        }
        if (is(e, entry_x(s), CNTR) && rd32(e + 4) > c) {
            c = rd32(e + 4);
        }
    }
    return c;
}

/* The slot's counter floor: max(stored counter, counters of its valid confirmed banks). */
static uint32_t floor_of(uint32_t s)
{
    uint32_t c = scan(s), b;
    for (b = 2u * s; b < 2u * s + 2u; b++) {
        if ((bstate(b) & B_CONFIRMED) && rd32(meta(b) + 8) > c) {
            c = rd32(meta(b) + 8);
        }
    }
    return c;
}

/* Append {s, c} to the current page; a full (or missing) page is compacted into the other one first:
 * erase it, one entry per slot with its stored counter, then its header with sequence + 1 (until then
 * the old page stays current). */
static int append_counter(uint32_t s, uint32_t c)
{
    const edgec_ota_config_t *cfg = S.cfg;
    uint32_t i, other, base = 2u * cfg->slots * cfg->bank_bytes;
    int r = EDGEC_OTA_OK;
    scan(s);
    if (S.cur == 0u || S.cfree >= cfg->page_bytes) {
        other = S.cur == base ? base + cfg->page_bytes : base;
        if (edgec_flash_erase_page(other) != 0) {
            return EDGEC_OTA_ERR_FLASH;
        }
        for (i = 0; r == 0 && i < cfg->slots; i++) {
            r = put16(other + 16u + 16u * i, entry_x(i), scan(i), CNTR);
        }
        if (r != 0 || (r = put16(other, TAG('E', 'D', 'G', 'C'), S.cseq + 1u, 0u)) != 0) {
            return r;
        }
        S.cur = other;
        S.cfree = 16u + 16u * cfg->slots;
    }
    return put16(S.cur + S.cfree, entry_x(s), c, CNTR);
}

/* ---- boot ---- */

int edgec_ota_boot(const edgec_ota_config_t *cfg, int32_t *slot_state)
{
    uint32_t s, b;
    int ret = EDGEC_OTA_OK;
    memset(&S, 0, sizeof(S));
    S.trial = S.last = -1;
    /* The configuration is generated (src/adapters.c); checked: what the slot bitmasks, the write unit
     * buffer and the counter pages need, and that the tables end before the bank's metadata. */
    if (cfg == NULL || slot_state == NULL || cfg->region == NULL || cfg->slots - 1u >= EDGEC_OTA_MAX_SLOTS ||
        cfg->write_bytes - 1u >= 16u || 16u % cfg->write_bytes != 0u || cfg->page_bytes < 16u * (cfg->slots + 2u) ||
        cfg->bank_bytes % cfg->page_bytes != 0u || cfg->bank_bytes <= META ||
        (cfg->layers > 0u &&
         cfg->layer[cfg->layers - 1u].m_offset + 8u * cfg->layer[cfg->layers - 1u].oc > cfg->bank_bytes - META)) {
        return EDGEC_OTA_ERR_ARG;
    }
    S.cfg = cfg;
    S.slot_state = slot_state;
    for (s = 0; s < cfg->slots; s++) {
        int best = -1;
        for (b = 2u * s; b < 2u * s + 2u; b++) {
            int st = bstate(b);
            if (st == B_VALID) {
                st = write_revert(b); /* a trial that was not confirmed before the reset */
                if (st != 0) {
                    ret = st;
                }
            } else if (st == B_ACTIVE && (best < 0 || rd32(meta(b) + 4) > rd32(meta((uint32_t)best) + 4))) {
                best = (int)b;
            }
        }
        if (best < 0 || (best & 1)) {
            S.odd |= 1u << s;
        }
        if (best < 0) {
            S.empty |= 1u << s;
        }
        point(s);
    }
    return ret;
}

/* ---- queries ---- */

int edgec_ota_slot_bank(int slot)
{
    uint32_t s = (uint32_t)slot;
    if (S.cfg == NULL || s >= S.cfg->slots) {
        return -1;
    }
    if (slot == S.trial) {
        return (int)(active(s) ^ 1u);
    }
    return empty(s) ? -1 : (int)active(s);
}

int edgec_ota_info(int slot, edgec_ota_info_t *out)
{
    const uint8_t *m;
    int b;
    if (S.cfg == NULL) {
        return EDGEC_OTA_ERR_STATE;
    }
    if (out == NULL) {
        return EDGEC_OTA_ERR_ARG;
    }
    b = edgec_ota_slot_bank(slot);
    if (b < 0) {
        return EDGEC_OTA_ERR_SLOT;
    }
    m = meta((uint32_t)b);
    memcpy(out->name, m + 24, 16);
    out->name[15] = '\0';
    out->sequence = rd32(m + 4);
    out->counter = rd32(m + 8);
    out->id = rd32(m + 12);
    memcpy(out->version, m + 16, 6); /* little-endian */
    out->flags = (uint16_t)rd16(m + 22);
    out->rank = (uint16_t)rd16(m + 40);
    out->trial = slot == S.trial;
    return EDGEC_OTA_OK;
}

int edgec_ota_last_slot(void)
{
    return S.last;
}

/* ---- receiving ---- */

int edgec_ota_begin(void)
{
    if (S.cfg == NULL || S.trial >= 0) {
        return EDGEC_OTA_ERR_STATE;
    }
    S.st = ST_RX;
    S.phase = PH_HEADER;
    S.left = HDR;
    S.at = S.hdr;
    S.layer = S.t = S.ufill = S.rank = 0;
#ifdef EDGEC_OTA_LOCAL
    S.local = 0;
#endif
    edgec_sha256_init(&S.sha);
    return EDGEC_OTA_OK;
}

static int fail(int err)
{
    S.st = err;
    return err;
}

static int check_header(void)
{
    const edgec_ota_config_t *cfg = S.cfg;
    const uint8_t *h = S.hdr;
    uint32_t i, n = 0, c, f;
    if (rd32(h) != TAG('E', 'D', 'G', 'P') || rd32(h + 4) != (1u | (uint32_t)IS_LOCAL << 16) || rd32(h + 8) != HDR ||
        rd16(h + 106) != 0u || rd32(h + 124) != 0u || memchr(h + 80, 0, 16) == NULL) {
        return EDGEC_OTA_ERR_FORMAT; /* (h + 4: version 1 and flags 0, or 1 = local origin for a local stream) */
    }
    if (memcmp(h + 16, cfg->base_sha256, 32) != 0) {
        return EDGEC_OTA_ERR_BASE;
    }
    if (memcmp(h + 48, cfg->layout_sha256, 32) != 0) {
        return EDGEC_OTA_ERR_LAYOUT;
    }
    S.slot = rd16(h + 112);
    if (S.slot >= cfg->slots) {
        return EDGEC_OTA_ERR_SLOT;
    }
    for (i = 0; i < cfg->layers; i++) {
        const edgec_ota_layer_t *l = &cfg->layer[i];
        n += 3u * REC + (l->k + l->oc) * l->rank + 8u * l->oc;
    }
    if (rd16(h + 114) != 3u * cfg->layers || rd32(h + 12) != n) {
        return EDGEC_OTA_ERR_FORMAT;
    }
    for (i = 0; i < cfg->keys && memcmp(cfg->key[i].id, h + 116, 8) != 0; i++) {
    }
    if (i == cfg->keys && !IS_LOCAL) {
        return EDGEC_OTA_ERR_KEY; /* (also every patch when the key table is empty) */
    }
    S.key = i;
    c = rd32(h + 108);
    f = floor_of(S.slot);
    if (IS_LOCAL ? c != f : c <= f) {
        return EDGEC_OTA_ERR_COUNTER;
    }
    /* Erase the inactive bank, its metadata page first: from then on it holds no valid metadata. */
    S.bank = (active(S.slot) ^ 1u) * cfg->bank_bytes;
    for (i = cfg->bank_bytes; i > 0u; i -= cfg->page_bytes) {
        if (edgec_flash_erase_page(S.bank + i - cfg->page_bytes) != 0) {
            return EDGEC_OTA_ERR_FLASH;
        }
    }
    return EDGEC_OTA_OK;
}

NOINLINE static int flush_unit(void)
{
    int r = EDGEC_OTA_OK;
    if (S.ufill) {
        r = prog(S.uoff, S.unit, S.cfg->write_bytes);
        S.ufill = 0;
    }
    return r;
}

/* The record header in S.rh against the layout; sets up the data destination. */
static int check_record(void)
{
    const edgec_ota_layer_t *l = &S.cfg->layer[S.layer];
    uint32_t t = S.t;
    uint32_t d0 = t == 0u ? l->rank : l->oc;
    uint32_t d1 = t == 0u ? l->k : t == 1u ? l->rank : 2u;
    if (rd16(S.rh) != S.layer || S.rh[2] != t || S.rh[3] != (t == 2u ? 2u : 1u) || rd32(S.rh + 4) != d0 ||
        rd32(S.rh + 8) != d1) {
        return EDGEC_OTA_ERR_LAYOUT;
    }
    S.phase = PH_DATA;
    S.at = NULL;
    S.left = d0 * d1 * (t == 2u ? 4u : 1u);
    S.dst = S.bank + (t == 0u ? l->a_offset : t == 1u ? l->b_offset : l->m_offset);
    S.idx = 0;
    return EDGEC_OTA_OK;
}

/* One byte of record data: into the write unit buffer, which is programmed when the data leaves it. */
static int program(uint8_t c)
{
    const uint32_t wb = S.cfg->write_bytes;
    int r;
    if (S.ufill && S.dst - S.uoff >= wb && (r = flush_unit()) != 0) {
        return r;
    }
    if (!S.ufill) {
        memset(S.unit, 0xFF, sizeof(S.unit));
        S.uoff = S.dst & ~(wb - 1u);
        S.ufill = 1;
    }
    S.unit[S.dst++ - S.uoff] = c;
    if (c != 0u && S.t == 0u && S.idx / S.cfg->layer[S.layer].k >= S.rank) {
        S.rank = S.idx / S.cfg->layer[S.layer].k + 1u; /* a non-zero row of A */
    }
    S.idx++;
    return EDGEC_OTA_OK;
}

/* A buffered part or a record's data is complete: check it and set up the next part. */
NOINLINE static int step(void)
{
    int r = EDGEC_OTA_OK;
    if (S.phase == PH_RECORD) {
        return check_record();
    }
    if (S.phase == PH_TRAILER) {
        S.phase = PH_DONE;
        return r;
    }
    if (S.phase == PH_HEADER) {
        r = check_header();
    } else {
        if (++S.t == 3u) {
            S.t = 0;
            S.layer++;
        }
    }
    if (r == 0 && S.layer == S.cfg->layers) {
        S.phase = PH_TRAILER;
        S.left = TRL;
        S.at = S.trl;
        return flush_unit();
    }
    S.phase = PH_RECORD;
    S.left = REC;
    S.at = S.rh;
    return r;
}

int edgec_ota_write(const uint8_t *chunk, size_t len)
{
    int r = S.st;
    if (r != ST_RX) {
        return r < 0 ? r : EDGEC_OTA_ERR_STATE;
    }
    if (chunk == NULL && len > 0u) {
        return fail(EDGEC_OTA_ERR_ARG);
    }
    for (; len > 0u; len--, chunk++) {
        if (S.phase == PH_DONE) {
            return fail(EDGEC_OTA_ERR_LENGTH);
        }
        if (S.phase != PH_TRAILER) {
            edgec_sha256_update(&S.sha, chunk, 1); /* byte by byte: smaller code; flash writes dominate */
        }
        r = EDGEC_OTA_OK;
        if (S.at != NULL) {
            *S.at++ = *chunk;
        } else {
            r = program(*chunk);
        }
        S.left--;
        while (r == 0 && S.left == 0u && S.phase != PH_DONE) {
            r = step();
        }
        if (r != 0) {
            return fail(r);
        }
    }
    return EDGEC_OTA_OK;
}

int edgec_ota_finish(void)
{
    uint8_t d[32], m[64];
    uint32_t s = S.slot, seq = 0;
    int r;
    if (S.st != ST_RX) {
        return S.st < 0 ? S.st : EDGEC_OTA_ERR_STATE;
    }
    if (S.phase != PH_DONE) {
        return fail(EDGEC_OTA_ERR_TRUNCATED);
    }
    edgec_sha256_final(&S.sha, d);
    if (memcmp(d, S.trl, 32) != 0) {
        return fail(EDGEC_OTA_ERR_DIGEST);
    }
    if (!IS_LOCAL && edgec_ed25519_verify(S.trl + 32, S.cfg->key[S.key].public_key, d, 32) != 1) {
        return fail(EDGEC_OTA_ERR_SIGNATURE);
    }
    if (!empty(s)) {
        seq = rd32(meta(active(s)) + 4);
    }
    memset(m, 0, sizeof(m));
    wr32(m, TAG('E', 'D', 'G', 'B'));
    wr32(m + 4, seq + 1u);
    memcpy(m + 8, S.hdr + 108, 4);  /* counter */
    memcpy(m + 12, S.hdr + 96, 10); /* adapter id, version */
    memcpy(m + 22, S.hdr + 6, 2);   /* flags */
    memcpy(m + 24, S.hdr + 80, 16); /* name */
    memcpy(m + 40, &S.rank, 2);     /* little-endian */
    memcpy(m + 56, d, 4);
    wr32(m + 60, crc32(m, 60));
    r = prog(S.bank + S.cfg->bank_bytes - META, m, 64);
    if (r != 0) {
        return fail(r);
    }
    S.slot_state[2u * s + 1u] = (int32_t)S.bank;
    S.trial = S.last = (int)s;
    S.st = ST_IDLE;
    return EDGEC_OTA_OK;
}

/* ---- trial ---- */

int edgec_ota_confirm(void)
{
    uint32_t s = (uint32_t)S.trial, b;
    int r;
    if (S.trial < 0) {
        return EDGEC_OTA_ERR_STATE;
    }
    b = active(s) ^ 1u;
#ifdef EDGEC_OTA_LOCAL
    r = rd16(meta(b) + 22) & 1u ? EDGEC_OTA_OK : append_counter(s, rd32(meta(b) + 8)); /* local: floor kept */
#else
    r = append_counter(s, rd32(meta(b) + 8));
#endif
    if (r == 0) {
        r = prog(moff(b) + 64u, CONFIRMED, 16);
    }
    if (r == 0) {
        S.odd ^= 1u << s;
        S.empty &= ~(1u << s);
        S.trial = -1;
    }
    return r;
}

int edgec_ota_rollback(void)
{
    uint32_t s, b;
    int r;
    if (S.trial >= 0) {
        s = (uint32_t)S.trial;
        S.trial = -1;
        point(s); /* back to the active bank even if the revert unit cannot be written: the trial is not
                     confirmed, so it also reverts at the next boot */
        return write_revert(active(s) ^ 1u);
    }
    if (S.last < 0) {
        return EDGEC_OTA_ERR_STATE;
    }
    s = (uint32_t)S.last;
    b = active(s);
    if (empty(s) || bstate(b ^ 1u) != B_ACTIVE) {
        return EDGEC_OTA_ERR_STATE;
    }
    r = write_revert(b);
    if (r == 0) {
        S.odd ^= 1u << s;
        point(s);
    }
    return r;
}

int edgec_ota_check(int (*healthy)(int slot, void *user), void *user)
{
    if (S.trial < 0) {
        return EDGEC_OTA_ERR_STATE;
    }
    if (healthy == NULL) {
        return EDGEC_OTA_ERR_ARG;
    }
    return healthy(S.trial, user) ? edgec_ota_confirm() : edgec_ota_rollback();
}

/* ---- local-origin updates ---- */

#ifdef EDGEC_OTA_LOCAL

/* One part of the local stream (and to the test tap). */
static int feed(const uint8_t *p, uint32_t n)
{
#ifdef EDGEC_OTA_LOCAL_TAP
    edgec_ota_local_tap(p, n);
#endif
    return edgec_ota_write(p, n);
}

static void wr16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

int edgec_ota_apply_local(int slot, const uint8_t *image, const char *name, uint32_t id, const uint16_t version[3])
{
    /* A's quantization field: float32 1/127, little-endian (0x3C010204) */
    static const uint8_t a_scale[4] = {0x04, 0x02, 0x01, 0x3C};
    const edgec_ota_config_t *cfg = S.cfg;
    uint8_t h[HDR]; /* the header, then each record header, then the trailer */
    edgec_sha256_ctx sha;
    uint32_t i, t, n = 0, len;
    int r;
    if (cfg == NULL) {
        return EDGEC_OTA_ERR_STATE;
    }
    if (image == NULL || name == NULL || version == NULL) {
        return EDGEC_OTA_ERR_ARG;
    }
    for (len = 0; len < 16u && name[len] != '\0'; len++) {
    }
    if (len == 16u) {
        return EDGEC_OTA_ERR_ARG;
    }
    if ((uint32_t)slot >= cfg->slots) {
        return EDGEC_OTA_ERR_SLOT;
    }
    r = edgec_ota_begin(); /* ERR_STATE while a trial is pending; abandons an unfinished update */
    if (r != 0) {
        return r;
    }
    S.local = 1;
    for (i = 0; i < cfg->layers; i++) {
        const edgec_ota_layer_t *l = &cfg->layer[i];
        n += 3u * REC + (l->k + l->oc) * l->rank + 8u * l->oc;
    }
    memset(h, 0, sizeof(h));
    wr32(h, TAG('E', 'D', 'G', 'P'));
    wr32(h + 4, 1u | 1u << 16); /* version 1, flags: local origin */
    wr32(h + 8, HDR);
    wr32(h + 12, n);
    memcpy(h + 16, cfg->base_sha256, 32);
    memcpy(h + 48, cfg->layout_sha256, 32);
    memcpy(h + 80, name, len);
    wr32(h + 96, id);
    for (i = 0; i < 3u; i++) {
        wr16(h + 100 + 2u * i, version[i]);
    }
    wr32(h + 108, floor_of((uint32_t)slot)); /* the counter: the slot's floor */
    wr16(h + 112, (uint32_t)slot);
    wr16(h + 114, 3u * cfg->layers);
    /* key id and reserved fields: 0 */
    r = feed(h, HDR);
    for (i = 0; r == 0 && i < cfg->layers; i++) {
        const edgec_ota_layer_t *l = &cfg->layer[i];
        for (t = 0; r == 0 && t < 3u; t++) {
            uint32_t d0 = t == 0u ? l->rank : l->oc, d1 = t == 0u ? l->k : t == 1u ? l->rank : 2u;
            memset(h, 0, REC);
            wr16(h, i);
            h[2] = (uint8_t)t;
            h[3] = t == 2u ? 2u : 1u;
            wr32(h + 4, d0);
            wr32(h + 8, d1);
            if (t == 0u) {
                memcpy(h + 12, a_scale, 4);
            }
            r = feed(h, REC);
            if (r == 0) {
                r = feed(image + (t == 0u ? l->a_offset : t == 1u ? l->b_offset : l->m_offset),
                         d0 * d1 * (t == 2u ? 4u : 1u));
            }
        }
    }
    if (r == 0) {
        /* The trailer: the digest (the receiver's own hash of the header and payload it received), then a
         * zero signature, which is not checked for a local stream. */
        sha = S.sha;
        edgec_sha256_final(&sha, h);
        memset(h + 32, 0, TRL - 32u);
        r = feed(h, TRL);
    }
    if (r == 0) {
        r = edgec_ota_finish();
    }
    S.local = 0;
    return r;
}

#endif /* EDGEC_OTA_LOCAL */
