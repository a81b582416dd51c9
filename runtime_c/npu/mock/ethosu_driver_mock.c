/*
 * ethosu_driver_mock.c - a mock of Arm's Ethos-U driver for host and QEMU tests (see ethosu_driver.h).
 *
 * The checks follow what ethos-u-core-driver (ethosu_driver.c, ethosu_invoke_async / handle_command_stream,
 * and the U55 device's verify_optimizer_config) and the NPU do with a Vela payload:
 *   - payload: non-NULL, at least 4 bytes, a multiple of 4, 16-byte aligned; first word 'COP1';
 *   - driver actions: OPTIMIZER_CONFIG (its config word must match the emulated NPU: product Ethos-U55,
 *     log2(MACs/cycle), SHRAM size, command stream version 0; id word: architecture major 1),
 *     COMMAND_STREAM (must fit in the payload, start 16-byte aligned), NOP; anything else fails;
 *   - base addresses: each 16-byte aligned (and non-NULL when its size is not 0); with fast memory given
 *     to ethosu_init, base_addr[2] is replaced by it (its size must fit), as the driver does;
 *   - the register command stream (Ethos-U55 encoding, as in Vela's ethos_u55_regs): at every operation
 *     (conv, depthwise, pool, elementwise: IFM/IFM2/OFM start, weights and scales base + length; DMA: source
 *     and destination base + length) the region must be one of the base addresses and the bytes must lie
 *     inside its base_addr_size. IFM/OFM extents past their start need the feature map geometry and are not
 *     checked;
 *   - optional: base sizes equal to what the test expects (ethosu_mock_expect_sizes).
 * Then the completion interrupt is simulated through the semaphore hooks (give, then take), and the test's
 * preloads for this invoke are written.
 */
#include "ethosu_driver.h"

#include <string.h>

#if defined(__linux__) || defined(__APPLE__) || defined(_WIN32)
#include <stdio.h>
#define ETHOSU_MOCK_HOSTED 1
#endif

#ifndef ETHOSU_MOCK_MACS
#define ETHOSU_MOCK_MACS 128
#endif

#if ETHOSU_MOCK_MACS == 32
#define ETHOSU_MOCK_LOG2_MACS 5u
#define ETHOSU_MOCK_SHRAM_KB 16u
#elif ETHOSU_MOCK_MACS == 64
#define ETHOSU_MOCK_LOG2_MACS 6u
#define ETHOSU_MOCK_SHRAM_KB 16u
#elif ETHOSU_MOCK_MACS == 128
#define ETHOSU_MOCK_LOG2_MACS 7u
#define ETHOSU_MOCK_SHRAM_KB 24u
#elif ETHOSU_MOCK_MACS == 256
#define ETHOSU_MOCK_LOG2_MACS 8u
#define ETHOSU_MOCK_SHRAM_KB 48u
#else
#error "ETHOSU_MOCK_MACS must be 32, 64, 128 or 256 (an Ethos-U55 configuration)"
#endif

#define MOCK_FOURCC 0x31504F43u /* "COP1" */
#define DA_OPTIMIZER_CONFIG 1u
#define DA_COMMAND_STREAM 2u
#define DA_NOP 5u
#define MOCK_PRODUCT_U55 0u
#define MOCK_ARCH_MAJOR 1u

