/*
 * train_driver.c - gradient and optimizer checks for runtime_c/train (tests/test_train_kernels.py).
 *
 * stdin: int32 K, H, O, R1, R2, target, loss (0 softmax + cross-entropy, 1 MSE), relu6; float32 s1, s2;
 * int8 wq1[H K]; float32 ws1[H], bias1[H], a1[R1 K], b1[H R1]; int8 wq2[O H]; float32 ws2[O], bias2[O],
 * a2[R2 H], b2[O R2], x[K], y_target[O].
 * The model: FC1 (+ adapter) -> ReLU (ReLU6) -> FC2 (+ adapter) -> loss, one sample.
 * stdout: float32 loss, ga1, gb1, ga2, gb2, gx[K].
 *
 * `train_driver cnn`: conv (+ adapter) -> ReLU -> depthwise conv (+ adapter) -> ReLU -> global mean -> FC
 * (+ adapter) -> softmax + cross-entropy, one image. stdin per conv layer: int32 h, w, c, oh, ow, oc, kh, kw,
 * sh, sw, pt, pl, depthwise, r; float32 scale; int8 weights; float32 ws[oc], bias[oc], a, b; then the FC:
 * int32 k, o, r; float32 scale; int8 wq; float32 ws, bias, a, b; then float32 x[h w c], int32 target.
 * stdout: float32 loss, then ga, gb of conv, depthwise and FC, then gx.
 *
 * `train_driver pool`: stdin int32 h, w, c, oh, ow, kh, kw, sh, sw, pt, pl, max; float32 x[h w c], gy[oh ow c];
 * stdout float32 y[oh ow c], gx[h w c].
 *
 * `train_driver buffer`: stdin int32 capacity, holdout, pushes; pushes 4-byte records 0, 1, 2, ... into a
 * sample buffer; stdout int32 train count, the training records, validation count, the validation records.
 *
 * `train_driver noise`: stdin uint64 seed, int32 n, float32 std, g[n]; stdout g after edgec_train_add_noise
 * (needs EDGEC_TRAIN_TEST_RNG and edgec_train_rng.c).
 *
 * `train_driver opt`: stdin int32 n, steps; float32 lr, beta1, beta2, eps, clip; p[n], then g[n] per step.
 * stdout: float32 p after `steps` SGD steps, p after `steps` Adam steps, the last g clipped to norm `clip`,
 * and its norm before clipping.
 */
#include <stdio.h>
#include <stdlib.h>

#include "edgec_train.h"

static void *take(size_t bytes)
{
    void *p = calloc(bytes ? bytes : 1, 1);
    if (p == NULL || (bytes && fread(p, 1, bytes, stdin) != bytes)) {
        fprintf(stderr, "train_driver: short input\n");
        exit(2);
    }
    return p;
}

#define F(n) ((float *)take(sizeof(float) * (size_t)(n)))

static edgec_train_conv_t read_conv(void)
{
    edgec_train_conv_t l;
    int *d = (int *)take(14 * sizeof(int));
    l.h = d[0]; l.w = d[1]; l.c = d[2]; l.oh = d[3]; l.ow = d[4]; l.oc = d[5]; l.kh = d[6]; l.kw = d[7];
    l.sh = d[8]; l.sw = d[9]; l.pt = d[10]; l.pl = d[11]; l.depthwise = d[12]; l.r = d[13];
    l.scale = *F(1);
    l.wq = (const int8_t *)take((size_t)(l.kh * l.kw * l.oc * (l.depthwise ? 1 : l.c)));
    l.ws = F(l.oc); l.bias = F(l.oc); l.a = F(l.r * l.kh * l.kw * l.c); l.b = F(l.oc * l.r);
    return l;
}

#define Z(n) ((float *)calloc((size_t)(n), sizeof(float)))

