/*
 * field_driver.c - white-box test driver for the GF(2^255 - 19) arithmetic of runtime_c/ota/edgec_ed25519.c
 * (the static functions are reached by including the .c file).
 *
 * stdin, one command per line, limbs as 10 hex words; stdout, one line per command:
 *   mul A B | sq A | add A B | sub A B | inv A   -> the 10 result limbs
 *   tobytes A                                    -> 64 hex digits (canonical little-endian encoding)
 *   frombytes S                                  -> 10 limbs of the 32-byte hex S (bit 255 ignored)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgec_ed25519.c"

static void read_limbs(fe f)
{
    unsigned i;
    for (i = 0; i < 10; i++) {
        unsigned long v;
        if (scanf("%lx", &v) != 1) {
            fprintf(stderr, "field_driver: expected 10 hex limbs\n");
            exit(2);
        }
        f[i] = (uint32_t)v;
    }
}

static void print_limbs(const fe f)
{
    unsigned i;
    for (i = 0; i < 10; i++) {
        printf(i ? " %lx" : "%lx", (unsigned long)f[i]);
    }
    putchar('\n');
}

int main(void)
{
    char op[16];
    while (scanf("%15s", op) == 1) {
        fe a, b, r;
        if (strcmp(op, "frombytes") == 0) {
            uint8_t s[32];
            unsigned i, v;
            for (i = 0; i < 32; i++) {
                if (scanf("%2x", &v) != 1) {
                    fprintf(stderr, "field_driver: expected 64 hex digits\n");
                    return 2;
                }
                s[i] = (uint8_t)v;
            }
            fe_frombytes(r, s);
            print_limbs(r);
            continue;
        }
        read_limbs(a);
        if (strcmp(op, "tobytes") == 0) {
            uint8_t s[32];
            unsigned i;
            fe_tobytes(s, a);
            for (i = 0; i < 32; i++) {
                printf("%02x", s[i]);
            }
            putchar('\n');
            continue;
        }
        if (strcmp(op, "sq") == 0) {
            fe_sq(r, a);
        } else if (strcmp(op, "inv") == 0) {
            fe_pow(r, a, 1);
        } else {
            read_limbs(b);
            if (strcmp(op, "mul") == 0) {
                fe_mul(r, a, b);
            } else if (strcmp(op, "add") == 0) {
                fe_add(r, a, b);
            } else if (strcmp(op, "sub") == 0) {
                fe_sub(r, a, b);
            } else {
                fprintf(stderr, "field_driver: unknown op %s\n", op);
                return 2;
            }
        }
        print_limbs(r);
    }
    return 0;
}
