"""On-device training as users run it: `edgec build --train`, the generated training step, `edgec train` on
the host and under QEMU, and `edgec run` with the trained adapter afterwards (docs/training.md).

Oracles: PyTorch autograd (tests/train_reference.py, itself checked by finite differences) for the gradients
of the generated C; TensorFlow Lite Micro for the base model's decisions in the fine-tuning task; the QEMU
run for the firmware's behaviour.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from train_reference import tail_loss_and_grads

from edgec.cli.main import main
from edgec.errors import EdgecError
from edgec.frontends.tflite_reader import read_tflite
from edgec.oracle.tflm import run_tflm_batch
from edgec.pipeline import build_model
from edgec.train.plan import TrainOptions
from support import require_target, shared_model

KWS = "tflite/kws_ref_model.tflite"
GRAD_DRIVER = Path(__file__).parent / "train" / "grad_driver.c"


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _compile_driver(project: Path, work: Path) -> Path:
    sources = sorted((project / "src").glob("*.c")) + sorted((project / "runtime").glob("*.c"))
    exe = work / "grad_driver"
    subprocess.run(["gcc", "-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", "-DEDGEC_FLASH_MEM", "-DEDGEC_TRAIN_TEST_RNG", "-DEDGEC_OTA_LOCAL",
                    f"-I{project / 'include'}", f"-I{project / 'src'}", f"-I{project / 'runtime'}", str(GRAD_DRIVER),
                    *map(str, sources), "-o", str(exe), "-lm"], check=True)
    return exe


@pytest.mark.parametrize("tensors", ["ab", "b"])
def test_generated_gradients_match_autograd(tmp_path: Path, tensors: str) -> None:
    """KWS with a new adapter on a depthwise (op 5), a 1x1 conv (op 8) and the FC (op 11), frozen conv,
    depthwise, pooling and reshape between them: the generated C's adapter gradients (and loss) for one
    sample match PyTorch autograd on the same frozen int8 weights, params and dequantized activation."""
    model = shared_model(KWS)
    project = tmp_path / "kws"
    res = build_model(model, "host", project, train=TrainOptions("g", layers="5,8,11", rank=3, tensors=tensors))
    train = res.report["training"]
    assert [la["op_index"] for la in train["layers"]] == [5, 8, 11]
    graph = read_tflite(model)
    rng = np.random.default_rng(1)
    params = np.zeros(train["params"], np.float32)
    ref_params = {}
    for la in train["layers"]:
        r, k, oc = la["rank"], la["k"], la["oc"]
        a = rng.normal(0, 1 / np.sqrt(k), (r, k)).astype(np.float32)
        b = rng.normal(0, 0.3, (oc, r)).astype(np.float32)
        params[la["a_offset"]:la["a_offset"] + a.size] = a.reshape(-1)
        params[la["b_offset"]:la["b_offset"] + b.size] = b.reshape(-1)
        ref_params[la["op_index"]] = (a.astype(np.float64), b.astype(np.float64))
    zp = graph.t(graph.inputs[0]).zero_point
    x = np.clip(rng.normal(zp, 20, graph.t(graph.inputs[0]).shape), -128, 127).astype(np.int8)
    label = 3
    (tmp_path / "params.bin").write_bytes(params.tobytes())
    (tmp_path / "record.bin").write_bytes(x.tobytes() + np.int32(label).tobytes())
    exe = _compile_driver(project, tmp_path)
    subprocess.run([str(exe), tmp_path / "params.bin", tmp_path / "record.bin", tmp_path / "out.bin",
                    tmp_path / "arena.bin"], check=True)
    out = np.fromfile(tmp_path / "out.bin", np.float32)
    loss_c, grad_c = float(out[0]), out[1:]
    assert grad_c.size == train["trainable_params"]
    # The tail's input as the int8 prefix left it in the arena, dequantized.
    tid = graph.ops[5].inputs[0]
    row = next(r for r in res.report["ops"] if r["index"] == 5)
    offset = next(i["offset"] for i in row["inputs"] if i["tensor"] == tid)
    t = graph.t(tid)
    q = np.frombuffer((tmp_path / "arena.bin").read_bytes()[offset:offset + t.size], np.int8)
    tail_in = ((q.astype(np.float64) - t.zero_point) * np.float32(t.scale)).reshape(t.shape)
    loss_ref, grads_ref, _ = tail_loss_and_grads(graph, 5, ref_params, {tid: tail_in}, label, "xent", saturate=True)
    assert abs(loss_c - loss_ref) <= 1e-4 * max(1.0, abs(loss_ref))
    for la in train["layers"]:
        ga_ref, gb_ref = grads_ref[la["op_index"]]
        checks = [("B", la["b_offset"], gb_ref)] + ([("A", la["a_offset"], ga_ref)] if tensors == "ab" else [])
        for name, off, ref in checks:
            got = grad_c[off:off + ref.size].reshape(ref.shape)
            assert np.linalg.norm(ref) > 0, f"op {la['op_index']} {name}: zero reference gradient"
            rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
            assert rel < 1e-4, f"op {la['op_index']} d{name}: relative error {rel:.2e}"


def _shifted_task(model: Path, n: int, seed: int = 0) -> dict:
    """The synthetic shifted task: inputs are 4 random prototype spectrograms plus Gaussian noise; the label of
    each input is the class TFLite Micro's base model predicts for it, plus one (mod 12) - a user for whom
    every keyword means the next one. The base model scores 0 on it by construction."""
    rng = np.random.default_rng(seed)
    protos = rng.integers(-100, 100, (4, 1, 49, 10, 1))
    x = np.clip(protos[rng.integers(0, 4, n)] + rng.normal(0, 20, (n, 1, 49, 10, 1)), -128, 127).astype(np.int8)
    base = np.array([int(np.argmax(o[0])) for o in run_tflm_batch(model, [[xi] for xi in x])])
    return {"x": x, "y": (base + 1) % 12}


def _train(project: Path, data: Path, *args: str) -> dict:
    code, out = _cli("train", project, "--data", data, "--json", *args)
    assert code in (0, 1), out
    return json.loads(out)


def _check_promotions(result: dict) -> None:
    """A checkpoint is promoted exactly when its validation loss is below the best before it."""
    best = result["initial_validation_loss"]
    for c in result["checkpoints"]:
        assert c["promoted"] == (c["validation_loss"] < best), c
        best = min(best, c["validation_loss"]) if c["promoted"] else best
        assert c["best_loss"] == pytest.approx(best, rel=1e-6)


def test_kws_fine_tunes_under_qemu(tmp_path: Path) -> None:
    """Under QEMU cortex-m4: a new rank-4 adapter on KWS's last two layers (the last 1x1 conv and the FC)
    fine-tunes on the shifted task: the validation loss falls, checkpoints are promoted only when it falls,
    the firmware's losses equal the host build's (to float rounding), and `edgec run --activate`
    then classifies with the trained adapter."""
    require_target("cortex-m4")
    model = shared_model(KWS)
    data = tmp_path / "task.npz"
    task = _shifted_task(model, 80)
    np.savez(data, **task)
    runs = {}
    for on, tgt in (("qemu", "cortex-m4"), ("host", "host")):
        project = tmp_path / on
        code, out = _cli("build", model, "-t", tgt, "-o", project, "--train", "mine", "--optimizer", "adam",
                         "--lr", "0.01", "--train-rank", "4")
        assert code == 0, out
        runs[on] = _train(project, data, "--steps", "20", "--validate-every", "5", "--on", on)
    result = runs["qemu"]
    assert [c["step"] for c in result["checkpoints"]] == [5, 10, 15, 20]
    _check_promotions(result)
    assert result["promoted"]
    assert result["checkpoints"][-1]["best_loss"] < 0.5 * result["initial_validation_loss"]
    assert result["instructions_per_step"] > 0 and result["training_ram_bytes"] > 0
    # Same float code on both, but newlib's and glibc's expf/logf/powf round differently in the last bit.
    assert result["losses"] == pytest.approx(runs["host"]["losses"], rel=1e-3)
    # The trained adapter persists in the device's flash: edgec run uses it (base: 0 % by construction).
    np.save(tmp_path / "x.npy", task["x"])
    for name, activate in (("trained", ["--activate", "mine"]), ("base", [])):
        code, out = _cli("run", tmp_path / "qemu", "--input", tmp_path / "x.npy", "--on", "qemu",
                         "-o", tmp_path / f"{name}.npy", *activate)
        assert code == 0, out
    top1 = {n: np.load(tmp_path / f"{n}.npy").reshape(len(task["y"]), -1).argmax(1) for n in ("trained", "base")}
    assert np.mean(top1["base"] == task["y"]) == 0.0
    assert np.mean(top1["trained"] == task["y"]) >= 0.6
    assert result["accuracy_after"] == pytest.approx(np.mean(top1["trained"] == task["y"]))


def test_dp_training_is_deterministic_per_seed_under_qemu(tmp_path: Path) -> None:
    """DP-SGD (clip 1.0, noise multiplier 0.5, noise from the seeded test generator): two QEMU runs with the
    same seed give the same losses and flash; another seed gives other losses."""
    require_target("cortex-m4")
    model = shared_model(KWS)
    data = tmp_path / "task.npz"
    np.savez(data, **_shifted_task(model, 24))
    project = tmp_path / "dp"
    code, out = _cli("build", model, "-t", "cortex-m4", "-o", project, "--train", "dp", "--lr", "0.05",
                     "--train-batch", "4", "--dp-clip", "1.0", "--dp-noise", "0.5")
    assert code == 0, out
    assert json.loads((project / "edgec-report.json").read_text())["training"]["dp"] == {"clip": 1.0, "noise": 0.5}
    runs = []
    for seed in (7, 7, 8):
        runs.append(_train(project, data, "--steps", "3", "--on", "qemu", "--seed", str(seed), "--fresh"))
        runs[-1]["flash"] = (project / "device-flash.bin").read_bytes()
    assert runs[0]["losses"] == runs[1]["losses"] and runs[0]["flash"] == runs[1]["flash"]
    assert runs[0]["checkpoints"] == runs[1]["checkpoints"]
    assert runs[0]["losses"][1:] != runs[2]["losses"][1:]


def test_worse_checkpoints_are_discarded(tmp_path: Path) -> None:
    """Training records shifted, held-out records (every 5th) labelled with the base model's own decisions:
    training moves away from what validation wants, so the validation loss rises, no checkpoint is promoted
    (exit code 1), and the device keeps the starting adapter (B = 0: the base model's outputs to the bit)."""
    model = shared_model(KWS)
    data = tmp_path / "task.npz"
    task = _shifted_task(model, 30)
    task["y"][::5] = (task["y"][::5] - 1) % 12
    np.savez(data, **task)
    project = tmp_path / "p"
    code, out = _cli("build", model, "-t", "host", "-o", project, "--train", "big", "--optimizer", "adam",
                     "--lr", "0.01")
    assert code == 0, out
    assert "training RAM:" in out and "adapter 'big' (slot 0) on #8 CONV_2D r=4, #11 FULLY_CONNECTED r=4" in out
    # The emitted project builds the training step on its own: CMake (-Werror) and PlatformIO's flags.
    assert "-DEDGEC_OTA_LOCAL" in json.loads((project / "library.json").read_text())["build"]["flags"]
    subprocess.run(["cmake", "-S", project, "-B", tmp_path / "cmake"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", tmp_path / "cmake", "-j2"], check=True, capture_output=True)
    code, out = _cli("train", project, "--data", data, "--steps", "4", "--validate-every", "2", "--json")
    assert code == 1, out
    result = json.loads(out)
    _check_promotions(result)
    assert not result["promoted"] and len(result["checkpoints"]) == 2
    np.save(tmp_path / "x.npy", task["x"][:5])
    for name, activate in (("slot", ["--activate", "big"]), ("base", [])):
        code, out = _cli("run", project, "--input", tmp_path / "x.npy", "-o", tmp_path / f"{name}.npy", *activate)
        assert code == 0, out
    assert np.array_equal(np.load(tmp_path / "slot.npy"), np.load(tmp_path / "base.npy"))


def test_training_build_errors(tmp_path: Path, monkeypatch) -> None:
    """Clear errors, exit code 2, nothing written: a layer that cannot be trained, mse on a softmax output, a
    bad name, DP half given, and a target whose RAM cannot hold arena + training memory."""
    model = shared_model(KWS)
    out = tmp_path / "o"
    for args, message in ((["--train-layers", "9"], "op(s) 9 cannot be trained"),
                          (["--loss", "mse"], "ends with SOFTMAX"),
                          (["--dp-clip", "1"], "needs both --dp-clip"),
                          (["--train-layers", "x"], "expected 'auto' or op indices")):
        code, text = _cli("build", model, "-t", "host", "-o", out, "--train", "n", *args)
        assert code == 2 and message in text, text
    code, text = _cli("build", model, "-t", "host", "-o", out, "--train", "a'b")
    assert code == 2 and "adapter name" in text
    from edgec import pipeline

    small = dict(pipeline.load_target("cortex-m4"), ram_bytes=100_000)
    monkeypatch.setattr(pipeline, "load_target", lambda name: small)
    with pytest.raises(EdgecError, match="training needs .* bytes of RAM"):
        build_model(model, "cortex-m4", out, train=TrainOptions("n"))
    assert not out.exists()


def test_bench_training_cost(tmp_path: Path) -> None:
    """edgec bench's training row: the memory adds up, the firmware holds it, and a step of batch 8 costs more
    than 8 inferences' worth of the frozen int8 prefix but is measured, not guessed."""
    require_target("cortex-m4")
    from edgec.cli.bench import format_table, training_cost

    model = shared_model(KWS)
    t = training_cost(model.parent, "cortex-m4", tmp_path)
    m = t["memory_bytes"]
    assert m["total"] == sum(v for k, v in m.items() if k != "total")
    assert t["peak_ram_bytes"] == t["arena_bytes"] + m["total"]
    assert t["firmware_ram_bytes"] >= t["peak_ram_bytes"]
    assert t["extra_flash_bytes"] > 0
    assert t["instructions_per_step"] > t["batch"] * t["inference_instructions"] // 2
    assert "tiny-training" in format_table({"target": "cortex-m4", "counting": "", "models": [], "training": t})


def _small_net(path: Path) -> None:
    """A float model edgec quantizes: conv 3x3 (RELU6) -> max pool -> depthwise x2 (RELU) -> 1x1 conv ->
    residual ADD (RELU6) -> MEAN -> FC, no softmax (an mse model)."""
    from edgec.frontends.tflite_writer import WOp, WTensor, write_tflite

    rng = np.random.default_rng(3)
    tensors: list[WTensor] = []
    ops: list[WOp] = []

    def t(name: str, shape: tuple, data=None) -> int:
        tensors.append(WTensor(name, shape, "int32" if data is not None and data.dtype.kind == "i" else "float32",
                               data))
        return len(tensors) - 1

    def w(*shape: int, std: float = 0.4) -> np.ndarray:
        return rng.normal(0, std, shape).astype(np.float32)

    def op(name: str, ins: list[int], shape: tuple, options: dict | None = None) -> int:
        out = t(f"{name.lower()}_{len(ops)}", shape)
        ops.append(WOp(name, ins, [out], options or {}))
        return out

    x = t("x", (1, 8, 8, 2))
    c = op("CONV_2D", [x, t("wc", (4, 3, 3, 2), w(4, 3, 3, 2)), t("bc", (4,), w(4))], (1, 8, 8, 4),
           {"fused_activation_function": "RELU6"})
    p = op("MAX_POOL_2D", [c], (1, 4, 4, 4), {"filter_height": 2, "filter_width": 2, "stride_h": 2, "stride_w": 2})
    d = op("DEPTHWISE_CONV_2D", [p, t("wd", (1, 3, 3, 8), w(1, 3, 3, 8)), t("bd", (8,), w(8))], (1, 4, 4, 8),
           {"depth_multiplier": 2, "fused_activation_function": "RELU"})
    k = op("CONV_2D", [d, t("wk", (8, 1, 1, 8), w(8, 1, 1, 8)), t("bk", (8,), w(8))], (1, 4, 4, 8))
    s = op("ADD", [d, k], (1, 4, 4, 8), {"fused_activation_function": "RELU6"})
    m = op("MEAN", [s, t("axes", (2,), np.array([1, 2], np.int32))], (1, 1, 1, 8), {"keep_dims": True})
    r = op("RESHAPE", [m, t("shape", (2,), np.array([1, 8], np.int32))], (1, 8))
    f = op("FULLY_CONNECTED", [r, t("wf", (3, 8), w(3, 8)), t("bf", (3,), w(3))], (1, 3))
    path.write_bytes(write_tflite(tensors, ops, [x], [f]))


def test_generated_gradients_mse_maxpool_add_mean(tmp_path: Path) -> None:
    """The ops KWS does not have, in generated C against autograd: an mse model quantized by edgec (a QUANTIZE
    prefix), adapters on a conv with RELU6 and a depthwise with multiplier 2, frozen max pool, 1x1 conv,
    residual ADD (the depthwise output read twice: gradients accumulate), MEAN and RESHAPE, then an FC
    adapter; every output clamped to its int8 range as in inference."""
    import dataclasses

    model = tmp_path / "small.tflite"
    _small_net(model)
    project = tmp_path / "p"
    res = build_model(model, "host", project, calibration="random", warn=lambda m: None,
                      train=TrainOptions("s", layers="0,2,7", rank=2, loss="mse"))
    graph, train = res.graph, res.report["training"]
    first = next(i for i, op in enumerate(graph.ops) if op.index == train["layers"][0]["op_index"])
    assert graph.ops[first - 1].type == "QUANTIZE" and graph.ops[-1].type == "DEQUANTIZE"
    rng = np.random.default_rng(5)
    params = np.zeros(train["params"], np.float32)
    ref_params = {}
    for la in train["layers"]:
        a = rng.normal(0, 1 / np.sqrt(la["k"]), (la["rank"], la["k"])).astype(np.float32)
        b = rng.normal(0, 0.5, (la["oc"], la["rank"])).astype(np.float32)
        params[la["a_offset"]:la["a_offset"] + a.size] = a.reshape(-1)
        params[la["b_offset"]:la["b_offset"] + b.size] = b.reshape(-1)
        pos = next(i for i, op in enumerate(graph.ops) if op.index == la["op_index"])
        ref_params[pos] = (a.astype(np.float64), b.astype(np.float64))
    xin = graph.t(graph.inputs[0])
    x = rng.normal(0, 1, xin.shape).astype(np.float32)
    target = rng.normal(0, 1, 3).astype(np.float32)
    (tmp_path / "params.bin").write_bytes(params.tobytes())
    (tmp_path / "record.bin").write_bytes(x.tobytes() + target.tobytes())
    exe = _compile_driver(project, tmp_path)
    subprocess.run([str(exe), tmp_path / "params.bin", tmp_path / "record.bin", tmp_path / "out.bin",
                    tmp_path / "arena.bin"], check=True)
    out = np.fromfile(tmp_path / "out.bin", np.float32)
    tid = graph.ops[first].inputs[0]
    row = next(r for r in res.report["ops"] if r["index"] == graph.ops[first].index)
    offset = next(i["offset"] for i in row["inputs"] if i["tensor"] == tid)
    t = graph.t(tid)
    q = np.frombuffer((tmp_path / "arena.bin").read_bytes()[offset:offset + t.size], np.int8)
    tail_in = ((q.astype(np.float64) - t.zero_point) * np.float32(t.scale)).reshape(t.shape)
    body = dataclasses.replace(graph, ops=graph.ops[:-1], outputs=list(graph.ops[-1].inputs))  # no DEQUANTIZE
    loss_ref, grads_ref, _ = tail_loss_and_grads(body, first, ref_params, {tid: tail_in}, target, "mse",
                                                 saturate=True)
    assert abs(out[0] - loss_ref) <= 1e-4 * max(1.0, abs(loss_ref))
    for la, pos in zip(train["layers"], sorted(ref_params)):
        for off, ref in ((la["a_offset"], grads_ref[pos][0]), (la["b_offset"], grads_ref[pos][1])):
            got = out[1 + off:1 + off + ref.size].reshape(ref.shape)
            assert np.linalg.norm(ref) > 0
            assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-4, (la, off)


def test_training_resumes_from_the_promoted_checkpoint(tmp_path: Path) -> None:
    """A second session on the same device (its saved flash) starts from the promoted checkpoint, dequantized
    from the bank: its starting validation loss is the first session's best up to the table rounding; --fresh
    starts from the build's adapter again."""
    model = shared_model(KWS)
    data = tmp_path / "task.npz"
    np.savez(data, **_shifted_task(model, 40))
    project = tmp_path / "p"
    code, out = _cli("build", model, "-t", "host", "-o", project, "--train", "me", "--optimizer", "adam",
                     "--lr", "0.01")
    assert code == 0, out
    first = _train(project, data, "--steps", "10", "--validate-every", "5")
    assert first["promoted"] and not first["resumed"]
    best = first["checkpoints"][-1]["best_loss"]
    second = _train(project, data, "--steps", "1")
    assert second["resumed"]
    assert second["initial_validation_loss"] == pytest.approx(best, rel=0.02)
    assert second["initial_validation_loss"] < 0.8 * first["initial_validation_loss"]
    fresh = _train(project, data, "--steps", "1", "--fresh")
    assert fresh["initial_validation_loss"] == pytest.approx(first["initial_validation_loss"], rel=1e-6)
