"""SOFTMAX, LOGISTIC, TANH, HARD_SWISH, RELU, RELU6, QUANTIZE and DEQUANTIZE.

Reference semantics (TFLite Micro reference kernels, double rounding):

- SOFTMAX int8 -> int8/int16: reference_ops::Softmax (quantized). Prepare (softmax_common.cc,
  CalculateSoftmaxParams) runs PreprocessSoftmaxScaling(beta, input_scale, 5) -> input_multiplier and
  input_left_shift, and diff_min = -CalculateInputRadius(5, input_left_shift, 31). Per row: max, then
  sum of Rescale<12>(exp_on_negative_values(MultiplyByQuantizedMultiplierGreaterThanOne(x - max)))
  over the elements with x - max >= diff_min, GetReciprocal (count-leading-zeros normalisation and
  gemmlowp one_over_one_plus_x_for_x_in_0_1), then RoundingDivideByPOT(SRDHM(reciprocal, exp), exponent)
  + output min. exp(x - max) depends only on x - max in [-255, 0], so it is a 256-entry int32 table
  made at compile time by an exact Python port of gemmlowp; the kernel does the sums, the reciprocal
  and the final scaling in TIR exactly as TFLM does.
- LOGISTIC / TANH int8: reference_integer_ops::Logistic / Tanh (gemmlowp fixed point on Q4.27 inputs,
  Prepare: frexp of input_scale * 2^27 -> input_multiplier / input_left_shift, input_range_radius =
  CalculateInputRadius(4, shift, 31)). Like TFLM, they ignore the output quantization (LOGISTIC writes
  scale 1/256 zp -128 and requires zp -128, TANH writes scale 1/128 zp 0).
- HARD_SWISH int8: reference_ops::HardSwish<int8_t> (int16 fixed point; Prepare in
  hard_swish_common.cc: float32 scale ratios, QuantizeMultiplier, DownScaleInt32ToInt16Multiplier).
- RELU int8: ReluQuantized (requantize with the input/output scale ratio, clamp at
  max(-128, output zero point)). QUANTIZE int8 -> int8 (and uint8 -> int8, int8 -> uint8):
  reference_ops::Requantize with QuantizeMultiplier(in_scale / out_scale).
- These four are pure functions of the 8-bit input: they become a 256-entry table computed here by
  exact integer ports, and the kernel is a table lookup (or a plain clamp when the table is one).
- RELU6 int8: Relu6Quantized, clamp to [input zero point, FloatToQuantizedType(6.0f)].
- QUANTIZE float32 -> int8: AffineQuantize, round(x / scale) in float32 (half away from zero) + zero
  point, clamped. Where x / scale is NaN or overflows int32 (huge values, inf), TFLM's float -> int
  conversion is undefined behaviour: x86 gives INT32_MIN, to which the zero point is then added (with
  int32 wrap-around), Arm saturates and maps NaN to 0. edgec gives the Arm results: saturation to
  -128/127 and the zero point for NaN.
- DEQUANTIZE int8 -> float32: Dequantize, float(double(scale) * (x - zp)); the product of a float32
  scale and an integer in [-255, 255] is exact in double, so one float32 multiply gives the same bits.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Op, Tensor
from edgec.lower.fixedpoint import i32, i64, let, srdhm
from edgec.lower.kernel import Arg, LoweredOp
from edgec.lower.qparams import QMAX, QMIN, quantize_multiplier, tflite_round

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

# --------------------------------------------------------------------------------------------------
# Exact Python ports of gemmlowp's scalar fixed point (int32 and int16 raw types) and of the TFLM
# helpers built on it. Plain Python ints; every result is wrapped to the C type it has in C++.
# --------------------------------------------------------------------------------------------------


def _wrap(v: int, bits: int) -> int:
    half = 1 << (bits - 1)
    return ((v + half) & ((1 << bits) - 1)) - half


def _trunc_div(a: int, b: int) -> int:
    """C integer division (toward zero); b > 0."""
    q = abs(a) // b
    return q if a >= 0 else -q


def _srdhm(a: int, b: int, bits: int = 32) -> int:
    """SaturatingRoundingDoublingHighMul for int32 (bits=32) or int16 (bits=16)."""
    lo = -(1 << (bits - 1))
    if a == lo and b == lo:
        return (1 << (bits - 1)) - 1
    ab = a * b
    nudge = (1 << (bits - 2)) if ab >= 0 else 1 - (1 << (bits - 2))
    return _wrap(_trunc_div(ab + nudge, 1 << (bits - 1)), bits)


def _rdbpot(x: int, e: int, bits: int = 32) -> int:
    """gemmlowp RoundingDivideByPOT on an int32 or int16 value, with that type's wrapping."""
    mask = _wrap((1 << e) - 1, bits)
    remainder = x & mask
    threshold = _wrap((mask >> 1) + (1 if x < 0 else 0), bits)
    return _wrap((x >> e) + (1 if remainder > threshold else 0), bits)


