"""Write TFLite flatbuffers (schema v3, identifier "TFL3") without TensorFlow.

Used by tests and examples to make small models for the TFLM oracle. Tables are built with the
generated builder functions of the `tflite` package; builtin options are filled generically from a
dict of snake_case schema field names (e.g. {'stride_w': 2, 'padding': 'VALID'}).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

import flatbuffers
import numpy as np
from tflite.ActivationFunctionType import ActivationFunctionType
from tflite.BuiltinOperator import BuiltinOperator
from tflite.BuiltinOptions import BuiltinOptions
from tflite.FullyConnectedOptionsWeightsFormat import FullyConnectedOptionsWeightsFormat
from tflite.Padding import Padding
from tflite.TensorType import TensorType

SCHEMA_VERSION = 3

DTYPES: dict[str, tuple[int, type]] = {
    "int8": (TensorType.INT8, np.int8),
    "uint8": (TensorType.UINT8, np.uint8),
    "int16": (TensorType.INT16, np.int16),
    "int32": (TensorType.INT32, np.int32),
    "int64": (TensorType.INT64, np.int64),
    "float32": (TensorType.FLOAT32, np.float32),
    "float16": (TensorType.FLOAT16, np.float16),
    "bool": (TensorType.BOOL, np.bool_),
}

# op name -> (options table, defaults). Defaults replace schema defaults that TFLM cannot run with
# (stride 0, softmax beta 0.0); the table is always emitted because TFLM leaves params zeroed if absent.
OP_OPTIONS: dict[str, tuple[str, dict]] = {
    "CONV_2D": ("Conv2DOptions", {"padding": "SAME", "stride_w": 1, "stride_h": 1}),
    "DEPTHWISE_CONV_2D": (
        "DepthwiseConv2DOptions", {"padding": "SAME", "stride_w": 1, "stride_h": 1, "depth_multiplier": 1}),
    "FULLY_CONNECTED": ("FullyConnectedOptions", {"weights_format": "DEFAULT"}),
    "AVERAGE_POOL_2D": ("Pool2DOptions", {"padding": "VALID", "stride_w": 1, "stride_h": 1}),
    "MAX_POOL_2D": ("Pool2DOptions", {"padding": "VALID", "stride_w": 1, "stride_h": 1}),
    "ADD": ("AddOptions", {}),
    "SUB": ("SubOptions", {}),
    "MUL": ("MulOptions", {}),
    "RESHAPE": ("ReshapeOptions", {}),
    "SQUEEZE": ("SqueezeOptions", {}),
    "SOFTMAX": ("SoftmaxOptions", {"beta": 1.0}),
    "MEAN": ("ReducerOptions", {}),
    "SUM": ("ReducerOptions", {}),
    "REDUCE_MAX": ("ReducerOptions", {}),
    "PAD": ("PadOptions", {}),
    "PADV2": ("PadV2Options", {}),
    "CONCATENATION": ("ConcatenationOptions", {}),
    "QUANTIZE": ("QuantizeOptions", {}),
    "DEQUANTIZE": ("DequantizeOptions", {}),
    "HARD_SWISH": ("HardSwishOptions", {}),
    "STRIDED_SLICE": ("StridedSliceOptions", {}),
    "TRANSPOSE": ("TransposeOptions", {}),
    "LEAKY_RELU": ("LeakyReluOptions", {"alpha": 0.2}),
    "TRANSPOSE_CONV": ("TransposeConvOptions", {"padding": "SAME", "stride_w": 1, "stride_h": 1}),
    "DIV": ("DivOptions", {}),
    "MAXIMUM": ("MaximumMinimumOptions", {}),
    "MINIMUM": ("MaximumMinimumOptions", {}),
}

# Enum-valued option fields accept the enum member name as a string.
_ENUMS: dict[str, type] = {
    "padding": Padding,
    "fused_activation_function": ActivationFunctionType,
    "weights_format": FullyConnectedOptionsWeightsFormat,
    "quantized_bias_type": TensorType,
}


@dataclass
class WTensor:
    name: str
    shape: tuple
    dtype: str  # key of DTYPES
    data: np.ndarray | None = None  # constant data -> own buffer; None -> buffer 0 (activation)
    scale: list[float] | None = None
    zero_point: list[int] | None = None  # defaults to zeros, one per scale
    quantized_dimension: int = 0


@dataclass
class WOp:
    op: str | int  # BuiltinOperator name ('CONV_2D') or raw builtin code
    inputs: list[int]  # tensor indices, -1 = optional input absent
    outputs: list[int]
    options: dict = field(default_factory=dict)  # snake_case schema fields of the options table
    options_type: str | None = None  # e.g. 'GatherOptions' for an op not in OP_OPTIONS


def _mod(name: str) -> ModuleType:
    # `tflite/__init__` star-imports every module, so `tflite.Model` is the class; fetch the module itself.
    return importlib.import_module(f"tflite.{name}")


def _camel(snake: str) -> str:
    return "".join(w[:1].upper() + w[1:] for w in snake.split("_"))


def op_code(op: str | int) -> int:
    """Builtin operator code for a name like 'CONV_2D' (or pass an int through)."""
    if isinstance(op, int):
        return op
    try:
        return int(getattr(BuiltinOperator, op))
    except AttributeError:
        raise ValueError(f"unknown TFLite builtin operator {op!r}") from None


def _i32(b: flatbuffers.Builder, values) -> int:
    return b.CreateNumpyVector(np.asarray(values, dtype=np.int32).reshape(-1))


def _options(b: flatbuffers.Builder, table: str, opts: dict) -> int:
    mod = _mod(table)
    vectors = {}
    for k, v in opts.items():  # vectors must be finished before the table is started
        if isinstance(v, (list, tuple, np.ndarray)):
            if not hasattr(mod, f"Start{_camel(k)}Vector"):
                raise ValueError(f"{table} has no vector field {k!r}")
            vectors[k] = _i32(b, v)
    mod.Start(b)
    for k, v in opts.items():
        add = getattr(mod, f"Add{_camel(k)}", None)
        if add is None:
            raise ValueError(f"{table} has no field {k!r}")
        if k in vectors:
            v = vectors[k]
        elif isinstance(v, str):
            v = getattr(_ENUMS[k], v.upper())
        elif isinstance(v, (bool, np.bool_)):
            v = bool(v)
        elif isinstance(v, (float, np.floating)):
            v = float(v)
        else:
            v = int(v)
        add(b, v)
    return mod.End(b)


def _buffer_data(b: flatbuffers.Builder, raw: bytes) -> int:
    # Like CreateByteVector but 16-byte aligned so TFLM can read int32/float data in place.
    b.StartVector(1, len(raw), 16)
    b.head -= len(raw)
    b.Bytes[b.head:b.head + len(raw)] = raw
    return b.EndVector()


def write_tflite(tensors: list[WTensor], ops: list[WOp], inputs: list[int], outputs: list[int],
                 description: str = "edgec") -> bytes:
    """Serialize one subgraph to .tflite bytes. Constant tensors (data is not None) get their own buffer."""
    b = flatbuffers.Builder(1024)
    Buf, Ten, QP, Opc, Op, SG, M = (_mod(n) for n in (
        "Buffer", "Tensor", "QuantizationParameters", "OperatorCode", "Operator", "SubGraph", "Model"))

    # Buffers: 0 is the empty sentinel, then one per constant tensor in tensor order.
    buf_of: dict[int, int] = {}
    raws: list[bytes | None] = [None]
    for i, t in enumerate(tensors):
        if t.data is not None:
            arr = np.asarray(t.data, dtype=DTYPES[t.dtype][1])
            if arr.size != int(np.prod(t.shape, dtype=np.int64)):
                raise ValueError(f"tensor {t.name}: data size {arr.size} does not match shape {t.shape}")
            buf_of[i] = len(raws)
            raws.append(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
    buf_offs = []
    for raw in raws:
        data = _buffer_data(b, raw) if raw else None
        Buf.Start(b)
        if data is not None:
            Buf.AddData(b, data)
        buf_offs.append(Buf.End(b))

    ten_offs = []
    for i, t in enumerate(tensors):
        name, shape = b.CreateString(t.name), _i32(b, t.shape)
        quant = None
        if t.scale is not None:
            zp = t.zero_point if t.zero_point is not None else [0] * len(t.scale)
            if len(zp) != len(t.scale):
                raise ValueError(f"tensor {t.name}: {len(t.scale)} scales but {len(zp)} zero points")
            sc = b.CreateNumpyVector(np.asarray(t.scale, dtype=np.float32))
            zpv = b.CreateNumpyVector(np.asarray(zp, dtype=np.int64))
            QP.Start(b)
            QP.AddScale(b, sc)
            QP.AddZeroPoint(b, zpv)
            QP.AddQuantizedDimension(b, t.quantized_dimension)
            quant = QP.End(b)
        Ten.Start(b)
        Ten.AddShape(b, shape)
        Ten.AddType(b, DTYPES[t.dtype][0])
        Ten.AddBuffer(b, buf_of.get(i, 0))
        Ten.AddName(b, name)
        if quant is not None:
            Ten.AddQuantization(b, quant)
        ten_offs.append(Ten.End(b))

    codes: list[int] = []
    for o in ops:
        if op_code(o.op) not in codes:
            codes.append(op_code(o.op))
    code_offs = []
    for c in codes:
        Opc.Start(b)
        # deprecated_builtin_code is int8: codes >= 127 store the placeholder there and the real code in
        # builtin_code; readers take max() of the two.
        Opc.AddDeprecatedBuiltinCode(b, min(c, BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES))
        Opc.AddBuiltinCode(b, c)
        Opc.AddVersion(b, 1)
        code_offs.append(Opc.End(b))

    op_offs = []
    for o in ops:
        table, defaults = OP_OPTIONS.get(o.op, (None, {})) if isinstance(o.op, str) else (None, {})
        if o.options_type:
            table, defaults = o.options_type, {}
        if table is None and o.options:
            raise ValueError(f"op {o.op}: options given but no options table known (set options_type)")
        opt = _options(b, table, {**defaults, **o.options}) if table else None
        ins, outs = _i32(b, o.inputs), _i32(b, o.outputs)
        Op.Start(b)
        Op.AddOpcodeIndex(b, codes.index(op_code(o.op)))
        Op.AddInputs(b, ins)
        Op.AddOutputs(b, outs)
        if opt is not None:
            Op.AddBuiltinOptionsType(b, getattr(BuiltinOptions, table))
            Op.AddBuiltinOptions(b, opt)
        op_offs.append(Op.End(b))

    def vec(start, offs: list[int]) -> int:
        start(b, len(offs))
        for off in reversed(offs):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    tv, ov = vec(SG.StartTensorsVector, ten_offs), vec(SG.StartOperatorsVector, op_offs)
    iv, outv, sg_name = _i32(b, inputs), _i32(b, outputs), b.CreateString("main")
    SG.Start(b)
    SG.AddTensors(b, tv)
    SG.AddInputs(b, iv)
    SG.AddOutputs(b, outv)
    SG.AddOperators(b, ov)
    SG.AddName(b, sg_name)
    sg = SG.End(b)

    codes_v, sgs_v = vec(M.StartOperatorCodesVector, code_offs), vec(M.StartSubgraphsVector, [sg])
    bufs_v, desc = vec(M.StartBuffersVector, buf_offs), b.CreateString(description)
    M.Start(b)
    M.AddVersion(b, SCHEMA_VERSION)
    M.AddOperatorCodes(b, codes_v)
    M.AddSubgraphs(b, sgs_v)
    M.AddDescription(b, desc)
    M.AddBuffers(b, bufs_v)
    b.Finish(M.End(b), file_identifier=b"TFL3")
    return bytes(b.Output())
