/*
 * insn_count.c - QEMU 7.2 TCG plugin (API version 1): exact guest instruction count between
 * the entry of edgec_bench_begin and the entry of edgec_bench_end.
 *
 *   qemu-system-arm ... -plugin file=insn_count.so,begin=0x1234,end=0x1250,out=/path/count.txt
 *
 * Every translated instruction gets an inline 64-bit add (no helper call, so it stays fast);
 * only the two marker instructions get a callback, which snapshots the running total.
 * count = total(at end entry) - total(at begin entry), i.e. the instructions of the marked
 * region including the marker call/return overhead. Only the first begin/end pair counts.
 * The count (decimal, one line) is written to `out` when the end marker is reached, or printed
 * with qemu_plugin_outs() if no `out` is given. No file is written if the markers are not hit.
 *
 * Debian ships QEMU's plugin symbols but not qemu-plugin.h, so the few declarations used are
 * copied here; they match include/qemu/qemu-plugin.h of QEMU 7.2 (QEMU_PLUGIN_VERSION 1).
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- QEMU plugin API v1 subset ---- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, enum qemu_plugin_op op,
                                                void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

#define EXPORT __attribute__((visibility("default")))
EXPORT int qemu_plugin_version = 1;
EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv);

/* ---- plugin state (the M-profile boards have a single vCPU) ---- */
static uint64_t begin_addr, end_addr;
static const char *out_path;
static uint64_t total;      /* instructions executed so far, bumped inline */
static uint64_t begin_total;
static enum { WAIT_BEGIN, IN_REGION, DONE } state = WAIT_BEGIN;

static void report(uint64_t count)
{
    char line[32];
    snprintf(line, sizeof line, "%" PRIu64 "\n", count);
    if (out_path == NULL) {
        qemu_plugin_outs(line);
        return;
    }
    FILE *f = fopen(out_path, "w");
    if (f == NULL || fputs(line, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "insn_count: cannot write %s\n", out_path);
    }
}

static void on_begin(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    if (state == WAIT_BEGIN) {
        begin_total = total;
        state = IN_REGION;
    }
}

static void on_end(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    if (state == IN_REGION) {
        state = DONE;
        /* Written now: QEMU may exit (semihosting) without running atexit callbacks. */
        report(total - begin_total);
    }
}

static void on_exit_cb(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    if (state != DONE) {
        fprintf(stderr, "insn_count: %s marker never reached\n", state == WAIT_BEGIN ? "begin" : "end");
    }
}

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t vaddr = qemu_plugin_insn_vaddr(insn);
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &total, 1);
        /* Same instrumentation on both markers, so the inline-add/callback order cancels out. */
        if (vaddr == begin_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_begin, QEMU_PLUGIN_CB_NO_REGS, NULL);
        } else if (vaddr == end_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
    }
}

static bool parse_addr(const char *text, uint64_t *addr)
{
    char *end;
    unsigned long long v = strtoull(text, &end, 0);
    if (*text == '\0' || *end != '\0') {
        return false;
    }
    *addr = (uint64_t)v & ~(uint64_t)1; /* drop the Thumb bit of ARM function symbols */
    return true;
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    bool have_begin = false, have_end = false;
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "begin=", 6) == 0) {
            have_begin = parse_addr(argv[i] + 6, &begin_addr);
        } else if (strncmp(argv[i], "end=", 4) == 0) {
            have_end = parse_addr(argv[i] + 4, &end_addr);
        } else if (strncmp(argv[i], "out=", 4) == 0) {
            out_path = argv[i] + 4; /* QEMU keeps plugin args alive until uninstall */
        } else {
            fprintf(stderr, "insn_count: unknown argument '%s'\n", argv[i]);
            return -1;
        }
    }
    if (!have_begin || !have_end || begin_addr == end_addr) {
        fprintf(stderr, "insn_count: need distinct begin=ADDR and end=ADDR arguments\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_atexit_cb(id, on_exit_cb, NULL);
    return 0;
}
