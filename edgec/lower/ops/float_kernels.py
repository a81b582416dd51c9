"""float32 kernels (`--precision float32`): float tensors in and out, TFLite Micro's float reference kernels.

Every kernel accumulates in float32 in the same order as the TFLM reference kernel it mirrors, and builds
each result with the same float operations (no reassociation, no reciprocal multiplication, bias added
after the sum), so a C compiler that does not contract a * b + c into an FMA (gcc's default with
-std=c99: -ffp-contract=off) reproduces TFLM bit for bit, given the same libm for expf/tanhf.

Reference semantics (tflite-micro, float paths):
- CONV_2D: reference_ops::Conv: per output, total = 0; += x * w over in-image taps in (kh, kw, ic)
  order (out-of-image taps skipped); out = act(total + bias). Groups: filter depth C / G, input
  channels g * C/G.. for output channels of group g.
- DEPTHWISE_CONV_2D: reference_ops::DepthwiseConv: taps in (kh, kw) order, output channel c * DM + m.
- FULLY_CONNECTED: reference_ops::FullyConnected: total over k ascending, act(total + bias); batches
  are all leading output dimensions.
- AVERAGE_POOL_2D: reference_ops::AveragePool: sum of the in-image taps (kh, kw order) / float(count);
  MAX_POOL_2D: reference_ops::MaxPool: max = (max < x) ? x : max over the in-image taps, then act.
- ADD, SUB, MUL, DIV: act(a op b) with numpy broadcasting (BroadcastAdd6DSlow etc. give the same
  elements); MAXIMUM / MINIMUM: maximum_minimum.cc a > b ? a : b / a < b ? a : b, no activation.
- RELU, RELU6 (activations.cc ReluFloat / Relu6Float), LEAKY_RELU (x > 0 ? x : x * alpha), PRELU
  (prelu.cc BroadcastPrelu4DSlowFloat: x >= 0 ? x : x * alpha, alpha broadcast, rank <= 4), LOGISTIC
  (reference_ops::Logistic: 1 above 16.619047164916992188f, expf(x) below -9, else 1 / (1 + expf(-x))),
  TANH (tanhf), HARD_SWISH (x * min(6, max(0, x + 3)) / 6).
- SOFTMAX: reference_ops::Softmax: row max, e = expf((x - max) * beta) stored to the output and summed,
  then each output divided by the sum.
- MEAN: reduce_common.cc float path (reference_ops::Mean, both the 4-D H,W special case and the general
  one): sum in input order over the reduced axes, divided by float(count).
- TRANSPOSE_CONV: transpose_conv.cc + reference_ops::TransposeConv, inputs (output_shape, weights
  [OC, KH, KW, IC], x, optional bias). TFLM scatters x * w into a zeroed output in (iy, ix, ic, ky, kx, oc)
  order; for one output element the contributions arrive in (iy, ix, ic) order, which this kernel
  gathers in the same order. The padding is ComputePaddingHeightWidth on the output size (TFLM ignores
  the output_shape tensor; the output tensor's shape is authoritative).
- Fused activations: ActivationFunctionWithMinMax = min(max(x, lo), hi) with TFLM's std::max/std::min
  comparisons (NaN handling included). Bounds at +-FLT_MAX (NONE, RELU's upper bound) are left out: they
  only turn +-inf into +-FLT_MAX, and TVM cannot print FLT_MAX exactly.

TVM prints float constants with 7 significant digits, so constants that are not exact at that precision
(LEAKY_RELU alpha, SOFTMAX beta, the logistic cutoff, MEAN's count) come from a compile-time const table.

Known differences from TFLM, all confined to non-finite values: fused activations NONE / RELU leave +-inf
as +-inf (TFLM clamps to +-FLT_MAX); MAX_POOL starts its running max at the window's first in-image tap
instead of -FLT_MAX (differs for all -inf windows and a NaN first tap).

Checked bit-identical with the pinned tflite-micro on x86-64 (glibc); on the Cortex-M4 (newlib) expf is
1-2 ulp off glibc's, which shows in LOGISTIC and SOFTMAX (tests/ops/test_float_kernels.py).
"""

from __future__ import annotations

import math

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Op, Tensor
from edgec.lower.fixedpoint import let
from edgec.lower.kernel import Arg, LoweredOp
from edgec.lower.ops import movement
from edgec.lower.ops.broadcast import broadcast_func, broadcast_plan
from edgec.lower.ops.pool_arith import mean_runs
from edgec.lower.qparams import same_padding

