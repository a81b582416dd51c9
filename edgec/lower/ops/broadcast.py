"""Broadcast elementwise binary kernels shared by the op families (int8 ADD / SUB / MUL, PRELU, MAXIMUM,
MINIMUM and their float32 counterparts).

Broadcasting follows TFLite Micro's BroadcastBinaryOpSimple: shapes are right-aligned, a dimension of 1
repeats. `broadcast_plan` collapses the output iteration space into BCAST_RANK levels (adjacent output
dimensions with the same repetition pattern are merged, as BroadcastBinaryOpSimple fuses loops) and
`broadcast_func` builds the kernel over them.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Op, Tensor

# Broadcast kernels iterate over at most this many collapsed dimensions.
BCAST_RANK = 6


def _fail(graph: Graph, op: Op, found: str, supported: str) -> EdgecError:
    return EdgecError(f"{graph.source}: {op.describe()}: {found}; supported: {supported}")


def broadcast_plan(graph: Graph, op: Op, a: Tensor, b: Tensor, y: Tensor):
    """Collapse the output iteration space into <= BCAST_RANK dimensions.

    Returns (dims, a_full, b_full): the collapsed extents and, per dimension, whether each input
    varies along it (False: the input is repeated). Adjacent output dimensions with the same
    repetition pattern are merged, as BroadcastBinaryOpSimple fuses loops.
    """
    rank = len(y.shape)
    # Leading 1s beyond the output's rank do not change the element order.
    a_shape, b_shape = tuple(a.shape), tuple(b.shape)
    while len(a_shape) > rank and a_shape[0] == 1:
        a_shape = a_shape[1:]
    while len(b_shape) > rank and b_shape[0] == 1:
        b_shape = b_shape[1:]
    if len(a_shape) > rank or len(b_shape) > rank:
        raise _fail(graph, op, f"input shapes {list(a.shape)}, {list(b.shape)} have more dimensions than the "
                    f"output {list(y.shape)}", "inputs broadcastable to the output shape")
    ea = (1,) * (rank - len(a_shape)) + a_shape
    eb = (1,) * (rank - len(b_shape)) + b_shape
    groups: list[list] = []
    for d, (da, db, dy) in enumerate(zip(ea, eb, y.shape)):
        if da not in (1, dy) or db not in (1, dy) or max(da, db) != dy:
            raise _fail(graph, op, f"input shapes {list(a.shape)} and {list(b.shape)} do not broadcast to the "
                        f"output shape {list(y.shape)} (dimension {d})",
                        "numpy-style broadcasting where the output shape is the broadcast of the inputs")
        if dy == 1:
            continue
        fa, fb = da == dy, db == dy
        if groups and groups[-1][1] == fa and groups[-1][2] == fb:
            groups[-1][0] *= dy
        else:
            groups.append([dy, fa, fb])
    if len(groups) > BCAST_RANK:
        raise _fail(graph, op, f"the broadcast of {list(a.shape)} and {list(b.shape)} needs {len(groups)} loop "
                    "levels", f"at most {BCAST_RANK} alternating broadcast levels")
    groups = [[1, True, True]] * (BCAST_RANK - len(groups)) + groups
    return [g[0] for g in groups], [g[1] for g in groups], [g[2] for g in groups]


def broadcast_func(dims: list[int], a_full: list[bool], b_full: list[bool], out_fn, *, dtype: str = "int8",
                   value_dtype: str = "int32", stage_fn=None, noalias: bool = True) -> tirx.PrimFunc:
    """A broadcast elementwise kernel y = f(a, b) over the collapsed `dims` (BCAST_RANK = 6 levels).

    a, b and y hold `dtype` elements; `stage_fn` and `out_fn` see the input values converted to
    `value_dtype` (no conversion when the two are equal) and `out_fn`'s result is converted back to `dtype`.
    - Without `stage_fn`: y = out_fn(a, b).
    - With `stage_fn`: s = stage_fn(a, b) (an int32 expression) goes through a one-element stage buffer,
      then y = out_fn(s, a, b). One expression holding all of ADD's three requantizations makes TVM's Let-heavy
      analysis in CompactBufferAllocation / FlattenBuffer / LowerIntrin take seconds per kernel.
    `noalias`: the inputs never share memory with the output (False for in-place ops).
    """
    D0, D1, D2, D3, D4, D5 = dims
    SA = tuple(d if f else 1 for d, f in zip(dims, a_full))
    SB = tuple(d if f else 1 for d, f in zip(dims, b_full))
    # Multiplying an index by 0 selects the repeated element; the simplifier removes the product.
    A0, A1, A2, A3, A4, A5 = (int(f) for f in a_full)
    B0, B1, B2, B3, B4, B5 = (int(f) for f in b_full)
    staged = stage_fn is not None

    def load(v):
        return v if value_dtype == dtype else T.Cast(value_dtype, v)

    def store(v):
        return v if value_dtype == dtype else T.Cast(dtype, v)

    @T.prim_func(s_tir=True)
    def binary(a_p: T.handle(dtype), b_p: T.handle(dtype), y_p: T.handle(dtype)):
        T.func_attr({"tirx.noalias": noalias})
        a = T.decl_buffer(SA, dtype, data=a_p)
        b = T.decl_buffer(SB, dtype, data=b_p)
        y = T.decl_buffer((D0, D1, D2, D3, D4, D5), dtype, data=y_p)
        if staged:
            stage = T.sblock_alloc_buffer((D0, D1, D2, D3, D4, D5), "int32")
            for i0, i1, i2, i3, i4, i5 in T.grid(D0, D1, D2, D3, D4, D5):
                with T.sblock("stage"):
                    v0, v1, v2, v3, v4, v5 = T.axis.remap("SSSSSS", [i0, i1, i2, i3, i4, i5])
                    stage[v0, v1, v2, v3, v4, v5] = stage_fn(
                        load(a[v0 * A0, v1 * A1, v2 * A2, v3 * A3, v4 * A4, v5 * A5]),
                        load(b[v0 * B0, v1 * B1, v2 * B2, v3 * B3, v4 * B4, v5 * B5]))
                with T.sblock("out"):
                    v0, v1, v2, v3, v4, v5 = T.axis.remap("SSSSSS", [i0, i1, i2, i3, i4, i5])
                    y[v0, v1, v2, v3, v4, v5] = store(out_fn(
                        stage[v0, v1, v2, v3, v4, v5],
                        load(a[v0 * A0, v1 * A1, v2 * A2, v3 * A3, v4 * A4, v5 * A5]),
                        load(b[v0 * B0, v1 * B1, v2 * B2, v3 * B3, v4 * B4, v5 * B5])))
        else:
            for i0, i1, i2, i3, i4, i5 in T.grid(D0, D1, D2, D3, D4, D5):
                with T.sblock("out"):
                    v0, v1, v2, v3, v4, v5 = T.axis.remap("SSSSSS", [i0, i1, i2, i3, i4, i5])
                    y[v0, v1, v2, v3, v4, v5] = store(out_fn(
                        load(a[v0 * A0, v1 * A1, v2 * A2, v3 * A3, v4 * A4, v5 * A5]),
                        load(b[v0 * B0, v1 * B1, v2 * B2, v3 * B3, v4 * B4, v5 * B5])))
    return binary
