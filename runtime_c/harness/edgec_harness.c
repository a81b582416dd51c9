/*
 * edgec_harness.c - main() that runs a generated edgec model over a file of input records.
 *
 * Input file:  N records; a record is all model inputs' bytes concatenated in index order.
 * Output file: N records; a record is all model outputs' bytes concatenated in index order.
 *
 * Host build:   `harness IN OUT` with stdio.
 * Target build: -DEDGEC_SEMIHOSTING; files edgec_in.bin / edgec_out.bin in the debugger's
 *               (QEMU's) working directory, accessed with semihosting; the exit code is
 *               passed to QEMU with SYS_EXIT_EXTENDED.
 *
 * Records are read straight into the model's input buffers and written straight from its
 * output buffers, so the harness needs no file-sized (or record-sized) RAM buffer.
 * The first inference is bracketed by edgec_bench_begin()/edgec_bench_end(), whose entry
 * addresses the QEMU instruction-count plugin watches. Exit codes: enum edgec_exit_code.
 */
#include <stddef.h>

#include "edgec_model.h"
#include "edgec_semihost.h" /* exit codes; semihosting functions are only used on target */

#ifndef EDGEC_SEMIHOSTING
#include <stdio.h>
#include <stdlib.h>
#endif

void edgec_bench_begin(void);
void edgec_bench_end(void);

/* Optional hooks (weak defaults do nothing), e.g. defined by `edgec run --activate` to set adapter slots:
 * edgec_harness_setup() runs once after edgec_init(), edgec_harness_before_run(r) before the inference of
 * record r (outside the benchmark markers). A non-zero return stops the harness with an error. */
int edgec_harness_setup(void);
int edgec_harness_before_run(unsigned long record);

__attribute__((weak)) int edgec_harness_setup(void)
{
    return 0;
}

__attribute__((weak)) int edgec_harness_before_run(unsigned long record)
{
    (void)record;
    return 0;
}

/* Written by the markers so their bodies differ: otherwise -O2 identical-code folding
 * could merge the two functions into one address. */
volatile int edgec_bench_state;

/* noinline + volatile store + asm memory clobber: the calls and both symbols survive -O2/LTO,
 * and no memory access of the model is moved across them. */
