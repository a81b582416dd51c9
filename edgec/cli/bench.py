"""`edgec bench`: the MLPerf Tiny models on a QEMU target, next to TFLite Micro's numbers, and the cost
of a LoRA adapter on each (a synthetic rank-4 adapter on every CONV_2D / FULLY_CONNECTED layer) in fuse
mode and in slots mode, the OTA receiver's cost and on-device training's memory and instructions."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edgec.cli.verify import random_input_sets_for_model, run_project
from edgec.errors import EdgecError, TargetMemoryError
from edgec.frontends.peft_writer import synthetic_adapter
from edgec.frontends.tflite_reader import read_tflite
from edgec.oracle.tflm import tflm_min_arena
from edgec.pipeline import build
from edgec.train.plan import TrainOptions

MLPERF_TINY = ["kws_ref_model", "vww_96_int8", "pretrainedResnet_quant", "ad01_int8"]
# TFLite Micro with CMSIS-NN kernels on QEMU mps2-an386, counted the same way (figures given in issue #7).
TFLM_CMSIS_NN = {"kws_ref_model": 7_697_905, "vww_96_int8": 24_101_965, "pretrainedResnet_quant": 29_861_683,
                 "ad01_int8": 582_967}
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


OTA_SOURCES = ("edgec_ota.c", "edgec_sha256.c", "edgec_sha512.c", "edgec_ed25519.c", "edgec_flash_mem.c")
OTA_FLASH_GOAL = 8192


def ota_code_size(target: dict, work: Path) -> dict:
    """.text/.data/.bss of the OTA receiver, SHA-256 and Ed25519 compiled for `target` at -Os, and the
    largest stack frame (-fstack-usage)."""
    import subprocess

    from edgec.toolchain.runner import RUNTIME_C, ensure_tools

    ensure_tools(target)
    work.mkdir(parents=True, exist_ok=True)
    flags = [f for f in target["cflags"] if not f.startswith("-O")]
    files, frames = {}, []
    for name in OTA_SOURCES:
        obj = work / name.replace(".c", ".o")
        subprocess.run([target["cc"], *flags, "-Os", "-std=c99", "-ffunction-sections", "-fdata-sections",
                        "-fstack-usage", "-c", str(RUNTIME_C / "ota" / name), "-o", str(obj)], check=True,
                       capture_output=True, text=True)
        out = subprocess.run([target["cc"].replace("gcc", "size"), "-B", str(obj)], check=True, capture_output=True,
                             text=True).stdout.splitlines()[1].split()
        files[name] = {"text": int(out[0]), "data": int(out[1]), "bss": int(out[2])}
        frames += [int(line.split()[-2]) for line in obj.with_suffix(".su").read_text().splitlines() if line.strip()]
    text = sum(f["text"] for f in files.values())
    return {"files": files, "flash_bytes": text + sum(f["data"] for f in files.values()),
            "static_ram_bytes": sum(f["data"] + f["bss"] for f in files.values()),
            "largest_stack_frame_bytes": max(frames), "flash_goal_bytes": OTA_FLASH_GOAL}


def ota_patch_cost(models_dir: Path, target_name: str, work: Path, progress=print) -> dict:
    """Instructions (QEMU) for the device to receive, hash, verify and program a patch of about 4 KB: a
    synthetic rank-2 adapter on the KWS model's conv/FC layers."""
    from edgec.ota.keys import generate_keypair
    from edgec.ota.patch import create_patch

    model = models_dir / "kws_ref_model.tflite"
    mapping = synthetic_adapter(read_tflite(model), work / "adapter", rank=2, seed=5)
    (work / "map.json").write_text(json.dumps(mapping))
    key, pub = generate_keypair(work / "key")
    progress("kws_ref_model: OTA build and a signed patch")
    report = build(model, target_name, work / "ota", adapters=[("a", work / "adapter")], adapter_mode="slots",
                   adapter_map=work / "map.json", ota_pubkeys=[pub])
    patch = work / "a.patch"
    patch.write_bytes(create_patch(work / "ota", "a", work / "adapter", "1.0.1", 1, key,
                                   adapter_map=work / "map.json"))
    inputs = random_input_sets_for_model(model.read_bytes(), 1, seed=0)
    _, measured = run_project(work / "ota", report, inputs, "qemu", work / "run", patch=patch, measure_patch=True)
    if measured["ota_result"] != 0:
        raise EdgecError(f"the benchmark patch was rejected by the receiver (code {measured['ota_result']})")
    return {"patch_bytes": patch.stat().st_size, "instructions": measured["instructions_per_inference"]}