/* Register command stream opcodes (Vela ethos_u55_regs: cmd0 without payload, cmd1 with one). */
#define CMD0_OP_CONV 0x002u
#define CMD0_OP_DEPTHWISE 0x003u
#define CMD0_OP_POOL 0x005u
#define CMD0_OP_ELEMENTWISE 0x006u
#define CMD0_OP_DMA_START 0x010u
#define CMD0_IFM_REGION 0x10Fu
#define CMD0_OFM_REGION 0x11Fu
#define CMD0_WEIGHT_REGION 0x128u
#define CMD0_SCALE_REGION 0x129u
#define CMD0_DMA0_SRC_REGION 0x130u
#define CMD0_DMA0_DST_REGION 0x131u
#define CMD0_IFM2_REGION 0x18Fu
#define CMD1_IFM_BASE0 0x000u
#define CMD1_OFM_BASE0 0x010u
#define CMD1_WEIGHT_BASE 0x020u
#define CMD1_WEIGHT_LENGTH 0x021u
#define CMD1_SCALE_BASE 0x022u
#define CMD1_SCALE_LENGTH 0x023u
#define CMD1_DMA0_SRC 0x030u
#define CMD1_DMA0_DST 0x031u
#define CMD1_DMA0_LEN 0x032u
#define CMD1_IFM2_BASE0 0x080u

#define MOCK_PRELOADS 16
#define MOCK_EXPECTS 8
#define MOCK_MAX_REGIONS 8

struct mock_preload {
    uint32_t invoke, region, offset;
    const void *data;
    size_t bytes;
};

struct mock_expect {
    uint32_t invoke;
    int count;
    size_t sizes[MOCK_MAX_REGIONS];
};

static struct ethosu_mock_stats mock_stats;
static struct mock_preload mock_preloads[MOCK_PRELOADS];
static int mock_npreloads;
static struct mock_expect mock_expects[MOCK_EXPECTS];
static int mock_nexpects;
static uint8_t mock_mutex_created;

__attribute__((weak)) void ethosu_mock_on_error(const char *message)
{
#ifdef ETHOSU_MOCK_HOSTED
    fprintf(stderr, "ethosu mock: %s\n", message);
#else
    (void)message;
#endif
}

/* Small formatter (no printf on bare metal): message text with up to three numbers (each %x, printed in hex). */
static void mock_fail3(const char *what, uint32_t a, uint32_t b, uint32_t c)
{
    static const char hex[] = "0123456789abcdef";
    char msg[sizeof mock_stats.last_error];
    size_t n = 0;
    uint32_t values[3];
    int next = 0;
    const char *p;
    values[0] = a;
    values[1] = b;
    values[2] = c;
    for (p = what; *p != '\0' && n + 12 < sizeof msg; p++) {
        if (p[0] == '%' && p[1] == 'x' && next < 3) {
            int shift;
            msg[n++] = '0';
            msg[n++] = 'x';
            for (shift = 28; shift >= 0; shift -= 4) {
                msg[n++] = hex[(values[next] >> shift) & 0xFu];
            }
            next++;
            p++;
        } else {
            msg[n++] = *p;
        }
    }
    msg[n] = '\0';
    if (mock_stats.last_error[0] == '\0') {
        memcpy(mock_stats.last_error, msg, n + 1);
    }
    ethosu_mock_on_error(msg);
}

static void mock_fail_detail(const char *what, uint32_t a, uint32_t b)
{
    mock_fail3(what, a, b, 0u);
}

static int mock_fail(const char *what)
{
    mock_fail_detail(what, 0u, 0u);
    return -1;
}

void ethosu_mock_reset(void)
{
    memset(&mock_stats, 0, sizeof mock_stats);
    mock_npreloads = 0;
    mock_nexpects = 0;
}

const struct ethosu_mock_stats *ethosu_mock_get_stats(void)
{
    return &mock_stats;
}

int ethosu_mock_preload(uint32_t invoke, uint32_t region, uint32_t offset, const void *data, size_t bytes)
{
    if (mock_npreloads >= MOCK_PRELOADS) {
        return -1;
    }
    mock_preloads[mock_npreloads].invoke = invoke;
    mock_preloads[mock_npreloads].region = region;
    mock_preloads[mock_npreloads].offset = offset;
    mock_preloads[mock_npreloads].data = data;
    mock_preloads[mock_npreloads].bytes = bytes;
    mock_npreloads++;
    return 0;
}

