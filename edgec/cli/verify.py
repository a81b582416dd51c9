"""`edgec verify`: build, run on the host or under QEMU, and compare with the reference runtimes.

- int8 code (any model): bit-exact comparison with the TFLite Micro interpreter running the same int8
  graph (the .tflite itself, or edgec's quantized graph exported to .tflite).
- Models that were float or ONNX: accuracy against the source model's own runtime (onnxruntime for
  ONNX, TFLite Micro's float kernels for float .tflite): SQNR, max abs error, top-1 agreement; for
  already-quantized ONNX (QDQ/QOperator) the difference in output LSBs (at most 1 passes).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError
from edgec.ir.graph import Graph
from edgec.oracle.tflm import run_tflm_batch
from edgec.pipeline import build_model, is_float_graph
from edgec.targets import load_target
from edgec.toolchain.runner import build_firmware, build_host, elf_sizes, require_board, run_host, run_qemu

FLOAT32_TOLERANCE = 1e-4  # max |C - reference| / max(|reference|) for --precision float32


def random_input_sets(graph: Graph, n: int, seed: int,
                      like: list[list[np.ndarray]] | None = None) -> list[list[np.ndarray]]:
    """Integer inputs: uniform over the dtype's range. Float inputs: uniform over the range seen in `like`
    (the calibration samples) when given, else N(0, 2)."""
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(n):
        record = []
        for i, tid in enumerate(graph.inputs):
            t = graph.t(tid)
            if t.dtype == "float32":
                if like:
                    lo = min(float(s[i].min()) for s in like)
                    hi = max(float(s[i].max()) for s in like)
                    record.append(rng.uniform(lo, hi, t.shape).astype(np.float32))
                else:
                    record.append(rng.normal(0.0, 2.0, t.shape).astype(np.float32))
            else:
                info = np.iinfo(t.dtype)
                record.append(rng.integers(info.min, info.max, t.shape, endpoint=True).astype(t.dtype))
        sets.append(record)
    return sets


def random_input_sets_for_model(model_bytes: bytes, n: int, seed: int) -> list[list[np.ndarray]]:
    from edgec.frontends.tflite_reader import parse_tflite

    return random_input_sets(parse_tflite(model_bytes), n, seed)


SCALE_ONE = 1 << 16  # EDGEC_ADAPTER_SCALE_ONE (Q16)
SCALE_MAX = 16 << 16  # EDGEC_ADAPTER_SCALE_MAX


def parse_activations(specs: tuple[str, ...] | list[str], report: dict) -> list[int]:
    """--activate NAME[:SCALE] ... -> the Q16 scale of every slot of a slots-mode project (0: off)."""
    slots = int(report.get("adapter_slots", 0))
    names = {a["name"]: a["slot"] for a in report.get("adapters", []) if a.get("mode") == "slots"}
    scales = [0] * slots
    if specs and not slots:
        raise EdgecError("--activate: this model has no adapter slots (build it with --adapter NAME=DIR "
                         "--adapter-mode slots)")
    for spec in specs:
        name, sep, value = spec.partition(":")
        if name not in names:
            raise EdgecError(f"--activate '{spec}': no adapter named '{name}' (slots: {', '.join(names)})")
        try:
            scale = float(value) if sep else 1.0
        except ValueError:
            raise EdgecError(f"--activate '{spec}': scale '{value}' is not a number") from None
        q = int(np.floor(scale * SCALE_ONE + 0.5)) if np.isfinite(scale) else SCALE_MAX + 1
        if abs(q) > SCALE_MAX:
            raise EdgecError(f"--activate '{spec}': scale {value} out of range (|scale| <= 16)")
        if scales[names[name]]:
            raise EdgecError(f"--activate: adapter '{name}' given twice")
        scales[names[name]] = q
    return scales


def _refuse_npu(npu, target: str) -> None:
    """Ethos-U builds cannot run here: QEMU has no NPU (docs/npu.md)."""
    if npu:
        raise EdgecError(f"target {target} runs part of the model on an Ethos-U NPU, which neither the host nor QEMU "
                         "can run; the generated code is tested against a mock driver that checks the NPU calls and "
                         "the CPU part against TFLite Micro (tests/test_ethosu.py, docs/npu.md)")


def run_project(out_dir: Path, report: dict, input_sets: list[list[np.ndarray]], on: str,
                work_dir: Path, schedule: list[list[int]] | None = None, patch: Path | None = None,
                resets: tuple[int, ...] = (), measure_patch: bool = False, flash: Path | None = None
                ) -> tuple[list[list[np.ndarray]], dict]:
    """Run a built project; returns outputs and measurements (flash/RAM/instructions for QEMU).

    `schedule` (adapter slots): per input record the Q16 scale of every slot (one row: all records).
    `patch`: an OTA adapter patch fed to the receiver after edgec_init(); the measurements then include
    `ota_result` (the receiver's code, 0 = applied on trial), `ota_slot` and `active_version` / `ota_trial` of
    that slot. `resets`: records before which edgec_init() runs again (a simulated reset). `measure_patch`
    (QEMU): `instructions_per_inference` counts the patch's reception (begin, write, finish) instead.
    `flash`: the adapter region image `edgec train` saved, loaded (and booted) first."""
    from edgec.cli.hooks import hook_source

    _refuse_npu(report.get("npu", {}).get("ethosu_ops"), report["target"])
    specs = [(tuple(o["shape"]), o["dtype"]) for o in report["outputs"]]
    extra, measured = [], {}
    work_dir = Path(work_dir).resolve()
    result = work_dir / "ota_result.txt"
    if schedule or patch is not None or resets or flash is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        hook = work_dir / "edgec_hooks.c"
        hook.write_text(hook_source(schedule, None if patch is None else Path(patch).resolve(), result, resets,
                                    measure_patch, None if flash is None else Path(flash).resolve()))
        extra.append(hook)
        result.unlink(missing_ok=True)
    if on == "host":
        exe = build_host(out_dir, work_dir, extra_sources=extra)
        outputs = run_host(exe, input_sets, specs)
    else:
        target = load_target(report["target"])
        elf = build_firmware(out_dir, target, work_dir, extra_sources=extra)
        outputs, instructions = run_qemu(elf, target, input_sets, specs)
        sizes = elf_sizes(elf)
        measured = {"flash_bytes": sizes["text"] + sizes["data"], "ram_bytes": sizes["data"] + sizes["bss"],
                    "instructions_per_inference": instructions}
    if patch is not None:
        rc, slot, major, minor, patch_v, trial = (int(v) for v in result.read_text().split())
        measured.update(ota_result=rc, ota_slot=slot, active_version=f"{major}.{minor}.{patch_v}",
                        ota_trial=bool(trial))
    return outputs, measured


def _exact(got, want) -> tuple[int, dict | None]:
    mismatches, first = 0, None
    for r, (g_rec, w_rec) in enumerate(zip(got, want)):
        for o, (g, w) in enumerate(zip(g_rec, w_rec)):
            w = np.asarray(w).reshape(g.shape)
            if not np.array_equal(g, w):
                mismatches += 1
                if first is None:
                    idx = tuple(int(i) for i in np.argwhere(g != w)[0])
                    first = {"input": r, "output": o, "index": list(idx), "edgec": g[idx].item(),
                             "reference": w[idx].item()}
    return mismatches, first


def accuracy(got, want) -> dict:
    """SQNR (dB) of edgec's outputs against the reference, max abs error, and top-1 agreement of
    class-score outputs (last axis >= 2)."""
    sig = noise = 0.0
    max_err = 0.0
    agree = total = 0
    for g_rec, w_rec in zip(got, want):
        for g, w in zip(g_rec, w_rec):
            g = g.astype(np.float64).reshape(-1, g.shape[-1] if g.ndim else 1)
            w = np.asarray(w, np.float64).reshape(g.shape)
            sig += float((w ** 2).sum())
            noise += float(((g - w) ** 2).sum())
            max_err = max(max_err, float(np.abs(g - w).max()))
            if g.shape[-1] >= 2:
                agree += int((g.argmax(-1) == w.argmax(-1)).sum())
                total += g.shape[0]
    sqnr = float("inf") if noise == 0 else 10 * np.log10(max(sig, 1e-30) / noise)
    return {"sqnr_db": round(float(sqnr), 2) if np.isfinite(sqnr) else None, "max_abs_error": max_err,
            "top1_agreement": (agree / total) if total else None}


def _onnx_reference(model: Path, sets, input_layout: str):
    from edgec.oracle.onnxrt import run_onnxruntime

    def to_nchw(a):
        return a.transpose(0, 3, 1, 2) if input_layout == "nhwc" and a.ndim == 4 else a

    outs = run_onnxruntime(model, [[to_nchw(x) for x in rec] for rec in sets])
    return [[o.transpose(0, 2, 3, 1) if input_layout == "nhwc" and o.ndim == 4 else o for o in rec]
            for rec in outs]


def verify(model: Path, target: str, on: str, n_inputs: int | None, seed: int,
           extra_inputs: list[list[np.ndarray]], progress=print, precision: str = "int8",
           calibration: str | None = None, calibration_method: str = "minmax",
           input_layout: str = "model", adapters: list[tuple[str, Path]] | None = None,
           adapter_mode: str | None = None, adapter_map: Path | None = None, slots: int | None = None,
           activate: tuple[str, ...] = (), kernels: str | None = None) -> dict:
    """`kernels`: the kernel variant (default the target's). With adapters (fuse mode) the source model's
    reference is the base with the adapter merged: edgec's float reference interpreter on the merged float
    graph (the ONNX file alone does not hold the adapter);
    an int8 base with a fused adapter is checked bit-exact against TFLM on the requantized graph.

    Slots mode: the adapters named in `activate` (NAME[:SCALE]) are activated before every inference; the
    reference is the float base with W + sum scale_i * ΔW_i. With no adapter active the int8 output must be
    bit-exact with TFLM on the base graph; with --on qemu, the same inputs also run on the host build and
    must match bit for bit (`bitexact_host_vs_target`)."""
    model = Path(model)
    _refuse_npu(load_target(target).get("npu"), target)
    if on != "host":
        require_board(load_target(target))  # refuse before building (e.g. a PlatformIO-only target)
    model_bytes = model.read_bytes()
    with tempfile.TemporaryDirectory(prefix="edgec_verify_") as tmp:
        out_dir = Path(tmp) / "project"
        progress(f"building {model.name} for {target}")
        built = build_model(model, target, out_dir, precision=precision, calibration=calibration,
                            calibration_method=calibration_method, input_layout=input_layout, warn=progress,
                            adapters=adapters, adapter_mode=adapter_mode, adapter_map=adapter_map, slots=slots,
                            kernels=kernels)
        graph, report = built.graph, built.report
        slot_mode = built.slot_plan is not None
        if activate and not slot_mode:
            raise EdgecError("--activate needs --adapter-mode slots")
        scales = parse_activations(activate, report) if slot_mode else []
        schedule = [scales] if any(scales) else None
        quantized = built.calibration is not None
        # Float models are judged on their calibration set (real data); random inputs only on request.
        samples = built.calibration if quantized and calibration != "random" else []
        if n_inputs is None:
            n_inputs = 0 if samples else 20
        input_sets = list(extra_inputs) + list(samples) + random_input_sets(graph, n_inputs, seed, like=samples)
        if not input_sets:
            raise EdgecError("nothing to verify: --inputs 0 and no --input file")
        progress(f"running {len(input_sets)} inputs on {on}")
        got, measured = run_project(out_dir, report, input_sets, on, Path(tmp) / "work", schedule)
        host_got = None
        if slot_mode and on != "host":
            progress(f"running the same {len(input_sets)} inputs on the host build")
            host_got, _ = run_project(out_dir, report, input_sets, "host", Path(tmp) / "work_host", schedule)

    result = {
        "model": model.name, "target": target, "on": on, "precision": report["precision"],
        "inputs": len(input_sets), "bitexact": None, "mismatches": None, "first_mismatch": None,
        "arena_bytes": report["arena_bytes"], "arena_lower_bound_bytes": report["arena_lower_bound_bytes"],
        "weights_bytes": report["weights_bytes"], "flash_bytes": None, "ram_bytes": None,
        "instructions_per_inference": None,
    }
    result.update(measured)
    passed = True
    if slot_mode:
        return _verify_slots(result, built, got, host_got, input_sets, scales, adapter_map, progress)
    fused = bool(report.get("adapters"))
    if not is_float_graph(graph):
        progress("running the TFLite Micro interpreter on the same int8 graph")
        if model.suffix.lower() == ".tflite" and not quantized and not fused:
            tflm_model = model_bytes
        else:
            from edgec.oracle.ir_export import graph_to_tflite

            tflm_model = graph_to_tflite(graph)
        mismatches, first = _exact(got, run_tflm_batch(tflm_model, input_sets))
        result.update(bitexact=mismatches == 0, mismatches=mismatches, first_mismatch=first)
        passed = mismatches == 0
    # A fused int8 base has no float model to compare with (the TFLM check above covers it).
    if (model.suffix.lower() == ".onnx" and not fused) or is_float_graph(built.source_graph):
        progress("running the source model's reference runtime")
        if fused:
            from edgec.ir.reference import run_float

            reference = [run_float(built.source_graph, rec) for rec in input_sets]
            result["reference"] = "edgec float reference of the base with the adapter merged"
        elif model.suffix.lower() == ".onnx":
            reference = _onnx_reference(model, input_sets, input_layout)
        else:
            reference = run_tflm_batch(model_bytes, input_sets)
        result.update(accuracy(got, reference))
        if report["precision"] == "float32":
            scale = max(max(float(np.abs(w).max()) for w in rec) for rec in reference) or 1.0
            result["relative_error"] = result["max_abs_error"] / scale
            passed = passed and result["relative_error"] <= FLOAT32_TOLERANCE
        elif not quantized:
            # Already-quantized ONNX (QDQ/QOperator): compare in units of the output's LSB.
            lsb = [o.get("lsb") for o in _output_lsbs(graph)]
            result["max_lsb_difference"] = _max_lsb_diff(got, reference, lsb)
            passed = passed and result["max_lsb_difference"] <= 1
    if "quantization" in report:
        result["quantization"] = report["quantization"]
    if "adapters" in report:
        result["adapters"] = report["adapters"]
    result["passed"] = passed
    return result


def _output_lsbs(graph: Graph) -> list[dict]:
    """The quantization step of each graph output (the input scale of its DEQUANTIZE, or its own)."""
    producer = {o: op for op in graph.ops for o in op.outputs}
    lsbs = []
    for tid in graph.outputs:
        t = graph.t(tid)
        op = producer.get(tid)
        if t.quant is not None:
            lsbs.append({"lsb": t.scale})
        elif op is not None and op.type == "DEQUANTIZE" and graph.t(op.inputs[0]).quant is not None:
            lsbs.append({"lsb": graph.t(op.inputs[0]).scale})
        else:
            lsbs.append({"lsb": None})
    return lsbs


def _max_lsb_diff(got, reference, lsbs) -> float:
    worst = 0.0
    for g_rec, w_rec in zip(got, reference):
        for g, w, lsb in zip(g_rec, w_rec, lsbs):
            diff = np.abs(g.astype(np.float64) - np.asarray(w, np.float64).reshape(g.shape))
            worst = max(worst, float(diff.max()) / (lsb or 1.0))
    return round(worst, 3)


def _dequantized(records, specs: list[dict]) -> list[list[np.ndarray]]:
    """Quantized outputs in real units ((q - zero point) * scale); float outputs as they are."""
    return [[(np.asarray(o, np.float64) - s["zero_point"]) * s["scale"] if "scale" in s else o
             for o, s in zip(rec, specs)] for rec in records]


def _verify_slots(result: dict, built, got, host_got, input_sets, scales: list[int], adapter_map,
                  progress) -> dict:
    from edgec.ir.reference import run_float
    from edgec.passes.lora_slots import merged_graph
    from edgec.pipeline import load_adapter_map

    report = built.report
    active = {a["name"]: scales[a["slot"]] / SCALE_ONE for a in report["adapters"] if scales[a["slot"]]}
    result["active_adapters"] = active
    passed = True
    if not active:
        progress("no adapter active: running the TFLite Micro interpreter on the base int8 graph")
        from edgec.oracle.ir_export import graph_to_tflite

        mismatches, first = _exact(got, run_tflm_batch(graph_to_tflite(built.graph), input_sets))
        result.update(bitexact=mismatches == 0, mismatches=mismatches, first_mismatch=first)
        passed = mismatches == 0
    if host_got is not None:
        mismatches, first = _exact(got, host_got)
        result["bitexact_host_vs_target"] = mismatches == 0
        if first is not None:
            result["first_mismatch"] = result["first_mismatch"] or {**first, "vs": "host"}
        passed = passed and mismatches == 0
    else:
        result["bitexact_host_vs_target"] = None
    mapping = adapter_map if isinstance(adapter_map, dict) else load_adapter_map(adapter_map)
    merged = merged_graph(built.source_graph, built.adapters,
                          [scales[i] / SCALE_ONE for i in range(len(built.adapters))], mapping)
    if is_float_graph(built.source_graph):
        progress("running edgec's float reference on the base with the active adapters merged")
        reference = [run_float(merged, rec) for rec in input_sets]
        result["reference"] = "edgec float reference of the base with W + sum scale_i * dW_i"
        result.update(accuracy(got, reference))
    else:
        # An int8 base has no float model: the reference is TFLM on the base with the active adapters
        # merged into dequantized weights and requantized (compared in real units).
        from edgec.oracle.ir_export import graph_to_tflite

        progress("running the TFLite Micro interpreter on the int8 base with the active adapters merged")
        reference = run_tflm_batch(graph_to_tflite(merged), input_sets)
        result["reference"] = ("TFLite Micro on the int8 base with W + sum scale_i * dW_i merged "
                               "(dequantize, merge, requantize)")
        outs = report["outputs"]
        result.update(accuracy(_dequantized(got, outs), _dequantized(reference, outs)))
    if "quantization" in report:
        result["quantization"] = report["quantization"]
    result["adapters"] = report["adapters"]
    result["passed"] = passed
    return result
