/*
 * edgec_train.h - float32 building blocks of an on-device training step for LoRA adapter tensors.
 *
 * The base model stays frozen in int8 (weights wq with per-output-channel scales ws: W = wq * ws); the adapter
 * of a layer is trained in float32: y = W x + bias + s * B (A x), A [R, K], B [O, R], s the adapter's scale.
 * Training runs one sample at a time (so DP-SGD can clip each sample's gradient): a forward pass that keeps
 * what the backward pass needs, a backward pass that accumulates the adapter gradients (+=) and, for the layer
 * below, the gradient of the input (=). All arrays are row-major and caller-owned (static memory); nothing
 * here allocates. Status: fully-connected, convolution and depthwise layers, pooling, ReLU, softmax +
 * cross-entropy, MSE, clipping, DP noise, SGD and Adam, the sample buffer, quantizing a trained layer into its
 * slot tables for a checkpoint (docs/training.md). ADD needs no
 * kernel: its backward passes gy to both inputs; RESHAPE passes it through.
 */
#ifndef EDGEC_TRAIN_H
#define EDGEC_TRAIN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A fully-connected layer with a LoRA adapter. */
typedef struct {
    int k, o, r;           /* input features, outputs, adapter rank */
    const int8_t *wq;      /* [o, k] frozen int8 weights */
    const float *ws;       /* [o] per-output-channel weight scales */
    const float *bias;     /* [o] or NULL */
    const float *a, *b;    /* [r, k], [o, r] adapter tensors (trained) */
    float scale;           /* adapter scale (lora_alpha / r) */
} edgec_train_fc_t;

/* y[o] = W x + bias + scale * B t with t = A x (t [r] is kept for the backward pass). */
void edgec_train_fc_forward(const edgec_train_fc_t *l, const float *x, float *t, float *y);

/* From gy = dL/dy: ga += dL/dA, gb += dL/dB (either may be NULL: that tensor is not trained), and gx = dL/dx
 * when gx is not NULL. gt [r] is scratch. */
void edgec_train_fc_backward(const edgec_train_fc_t *l, const float *x, const float *t, const float *gy,
                             float *gx, float *ga, float *gb, float *gt);

/* A 2-D convolution (NHWC, one image, dilation 1) with a LoRA adapter. Regular: weights [oc, kh, kw, c];
 * depthwise: weights [kh, kw, oc] and output channel o reads input channel o / (oc / c). The adapter is a
 * full convolution in both cases (PEFT's lora_A on a depthwise Conv2d spans all input channels): A [r, kh, kw,
 * c] with the layer's stride and padding, then B [oc, r] as a 1x1 convolution. Out-of-image taps are zero. */
typedef struct {
    int h, w, c, oh, ow, oc;       /* input and output shapes */
    int kh, kw, sh, sw, pt, pl;    /* window, stride, padding before (top, left) */
    int depthwise;
    int r;
    const int8_t *wq;
    const float *ws, *bias;        /* [oc] scales, [oc] or NULL */
    const float *a, *b;            /* [r, kh, kw, c], [oc, r] */
    float scale;
} edgec_train_conv_t;

/* y [oh, ow, oc]; t [oh, ow, r] is kept for the backward pass. */
void edgec_train_conv_forward(const edgec_train_conv_t *l, const float *x, float *t, float *y);

/* As edgec_train_fc_backward; gx [h, w, c] (=) when not NULL; gt [oh, ow, r] scratch. */
void edgec_train_conv_backward(const edgec_train_conv_t *l, const float *x, const float *t, const float *gy,
                               float *gx, float *ga, float *gb, float *gt);

/* Average or max pooling windows (NHWC, one image): the average is over the in-image taps only (TFLite's
 * AVERAGE_POOL_2D); max keeps, per output, the input index it took (argmax [oh, ow, c]) for the backward. */
typedef struct {
    int h, w, c, oh, ow;
    int kh, kw, sh, sw, pt, pl;
    int max;
} edgec_train_pool_t;

void edgec_train_pool_forward(const edgec_train_pool_t *l, const float *x, float *y, int32_t *argmax);
/* gx [h, w, c] (=) from gy [oh, ow, c]; argmax as the forward pass left it (max pooling only). */
void edgec_train_pool_backward(const edgec_train_pool_t *l, const int32_t *argmax, const float *gy, float *gx);

/* Global average pooling of x [n, c] (n pixels) into y [c], and its backward: gx[p, c] = gy[c] / n. */
void edgec_train_mean_forward(const float *x, int n, int c, float *y);
void edgec_train_mean_backward(const float *gy, int n, int c, float *gx);

/* ReLU / ReLU6 backward in place: g[i] = 0 where the forward output y[i] was clamped (y <= 0, or y >= 6
 * for ReLU6 with relu6 != 0). */
void edgec_train_relu_backward(const float *y, float *g, int n, int relu6);

/* Cross-entropy of softmax(z) against class `target`; gz = softmax(z) - onehot(target). Returns the loss. */
float edgec_train_softmax_xent(const float *z, int n, int target, float *gz);

/* Mean squared error of y against t; gy = 2 (y - t) / n. Returns the loss. */
float edgec_train_mse(const float *y, const float *t, int n, float *gy);