F32 = "float32"
# Tap loops of at most this many iterations are unrolled.
_UNROLL_TAPS = 16
# Output channels accumulated together (each input value is loaded once for this many MACs); every
# accumulator still sums its own products in TFLM's order.
_OC_BLOCK = 4
# TFLM's reduce kernels keep input indices in int[5].
_MEAN_MAX_RANK = 5
# reference_ops::Logistic's upper cutoff (float32), not exact in TVM's 7-digit printing.
LOGISTIC_CUTOFF_UPPER = np.float32(16.619047164916992188)
_ACTIVATIONS = {"NONE": (None, None), "RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}


def _fail(graph: Graph, op: Op, found: str, supported: str) -> EdgecError:
    return EdgecError(f"{graph.source}: {op.describe()}: {found}; supported: {supported}")


def _f(v: float) -> tirx.PrimExpr:
    return tirx.const(float(v), F32)


# --- float semantics helpers ------------------------------------------------------------------------------


def tfl_max(a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    """std::max(a, b) = (a < b) ? b : a (TVM's max compares the other way round, which differs for NaN)."""
    return tirx.Select(a < b, b, a)


def tfl_min(a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    """std::min(a, b) = (b < a) ? b : a."""
    return tirx.Select(b < a, b, a)


def activation(x: tirx.PrimExpr, lo: float | None, hi: float | None) -> tirx.PrimExpr:
    """ActivationFunctionWithMinMax(x, lo, hi) = min(max(x, lo), hi); None = the +-FLT_MAX bound (left out)."""
    if lo is None and hi is None:
        return x

    def body(v):
        if lo is None:
            return tfl_min(v, _f(hi))
        low = tfl_max(v, _f(lo))
        return low if hi is None else let(low, lambda m: tfl_min(m, _f(hi)), "m")
    return let(x, body, "v")


def _act_bounds(graph: Graph, op: Op) -> tuple[float | None, float | None]:
    act = op.attrs.get("activation", "NONE")
    if act not in _ACTIVATIONS:
        raise _fail(graph, op, f"fused activation {act}", ", ".join(_ACTIVATIONS))
    return _ACTIVATIONS[act]


def _check_float(graph: Graph, op: Op, tids: list[int]) -> list[Tensor]:
    out = []
    for tid in tids:
        if tid < 0:
            raise _fail(graph, op, "a required input is missing", "all data inputs present")
        t = graph.t(tid)
        if t.dtype != F32:
            raise _fail(graph, op, f"tensor '{t.name}' is {t.dtype}", "float32 tensors (this is the float kernel)")
        if t.size == 0:
            raise _fail(graph, op, f"tensor '{t.name}' has zero elements (shape {list(t.shape)})", "non-empty tensors")
        out.append(t)
    return out


def _io_count(graph: Graph, op: Op, n_in: tuple[int, ...], n_out: int = 1) -> None:
    if len(op.inputs) not in n_in or len(op.outputs) != n_out:
        raise _fail(graph, op, f"{len(op.inputs)} inputs and {len(op.outputs)} outputs",
                    f"{' or '.join(map(str, n_in))} inputs and {n_out} output")


def _bias_arg(graph: Graph, op: Op, idx: int, channels: int) -> Arg:
    """The float bias as a kernel argument; an absent bias is a table of zeros (TFLM adds 0.0f too)."""
    if len(op.inputs) <= idx or op.inputs[idx] < 0:
        return Arg.const(np.zeros(channels, np.float32))
    b = graph.t(op.inputs[idx])
    if b.dtype != F32:
        raise _fail(graph, op, f"bias '{b.name}' is {b.dtype}", "a float32 bias in a float32 op")
    if b.size != channels:
        raise _fail(graph, op, f"bias '{b.name}' has {b.size} values for {channels} output channels",
                    "one bias value per output channel")
    return Arg.input(op.inputs[idx])


def _table(*values: float) -> Arg:
    return Arg.const(np.array(values, np.float32))


def _window(graph: Graph, op: Op, x: Tensor, y: Tensor, kh: int, kw: int, dh: int = 1,
            dw: int = 1) -> tuple[int, int, int, int, bool]:
    """ComputePaddingHeightWidth: (OH, OW, pad top, pad left, whether any window reaches outside)."""
    a = op.attrs
    sh, sw = a["stride_h"], a["stride_w"]
    if min(sh, sw, dh, dw, kh, kw) < 1:
        raise _fail(graph, op, f"filter {kh}x{kw}, stride {sh}x{sw}, dilation {dh}x{dw}",
                    "filter sizes, strides and dilations >= 1")
    if a["padding"] not in ("SAME", "VALID"):
        raise _fail(graph, op, f"padding {a['padding']}", "SAME, VALID")
    oh, pt = same_padding(x.shape[1], kh, sh, dh, a["padding"])
    ow, pl = same_padding(x.shape[2], kw, sw, dw, a["padding"])
    if oh < 1 or ow < 1:
        raise _fail(graph, op, f"a {kh}x{kw} window (dilation {dh}x{dw}) larger than the {x.shape[1]}x{x.shape[2]} "
                    f"input with {a['padding']} padding", "non-empty outputs")
    if tuple(y.shape[:3]) != (x.shape[0], oh, ow):
        raise _fail(graph, op, f"output '{y.name}' has shape {list(y.shape)} but the window gives "
                    f"{[x.shape[0], oh, ow]} + channels", "output shapes as TFLite computes them")
    eff_h, eff_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    padded = pt > 0 or pl > 0 or (oh - 1) * sh + eff_h > x.shape[1] or (ow - 1) * sw + eff_w > x.shape[2]
    return oh, ow, pt, pl, padded


def _rank4(graph: Graph, op: Op, *ts: Tensor) -> None:
    for t in ts:
        if len(t.shape) != 4:
            raise _fail(graph, op, f"tensor '{t.name}' has shape {list(t.shape)}", "rank-4 NHWC tensors")


# --- templates: convolution family --------------------------------------------------------------------------


def conv2d_func(N, H, W, C, OH, OW, OC, KH, KW, SH, SW, DH, DW, PT, PL, G, PADDED, act) -> tirx.PrimFunc:
    """CONV_2D. Interior windows (all taps in the image) run without bounds tests; with dilation 1 and one
    group a window row's KW * C inputs are contiguous and form one inner loop. Border windows test rows
    and columns outside the channel loop."""
    IC = C // G
    FPG = OC // G
    ROW = KW * IC if DW == 1 and G == 1 else 0
    UNROLL_ROW = 0 < ROW <= _UNROLL_TAPS
    OB = _OC_BLOCK

    @T.prim_func(s_tir=True)
    def conv2d(x_p: T.handle("float32"), w_p: T.handle("float32"), b_p: T.handle("float32"),
               y_p: T.handle("float32")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N * H * W * C,), "float32", data=x_p)
        w = T.decl_buffer((OC * KH * KW * IC,), "float32", data=w_p)
        b = T.decl_buffer((OC,), "float32", data=b_p)
        y = T.decl_buffer((N * OH * OW * OC,), "float32", data=y_p)
        acc = T.sblock_alloc_buffer((OB,), "float32")
        for n, oh, ow in T.grid(N, OH, OW):
            if not PADDED or (oh * SH >= PT and oh * SH - PT + (KH - 1) * DH < H
                              and ow * SW >= PL and ow * SW - PL + (KW - 1) * DW < W):
                if ROW > 0:
                    for ocb in range(OC // OB):
                        for i in T.unroll(OB):
                            acc[i] = T.float32(0)
                        for kh in range(KH):
                            if UNROLL_ROW:
                                for j in T.unroll(ROW):
                                    for i in T.unroll(OB):
                                        acc[i] = acc[i] + x[((n * H + oh * SH - PT + kh * DH) * W + ow * SW - PL)
                                                            * C + j] * w[((ocb * OB + i) * KH + kh) * ROW + j]
                            else:
                                for j in range(ROW):
                                    for i in T.unroll(OB):
                                        acc[i] = acc[i] + x[((n * H + oh * SH - PT + kh * DH) * W + ow * SW - PL)
                                                            * C + j] * w[((ocb * OB + i) * KH + kh) * ROW + j]
                        for i in T.unroll(OB):
                            y[((n * OH + oh) * OW + ow) * OC + ocb * OB + i] = act(acc[i] + b[ocb * OB + i])
                    for t in range(OC % OB):
                        acc[0] = T.float32(0)
                        for kh, j in T.grid(KH, ROW):
                            acc[0] = acc[0] + x[((n * H + oh * SH - PT + kh * DH) * W + ow * SW - PL) * C + j] \
                                * w[((OC - OC % OB + t) * KH + kh) * ROW + j]
                        y[((n * OH + oh) * OW + ow) * OC + OC - OC % OB + t] = act(acc[0] + b[OC - OC % OB + t])
                else:
                    for oc in range(OC):
                        acc[0] = T.float32(0)
                        for kh, kw, ic in T.grid(KH, KW, IC):
                            acc[0] = acc[0] + x[((n * H + oh * SH - PT + kh * DH) * W + ow * SW - PL + kw * DW) * C
                                                + oc // FPG * IC + ic] * w[((oc * KH + kh) * KW + kw) * IC + ic]
                        y[((n * OH + oh) * OW + ow) * OC + oc] = act(acc[0] + b[oc])
            else:
                for ocb in range(OC // OB if G == 1 else 0):
                    for i in T.unroll(OB):
                        acc[i] = T.float32(0)
                    for kh in range(KH):
                        if 0 <= oh * SH - PT + kh * DH and oh * SH - PT + kh * DH < H:
                            for kw in range(KW):
                                if 0 <= ow * SW - PL + kw * DW and ow * SW - PL + kw * DW < W:
                                    for ic in range(IC):
                                        for i in T.unroll(OB):
                                            acc[i] = acc[i] + x[((n * H + oh * SH - PT + kh * DH) * W + ow * SW - PL
                                                                 + kw * DW) * C + ic] \
                                                * w[(((ocb * OB + i) * KH + kh) * KW + kw) * IC + ic]
                    for i in T.unroll(OB):
                        y[((n * OH + oh) * OW + ow) * OC + ocb * OB + i] = act(acc[i] + b[ocb * OB + i])
                for oc in range(OC - OC % OB if G == 1 else 0, OC):
                    acc[0] = T.float32(0)
                    for kh in range(KH):
                        if 0 <= oh * SH - PT + kh * DH and oh * SH - PT + kh * DH < H:
                            for kw in range(KW):
                                if 0 <= ow * SW - PL + kw * DW and ow * SW - PL + kw * DW < W:
                                    for ic in range(IC):
                                        acc[0] = acc[0] + x[((n * H + oh * SH - PT + kh * DH) * W + ow * SW - PL
                                                             + kw * DW) * C + oc // FPG * IC + ic] \
                                            * w[((oc * KH + kh) * KW + kw) * IC + ic]
                    y[((n * OH + oh) * OW + ow) * OC + oc] = act(acc[0] + b[oc])
    return conv2d


def depthwise_func(N, H, W, C, OH, OW, KH, KW, SH, SW, DH, DW, PT, PL, DM, PADDED, act) -> tirx.PrimFunc:
    """DEPTHWISE_CONV_2D with the same interior / border split as conv2d_func."""
    OC = C * DM
    UNROLL = KH * KW <= _UNROLL_TAPS

    @T.prim_func(s_tir=True)
    def depthwise(x_p: T.handle("float32"), w_p: T.handle("float32"), b_p: T.handle("float32"),
                  y_p: T.handle("float32")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N * H * W * C,), "float32", data=x_p)
        w = T.decl_buffer((KH * KW * OC,), "float32", data=w_p)
        b = T.decl_buffer((OC,), "float32", data=b_p)
        y = T.decl_buffer((N * OH * OW * OC,), "float32", data=y_p)
        acc = T.sblock_alloc_buffer((1,), "float32")
        for n, oh, ow in T.grid(N, OH, OW):
            if not PADDED or (oh * SH >= PT and oh * SH - PT + (KH - 1) * DH < H
                              and ow * SW >= PL and ow * SW - PL + (KW - 1) * DW < W):
                for c, m in T.grid(C, DM):
                    acc[0] = T.float32(0)
                    if UNROLL:
                        for kh in T.unroll(KH):
                            for kw in T.unroll(KW):
                                acc[0] = acc[0] + x[((n * H + oh * SH - PT + kh * DH) * W + ow * SW - PL + kw * DW)
                                                    * C + c] * w[(kh * KW + kw) * OC + c * DM + m]
                    else:
                        for kh, kw in T.grid(KH, KW):
                            acc[0] = acc[0] + x[((n * H + oh * SH - PT + kh * DH) * W + ow * SW - PL + kw * DW)
                                                * C + c] * w[(kh * KW + kw) * OC + c * DM + m]
                    y[((n * OH + oh) * OW + ow) * OC + c * DM + m] = act(acc[0] + b[c * DM + m])
            else:
                for c, m in T.grid(C, DM):
                    acc[0] = T.float32(0)
                    for kh in range(KH):
                        if 0 <= oh * SH - PT + kh * DH and oh * SH - PT + kh * DH < H:
                            for kw in range(KW):
                                if 0 <= ow * SW - PL + kw * DW and ow * SW - PL + kw * DW < W:
                                    acc[0] = acc[0] + x[((n * H + oh * SH - PT + kh * DH) * W + ow * SW - PL
                                                         + kw * DW) * C + c] * w[(kh * KW + kw) * OC + c * DM + m]
                    y[((n * OH + oh) * OW + ow) * OC + c * DM + m] = act(acc[0] + b[c * DM + m])
    return depthwise


def fully_connected_func(B, K, OC, act) -> tirx.PrimFunc:
    """FULLY_CONNECTED: OB output channels per pass over the input row."""
    OB = _OC_BLOCK

    @T.prim_func(s_tir=True)
    def fully_connected(x_p: T.handle("float32"), w_p: T.handle("float32"), b_p: T.handle("float32"),
                        y_p: T.handle("float32")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((B * K,), "float32", data=x_p)
        w = T.decl_buffer((OC * K,), "float32", data=w_p)
        b = T.decl_buffer((OC,), "float32", data=b_p)
        y = T.decl_buffer((B * OC,), "float32", data=y_p)
        acc = T.sblock_alloc_buffer((OB,), "float32")
        for bt in range(B):
            for ocb in range(OC // OB):
                for i in T.unroll(OB):
                    acc[i] = T.float32(0)
                for k in range(K):
                    for i in T.unroll(OB):
                        acc[i] = acc[i] + x[bt * K + k] * w[(ocb * OB + i) * K + k]
                for i in T.unroll(OB):
                    y[bt * OC + ocb * OB + i] = act(acc[i] + b[ocb * OB + i])
            for t in range(OC % OB):
                acc[0] = T.float32(0)
                for k in range(K):
                    acc[0] = acc[0] + x[bt * K + k] * w[(OC - OC % OB + t) * K + k]
                y[bt * OC + OC - OC % OB + t] = act(acc[0] + b[OC - OC % OB + t])
    return fully_connected


def transpose_conv_func(N, H, W, IC, OH, OW, OC, KH, KW, SH, SW, PT, PL, act) -> tirx.PrimFunc:
    """TRANSPOSE_CONV as a gather: output (oy, ox) receives x[iy, ix] * w[ky, kx] for
    ky = oy + PT - iy * SH in [0, KH) (likewise x). The candidate rows are the ceil(KH / SH) values of iy
    ending at (oy + PT) // SH, visited in ascending order (TFLM's scatter order for this output)."""
    NRH, NRW = -(-KH // SH), -(-KW // SW)

    def iy(oy, r):
        return tirx.floordiv(oy + PT, SH) - (NRH - 1) + r

    def ix(ox, r):
        return tirx.floordiv(ox + PL, SW) - (NRW - 1) + r

    @T.prim_func(s_tir=True)
    def transpose_conv(w_p: T.handle("float32"), x_p: T.handle("float32"), b_p: T.handle("float32"),
                       y_p: T.handle("float32")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N * H * W * IC,), "float32", data=x_p)
        w = T.decl_buffer((OC * KH * KW * IC,), "float32", data=w_p)
        b = T.decl_buffer((OC,), "float32", data=b_p)
        y = T.decl_buffer((N * OH * OW * OC,), "float32", data=y_p)
        acc = T.sblock_alloc_buffer((1,), "float32")
        for n, oy, ox, oc in T.grid(N, OH, OW, OC):
            acc[0] = T.float32(0)
            for rh in range(NRH):
                if 0 <= iy(oy, rh) and iy(oy, rh) < H and oy + PT - iy(oy, rh) * SH < KH:
                    for rw in range(NRW):
                        if 0 <= ix(ox, rw) and ix(ox, rw) < W and ox + PL - ix(ox, rw) * SW < KW:
                            for ic in range(IC):
                                acc[0] = acc[0] + x[((n * H + iy(oy, rh)) * W + ix(ox, rw)) * IC + ic] \
                                    * w[((oc * KH + oy + PT - iy(oy, rh) * SH) * KW + ox + PL - ix(ox, rw) * SW)
                                        * IC + ic]
            y[((n * OH + oy) * OW + ox) * OC + oc] = act(acc[0] + b[oc])
    return transpose_conv


# --- templates: pooling, reductions --------------------------------------------------------------------------


def avg_pool_func(N, H, W, C, OH, OW, FH, FW, SH, SW, PT, PL, act) -> tirx.PrimFunc:
    def count(oh, ow):
        # TFLM's filter_{y,x}_{start,end}: the in-image taps of this window.
        return T.Cast("float32", (T.min(FH, H + PT - oh * SH) - T.max(0, PT - oh * SH))
                      * (T.min(FW, W + PL - ow * SW) - T.max(0, PL - ow * SW)))

    @T.prim_func(s_tir=True)
    def avg_pool(x_p: T.handle("float32"), y_p: T.handle("float32")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N * H * W * C,), "float32", data=x_p)
        y = T.decl_buffer((N * OH * OW * C,), "float32", data=y_p)
        acc = T.sblock_alloc_buffer((1,), "float32")
        for n, oh, ow, c in T.grid(N, OH, OW, C):
            acc[0] = T.float32(0)
            for kh in range(FH):
                if 0 <= oh * SH - PT + kh and oh * SH - PT + kh < H:
                    for kw in range(FW):
                        if 0 <= ow * SW - PL + kw and ow * SW - PL + kw < W:
                            acc[0] = acc[0] + x[((n * H + oh * SH - PT + kh) * W + ow * SW - PL + kw) * C + c]
            y[((n * OH + oh) * OW + ow) * C + c] = act(acc[0] / count(oh, ow))
    return avg_pool


def max_pool_func(N, H, W, C, OH, OW, FH, FW, SH, SW, PT, PL, act) -> tirx.PrimFunc:
    """The running max starts at the window's first in-image tap (TFLM: at -FLT_MAX)."""

    @T.prim_func(s_tir=True)
    def max_pool(x_p: T.handle("float32"), y_p: T.handle("float32")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N * H * W * C,), "float32", data=x_p)
        y = T.decl_buffer((N * OH * OW * C,), "float32", data=y_p)
        acc = T.sblock_alloc_buffer((1,), "float32")
        for n, oh, ow, c in T.grid(N, OH, OW, C):
            acc[0] = x[((n * H + T.max(oh * SH - PT, 0)) * W + T.max(ow * SW - PL, 0)) * C + c]
            for kh in range(FH):
                if 0 <= oh * SH - PT + kh and oh * SH - PT + kh < H:
                    for kw in range(FW):
                        if 0 <= ow * SW - PL + kw and ow * SW - PL + kw < W:
                            acc[0] = tfl_max(acc[0], x[((n * H + oh * SH - PT + kh) * W + ow * SW - PL + kw) * C + c])
            y[((n * OH + oh) * OW + ow) * C + c] = act(acc[0])
    return max_pool


def mean_func(K: list[int], R: list[int]) -> tirx.PrimFunc:
    """Sum over the R extents of an input viewed as (K0, R0, K1, R1, K2, R2), divided by the count c[0]."""
    K0, K1, K2 = K
    R0, R1, R2 = R

    @T.prim_func(s_tir=True)
    def mean(x_p: T.handle("float32"), c_p: T.handle("float32"), y_p: T.handle("float32")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((K0, R0, K1, R1, K2, R2), "float32", data=x_p)
        c = T.decl_buffer((1,), "float32", data=c_p)
        y = T.decl_buffer((K0, K1, K2), "float32", data=y_p)
        acc = T.sblock_alloc_buffer((1,), "float32")
        for k0, k1, k2 in T.grid(K0, K1, K2):
            acc[0] = T.float32(0)
            for r0, r1, r2 in T.grid(R0, R1, R2):
                acc[0] = acc[0] + x[k0, r0, k1, r1, k2, r2]
            y[k0, k1, k2] = acc[0] / c[0]
    return mean


def softmax_func(OUTER: int, D: int) -> tirx.PrimFunc:
    """Row max, exponentials stored to the output and summed, then one division per element."""

    @T.prim_func(s_tir=True)
    def softmax(x_p: T.handle("float32"), c_p: T.handle("float32"), y_p: T.handle("float32")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((OUTER * D,), "float32", data=x_p)
        c = T.decl_buffer((1,), "float32", data=c_p)
        y = T.decl_buffer((OUTER * D,), "float32", data=y_p)
        mx = T.sblock_alloc_buffer((1,), "float32")
        s = T.sblock_alloc_buffer((1,), "float32")
        for i in range(OUTER):
            mx[0] = x[i * D]
            for j in range(D):
                mx[0] = tfl_max(mx[0], x[i * D + j])
            s[0] = T.float32(0)
            for j in range(D):
                y[i * D + j] = T.exp((x[i * D + j] - mx[0]) * c[0])
                s[0] = s[0] + y[i * D + j]
            for j in range(D):
                y[i * D + j] = y[i * D + j] / s[0]
    return softmax


# --- templates: elementwise ---------------------------------------------------------------------------------


def unary_func(size: int, fn) -> tirx.PrimFunc:
    """y[i] = fn(x[i])."""

    @T.prim_func(s_tir=True)
    def unary(x_p: T.handle("float32"), y_p: T.handle("float32")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((size,), "float32", data=x_p)
        y = T.decl_buffer((size,), "float32", data=y_p)
        for i in range(size):
            y[i] = fn(x[i])
    return unary


def unary_table_func(size: int, n_consts: int, fn) -> tirx.PrimFunc:
    """y[i] = fn(x[i], c) with c a const float table (constants TVM would print inexactly)."""

    @T.prim_func(s_tir=True)
    def unary(x_p: T.handle("float32"), c_p: T.handle("float32"), y_p: T.handle("float32")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((size,), "float32", data=x_p)
        c = T.decl_buffer((n_consts,), "float32", data=c_p)
        y = T.decl_buffer((size,), "float32", data=y_p)
        for i in range(size):
            y[i] = fn(x[i], c)
    return unary


# --- lowering: convolution family ------------------------------------------------------------------------------


def _act_fn(graph: Graph, op: Op):
    lo, hi = _act_bounds(graph, op)
    return lambda v: activation(v, lo, hi)


def lower_conv2d(graph: Graph, op: Op) -> LoweredOp:
    _io_count(graph, op, (2, 3))
    x, w, y = _check_float(graph, op, [op.inputs[0], op.inputs[1], op.outputs[0]])
    _rank4(graph, op, x, w, y)
    n, h, wd, c = x.shape
    oc, kh, kw, ic = w.shape
    if ic < 1 or c % ic or oc % (c // ic) or y.shape[3] != oc:
        raise _fail(graph, op, f"input with {c} channels, filter {list(w.shape)}, output with {y.shape[3]} channels",
                    "filter depth dividing the input depth (groups), output channels = filters, a multiple of "
                    "the groups")
    a = op.attrs
    oh, ow, pt, pl, padded = _window(graph, op, x, y, kh, kw, a["dilation_h"], a["dilation_w"])
    bias = _bias_arg(graph, op, 2, oc)
    func = conv2d_func(n, h, wd, c, oh, ow, oc, kh, kw, a["stride_h"], a["stride_w"], a["dilation_h"],
                       a["dilation_w"], pt, pl, c // ic, padded, _act_fn(graph, op))
    return LoweredOp(op, func, [Arg.input(op.inputs[0]), Arg.input(op.inputs[1]), bias, Arg.output(op.outputs[0])],
                     kind="conv2d_f32")


def lower_depthwise(graph: Graph, op: Op) -> LoweredOp:
    _io_count(graph, op, (2, 3))
    x, w, y = _check_float(graph, op, [op.inputs[0], op.inputs[1], op.outputs[0]])
    _rank4(graph, op, x, w, y)
    n, h, wd, c = x.shape
    one, kh, kw, oc = w.shape
    dm = op.attrs.get("depth_multiplier", 0)
    if one != 1 or dm < 1 or oc != c * dm or y.shape[3] != oc:
        raise _fail(graph, op, f"input with {c} channels, filter {list(w.shape)}, depth_multiplier {dm}, output "
                    f"with {y.shape[3]} channels", "filter (1, KH, KW, C * depth_multiplier) matching the output")
    a = op.attrs
    oh, ow, pt, pl, padded = _window(graph, op, x, y, kh, kw, a["dilation_h"], a["dilation_w"])
    bias = _bias_arg(graph, op, 2, oc)
    func = depthwise_func(n, h, wd, c, oh, ow, kh, kw, a["stride_h"], a["stride_w"], a["dilation_h"],
                          a["dilation_w"], pt, pl, dm, padded, _act_fn(graph, op))
    return LoweredOp(op, func, [Arg.input(op.inputs[0]), Arg.input(op.inputs[1]), bias, Arg.output(op.outputs[0])],
                     kind="depthwise_f32")


def lower_fully_connected(graph: Graph, op: Op) -> LoweredOp:
    _io_count(graph, op, (2, 3))
    x, w, y = _check_float(graph, op, [op.inputs[0], op.inputs[1], op.outputs[0]])
    if len(w.shape) != 2:
        raise _fail(graph, op, f"weights '{w.name}' have shape {list(w.shape)}", "rank-2 weights [OC, K]")
    oc, k = w.shape
    if not y.shape or y.shape[-1] != oc or y.size % oc or x.size != y.size // oc * k:
        raise _fail(graph, op, f"input shape {list(x.shape)}, weights {list(w.shape)}, output {list(y.shape)}",
                    "output (..., OC) and input holding K values per output row")
    bias = _bias_arg(graph, op, 2, oc)
    func = fully_connected_func(y.size // oc, k, oc, _act_fn(graph, op))
    return LoweredOp(op, func, [Arg.input(op.inputs[0]), Arg.input(op.inputs[1]), bias, Arg.output(op.outputs[0])],
                     kind="fully_connected_f32")


def lower_transpose_conv(graph: Graph, op: Op) -> LoweredOp:
    _io_count(graph, op, (3, 4))
    w, x, y = _check_float(graph, op, [op.inputs[1], op.inputs[2], op.outputs[0]])
    _rank4(graph, op, x, w, y)
    n, h, wd, ic = x.shape
    oc, kh, kw, wic = w.shape
    if wic != ic or y.shape[0] != n or y.shape[3] != oc:
        raise _fail(graph, op, f"input {list(x.shape)}, weights {list(w.shape)}, output {list(y.shape)}",
                    "weights [OC, KH, KW, IC] for input [N, H, W, IC] and output [N, OH, OW, OC]")
    a = op.attrs
    sh, sw = a.get("stride_h", 0), a.get("stride_w", 0)
    if min(sh, sw, kh, kw) < 1 or a.get("padding") not in ("SAME", "VALID"):
        raise _fail(graph, op, f"filter {kh}x{kw}, stride {sh}x{sw}, padding {a.get('padding')}",
                    "strides >= 1, SAME or VALID padding")
    # CalculateOpData: the forward conv's padding for an input of the output's size.
    _, pt = same_padding(y.shape[1], kh, sh, 1, a["padding"])
    _, pl = same_padding(y.shape[2], kw, sw, 1, a["padding"])
    bias = _bias_arg(graph, op, 3, oc)
    func = transpose_conv_func(n, h, wd, ic, y.shape[1], y.shape[2], oc, kh, kw, sh, sw, pt, pl, _act_fn(graph, op))
    return LoweredOp(op, func, [Arg.input(op.inputs[1]), Arg.input(op.inputs[2]), bias, Arg.output(op.outputs[0])],
                     kind="transpose_conv_f32")


# --- lowering: pooling, MEAN, SOFTMAX -----------------------------------------------------------------------------


def _lower_pool(graph: Graph, op: Op, make, kind: str) -> LoweredOp:
    _io_count(graph, op, (1,))
    x, y = _check_float(graph, op, [op.inputs[0], op.outputs[0]])
    _rank4(graph, op, x, y)
    a = op.attrs
    fh, fw = a["filter_h"], a["filter_w"]
    oh, ow, pt, pl, _ = _window(graph, op, x, y, fh, fw)
    if y.shape[3] != x.shape[3]:
        raise _fail(graph, op, f"input {list(x.shape)}, output {list(y.shape)}", "equal channel counts")
    n, h, w, c = x.shape
    func = make(n, h, w, c, oh, ow, fh, fw, a["stride_h"], a["stride_w"], pt, pl, _act_fn(graph, op))
    return LoweredOp(op, func, [Arg.input(op.inputs[0]), Arg.output(op.outputs[0])], kind=kind)


def lower_avg_pool(graph: Graph, op: Op) -> LoweredOp:
    return _lower_pool(graph, op, avg_pool_func, "avgpool_f32")


def lower_max_pool(graph: Graph, op: Op) -> LoweredOp:
    return _lower_pool(graph, op, max_pool_func, "maxpool_f32")


def lower_mean(graph: Graph, op: Op) -> LoweredOp:
    _io_count(graph, op, (2,))
    x, y = _check_float(graph, op, [op.inputs[0], op.outputs[0]])
    ax = graph.t(op.inputs[1]) if op.inputs[1] >= 0 else None
    if ax is None or ax.dtype != "int32" or not ax.is_const:
        raise _fail(graph, op, "the axis input is missing, not constant or not int32", "a constant int32 axis tensor")
    rank = len(x.shape)
    if rank > _MEAN_MAX_RANK:
        raise _fail(graph, op, f"input rank {rank}", f"input rank <= {_MEAN_MAX_RANK} (TFLM's reduce limit)")
    axes, runs = mean_runs(graph, op, x, ax, y)
    k_ext = [r[0] for r in runs if not r[1]]
    r_ext = [r[0] for r in runs if r[1]]
    if len(k_ext) > 3 or len(r_ext) > 3:
        raise AssertionError(f"{op.describe()}: {runs}")  # rank <= 5 gives at most 3 runs of each
    count = math.prod(x.shape[i] for i in axes)
    func = mean_func(k_ext + [1] * (3 - len(k_ext)), r_ext + [1] * (3 - len(r_ext)))
    # The divisor is float(count) (TFLM converts the integer count): exact in the table, not in TVM's printing.
    return LoweredOp(op, func, [Arg.input(op.inputs[0]), _table(count), Arg.output(op.outputs[0])], kind="mean_f32")


def lower_softmax(graph: Graph, op: Op) -> LoweredOp:
    _io_count(graph, op, (1,))
    x, y = _check_float(graph, op, [op.inputs[0], op.outputs[0]])
    if x.shape != y.shape or not x.shape:
        raise _fail(graph, op, f"input {list(x.shape)}, output {list(y.shape)}", "equal shapes of rank >= 1")
    d = x.shape[-1]
    # SoftmaxParams.beta is a double made from the float attribute; the kernel multiplies by (float)beta.
    func = softmax_func(x.size // d, d)
    return LoweredOp(op, func, [Arg.input(op.inputs[0]), _table(op.attrs.get("beta", 1.0)),
                                Arg.output(op.outputs[0])], kind="softmax_f32",
                     inplace=[(op.inputs[0], op.outputs[0])])


# --- lowering: elementwise ------------------------------------------------------------------------------------------


def _unary(graph: Graph, op: Op, kind: str, fn=None, table: tuple[float, ...] = (), table_fn=None) -> LoweredOp:
    _io_count(graph, op, (1,))
    x, y = _check_float(graph, op, [op.inputs[0], op.outputs[0]])
    if x.size != y.size:
        raise _fail(graph, op, f"input {list(x.shape)}, output {list(y.shape)}", "equal element counts")
    inplace = [] if x.is_const else [(op.inputs[0], op.outputs[0])]
    if table:
        func = unary_table_func(x.size, len(table), table_fn)
        args = [Arg.input(op.inputs[0]), _table(*table), Arg.output(op.outputs[0])]
    else:
        func = unary_func(x.size, fn)
        args = [Arg.input(op.inputs[0]), Arg.output(op.outputs[0])]
    return LoweredOp(op, func, args, kind=kind, inplace=inplace)


def lower_relu(graph: Graph, op: Op) -> LoweredOp:
    return _unary(graph, op, "relu_f32", lambda v: tirx.Select(v < _f(0), _f(0), v))


def lower_relu6(graph: Graph, op: Op) -> LoweredOp:
    # Relu6Float: val > 6 ? 6 : val < 0 ? 0 : val.
    return _unary(graph, op, "relu6_f32", lambda v: let(
        v, lambda t: tirx.Select(t > _f(6), _f(6), tirx.Select(t < _f(0), _f(0), t)), "t"))


def lower_leaky_relu(graph: Graph, op: Op) -> LoweredOp:
    alpha = float(np.float32(op.attrs.get("alpha", 0.2)))
    return _unary(graph, op, "leaky_relu_f32", table=(alpha,), table_fn=lambda v, c: let(
        v, lambda t: tirx.Select(t > _f(0), t, t * c[0]), "t"))


def _logistic(v, c):
    def body(t):
        return tirx.Select(t > c[0], _f(1), tirx.Select(t < _f(-9), T.exp(t), _f(1) / (_f(1) + T.exp(-t))))
    return let(v, body, "t")


def lower_logistic(graph: Graph, op: Op) -> LoweredOp:
    return _unary(graph, op, "logistic_f32", table=(float(LOGISTIC_CUTOFF_UPPER),), table_fn=_logistic)


def lower_tanh(graph: Graph, op: Op) -> LoweredOp:
    return _unary(graph, op, "tanh_f32", T.tanh)


def _hard_swish(v):
    # in * std::min(6, std::max(0, in + 3)) / 6
    def body(t):
        return t * let(tfl_max(_f(0), t + _f(3)), lambda r: tfl_min(_f(6), r), "r") / _f(6)
    return let(v, body, "t")


def lower_hard_swish(graph: Graph, op: Op) -> LoweredOp:
    return _unary(graph, op, "hard_swish_f32", _hard_swish)


_BINARY = {
    "ADD": lambda a, b: a + b,
    "SUB": lambda a, b: a - b,
    "MUL": lambda a, b: a * b,
    "DIV": lambda a, b: a / b,
    # maximum_minimum.cc MaximumOp / MinimumOp.
    "MAXIMUM": lambda a, b: let(a, lambda p: let(b, lambda q: tirx.Select(p > q, p, q), "q"), "p"),
    "MINIMUM": lambda a, b: let(a, lambda p: let(b, lambda q: tirx.Select(p < q, p, q), "q"), "p"),
    # BroadcastPrelu4DSlowFloat.
    "PRELU": lambda a, b: let(a, lambda p: tirx.Select(p >= _f(0), p, p * b), "p"),
}


def _lower_binary(graph: Graph, op: Op) -> LoweredOp:
    _io_count(graph, op, (2,))
    a, b, y = _check_float(graph, op, [op.inputs[0], op.inputs[1], op.outputs[0]])
    if op.type == "PRELU" and max(len(a.shape), len(b.shape), len(y.shape)) > 4:
        raise _fail(graph, op, f"shapes {list(a.shape)}, {list(b.shape)} -> {list(y.shape)}",
                    "up to 4 dimensions (TFLM's PRELU)")
    dims, a_full, b_full = broadcast_plan(graph, op, a, b, y)
    combine = _BINARY[op.type]
    if op.type in ("MAXIMUM", "MINIMUM", "PRELU"):
        fn = combine
    else:
        lo, hi = _act_bounds(graph, op)

        def fn(p, q):
            return activation(combine(p, q), lo, hi)
    rank = len(y.shape)
    inplace = []
    for tid, t in ((op.inputs[0], a), (op.inputs[1], b)):
        same_layout = (1,) * (rank - len(t.shape)) + tuple(t.shape) == tuple(y.shape)
        if same_layout and not t.is_const and (tid, op.outputs[0]) not in inplace:
            inplace.append((tid, op.outputs[0]))
    args = [Arg.input(op.inputs[0]), Arg.input(op.inputs[1]), Arg.output(op.outputs[0])]
    func = broadcast_func(dims, a_full, b_full, fn, dtype=F32, value_dtype=F32)
    return LoweredOp(op, func, args, kind=f"{op.type.lower()}_f32", inplace=inplace)


LOWERINGS = {
    "CONV_2D": lower_conv2d,
    "DEPTHWISE_CONV_2D": lower_depthwise,
    "FULLY_CONNECTED": lower_fully_connected,
    "TRANSPOSE_CONV": lower_transpose_conv,
    "AVERAGE_POOL_2D": lower_avg_pool,
    "MAX_POOL_2D": lower_max_pool,
    "MEAN": lower_mean,
    "SOFTMAX": lower_softmax,
    "RELU": lower_relu,
    "RELU6": lower_relu6,
    "LEAKY_RELU": lower_leaky_relu,
    "LOGISTIC": lower_logistic,
    "TANH": lower_tanh,
    "HARD_SWISH": lower_hard_swish,
    **{name: _lower_binary for name in _BINARY},
    # Data movement is dtype-generic (movement.py takes int8 and float32).
    **movement.LOWERINGS,
}
