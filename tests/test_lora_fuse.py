"""LoRA fuse mode: PEFT adapters made at test time with torch + peft, merged by edgec, checked against
PEFT's own forward (float), TFLite Micro (int8, bit-exact) and clear refusals (exit 2)."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="LoRA tests need PyTorch (pip install torch) to make adapters")
peft = pytest.importorskip("peft", reason="LoRA tests need peft (pip install peft) to make adapters")

from click.testing import CliRunner

from edgec.cli.main import main
from edgec.frontends.onnx_reader import read_onnx
from edgec.frontends.tflite_reader import read_tflite
from edgec.ir.reference import run_float
from edgec.oracle.ir_export import graph_to_tflite
from edgec.oracle.tflm import run_tflm_batch
from edgec.pipeline import apply_adapters
from edgec.quantize import quantize_graph
from support import peft_adapter

nn = torch.nn
REL_TOL = 1e-4  # fused float graph vs PEFT's float forward, relative to the output's max magnitude


class ConvNet(nn.Module):
    """Conv 3x3 -> ReLU -> Conv 1x1 -> flatten (NCHW, so edgec permutes the FC columns) -> Linear."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(self.conv2(x), 1))


class DepthwiseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        return self.dw(torch.relu(self.conv(x)))


class Branches(nn.Module):
    """Two modules whose paths both end in 'fc' (for the ambiguous-match case)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential()
        self.a.fc = nn.Linear(16, 8)
        self.b = nn.Sequential()
        self.b.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.b.fc(torch.relu(self.a.fc(x)))


class Head(nn.Module):
    def __init__(self, n_in: int = 16, n_out: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.fc(x)


def _base(cls, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    m = cls(**kw).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):  # non-trivial statistics, so folding matters
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.3, 3)
                mod.weight.uniform_(0.3, 2.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m


def _export(model: nn.Module, shape, path: Path, dynamo: bool) -> Path:
    x = torch.zeros(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                torch.onnx.export(model, (x,), str(path), dynamo=True)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, do_constant_folding=False,
                              input_names=["x"], output_names=["y"])
    return path


def _forward(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _sqnr(got: np.ndarray, want: np.ndarray) -> float:
    return float(10 * np.log10((want.astype(np.float64) ** 2).sum() / ((got - want).astype(np.float64) ** 2).sum()))


def _cli(*args) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output + (res.stderr if hasattr(res, "stderr") and res.stderr else "")


CONV_CONFIGS = {
    "plain": {"r": 4, "lora_alpha": 8, "target_modules": ["conv1", "conv2", "fc"]},
    "rslora": {"r": 4, "lora_alpha": 6, "use_rslora": True, "target_modules": ["conv1", "fc"]},
    "patterns": {"r": 4, "lora_alpha": 8, "target_modules": ["conv1", "conv2", "fc"], "rank_pattern": {"fc": 2},
                     "alpha_pattern": {"conv1": 3, "conv2": 16}},
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lora")


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("cfg", list(CONV_CONFIGS))
def test_fused_float_matches_peft(work: Path, cfg: str, dynamo: bool) -> None:
    base = _base(ConvNet)
    adir = work / f"conv_{cfg}"
    peft_model = peft_adapter(base, adir, **CONV_CONFIGS[cfg])
    onnx_path = _export(base, (1, 3, 4, 4), work / f"conv_{cfg}_{dynamo}.onnx", dynamo)
    x = np.random.default_rng(0).normal(size=(5, 3, 4, 4)).astype(np.float32)
    graph = read_onnx(onnx_path)
    fused, rows = apply_adapters(graph, str(onnx_path), [("a", adir)])
    want = _forward(peft_model, x)
    got = run_float(fused, [x])[0]
    assert _rel_err(got, want) < REL_TOL
    assert _rel_err(run_float(graph, [x])[0], want) > 100 * REL_TOL  # the adapter really changes the output
    assert {m["module"] for m in rows[0]["modules"]} == set(CONV_CONFIGS[cfg]["target_modules"])
    if cfg == "patterns":
        fc = next(m for m in rows[0]["modules"] if m["module"] == "fc")
        assert fc["rank"] == 2 and fc["scale"] == 4.0


def test_batchnorm_folded_by_edgec_is_exact(work: Path) -> None:
    """A BatchNormalization node (torchscript export without constant folding): edgec folds it into the
    conv and scales ΔW by gamma / sqrt(var + eps) the same way."""
    base = _base(ConvNet, bn=True)
    adir = work / "bn"
    peft_model = peft_adapter(base, adir, r=4, lora_alpha=8, target_modules=["conv1", "fc"])
    onnx_path = _export(base, (1, 3, 4, 4), work / "bn.onnx", dynamo=False)
    x = np.random.default_rng(1).normal(size=(5, 3, 4, 4)).astype(np.float32)
    fused, rows = apply_adapters(read_onnx(onnx_path), str(onnx_path), [("a", adir)])
    assert next(m for m in rows[0]["modules"] if m["module"] == "conv1")["channel_scaled"]
    assert _rel_err(run_float(fused, [x])[0], _forward(peft_model, x)) < REL_TOL


def test_batchnorm_folded_by_dynamo_exporter_is_refused(work: Path) -> None:
    """The trap: dynamo folds BN into 'conv1.weight' and keeps the name; merging by name would be wrong."""
    base = _base(ConvNet, bn=True)
    adir = work / "bn_dyn"
    peft_adapter(base, adir, r=4, lora_alpha=8, target_modules=["conv1"])
    onnx_path = _export(base, (1, 3, 4, 4), work / "bn_dyn.onnx", dynamo=True)
    assert (work / "bn_dyn.onnx.data").is_file()  # external weights are read too
    code, out = _cli("build", onnx_path, "-t", "host", "-o", work / "out_bn_dyn", "--calibration", "random",
                     "--adapter", f"a={adir}")
    assert code == 2, out
    assert "folded a BatchNorm into initializer 'conv1.weight'" in out and "do_constant_folding=False" in out
    # Modules the exporter did not touch still fuse from the same file.
    adir2 = work / "bn_dyn_fc"
    peft_model = peft_adapter(base, adir2, r=4, lora_alpha=8, target_modules=["fc"])
    x = np.random.default_rng(2).normal(size=(3, 3, 4, 4)).astype(np.float32)
    fused, _ = apply_adapters(read_onnx(onnx_path), str(onnx_path), [("a", adir2)])
    assert _rel_err(run_float(fused, [x])[0], _forward(peft_model, x)) < REL_TOL


def test_verify_onnx_fused_bitexact_and_sqnr(work: Path) -> None:
    base = _base(ConvNet)
    adir = work / "verify"
    peft_model = peft_adapter(base, adir, r=4, lora_alpha=8, target_modules=["conv1", "conv2", "fc"])
    onnx_path = _export(base, (1, 3, 4, 4), work / "verify.onnx", dynamo=False)
    cal = np.random.default_rng(3).normal(size=(32, 1, 3, 4, 4)).astype(np.float32)
    np.savez(work / "cal.npz", x=cal)
    code, out = _cli("verify", onnx_path, "-t", "host", "--adapter", f"a={adir}", "--adapter-mode", "fuse",
                     "--calibration", work / "cal.npz", "--json")
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["bitexact"] is True and result["mismatches"] == 0
    assert result["sqnr_db"] is not None and result["sqnr_db"] > 25, result
    assert result["adapters"][0]["name"] == "a" and len(result["adapters"][0]["modules"]) == 3
    # The reference verify used is PEFT's own model (up to float rounding).
    onnx_graph = read_onnx(onnx_path)
    fused, _ = apply_adapters(onnx_graph, str(onnx_path), [("a", adir)])
    xs = cal[:, 0]
    assert _rel_err(run_float(fused, [xs])[0], _forward(peft_model, xs)) < REL_TOL


def test_int8_tflite_base_with_adapter_map(work: Path) -> None:
    """Quantize a float Linear model with edgec, export it as an int8 .tflite, fuse an adapter into the int8
    base through --adapter-map: bit-exact with TFLM and close to PEFT's float merged model."""
    torch.manual_seed(4)
    base = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    adir = work / "int8"
    # A fine-tuning-sized change: the int8 base keeps its calibrated activation ranges, which a large ΔW
    # would saturate.
    peft_model = peft_adapter(base, adir, magnitude=0.12, r=4, lora_alpha=4, target_modules=["0", "2"])
    onnx_path = _export(base, (1, 16), work / "mlp.onnx", dynamo=False)
    rng = np.random.default_rng(5)
    cal = [[x] for x in rng.normal(size=(64, 1, 16)).astype(np.float32)]
    qgraph = quantize_graph(read_onnx(onnx_path), cal)
    tfl = work / "mlp_int8.tflite"
    tfl.write_bytes(graph_to_tflite(qgraph))

    tgraph = read_tflite(tfl)
    fc_weights = [tgraph.t(op.inputs[1]).name for op in tgraph.ops if op.type == "FULLY_CONNECTED"]
    (work / "map.json").write_text(json.dumps({"0": fc_weights[0], "2": fc_weights[1]}))

    code, out = _cli("build", tfl, "-t", "host", "-o", work / "out_nomap", "--adapter", f"a={adir}")
    assert code == 2 and "--adapter-map" in out, out
    code, out = _cli("verify", tfl, "-t", "host", "--adapter", f"a={adir}", "--adapter-map", work / "map.json",
                     "--json")
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["bitexact"] is True

    fused, _ = apply_adapters(tgraph, str(tfl), [("a", adir)], adapter_map=work / "map.json")
    xs = rng.normal(size=(32, 1, 16)).astype(np.float32)
    got = np.stack([o[0] for o in run_tflm_batch(graph_to_tflite(fused), [[x] for x in xs])])
    want = _forward(peft_model, xs[:, 0]).reshape(got.shape)
    base_float = _forward(base, xs[:, 0]).reshape(got.shape)
    # The quantization error to expect: the float base with the adapter merged, quantized afresh.
    merged, _ = apply_adapters(read_onnx(onnx_path), str(onnx_path), [("a", adir)])
    requant = np.stack([o[0] for o in run_tflm_batch(graph_to_tflite(quantize_graph(merged, cal)),
                                                     [[x] for x in xs])])
    s_fused, s_requant, s_base = _sqnr(got, want), _sqnr(requant, want), _sqnr(base_float, want)
    print(f"int8 base + fused adapter vs PEFT float: SQNR {s_fused:.1f} dB (max abs {np.abs(got - want).max():.4g}); "
          f"float merge + fresh quantization: {s_requant:.1f} dB; base without adapter: {s_base:.1f} dB")
    # Within a few dB of a fresh quantization (the int8 base keeps its calibrated activation ranges) and far
    # closer than the base without the adapter.
    assert s_fused > s_requant - 6
    assert s_fused > s_base + 10


