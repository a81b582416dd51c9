"""Read a TFLite flatbuffer (schema v3) into edgec's IR.

Every construct edgec cannot compile is rejected here, at build time, with the op index and name,
what was found and what is supported.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import tflite
from tflite.ActivationFunctionType import ActivationFunctionType
from tflite.BuiltinOperator import BuiltinOperator
from tflite.Padding import Padding
from tflite.TensorType import TensorType

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Op, Quant, Tensor

_OP_NAMES = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {
    TensorType.INT8: "int8", TensorType.UINT8: "uint8", TensorType.INT16: "int16",
    TensorType.INT32: "int32", TensorType.INT64: "int64", TensorType.FLOAT32: "float32",
    TensorType.BOOL: "bool",
}
_TYPE_NAMES_ALL = {v: k for k, v in vars(TensorType).items() if not k.startswith("_")}
_NP_DTYPES = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32,
              "int64": np.int64, "float32": np.float32, "bool": np.bool_}
_ACTIVATIONS = {ActivationFunctionType.NONE: "NONE", ActivationFunctionType.RELU: "RELU",
                ActivationFunctionType.RELU6: "RELU6", ActivationFunctionType.RELU_N1_TO_1: "RELU_N1_TO_1"}
_PADDINGS = {Padding.SAME: "SAME", Padding.VALID: "VALID"}


def _table(op, cls):
    """The op's builtin options table as `cls`, or None when the model omits it (defaults apply)."""
    raw = op.BuiltinOptions()
    if raw is None:
        return None
    opts = cls()
    opts.Init(raw.Bytes, raw.Pos)
    return opts


def _act(opts) -> str:
    if opts is None:
        return "NONE"
    code = opts.FusedActivationFunction()
    if code not in _ACTIVATIONS:
        raise ValueError(f"fused activation code {code} (supported: NONE, RELU, RELU6, RELU_N1_TO_1)")
    return _ACTIVATIONS[code]


def _conv_opts(op, cls, depthwise: bool) -> dict:
    o = _table(op, cls)
    if o is None:
        raise ValueError("missing builtin options")
    attrs = {"padding": _PADDINGS[o.Padding()], "stride_h": o.StrideH(), "stride_w": o.StrideW(),
             "dilation_h": o.DilationHFactor(), "dilation_w": o.DilationWFactor(), "activation": _act(o)}
    if depthwise:
        attrs["depth_multiplier"] = o.DepthMultiplier()
    return attrs


def _pool_opts(op) -> dict:
    o = _table(op, tflite.Pool2DOptions)
    if o is None:
        raise ValueError("missing builtin options")
    return {"padding": _PADDINGS[o.Padding()], "stride_h": o.StrideH(), "stride_w": o.StrideW(),
            "filter_h": o.FilterHeight(), "filter_w": o.FilterWidth(), "activation": _act(o)}


def _act_only(cls):
    return lambda op: {"activation": _act(_table(op, cls))}


def _fc_opts(op) -> dict:
    o = _table(op, tflite.FullyConnectedOptions)
    if o is not None and o.WeightsFormat() != 0:
        raise ValueError("shuffled FULLY_CONNECTED weights (supported: DEFAULT weights format)")
    return {"activation": _act(o), "keep_num_dims": bool(o.KeepNumDims()) if o else False}


def _softmax_opts(op) -> dict:
    o = _table(op, tflite.SoftmaxOptions)
    return {"beta": float(o.Beta()) if o else 1.0}


def _mean_opts(op) -> dict:
    o = _table(op, tflite.ReducerOptions)
    return {"keep_dims": bool(o.KeepDims()) if o else False}


def _concat_opts(op) -> dict:
    o = _table(op, tflite.ConcatenationOptions)
    return {"axis": o.Axis() if o else 0, "activation": _act(o)}


def _squeeze_opts(op) -> dict:
    o = _table(op, tflite.SqueezeOptions)
    dims = [] if o is None or o.SqueezeDimsIsNone() else [int(d) for d in o.SqueezeDimsAsNumpy()]
    return {"squeeze_dims": dims}


def _strided_slice_opts(op) -> dict:
    o = _table(op, tflite.StridedSliceOptions)
    names = ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")
    attrs = {n: 0 for n in names}
    attrs["offset"] = False
    if o is not None:
        attrs.update(begin_mask=o.BeginMask(), end_mask=o.EndMask(), ellipsis_mask=o.EllipsisMask(),
                     new_axis_mask=o.NewAxisMask(), shrink_axis_mask=o.ShrinkAxisMask(), offset=bool(o.Offset()))
    return attrs


def _no_opts(op) -> dict:
    return {}


def _leaky_relu_opts(op) -> dict:
    o = _table(op, tflite.LeakyReluOptions)
    return {"alpha": float(o.Alpha()) if o else 0.0}  # TFLM leaves alpha zeroed without options


def _transpose_conv_opts(op) -> dict:
    o = _table(op, tflite.TransposeConvOptions)
    if o is None:
        raise ValueError("missing builtin options")
    return {"padding": _PADDINGS[o.Padding()], "stride_h": o.StrideH(), "stride_w": o.StrideW(),
            "activation": _act(o)}


