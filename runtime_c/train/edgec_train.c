/* edgec_train.c - see edgec_train.h. Plain loops in float32 (int8 weights summed in float, scaled once per
 * output channel); math.h for expf, logf, sqrtf, powf. */
#include "edgec_train.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

void edgec_train_fc_forward(const edgec_train_fc_t *l, const float *x, float *t, float *y)
{
    int i, j;
    for (j = 0; j < l->r; j++) {
        float acc = 0.0f;
        for (i = 0; i < l->k; i++) {
            acc += l->a[j * l->k + i] * x[i];
        }
        t[j] = acc;
    }
    for (j = 0; j < l->o; j++) {
        float acc = 0.0f, lora = 0.0f;
        for (i = 0; i < l->k; i++) {
            acc += (float)l->wq[j * l->k + i] * x[i];
        }
        for (i = 0; i < l->r; i++) {
            lora += l->b[j * l->r + i] * t[i];
        }
        y[j] = acc * l->ws[j] + (l->bias ? l->bias[j] : 0.0f) + l->scale * lora;
    }
}

void edgec_train_fc_backward(const edgec_train_fc_t *l, const float *x, const float *t, const float *gy,
                             float *gx, float *ga, float *gb, float *gt)
{
    int i, j;
    /* gt = scale * B^T gy; gb += scale * gy t^T */
    for (j = 0; j < l->r; j++) {
        float acc = 0.0f;
        for (i = 0; i < l->o; i++) {
            acc += l->b[i * l->r + j] * gy[i];
        }
        gt[j] = l->scale * acc;
    }
    if (gb != NULL) {
        for (i = 0; i < l->o; i++) {
            for (j = 0; j < l->r; j++) {
                gb[i * l->r + j] += l->scale * gy[i] * t[j];
            }
        }
    }
    /* ga += gt x^T */
    if (ga != NULL) {
        for (j = 0; j < l->r; j++) {
            for (i = 0; i < l->k; i++) {
                ga[j * l->k + i] += gt[j] * x[i];
            }
        }
    }
    /* gx = W^T gy + A^T gt */
    if (gx != NULL) {
        for (i = 0; i < l->k; i++) {
            float acc = 0.0f;
            for (j = 0; j < l->o; j++) {
                acc += (float)l->wq[j * l->k + i] * l->ws[j] * gy[j];
            }
            for (j = 0; j < l->r; j++) {
                acc += l->a[j * l->k + i] * gt[j];
            }
            gx[i] = acc;
        }
    }
}

/* Input index of tap (ky, kx) of output pixel (py, px), or -1 outside the image. */
static int tap(const edgec_train_conv_t *l, int py, int px, int ky, int kx)
{
    int iy = py * l->sh - l->pt + ky, ix = px * l->sw - l->pl + kx;
    return (iy < 0 || iy >= l->h || ix < 0 || ix >= l->w) ? -1 : iy * l->w + ix;
}

/* The frozen part of output pixel p: yp[o] = ws[o] * sum of wq * x over the taps (int8 weights summed in
 * float, scaled once per output). */
static void conv_frozen(const edgec_train_conv_t *l, const float *x, int py, int px, float *yp)
{
    const int m = l->depthwise ? l->oc / l->c : 0;
    int ky, kx, ic, o;
    for (o = 0; o < l->oc; o++) {
        float acc = 0.0f;
        for (ky = 0; ky < l->kh; ky++) {
            for (kx = 0; kx < l->kw; kx++) {
                const int i = tap(l, py, px, ky, kx);
                if (i < 0) {
                    continue;
                }
                if (l->depthwise) {
                    acc += (float)l->wq[(ky * l->kw + kx) * l->oc + o] * x[i * l->c + o / m];
                } else {
                    const int8_t *w = l->wq + ((o * l->kh + ky) * l->kw + kx) * l->c;
                    const float *xi = x + i * l->c;
                    for (ic = 0; ic < l->c; ic++) {
                        acc += (float)w[ic] * xi[ic];
                    }
                }
            }
        }
        yp[o] = acc * l->ws[o];
    }
}

