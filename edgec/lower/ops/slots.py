"""LoRA adapter slots: FULLY_CONNECTED, CONV_2D (one group) and DEPTHWISE_CONV_2D with S switchable adapters.

Math (docs/adapters.md, "Scheme"): per adapted layer and slot s, ΔW = B A (rank R) with A int8 per tensor
(scale 1/127 after folding each row's max into B) and B int8 per output channel. For every active slot
(scale st[2s] != 0, Q16):
  t[s, r] = sum over the layer's window (FC: the input row) of A[s, r, tap] * (x - x_zp)      int32
  u = sum_r B[s, c, r] * t[s, r]                                                                  int64
  v = (u * st[2s] + 2^15) >> 16                           the user's scale, rounded
  d[c] += (v * M[s, c] + 2^(sh - 1)) >> sh                M / 2^sh = s_A * s_B[c] / s_w[c]
and d[c] is added to the base accumulator + bias (int64, saturated to int32) before the base's own
requantization. The base part is the plain kernel's code (conv2d_func / depthwise_func / fully_connected_func
macros with all their fast paths), so with no slot active a pixel (FC: a batch row) runs exactly the plain
kernel: the result is bit-exact with the build without adapters, at the cost of one test per slot.

Storage: every slot's tables live in its own bank (`AdapterBanks`): one byte image per slot with, per adapted
layer, A [R, K] int8, B [OC, R] int8, then (M, sh) [OC, 2] int32 (4-byte aligned), at the same offsets in
every bank. The kernels read them through the slot's bank offset st[2s + 1] (bytes from the start of the
bank region, set by edgec_init), so a bank can be replaced (OTA) without touching the others.
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from edgec.ir.graph import Graph, Op
from edgec.lower.kernel import Arg, LoweredOp
from edgec.lower.ops.conv import (
    _ACC_LIMIT,
    _OC_BLOCK,
    _fail,
    acc_dtype,
    conv2d_func,
    conv2d_setup,
    depthwise_func,
    depthwise_setup,
    fc_setup,
    fully_connected_func,
    lower_conv2d,
    lower_depthwise,
    lower_fully_connected,
)
from edgec.quantize.adapter_tables import slot_tables

_BANK_LIMIT = 2**31 - 1  # TIR extent of the bank region (the kernels index it with int32)


class AdapterBanks:
    """The byte image of every slot's bank and the bank layout, built layer by layer during lowering."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.images = [bytearray() for _ in range(slots)]
        self.layout: list[dict] = []  # per adapted layer: where its tables are, and what the patch needs

    @property
    def nbytes(self) -> int:
        """Bytes used in each bank (all banks have the same layout)."""
        return len(self.images[0])

    def add(self, op: Op, weight: str, w_scales: np.ndarray, tables: tuple[np.ndarray, np.ndarray, np.ndarray]
            ) -> tuple[int, int, int]:
        """Append one layer's tables (A [S, R, K], B [S, OC, R], rescale [S, OC, 2]); returns the byte offsets
        of A and B and the int32 index of the rescale table inside every bank."""
        a_q, b_q, mult = tables
        a_off = self.nbytes
        b_off = a_off + a_q[0].nbytes
        m_off = -(-(b_off + b_q[0].nbytes) // 4) * 4
        for s, image in enumerate(self.images):
            image += a_q[s].tobytes() + b_q[s].tobytes()
            image += bytes(m_off - len(image))
            image += mult[s].astype("<i4").tobytes()
        self.layout.append({"op_index": op.index, "op_type": op.type, "weight": weight, "k": a_q.shape[2], "oc": b_q.shape[1],
                            "rank": a_q.shape[1], "a_offset": a_off, "b_offset": b_off, "m_offset": m_off,
                            "weight_scales": [float(v) for v in np.broadcast_to(w_scales, (b_q.shape[1],))]})
        return a_off, b_off, m_off // 4


# --- templates ----------------------------------------------------------------------------------------


def slot_deltas_func(S, R, OC, B_OFF, M_OFF):
    """The T.macro (st, bq, m, t, d, acc2) that turns the active slots' sums t [S, R] into the per-channel
    deltas d [OC] (int64, base accumulator units); B at byte B_OFF and (M, sh) at int32 index M_OFF of each
    slot's bank."""

    @T.macro
    def slot_deltas(st, bq, m, t, d, acc2):
        for oc in range(OC):
            d[oc] = T.int64(0)
        for s in range(S):
            if st[2 * s] != 0:
                for oc in range(OC):
                    acc2[0] = T.int64(0)
                    for r in range(R):
                        acc2[0] = acc2[0] + T.Cast("int64", bq[st[2 * s + 1] + B_OFF + oc * R + r]) \
                            * T.Cast("int64", t[s * R + r])
                    d[oc] = d[oc] + T.shift_right(
                        T.shift_right(acc2[0] * T.Cast("int64", st[2 * s]) + T.int64(1 << 15), T.int64(16))
                        * T.Cast("int64", m[T.shift_right(st[2 * s + 1], 2) + M_OFF + oc * 2])
                        + T.shift_left(T.int64(1),
                                       T.Cast("int64", m[T.shift_right(st[2 * s + 1], 2) + M_OFF + oc * 2 + 1] - 1)),
                        T.Cast("int64", m[T.shift_right(st[2 * s + 1], 2) + M_OFF + oc * 2 + 1]))
    return slot_deltas


def window_sums_func(H, W, C, KH, KW, SH, SW, DH, DW, PT, PL, XZP, S, R, A_OFF):
    """The T.macro (x, a, st, t, active[1], acc1[1], n, oh, ow) of the conv slot kernels' sums: for each active
    slot s, t[s, r] = sum over the output pixel's in-image taps (all C input channels) of A[s, r, tap] *
    (x - XZP) (int32, A at byte A_OFF of the slot's bank); active[0] = 1 if any slot is active, else 0."""

    @T.macro
    def window_sums(x, a, st, t, active, acc1, n, oh, ow):
        active[0] = 0
        for s in range(S):
            if st[2 * s] != 0:
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
                                            * T.Cast("int32", a[st[2 * s + 1] + A_OFF
                                                                + ((r * KH + kh) * KW + kw) * C + ic])
                    t[s * R + r] = acc1[0]
    return window_sums


def _slots_kernel(N, OH, OW, IN_SIZE, W_SIZE, OUT_SIZE, rq, S, R, OC, ACC, OB, sums, base, deltas):
    """The slot kernel around a per-pixel `sums` macro and the plain kernel's per-pixel `base` macro."""

    @T.prim_func(s_tir=True)
    def slots_kernel(x_p: T.handle("int8"), w_p: T.handle("int8"), q_p: T.handle("int32"), a_p: T.handle("int8"),
                     m_p: T.handle("int32"), st_p: T.handle("int32"), d_p: T.handle("int64"),
                     t_p: T.handle("int32"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((IN_SIZE,), "int8", data=x_p)
        w = T.decl_buffer((W_SIZE,), "int8", data=w_p)
        q = T.decl_buffer((rq.size,), "int32", data=q_p)
        a = T.decl_buffer((_BANK_LIMIT,), "int8", data=a_p)
        m = T.decl_buffer((_BANK_LIMIT // 4,), "int32", data=m_p)
        st = T.decl_buffer((2 * S,), "int32", data=st_p)
        d = T.decl_buffer((OC,), "int64", data=d_p)
        t = T.decl_buffer((S * R,), "int32", data=t_p)
        y = T.decl_buffer((OUT_SIZE,), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((OB,), ACC)
        active = T.sblock_alloc_buffer((1,), "int32")
        acc1 = T.sblock_alloc_buffer((1,), "int32")
        acc2 = T.sblock_alloc_buffer((1,), "int64")
        for n, oh, ow in T.grid(N, OH, OW):
            sums(x, a, st, t, active, acc1, n, oh, ow)
            if active[0] == 0:
                base(x, w, q, y, acc, n, oh, ow, None)
            else:
                deltas(st, a, m, t, d, acc2)
                base(x, w, q, y, acc, n, oh, ow, d)
    return slots_kernel


# --- lowering functions ---------------------------------------------------------------------------------


def _slot_args(op: Op, rq, oc: int, slots: int, rank: int) -> list[Arg]:
    return [Arg.input(op.inputs[0]), Arg.input(op.inputs[1]), Arg.const(rq.table()), Arg.adapter_banks("int8"),
            Arg.adapter_banks("int32"), Arg.adapter_state(), Arg.scratch(8 * oc), Arg.scratch(4 * slots * rank),
            Arg.output(op.outputs[0])]


def _add_tables(graph: Graph, op: Op, banks: AdapterBanks, scales, factors: list, rank: int, k: int, oc: int
                ) -> tuple[int, int, int]:
    tables = slot_tables(scales, factors, rank, k, oc, f"{graph.source}: {op.describe()}")
    return banks.add(op, graph.t(op.inputs[1]).name, scales, tables)


def _rank(factors: list) -> int:
    return max([f[0].shape[0] for f in factors if f is not None] + [1])


def _check_taps(graph: Graph, op: Op, k: int) -> None:
    if k * 255 * 127 > _ACC_LIMIT:
        raise _fail(graph, op, f"{k} taps per output with adapter slots", "at most 66313 (int32 LoRA sums)")


def lower_fully_connected_slots(graph: Graph, op: Op, factors: list, banks: AdapterBanks,
                                mk: str | None = None) -> LoweredOp:
    """FULLY_CONNECTED with LoRA adapter slots (`factors`: per slot float (A [r, K], B [OC, r]) or None); the
    slot tables go to `banks`."""
    base = lower_fully_connected(graph, op, mk=mk)
    if base.kind == "fill":
        return base  # the output is one value whatever the adapters do
    rq, scales, params = fc_setup(graph, op)
    rq.micro = mk
    batches, k, oc = params[:3]
    _check_taps(graph, op, k)
    rank, s = _rank(factors), len(factors)
    a_off, b_off, m_off = _add_tables(graph, op, banks, scales, factors, rank, k, oc)
    row = fully_connected_func(*params, rq, row_macro=True, mk=mk)

    @T.macro
    def base_row(x, w, q, y, acc, b, unused_h, unused_w, d):
        row(x, w, q, y, acc, b, d)

    func = _slots_kernel(batches, 1, 1, batches * k, oc * k, batches * oc, rq, s, rank, oc, acc_dtype(k),
                         _OC_BLOCK,
                         # an FC row is the window of a 1x1 "convolution" over a 1x1 image with K channels
                         window_sums_func(1, 1, k, 1, 1, 1, 1, 1, 1, 0, 0, graph.t(op.inputs[0]).zero_point, s,
                                          rank, a_off), base_row,
                         slot_deltas_func(s, rank, oc, b_off, m_off))
    return LoweredOp(op, func, _slot_args(op, rq, oc, s, rank), kind="fully_connected_slots", idle=base)


def lower_conv2d_slots(graph: Graph, op: Op, factors: list, banks: AdapterBanks,
                       mk: str | None = None) -> LoweredOp:
    """CONV_2D (one group) with LoRA adapter slots (`factors`: per slot float (A [r, KH*KW*IC], B [OC, r]) or
    None); the slot tables go to `banks`."""
    base = lower_conv2d(graph, op, mk=mk)
    if base.kind == "fill":
        return base
    rq, scales, params = conv2d_setup(graph, op)
    rq.micro = mk
    n, h, wd, c, oh, ow, oc, kh, kw, sh, sw, dh, dw, pt, pl, groups = params[:16]
    if groups != 1:
        raise _fail(graph, op, f"a grouped convolution ({groups} groups) with adapter slots", "groups = 1")
    _check_taps(graph, op, kh * kw * c)
    rank, s = _rank(factors), len(factors)
    a_off, b_off, m_off = _add_tables(graph, op, banks, scales, factors, rank, kh * kw * c, oc)
    func = _slots_kernel(n, oh, ow, n * h * wd * c, oc * kh * kw * c, n * oh * ow * oc, rq, s, rank, oc,
                         acc_dtype(kh * kw * c), _OC_BLOCK,
                         window_sums_func(h, wd, c, kh, kw, sh, sw, dh, dw, pt, pl, graph.t(op.inputs[0]).zero_point,
                                          s, rank, a_off),
                         conv2d_func(*params, rq, pixel_macro=True, mk=mk),
                         slot_deltas_func(s, rank, oc, b_off, m_off))
    return LoweredOp(op, func, _slot_args(op, rq, oc, s, rank), kind="conv2d_slots", idle=base)


def lower_depthwise_slots(graph: Graph, op: Op, factors: list, banks: AdapterBanks,
                          mk: str | None = None) -> LoweredOp:
    """DEPTHWISE_CONV_2D with LoRA adapter slots (`factors`: per slot float (A [r, KH*KW*C], B [OC, r]) of the
    full-conv ΔW [OC, KH, KW, C] of PEFT's LoRA on a depthwise Conv2d, or None); the tables go to `banks`."""
    base = lower_depthwise(graph, op, mk=mk)
    if base.kind == "fill":
        return base
    rq, scales, params = depthwise_setup(graph, op)
    rq.micro = mk
    n, h, wd, c, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, dm = params[:15]
    oc = c * dm
    _check_taps(graph, op, kh * kw * c)
    rank, s = _rank(factors), len(factors)
    a_off, b_off, m_off = _add_tables(graph, op, banks, scales, factors, rank, kh * kw * c, oc)
    func = _slots_kernel(n, oh, ow, n * h * wd * c, kh * kw * oc, n * oh * ow * oc, rq, s, rank, oc,
                         acc_dtype(kh * kw), 4 if mk else 1,
                         window_sums_func(h, wd, c, kh, kw, sh, sw, dh, dw, pt, pl, graph.t(op.inputs[0]).zero_point,
                                          s, rank, a_off),
                         depthwise_func(*params, rq, pixel_macro=True, mk=mk),
                         slot_deltas_func(s, rank, oc, b_off, m_off))
    return LoweredOp(op, func, _slot_args(op, rq, oc, s, rank), kind="depthwise_slots", idle=base)


SLOT_LOWERINGS = {"FULLY_CONNECTED": lower_fully_connected_slots, "CONV_2D": lower_conv2d_slots,
                  "DEPTHWISE_CONV_2D": lower_depthwise_slots}
