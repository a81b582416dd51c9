"""The whole build: model file -> IR -> lowered kernels -> arena plan -> C project."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgec.codegen.project import render_project
from edgec.errors import EdgecError, TargetMemoryError
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
    slot_plan: object | None = None  # slots mode: edgec.passes.lora_slots.SlotPlan
    adapters: list | None = None  # slots mode: the Adapter objects, in slot order


def prepare_graph(graph: Graph, source: str, precision: str = "int8", calibration: str | None = None,
                  method: str = "minmax", warn=print, adapters: list[tuple[str, Path]] | None = None,
                  adapter_mode: str = "fuse", adapter_map: str | Path | dict | None = None
                  ) -> tuple[Graph, dict | None, list | None]:
    """Apply adapters (fuse mode, `apply_adapters`), then quantize a float graph to int8 (or keep it float
    with precision float32).

    Returns the graph to compile, the quantization report and the calibration samples (None when
    nothing was quantized).
    """
    graph, _ = apply_adapters(graph, source, adapters, adapter_mode, adapter_map)
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


ADAPTER_MODES = ("fuse", "slots")


def adapter_mode_for(target: dict, mode: str | None) -> str:
    """The adapter mode: `mode` when given, else the target's `default_adapter_mode`, else fuse."""
    mode = mode or target.get("default_adapter_mode") or "fuse"
    if mode not in ADAPTER_MODES:
        raise EdgecError(f"unknown adapter mode '{mode}' (supported: {', '.join(ADAPTER_MODES)})")
    return mode


def load_adapter_map(path: str | Path | None) -> dict[str, str] | None:
    """--adapter-map: a JSON object {PEFT module path: ONNX initializer or TFLite tensor name}."""
    if path is None:
        return None
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgecError(f"{path}: cannot read the adapter map: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise EdgecError(f"{path}: the adapter map must be a JSON object of strings "
                         '{"<PEFT module path>": "<ONNX initializer or TFLite tensor name>"}')
    return data


def apply_adapters(graph: Graph, source: str, adapters: list[tuple[str, Path]] | None, adapter_mode: str = "fuse",
                   adapter_map: str | Path | dict | None = None) -> tuple[Graph, list[dict]]:
    """Apply LoRA adapters (NAME, PEFT_DIR) to the model graph; returns the graph and the report rows.

    fuse: exactly one adapter, merged into the weights (float graph: before quantization; int8 graph:
    dequantize, merge, requantize). slots mode does not change the graph: see `build_model` and
    `edgec.passes.lora_slots`."""
    if not adapters:
        if adapter_map is not None:
            raise EdgecError("--adapter-map given without --adapter")
        return graph, []
    if adapter_mode == "slots":
        raise EdgecError("apply_adapters merges adapters into the weights (fuse mode); slots mode keeps them "
                         "apart (build_model with adapter_mode='slots')")
    if adapter_mode != "fuse":
        raise EdgecError(f"unknown adapter mode '{adapter_mode}' (supported: {', '.join(ADAPTER_MODES)})")
    names = [n for n, _ in adapters]
    if len(set(names)) != len(names):
        raise EdgecError(f"adapter names must be unique: {', '.join(names)}")
    if len(adapters) != 1:
        raise EdgecError(f"adapter mode 'fuse' merges exactly one adapter into the weights; {len(adapters)} were "
                         f"given ({', '.join(names)}): pass one, or use slots mode for several")
    from edgec.frontends.peft_reader import read_adapter
    from edgec.passes.lora_fuse import fuse_adapter

    mapping = adapter_map if isinstance(adapter_map, dict) else load_adapter_map(adapter_map)
    (name, directory), = adapters
    adapter = read_adapter(name, directory)
    fused, rows = fuse_adapter(graph, adapter, mapping)
    return fused, [{"name": name, "path": str(directory), "mode": "fuse", "modules": rows}]


def read_adapters(adapters: list[tuple[str, Path]]) -> list:
    """Read (NAME, PEFT_DIR) pairs (names unique) into edgec.frontends.peft_reader.Adapter objects."""
    from edgec.frontends.peft_reader import read_adapter

    names = [n for n, _ in adapters]
    if len(set(names)) != len(names):
        raise EdgecError(f"adapter names must be unique: {', '.join(names)}")
    return [read_adapter(name, directory) for name, directory in adapters]