TINY_TRAINING_SRAM = 256 * 1024  # the SRAM budget of on-device training in Lin et al., NeurIPS 2022 (MIT)


def training_cost(models_dir: Path, target: str, work: Path, progress=print) -> dict:
    """KWS with a new rank-4 adapter on its last two layers trained on the device (Adam, batch 8): training
    memory, firmware flash and RAM, and instructions per training step (one step under QEMU)."""
    from edgec.cli.train import run_training

    model = models_dir / "kws_ref_model.tflite"
    progress("training: building kws_ref_model with --train")
    report = build(model, target, work / "train", train=TrainOptions("bench", optimizer="adam", lr=0.01))
    plain = build(model, target, work / "plain")
    rng = np.random.default_rng(0)
    shape = report["inputs"][0]["shape"]
    np.savez(work / "samples.npz", x=rng.integers(-128, 128, (16, *shape)).astype(np.int8),
             y=rng.integers(0, 12, 16))
    progress("training: one step under QEMU")
    trained = run_training(work / "train", work / "samples.npz", 1, None, "qemu")
    _, measured = run_project(work / "plain", plain, [[np.zeros(shape, np.int8)]], "qemu", work / "plain_run")
    memory = report["training"]["memory_bytes"]
    return {"model": "kws_ref_model", "layers": [la["op_index"] for la in report["training"]["layers"]],
            "rank": 4, "optimizer": "adam", "batch": report["training"]["batch"],
            "trainable_params": report["training"]["trainable_params"], "memory_bytes": memory,
            "arena_bytes": report["arena_bytes"], "peak_ram_bytes": report["arena_bytes"] + memory["total"],
            "firmware_ram_bytes": trained["ram_bytes"], "firmware_flash_bytes": trained["flash_bytes"],
            "extra_flash_bytes": trained["flash_bytes"] - measured["flash_bytes"],
            "instructions_per_step": trained["instructions_per_step"],
            "instructions_per_sample": trained["instructions_per_step"] // report["training"]["batch"],
            "inference_instructions": measured["instructions_per_inference"],
            "tiny_training_sram_budget_bytes": TINY_TRAINING_SRAM}


def run_bench(target: str, models_dir: Path | None, progress=print, adapters: bool = True,
              training: bool = True) -> dict:
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
            try:
                report = build(path, target, Path(tmp) / "project")
            except TargetMemoryError as e:  # small targets: the row says why, the other models still run
                progress(f"{name}: does not fit {target}")
                rows.append({"model": name, "does_not_fit": str(e)})
                continue
            build_s = time.perf_counter() - start
            progress(f"{name}: running under QEMU")
            inputs = random_input_sets_for_model(path.read_bytes(), 1, seed=0)
            _, measured = run_project(Path(tmp) / "project", report, inputs, "qemu", Path(tmp) / "work")
            portable = None
            if report["kernels"] != "portable":
                progress(f"{name}: portable kernels, for comparison")
                plain = build(path, target, Path(tmp) / "portable", kernels="portable")
                portable = run_project(Path(tmp) / "portable", plain, inputs, "qemu",
                                       Path(tmp) / "portable_work")[1]["instructions_per_inference"]
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
            "kernels": report["kernels"],
            "portable_instructions_per_inference": portable or measured["instructions_per_inference"],
            **({"tflm_cmsis_nn_instructions": TFLM_CMSIS_NN[name]} if target == "cortex-m4" else {}),
            "build_seconds": round(build_s, 2),
            **({"adapter": lora} if lora else {}),
        })
    result = {"target": target, "counting": "guest instructions under QEMU TCG (not cycles)", "models": rows}
    if "kws_ref_model" not in {r["model"] for r in rows if "does_not_fit" not in r}:
        adapters = training = False  # the OTA patch and the training measurements use KWS on the target
    if adapters:
        from edgec.targets import load_target

        with tempfile.TemporaryDirectory(prefix="edgec_bench_ota_") as tmp:
            progress("OTA receiver: code size")
            result["ota"] = {**ota_code_size(load_target(target), Path(tmp) / "obj"),
                             "patch": ota_patch_cost(models_dir, target, Path(tmp), progress)}
    if training:
        with tempfile.TemporaryDirectory(prefix="edgec_bench_train_") as tmp:
            result["training"] = training_cost(models_dir, target, Path(tmp), progress)
    return result


