"""ONNX op -> IR op converters for float models (and the layout-only ops of quantized ones).

Each handler reads its node's inputs through `OnnxReader.rep()` in the layout it needs and defines the
node's outputs. Padding, pooling and transposed-convolution rules follow TFLite's (docs/ir.md).
"""

from __future__ import annotations

import numpy as np

from edgec.frontends.onnx_reader import (
    NHWC,
    Flat,
    Node,
    OnnxReader,
    QParams,
    Value,
    ident,
    inverse,
    same_memory,
)
from edgec.ir.graph import Quant

_INF = 3.0e38  # ONNX's "no bound" defaults are +-FLT_MAX


# ---- constant folding ---------------------------------------------------------------------------------
def fold(r: OnnxReader, node: Node) -> bool:
    """Evaluate `node` with numpy when all its inputs are known; True when it was folded."""
    if node.op_type in ("Shape", "Size") and node.inputs and node.inputs[0] in r.values:
        shape = r.values[node.inputs[0]].shape
        if node.op_type == "Size":
            val = np.array(int(np.prod(shape, dtype=np.int64)), np.int64)
        else:
            rank = len(shape)
            start, end = node.attrs.get("start", 0), node.attrs.get("end", rank)
            val = np.array(shape[slice(start, end)], np.int64)
        r.values[node.outputs[0]] = Value(node.outputs[0], tuple(val.shape), "int64", const=val)
        return True
    ins = [i for i in node.inputs if i]
    if not all(r.is_const(i) for i in ins):
        return False
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    feeds = {i: r.values[i].const for i in ins}
    g = helper.make_graph([node.proto], "fold", [helper.make_tensor_value_info(i, TensorProto.UNDEFINED, None)
                                                 for i in feeds],
                          [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.outputs if o])
    m = helper.make_model(g, opset_imports=list(r.model.opset_import))
    try:
        results = ReferenceEvaluator(m).run(None, feeds)
    except Exception as e:  # noqa: BLE001 - the reference evaluator raises anything on bad models
        raise r.fail(f"cannot evaluate this node on its constant inputs ({type(e).__name__}: {e})",
                     "constant subgraphs that numpy can evaluate") from None
    for name, val in zip([o for o in node.outputs if o], results):
        val = np.asarray(val)
        r.values[name] = Value(name, tuple(val.shape), str(val.dtype), const=val)
    return True


# ---- helpers -------------------------------------------------------------------------------------------
def weight_origin(r: OnnxReader, node: Node, shape: tuple[int, ...], steps: list) -> dict:
    """Provenance of a float weight (Tensor.origin): the ONNX value it came from and the linear steps
    (("transpose", perm), ("scale", axis or None, factor), ("take", axis, index)) that made the IR data."""
    name = node.inputs[1]
    meta = {p.key: p.value for p in getattr(node.proto, "metadata_props", [])}
    return {"initializer": name, "shape": tuple(int(d) for d in shape), "steps": list(steps), "node": node.label,
            "computed": not any(i.name == name for i in r.model.graph.initializer),
            # torch's dynamo exporter records the onnxscript rewrites (e.g. a BatchNorm folded into the weights).
            "rewrites": meta.get("pkg.onnxscript.rewriter.rule_name", "")}


def _act_input(r: OnnxReader, node: Node, i: int = 0) -> Value:
    name = node.inputs[i] if i < len(node.inputs) else ""
    if not name:
        raise r.fail(f"input {i} is missing", "the ONNX operator's required inputs")
    v = r.value(name)
    if v.const is None and v.dtype not in ("float32",) and v.qp is None:
        raise r.fail(f"input '{name}' is {v.dtype}", "float32 activations")
    return v


def _rank4(r: OnnxReader, v: Value, what: str = "input") -> None:
    if v.rank != 4:
        raise r.fail(f"{what} '{v.name}' has shape {list(v.shape)}", "4-D NCHW tensors (2-D convolution and pooling)")


def _ints(r: OnnxReader, node: Node, name: str, n: int, default: int) -> list[int]:
    vals = list(node.attrs.get(name, [default] * n))
    if len(vals) != n:
        raise r.fail(f"attribute {name}={vals}", f"{n} values (2-D spatial operators)")
    return [int(v) for v in vals]