static int cnn(void)
{
    edgec_train_conv_t c1 = read_conv(), c2 = read_conv();
    edgec_train_fc_t f;
    int *d = (int *)take(3 * sizeof(int)), i;
    int n1 = c1.oh * c1.ow, n2 = c2.oh * c2.ow;
    float *x, *t1, *y1, *t2, *y2, *m, *tf, *z, *gz, *gm, *gy2, *gy1, *gx, *gt, *ga[3], *gb[3], loss;
    f.k = d[0]; f.o = d[1]; f.r = d[2]; f.scale = *F(1);
    f.wq = (const int8_t *)take((size_t)(f.o * f.k)); f.ws = F(f.o); f.bias = F(f.o); f.a = F(f.r * f.k);
    f.b = F(f.o * f.r);
    x = F(c1.h * c1.w * c1.c);
    t1 = Z(n1 * c1.r); y1 = Z(n1 * c1.oc); t2 = Z(n2 * c2.r); y2 = Z(n2 * c2.oc); m = Z(f.k); tf = Z(f.r);
    z = Z(f.o); gz = Z(f.o); gm = Z(f.k); gy2 = Z(n2 * c2.oc); gy1 = Z(n1 * c1.oc); gx = Z(c1.h * c1.w * c1.c);
    gt = Z(n1 * c1.r + n2 * c2.r + f.r);
    ga[0] = Z(c1.r * c1.kh * c1.kw * c1.c); gb[0] = Z(c1.oc * c1.r);
    ga[1] = Z(c2.r * c2.kh * c2.kw * c2.c); gb[1] = Z(c2.oc * c2.r);
    ga[2] = Z(f.r * f.k); gb[2] = Z(f.o * f.r);

    edgec_train_conv_forward(&c1, x, t1, y1);
    for (i = 0; i < n1 * c1.oc; i++) y1[i] = y1[i] > 0.0f ? y1[i] : 0.0f;
    edgec_train_conv_forward(&c2, y1, t2, y2);
    for (i = 0; i < n2 * c2.oc; i++) y2[i] = y2[i] > 0.0f ? y2[i] : 0.0f;
    edgec_train_mean_forward(y2, n2, c2.oc, m);
    edgec_train_fc_forward(&f, m, tf, z);
    loss = edgec_train_softmax_xent(z, f.o, *(int *)take(sizeof(int)), gz);
    edgec_train_fc_backward(&f, m, tf, gz, gm, ga[2], gb[2], gt);
    edgec_train_mean_backward(gm, n2, c2.oc, gy2);
    edgec_train_relu_backward(y2, gy2, n2 * c2.oc, 0);
    edgec_train_conv_backward(&c2, y1, t2, gy2, gy1, ga[1], gb[1], gt);
    edgec_train_relu_backward(y1, gy1, n1 * c1.oc, 0);
    edgec_train_conv_backward(&c1, x, t1, gy1, gx, ga[0], gb[0], gt);

    fwrite(&loss, sizeof loss, 1, stdout);
    fwrite(ga[0], sizeof(float), (size_t)(c1.r * c1.kh * c1.kw * c1.c), stdout);
    fwrite(gb[0], sizeof(float), (size_t)(c1.oc * c1.r), stdout);
    fwrite(ga[1], sizeof(float), (size_t)(c2.r * c2.kh * c2.kw * c2.c), stdout);
    fwrite(gb[1], sizeof(float), (size_t)(c2.oc * c2.r), stdout);
    fwrite(ga[2], sizeof(float), (size_t)(f.r * f.k), stdout);
    fwrite(gb[2], sizeof(float), (size_t)(f.o * f.r), stdout);
    fwrite(gx, sizeof(float), (size_t)(c1.h * c1.w * c1.c), stdout);
    return 0;
}

static int pool(void)
{
    int *d = (int *)take(12 * sizeof(int));
    edgec_train_pool_t l;
    float *x, *gy, *y, *gx;
    int32_t *arg;
    l.h = d[0]; l.w = d[1]; l.c = d[2]; l.oh = d[3]; l.ow = d[4]; l.kh = d[5]; l.kw = d[6]; l.sh = d[7];
    l.sw = d[8]; l.pt = d[9]; l.pl = d[10]; l.max = d[11];
    x = F(l.h * l.w * l.c);
    gy = F(l.oh * l.ow * l.c);
    y = Z(l.oh * l.ow * l.c);
    gx = Z(l.h * l.w * l.c);
    arg = (int32_t *)calloc((size_t)(l.oh * l.ow * l.c), sizeof(int32_t));
    edgec_train_pool_forward(&l, x, y, arg);
    edgec_train_pool_backward(&l, arg, gy, gx);
    fwrite(y, sizeof(float), (size_t)(l.oh * l.ow * l.c), stdout);
    fwrite(gx, sizeof(float), (size_t)(l.h * l.w * l.c), stdout);
    return 0;
}

static int buffer(void)
{
    int *d = (int *)take(3 * sizeof(int)), v;
    uint32_t i, n;
    int32_t rec;
    edgec_train_buffer_t b;
    uint8_t *storage = calloc((size_t)d[0] * 4u + 1u, 1);
    edgec_train_buffer_init(&b, storage, 4u, (uint32_t)d[0], (uint32_t)d[1]);
    for (rec = 0; rec < d[2]; rec++) {
        edgec_train_buffer_push(&b, (const uint8_t *)&rec);
    }
    for (v = 0; v < 2; v++) {
        n = edgec_train_buffer_count(&b, v);
        fwrite(&n, sizeof n, 1, stdout);
        for (i = 0; i < n; i++) {
            fwrite(edgec_train_buffer_get(&b, v, i), 4, 1, stdout);
        }
        if (edgec_train_buffer_get(&b, v, n) != NULL) {
            return 3;
        }
    }
    return 0;
}

