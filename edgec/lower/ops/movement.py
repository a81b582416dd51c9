"""Data movement: RESHAPE, SQUEEZE, PAD, CONCATENATION, STRIDED_SLICE and TRANSPOSE (int8 and float32).

No arithmetic happens here: every kernel is a compile-time index map, so "bit-exact with TFLM" means
"the same elements in the same places, and the same models accepted". Each lowering repeats the checks
of the TFLM Prepare it mirrors and rejects what TFLM rejects, plus the cases where TFLM accepts a model
but its kernel leaves output bytes unwritten or reads out of bounds.

Reference semantics (tflite-micro):
- RESHAPE (reshape_common.cc PrepareReshapeReference) and SQUEEZE (squeeze.cc SqueezePrepare/Eval):
  a byte copy to a tensor of the same size; here the output simply aliases the input.
- PAD (pad_common.cc PadPrepare, reference_ops::PadImpl): up to 5-D, const int32 paddings, the pad value
  is the output zero point for int8, 0.0f for float32 (or the const `constant_values` input). Input
  values are copied unchanged, whatever the input's quantization.
- CONCATENATION (concatenation.cc ConcatenationPrepare, reference_ops::Concatenation): up to 10 inputs of
  up to 6 dimensions, no fused activation, and every int8 input must have exactly the output's scale and
  zero point (TFLM does not requantize): a pure copy.

Every kernel takes one element dtype, int8 or float32 (all data tensors of the op must share it): the
templates are dtype-generic copies, float values are moved bit for bit.
- STRIDED_SLICE (strided_slice_common.cc StridedSlicePrepare/CheckOutputSize, reference_ops::StridedSlice
  with StridedSliceStartForAxis/StridedSliceEndForAxis): up to 4-D, const int32 begin/end/strides.
  TFLM ignores ellipsis_mask, new_axis_mask and offset, and so does this lowering.
- TRANSPOSE (transpose_common.cc TransposePrepare, reference_ops::Transpose): up to 5-D, const int32 perm.

The fixed-rank TVMScript templates take rank-5 views; the lowering first drops unit dimensions and
merges dimensions that stay contiguous, so the emitted C has as few loops as the map allows.
CONCATENATION has one parameter per input, which TVMScript cannot express, so its PrimFunc is built
with TVM's IRBuilder (what TVMScript itself lowers to).
"""

from __future__ import annotations

import math

import numpy as np
from tvm import tirx
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as Tb

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Op, Tensor
from edgec.lower.kernel import Arg, LoweredOp

RANK = 5  # rank of the template views
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# --- TIR templates ---------------------------------------------------------------------------------------


def gather_func(OUT: tuple, NX: int, BASE: int, S: tuple, dtype: str = "int8") -> tirx.PrimFunc:
    """y[o0..o4] = x[BASE + sum(o_d * S_d)] over the output, x viewed flat (strides may be negative)."""
    O0, O1, O2, O3, O4 = OUT
    S0, S1, S2, S3, S4 = S

    @T.prim_func(s_tir=True)
    def gather(x_p: T.handle(dtype), y_p: T.handle(dtype)):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((NX,), dtype, data=x_p)
        y = T.decl_buffer((O0, O1, O2, O3, O4), dtype, data=y_p)
        for i0, i1, i2, i3, i4 in T.grid(O0, O1, O2, O3, O4):
            with T.sblock("copy"):
                v0, v1, v2, v3, v4 = T.axis.remap("SSSSS", [i0, i1, i2, i3, i4])
                y[v0, v1, v2, v3, v4] = x[BASE + v0 * S0 + v1 * S1 + v2 * S2 + v3 * S3 + v4 * S4]
    return gather


