"""CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED (int8 activations, int8 weights, int32 bias).

Reference semantics (TFLite Micro, double rounding):

- CONV_2D: reference_integer_ops::ConvPerChannel (used for per-tensor weights too).
  acc = sum over in-image taps of (x - x_zp) * w (the weights' zero point is ignored), + bias, then
  MultiplyByQuantizedMultiplier with the output channel's (multiplier, shift), + y_zp, clamped to the
  fused activation range. Out-of-image taps are skipped. Grouped convolution (filter depth C / G)
  reads input channels g * C/G ... for the output channels of group g (filters_per_group = OC / G).
- DEPTHWISE_CONV_2D: reference_integer_ops::DepthwiseConvPerChannel: output channel c * DM + m reads
  input channel c; weights (1, KH, KW, OC), quantized along dimension 3.
- FULLY_CONNECTED: reference_integer_ops::FullyConnected (per-tensor weights: (x - x_zp) * (w - w_zp))
  or FullyConnectedPerChannel (per-channel weights: the weights' zero point is ignored). Batches are
  all leading dimensions flattened (keep_num_dims only changes the output's shape).

Prepare-time constants (conv_common.cc / depthwise_conv_common.cc CalculateOpData* ->
kernel_util.cc PopulateConvolutionQuantizationParams; fully_connected_common.cc
CalculateOpDataFullyConnected):
- conv, depthwise and per-channel FC: real = double(s_x) * double(s_w[c]) / double(s_y);
- per-tensor FC (GetQuantizedConvolutionMultipler): real = double(float(s_x * s_w)) / double(s_y),
  i.e. the product is rounded to float32 first. Both then go through QuantizeMultiplier.
- padding: ComputePaddingHeightWidth (padding before = total // 2, output size from the padding type).

Equivalent rewrites used for speed (exact modulo 2^32, which is what TFLM's int32 accumulation gives):
- with constant weights, sum((x - x_zp) * w) = sum(x * w) - x_zp * sum(w): windows that lie fully
  inside the image accumulate x * w from a bias pre-adjusted by -x_zp * sum(w) (computed here,
  wrapped to int32). Windows that touch the padding (only when there is padding) take a second path
  that skips out-of-image rows and columns with guards outside the channel loop;
- conv (one group) and FC compute 4 output channels per pass, so each input byte is loaded once per
  4 MACs; a window row (KW * C bytes with dilation 1) is one contiguous inner loop;
- the bias is added to the sum through uint32 (no signed overflow in C, same bits as TFLM's int32
  wrap-around); sums that could leave int32 (more than 65793 taps) accumulate in uint32 likewise;
- the per-channel table holds right-shift amounts when no channel shifts left, and a shift shared by
  all channels is a C constant.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Op, Tensor
from edgec.lower.fixedpoint import clamp, i32, i64, let, rounding_divide_by_pot, srdhm
from edgec.lower.kernel import Arg, LoweredOp
from edgec.lower.qparams import activation_range, quantize_multiplier, same_padding

# Tap loops of at most this many iterations are unrolled (constant offsets, no loop overhead).
_UNROLL_TAPS = 16
# Output channels computed together in the contiguous-row conv and FC loops: 4 accumulators, the 4
# weight loads and the shared input byte fit the Cortex-M4's registers.
_OC_BLOCK = 4
# The largest int32 accumulator value.
_ACC_LIMIT = 2**31 - 1


def _fail(graph: Graph, op: Op, found: str, supported: str) -> EdgecError:
    return EdgecError(f"{graph.source}: {op.describe()}: {found}; supported: {supported}")


# --- shared Prepare-time checks and constants ------------------------------------------------------


def _check_tensors(graph: Graph, op: Op, w_rank: int) -> tuple[Tensor, Tensor, Tensor]:
    if len(op.inputs) < 2 or op.inputs[0] < 0 or op.inputs[1] < 0 or len(op.outputs) != 1:
        raise _fail(graph, op, f"{len(op.inputs)} inputs and {len(op.outputs)} outputs",
                    "input, weights, optional bias; one output")
    x, w, y = graph.t(op.inputs[0]), graph.t(op.inputs[1]), graph.t(op.outputs[0])
    for role, t in (("input", x), ("output", y), ("weights", w)):
        if t.dtype != "int8" or t.quant is None:
            raise _fail(graph, op, f"{role} '{t.name}' is {t.dtype}{'' if t.quant else ' without quantization'}",
                        "int8 quantized input, weights and output (float, int16 and hybrid models are not)")
    for role, t in (("input", x), ("output", y)):
        if t.quant.per_axis:
            raise _fail(graph, op, f"{role} '{t.name}' has per-axis quantization", f"per-tensor {role} quantization")
    if len(w.shape) != w_rank:
        raise _fail(graph, op, f"weights '{w.name}' have shape {list(w.shape)}", f"rank-{w_rank} weights")
    return x, w, y


def _bias(graph: Graph, op: Op, channels: int) -> np.ndarray | None:
    """The constant int32 bias (None when absent)."""
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return None
    b = graph.t(op.inputs[2])
    if b.dtype != "int32" or not b.is_const:
        raise _fail(graph, op, f"bias '{b.name}' is {'a constant ' if b.is_const else 'a non-constant '}{b.dtype}",
                    "a constant int32 bias (int64 bias is for int16 activations)")
    if b.size != channels:
        raise _fail(graph, op, f"bias '{b.name}' has {b.size} values for {channels} output channels",
                    "one bias value per output channel")
    return b.data.reshape(-1).astype(np.int64)


def _weight_scales(graph: Graph, op: Op, w: Tensor, channels: int) -> np.ndarray:
    scales = np.asarray(w.quant.scale, np.float32)
    if len(scales) not in (1, channels):
        raise _fail(graph, op, f"weights '{w.name}' have {len(scales)} scales for {channels} output channels",
                    "one scale (per-tensor) or one per output channel")
    return scales


def _multipliers(real: list[float]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(r) for r in real]
    return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)


def conv_multipliers(x: Tensor, w_scales: np.ndarray, y: Tensor, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """PopulateConvolutionQuantizationParams: double(s_x) * double(s_w) / double(s_y) per channel."""
    sx, sy = float(np.float32(x.scale)), float(np.float32(y.scale))
    ws = [float(w_scales[c if len(w_scales) > 1 else 0]) for c in range(channels)]
    return _multipliers([sx * s / sy for s in ws])


def _wrap32(v: np.ndarray) -> np.ndarray:
    return ((np.asarray(v, np.int64) + 2**31) % 2**32 - 2**31).astype(np.int64)


class Requant:
    """Per-channel requantization constants packed into one int32 table, and the TIR that applies them.

    Table layout: multipliers [OC], then (only if the shifts differ between channels) shifts [OC],
    then the bias sections the kernel asks for. A shift shared by all channels is a C constant; when
    no channel shifts left, the table holds right-shift amounts and the left-shift code is left out.
    """

    def __init__(self, mult: np.ndarray, shift: np.ndarray, yzp: int, lo: int, hi: int) -> None:
        self.oc = len(mult)
        self.yzp, self.lo, self.hi = yzp, lo, hi
        self.sections = [mult.astype(np.int64)]
        self.uniform_shift = int(shift[0]) if np.all(shift == shift[0]) else None
        self.right_only = bool(np.all(shift <= 0))
        # SRDHM's INT32_MIN * INT32_MIN saturation needs a multiplier of INT32_MIN (only from a negative
        # scale); without one its test is left out.
        self.never_min = bool(np.all(mult != -(2**31)))
        if self.uniform_shift is None:
            self.sections.append(-shift if self.right_only else shift)

    def add_section(self, values: np.ndarray) -> int:
        """Append an int32 section (wrapped), return its offset in the table."""
        self.sections.append(_wrap32(values))
        return self.oc * (len(self.sections) - 1)

    @property
    def size(self) -> int:
        return self.oc * len(self.sections)

    def table(self) -> np.ndarray:
        return np.concatenate(self.sections).astype(np.int32)

    def expr(self, q, acc, bias_offset: int, oc, extra=None) -> tirx.PrimExpr:
        """int8 output for the (int32 or uint32) accumulator `acc` of output channel `oc` (`q`: the table).
        `extra`: an int64 term (LoRA slots) added to acc + bias, saturated to int32, before requantization."""
        # bias + acc in uint32: TFLM's int32 sum modulo 2^32 without signed overflow in C.
        total = i32(tirx.Cast("uint32", acc) + tirx.Cast("uint32", q[bias_offset + oc]))
        if extra is not None:
            total = i32(clamp(i64(total) + extra, -(2**31), _ACC_LIMIT))
        m = q[oc]
        if self.uniform_shift is not None:
            s = self.uniform_shift
            left, right = max(s, 0), max(-s, 0)
            shifted = total if left == 0 else i32(i64(total) * (1 << left))
            scaled = srdhm(shifted, m, b_never_min=self.never_min)
            if right:
                scaled = rounding_divide_by_pot(scaled, right)
        elif self.right_only:
            scaled = rounding_divide_by_pot(srdhm(total, m, b_never_min=self.never_min), q[self.oc + oc])
        else:
            def general(sh):
                shifted = i32(i64(total) * (tirx.const(1, "int64") << i64(tirx.max(sh, 0))))
                return rounding_divide_by_pot(srdhm(shifted, m, b_never_min=self.never_min), tirx.max(-sh, 0))
            scaled = let(q[self.oc + oc], general, "shift")
        return T.Cast("int8", clamp(scaled + self.yzp, self.lo, self.hi))


def _window(graph: Graph, op: Op, x: Tensor, y: Tensor, kh: int, kw: int) -> tuple[int, int, int, int, bool]:
    """ComputePaddingHeightWidth: (OH, OW, pad top, pad left, any padding at all)."""
    a = op.attrs
    for k in ("stride_h", "stride_w", "dilation_h", "dilation_w"):
        if a[k] < 1:
            raise _fail(graph, op, f"{k} = {a[k]}", "strides and dilations >= 1")
    oh, pt = same_padding(x.shape[1], kh, a["stride_h"], a["dilation_h"], a["padding"])
    ow, pl = same_padding(x.shape[2], kw, a["stride_w"], a["dilation_w"], a["padding"])
    if oh < 1 or ow < 1:
        raise _fail(graph, op, f"a {kh}x{kw} filter (dilation {a['dilation_h']}x{a['dilation_w']}) larger than "
                    f"the {x.shape[1]}x{x.shape[2]} input with {a['padding']} padding", "non-empty outputs")
    want = (x.shape[0], oh, ow, y.shape[3] if len(y.shape) == 4 else -1)
    if tuple(y.shape) != want:
        raise _fail(graph, op, f"output '{y.name}' has shape {list(y.shape)} but the window gives "
                    f"{[x.shape[0], oh, ow]} + channels", "output shapes as TFLite computes them")
    # Windows reach outside the image only if there is padding before or after.
    eff_h, eff_w = (kh - 1) * a["dilation_h"] + 1, (kw - 1) * a["dilation_w"] + 1
    padded = pt > 0 or pl > 0 or (oh - 1) * a["stride_h"] + eff_h > x.shape[1] \
        or (ow - 1) * a["stride_w"] + eff_w > x.shape[2]
    return oh, ow, pt, pl, padded


def acc_dtype(taps: int) -> str:
    """int32 accumulators when no sum of `taps` products |x * w| <= 255 * 128 can overflow (TFLM's own
    int32 accumulator has the same limit); beyond that uint32, which wraps like TFLM's sum does in
    practice without signed overflow in C."""
    return "int32" if taps * 255 * 128 <= _ACC_LIMIT else "uint32"


def mac(acc: tirx.PrimExpr, a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    """acc + a * b with int32 a, b, in the accumulator's dtype."""
    prod = a * b
    return acc + (prod if str(acc.ty) == "int32" else tirx.Cast(str(acc.ty), prod))