__attribute__((noinline)) void edgec_bench_begin(void)
{
    edgec_bench_state = 1;
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void edgec_bench_end(void)
{
    edgec_bench_state = 2;
    __asm__ volatile("" ::: "memory");
}

/* ---- Minimal file layer: the only part that differs between host and target. ---- */
#ifdef EDGEC_SEMIHOSTING
typedef int harness_file;

__attribute__((noreturn)) static void fail(int code, const char *msg)
{
    edgec_semihost_write0("edgec harness error: ");
    edgec_semihost_write0(msg);
    edgec_semihost_write0("\n");
    edgec_semihost_exit(code);
}

static harness_file open_file(const char *path, int for_write)
{
    int fh = edgec_semihost_open(path, for_write ? EDGEC_SEMIHOST_MODE_WB : EDGEC_SEMIHOST_MODE_RB);
    if (fh < 0) {
        fail(for_write ? EDGEC_EXIT_OPEN_OUTPUT : EDGEC_EXIT_OPEN_INPUT,
             for_write ? "cannot open output file edgec_out.bin" : "cannot open input file edgec_in.bin");
    }
    return fh;
}

static long file_size(harness_file f)
{
    return edgec_semihost_flen(f);
}

static int read_exact(harness_file f, void *buf, size_t len)
{
    return edgec_semihost_read(f, buf, len) == len;
}

static int write_all(harness_file f, const void *buf, size_t len)
{
    return edgec_semihost_write(f, buf, len) == len;
}

static void close_file(harness_file f)
{
    (void)edgec_semihost_close(f);
}

#else /* host */
typedef FILE *harness_file;

__attribute__((noreturn)) static void fail(int code, const char *msg)
{
    fprintf(stderr, "edgec harness error: %s\n", msg);
    exit(code);
}

static harness_file open_file(const char *path, int for_write)
{
    FILE *f = fopen(path, for_write ? "wb" : "rb");
    if (f == NULL) {
        fail(for_write ? EDGEC_EXIT_OPEN_OUTPUT : EDGEC_EXIT_OPEN_INPUT,
             for_write ? "cannot open output file" : "cannot open input file");
    }
    return f;
}

static long file_size(harness_file f)
{
    long size;
    if (fseek(f, 0, SEEK_END) != 0) {
        return -1;
    }
    size = ftell(f);
    return fseek(f, 0, SEEK_SET) == 0 ? size : -1;
}

static int read_exact(harness_file f, void *buf, size_t len)
{
    return fread(buf, 1, len, f) == len;
}

static int write_all(harness_file f, const void *buf, size_t len)
{
    return fwrite(buf, 1, len, f) == len;
}

static void close_file(harness_file f)
{
    if (fclose(f) != 0) {
        fail(EDGEC_EXIT_WRITE, "cannot close file");
    }
}
#endif

int main(int argc, char **argv)
{
    const char *in_path = "edgec_in.bin";
    const char *out_path = "edgec_out.bin";
    size_t record_bytes = 0;
    long size;
    unsigned long n_records, r;
    int i;

#ifndef EDGEC_SEMIHOSTING
    if (argc != 3) {
        fail(EDGEC_EXIT_USAGE, "usage: harness INPUT_FILE OUTPUT_FILE");
    }
    in_path = argv[1];
    out_path = argv[2];
#else
    (void)argc;
    (void)argv;
#endif

    if (edgec_init() != 0) {
        fail(EDGEC_EXIT_INIT, "edgec_init() failed");
    }
    for (i = 0; i < EDGEC_NUM_INPUTS; i++) {
        if (edgec_input(i) == NULL) {
            fail(EDGEC_EXIT_BAD_MODEL, "edgec_input() returned NULL");
        }
        record_bytes += edgec_input_bytes(i);
    }
    for (i = 0; i < EDGEC_NUM_OUTPUTS; i++) {
        if (edgec_output(i) == NULL) {
            fail(EDGEC_EXIT_BAD_MODEL, "edgec_output() returned NULL");
        }
    }
    if (record_bytes == 0) {
        fail(EDGEC_EXIT_BAD_MODEL, "model has no input bytes");
    }
    if (edgec_harness_setup() != 0) {
        fail(EDGEC_EXIT_INIT, "edgec_harness_setup() failed");
    }

    harness_file in = open_file(in_path, 0);
    size = file_size(in);
    if (size < 0 || (unsigned long)size % record_bytes != 0) {
        fail(EDGEC_EXIT_INPUT_SIZE, "input file size is not a multiple of the input record size");
    }
    n_records = (unsigned long)size / record_bytes;
    harness_file out = open_file(out_path, 1);

    for (r = 0; r < n_records; r++) {
        int rc;
        for (i = 0; i < EDGEC_NUM_INPUTS; i++) {
            if (!read_exact(in, edgec_input(i), edgec_input_bytes(i))) {
                fail(EDGEC_EXIT_READ, "short read from input file");
            }
        }
        if (edgec_harness_before_run(r) != 0) {
            fail(EDGEC_EXIT_RUN, "edgec_harness_before_run() failed");
        }
        if (r == 0) {
            edgec_bench_begin();
        }
        rc = edgec_run();
        if (r == 0) {
            edgec_bench_end();
        }
        if (rc != 0) {
            fail(EDGEC_EXIT_RUN, "edgec_run() failed");
        }
        for (i = 0; i < EDGEC_NUM_OUTPUTS; i++) {
            if (!write_all(out, edgec_output(i), edgec_output_bytes(i))) {
                fail(EDGEC_EXIT_WRITE, "short write to output file");
            }
        }
    }
    close_file(in);
    close_file(out);
#ifdef EDGEC_SEMIHOSTING
    edgec_semihost_exit(EDGEC_EXIT_OK);
#else
    return EDGEC_EXIT_OK;
#endif
}
