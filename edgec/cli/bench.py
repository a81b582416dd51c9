"""`edgec bench`: the MLPerf Tiny models on a QEMU target, next to TFLite Micro's numbers."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from edgec.cli.verify import random_input_sets_for_model, run_project
from edgec.errors import EdgecError
from edgec.oracle.tflm import tflm_min_arena
from edgec.pipeline import build

MLPERF_TINY = ["kws_ref_model", "vww_96_int8", "pretrainedResnet_quant", "ad01_int8"]
DEFAULT_MODELS = Path(__file__).resolve().parents[3] / "shared" / "models" / "tflite"


def run_bench(target: str, models_dir: Path | None, progress=print) -> dict:
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
    return "\n".join(lines)
