/* edgec_model.h for the test programs in tests/c/ (rq4, libm): the harness's model interface, one input, one output. */
#ifndef EDGEC_MODEL_H
#define EDGEC_MODEL_H
#include <stddef.h>
#define EDGEC_NUM_INPUTS 1
#define EDGEC_NUM_OUTPUTS 1
int edgec_init(void);
int edgec_run(void);
void *edgec_input(int index);
void *edgec_output(int index);
size_t edgec_input_bytes(int index);
size_t edgec_output_bytes(int index);
#endif
