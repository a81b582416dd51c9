"""The whole build: model file -> IR -> lowered kernels -> arena plan -> C project."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgec.codegen.project import render_project
from edgec.errors import EdgecError
from edgec.frontends.tflite_reader import read_tflite
from edgec.ir.graph import Graph, Tensor
from edgec.lower import lower_graph
from edgec.plan import plan_memory
from edgec.targets import load_target


def tensor_spec(t: Tensor) -> dict:
    spec = {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
    if t.quant is not None:
        spec.update(scale=t.scale, zero_point=t.zero_point)
    return spec


def load_model(path: str | Path, input_layout: str = "model") -> tuple[Graph, bytes]:
    """Read a .tflite or .onnx model into the IR. `input_layout` ("model" or "nhwc") applies to ONNX."""
    path = Path(path)
    if not path.is_file():
        raise EdgecError(f"{path}: model file not found")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return read_tflite(path), path.read_bytes()
    if suffix == ".onnx":
        from edgec.frontends.onnx_reader import read_onnx

        return read_onnx(path, input_layout=input_layout), path.read_bytes()
    raise EdgecError(f"{path}: unsupported model format '{path.suffix}' (supported: .tflite, .onnx)")


def is_float_graph(graph: Graph) -> bool:
    """True when some op computes in float32 (not just QUANTIZE/DEQUANTIZE at the graph's edges)."""
    return any(graph.t(o).dtype == "float32" for op in graph.ops if op.type != "DEQUANTIZE" for o in op.outputs)


@dataclass
class BuildResult:
    report: dict
    source_graph: Graph  # the model as read (float for float models)
    graph: Graph  # what was compiled (the int8 graph after quantization)
    calibration: list[list[np.ndarray]] | None  # the samples used for quantization, if any


def prepare_graph(graph: Graph, source: str, precision: str = "int8", calibration: str | None = None,
                  method: str = "minmax", warn=print) -> tuple[Graph, dict | None, list | None]:
    """Quantize a float graph to int8 (or keep it float with precision float32).

    Returns the graph to compile, the quantization report and the calibration samples (None when
    nothing was quantized).
    """
    if precision not in ("int8", "float32"):
        raise EdgecError(f"unknown precision '{precision}' (supported: int8, float32)")
    if precision == "float32" or not is_float_graph(graph):
        return graph, None, None
    if calibration is None:
        raise EdgecError(f"{source}: this is a float model; quantizing it to int8 needs calibration samples: "
                         "--calibration samples.npz|dir/ (or --calibration random to use random inputs, which "
                         "gives poor ranges), or --precision float32 to keep float kernels")
    from edgec.quantize import load_calibration, quantization_report, quantize_graph, random_calibration

    if calibration == "random":
        warn(f"warning: {source}: calibrating with random inputs: activation ranges (and accuracy) will not "
             "match real data")
        samples = random_calibration(graph, 32, seed=0)
    else:
        samples = load_calibration(calibration, graph)
    qgraph = quantize_graph(graph, samples, method)
    return qgraph, quantization_report(graph, qgraph, samples, method=method), samples


def build(model_path: str | Path, target_name: str, out_dir: str | Path, **options) -> dict:
    """Compile `model_path` for `target_name` into `out_dir`; returns the build report."""
    return build_model(model_path, target_name, out_dir, **options).report


def build_model(model_path: str | Path, target_name: str, out_dir: str | Path, precision: str = "int8",
                calibration: str | None = None, calibration_method: str = "minmax", input_layout: str = "model",
                warn=print) -> BuildResult:
    """Compile `model_path` for `target_name` into `out_dir` (see `build`), keeping the graphs."""
    start = time.perf_counter()
    target = load_target(target_name)
    source_graph, model_bytes = load_model(model_path, input_layout)
    graph, quant_report, samples = prepare_graph(source_graph, str(model_path), precision, calibration,
                                                 calibration_method, warn)
    lowered = lower_graph(graph)
    plan = plan_memory(graph, lowered.ops)
    report = {
        "edgec_report_version": 1,
        "model": Path(model_path).name,
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "target": target["name"],
        "precision": "float32" if is_float_graph(graph) else "int8",
        "arena_bytes": plan.arena_bytes,
        "arena_lower_bound_bytes": plan.lower_bound_bytes,
        "weights_bytes": 0,
        "inputs": [tensor_spec(graph.t(t)) for t in graph.inputs],
        "outputs": [tensor_spec(graph.t(t)) for t in graph.outputs],
        "ops": _op_table(graph, lowered, plan),
    }
    if quant_report is not None:
        report["quantization"] = quant_report
    if plan.arena_bytes > target["ram_bytes"]:
        raise EdgecError(f"{model_path}: the arena needs {plan.arena_bytes} bytes but target {target['name']} has "
                         f"{target['ram_bytes']} bytes of RAM")
    weights = sum(graph.t(t).nbytes for t in {a.tensor for lo in lowered.ops for a in lo.args
                                                if a.kind == "tensor" and graph.t(a.tensor).is_const})
    if weights > target["flash_bytes"]:
        raise EdgecError(f"{model_path}: the weights need {weights} bytes but target {target['name']} has "
                         f"{target['flash_bytes']} bytes of flash")
    report["build_seconds"] = 0.0
    render_project(lowered, plan, Path(out_dir), model_bytes, Path(model_path).name, target, report)
    report["build_seconds"] = round(time.perf_counter() - start, 3)
    return BuildResult(report, source_graph, graph, samples)


def _op_table(graph: Graph, lowered, plan) -> list[dict]:
    rows = []
    for step, (lo, kernel) in enumerate(zip(lowered.ops, lowered.kernel_of_op)):
        def where(tid: int) -> dict:
            t = graph.t(tid)
            return {"tensor": tid, "name": t.name, "shape": list(t.shape), "dtype": t.dtype, "bytes": t.nbytes,
                    "offset": plan.tensor_offset.get(tid)}
        rows.append({"index": lo.op.index, "type": lo.op.type, "name": lo.op.name, "kernel": kernel,
                     "inputs": [where(t) for t in lo.op.inputs if t >= 0 and not graph.t(t).is_const],
                     "outputs": [where(t) for t in lo.op.outputs],
                     "scratch_bytes": sum(a.scratch_bytes for a in lo.args),
                     "scratch_offset": plan.scratch_offset.get(step)})
    return rows
