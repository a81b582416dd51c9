"""`edgec train`: run a project's on-device training step (built with `edgec build --train`) on the host or
under QEMU, on samples from an .npz file, and report the loss curve, checkpoints and costs."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError

DEVICE_FLASH = "device-flash.bin"  # the simulated device's adapter region, kept in the project folder
_LOG_ENTRY = struct.Struct("<iiiff")


def load_samples(path: Path, report: dict) -> tuple[list[np.ndarray], bytes, int]:
    """SAMPLES.npz -> (inputs per sample, training records, count). `x`: [N, *input shape] in the input's
    dtype (int8), or float32 (quantized with the input's scale and zero point); `y`: [N] class indices (xent)
    or [N, *output shape] float targets (mse)."""
    training = report["training"]
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = data["x"], data["y"]
    except (OSError, ValueError, KeyError) as e:
        raise EdgecError(f"{path}: cannot read samples (an .npz with arrays 'x' and 'y'): {e}") from None
    spec = report["inputs"][0]
    if len(report["inputs"]) != 1:
        raise EdgecError(f"{path}: edgec train supports models with one input")
    shape = tuple(spec["shape"])
    if x.shape[1:] != shape:
        raise EdgecError(f"{path}: x has shape {list(x.shape)}, expected [N, {', '.join(map(str, shape))}]")
    if x.dtype == np.float32 and spec["dtype"] != "float32":
        info = np.iinfo(spec["dtype"])
        x = np.clip(np.round(x / spec["scale"]) + spec["zero_point"], info.min, info.max).astype(spec["dtype"])
    if x.dtype != np.dtype(spec["dtype"]):
        raise EdgecError(f"{path}: x has dtype {x.dtype}, expected {spec['dtype']} (or float32)")
    n = len(x)
    if len(y) != n or n == 0:
        raise EdgecError(f"{path}: x has {n} samples and y {len(y)}; both must have the same, non-zero count")
    if training["loss"] == "xent":
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise EdgecError(f"{path}: y must be [N] integer class indices for the xent loss")
        targets = y.astype("<i4")
    else:
        want = training["target_bytes"] // 4
        if y.reshape(n, -1).shape[1] != want:
            raise EdgecError(f"{path}: y must hold {want} float targets per sample for the mse loss")
        targets = y.reshape(n, -1).astype("<f4")
    records = b"".join(np.ascontiguousarray(x[i]).tobytes() + targets[i].tobytes() for i in range(n))
    return [[x[i]] for i in range(n)], records, n


def run_training(out_dir: Path, samples: Path, steps: int, validate_every: int | None, on: str, holdout: int = 5,
                 seed: int = 0, fresh: bool = False) -> dict:
    """Train the project's adapter on the device (host build or QEMU firmware); returns the result. The
    device's adapter region afterwards is saved to OUTDIR/device-flash.bin (`edgec run` loads it); a later
    session starts from it (the last promoted checkpoint) unless `fresh`."""
    from edgec.cli.hooks import train_hook_source
    from edgec.ota.patch import load_report
    from edgec.targets import load_target
    from edgec.toolchain.runner import build_firmware, build_host, elf_sizes, run_host, run_qemu

    out_dir = Path(out_dir)
    report = load_report(out_dir)
    if "training" not in report:
        raise EdgecError(f"{out_dir}: built without --train: it has no training step")
    if steps < 1 or holdout < 2:
        raise EdgecError("--steps must be >= 1 and --holdout >= 2")
    validate_every = validate_every or steps
    inputs, records, n = load_samples(Path(samples), report)
    specs = [(tuple(o["shape"]), o["dtype"]) for o in report["outputs"]]
    with tempfile.TemporaryDirectory(prefix="edgec_train_") as tmp:
        work = Path(tmp)
        (work / "samples.bin").write_bytes(records)
        log, flash = work / "train_log.bin", work / DEVICE_FLASH
        hook = work / "edgec_train_hooks.c"
        saved = out_dir / DEVICE_FLASH
        resumed = saved.is_file() and not fresh
        hook.write_text(train_hook_source(work / "samples.bin", log, flash, steps, validate_every, holdout, n, seed,
                                          saved.resolve() if resumed else None))
        measured: dict = {}
        if on == "host":
            exe = build_host(out_dir, work, extra_sources=[hook])
            outputs = run_host(exe, inputs, specs)
        else:
            target = load_target(report["target"])
            elf = build_firmware(out_dir, target, work, extra_sources=[hook])
            outputs, instructions = run_qemu(elf, target, inputs, specs)
            sizes = elf_sizes(elf)
            measured = {"instructions_per_step": instructions, "flash_bytes": sizes["text"] + sizes["data"],
                        "ram_bytes": sizes["data"] + sizes["bss"]}
        entries = [_LOG_ENTRY.unpack_from(log.read_bytes(), i) for i in range(0, log.stat().st_size,
                                                                                 _LOG_ENTRY.size)]
        tmp_flash = out_dir / f".{DEVICE_FLASH}.tmp"
        tmp_flash.write_bytes(flash.read_bytes())
        tmp_flash.replace(out_dir / DEVICE_FLASH)
    start = [e for e in entries if e[0] == 0]
    result = {
        "on": on, "resumed": resumed, "samples": n, "validation_samples": len(range(0, n, holdout)),
        "steps": steps,
        "batch": report["training"]["batch"], "initial_validation_loss": start[0][3] if start else None,
        "losses": [e[3] for e in entries if e[0] == 1],
        "checkpoints": [{"step": e[1], "validation_loss": e[3], "best_loss": e[4], "promoted": e[2] == 1,
                         "code": e[2]} for e in entries if e[0] == 2],
        "training_ram_bytes": report["training"]["memory_bytes"]["total"],
        "arena_bytes": report["arena_bytes"], **measured,
    }
    result["promoted"] = any(c["promoted"] for c in result["checkpoints"])
    if report["outputs"][0]["shape"][-1] > 1 and report["training"]["loss"] == "xent":
        labels = np.load(samples)["y"]
        top1 = [int(np.argmax(o[0].reshape(-1))) for o in outputs]
        result["accuracy_after"] = float(np.mean(np.asarray(top1) == labels))
    return result