# ---- refusals (exit code 2, clear message) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def head(work: Path) -> tuple[nn.Module, Path, Path]:
    base = _base(Head)
    adir = work / "head"
    peft_adapter(base, adir, r=2, lora_alpha=4, target_modules=["fc"])
    return base, adir, _export(base, (1, 16), work / "head.onnx", dynamo=False)


def _edited(src: Path, dst: Path, **changes) -> Path:
    import shutil

    shutil.copytree(src, dst, dirs_exist_ok=True)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def _build_error(work: Path, model: Path, *args) -> str:
    code, out = _cli("build", model, "-t", "host", "-o", work / "out_err", "--calibration", "random", *args)
    assert code == 2, out
    assert "Traceback" not in out
    return out


def test_bin_adapter(work: Path, head) -> None:
    """adapter_model.bin (torch pickle) reads like the safetensors file."""
    base, adir, onnx_path = head
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(adir)).eval()
    bdir = work / "head_bin"
    peft_model.save_pretrained(str(bdir), safe_serialization=False)
    assert (bdir / "adapter_model.bin").is_file() and not (bdir / "adapter_model.safetensors").exists()
    x = np.random.default_rng(6).normal(size=(4, 16)).astype(np.float32)
    fused, _ = apply_adapters(read_onnx(onnx_path), str(onnx_path), [("a", bdir)])
    assert _rel_err(run_float(fused, [x])[0], _forward(peft_model, x)) < REL_TOL


