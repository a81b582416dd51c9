"""How much accuracy quantization cost: the int8 graph (run by TFLite Micro) against the float graph
(edgec's float reference interpreter) on the calibration samples.

SQNR (signal-to-quantization-noise ratio) of a tensor = 10 log10(sum f^2 / sum (f - q)^2) over all its
elements and samples, f the float value and q the dequantized int8 value; reported in dB, clamped to
+-SQNR_CAP_DB (an exact match reports +SQNR_CAP_DB) so the report stays plain JSON.
"""

from __future__ import annotations

import math

import numpy as np

from edgec.ir.graph import Graph
from edgec.oracle.ir_export import graph_to_tflite
from edgec.oracle.tflm import TflmRunner

SQNR_CAP_DB = 200.0
_BATCH = 16
# Ops after which an output with a last dimension >= 2 is read as class scores (top-1 agreement).
_SCORE_OPS = {"SOFTMAX", "FULLY_CONNECTED"}
_PASS_THROUGH = {"RESHAPE", "SQUEEZE"}


class _Acc:
    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.max_err = 0.0
        self.agree = 0
        self.rows = 0

    def add(self, f: np.ndarray, q: np.ndarray, top1: bool) -> None:
        f = np.asarray(f, np.float64)
        q = np.asarray(q, np.float64).reshape(f.shape)
        d = f - q
        self.signal += float(np.sum(f * f))
        self.noise += float(np.sum(d * d))
        self.max_err = max(self.max_err, float(np.max(np.abs(d))) if d.size else 0.0)
        if top1:
            self.agree += int(np.sum(np.argmax(f, -1) == np.argmax(q, -1)))
            self.rows += int(np.prod(f.shape[:-1], dtype=np.int64))

    def sqnr(self) -> float:
        return sqnr_db(self.signal, self.noise)


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise) clamped to +-SQNR_CAP_DB (exact: +cap; zero signal with noise: -cap)."""
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return round(max(-SQNR_CAP_DB, min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise))), 2)


def _producer(graph: Graph) -> dict[int, object]:
    return {o: op for op in graph.ops for o in op.outputs}


def _is_scores(graph: Graph, tid: int) -> bool:
    shape = graph.t(tid).shape
    if not shape or shape[-1] < 2:
        return False
    made_by = _producer(graph)
    op = made_by.get(tid)
    while op is not None and op.type in _PASS_THROUGH:
        op = made_by.get(op.inputs[0])
    return op is not None and op.type in _SCORE_OPS


def compared_tensors(float_graph: Graph, int8_graph: Graph) -> list[int]:
    """Op outputs of the float graph that the int8 graph computes as int8 tensors with the same id."""
    out = []
    made = {o for op in int8_graph.ops for o in op.outputs}
    for op in float_graph.ops:
        for tid in op.outputs:
            if float_graph.t(tid).dtype != "float32" or tid >= len(int8_graph.tensors) or tid not in made:
                continue
            t = int8_graph.t(tid)
            if t.dtype == "int8" and t.quant is not None and not t.is_const \
                    and tid not in int8_graph.outputs and tid not in int8_graph.inputs:
                out.append(tid)
    return list(dict.fromkeys(out))


def quantization_report(float_graph: Graph, int8_graph: Graph, calibration: list[list[np.ndarray]],
                        method: str | None = None) -> dict:
    """Per-layer and end-to-end accuracy of `int8_graph` (from `quantize_graph(float_graph, ...)`) on the
    calibration samples: SQNR (dB) and max abs error per op output, end-to-end SQNR, max abs error of the
    outputs, and top-1 agreement for outputs that look like class scores (last dimension >= 2 after a
    SOFTMAX or FULLY_CONNECTED). The int8 graph runs in TFLite Micro (the bit-exact oracle of edgec's C)."""
    from edgec.ir.reference import run_float_all

    if len(float_graph.outputs) != len(int8_graph.outputs):
        raise ValueError(f"the float graph has {len(float_graph.outputs)} outputs, the int8 graph "
                         f"{len(int8_graph.outputs)}")
    layers = compared_tensors(float_graph, int8_graph)
    runner = TflmRunner(graph_to_tflite(int8_graph, extra_outputs=layers))
    n_out = len(int8_graph.outputs)
    scores = [_is_scores(float_graph, t) for t in float_graph.outputs]
    out_acc = [_Acc() for _ in float_graph.outputs]
    all_acc = _Acc()
    layer_acc = {t: _Acc() for t in layers}
    for start in range(0, len(calibration), _BATCH):
        batch = calibration[start:start + _BATCH]
        stacked = [np.stack([np.asarray(s[i]) for s in batch]) for i in range(len(float_graph.inputs))]
        ref = run_float_all(float_graph, stacked)
        for k, record in enumerate(batch):
            got = runner.run(record)
            for j, tid in enumerate(float_graph.outputs):
                f, q = ref[tid][k], got[j]
                out_acc[j].add(f, q, scores[j])
                all_acc.add(np.ravel(f), np.ravel(q), False)
            for j, tid in enumerate(layers):
                t = int8_graph.t(tid)
                q = (got[n_out + j].astype(np.float64) - t.zero_point) * float(np.float32(t.scale))
                layer_acc[tid].add(ref[tid][k], q, False)

    made_by = _producer(float_graph)
    outputs = []
    for j, tid in enumerate(float_graph.outputs):
        a = out_acc[j]
        row = {"name": float_graph.t(tid).name, "sqnr_db": a.sqnr(), "max_abs_error": a.max_err,
               "top1_agreement": a.agree / a.rows if scores[j] and a.rows else None}
        outputs.append(row)
    top1 = [o["top1_agreement"] for o in outputs if o["top1_agreement"] is not None]
    layer_rows = []
    for tid in layers:
        op, t = made_by[tid], int8_graph.t(tid)
        a = layer_acc[tid]
        layer_rows.append({"op": op.index, "type": op.type, "name": op.name,
                           "tensor": float_graph.t(tid).name, "scale": float(np.float32(t.scale)),
                           "zero_point": t.zero_point,
                           "sqnr_db": a.sqnr(), "max_abs_error": a.max_err})
    report = {
        "samples": len(calibration),
        "end_to_end_sqnr_db": all_acc.sqnr(),
        "max_abs_error": all_acc.max_err,
        "top1_agreement": top1[0] if top1 else None,
        "outputs": outputs,
        "layers": layer_rows,
    }
    if method is not None:
        report = {"method": method, **report}
    return report
