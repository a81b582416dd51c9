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
- conv, depthwise and FC (per channel, and per tensor through GetQuantizedConvolutionMultipler):
  real = double(s_x) * double(s_w[c]) / double(s_y), then QuantizeMultiplier.
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
from edgec.lower.fixedpoint import (
    clamp,
    i32,
    i64,
    let,
    rounding_divide_by_pot,
    rounding_divide_by_pot_bounded,
    srdhm,
)
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
        # Micro-kernel family of the kernel variant (None: portable C): saturate with edgec_<family>_sat8
        # (one SSAT); "mve" requantizes blocks of 4 channels with edgec_mve_rq4 (store4).
        self.micro: str | None = None
        # The largest |sum of products| before the bias (set by the lowering): with it, dsp and rv32 prove the
        # operands small enough for a one-word doubling high multiply and a short rounding shift (short_forms).
        self.acc_bound: int | None = None
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

    def short_forms(self) -> bool:
        """Whether every channel's acc + bias, shifted left, stays below 2^30 in magnitude and every right shift
        is at least 1: then SaturatingRoundingDoublingHighMul(a, m) is SMMULR(2a, m) (edgec_dsp_srdhm30), its
        result is below 2^30 and RoundingDivideByPOT has the short exact form (rounding_divide_by_pot_bounded).
        For the dsp (SMMULR) and rv32 (MULH + MUL) micro-kernels: edgec_<mk>_srdhm30."""
        if self.micro not in ("dsp", "rv32") or self.acc_bound is None:
            return False
        first_bias = 1 if self.uniform_shift is not None else 2
        bias_max = max((int(np.abs(sec).max()) for sec in self.sections[first_bias:]), default=0)
        if self.uniform_shift is not None:
            left, right_min = max(self.uniform_shift, 0), max(-self.uniform_shift, 0)
            right_ok = right_min >= 1 or self.uniform_shift >= 0
        elif self.right_only:
            left, right_ok = 0, int(self.sections[1].min()) >= 1
        else:
            return False
        return right_ok and (self.acc_bound + bias_max) << left < 2**30

    def expr(self, q, acc, bias_offset: int, oc, extra=None) -> tirx.PrimExpr:
        """int8 output for the (int32 or uint32) accumulator `acc` of output channel `oc` (`q`: the table).
        `extra`: an int64 term (LoRA slots) added to acc + bias, saturated to int32, before requantization."""
        # bias + acc in uint32: TFLM's int32 sum modulo 2^32 without signed overflow in C.
        total = i32(tirx.Cast("uint32", acc) + tirx.Cast("uint32", q[bias_offset + oc]))
        if extra is not None:
            total = i32(clamp(i64(total) + extra, -(2**31), _ACC_LIMIT))
        m = q[oc]
        if extra is None and self.short_forms():
            def high_mul(a):
                return T.call_extern("int32", f"edgec_{self.micro}_srdhm30", a, m)
            divide = rounding_divide_by_pot_bounded
        else:
            def high_mul(a):
                return srdhm(a, m, b_never_min=self.never_min)
            divide = rounding_divide_by_pot
        if self.uniform_shift is not None:
            s = self.uniform_shift
            left, right = max(s, 0), max(-s, 0)
            shifted = total if left == 0 else i32(i64(total) * (1 << left))
            scaled = high_mul(shifted)
            if right:
                scaled = divide(scaled, right)
        elif self.right_only:
            scaled = divide(high_mul(total), q[self.oc + oc])
        else:
            def general(sh):
                shifted = i32(i64(total) * (tirx.const(1, "int64") << i64(tirx.max(sh, 0))))
                return rounding_divide_by_pot(srdhm(shifted, m, b_never_min=self.never_min), tirx.max(-sh, 0))
            scaled = let(q[self.oc + oc], general, "shift")
        # + y_zp wraps like TFLM's int32 sum (a result near INT32_MAX is possible with a multiplier near 1).
        # Through int64: TVM 0.27's simplifier assumes uint32 sums do not wrap and would drop the clamp.
        biased = i32(i64(scaled) + self.yzp)
        if self.micro:  # SSAT to int8, then the rest of the activation range
            sat = T.call_extern("int32", f"edgec_{self.micro}_sat8", biased)
            return T.Cast("int8", sat if self.lo == -128 and self.hi == 127 else clamp(sat, self.lo, self.hi))
        return T.Cast("int8", clamp(biased, self.lo, self.hi))

    @property
    def vector(self) -> bool:
        """Blocks of 4 channels requantize in one edgec_mve_rq4 call (store4)."""
        return self.micro == "mve"

    def vector_args(self, q, bias_offset: int, oc) -> list:
        """The requantization arguments of the MVE micro-kernels for channels oc.. (`q`: the table): multipliers,
        shifts, shift mode (0: the uniform shift as a constant; 1: right-shift amounts in the table; 2: signed
        shifts, left positive), the uniform shift, biases, output zero point, activation range."""
        mode = 0 if self.uniform_shift is not None else (1 if self.right_only else 2)
        shifts = q[oc] if mode == 0 else q[self.oc + oc]
        return [T.address_of(q[oc]), T.address_of(shifts), mode, self.uniform_shift or 0,
                T.address_of(q[bias_offset + oc]), self.yzp, self.lo, self.hi]

    def store4(self, q, acc, bias_offset: int, oc, y_addr) -> tirx.PrimExpr:
        """edgec_mve_rq4: the int32 accumulators acc[0..3] of channels oc..oc+3 requantized (as expr does) to
        int8 at y_addr."""
        return T.call_extern("void", "edgec_mve_rq4", T.address_of(acc[0]), *self.vector_args(q, bias_offset, oc),
                             y_addr)


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