int ethosu_mock_expect_sizes(uint32_t invoke, const size_t *sizes, int count)
{
    int i;
    if (mock_nexpects >= MOCK_EXPECTS || count < 0 || count > MOCK_MAX_REGIONS) {
        return -1;
    }
    mock_expects[mock_nexpects].invoke = invoke;
    mock_expects[mock_nexpects].count = count;
    for (i = 0; i < count; i++) {
        mock_expects[mock_nexpects].sizes[i] = sizes[i];
    }
    mock_nexpects++;
    return 0;
}

int ethosu_init(struct ethosu_driver *drv, void *const base_address, const void *fast_memory,
                const size_t fast_memory_size, uint32_t secure_enable, uint32_t privilege_enable)
{
    if (drv == NULL || base_address == NULL) {
        return mock_fail("ethosu_init: NULL driver or NPU base address");
    }
    if (!mock_mutex_created) {
        if (ethosu_mutex_create() == NULL) {
            return mock_fail("ethosu_init: ethosu_mutex_create returned NULL");
        }
        mock_mutex_created = 1u;
    }
    drv->base_address = base_address;
    drv->fast_memory = (uint64_t)(uintptr_t)fast_memory;
    drv->fast_memory_size = fast_memory_size;
    drv->secure_enable = secure_enable;
    drv->privilege_enable = privilege_enable;
    drv->semaphore = ethosu_semaphore_create();
    if (drv->semaphore == NULL) {
        return mock_fail("ethosu_init: ethosu_semaphore_create returned NULL");
    }
    drv->initialized = 1;
    return 0;
}

void ethosu_deinit(struct ethosu_driver *drv)
{
    if (drv != NULL && drv->initialized) {
        ethosu_semaphore_destroy(drv->semaphore);
        drv->semaphore = NULL;
        drv->initialized = 0;
    }
}

void ethosu_irq_handler(struct ethosu_driver *drv)
{
    if (drv != NULL && drv->semaphore != NULL) {
        (void)ethosu_semaphore_give(drv->semaphore);
    }
}

static int mock_check_config(uint32_t config, uint32_t id)
{
    if ((config >> 28) != MOCK_PRODUCT_U55) {
        mock_fail_detail("OPTIMIZER_CONFIG: product %x, this NPU is an Ethos-U55 (product %x)", config >> 28,
                         MOCK_PRODUCT_U55);
        return -1;
    }
    if ((config & 0xFu) != ETHOSU_MOCK_LOG2_MACS) {
        mock_fail_detail("OPTIMIZER_CONFIG: stream compiled for log2(MACs/cycle) %x, this NPU has %x",
                         config & 0xFu, ETHOSU_MOCK_LOG2_MACS);
        return -1;
    }
    if (((config >> 8) & 0xFFu) != ETHOSU_MOCK_SHRAM_KB) {
        mock_fail_detail("OPTIMIZER_CONFIG: stream compiled for %x KB SHRAM, this NPU has %x KB",
                         (config >> 8) & 0xFFu, ETHOSU_MOCK_SHRAM_KB);
        return -1;
    }
    if (((config >> 4) & 0xFu) != 0u) {
        mock_fail_detail("OPTIMIZER_CONFIG: command stream version %x, this NPU runs %x", (config >> 4) & 0xFu, 0u);
        return -1;
    }
    if ((id >> 28) != MOCK_ARCH_MAJOR) {
        mock_fail_detail("OPTIMIZER_CONFIG: architecture major %x, this NPU has %x", id >> 28, MOCK_ARCH_MAJOR);
        return -1;
    }
    return 0;
}