# The ops edgec reads, with their option readers (every one has a float reference; int8 and float32
# kernels are chosen at lowering, which rejects what it cannot compile).
OPTION_READERS = {
    "CONV_2D": lambda op: _conv_opts(op, tflite.Conv2DOptions, False),
    "DEPTHWISE_CONV_2D": lambda op: _conv_opts(op, tflite.DepthwiseConv2DOptions, True),
    "FULLY_CONNECTED": _fc_opts,
    "AVERAGE_POOL_2D": _pool_opts,
    "MAX_POOL_2D": _pool_opts,
    "ADD": _act_only(tflite.AddOptions),
    "SUB": _act_only(tflite.SubOptions),
    "MUL": _act_only(tflite.MulOptions),
    "RESHAPE": _no_opts,
    "SQUEEZE": _squeeze_opts,
    "SOFTMAX": _softmax_opts,
    "MEAN": _mean_opts,
    "PAD": _no_opts,
    "CONCATENATION": _concat_opts,
    "QUANTIZE": _no_opts,
    "DEQUANTIZE": _no_opts,
    "LOGISTIC": _no_opts,
    "TANH": _no_opts,
    "RELU": _no_opts,
    "RELU6": _no_opts,
    "HARD_SWISH": _no_opts,
    "STRIDED_SLICE": _strided_slice_opts,
    "TRANSPOSE": _no_opts,
    "LEAKY_RELU": _leaky_relu_opts,
    "PRELU": _no_opts,
    "TRANSPOSE_CONV": _transpose_conv_opts,
    "MAXIMUM": _no_opts,
    "MINIMUM": _no_opts,
    "DIV": _act_only(tflite.DivOptions),
}
SUPPORTED_OPS = tuple(OPTION_READERS)
# Custom ops edgec reads: Vela's NPU partitions (CUSTOM with custom code 'ethos-u') become op type ETHOSU,
# inputs [command stream, read-only blob, scratch, scratch_fast, IFMs...], outputs the OFMs (docs/npu.md).
# Only built for targets with an `npu` table (edgec.npu); the lowering refuses them elsewhere.
CUSTOM_OPS = {"ethos-u": "ETHOSU"}


