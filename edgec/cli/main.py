"""The `edgec` command line. Exit codes: 0 ok, 1 verification failure, 2 usage or input error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from edgec import __version__
from edgec.errors import EdgecError
from edgec.toolchain.runner import ToolchainError


def _emit_json(obj: dict) -> None:
    click.echo(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _progress(as_json: bool):
    return (lambda msg: click.echo(f"edgec: {msg}", err=True)) if not as_json else (lambda msg: None)


class EdgecGroup(click.Group):
    """Turns EdgecError/ToolchainError into a one-line message and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (EdgecError, ToolchainError) as e:
            click.echo(f"edgec: error: {e}", err=True)
            sys.exit(2)


@click.group(cls=EdgecGroup)
@click.version_option(__version__, prog_name="edgec")
def main() -> None:
    """edgec: compile TFLite models to static-memory C for microcontrollers."""


def _print_ops_table(report: dict) -> None:
    click.echo(f"{'#':>3}  {'op':<18} {'kernel':<30} {'in@offset':<22} {'out@offset':<16}")
    for row in report["ops"]:
        ins = ",".join(f"{i['bytes']}@{i['offset']}" for i in row["inputs"])
        outs = ",".join(f"{o['bytes']}@{o['offset']}" for o in row["outputs"])
        click.echo(f"{row['index']:>3}  {row['type']:<18} {row['kernel'] or '(alias)':<30} {ins:<22} {outs:<16}")


def _print_summary(report: dict) -> None:
    lb = report["arena_lower_bound_bytes"]
    click.echo(f"model {report['model']} -> target {report['target']}")
    click.echo(f"arena bytes:   {report['arena_bytes']:,} (lower bound {lb:,})")
    click.echo(f"weights bytes: {report['weights_bytes']:,}")
    click.echo(f"ops:           {len(report['ops'])}")
    q = report.get("quantization")
    if q:
        top1 = f", top-1 agreement {q['top1_agreement']:.1%}" if q.get("top1_agreement") is not None else ""
        click.echo(f"quantization:  {q['method']} on {q['samples']} samples: SQNR {q['end_to_end_sqnr_db']} dB, "
                   f"max abs error {q['max_abs_error']:.4g}{top1}")
        for layer in q.get("layers", []):
            click.echo(f"    {layer['type']:<18} {layer['sqnr_db']:>7} dB  {layer['name'][:60]}")
    n = report.get("npu")
    if n:
        click.echo(f"npu:           {n['accelerator']} (Vela {n['vela_version']}): {n['partitions']} NPU partition(s), "
                   f"{n['cpu_ops']} CPU op(s); estimate {n['cycles_total']:,} cycles ({n['cycles_npu']:,} NPU), "
                   f"{n['inference_time_s'] * 1e6:.1f} us at {n['core_clock_hz'] / 1e6:g} MHz (docs/npu.md)")
    t = report.get("training")
    if t:
        m = t["memory_bytes"]
        layers = ", ".join(f"#{la['op_index']} {la['op_type']} r={la['rank']}" for la in t["layers"])
        click.echo(f"training:      adapter '{t['adapter']}' (slot {t['slot']}) on {layers}; {t['loss']}, "
                   f"{t['optimizer']} lr {t['lr']}, batch {t['batch']}"
                   + (f", DP-SGD clip {t['dp']['clip']} noise {t['dp']['noise']}" if t["dp"] else ""))
        click.echo(f"training RAM:  {m['total']:,} bytes besides the arena (activations {m['activations']:,}, "
                   f"gradients {m['gradients']:,}, parameters {m['parameters']:,}, optimizer {m['optimizer']:,}, "
                   f"checkpoint image {m['checkpoint_image']:,})")


