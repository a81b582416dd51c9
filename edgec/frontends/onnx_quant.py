"""Already-quantized ONNX models -> int8 IR that keeps their quantization parameters.

Two forms, as onnxruntime.quantization.quantize_static writes them:

- QDQ: float ops between DequantizeLinear (inputs, weights, bias) and QuantizeLinear (output). A float op
  whose activation inputs are dequantized values and whose output only feeds QuantizeLinear nodes with
  one set of parameters becomes the int8 TFLite op with those output parameters; the Q/DQ pairs around
  it disappear (their IR tensor is the op's int8 tensor).
- QOperator: QLinearConv, QLinearMatMul, QGemm, QLinearAdd, QLinearMul (com.microsoft) on raw quantized
  tensors, with QuantizeLinear/DequantizeLinear at the float boundaries.

Layout-only ops (MaxPool, Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Pad, AveragePool, global
pools, Relu) on quantized values stay int8 with their input's parameters, as TFLite requires; a
following QuantizeLinear with other parameters becomes a requantizing QUANTIZE. Any other float op
between a DequantizeLinear and a QuantizeLinear is computed in float (DEQUANTIZE before, QUANTIZE after).

uint8 tensors become int8 exactly: q - 128 with zero point - 128 (real = s * (q - zp) is unchanged).
Weights must be symmetric (zero point 0) for convolutions, as TFLite's int8 kernels assume.
"""

from __future__ import annotations

import numpy as np

from edgec.frontends import onnx_ops
from edgec.frontends.onnx_reader import NHWC, Flat, Node, OnnxReader, QParams, Value, ident, layout_shape
from edgec.ir.graph import Quant

QOPERATORS = {"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearAveragePool",
              "QLinearGlobalAveragePool"}
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", *QOPERATORS}
# Float ops that only move or select quantized values: int8 in, int8 out with the input's parameters.
_TRANSPARENT = {"MaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Dropout",
                "Pad", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "Relu"}


def is_quantized(nodes: list[Node]) -> bool:
    return any(n.op_type in QUANT_OPS for n in nodes)


def prepare(r: OnnxReader, nodes: list[Node]) -> None:
    """Fold Constant nodes first: QuantizeLinear parameters must be known when their producer is converted."""
    for n in nodes:
        if n.op_type == "Constant":
            r.node = n
            onnx_ops.fold(r, n)
    r.node = None


def handles(r: OnnxReader, node: Node) -> bool:
    if not r.quantized:
        return False
    if node.op_type in QUANT_OPS:
        return True
    vals = [r.values.get(i) for i in node.inputs if i]
    if all(v is not None and v.const is not None and v.const_qp is None for v in vals):
        return False  # plain constant folding
    return any(v is not None and (v.qp is not None or v.const_qp is not None) for v in vals)


# ---- quantization parameters ---------------------------------------------------------------------------
def _qparams(r: OnnxReader, node: Node, si: int, zi: int, axis: int | None = None) -> tuple[QParams, str]:
    """(parameters in the int8 domain, ONNX quantized dtype) from scale/zero-point inputs si, zi."""
    s = r.const_of(node.inputs[si], "scale").astype(np.float32).reshape(-1)
    if zi < len(node.inputs) and node.inputs[zi]:
        zpv = r.const_of(node.inputs[zi], "zero point")
        dtype = str(zpv.dtype)
        zp = zpv.astype(np.int64).reshape(-1)
    else:
        dtype, zp = "uint8", np.zeros(s.size, np.int64)
    if dtype == "uint8":
        zp = zp - 128
    elif dtype not in ("int8", "int32"):
        raise r.fail(f"{dtype} quantization", "int8 and uint8 (int32 for biases)")
    if zp.size == 1 and s.size > 1:
        zp = np.full(s.size, zp[0], np.int64)
    return QParams(s, zp, axis if s.size > 1 else None), dtype


def _int8_data(a: np.ndarray) -> np.ndarray:
    """ONNX int8/uint8/int32 data in the int8 domain (uint8 shifted by -128)."""
    if a.dtype == np.uint8:
        return (a.astype(np.int16) - 128).astype(np.int8)
    return a


