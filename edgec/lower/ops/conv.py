"""CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED (int8, per-channel or per-tensor weights).

Reference semantics: TFLM reference_integer_ops::ConvPerChannel / DepthwiseConvPerChannel /
FullyConnected: acc = sum((x - x_zp) * (w - w_zp)) + bias, then MultiplyByQuantizedMultiplier
per output channel, + y_zp, clamped to the fused activation range. Out-of-image taps are skipped
(the same as padding with x_zp).
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Op
from edgec.lower.fixedpoint import clamp, multiply_by_quantized_multiplier
from edgec.lower.kernel import Arg, LoweredOp
from edgec.lower.qparams import activation_range, per_channel_multipliers, same_padding


def _check_int8(graph: Graph, op: Op, n_quantized: int = 2) -> None:
    for tid in op.inputs[:n_quantized] + op.outputs:
        t = graph.t(tid)
        if t.dtype != "int8" or t.quant is None:
            raise EdgecError(f"{graph.source}: {op.describe()}: tensor '{t.name}' is {t.dtype}"
                             f"{'' if t.quant else ' without quantization'}; supported: int8 quantized")


def _bias(graph: Graph, op: Op, channels: int) -> Arg:
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        b = graph.t(op.inputs[2])
        if b.dtype != "int32" or not b.is_const:
            raise EdgecError(f"{graph.source}: {op.describe()}: bias '{b.name}' is {b.dtype}; supported: const int32")
        return Arg.input(op.inputs[2])
    return Arg.const(np.zeros(channels, np.int32))


def conv2d_func(N, H, W, C, OH, OW, OC, KH, KW, SH, SW, DH, DW, PT, PL, XZP, YZP, LO, HI):
    @T.prim_func(s_tir=True)
    def conv2d(x_p: T.handle("int8"), w_p: T.handle("int8"), b_p: T.handle("int32"),
               m_p: T.handle("int32"), s_p: T.handle("int32"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N, H, W, C), "int8", data=x_p)
        w = T.decl_buffer((OC, KH, KW, C), "int8", data=w_p)
        b = T.decl_buffer((OC,), "int32", data=b_p)
        m = T.decl_buffer((OC,), "int32", data=m_p)
        s = T.decl_buffer((OC,), "int32", data=s_p)
        y = T.decl_buffer((N, OH, OW, OC), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((N, OH, OW, OC), "int32")
        for n, oh, ow, oc in T.grid(N, OH, OW, OC):
            for kh, kw, ic in T.grid(KH, KW, C):
                with T.sblock("acc"):
                    vn, voh, vow, voc, vkh, vkw, vic = T.axis.remap("SSSSRRR", [n, oh, ow, oc, kh, kw, ic])
                    with T.init():
                        acc[vn, voh, vow, voc] = b[voc]
                    acc[vn, voh, vow, voc] = acc[vn, voh, vow, voc] + T.if_then_else(
                        0 <= voh * SH - PT + vkh * DH and voh * SH - PT + vkh * DH < H
                        and 0 <= vow * SW - PL + vkw * DW and vow * SW - PL + vkw * DW < W,
                        (T.Cast("int32", x[vn, voh * SH - PT + vkh * DH, vow * SW - PL + vkw * DW, vic]) - XZP) * T.Cast("int32", w[voc, vkh, vkw, vic]), 0)
            with T.sblock("out"):
                vn, voh, vow, voc = T.axis.remap("SSSS", [n, oh, ow, oc])
                y[vn, voh, vow, voc] = T.Cast("int8", clamp(
                    multiply_by_quantized_multiplier(acc[vn, voh, vow, voc], m[voc], s[voc]) + YZP, LO, HI))
    return conv2d


def depthwise_func(N, H, W, C, OH, OW, OC, KH, KW, SH, SW, DH, DW, PT, PL, DM, XZP, YZP, LO, HI):
    @T.prim_func(s_tir=True)
    def depthwise(x_p: T.handle("int8"), w_p: T.handle("int8"), b_p: T.handle("int32"),
                  m_p: T.handle("int32"), s_p: T.handle("int32"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((N, H, W, C), "int8", data=x_p)
        w = T.decl_buffer((KH, KW, OC), "int8", data=w_p)
        b = T.decl_buffer((OC,), "int32", data=b_p)
        m = T.decl_buffer((OC,), "int32", data=m_p)
        s = T.decl_buffer((OC,), "int32", data=s_p)
        y = T.decl_buffer((N, OH, OW, OC), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((N, OH, OW, OC), "int32")
        for n, oh, ow, oc in T.grid(N, OH, OW, OC):
            for kh, kw in T.grid(KH, KW):
                with T.sblock("acc"):
                    vn, voh, vow, voc, vkh, vkw = T.axis.remap("SSSSRR", [n, oh, ow, oc, kh, kw])
                    with T.init():
                        acc[vn, voh, vow, voc] = b[voc]
                    acc[vn, voh, vow, voc] = acc[vn, voh, vow, voc] + T.if_then_else(
                        0 <= voh * SH - PT + vkh * DH and voh * SH - PT + vkh * DH < H
                        and 0 <= vow * SW - PL + vkw * DW and vow * SW - PL + vkw * DW < W,
                        (T.Cast("int32", x[vn, voh * SH - PT + vkh * DH, vow * SW - PL + vkw * DW, voc // DM]) - XZP) * T.Cast("int32", w[vkh, vkw, voc]), 0)
            with T.sblock("out"):
                vn, voh, vow, voc = T.axis.remap("SSSS", [n, oh, ow, oc])
                y[vn, voh, vow, voc] = T.Cast("int8", clamp(
                    multiply_by_quantized_multiplier(acc[vn, voh, vow, voc], m[voc], s[voc]) + YZP, LO, HI))
    return depthwise


def fully_connected_func(B, K, OC, XZP, WZP, YZP, LO, HI):
    @T.prim_func(s_tir=True)
    def fully_connected(x_p: T.handle("int8"), w_p: T.handle("int8"), b_p: T.handle("int32"),
                        m_p: T.handle("int32"), s_p: T.handle("int32"), y_p: T.handle("int8")):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((B, K), "int8", data=x_p)
        w = T.decl_buffer((OC, K), "int8", data=w_p)
        b = T.decl_buffer((OC,), "int32", data=b_p)
        m = T.decl_buffer((OC,), "int32", data=m_p)
        s = T.decl_buffer((OC,), "int32", data=s_p)
        y = T.decl_buffer((B, OC), "int8", data=y_p)
        acc = T.sblock_alloc_buffer((B, OC), "int32")
        for i, oc in T.grid(B, OC):
            for k in range(K):
                with T.sblock("acc"):
                    vi, voc, vk = T.axis.remap("SSR", [i, oc, k])
                    with T.init():
                        acc[vi, voc] = 0
                    acc[vi, voc] = acc[vi, voc] + (T.Cast("int32", x[vi, vk]) - XZP) * (
                        T.Cast("int32", w[voc, vk]) - WZP)
            with T.sblock("out"):
                vi, voc = T.axis.remap("SS", [i, oc])
                y[vi, voc] = T.Cast("int8", clamp(
                    multiply_by_quantized_multiplier(acc[vi, voc] + b[voc], m[voc], s[voc]) + YZP, LO, HI))
    return fully_connected


def _window(graph: Graph, op: Op, x, kh: int, kw: int):
    a = op.attrs
    oh, pt = same_padding(x.shape[1], kh, a["stride_h"], a["dilation_h"], a["padding"])
    ow, pl = same_padding(x.shape[2], kw, a["stride_w"], a["dilation_w"], a["padding"])
    return oh, ow, pt, pl


def lower_conv2d(graph: Graph, op: Op) -> LoweredOp:
    _check_int8(graph, op)
    x, w, y = graph.t(op.inputs[0]), graph.t(op.inputs[1]), graph.t(op.outputs[0])
    n, h, wd, c = x.shape
    oc, kh, kw, wc = w.shape
    if wc != c:
        raise EdgecError(f"{graph.source}: {op.describe()}: grouped convolution ({c} input channels, filter has "
                         f"{wc}) is not supported")
    oh, ow, pt, pl = _window(graph, op, x, kh, kw)
    a = op.attrs
    lo, hi = activation_range(a["activation"], y)
    mult, shift = per_channel_multipliers(x, w, y, oc)
    func = conv2d_func(n, h, wd, c, oh, ow, oc, kh, kw, a["stride_h"], a["stride_w"], a["dilation_h"],
                       a["dilation_w"], pt, pl, x.zero_point, y.zero_point, lo, hi)
    args = [Arg.input(op.inputs[0]), Arg.input(op.inputs[1]), _bias(graph, op, oc), Arg.const(mult),
            Arg.const(shift), Arg.output(op.outputs[0])]
    return LoweredOp(op, func, args, kind="conv2d")


def lower_depthwise(graph: Graph, op: Op) -> LoweredOp:
    _check_int8(graph, op)
    x, w, y = graph.t(op.inputs[0]), graph.t(op.inputs[1]), graph.t(op.outputs[0])
    n, h, wd, c = x.shape
    _, kh, kw, oc = w.shape
    dm = oc // c
    oh, ow, pt, pl = _window(graph, op, x, kh, kw)
    a = op.attrs
    lo, hi = activation_range(a["activation"], y)
    mult, shift = per_channel_multipliers(x, w, y, oc)
    func = depthwise_func(n, h, wd, c, oh, ow, oc, kh, kw, a["stride_h"], a["stride_w"], a["dilation_h"],
                          a["dilation_w"], pt, pl, dm, x.zero_point, y.zero_point, lo, hi)
    args = [Arg.input(op.inputs[0]), Arg.input(op.inputs[1]), _bias(graph, op, oc), Arg.const(mult),
            Arg.const(shift), Arg.output(op.outputs[0])]
    return LoweredOp(op, func, args, kind="depthwise")


def lower_fully_connected(graph: Graph, op: Op) -> LoweredOp:
    _check_int8(graph, op)
    x, w, y = graph.t(op.inputs[0]), graph.t(op.inputs[1]), graph.t(op.outputs[0])
    oc, k = w.shape
    if x.size % k:
        raise EdgecError(f"{graph.source}: {op.describe()}: input size {x.size} is not a multiple of the weights' "
                         f"{k} columns")
    batches = x.size // k
    lo, hi = activation_range(op.attrs["activation"], y)
    mult, shift = per_channel_multipliers(x, w, y, oc)
    wzp = int(w.quant.zero_point[0]) if not w.quant.per_axis else 0
    func = fully_connected_func(batches, k, oc, x.zero_point, wzp, y.zero_point, lo, hi)
    args = [Arg.input(op.inputs[0]), Arg.input(op.inputs[1]), _bias(graph, op, oc), Arg.const(mult),
            Arg.const(shift), Arg.output(op.outputs[0])]
    return LoweredOp(op, func, args, kind="fully_connected")


LOWERINGS = {
    "CONV_2D": lower_conv2d,
    "DEPTHWISE_CONV_2D": lower_depthwise,
    "FULLY_CONNECTED": lower_fully_connected,
}