void edgec_train_conv_forward(const edgec_train_conv_t *l, const float *x, float *t, float *y)
{
    int py, px, ky, kx, ic, o, j;
    for (py = 0; py < l->oh; py++) {
        for (px = 0; px < l->ow; px++) {
            const int p = py * l->ow + px;
            float *tp = t + p * l->r, *yp = y + p * l->oc;
            conv_frozen(l, x, py, px, yp);
            for (j = 0; j < l->r; j++) {
                float acc = 0.0f;
                for (ky = 0; ky < l->kh; ky++) {
                    for (kx = 0; kx < l->kw; kx++) {
                        const int i = tap(l, py, px, ky, kx);
                        const float *aj = l->a + ((j * l->kh + ky) * l->kw + kx) * l->c;
                        if (i < 0) {
                            continue;
                        }
                        for (ic = 0; ic < l->c; ic++) {
                            acc += aj[ic] * x[i * l->c + ic];
                        }
                    }
                }
                tp[j] = acc;
            }
            for (o = 0; o < l->oc; o++) {
                float lora = 0.0f;
                for (j = 0; j < l->r; j++) {
                    lora += l->b[o * l->r + j] * tp[j];
                }
                yp[o] += (l->bias ? l->bias[o] : 0.0f) + l->scale * lora;
            }
        }
    }
}

void edgec_train_conv_backward(const edgec_train_conv_t *l, const float *x, const float *t, const float *gy,
                               float *gx, float *ga, float *gb, float *gt)
{
    const int npix = l->oh * l->ow;
    int p, py, px, ky, kx, ic, o, j;
    for (p = 0; p < npix; p++) {
        for (j = 0; j < l->r; j++) {
            float acc = 0.0f;
            for (o = 0; o < l->oc; o++) {
                acc += l->b[o * l->r + j] * gy[p * l->oc + o];
            }
            gt[p * l->r + j] = l->scale * acc;
            if (gb != NULL) {
                for (o = 0; o < l->oc; o++) {
                    gb[o * l->r + j] += l->scale * gy[p * l->oc + o] * t[p * l->r + j];
                }
            }
        }
    }
    if (gx != NULL) {
        for (p = 0; p < l->h * l->w * l->c; p++) {
            gx[p] = 0.0f;
        }
    }
    for (py = 0; py < l->oh; py++) {
        for (px = 0; px < l->ow; px++) {
            p = py * l->ow + px;
            for (ky = 0; ky < l->kh; ky++) {
                for (kx = 0; kx < l->kw; kx++) {
                    const int i = tap(l, py, px, ky, kx);
                    if (i < 0) {
                        continue;
                    }
                    for (ic = 0; ic < l->c; ic++) {
                        float acc = 0.0f;
                        for (j = 0; j < l->r; j++) {
                            const int ai = ((j * l->kh + ky) * l->kw + kx) * l->c + ic;
                            if (ga != NULL) {
                                ga[ai] += gt[p * l->r + j] * x[i * l->c + ic];
                            }
                            acc += l->a[ai] * gt[p * l->r + j];
                        }
                        if (gx != NULL) {
                            gx[i * l->c + ic] += acc;
                        }
                    }
                    if (gx == NULL) {
                        continue;
                    }
                    /* frozen weights: gx[i, ic] += sum_o wq[o, tap, ic] * ws[o] * gy[p, o] */
                    for (o = 0; o < l->oc; o++) {
                        const float g = gy[p * l->oc + o] * l->ws[o];
                        if (l->depthwise) {
                            gx[i * l->c + o / (l->oc / l->c)] += (float)l->wq[(ky * l->kw + kx) * l->oc + o] * g;
                        } else {
                            const int8_t *w = l->wq + ((o * l->kh + ky) * l->kw + kx) * l->c;
                            float *gxi = gx + i * l->c;
                            for (ic = 0; ic < l->c; ic++) {
                                gxi[ic] += (float)w[ic] * g;
                            }
                        }
                    }
                }
            }
        }
    }
}

void edgec_train_pool_forward(const edgec_train_pool_t *l, const float *x, float *y, int32_t *argmax)
{
    int py, px, ky, kx, ch;
    for (py = 0; py < l->oh; py++) {
        for (px = 0; px < l->ow; px++) {
            for (ch = 0; ch < l->c; ch++) {
                float acc = 0.0f;
                int n = 0, best = -1;
                for (ky = 0; ky < l->kh; ky++) {
                    const int iy = py * l->sh - l->pt + ky;
                    for (kx = 0; kx < l->kw; kx++) {
                        const int ix = px * l->sw - l->pl + kx;
                        int i;
                        if (iy < 0 || iy >= l->h || ix < 0 || ix >= l->w) {
                            continue;
                        }
                        i = (iy * l->w + ix) * l->c + ch;
                        if (l->max) {
                            if (best < 0 || x[i] > x[best]) {
                                best = i;
                            }
                        } else {
                            acc += x[i];
                            n++;
                        }
                    }
                }
                {
                    const int o = (py * l->ow + px) * l->c + ch;
                    if (l->max) {
                        argmax[o] = best;
                        y[o] = best >= 0 ? x[best] : 0.0f;
                    } else {
                        y[o] = n ? acc / (float)n : 0.0f;
                    }
                }
            }
        }
    }
}