/* Scale g (the concatenated gradients of one sample) so that its L2 norm is at most c (DP-SGD clipping).
 * Returns the norm before clipping. */
float edgec_train_clip(float *g, int n, float c);

/* DP-SGD noise. Random bits come from the HAL hook edgec_hal_random(), which the application defines (a
 * hardware TRNG, or a CSPRNG seeded from one). edgec_train_rng.c provides a deterministic, seedable
 * xorshift64* generator instead when compiled with EDGEC_TRAIN_TEST_RNG (tests and reproducible runs only:
 * it is not a source of privacy). */
uint32_t edgec_hal_random(void);
void edgec_train_rng_seed(uint64_t seed); /* EDGEC_TRAIN_TEST_RNG only */

/* One standard normal sample (Box-Muller on two 24-bit uniforms from edgec_hal_random). */
float edgec_train_gaussian(void);

/* g[i] += std * N(0, 1): the Gaussian noise of DP-SGD (std = noise multiplier * clip norm). */
void edgec_train_add_noise(float *g, int n, float std);

/* p -= lr * g. */
void edgec_train_sgd(float *p, const float *g, int n, float lr);

/* Adam (Kingma & Ba) step `step` (1-based) with moments m, v. */
void edgec_train_adam(float *p, const float *g, float *m, float *v, int n, float lr, float beta1, float beta2,
                      float eps, int step);

/* The on-device sample buffer: a ring of `capacity` records of `record_bytes` (an input and its target, as
 * the application lays them out) in caller-owned storage; when full, a push overwrites the oldest record.
 * Every `holdout`-th record pushed (sequence numbers 0, holdout, 2 holdout, ...) is held out for
 * validation, for as long as it stays in the buffer; holdout 0 holds nothing out. */
typedef struct {
    uint8_t *storage;
    uint32_t record_bytes, capacity, holdout;
    uint32_t pushed; /* records pushed so far; the buffer holds the last min(pushed, capacity) */
} edgec_train_buffer_t;

void edgec_train_buffer_init(edgec_train_buffer_t *b, uint8_t *storage, uint32_t record_bytes, uint32_t capacity,
                             uint32_t holdout);
void edgec_train_buffer_push(edgec_train_buffer_t *b, const uint8_t *record);
/* Number of held records in the split (0: training, 1: validation), and the i-th of them, oldest first
 * (NULL when i is out of range). */
uint32_t edgec_train_buffer_count(const edgec_train_buffer_t *b, int validation);
const uint8_t *edgec_train_buffer_get(const edgec_train_buffer_t *b, int validation, uint32_t i);

/* Checkpoint: one trained layer's float factors -> the int8 slot tables of its bank (docs/adapters.md, "Scheme";
 * the same bytes as edgec.quantize.adapter_tables.slot_tables for one slot). */
#define EDGEC_TRAIN_ERR_ARG (-1)    /* a NULL pointer, a size out of range, a non-finite factor, ws not > 0 */
#define EDGEC_TRAIN_ERR_RANGE (-2)  /* the branch could overflow int64: |B t| >= 2^42 */
#define EDGEC_TRAIN_ERR_DWARFS (-3) /* a channel's branch is >= 2^14 of its base weight steps */

/* a [r, k], b [oc, r] float (0 <= r <= rank; a and b may be NULL when r == 0); ws [oc] the base's per-channel
 * weight scales (finite, > 0). Writes a_q [rank, k] (rows >= r zero), b_q [oc, rank] (columns >= r zero) and
 * mult [oc, 2] ((multiplier, shift); (0, 1) for a channel without a branch): each row of A is scaled to
 * max |.| = 1 (1 for a zero row) and that factor folded into B; A * 127 rounded half away from zero, clipped
 * to +-127 (per-tensor scale 1/127); B per output channel (scale sb[c] = max |B[c]| / 127, same rounding);
 * multiplier / 2^shift = (1/127) sb[c] / ws[c] with a 15-bit multiplier (from frexp; a multiplier that rounds
 * to 2^15 becomes 2^14 with the exponent + 1); shift > 62 gives (0, 1) (less than 2^-47 accumulator units).
 * Computes in double, so the tables equal edgec.quantize.adapter_tables.slot_tables byte for byte.
 * Returns 0; EDGEC_TRAIN_ERR_ARG (checked first: nothing is written); EDGEC_TRAIN_ERR_RANGE (checked before
 * DWARFS, as slot_tables) or EDGEC_TRAIN_ERR_DWARFS (shift < 1): then the outputs hold the tables of no branch
 * (a_q, b_q zero, mult (0, 1)), which add nothing if they are written anyway. mult is also scratch (8 bytes per
 * channel) during the call. O(r k + oc r) time (the exact |B t| bound, O(oc r k) integer additions, only runs
 * when r k >= 1,069,332, the smallest size that can reach 2^42); no allocation. */
int edgec_train_quantize_layer(const float *a, const float *b, int r, int k, int oc, int rank, const float *ws,
                               int8_t *a_q, int8_t *b_q, int32_t *mult);

#ifdef __cplusplus
}
#endif

#endif /* EDGEC_TRAIN_H */