def model_options(func):
    """Options shared by build and verify: how a float or ONNX model is turned into int8 C."""
    for option in reversed([
        click.option("--calibration", default=None, metavar="SAMPLES.npz|DIR|random",
                     help="Calibration samples for quantizing a float model (required for float models "
                          "unless --precision float32; 'random' uses random inputs and warns)."),
        click.option("--calibration-method", type=click.Choice(["minmax", "percentile", "mse"]), default="minmax",
                     show_default=True, help="How activation ranges are chosen from the calibration samples."),
        click.option("--precision", type=click.Choice(["int8", "float32"]), default="int8", show_default=True,
                     help="int8: quantize float models; float32: keep float kernels (FPU targets, comparison)."),
        click.option("--input-layout", type=click.Choice(["model", "nhwc"]), default="model", show_default=True,
                     help="ONNX: keep the model's input/output layout (NCHW) in the C API, or use NHWC."),
        click.option("--adapter", "adapter_specs", multiple=True, metavar="NAME=PEFT_DIR",
                     help="A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors/.bin); "
                          "repeatable (slots mode)."),
        click.option("--adapter-mode", type=click.Choice(["fuse", "slots"]), default=None,
                     help="fuse: merge one adapter into the weights (no run-time cost); slots: switchable adapters. "
                          "Default: the target's default_adapter_mode, else fuse."),
        click.option("--adapter-map", type=click.Path(path_type=Path), default=None, metavar="MAP.json",
                     help="JSON object {PEFT module path: ONNX initializer or TFLite tensor name} (required for "
                          "TFLite base models)."),
        click.option("--slots", "n_slots", type=click.IntRange(1, 32), default=None,
                     help="slots mode: number of adapter slots [default: the number of --adapter]."),
        # edgec.lower.KERNEL_VARIANTS (not imported here: it loads TVM)
        click.option("--kernels", type=click.Choice(["portable", "dsp", "mve", "rv32"]), default=None,
                     help="Kernel variant [default: the target's kernel_variant]: portable C, or micro-kernels "
                          "bit-exact with it: dsp (Arm DSP extension), mve (Arm Helium), rv32 (RISC-V)."),
    ]):
        func = option(func)
    return func


def train_options(func):
    """`edgec build` options of on-device training (docs/training.md)."""
    for option in reversed([
        click.option("--train", "train_adapter", default=None, metavar="ADAPTER|NEW",
                     help="Emit the on-device training step (src/train.c) for the --adapter of this name, or for "
                          "a new adapter of this name in its own slot."),
        click.option("--train-layers", default="auto", show_default=True, metavar="auto|OP,OP,...",
                     help="Layers to train (op indices, see `edgec inspect`); auto: a new adapter's last two "
                          "FULLY_CONNECTED/CONV_2D/DEPTHWISE_CONV_2D layers, an existing adapter's layers."),
        click.option("--train-rank", type=int, default=4, show_default=True, help="Rank of a new adapter."),
        click.option("--train-tensors", type=click.Choice(["ab", "b"]), default="ab", show_default=True,
                     help="Train A and B, or B only."),
        click.option("--loss", type=click.Choice(["xent", "mse"]), default="xent", show_default=True,
                     help="xent: cross-entropy of the softmax (a final SOFTMAX is folded in); mse: mean squared "
                          "error of the output."),
        click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True),
        click.option("--lr", type=float, default=0.01, show_default=True, help="Learning rate."),
        click.option("--train-batch", type=click.IntRange(1), default=8, show_default=True,
                     help="Samples per optimizer step."),
        click.option("--dp-clip", type=float, default=None, help="DP-SGD: clip each sample's gradient to this L2 norm."),
        click.option("--dp-noise", type=float, default=None,
                     help="DP-SGD: Gaussian noise multiplier (noise std = dp-noise * dp-clip per step)."),
        click.option("--train-seed", type=int, default=0, show_default=True,
                     help="Seed of a new adapter's initial A."),
    ]):
        func = option(func)
    return func


def _train_options(train_adapter: str | None, train_layers: str, train_rank: int, train_tensors: str, loss: str,
                   optimizer: str, lr: float, train_batch: int, dp_clip: float | None, dp_noise: float | None,
                   train_seed: int):
    if train_adapter is None:
        return None
    from edgec.train.plan import TrainOptions

    return TrainOptions(train_adapter, train_layers, train_rank, loss, optimizer, lr, train_batch, train_tensors,
                        dp_clip, dp_noise, train_seed)


@main.command("build")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", required=True, help="Target name (see `edgec targets`).")
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@model_options
@click.option("--ota-pubkey", "ota_pubkeys", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Accept OTA adapter patches signed by this Ed25519 public key (PEM; repeatable; slots mode): "
                   "A/B banks per slot and the patch receiver.")