def _at(d, oc):
    """The LoRA slots' int64 delta of output channel `oc` from buffer `d`, or None (no slots) at parse time."""
    return None if d is None else d[oc]


def conv2d_func(N, H, W, C, OH, OW, OC, KH, KW, SH, SW, DH, DW, PT, PL, G, PADDED, XZP_IN, XZP, BI, BB,
                rq: Requant, pixel_macro: bool = False, mk: str | None = None):
    """CONV_2D. Interior windows: acc over x * w - XZP_IN (0 when folded into bias section BI).
    Border windows (only if PADDED): guarded taps of (x - XZP) * w from bias section BB.
    `pixel_macro`: return the T.macro computing one output pixel (x, w, q, y, acc[OB], n, oh, ow, d) instead;
    `d` is None or an int64 buffer [OC] added to each channel's accumulator before requantization (LoRA slots).
    `mk`: the micro-kernel family of the kernel variant ("dsp", "mve", "rv32"; runtime_c/kernels/edgec_<mk>.h)
    that interior window rows go through; None: plain loops."""
    IC = C // G
    FPG = OC // G
    ACC = acc_dtype(KH * KW * IC)
    # With dilation 1 and one group, a window row's KW * C inputs are contiguous: one inner loop.
    ROW = KW * IC if DW == 1 and G == 1 else 0
    UNROLL_ROW = 0 < ROW <= _UNROLL_TAPS
    OB = _OC_BLOCK
    MICRO = mk is not None and ROW > 0 and ACC == "int32" and XZP_IN == 0 and OB == 4
    # 1x1, stride 1, unpadded: a matrix product in blocks of pixels by channels: Arm MICRO 2 x 2 with an int16
    # scratch argument (conv2d_pointwise: SMLAD needs halfword pairs), RV32 4 x 4 (conv2d_pointwise_rv32). MVE's
    # row products (VMLADAVA over 16 bytes) gain nothing from it.
    POINTWISE = (MICRO and mk in ("dsp", "rv32") and KH == 1 and KW == 1 and SH == 1 and SW == 1 and not PADDED
                 and (H, W) == (OH, OW) and C >= 4)
    # With micro-kernels, windows can be gathered into an int8 scratch (out-of-image taps as the input zero
    # point, which the folded bias cancels) and summed as one row of KH * ROW bytes: every window when rows are
    # short (a first layer's few input channels; 16 or more output channels share the gather), else, with SIMD
    # micro-kernels, the border windows, which would otherwise take the scalar path.
    GATHER_ALL = MICRO and ROW < 16 and KH > 1 and OC >= 16
    GATHER = not pixel_macro and not POINTWISE and (GATHER_ALL or (MICRO and PADDED and mk in ("dsp", "mve")))
    WIN = KH * ROW
    P = N * OH * OW
    C4 = C // 4 * 4

    # One output pixel (all channels); the LoRA slots kernels reuse it.
    @T.macro
    def pixel(x, w, q, y, acc, n, oh, ow, d):
        if not PADDED or (oh * SH >= PT and oh * SH - PT + (KH - 1) * DH < H
                          and ow * SW >= PL and ow * SW - PL + (KW - 1) * DW < W):
            if ROW > 0:
                # OB output channels at a time: each input byte is loaded once for OB MACs.
                for ocb in range(OC // OB):
                    for i in T.unroll(OB):
                        acc[i] = 0
                    for kh in range(KH):
                        if MICRO:
                            T.evaluate(T.call_extern("void", f"edgec_{mk}_dot4", T.address_of(
                                x[((n * H + oh * SH - PT + kh * DH) * W + ow * SW - PL) * C]),
                                T.address_of(w[(ocb * OB * KH + kh) * ROW]), KH * ROW, ROW, T.address_of(acc[0])))
                        elif UNROLL_ROW:
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
                    if rq.vector and ACC == "int32" and d is None:
                        T.evaluate(rq.store4(q, acc, BI, ocb * OB,
                                             T.address_of(y[((n * OH + oh) * OW + ow) * OC + ocb * OB])))
                    else:
                        for i in T.unroll(OB):
                            y[((n * OH + oh) * OW + ow) * OC + ocb * OB + i] = rq.expr(
                                q, acc[i], BI, ocb * OB + i, extra=_at(d, ocb * OB + i))
                for t in range(OC % OB):
                    acc[0] = 0
                    if MICRO:
                        for kh in range(KH):
                            acc[0] = acc[0] + T.call_extern("int32", f"edgec_{mk}_dot1", T.address_of(
                                x[((n * H + oh * SH - PT + kh * DH) * W + ow * SW - PL) * C]),
                                T.address_of(w[((OC - OC % OB + t) * KH + kh) * ROW]), ROW)
                    else:
                        for kh, j in T.grid(KH, ROW):
                            acc[0] = mac(acc[0], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W
                                                                  + ow * SW - PL) * C + j]) - XZP_IN,
                                T.Cast("int32", w[((OC - OC % OB + t) * KH + kh) * ROW + j]))
                    y[((n * OH + oh) * OW + ow) * OC + OC - OC % OB + t] = rq.expr(
                        q, acc[0], BI, OC - OC % OB + t, extra=_at(d, OC - OC % OB + t))
            else:
                for oc in range(OC):
                    acc[0] = 0
                    for kh, kw, ic in T.grid(KH, KW, IC):
                        acc[0] = mac(acc[0], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W + ow * SW - PL
                                                              + kw * DW) * C + oc // FPG * IC + ic]) - XZP_IN,
                            T.Cast("int32", w[((oc * KH + kh) * KW + kw) * IC + ic]))
                    y[((n * OH + oh) * OW + ow) * OC + oc] = rq.expr(q, acc[0], BI, oc, extra=_at(d, oc))
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
                    y[((n * OH + oh) * OW + ow) * OC + ocb * OB + i] = rq.expr(q, acc[i], BB, ocb * OB + i,
                                                                           extra=_at(d, ocb * OB + i))
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
                y[((n * OH + oh) * OW + ow) * OC + oc] = rq.expr(q, acc[0], BB, oc, extra=_at(d, oc))

    if pixel_macro:
        return pixel

    # A window gathered into scratch s (out-of-image taps = the input zero point) and summed as one row.
    @T.macro
    def gathered(x, w, q, y, s, acc, n, oh, ow):
        for kh, kw in T.grid(KH, KW):
            if not PADDED or (0 <= oh * SH - PT + kh * DH and oh * SH - PT + kh * DH < H
                              and 0 <= ow * SW - PL + kw and ow * SW - PL + kw < W):
                for ic in range(C):
                    s[(kh * KW + kw) * C + ic] = x[((n * H + oh * SH - PT + kh * DH) * W + ow * SW - PL + kw) * C + ic]
            else:
                for ic in range(C):
                    s[(kh * KW + kw) * C + ic] = T.int8(XZP)
        for ocb in range(OC // OB):
            for i in T.unroll(OB):
                acc[i] = 0
            T.evaluate(T.call_extern("void", f"edgec_{mk}_dot4", T.address_of(s[0]), T.address_of(w[ocb * OB * WIN]),
                                     WIN, WIN, T.address_of(acc[0])))
            if rq.vector:
                T.evaluate(rq.store4(q, acc, BI, ocb * OB, T.address_of(y[((n * OH + oh) * OW + ow) * OC + ocb * OB])))
            else:
                for i in T.unroll(OB):
                    y[((n * OH + oh) * OW + ow) * OC + ocb * OB + i] = rq.expr(q, acc[i], BI, ocb * OB + i)
        for t in range(OC % OB):
            acc[0] = T.call_extern("int32", f"edgec_{mk}_dot1", T.address_of(s[0]),
                                   T.address_of(w[(OC - OC % OB + t) * WIN]), WIN)
            y[((n * OH + oh) * OW + ow) * OC + OC - OC % OB + t] = rq.expr(q, acc[0], BI, OC - OC % OB + t)

    if GATHER:
        @T.prim_func(s_tir=True)
        def conv2d_gather(x_p: T.handle("int8"), w_p: T.handle("int8"), q_p: T.handle("int32"),
                          y_p: T.handle("int8"), s_p: T.handle("int8")):
            T.func_attr({"tirx.noalias": True, "edgec.scratch_bytes": WIN})
            x = T.decl_buffer((N * H * W * C,), "int8", data=x_p)
            w = T.decl_buffer((OC * WIN,), "int8", data=w_p)
            q = T.decl_buffer((rq.size,), "int32", data=q_p)
            y = T.decl_buffer((N * OH * OW * OC,), "int8", data=y_p)
            s = T.decl_buffer((WIN,), "int8", data=s_p)
            acc = T.sblock_alloc_buffer((OB,), ACC)
            for n, oh, ow in T.grid(N, OH, OW):
                if GATHER_ALL:
                    gathered(x, w, q, y, s, acc, n, oh, ow)
                elif (oh * SH >= PT and oh * SH - PT + (KH - 1) * DH < H
                      and ow * SW >= PL and ow * SW - PL + KW - 1 < W):
                    pixel(x, w, q, y, acc, n, oh, ow, None)
                else:
                    gathered(x, w, q, y, s, acc, n, oh, ow)
        return conv2d_gather

    if POINTWISE and mk == "rv32":
        @T.prim_func(s_tir=True)
        def conv2d_pointwise_rv32(x_p: T.handle("int8"), w_p: T.handle("int8"), q_p: T.handle("int32"),
                                  y_p: T.handle("int8")):
            T.func_attr({"tirx.noalias": True})
            x = T.decl_buffer((N * H * W * C,), "int8", data=x_p)
            w = T.decl_buffer((OC * C,), "int8", data=w_p)
            q = T.decl_buffer((rq.size,), "int32", data=q_p)
            y = T.decl_buffer((N * OH * OW * OC,), "int8", data=y_p)
            acc = T.sblock_alloc_buffer((16,), ACC)
            # Blocks of 4 pixels by 4 channels (edgec_rv32_mm4x4): each loaded byte serves 4 MACs.
            for p4 in range(P // 4):
                for c4 in range(OC // 4):
                    for i in T.unroll(16):
                        acc[i] = 0
                    T.evaluate(T.call_extern("void", "edgec_rv32_mm4x4", T.address_of(x[4 * p4 * C]), C,
                                             T.address_of(w[4 * c4 * C]), C, C, T.address_of(acc[0])))
                    for pi in T.unroll(4):
                        for ci in T.unroll(4):
                            y[(4 * p4 + pi) * OC + 4 * c4 + ci] = rq.expr(q, acc[4 * pi + ci], BI, 4 * c4 + ci)
                for t in range(OC % 4):
                    for pi in T.unroll(4):
                        acc[0] = T.call_extern("int32", "edgec_rv32_dot1", T.address_of(x[(4 * p4 + pi) * C]),
                                               T.address_of(w[(OC - OC % 4 + t) * C]), C)
                        y[(4 * p4 + pi) * OC + OC - OC % 4 + t] = rq.expr(q, acc[0], BI, OC - OC % 4 + t)
            for t in range(P % 4):
                pixel(x, w, q, y, acc, (P - P % 4 + t) // (OH * OW), (P - P % 4 + t) // OW % OH,
                      (P - P % 4 + t) % OW, None)
        return conv2d_pointwise_rv32

    if POINTWISE:
        @T.prim_func(s_tir=True)
        def conv2d_pointwise(x_p: T.handle("int8"), w_p: T.handle("int8"), q_p: T.handle("int32"),
                             y_p: T.handle("int8"), s_p: T.handle("int16")):
            T.func_attr({"tirx.noalias": True, "edgec.scratch_bytes": 4 * C4})
            x = T.decl_buffer((N * H * W * C,), "int8", data=x_p)
            w = T.decl_buffer((OC * C,), "int8", data=w_p)
            q = T.decl_buffer((rq.size,), "int32", data=q_p)
            y = T.decl_buffer((N * OH * OW * OC,), "int8", data=y_p)
            acc = T.sblock_alloc_buffer((OB,), ACC)
            # A 1x1 convolution is a matrix product: pairs of pixels by pairs of channels (edgec_dsp_mm2x2),
            # each pixel pair sign-extended to int16 once, into scratch s, in the lane order of SXTB16.
            s = T.decl_buffer((2 * C4,), "int16", data=s_p)
            for p2 in range(P // 2):
                for pi, g, k in T.grid(2, C4 // 4, 4):
                    s[pi * C4 + g * 4 + k] = T.Cast("int16", x[(2 * p2 + pi) * C + g * 4 + (k % 2) * 2 + k // 2])
                for c2 in range(OC // 2):
                    for i in T.unroll(4):
                        acc[i] = 0
                    T.evaluate(T.call_extern("void", "edgec_dsp_mm2x2", T.address_of(s[0]), T.address_of(s[C4]),
                                             T.address_of(x[2 * p2 * C]), T.address_of(x[(2 * p2 + 1) * C]),
                                             T.address_of(w[2 * c2 * C]), T.address_of(w[(2 * c2 + 1) * C]), C,
                                             T.address_of(acc[0])))
                    for pi in T.unroll(2):
                        for ci in T.unroll(2):
                            y[(2 * p2 + pi) * OC + 2 * c2 + ci] = rq.expr(q, acc[2 * pi + ci], BI, 2 * c2 + ci)
                for t in range(OC % 2):
                    for pi in T.unroll(2):
                        acc[0] = T.call_extern("int32", "edgec_dsp_dot1", T.address_of(x[(2 * p2 + pi) * C]),
                                               T.address_of(w[(OC - 1) * C]), C)
                        y[(2 * p2 + pi) * OC + OC - 1] = rq.expr(q, acc[0], BI, OC - 1)
            for t in range(P % 2):
                pixel(x, w, q, y, acc, N - 1, OH - 1, OW - 1, None)
        return conv2d_pointwise

    @T.prim_func(s_tir=True)
    def conv2d(x_p: T.handle("int8"), w_p: T.handle("int8"), q_p: T.handle("int32"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N * H * W * C,), "int8", data=x_p)
        w = T.decl_buffer((OC * KH * KW * IC,), "int8", data=w_p)
        q = T.decl_buffer((rq.size,), "int32", data=q_p)
        y = T.decl_buffer((N * OH * OW * OC,), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((OB,), ACC)
        for n, oh, ow in T.grid(N, OH, OW):
            pixel(x, w, q, y, acc, n, oh, ow, None)
    return conv2d


def depthwise_func(N, H, W, C, OH, OW, KH, KW, SH, SW, DH, DW, PT, PL, DM, PADDED, XZP_IN, XZP, BI, BB,
                   rq: Requant, pixel_macro: bool = False, mk: str | None = None):
    """DEPTHWISE_CONV_2D, same interior / border split as conv2d_func.
    `pixel_macro`: return the T.macro computing one output pixel (x, w, q, y, acc[1], n, oh, ow, d) instead
    (`d` as in conv2d_func). `mk` (micro-kernel family, as in conv2d_func): blocks of 4 channels (depth
    multiplier 1) through edgec_<mk>_dw4, border windows over their in-image taps only."""
    OC = C * DM
    UNROLL = KH * KW <= _UNROLL_TAPS
    ACC = acc_dtype(KH * KW)
    MICRO = mk is not None and DM == 1 and DH == 1 and DW == 1 and ACC == "int32" and C >= 4
    C0 = C // 4 * 4 if MICRO else 0  # channels below C0 go through the micro-kernel

    @T.macro
    def micro_block(x, w, q, y, acc, n, oh, ow, d, cb, kh0, kh1, kw0, kw1, zp, section):
        for i in T.unroll(4):
            acc[i] = 0
        T.evaluate(T.call_extern("void", f"edgec_{mk}_dw4", T.address_of(
            x[((n * H + oh * SH - PT + kh0) * W + ow * SW - PL + kw0) * C + cb * 4]), W * C, C,
            T.address_of(w[(kh0 * KW + kw0) * OC + cb * 4]), KW * OC, OC, kh1 - kh0, kw1 - kw0, zp,
            T.address_of(acc[0])))
        for i in T.unroll(4):
            y[((n * OH + oh) * OW + ow) * OC + cb * 4 + i] = rq.expr(q, acc[i], section, cb * 4 + i,
                                                                     extra=_at(d, cb * 4 + i))

    @T.macro
    def micro_blocks(x, w, q, y, acc, n, oh, ow, d, kh0, kh1, kw0, kw1, zp, section):
        if rq.vector and d is None:  # MVE: all blocks and their requantization in one call
            T.evaluate(T.call_extern("void", "edgec_mve_dw_rq", T.address_of(
                x[((n * H + oh * SH - PT + kh0) * W + ow * SW - PL + kw0) * C]), W * C, C,
                T.address_of(w[(kh0 * KW + kw0) * OC]), KW * OC, OC, kh1 - kh0, kw1 - kw0, zp, C0 // 4,
                *rq.vector_args(q, section, 0), T.address_of(y[((n * OH + oh) * OW + ow) * OC])))
        else:
            for cb in range(C0 // 4):
                micro_block(x, w, q, y, acc, n, oh, ow, d, cb, kh0, kh1, kw0, kw1, zp, section)

    # One output pixel (all channels); the LoRA slots kernel reuses it.
    @T.macro
    def pixel(x, w, q, y, acc, n, oh, ow, d):
        if not PADDED or (oh * SH >= PT and oh * SH - PT + (KH - 1) * DH < H
                          and ow * SW >= PL and ow * SW - PL + (KW - 1) * DW < W):
            if MICRO:
                micro_blocks(x, w, q, y, acc, n, oh, ow, d, 0, KH, 0, KW, XZP_IN, BI)
            if C0 < C:  # channels outside the micro-kernel blocks
                for c, m in T.grid(C - C0, DM):
                    acc[0] = 0
                    if UNROLL:
                        for kh in T.unroll(KH):
                            for kw in T.unroll(KW):
                                acc[0] = mac(acc[0], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W
                                                                      + ow * SW - PL + kw * DW) * C + C0 + c]) - XZP_IN,
                                    T.Cast("int32", w[(kh * KW + kw) * OC + (C0 + c) * DM + m]))
                    else:
                        for kh, kw in T.grid(KH, KW):
                            acc[0] = mac(acc[0], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W
                                                                  + ow * SW - PL + kw * DW) * C + C0 + c]) - XZP_IN,
                                T.Cast("int32", w[(kh * KW + kw) * OC + (C0 + c) * DM + m]))
                    y[((n * OH + oh) * OW + ow) * OC + (C0 + c) * DM + m] = rq.expr(q, acc[0], BI, (C0 + c) * DM + m,
                                                                              extra=_at(d, (C0 + c) * DM + m))
        else:
            if MICRO:
                micro_blocks(x, w, q, y, acc, n, oh, ow, d, T.max(PT - oh * SH, 0), T.min(H + PT - oh * SH, KH),
                           T.max(PL - ow * SW, 0), T.min(W + PL - ow * SW, KW), XZP, BB)
            if C0 < C:  # channels outside the micro-kernel blocks
                for c, m in T.grid(C - C0, DM):
                    acc[0] = 0
                    for kh in range(KH):
                        if 0 <= oh * SH - PT + kh * DH and oh * SH - PT + kh * DH < H:
                            for kw in range(KW):
                                if 0 <= ow * SW - PL + kw * DW and ow * SW - PL + kw * DW < W:
                                    acc[0] = mac(acc[0], T.Cast("int32", x[((n * H + oh * SH - PT + kh * DH) * W
                                                                          + ow * SW - PL + kw * DW) * C + C0 + c]) - XZP,
                                        T.Cast("int32", w[(kh * KW + kw) * OC + (C0 + c) * DM + m]))
                    y[((n * OH + oh) * OW + ow) * OC + (C0 + c) * DM + m] = rq.expr(q, acc[0], BB, (C0 + c) * DM + m,
                                                                          extra=_at(d, (C0 + c) * DM + m))

    if pixel_macro:
        return pixel

    @T.prim_func(s_tir=True)
    def depthwise(x_p: T.handle("int8"), w_p: T.handle("int8"), q_p: T.handle("int32"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N * H * W * C,), "int8", data=x_p)
        w = T.decl_buffer((KH * KW * OC,), "int8", data=w_p)
        q = T.decl_buffer((rq.size,), "int32", data=q_p)
        y = T.decl_buffer((N * OH * OW * OC,), "int8", data=y_p)
        if rq.vector and MICRO and C0 == C:  # no accumulator array: edgec_mve_dw_rq keeps the sums
            for n, oh, ow in T.grid(N, OH, OW):
                pixel(x, w, q, y, None, n, oh, ow, None)
        else:
            acc = T.sblock_alloc_buffer((4 if MICRO else 1,), ACC)
            for n, oh, ow in T.grid(N, OH, OW):
                pixel(x, w, q, y, acc, n, oh, ow, None)
    return depthwise


def fully_connected_func(B, K, OC, XZP_IN, WZP, BI, rq: Requant, row_macro: bool = False, mk: str | None = None):
    """FULLY_CONNECTED: acc = sum((x - XZP_IN) * (w - WZP)) from bias section BI.
    `row_macro`: return the T.macro computing one batch row (x, w, q, y, acc[OB], b, d) instead (`d` as in
    conv2d_func). `mk`: the sums go through that micro-kernel family (as in conv2d_func)."""
    OB = _OC_BLOCK
    ACC = acc_dtype(K)
    MICRO = mk is not None and ACC == "int32" and XZP_IN == 0 and WZP == 0 and OB == 4

    @T.macro
    def row(x, w, q, y, acc, b, d):
        for ocb in range(OC // OB):
            for i in T.unroll(OB):
                acc[i] = 0
            if MICRO:
                T.evaluate(T.call_extern("void", f"edgec_{mk}_dot4", T.address_of(x[b * K]),
                                         T.address_of(w[ocb * OB * K]), K, K, T.address_of(acc[0])))
            else:
                for k in range(K):
                    for i in T.unroll(OB):
                        acc[i] = mac(acc[i], T.Cast("int32", x[b * K + k]) - XZP_IN,
                            (T.Cast("int32", w[(ocb * OB + i) * K + k]) - WZP))
            if rq.vector and ACC == "int32" and d is None:
                T.evaluate(rq.store4(q, acc, BI, ocb * OB, T.address_of(y[b * OC + ocb * OB])))
            else:
                for i in T.unroll(OB):
                    y[b * OC + ocb * OB + i] = rq.expr(q, acc[i], BI, ocb * OB + i, extra=_at(d, ocb * OB + i))
        for t in range(OC % OB):
            acc[0] = 0
            if MICRO:
                acc[0] = T.call_extern("int32", f"edgec_{mk}_dot1", T.address_of(x[b * K]),
                                       T.address_of(w[(OC - OC % OB + t) * K]), K)
            else:
                for k in range(K):
                    acc[0] = mac(acc[0], T.Cast("int32", x[b * K + k]) - XZP_IN,
                        (T.Cast("int32", w[(OC - OC % OB + t) * K + k]) - WZP))
            y[b * OC + OC - OC % OB + t] = rq.expr(q, acc[0], BI, OC - OC % OB + t, extra=_at(d, OC - OC % OB + t))

    if row_macro:
        return row

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
            row(x, w, q, y, acc, b, None)
    return fully_connected


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


def _conv_prepare(graph: Graph, op: Op, x: Tensor, y: Tensor, kh: int, kw: int, oc: int, w: Tensor,
                  wsum: np.ndarray | None) -> tuple[Requant, np.ndarray, tuple]:
    """What CONV_2D and DEPTHWISE_CONV_2D share: the window, the weight scales, the requantization and the
    bias sections. Returns (rq, scales, (oh, ow, pt, pl, padded, xzp_in, bi, bb))."""
    oh, ow, pt, pl, padded = _window(graph, op, x, y, kh, kw)
    scales = _weight_scales(graph, op, w, oc)
    mult, shift = conv_multipliers(x, scales, y, oc)
    rq = Requant(mult, shift, y.zero_point, *activation_range(op.attrs["activation"], y))
    xzp_in, bi, bb = _bias_sections(rq, _bias(graph, op, oc), wsum, x.zero_point, padded)
    return rq, scales, (oh, ow, pt, pl, padded, xzp_in, bi, bb)


def _nhwc_tensors(graph: Graph, op: Op) -> tuple[Tensor, Tensor, Tensor]:
    x, w, y = _check_tensors(graph, op, 4)
    if len(x.shape) != 4 or len(y.shape) != 4:
        raise _fail(graph, op, f"input shape {list(x.shape)}, output shape {list(y.shape)}", "NHWC (rank-4) tensors")
    return x, w, y


def conv2d_setup(graph: Graph, op: Op) -> tuple[Requant, np.ndarray, tuple]:
    """CONV_2D's Prepare: the requantization, the weight scales and conv2d_func's arguments (without rq)."""
    x, w, y = _nhwc_tensors(graph, op)
    n, h, wd, c = x.shape
    oc, kh, kw, ic = w.shape
    if ic < 1 or c % ic or oc % (c // ic) or y.shape[3] != oc:
        raise _fail(graph, op, f"input with {c} channels, filter {list(w.shape)}, output with {y.shape[3]} channels",
                    "filter depth dividing the input depth (groups) and output channels = filters, a multiple "
                    "of the groups")
    wsum = w.data.reshape(oc, -1).astype(np.int64).sum(1) if w.is_const else None
    rq, scales, (oh, ow, pt, pl, padded, xzp_in, bi, bb) = _conv_prepare(graph, op, x, y, kh, kw, oc, w, wsum)
    rq.acc_bound = kh * kw * ic * 255 * 128  # |x - x_zp| <= 255, |w| <= 128
    a = op.attrs
    return rq, scales, (n, h, wd, c, oh, ow, oc, kh, kw, a["stride_h"], a["stride_w"], a["dilation_h"],
                        a["dilation_w"], pt, pl, c // ic, padded, xzp_in, x.zero_point, bi, bb)


def lower_conv2d(graph: Graph, op: Op, mk: str | None = None) -> LoweredOp:
    rq, _, params = conv2d_setup(graph, op)
    rq.micro = mk
    func = conv2d_func(*params, rq, mk=mk)
    lowered = _lowered(op, graph.t(op.outputs[0]), rq, func, "conv2d")
    if func.attrs and "edgec.scratch_bytes" in func.attrs:  # conv2d_pointwise, conv2d_im2col
        lowered.args.append(Arg.scratch(int(func.attrs["edgec.scratch_bytes"])))
    return lowered


def depthwise_setup(graph: Graph, op: Op) -> tuple[Requant, np.ndarray, tuple]:
    """DEPTHWISE_CONV_2D's Prepare: the requantization, the weight scales and depthwise_func's arguments."""
    x, w, y = _nhwc_tensors(graph, op)
    n, h, wd, c = x.shape
    one, kh, kw, oc = w.shape
    dm = op.attrs.get("depth_multiplier", 0)
    if one != 1 or oc != c * dm or y.shape[3] != oc:
        raise _fail(graph, op, f"input with {c} channels, filter {list(w.shape)}, depth_multiplier {dm}, output "
                    f"with {y.shape[3]} channels", "filter (1, KH, KW, C * depth_multiplier) matching the output")
    wsum = w.data.reshape(-1, oc).astype(np.int64).sum(0) if w.is_const else None
    rq, scales, (oh, ow, pt, pl, padded, xzp_in, bi, bb) = _conv_prepare(graph, op, x, y, kh, kw, oc, w, wsum)
    rq.acc_bound = kh * kw * 255 * 128
    a = op.attrs
    return rq, scales, (n, h, wd, c, oh, ow, kh, kw, a["stride_h"], a["stride_w"], a["dilation_h"],
                        a["dilation_w"], pt, pl, dm, padded, xzp_in, x.zero_point, bi, bb)


def lower_depthwise(graph: Graph, op: Op, mk: str | None = None) -> LoweredOp:
    rq, _, params = depthwise_setup(graph, op)
    rq.micro = mk
    return _lowered(op, graph.t(op.outputs[0]), rq, depthwise_func(*params, rq, mk=mk), "depthwise")


def fc_setup(graph: Graph, op: Op) -> tuple[Requant, np.ndarray, tuple]:
    """FULLY_CONNECTED's Prepare: the requantization, the weight scales and fully_connected_func's arguments
    (without rq): batches, K, OC, the input zero point left in the loop (0 when folded into the bias), the
    weights' zero point as applied, the bias section."""
    x, w, y = _check_tensors(graph, op, 2)
    oc, k = w.shape
    if k < 1 or x.size % k or y.size != x.size // k * oc or (y.shape and y.shape[-1] != oc):
        raise _fail(graph, op, f"input shape {list(x.shape)}, weights {list(w.shape)}, output {list(y.shape)}",
                    "input size a multiple of the weights' columns, output (..., output channels)")
    scales = _weight_scales(graph, op, w, oc)
    if len(scales) > 1:
        # FullyConnectedPerChannel: per-channel scales, the weights' zero point is not applied.
        mult, shift = conv_multipliers(x, scales, y, oc)
        wzp = 0
    else:
        # GetQuantizedConvolutionMultipler: double(s_x) * double(s_w) / double(s_y), as TFLite Micro computes it
        # (older TFLite rounded the product to float32 first; the tflite-micro oracle does not).
        real = float(np.float32(x.scale)) * float(np.float32(scales[0])) / float(np.float32(y.scale))
        mult, shift = _multipliers([real] * oc)
        wzp = int(w.quant.zero_point[0])
    rq = Requant(mult, shift, y.zero_point, *activation_range(op.attrs["activation"], y))
    rq.acc_bound = k * 255 * 255  # |x - x_zp|, |w - w_zp| <= 255
    # sum((x - xzp) * (w - wzp)) = sum(x * (w - wzp)) - xzp * sum(w - wzp)
    wsum = (w.data.astype(np.int64) - wzp).sum(1) if w.is_const else None
    xzp_in, bi, _ = _bias_sections(rq, _bias(graph, op, oc), wsum, x.zero_point, False)
    return rq, scales, (x.size // k, k, oc, xzp_in, wzp, bi)


def lower_fully_connected(graph: Graph, op: Op, mk: str | None = None) -> LoweredOp:
    rq, _, params = fc_setup(graph, op)
    rq.micro = mk
    return _lowered(op, graph.t(op.outputs[0]), rq, fully_connected_func(*params, rq, mk=mk), "fully_connected")


# Each takes `mk`, the micro-kernel family of a kernel variant other than portable ("dsp", "mve", "rv32").
LOWERINGS = {
    "CONV_2D": lower_conv2d,
    "DEPTHWISE_CONV_2D": lower_depthwise,
    "FULLY_CONNECTED": lower_fully_connected,
}
