"""Read an ONNX model into edgec's IR (NHWC, TFLite op names and attrs: docs/ir.md).

Float models become a float32 graph made of the same ops the TFLite reader produces; already-quantized
models (QDQ or QOperator, `onnx_quant.py`) become an int8 graph that keeps their quantization.

Layout: ONNX is NCHW, the IR is NHWC. Every ONNX value may have several IR tensors ("representations"),
one per layout: a permutation `perm` (IR tensor = numpy.transpose(onnx_value, perm); NHWC is (0, 2, 3, 1))
or `Flat(c, h, w)` (a 2-D [N, C*H*W] value stored in H, W, C order, what flattening an NHWC feature map
gives; a following fully-connected layer absorbs it by permuting its weight columns, at no run-time cost).
Ops ask for their inputs in the layout they need and a TRANSPOSE is only inserted when that
representation does not exist yet (a RESHAPE when the bytes are already in the right order).

Every construct edgec cannot compile is rejected here, at build time, with the file, the node name and
op type, what was found and what is supported (EdgecError, exit code 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Op, Quant, Tensor

NHWC = (0, 2, 3, 1)
INPUT_LAYOUTS = ("model", "nhwc")
MIN_OPSET, MAX_OPSET = 7, 22

# ONNX TensorProto element types edgec can hold.
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
                10: "float16", 11: "float64"}


@dataclass(frozen=True)
class Flat:
    """Layout of a [N, C*H*W] value whose IR tensor holds the elements in (H, W, C) order."""

    c: int
    h: int
    w: int

    def index(self) -> np.ndarray:
        """IR column j holds ONNX column index()[j]."""
        return np.arange(self.c * self.h * self.w).reshape(self.c, self.h, self.w).transpose(1, 2, 0).reshape(-1)


Layout = tuple | Flat


def ident(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def layout_shape(shape: tuple[int, ...], layout: Layout) -> tuple[int, ...]:
    if isinstance(layout, Flat):
        return tuple(shape)
    return tuple(shape[p] for p in layout)


def layout_array(a: np.ndarray, layout: Layout) -> np.ndarray:
    """The constant `a` (ONNX layout) as stored in `layout`."""
    if isinstance(layout, Flat):
        return np.ascontiguousarray(a[..., layout.index()])
    return np.ascontiguousarray(np.transpose(a, layout))


def same_memory(shape: tuple[int, ...], a: Layout, b: Layout) -> bool:
    """True when the two representations hold the elements in the same order (a RESHAPE converts)."""
    def order(lay: Layout) -> list | None:
        if isinstance(lay, Flat):
            if lay.c > 1 and lay.h * lay.w > 1:
                return None  # H, W, C order really differs from C, H, W
            lay = (0, 1)
        return [p for p in lay if shape[p] > 1]
    oa, ob = order(a), order(b)
    return oa is not None and oa == ob


@dataclass
class QParams:
    """Quantization of an ONNX int8/uint8 value or of a DequantizeLinear output, already in int8 form."""

    scale: np.ndarray  # float32
    zero_point: np.ndarray  # int64, int8 domain (uint8 zero points minus 128)
    axis: int | None = None  # ONNX axis for per-axis parameters

    def quant(self, axis: int | None = None) -> Quant:
        return Quant(self.scale.astype(np.float32), self.zero_point.astype(np.int64),
                     axis if self.axis is not None else None)

    def same(self, other: QParams | None) -> bool:
        return (other is not None and self.axis == other.axis and self.scale.shape == other.scale.shape
                and bool(np.all(self.scale.astype(np.float32) == other.scale.astype(np.float32)))
                and bool(np.all(self.zero_point == other.zero_point)))


@dataclass
class Value:
    """One ONNX value: its ONNX shape and either constant data or IR tensors per layout."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # ONNX element type (numpy name)
    const: np.ndarray | None = None
    reps: dict = field(default_factory=dict)  # layout -> IR tensor id
    nonneg: bool = False  # known >= 0 (Relu, Sigmoid ...): zero padding is then exact for max pooling
    # Quantized models: the IR tensors are int8 with these parameters (for an ONNX int8/uint8 value, or a
    # float value that is a DequantizeLinear output or computed from one by a layout-only op).
    qp: QParams | None = None
    const_qp: QParams | None = None  # a quantized constant: `const` holds int8-domain (or int32) values

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass
class Node:
    index: int
    op_type: str
    domain: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict
    proto: object = None

    @property
    def label(self) -> str:
        return f"node '{self.name}' ({self.op_type})" if self.name else \
            f"node #{self.index} ({self.op_type}, output '{self.outputs[0] if self.outputs else ''}')"