def build(model_path: str | Path, target_name: str, out_dir: str | Path, **options) -> dict:
    """Compile `model_path` for `target_name` into `out_dir`; returns the build report."""
    return build_model(model_path, target_name, out_dir, **options).report


def build_model(model_path: str | Path, target_name: str, out_dir: str | Path, precision: str = "int8",
                calibration: str | None = None, calibration_method: str = "minmax", input_layout: str = "model",
                warn=print, adapters: list[tuple[str, Path]] | None = None, adapter_mode: str | None = None,
                adapter_map: str | Path | dict | None = None, slots: int | None = None,
                ota_pubkeys: list[Path] | None = None, train=None, kernels: str | None = None) -> BuildResult:
    """Compile `model_path` for `target_name` into `out_dir` (see `build`), keeping the graphs.

    With adapters, `source_graph` is the model with the adapter merged (the float reference of a fused
    float model); `adapter_mode` None takes the target's default_adapter_mode (else fuse).
    slots mode (`slots`: number of slots, default the number of adapters): `source_graph` is the float base
    without adapters, quantized as usual (or the int8 base as read); the adapted FULLY_CONNECTED, CONV_2D (groups=1)
    and DEPTHWISE_CONV_2D layers get slot kernels. `ota_pubkeys` (PEM public keys; slots mode): A/B banks and
    the OTA receiver, accepting patches signed by those keys (docs/ota-format.md). `train`
    (edgec.train.plan.TrainOptions): the on-device training step for an adapter given with `adapters` or a
    new one (slots mode, A/B banks; docs/training.md). `kernels`: the kernel variant (edgec.lower.KERNEL_VARIANTS,
    default the target's kernel_variant)."""
    start = time.perf_counter()
    target = load_target(target_name)
    source_graph, model_bytes = load_model(model_path, input_layout)
    adapter_rows: list[dict] = []
    plan = slot_adapters = None
    mode = adapter_mode_for(target, adapter_mode) if adapters else None
    if train is not None:
        train.check()
        mode = adapter_mode or "slots"
        if mode != "slots":
            raise EdgecError("--train trains the adapter of a slot: it needs --adapter-mode slots")
    if slots is not None and mode != "slots":
        raise EdgecError("--slots needs --adapter-mode slots and at least one --adapter")
    if ota_pubkeys and mode != "slots":
        raise EdgecError("--ota-pubkey needs adapter slots (--adapter ... --adapter-mode slots): patches replace "
                         "slots")
    ota_keys = None
    if ota_pubkeys:
        from edgec.ota.keys import load_public_raw

        ota_keys = [load_public_raw(p) for p in ota_pubkeys]
    elif train is not None:
        ota_keys = []  # A/B banks for the checkpoints, no key: local updates only
    if mode == "slots":
        from edgec.passes.lora_slots import plan_slots

        if precision != "int8":
            raise EdgecError("adapter mode 'slots' generates int8 code only; use --precision int8 (or fuse mode)")
        mapping = adapter_map if isinstance(adapter_map, dict) else load_adapter_map(adapter_map)
        slot_adapters = read_adapters(adapters or [])
        if train is not None and train.adapter not in [a.name for a in slot_adapters]:
            from edgec.train.plan import add_new_adapter

            plan = plan_slots(source_graph, slot_adapters, len(slot_adapters) if slots is None else slots, mapping)
            add_new_adapter(source_graph, plan, train, slots is None)
        else:
            plan = plan_slots(source_graph, slot_adapters, slots, mapping)
        adapter_rows = plan.report()
    elif adapters:
        source_graph, adapter_rows = apply_adapters(source_graph, str(model_path), adapters, mode, adapter_map)
    elif adapter_map is not None:
        raise EdgecError("--adapter-map given without --adapter")
    graph, quant_report, samples = prepare_graph(source_graph, str(model_path), precision, calibration,
                                                 calibration_method, warn)
    variant = kernels or target.get("kernel_variant", "portable")
    # The host compiles every variant, with the micro-kernels' plain-C fallbacks (tests); other targets
    # must have the instructions.
    if variant != target.get("kernel_variant", "portable") and variant != "portable" and target["name"] != "host":
        raise EdgecError(f"--kernels {variant}: target {target['name']} does not support it (its kernels: "
                         f"{target.get('kernel_variant', 'portable')})")
    npu = None
    if target.get("npu") or any(op.type == "ETHOSU" for op in graph.ops):
        # Ethos-U targets: Vela compiles the NPU part; edgec compiles the rest around Vela's arena offsets.
        graph, npu = _npu_graph(graph, source_graph, model_path, model_bytes, target, mode, train, adapter_rows,
                                precision)
    lowered = lower_graph(graph, plan.layers if plan is not None else None, variant)
    mem = plan_memory(graph, lowered.ops, npu.offsets if npu is not None else None)
    training = None
    if train is not None:
        from edgec.train.plan import plan_for_adapter

        training = plan_for_adapter(graph, source_graph, plan, train, lowered.adapter_banks)
    report = {
        "edgec_report_version": 1,
        "model": Path(model_path).name,
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "model_path": str(Path(model_path).resolve()),
        "input_layout": input_layout,
        "target": target["name"],
        "precision": "float32" if is_float_graph(graph) else "int8",
        "kernels": variant,
        "arena_bytes": mem.arena_bytes,
        "arena_lower_bound_bytes": mem.lower_bound_bytes,
        "weights_bytes": 0,
        "inputs": [tensor_spec(graph.t(t)) for t in graph.inputs],
        "outputs": [tensor_spec(graph.t(t)) for t in graph.outputs],
        "ops": _op_table(graph, lowered, mem),
    }
    if quant_report is not None:
        report["quantization"] = quant_report
    if adapter_rows:
        report["adapters"] = adapter_rows
    if npu is not None:
        report["npu"] = npu.summary
    if mem.arena_bytes > target["ram_bytes"]:
        raise TargetMemoryError(f"{model_path}: the arena needs {mem.arena_bytes} bytes but target {target['name']} has "
                         f"{target['ram_bytes']} bytes of RAM")
    if training is not None:
        report["training"] = training.report()
        need = mem.arena_bytes + report["training"]["memory_bytes"]["total"]
        if need > target["ram_bytes"]:
            raise TargetMemoryError(f"{model_path}: training needs {need} bytes of RAM (arena {mem.arena_bytes} + training "
                             f"{report['training']['memory_bytes']['total']}) but target {target['name']} has "
                             f"{target['ram_bytes']}: train fewer layers, a lower rank or B only")
    weights = sum(graph.t(t).nbytes for t in {a.tensor for lo in lowered.ops for a in lo.args
                                                if a.kind == "tensor" and graph.t(a.tensor).is_const})
    if weights > target["flash_bytes"]:
        raise TargetMemoryError(f"{model_path}: the weights need {weights} bytes but target {target['name']} has "
                         f"{target['flash_bytes']} bytes of flash")
    report["build_seconds"] = 0.0
    render_project(lowered, mem, Path(out_dir), model_bytes, Path(model_path).name, target, report, slot_plan=plan,
                   ota_keys=ota_keys, training=training)
    report["build_seconds"] = round(time.perf_counter() - start, 3)
    return BuildResult(report, source_graph, graph, samples, plan, slot_adapters)