def target_qp(r: OnnxReader, name: str) -> QParams | None:
    """The parameters of the QuantizeLinear nodes that are the only consumers of `name`, if they agree."""
    cons = r.consumers.get(name, [])
    if not cons or name in r.graph_outputs:
        return None
    found = None
    for n in cons:
        if n.op_type != "QuantizeLinear" or n.inputs[0] != name or n.attrs.get("axis") not in (None, 1):
            return None
        qp, dtype = _qparams(r, n, 1, 2)
        if qp.axis is not None or dtype not in ("int8", "uint8") or (found is not None and not found.same(qp)):
            return None
        found = qp
    return found


def _dequantized(v: Value) -> np.ndarray:
    """Float value of a quantized constant."""
    qp = v.const_qp
    data = v.const.astype(np.float64)
    if qp.axis is not None:
        shape = [1] * data.ndim
        shape[qp.axis] = -1
        return ((data - qp.zero_point.reshape(shape)) * qp.scale.reshape(shape)).astype(np.float32)
    return ((data - qp.zero_point[0]) * qp.scale[0]).astype(np.float32)


# ---- node conversion -----------------------------------------------------------------------------------
def convert_node(r: OnnxReader, node: Node) -> None:
    handler = {"QuantizeLinear": _quantize, "DequantizeLinear": _dequantize, "QLinearConv": _qlinear_conv,
               "QLinearMatMul": _qlinear_matmul, "QGemm": _qgemm, "QLinearAdd": _qlinear_binary,
               "QLinearMul": _qlinear_binary, "QLinearAveragePool": _qlinear_pool,
               "QLinearGlobalAveragePool": _qlinear_pool}.get(node.op_type)
    if handler is not None:
        if node.op_type in QOPERATORS and node.domain not in ("", "ai.onnx", "com.microsoft"):
            raise r.fail(f"domain '{node.domain}'", "com.microsoft quantized operators")
        handler(r, node)
        return
    if all(r.is_const(i) for i in node.inputs if i):  # e.g. a Reshape of dequantized weights
        onnx_ops.fold(r, Node(node.index, node.op_type, node.domain, node.name,
                              [_float_view(r, i) for i in node.inputs], node.outputs, node.attrs, node.proto))
        return
    if node.op_type == "Conv" and _qdq_conv(r, node):
        return
    if node.op_type in ("Gemm", "MatMul") and _qdq_fc(r, node):
        return
    if node.op_type in ("Add", "Mul") and _qdq_binary(r, node):
        return
    if node.op_type in _TRANSPARENT and _transparent(r, node):
        return
    _float_fallback(r, node)


def _quantize(r: OnnxReader, node: Node) -> None:
    x = r.value(node.inputs[0])
    qp, dtype = _qparams(r, node, 1, 2, int(node.attrs.get("axis", 1)))
    name = node.outputs[0]
    if x.const is not None:
        data = x.const.astype(np.float32)
        if x.const_qp is not None:
            data = _dequantized(x)
        if qp.axis is not None:
            shape = [1] * data.ndim
            shape[qp.axis] = -1
            scale, zp = qp.scale.reshape(shape), qp.zero_point.reshape(shape)
        else:
            scale, zp = qp.scale[0], qp.zero_point[0]
        lo, hi = (-128, 127) if dtype in ("int8", "uint8") else (-(2**31), 2**31 - 1)
        q = np.clip(np.rint(data / scale) + zp, lo, hi)  # the int8-domain value (uint8 minus 128)
        r.values[name] = Value(name, x.shape, dtype, const=q.astype(np.int8 if hi == 127 else np.int32),
                               const_qp=qp)
        return
    if qp.axis is not None:
        raise r.fail(f"per-axis quantization (axis {qp.axis}) of activation '{x.name}'",
                     "per-tensor quantization of activations")
    if x.qp is not None and x.qp.same(qp):
        onnx_ops.alias(r, node)  # the producer already wrote these int8 values
        r.values[name].dtype = dtype
        return
    lay, src = r.primary(x.name)
    out = r.tensor(name, r.tensors[src].shape, "int8", quant=qp.quant())
    r.op("QUANTIZE", [src], [out])  # float -> int8, or an int8 -> int8 requantization
    v = r.define(name, x.shape, lay, out, qp=qp, nonneg=bool(qp.zero_point[0] == -128))
    v.dtype = dtype