# --- templates ----------------------------------------------------------------------------------------


def conv2d_func(N, H, W, C, OH, OW, OC, KH, KW, SH, SW, DH, DW, PT, PL, G, PADDED, XZP_IN, XZP, BI, BB,
                rq: Requant, pixel_macro: bool = False):
    """CONV_2D. Interior windows: acc over x * w - XZP_IN (0 when folded into bias section BI).
    Border windows (only if PADDED): guarded taps of (x - XZP) * w from bias section BB.
    `pixel_macro`: return the T.macro computing one output pixel (x, w, q, y, acc[OB], n, oh, ow) instead."""
    IC = C // G
    FPG = OC // G
    ACC = acc_dtype(KH * KW * IC)
    # With dilation 1 and one group, a window row's KW * C inputs are contiguous: one inner loop.
    ROW = KW * IC if DW == 1 and G == 1 else 0
    UNROLL_ROW = 0 < ROW <= _UNROLL_TAPS
    OB = _OC_BLOCK

    # One output pixel (all channels); the LoRA slots kernel reuses it when no slot is active.
    @T.macro
    def pixel(x, w, q, y, acc, n, oh, ow):
        if not PADDED or (oh * SH >= PT and oh * SH - PT + (KH - 1) * DH < H
                          and ow * SW >= PL and ow * SW - PL + (KW - 1) * DW < W):
            if ROW > 0:
                # OB output channels at a time: each input byte is loaded once for OB MACs.
                for ocb in range(OC // OB):
                    for i in T.unroll(OB):
                        acc[i] = 0
                    for kh in range(KH):
                        if UNROLL_ROW:
                            for j in T.unroll(ROW):
                                for i in T.unroll(OB):
                                    acc[i] = mac(acc[i], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W
                                                                          + ow * SW - PL) * C + j]) - XZP_IN,
                                        T.Cast("int32", w[((ocb * OB + i) * KH + kh) * ROW + j]))
                        else:
                            for j in range(ROW):
                                for i in T.unroll(OB):
                                    acc[i] = mac(acc[i], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W
                                                                          + ow * SW - PL) * C + j]) - XZP_IN,
                                        T.Cast("int32", w[((ocb * OB + i) * KH + kh) * ROW + j]))
                    for i in T.unroll(OB):
                        y[((n * OH + oh) * OW + ow) * OC + ocb * OB + i] = rq.expr(q, acc[i], BI, ocb * OB + i)
                for t in range(OC % OB):
                    acc[0] = 0
                    for kh, j in T.grid(KH, ROW):
                        acc[0] = mac(acc[0], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W
                                                              + ow * SW - PL) * C + j]) - XZP_IN,
                            T.Cast("int32", w[((OC - OC % OB + t) * KH + kh) * ROW + j]))
                    y[((n * OH + oh) * OW + ow) * OC + OC - OC % OB + t] = rq.expr(q, acc[0], BI, OC - OC % OB + t)
            else:
                for oc in range(OC):
                    acc[0] = 0
                    for kh, kw, ic in T.grid(KH, KW, IC):
                        acc[0] = mac(acc[0], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W + ow * SW - PL
                                                              + kw * DW) * C + oc // FPG * IC + ic]) - XZP_IN,
                            T.Cast("int32", w[((oc * KH + kh) * KW + kw) * IC + ic]))
                    y[((n * OH + oh) * OW + ow) * OC + oc] = rq.expr(q, acc[0], BI, oc)
        else:
            # Blocks of OB output channels share each guard and input load (one group only).
            for ocb in range(OC // OB if G == 1 else 0):
                for i in T.unroll(OB):
                    acc[i] = 0
                for kh in range(KH):
                    if 0 <= oh * SH - PT + kh * DH and oh * SH - PT + kh * DH < H:
                        for kw in range(KW):
                            if 0 <= ow * SW - PL + kw * DW and ow * SW - PL + kw * DW < W:
                                for ic in range(IC):
                                    for i in T.unroll(OB):
                                        acc[i] = mac(acc[i], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W
                                                                              + ow * SW - PL + kw * DW) * C + ic])
                                                           - XZP,
                                            T.Cast("int32", w[(((ocb * OB + i) * KH + kh) * KW + kw) * IC + ic]))
                for i in T.unroll(OB):
                    y[((n * OH + oh) * OW + ow) * OC + ocb * OB + i] = rq.expr(q, acc[i], BB, ocb * OB + i)
            for oc in range(OC - OC % OB if G == 1 else 0, OC):
                acc[0] = 0
                for kh in range(KH):
                    if 0 <= oh * SH - PT + kh * DH and oh * SH - PT + kh * DH < H:
                        for kw in range(KW):
                            if 0 <= ow * SW - PL + kw * DW and ow * SW - PL + kw * DW < W:
                                for ic in range(IC):
                                    acc[0] = mac(acc[0], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W
                                                                          + ow * SW - PL + kw * DW) * C
                                                                         + oc // FPG * IC + ic]) - XZP,
                                        T.Cast("int32", w[((oc * KH + kh) * KW + kw) * IC + ic]))
                y[((n * OH + oh) * OW + ow) * OC + oc] = rq.expr(q, acc[0], BB, oc)

    if pixel_macro:
        return pixel

    @T.prim_func(s_tir=True)
    def conv2d(x_p: T.handle("int8"), w_p: T.handle("int8"), q_p: T.handle("int32"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N * H * W * C,), "int8", data=x_p)
        w = T.decl_buffer((OC * KH * KW * IC,), "int8", data=w_p)
        q = T.decl_buffer((rq.size,), "int32", data=q_p)
        y = T.decl_buffer((N * OH * OW * OC,), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((OB,), ACC)
        for n, oh, ow in T.grid(N, OH, OW):
            pixel(x, w, q, y, acc, n, oh, ow)
    return conv2d


def depthwise_func(N, H, W, C, OH, OW, KH, KW, SH, SW, DH, DW, PT, PL, DM, PADDED, XZP_IN, XZP, BI, BB,
                   rq: Requant, pixel_macro: bool = False):
    """DEPTHWISE_CONV_2D, same interior / border split as conv2d_func.
    `pixel_macro`: return the T.macro computing one output pixel (x, w, q, y, acc[1], n, oh, ow) instead."""
    OC = C * DM
    UNROLL = KH * KW <= _UNROLL_TAPS
    ACC = acc_dtype(KH * KW)

    # One output pixel (all channels); the LoRA slots kernel reuses it when no slot is active.
    @T.macro
    def pixel(x, w, q, y, acc, n, oh, ow):
        if not PADDED or (oh * SH >= PT and oh * SH - PT + (KH - 1) * DH < H
                          and ow * SW >= PL and ow * SW - PL + (KW - 1) * DW < W):
            for c, m in T.grid(C, DM):
                acc[0] = 0
                if UNROLL:
                    for kh in T.unroll(KH):
                        for kw in T.unroll(KW):
                            acc[0] = mac(acc[0], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W
                                                                  + ow * SW - PL + kw * DW) * C + c]) - XZP_IN,
                                T.Cast("int32", w[(kh * KW + kw) * OC + c * DM + m]))
                else:
                    for kh, kw in T.grid(KH, KW):
                        acc[0] = mac(acc[0], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W
                                                              + ow * SW - PL + kw * DW) * C + c]) - XZP_IN,
                            T.Cast("int32", w[(kh * KW + kw) * OC + c * DM + m]))
                y[((n * OH + oh) * OW + ow) * OC + c * DM + m] = rq.expr(q, acc[0], BI, c * DM + m)
        else:
            for c, m in T.grid(C, DM):
                acc[0] = 0
                for kh in range(KH):
                    if 0 <= oh * SH - PT + kh * DH and oh * SH - PT + kh * DH < H:
                        for kw in range(KW):
                            if 0 <= ow * SW - PL + kw * DW and ow * SW - PL + kw * DW < W:
                                acc[0] = mac(acc[0], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W
                                                                      + ow * SW - PL + kw * DW) * C + c]) - XZP,
                                    T.Cast("int32", w[(kh * KW + kw) * OC + c * DM + m]))
                y[((n * OH + oh) * OW + ow) * OC + c * DM + m] = rq.expr(q, acc[0], BB, c * DM + m)

    if pixel_macro:
        return pixel

    @T.prim_func(s_tir=True)
    def depthwise(x_p: T.handle("int8"), w_p: T.handle("int8"), q_p: T.handle("int32"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N * H * W * C,), "int8", data=x_p)
        w = T.decl_buffer((KH * KW * OC,), "int8", data=w_p)
        q = T.decl_buffer((rq.size,), "int32", data=q_p)
        y = T.decl_buffer((N * OH * OW * OC,), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((1,), ACC)
        for n, oh, ow in T.grid(N, OH, OW):
            pixel(x, w, q, y, acc, n, oh, ow)
    return depthwise


def fully_connected_func(B, K, OC, XZP_IN, WZP, BI, rq: Requant):
    """FULLY_CONNECTED: acc = sum((x - XZP_IN) * (w - WZP)) from bias section BI."""
    OB = _OC_BLOCK
    ACC = acc_dtype(K)

    @T.prim_func(s_tir=True)
    def fully_connected(x_p: T.handle("int8"), w_p: T.handle("int8"), q_p: T.handle("int32"),
                        y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((B * K,), "int8", data=x_p)
        w = T.decl_buffer((OC * K,), "int8", data=w_p)
        q = T.decl_buffer((rq.size,), "int32", data=q_p)
        y = T.decl_buffer((B * OC,), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((OB,), ACC)
        for b in range(B):
            for ocb in range(OC // OB):
                for i in T.unroll(OB):
                    acc[i] = 0
                for k in range(K):
                    for i in T.unroll(OB):
                        acc[i] = mac(acc[i], T.Cast("int32", x[b * K + k]) - XZP_IN,
                            (T.Cast("int32", w[(ocb * OB + i) * K + k]) - WZP))
                for i in T.unroll(OB):
                    y[b * OC + ocb * OB + i] = rq.expr(q, acc[i], BI, ocb * OB + i)
            for t in range(OC % OB):
                acc[0] = 0
                for k in range(K):
                    acc[0] = mac(acc[0], T.Cast("int32", x[b * K + k]) - XZP_IN,
                        (T.Cast("int32", w[(OC - OC % OB + t) * K + k]) - WZP))
                y[b * OC + OC - OC % OB + t] = rq.expr(q, acc[0], BI, OC - OC % OB + t)
    return fully_connected


@T.macro
def slot_branch(acc2, acc3, st, bq, t, m, oc, S, R, OC):
    """The LoRA slots contribution to output channel `oc`, into acc3[0] (int64, base accumulator scale):
    for every active slot s, u = B[s, oc, :] . t[s, :] (int64), scaled by the slot's Q16 user scale
    (rounded), then by the slot's per-channel (multiplier, shift) with rounding."""
    acc3[0] = T.int64(0)
    for s in range(S):
        if st[s] != 0:
            acc2[0] = T.int64(0)
            for r in range(R):
                acc2[0] = acc2[0] + T.Cast("int64", bq[(s * OC + oc) * R + r]) * T.Cast("int64", t[s * R + r])
            acc3[0] = acc3[0] + T.shift_right(
                T.shift_right(acc2[0] * T.Cast("int64", st[s]) + T.int64(1 << 15), T.int64(16))
                * T.Cast("int64", m[(s * OC + oc) * 2])
                + T.shift_left(T.int64(1), T.Cast("int64", m[(s * OC + oc) * 2 + 1] - 1)),
                T.Cast("int64", m[(s * OC + oc) * 2 + 1]))


def fully_connected_slots_func(B, K, OC, XZP_IN, WZP, BI, rq: Requant, S, R, XZP):
    """FULLY_CONNECTED with S LoRA slots of rank <= R (see lower_fully_connected_slots).

    Per batch row: t[s, r] = sum_k a[s, r, k] * (x[k] - XZP) (int32) for each active slot s (st[s] != 0);
    per output channel: u = sum_r b[s, c, r] * t[s, r] (int64), v = (u * st[s] + 2^15) >> 16 (the user's
    Q16 scale), delta += (v * m[s, c] + 2^(sh - 1)) >> sh; delta is added to the base accumulator
    (saturated to int32) before the base requantization. No active slot: delta = 0, the base result."""
    ACC = acc_dtype(K)

    @T.prim_func(s_tir=True)
    def fully_connected_slots(x_p: T.handle("int8"), w_p: T.handle("int8"), q_p: T.handle("int32"),
                              a_p: T.handle("int8"), b_p: T.handle("int8"), m_p: T.handle("int32"),
                              st_p: T.handle("int32"), t_p: T.handle("int32"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((B * K,), "int8", data=x_p)
        w = T.decl_buffer((OC * K,), "int8", data=w_p)
        q = T.decl_buffer((rq.size,), "int32", data=q_p)
        a = T.decl_buffer((S * R * K,), "int8", data=a_p)
        bq = T.decl_buffer((S * OC * R,), "int8", data=b_p)
        m = T.decl_buffer((S * OC * 2,), "int32", data=m_p)
        st = T.decl_buffer((S,), "int32", data=st_p)
        t = T.decl_buffer((S * R,), "int32", data=t_p)
        y = T.decl_buffer((B * OC,), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((1,), ACC)
        acc1 = T.sblock_alloc_buffer((1,), "int32")
        acc2 = T.sblock_alloc_buffer((1,), "int64")
        acc3 = T.sblock_alloc_buffer((1,), "int64")
        for b in range(B):
            for s in range(S):
                if st[s] != 0:
                    for r in range(R):
                        acc1[0] = 0
                        for k in range(K):
                            acc1[0] = acc1[0] + (T.Cast("int32", x[b * K + k]) - XZP) \
                                * T.Cast("int32", a[(s * R + r) * K + k])
                        t[s * R + r] = acc1[0]
            for oc in range(OC):
                acc[0] = 0
                for k in range(K):
                    acc[0] = mac(acc[0], T.Cast("int32", x[b * K + k]) - XZP_IN,
                                 (T.Cast("int32", w[oc * K + k]) - WZP))
                slot_branch(acc2, acc3, st, bq, t, m, oc, S, R, OC)
                y[b * OC + oc] = rq.expr(q, acc[0], BI, oc, extra=acc3[0])
    return fully_connected_slots


def slot_window_sums_func(H, W, C, KH, KW, SH, SW, DH, DW, PT, PL, XZP, S, R):
    """The T.macro (x, a, st, t, active[1], acc1[1], n, oh, ow) of the conv slot kernels' window sums: for each
    active slot s (st[s] != 0), t[s, r] = sum over the output pixel's in-image taps (all C input channels) of
    a[s, r, tap] * (x - XZP) (int32); active[0] = 1 if any slot is active, else 0."""

    @T.macro
    def window_sums(x, a, st, t, active, acc1, n, oh, ow):
        active[0] = 0
        for s in range(S):
            if st[s] != 0:
                active[0] = 1
                for r in range(R):
                    acc1[0] = 0
                    for kh in range(KH):
                        if 0 <= oh * SH - PT + kh * DH and oh * SH - PT + kh * DH < H:
                            for kw in range(KW):
                                if 0 <= ow * SW - PL + kw * DW and ow * SW - PL + kw * DW < W:
                                    for ic in range(C):
                                        acc1[0] = acc1[0] + (T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH)
                                                                                * W + ow * SW - PL + kw * DW) * C
                                                                               + ic]) - XZP) \
                                            * T.Cast("int32", a[(((s * R + r) * KH + kh) * KW + kw) * C + ic])
                    t[s * R + r] = acc1[0]
    return window_sums


def conv2d_slots_func(N, H, W, C, OH, OW, OC, KH, KW, SH, SW, DH, DW, PT, PL, PADDED, XZP_IN, XZP, BI, BB, BP,
                      rq: Requant, S, R):
    """CONV_2D (one group) with S LoRA slots of rank <= R (see lower_conv2d_slots).

    Per output pixel: t[s, r] = sum over the in-image taps of a[s, r, tap] * (x - XZP) (int32) for each active
    slot; then, if no slot is active, conv2d_func's pixel (all its fast paths, the base result bit for bit);
    else per output channel the base accumulator over the in-image taps from the plain bias section BP plus
    delta, computed from t as in fully_connected_slots_func."""
    pixel = conv2d_func(N, H, W, C, OH, OW, OC, KH, KW, SH, SW, DH, DW, PT, PL, 1, PADDED, XZP_IN, XZP, BI, BB, rq,
                        pixel_macro=True)
    window_sums = slot_window_sums_func(H, W, C, KH, KW, SH, SW, DH, DW, PT, PL, XZP, S, R)
    ACC = acc_dtype(KH * KW * C)

    @T.prim_func(s_tir=True)
    def conv2d_slots(x_p: T.handle("int8"), w_p: T.handle("int8"), q_p: T.handle("int32"), a_p: T.handle("int8"),
                     b_p: T.handle("int8"), m_p: T.handle("int32"), st_p: T.handle("int32"), t_p: T.handle("int32"),
                     y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N * H * W * C,), "int8", data=x_p)
        w = T.decl_buffer((OC * KH * KW * C,), "int8", data=w_p)
        q = T.decl_buffer((rq.size,), "int32", data=q_p)
        a = T.decl_buffer((S * R * KH * KW * C,), "int8", data=a_p)
        bq = T.decl_buffer((S * OC * R,), "int8", data=b_p)
        m = T.decl_buffer((S * OC * 2,), "int32", data=m_p)
        st = T.decl_buffer((S,), "int32", data=st_p)
        t = T.decl_buffer((S * R,), "int32", data=t_p)
        y = T.decl_buffer((N * OH * OW * OC,), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((_OC_BLOCK,), ACC)
        active = T.sblock_alloc_buffer((1,), "int32")
        acc1 = T.sblock_alloc_buffer((1,), "int32")
        acc2 = T.sblock_alloc_buffer((1,), "int64")
        acc3 = T.sblock_alloc_buffer((1,), "int64")
        for n, oh, ow in T.grid(N, OH, OW):
            window_sums(x, a, st, t, active, acc1, n, oh, ow)
            if active[0] == 0:
                pixel(x, w, q, y, acc, n, oh, ow)
            else:
                for oc in range(OC):
                    acc[0] = 0
                    for kh in range(KH):
                        if 0 <= oh * SH - PT + kh * DH and oh * SH - PT + kh * DH < H:
                            for kw in range(KW):
                                if 0 <= ow * SW - PL + kw * DW and ow * SW - PL + kw * DW < W:
                                    for ic in range(C):
                                        acc[0] = mac(acc[0], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W
                                                                              + ow * SW - PL + kw * DW) * C + ic])
                                                     - XZP, T.Cast("int32", w[((oc * KH + kh) * KW + kw) * C + ic]))
                    slot_branch(acc2, acc3, st, bq, t, m, oc, S, R, OC)
                    y[((n * OH + oh) * OW + ow) * OC + oc] = rq.expr(q, acc[0], BP, oc, extra=acc3[0])
    return conv2d_slots