@train_options
@click.option("--json", "as_json", is_flag=True, help="Print the build report as one JSON object.")
def build_cmd(model: Path, target: str, out_dir: Path, calibration: str | None, calibration_method: str,
              precision: str, input_layout: str, adapter_specs: tuple[str, ...], adapter_mode: str | None,
              adapter_map: Path | None, n_slots: int | None, kernels: str | None, ota_pubkeys: tuple[Path, ...],
              as_json: bool, **train_args) -> None:
    """Compile MODEL (.tflite or .onnx) into a C project in OUTDIR (written atomically)."""
    from edgec.pipeline import build

    report = build(model, target, out_dir, precision=precision, calibration=calibration,
                   calibration_method=calibration_method, input_layout=input_layout,
                   warn=lambda m: click.echo(f"edgec: {m}", err=True), ota_pubkeys=list(ota_pubkeys),
                   train=_train_options(**train_args), kernels=kernels,
                   **_adapter_args(adapter_specs, adapter_mode, adapter_map, n_slots))
    if as_json:
        _emit_json(report)
        return
    _print_summary(report)
    _print_ops_table(report)
    click.echo(f"wrote {out_dir} in {report['build_seconds']:.2f} s")


def _adapter_args(specs: tuple[str, ...], mode: str | None, adapter_map: Path | None,
                  n_slots: int | None = None) -> dict:
    from edgec.frontends.peft_reader import parse_adapter_spec

    return {"adapters": [parse_adapter_spec(s) for s in specs], "adapter_mode": mode, "adapter_map": adapter_map,
            "slots": n_slots}


def _activate_option(func):
    return click.option("--activate", "activate", multiple=True, metavar="NAME[:SCALE]",
                        help="Slots mode: activate adapter NAME with SCALE (default 1.0, |SCALE| <= 16) before "
                             "every inference; repeatable.")(func)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise EdgecError(f"{path}: cannot read .npy input: {e}") from None


def _input_sets(files: tuple[Path, ...], specs: list[dict]) -> list[list[np.ndarray]]:
    """One .npy per model input (in order); each holds one input or a stack of N inputs."""
    if len(files) != len(specs):
        raise EdgecError(f"the model has {len(specs)} input(s) but {len(files)} --input file(s) were given")
    arrays = []
    for path, spec in zip(files, specs):
        a = _load_npy(path)
        shape = tuple(spec["shape"])
        if a.dtype != np.dtype(spec["dtype"]):
            raise EdgecError(f"{path}: dtype {a.dtype}, expected {spec['dtype']} for input '{spec['name']}'")
        if a.shape == shape:
            a = a[None]
        elif a.shape[1:] != shape:
            raise EdgecError(f"{path}: shape {list(a.shape)}, expected {list(shape)} or [N, {', '.join(map(str, shape))}] "
                             f"for input '{spec['name']}'")
        arrays.append(a)
    n = {len(a) for a in arrays}
    if len(n) != 1:
        raise EdgecError(f"--input files hold different numbers of inputs: {sorted(n)}")
    return [[a[i] for a in arrays] for i in range(n.pop())]


@main.command("verify")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", required=True, help="Target name.")
@click.option("--on", "on", type=click.Choice(["host", "qemu"]), default=None,
              help="Where to run: host (gcc) or qemu (firmware). Default: qemu for MCU targets, host for host.")
@click.option("--inputs", "n_inputs", type=click.IntRange(0), default=None,
              help="Number of random inputs [default: 20; 0 for float models, which are checked on their "
                   "calibration samples].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--input", "input_files", multiple=True, type=click.Path(path_type=Path),
              help="Extra input .npy file(s), one per model input, checked besides the random ones.")
@model_options
@_activate_option
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(model: Path, target: str, on: str | None, n_inputs: int | None, seed: int, input_files,
               calibration: str | None, calibration_method: str, precision: str, input_layout: str,
               adapter_specs: tuple[str, ...], adapter_mode: str | None, adapter_map: Path | None,
               n_slots: int | None, kernels: str | None, activate: tuple[str, ...], as_json: bool):
    """Compare edgec's C output with the reference runtimes. Exit 1 when it does not pass.

    int8 code must be bit-exact with TFLite Micro running the same int8 graph. Float and ONNX models are
    also compared with their own runtime (onnxruntime / TFLite Micro float): SQNR, max abs error, top-1
    agreement are reported; already-quantized ONNX must be within 1 output LSB of onnxruntime;
    --precision float32 within a relative error of 1e-4.
    """
    from edgec.cli.verify import verify
    from edgec.pipeline import load_model, tensor_spec
    from edgec.targets import load_target
    from edgec.toolchain.runner import require_board

    tgt = load_target(target)
    on = on or ("qemu" if tgt.get("qemu_machine") else "host")
    if on == "qemu":
        require_board(tgt)
    graph, _ = load_model(model, input_layout)
    extra = _input_sets(tuple(input_files), [tensor_spec(graph.t(t)) for t in graph.inputs]) if input_files else []
    result = verify(model, target, on, n_inputs, seed, extra, _progress(as_json), precision=precision,
                    calibration=calibration, calibration_method=calibration_method, input_layout=input_layout,
                    activate=activate, kernels=kernels,
                    **_adapter_args(adapter_specs, adapter_mode, adapter_map, n_slots))
    if as_json:
        _emit_json(result)
    else:
        _print_verify(result, target)
    sys.exit(0 if result["passed"] else 1)