def _dequantize(r: OnnxReader, node: Node) -> None:
    x = r.value(node.inputs[0])
    qp, _ = _qparams(r, node, 1, 2, int(node.attrs.get("axis", 1)))
    name = node.outputs[0]
    if x.const is not None:
        data = _int8_data(x.const)
        r.values[name] = Value(name, x.shape, "float32", const=data, const_qp=qp)
        return
    if x.qp is None:
        raise r.fail(f"input '{x.name}' is not a quantized tensor", "DequantizeLinear of int8/uint8 values")
    if not x.qp.same(qp):
        raise r.fail(f"parameters (scale {qp.scale.tolist()}, zero point {qp.zero_point.tolist()}) differ from "
                     f"the ones '{x.name}' was quantized with", "DequantizeLinear with its input's parameters")
    onnx_ops.alias(r, node)
    r.values[name].dtype = "float32"


def _weights(r: OnnxReader, name: str, what: str, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 data, scales) of a quantized constant weight with symmetric quantization (zero point 0)."""
    v = r.value(name)
    if v.const is None or v.const_qp is None:
        raise r.fail(f"{what} '{name}' is not a quantized constant", f"constant int8 {what}")
    qp = v.const_qp
    if v.const.dtype != np.int8:
        raise r.fail(f"{what} '{name}' is {v.const.dtype}", f"int8 or uint8 {what}")
    if qp.axis is not None and qp.axis != axis:
        raise r.fail(f"{what} '{name}' quantized per axis {qp.axis}", f"per-tensor or per-axis {axis} (output "
                     "channels)")
    return v.const, qp


def _bias_ints(r: OnnxReader, name: str, want_scale: np.ndarray, raw: bool = False) -> np.ndarray | None:
    """The int32 bias, re-expressed in scale s_x * s_w when the model used another scale.

    `raw`: a QOperator's int32 bias, already in that scale."""
    if not name:
        return None
    v = r.value(name)
    if v.const is None:
        raise r.fail(f"bias '{name}' is computed at run time", "a constant bias")
    if raw and v.const_qp is None:
        if v.const.dtype != np.int32 or v.const.size != want_scale.size:
            raise r.fail(f"bias '{name}' is {v.const.dtype} with {v.const.size} values", "an int32 bias per output "
                         "channel")
        return v.const.reshape(-1)
    if v.const_qp is None:
        real = v.const.astype(np.float64).reshape(-1)  # a float bias: quantize it as TFLite does
    else:
        if v.const.dtype == np.int32 and np.allclose(v.const_qp.scale, want_scale, rtol=1e-6, atol=0) \
                and not np.any(v.const_qp.zero_point):
            return v.const.reshape(-1)
        real = _dequantized(v).astype(np.float64).reshape(-1)
    q = np.rint(real / want_scale.astype(np.float64))
    return np.clip(q, -(2**31), 2**31 - 1).astype(np.int32)


def _conv_out(r: OnnxReader, node: Node, x: Value, w: np.ndarray, wqp: QParams, bias_name: str,
              y_qp: QParams, out_dtype: str, raw_bias: bool = False) -> None:
    if np.any(wqp.zero_point):
        raise r.fail("weights with a non-zero zero point", "symmetric int8 weights (zero point 0), as TFLite's "
                     "int8 convolution needs")
    x_scale = np.float32(x.qp.scale[0])
    bias = _bias_ints(r, bias_name, x_scale * wqp.scale.astype(np.float32) * np.ones(w.shape[0], np.float32),
                      raw_bias)
    onnx_ops.conv_core(r, node, x, w, bias, node.outputs[0], w_scale=wqp.scale, y_qp=y_qp, out_dtype=out_dtype)