def pad_func(IN: tuple, OUT: tuple, L: tuple, PADV: float, dtype: str = "int8") -> tirx.PrimFunc:
    """Fill y with PADV, then copy x into the window that starts at L (no per-element conditions)."""
    I0, I1, I2, I3, I4 = IN
    O0, O1, O2, O3, O4 = OUT
    L0, L1, L2, L3, L4 = L
    value = tirx.const(PADV, dtype)

    @T.prim_func(s_tir=True)
    def pad(x_p: T.handle(dtype), y_p: T.handle(dtype)):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((I0, I1, I2, I3, I4), dtype, data=x_p)
        y = T.decl_buffer((O0, O1, O2, O3, O4), dtype, data=y_p)
        for i0, i1, i2, i3, i4 in T.grid(O0, O1, O2, O3, O4):
            with T.sblock("fill"):
                v0, v1, v2, v3, v4 = T.axis.remap("SSSSS", [i0, i1, i2, i3, i4])
                y[v0, v1, v2, v3, v4] = value
        for i0, i1, i2, i3, i4 in T.grid(I0, I1, I2, I3, I4):
            with T.sblock("copy"):
                v0, v1, v2, v3, v4 = T.axis.remap("SSSSS", [i0, i1, i2, i3, i4])
                y[v0 + L0, v1 + L1, v2 + L2, v3 + L3, v4 + L4] = x[v0, v1, v2, v3, v4]
    return pad


def pad_table_func(IN: tuple, OUT: tuple, L: tuple, dtype: str) -> tirx.PrimFunc:
    """pad_func with the pad value read from a one-element const table: TVM prints float constants with
    7 significant digits, so a float pad value that needs more would change in the C."""
    I0, I1, I2, I3, I4 = IN
    O0, O1, O2, O3, O4 = OUT
    L0, L1, L2, L3, L4 = L

    @T.prim_func(s_tir=True)
    def pad(x_p: T.handle(dtype), v_p: T.handle(dtype), y_p: T.handle(dtype)):
        T.func_attr({"tirx.noalias": True})
        x = T.decl_buffer((I0, I1, I2, I3, I4), dtype, data=x_p)
        v = T.decl_buffer((1,), dtype, data=v_p)
        y = T.decl_buffer((O0, O1, O2, O3, O4), dtype, data=y_p)
        for i0, i1, i2, i3, i4 in T.grid(O0, O1, O2, O3, O4):
            with T.sblock("fill"):
                v0, v1, v2, v3, v4 = T.axis.remap("SSSSS", [i0, i1, i2, i3, i4])
                y[v0, v1, v2, v3, v4] = v[0]
        for i0, i1, i2, i3, i4 in T.grid(I0, I1, I2, I3, I4):
            with T.sblock("copy"):
                v0, v1, v2, v3, v4 = T.axis.remap("SSSSS", [i0, i1, i2, i3, i4])
                y[v0 + L0, v1 + L1, v2 + L2, v3 + L3, v4 + L4] = x[v0, v1, v2, v3, v4]
    return pad


def concat_func(outer: int, sizes: list[int], inner: int, dtype: str = "int8") -> tirx.PrimFunc:
    """y viewed (outer, sum(sizes) * inner); input i fills columns [off_i * inner, (off_i + size_i) * inner)."""
    total = sum(sizes)
    with IRBuilder() as ib, Tb.prim_func(s_tir=True):
        Tb.func_name("concat")
        Tb.func_attr({"tirx.noalias": True})
        ptrs = [Tb.arg(f"x{i}_p", Tb.handle(dtype)) for i in range(len(sizes))]
        y_p = Tb.arg("y_p", Tb.handle(dtype))
        xs = [Tb.decl_buffer((outer, s * inner), dtype, data=p) for s, p in zip(sizes, ptrs)]
        y = Tb.decl_buffer((outer, total * inner), dtype, data=y_p)
        off = 0
        for i, (x, s) in enumerate(zip(xs, sizes)):
            with Tb.grid(outer, s * inner) as (o, j), Tb.sblock(f"copy{i}"):
                vo = Tb.axis.spatial(outer, o)
                vj = Tb.axis.spatial(s * inner, j)
                Tb.buffer_store(y, x[vo, vj], [vo, off * inner + vj])
            off += s
    return ib.get()


# --- helpers ---------------------------------------------------------------------------------------------


def _err(graph: Graph, op: Op, msg: str) -> EdgecError:
    return EdgecError(f"{graph.source}: {op.describe()}: {msg}")


DTYPES = ("int8", "float32")


