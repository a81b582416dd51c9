"""LEAKY_RELU, PRELU, MAXIMUM, MINIMUM, DIV and TRANSPOSE_CONV (int8): the ops the ONNX frontend adds.

Reference semantics (TFLite Micro reference kernels, double rounding):

- LEAKY_RELU: reference_ops::QuantizeLeakyRelu. Prepare (leaky_relu_common.cc,
  CalculateOpDataLeakyRelu): identity = s_in / s_out and alpha = s_in * alpha / s_out, each through
  QuantizeMultiplier. The source writes them as float expressions cast to double, but the pinned
  tflite-micro package gives the results of double arithmetic (checked on scales where the two differ),
  so edgec computes them in double. Per element
  v = x - in_zp: out_zp + MultiplyByQuantizedMultiplier(v, identity) for v >= 0, else the alpha one; for a
  negative alpha the kernel multiplies by the negated (positive) multiplier and negates the result.
  A pure function of the int8 input: a 256-entry table made here by an exact port.
- PRELU: reference_ops::BroadcastPrelu4DSlow (built on BroadcastBinaryOpSimple, rank <= 8). Prepare
  (prelu_common.cc, CalculatePreluParams): multiplier_1 = double(s_in) / double(s_out), multiplier_2 =
  double(s_in) * double(s_alpha) / double(s_out). v = x - in_zp; v >= 0: MBQM(v, m1, s1), else
  MBQM(v * (alpha - alpha_zp), m2, s2); + out_zp, clamped to int8. The alpha tensor (int8, per-tensor
  quantization, constant or not) broadcasts against the input.
- MAXIMUM / MINIMUM: reference_ops::MaximumMinimumBroadcastSlow. No Prepare: TFLM compares the raw
  int8 values and ignores the quantization, which only means something when both inputs and the output
  share scale and zero point (the TFLite quantization spec requires it). edgec requires it too.
- DIV: reference_ops::Div / BroadcastDivSlow (DivElementwise). Prepare (div.cc, CalculateOpDataDiv):
  QuantizeMultiplier(s1 / (s2 * s_out)), in double like LEAKY_RELU (the source's float expression gives
  other multipliers; the pinned package matches double, checked on scales where they differ).
  Per element: v1 = x1 - zp1, v2 = x2 - zp2; if v2 < 0 both change sign; GetReciprocal(v2, 31) ->
  (inv, recip_shift); headroom = CountLeadingSignBits(v1);
  q = MultiplyByQuantizedMultiplierGreaterThanOne(v1, inv, headroom);
  out_zp + MultiplyByQuantizedMultiplierSmallerThanOneExp(q, M, shift - recip_shift - headroom),
  clamped to the fused activation range. The reciprocal depends only on the raw divisor byte: a
  compile-time table (inv, and recip_shift - shift, per byte); the rest runs in the kernel. A constant
  divisor with a single value makes the whole op a 256-entry table on x1.
  Two places where TFLM's C++ is undefined behaviour, and what edgec does:
  * the final RoundingDivideByPOT exponent can exceed 31 (small |v1| and large |v2|: the quotient is
    below half an output step). gemmlowp's `x >> exponent` is then undefined: the x86 TFLM Python
    package shifts by exponent mod 32 and returns large values (often the int8 limits), Arm builds give
    something else again. edgec divides exactly (result 0, i.e. the output zero point), which is what
    RoundingDivideByPOT means; the tests compare with TFLM only where its exponent is <= 31.
  * a divisor equal to its zero point (division by zero): GetReciprocal(0) is deterministic on x86 and
    Arm (CountLeadingZeros(0) = 32, and 0 shifted by 32 is 0 on both), so edgec reproduces TFLM's value.
  With an output shift above 22 the exponent can go negative (undefined in TFLM too): such output
  multipliers (s1 / (s2 * s_out) >= 2^22) are rejected.
- TRANSPOSE_CONV: reference_integer_ops::TransposeConv. Inputs [output_shape, weights (OC, KH, KW, IC),
  input, bias?]; TFLM ignores the output_shape tensor and uses the output tensor's shape. Padding:
  ComputePaddingHeightWidth(stride, dilation 1, in = OUTPUT height/width, filter, padding) (C integer
  division), pad before = total / 2. Prepare: PopulateConvolutionQuantizationParams (per channel,
  double(s_in) * double(s_w[c]) / double(s_out), fused activation range). TFLM scatters
  (x - in_zp) * w into an int32 scratch buffer of the output's size; int32 addition wraps modulo 2^32
  and so is order independent, so edgec gathers instead: each output element sums its own taps
  (iy = (oy + pad - ky) / stride when divisible), no scratch buffer. The weights' zero point is ignored
  (as TFLM does); + bias, per-channel MultiplyByQuantizedMultiplier, + out_zp, clamped.

Broadcasting (PRELU, MAXIMUM, MINIMUM, DIV) follows BroadcastBinaryOpSimple: shapes right-aligned,
a dimension of 1 repeats; adjacent output dimensions with the same repetition pattern are merged and at
most BCAST_RANK (broadcast.py) merged levels are supported.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Op, Tensor
from edgec.lower.fixedpoint import clamp, i32, i64, let, multiply_by_quantized_multiplier, srdhm
from edgec.lower.kernel import Arg, LoweredOp
from edgec.lower.ops.broadcast import BCAST_RANK, broadcast_func
from edgec.lower.ops.conv import Requant, acc_dtype, conv_multipliers, mac
from edgec.lower.ops.nonlinear import clamp_func, lut_func
from edgec.lower.qparams import activation_range, quantize_multiplier

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# TFLM's BroadcastBinaryOpSimple handles tensors up to this rank.
_MAX_RANK = 8
# DIV: the largest output shift for which TFLM's final exponent stays >= 0 (headroom >= 23 for
# |v1| <= 255, recip_shift >= -1).
_DIV_MAX_SHIFT = 22


def _fail(graph: Graph, op: Op, found: str, supported: str) -> EdgecError:
    return EdgecError(f"{graph.source}: {op.describe()}: {found}; supported: {supported}")


def _check_q8(graph: Graph, op: Op, t: Tensor, role: str) -> None:
    if t.dtype != "int8" or t.quant is None:
        raise _fail(graph, op, f"{role} '{t.name}' is {t.dtype}{'' if t.quant else ' without quantization'}",
                    "int8 quantized tensors (float32 only with --precision float32)")
    if t.quant.per_axis and len(t.quant.scale) > 1:
        raise _fail(graph, op, f"{role} '{t.name}' has per-axis quantization ({len(t.quant.scale)} scales)",
                    "per-tensor quantization")
    if not -128 <= t.zero_point <= 127:
        raise _fail(graph, op, f"{role} '{t.name}' has zero point {t.zero_point}",
                    "int8 zero points in [-128, 127]")


def _arity(graph: Graph, op: Op, n_in: int) -> None:
    if len(op.inputs) != n_in or any(t < 0 for t in op.inputs) or len(op.outputs) != 1:
        raise _fail(graph, op, f"{len(op.inputs)} inputs and {len(op.outputs)} outputs",
                    f"{n_in} input{'s' if n_in > 1 else ''} and 1 output")


# --------------------------------------------------------------------------------------------------
# Exact Python ports of the integer helpers (plain ints, wrapped to the C type they have in C++)
# --------------------------------------------------------------------------------------------------


def _wrap32(v: int) -> int:
    return ((v + 2**31) & 0xFFFFFFFF) - 2**31


def _srdhm(a: int, b: int) -> int:
    """SaturatingRoundingDoublingHighMul on int32."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    q = abs(ab + nudge) >> 31  # C division truncates toward zero
    return _wrap32(q if ab + nudge >= 0 else -q)