class OnnxReader:
    """Converts one ONNX graph; holds the IR being built and the ONNX values."""

    def __init__(self, model, source: str, input_layout: str):
        self.model = model
        self.source = source
        self.input_layout = input_layout
        self.opset = 0
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                self.opset = int(imp.version)
        self.tensors: list[Tensor] = []
        self.ops: list[Op] = []
        self.values: dict[str, Value] = {}
        self.names: set[str] = set()
        self.node: Node | None = None  # the node being converted (op index and messages)
        self.consumers: dict[str, list[Node]] = {}
        self.graph_outputs: set[str] = set()
        self.quantized = False  # QDQ / QOperator model (onnx_quant)

    # ---- errors -------------------------------------------------------------------------------------
    def fail(self, what: str, supported: str, node: Node | None = None) -> EdgecError:
        node = node or self.node
        where = f"{node.label}: " if node is not None else ""
        return EdgecError(f"{self.source}: {where}{what}; supported: {supported}")

    # ---- IR construction ----------------------------------------------------------------------------
    def unique(self, name: str) -> str:
        base, k = name, 1
        while name in self.names:
            name = f"{base}_{k}"
            k += 1
        self.names.add(name)
        return name

    def tensor(self, name: str, shape, dtype: str = "float32", data: np.ndarray | None = None,
               quant: Quant | None = None) -> int:
        self.tensors.append(Tensor(self.unique(name), tuple(int(d) for d in shape), dtype, quant, data))
        return len(self.tensors) - 1

    def const(self, data: np.ndarray, name: str, quant: Quant | None = None) -> int:
        data = np.asarray(data)
        if data.dtype == np.float64 or data.dtype == np.float16:
            data = data.astype(np.float32)
        elif data.dtype == np.int64:
            data = data.astype(np.int32)
        dtype = {np.dtype(np.bool_): "bool"}.get(data.dtype, str(data.dtype))
        return self.tensor(name, data.shape, dtype, np.ascontiguousarray(data), quant)

    def int32(self, values, name: str) -> int:
        return self.const(np.asarray(values, dtype=np.int32), name)

    def op(self, type_: str, inputs: list[int], outputs: list[int], attrs: dict | None = None) -> Op:
        node = self.node
        label = (node.name or (node.outputs[0] if node.outputs else "")) if node is not None else ""
        if not label:
            label = self.tensors[outputs[0]].name
        o = Op(type_, list(inputs), list(outputs), attrs or {}, index=node.index if node else 0, name=label)
        self.ops.append(o)
        return o

    def like(self, tid: int, name: str, shape=None, dtype: str | None = None) -> int:
        """A new activation tensor shaped like `tid` (same dtype and quantization unless given)."""
        t = self.tensors[tid]
        return self.tensor(name, t.shape if shape is None else shape, dtype or t.dtype,
                           quant=t.quant if dtype is None else None)

    # ---- values and layouts -------------------------------------------------------------------------
    def value(self, name: str) -> Value:
        if name not in self.values:
            raise self.fail(f"input '{name}' is not produced by any node, initializer or graph input",
                            "a well-formed graph")
        return self.values[name]

    def is_const(self, name: str) -> bool:
        return name != "" and name in self.values and self.values[name].const is not None

    def const_of(self, name: str, what: str) -> np.ndarray:
        if name == "" or not self.is_const(name):
            raise self.fail(f"{what} '{name}' is computed at run time", f"a constant {what} (an initializer or "
                            "constant subgraph)")
        return self.values[name].const

    def define(self, name: str, shape, layout: Layout, tid: int, nonneg: bool = False,
               qp: QParams | None = None) -> Value:
        v = Value(name, tuple(int(d) for d in shape), "float32", reps={layout: tid}, nonneg=nonneg, qp=qp)
        self.values[name] = v
        return v

    def out(self, name: str, shape, layout: Layout, nonneg: bool = False, like: int | None = None) -> int:
        """Create the IR tensor of node output `name` (ONNX shape `shape`) in `layout` and define the value."""
        ir_shape = layout_shape(tuple(shape), layout)
        if like is not None:
            tid = self.like(like, name, ir_shape)
        else:
            tid = self.tensor(name, ir_shape, "float32")
        self.define(name, shape, layout, tid, nonneg)
        return tid

    def primary(self, name: str) -> tuple[Layout, int]:
        """Any existing representation (the first one made) of a non-constant value."""
        v = self.value(name)
        if v.const is not None:
            return ident(v.rank), self.rep(name)
        lay = next(iter(v.reps))
        return lay, v.reps[lay]

    def rep(self, name: str, layout: Layout | None = None) -> int:
        """The IR tensor of value `name` in `layout` (identity by default), converting when needed."""
        v = self.value(name)
        if layout is None:
            layout = ident(v.rank)
        if layout in v.reps:
            return v.reps[layout]
        if v.const is not None:
            data = layout_array(v.const, layout)
            quant = None
            if v.const_qp is not None:
                quant = v.const_qp.quant(None if v.const_qp.axis is None else
                                         (layout.index(v.const_qp.axis) if not isinstance(layout, Flat) else 1))
            tid = self.const(data, v.name, quant)
            v.reps[layout] = tid
            return tid
        if isinstance(layout, Flat) and ident(v.rank) not in v.reps:
            self.rep(name, ident(v.rank))
        for have, src in list(v.reps.items()):
            if same_memory(v.shape, have, layout):
                tid = self.like(src, f"{name}_r", layout_shape(v.shape, layout))
                self.op("RESHAPE", [src, self.int32(self.tensors[tid].shape, f"{name}_r_shape")], [tid])
                v.reps[layout] = tid
                return tid
        have, src = next(((h, s) for h, s in v.reps.items() if not isinstance(h, Flat)), (None, None))
        if have is None:  # only a Flat representation: NHWC-flattened back to ONNX order
            (fl, src), = v.reps.items()
            n = v.shape[0]
            t4 = self.like(src, f"{name}_hwc", (n, fl.h, fl.w, fl.c))
            self.op("RESHAPE", [src, self.int32((n, fl.h, fl.w, fl.c), f"{name}_hwc_shape")], [t4])
            t5 = self.like(src, f"{name}_chw", (n, fl.c, fl.h, fl.w))
            self.op("TRANSPOSE", [t4, self.int32((0, 3, 1, 2), f"{name}_chw_perm")], [t5])
            tid = self.like(src, f"{name}_flat", v.shape)
            self.op("RESHAPE", [t5, self.int32(v.shape, f"{name}_flat_shape")], [tid])
            v.reps[ident(v.rank)] = tid
            return self.rep(name, layout)
        if isinstance(layout, Flat):  # ONNX order -> H, W, C order
            n = v.shape[0]
            t4 = self.like(src, f"{name}_chw", (n, layout.c, layout.h, layout.w))
            self.op("RESHAPE", [src, self.int32((n, layout.c, layout.h, layout.w), f"{name}_chw_shape")], [t4])
            t5 = self.like(src, f"{name}_hwc", (n, layout.h, layout.w, layout.c))
            self.op("TRANSPOSE", [t4, self.int32(NHWC, f"{name}_hwc_perm")], [t5])
            tid = self.like(src, f"{name}_flat", v.shape)
            self.op("RESHAPE", [t5, self.int32(v.shape, f"{name}_flat_shape")], [tid])
            v.reps[layout] = tid
            return tid
        perm = tuple(have.index(a) for a in layout)
        suffix = "nhwc" if layout == NHWC else "nchw" if layout == ident(v.rank) and have == NHWC else "t"
        tid = self.like(src, f"{name}_{suffix}", layout_shape(v.shape, layout))
        self.op("TRANSPOSE", [src, self.int32(perm, f"{name}_{suffix}_perm")], [tid])
        v.reps[layout] = tid
        return tid