def _sat_shl(x: int, e: int) -> int:
    """SaturatingRoundingMultiplyByPOT<e> for e > 0 on int32 (saturating left shift)."""
    threshold = (1 << (31 - e)) - 1
    if x > threshold:
        return INT32_MAX
    if x < -threshold:
        return INT32_MIN
    return x << e


def _rescale(x: int, src_bits: int, dst_bits: int) -> int:
    """gemmlowp Rescale<dst>(FixedPoint<int32, src>)."""
    e = src_bits - dst_bits
    if e > 0:
        return _sat_shl(x, e)
    return _rdbpot(x, -e) if e < 0 else x


def _add(a: int, b: int) -> int:
    return _wrap(a + b, 32)


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: int) -> int:
    constant_term, one_third = 1895147668, 715827883
    x = _add(a, 1 << 28)
    x2 = _srdhm(x, x)
    x3 = _srdhm(x2, x)
    x4 = _srdhm(x2, x2)
    x4_over_4 = _rdbpot(x4, 2)
    poly = _rdbpot(_add(_srdhm(_add(x4_over_4, x3), one_third), x2), 1)
    return _add(constant_term, _srdhm(constant_term, _add(x, poly)))


_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535),
               (3, 720401), (4, 242))


def _exp_on_negative_values(a: int, int_bits: int) -> int:
    """gemmlowp exp_on_negative_values(FixedPoint<int32, int_bits>) -> raw Q0.31."""
    frac_bits = 31 - int_bits
    one_quarter = 1 << (frac_bits - 2)
    a_mod_quarter_minus_one_quarter = _add(a & (one_quarter - 1), -one_quarter)
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        _rescale(a_mod_quarter_minus_one_quarter, int_bits, 0))
    remainder = _add(a_mod_quarter_minus_one_quarter, -a)
    for exponent, multiplier in _EXP_BARREL:
        if int_bits > exponent and remainder & (1 << (frac_bits + exponent)):
            result = _srdhm(result, multiplier)
    assert int_bits <= 5  # the clamp branch of gemmlowp (int_bits > 5) is never used here
    return INT32_MAX if a == 0 else result


def _newton_reciprocal_f2(a: int) -> int:
    """The shared Newton-Raphson part of one_over_one_plus_x / one_minus_x_over_one_plus_x: raw F2."""
    # RoundingHalfSum(a, F0::One()): (a + b + sign) / 2 in int64, truncating.
    s = a + INT32_MAX
    half_denominator = _trunc_div(s + (1 if s >= 0 else -1), 2)
    x = _add(1515870810, _srdhm(half_denominator, -1010580540))
    for _ in range(3):
        one_minus = _add(1 << 29, -_srdhm(half_denominator, x))
        x = _add(x, _rescale(_srdhm(x, one_minus), 4, 2))
    return x


def _one_over_one_plus_x_for_x_in_0_1(a: int) -> int:
    return _rescale(_newton_reciprocal_f2(a), 1, 0)  # ExactMulByPot<-1>: F2 raw read as F1


def _one_minus_x_over_one_plus_x_for_x_in_0_1(a: int) -> int:
    return _rescale(_add(_newton_reciprocal_f2(a), -(1 << 29)), 2, 0)


def _logistic_q0(a: int, int_bits: int) -> int:
    """gemmlowp logistic(FixedPoint<int32, int_bits>) -> raw Q0.31."""
    if a == 0:
        return 1 << 30
    abs_input = a if a > 0 else _wrap(-a, 32)
    positive = _one_over_one_plus_x_for_x_in_0_1(_exp_on_negative_values(_wrap(-abs_input, 32), int_bits))
    return positive if a > 0 else _add(INT32_MAX, -positive)


def _tanh_q0(a: int, int_bits: int) -> int:
    """gemmlowp tanh(FixedPoint<int32, int_bits>) -> raw Q0.31."""
    if a == 0:
        return 0
    n = a if a < 0 else _wrap(-a, 32)
    # neg_tanh_on_negative_values: ExactMulByPot<1> reinterprets the raw value with one more integer bit.
    t = _one_minus_x_over_one_plus_x_for_x_in_0_1(_exp_on_negative_values(n, int_bits + 1))
    return _wrap(-t, 32) if a < 0 else t


def _mbqm(x: int, multiplier: int, shift: int) -> int:
    """MultiplyByQuantizedMultiplier(int32 x, ...) with double rounding."""
    left, right = max(shift, 0), max(-shift, 0)
    return _rdbpot(_srdhm(_wrap(x * (1 << left), 32), multiplier), right)