def _npu_graph(graph: Graph, source_graph: Graph, model_path, model_bytes: bytes, target: dict, mode, train,
               adapter_rows: list, precision: str) -> tuple[Graph, object]:
    """The graph to compile for an Ethos-U target (edgec.npu, docs/npu.md): Vela's graph of ETHOSU ops and
    CPU-fallback ops. Vela gets the .tflite as given when edgec compiles it unchanged, else the int8 graph
    exported to .tflite (quantized float and ONNX models, fused adapters)."""
    if not target.get("npu"):
        raise EdgecError(f"{model_path}: this model was compiled by Vela for an Ethos-U NPU ('ethos-u' custom ops), "
                         f"but target {target['name']} has none (NPU targets: ethos-u55-128, ethos-u55-256)")
    if precision != "int8":
        raise EdgecError(f"{model_path}: target {target['name']} has an Ethos-U NPU, which computes int8: "
                         f"--precision {precision} is not supported there")
    if mode == "slots" or train is not None:
        raise EdgecError(f"{model_path}: target {target['name']}: adapter slots and on-device training are not "
                         "supported with an Ethos-U NPU (the NPU runs Vela's compiled weights); use "
                         "--adapter-mode fuse")
    from edgec.npu import npu_graph

    as_given = Path(model_path).suffix.lower() == ".tflite" and graph is source_graph and not adapter_rows
    return npu_graph(graph, model_bytes if as_given else None, target, str(model_path))


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