def _check_io(graph: Graph, op: Op, n_inputs: tuple[int, ...], data_inputs: list[int]) -> str:
    """Input/output counts, data tensors all int8 or all float32 (returned), and no zero-size tensors
    (TFLM rejects those as dynamic)."""
    if len(op.inputs) not in n_inputs or len(op.outputs) != 1:
        raise _err(graph, op, f"{len(op.inputs)} inputs and {len(op.outputs)} outputs; supported: "
                              f"{' or '.join(map(str, n_inputs))} inputs and 1 output")
    for tid in data_inputs + op.outputs:
        if tid < 0:
            raise _err(graph, op, "a required data input is missing")
        t = graph.t(tid)
        if t.dtype not in DTYPES:
            raise _err(graph, op, f"tensor '{t.name}' is {t.dtype}; supported: int8 or float32")
        if t.size == 0:
            raise _err(graph, op, f"tensor '{t.name}' has zero elements (shape {list(t.shape)}); supported: "
                                  "non-empty tensors")
    dtypes = {graph.t(tid).dtype for tid in data_inputs + op.outputs}
    if len(dtypes) > 1:
        raise _err(graph, op, f"data tensors of dtypes {', '.join(sorted(dtypes))}; supported: one dtype (int8 or "
                              "float32) for all data inputs and the output")
    return dtypes.pop()


def _const_int32(graph: Graph, op: Op, tid: int, what: str) -> np.ndarray:
    """A const index tensor. TFLM reads these buffers as int32 whatever their type, so int64 ones would be
    misread: reject them rather than guess."""
    if tid < 0:
        raise _err(graph, op, f"the {what} input is missing")
    t = graph.t(tid)
    if not t.is_const:
        raise _err(graph, op, f"{what} tensor '{t.name}' is not constant; supported: constant {what}")
    if t.dtype != "int32":
        raise _err(graph, op, f"{what} tensor '{t.name}' is {t.dtype}; supported: int32 (TFLM reads {what} as "
                              "int32)")
    return t.data.astype(np.int64).reshape(-1)


def _strides(shape: tuple[int, ...]) -> list[int]:
    s, acc = [], 1
    for d in reversed(shape):
        s.append(acc)
        acc *= d
    return s[::-1]


def _simplify_gather(out: list[int], s: list[int]) -> tuple[list[int], list[int]]:
    """Drop unit output dims and merge neighbours that stay contiguous in x (S_d == S_d+1 * O_d+1)."""
    dims = [(o, st) for o, st in zip(out, s) if o != 1]
    merged: list[tuple[int, int]] = []
    for o, st in dims:
        if merged and merged[-1][1] == st * o:
            po, _ = merged.pop()
            merged.append((po * o, st))
        else:
            merged.append((o, st))
    return [o for o, _ in merged], [st for _, st in merged]


def _lift(values: list[int], fill: int) -> tuple:
    """Left-pad to the template rank (TVM removes the extent-1 loops again)."""
    assert len(values) <= RANK, values
    return tuple([fill] * (RANK - len(values)) + list(values))


def _gather(graph: Graph, op: Op, x: Tensor, out: list[int], base: int, s: list[int], kind: str) -> LoweredOp:
    o, st = _simplify_gather(out, s)
    func = gather_func(_lift(o, 1), x.size, base, _lift(st, 0), x.dtype)
    return LoweredOp(op, func, [Arg.input(op.inputs[0]), Arg.output(op.outputs[0])], kind=kind)


# --- RESHAPE, SQUEEZE ------------------------------------------------------------------------------------


def _alias(graph: Graph, op: Op, x: Tensor, y: Tensor) -> LoweredOp:
    if x.dtype != y.dtype:
        raise _err(graph, op, f"input '{x.name}' is {x.dtype} but output '{y.name}' is {y.dtype}; supported: "
                              "the same dtype")
    return LoweredOp(op, None, alias=True)