def read_tflite(path: str | Path) -> Graph:
    """Parse a .tflite file into a Graph. Raises EdgecError naming the file, op or byte offset."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EdgecError(f"{path}: cannot read model file: {e.strerror}") from None
    return parse_tflite(data, str(path))


def parse_tflite(data: bytes, source: str = "<bytes>") -> Graph:
    if len(data) < 8:
        raise EdgecError(f"{source}: file is {len(data)} bytes, too short for a TFLite flatbuffer "
                         "(expected at least 8 bytes with identifier 'TFL3' at byte offset 4)")
    if data[4:8] != b"TFL3":
        raise EdgecError(f"{source}: not a TFLite model: bytes 4..7 are {data[4:8]!r}, expected b'TFL3'")
    try:
        return _parse(data, source)
    except EdgecError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, KeyError, OverflowError, MemoryError) as e:
        offset = re.search(r"offset (-?\d+)", str(e))
        where = f" at byte offset {offset.group(1)}" if offset else ""
        raise EdgecError(f"{source}: malformed or truncated TFLite flatbuffer{where} (file is {len(data)} "
                         f"bytes): {e}") from None


def _check_range(source: str, what: str, start: int, size: int, total: int) -> None:
    if start < 0 or size < 0 or start + size > total:
        raise EdgecError(f"{source}: {what} spans bytes {start}..{start + size} but the file is {total} bytes "
                         "(truncated or malformed file)")


def _parse(data: bytes, source: str) -> Graph:
    model = tflite.Model.GetRootAsModel(data, 0)
    _check_range(source, "root table", struct.unpack_from("<I", data, 0)[0], 4, len(data))
    if model.Version() != 3:
        raise EdgecError(f"{source}: TFLite schema version {model.Version()} (supported: 3)")
    if model.SubgraphsLength() != 1:
        raise EdgecError(f"{source}: {model.SubgraphsLength()} subgraphs (supported: exactly 1; control flow "
                         "ops such as WHILE/IF are not supported)")
    sg = model.Subgraphs(0)
    tensors = [_read_tensor(model, sg, i, data, source) for i in range(sg.TensorsLength())]
    n = len(tensors)
    ops = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        if not 0 <= op.OpcodeIndex() < model.OperatorCodesLength():
            raise EdgecError(f"{source}: op #{i} has opcode index {op.OpcodeIndex()}, but the model has "
                             f"{model.OperatorCodesLength()} operator codes (malformed file)")
        opcode = model.OperatorCodes(op.OpcodeIndex())
        code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
        name = _OP_NAMES.get(code, f"builtin code {code}")
        ins = [int(x) for x in op.InputsAsNumpy()] if not op.InputsIsNone() else []
        outs = [int(x) for x in op.OutputsAsNumpy()] if not op.OutputsIsNone() else []
        for tid in ins + outs:
            if tid >= n or tid < -1:
                raise EdgecError(f"{source}: op #{i} {name} refers to tensor {tid}, but the model has {n} tensors")
        label = tensors[outs[0]].name if outs else ""
        if name == "CUSTOM":
            custom = opcode.CustomCode().decode(errors="replace") if opcode.CustomCode() else "?"
            if custom in CUSTOM_OPS:
                ops.append(Op(CUSTOM_OPS[custom], ins, outs, {}, index=i, name=label))
                continue
            name = f"CUSTOM ('{custom}')"
        if name not in OPTION_READERS:
            raise EdgecError(f"{source}: op #{i} {name} ('{label}') is not supported. Supported ops: "
                             + ", ".join(SUPPORTED_OPS))
        try:
            attrs = OPTION_READERS[name](op)
        except (ValueError, KeyError) as e:
            raise EdgecError(f"{source}: op #{i} {name} ('{label}'): unsupported options: {e}") from None
        ops.append(Op(name, ins, outs, attrs, index=i, name=label))
    inputs = [int(x) for x in sg.InputsAsNumpy()]
    outputs = [int(x) for x in sg.OutputsAsNumpy()]
    for tid in inputs + outputs:
        if not 0 <= tid < n:
            raise EdgecError(f"{source}: subgraph input/output refers to tensor {tid}, the model has {n} tensors")
    return Graph(tensors, ops, inputs, outputs, source)


def _read_tensor(model, sg, i: int, data: bytes, source: str) -> Tensor:
    t = sg.Tensors(i)
    name = t.Name().decode(errors="replace") if t.Name() else f"tensor{i}"
    type_code = t.Type()
    if type_code not in _TYPE_NAMES:
        raise EdgecError(f"{source}: tensor {i} '{name}' has dtype {_TYPE_NAMES_ALL.get(type_code, type_code)} "
                         f"(supported: {', '.join(sorted(set(_TYPE_NAMES.values())))})")
    dtype = _TYPE_NAMES[type_code]
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if not t.ShapeIsNone() else ()
    sig = [int(d) for d in t.ShapeSignatureAsNumpy()] if not t.ShapeSignatureIsNone() else []
    # shape_signature often says -1 for the batch while shape holds the concrete size TFLM uses: fine.
    if any(d < 0 for d in shape) or (sig and len(sig) != len(shape)):
        raise EdgecError(f"{source}: tensor {i} '{name}' has a dynamic shape (shape {list(shape)}, signature "
                         f"{sig}); edgec needs static shapes: re-export the model with a fixed batch size")
    if t.Sparsity() is not None:
        raise EdgecError(f"{source}: tensor {i} '{name}' is sparse (supported: dense tensors)")
    quant = None
    q = t.Quantization()
    if q is not None and not q.ScaleIsNone() and q.ScaleLength() > 0:
        scale = q.ScaleAsNumpy().astype(np.float32)
        zp = q.ZeroPointAsNumpy().astype(np.int64) if not q.ZeroPointIsNone() else np.zeros(len(scale), np.int64)
        if len(zp) != len(scale):
            raise EdgecError(f"{source}: tensor {i} '{name}' has {len(scale)} scales but {len(zp)} zero points")
        # Real files carry a non-zero quantized_dimension on per-tensor parameters: only trust it per-axis.
        axis = int(q.QuantizedDimension()) if len(scale) > 1 else None
        if axis is not None and not (0 <= axis < len(shape) and shape[axis] == len(scale)):
            raise EdgecError(f"{source}: tensor {i} '{name}' has {len(scale)} per-axis scales on axis {axis} "
                             f"but shape {list(shape)}")
        quant = Quant(scale, zp, axis)
    const = None
    buf_index = t.Buffer()
    if buf_index >= model.BuffersLength():
        raise EdgecError(f"{source}: tensor {i} '{name}' refers to buffer {buf_index}, the model has "
                         f"{model.BuffersLength()}")
    if buf_index > 0:
        buf = model.Buffers(buf_index)
        tensor = Tensor(name, shape, dtype, quant)
        if buf.Offset() > 1:  # large-model layout: data stored after the flatbuffer
            _check_range(source, f"buffer {buf_index} of tensor {i} '{name}'", buf.Offset(), buf.Size(), len(data))
            raw = data[buf.Offset(): buf.Offset() + buf.Size()]
        elif not buf.DataIsNone() and buf.DataLength() > 0:
            raw = buf.DataAsNumpy().tobytes()
        else:
            raw = None
        if raw is not None:
            if len(raw) != tensor.nbytes:
                raise EdgecError(f"{source}: tensor {i} '{name}' (shape {list(shape)}, {dtype}) needs "
                                 f"{tensor.nbytes} bytes of data but its buffer has {len(raw)}")
            const = np.frombuffer(raw, dtype=_NP_DTYPES[dtype]).reshape(shape).copy()
    return Tensor(name, shape, dtype, quant, const)
