"""Compile-time quantization constants, computed exactly as TFLite Micro's Prepare step does.

Pure Python (doubles, like the C++ code); the kernels receive the results as constants or arrays.
"""

from __future__ import annotations

import math

import numpy as np

from edgec.ir.graph import Tensor

QMIN = {"int8": -128, "uint8": 0, "int16": -32768, "int32": -(2**31)}
QMAX = {"int8": 127, "uint8": 255, "int16": 32767, "int32": 2**31 - 1}


def tflite_round(x: float) -> float:
    """std::round: halves away from zero."""
    return math.copysign(math.floor(abs(x) + 0.5), x)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """QuantizeMultiplier: real = q / 2^31 * 2^shift with q in [2^30, 2^31)."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = int(tflite_round(q * (1 << 31)))
    assert q_fixed <= (1 << 31)
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        shift, q_fixed = 0, 0
    return q_fixed, shift


def quantize_multiplier_smaller_than_one_exp(real: float) -> tuple[int, int]:
    """QuantizeMultiplierSmallerThanOneExp: like quantize_multiplier, requires real < 1."""
    assert 0.0 < real < 1.0, real
    return quantize_multiplier(real)


def activation_range(activation: str, out: Tensor) -> tuple[int, int]:
    """CalculateActivationRangeQuantized for a fused activation on an output tensor."""
    qmin, qmax = QMIN[out.dtype], QMAX[out.dtype]
    if activation == "NONE":
        return qmin, qmax
    scale, zp = np.float32(out.scale), out.zero_point

    def q(f: float) -> int:
        # TFLite divides in float32, then rounds half away from zero.
        return zp + int(tflite_round(float(np.float32(f) / scale)))

    if activation == "RELU":
        return max(qmin, q(0.0)), qmax
    if activation == "RELU6":
        return max(qmin, q(0.0)), min(qmax, q(6.0))
    if activation == "RELU_N1_TO_1":
        return max(qmin, q(-1.0)), min(qmax, q(1.0))
    raise ValueError(f"unsupported fused activation {activation}")


def per_channel_multipliers(inp: Tensor, weights: Tensor, out: Tensor, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """PopulateConvolutionQuantizationParams: one (multiplier, shift) per output channel."""
    assert weights.quant is not None
    scales = weights.quant.scale
    mult = np.zeros(channels, np.int32)
    shift = np.zeros(channels, np.int32)
    for c in range(channels):
        ws = float(scales[c] if len(scales) > 1 else scales[0])
        real = float(np.float32(inp.scale)) * ws / float(np.float32(out.scale))
        mult[c], shift[c] = quantize_multiplier(real)
    return mult, shift


def same_padding(in_size: int, filter_size: int, stride: int, dilation: int, padding: str) -> tuple[int, int]:
    """ComputePaddingHeightWidth for one dimension: (output size, padding before)."""
    eff = (filter_size - 1) * dilation + 1
    if padding == "SAME":
        out = (in_size + stride - 1) // stride
    else:
        out = (in_size + stride - eff) // stride
    total = max((out - 1) * stride + eff - in_size, 0)
    return out, total // 2