def _qdq_conv(r: OnnxReader, node: Node) -> bool:
    x = r.value(node.inputs[0])
    y_qp = target_qp(r, node.outputs[0])
    wv = r.value(node.inputs[1])
    if x.qp is None or y_qp is None or wv.const_qp is None or wv.const.dtype != np.int8:
        return False
    w, wqp = _weights(r, node.inputs[1], "weights", 0)
    _conv_out(r, node, x, w, wqp, node.inputs[2] if len(node.inputs) > 2 else "", y_qp, "float32")
    return True


def _raw_input(r: OnnxReader, node: Node, i: int, si: int, zi: int) -> Value:
    """A QOperator's quantized activation input, checked against its stated parameters."""
    x = r.value(node.inputs[i])
    qp, _ = _qparams(r, node, si, zi)
    if x.const is not None:
        if x.const_qp is None:
            x.const_qp = qp
            x.const = _int8_data(x.const)
        return x
    if x.qp is None:
        raise r.fail(f"input '{x.name}' is not quantized", "quantized inputs (from QuantizeLinear or a QLinear op)")
    if not x.qp.same(qp):
        raise r.fail(f"input '{x.name}' is given parameters other than it was quantized with",
                     "consistent quantization parameters")
    return x


def _raw_weights(r: OnnxReader, node: Node, i: int, si: int, zi: int, axis: int) -> tuple[np.ndarray, QParams]:
    v = r.value(node.inputs[i])
    if v.const is None:
        raise r.fail(f"weights '{v.name}' are computed at run time", "constant weights")
    qp, _ = _qparams(r, node, si, zi, axis)
    if v.const_qp is None:
        v.const, v.const_qp = _int8_data(v.const), qp
    return _weights(r, v.name, "weights", axis)


def _qlinear_conv(r: OnnxReader, node: Node) -> None:
    x = _raw_input(r, node, 0, 1, 2)
    w, wqp = _raw_weights(r, node, 3, 4, 5, 0)
    y_qp, dtype = _qparams(r, node, 6, 7)
    _conv_out(r, node, x, w, wqp, node.inputs[8] if len(node.inputs) > 8 else "", y_qp, dtype, raw_bias=True)


def _fc_out(r: OnnxReader, node: Node, a: Value, wmat: np.ndarray, wqp: QParams, bias_name: str, y_qp: QParams,
            out_dtype: str, raw_bias: bool = False) -> None:
    """FULLY_CONNECTED int8; `wmat` is [N, K] with per-tensor or per-row (axis 0) parameters."""
    a_scale = np.float32(a.qp.scale[0])
    bias = _bias_ints(r, bias_name, a_scale * wqp.scale.astype(np.float32) * np.ones(wmat.shape[0], np.float32),
                      raw_bias)
    wq = Quant(wqp.scale.astype(np.float32), wqp.zero_point.astype(np.int64), 0 if wqp.scale.size > 1 else None)
    if wqp.scale.size > 1 and np.any(wqp.zero_point):
        raise r.fail("per-channel weights with non-zero zero points", "symmetric per-channel weights")
    onnx_ops._fc(r, node, a, wmat, bias, out_name=node.outputs[0], w_quant=wq, y_qp=y_qp, out_dtype=out_dtype)


def _qdq_fc(r: OnnxReader, node: Node) -> bool:
    a = r.value(node.inputs[0])
    y_qp = target_qp(r, node.outputs[0])
    bv = r.value(node.inputs[1])
    if a.qp is None or y_qp is None or bv.const_qp is None or bv.const.dtype != np.int8 or bv.const.ndim != 2:
        return False
    if node.op_type == "Gemm":
        if node.attrs.get("transA", 0) or float(node.attrs.get("alpha", 1.0)) != 1.0 or \
                float(node.attrs.get("beta", 1.0)) != 1.0:
            return False
        trans_b = bool(node.attrs.get("transB", 0))
    else:
        trans_b = False
    b, bqp = _weights(r, node.inputs[1], "weights", 0 if trans_b else 1)
    _fc_out(r, node, a, b if trans_b else b.T, bqp, node.inputs[2] if len(node.inputs) > 2 else "", y_qp,
            "float32")
    return True