/* [base, base + length) must lie in region `region` of the job. */
static int mock_check_range(const char *what, uint32_t region, uint64_t base, uint64_t length,
                            const size_t *base_addr_size, int num_base_addr)
{
    static const char not_a_region[] = ": region %x, but only %x base addresses";
    static const char past_end[] = ": region %x up to byte %x > base_addr_size %x";
    char msg[96];
    size_t n = strlen(what);
    if (n > 40u) {
        n = 40u;
    }
    memcpy(msg, what, n);
    if ((int)region >= num_base_addr) {
        memcpy(msg + n, not_a_region, sizeof not_a_region);
        mock_fail3(msg, region, (uint32_t)num_base_addr, 0u);
        return -1;
    }
    if (base + length > (uint64_t)base_addr_size[region]) {
        memcpy(msg + n, past_end, sizeof past_end);
        mock_fail3(msg, region, (uint32_t)(base + length), (uint32_t)base_addr_size[region]);
        return -1;
    }
    return 0;
}

struct mock_regs {
    uint32_t ifm_region, ofm_region, ifm2_region, weight_region, scale_region;
    uint32_t dma_src_region, dma_dst_region, dma_src_internal, dma_dst_internal;
    uint64_t ifm_base, ofm_base, ifm2_base, weight_base, weight_length, scale_base, scale_length;
    uint64_t dma_src, dma_dst, dma_len;
    int ifm2_set;
};

static int mock_scan_stream(const uint32_t *cms, uint32_t words, const size_t *base_addr_size, int num_base_addr)
{
    struct mock_regs r;
    uint32_t i = 0;
    memset(&r, 0, sizeof r);
    while (i < words) {
        uint32_t w = cms[i];
        uint32_t code = w & 0x3FFu;
        uint32_t payload_words = (w >> 14) & 0x3u;
        uint32_t param = w >> 16;
        if (payload_words == 0u) {
            int op = 1;
            switch (code) {
            case CMD0_IFM_REGION: r.ifm_region = param & 7u; break;
            case CMD0_OFM_REGION: r.ofm_region = param & 7u; break;
            case CMD0_IFM2_REGION: r.ifm2_region = param & 7u; r.ifm2_set = 1; break;
            case CMD0_WEIGHT_REGION: r.weight_region = param & 7u; break;
            case CMD0_SCALE_REGION: r.scale_region = param & 7u; break;
            case CMD0_DMA0_SRC_REGION: r.dma_src_region = param & 0xFFu; r.dma_src_internal = (param >> 8) & 1u; break;
            case CMD0_DMA0_DST_REGION: r.dma_dst_region = param & 0xFFu; r.dma_dst_internal = (param >> 8) & 1u; break;
            default: op = 0; break;
            }
            if (op) {
                i++;
                continue;
            }
            if (code == CMD0_OP_CONV || code == CMD0_OP_DEPTHWISE || code == CMD0_OP_POOL ||
                code == CMD0_OP_ELEMENTWISE) {
                mock_stats.operations++;
                if (mock_check_range("IFM start", r.ifm_region, r.ifm_base, 1u, base_addr_size,
                                     num_base_addr) ||
                    mock_check_range("OFM start", r.ofm_region, r.ofm_base, 1u, base_addr_size,
                                     num_base_addr)) {
                    return -1;
                }
                if ((code == CMD0_OP_CONV || code == CMD0_OP_DEPTHWISE) &&
                    (mock_check_range("weights", r.weight_region, r.weight_base,
                                      r.weight_length, base_addr_size, num_base_addr) ||
                     mock_check_range("scales", r.scale_region, r.scale_base, r.scale_length,
                                      base_addr_size, num_base_addr))) {
                    return -1;
                }
                if (code == CMD0_OP_ELEMENTWISE && r.ifm2_set &&
                    mock_check_range("IFM2 start", r.ifm2_region, r.ifm2_base, 1u,
                                     base_addr_size, num_base_addr)) {
                    return -1;
                }
            } else if (code == CMD0_OP_DMA_START) {
                mock_stats.operations++;
                if ((!r.dma_src_internal && mock_check_range("DMA source", r.dma_src_region,
                                                             r.dma_src, r.dma_len, base_addr_size, num_base_addr)) ||
                    (!r.dma_dst_internal && mock_check_range("DMA destination",
                                                             r.dma_dst_region, r.dma_dst, r.dma_len, base_addr_size,
                                                             num_base_addr))) {
                    return -1;
                }
            }
            i++;
            continue;
        }
        if (i + payload_words >= words) {
            return mock_fail("register command stream: a command's payload runs past the end of the stream");
        }
        {
            uint64_t value = cms[i + 1];
            switch (code) {
            case CMD1_IFM_BASE0: r.ifm_base = value; break;
            case CMD1_OFM_BASE0: r.ofm_base = value; break;
            case CMD1_IFM2_BASE0: r.ifm2_base = value; break;
            case CMD1_WEIGHT_BASE: r.weight_base = value; break;
            case CMD1_WEIGHT_LENGTH: r.weight_length = value; break;
            case CMD1_SCALE_BASE: r.scale_base = value; break;
            case CMD1_SCALE_LENGTH: r.scale_length = value; break;
            case CMD1_DMA0_SRC: r.dma_src = value; break;
            case CMD1_DMA0_DST: r.dma_dst = value; break;
            case CMD1_DMA0_LEN: r.dma_len = value; break;
            default: break;
            }
        }
        i += 1u + payload_words;
    }
    return 0;
}

