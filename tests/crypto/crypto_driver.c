/*
 * crypto_driver.c - host test driver for runtime_c/ota (SHA-256, SHA-512, Ed25519 verification).
 *
 * Reads commands from stdin, one per line, and writes one result line per command to stdout:
 *   sha256 CHUNK MSG          -> 64 hex digits: SHA-256 of MSG, fed to update() CHUNK bytes at a time
 *   sha512 CHUNK MSG          -> 128 hex digits (CHUNK 0: the whole message in one update() call)
 *   ed25519 SIG PUB MSG       -> 1 (valid) or 0
 * MSG, SIG and PUB are hex ("-" is the empty message). Every byte string is copied into a heap block
 * of exactly its size (empty: a NULL pointer), so AddressSanitizer catches any read past the end;
 * hashing also interleaves zero-length updates, the first with a NULL pointer.
 * Exit status 0, or 2 with a message on stderr for a malformed command.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgec_ed25519.h"
#include "edgec_sha256.h"
#include "edgec_sha512.h"

static void die(const char *msg, const char *detail)
{
    fprintf(stderr, "crypto_driver: %s%s\n", msg, detail);
    exit(2);
}

static char *read_all(FILE *f)
{
    size_t cap = 1 << 16, len = 0, n;
    char *buf = malloc(cap);
    if (buf == NULL) {
        die("out of memory", "");
    }
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len - 1 == 0) {
            cap *= 2;
            buf = realloc(buf, cap);
            if (buf == NULL) {
                die("out of memory", "");
            }
        }
    }
    buf[len] = '\0';
    return buf;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Exactly-sized heap copy of a hex string (NULL for "-"); *len gets the byte count. */
static uint8_t *parse_hex(const char *tok, size_t *len)
{
    size_t n, i;
    uint8_t *out;
    if (tok == NULL) {
        die("missing argument", "");
    }
    if (strcmp(tok, "-") == 0) {
        *len = 0;
        return NULL;
    }
    n = strlen(tok);
    if (n % 2 != 0) {
        die("odd-length hex: ", tok);
    }
    out = malloc(n / 2);
    if (out == NULL) {
        die("out of memory", "");
    }
    for (i = 0; i < n / 2; i++) {
        int hi = hexval(tok[2 * i]), lo = hexval(tok[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            die("bad hex: ", tok);
        }
        out[i] = (uint8_t)(hi * 16 + lo);
    }
    *len = n / 2;
    return out;
}

static uint8_t *parse_fixed(const char *tok, size_t want)
{
    size_t len;
    uint8_t *out = parse_hex(tok, &len);
    if (len != want) {
        die("wrong length: ", tok);
    }
    return out;
}

static void print_hex(const uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        printf("%02x", p[i]);
    }
    putchar('\n');
}

static size_t parse_chunk(const char *tok)
{
    char *end;
    unsigned long v;
    if (tok == NULL) {
        die("missing chunk size", "");
    }
    v = strtoul(tok, &end, 10);
    if (*end != '\0') {
        die("bad chunk size: ", tok);
    }
    return (size_t)v;
}

static void do_sha(int bits, size_t chunk, const uint8_t *msg, size_t len)
{
    edgec_sha256_ctx c256;
    edgec_sha512_ctx c512;
    uint8_t out[64];
    size_t pos = 0;

    if (bits == 256) {
        edgec_sha256_init(&c256);
        edgec_sha256_update(&c256, NULL, 0);
    } else {
        edgec_sha512_init(&c512);
        edgec_sha512_update(&c512, NULL, 0);
    }
    if (chunk == 0) {
        chunk = len;
    }
    while (pos < len) {
        size_t n = len - pos < chunk ? len - pos : chunk;
        if (bits == 256) {
            edgec_sha256_update(&c256, msg + pos, n);
            edgec_sha256_update(&c256, msg + pos + n, 0);
        } else {
            edgec_sha512_update(&c512, msg + pos, n);
            edgec_sha512_update(&c512, msg + pos + n, 0);
        }
        pos += n;
    }
    if (bits == 256) {
        edgec_sha256_final(&c256, out);
        print_hex(out, 32);
    } else {
        edgec_sha512_final(&c512, out);
        print_hex(out, 64);
    }
}

int main(void)
{
    char *input = read_all(stdin);
    char *line;

    for (line = strtok(input, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        char *cmd, *a1, *a2, *a3;
        size_t len;
        uint8_t *msg;
        cmd = line;
        /* split on single spaces by hand: strtok is already walking the lines */
        a1 = strchr(cmd, ' ');
        if (a1 != NULL) *a1++ = '\0';
        a2 = a1 != NULL ? strchr(a1, ' ') : NULL;
        if (a2 != NULL) *a2++ = '\0';
        a3 = a2 != NULL ? strchr(a2, ' ') : NULL;
        if (a3 != NULL) *a3++ = '\0';

        if (strcmp(cmd, "sha256") == 0 || strcmp(cmd, "sha512") == 0) {
            size_t chunk = parse_chunk(a1);
            msg = parse_hex(a2, &len);
            do_sha(strcmp(cmd, "sha256") == 0 ? 256 : 512, chunk, msg, len);
            free(msg);
        } else if (strcmp(cmd, "ed25519") == 0) {
            uint8_t *sig = parse_fixed(a1, 64), *pub = parse_fixed(a2, 32);
            msg = parse_hex(a3, &len);
            printf("%d\n", edgec_ed25519_verify(sig, pub, msg, len));
            free(sig);
            free(pub);
            free(msg);
        } else {
            die("unknown command: ", cmd);
        }
    }
    free(input);
    return fflush(stdout) == 0 ? 0 : 2;
}
