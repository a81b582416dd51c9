"""Post-training quantization: float32 IR -> int8 IR, following the TFLite quantization spec.

- Weights of CONV_2D (axis 0), DEPTHWISE_CONV_2D (axis 3), FULLY_CONNECTED (axis 0) and TRANSPOSE_CONV
  (axis 0): int8, symmetric per output channel (zero point 0, values in [-127, 127]).
- Bias: int32, per channel, scale s_in * s_w[c] (rounded to float32), zero point 0. Where a bias would not
  fit int32 at that scale, the channel's weight scale is raised until it does (as TFLite's quantizer does).
- Activations: int8 per tensor, asymmetric, from the calibration ranges (`ranges.py`: minmax, percentile,
  mse), which always include 0. Fused activations need nothing special: the calibrated output range is
  the activated one.
- Fixed output quantization that TFLM requires: SOFTMAX and LOGISTIC 1/256 zp -128, TANH 1/128 zp 0.
- Ops that TFLM runs on the raw int8 values, without requantizing, share one quantization between their
  data inputs and outputs (the union of the calibrated ranges): MAX_POOL_2D, AVERAGE_POOL_2D, RESHAPE,
  SQUEEZE, PAD, TRANSPOSE, STRIDED_SLICE, RELU6 (TFLM clamps the input bytes), CONCATENATION,
  MAXIMUM, MINIMUM. When such a group would have to take two different fixed quantizations (e.g.
  concatenating a LOGISTIC and a TANH output), a QUANTIZE (int8 -> int8 requantize) is inserted on the
  conflicting input.
- Other float constants (ADD/SUB/MUL operands, PRELU alpha, ...) become int8 per tensor from their own
  min/max (or their group's quantization). DIV by a constant becomes MUL by its reciprocal; DIV by a
  computed tensor is refused (its int8 range would include 0).
- Graph inputs and outputs stay float32: a QUANTIZE follows each float input and a DEQUANTIZE precedes
  each output, so the generated C API takes and returns floats.

Tensor ids are stable: tensor i of the int8 graph is the quantized version of tensor i of the float graph.
The float graph inputs/outputs are new tensors appended at the end (with the original names; the int8
tensors at the original ids get the suffix `_int8`). Inserted requantize outputs are appended too.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Op, Quant, Tensor
from edgec.quantize.ranges import (
    DEFAULT_PERCENTILE,
    METHODS,
    SAMPLE_CAP,
    RangeStats,
    choose_range,
    quant_params,
)

# op -> (index of the weights input, index of the data input, index of the bias input, channel axis)
WEIGHTED = {
    "CONV_2D": (1, 0, 2, 0),
    "DEPTHWISE_CONV_2D": (1, 0, 2, 3),
    "FULLY_CONNECTED": (1, 0, 2, 0),
    "TRANSPOSE_CONV": (1, 2, 3, 0),
}
FIXED_OUTPUT = {"SOFTMAX": (1.0 / 256, -128), "LOGISTIC": (1.0 / 256, -128), "TANH": (1.0 / 128, 0)}
# Ops whose first input and output share one quantization; and ops where all (float) inputs do.
SHARE_FIRST = {"MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "SQUEEZE", "PAD", "TRANSPOSE", "STRIDED_SLICE",
               "RELU6"}
SHARE_ALL = {"CONCATENATION", "MAXIMUM", "MINIMUM"}
# Ops with independent input / output quantization in TFLM.
FREE = {"ADD", "SUB", "MUL", "DIV", "MEAN", "RELU", "HARD_SWISH", "LEAKY_RELU", "PRELU"}
QUANTIZABLE = tuple(sorted(set(WEIGHTED) | set(FIXED_OUTPUT) | SHARE_FIRST | SHARE_ALL | FREE))
_INT32_MAX = 2**31 - 1
_BATCH = 16  # calibration samples per reference-interpreter call


def _err(graph: Graph, msg: str) -> EdgecError:
    return EdgecError(f"{graph.source}: {msg}" if graph.source else msg)


def _round(x: np.ndarray) -> np.ndarray:
    """Round half away from zero (std::round, as TFLite's quantizer)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _run_float_all(graph: Graph, inputs: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    from edgec.ir.reference import run_float_all

    return run_float_all(graph, inputs)


def fold_constants(graph: Graph) -> Graph:
    """A copy of `graph` where float ops computing only from constants are replaced by their values."""
    g = Graph(list(graph.tensors), [], list(graph.inputs), list(graph.outputs), graph.source)
    for op in graph.ops:
        ins = [i for i in op.inputs if i >= 0]
        if ins and all(g.t(i).is_const for i in ins) and all(g.t(o).dtype == "float32" for o in op.outputs):
            mini = Graph(g.tensors, [op], [], list(op.outputs), graph.source)
            values = _run_float_all(mini, [])
            for o in op.outputs:
                t = g.t(o)
                data = np.asarray(values[o], np.float32).reshape(t.shape)
                g.tensors[o] = Tensor(t.name, t.shape, t.dtype, None, data)
        else:
            g.ops.append(op)
    return g


def _check(graph: Graph) -> None:
    used = set(graph.inputs) | set(graph.outputs)
    used |= {t for op in graph.ops for t in op.inputs + op.outputs if t >= 0}
    for t in (graph.t(i) for i in sorted(used)):
        if t.quant is not None or t.dtype in ("int8", "uint8", "int16") and not t.is_const:
            raise _err(graph, f"tensor '{t.name}' is already quantized ({t.dtype}); quantize_graph takes "
                              "float models only")
    for op in graph.ops:
        if op.type not in QUANTIZABLE:
            raise _err(graph, f"{op.describe()}: {op.type} cannot be quantized to int8 by edgec (supported: "
                              f"{', '.join(QUANTIZABLE)}); use --precision float32 to keep the model float")
        for o in op.outputs:
            if graph.t(o).dtype != "float32":
                raise _err(graph, f"{op.describe()}: output '{graph.t(o).name}' is {graph.t(o).dtype} (float "
                                  "graphs compute in float32)")
        if op.type in WEIGHTED:
            wi, _, bi, _ = WEIGHTED[op.type]
            w = graph.t(op.inputs[wi])
            if not w.is_const or w.dtype != "float32":
                kind = "a constant" if w.is_const else "a computed"
                raise _err(graph, f"{op.describe()}: weights '{w.name}' are {kind} {w.dtype} tensor; edgec "
                                  "quantizes constant float32 weights only")
            if len(op.inputs) > bi and op.inputs[bi] >= 0:
                b = graph.t(op.inputs[bi])
                if not b.is_const or b.dtype != "float32":
                    raise _err(graph, f"{op.describe()}: bias '{b.name}' is not a constant float32 tensor")
        if op.type == "DIV":
            d = graph.t(op.inputs[1])
            if not d.is_const or np.any(d.data == 0):
                what = "computed tensor" if not d.is_const else "zero"
                raise _err(graph, f"{op.describe()}: DIV by a {what} "
                                  "cannot be quantized (an int8 divisor's range always holds 0; edgec "
                                  "quantizes DIV by a non-zero constant, as MUL by its reciprocal); use "
                                  "--precision float32")


# --- calibration statistics --------------------------------------------------------------------------


def _float_tensors(graph: Graph) -> list[int]:
    """Ids of the float32 activation tensors (graph inputs and op outputs)."""
    ids = [t for t in graph.inputs if graph.t(t).dtype == "float32"]
    ids += [o for op in graph.ops for o in op.outputs if graph.t(o).dtype == "float32"]
    return list(dict.fromkeys(ids))


def collect_stats(graph: Graph, calibration: list[list[np.ndarray]],
                  keep_values: bool) -> dict[int, RangeStats]:
    """Min/max (and a value subsample when `keep_values`) of every float activation over the samples."""
    ids = _float_tensors(graph)
    keep = max(256, SAMPLE_CAP // max(1, len(calibration))) if keep_values else 0
    stats = {tid: RangeStats(keep, seed=tid) for tid in ids}
    for start in range(0, len(calibration), _BATCH):
        batch = calibration[start:start + _BATCH]
        stacked = [np.stack([np.asarray(s[i]) for s in batch]) for i in range(len(graph.inputs))]
        values = _run_float_all(graph, stacked)
        for tid in ids:
            v = np.asarray(values[tid], np.float32)
            if not np.all(np.isfinite(v)):
                raise _err(graph, f"tensor '{graph.t(tid).name}' takes NaN or infinite values on the "
                                  f"calibration samples {start}..{start + len(batch) - 1}")
            for k in range(len(batch)):
                stats[tid].add(v[k])
    return stats


# --- quantization groups -----------------------------------------------------------------------------


class _Groups:
    """Union-find over tensor ids; a group may carry a fixed (scale, zero point)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.fixed: dict[int, tuple[float, int]] = {}

    def find(self, t: int) -> int:
        self.parent.setdefault(t, t)
        while self.parent[t] != t:
            self.parent[t] = self.parent[self.parent[t]]
            t = self.parent[t]
        return t

    def fix(self, t: int, q: tuple[float, int]) -> bool:
        r = self.find(t)
        if r in self.fixed and self.fixed[r] != q:
            return False
        self.fixed[r] = q
        return True

    def can_union(self, a: int, b: int) -> bool:
        fa, fb = self.fixed.get(self.find(a)), self.fixed.get(self.find(b))
        return fa is None or fb is None or fa == fb

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        q = self.fixed.pop(ra, None) or self.fixed.pop(rb, None)
        self.parent[ra] = rb
        if q is not None:
            self.fixed[rb] = q


# --- weights -----------------------------------------------------------------------------------------


def _quantize_weights(w: np.ndarray, axis: int, bias: np.ndarray | None, s_in: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per-channel symmetric int8 weights and the int32 bias: (w_q, w_scales, b_q, b_scales)."""
    w = np.asarray(w, np.float64)
    wc = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    amax = np.abs(wc).max(axis=1) if wc.size else np.zeros(w.shape[axis])
    nonzero = amax[amax > 0]
    # An all-zero channel can take any scale; a typical one keeps its bias multiplier ordinary.
    amax = np.where(amax > 0, amax, nonzero.mean() if nonzero.size else 1.0)
    scales = amax / 127.0
    if bias is not None:
        # The bias must fit int32 at scale s_in * s_w; widen the weight scale where it does not.
        need = np.abs(np.asarray(bias, np.float64).reshape(-1)) / (float(s_in) * (_INT32_MAX - 1))
        scales = np.maximum(scales, need)
    scales = scales.astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    wq = np.clip(_round(w / scales.astype(np.float64).reshape(shape)), -127, 127).astype(np.int8)
    if bias is None:
        return wq, scales, None, None
    bscales = (np.float64(np.float32(s_in)) * scales.astype(np.float64)).astype(np.float32)
    bq = _round(np.asarray(bias, np.float64).reshape(-1) / bscales.astype(np.float64))
    return wq, scales, np.clip(bq, -_INT32_MAX - 1, _INT32_MAX).astype(np.int32), bscales


def _per_tensor(scale: float, zp: int) -> Quant:
    return Quant(np.array([scale], np.float32), np.array([zp], np.int64), None)


def _quantize_const(data: np.ndarray, scale: float, zp: int) -> np.ndarray:
    q = _round(np.asarray(data, np.float64) / float(np.float32(scale))) + zp
    return np.clip(q, -128, 127).astype(np.int8)


# --- the pass ----------------------------------------------------------------------------------------


def quantize_graph(graph: Graph, calibration: list[list[np.ndarray]], method: str = "minmax",
                   percentile: float = DEFAULT_PERCENTILE) -> Graph:
    """Quantize a float32 graph to int8 (see the module docstring) with ranges calibrated on `calibration`
    (one list of input arrays per sample). `method`: minmax, percentile (clips to the `percentile`-th
    and (100 - `percentile`)-th percentiles) or mse. Raises EdgecError for what cannot be quantized."""
    if method not in METHODS:
        raise EdgecError(f"unknown calibration method '{method}' (supported: {', '.join(METHODS)})")
    if not 50.0 < percentile <= 100.0:
        raise EdgecError(f"percentile {percentile} out of range (supported: 50 < p <= 100)")
    if not calibration:
        raise _err(graph, "no calibration samples")
    for k, record in enumerate(calibration):
        if len(record) != len(graph.inputs):
            raise _err(graph, f"calibration sample {k} has {len(record)} arrays; the model has "
                              f"{len(graph.inputs)} inputs")
    graph = fold_constants(graph)
    _check(graph)
    stats = collect_stats(graph, calibration, keep_values=method != "minmax")

    tensors = [copy.copy(t) for t in graph.tensors]
    groups = _Groups()
    ops: list[Op] = []

    def new_tensor(t: Tensor) -> int:
        tensors.append(t)
        return len(tensors) - 1

    # Float constants outside weights/bias are quantized per tensor from their data (or their group's).
    const_stats: dict[int, RangeStats] = {}
    weight_ids = {op.inputs[i] for op in graph.ops if op.type in WEIGHTED
                  for i in WEIGHTED[op.type][::2] if len(op.inputs) > i and op.inputs[i] >= 0}

    for op in graph.ops:
        op = Op(op.type, list(op.inputs), list(op.outputs), dict(op.attrs), op.index, op.name)
        if op.type == "DIV":  # x / c == x * (1 / c): one rounding instead of int8 DIV's reciprocal tables
            d = graph.t(op.inputs[1])
            recip = (1.0 / d.data.astype(np.float64)).astype(np.float32)
            op.inputs[1] = new_tensor(Tensor(f"{d.name}_reciprocal", d.shape, "float32", None, recip))
            op.type = "MUL"
        share_consts = op.type in SHARE_ALL or op.type in SHARE_FIRST
        for i, tid in enumerate(op.inputs):
            if tid >= 0 and tensors[tid].is_const and tensors[tid].dtype == "float32" \
                    and tid not in weight_ids:
                if share_consts and tid in const_stats:
                    # A constant joins its op's quantization group: a copy keeps two ops' groups apart.
                    c = tensors[tid]
                    tid = op.inputs[i] = new_tensor(Tensor(c.name, c.shape, "float32", None, c.data))
                st = RangeStats()
                st.add(tensors[tid].data)
                const_stats[tid] = st
        if op.type in FIXED_OUTPUT:
            groups.fix(op.outputs[0], FIXED_OUTPUT[op.type])
        shared = []
        if op.type in SHARE_FIRST:
            shared = [0]
        elif op.type in SHARE_ALL:
            shared = [i for i, t in enumerate(op.inputs) if t >= 0 and tensors[t].dtype == "float32"]
        out = op.outputs[0]
        for i in shared:
            x = op.inputs[i]
            if groups.can_union(x, out):
                groups.union(x, out)
            else:
                # The input's quantization is fixed elsewhere: requantize it into the op's group.
                xt = tensors[x]
                x2 = new_tensor(Tensor(f"{xt.name}_requantized", xt.shape, "float32"))
                ops.append(Op("QUANTIZE", [x], [x2], {}, 0, xt.name + "_requantized"))
                stats[x2] = stats[x] if x in stats else const_stats[x]
                op.inputs[i] = x2
                groups.union(x2, out)
        ops.append(op)

    # One range per group: the union of its members' statistics (or its fixed quantization).
    members: dict[int, list[int]] = {}
    for tid in list(stats) + list(const_stats):
        members.setdefault(groups.find(tid), []).append(tid)
    qparams: dict[int, tuple[float, int]] = {}
    for root, tids in members.items():
        if root in groups.fixed:
            scale, zp = groups.fixed[root]
            q = (float(np.float32(scale)), zp)
        else:
            merged = RangeStats()
            for t in tids:
                merged.merge(stats[t] if t in stats else const_stats[t])
            # Constants are not clipped: their exact values are known.
            only_consts = all(t in const_stats for t in tids)
            lo, hi = choose_range(merged, "minmax" if only_consts else method, percentile)
            scale, zp = quant_params(lo, hi)
            q = (float(scale), zp)
        for t in tids:
            qparams[t] = q

    # Rewrite tensors: activations and plain constants to int8 per tensor.
    for tid, (scale, zp) in qparams.items():
        t = tensors[tid]
        data = None if t.data is None else _quantize_const(t.data, scale, zp)
        tensors[tid] = Tensor(t.name, t.shape, "int8", _per_tensor(scale, zp), data)

    # Weights and bias: per channel, with the op's (quantized) input scale.
    done: set[int] = set()
    for op in ops:
        if op.type not in WEIGHTED:
            continue
        wi, xi, bi, axis = WEIGHTED[op.type]
        s_in = tensors[op.inputs[xi]].scale
        w = graph.t(op.inputs[wi])
        has_bias = len(op.inputs) > bi and op.inputs[bi] >= 0
        b = graph.t(op.inputs[bi]) if has_bias else None
        wq, ws, bq, bs = _quantize_weights(w.data, axis, None if b is None else b.data, s_in)
        wquant = Quant(ws, np.zeros(len(ws), np.int64), axis)
        if op.inputs[wi] in done:  # weights shared by two ops: each gets its own copy
            op.inputs[wi] = new_tensor(Tensor(w.name, w.shape, "int8", wquant, wq))
        else:
            tensors[op.inputs[wi]] = Tensor(w.name, w.shape, "int8", wquant, wq)
            done.add(op.inputs[wi])
        if b is not None:
            bt = Tensor(b.name, b.shape, "int32", Quant(bs, np.zeros(len(bs), np.int64), 0),
                        bq.reshape(b.shape))
            if op.inputs[bi] in done:
                op.inputs[bi] = new_tensor(bt)
            else:
                tensors[op.inputs[bi]] = bt
                done.add(op.inputs[bi])

    # Float edges: QUANTIZE after each float input, DEQUANTIZE before each output.
    head: list[Op] = []
    inputs, outputs = [], []
    for tid in graph.inputs:
        t = graph.t(tid)
        if t.dtype != "float32":
            inputs.append(tid)
            continue
        fid = new_tensor(Tensor(t.name, t.shape, "float32"))
        tensors[tid].name = f"{t.name}_int8"
        head.append(Op("QUANTIZE", [fid], [tid], {}, 0, tensors[tid].name))
        inputs.append(fid)
    tail: list[Op] = []
    for tid in graph.outputs:
        t = graph.t(tid)
        if tensors[tid].dtype != "int8":
            outputs.append(tid)
            continue
        fid = new_tensor(Tensor(t.name, t.shape, "float32"))
        if not tensors[tid].name.endswith("_int8"):
            tensors[tid].name = f"{t.name}_int8"
        tail.append(Op("DEQUANTIZE", [tid], [fid], {}, 0, t.name))
        outputs.append(fid)
    all_ops = head + ops + tail
    for k, op in enumerate(all_ops):
        op.index = k
    return Graph(tensors, all_ops, inputs, outputs, graph.source)