static int noise(void)
{
    const uint64_t seed = *(uint64_t *)take(sizeof(uint64_t));
    int n = *(int *)take(sizeof(int));
    float std = *F(1), *g = F(n);
    edgec_train_rng_seed(seed);
    edgec_train_add_noise(g, n, std);
    fwrite(g, sizeof(float), (size_t)n, stdout);
    return 0;
}

static int optimizers(void)
{
    int *hdr = (int *)take(2 * sizeof(int));
    int n = hdr[0], steps = hdr[1], s;
    float *c = F(5), *p = F(n), *p_sgd = calloc((size_t)n, sizeof(float)), *m = calloc((size_t)n, sizeof(float));
    float *v = calloc((size_t)n, sizeof(float)), *g = NULL, norm;
    for (s = 0; s < n; s++) {
        p_sgd[s] = p[s];
    }
    for (s = 1; s <= steps; s++) {
        g = F(n);
        edgec_train_sgd(p_sgd, g, n, c[0]);
        edgec_train_adam(p, g, m, v, n, c[0], c[1], c[2], c[3], s);
    }
    norm = edgec_train_clip(g, n, c[4]);
    fwrite(p_sgd, sizeof(float), (size_t)n, stdout);
    fwrite(p, sizeof(float), (size_t)n, stdout);
    fwrite(g, sizeof(float), (size_t)n, stdout);
    fwrite(&norm, sizeof norm, 1, stdout);
    return 0;
}

int main(int argc, char **argv)
{
    int *dims;
    if (argc > 1) {
        return argv[1][0] == 'c' ? cnn() : argv[1][0] == 'n' ? noise() : argv[1][0] == 'p' ? pool()
               : argv[1][0] == 'b' ? buffer() : optimizers();
    }
    dims = (int *)take(8 * sizeof(int));
    int k = dims[0], h = dims[1], o = dims[2], r1 = dims[3], r2 = dims[4], target = dims[5];
    float *scales = F(2);
    edgec_train_fc_t l1, l2;
    float *x, *yt, *t1, *z1, *t2, *z2, *gz2, *gz1, *gt, *gx, *ga1, *gb1, *ga2, *gb2, loss;

    l1.k = k; l1.o = h; l1.r = r1; l1.scale = scales[0];
    l1.wq = (const int8_t *)take((size_t)(h * k)); l1.ws = F(h); l1.bias = F(h); l1.a = F(r1 * k); l1.b = F(h * r1);
    l2.k = h; l2.o = o; l2.r = r2; l2.scale = scales[1];
    l2.wq = (const int8_t *)take((size_t)(o * h)); l2.ws = F(o); l2.bias = F(o); l2.a = F(r2 * h); l2.b = F(o * r2);
    x = F(k);
    yt = F(o);
    t1 = calloc((size_t)r1, sizeof(float)); z1 = calloc((size_t)h, sizeof(float)); t2 = calloc((size_t)r2, sizeof(float));
    z2 = calloc((size_t)o, sizeof(float)); gz2 = calloc((size_t)o, sizeof(float)); gz1 = calloc((size_t)h, sizeof(float));
    gt = calloc((size_t)(r1 > r2 ? r1 : r2), sizeof(float)); gx = calloc((size_t)k, sizeof(float));
    ga1 = calloc((size_t)(r1 * k), sizeof(float)); gb1 = calloc((size_t)(h * r1), sizeof(float));
    ga2 = calloc((size_t)(r2 * h), sizeof(float)); gb2 = calloc((size_t)(o * r2), sizeof(float));

    edgec_train_fc_forward(&l1, x, t1, z1);
    for (int i = 0; i < h; i++) {
        z1[i] = z1[i] < 0.0f ? 0.0f : (dims[7] && z1[i] > 6.0f ? 6.0f : z1[i]);
    }
    edgec_train_fc_forward(&l2, z1, t2, z2);
    loss = dims[6] == 0 ? edgec_train_softmax_xent(z2, o, target, gz2) : edgec_train_mse(z2, yt, o, gz2);
    edgec_train_fc_backward(&l2, z1, t2, gz2, gz1, ga2, gb2, gt);
    edgec_train_relu_backward(z1, gz1, h, dims[7]);
    edgec_train_fc_backward(&l1, x, t1, gz1, gx, ga1, gb1, gt);

    fwrite(&loss, sizeof loss, 1, stdout);
    fwrite(ga1, sizeof(float), (size_t)(r1 * k), stdout);
    fwrite(gb1, sizeof(float), (size_t)(h * r1), stdout);
    fwrite(ga2, sizeof(float), (size_t)(r2 * h), stdout);
    fwrite(gb2, sizeof(float), (size_t)(o * r2), stdout);
    fwrite(gx, sizeof(float), (size_t)k, stdout);
    return 0;
}