def _qlinear_matmul(r: OnnxReader, node: Node) -> None:
    a = _raw_input(r, node, 0, 1, 2)
    b, bqp = _raw_weights(r, node, 3, 4, 5, 1)
    if b.ndim != 2:
        raise r.fail(f"B shape {list(b.shape)}", "a constant 2-D B")
    y_qp, dtype = _qparams(r, node, 6, 7)
    _fc_out(r, node, a, b.T, bqp, "", y_qp, dtype)


def _qgemm(r: OnnxReader, node: Node) -> None:
    if node.attrs.get("transA", 0) or float(node.attrs.get("alpha", 1.0)) != 1.0:
        raise r.fail("transA=1 or alpha != 1", "QGemm with transA=0 and alpha=1")
    if len(node.inputs) < 9 or not node.inputs[7]:
        raise r.fail("no output scale (float output)", "QGemm with a quantized output")
    a = _raw_input(r, node, 0, 1, 2)
    trans_b = bool(node.attrs.get("transB", 0))
    b, bqp = _raw_weights(r, node, 3, 4, 5, 0 if trans_b else 1)
    y_qp, dtype = _qparams(r, node, 7, 8)
    _fc_out(r, node, a, b if trans_b else b.T, bqp, node.inputs[6], y_qp, dtype, raw_bias=True)


def _binary_out(r: OnnxReader, node: Node, type_: str, an: str, bn: str, y_qp: QParams, dtype: str) -> None:
    a, b = r.value(an), r.value(bn)
    try:
        out_shape = tuple(np.broadcast_shapes(a.shape, b.shape))
    except ValueError:
        raise r.fail(f"shapes {list(a.shape)} and {list(b.shape)} do not broadcast", "broadcastable shapes") from None
    runtime = [v for v in (a, b) if v.const is None]
    if a.rank == b.rank == len(out_shape):
        lay = next((lay for lay in runtime[0].reps if all(lay in v.reps for v in runtime)), None)
        if lay is None:
            lay = NHWC if a.rank == 4 and any(NHWC in v.reps for v in runtime) else r.primary(runtime[0].name)[0]
        if isinstance(lay, Flat) and a.shape != b.shape:
            lay = ident(a.rank)
    else:
        lay = ident(len(out_shape))

    def operand(v: Value) -> int:
        if v.const is not None and v.rank < len(out_shape):
            data = v.const.reshape((1,) * (len(out_shape) - v.rank) + v.const.shape)
            tmp = Value(f"{v.name}#r{len(out_shape)}", data.shape, v.dtype, const=data, const_qp=v.const_qp)
            r.values[tmp.name] = tmp
            return r.rep(tmp.name, lay)
        return r.rep(v.name, lay if v.rank == len(out_shape) else ident(v.rank))

    ins = [operand(a), operand(b)]
    out = r.tensor(node.outputs[0], layout_shape(out_shape, lay), "int8", quant=y_qp.quant())
    v = r.define(node.outputs[0], out_shape, lay, out, qp=y_qp)
    v.dtype = dtype
    r.op(type_, ins, [out], {"activation": "NONE"})


def _qdq_binary(r: OnnxReader, node: Node) -> bool:
    a, b = r.value(node.inputs[0]), r.value(node.inputs[1])
    y_qp = target_qp(r, node.outputs[0])
    ok = all(v.qp is not None or (v.const is not None and v.const_qp is not None and v.const.dtype == np.int8)
             for v in (a, b))
    if y_qp is None or not ok or (a.const is not None and b.const is not None):
        return False
    _binary_out(r, node, node.op_type.upper(), a.name, b.name, y_qp, "float32")
    return True


def _qlinear_binary(r: OnnxReader, node: Node) -> None:
    _raw_input(r, node, 0, 1, 2)
    _raw_input(r, node, 3, 4, 5)
    y_qp, dtype = _qparams(r, node, 6, 7)
    _binary_out(r, node, "ADD" if node.op_type == "QLinearAdd" else "MUL", node.inputs[0], node.inputs[3], y_qp,
                dtype)