def _rdbpot(x: int, e: int) -> int:
    """RoundingDivideByPOT (round half away from zero), exact for any e >= 0."""
    mask = (1 << e) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if (x & mask) > threshold else 0)


def _mbqm(x: int, m: int, shift: int) -> int:
    """MultiplyByQuantizedMultiplier(int32 x, m, shift) with double rounding."""
    return _rdbpot(_srdhm(_wrap32(x * (1 << max(shift, 0))), m), max(-shift, 0))


def _clz32(u: int) -> int:
    return 32 - (u & 0xFFFFFFFF).bit_length()


def _clrsb32(x: int) -> int:
    """CountLeadingSignBits(int32)."""
    return 31 - (x if x >= 0 else -x - 1).bit_length()


def _one_over_one_plus_x(a: int) -> int:
    """gemmlowp one_over_one_plus_x_for_x_in_0_1 (raw Q0.31 in, raw Q0.31 out)."""
    s = a + INT32_MAX  # RoundingHalfSum(a, One) in int64, (sum + sign) / 2 truncating
    half_den = (s + 1) // 2 if s >= 0 else -((-s + 1) // 2)
    x = _wrap32(1515870810 + _srdhm(half_den, -1010580540))  # 48/17 + (-32/17) * half_den, Q2.29
    for _ in range(3):
        one_minus = _wrap32((1 << 29) - _srdhm(half_den, x))
        t = _srdhm(x, one_minus)
        # Rescale<2> of a Q4.27 product to Q2.29: saturating left shift by 2.
        t = INT32_MAX if t > (1 << 29) - 1 else INT32_MIN if t < -((1 << 29) - 1) else t << 2
        x = _wrap32(x + t)
    # ExactMulByPot<-1> then Rescale<0>: the Q2.29 value read as Q1.30, then to Q0.31 (saturating x2).
    return INT32_MAX if x > (1 << 30) - 1 else INT32_MIN if x < -((1 << 30) - 1) else x << 1


