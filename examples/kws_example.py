"""Make the bundled example: a small keyword-spotting-style DS-CNN, int8, with deterministic weights.

The float weights come from a seeded generator; activation ranges are calibrated by running the float
network in numpy on seeded random spectrogram-like inputs; weights are quantized per output channel
(symmetric int8), activations per tensor (asymmetric int8), biases to int32 - the TFLite scheme. The
model is written with edgec's own TFLite writer, so the demo needs nothing from outside the project.

    python examples/kws_example.py -o build/kws_example.tflite
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edgec.frontends.tflite_writer import WOp, WTensor, write_tflite

IN_SHAPE = (1, 49, 10, 1)  # 49 frames x 10 MFCC features, as in MLPerf Tiny KWS
CH = 32
CLASSES = 12


def _conv(x, w, b, stride, pad_hw, depthwise=False):
    """Float NHWC convolution; w is [OC, KH, KW, IC] (or [1, KH, KW, C] for depthwise)."""
    n, h, wd, _ = x.shape
    kh, kw = w.shape[1:3]
    oh, ow = (h + 2 * pad_hw[0] - kh) // stride + 1, (wd + 2 * pad_hw[1] - kw) // stride + 1
    xp = np.pad(x, ((0, 0), pad_hw[0:1] * 2, pad_hw[1:2] * 2, (0, 0)))
    out = np.zeros((n, oh, ow, w.shape[3] if depthwise else w.shape[0]), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
            out += patch * w[0, i, j] if depthwise else patch @ w[:, i, j, :].T
    return out + b


def _same_pad(size, k, stride):
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + k - size, 0)
    return total // 2


def make_model(seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (CH, 10, 4, 1))
    b1 = rng.normal(0, 0.1, CH)
    wd = rng.normal(0, 0.4, (1, 3, 3, CH))
    bd = rng.normal(0, 0.1, CH)
    w2 = rng.normal(0, 0.25, (CH, 1, 1, CH))
    b2 = rng.normal(0, 0.1, CH)
    wf = rng.normal(0, 0.15, (CLASSES, CH))
    bf = rng.normal(0, 0.02, CLASSES)

    # Calibrate activation ranges on seeded inputs (spectrogram-like values in [-32, 32)).
    x = rng.uniform(-32, 32, (64, *IN_SHAPE[1:]))
    # The first conv is strided with SAME padding: pad before = total // 2 (TFLite's rule).
    a1 = np.maximum(_conv(x, w1, b1, 2, (_same_pad(49, 10, 2), _same_pad(10, 4, 2))), 0)
    # (the float reference crops the bottom/right padding the same way TFLite does)
    a1 = a1[:, :25, :5]
    a2 = np.maximum(_conv(a1, wd, bd, 1, (1, 1), depthwise=True), 0)
    a3 = np.maximum(_conv(a2, w2, b2, 1, (0, 0)), 0)
    pooled = a3.mean(axis=(1, 2))
    # Center and scale the classifier like a trained one: every class wins for some inputs.
    feats = pooled - pooled.mean(axis=0)
    wf = wf / max(float((feats @ wf.T).std()), 1e-8) * 2.0
    bf = bf - wf @ pooled.mean(axis=0)
    logits = pooled @ wf.T + bf

    def act_q(values, relu):
        hi = float(np.percentile(values, 99.9)) if relu else float(np.abs(values).max())
        if relu:
            return hi / 255.0, -128
        return 2 * hi / 255.0, 0

    s_in, z_in = 64.0 / 255.0, 0
    s1, z1 = act_q(a1, True)
    s2, z2 = act_q(a2, True)
    s3, z3 = act_q(a3, True)
    sp, zp = s3, z3  # average pooling keeps its input's quantization
    sl, zl = act_q(logits, False)

    def weights_q(w, axis):
        red = tuple(i for i in range(w.ndim) if i != axis)
        scale = np.maximum(np.abs(w).max(axis=red), 1e-8) / 127.0
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        return q, scale.astype(np.float32)

    def bias_q(b, in_scale, w_scale):
        bs = (np.float32(in_scale) * w_scale).astype(np.float32)
        return np.round(b / bs).astype(np.int32), bs

    q1, ws1 = weights_q(w1, 0)
    qd, wsd = weights_q(wd, 3)
    q2, ws2 = weights_q(w2, 0)
    qf, wsf = weights_q(wf, 0)
    qb1, bs1 = bias_q(b1, s_in, ws1)
    qbd, bsd = bias_q(bd, s1, wsd)
    qb2, bs2 = bias_q(b2, s2, ws2)
    qbf, bsf = bias_q(bf, sp, wsf)

    t = [
        WTensor("input", IN_SHAPE, "int8", scale=[s_in], zero_point=[z_in]),
        WTensor("conv1/weights", q1.shape, "int8", q1, list(ws1), [0] * CH, 0),
        WTensor("conv1/bias", (CH,), "int32", qb1, list(bs1), [0] * CH, 0),
        WTensor("conv1", (1, 25, 5, CH), "int8", scale=[s1], zero_point=[z1]),
        WTensor("dw1/weights", qd.shape, "int8", qd, list(wsd), [0] * CH, 3),
        WTensor("dw1/bias", (CH,), "int32", qbd, list(bsd), [0] * CH, 0),
        WTensor("dw1", (1, 25, 5, CH), "int8", scale=[s2], zero_point=[z2]),
        WTensor("pw1/weights", q2.shape, "int8", q2, list(ws2), [0] * CH, 0),
        WTensor("pw1/bias", (CH,), "int32", qb2, list(bs2), [0] * CH, 0),
        WTensor("pw1", (1, 25, 5, CH), "int8", scale=[s3], zero_point=[z3]),
        WTensor("pool", (1, 1, 1, CH), "int8", scale=[sp], zero_point=[zp]),
        WTensor("flatten/shape", (2,), "int32", np.array([1, CH], np.int32)),
        WTensor("flatten", (1, CH), "int8", scale=[sp], zero_point=[zp]),
        WTensor("fc/weights", qf.shape, "int8", qf, list(wsf), [0] * CLASSES, 0),
        WTensor("fc/bias", (CLASSES,), "int32", qbf, list(bsf), [0] * CLASSES, 0),
        WTensor("logits", (1, CLASSES), "int8", scale=[sl], zero_point=[zl]),
        WTensor("probabilities", (1, CLASSES), "int8", scale=[1.0 / 256.0], zero_point=[-128]),
    ]
    relu = {"fused_activation_function": "RELU"}
    ops = [
        WOp("CONV_2D", [0, 1, 2], [3], {"padding": "SAME", "stride_h": 2, "stride_w": 2, **relu}),
        WOp("DEPTHWISE_CONV_2D", [3, 4, 5], [6], {"padding": "SAME", "depth_multiplier": 1, **relu}),
        WOp("CONV_2D", [6, 7, 8], [9], {"padding": "VALID", **relu}),
        WOp("AVERAGE_POOL_2D", [9], [10], {"padding": "VALID", "filter_height": 25, "filter_width": 5,
                                           "stride_h": 25, "stride_w": 5}),
        WOp("RESHAPE", [10, 11], [12], {"new_shape": [1, CH]}),
        WOp("FULLY_CONNECTED", [12, 13, 14], [15], {}),
        WOp("SOFTMAX", [15], [16], {"beta": 1.0}),
    ]
    return write_tflite(t, ops, inputs=[0], outputs=[16], description="edgec example: KWS-style DS-CNN")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("build/kws_example.tflite"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(make_model(args.seed))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