def _attrs(node_proto) -> dict:
    from onnx import helper

    out = {}
    for a in node_proto.attribute:
        val = helper.get_attribute_value(a)
        if isinstance(val, bytes):
            val = val.decode(errors="replace")
        out[a.name] = val
    return out


def load_onnx_model(path: Path):
    """Parse the protobuf and its external data; EdgecError (with the file name) when that fails."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        data = path.read_bytes()
    except OSError as e:
        raise EdgecError(f"{path}: cannot read model file: {e.strerror}") from None
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError, TypeError) as e:
        raise EdgecError(f"{path}: not a valid ONNX model (protobuf parse failed, file is {len(data)} bytes: "
                         f"{type(e).__name__}: {e}); a truncated or corrupt file?") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise EdgecError(f"{path}: not a valid ONNX model: it has no graph nodes (file is {len(data)} bytes; a "
                         "truncated, empty or non-ONNX file?)")
    try:
        from onnx.external_data_helper import load_external_data_for_model, uses_external_data

        if any(uses_external_data(t) for t in model.graph.initializer):
            load_external_data_for_model(model, str(path.parent))
    except Exception as e:  # noqa: BLE001 - onnx raises OSError, ValueError or its own ValidationError
        raise EdgecError(f"{path}: cannot load the model's external weight data (expected beside the model, "
                         f"in {path.parent}): {e}") from None
    return model


def read_onnx(path: str | Path, input_layout: str = "model") -> Graph:
    """Parse an .onnx file into a Graph.

    input_layout "model" keeps the model's I/O layout (4-D NCHW inputs and outputs stay NCHW; TRANSPOSE ops
    convert at the boundary); "nhwc" makes 4-D graph inputs and outputs NHWC (no boundary transposes).
    """
    path = Path(path)
    if input_layout not in INPUT_LAYOUTS:
        raise EdgecError(f"unknown input layout '{input_layout}' (supported: {', '.join(INPUT_LAYOUTS)})")
    model = load_onnx_model(path)
    reader = OnnxReader(model, str(path), input_layout)
    return convert(reader)


def convert(r: OnnxReader) -> Graph:
    from onnx import numpy_helper

    from edgec.frontends import onnx_fuse, onnx_ops, onnx_quant

    g = r.model.graph
    if not MIN_OPSET <= r.opset <= MAX_OPSET:
        raise EdgecError(f"{r.source}: ONNX opset {r.opset} (supported: opsets {MIN_OPSET} to {MAX_OPSET})")
    for init in g.initializer:
        try:
            arr = numpy_helper.to_array(init)
        except Exception as e:  # noqa: BLE001 - protobuf/numpy raise many types on bad tensors
            raise EdgecError(f"{r.source}: initializer '{init.name}' cannot be read: {e}") from None
        r.values[init.name] = Value(init.name, tuple(arr.shape), str(arr.dtype), const=arr)
    for sparse in g.sparse_initializer:
        raise EdgecError(f"{r.source}: sparse initializer '{sparse.values.name}' (supported: dense initializers)")
    nodes = [Node(i, n.op_type, n.domain, n.name, list(n.input), list(n.output), _attrs(n), n)
             for i, n in enumerate(g.node)]
    for n in nodes:
        for i in n.inputs:
            r.consumers.setdefault(i, []).append(n)
    r.graph_outputs = {o.name for o in g.output}
    r.quantized = onnx_quant.is_quantized(nodes)
    if r.quantized:
        onnx_quant.prepare(r, nodes)

    inputs = []
    for vi in g.input:
        if vi.name in r.values:  # IR version < 4 lists initializers as inputs too
            continue
        inputs.append(_graph_input(r, vi))

    for node in nodes:
        r.node = node
        if node.domain not in ("", "ai.onnx", "com.microsoft"):
            raise r.fail(f"operator domain '{node.domain}'", "the default ONNX domain")
        if onnx_quant.handles(r, node):
            onnx_quant.convert_node(r, node)
            continue
        if onnx_ops.fold(r, node):
            continue
        handler = onnx_ops.HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if handler is None:
            raise EdgecError(f"{r.source}: {node.label} is not supported (opset {r.opset}). Supported ONNX ops: "
                             f"{', '.join(onnx_ops.SUPPORTED)}")
        handler(r, node)
    r.node = None

    outputs = [_graph_output(r, vi, inputs) for vi in g.output]
    graph = Graph(r.tensors, r.ops, inputs, outputs, r.source)
    if not r.quantized:
        onnx_fuse.optimize(graph)
    return onnx_fuse.compact(graph)


def _static_shape(r: OnnxReader, vi, what: str) -> tuple[tuple[int, ...], str]:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise EdgecError(f"{r.source}: graph {what} '{vi.name}' is not a tensor (supported: tensors)")
    dtype = _ONNX_DTYPES.get(tt.elem_type, f"type {tt.elem_type}")
    if not tt.HasField("shape"):
        raise EdgecError(f"{r.source}: graph {what} '{vi.name}' has no shape; edgec needs static shapes "
                         "(re-export the model with fixed input shapes)")
    dims = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(1)  # a symbolic batch: edgec compiles for one sample at a time
        else:
            sym = d.dim_param or "?"
            raise EdgecError(f"{r.source}: graph {what} '{vi.name}' has a dynamic dimension {i} ('{sym}'); "
                             "supported: static shapes, except a symbolic batch (dimension 0), which becomes 1. "
                             "Re-export the model with fixed shapes")
    return tuple(dims), dtype


def _graph_input(r: OnnxReader, vi) -> int:
    shape, dtype = _static_shape(r, vi, "input")
    if dtype != "float32" and not (r.quantized and dtype in ("int8",)):
        raise EdgecError(f"{r.source}: graph input '{vi.name}' is {dtype} (supported: float32 inputs)")
    layout = NHWC if r.input_layout == "nhwc" and len(shape) == 4 else ident(len(shape))
    tid = r.tensor(vi.name, layout_shape(shape, layout), dtype)
    r.define(vi.name, shape, layout, tid)
    return tid


def _graph_output(r: OnnxReader, vi, inputs: list[int]) -> int:
    from edgec.frontends import onnx_quant

    v = r.values.get(vi.name)
    if v is None:
        raise EdgecError(f"{r.source}: graph output '{vi.name}' is not produced by any node")
    if v.const is not None:
        raise EdgecError(f"{r.source}: graph output '{vi.name}' is a constant (supported: outputs computed from "
                         "the inputs)")
    rank = v.rank
    layout = NHWC if r.input_layout == "nhwc" and rank == 4 else ident(rank)
    r.node = None
    tid = r.rep(vi.name, layout) if not r.quantized else onnx_quant.output_rep(r, vi.name, layout)
    if tid in inputs:
        raise EdgecError(f"{r.source}: graph output '{vi.name}' is a graph input (supported: outputs computed by "
                         "at least one op)")
    # The C API names outputs after the ONNX outputs: give this tensor the ONNX name.
    t = r.tensors[tid]
    if t.name != vi.name:
        for other in r.tensors:
            if other.name == vi.name:
                other.name = r.unique(f"{vi.name}_pre")
        t.name = vi.name
    return tid