def lower_reshape(graph: Graph, op: Op) -> LoweredOp:
    """TFLM takes the output tensor's shape from the file and only checks the element counts; the optional
    new_shape input is not consulted, so it is not here either (beyond naming it in the error)."""
    if len(op.inputs) not in (1, 2) or len(op.outputs) != 1 or op.inputs[0] < 0:
        raise _err(graph, op, f"{len(op.inputs)} inputs and {len(op.outputs)} outputs; supported: the data "
                              "input (+ optional shape) and 1 output")
    x, y = graph.t(op.inputs[0]), graph.t(op.outputs[0])
    if x.size != y.size:
        hint = ""
        if len(op.inputs) == 2 and op.inputs[1] >= 0 and graph.t(op.inputs[1]).is_const:
            hint = f" (new_shape input: {graph.t(op.inputs[1]).data.reshape(-1).tolist()})"
        raise _err(graph, op, f"input '{x.name}' shape {list(x.shape)} has {x.size} elements but output "
                              f"'{y.name}' shape {list(y.shape)}{hint} has {y.size}; supported: equal element counts")
    return _alias(graph, op, x, y)


def lower_squeeze(graph: Graph, op: Op) -> LoweredOp:
    if len(op.inputs) != 1 or len(op.outputs) != 1:
        raise _err(graph, op, f"{len(op.inputs)} inputs and {len(op.outputs)} outputs; supported: 1 and 1")
    x, y = graph.t(op.inputs[0]), graph.t(op.outputs[0])
    rank = len(x.shape)
    if rank > 8:
        raise _err(graph, op, f"input has {rank} dimensions; supported: up to 8")
    dims = op.attrs.get("squeeze_dims", [])
    squeeze = [d == 1 for d in x.shape] if not dims else [False] * rank
    for d in dims:
        a = d + rank if d < 0 else d
        if not (0 <= a < rank and x.shape[a] == 1):
            raise _err(graph, op, f"squeeze_dims {dims} on input shape {list(x.shape)}; supported: axes in "
                                  f"[-{rank}, {rank}) whose size is 1")
        squeeze[a] = True
    kept = [d for d, s in zip(x.shape, squeeze) if not s]
    # TFLM: every kept input dim must fit its output dim, and the byte sizes must be equal.
    if len(kept) > len(y.shape) or any(o < i for o, i in zip(y.shape, kept)) or x.size != y.size:
        raise _err(graph, op, f"output shape {list(y.shape)} does not match input shape {list(x.shape)} with "
                              f"squeeze_dims {dims} (expected {kept})")
    return _alias(graph, op, x, y)


# --- PAD -------------------------------------------------------------------------------------------------


def _int8_pad_value(graph: Graph, op: Op, y: Tensor) -> int:
    if y.quant is None:
        raise _err(graph, op, f"output '{y.name}' has no quantization; supported: int8 quantized")
    if len(op.inputs) == 3 and op.inputs[2] >= 0:
        c = graph.t(op.inputs[2])
        if c.dtype != "int8" or not c.is_const or c.size != 1:
            raise _err(graph, op, f"constant_values '{c.name}' is {c.dtype}{'' if c.is_const else ' non-const'} "
                                  f"with {c.size} elements; supported: a const int8 scalar")
        if c.quant is None or c.zero_point != y.zero_point or np.float32(c.scale) != np.float32(y.scale):
            raise _err(graph, op, f"constant_values '{c.name}' is quantized differently from output '{y.name}'; "
                                  "supported: the same scale and zero point (as TFLM requires)")
        return int(c.data.reshape(-1)[0])
    if not -128 <= y.zero_point <= 127:
        raise _err(graph, op, f"output zero point {y.zero_point}; supported: -128..127")
    return y.zero_point


def _float_pad_value(graph: Graph, op: Op) -> float:
    """0.0f, or the const float32 constant_values scalar."""
    if len(op.inputs) == 3 and op.inputs[2] >= 0:
        c = graph.t(op.inputs[2])
        if c.dtype != "float32" or not c.is_const or c.size != 1:
            raise _err(graph, op, f"constant_values '{c.name}' is {c.dtype}{'' if c.is_const else ' non-const'} "
                                  f"with {c.size} elements; supported: a const float32 scalar")
        return float(c.data.reshape(-1)[0])
    return 0.0


def _printable(value: float) -> bool:
    """Whether TVM's C printing of a float32 constant (7 significant digits) gives back the same value."""
    v = np.float32(value)
    return bool(np.isfinite(v)) and np.float32(f"{float(v):.6e}") == v and not (v == 0 and np.signbit(v))


