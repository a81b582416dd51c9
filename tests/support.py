"""Shared test helpers: run models through the whole edgec pipeline and through TFLite Micro."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from edgec.cli.verify import random_input_sets_for_model
from edgec.frontends.tflite_writer import WOp, WTensor, write_tflite
from edgec.oracle.tflm import run_tflm_batch
from edgec.pipeline import build
from edgec.toolchain.runner import build_host, run_host

SHARED_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"


def shared_model(rel: str) -> Path:
    """Path of a model in ../shared/models; skips the test with the reason when it is absent."""
    path = SHARED_MODELS / rel
    if not path.is_file():
        pytest.skip(f"{path} not found: tests on real models need ../shared/models beside the checkout")
    return path


def fc_model(k: int, n: int, extra_op: str | None = None) -> bytes:
    """An int8 FULLY_CONNECTED model, K inputs -> N outputs (random weights: K * N bytes of flash), with an
    optional one-input op `extra_op` after it."""
    from edgec.frontends.tflite_writer import WOp, WTensor, write_tflite

    rng = np.random.default_rng(0)
    tensors = [
        WTensor("x", (1, k), "int8", scale=[0.05], zero_point=[3]),
        WTensor("w", (n, k), "int8", rng.integers(-127, 128, (n, k)).astype(np.int8), scale=[0.01], zero_point=[0]),
        WTensor("b", (n,), "int32", np.zeros(n, np.int32), scale=[0.0005], zero_point=[0]),
        WTensor("y", (1, n), "int8", scale=[0.1], zero_point=[-5]),
    ]
    ops = [WOp("FULLY_CONNECTED", [0, 1, 2], [3], {})]
    outputs = [3]
    if extra_op:
        tensors.append(WTensor("z", (1, n), "int8", scale=[0.1], zero_point=[-5]))
        ops.append(WOp(extra_op, [3], [4], {}))
        outputs = [4]
    return write_tflite(tensors, ops, [0], outputs)


def random_inputs(model: bytes, n: int, seed: int = 0) -> list[list[np.ndarray]]:
    """`n` input sets, as `edgec verify` draws them (full integer range; N(0, 2) for floats)."""
    return random_input_sets_for_model(model, n, seed)


@dataclass
class ModelBuilder:
    """Accumulates independent ops into one model (one build and one TFLM run check many cases);
    non-constant op inputs become graph inputs, every op output a graph output."""

    tensors: list[WTensor] = field(default_factory=list)
    ops: list[WOp] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)

    def add(self, t: WTensor) -> int:
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, name: str, ins: list[int], out: int, options: dict | None = None) -> None:
        self.ops.append(WOp(name, ins, [out], options or {}))
        produced = {o for op in self.ops[:-1] for o in op.outputs}
        for i in ins:
            if i >= 0 and self.tensors[i].data is None and i not in self.inputs and i not in produced:
                self.inputs.append(i)
        self.outputs.append(out)

    def build(self) -> bytes:
        return write_tflite(self.tensors, self.ops, self.inputs, self.outputs)


UBSAN = ["-fsanitize=undefined", "-fno-sanitize-recover=all"]


def compile_run_host(model: bytes, input_sets: list[list[np.ndarray]], cflags: list[str] | None = None,
                     **build_options) -> list[list[np.ndarray]]:
    """Build `model` with edgec for the host (`build_options` as for `edgec.pipeline.build`, e.g.
    precision="float32"), compile it with gcc (extra `cflags`, e.g. UBSAN) and run every input set."""
    with tempfile.TemporaryDirectory(prefix="edgec_test_") as tmp:
        model_path = Path(tmp) / "model.tflite"
        model_path.write_bytes(model)
        report = build(model_path, "host", Path(tmp) / "out", **build_options)
        exe = build_host(Path(tmp) / "out", Path(tmp) / "work", extra_cflags=cflags or ())
        specs = [(tuple(o["shape"]), o["dtype"]) for o in report["outputs"]]
        return run_host(exe, input_sets, specs)


def assert_matches_tflm(model: bytes, n_inputs: int = 10, seed: int = 0,
                        input_sets: list[list[np.ndarray]] | None = None, **host_options) -> None:
    """Bit-exact comparison of edgec (host build; `host_options` as for compile_run_host) with the TFLite Micro
    interpreter."""
    sets = input_sets if input_sets is not None else random_inputs(model, n_inputs, seed)
    got = compile_run_host(model, sets, **host_options)
    want = run_tflm_batch(model, sets)
    for r, (g_rec, w_rec) in enumerate(zip(got, want)):
        for o, (g, w) in enumerate(zip(g_rec, w_rec)):
            w = np.asarray(w).reshape(g.shape)
            if not np.array_equal(g, w):
                idx = np.argwhere(g != w)[0]
                raise AssertionError(f"input set {r}, output {o}: {int((g != w).sum())} of {g.size} elements differ; "
                                     f"first at {tuple(idx)}: edgec {g[tuple(idx)]} vs TFLM {w[tuple(idx)]}")


def kws_with_adapters(work: Path, adapters: dict[str, tuple[int, int]]):
    """The MLPerf KWS model from ../shared/models (skips when absent), its graph, and synthetic PEFT adapters
    NAME -> (rank, seed) written to work/NAME on all its conv/FC layers; the --adapter-map (the same for
    every adapter) goes to work/map.json. Returns (model path, graph)."""
    import json

    from edgec.frontends.peft_writer import synthetic_adapter
    from edgec.frontends.tflite_reader import read_tflite

    model = shared_model("tflite/kws_ref_model.tflite")
    graph = read_tflite(model)
    for name, (rank, seed) in adapters.items():
        mapping = synthetic_adapter(graph, work / name, rank=rank, seed=seed)
    (work / "map.json").write_text(json.dumps(mapping))
    return model, graph


def require_target(name: str = "cortex-m4") -> dict:
    """The target's settings; skips the test (with the reason) when its cross toolchain or QEMU is missing."""
    from edgec.targets import load_target
    from edgec.toolchain.runner import ToolchainError, ensure_tools

    target = load_target(name)
    try:
        ensure_tools(target)
    except ToolchainError as e:
        pytest.skip(str(e))
    return target


def peft_adapter(base, out_dir: Path, seed: int = 1, magnitude: float = 0.3, **config):
    """A PEFT LoRA model on a copy of the torch module `base` with random non-zero A and B (N(0, magnitude^2)),
    saved to `out_dir` (config: peft.LoraConfig's arguments); returns the PEFT model in eval mode."""
    import copy
    import warnings

    import peft
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**config))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * magnitude)  # fresh B is zero: a no-op adapter would prove nothing
    model.save_pretrained(str(out_dir))
    return model.eval()