def _print_verify(result: dict, target: str) -> None:
    where = f"{result['model']} on {target}/{result['on']} ({result['precision']}, {result['inputs']} inputs)"
    if result["bitexact"] is not None:
        status = "BIT-EXACT" if result["bitexact"] else f"MISMATCH ({result['mismatches']} outputs differ)"
        click.echo(f"{where}: {status} with TFLite Micro")
    if result.get("sqnr_db", "absent") != "absent":
        top1 = result["top1_agreement"]
        click.echo(f"vs the source model: SQNR {result['sqnr_db']} dB, max abs error {result['max_abs_error']:.4g}"
                   + (f", top-1 agreement {top1:.1%}" if top1 is not None else "")
                   + (f", max {result['max_lsb_difference']} LSB" if "max_lsb_difference" in result else ""))
    click.echo(f"arena {result['arena_bytes']:,} B (lower bound {result['arena_lower_bound_bytes']:,} B), "
               f"weights {result['weights_bytes']:,} B")
    if result.get("bitexact_host_vs_target") is not None:
        click.echo(f"host vs {result['on']}: {'BIT-EXACT' if result['bitexact_host_vs_target'] else 'MISMATCH'}")
    if result["instructions_per_inference"] is not None:
        click.echo(f"flash {result['flash_bytes']:,} B, RAM {result['ram_bytes']:,} B, "
                   f"{result['instructions_per_inference']:,} instructions per inference (QEMU)")
    if result["first_mismatch"]:
        click.echo(f"first mismatch: {result['first_mismatch']}")
    click.echo("PASS" if result["passed"] else "FAIL")


def _read_report(out_dir: Path) -> dict:
    path = Path(out_dir) / "edgec-report.json"
    if not path.is_file():
        raise EdgecError(f"{out_dir}: not an edgec output folder (no edgec-report.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EdgecError(f"{path}: malformed report: {e}") from None


@main.command("run")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--input", "input_files", multiple=True, required=True, type=click.Path(path_type=Path),
              help=".npy file per model input: one input, or a stack of N inputs along a new first axis.")
@click.option("--on", "on", type=click.Choice(["host", "qemu"]), default="host", show_default=True)
@click.option("--output", "-o", "out_file", required=True, type=click.Path(path_type=Path),
              help="Output .npy (single-output models) or .npz (several outputs, keyed by output name).")
@_activate_option
@click.option("--apply-patch", "patch_file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=None, help="Feed this OTA adapter patch to the device's receiver first (a build with "
                                 "--ota-pubkey); --activate may name the patch's adapter.")