void edgec_train_pool_backward(const edgec_train_pool_t *l, const int32_t *argmax, const float *gy, float *gx)
{
    int py, px, ky, kx, ch, i;
    for (i = 0; i < l->h * l->w * l->c; i++) {
        gx[i] = 0.0f;
    }
    for (py = 0; py < l->oh; py++) {
        for (px = 0; px < l->ow; px++) {
            for (ch = 0; ch < l->c; ch++) {
                const int o = (py * l->ow + px) * l->c + ch;
                int n = 0;
                if (l->max) {
                    if (argmax[o] >= 0) {
                        gx[argmax[o]] += gy[o];
                    }
                    continue;
                }
                for (ky = 0; ky < l->kh; ky++) {
                    for (kx = 0; kx < l->kw; kx++) {
                        const int iy = py * l->sh - l->pt + ky, ix = px * l->sw - l->pl + kx;
                        n += iy >= 0 && iy < l->h && ix >= 0 && ix < l->w;
                    }
                }
                for (ky = 0; ky < l->kh; ky++) {
                    for (kx = 0; kx < l->kw; kx++) {
                        const int iy = py * l->sh - l->pt + ky, ix = px * l->sw - l->pl + kx;
                        if (iy >= 0 && iy < l->h && ix >= 0 && ix < l->w) {
                            gx[(iy * l->w + ix) * l->c + ch] += gy[o] / (float)n;
                        }
                    }
                }
            }
        }
    }
}

void edgec_train_mean_forward(const float *x, int n, int c, float *y)
{
    int p, i;
    for (i = 0; i < c; i++) {
        y[i] = 0.0f;
    }
    for (p = 0; p < n; p++) {
        for (i = 0; i < c; i++) {
            y[i] += x[p * c + i];
        }
    }
    for (i = 0; i < c; i++) {
        y[i] /= (float)n;
    }
}

void edgec_train_mean_backward(const float *gy, int n, int c, float *gx)
{
    int p, i;
    for (p = 0; p < n; p++) {
        for (i = 0; i < c; i++) {
            gx[p * c + i] = gy[i] / (float)n;
        }
    }
}

void edgec_train_relu_backward(const float *y, float *g, int n, int relu6)
{
    int i;
    for (i = 0; i < n; i++) {
        if (y[i] <= 0.0f || (relu6 && y[i] >= 6.0f)) {
            g[i] = 0.0f;
        }
    }
}

float edgec_train_softmax_xent(const float *z, int n, int target, float *gz)
{
    float zmax = z[0], sum = 0.0f;
    int i;
    for (i = 1; i < n; i++) {
        zmax = z[i] > zmax ? z[i] : zmax;
    }
    for (i = 0; i < n; i++) {
        gz[i] = expf(z[i] - zmax);
        sum += gz[i];
    }
    for (i = 0; i < n; i++) {
        gz[i] /= sum;
    }
    gz[target] -= 1.0f;
    return logf(sum) + zmax - z[target];
}

float edgec_train_mse(const float *y, const float *t, int n, float *gy)
{
    float loss = 0.0f;
    int i;
    for (i = 0; i < n; i++) {
        float d = y[i] - t[i];
        loss += d * d;
        gy[i] = 2.0f * d / (float)n;
    }
    return loss / (float)n;
}

float edgec_train_clip(float *g, int n, float c)
{
    float sq = 0.0f, norm;
    int i;
    for (i = 0; i < n; i++) {
        sq += g[i] * g[i];
    }
    norm = sqrtf(sq);
    if (norm > c) {
        float f = c / norm;
        for (i = 0; i < n; i++) {
            g[i] *= f;
        }
    }
    return norm;
}

