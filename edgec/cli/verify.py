"""`edgec verify`: build, run on the host or under QEMU, compare with the TFLite Micro interpreter."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgec.frontends.tflite_reader import parse_tflite
from edgec.oracle.tflm import run_tflm_batch
from edgec.pipeline import build
from edgec.targets import load_target
from edgec.toolchain.runner import build_firmware, build_host, elf_sizes, run_host, run_qemu


def random_input_sets(model_bytes: bytes, n: int, seed: int) -> list[list[np.ndarray]]:
    """Uniform over the full integer range for integer inputs; N(0, 2) for float inputs."""
    graph = parse_tflite(model_bytes)
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(n):
        record = []
        for tid in graph.inputs:
            t = graph.t(tid)
            if t.dtype == "float32":
                record.append(rng.normal(0.0, 2.0, t.shape).astype(np.float32))
            else:
                info = np.iinfo(t.dtype)
                record.append(rng.integers(info.min, info.max, t.shape, endpoint=True).astype(t.dtype))
        sets.append(record)
    return sets


def run_project(out_dir: Path, report: dict, input_sets: list[list[np.ndarray]], on: str,
                work_dir: Path) -> tuple[list[list[np.ndarray]], dict]:
    """Run a built project; returns outputs and measurements (flash/RAM/instructions for QEMU)."""
    specs = [(tuple(o["shape"]), o["dtype"]) for o in report["outputs"]]
    if on == "host":
        exe = build_host(out_dir, work_dir)
        return run_host(exe, input_sets, specs), {}
    target = load_target(report["target"])
    elf = build_firmware(out_dir, target, work_dir)
    outputs, instructions = run_qemu(elf, target, input_sets, specs)
    sizes = elf_sizes(elf)
    return outputs, {"flash_bytes": sizes["text"] + sizes["data"], "ram_bytes": sizes["data"] + sizes["bss"],
                     "instructions_per_inference": instructions}


def verify(model: Path, target: str, on: str, n_inputs: int, seed: int,
           extra_inputs: list[list[np.ndarray]], progress=print) -> dict:
    model_bytes = Path(model).read_bytes()
    input_sets = extra_inputs + random_input_sets(model_bytes, n_inputs, seed)
    with tempfile.TemporaryDirectory(prefix="edgec_verify_") as tmp:
        out_dir = Path(tmp) / "project"
        progress(f"building {Path(model).name} for {target}")
        report = build(model, target, out_dir)
        progress(f"running {len(input_sets)} inputs on {on}")
        got, measured = run_project(out_dir, report, input_sets, on, Path(tmp) / "work")
    progress("running the TFLite Micro interpreter")
    want = run_tflm_batch(model_bytes, input_sets)
    mismatches, max_diff, first = 0, 0.0, None
    for r, (g_rec, w_rec) in enumerate(zip(got, want)):
        for o, (g, w) in enumerate(zip(g_rec, w_rec)):
            w = np.asarray(w).reshape(g.shape)
            if not np.array_equal(g, w):
                mismatches += 1
                diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
                max_diff = max(max_diff, float(diff.max()))
                if first is None:
                    idx = tuple(int(i) for i in np.argwhere(g != w)[0])
                    first = {"input": r, "output": o, "index": list(idx), "edgec": g[idx].item(),
                             "tflm": w[idx].item()}
    result = {
        "model": Path(model).name, "target": target, "on": on, "bitexact": mismatches == 0,
        "inputs": len(input_sets), "mismatches": mismatches, "max_abs_diff": max_diff, "first_mismatch": first,
        "arena_bytes": report["arena_bytes"], "arena_lower_bound_bytes": report["arena_lower_bound_bytes"],
        "weights_bytes": report["weights_bytes"], "flash_bytes": None, "ram_bytes": None,
        "instructions_per_inference": None,
    }
    result.update(measured)
    return result