def _frexp_multiplier(real: float) -> tuple[int, int]:
    """TFLM logistic/tanh Prepare: q = frexp(real, &shift), multiplier = int32(round(q * 2^31))."""
    q, shift = math.frexp(real)
    return int(tflite_round(q * (1 << 31))), shift


def _input_radius(int_bits: int, left_shift: int, total_bits: int = 31) -> int:
    """CalculateInputRadius (double arithmetic, then floor)."""
    return math.floor(1.0 * ((1 << int_bits) - 1) * (1 << (total_bits - int_bits)) / (1 << left_shift))


# --------------------------------------------------------------------------------------------------
# Compile-time tables: entry k is the output for input value k - 128 (int8 inputs).
# --------------------------------------------------------------------------------------------------

_INT8_VALUES = range(-128, 128)


def _sigmoid_like_table(in_scale: float, in_zp: int, q0_of, out_shift: int, out_offset: int) -> np.ndarray:
    """Shared shape of reference_integer_ops::Logistic and ::Tanh: saturate outside the input radius,
    else the gemmlowp Q0.15 result of `q0_of(x in Q4.27)` rescaled to int8."""
    multiplier, shift = _frexp_multiplier(float(np.float32(in_scale)) * float(1 << 27))
    radius = _input_radius(4, shift)
    out = []
    for v in _INT8_VALUES:
        x = v - in_zp
        if x <= -radius:
            out.append(-128)
        elif x >= radius:
            out.append(127)
        else:
            q0 = q0_of(_mbqm(x, multiplier, shift), 4)
            out.append(min(max(_rdbpot(q0, out_shift) + out_offset, -128), 127))
    return np.array(out, np.int8)


def logistic_table(in_scale: float, in_zp: int) -> np.ndarray:
    """reference_integer_ops::Logistic for every int8 input (output scale 1/256, zero point -128)."""
    return _sigmoid_like_table(in_scale, in_zp, _logistic_q0, 23, -128)


def tanh_table(in_scale: float, in_zp: int) -> np.ndarray:
    """reference_integer_ops::Tanh for every int8 input (output scale 1/128, zero point 0)."""
    return _sigmoid_like_table(in_scale, in_zp, _tanh_q0, 24, 0)


def _downscale_to_int16(m: int) -> int:
    """DownScaleInt32ToInt16Multiplier."""
    return 32767 if m >= INT32_MAX - (1 << 15) else (m + (1 << 15)) >> 16


def hard_swish_params(in_scale: float, out_scale: float) -> tuple[int, int, int, int]:
    """HardSwishPrepare: (output multiplier, output exponent, reluish multiplier, reluish exponent), the
    multipliers downscaled to int16.

    The scale ratios are float32 divisions in TFLM, widened to double only for QuantizeMultiplier.
    """
    hires = np.float32(1.0 / 128.0) * np.float32(in_scale)
    reluish_scale = np.float32(3.0) / np.float32(32768.0)
    out_m, out_e = quantize_multiplier(float(np.float32(hires / np.float32(out_scale))))
    rel_m, rel_e = quantize_multiplier(float(np.float32(hires / reluish_scale)))
    return _downscale_to_int16(out_m), out_e, _downscale_to_int16(rel_m), rel_e