@click.option("--json", "as_json", is_flag=True)
def run_cmd(out_dir: Path, input_files, on: str, out_file: Path, activate: tuple[str, ...], patch_file: Path | None,
            as_json: bool) -> None:
    """Run a built project (OUTDIR) on inputs from .npy files, on the host or under QEMU.

    With --activate (slots projects), the harness activates those adapters before every inference. A
    project trained with `edgec train` starts from the flash it left (OUTDIR/device-flash.bin). With
    --apply-patch the patch goes through the device's OTA receiver before the first inference (the result
    code is printed; exit code 1 if the receiver rejected it)."""
    import tempfile

    from edgec.cli.verify import parse_activations, run_project

    report = _read_report(out_dir)
    sets = _input_sets(tuple(input_files), report["inputs"])
    if patch_file is not None:
        from edgec.ota.format import peek_header

        if "ota" not in report:
            raise EdgecError(f"{out_dir}: built without --ota-pubkey: it has no OTA receiver")
        # Unchecked on purpose: judging the patch is the device receiver's job; the header only tells which
        # name --activate may use for the patched slot.
        peek = peek_header(patch_file.read_bytes())
        if peek is not None and peek[0] and 0 <= peek[1] < report["adapter_slots"]:
            named = [a for a in report.get("adapters", []) if a["slot"] != peek[1] and a["name"] != peek[0]]
            report = {**report, "adapters": named + [{"name": peek[0], "slot": peek[1], "mode": "slots"}]}
    scales = parse_activations(activate, report)
    from edgec.cli.train import DEVICE_FLASH

    flash = Path(out_dir) / DEVICE_FLASH
    flash = flash if flash.is_file() else None  # adapters trained by `edgec train` persist there
    with tempfile.TemporaryDirectory(prefix="edgec_run_") as tmp:
        outputs, measured = run_project(Path(out_dir), report, sets, on, Path(tmp),
                                        [scales] if any(scales) else None, patch_file, flash=flash)
    stacked = [np.stack([rec[o] for rec in outputs]) for o in range(len(report["outputs"]))]
    if len(sets) == 1:
        stacked = [a[0] for a in stacked]
    if len(stacked) == 1:
        np.save(out_file, stacked[0])
    else:
        np.savez(out_file, **{o["name"]: a for o, a in zip(report["outputs"], stacked)})
    result = {"outputs": str(out_file), "inferences": len(sets), "on": on, **measured}
    if as_json:
        _emit_json(result)
    else:
        if patch_file is not None:
            from edgec.ota.format import OTA_RESULTS

            code = measured["ota_result"]
            click.echo(f"patch {patch_file.name}: receiver result {code} ({OTA_RESULTS.get(code, 'unknown')}); "
                       f"slot {measured['ota_slot']} runs version {measured['active_version']}"
                       f"{' on trial' if measured['ota_trial'] else ''}")
        click.echo(f"ran {len(sets)} inference(s) on {on}; wrote {out_file}")
        if measured.get("instructions_per_inference"):
            click.echo(f"{measured['instructions_per_inference']:,} instructions per inference (QEMU)")
    if patch_file is not None and measured["ota_result"] != 0:
        sys.exit(1)


@main.command("train")
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--data", "samples", required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="SAMPLES.npz: x [N, *input shape] (int8, or float32 to quantize), y [N] class indices (xent) "
                   "or [N, *output shape] targets (mse).")
@click.option("--steps", type=click.IntRange(1), required=True, help="Optimizer steps.")
@click.option("--validate-every", type=click.IntRange(1), default=None,
              help="Checkpoint (validate, promote if better) every K steps [default: after the last step only].")
@click.option("--holdout", type=click.IntRange(2), default=5, show_default=True,
              help="Every K-th sample is held out for validation.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the test RNG (DP noise).")
@click.option("--fresh", is_flag=True, help="Start from the build's flash, not from OUTDIR/device-flash.bin (the "
                                            "adapter promoted by earlier sessions).")