def lower_pad(graph: Graph, op: Op) -> LoweredOp:
    dtype = _check_io(graph, op, (2, 3), [op.inputs[0]])
    x, y = graph.t(op.inputs[0]), graph.t(op.outputs[0])
    rank = len(y.shape)
    if len(x.shape) > RANK or len(x.shape) != rank:
        raise _err(graph, op, f"input rank {len(x.shape)}, output rank {rank}; supported: equal ranks up to "
                              f"{RANK}")
    pads = _const_int32(graph, op, op.inputs[1], "paddings")
    if pads.size != 2 * rank:
        raise _err(graph, op, f"paddings has {pads.size} values for a rank-{rank} output; supported: "
                              f"{2 * rank} (a [{rank}, 2] tensor)")
    left, right = pads[0::2].tolist(), pads[1::2].tolist()
    expected = [d + a + b for d, a, b in zip(x.shape, left, right)]
    if list(y.shape) != expected:
        raise _err(graph, op, f"output shape {list(y.shape)} but input {list(x.shape)} padded by "
                              f"{pads.reshape(rank, 2).tolist()} gives {expected}")
    if min(left + right) < 0:
        # TFLM's PadImpl never crops: with negative paddings it copies the input's first elements in order.
        raise _err(graph, op, f"negative paddings {pads.reshape(rank, 2).tolist()}; supported: paddings >= 0")
    pad_value = _int8_pad_value(graph, op, y) if dtype == "int8" else _float_pad_value(graph, op)
    # Drop unit dims and fold unpadded dims into the dim before them: they stay contiguous.
    dims: list[list[int]] = []
    for i, o, a in zip(x.shape, y.shape, left):
        if o == 1:
            continue
        if dims and o == i:
            dims[-1] = [dims[-1][0] * i, dims[-1][1] * o, dims[-1][2] * o]
        else:
            dims.append([i, o, a])
    shapes = _lift([d[0] for d in dims], 1), _lift([d[1] for d in dims], 1), _lift([d[2] for d in dims], 0)
    if dtype == "float32" and not _printable(pad_value):
        func = pad_table_func(*shapes, dtype)
        args = [Arg.input(op.inputs[0]), Arg.const(np.array([pad_value], np.float32)), Arg.output(op.outputs[0])]
    else:
        func = pad_func(*shapes, pad_value, dtype)
        args = [Arg.input(op.inputs[0]), Arg.output(op.outputs[0])]
    return LoweredOp(op, func, args, kind="pad")


# --- CONCATENATION ---------------------------------------------------------------------------------------

MAX_CONCAT_INPUTS = 10  # TFLM kMaxInputNum
MAX_CONCAT_RANK = 6  # TFLM RuntimeShape::kMaxSmallSize


def lower_concatenation(graph: Graph, op: Op) -> LoweredOp:
    n = len(op.inputs)
    if not 1 <= n <= MAX_CONCAT_INPUTS:
        raise _err(graph, op, f"{n} inputs; supported: 1 to {MAX_CONCAT_INPUTS} (TFLM's limit)")
    dtype = _check_io(graph, op, (n,), op.inputs)
    y = graph.t(op.outputs[0])
    xs = [graph.t(t) for t in op.inputs]
    if op.attrs.get("activation", "NONE") != "NONE":
        raise _err(graph, op, f"fused activation {op.attrs['activation']}; supported: NONE (TFLM rejects others)")
    rank = len(y.shape)
    if rank == 0 or rank > MAX_CONCAT_RANK:
        raise _err(graph, op, f"output rank {rank}; supported: 1 to {MAX_CONCAT_RANK}")
    a = op.attrs.get("axis", 0)
    axis = a + rank if a < 0 else a
    if not 0 <= axis < rank:
        raise _err(graph, op, f"axis {a} for rank-{rank} tensors; supported: [-{rank}, {rank})")
    for x in xs:
        if len(x.shape) != rank or any(d != o for i, (d, o) in enumerate(zip(x.shape, y.shape)) if i != axis):
            raise _err(graph, op, f"input '{x.name}' shape {list(x.shape)} does not match output shape "
                                  f"{list(y.shape)} outside axis {axis}")
        # TFLM compares the float32 scales exactly (as doubles) and the zero points: no requantization.
        if dtype == "int8" and (x.quant is None or y.quant is None or np.float32(x.scale) != np.float32(y.scale)
                                or x.zero_point != y.zero_point):
            got = f"scale {x.scale:.9g}, zero point {x.zero_point}" if x.quant else "no quantization"
            want = f"scale {y.scale:.9g}, zero point {y.zero_point}" if y.quant else "none"
            raise _err(graph, op, f"input '{x.name}' has {got} but output '{y.name}' has {want}; supported: "
                                  "inputs quantized exactly like the output (TFLM's int8 kernel does not requantize)")
    if sum(x.shape[axis] for x in xs) != y.shape[axis]:
        raise _err(graph, op, f"input sizes along axis {axis} sum to {sum(x.shape[axis] for x in xs)}, output has "
                              f"{y.shape[axis]}")
    outer, inner = math.prod(y.shape[:axis]), math.prod(y.shape[axis + 1:])
    func = concat_func(outer, [x.shape[axis] for x in xs], inner, dtype)
    args = [Arg.input(t) for t in op.inputs] + [Arg.output(op.outputs[0])]
    return LoweredOp(op, func, args, kind="concat")


