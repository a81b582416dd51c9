"""`edgec bench`: the MLPerf Tiny models on a QEMU target, next to TFLite Micro's numbers, and the cost
of a LoRA adapter on each (a synthetic rank-4 adapter on every CONV_2D / FULLY_CONNECTED layer) in fuse
mode and in slots mode."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from edgec.cli.verify import random_input_sets_for_model, run_project
from edgec.errors import EdgecError
from edgec.frontends.peft_writer import synthetic_adapter
from edgec.frontends.tflite_reader import read_tflite
from edgec.oracle.tflm import tflm_min_arena
from edgec.pipeline import build

MLPERF_TINY = ["kws_ref_model", "vww_96_int8", "pretrainedResnet_quant", "ad01_int8"]
DEFAULT_MODELS = Path(__file__).resolve().parents[3] / "shared" / "models" / "tflite"


ADAPTER_RANK = 4


def adapter_costs(model: Path, target: str, work: Path, inputs, base: dict, progress=print) -> dict:
    """Build `model` with a synthetic rank-4 adapter fused and in one slot, run both under QEMU; the
    slot's flash, the extra RAM and instructions of slots mode (idle and active) against fuse mode."""
    mapping = synthetic_adapter(read_tflite(model), work / "adapter", rank=ADAPTER_RANK)
    (work / "map.json").write_text(json.dumps(mapping))
    options = {"adapters": [("a", work / "adapter")], "adapter_map": work / "map.json"}
    measured = {}
    for mode, schedules in (("fuse", [None]), ("slots", [None, [[1 << 16]]])):
        progress(f"{model.stem}: rank-{ADAPTER_RANK} adapter, {mode} mode")
        report = build(model, target, work / mode, adapter_mode=mode, **options)
        measured[mode] = [run_project(work / mode, report, inputs, "qemu", work / f"{mode}_run{i}", s)[1]
                          for i, s in enumerate(schedules)]
    (fuse,), (idle, active) = measured["fuse"], measured["slots"]
    return {
        "adapted_layers": len(mapping),
        "fuse_instructions": fuse["instructions_per_inference"],
        "fuse_flash_bytes": fuse["flash_bytes"] - base["flash_bytes"],
        "slot_table_bytes": report["adapter_layout_bytes"],
        "slot_bank_bytes": report["adapter_bank_bytes"],
        "slots_extra_flash_bytes": idle["flash_bytes"] - fuse["flash_bytes"],
        "slots_extra_ram_bytes": idle["ram_bytes"] - fuse["ram_bytes"],
        "slots_idle_extra_instructions": idle["instructions_per_inference"] - fuse["instructions_per_inference"],
        "slots_active_extra_instructions": active["instructions_per_inference"] - fuse["instructions_per_inference"],
    }


def run_bench(target: str, models_dir: Path | None, progress=print, adapters: bool = True) -> dict:
    models_dir = Path(models_dir) if models_dir else DEFAULT_MODELS
    missing = [m for m in MLPERF_TINY if not (models_dir / f"{m}.tflite").is_file()]
    if missing:
        raise EdgecError(f"{models_dir}: missing MLPerf Tiny model(s) {', '.join(missing)} (give --models DIR)")
    rows = []
    for name in MLPERF_TINY:
        path = models_dir / f"{name}.tflite"
        with tempfile.TemporaryDirectory(prefix="edgec_bench_") as tmp:
            progress(f"{name}: building for {target}")
            start = time.perf_counter()
            report = build(path, target, Path(tmp) / "project")
            build_s = time.perf_counter() - start
            progress(f"{name}: running under QEMU")
            inputs = random_input_sets_for_model(path.read_bytes(), 1, seed=0)
            _, measured = run_project(Path(tmp) / "project", report, inputs, "qemu", Path(tmp) / "work")
            lora = adapter_costs(path, target, Path(tmp), inputs, measured, progress) if adapters else None
        progress(f"{name}: TFLite Micro minimal arena (bisection)")
        rows.append({
            "model": name,
            "arena_bytes": report["arena_bytes"],
            "tflm_min_arena_bytes": tflm_min_arena(path),
            "arena_lower_bound_bytes": report["arena_lower_bound_bytes"],
            "weights_bytes": report["weights_bytes"],
            "flash_bytes": measured["flash_bytes"],
            "ram_bytes": measured["ram_bytes"],
            "instructions_per_inference": measured["instructions_per_inference"],
            "build_seconds": round(build_s, 2),
            **({"adapter": lora} if lora else {}),
        })
    return {"target": target, "counting": "guest instructions under QEMU TCG (not cycles)", "models": rows}


def format_table(result: dict) -> str:
    head = (f"{'model':<24} {'arena B':>9} {'TFLM min B':>11} {'lower bd B':>11} {'flash B':>9} "
            f"{'instr/inference':>16} {'build s':>8}")
    lines = [f"target {result['target']} ({result['counting']})", head, "-" * len(head)]
    for r in result["models"]:
        lines.append(f"{r['model']:<24} {r['arena_bytes']:>9,} {r['tflm_min_arena_bytes']:>11,} "
                     f"{r['arena_lower_bound_bytes']:>11,} {r['flash_bytes']:>9,} "
                     f"{r['instructions_per_inference']:>16,} {r['build_seconds']:>8.2f}")
    rows = [r for r in result["models"] if "adapter" in r]
    if rows:
        head = (f"{'rank-4 LoRA adapter':<24} {'layers':>6} {'slot B':>7} {'bank B':>7} {'+code B':>8} {'+RAM B':>7} "
                f"{'fuse instr':>12} {'slots idle +instr':>18} {'slots active +instr':>20}")
        lines += ["", head, "-" * len(head)]
        for r in rows:
            a = r["adapter"]
            lines.append(f"{r['model']:<24} {a['adapted_layers']:>6} {a['slot_table_bytes']:>7,} "
                         f"{a['slot_bank_bytes']:>7,} {a['slots_extra_flash_bytes'] - a['slot_bank_bytes']:>8,} "
                         f"{a['slots_extra_ram_bytes']:>7,} {a['fuse_instructions']:>12,} "
                         f"{_pct(a['slots_idle_extra_instructions'], a):>18} "
                         f"{_pct(a['slots_active_extra_instructions'], a):>20}")
    return "\n".join(lines)


def _pct(extra: int, row: dict) -> str:
    return f"{extra:+,} ({100 * extra / row['fuse_instructions']:+.1f}%)"