def format_table(result: dict) -> str:
    head = (f"{'model':<24} {'arena B':>9} {'TFLM min B':>11} {'lower bd B':>11} {'flash B':>9} "
            f"{'instr/inference':>16} {'portable':>12} {'TFLM+CMSIS':>11} {'build s':>8}")
    variants = "/".join(sorted({r["kernels"] for r in result["models"] if "kernels" in r}))
    title = f"target {result['target']}" + (f", {variants} kernels" if variants else "")
    lines = [f"{title} ({result['counting']})", head, "-" * len(head)]
    for r in result["models"]:
        if "does_not_fit" in r:
            lines.append(f"{r['model']:<24} does not fit: {r['does_not_fit'].split(': ', 1)[-1]}")
            continue
        cmsis = f"{r['tflm_cmsis_nn_instructions']:,}" if "tflm_cmsis_nn_instructions" in r else "-"
        lines.append(f"{r['model']:<24} {r['arena_bytes']:>9,} {r['tflm_min_arena_bytes']:>11,} "
                     f"{r['arena_lower_bound_bytes']:>11,} {r['flash_bytes']:>9,} "
                     f"{r['instructions_per_inference']:>16,} {r['portable_instructions_per_inference']:>12,} "
                     f"{cmsis:>11} {r['build_seconds']:>8.2f}")
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
    ota = result.get("ota")
    if ota:
        goal = "under" if ota["flash_bytes"] < ota["flash_goal_bytes"] else "OVER"
        lines += ["", (f"OTA receiver + SHA-256 + Ed25519 (-Os): {ota['flash_bytes']:,} B flash ({goal} the "
                      f"{ota['flash_goal_bytes']:,} B goal), {ota['static_ram_bytes']:,} B static RAM, largest stack "
                      f"frame {ota['largest_stack_frame_bytes']:,} B"),
                  (f"receive + verify + program a {ota['patch']['patch_bytes']:,}-byte patch: "
                  f"{ota['patch']['instructions']:,} instructions")]
    t = result.get("training")
    if t:
        m = t["memory_bytes"]
        budget = t["tiny_training_sram_budget_bytes"]
        lines += ["", (f"on-device training, {t['model']} rank-{t['rank']} adapter on ops {t['layers']} "
                       f"({t['trainable_params']:,} params, {t['optimizer']}, batch {t['batch']}):"),
                  (f"  training memory {m['total']:,} B (activations {m['activations']:,}, gradients "
                   f"{m['gradients']:,}, parameters {m['parameters']:,}, optimizer {m['optimizer']:,}, checkpoint "
                   f"{m['checkpoint_image']:,}) + arena {t['arena_bytes']:,} B = {t['peak_ram_bytes']:,} B "
                   f"({100 * t['peak_ram_bytes'] / budget:.0f}% of the {budget // 1024} KB SRAM of tiny-training, "
                   "NeurIPS 2022)"),
                  (f"  firmware {t['firmware_flash_bytes']:,} B flash (+{t['extra_flash_bytes']:,} B over the plain build: slot kernels, A/B banks, receiver, training), "
                   f"{t['firmware_ram_bytes']:,} B static RAM"),
                  (f"  {t['instructions_per_step']:,} instructions per step ({t['instructions_per_sample']:,} per "
                   f"sample; inference {t['inference_instructions']:,})")]
    return "\n".join(lines)


def _pct(extra: int, row: dict) -> str:
    return f"{extra:+,} ({100 * extra / row['fuse_instructions']:+.1f}%)"