def _qlinear_pool(r: OnnxReader, node: Node) -> None:
    """QLinear(Global)AveragePool: the int8 pool keeps the input's parameters; a QUANTIZE requantizes to the
    output's when they differ."""
    if node.attrs.get("channels_last", 0):
        raise r.fail("channels_last=1", "channels_last=0 (NCHW)")
    x = _raw_input(r, node, 0, 1, 2)
    y_qp, dtype = _qparams(r, node, 3, 4)
    op_type = node.op_type.replace("QLinear", "")
    attrs = {k: v for k, v in node.attrs.items() if k != "channels_last"}
    tmp = f"{node.outputs[0]}_pooled"
    _transparent(r, Node(node.index, op_type, "", node.name, [x.name], [tmp], attrs, node.proto), y_qp)
    pooled = r.values[tmp]
    if pooled.qp.same(y_qp):
        r.values[node.outputs[0]] = Value(node.outputs[0], pooled.shape, dtype, reps=pooled.reps, qp=y_qp)
        return
    lay, src = r.primary(tmp)
    out = r.tensor(node.outputs[0], r.tensors[src].shape, "int8", quant=y_qp.quant())
    r.op("QUANTIZE", [src], [out])
    v = r.define(node.outputs[0], pooled.shape, lay, out, qp=y_qp)
    v.dtype = dtype


def _transparent(r: OnnxReader, node: Node, out_qp: QParams | None = None) -> bool:
    """Run the float handler on the int8 tensors: these ops keep the input's quantization, except MEAN,
    which requantizes itself, so it gets the output's parameters (`out_qp` or its QuantizeLinear's)."""
    x = r.value(node.inputs[0])
    if x.qp is None or x.const is not None:
        return False
    if node.op_type == "Pad" and len(node.inputs) > 2 and node.inputs[2]:
        return False  # a constant_value would be given in the quantized domain
    onnx_ops.HANDLERS[node.op_type](r, node)
    v = r.values[node.outputs[0]]
    v.qp, v.dtype = x.qp, x.dtype
    if node.op_type in ("GlobalAveragePool", "ReduceMean"):
        target = out_qp or target_qp(r, node.outputs[0])
        mean = next((op for op in reversed(r.ops) if op.type == "MEAN"), None)
        if target is not None and mean is not None and mean.outputs[0] in v.reps.values():
            r.tensors[mean.outputs[0]].quant = target.quant()
            v.qp = target
    if v.qp.zero_point[0] == -128:
        v.nonneg = True
    return True


def _float_view(r: OnnxReader, name: str) -> str:
    """The name of a float version of value `name` (DEQUANTIZE for quantized tensors)."""
    if not name:
        return name
    v = r.value(name)
    if v.qp is None and v.const_qp is None:
        return name
    fname = f"{name}#float"
    if fname in r.values:
        return fname
    if v.const is not None:
        r.values[fname] = Value(fname, v.shape, "float32", const=_dequantized(v))
        return fname
    lay, src = r.primary(name)
    out = r.tensor(f"{name}_float", r.tensors[src].shape, "float32")
    r.op("DEQUANTIZE", [src], [out])
    r.define(fname, v.shape, lay, out)
    return fname


def _float_fallback(r: OnnxReader, node: Node) -> None:
    handler = onnx_ops.HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if handler is None:
        raise r.fail("this operator in a quantized model", "QuantizeLinear, DequantizeLinear, "
                     f"{', '.join(sorted(QOPERATORS))} and the float ops: {', '.join(onnx_ops.SUPPORTED)}")
    fnode = Node(node.index, node.op_type, node.domain, node.name, [_float_view(r, i) for i in node.inputs],
                 node.outputs, node.attrs, node.proto)
    handler(r, fnode)


def output_rep(r: OnnxReader, name: str, layout) -> int:
    """A graph output: float (DEQUANTIZE of int8 values that ONNX sees as float) or int8."""
    v = r.value(name)
    if v.qp is None:
        return r.rep(name, layout)
    if v.dtype == "uint8":
        raise r.fail(f"graph output '{name}' is uint8", "float32 or int8 graph outputs")
    tid = r.rep(name, layout)
    if v.dtype != "float32":
        return tid
    out = r.tensor(name, r.tensors[tid].shape, "float32")
    r.op("DEQUANTIZE", [tid], [out])
    return out
