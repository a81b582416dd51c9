"""One module per op family: TIR template, lowering (compile-time constants) and reference notes."""

from __future__ import annotations

from edgec.ir.graph import Graph, Op
from edgec.lower.ops import conv, extra, float_kernels, movement, nonlinear, npu, pool_arith

# int8 (quantized) kernels, and QUANTIZE/DEQUANTIZE at float boundaries.
LOWERINGS = {**conv.LOWERINGS, **pool_arith.LOWERINGS, **nonlinear.LOWERINGS, **movement.LOWERINGS,
             **extra.LOWERINGS, **npu.LOWERINGS}  # npu: ETHOSU (Vela's NPU partitions, NPU targets only)
# The int8 lowerings that take `mk`, the micro-kernel family of a kernel variant other than portable.
MICRO_KERNEL_LOWERINGS = {**conv.LOWERINGS, "ADD": pool_arith.lower_add, "SUB": pool_arith.lower_sub}
# float32 kernels (--precision float32), chosen when every tensor of the op is float32.
FLOAT_LOWERINGS = float_kernels.LOWERINGS


def lowering_for(graph: Graph, op: Op):
    """The lowering function for `op`, by op type and dtype; None when edgec has none."""
    tensors = [graph.t(t) for t in op.inputs + op.outputs if t >= 0]
    data = [t for t in tensors if not (t.is_const and t.dtype == "int32")]  # shape/axis operands
    if op.type in FLOAT_LOWERINGS and all(t.dtype == "float32" for t in data):
        return FLOAT_LOWERINGS[op.type]
    return LOWERINGS.get(op.type)