def depthwise_slots_func(N, H, W, C, OH, OW, KH, KW, SH, SW, DH, DW, PT, PL, DM, PADDED, XZP_IN, XZP, BI, BB, BP,
                         rq: Requant, S, R):
    """DEPTHWISE_CONV_2D with S LoRA slots of rank <= R (see lower_depthwise_slots). PEFT's LoRA on a depthwise
    conv is a full convolution, so the slot factors are those of a CONV_2D ΔW [OC, KH*KW*C].

    Per output pixel: t[s, r] as in conv2d_slots_func (the window over all C input channels); then, if no slot
    is active, depthwise_func's pixel (the base result bit for bit); else per output channel c * DM + m the
    depthwise accumulator over the in-image taps from the plain bias section BP plus delta, computed from t as
    in fully_connected_slots_func."""
    pixel = depthwise_func(N, H, W, C, OH, OW, KH, KW, SH, SW, DH, DW, PT, PL, DM, PADDED, XZP_IN, XZP, BI, BB, rq,
                           pixel_macro=True)
    window_sums = slot_window_sums_func(H, W, C, KH, KW, SH, SW, DH, DW, PT, PL, XZP, S, R)
    OC = C * DM
    ACC = acc_dtype(KH * KW)

    @T.prim_func(s_tir=True)
    def depthwise_slots(x_p: T.handle("int8"), w_p: T.handle("int8"), q_p: T.handle("int32"), a_p: T.handle("int8"),
                        b_p: T.handle("int8"), m_p: T.handle("int32"), st_p: T.handle("int32"),
                        t_p: T.handle("int32"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N * H * W * C,), "int8", data=x_p)
        w = T.decl_buffer((KH * KW * OC,), "int8", data=w_p)
        q = T.decl_buffer((rq.size,), "int32", data=q_p)
        a = T.decl_buffer((S * R * KH * KW * C,), "int8", data=a_p)
        bq = T.decl_buffer((S * OC * R,), "int8", data=b_p)
        m = T.decl_buffer((S * OC * 2,), "int32", data=m_p)
        st = T.decl_buffer((S,), "int32", data=st_p)
        t = T.decl_buffer((S * R,), "int32", data=t_p)
        y = T.decl_buffer((N * OH * OW * OC,), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((1,), ACC)
        active = T.sblock_alloc_buffer((1,), "int32")
        acc1 = T.sblock_alloc_buffer((1,), "int32")
        acc2 = T.sblock_alloc_buffer((1,), "int64")
        acc3 = T.sblock_alloc_buffer((1,), "int64")
        for n, oh, ow in T.grid(N, OH, OW):
            window_sums(x, a, st, t, active, acc1, n, oh, ow)
            if active[0] == 0:
                pixel(x, w, q, y, acc, n, oh, ow)
            else:
                for c, dm in T.grid(C, DM):
                    acc[0] = 0
                    for kh in range(KH):
                        if 0 <= oh * SH - PT + kh * DH and oh * SH - PT + kh * DH < H:
                            for kw in range(KW):
                                if 0 <= ow * SW - PL + kw * DW and ow * SW - PL + kw * DW < W:
                                    acc[0] = mac(acc[0], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W
                                                                          + ow * SW - PL + kw * DW) * C + c]) - XZP,
                                                 T.Cast("int32", w[(kh * KW + kw) * OC + c * DM + dm]))
                    slot_branch(acc2, acc3, st, bq, t, m, c * DM + dm, S, R, OC)
                    y[((n * OH + oh) * OW + ow) * OC + c * DM + dm] = rq.expr(q, acc[0], BP, c * DM + dm,
                                                                              extra=acc3[0])
    return depthwise_slots