static int mock_invoke(struct ethosu_driver *drv, const void *custom_data_ptr, const int custom_data_size,
                       uint64_t *const base_addr, const size_t *base_addr_size, const int num_base_addr)
{
    const uint32_t *words = (const uint32_t *)custom_data_ptr;
    uint32_t n, i;
    int have_config = 0, have_stream = 0, k;

    if (drv == NULL || !drv->initialized) {
        return mock_fail("ethosu_invoke_v3: driver not initialized with ethosu_init");
    }
    if (custom_data_ptr == NULL || base_addr == NULL || base_addr_size == NULL) {
        return mock_fail("ethosu_invoke_v3: NULL argument(s)");
    }
    if (custom_data_size < 4 || custom_data_size % 4 != 0) {
        mock_fail_detail("custom data size %x is not a positive multiple of 4", (uint32_t)custom_data_size, 0u);
        return -1;
    }
    if (((uintptr_t)custom_data_ptr & 0xFu) != 0u) {
        mock_fail_detail("command stream payload at %x is not 16-byte aligned", (uint32_t)(uintptr_t)custom_data_ptr,
                         0u);
        return -1;
    }
    if (words[0] != MOCK_FOURCC) {
        mock_fail_detail("custom operator payload starts with %x, expected 'COP1' (%x)", words[0], MOCK_FOURCC);
        return -1;
    }
    if (num_base_addr < 1 || num_base_addr > MOCK_MAX_REGIONS) {
        mock_fail_detail("num_base_addr %x (expected 1..%x)", (uint32_t)num_base_addr, MOCK_MAX_REGIONS);
        return -1;
    }
    /* Fast memory given to ethosu_init replaces base_addr[2], as in the driver. */
    if (drv->fast_memory != 0u && num_base_addr > 2) {
        if (base_addr_size[2] > drv->fast_memory_size) {
            mock_fail_detail("fast memory of %x bytes is smaller than base_addr_size[2] = %x",
                             (uint32_t)drv->fast_memory_size, (uint32_t)base_addr_size[2]);
            return -1;
        }
        base_addr[2] = drv->fast_memory;
    }
    for (k = 0; k < num_base_addr; k++) {
        if ((base_addr[k] & 0xFu) != 0u) {
            mock_fail_detail("base address %x at %x is not 16-byte aligned", (uint32_t)k, (uint32_t)base_addr[k]);
            return -1;
        }
        if (base_addr[k] == 0u && base_addr_size[k] != 0u) {
            mock_fail_detail("base address %x is NULL with size %x", (uint32_t)k, (uint32_t)base_addr_size[k]);
            return -1;
        }
    }
    for (k = 0; k < mock_nexpects; k++) {
        const struct mock_expect *e = &mock_expects[k];
        int j;
        if (e->invoke != mock_stats.invokes - 1u) {
            continue;
        }
        if (e->count != num_base_addr) {
            mock_fail_detail("num_base_addr is %x, the test expects %x", (uint32_t)num_base_addr, (uint32_t)e->count);
            return -1;
        }
        for (j = 0; j < e->count; j++) {
            if (base_addr_size[j] != e->sizes[j]) {
                mock_fail_detail("base_addr_size differs from Vela's (index, size): %x, %x", (uint32_t)j,
                                 (uint32_t)base_addr_size[j]);
                return -1;
            }
        }
    }

    n = (uint32_t)custom_data_size / 4u;
    i = 1u;
    while (i < n) {
        uint32_t action = words[i] & 0xFFu;
        if (action == DA_OPTIMIZER_CONFIG) {
            if (i + 3u > n) {
                return mock_fail("custom operator payload: truncated OPTIMIZER_CONFIG record");
            }
            mock_stats.config_word = words[i + 1u];
            if (mock_check_config(words[i + 1u], words[i + 2u]) != 0) {
                return -1;
            }
            have_config = 1;
            i += 3u;
        } else if (action == DA_COMMAND_STREAM) {
            uint32_t length = ((words[i] >> 8) & 0xFFu) << 16 | (words[i] >> 16);
            const uint32_t *cms = &words[i + 1u];
            if (i + 1u + length > n) {
                return mock_fail("custom operator payload: truncated COMMAND_STREAM record");
            }
            if (((uintptr_t)cms & 0xFu) != 0u) {
                mock_fail_detail("command stream at %x is not 16-byte aligned", (uint32_t)(uintptr_t)cms, 0u);
                return -1;
            }
            if (!have_config) {
                return mock_fail("COMMAND_STREAM before OPTIMIZER_CONFIG: the NPU configuration was not checked");
            }
            mock_stats.cms_words = length;
            if (mock_scan_stream(cms, length, base_addr_size, num_base_addr) != 0) {
                return -1;
            }
            have_stream = 1;
            i += 1u + length;
        } else if (action == DA_NOP) {
            i++;
        } else {
            mock_fail_detail("unsupported driver action %x at word %x", action, i);
            return -1;
        }
    }
    if (!have_stream) {
        return mock_fail("custom operator payload without a COMMAND_STREAM");
    }

    /* The NPU's completion interrupt, then the driver's wait, through the (static) semaphore hooks. */
    ethosu_irq_handler(drv);
    if (ethosu_semaphore_take(drv->semaphore, ETHOSU_SEMAPHORE_WAIT_INFERENCE) != 0) {
        return mock_fail("ethosu_semaphore_take failed after the simulated interrupt");
    }

    for (k = 0; k < mock_npreloads; k++) {
        const struct mock_preload *p = &mock_preloads[k];
        if (p->invoke != mock_stats.invokes - 1u) {
            continue;
        }
        if ((int)p->region >= num_base_addr || (uint64_t)p->offset + p->bytes > (uint64_t)base_addr_size[p->region]) {
            mock_fail_detail("preload outside region %x (end %x)", p->region, (uint32_t)(p->offset + p->bytes));
            return -1;
        }
        memcpy((uint8_t *)(uintptr_t)base_addr[p->region] + p->offset, p->data, p->bytes);
    }
    return 0;
}

int ethosu_invoke_v3(struct ethosu_driver *drv, const void *custom_data_ptr, const int custom_data_size,
                     uint64_t *const base_addr, const size_t *base_addr_size, const int num_base_addr,
                     void *user_arg)
{
    int rc;
    (void)user_arg;
    mock_stats.invokes++;
    rc = mock_invoke(drv, custom_data_ptr, custom_data_size, base_addr, base_addr_size, num_base_addr);
    if (rc == 0) {
        mock_stats.passed++;
    } else {
        mock_stats.failed++;
    }
    return rc;
}