float edgec_train_gaussian(void)
{
    /* u1 in (0, 1] so that logf(u1) is finite; 24 bits: a float's exact integer range. */
    const float u1 = ((float)(edgec_hal_random() >> 8) + 1.0f) / 16777216.0f;
    const float u2 = (float)(edgec_hal_random() >> 8) / 16777216.0f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}

void edgec_train_add_noise(float *g, int n, float std)
{
    int i;
    for (i = 0; i < n; i++) {
        g[i] += std * edgec_train_gaussian();
    }
}

void edgec_train_sgd(float *p, const float *g, int n, float lr)
{
    int i;
    for (i = 0; i < n; i++) {
        p[i] -= lr * g[i];
    }
}

void edgec_train_adam(float *p, const float *g, float *m, float *v, int n, float lr, float beta1, float beta2,
                      float eps, int step)
{
    const float c1 = 1.0f - powf(beta1, (float)step), c2 = 1.0f - powf(beta2, (float)step);
    int i;
    for (i = 0; i < n; i++) {
        m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
        v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
        p[i] -= lr * (m[i] / c1) / (sqrtf(v[i] / c2) + eps);
    }
}

void edgec_train_buffer_init(edgec_train_buffer_t *b, uint8_t *storage, uint32_t record_bytes, uint32_t capacity,
                             uint32_t holdout)
{
    b->storage = storage;
    b->record_bytes = record_bytes;
    b->capacity = capacity;
    b->holdout = holdout;
    b->pushed = 0;
}

void edgec_train_buffer_push(edgec_train_buffer_t *b, const uint8_t *record)
{
    if (b->capacity == 0u) {
        return;
    }
    memcpy(b->storage + (size_t)(b->pushed % b->capacity) * b->record_bytes, record, b->record_bytes);
    b->pushed++;
}

/* Sequence number of the oldest record held. */
static uint32_t first_held(const edgec_train_buffer_t *b)
{
    return b->pushed > b->capacity ? b->pushed - b->capacity : 0u;
}

static int held_out(const edgec_train_buffer_t *b, uint32_t seq)
{
    return b->holdout != 0u && seq % b->holdout == 0u;
}

uint32_t edgec_train_buffer_count(const edgec_train_buffer_t *b, int validation)
{
    uint32_t seq, n = 0;
    for (seq = first_held(b); seq < b->pushed; seq++) {
        n += held_out(b, seq) == (validation != 0);
    }
    return n;
}

const uint8_t *edgec_train_buffer_get(const edgec_train_buffer_t *b, int validation, uint32_t i)
{
    uint32_t seq;
    for (seq = first_held(b); seq < b->pushed; seq++) {
        if (held_out(b, seq) == (validation != 0) && i-- == 0u) {
            return b->storage + (size_t)(seq % b->capacity) * b->record_bytes;
        }
    }
    return NULL;
}

/* ---- checkpoint: slot tables (edgec.quantize.adapter_tables.slot_tables, one slot) ---- */

/* The fold factor of a row of A: max |.|, 1 for a zero row (exact: a float value). */
static double row_fold(const float *row, int k)
{
    double m = 0.0;
    int i;
    for (i = 0; i < k; i++) {
        double v = fabs((double)row[i]);
        if (v > m) {
            m = v;
        }
    }
    return m > 0.0 ? m : 1.0;
}

/* Round half away from zero (sign(v) floor(|v| + 0.5)), clip to +-127. */
static int8_t q127(double v)
{
    double r = floor(fabs(v) + 0.5);
    if (r > 127.0) {
        r = 127.0;
    }
    return (int8_t)(v < 0.0 ? -r : r);
}

/* mult[2c], mult[2c + 1] hold a double during the call (max_j |B[c, j] fold_j|); memcpy: no aliasing or
 * alignment assumptions. */
typedef char edgec_train_double_fits_mult[sizeof(double) <= 2 * sizeof(int32_t) ? 1 : -1];

static double scratch_get(const int32_t *mult, int c)
{
    double v;
    memcpy(&v, mult + 2 * c, sizeof(v));
    return v;
}

static void scratch_set(int32_t *mult, int c, double v)
{
    memcpy(mult + 2 * c, &v, sizeof(v));
}

static void no_branch(int8_t *a_q, int8_t *b_q, int32_t *mult, int k, int oc, int rank)
{
    int c;
    memset(a_q, 0, (size_t)rank * (size_t)k);
    memset(b_q, 0, (size_t)oc * (size_t)rank);
    for (c = 0; c < oc; c++) {
        mult[2 * c] = 0;
        mult[2 * c + 1] = 1;
    }
}