def test_refuses_dora(work: Path, head) -> None:
    base, _, onnx_path = head
    adir = work / "dora"
    peft_adapter(base, adir, r=2, lora_alpha=4, target_modules=["fc"], use_dora=True)
    assert "use_dora=true" in _build_error(work, onnx_path, "--adapter", f"a={adir}")


def test_refuses_other_peft_types_and_unknown_keys(work: Path, head) -> None:
    _, adir, onnx_path = head
    out = _build_error(work, onnx_path, "--adapter", f"a={_edited(adir, work / 'ia3', peft_type='IA3')}")
    assert "peft_type 'IA3'" in out and "LORA" in out
    out = _build_error(work, onnx_path, "--adapter", f"a={_edited(adir, work / 'unk', lora_magic_gain=2.0)}")
    assert "unknown setting(s) lora_magic_gain=2.0" in out


def test_refuses_unmatched_ambiguous_and_mismatched(work: Path, head) -> None:
    _, adir, onnx_path = head
    # No layer: the adapter's module 'fc' against a model whose layers are '0' and '2'.
    other = _export(nn.Sequential(nn.Linear(16, 8)).eval(), (1, 16), work / "seq.onnx", dynamo=False)
    assert "module 'fc' matches no layer" in _build_error(work, other, "--adapter", f"a={adir}")
    # Ambiguous: 'fc' is the end of both 'a.fc' and 'b.fc'.
    branches = _export(_base(Branches), (1, 16), work / "branches.onnx", dynamo=False)
    assert "matches several layers ambiguously" in _build_error(work, branches, "--adapter", f"a={adir}")
    # Shape: an adapter trained for Linear(16, 8) against Linear(16, 9).
    wrong = _export(_base(Head, n_out=9), (1, 16), work / "head9.onnx", dynamo=False)
    assert "shape mismatch" in _build_error(work, wrong, "--adapter", f"a={adir}")
    # A map entry to a tensor that is not a weight.
    (work / "badmap.json").write_text(json.dumps({"fc": "nope"}))
    assert "not the weights of" in _build_error(work, onnx_path, "--adapter", f"a={adir}", "--adapter-map",
                                                work / "badmap.json")