@click.option("--on", "on", type=click.Choice(["host", "qemu"]), default="host", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def train_cmd(out_dir: Path, samples: Path, steps: int, validate_every: int | None, holdout: int, seed: int,
              fresh: bool, on: str, as_json: bool) -> None:
    """Fine-tune the adapter of a project built with --train, on the device (host build or QEMU).

    Feeds the samples into the device's sample buffer, runs the training steps and checkpoints, and reports the
    loss curve, the validation losses, whether a checkpoint was promoted, RAM and instructions per step. The
    device's adapter flash is kept in OUTDIR/device-flash.bin: `edgec run OUTDIR --activate NAME` then uses the
    trained adapter, and the next `edgec train` continues from it (unless --fresh). Exit code 1 if no
    checkpoint was promoted."""
    from edgec.cli.train import run_training

    result = run_training(out_dir, samples, steps, validate_every, on, holdout, seed, fresh)
    if as_json:
        _emit_json(result)
    else:
        losses = result["losses"]
        click.echo(f"trained on {on}{' (resuming the saved flash)' if result['resumed'] else ''}: {result['samples']} samples ({result['validation_samples']} held out), "
                   f"{steps} steps of batch {result['batch']}")
        click.echo(f"  validation loss at start {result['initial_validation_loss']:.4f}")
        marks = sorted({0, len(losses) // 4, len(losses) // 2, 3 * len(losses) // 4, len(losses) - 1})
        click.echo("  training loss " + ", ".join(f"step {i + 1}: {losses[i]:.4f}" for i in marks))
        for c in result["checkpoints"]:
            verdict = "promoted" if c["promoted"] else ("discarded" if c["code"] == 0 else f"error {c['code']}")
            click.echo(f"  checkpoint at step {c['step']}: validation loss {c['validation_loss']:.4f} -> {verdict}")
        click.echo(f"  training RAM {result['training_ram_bytes']:,} B (+ arena {result['arena_bytes']:,} B)")
        if result.get("instructions_per_step"):
            click.echo(f"  {result['instructions_per_step']:,} instructions per training step (QEMU)")
        if "accuracy_after" in result:
            click.echo(f"  top-1 on the samples with the adapter active: {result['accuracy_after']:.3f}")
        click.echo(f"  device flash saved to {Path(out_dir) / 'device-flash.bin'}")
    if not result["promoted"]:
        sys.exit(1)


@main.command("inspect")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def inspect_cmd(out_dir: Path, as_json: bool) -> None:
    """Show the build report of OUTDIR: memory, I/O and the per-op table."""
    report = _read_report(out_dir)
    if as_json:
        _emit_json(report)
        return
    _print_summary(report)
    for kind in ("inputs", "outputs"):
        for i, t in enumerate(report[kind]):
            q = f" scale {t['scale']:.6g} zp {t['zero_point']}" if "scale" in t else ""
            click.echo(f"{kind[:-1]} {i}: '{t['name']}' {t['dtype']} {t['shape']}{q}")
    _print_ops_table(report)


@main.command("targets")
@click.option("--json", "as_json", is_flag=True)
def targets_cmd(as_json: bool) -> None:
    """List the targets edgec knows, with their status."""
    from edgec.targets import list_targets

    rows = [{"name": t["name"], "status": t.get("status", "?"), "description": t.get("description", ""),
             "qemu_machine": t.get("qemu_machine"), "flash_bytes": t["flash_bytes"], "ram_bytes": t["ram_bytes"]}
            for t in list_targets()]
    if as_json:
        _emit_json({"targets": rows})
        return
    for r in rows:
        click.echo(f"{r['name']:<14} {r['status']:<22} {r['description']}")


@main.command("bench")
@click.option("--target", "-t", default="cortex-m4", show_default=True)
@click.option("--models", "models_dir", type=click.Path(path_type=Path), default=None,
              help="Folder with the MLPerf Tiny .tflite files (default: ../shared/models/tflite).")
@click.option("--output", "-o", "out_file", type=click.Path(path_type=Path), default=Path("bench/results.json"),
              show_default=True)
@click.option("--adapters/--no-adapters", default=True, show_default=True,
              help="Also measure a rank-4 LoRA adapter on each model in fuse and slots mode.")
@click.option("--training/--no-training", default=True, show_default=True,
              help="Measure on-device training of a rank-4 KWS adapter (memory, flash, instructions per step).")
@click.option("--json", "as_json", is_flag=True)
def bench_cmd(target: str, models_dir: Path | None, out_file: Path, adapters: bool, training: bool,
              as_json: bool) -> None:
    """Arena, flash, instructions per inference and build time for the MLPerf Tiny models; with
    --adapters the flash, RAM and instructions a LoRA adapter costs in fuse and slots mode and the OTA
    receiver's; with --training the memory, flash and instructions per step of training a KWS adapter."""
    from edgec.cli.bench import format_table, run_bench

    result = run_bench(target, models_dir, _progress(as_json), adapters, training)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        _emit_json(result)
    else:
        click.echo(format_table(result))
        click.echo(f"wrote {out_file}")


@main.command("keygen")
@click.option("-o", "--output", "key_path", type=click.Path(path_type=Path), required=True,
              help="Private key file (PEM, mode 0600); the public key goes to OUTPUT.pub.")
@click.option("--json", "as_json", is_flag=True)
def keygen_cmd(key_path: Path, as_json: bool) -> None:
    """Make an Ed25519 key pair for signing adapter patches."""
    from edgec.ota.format import key_id
    from edgec.ota.keys import generate_keypair, load_public_raw

    private, public = generate_keypair(key_path)
    result = {"private_key": str(private), "public_key": str(public), "key_id": key_id(load_public_raw(public)).hex()}
    if as_json:
        _emit_json(result)
    else:
        click.echo(f"wrote {private} (keep it secret) and {public}; key id {result['key_id']}")


@main.group("patch")
def patch_group() -> None:
    """Signed OTA adapter patches (docs/ota-format.md)."""


@patch_group.command("create")
@click.option("--build", "build_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The output folder of `edgec build` (slots mode) the patch is for.")
@click.option("--adapter", "adapter_spec", required=True, help="NAME=PEFT_DIR: the adapter to ship.")
@click.option("--version", "version", required=True, help="Semantic version MAJOR.MINOR.PATCH.")
@click.option("--counter", type=int, required=True, help="Security counter: must exceed the device's.")
@click.option("--key", "key_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--slot", type=int, default=None, help="Slot to replace (default: the slot of the same name, "
                                                     "else the first empty one).")
@click.option("--model", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The base model file (default: the path recorded in the build report).")
@click.option("--adapter-map", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("-o", "--output", "out_file", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def patch_create_cmd(build_dir: Path, adapter_spec: str, version: str, counter: int, key_path: Path,
                     slot: int | None, model: Path | None, adapter_map: Path | None, out_file: Path,
                     as_json: bool) -> None:
    """Make a signed patch that puts adapter NAME into a slot of a built firmware."""
    from edgec.frontends.peft_reader import parse_adapter_spec
    from edgec.ota.format import decode_patch
    from edgec.ota.patch import create_patch, describe

    name, directory = parse_adapter_spec(adapter_spec)
    data = create_patch(build_dir, name, directory, version, counter, key_path, model, adapter_map, slot)
    tmp = out_file.with_name(out_file.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out_file)
    result = describe(decode_patch(data, str(out_file)))
    if as_json:
        _emit_json(result)
    else:
        click.echo(f"wrote {out_file}: adapter {result['adapter']} {result['version']} for slot {result['slot']}, "
                   f"counter {result['security_counter']}, {result['bytes']:,} bytes")


@patch_group.command("inspect")
@click.argument("patch_file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True)
def patch_inspect_cmd(patch_file: Path, as_json: bool) -> None:
    """Show a patch's header (checks its structure and digest, not its signature)."""
    from edgec.ota.format import decode_patch
    from edgec.ota.patch import describe

    result = describe(decode_patch(patch_file.read_bytes(), str(patch_file)))
    if as_json:
        _emit_json(result)
    else:
        for k, v in result.items():
            click.echo(f"{k + ':':<18} {v}")


@patch_group.command("verify")
@click.argument("patch_file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--pub", "pub_path", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True)
@click.option("--build", "build_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also check that the patch fits this build (base model, slot layout, slot).")
@click.option("--json", "as_json", is_flag=True)
def patch_verify_cmd(patch_file: Path, pub_path: Path, build_dir: Path | None, as_json: bool) -> None:
    """Check a patch's structure, digest, signature and (with --build) that it fits the build."""
    from edgec.ota.keys import load_public_raw
    from edgec.ota.patch import load_report, verify_patch

    report = load_report(build_dir) if build_dir is not None else None
    result = verify_patch(patch_file.read_bytes(), load_public_raw(pub_path), report, str(patch_file))
    result["valid"] = True
    if as_json:
        _emit_json(result)
    else:
        click.echo(f"{patch_file}: valid: adapter {result['adapter']} {result['version']}, slot {result['slot']}, "
                   f"counter {result['security_counter']}")


@main.command("privacy")
@click.option("--steps", type=int, required=True, help="DP-SGD steps.")
@click.option("--sample-rate", type=float, required=True, help="Poisson sampling rate q (batch / dataset size).")
@click.option("--noise", type=float, required=True, help="Noise multiplier sigma (noise std = sigma * clip norm).")
@click.option("--delta", type=float, required=True, help="Target delta (below 1 / dataset size).")
@click.option("--json", "as_json", is_flag=True)
def privacy_cmd(steps: int, sample_rate: float, noise: float, delta: float, as_json: bool) -> None:
    """Epsilon of DP-SGD training (RDP and PLD accountants of Google's dp-accounting)."""
    from edgec.train.privacy import dp_sgd_epsilon

    result = dp_sgd_epsilon(steps, sample_rate, noise, delta)
    if as_json:
        _emit_json(result)
    else:
        click.echo(f"{steps} steps, q = {sample_rate}, sigma = {noise}: ({result['epsilon_rdp']:.4g}, {delta:g})-DP "
                   f"by RDP, ({result['epsilon_pld']:.4g}, {delta:g})-DP by PLD")