static int all_finite(const float *x, long n)
{
    long i;
    for (i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            return 0;
        }
    }
    return 1;
}

int edgec_train_quantize_layer(const float *a, const float *b, int r, int k, int oc, int rank, const float *ws,
                               int8_t *a_q, int8_t *b_q, int32_t *mult)
{
    const double u_limit = 4398046511104.0; /* 2^42 */
    int c, j, i;
    if (ws == NULL || a_q == NULL || b_q == NULL || mult == NULL || k < 1 || oc < 1 || r < 0 || r > rank ||
        (r > 0 && (a == NULL || b == NULL || !all_finite(a, (long)r * k) || !all_finite(b, (long)oc * r)))) {
        return EDGEC_TRAIN_ERR_ARG;
    }
    for (c = 0; c < oc; c++) {
        if (!isfinite(ws[c]) || !(ws[c] > 0.0f)) {
            return EDGEC_TRAIN_ERR_ARG;
        }
    }
    no_branch(a_q, b_q, mult, k, oc, rank);
    if (r == 0) {
        return 0;
    }
    for (c = 0; c < oc; c++) {
        scratch_set(mult, c, 0.0);
    }
    /* A: each row scaled to max |.| = 1, times 127; the row's factor folded into B: max |B[c] fold| per c. */
    for (j = 0; j < r; j++) {
        const double f = row_fold(a + (long)j * k, k);
        for (i = 0; i < k; i++) {
            a_q[(long)j * k + i] = q127((double)a[(long)j * k + i] / f * 127.0);
        }
        for (c = 0; c < oc; c++) {
            double v = fabs((double)b[(long)c * r + j] * f);
            if (v > scratch_get(mult, c)) {
                scratch_set(mult, c, v);
            }
        }
    }
    /* B per output channel: scale sb = max / 127 (1 for a zero row, whose entries are 0). */
    for (j = 0; j < r; j++) {
        const double f = row_fold(a + (long)j * k, k);
        for (c = 0; c < oc; c++) {
            double sb = scratch_get(mult, c) / 127.0;
            b_q[(long)c * rank + j] = q127((double)b[(long)c * r + j] * f / (sb > 0.0 ? sb : 1.0));
        }
    }
    /* |u| = |B (A x)| <= max_c sum_j |B[c, j]| 255 sum_i |A[j, i]| (x - z_x spans 255): below 2^42. Only sizes
     * with r k 127 * 255 * 127 >= 2^42 can reach it. */
    if ((double)r * (double)k * (127.0 * 255.0 * 127.0) >= u_limit) {
        for (c = 0; c < oc; c++) {
            int64_t u = 0;
            for (j = 0; j < r; j++) {
                int64_t s = 0;
                for (i = 0; i < k; i++) {
                    s += a_q[(long)j * k + i] < 0 ? -a_q[(long)j * k + i] : a_q[(long)j * k + i];
                }
                u += (int64_t)(b_q[(long)c * rank + j] < 0 ? -b_q[(long)c * rank + j] : b_q[(long)c * rank + j]) *
                     255 * s;
            }
            if ((double)u >= u_limit) {
                no_branch(a_q, b_q, mult, k, oc, rank);
                return EDGEC_TRAIN_ERR_RANGE;
            }
        }
    }
    /* The rescale: multiplier / 2^shift = (1/127) sb[c] / ws[c]. */
    for (c = 0; c < oc; c++) {
        const double real = (1.0 / 127.0) * (scratch_get(mult, c) / 127.0) / (double)ws[c];
        int e, shift;
        double m;
        mult[2 * c] = 0;
        mult[2 * c + 1] = 1;
        if (real == 0.0) {
            continue;
        }
        m = floor(frexp(real, &e) * 32768.0 + 0.5);
        if (m == 32768.0) {
            m = 16384.0;
            e++;
        }
        shift = 15 - e;
        if (shift < 1) {
            no_branch(a_q, b_q, mult, k, oc, rank);
            return EDGEC_TRAIN_ERR_DWARFS;
        }
        if (shift <= 62) {
            mult[2 * c] = (int32_t)m;
            mult[2 * c + 1] = shift;
        }
    }
    return 0;
}
