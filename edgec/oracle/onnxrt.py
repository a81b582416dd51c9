"""onnxruntime as the reference for ONNX models (float, QDQ and QOperator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def run_onnxruntime(model: Path, input_sets: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Run the ONNX model on every input set (inputs in the model's own layout and dtype)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    results = []
    for record in input_sets:
        outs = session.run(None, {n: np.ascontiguousarray(x) for n, x in zip(names, record)})
        results.append([np.asarray(o) for o in outs])
    return results
