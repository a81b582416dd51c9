"""Write an IR graph back to a .tflite file, so TFLite Micro can run what edgec compiles.

Used for graphs edgec made itself (the int8 graph of a quantized float/ONNX model) and for per-layer
comparisons: `extra_outputs` makes intermediate tensors graph outputs, which TFLM then keeps alive
and returns. Tensor ids are kept, so tensor i of the graph is tensor i of the file.
"""

from __future__ import annotations

import numpy as np

from edgec.frontends.tflite_writer import OP_OPTIONS, WOp, WTensor, write_tflite
from edgec.ir.graph import Graph, Op

# IR attribute name -> schema option field name (where the reader shortened it).
_RENAMES = {
    "dilation_h": "dilation_h_factor",
    "dilation_w": "dilation_w_factor",
    "filter_h": "filter_height",
    "filter_w": "filter_width",
    "activation": "fused_activation_function",
}


def _options(graph: Graph, op: Op) -> dict:
    opts = {_RENAMES.get(k, k): v for k, v in op.attrs.items()}
    if op.type == "RESHAPE" and len([i for i in op.inputs if i >= 0]) < 2:
        # Without a shape operand TFLM takes the new shape from the options.
        opts["new_shape"] = list(graph.t(op.outputs[0]).shape)
    if opts and op.type not in OP_OPTIONS:  # e.g. LOGISTIC, PRELU: TFLite has no options for them
        raise ValueError(f"{op.describe()}: attributes {sorted(opts)} but the TFLite writer knows no options "
                         f"table for {op.type}")
    return opts


def graph_to_tflite(graph: Graph, extra_outputs: list[int] | None = None) -> bytes:
    """Serialize `graph` (float or quantized) as .tflite bytes with the same tensor ids.

    `extra_outputs`: more tensors to make graph outputs, after the graph's own outputs and in the given
    order (duplicates of outputs, constants and graph inputs are skipped: TFLM only returns computed
    tensors). Returns the model bytes; raises ValueError for IR the TFLite schema cannot express.
    """
    tensors = []
    for t in graph.tensors:
        wt = WTensor(t.name, tuple(t.shape), t.dtype,
                     data=None if t.data is None else np.asarray(t.data).reshape(t.shape))
        if t.quant is not None:
            wt.scale = [float(s) for s in np.asarray(t.quant.scale, np.float32).reshape(-1)]
            wt.zero_point = [int(z) for z in np.asarray(t.quant.zero_point).reshape(-1)]
            wt.quantized_dimension = int(t.quant.axis) if t.quant.axis is not None else 0
        tensors.append(wt)
    ops = []
    for op in graph.ops:
        ops.append(WOp(op.type, list(op.inputs), list(op.outputs), _options(graph, op)))
    outputs = list(graph.outputs)
    for tid in extra_outputs or []:
        if tid not in outputs and tid not in graph.inputs and not graph.t(tid).is_const:
            outputs.append(tid)
    return write_tflite(tensors, ops, list(graph.inputs), outputs,
                        description=f"edgec export of {graph.source}")
