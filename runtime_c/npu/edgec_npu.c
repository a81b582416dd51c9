/*
 * edgec_npu.c - runs Vela's NPU partitions through Arm's Ethos-U driver (see edgec_npu.h, docs/npu.md).
 *
 * Needs the driver's ethosu_driver.h on the include path: ethos-u-core-driver's include/ folder, or the
 * mock driver edgec ships for tests (runtime/npu_mock: checks every call, computes nothing).
 */
#include "edgec_npu.h"

#include <stddef.h>
#include <stdint.h>

#include "ethosu_driver.h"

#ifndef EDGEC_NPU_BASE_ADDRESS
#define EDGEC_NPU_BASE_ADDRESS 0x48102000u /* Ethos-U55 on Corstone-300 / MPS3 AN547 */
#endif
#ifndef EDGEC_NPU_SECURE
#define EDGEC_NPU_SECURE 1u
#endif
#ifndef EDGEC_NPU_PRIVILEGED
#define EDGEC_NPU_PRIVILEGED 1u
#endif

/* Vela's COP1 command streams address three regions: 0 read-only blob, 1 scratch, 2 scratch_fast. */
#define EDGEC_NPU_REGIONS 3

static struct ethosu_driver edgec_npu_drv;
static int edgec_npu_state;  /* 0 = not initialized, 1 = ready, < 0 = ethosu_init failed */
static int edgec_npu_error;  /* first error of the current inference */

int edgec_npu_init(void)
{
    if (edgec_npu_state == 0) {
        /* No fast memory: in Vela's Shared_Sram mode scratch_fast is the arena (base_addr[2] = [1]). */
        int rc = ethosu_init(&edgec_npu_drv, (void *)(uintptr_t)EDGEC_NPU_BASE_ADDRESS, NULL, 0u, EDGEC_NPU_SECURE,
                             EDGEC_NPU_PRIVILEGED);
        edgec_npu_state = rc == 0 ? 1 : (rc < 0 ? rc : -1);
    }
    return edgec_npu_state == 1 ? 0 : edgec_npu_state;
}

struct ethosu_driver *edgec_npu_driver(void)
{
    return &edgec_npu_drv;
}

void edgec_npu_irq_handler(void)
{
    ethosu_irq_handler(&edgec_npu_drv);
}

void edgec_npu_begin(void)
{
    edgec_npu_error = 0;
}

int edgec_npu_end(void)
{
    return edgec_npu_error;
}

int edgec_npu_invoke(const uint8_t *command_stream, int32_t command_stream_bytes, const uint8_t *read_only,
                     int32_t read_only_bytes, uint8_t *scratch, int32_t scratch_bytes, uint8_t *scratch_fast,
                     int32_t scratch_fast_bytes)
{
    /* Writable: the driver may redirect base_addr[2] to its fast memory. */
    uint64_t base_addr[EDGEC_NPU_REGIONS];
    size_t base_addr_size[EDGEC_NPU_REGIONS];
    int rc;

    if (edgec_npu_error != 0) {
        return edgec_npu_error; /* an earlier partition of this inference failed: its outputs are not valid */
    }
    if (edgec_npu_state != 1) {
        edgec_npu_error = edgec_npu_state < 0 ? edgec_npu_state : -1; /* edgec_init() was not called */
        return edgec_npu_error;
    }
    base_addr[0] = (uint64_t)(uintptr_t)read_only;
    base_addr[1] = (uint64_t)(uintptr_t)scratch;
    base_addr[2] = (uint64_t)(uintptr_t)scratch_fast;
    base_addr_size[0] = (size_t)read_only_bytes;
    base_addr_size[1] = (size_t)scratch_bytes;
    base_addr_size[2] = (size_t)scratch_fast_bytes;
    rc = ethosu_invoke_v3(&edgec_npu_drv, command_stream, (int)command_stream_bytes, base_addr, base_addr_size,
                          EDGEC_NPU_REGIONS, NULL);
    if (rc != 0) {
        edgec_npu_error = rc < 0 ? rc : -1;
    }
    return rc;
}

