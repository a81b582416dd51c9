/* Test driver (tests/test_train_build.py): one edgec_train_sample of a generated training step.
 * grad_driver PARAMS RECORD OUT ARENA: loads the parameter vector (EDGEC_TRAIN_PARAMS floats) and one training
 * record, writes the loss and the sample gradient (EDGEC_TRAIN_TRAINABLE floats) to OUT and the int8 arena
 * after the prefix (the float part's input) to ARENA. */
#include <stdio.h>
#include <stdlib.h>

#include "edgec_model.h"
#include "edgec_training.h"

const uint8_t *edgec_train_prefix(void);

static void load(const char *path, void *data, size_t bytes)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL || fread(data, 1, bytes, f) != bytes) {
        fprintf(stderr, "cannot read %zu bytes from %s\n", bytes, path);
        exit(2);
    }
    fclose(f);
}

int main(int argc, char **argv)
{
    static uint8_t record[EDGEC_TRAIN_RECORD_BYTES];
    float loss;
    FILE *f;
    if (argc != 5 || edgec_init() != EDGEC_OK || edgec_train_init() != EDGEC_OK) {
        return 2;
    }
    load(argv[1], edgec_train_params(), EDGEC_TRAIN_PARAMS * sizeof(float));
    load(argv[2], record, sizeof record);
    loss = edgec_train_sample(record);
    f = fopen(argv[3], "wb");
    if (f == NULL) {
        return 2;
    }
    fwrite(&loss, sizeof loss, 1, f);
    fwrite(edgec_train_sample_gradient(), sizeof(float), EDGEC_TRAIN_TRAINABLE, f);
    fclose(f);
    (void)edgec_set_input(0, record, EDGEC_TRAIN_INPUT_BYTES);
    f = fopen(argv[4], "wb");
    if (f == NULL) {
        return 2;
    }
    fwrite(edgec_train_prefix(), 1, EDGEC_ARENA_BYTES, f);
    fclose(f);
    return 0;
}