def hard_swish_table(in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> np.ndarray:
    """reference_ops::HardSwish<int8_t> for every int8 input, with its int16 wrapping and saturation."""
    out_m, out_e, rel_m, rel_e = hard_swish_params(in_scale, out_scale)

    def sat_shl16(v: int, amount: int) -> int:
        return min(max(v * (1 << amount), -32768), 32767)

    def sdhm16(a: int, b: int) -> int:  # SaturatingDoublingHighMul: rounds toward zero
        if a == b == -32768:
            return 32767
        return _wrap(_trunc_div(a * b, 1 << 15), 16)

    out = []
    for v in _INT8_VALUES:
        hires = _wrap(_wrap(v - in_zp, 16) * (1 << 7), 16)
        preshift = _srdhm(hires, out_m, 16)
        reluish = hires
        if rel_e > 0:
            reluish = sat_shl16(reluish, rel_e - 1)
        reluish = _srdhm(reluish, rel_m, 16)
        if rel_e > 0:
            reluish = sat_shl16(reluish, 1)
        if rel_e < 0:
            reluish = _rdbpot(reluish, -rel_e, 16)
        reluish = _wrap((reluish + (1 << 15)) >> 1, 16)
        value = _rdbpot(sdhm16(reluish, preshift), -out_e, 16)
        value = _wrap(value + out_zp, 16)
        out.append(min(max(value, -128), 127))
    return np.array(out, np.int8)


def requantize_table(in_scale: float, in_zp: int, out_scale: float, out_zp: int, lo: int, hi: int,
                     in_dtype: str = "int8", out_dtype: str = "int8") -> np.ndarray:
    """out_zp + MultiplyByQuantizedMultiplier(x - in_zp, in_scale / out_scale) clamped to [lo, hi] for every
    8-bit input x: the arithmetic of both reference_ops::Requantize (QUANTIZE) and ReluQuantized (RELU).
    (Requantize's int8 <-> uint8 `x ^ 0x80` fast path for equal scales gives the same values.)"""
    multiplier, shift = quantize_multiplier(float(np.float32(in_scale)) / float(np.float32(out_scale)))
    return np.array([min(max(out_zp + _mbqm(v - in_zp, multiplier, shift), lo), hi)
                     for v in range(QMIN[in_dtype], QMAX[in_dtype] + 1)], out_dtype)


def softmax_params(in_scale: float, beta: float) -> tuple[int, int, int]:
    """CalculateSoftmaxParams for int8 input: (input_multiplier, input_left_shift, diff_min)."""
    real = min(float(np.float32(beta)) * float(np.float32(in_scale)) * float(1 << 26), float((1 << 31) - 1))
    if not real > 1.0:
        raise ValueError(f"beta * input scale * 2^26 = {real:g} is not > 1 (TFLM's "
                         "QuantizeMultiplierGreaterThanOne check fails)")
    multiplier, shift = quantize_multiplier(real)
    return multiplier, shift, -_input_radius(5, shift)


def softmax_exp_table(in_scale: float, beta: float) -> np.ndarray:
    """exp_on_negative_values(rescaled x - max) (raw Q0.31) for x - max = -k, k in 0..255; 0 where
    x - max < diff_min (TFLM skips those elements: they add nothing and output the minimum)."""
    multiplier, shift, diff_min = softmax_params(in_scale, beta)
    table = np.zeros(256, np.int32)
    for k in range(256):
        diff = -k
        if diff >= diff_min:
            # MultiplyByQuantizedMultiplierGreaterThanOne: SRDHM(diff * 2^shift, multiplier).
            table[k] = _exp_on_negative_values(_srdhm(_wrap(diff * (1 << shift), 32), multiplier), 5)
    return table


# --------------------------------------------------------------------------------------------------
# TIR templates
# --------------------------------------------------------------------------------------------------


def lut_func(N: int, IN_DTYPE: str, OUT_DTYPE: str, OFFSET: int) -> tirx.PrimFunc:
    """y[i] = table[x[i] + OFFSET]. Elementwise read-then-write: safe in place (no noalias attribute)."""
    @T.prim_func(s_tir=True)
    def lut(x_p: T.handle(IN_DTYPE), t_p: T.handle(OUT_DTYPE), y_p: T.handle(OUT_DTYPE)):
        x = T.decl_buffer((N,), IN_DTYPE, data=x_p)
        t = T.decl_buffer((256,), OUT_DTYPE, data=t_p)
        y = T.decl_buffer((N,), OUT_DTYPE, data=y_p)
        for i in range(N):
            with T.sblock("out"):
                vi = T.axis.remap("S", [i])
                y[vi] = t[T.Cast("int32", x[vi]) + OFFSET]
    return lut


def clamp_func(N: int, LO: int, HI: int) -> tirx.PrimFunc:
    """y[i] = min(max(x[i], LO), HI) on int8."""
    @T.prim_func(s_tir=True)
    def clamp8(x_p: T.handle("int8"), y_p: T.handle("int8")):
        x = T.decl_buffer((N,), "int8", data=x_p)
        y = T.decl_buffer((N,), "int8", data=y_p)
        for i in range(N):
            with T.sblock("out"):
                vi = T.axis.remap("S", [i])
                y[vi] = T.min(T.max(x[vi], T.int8(LO)), T.int8(HI))
    return clamp8


def _rdbpot64(x: tirx.PrimExpr, e: tirx.PrimExpr) -> tirx.PrimExpr:
    """RoundingDivideByPOT of an int32 value by a run-time exponent in [0, 31], in int64 so that the
    mask for exponent 31 does not overflow (fixedpoint.rounding_divide_by_pot builds it in int32)."""
    one, zero = tirx.const(1, "int64"), tirx.const(0, "int64")

    def body(v, sh):
        mask = (one << sh) - one
        threshold = (mask >> one) + tirx.Select(v < zero, one, zero)
        return i32((v >> sh) + tirx.Select(tirx.bitwise_and(v, mask) > threshold, one, zero))

    return let(i64(x), lambda v: let(i64(e), lambda sh: body(v, sh), "sh"), "x")


def _sat_shl_expr(x: tirx.PrimExpr, e: int) -> tirx.PrimExpr:
    """gemmlowp's saturating left shift (Rescale to fewer integer bits) of an int32 expression."""
    return i32(tirx.min(tirx.max(i64(x) * (1 << e), tirx.const(INT32_MIN, "int64")),
                        tirx.const(INT32_MAX, "int64")))


def _newton_step(x: tirx.PrimExpr, hd: tirx.PrimExpr) -> tirx.PrimExpr:
    """One Newton-Raphson step of gemmlowp one_over_one_plus_x_for_x_in_0_1 (raw F2 x, F0 hd):
    x + Rescale<2>(x * (1 - hd * x))."""
    return x + _sat_shl_expr(srdhm(x, tirx.const(1 << 29, "int32") - srdhm(hd, x)), 2)


def _sum_clamped(s: tirx.PrimExpr) -> tirx.PrimExpr:
    """The int64 sum of exps limited to int32 (TFLM's int32 sum never gets there on rows it accepts)."""
    return tirx.min(s, tirx.const(INT32_MAX, "int64"))


def _clz_term(s: tirx.PrimExpr, k: tirx.PrimExpr) -> tirx.PrimExpr:
    """CountLeadingZeros(sum) for sum in [1, 2^31) is the number of k in [0, 31) with sum < 2^(k+1)."""
    return tirx.Select(_sum_clamped(s) < (tirx.const(2, "int64") << i64(k)), 1, 0)


def _half_denominator(s: tirx.PrimExpr, clz: tirx.PrimExpr) -> tirx.PrimExpr:
    """GetReciprocal's shifted_sum_minus_one a = (sum << clz) - 2^31, then RoundingHalfSum(a, INT32_MAX),
    which is (a + 2^31) / 2 for a >= 0."""
    return i32(tirx.shift_right(_sum_clamped(s) << i64(clz), tirx.const(1, "int64")))


def _softmax_out(rc: tirx.PrimExpr, exp: tirx.PrimExpr, clz: tirx.PrimExpr, out_bits: int) -> tirx.PrimExpr:
    """RoundingDivideByPOT(SRDHM(reciprocal, exp), exponent) + output min, clamped, with exponent =
    num_bits_over_unit + 31 - out_bits and num_bits_over_unit = 12 - clz. TFLM aborts when the exponent
    is above 31; the clamp to [0, 31] keeps the C shift defined, and its lower bound also stops TVM's
    bound analysis from assuming the shift is huge (it then drops the OUT_MAX clamp as redundant)."""
    out_min, out_max = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    exponent = tirx.max(tirx.min(43 - out_bits - clz, 31), 0)
    return tirx.max(tirx.min(_rdbpot64(srdhm(rc, exp), exponent) + out_min, out_max), out_min)


def softmax_func(OUTER: int, D: int, OUT_DTYPE: str, OUT_BITS: int) -> tirx.PrimFunc:
    """TFLM's quantized Softmax over the last axis; e_p is the compile-time exp table (int32[256],
    entry k = exp for x - max = -k). Per-row scalars live in 1-element buffers after compaction."""
    @T.prim_func(s_tir=True)
    def softmax(x_p: T.handle("int8"), e_p: T.handle("int32"), y_p: T.handle(OUT_DTYPE)):
        x = T.decl_buffer((OUTER, D), "int8", data=x_p)
        e = T.decl_buffer((256,), "int32", data=e_p)
        y = T.decl_buffer((OUTER, D), OUT_DTYPE, data=y_p)
        mx = T.sblock_alloc_buffer((OUTER,), "int32")
        sm = T.sblock_alloc_buffer((OUTER,), "int64")
        hz = T.sblock_alloc_buffer((OUTER,), "int32")
        hd = T.sblock_alloc_buffer((OUTER,), "int32")
        nr0 = T.sblock_alloc_buffer((OUTER,), "int32")
        nr1 = T.sblock_alloc_buffer((OUTER,), "int32")
        nr2 = T.sblock_alloc_buffer((OUTER,), "int32")
        nr3 = T.sblock_alloc_buffer((OUTER,), "int32")
        rc = T.sblock_alloc_buffer((OUTER,), "int32")
        for i in range(OUTER):
            for c in range(D):
                with T.sblock("acc"):
                    vi, vc = T.axis.remap("SR", [i, c])
                    with T.init():
                        mx[vi] = -128
                    mx[vi] = T.max(mx[vi], T.Cast("int32", x[vi, vc]))
            # Sum of Rescale<12>(exp), in int64 so that no depth overflows.
            for c in range(D):
                with T.sblock("acc1"):
                    vi, vc = T.axis.remap("SR", [i, c])
                    with T.init():
                        sm[vi] = T.int64(0)
                    sm[vi] = sm[vi] + T.Cast("int64", _rdbpot64(e[mx[vi] - T.Cast("int32", x[vi, vc])], 12))
            for k in range(31):
                with T.sblock("acc2"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    with T.init():
                        hz[vi] = 0
                    hz[vi] = hz[vi] + _clz_term(sm[vi], vk)
            # GetReciprocal: gemmlowp one_over_one_plus_x_for_x_in_0_1 of the normalised sum minus one:
            # half denominator, initial guess, three Newton steps, Rescale<0>(ExactMulByPot<-1>(x)). One
            # block per step: as a single nested expression TVM's buffer compaction takes forever.
            with T.sblock("half"):
                vi = T.axis.remap("S", [i])
                hd[vi] = _half_denominator(sm[vi], hz[vi])
            with T.sblock("nr0"):
                vi = T.axis.remap("S", [i])
                nr0[vi] = T.int32(1515870810) + srdhm(hd[vi], T.int32(-1010580540))
            with T.sblock("nr1"):
                vi = T.axis.remap("S", [i])
                nr1[vi] = _newton_step(nr0[vi], hd[vi])
            with T.sblock("nr2"):
                vi = T.axis.remap("S", [i])
                nr2[vi] = _newton_step(nr1[vi], hd[vi])
            with T.sblock("nr3"):
                vi = T.axis.remap("S", [i])
                nr3[vi] = _newton_step(nr2[vi], hd[vi])
            with T.sblock("recip"):
                vi = T.axis.remap("S", [i])
                rc[vi] = _sat_shl_expr(nr3[vi], 1)
            for c in range(D):
                with T.sblock("out"):
                    vi, vc = T.axis.remap("SS", [i, c])
                    y[vi, vc] = T.Cast(OUT_DTYPE, _softmax_out(
                        rc[vi], e[mx[vi] - T.Cast("int32", x[vi, vc])], hz[vi], OUT_BITS))
    return softmax


def _affine_quantize(x: tirx.PrimExpr, scale: tirx.PrimExpr, lo: float, hi: float, zp: int) -> tirx.PrimExpr:
    """round(x / scale) + zp clamped to int8, as AffineQuantize computes it, without libm's round: x / scale
    is first clamped to [lo, hi] = [-128 - zp, 127 - zp] (so the int conversion is defined), then
    truncated; v - trunc(v) is exact in float32, so halves round away from zero as std::round does.
    NaN gives zp, as TFLM on Arm (its float -> int conversion gives 0 there)."""
    def rounded(v):
        def body(t):
            frac = v - tirx.Cast("float32", t)
            return (t + tirx.Select(frac >= tirx.const(0.5, "float32"), 1, 0)
                    - tirx.Select(frac <= tirx.const(-0.5, "float32"), 1, 0) + zp)
        return let(i32(v), body, "t")

    def clamped(q):
        lo_c, hi_c, zero = (tirx.const(c, "float32") for c in (lo, hi, 0.0))
        return tirx.Select(tirx.isnan(q), zero, tirx.min(tirx.max(q, lo_c), hi_c))

    return let(let(x / scale, clamped, "q"), rounded, "v")


def quantize_func(N: int, LO: float, HI: float, ZP: int) -> tirx.PrimFunc:
    """AffineQuantize float32 -> int8. s_p = [scale] comes from flash because TVM prints float
    constants with 7 significant digits, which would change the division."""
    @T.prim_func(s_tir=True)
    def quantize(x_p: T.handle("float32"), s_p: T.handle("float32"), y_p: T.handle("int8")):
        x = T.decl_buffer((N,), "float32", data=x_p)
        s = T.decl_buffer((1,), "float32", data=s_p)
        y = T.decl_buffer((N,), "int8", data=y_p)
        for i in range(N):
            with T.sblock("out"):
                vi = T.axis.remap("S", [i])
                y[vi] = T.Cast("int8", _affine_quantize(x[vi], s[0], LO, HI, ZP))
    return quantize


def dequantize_func(N: int, ZP: int) -> tirx.PrimFunc:
    """Dequantize int8 -> float32: y = float(x - zp) * scale, scale from flash (s_p = [scale])."""
    @T.prim_func(s_tir=True)
    def dequantize(x_p: T.handle("int8"), s_p: T.handle("float32"), y_p: T.handle("float32")):
        x = T.decl_buffer((N,), "int8", data=x_p)
        s = T.decl_buffer((1,), "float32", data=s_p)
        y = T.decl_buffer((N,), "float32", data=y_p)
        for i in range(N):
            with T.sblock("out"):
                vi = T.axis.remap("S", [i])
                y[vi] = T.Cast("float32", T.Cast("int32", x[vi]) - ZP) * s[0]
    return dequantize


# --------------------------------------------------------------------------------------------------
# Lowering functions
# --------------------------------------------------------------------------------------------------


def _err(graph: Graph, op: Op, found: str, supported: str) -> EdgecError:
    return EdgecError(f"{graph.source}: {op.describe()}: {found}; supported: {supported}")


def _io(graph: Graph, op: Op, in_types: tuple[str, ...], out_types: tuple[str, ...],
        supported: str) -> tuple[Tensor, Tensor]:
    """The single input and output, checked for dtype, per-tensor quantization of integer tensors and size."""
    if len([t for t in op.inputs if t >= 0]) != 1 or len(op.outputs) != 1:
        raise _err(graph, op, f"{len(op.inputs)} inputs and {len(op.outputs)} outputs", "1 input, 1 output")
    x, y = graph.t(op.inputs[0]), graph.t(op.outputs[0])
    if x.dtype not in in_types or y.dtype not in out_types:
        raise _err(graph, op, f"input '{x.name}' is {x.dtype}, output '{y.name}' is {y.dtype}", supported)
    for t in (x, y):
        if t.dtype == "float32":
            continue
        if t.quant is None:
            raise _err(graph, op, f"tensor '{t.name}' ({t.dtype}) has no quantization parameters",
                       "quantized integer tensors")
        if t.quant.per_axis:
            raise _err(graph, op, f"tensor '{t.name}' has per-axis quantization "
                       f"({len(t.quant.scale)} scales)", "per-tensor quantization")
    if x.size != y.size:
        raise _err(graph, op, f"input has {x.size} elements, output {y.size}", "equal element counts")
    if x.is_const:
        raise _err(graph, op, f"input '{x.name}' is a constant", "activation inputs")
    return x, y


def _lower_table(op: Op, x: Tensor, y: Tensor, table: np.ndarray, kind: str) -> LoweredOp:
    """A kernel for an 8-bit -> 8-bit function given by its 256 values (entry k is the output for input
    value qmin + k): a clamp when the table is one (RELU on identical scales, RELU6), else a lookup in
    the table placed in flash. Element i is read once, right before element i is written: in place."""
    tid_in, tid_out = op.inputs[0], op.outputs[0]
    inplace = [(tid_in, tid_out)]
    values = np.arange(QMIN[x.dtype], QMAX[x.dtype] + 1)
    lo, hi = int(table.min()), int(table.max())
    if x.dtype == y.dtype == "int8" and np.array_equal(table.astype(np.int64), np.clip(values, lo, hi)):
        args = [Arg.input(tid_in), Arg.output(tid_out)]
        return LoweredOp(op, clamp_func(x.size, lo, hi), args, kind="clamp", inplace=inplace)
    func = lut_func(x.size, x.dtype, y.dtype, -QMIN[x.dtype])
    args = [Arg.input(tid_in), Arg.const(table.astype(y.dtype)), Arg.output(tid_out)]
    return LoweredOp(op, func, args, kind=kind, inplace=inplace)


def lower_logistic(graph: Graph, op: Op) -> LoweredOp:
    x, y = _io(graph, op, ("int8",), ("int8",), "int8 -> int8")
    if y.zero_point != -128:
        raise _err(graph, op, f"output zero point is {y.zero_point} (TFLM's Prepare rejects it)",
                   "output zero point -128 (scale 1/256)")
    return _lower_table(op, x, y, logistic_table(x.scale, x.zero_point), "logistic")


def lower_tanh(graph: Graph, op: Op) -> LoweredOp:
    x, y = _io(graph, op, ("int8",), ("int8",), "int8 -> int8")
    return _lower_table(op, x, y, tanh_table(x.scale, x.zero_point), "tanh")


def lower_hard_swish(graph: Graph, op: Op) -> LoweredOp:
    x, y = _io(graph, op, ("int8",), ("int8",), "int8 -> int8")
    _, out_e, _, _ = hard_swish_params(x.scale, y.scale)
    if out_e > 0:
        ratio = x.scale / (128 * y.scale)
        raise _err(graph, op, f"input scale / (128 * output scale) = {ratio:g} needs a left shift (TFLM's "
                   "Prepare rejects it)", "input scale < 128 * output scale")
    table = hard_swish_table(x.scale, x.zero_point, y.scale, y.zero_point)
    return _lower_table(op, x, y, table, "hard_swish")


def lower_relu(graph: Graph, op: Op) -> LoweredOp:
    x, y = _io(graph, op, ("int8",), ("int8",), "int8 -> int8")
    # CalculateReluOpData: act_min = zp + roundf(0.0f / scale) = zp, act_max = +inf -> 127.
    table = requantize_table(x.scale, x.zero_point, y.scale, y.zero_point, max(-128, y.zero_point), 127)
    return _lower_table(op, x, y, table, "relu")


def lower_relu6(graph: Graph, op: Op) -> LoweredOp:
    x, y = _io(graph, op, ("int8",), ("int8",), "int8 -> int8")
    # Relu6Prepare: zero = input zero point, six = FloatToQuantizedType<int8_t>(6.0f, scale, zp) (float32
    # division, round half away from zero, clamped to int8). The output quantization is not used.
    six = int(tflite_round(float(np.float32(6.0) / np.float32(x.scale)))) + x.zero_point
    six = min(max(six, -128), 127)
    zero = x.zero_point
    values = np.arange(-128, 128)
    table = np.where(values > six, six, np.where(values < zero, zero, values)).astype(np.int8)
    return _lower_table(op, x, y, table, "relu6")


def lower_quantize(graph: Graph, op: Op) -> LoweredOp:
    supported = "float32 -> int8, int8 -> int8, uint8 -> int8, int8 -> uint8"
    x, y = _io(graph, op, ("float32", "int8", "uint8"), ("int8", "uint8"), supported)
    if x.dtype != "float32":
        if x.dtype == y.dtype == "uint8":
            raise _err(graph, op, "uint8 -> uint8", supported)
        # PrepareQuantizeReference: QuantizeMultiplier(double(in_scale) / double(out_scale)); Requantize.
        table = requantize_table(x.scale, x.zero_point, y.scale, y.zero_point, QMIN[y.dtype], QMAX[y.dtype],
                                 x.dtype, y.dtype)
        return _lower_table(op, x, y, table, "requantize")
    if y.dtype != "int8":
        raise _err(graph, op, f"float32 -> {y.dtype}", supported)
    zp = y.zero_point
    func = quantize_func(x.size, float(QMIN["int8"] - zp), float(QMAX["int8"] - zp), zp)
    args = [Arg.input(op.inputs[0]), Arg.const(np.array([y.scale], np.float32)), Arg.output(op.outputs[0])]
    return LoweredOp(op, func, args, kind="quantize")


def lower_dequantize(graph: Graph, op: Op) -> LoweredOp:
    x, _ = _io(graph, op, ("int8",), ("float32",), "int8 -> float32")
    func = dequantize_func(x.size, x.zero_point)
    args = [Arg.input(op.inputs[0]), Arg.const(np.array([x.scale], np.float32)), Arg.output(op.outputs[0])]
    return LoweredOp(op, func, args, kind="dequantize")


def lower_softmax(graph: Graph, op: Op) -> LoweredOp:
    x, y = _io(graph, op, ("int8",), ("int8", "int16"), "int8 -> int8, int8 -> int16")
    if x.shape != y.shape or not x.shape:
        raise _err(graph, op, f"input shape {list(x.shape)}, output shape {list(y.shape)}",
                   "equal shapes of rank >= 1")
    # SoftmaxPrepare checks the output quantization exactly (scale compared with ==).
    want = (-128, np.float32(1.0 / 256)) if y.dtype == "int8" else (-32768, np.float32(1.0 / 65536))
    if y.zero_point != want[0] or (y.dtype == "int8" and np.float32(y.scale) != want[1]) or (
            y.dtype == "int16" and abs(np.float32(y.scale) - want[1]) > np.float32(0.001) * want[1]):
        raise _err(graph, op, f"output scale {y.scale:g}, zero point {y.zero_point} (TFLM's Prepare "
                   "rejects it)",
                   f"{y.dtype} output with scale {float(want[1]):g} and zero point {want[0]}")
    try:
        table = softmax_exp_table(x.scale, op.attrs.get("beta", 1.0))
    except ValueError as e:
        raise _err(graph, op, str(e), "beta * input scale > 2^-26") from None
    depth = x.shape[-1]
    if x.size == 0:
        raise _err(graph, op, f"empty input shape {list(x.shape)}", "non-empty tensors")
    bits = 8 if y.dtype == "int8" else 16
    func = softmax_func(x.size // depth, depth, y.dtype, bits)
    args = [Arg.input(op.inputs[0]), Arg.const(table), Arg.output(op.outputs[0])]
    # Rows are independent and each element is read for the last time right before its output is
    # written, so input and output may share memory (same element size only).
    inplace = [(op.inputs[0], op.outputs[0])] if y.dtype == "int8" else []
    return LoweredOp(op, func, args, kind="softmax", inplace=inplace)


LOWERINGS = {
    "SOFTMAX": lower_softmax,
    "LOGISTIC": lower_logistic,
    "TANH": lower_tanh,
    "HARD_SWISH": lower_hard_swish,
    "RELU": lower_relu,
    "RELU6": lower_relu6,
    "QUANTIZE": lower_quantize,
    "DEQUANTIZE": lower_dequantize,
}
