/*
 * ethosu_driver.h (edgec mock) - the subset of Arm's ethos-u-core-driver API that edgec uses, with the same
 * names and signatures (driver 24.x/25.x: ethosu_invoke_v3 with a writable base_addr array, semaphore_take
 * with a timeout), implemented by ethosu_driver_mock.c for host and QEMU tests.
 *
 * The mock computes nothing: QEMU's MPS3 AN547 has no working NPU and Arm's FVP is not available. It checks
 * every call as the driver and the NPU would (docs/npu.md): the COP1 payload, that its OPTIMIZER_CONFIG matches
 * the emulated NPU (ETHOSU_MOCK_MACS: 32, 64, 128 or 256 -> Ethos-U55 with that many MACs/cycle; default
 * 128), 16-byte alignment of the command stream and of every base address, and that every region the register
 * command stream reads or writes (weights, scales, DMA, IFM/OFM start) lies inside base_addr_size. Then it
 * "runs" the stream: it writes the bytes a test registered with ethosu_mock_preload (the OFMs a reference
 * computed), and nothing else.
 */
#ifndef ETHOSU_DRIVER_H
#define ETHOSU_DRIVER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ETHOSU_DRIVER_MOCK 1

#define ETHOSU_SEMAPHORE_WAIT_FOREVER (UINT64_MAX)
#define ETHOSU_SEMAPHORE_WAIT_INFERENCE ETHOSU_SEMAPHORE_WAIT_FOREVER

struct ethosu_driver {
    void *base_address;     /* the NPU's register block (not touched by the mock) */
    uint64_t fast_memory;
    size_t fast_memory_size;
    uint32_t secure_enable;
    uint32_t privilege_enable;
    void *semaphore;        /* created through the semaphore hooks, as the driver does */
    int initialized;
};

/* ---- The driver API edgec calls ---- */
int ethosu_init(struct ethosu_driver *drv, void *const base_address, const void *fast_memory,
                const size_t fast_memory_size, uint32_t secure_enable, uint32_t privilege_enable);
void ethosu_deinit(struct ethosu_driver *drv);
int ethosu_invoke_v3(struct ethosu_driver *drv, const void *custom_data_ptr, const int custom_data_size,
                     uint64_t *const base_addr, const size_t *base_addr_size, const int num_base_addr,
                     void *user_arg);
void ethosu_irq_handler(struct ethosu_driver *drv);

/* ---- Hooks the driver declares weak (edgec_npu.c overrides them without malloc) ---- */
void *ethosu_mutex_create(void);
void ethosu_mutex_destroy(void *mutex);
int ethosu_mutex_lock(void *mutex);
int ethosu_mutex_unlock(void *mutex);
void *ethosu_semaphore_create(void);
void ethosu_semaphore_destroy(void *sem);
int ethosu_semaphore_take(void *sem, uint64_t timeout);
int ethosu_semaphore_give(void *sem);

/* ---- Mock only: test controls ---- */
struct ethosu_mock_stats {
    uint32_t invokes;        /* ethosu_invoke_v3 calls since ethosu_mock_reset() */
    uint32_t passed;         /* calls whose checks all passed */
    uint32_t failed;
    uint32_t config_word;    /* OPTIMIZER_CONFIG word of the last payload */
    uint32_t cms_words;      /* register command stream length of the last payload */
    uint32_t operations;     /* NPU operations (conv, depthwise, pool, elementwise, DMA) checked, all calls */
    char last_error[160];    /* the first failed check since ethosu_mock_reset(), "" if none */
};

/* Forget the invoke count, the preloads and the error (stats.operations too). */
void ethosu_mock_reset(void);
const struct ethosu_mock_stats *ethosu_mock_get_stats(void);

/* On invoke number `invoke` (0-based since the reset), after its checks pass, copy `bytes` of `data` to
 * base_addr[region] + offset: the result the real NPU would have written. Returns 0, or -1 if the table
 * (16 entries) is full. The data must stay valid until that invoke. */
int ethosu_mock_preload(uint32_t invoke, uint32_t region, uint32_t offset, const void *data, size_t bytes);

/* Base sizes the test expects for invoke number `invoke` (what Vela reported); checked when set. */
int ethosu_mock_expect_sizes(uint32_t invoke, const size_t *sizes, int count);

/* Called with a message when a check fails. Weak: prints to stderr on hosted builds, does nothing on
 * bare-metal ones; a test can define it (e.g. to print through semihosting). */
void ethosu_mock_on_error(const char *message);

#ifdef __cplusplus
}
#endif

#endif /* ETHOSU_DRIVER_H */