#ifndef EDGEC_NPU_NO_OS_HOOKS
/*
 * Bare-metal mutex and semaphore hooks. The driver declares them weak and its defaults allocate the
 * semaphores with malloc; these use static storage. One thread of execution: the mutex is a no-op; a
 * semaphore is a counter given by the NPU interrupt (ethosu_irq_handler) and taken by the waiting thread.
 * The driver creates one semaphore per driver instance and one per NPU type (ETHOSU_MAX_WAITERS, 4).
 */
#define EDGEC_NPU_SEMAPHORES 8

struct edgec_npu_semaphore {
    volatile uint32_t count;
    uint8_t used;
};

static struct edgec_npu_semaphore edgec_npu_semaphores[EDGEC_NPU_SEMAPHORES];
static uint8_t edgec_npu_mutex_placeholder;

#if defined(__arm__) && defined(__ARM_ARCH_PROFILE) && (__ARM_ARCH_PROFILE == 'M')
static uint32_t edgec_npu_irq_save(void)
{
    uint32_t primask;
    __asm__ volatile("mrs %0, primask\n\tcpsid i" : "=r"(primask)::"memory");
    return primask;
}

static void edgec_npu_irq_restore(uint32_t primask)
{
    __asm__ volatile("msr primask, %0" ::"r"(primask) : "memory");
}

#define EDGEC_NPU_WAIT() __asm__ volatile("wfe" ::: "memory")
#define EDGEC_NPU_SIGNAL() __asm__ volatile("sev" ::: "memory")
#else /* host builds (tests with the mock driver) */
static uint32_t edgec_npu_irq_save(void)
{
    return 0u;
}

static void edgec_npu_irq_restore(uint32_t primask)
{
    (void)primask;
}

#define EDGEC_NPU_WAIT() ((void)0)
#define EDGEC_NPU_SIGNAL() ((void)0)
#endif

void *ethosu_mutex_create(void)
{
    return &edgec_npu_mutex_placeholder;
}

void ethosu_mutex_destroy(void *mutex)
{
    (void)mutex;
}

int ethosu_mutex_lock(void *mutex)
{
    (void)mutex;
    return 0;
}

int ethosu_mutex_unlock(void *mutex)
{
    (void)mutex;
    return 0;
}

void *ethosu_semaphore_create(void)
{
    uint32_t saved = edgec_npu_irq_save();
    void *sem = NULL;
    int i;
    for (i = 0; i < EDGEC_NPU_SEMAPHORES; i++) {
        if (!edgec_npu_semaphores[i].used) {
            edgec_npu_semaphores[i].used = 1u;
            edgec_npu_semaphores[i].count = 0u;
            sem = &edgec_npu_semaphores[i];
            break;
        }
    }
    edgec_npu_irq_restore(saved);
    return sem; /* NULL when all are in use: the driver reports the error */
}

void ethosu_semaphore_destroy(void *sem)
{
    struct edgec_npu_semaphore *s = (struct edgec_npu_semaphore *)sem;
    if (s != NULL) {
        s->used = 0u;
    }
}

/* timeout: 0 = do not wait; anything else waits until given (bare metal has no timer here). */
int ethosu_semaphore_take(void *sem, uint64_t timeout)
{
    struct edgec_npu_semaphore *s = (struct edgec_npu_semaphore *)sem;
    for (;;) {
        uint32_t saved = edgec_npu_irq_save();
        if (s->count > 0u) {
            s->count--;
            edgec_npu_irq_restore(saved);
            return 0;
        }
        edgec_npu_irq_restore(saved);
        if (timeout == 0u) {
            return -1;
        }
        EDGEC_NPU_WAIT(); /* woken by the interrupt's SEV (or any event); a pending SEV makes this return */
    }
}

int ethosu_semaphore_give(void *sem)
{
    struct edgec_npu_semaphore *s = (struct edgec_npu_semaphore *)sem;
    uint32_t saved = edgec_npu_irq_save();
    s->count++;
    edgec_npu_irq_restore(saved);
    EDGEC_NPU_SIGNAL();
    return 0;
}
#endif /* EDGEC_NPU_NO_OS_HOOKS */