# --- STRIDED_SLICE ---------------------------------------------------------------------------------------


def _clamp(v: int, lo: int, hi: int) -> int:
    return min(max(v, lo), hi)


def _prepare_start(begin: int, stride: int, masked: bool, size: int) -> int:
    """strided_slice::StartForAxis (used by TFLM's Prepare for the output shape)."""
    start = (INT32_MIN if stride > 0 else INT32_MAX) if masked else begin
    if start < 0:
        start += size
    return _clamp(start, 0, size) if stride > 0 else _clamp(start, -1, size - 1)


def _prepare_stop(end: int, stride: int, masked: bool, shrink: bool, size: int, start: int) -> int:
    """strided_slice::StopForAxis."""
    if shrink:
        return start + 1
    stop = (INT32_MAX if stride > 0 else INT32_MIN) if masked else end
    if stop < 0:
        stop += size
    return _clamp(stop, 0, size) if stride > 0 else _clamp(stop, -1, size - 1)


def _eval_start(begin: int, stride: int, masked: bool, size: int) -> int:
    """strided_slice::StridedSliceStartForAxis (used by TFLM's Eval to walk the input)."""
    start = begin + size if begin < 0 else begin
    start = _clamp(start, 0, size) if stride > 0 else _clamp(start, -1, size - 1)
    if masked:
        start = 0 if stride > 0 else size - 1
    return start


def _eval_stop(end: int, stride: int, masked: bool, shrink: bool, size: int, start: int) -> int:
    """strided_slice::StridedSliceEndForAxis with offset = false (TFLM never sets it)."""
    if shrink:
        return start if start >= size else start + 1
    stop = end + size if end < 0 else end
    stop = _clamp(stop, 0, size) if stride > 0 else _clamp(stop, -1, size - 1)
    if masked:
        stop = size if stride > 0 else -1
    return stop


def _count(start: int, stop: int, stride: int) -> int:
    """Iterations of `for (i = start; stride > 0 ? i < stop : i > stop; i += stride)`."""
    n = (stop - start + stride - 1) // stride if stride > 0 else (start - stop - stride - 1) // -stride
    return max(n, 0)