def get_reciprocal(x: int) -> tuple[int, int]:
    """GetReciprocal(x, x_integer_digits=31): (reciprocal, num_bits_over_unit) for 0 <= x < 2^31.

    x = 0 follows what the C++ does on both x86 and Arm: CountLeadingZeros(0) = 32 and the 32-bit shift
    of 0 is 0, so the normalised value is -2^31."""
    headroom_plus_one = _clz32(x)
    shifted_minus_one = _wrap32(((x << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31))
    return _one_over_one_plus_x(shifted_minus_one), 31 - headroom_plus_one


# --------------------------------------------------------------------------------------------------
# Prepare-time constants and tables
# --------------------------------------------------------------------------------------------------


def leaky_relu_params(in_scale: float, alpha: float, out_scale: float) -> tuple[int, int, int, int]:
    """CalculateOpDataLeakyRelu: (identity multiplier, shift, alpha multiplier, shift), from the float32
    scales and alpha in double arithmetic (what the pinned TFLM computes, see the module docstring)."""
    si, so, a = (float(np.float32(v)) for v in (in_scale, out_scale, alpha))
    m_alpha, s_alpha = quantize_multiplier(si * a / so)
    m_id, s_id = quantize_multiplier(si / so)
    return m_id, s_id, m_alpha, s_alpha


def leaky_relu_table(in_scale: float, in_zp: int, alpha: float, out_scale: float, out_zp: int) -> np.ndarray:
    """reference_ops::QuantizeLeakyRelu<int8_t> for every int8 input (entry k: input k - 128)."""
    m_id, s_id, m_a, s_a = leaky_relu_params(in_scale, alpha, out_scale)
    out = []
    for x in range(-128, 128):
        v = x - in_zp
        if v >= 0:
            r = out_zp + _mbqm(v, m_id, s_id)
        else:
            # A negative multiplier is negated (int32, so INT32_MIN stays itself) and the result negated.
            r = out_zp + (-_mbqm(v, _wrap32(-m_a), s_a) if m_a < 0 else _mbqm(v, m_a, s_a))
        out.append(min(max(r, -128), 127))
    return np.array(out, np.int8)


def prelu_params(in_scale: float, alpha_scale: float, out_scale: float) -> tuple[int, int, int, int]:
    """CalculatePreluParams: (m1, s1) for v >= 0 and (m2, s2) for v * alpha, double arithmetic."""
    si, sa, so = (float(np.float32(s)) for s in (in_scale, alpha_scale, out_scale))
    m1, s1 = quantize_multiplier(si / so)
    m2, s2 = quantize_multiplier(si * sa / so)
    return m1, s1, m2, s2


def div_multiplier(s1: float, s2: float, s_out: float) -> tuple[int, int]:
    """CalculateOpDataDiv: QuantizeMultiplier(s1 / (s2 * s_out)) in double (see the module docstring)."""
    f1, f2, fo = (float(np.float32(v)) for v in (s1, s2, s_out))
    return quantize_multiplier(f1 / (f2 * fo))


def div_exponent(v1: int, v2: int, shift: int) -> int:
    """The RoundingDivideByPOT exponent of DivElementwise for offset values v1, v2 (after the sign swap)."""
    if v2 < 0:
        v1, v2 = -v1, -v2
    return _clrsb32(v1) + get_reciprocal(v2)[1] - shift


def div_value(v1: int, v2: int, m: int, shift: int) -> int:
    """DivElementwise before the output offset and clamp, for offset values v1 = x1 - zp1, v2 = x2 - zp2.
    Exponents above 31 divide exactly (see the module docstring)."""
    if v2 < 0:
        v1, v2 = -v1, -v2
    inv, recip_shift = get_reciprocal(v2)
    headroom = _clrsb32(v1)
    unscaled = _srdhm(_wrap32(v1 * (1 << headroom)), inv)
    return _rdbpot(_srdhm(unscaled, m), headroom + recip_shift - shift)


def div_tables(zp2: int, shift: int) -> np.ndarray:
    """Per raw divisor byte b (index b + 128): the reciprocal of |b - zp2|, then recip_shift - shift."""
    inv, exp = [], []
    for b in range(-128, 128):
        r, s = get_reciprocal(abs(b - zp2))
        inv.append(r)
        exp.append(s - shift)
    return np.array(inv + exp, np.int32)


# --------------------------------------------------------------------------------------------------
# TIR templates
# --------------------------------------------------------------------------------------------------


def _bcast_plan(graph: Graph, op: Op, a: Tensor, b: Tensor,
                y: Tensor) -> tuple[list[int], list[bool], list[bool]]:
    """Merge the output iteration space into BCAST_RANK levels: (extents, a varies?, b varies?)."""
    rank = max(len(a.shape), len(b.shape), len(y.shape))
    if rank > _MAX_RANK:
        raise _fail(graph, op, f"rank-{rank} tensors", f"rank <= {_MAX_RANK} (TFLM's broadcast limit)")
    ea = (1,) * (rank - len(a.shape)) + tuple(a.shape)
    eb = (1,) * (rank - len(b.shape)) + tuple(b.shape)
    ey = (1,) * (rank - len(y.shape)) + tuple(y.shape)
    levels: list[list] = []
    for d, (da, db, dy) in enumerate(zip(ea, eb, ey)):
        if da not in (1, dy) or db not in (1, dy) or max(da, db) != dy:
            raise _fail(graph, op, f"input shapes {list(a.shape)} and {list(b.shape)} do not broadcast to "
                        f"the output shape {list(y.shape)} (dimension {d})",
                        "numpy-style broadcasting where the output shape is the broadcast of the inputs")
        if dy == 1:
            continue
        fa, fb = da == dy, db == dy
        if levels and levels[-1][1] == fa and levels[-1][2] == fb:
            levels[-1][0] *= dy
        else:
            levels.append([dy, fa, fb])
    if len(levels) > BCAST_RANK:
        raise _fail(graph, op, f"the broadcast of {list(a.shape)} and {list(b.shape)} needs {len(levels)} "
                    "loop levels", f"at most {BCAST_RANK} alternating broadcast levels")
    levels = [[1, True, True]] * (BCAST_RANK - len(levels)) + levels
    return [v[0] for v in levels], [v[1] for v in levels], [v[2] for v in levels]


def div_func(dims: list[int], a_full: list[bool], b_full: list[bool], TN: int, headroom, scaled, out,
             noalias: bool = True) -> tirx.PrimFunc:
    """The broadcast DIV kernel with its int32 table t (TN entries), in three one-element stages:
    h = headroom(a, b), s = scaled(h, a, b, t), y = out(s, h, b, t). Reading h back from a buffer hides
    its Select chain from the later expressions (inline, TVM's analysis of them takes ~1 s per kernel)."""
    D0, D1, D2, D3, D4, D5 = dims
    SA = tuple(d if f else 1 for d, f in zip(dims, a_full))
    SB = tuple(d if f else 1 for d, f in zip(dims, b_full))
    A0, A1, A2, A3, A4, A5 = (int(f) for f in a_full)
    B0, B1, B2, B3, B4, B5 = (int(f) for f in b_full)

    @T.prim_func(s_tir=True)
    def div(a_p: T.handle("int8"), b_p: T.handle("int8"), t_p: T.handle("int32"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": noalias})
        a = T.decl_buffer(SA, "int8", data=a_p)
        b = T.decl_buffer(SB, "int8", data=b_p)
        t = T.decl_buffer((TN,), "int32", data=t_p)
        y = T.decl_buffer((D0, D1, D2, D3, D4, D5), "int8", data=y_p)
        hb = T.sblock_alloc_buffer((D0, D1, D2, D3, D4, D5), "int32")
        sb = T.sblock_alloc_buffer((D0, D1, D2, D3, D4, D5), "int32")
        for i0, i1, i2, i3, i4, i5 in T.grid(D0, D1, D2, D3, D4, D5):
            with T.sblock("headroom"):
                v0, v1, v2, v3, v4, v5 = T.axis.remap("SSSSSS", [i0, i1, i2, i3, i4, i5])
                hb[v0, v1, v2, v3, v4, v5] = headroom(
                    T.Cast("int32", a[v0 * A0, v1 * A1, v2 * A2, v3 * A3, v4 * A4, v5 * A5]),
                    T.Cast("int32", b[v0 * B0, v1 * B1, v2 * B2, v3 * B3, v4 * B4, v5 * B5]))
            with T.sblock("scaled"):
                v0, v1, v2, v3, v4, v5 = T.axis.remap("SSSSSS", [i0, i1, i2, i3, i4, i5])
                sb[v0, v1, v2, v3, v4, v5] = scaled(
                    hb[v0, v1, v2, v3, v4, v5],
                    T.Cast("int32", a[v0 * A0, v1 * A1, v2 * A2, v3 * A3, v4 * A4, v5 * A5]),
                    T.Cast("int32", b[v0 * B0, v1 * B1, v2 * B2, v3 * B3, v4 * B4, v5 * B5]), t)
            with T.sblock("out"):
                v0, v1, v2, v3, v4, v5 = T.axis.remap("SSSSSS", [i0, i1, i2, i3, i4, i5])
                y[v0, v1, v2, v3, v4, v5] = T.Cast("int8", out(
                    sb[v0, v1, v2, v3, v4, v5], hb[v0, v1, v2, v3, v4, v5],
                    T.Cast("int32", b[v0 * B0, v1 * B1, v2 * B2, v3 * B3, v4 * B4, v5 * B5]), t))
    return div


def _rdbpot64(x: tirx.PrimExpr, e: tirx.PrimExpr) -> tirx.PrimExpr:
    """RoundingDivideByPOT of an int32 by a run-time exponent in [0, 62], in int64: exact for exponents
    above 31 too (the result is then 0 for any int32 x but -2^31, which does not occur here)."""
    one, zero = tirx.const(1, "int64"), tirx.const(0, "int64")

    def body(v, sh):
        mask = (one << sh) - one
        threshold = (mask >> one) + tirx.Select(v < zero, one, zero)
        return i32((v >> sh) + tirx.Select(tirx.bitwise_and(v, mask) > threshold, one, zero))

    return let(i64(x), lambda v: let(i64(e), lambda sh: body(v, sh), "sh"), "x")


def _clrsb_small(v: tirx.PrimExpr) -> tirx.PrimExpr:
    """CountLeadingSignBits of an int32 known to lie in [-256, 255]: 31 - bit length of v or ~v."""
    def body(u):
        bits = sum((tirx.Select(u >= (1 << k), 1, 0) for k in range(1, 8)), tirx.Select(u >= 1, 1, 0))
        return 31 - bits

    return let(tirx.Select(v < 0, -v - 1, v), body, "u")


def transpose_conv_func(N, H, W, IC, OH, OW, OC, KH, KW, SH, SW, PT, PL, XZP, BI,
                        rq: Requant) -> tirx.PrimFunc:
    """TRANSPOSE_CONV as a gather: output (oy, ox) takes kernel rows ky = (oy + PT) % SH + jh * SH, input
    row iy = (oy + PT) // SH - jh (and likewise for columns), for the taps inside the kernel and image."""
    JH, JW = -(-KH // SH), -(-KW // SW)
    ACC = acc_dtype(JH * JW * IC)

    @T.prim_func(s_tir=True)
    def transpose_conv(x_p: T.handle("int8"), w_p: T.handle("int8"), q_p: T.handle("int32"),
                       y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N * H * W * IC,), "int8", data=x_p)
        w = T.decl_buffer((OC * KH * KW * IC,), "int8", data=w_p)
        q = T.decl_buffer((rq.size,), "int32", data=q_p)
        y = T.decl_buffer((N * OH * OW * OC,), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((1,), ACC)
        for n, oy, ox, oc in T.grid(N, OH, OW, OC):
            acc[0] = 0
            for jh in range(JH):
                if (oy + PT) % SH + jh * SH < KH and jh <= (oy + PT) // SH \
                        and (oy + PT) // SH - jh < H:
                    for jw in range(JW):
                        if (ox + PL) % SW + jw * SW < KW and jw <= (ox + PL) // SW \
                                and (ox + PL) // SW - jw < W:
                            for ic in range(IC):
                                acc[0] = mac(
                                    acc[0],
                                    T.Cast("int32", x[((n * H + (oy + PT) // SH - jh) * W
                                                       + (ox + PL) // SW - jw) * IC + ic]) - XZP,
                                    T.Cast("int32", w[((oc * KH + (oy + PT) % SH + jh * SH) * KW
                                                       + (ox + PL) % SW + jw * SW) * IC + ic]))
            y[((n * OH + oy) * OW + ox) * OC + oc] = rq.expr(q, acc[0], BI, oc)
    return transpose_conv


def fill_func(size: int, value: int) -> tirx.PrimFunc:
    """The output cannot depend on the inputs (e.g. an activation range of one value)."""
    @T.prim_func(s_tir=True)
    def fill(y_p: T.handle("int8")):
        y = T.decl_buffer((size,), "int8", data=y_p)
        for i in range(size):
            y[i] = T.int8(value)
    return fill


# --------------------------------------------------------------------------------------------------
# Lowering functions
# --------------------------------------------------------------------------------------------------


def _c(v: int) -> tirx.PrimExpr:
    return tirx.const(int(v), "int32")


def _fill(op: Op, y: Tensor, value: int) -> LoweredOp:
    return LoweredOp(op, fill_func(y.size, value), [Arg.output(op.outputs[0])], kind="fill")


def _table_op(op: Op, x: Tensor, table: np.ndarray, kind: str) -> LoweredOp:
    """An int8 -> int8 function given by its 256 values: a clamp when the table is one, else a lookup.
    Element i is read once, right before element i is written: in place."""
    inplace = [(op.inputs[0], op.outputs[0])]
    lo, hi = int(table.min()), int(table.max())
    if np.array_equal(table.astype(np.int64), np.clip(np.arange(-128, 128), lo, hi)):
        args = [Arg.input(op.inputs[0]), Arg.output(op.outputs[0])]
        return LoweredOp(op, clamp_func(x.size, lo, hi), args, kind="clamp", inplace=inplace)
    args = [Arg.input(op.inputs[0]), Arg.const(table.astype(np.int8)), Arg.output(op.outputs[0])]
    return LoweredOp(op, lut_func(x.size, "int8", "int8", 128), args, kind=kind, inplace=inplace)


def _unary_io(graph: Graph, op: Op) -> tuple[Tensor, Tensor]:
    _arity(graph, op, 1)
    x, y = graph.t(op.inputs[0]), graph.t(op.outputs[0])
    _check_q8(graph, op, x, "input")
    _check_q8(graph, op, y, "output")
    if x.size != y.size:
        raise _fail(graph, op, f"input has {x.size} elements, output {y.size}", "equal element counts")
    if x.is_const:
        raise _fail(graph, op, f"input '{x.name}' is a constant", "activation inputs")
    return x, y


def lower_leaky_relu(graph: Graph, op: Op) -> LoweredOp:
    x, y = _unary_io(graph, op)
    alpha = float(op.attrs.get("alpha", 0.0))
    if not math.isfinite(alpha):
        raise _fail(graph, op, f"alpha = {alpha}", "a finite alpha")
    table = leaky_relu_table(x.scale, x.zero_point, alpha, y.scale, y.zero_point)
    return _table_op(op, x, table, "leaky_relu")


def _binary_io(graph: Graph, op: Op) -> tuple[Tensor, Tensor, Tensor]:
    _arity(graph, op, 2)
    a, b, y = graph.t(op.inputs[0]), graph.t(op.inputs[1]), graph.t(op.outputs[0])
    for role, t in (("input 1", a), ("input 2", b), ("output", y)):
        _check_q8(graph, op, t, role)
    if y.is_const:
        raise _fail(graph, op, f"output '{y.name}' is a constant", "activation outputs")
    return a, b, y


def _lower_broadcast(graph: Graph, op: Op, a: Tensor, b: Tensor, y: Tensor, make, kind: str,
                     table: np.ndarray | None = None) -> LoweredOp:
    """make(dims, a_full, b_full, noalias) -> the kernel; `table` (int32) goes between inputs and output."""
    dims, a_full, b_full = _bcast_plan(graph, op, a, b, y)
    # An input laid out exactly like the output is read at element i only right before i is written.
    inplace: list[tuple[int, int]] = []
    for tid, t in ((op.inputs[0], a), (op.inputs[1], b)):
        same = (1,) * (len(y.shape) - len(t.shape)) + tuple(t.shape) == tuple(y.shape)
        if same and not t.is_const and (tid, op.outputs[0]) not in inplace:
            inplace.append((tid, op.outputs[0]))
    func = make(dims, a_full, b_full, not inplace)
    args = [Arg.input(op.inputs[0]), Arg.input(op.inputs[1])]
    if table is not None:
        args.append(Arg.const(table.astype(np.int32)))
    args.append(Arg.output(op.outputs[0]))
    return LoweredOp(op, func, args, kind=kind, inplace=inplace)


def lower_prelu(graph: Graph, op: Op) -> LoweredOp:
    x, alpha, y = _binary_io(graph, op)
    if x.is_const:
        raise _fail(graph, op, f"input '{x.name}' is a constant",
                    "an activation input (alpha may be constant)")
    m1, s1, m2, s2 = prelu_params(x.scale, alpha.scale, y.scale)
    xzp, azp, yzp = x.zero_point, alpha.zero_point, y.zero_point

    def stage(xv, av):
        # |v * alpha| <= 255 * 255: no int32 overflow.
        return let(xv - xzp, lambda v: tirx.Select(
            v >= 0, multiply_by_quantized_multiplier(v, _c(m1), s1),
            multiply_by_quantized_multiplier(v * (av - azp), _c(m2), s2)), "v")

    def out(s, xv, av):
        return clamp(s + yzp, -128, 127)

    def make(dims, a_full, b_full, noalias):
        return broadcast_func(dims, a_full, b_full, out, stage_fn=stage, noalias=noalias)

    return _lower_broadcast(graph, op, x, alpha, y, make, "prelu")


def _same_quant(p: Tensor, q: Tensor) -> bool:
    sp, sq = float(np.float32(p.scale)), float(np.float32(q.scale))
    return p.zero_point == q.zero_point and abs(sp - sq) <= 1e-6 * max(sp, sq)


def _lower_max_min(graph: Graph, op: Op, kind: str) -> LoweredOp:
    a, b, y = _binary_io(graph, op)
    for t in (a, b):
        if not _same_quant(t, y):
            raise _fail(graph, op, f"input '{t.name}' (scale {t.scale:g}, zero point {t.zero_point}) and "
                        f"output '{y.name}' (scale {y.scale:g}, zero point {y.zero_point}) are quantized "
                        "differently; TFLM compares the raw int8 values",
                        "inputs and output with the same scale and zero point (TFLite quantization spec)")
    pick = tirx.max if kind == "maximum" else tirx.min

    def make(dims, a_full, b_full, noalias):
        return broadcast_func(dims, a_full, b_full, lambda s, av, bv: s, stage_fn=lambda av, bv: pick(av, bv),
                              noalias=noalias)

    return _lower_broadcast(graph, op, a, b, y, make, kind)


def lower_maximum(graph: Graph, op: Op) -> LoweredOp:
    return _lower_max_min(graph, op, "maximum")


def lower_minimum(graph: Graph, op: Op) -> LoweredOp:
    return _lower_max_min(graph, op, "minimum")


def lower_div(graph: Graph, op: Op) -> LoweredOp:
    a, b, y = _binary_io(graph, op)
    if min(a.scale, b.scale, y.scale) <= 0:
        raise _fail(graph, op, f"scales {a.scale:g}, {b.scale:g}, {y.scale:g}", "positive scales")
    m, shift = div_multiplier(a.scale, b.scale, y.scale)
    if shift > _DIV_MAX_SHIFT:
        raise _fail(graph, op, f"scales {a.scale:g} / ({b.scale:g} * {y.scale:g}) give an output multiplier "
                    f">= 2^{_DIV_MAX_SHIFT}", f"s1 / (s2 * s_out) < 2^{_DIV_MAX_SHIFT}")
    lo, hi = activation_range(op.attrs.get("activation", "NONE"), y)
    z1, z2, zo = a.zero_point, b.zero_point, y.zero_point
    if lo == hi:
        return _fill(op, y, lo)
    _bcast_plan(graph, op, a, b, y)  # validates the shapes
    divisors = np.unique(np.asarray(b.data).reshape(-1)) if b.is_const else None
    if divisors is not None and len(divisors) == 1 and not a.is_const and a.size == y.size:
        # One divisor value: y is a function of x1 alone.
        v2 = int(divisors[0]) - z2
        table = np.array([min(max(zo + div_value(x1 - z1, v2, m, shift), lo), hi) for x1 in range(-128, 128)],
                         np.int8)
        return _table_op(op, a, table, "div")

    tables = div_tables(z2, shift)
    never_min = INT32_MIN not in tables[:256].tolist()

    def v1(av, bv):
        # x1 - zp1 with the divisor's sign folded in (DivElementwise negates both when v2 < 0).
        return tirx.Select(bv < z2, z1 - av, av - z1)

    def headroom(av, bv):
        return let(v1(av, bv), _clrsb_small, "v1")

    def scaled(h, av, bv, t):
        # v1 * 2^h fits int32 (h is v1's headroom); built as a product, not a shift of a negative number.
        normalised = i32(i64(v1(av, bv)) * (tirx.const(1, "int64") << i64(h)))
        return srdhm(srdhm(normalised, t[bv + 128], b_never_min=never_min), _c(m))

    def out(s, h, bv, t):
        # RoundingDivideByPOT by h + recip_shift - shift (>= 0 since shift <= 22); exact above 31.
        return clamp(_rdbpot64(s, tirx.min(h + t[bv + 384], 62)) + zo, lo, hi)

    def make(dims, a_full, b_full, noalias):
        return div_func(dims, a_full, b_full, len(tables), headroom, scaled, out, noalias)

    return _lower_broadcast(graph, op, a, b, y, make, "div", tables)


def _transpose_padding(out_size: int, k: int, stride: int, padding: str) -> int:
    """ComputePaddingHeightWidth (dilation 1) with the output size in the role of the input size, in C
    integer arithmetic (division truncates toward zero)."""
    num = out_size + stride - 1 if padding == "SAME" else out_size + stride - k
    windows = num // stride if num >= 0 else -(-num // stride)
    total = max((windows - 1) * stride + k - out_size, 0)
    return total // 2


def lower_transpose_conv(graph: Graph, op: Op) -> LoweredOp:
    if len(op.inputs) not in (3, 4) or min(op.inputs[:3]) < 0 or len(op.outputs) != 1:
        raise _fail(graph, op, f"{len(op.inputs)} inputs and {len(op.outputs)} outputs",
                    "inputs (output_shape, weights, input, optional bias) and 1 output")
    shape_t, w, x = (graph.t(t) for t in op.inputs[:3])
    y = graph.t(op.outputs[0])
    for role, t in (("input", x), ("weights", w), ("output", y)):
        if t.dtype != "int8" or t.quant is None:
            what = f"{t.dtype}{'' if t.quant else ' without quantization'}"
            raise _fail(graph, op, f"{role} '{t.name}' is {what}", "int8 quantized input, weights and output")
    _check_q8(graph, op, x, "input")
    _check_q8(graph, op, y, "output")
    if len(x.shape) != 4 or len(w.shape) != 4 or len(y.shape) != 4:
        raise _fail(graph, op, f"input {list(x.shape)}, weights {list(w.shape)}, output {list(y.shape)}",
                    "rank-4 NHWC input and output, weights (OC, KH, KW, IC)")
    n, h, wd, ic = x.shape
    oc, kh, kw, wic = w.shape
    if wic != ic or y.shape[0] != n or y.shape[3] != oc:
        raise _fail(graph, op, f"input {list(x.shape)}, weights {list(w.shape)}, output {list(y.shape)}",
                    "weights (OC, KH, KW, input channels) and output (N, OH, OW, OC)")
    declared = np.asarray(shape_t.data).reshape(-1).tolist() if shape_t.is_const else None
    if declared is not None and declared != [int(d) for d in y.shape]:
        # TFLM ignores this tensor, TFLite resizes the output by it: a model where they differ is ambiguous.
        raise _fail(graph, op, f"output_shape tensor {declared} differs from the output tensor's shape "
                    f"{list(y.shape)}", "a consistent output shape")
    a = op.attrs
    sh, sw = a["stride_h"], a["stride_w"]
    if sh < 1 or sw < 1:
        raise _fail(graph, op, f"stride {sh}x{sw}", "strides >= 1")
    scales = np.asarray(w.quant.scale, np.float32)
    if len(scales) not in (1, oc) or (len(scales) > 1 and w.quant.axis not in (None, 0)):
        raise _fail(graph, op, f"weights '{w.name}' have {len(scales)} scales along axis {w.quant.axis} for "
                    f"{oc} output channels", "one scale, or one per output channel (axis 0)")
    bias = np.zeros(oc, np.int64)
    if len(op.inputs) == 4 and op.inputs[3] >= 0:
        bt = graph.t(op.inputs[3])
        if bt.dtype != "int32" or not bt.is_const or bt.size != oc:
            raise _fail(graph, op, f"bias '{bt.name}' is a {'constant' if bt.is_const else 'non-constant'} "
                        f"{bt.dtype} tensor of {bt.size} values", f"a constant int32 bias of {oc} values")
        bias = np.asarray(bt.data).reshape(-1).astype(np.int64)
    oh, ow = y.shape[1], y.shape[2]
    pt = _transpose_padding(oh, kh, sh, a["padding"])
    pl = _transpose_padding(ow, kw, sw, a["padding"])
    mult, shift = conv_multipliers(x, scales, y, oc)
    lo, hi = activation_range(a.get("activation", "NONE"), y)
    if lo == hi:
        return _fill(op, y, lo)
    rq = Requant(mult, shift, y.zero_point, lo, hi)
    bi = rq.add_section(bias)
    func = transpose_conv_func(n, h, wd, ic, oh, ow, oc, kh, kw, sh, sw, pt, pl, x.zero_point, bi, rq)
    args = [Arg.input(op.inputs[2]), Arg.input(op.inputs[1]), Arg.const(rq.table()),
            Arg.output(op.outputs[0])]
    return LoweredOp(op, func, args, kind="transpose_conv")


LOWERINGS = {
    "LEAKY_RELU": lower_leaky_relu,
    "PRELU": lower_prelu,
    "MAXIMUM": lower_maximum,
    "MINIMUM": lower_minimum,
    "DIV": lower_div,
    "TRANSPOSE_CONV": lower_transpose_conv,
}