def tflite_same(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TFLite's SAME padding (before, after) for one spatial dimension."""
    eff = (k - 1) * d + 1
    out = -(-size // s)
    total = max((out - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def _onnx_pads(r: OnnxReader, node: Node, hw: tuple[int, int], k: list[int], s: list[int],
               d: list[int]) -> list[int]:
    """[top, left, bottom, right] as ONNX computes them from pads / auto_pad."""
    auto = node.attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        pads = _ints(r, node, "pads", 4, 0)
        if min(pads) < 0:
            raise r.fail(f"negative pads {pads}", "pads >= 0")
        return pads
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise r.fail(f"auto_pad={auto}", "NOTSET, VALID, SAME_UPPER, SAME_LOWER")
    before, after = [], []
    for i in range(2):
        small, big = tflite_same(hw[i], k[i], s[i], d[i])
        before.append(small if auto == "SAME_UPPER" else big)
        after.append(big if auto == "SAME_UPPER" else small)
    return before + after


def _out_size(r: OnnxReader, size: int, k: int, s: int, d: int, pb: int, pe: int) -> int:
    out = (size + pb + pe - ((k - 1) * d + 1)) // s + 1
    if out < 1:
        raise r.fail(f"a {k}x window (dilation {d}, pads {pb}+{pe}) larger than the input extent {size}",
                     "windows that fit the (padded) input")
    return out


def _pad_op(r: OnnxReader, tid: int, pads: list[int], name: str) -> int:
    """PAD (zero padding) of an NHWC tensor by ONNX [top, left, bottom, right] pads."""
    t = r.tensors[tid]
    paddings = [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]]
    n, h, w, c = t.shape
    out = r.like(tid, f"{name}_pad", (n, h + pads[0] + pads[2], w + pads[1] + pads[3], c))
    r.op("PAD", [tid, r.int32(paddings, f"{name}_paddings")], [out])
    return out


def _window_padding(r: OnnxReader, tid: int, hw, k, s, d, pads, name: str, zero_pad_ok: bool,
                    same_ok: bool = True) -> tuple[int, str]:
    """SAME / VALID, or a PAD op + VALID, for ONNX pads; `zero_pad_ok` says whether padding with zeros is exact."""
    same = [tflite_same(hw[i], k[i], s[i], d[i]) for i in range(2)]
    if pads == [0, 0, 0, 0]:
        return tid, "VALID"
    if same_ok and pads == [same[0][0], same[1][0], same[0][1], same[1][1]]:
        return tid, "SAME"
    if not zero_pad_ok:
        return -1, ""
    return _pad_op(r, tid, pads, name), "VALID"


def _bias(r: OnnxReader, node: Node, i: int, oc: int) -> int:
    """The float bias input `i` as a constant tensor, or -1."""
    if len(node.inputs) <= i or not node.inputs[i]:
        return -1
    b = r.const_of(node.inputs[i], "bias").astype(np.float32).reshape(-1)
    if b.size != oc:
        raise r.fail(f"bias with {b.size} values for {oc} output channels", "one bias per output channel")
    return r.const(b, node.inputs[i])


# ---- convolution and pooling ---------------------------------------------------------------------------
def conv(r: OnnxReader, node: Node) -> None:
    x = _act_input(r, node)
    w = r.const_of(node.inputs[1], "weight").astype(np.float32)
    bias = None
    if len(node.inputs) > 2 and node.inputs[2]:
        bias = r.const_of(node.inputs[2], "bias").astype(np.float32).reshape(-1)
    conv_core(r, node, x, w, bias, node.outputs[0])


def conv_core(r: OnnxReader, node: Node, x: Value, w: np.ndarray, bias: np.ndarray | None, out_name: str,
              w_scale: np.ndarray | None = None, y_qp: QParams | None = None, out_dtype: str = "float32") -> None:
    """CONV_2D / DEPTHWISE_CONV_2D for ONNX Conv (float) or QLinearConv / QDQ Conv (`w_scale`, `y_qp` given:
    int8 weights with per-output-channel or per-tensor scales, int32 bias with scale s_x * s_w)."""
    _rank4(r, x)
    if w.ndim != 4:
        raise r.fail(f"weight shape {list(w.shape)}", "4-D OIHW weights (2-D convolution)")
    n, c, h, wd = x.shape
    oc, icg, kh, kw = w.shape
    k = _ints(r, node, "kernel_shape", 2, 0) if "kernel_shape" in node.attrs else [kh, kw]
    if k != [kh, kw]:
        raise r.fail(f"kernel_shape {k} but weights {list(w.shape)}", "kernel_shape matching the weights")
    s = _ints(r, node, "strides", 2, 1)
    d = _ints(r, node, "dilations", 2, 1)
    group = int(node.attrs.get("group", 1))
    if group < 1 or c % group or icg != c // group or oc % group:
        raise r.fail(f"group={group} with {c} input channels and weights {list(w.shape)}",
                     "input and output channels divisible by group, weights [OC, C/group, KH, KW]")
    if bias is not None and bias.size != oc:
        raise r.fail(f"bias with {bias.size} values for {oc} output channels", "one bias per output channel")
    pads = _onnx_pads(r, node, (h, wd), k, s, d)
    oh = _out_size(r, h, k[0], s[0], d[0], pads[0], pads[2])
    ow = _out_size(r, wd, k[1], s[1], d[1], pads[1], pads[3])
    # Zero padding is exact for int8 too: PAD fills with the zero point, i.e. real 0.
    tid, padding = _window_padding(r, r.rep(x.name, NHWC), (h, wd), k, s, d, pads, out_name, True)
    attrs = {"padding": padding, "stride_h": s[0], "stride_w": s[1], "dilation_h": d[0], "dilation_w": d[1],
             "activation": "NONE"}
    depthwise = group > 1 and group == c and icg == 1
    w_ir = w.transpose(1, 2, 3, 0) if depthwise else w.transpose(0, 2, 3, 1)  # [1,KH,KW,C*M] / [OC,KH,KW,C/g]
    wname = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1] in r.values else f"{out_name}_weights"
    if w_scale is None:
        wt = r.const(w_ir, wname)
        r.tensors[wt].origin = weight_origin(r, node, w.shape, [("transpose", (1, 2, 3, 0) if depthwise else NHWC)])
        bt = -1 if bias is None else r.const(bias, f"{out_name}_bias")
        out = r.out(out_name, (n, oc, oh, ow), NHWC)
    else:
        per_axis = w_scale.size > 1
        wt = r.const(w_ir.astype(np.int8), wname,
                     Quant(w_scale.astype(np.float32), np.zeros(w_scale.size, np.int64),
                           (3 if depthwise else 0) if per_axis else None))
        bt = -1
        if bias is not None:
            x_scale = np.float32(r.tensors[tid].quant.scale[0])
            b_scale = (x_scale * w_scale.astype(np.float32)).astype(np.float32)
            bt = r.const(bias.astype(np.int32), f"{out_name}_bias",
                         Quant(b_scale, np.zeros(b_scale.size, np.int64), 0 if per_axis else None))
        out = r.tensor(out_name, (n, oh, ow, oc), "int8", quant=y_qp.quant())
        v = r.define(out_name, (n, oc, oh, ow), NHWC, out, qp=y_qp, nonneg=bool(np.all(y_qp.zero_point == -128)))
        v.dtype = out_dtype
    if depthwise:
        r.op("DEPTHWISE_CONV_2D", [tid, wt, bt], [out], {**attrs, "depth_multiplier": oc // c})
    else:
        r.op("CONV_2D", [tid, wt, bt], [out], attrs)


def transpose_tflite_pad(out_size: int, k: int, s: int, padding: str) -> int:
    """The `before` padding TFLite's TRANSPOSE_CONV uses for an output extent (ComputePaddingHeightWidth)."""
    n = -(-out_size // s) if padding == "SAME" else (out_size - k + s) // s
    return max((n - 1) * s + k - out_size, 0) // 2


def conv_transpose(r: OnnxReader, node: Node) -> None:
    x = _act_input(r, node)
    _rank4(r, x)
    w = r.const_of(node.inputs[1], "weight").astype(np.float32)
    n, c, h, wd = x.shape
    if w.ndim != 4 or w.shape[0] != c:
        raise r.fail(f"weight shape {list(w.shape)} for {c} input channels", "4-D [C, OC, KH, KW] weights")
    if int(node.attrs.get("group", 1)) != 1:
        raise r.fail(f"group={node.attrs['group']}", "group=1")
    _, oc, kh, kw = w.shape
    s = _ints(r, node, "strides", 2, 1)
    if _ints(r, node, "dilations", 2, 1) != [1, 1]:
        raise r.fail(f"dilations {node.attrs['dilations']}", "dilations 1 (TFLite TRANSPOSE_CONV)")
    opad = _ints(r, node, "output_padding", 2, 0)
    k = [kh, kw]
    auto = node.attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for i, size in enumerate((h, wd)):
            total = max(s[i] * (size - 1) + opad[i] + k[i] - size * s[i], 0)
            # onnxruntime: SAME_UPPER puts the extra row at the end, SAME_LOWER at the start.
            pads.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
        pads = pads + [s[i] * ((h, wd)[i] - 1) + opad[i] + k[i] - (h, wd)[i] * s[i] - pads[i] for i in range(2)]
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    elif auto == "NOTSET":
        pads = _ints(r, node, "pads", 4, 0)
    else:
        raise r.fail(f"auto_pad={auto}", "NOTSET, VALID, SAME_UPPER, SAME_LOWER")
    out_hw = [s[i] * ((h, wd)[i] - 1) + opad[i] + k[i] - pads[i] - pads[i + 2] for i in range(2)]
    if "output_shape" in node.attrs:
        want = [int(v) for v in node.attrs["output_shape"]][-2:]
        if want != out_hw:
            raise r.fail(f"output_shape {want} (pads/auto_pad give {out_hw})",
                         "ConvTranspose without output_shape, or one equal to what pads give")
    if min(out_hw) < 1 or min(pads) < 0:
        raise r.fail(f"pads {pads} giving output size {out_hw}", "pads >= 0 and a non-empty output")
    padding = None
    for mode in ("VALID", "SAME"):
        if all(transpose_tflite_pad(out_hw[i], k[i], s[i], mode) == pads[i] for i in range(2)):
            padding = mode
            break
    if padding is None:
        raise r.fail(f"pads {pads} (output {out_hw})", "ConvTranspose pads whose leading part equals TFLite "
                     "TRANSPOSE_CONV's SAME or VALID padding (e.g. zero pads, or auto_pad SAME_UPPER)")
    bias = _bias(r, node, 2, oc)
    wt = r.const(w.transpose(1, 2, 3, 0), node.inputs[1])  # [OC, KH, KW, C]
    shape = r.int32((n, out_hw[0], out_hw[1], oc), f"{node.outputs[0]}_output_shape")
    out = r.out(node.outputs[0], (n, oc, out_hw[0], out_hw[1]), NHWC)
    r.op("TRANSPOSE_CONV", [shape, wt, r.rep(x.name, NHWC), bias], [out],
         {"padding": padding, "stride_h": s[0], "stride_w": s[1], "activation": "NONE"})


def _pool(r: OnnxReader, node: Node, kind: str) -> None:
    x = _act_input(r, node)
    _rank4(r, x)
    if len(node.outputs) > 1 and node.outputs[1]:
        raise r.fail("the Indices output is used", "MaxPool's first output only")
    n, c, h, w = x.shape
    if "kernel_shape" not in node.attrs:
        raise r.fail("no kernel_shape", "a kernel_shape attribute")
    k = _ints(r, node, "kernel_shape", 2, 1)
    s = _ints(r, node, "strides", 2, 1)
    d = _ints(r, node, "dilations", 2, 1)
    if d != [1, 1]:
        raise r.fail(f"dilations {d}", "dilations 1 (TFLite pooling)")
    pads = _onnx_pads(r, node, (h, w), k, s, d)
    out = [_out_size(r, (h, w)[i], k[i], s[i], 1, pads[i], pads[i + 2]) for i in range(2)]
    if node.attrs.get("ceil_mode", 0):
        for i in range(2):
            size = (h, w)[i]
            ceil_out = -(-(size + pads[i] + pads[i + 2] - k[i]) // s[i]) + 1
            if (ceil_out - 1) * s[i] >= size + pads[i]:  # the last window must start inside the input
                ceil_out -= 1
            if ceil_out != out[i]:
                if kind != "max":
                    raise r.fail(f"ceil_mode=1 adds a partial window (output {ceil_out} instead of {out[i]})",
                                 "ceil_mode=0, or ceil_mode=1 where it changes nothing, for AveragePool")
                # A partial window at the end reads -inf padding: the same as extra end padding for max.
                pads[i + 2] += (ceil_out - 1) * s[i] + k[i] - (size + pads[i] + pads[i + 2])
                out[i] = ceil_out
    include_pad = bool(node.attrs.get("count_include_pad", 0))
    src = r.rep(x.name, NHWC)
    if kind == "max":
        tid, padding = _window_padding(r, src, (h, w), k, s, d, pads, node.outputs[0], x.nonneg)
        if tid < 0:
            raise r.fail(f"pads {pads} differ from TFLite's SAME padding for this input and the input may be "
                         "negative (zero padding would change the maxima)", "MaxPool pads equal to SAME "
                         "(auto_pad SAME_UPPER), zero pads, or any pads after a non-negative op such as Relu")
    else:
        tid, padding = _window_padding(r, src, (h, w), k, s, d, pads, node.outputs[0], include_pad,
                                       same_ok=not include_pad)
        if tid < 0:
            raise r.fail(f"pads {pads} with count_include_pad=0 differ from TFLite's SAME padding",
                         "AveragePool pads equal to SAME (auto_pad SAME_UPPER), zero pads, or count_include_pad=1")
    o = r.out(node.outputs[0], (n, c, out[0], out[1]), NHWC, nonneg=x.nonneg, like=src)
    r.op("MAX_POOL_2D" if kind == "max" else "AVERAGE_POOL_2D", [tid], [o],
         {"padding": padding, "stride_h": s[0], "stride_w": s[1], "filter_h": k[0], "filter_w": k[1],
          "activation": "NONE"})


def max_pool(r: OnnxReader, node: Node) -> None:
    _pool(r, node, "max")


def average_pool(r: OnnxReader, node: Node) -> None:
    _pool(r, node, "avg")


def global_average_pool(r: OnnxReader, node: Node) -> None:
    x = _act_input(r, node)
    _rank4(r, x)
    n, c, _, _ = x.shape
    src = r.rep(x.name, NHWC)
    out = r.out(node.outputs[0], (n, c, 1, 1), NHWC, nonneg=x.nonneg, like=src)
    r.op("MEAN", [src, r.int32([1, 2], f"{node.outputs[0]}_axes")], [out], {"keep_dims": True})


def global_max_pool(r: OnnxReader, node: Node) -> None:
    x = _act_input(r, node)
    _rank4(r, x)
    n, c, h, w = x.shape
    src = r.rep(x.name, NHWC)
    out = r.out(node.outputs[0], (n, c, 1, 1), NHWC, nonneg=x.nonneg, like=src)
    r.op("MAX_POOL_2D", [src], [out], {"padding": "VALID", "stride_h": 1, "stride_w": 1, "filter_h": h,
                                       "filter_w": w, "activation": "NONE"})


# ---- fully connected -----------------------------------------------------------------------------------
def _fc(r: OnnxReader, node: Node, a: Value, wmat: np.ndarray, bias_row: np.ndarray | None,
        trans_a: bool = False, out_name: str | None = None, w_quant: Quant | None = None,
        y_qp: QParams | None = None, out_dtype: str = "float32", origin: dict | None = None) -> int:
    """FULLY_CONNECTED of `a` ([..., K]) with weights `wmat` [N, K]; returns the output tensor.

    Quantized (`w_quant`, `y_qp` given): int8 weights and an int32 bias row with scale s_a * s_w."""
    out_name = out_name or node.outputs[0]
    keep = a.rank > 2
    if a.rank < 2:
        raise r.fail(f"input '{a.name}' has shape {list(a.shape)}", "inputs of rank >= 2")
    if trans_a:
        tid = r.rep(a.name, (1, 0))
        m = a.shape[1]
    else:
        flat = next((lay for lay in a.reps if isinstance(lay, Flat)), None)
        if flat is not None and ident(a.rank) not in a.reps:
            wmat = wmat[:, flat.index()]  # absorb the NHWC flattening order into the weight columns
            if origin is not None:
                origin["steps"].append(("take", 1, flat.index()))
            tid = a.reps[flat]
        else:
            tid = r.rep(a.name)
        m = a.shape[0]
    out_shape = (*a.shape[:-1], wmat.shape[0]) if keep else (m, wmat.shape[0])
    wname = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1] in r.values else f"{out_name}_weights"
    if w_quant is None:
        bias = -1 if bias_row is None else r.const(bias_row.astype(np.float32), f"{out_name}_bias")
        wt = r.const(np.ascontiguousarray(wmat.astype(np.float32)), wname)
        r.tensors[wt].origin = origin
        out = r.out(out_name, out_shape, ident(len(out_shape)))
    else:
        wt = r.const(np.ascontiguousarray(wmat.astype(np.int8)), wname, w_quant)
        bias = -1
        if bias_row is not None:
            b_scale = (np.float32(r.tensors[tid].quant.scale[0]) * w_quant.scale.astype(np.float32)).astype(np.float32)
            bias = r.const(bias_row.astype(np.int32), f"{out_name}_bias",
                           Quant(b_scale, np.zeros(b_scale.size, np.int64), 0 if b_scale.size > 1 else None))
        out = r.tensor(out_name, out_shape, "int8", quant=y_qp.quant())
        v = r.define(out_name, out_shape, ident(len(out_shape)), out, qp=y_qp)
        v.dtype = out_dtype
    r.op("FULLY_CONNECTED", [tid, wt, bias], [out], {"activation": "NONE", "keep_num_dims": keep})
    return out


def gemm(r: OnnxReader, node: Node) -> None:
    a = _act_input(r, node)
    if a.rank != 2:
        raise r.fail(f"input A has shape {list(a.shape)}", "2-D Gemm inputs")
    b = r.const_of(node.inputs[1], "weight B").astype(np.float32)
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    trans_a, trans_b = bool(node.attrs.get("transA", 0)), bool(node.attrs.get("transB", 0))
    wmat = (b if trans_b else b.T) * np.float32(alpha)  # [N, K]
    m = a.shape[1] if trans_a else a.shape[0]
    k = a.shape[0] if trans_a else a.shape[1]
    if wmat.shape[1] != k:
        raise r.fail(f"A {list(a.shape)} and B {list(b.shape)} (transA={int(trans_a)}, transB={int(trans_b)})",
                     "matching inner dimensions")
    nout = wmat.shape[0]
    bias_row, c_runtime = None, None
    if len(node.inputs) > 2 and node.inputs[2]:
        if r.is_const(node.inputs[2]):
            cb = np.broadcast_to(r.values[node.inputs[2]].const.astype(np.float32) * np.float32(beta), (m, nout))
            if np.all(cb == cb[0]):
                bias_row = np.array(cb[0])
            else:
                c_runtime = node.inputs[2]
        else:
            c_runtime = node.inputs[2]
    origin = weight_origin(r, node, b.shape, ([] if trans_b else [("transpose", (1, 0))])
                           + ([("scale", None, alpha)] if alpha != 1.0 else []))
    if c_runtime is None:
        _fc(r, node, a, wmat, bias_row, trans_a, origin=origin)
        return
    if beta != 1.0 and not r.is_const(c_runtime):
        raise r.fail(f"beta={beta} with a run-time C", "beta=1 when C is computed at run time")
    real_out = node.outputs[0]
    node.outputs[0] = f"{real_out}_mm"
    try:
        fc_out = _fc(r, node, a, wmat, None, trans_a, origin=origin)
    finally:
        node.outputs[0] = real_out
    cv = r.value(c_runtime)
    ct = r.const(np.broadcast_to(cv.const * np.float32(beta), (m, nout)).astype(np.float32), c_runtime) \
        if cv.const is not None else r.rep(c_runtime)
    out = r.out(real_out, (m, nout), (0, 1))
    r.op("ADD", [fc_out, ct], [out], {"activation": "NONE"})


def matmul(r: OnnxReader, node: Node) -> None:
    a_name, b_name = node.inputs[0], node.inputs[1]
    if not r.is_const(b_name):
        raise r.fail("both operands are computed at run time" if not r.is_const(a_name) else
                     "the first operand is constant and the second computed at run time",
                     "MatMul by a constant 2-D matrix (second operand), which becomes FULLY_CONNECTED")
    a = _act_input(r, node)
    b = r.values[b_name].const.astype(np.float32)
    if b.ndim != 2 or a.rank < 2 or a.shape[-1] != b.shape[0]:
        raise r.fail(f"A {list(a.shape)} times B {list(b.shape)}", "A [..., K] times a constant B [K, N]")
    _fc(r, node, a, b.T, None, origin=weight_origin(r, node, b.shape, [("transpose", (1, 0))]))


# ---- elementwise ---------------------------------------------------------------------------------------
def _binary(r: OnnxReader, node: Node, type_: str) -> None:
    an, bn = node.inputs[0], node.inputs[1]
    a, b = r.value(an), r.value(bn)
    try:
        out_shape = tuple(np.broadcast_shapes(a.shape, b.shape))
    except ValueError:
        raise r.fail(f"shapes {list(a.shape)} and {list(b.shape)} do not broadcast", "broadcastable shapes") from None
    if node.op_type == "Div" and (a.const is not None or b.const is None):
        raise r.fail("division by a tensor computed at run time" if b.const is None else
                     "a constant divided by a run-time tensor", "Div by a constant (becomes MUL by 1/c)")
    if a.const is not None and type_ in ("ADD", "MUL"):
        a, b = b, a  # constants second
    x = a if a.const is None else b
    other = b if x is a else a
    nonneg = False
    if other.const is not None:
        c = other.const.astype(np.float32)
        if node.op_type == "Div":
            c = (np.float32(1) / c).astype(np.float32)
        lay, tid = r.primary(x.name)
        if x.shape != out_shape or other.rank > x.rank:
            lay, tid = ident(x.rank), r.rep(x.name)
        ct = r.const(_aligned(c, lay, len(out_shape)), other.name)
        ins = [tid, ct] if x is a else [ct, tid]
        nonneg = x.nonneg and bool(np.all(c >= 0)) and type_ in ("ADD", "MUL")
    else:
        if a.rank == b.rank:
            lay = next((lay for lay in a.reps if lay in b.reps), None)
            if lay is None:
                lay = NHWC if a.rank == 4 and (NHWC in a.reps or NHWC in b.reps) else r.primary(an)[0]
            if isinstance(lay, Flat) and a.shape != b.shape:
                lay = ident(a.rank)
        else:
            lay = ident(len(out_shape))
        ins = [r.rep(an, lay if a.rank == len(out_shape) else ident(a.rank)),
               r.rep(bn, lay if b.rank == len(out_shape) else ident(b.rank))]
        nonneg = a.nonneg and b.nonneg and type_ in ("ADD", "MUL")
    out = r.out(node.outputs[0], out_shape, lay, nonneg=nonneg)
    r.op(type_, ins, [out], {"activation": "NONE"})


def _aligned(c: np.ndarray, lay, rank: int) -> np.ndarray:
    """A constant operand (ONNX layout) padded to `rank` and stored in the other operand's layout."""
    c = c.reshape((1,) * (rank - c.ndim) + c.shape)
    if isinstance(lay, Flat):
        return c if c.shape[-1] == 1 else np.ascontiguousarray(c[..., lay.index()])
    return np.ascontiguousarray(np.transpose(c, lay))


def add(r: OnnxReader, node: Node) -> None:
    _binary(r, node, "ADD")


def sub(r: OnnxReader, node: Node) -> None:
    _binary(r, node, "SUB")


def mul(r: OnnxReader, node: Node) -> None:
    _binary(r, node, "MUL")


def div(r: OnnxReader, node: Node) -> None:
    _binary(r, node, "MUL")


def _unary(r: OnnxReader, node: Node, type_: str, attrs: dict | None = None, nonneg: bool = False,
           name: str | None = None, src: str | None = None) -> int:
    x = r.value(src or node.inputs[0])
    lay, tid = r.primary(x.name)
    out = r.out(name or node.outputs[0], x.shape, lay, nonneg=nonneg, like=tid)
    r.op(type_, [tid], [out], attrs or {})
    return out


def relu(r: OnnxReader, node: Node) -> None:
    _act_input(r, node)
    _unary(r, node, "RELU", nonneg=True)


def sigmoid(r: OnnxReader, node: Node) -> None:
    _act_input(r, node)
    _unary(r, node, "LOGISTIC", nonneg=True)


def tanh(r: OnnxReader, node: Node) -> None:
    _act_input(r, node)
    _unary(r, node, "TANH")


def hard_swish(r: OnnxReader, node: Node) -> None:
    _act_input(r, node)
    _unary(r, node, "HARD_SWISH")


def leaky_relu(r: OnnxReader, node: Node) -> None:
    _act_input(r, node)
    _unary(r, node, "LEAKY_RELU", {"alpha": float(node.attrs.get("alpha", 0.01))})


def prelu(r: OnnxReader, node: Node) -> None:
    x = _act_input(r, node)
    slope = r.const_of(node.inputs[1], "slope").astype(np.float32)
    try:
        if np.broadcast_shapes(x.shape, slope.shape) != x.shape:
            raise ValueError
    except ValueError:
        raise r.fail(f"slope shape {list(slope.shape)} for input {list(x.shape)}",
                     "a slope that broadcasts to the input") from None
    lay, tid = r.primary(x.name)
    st = r.const(_aligned(slope, lay, x.rank), node.inputs[1])
    out = r.out(node.outputs[0], x.shape, lay)
    r.op("PRELU", [tid, st], [out])


def _clamp(r: OnnxReader, node: Node, lo: float | None, hi: float | None, src: str, name: str) -> None:
    """max(x, lo) then min(., hi) as MAXIMUM/MINIMUM ops (RELU/RELU6 for the ranges TFLite has ops for)."""
    x = r.value(src)
    if lo is not None and lo <= -_INF:
        lo = None
    if hi is not None and hi >= _INF:
        hi = None
    if lo == 0 and hi in (None, 6.0):
        _unary(r, node, "RELU" if hi is None else "RELU6", nonneg=True, name=name, src=src)
        return
    if lo is None and hi is None:
        alias(r, node, src, name)
        return
    lay, tid = r.primary(x.name)
    steps = [(t, v) for t, v in (("MAXIMUM", lo), ("MINIMUM", hi)) if v is not None]
    for i, (type_, bound) in enumerate(steps):
        last = i == len(steps) - 1
        out = r.out(name if last else f"{name}_{type_.lower()}", x.shape, lay, like=tid,
                    nonneg=lo is not None and lo >= 0)
        r.op(type_, [tid, r.const(np.array([bound], np.float32), f"{name}_{type_.lower()}_bound")], [out])
        tid = out


def clip(r: OnnxReader, node: Node) -> None:
    _act_input(r, node)
    if r.opset < 11:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
    else:
        def bound(i: int) -> float | None:
            if len(node.inputs) <= i or not node.inputs[i]:
                return None
            return float(r.const_of(node.inputs[i], "clip bound").reshape(-1)[0])
        lo, hi = bound(1), bound(2)
    _clamp(r, node, None if lo is None else float(lo), None if hi is None else float(hi), node.inputs[0],
           node.outputs[0])


def hard_sigmoid(r: OnnxReader, node: Node) -> None:
    x = _act_input(r, node)
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    name = node.outputs[0]
    lay, tid = r.primary(x.name)
    m = r.out(f"{name}_scaled", x.shape, lay, like=tid)
    r.op("MUL", [tid, r.const(np.array([alpha], np.float32), f"{name}_alpha")], [m], {"activation": "NONE"})
    a = r.out(f"{name}_shifted", x.shape, lay, like=tid)
    r.op("ADD", [m, r.const(np.array([beta], np.float32), f"{name}_beta")], [a], {"activation": "NONE"})
    _clamp(r, node, 0.0, 1.0, f"{name}_shifted", name)
    r.values[name].nonneg = True


def batch_norm(r: OnnxReader, node: Node) -> None:
    x = _act_input(r, node)
    if node.attrs.get("training_mode", 0) or any(o for o in node.outputs[1:]):
        raise r.fail("training mode (extra outputs)", "inference-mode BatchNormalization")
    if r.opset < 9 and node.attrs.get("spatial", 1) != 1:
        raise r.fail("spatial=0", "spatial=1")
    if x.rank < 2:
        raise r.fail(f"input shape {list(x.shape)}", "inputs [N, C, ...]")
    scale, bias, mean, var = (r.const_of(node.inputs[i], what).astype(np.float64)
                              for i, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    eps = float(node.attrs.get("epsilon", 1e-5))
    mul_c = scale / np.sqrt(var + eps)
    add_c = bias - mean * mul_c
    shape = (x.shape[1],) + (1,) * (x.rank - 2)
    lay, tid = r.primary(x.name)
    name = node.outputs[0]
    m = r.out(f"{name}_scaled", x.shape, lay, like=tid)
    r.op("MUL", [tid, r.const(_aligned(mul_c.astype(np.float32).reshape(shape), lay, x.rank), f"{name}_mul")],
         [m], {"activation": "NONE"})
    out = r.out(name, x.shape, lay, like=tid)
    r.op("ADD", [m, r.const(_aligned(add_c.astype(np.float32).reshape(shape), lay, x.rank), f"{name}_add")],
         [out], {"activation": "NONE"})


# ---- shape and layout ops ------------------------------------------------------------------------------
def alias(r: OnnxReader, node: Node, src: str | None = None, name: str | None = None) -> None:
    """Identity-like: the output is the input value (same IR tensors)."""
    v = r.value(src or node.inputs[0])
    name = name or node.outputs[0]
    r.values[name] = Value(name, v.shape, v.dtype, const=v.const, reps=v.reps, nonneg=v.nonneg, qp=v.qp,
                           const_qp=v.const_qp)


def dropout(r: OnnxReader, node: Node) -> None:
    if len(node.outputs) > 1 and node.outputs[1] and node.outputs[1] in r.consumers:
        raise r.fail("the mask output is used", "Dropout's first output only (inference)")
    alias(r, node)


def reshape_to(r: OnnxReader, node: Node, out_shape: tuple[int, ...]) -> None:
    x = r.value(node.inputs[0])
    out_shape = tuple(int(d) for d in out_shape)
    if int(np.prod(out_shape, dtype=np.int64)) != int(np.prod(x.shape, dtype=np.int64)):
        raise r.fail(f"reshape of {list(x.shape)} to {list(out_shape)}", "equal element counts")
    name = node.outputs[0]
    src = next((t for lay, t in x.reps.items() if same_memory(x.shape, lay, ident(x.rank))), None)
    if src is None and x.rank == 4 and NHWC in x.reps and len(out_shape) == 2 and out_shape[0] == x.shape[0]:
        # Flattening an NHWC feature map: keep the H, W, C order (a following FC permutes its weights).
        _, c, h, w = x.shape
        src = x.reps[NHWC]
        out = r.like(src, name, out_shape)
        r.op("RESHAPE", [src, r.int32(out_shape, f"{name}_shape")], [out])
        r.define(name, out_shape, Flat(c, h, w), out, nonneg=x.nonneg, qp=x.qp)
        return
    if src is None:
        src = r.rep(x.name)
    out = r.out(name, out_shape, ident(len(out_shape)), nonneg=x.nonneg, like=src)
    r.values[name].qp = x.qp
    r.op("RESHAPE", [src, r.int32(out_shape, f"{name}_shape")], [out])


def reshape(r: OnnxReader, node: Node) -> None:
    x = r.value(node.inputs[0])
    shape = [int(d) for d in r.const_of(node.inputs[1], "shape").reshape(-1)]
    allowzero = int(node.attrs.get("allowzero", 0))
    out = [x.shape[i] if d == 0 and not allowzero and i < x.rank else d for i, d in enumerate(shape)]
    if out.count(-1) > 1 or min(out, default=0) < -1:
        raise r.fail(f"shape {shape}", "at most one -1 and no other negative sizes")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        total = int(np.prod(x.shape, dtype=np.int64))
        if known == 0 or total % known:
            raise r.fail(f"shape {shape} for input {list(x.shape)}", "a shape with the input's element count")
        out[out.index(-1)] = total // known
    reshape_to(r, node, tuple(out))


def flatten(r: OnnxReader, node: Node) -> None:
    x = r.value(node.inputs[0])
    axis = int(node.attrs.get("axis", 1))
    if axis < 0:
        axis += x.rank
    if not 0 <= axis <= x.rank:
        raise r.fail(f"axis {node.attrs.get('axis')} for rank {x.rank}", f"axis in [-{x.rank}, {x.rank}]")
    reshape_to(r, node, (int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64))))


def _axes(r: OnnxReader, node: Node, attr_before: int) -> list[int] | None:
    """Axes from the attribute (opset < attr_before) or the optional second input."""
    if r.opset < attr_before:
        axes = node.attrs.get("axes")
        return None if axes is None else [int(a) for a in axes]
    if len(node.inputs) > 1 and node.inputs[1]:
        return [int(a) for a in r.const_of(node.inputs[1], "axes").reshape(-1)]
    return None


def squeeze(r: OnnxReader, node: Node) -> None:
    x = r.value(node.inputs[0])
    axes = _axes(r, node, 13)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = [a + x.rank if a < 0 else a for a in axes]
    if any(not 0 <= a < x.rank or x.shape[a] != 1 for a in axes):
        raise r.fail(f"axes {axes} for shape {list(x.shape)}", "axes of size 1")
    reshape_to(r, node, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def unsqueeze(r: OnnxReader, node: Node) -> None:
    x = r.value(node.inputs[0])
    axes = _axes(r, node, 13)
    if axes is None:
        raise r.fail("no axes", "Unsqueeze with axes")
    rank = x.rank + len(axes)
    axes = sorted(a + rank if a < 0 else a for a in axes)
    if any(not 0 <= a < rank for a in axes) or len(set(axes)) != len(axes):
        raise r.fail(f"axes {axes} for output rank {rank}", "distinct axes within the output rank")
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    reshape_to(r, node, tuple(shape))


def transpose(r: OnnxReader, node: Node) -> None:
    x = r.value(node.inputs[0])
    perm = tuple(int(p) for p in node.attrs.get("perm", range(x.rank - 1, -1, -1)))
    if sorted(perm) != list(range(x.rank)):
        raise r.fail(f"perm {list(perm)} for rank {x.rank}", "a permutation of the input axes")
    lay, tid = r.primary(x.name)
    if isinstance(lay, Flat):
        lay, tid = ident(x.rank), r.rep(x.name)
    # No op: the output is the same IR tensor seen through another layout; a TRANSPOSE is only made if a
    # consumer needs a layout that does not exist yet.
    q_inv = inverse(perm)
    out_lay = tuple(q_inv[p] for p in lay)
    shape = tuple(x.shape[p] for p in perm)
    r.define(node.outputs[0], shape, out_lay, tid, nonneg=x.nonneg, qp=x.qp)


def concat(r: OnnxReader, node: Node) -> None:
    names = [n for n in node.inputs if n]
    vals = [r.value(n) for n in names]
    rank = vals[0].rank
    axis = int(node.attrs.get("axis", 1 if r.opset < 4 else 0))
    if axis < 0:
        axis += rank
    if any(v.rank != rank for v in vals) or not 0 <= axis < rank:
        raise r.fail(f"inputs of shapes {[list(v.shape) for v in vals]} on axis {node.attrs.get('axis')}",
                     "inputs of equal rank")
    vals = [v for v in vals if v.shape[axis] > 0]
    runtime = [v for v in vals if v.const is None]
    lay = NHWC if rank == 4 and any(NHWC in v.reps for v in runtime) else r.primary(runtime[0].name)[0]
    if isinstance(lay, Flat):
        lay = ident(rank)
    ins = [r.rep(v.name, lay) for v in vals]
    shape = list(vals[0].shape)
    shape[axis] = sum(v.shape[axis] for v in vals)
    out = r.out(node.outputs[0], shape, lay, nonneg=all(v.nonneg or (v.const is not None and np.all(v.const >= 0))
                                                        for v in vals))
    r.op("CONCATENATION", ins, [out], {"axis": lay.index(axis), "activation": "NONE"})


def softmax(r: OnnxReader, node: Node) -> None:
    x = _act_input(r, node)
    rank = x.rank
    axis = int(node.attrs.get("axis", 1 if r.opset < 13 else -1))
    if axis < 0:
        axis += rank
    if not 0 <= axis < rank:
        raise r.fail(f"axis {node.attrs.get('axis')} for rank {rank}", f"axis in [-{rank}, {rank - 1}]")
    name = node.outputs[0]
    if r.opset < 13:
        # Opset < 13 normalizes over all dimensions from `axis` on (a 2-D [outer, inner] view).
        big = [i for i in range(axis, rank) if x.shape[i] > 1]
        if len(big) > 1:
            src = r.rep(x.name)
            inner = int(np.prod(x.shape[axis:], dtype=np.int64))
            flat = (int(np.prod(x.shape[:axis], dtype=np.int64)), inner)
            t2 = r.like(src, f"{name}_2d", flat)
            r.op("RESHAPE", [src, r.int32(flat, f"{name}_2d_shape")], [t2])
            s2 = r.like(src, f"{name}_softmax_2d", flat)
            r.op("SOFTMAX", [t2], [s2], {"beta": 1.0})
            out = r.out(name, x.shape, ident(rank), nonneg=True, like=src)
            r.op("RESHAPE", [s2, r.int32(x.shape, f"{name}_shape")], [out])
            return
        axis = big[0] if big else rank - 1
    lay, tid = r.primary(x.name)
    if isinstance(lay, Flat):
        if axis != 1:
            lay, tid = ident(rank), r.rep(x.name)
    elif lay[-1] != axis:
        lay = tuple(a for a in lay if a != axis) + (axis,)  # move the axis last (a RESHAPE if it is free)
        tid = r.rep(x.name, lay)
    out = r.out(name, x.shape, lay, nonneg=True, like=tid)
    r.op("SOFTMAX", [tid], [out], {"beta": 1.0})


def pad(r: OnnxReader, node: Node) -> None:
    x = _act_input(r, node)
    mode = node.attrs.get("mode", "constant")
    if mode != "constant":
        raise r.fail(f"mode={mode}", "constant padding")
    rank = x.rank
    if r.opset < 11:
        pads = [int(p) for p in node.attrs.get("pads", [])]
        value = float(node.attrs.get("value", 0.0))
        axes = list(range(rank))
    else:
        pads = [int(p) for p in r.const_of(node.inputs[1], "pads").reshape(-1)]
        value = 0.0
        if len(node.inputs) > 2 and node.inputs[2]:
            value = float(r.const_of(node.inputs[2], "constant_value").reshape(-1)[0])
        axes = list(range(rank))
        if len(node.inputs) > 3 and node.inputs[3]:
            axes = [int(a) % rank for a in r.const_of(node.inputs[3], "axes").reshape(-1)]
    if len(pads) != 2 * len(axes):
        raise r.fail(f"{len(pads)} pads for {len(axes)} axes", "2 pads per axis")
    if value != 0.0:
        raise r.fail(f"constant_value {value}", "zero padding (TFLite PAD)")
    if min(pads, default=0) < 0:
        raise r.fail(f"negative pads {pads}", "pads >= 0")
    full = [[0, 0] for _ in range(rank)]
    for i, a in enumerate(axes):
        full[a] = [pads[i], pads[i + len(axes)]]
    lay, tid = r.primary(x.name)
    if isinstance(lay, Flat):
        lay, tid = ident(rank), r.rep(x.name)
    shape = tuple(d + full[i][0] + full[i][1] for i, d in enumerate(x.shape))
    if shape == x.shape:
        alias(r, node)
        return
    out = r.out(node.outputs[0], shape, lay, nonneg=x.nonneg, like=tid)
    r.op("PAD", [tid, r.int32([full[a] for a in lay], f"{node.outputs[0]}_paddings")], [out])


def reduce_mean(r: OnnxReader, node: Node) -> None:
    x = _act_input(r, node)
    rank = x.rank
    keep = bool(node.attrs.get("keepdims", 1))
    axes = _axes(r, node, 18)
    if axes is None or axes == []:
        if r.opset >= 18 and node.attrs.get("noop_with_empty_axes", 0):
            alias(r, node)
            return
        axes = list(range(rank))
    axes = sorted({a + rank if a < 0 else a for a in axes})
    if any(not 0 <= a < rank for a in axes):
        raise r.fail(f"axes {axes} for rank {rank}", f"axes in [-{rank}, {rank - 1}]")
    lay, tid = r.primary(x.name)
    if isinstance(lay, Flat):
        lay, tid = ident(rank), r.rep(x.name)
    ir_axes = sorted(lay.index(a) for a in axes)
    if keep:
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        out_lay = lay
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        kept = [a for a in range(rank) if a not in axes]
        out_lay = tuple(kept.index(lay[i]) for i in range(rank) if i not in ir_axes)
    out = r.out(node.outputs[0], shape, out_lay, nonneg=x.nonneg, like=tid)
    r.op("MEAN", [tid, r.int32(ir_axes, f"{node.outputs[0]}_axes")], [out], {"keep_dims": keep})


def _identity(r: OnnxReader, node: Node) -> None:
    alias(r, node)


HANDLERS = {
    "Conv": conv, "ConvTranspose": conv_transpose, "Gemm": gemm, "MatMul": matmul,
    "Add": add, "Sub": sub, "Mul": mul, "Div": div,
    "Relu": relu, "Clip": clip, "LeakyRelu": leaky_relu, "PRelu": prelu, "Sigmoid": sigmoid, "Tanh": tanh,
    "HardSigmoid": hard_sigmoid, "HardSwish": hard_swish,
    "MaxPool": max_pool, "AveragePool": average_pool, "GlobalAveragePool": global_average_pool,
    "GlobalMaxPool": global_max_pool, "BatchNormalization": batch_norm,
    "Reshape": reshape, "Flatten": flatten, "Squeeze": squeeze, "Unsqueeze": unsqueeze, "Transpose": transpose,
    "Concat": concat, "Softmax": softmax, "Pad": pad, "ReduceMean": reduce_mean,
    "Identity": _identity, "Dropout": dropout,
}
# Constant, Shape, Size and any node whose inputs are all constant are folded.
SUPPORTED = sorted([*HANDLERS, "Constant", "Shape (static)", "constant subgraphs"])