def lower_strided_slice(graph: Graph, op: Op) -> LoweredOp:
    _check_io(graph, op, (4,), [op.inputs[0]])
    x, y = graph.t(op.inputs[0]), graph.t(op.outputs[0])
    rank = len(x.shape)
    if not 1 <= rank <= 4:
        raise _err(graph, op, f"input rank {rank}; supported: 1 to 4 (TFLM's limit)")
    idx = [_const_int32(graph, op, op.inputs[i], w) for i, w in ((1, "begin"), (2, "end"), (3, "strides"))]
    for v, w in zip(idx, ("begin", "end", "strides")):
        if v.size < rank:
            raise _err(graph, op, f"{w} has {v.size} values for a rank-{rank} input; supported: {rank}")
    # TFLM reads the first `rank` values as int32.
    begin, end, strides = ([int(np.int32(e)) for e in v[:rank]] for v in idx)
    a = op.attrs
    ignored = [k for k in ("ellipsis_mask", "new_axis_mask") if a.get(k)] + (["offset"] if a.get("offset") else [])
    note = f" (TFLM ignores {', '.join(ignored)}, as edgec does)" if ignored else ""

    out_shape, starts, counts = [], [], []
    for d in range(rank):
        size, stride = x.shape[d], strides[d]
        bm, em, shrink = (bool(a.get(k, 0) >> d & 1) for k in ("begin_mask", "end_mask", "shrink_axis_mask"))
        if stride == 0:
            raise _err(graph, op, f"stride 0 on axis {d}; supported: non-zero strides")
        # Prepare's output-shape check, in float32 like TFLM: ceil((end - begin) / (float)stride).
        p_start = _prepare_start(begin[d], stride, bm, size)
        p_stop = _prepare_stop(end[d], stride, em, shrink, size, p_start)
        dim = max(math.ceil(np.float32(p_stop - p_start) / np.float32(stride)), 0)
        e_start = _eval_start(begin[d], stride, bm, size)
        e_stop = _eval_stop(end[d], stride, em, shrink, size, e_start)
        n = _count(e_start, e_stop, stride)
        if shrink:
            if n != 1:
                # TFLM accepts these but its Eval writes nothing, leaving the output unset.
                raise _err(graph, op, f"shrink axis {d} with begin {begin[d]}, stride {stride} on size {size}: "
                                      "TFLM writes no output for it; supported: an in-range begin and stride > 0")
        else:
            out_shape.append(dim)
            if n != dim:  # Prepare and Eval disagree: cannot happen for non-empty axes
                raise _err(graph, op, f"axis {d}: TFLM's shape check gives {dim} elements but its kernel "
                                      f"copies {n}")
        starts.append(e_start)
        counts.append(n)
    if list(y.shape) != out_shape:
        raise _err(graph, op, f"output shape {list(y.shape)} but begin {begin}, end {end}, strides {strides}, "
                              f"begin_mask {a.get('begin_mask', 0)}, end_mask {a.get('end_mask', 0)}, "
                              f"shrink_axis_mask {a.get('shrink_axis_mask', 0)} on input {list(x.shape)} give "
                              f"{out_shape}{note}")
    xs = _strides(x.shape)
    base = sum(st * s for st, s in zip(starts, xs))
    return _gather(graph, op, x, counts, base, [k * s for k, s in zip(strides, xs)], "strided_slice")


# --- TRANSPOSE -------------------------------------------------------------------------------------------


def lower_transpose(graph: Graph, op: Op) -> LoweredOp:
    _check_io(graph, op, (2,), [op.inputs[0]])
    x, y = graph.t(op.inputs[0]), graph.t(op.outputs[0])
    rank = len(x.shape)
    if not 1 <= rank <= RANK:
        raise _err(graph, op, f"input rank {rank}; supported: 1 to {RANK} (TFLM's limit)")
    perm = _const_int32(graph, op, op.inputs[1], "perm").tolist()
    if len(graph.t(op.inputs[1]).shape) != 1 or len(perm) != rank:
        raise _err(graph, op, f"perm {perm} for a rank-{rank} input; supported: a 1-D perm of {rank} values")
    # TFLM only checks the range; repeated axes would make it read outside the input.
    if sorted(perm) != list(range(rank)):
        raise _err(graph, op, f"perm {perm} is not a permutation of 0..{rank - 1}")
    expected = [x.shape[p] for p in perm]
    if list(y.shape) != expected:
        raise _err(graph, op, f"output shape {list(y.shape)} but input {list(x.shape)} transposed by {perm} "
                              f"gives {expected}")
    xs = _strides(x.shape)
    return _gather(graph, op, x, expected, 0, [xs[p] for p in perm], "transpose")


LOWERINGS = {
    "RESHAPE": lower_reshape,
    "SQUEEZE": lower_squeeze,
    "PAD": lower_pad,
    "CONCATENATION": lower_concatenation,
    "STRIDED_SLICE": lower_strided_slice,
    "TRANSPOSE": lower_transpose,
}