def test_refuses_depthwise_in_fuse_mode(work: Path) -> None:
    base = _base(DepthwiseNet)
    adir = work / "dw"
    peft_adapter(base, adir, r=8, lora_alpha=8, target_modules=["dw"])
    onnx_path = _export(base, (1, 3, 4, 4), work / "dw.onnx", dynamo=False)
    assert "depthwise/grouped convolution" in _build_error(work, onnx_path, "--adapter", f"a={adir}")


def test_mode_and_count_errors(work: Path, head) -> None:
    _, adir, onnx_path = head
    out = _build_error(work, onnx_path, "--adapter", f"a={adir}", "--adapter", f"b={adir}", "--adapter-mode", "fuse")
    assert "exactly one adapter" in out
    # slots mode (tests/test_lora_slots.py) has its own limits: it needs int8 code.
    out = _build_error(work, onnx_path, "--adapter", f"a={adir}", "--adapter-mode", "slots", "--precision", "float32")
    assert "adapter mode 'slots' generates int8 code only" in out
    # cortex-m4's default_adapter_mode is slots.
    code, out = _cli("build", onnx_path, "-t", "cortex-m4", "-o", work / "out_m4", "--calibration", "random",
                     "--adapter", f"a={adir}", "--json")
    report = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert code == 0 and report["adapters"][0]["mode"] == "slots", out
    assert "expected NAME=PEFT_DIR" in _build_error(work, onnx_path, "--adapter", str(adir))
