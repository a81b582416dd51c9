"""AVERAGE_POOL_2D, MAX_POOL_2D, ADD, SUB, MUL and MEAN (int8).

Reference semantics (TFLite Micro, double rounding):

- AVERAGE_POOL_2D: reference_integer_ops::AveragePool. Sums the raw int8 values of the in-image taps
  only (no zero-point correction), divides by the number of in-image taps rounding half away from
  zero with C truncating division ((sum +/- count/2) / count), clamps to the fused activation range.
- MAX_POOL_2D: reference_integer_ops::MaxPool: maximum of the in-image taps, clamped.
  PoolingPrepare requires |in_scale - out_scale| <= 1e-6 and equal zero points (no requantization).
- ADD / SUB: reference_integer_ops::AddFunc / reference_ops::BroadcastQuantSubSlow (the same
  arithmetic for the elementwise and broadcast paths): each input (x - zp) << 20 is scaled by
  MultiplyByQuantizedMultiplierSmallerThanOneExp, the sum (difference) is rescaled by the output
  multiplier, + out_zp, clamped. The multipliers come from CalculateOpDataAdd / CalculateOpDataSub
  (double arithmetic, QuantizeMultiplierSmallerThanOneExp): see `_add_sub_reals`.
- MUL: reference_integer_ops::MulElementwise / BroadcastMul6DSlow:
  MultiplyByQuantizedMultiplier((x1 - z1) * (x2 - z2), M, S) + out_zp, clamped, with M, S from
  QuantizeMultiplier(double(s1) * double(s2) / double(s_out)).
- MEAN: reduce_common.cc EvalIntegerMean -> reference_ops::QuantizedMeanOrSum (compute_sum=false):
  (sum - in_zp * count) times the multiplier QuantizeMultiplier(double(s_in) / double(s_out))
  readapted by 1/count at run time (reproduced here at compile time), + out_zp, clamped to int8.
  Older tflite-micro revisions took reference_ops::Mean<int8_t, int32_t> (truncating sum / count)
  when input and output quantization are equal; the pinned tflite-micro package rounds like
  QuantizedMeanOrSum in that case too (checked: e.g. sum -62 over 4 gives -16, not -15), so there
  is one path.

Broadcasting follows BroadcastBinaryOpSimple: shapes are right-aligned, a dimension of 1 repeats.
MEAN takes any set of axes on inputs up to rank 5 (TFLM's resolved-axis array holds 2 entries, but the
pinned build gives the same results for 3..5 axes, checked against it). Ops whose output cannot depend
on the inputs (activation range of a single value, multiplier flushed to 0) lower to a fill.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Op, Tensor
from edgec.lower.fixedpoint import clamp, i32, i64, let, multiply_by_quantized_multiplier
from edgec.lower.kernel import Arg, LoweredOp
from edgec.lower.ops.broadcast import broadcast_func, broadcast_plan
from edgec.lower.qparams import (
    activation_range,
    quantize_multiplier,
    quantize_multiplier_smaller_than_one_exp,
    same_padding,
)

# TFLM's reduce kernels keep input indices in int[5] (kMaxNumberOfAxis).
_MEAN_MAX_RANK = 5


def _fail(graph: Graph, op: Op, found: str, supported: str) -> EdgecError:
    return EdgecError(f"{graph.source}: {op.describe()}: {found}; supported: {supported}")


def _check_int8(graph: Graph, op: Op, tids: list[int]) -> None:
    for tid in tids:
        t = graph.t(tid)
        if t.dtype != "int8" or t.quant is None:
            raise _fail(graph, op, f"tensor '{t.name}' is {t.dtype}{'' if t.quant else ' without quantization'}",
                        "int8 quantized tensors")
        if t.quant.per_axis:
            raise _fail(graph, op, f"tensor '{t.name}' has per-axis quantization", "per-tensor quantization")


def _c(value: int) -> tirx.PrimExpr:
    return tirx.const(int(value), "int32")


def fill_func(size: int, value: int) -> tirx.PrimFunc:
    @T.prim_func(s_tir=True)
    def fill(y_p: T.handle("int8")):
        y = T.decl_buffer((size,), "int8", data=y_p)
        for i in range(size):
            with T.sblock("out"):
                vi = T.axis.remap("S", [i])
                y[vi] = T.int8(value)
    return fill


def _constant(op: Op, y: Tensor, value: int) -> LoweredOp:
    """An op whose every output element is `value` whatever the inputs (activation range of one value,
    multiplier flushed to 0). The arithmetic would fold away and leave the input pointers unused in
    the C, so it lowers to a fill that takes only the output."""
    return LoweredOp(op, fill_func(y.size, value), [Arg.output(op.outputs[0])], kind="fill")


# ---------------------------------------------------------------------------------------------------
# Pooling


def avg_pool_func(N, H, W, C, OH, OW, FH, FW, SH, SW, PT, PL, LO, HI) -> tirx.PrimFunc:
    def rounded_mean(acc, voh, vow):
        # In-image tap count of this window, as TFLM's filter_{x,y}_{start,end} give it.
        count = (T.min(FH, H + PT - voh * SH) - T.max(0, PT - voh * SH)) * (
            T.min(FW, W + PL - vow * SW) - T.max(0, PL - vow * SW))

        def body(n, a):
            half = tirx.truncdiv(n, _c(2))
            return tirx.Select(a > 0, tirx.truncdiv(a + half, n), tirx.truncdiv(a - half, n))

        return let(count, lambda n: let(acc, lambda a: body(n, a), "sum"), "count")

    @T.prim_func(s_tir=True)
    def avg_pool(x_p: T.handle("int8"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N, H, W, C), "int8", data=x_p)
        y = T.decl_buffer((N, OH, OW, C), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((N, OH, OW, C), "int32")
        for n, oh, ow, c in T.grid(N, OH, OW, C):
            for kh, kw in T.grid(FH, FW):
                with T.sblock("acc"):
                    vn, voh, vow, vc, vkh, vkw = T.axis.remap("SSSSRR", [n, oh, ow, c, kh, kw])
                    with T.init():
                        acc[vn, voh, vow, vc] = 0
                    acc[vn, voh, vow, vc] = acc[vn, voh, vow, vc] + T.if_then_else(
                        0 <= voh * SH - PT + vkh and voh * SH - PT + vkh < H
                        and 0 <= vow * SW - PL + vkw and vow * SW - PL + vkw < W,
                        T.Cast("int32", x[vn, voh * SH - PT + vkh, vow * SW - PL + vkw, vc]), 0)
            with T.sblock("out"):
                vn, voh, vow, vc = T.axis.remap("SSSS", [n, oh, ow, c])
                y[vn, voh, vow, vc] = T.Cast("int8", clamp(rounded_mean(acc[vn, voh, vow, vc], voh, vow), LO, HI))
    return avg_pool


def max_pool_func(N, H, W, C, OH, OW, FH, FW, SH, SW, PT, PL, LO, HI) -> tirx.PrimFunc:
    @T.prim_func(s_tir=True)
    def max_pool(x_p: T.handle("int8"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N, H, W, C), "int8", data=x_p)
        y = T.decl_buffer((N, OH, OW, C), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((N, OH, OW, C), "int8")
        for n, oh, ow, c in T.grid(N, OH, OW, C):
            for kh, kw in T.grid(FH, FW):
                with T.sblock("acc"):
                    vn, voh, vow, vc, vkh, vkw = T.axis.remap("SSSSRR", [n, oh, ow, c, kh, kw])
                    with T.init():
                        acc[vn, voh, vow, vc] = T.int8(-128)
                    acc[vn, voh, vow, vc] = T.max(acc[vn, voh, vow, vc], T.if_then_else(
                        0 <= voh * SH - PT + vkh and voh * SH - PT + vkh < H
                        and 0 <= vow * SW - PL + vkw and vow * SW - PL + vkw < W,
                        x[vn, voh * SH - PT + vkh, vow * SW - PL + vkw, vc], T.int8(-128)))
            with T.sblock("out"):
                vn, voh, vow, vc = T.axis.remap("SSSS", [n, oh, ow, c])
                # Bound to a variable first: CodeGenC caches the printed operands of min/max per
                # scope, so clamp(acc[...]) right after `acc = max(acc, x)` (1x1 windows, no loop
                # left in between) would reuse the value loaded before the update.
                y[vn, voh, vow, vc] = let(acc[vn, voh, vow, vc], lambda m: clamp(m, LO, HI), "best")
    return max_pool


def _lower_pool(graph: Graph, op: Op, kind: str) -> LoweredOp:
    _check_int8(graph, op, [op.inputs[0], op.outputs[0]])
    x, y = graph.t(op.inputs[0]), graph.t(op.outputs[0])
    if len(x.shape) != 4 or len(y.shape) != 4:
        raise _fail(graph, op, f"input shape {list(x.shape)}, output shape {list(y.shape)}", "4-D NHWC tensors")
    # PoolingPrepare: the kernels do not requantize.
    if abs(float(x.scale) - float(y.scale)) > 1.0e-6 or x.zero_point != y.zero_point:
        raise _fail(graph, op, f"input quantization (scale {x.scale:g}, zero point {x.zero_point}) differs from "
                    f"output quantization (scale {y.scale:g}, zero point {y.zero_point})",
                    "equal input and output quantization, as TFLM requires")
    a = op.attrs
    fh, fw, sh, sw = a["filter_h"], a["filter_w"], a["stride_h"], a["stride_w"]
    if min(fh, fw, sh, sw) < 1:
        raise _fail(graph, op, f"filter {fh}x{fw}, stride {sh}x{sw}", "filter and stride sizes >= 1")
    n, h, w, c = x.shape
    oh, pt = same_padding(h, fh, sh, 1, a["padding"])
    ow, pl = same_padding(w, fw, sw, 1, a["padding"])
    if (n, oh, ow, c) != tuple(y.shape):
        raise _fail(graph, op, f"output shape {list(y.shape)} but the {a['padding']} window gives "
                    f"{[n, oh, ow, c]}", "output shapes consistent with the input, filter, stride and padding")
    lo, hi = activation_range(a["activation"], y)
    if lo == hi:
        return _constant(op, y, lo)
    make = avg_pool_func if kind == "avgpool" else max_pool_func
    func = make(n, h, w, c, oh, ow, fh, fw, sh, sw, pt, pl, lo, hi)
    return LoweredOp(op, func, [Arg.input(op.inputs[0]), Arg.output(op.outputs[0])], kind=kind)


def lower_avg_pool(graph: Graph, op: Op) -> LoweredOp:
    return _lower_pool(graph, op, "avgpool")


def lower_max_pool(graph: Graph, op: Op) -> LoweredOp:
    return _lower_pool(graph, op, "maxpool")


# ---------------------------------------------------------------------------------------------------
# Elementwise binary ops with broadcasting


def _add_sub_reals(s1: float, s2: float, so: float) -> list[float]:
    """The real multipliers of input 1, input 2 and the output, with left_shift = 20.

    CalculateOpDataAdd / CalculateOpDataSub: twice_max = 2 * double(max(s1, s2)), then double
    divisions. (Some tflite-micro revisions of sub_common.cc do these steps in float32; the pinned
    tflite-micro package computes SUB in double like ADD, checked on scales where the two differ.)
    """
    twice = 2 * float(max(np.float32(s1), np.float32(s2)))
    return [float(np.float32(s1)) / twice, float(np.float32(s2)) / twice,
            twice / ((1 << 20) * float(np.float32(so)))]


def add_mve_func(size: int, za: int, zb: int, scales: list[tuple[int, int]], sub: bool, zy: int, lo: int,
                 hi: int) -> tirx.PrimFunc:
    """ADD / SUB of same-shape inputs through edgec_mve_add (runtime_c/kernels/edgec_mve.h), 4 lanes at a time;
    `scales`: (multiplier, shift <= 0) of input 1, input 2 and the output."""
    (m1, s1), (m2, s2), (mo, so) = scales

    @T.prim_func(s_tir=True)
    def add_mve(a_p: T.handle("int8"), b_p: T.handle("int8"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        a = T.decl_buffer((size,), "int8", data=a_p)
        b = T.decl_buffer((size,), "int8", data=b_p)
        y = T.decl_buffer((size,), "int8", data=y_p)
        T.evaluate(T.call_extern("void", "edgec_mve_add", T.address_of(a[0]), T.address_of(b[0]),
                                 T.address_of(y[0]), size, za, zb, m1, -s1, m2, -s2, int(sub), mo, -so, zy, lo, hi))
    return add_mve


def _lower_binary(graph: Graph, op: Op, kind: str, mk: str | None = None) -> LoweredOp:
    if len(op.inputs) != 2 or len(op.outputs) != 1:
        raise _fail(graph, op, f"{len(op.inputs)} inputs and {len(op.outputs)} outputs", "2 inputs, 1 output")
    _check_int8(graph, op, [op.inputs[0], op.inputs[1], op.outputs[0]])
    a, b, y = graph.t(op.inputs[0]), graph.t(op.inputs[1]), graph.t(op.outputs[0])
    dims, a_full, b_full = broadcast_plan(graph, op, a, b, y)
    lo, hi = activation_range(op.attrs["activation"], y)
    za, zb, zy = a.zero_point, b.zero_point, y.zero_point

    if kind == "mul":
        m, s = quantize_multiplier(float(np.float32(a.scale)) * float(np.float32(b.scale))
                                   / float(np.float32(y.scale)))
        out_multiplier = m

        def combine(xa, xb):
            return (xa - za) * (xb - zb)  # |.| <= 255 * 255: no int32 overflow

        def requant(prod):
            return clamp(multiply_by_quantized_multiplier(prod, _c(m), s) + zy, lo, hi)
    else:
        if min(a.scale, b.scale, y.scale) <= 0:
            raise _fail(graph, op, f"scales {a.scale:g}, {b.scale:g}, {y.scale:g}", "positive scales")
        reals = _add_sub_reals(a.scale, b.scale, y.scale)
        if not all(0.0 < r < 1.0 for r in reals):
            # QuantizeMultiplierSmallerThanOneExp aborts in TFLM's Prepare for these.
            raise _fail(graph, op, f"scales {a.scale:g}, {b.scale:g} -> {y.scale:g} give an output multiplier "
                        "2*max(s1, s2) / (2^20 * s_out) >= 1", "s_out > 2*max(s1, s2) / 2^20")
        (m1, s1), (m2, s2), (mo, so) = (quantize_multiplier_smaller_than_one_exp(r) for r in reals)
        if max(s1, s2, so) > 0:  # a real multiplier that rounds up to 1.0: TFLM's CHECK aborts too
            raise _fail(graph, op, f"scales {a.scale:g}, {b.scale:g} -> {y.scale:g} give a multiplier that "
                        "rounds to 1.0", "multipliers below 1")
        out_multiplier = mo

        def combine(xa, xb):
            # (x - zp) * 2^20 fits int32 for int8 inputs: |x - zp| <= 255.
            va = multiply_by_quantized_multiplier((xa - za) * (1 << 20), _c(m1), s1)
            vb = multiply_by_quantized_multiplier((xb - zb) * (1 << 20), _c(m2), s2)
            return va - vb if kind == "sub" else va + vb

        def requant(raw):
            return clamp(multiply_by_quantized_multiplier(raw, _c(mo), so) + zy, lo, hi)

    if lo == hi or out_multiplier == 0:
        return _constant(op, y, min(max(zy, lo), hi))
    if mk == "mve" and kind != "mul" and all(a_full) and all(b_full):  # no broadcast: one vector loop
        func = add_mve_func(y.size, za, zb, [(m1, s1), (m2, s2), (mo, so)], kind == "sub", zy, lo, hi)
    else:
        # The int32 combine result goes through the kernel's one-element stage buffer (see broadcast_func).
        func = broadcast_func(dims, a_full, b_full, lambda raw, xa, xb: requant(raw), stage_fn=combine)
    # An input laid out exactly like the output is read at element i just before i is written.
    rank = len(y.shape)
    inplace = []
    for tid, t in ((op.inputs[0], a), (op.inputs[1], b)):
        same_layout = (1,) * (rank - len(t.shape)) + tuple(t.shape) == tuple(y.shape)
        if same_layout and not t.is_const and (tid, op.outputs[0]) not in inplace:
            inplace.append((tid, op.outputs[0]))
    args = [Arg.input(op.inputs[0]), Arg.input(op.inputs[1]), Arg.output(op.outputs[0])]
    return LoweredOp(op, func, args, kind=kind, inplace=inplace)


def lower_add(graph: Graph, op: Op, mk: str | None = None) -> LoweredOp:
    """`mk`: the micro-kernel family of the kernel variant ("mve": edgec_mve_add for same-shape inputs)."""
    return _lower_binary(graph, op, "add", mk)


def lower_sub(graph: Graph, op: Op, mk: str | None = None) -> LoweredOp:
    return _lower_binary(graph, op, "sub", mk)


def lower_mul(graph: Graph, op: Op) -> LoweredOp:
    return _lower_binary(graph, op, "mul")


# ---------------------------------------------------------------------------------------------------
# MEAN


def mean_func(K: list[int], R: list[int], out_expr) -> tirx.PrimFunc:
    """Sum over the R (reduced) extents of an input viewed as (K0, R0, K1, R1, K2, R2)."""
    K0, K1, K2 = K
    R0, R1, R2 = R

    @T.prim_func(s_tir=True)
    def mean(x_p: T.handle("int8"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((K0, R0, K1, R1, K2, R2), "int8", data=x_p)
        y = T.decl_buffer((K0, K1, K2), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((K0, K1, K2), "int32")
        for k0, k1, k2 in T.grid(K0, K1, K2):
            for r0, r1, r2 in T.grid(R0, R1, R2):
                with T.sblock("acc"):
                    vk0, vk1, vk2, vr0, vr1, vr2 = T.axis.remap("SSSRRR", [k0, k1, k2, r0, r1, r2])
                    with T.init():
                        acc[vk0, vk1, vk2] = 0
                    acc[vk0, vk1, vk2] = acc[vk0, vk1, vk2] + T.Cast("int32", x[vk0, vr0, vk1, vr1, vk2, vr2])
            with T.sblock("out"):
                vk0, vk1, vk2 = T.axis.remap("SSS", [k0, k1, k2])
                y[vk0, vk1, vk2] = T.Cast("int8", out_expr(acc[vk0, vk1, vk2]))
    return mean


def mean_multiplier(in_scale: float, out_scale: float, count: int) -> tuple[int, int]:
    """QuantizeMultiplier(s_in / s_out), readapted by 1/count as QuantizedMeanOrSum does at run time."""
    m, s = quantize_multiplier(float(np.float32(in_scale)) / float(np.float32(out_scale)))
    shift = min(count.bit_length() - 1, 32, 31 + s)  # 63 - CountLeadingZeros(count), clamped
    return (m << shift) // count, s - shift


def mean_runs(graph: Graph, op: Op, x, ax, y) -> tuple[list[int], list[list]]:
    """MEAN's axes (ResolveAxis: negative axes wrap, duplicates are dropped) and the input's dimensions as
    alternating runs [extent, reduced?] of kept and reduced dimensions, starting with a kept run."""
    rank = len(x.shape)
    axes: list[int] = []
    for v in np.asarray(ax.data).reshape(-1).tolist():
        if not -rank <= v < rank:
            raise _fail(graph, op, f"axis {v} for a rank-{rank} input", f"axes in [{-rank}, {rank - 1}]")
        if v % rank not in axes:
            axes.append(v % rank if rank else 0)
    kept = [d for i, d in enumerate(x.shape) if i not in axes]
    if int(np.prod(kept, dtype=np.int64)) != y.size:
        raise _fail(graph, op, f"output shape {list(y.shape)} for input {list(x.shape)} reduced over {axes}",
                    "an output with the non-reduced dimensions")
    runs: list[list] = []
    for i, d in enumerate(x.shape):
        red = i in axes
        if runs and runs[-1][1] == red:
            runs[-1][0] *= d
        else:
            runs.append([d, red])
    if not runs or runs[0][1]:
        runs.insert(0, [1, False])
    return axes, runs


def lower_mean(graph: Graph, op: Op) -> LoweredOp:
    if len(op.inputs) != 2 or len(op.outputs) != 1:
        raise _fail(graph, op, f"{len(op.inputs)} inputs and {len(op.outputs)} outputs",
                    "2 inputs (data, axis) and 1 output")
    _check_int8(graph, op, [op.inputs[0], op.outputs[0]])
    x, ax, y = graph.t(op.inputs[0]), graph.t(op.inputs[1]), graph.t(op.outputs[0])
    if ax.dtype != "int32" or not ax.is_const:
        raise _fail(graph, op, f"axis tensor '{ax.name}' is {'a constant' if ax.is_const else 'not constant'} "
                    f"{ax.dtype}", "a constant int32 axis tensor")
    rank = len(x.shape)
    if rank > _MEAN_MAX_RANK:
        raise _fail(graph, op, f"input rank {rank}", f"input rank <= {_MEAN_MAX_RANK} (TFLM's reduce limit)")
    axes, runs = mean_runs(graph, op, x, ax, y)
    k_ext = [r[0] for r in runs if not r[1]]
    r_ext = [r[0] for r in runs if r[1]]
    k_ext += [1] * (3 - len(k_ext))
    r_ext += [1] * (3 - len(r_ext))
    count = int(np.prod([x.shape[i] for i in axes], dtype=np.int64))
    if count == 0 or x.size == 0:
        raise _fail(graph, op, f"empty input shape {list(x.shape)}", "non-empty tensors")

    m, s = mean_multiplier(x.scale, y.scale, count)
    izp, ozp = x.zero_point, y.zero_point
    if m == 0:
        return _constant(op, y, ozp)

    def out_expr(acc):
        # (sum - in_zp * count) is formed in int64 and narrowed to int32, as TFLM does.
        shifted = i32(i64(acc) - izp * count)
        return clamp(multiply_by_quantized_multiplier(shifted, _c(m), s) + ozp, -128, 127)

    func = mean_func(k_ext, r_ext, out_expr)
    return LoweredOp(op, func, [Arg.input(op.inputs[0]), Arg.output(op.outputs[0])], kind="mean")


LOWERINGS = {
    "AVERAGE_POOL_2D": lower_avg_pool,
    "MAX_POOL_2D": lower_max_pool,
    "ADD": lower_add,
    "SUB": lower_sub,
    "MUL": lower_mul,
    "MEAN": lower_mean,
}