def fill_func(SIZE, VALUE):
    """The fused activation range is a single value: every output is that value."""

    @T.prim_func(s_tir=True)
    def fill(y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        y = T.decl_buffer((SIZE,), "int8", data=y_p)
        for i in range(SIZE):
            y[i] = T.int8(VALUE)
    return fill


# --- lowering functions ---------------------------------------------------------------------------------


def _lowered(op: Op, y: Tensor, rq: Requant, func, kind: str) -> LoweredOp:
    if rq.lo == rq.hi:
        # The simplifier would drop every use of the inputs, leaving unused C parameters.
        return LoweredOp(op, fill_func(y.size, rq.lo), [Arg.output(op.outputs[0])], kind="fill")
    args = [Arg.input(op.inputs[0]), Arg.input(op.inputs[1]), Arg.const(rq.table()), Arg.output(op.outputs[0])]
    return LoweredOp(op, func, args, kind=kind)


def _bias_sections(rq: Requant, bias: np.ndarray | None, wsum: np.ndarray | None, xzp: int,
                   padded: bool) -> tuple[int, int, int]:
    """Add the bias sections; returns (XZP inside the interior loop, interior section, border section)."""
    plain = bias if bias is not None else np.zeros(rq.oc, np.int64)
    if wsum is None:  # weights not constant: nothing to fold
        bi = rq.add_section(plain)
        return xzp, bi, bi
    bi = rq.add_section(plain - xzp * wsum)
    bb = rq.add_section(plain) if padded else bi
    return 0, bi, bb


def lower_conv2d(graph: Graph, op: Op) -> LoweredOp:
    x, w, y = _check_tensors(graph, op, 4)
    if len(x.shape) != 4 or len(y.shape) != 4:
        raise _fail(graph, op, f"input shape {list(x.shape)}, output shape {list(y.shape)}", "NHWC (rank-4) tensors")
    n, h, wd, c = x.shape
    oc, kh, kw, ic = w.shape
    if ic < 1 or c % ic or oc % (c // ic) or y.shape[3] != oc:
        raise _fail(graph, op, f"input with {c} channels, filter {list(w.shape)}, output with {y.shape[3]} channels",
                    "filter depth dividing the input depth (groups) and output channels = filters, a multiple "
                    "of the groups")
    groups = c // ic
    oh, ow, pt, pl, padded = _window(graph, op, x, y, kh, kw)
    a = op.attrs
    bias = _bias(graph, op, oc)
    mult, shift = conv_multipliers(x, _weight_scales(graph, op, w, oc), y, oc)
    rq = Requant(mult, shift, y.zero_point, *activation_range(a["activation"], y))
    wsum = w.data.reshape(oc, -1).astype(np.int64).sum(1) if w.is_const else None
    xzp_in, bi, bb = _bias_sections(rq, bias, wsum, x.zero_point, padded)
    func = conv2d_func(n, h, wd, c, oh, ow, oc, kh, kw, a["stride_h"], a["stride_w"], a["dilation_h"],
                       a["dilation_w"], pt, pl, groups, padded, xzp_in, x.zero_point, bi, bb, rq)
    return _lowered(op, y, rq, func, "conv2d")


def lower_depthwise(graph: Graph, op: Op) -> LoweredOp:
    x, w, y = _check_tensors(graph, op, 4)
    if len(x.shape) != 4 or len(y.shape) != 4:
        raise _fail(graph, op, f"input shape {list(x.shape)}, output shape {list(y.shape)}", "NHWC (rank-4) tensors")
    n, h, wd, c = x.shape
    one, kh, kw, oc = w.shape
    dm = op.attrs.get("depth_multiplier", 0)
    if one != 1 or oc != c * dm or y.shape[3] != oc:
        raise _fail(graph, op, f"input with {c} channels, filter {list(w.shape)}, depth_multiplier {dm}, output "
                    f"with {y.shape[3]} channels", "filter (1, KH, KW, C * depth_multiplier) matching the output")
    oh, ow, pt, pl, padded = _window(graph, op, x, y, kh, kw)
    a = op.attrs
    bias = _bias(graph, op, oc)
    mult, shift = conv_multipliers(x, _weight_scales(graph, op, w, oc), y, oc)
    rq = Requant(mult, shift, y.zero_point, *activation_range(a["activation"], y))
    wsum = w.data.reshape(-1, oc).astype(np.int64).sum(0) if w.is_const else None
    xzp_in, bi, bb = _bias_sections(rq, bias, wsum, x.zero_point, padded)
    func = depthwise_func(n, h, wd, c, oh, ow, kh, kw, a["stride_h"], a["stride_w"], a["dilation_h"],
                          a["dilation_w"], pt, pl, dm, padded, xzp_in, x.zero_point, bi, bb, rq)
    return _lowered(op, y, rq, func, "depthwise")


def _fc_quantization(graph: Graph, op: Op, x, w, y, oc: int):
    """FULLY_CONNECTED's Prepare: weight scales, requantization, the weights' zero point as applied,
    and the bias sections (zero-point correction folded into the bias for const weights)."""
    scales = _weight_scales(graph, op, w, oc)
    bias = _bias(graph, op, oc)
    if len(scales) > 1:
        # FullyConnectedPerChannel: per-channel scales, the weights' zero point is not applied.
        mult, shift = conv_multipliers(x, scales, y, oc)
        wzp = 0
    else:
        # GetQuantizedConvolutionMultipler: the scale product is a float32 product.
        real = float(np.float32(x.scale) * np.float32(scales[0])) / float(np.float32(y.scale))
        mult, shift = _multipliers([real] * oc)
        wzp = int(w.quant.zero_point[0])
    rq = Requant(mult, shift, y.zero_point, *activation_range(op.attrs["activation"], y))
    # sum((x - xzp) * (w - wzp)) = sum(x * (w - wzp)) - xzp * sum(w - wzp)
    wsum = (w.data.astype(np.int64) - wzp).sum(1) if w.is_const else None
    xzp_in, bi, _ = _bias_sections(rq, bias, wsum, x.zero_point, False)
    return scales, rq, wzp, xzp_in, bi


def lower_fully_connected(graph: Graph, op: Op) -> LoweredOp:
    x, w, y = _check_tensors(graph, op, 2)
    oc, k = w.shape
    if k < 1 or x.size % k or y.size != x.size // k * oc or (y.shape and y.shape[-1] != oc):
        raise _fail(graph, op, f"input shape {list(x.shape)}, weights {list(w.shape)}, output {list(y.shape)}",
                    "input size a multiple of the weights' columns, output (..., output channels)")
    batches = x.size // k
    _, rq, wzp, xzp_in, bi = _fc_quantization(graph, op, x, w, y, oc)
    func = fully_connected_func(batches, k, oc, xzp_in, wzp, bi, rq)
    return _lowered(op, y, rq, func, "fully_connected")


# --- LoRA slots --------------------------------------------------------------------------------------

SLOT_SCALE_ONE = 1 << 16  # the user's adapter scale 1.0 (Q16)
SLOT_SCALE_MAX = 16 << 16  # |scale| <= 16.0, which bounds the int64 products below
_SLOT_U_LIMIT = 2**42  # |u| * SLOT_SCALE_MAX and |v| * 2^15 stay below 2^62
_SLOT_MAX_SHIFT = 62


def _round_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def slot_tables(graph: Graph, op: Op, w_scales: np.ndarray, factors: list, rank: int, k: int, oc: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int8 A [S, R, K] (per-tensor scale 1/127 after folding each row's max into B), int8 B [S, OC, R]
    (per output channel) and int32 (multiplier, shift) [S, OC, 2] with multiplier / 2^shift = s_A * s_B[c] /
    s_w[c] (the branch's scale in units of the base accumulator). `factors[s]`: float (A [r, K],
    B [OC, r]) with ΔW = B @ A in the IR layout, or None when slot s does not adapt this layer."""
    n = len(factors)
    a_q = np.zeros((n, rank, k), np.int8)
    b_q = np.zeros((n, oc, rank), np.int8)
    mult = np.zeros((n, oc, 2), np.int32)
    mult[:, :, 1] = 1
    sw = np.broadcast_to(np.asarray(w_scales, np.float64), (oc,))
    for s, f in enumerate(factors):
        if f is None:
            continue
        a, b = np.asarray(f[0], np.float64), np.asarray(f[1], np.float64)
        r = a.shape[0]
        rowmax = np.abs(a).max(1)
        rowmax[rowmax == 0] = 1.0
        a, b = a / rowmax[:, None], b * rowmax[None, :]  # fold A's per-row scale into B
        aq = np.clip(_round_away(a * 127.0), -127, 127)
        sb = np.abs(b).max(1) / 127.0
        bq = np.clip(_round_away(b / np.where(sb > 0, sb, 1.0)[:, None]), -127, 127)
        a_q[s, :r], b_q[s, :, :r] = aq, bq
        umax = (np.abs(bq) @ (255.0 * np.abs(aq).sum(1))).max(initial=0.0)
        if umax >= _SLOT_U_LIMIT:
            raise _fail(graph, op, f"adapter slot {s}: the LoRA branch can reach {umax:.3g} (int64 overflow risk)",
                        "|B t| < 2^42")
        for c in range(oc):
            real = (1.0 / 127.0) * sb[c] / sw[c]
            if real == 0:
                continue
            frac, exp = np.frexp(real)
            m = int(np.floor(float(frac) * 2**15 + 0.5))
            if m == 2**15:
                m, exp = 2**14, exp + 1
            shift = 15 - int(exp)
            if shift < 1:
                raise _fail(graph, op, f"adapter slot {s}: the LoRA branch of channel {c} is {real:.3g} times the "
                                       "base weights' quantization step (the adapter dwarfs the base layer)",
                            "adapters smaller than 2^14 base weight steps")
            if shift > _SLOT_MAX_SHIFT:
                continue  # contributes less than 2^-47 accumulator units
            mult[s, c] = (m, shift)
    return a_q, b_q, mult


def lower_fully_connected_slots(graph: Graph, op: Op, factors: list) -> LoweredOp:
    """FULLY_CONNECTED with LoRA adapter slots (`factors`: per slot (A, B) floats or None). Extra kernel
    args: the slot tables (adapters.c, flash), the per-slot active scales (Q16, RAM) and int32 scratch for t.
    With no slot active the result equals lower_fully_connected's bit for bit."""
    x, w, y = _check_tensors(graph, op, 2)
    oc, k = w.shape
    if k < 1 or x.size % k or y.size != x.size // k * oc or (y.shape and y.shape[-1] != oc):
        raise _fail(graph, op, f"input shape {list(x.shape)}, weights {list(w.shape)}, output {list(y.shape)}",
                    "input size a multiple of the weights' columns, output (..., output channels)")
    if k * 255 * 127 > _ACC_LIMIT:
        raise _fail(graph, op, f"{k} input features with adapter slots", "at most 66313 (int32 LoRA sums)")
    base = lower_fully_connected(graph, op)
    if base.kind == "fill":
        return base  # the output is one value whatever the adapters do
    rank = max([f[0].shape[0] for f in factors if f is not None] + [1])
    scales, rq, wzp, xzp_in, bi = _fc_quantization(graph, op, x, w, y, oc)
    a_q, b_q, m = slot_tables(graph, op, np.asarray(scales, np.float64), factors, rank, k, oc)
    func = fully_connected_slots_func(x.size // k, k, oc, xzp_in, wzp, bi, rq, len(factors), rank, x.zero_point)
    args = [Arg.input(op.inputs[0]), Arg.input(op.inputs[1]), Arg.const(rq.table()), Arg.adapter_table(a_q),
            Arg.adapter_table(b_q), Arg.adapter_table(m), Arg.adapter_state(), Arg.scratch(4 * len(factors) * rank),
            Arg.output(op.outputs[0])]
    return LoweredOp(op, func, args, kind="fully_connected_slots")


def lower_conv2d_slots(graph: Graph, op: Op, factors: list) -> LoweredOp:
    """CONV_2D (one group) with LoRA adapter slots (`factors`: per slot float (A [r, KH*KW*IC], B [OC, r]) or
    None). Same slot tables and extra args as lower_fully_connected_slots; with no slot active every pixel runs
    lower_conv2d's code, so the result equals it bit for bit."""
    base = lower_conv2d(graph, op)
    if base.kind == "fill":
        return base  # the output is one value whatever the adapters do
    x, w, y = graph.t(op.inputs[0]), graph.t(op.inputs[1]), graph.t(op.outputs[0])
    n, h, wd, c = x.shape
    oc, kh, kw, ic = w.shape
    if ic != c:
        raise _fail(graph, op, f"a grouped convolution ({c // ic} groups) with adapter slots", "groups = 1")
    k = kh * kw * ic
    if k * 255 * 127 > _ACC_LIMIT:
        raise _fail(graph, op, f"{k} taps per output with adapter slots", "at most 66313 (int32 LoRA sums)")
    oh, ow, pt, pl, padded = _window(graph, op, x, y, kh, kw)
    a = op.attrs
    bias = _bias(graph, op, oc)
    scales = _weight_scales(graph, op, w, oc)
    mult, shift = conv_multipliers(x, scales, y, oc)
    rq = Requant(mult, shift, y.zero_point, *activation_range(a["activation"], y))
    wsum = w.data.reshape(oc, -1).astype(np.int64).sum(1) if w.is_const else None
    xzp_in, bi, bb = _bias_sections(rq, bias, wsum, x.zero_point, padded)
    # The slot path sums (x - x_zp) * w over in-image taps, from the plain bias.
    bp = bb if bb != bi or wsum is None else rq.add_section(bias if bias is not None else np.zeros(oc, np.int64))
    rank = max([f[0].shape[0] for f in factors if f is not None] + [1])
    a_q, b_q, m = slot_tables(graph, op, np.asarray(scales, np.float64), factors, rank, k, oc)
    func = conv2d_slots_func(n, h, wd, c, oh, ow, oc, kh, kw, a["stride_h"], a["stride_w"], a["dilation_h"],
                             a["dilation_w"], pt, pl, padded, xzp_in, x.zero_point, bi, bb, bp, rq, len(factors), rank)
    args = [Arg.input(op.inputs[0]), Arg.input(op.inputs[1]), Arg.const(rq.table()), Arg.adapter_table(a_q),
            Arg.adapter_table(b_q), Arg.adapter_table(m), Arg.adapter_state(), Arg.scratch(4 * len(factors) * rank),
            Arg.output(op.outputs[0])]
    return LoweredOp(op, func, args, kind="conv2d_slots")


def lower_depthwise_slots(graph: Graph, op: Op, factors: list) -> LoweredOp:
    """DEPTHWISE_CONV_2D with LoRA adapter slots (`factors`: per slot float (A [r, KH*KW*C], B [OC, r]) of the
    full-conv ΔW [OC, KH, KW, C] of PEFT's LoRA on a depthwise Conv2d, or None). Same slot tables and extra
    args as lower_conv2d_slots; with no slot active every pixel runs lower_depthwise's code, so the result
    equals it bit for bit."""
    base = lower_depthwise(graph, op)
    if base.kind == "fill":
        return base  # the output is one value whatever the adapters do
    x, w, y = graph.t(op.inputs[0]), graph.t(op.inputs[1]), graph.t(op.outputs[0])
    n, h, wd, c = x.shape
    _, kh, kw, oc = w.shape
    dm = oc // c
    k = kh * kw * c
    if k * 255 * 127 > _ACC_LIMIT:
        raise _fail(graph, op, f"{k} taps (KH * KW * input channels) per output with adapter slots",
                    "at most 66313 (int32 LoRA sums)")
    oh, ow, pt, pl, padded = _window(graph, op, x, y, kh, kw)
    a = op.attrs
    bias = _bias(graph, op, oc)
    scales = _weight_scales(graph, op, w, oc)
    mult, shift = conv_multipliers(x, scales, y, oc)
    rq = Requant(mult, shift, y.zero_point, *activation_range(a["activation"], y))
    wsum = w.data.reshape(-1, oc).astype(np.int64).sum(0) if w.is_const else None
    xzp_in, bi, bb = _bias_sections(rq, bias, wsum, x.zero_point, padded)
    # The slot path sums (x - x_zp) * w over in-image taps, from the plain bias.
    bp = bb if bb != bi or wsum is None else rq.add_section(bias if bias is not None else np.zeros(oc, np.int64))
    rank = max([f[0].shape[0] for f in factors if f is not None] + [1])
    a_q, b_q, m = slot_tables(graph, op, np.asarray(scales, np.float64), factors, rank, k, oc)
    func = depthwise_slots_func(n, h, wd, c, oh, ow, kh, kw, a["stride_h"], a["stride_w"], a["dilation_h"],
                                a["dilation_w"], pt, pl, dm, padded, xzp_in, x.zero_point, bi, bb, bp, rq,
                                len(factors), rank)
    args = [Arg.input(op.inputs[0]), Arg.input(op.inputs[1]), Arg.const(rq.table()), Arg.adapter_table(a_q),
            Arg.adapter_table(b_q), Arg.adapter_table(m), Arg.adapter_state(), Arg.scratch(4 * len(factors) * rank),
            Arg.output(op.outputs[0])]
    return LoweredOp(op, func, args, kind="depthwise_slots")


LOWERINGS = {
    "CONV_2D": lower_conv2d,
    "DEPTHWISE_CONV_2D": lower_depthwise,
    "FULLY_CONNECTED": lower_fully_connected,
}
