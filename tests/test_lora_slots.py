"""LoRA slots mode: several PEFT adapters (made at test time with torch + peft) compiled beside the frozen
int8 base of a two-Linear model, a conv-conv-Linear model and a conv-depthwise-conv-Linear model, switched at
run time. Oracles: the build without adapters (bit-exact when no slot is active), PEFT's own merged float model
(W + sum scale_i * ΔW_i from merge_and_unload; PEFT's forward for the depthwise conv, which PEFT cannot
merge), TFLite Micro on the base graph, and the host build vs QEMU (bit-exact)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="LoRA tests need PyTorch (pip install torch) to make adapters")
peft = pytest.importorskip("peft", reason="LoRA tests need peft (pip install peft) to make adapters")

from click.testing import CliRunner

from edgec.cli.main import main
from edgec.cli.verify import run_project
from edgec.pipeline import build
from edgec.targets import load_target
from support import peft_adapter, require_target

nn = torch.nn
ONE = 1 << 16  # Q16 scale 1.0
# Bound (docs/adapters.md): int8 slots output vs PEFT's float merged model, on the calibration inputs.
MIN_SQNR_DB = 30.0
MAX_ABS_ERROR = 0.1
ADAPTERS = {  # name -> (seed, LoraConfig)
    "a": (1, {"r": 4, "lora_alpha": 4, "target_modules": ["0", "2"]}),
    "b": (2, {"r": 2, "lora_alpha": 4, "target_modules": ["2"]}),
    "c": (3, {"r": 8, "lora_alpha": 8, "target_modules": ["0"]}),
}


def _cli(*args) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output + (res.stderr if hasattr(res, "stderr") and res.stderr else "")


def _slots_setup(work: Path, base, configs: dict, in_shape: tuple, onnx_name: str, cal_seed: int,
                 merge: bool = True) -> dict:
    """Save PEFT adapters (random non-zero A and B) for `base`, export the base to ONNX (names 1:1), and
    build it with all adapters in slots mode for cortex-m4 and without adapters for the host. `merge`:
    record PEFT's ΔW per layer (merge_and_unload, which PEFT refuses for grouped/depthwise convs)."""
    deltas = {}
    for name, (seed, cfg) in configs.items():
        model = peft_adapter(base, work / name, seed=seed, magnitude=0.08, **cfg)
        if merge:
            merged = model.merge_and_unload()
            # PEFT's own ΔW of every layer (merged weights minus the base's).
            deltas[name] = {k: (v - base.state_dict()[k]).numpy() for k, v in merged.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(base, (torch.zeros(*in_shape),), str(work / onnx_name), dynamo=False,
                          do_constant_folding=False, input_names=["x"], output_names=["y"])
    cal = np.random.default_rng(cal_seed).normal(size=(48, *in_shape)).astype(np.float32)
    np.savez(work / "cal.npz", x=cal)
    opts = {"calibration": str(work / "cal.npz"), "warn": lambda m: None}
    report = build(work / onnx_name, "cortex-m4", work / "slots", adapters=[(n, work / n) for n in configs],
                   adapter_mode="slots", **opts)
    base_report = build(work / onnx_name, "host", work / "base", **opts)
    return {"work": work, "base": base, "deltas": deltas, "cal": cal, "report": report, "base_report": base_report,
            "onnx": onnx_name, "adapters": list(configs)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(4)
    base = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    return _slots_setup(tmp_path_factory.mktemp("slots"), base, ADAPTERS, (1, 16), "mlp.onnx", 5)


def _peft_reference(setup, scales: dict[str, float], xs: np.ndarray) -> np.ndarray:
    """PEFT semantics: W + sum_i scale_i * ΔW_i, ΔW_i from PEFT's merge_and_unload."""
    model = copy.deepcopy(setup["base"])
    state = model.state_dict()
    for name, s in scales.items():
        for k, d in setup["deltas"][name].items():
            state[k] = state[k] + s * torch.from_numpy(d)
    model.load_state_dict(state)
    with torch.no_grad():
        return model(torch.from_numpy(xs)).numpy()


def _run(setup, project: str, on: str, schedule=None, inputs=None) -> np.ndarray:
    xs = setup["cal"] if inputs is None else inputs
    report = setup["base_report"] if project == "base" else setup["report"]
    work = setup["work"] / f"run_{project}_{on}_{abs(hash(str(schedule))) % 10**8}"
    outs, _ = run_project(setup["work"] / project, report, [[x] for x in xs], on, work, schedule)
    return np.stack([o[0] for o in outs])


def _sqnr(got: np.ndarray, want: np.ndarray) -> float:
    return float(10 * np.log10((want.astype(np.float64) ** 2).sum() / ((got - want).astype(np.float64) ** 2).sum()))


def test_report_and_tables(setup) -> None:
    report = setup["report"]
    assert report["adapter_slots"] == 3 and 0 < report["adapter_layout_bytes"] <= report["adapter_bank_bytes"]
    assert report["adapter_bank_bytes"] % report["adapter_page_bytes"] == 0
    assert [(a["name"], a["slot"], a["rank"]) for a in report["adapters"]] == [("a", 0, 4), ("b", 1, 2), ("c", 2, 8)]
    assert sorted(r["kernel"].rsplit("_", 1)[0] for r in report["ops"] if r["type"] == "FULLY_CONNECTED") == \
        ["edgec_k_fully_connected_slots"] * 2
    src = (setup["work"] / "slots" / "src" / "adapters.c").read_text()
    assert report["model_sha256"] in src and '"a"' in src and '"c"' in src


def test_no_adapter_active_is_bitexact_with_the_base_build(setup) -> None:
    xs = np.concatenate([setup["cal"], np.random.default_rng(9).normal(0, 3, (16, 1, 16)).astype(np.float32)])
    want = _run(setup, "base", "host", inputs=xs)
    assert np.array_equal(_run(setup, "slots", "host", inputs=xs), want)
    # Explicitly deactivated slots (scale 0 rows) give the same bits.
    assert np.array_equal(_run(setup, "slots", "host", schedule=[[0, 0, 0]], inputs=xs), want)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_each_adapter_alone_vs_peft(setup, name: str) -> None:
    schedule = [[ONE if n == name else 0 for n in ADAPTERS]]
    got = _run(setup, "slots", "host", schedule).astype(np.float64)
    want = _peft_reference(setup, {name: 1.0}, setup["cal"][:, 0]).reshape(got.shape)
    base = _peft_reference(setup, {}, setup["cal"][:, 0]).reshape(got.shape)
    assert _sqnr(got, want) >= MIN_SQNR_DB and np.abs(got - want).max() <= MAX_ABS_ERROR
    # The adapter really changes the output, and the slot output follows it, not the base.
    assert np.abs(want - base).max() > 5 * np.abs(got - want).max() or _sqnr(got, want) > _sqnr(got, base) + 10


def test_two_adapters_weighted(setup) -> None:
    got = _run(setup, "slots", "host", [[ONE, ONE // 2, 0]]).astype(np.float64)
    want = _peft_reference(setup, {"a": 1.0, "b": 0.5}, setup["cal"][:, 0]).reshape(got.shape)
    only_a = _peft_reference(setup, {"a": 1.0}, setup["cal"][:, 0]).reshape(got.shape)
    assert _sqnr(got, want) >= MIN_SQNR_DB and np.abs(got - want).max() <= MAX_ABS_ERROR
    assert _sqnr(got, want) > _sqnr(got, only_a)


def test_switching_between_inferences_qemu_matches_host(setup) -> None:
    require_target()
    xs = setup["cal"][:8]
    # One firmware, the active set changes before every inference.
    schedule = [[0, 0, 0], [ONE, 0, 0], [0, ONE, 0], [0, 0, ONE], [ONE, ONE // 2, 0], [-ONE // 4, 0, 3 * ONE],
                [0, 0, 0], [ONE, ONE, ONE]]
    qemu = _run(setup, "slots", "qemu", schedule, inputs=xs)
    host = _run(setup, "slots", "host", schedule, inputs=xs)
    assert np.array_equal(qemu, host)
    # Each record equals a run with that record's activation fixed (switching has no memory) ...
    for i in (1, 4, 6):
        assert np.array_equal(host[i], _run(setup, "slots", "host", [schedule[i]], inputs=xs[i:i + 1])[0])
    # ... and PEFT's model with that record's adapters and scales, within the bound.
    for i, row in enumerate(schedule):
        want = _peft_reference(setup, {n: v / ONE for n, v in zip(ADAPTERS, row)}, xs[i:i + 1, 0])
        assert np.abs(qemu[i].astype(np.float64) - want.reshape(qemu[i].shape)).max() <= MAX_ABS_ERROR, i


def test_verify_cli_qemu(setup) -> None:
    work = setup["work"]
    args = ["verify", work / "mlp.onnx", "-t", "cortex-m4", "--on", "qemu", "--calibration", work / "cal.npz",
            *[x for n in ADAPTERS for x in ("--adapter", f"{n}={work / n}")], "--adapter-mode", "slots"]
    require_target()
    code, out = _cli(*args, "--activate", "a", "--activate", "b:0.5", "--json")
    assert code == 0, out
    r = json.loads(out.strip().splitlines()[-1])
    assert r["bitexact_host_vs_target"] is True and r["active_adapters"] == {"a": 1.0, "b": 0.5}
    assert r["sqnr_db"] >= MIN_SQNR_DB and r["max_abs_error"] <= MAX_ABS_ERROR
    # Nothing active: bit-exact with TFLite Micro on the base graph as well.
    code, out = _cli(*args, "--json")
    r = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and r["bitexact"] is True and r["bitexact_host_vs_target"] is True, out


def test_run_cli_activate(setup) -> None:
    work = setup["work"]
    np.save(work / "in.npy", setup["cal"][:6])
    code, out = _cli("run", work / "slots", "--input", work / "in.npy", "-o", work / "out.npy",
                     "--activate", "c:0.75", "--activate", "a")
    assert code == 0, out
    want = _run(setup, "slots", "host", [[ONE, 0, 3 * ONE // 4]], inputs=setup["cal"][:6])
    assert np.array_equal(np.load(work / "out.npy").reshape(want.shape), want)
    for bad, msg in (("zz", "no adapter named 'zz'"), ("a:x", "is not a number"), ("a:17", "out of range")):
        code, out = _cli("run", work / "slots", "--input", work / "in.npy", "-o", work / "o.npy", "--activate", bad)
        assert code == 2 and msg in out, out
    code, out = _cli("run", work / "base", "--input", work / "in.npy", "-o", work / "o.npy", "--activate", "a")
    assert code == 2 and "no adapter slots" in out


C_MAIN = r"""
#include <stdio.h>
#include <string.h>
#include "edgec_model.h"

int main(void)
{
    edgec_adapter_info_t info;
    edgec_health_t h;
    int32_t s = 7;
    edgec_init();
    printf("%d %d %d %d\n", EDGEC_NUM_ADAPTER_SLOTS, edgec_adapter_activate(-1, 65536),
           edgec_adapter_activate(EDGEC_NUM_ADAPTER_SLOTS, 65536), edgec_adapter_activate(0, EDGEC_ADAPTER_SCALE_MAX + 1));
    printf("%d %d %d\n", edgec_adapter_info(99, &info), edgec_adapter_info(0, NULL), edgec_adapter_scale(0, NULL));
    printf("%d %d %d\n", edgec_adapter_active(-3), edgec_adapter_deactivate(4), edgec_adapter_active(0));
    printf("%d %d %d\n", edgec_adapter_activate(0, EDGEC_ADAPTER_SCALE(1.0)),
           edgec_adapter_activate(2, EDGEC_ADAPTER_SCALE(-0.5)), edgec_adapter_activate(3, 65536));
    edgec_health(&h);
    edgec_adapter_scale(2, &s);
    printf("%u %u %d %d\n", (unsigned)h.active_adapters, (unsigned)edgec_adapter_active_mask(), (int)s,
           edgec_adapter_active(2));
    for (int i = 0; i < EDGEC_NUM_ADAPTER_SLOTS; i++) {
        if (edgec_adapter_info(i, &info) != EDGEC_OK) return 1;
        printf("%s %u %u %u %s\n", info.name[0] ? info.name : "-", (unsigned)info.rank, (unsigned)info.version[0],
               (unsigned)(info.id != 0), info.base_sha256);
    }
    if (edgec_run() != EDGEC_OK) return 2;
    edgec_adapter_deactivate(0);
    edgec_health(&h);
    printf("%u %u\n", (unsigned)h.active_adapters, (unsigned)edgec_adapter_active_mask());
    edgec_init(); /* deactivates every slot */
    edgec_health(&h);
    printf("%u\n", (unsigned)h.active_adapters);
    return 0;
}
"""


def _compile_main(tmp_path: Path, project: Path) -> list[str]:
    (tmp_path / "main.c").write_text(C_MAIN)
    exe = tmp_path / "t"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{project / 'include'}",
                    str(tmp_path / "main.c"), *map(str, sorted((project / "src").glob("*.c"))),
                    "-lm", "-o", str(exe)], check=True)
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()


def test_c_api_error_codes(setup, tmp_path) -> None:
    work = setup["work"]
    # 4 slots for 3 adapters: slot 3 is empty.
    report = build(work / "mlp.onnx", "host", tmp_path / "p", adapters=[(n, work / n) for n in ADAPTERS],
                   adapter_mode="slots", slots=4, calibration=str(work / "cal.npz"), warn=lambda m: None)
    h = report["model_sha256"]
    assert _compile_main(tmp_path, tmp_path / "p") == [
        "4 -4 -4 -5", "-4 -5 -5", "-4 -4 0", "0 0 -4", "2 5 -32768 1",
        f"a 4 1 1 {h}", f"b 2 1 1 {h}", f"c 8 1 1 {h}", f"- 0 0 0 {h}",
        "1 4", "0"]
    # A model without slots: every slot call is an error, nothing active.
    lines = _compile_main(tmp_path, work / "base")
    assert lines[:5] == ["0 -4 -4 -4", "-4 -4 -4", "-4 -4 -4", "-4 -4 -4", "0 0 7 -4"]


def test_refusals(setup, tmp_path) -> None:
    work = setup["work"]
    torch.manual_seed(0)
    # A grouped (not depthwise) convolution, and a dilated depthwise one.
    for name, layer, msg in (("grouped", nn.Conv2d(4, 4, 3, groups=2), "depthwise Conv2d modules (slots mode only)"),
                             ("dilated", nn.Conv2d(4, 4, 2, groups=4, dilation=2), "a dilated convolution")):
        conv = nn.Sequential(layer, nn.ReLU(), nn.Flatten(), nn.Linear(16, 5)).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = peft.get_peft_model(copy.deepcopy(conv), peft.LoraConfig(r=4, target_modules=["0", "3"]))
            torch.onnx.export(conv, (torch.zeros(1, 4, 4, 4),), str(tmp_path / f"{name}.onnx"), dynamo=False,
                              do_constant_folding=False)
        model.save_pretrained(str(tmp_path / name))
        code, out = _cli("build", tmp_path / f"{name}.onnx", "-t", "host", "-o", tmp_path / "o", "--calibration",
                         "random", "--adapter", f"a={tmp_path / name}", "--adapter-mode", "slots")
        assert code == 2 and msg in out, out
    base = ["build", work / "mlp.onnx", "-t", "host", "-o", tmp_path / "o2", "--calibration", work / "cal.npz",
            "--adapter", f"a={work / 'a'}", "--adapter", f"b={work / 'b'}"]
    code, out = _cli(*base, "--adapter-mode", "slots", "--slots", "1")
    assert code == 2 and "--slots 1 is less than the 2 adapters" in out, out
    code, out = _cli(*base, "--adapter-mode", "slots", "--precision", "float32")
    assert code == 2 and "int8 code only" in out, out
    code, out = _cli(*base[:-4], "--slots", "2")
    assert code == 2 and "--slots needs --adapter-mode slots" in out, out
    assert not (tmp_path / "o2").exists()



# --- CONV_2D slots ------------------------------------------------------------------------------------------

CONV_ADAPTERS = {  # name -> (seed, LoraConfig); modules 0 (3x3 conv), 2 (1x1 conv), 4 (Linear)
    "a": (11, {"r": 4, "lora_alpha": 4, "target_modules": ["0", "2", "4"]}),
    "b": (12, {"r": 2, "lora_alpha": 4, "target_modules": ["0", "2", "4"]}),
}
CONV_IN = (1, 3, 6, 6)


@pytest.fixture(scope="module")
def conv_setup(tmp_path_factory):
    torch.manual_seed(6)
    base = nn.Sequential(nn.Conv2d(3, 8, 3, stride=1, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 10)).eval()
    return _slots_setup(tmp_path_factory.mktemp("conv_slots"), base, CONV_ADAPTERS, CONV_IN, "cnn.onnx", 7)


def test_conv_slot_kernels(conv_setup) -> None:
    kernels = sorted((r["type"], r["kernel"].rsplit("_", 1)[0]) for r in conv_setup["report"]["ops"]
                     if r["type"] in ("CONV_2D", "FULLY_CONNECTED"))
    assert kernels == [("CONV_2D", "edgec_k_conv2d_slots")] * 2 + [("FULLY_CONNECTED", "edgec_k_fully_connected_slots")]
    # While no slot is active, each of the three layers calls its plain kernel instead (the base build's code).
    model_c = (conv_setup["work"] / "slots" / "src" / "model.c").read_text()
    run = model_c[model_c.index("int edgec_run(void)"):]
    plain = re.findall(r"if \(edgec_adapters_active_count\(\) == 0u\) \{[^\n]*\n\s+(edgec_k_\w+)\(", run)
    assert [k.rsplit("_", 1)[0] for k in plain] == ["edgec_k_conv2d"] * 2 + ["edgec_k_fully_connected"]


def test_conv_no_adapter_active_is_bitexact_with_the_base_build(conv_setup) -> None:
    xs = np.concatenate([conv_setup["cal"], np.random.default_rng(8).normal(0, 3, (8, *CONV_IN)).astype(np.float32)])
    want = _run(conv_setup, "base", "host", inputs=xs)
    assert np.array_equal(_run(conv_setup, "slots", "host", inputs=xs), want)
    assert np.array_equal(_run(conv_setup, "slots", "host", schedule=[[0, 0]], inputs=xs), want)


@pytest.mark.parametrize("scales", [{"a": 1.0}, {"b": 1.0}, {"a": 1.0, "b": 0.5}], ids=["a", "b", "a+0.5b"])
def test_conv_adapters_vs_peft(conv_setup, scales: dict[str, float]) -> None:
    schedule = [[round(scales.get(n, 0) * ONE) for n in CONV_ADAPTERS]]
    got = _run(conv_setup, "slots", "host", schedule).astype(np.float64)
    want = _peft_reference(conv_setup, scales, conv_setup["cal"][:, 0]).reshape(got.shape)
    base = _peft_reference(conv_setup, {}, conv_setup["cal"][:, 0]).reshape(got.shape)
    print(f"{scales}: {_sqnr(got, want):.1f} dB, max abs {np.abs(got - want).max():.3f}, "
          f"adapter moves the output by {np.abs(want - base).max():.3f}")
    assert _sqnr(got, want) >= MIN_SQNR_DB and np.abs(got - want).max() <= MAX_ABS_ERROR
    assert np.abs(want - base).max() > 5 * np.abs(got - want).max() or _sqnr(got, want) > _sqnr(got, base) + 10


def test_conv_switching_qemu_matches_host(conv_setup) -> None:
    require_target()
    xs = conv_setup["cal"][:6]
    schedule = [[0, 0], [ONE, 0], [0, ONE], [ONE, ONE // 2], [-ONE // 2, 2 * ONE], [0, 0]]
    qemu = _run(conv_setup, "slots", "qemu", schedule, inputs=xs)
    host = _run(conv_setup, "slots", "host", schedule, inputs=xs)
    assert np.array_equal(qemu, host)
    assert np.array_equal(host[0], _run(conv_setup, "base", "host", inputs=xs[:1])[0])
    assert np.array_equal(host[3], _run(conv_setup, "slots", "host", [schedule[3]], inputs=xs[3:4])[0])


# --- DEPTHWISE_CONV_2D slots ----------------------------------------------------------------------------------

DW_ADAPTERS = {  # name -> (seed, LoraConfig); modules 2 (3x3 depthwise, 8 -> 16 channels), 5 (1x1 conv)
    "a": (21, {"r": 8, "lora_alpha": 16, "target_modules": ["2", "5"]}),
    "b": (22, {"r": 16, "lora_alpha": 64, "target_modules": ["2"]}),
}


@pytest.fixture(scope="module")
def dw_setup(tmp_path_factory):
    torch.manual_seed(8)
    # The depthwise conv (depth multiplier 2) is followed by a BatchNorm that edgec folds into its weights.
    base = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, groups=8),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 10))
    with torch.no_grad():
        bn = base[3]
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
        bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 2.0)
    return _slots_setup(tmp_path_factory.mktemp("dw_slots"), base.eval(), DW_ADAPTERS, CONV_IN, "dw.onnx", 9,
                        merge=False)


def _peft_forward(setup, scales: dict[str, float], xs: np.ndarray) -> np.ndarray:
    """PEFT's own forward (it cannot merge LoRA on a depthwise conv): the saved adapters loaded into one
    PeftModel, the active ones set, each LoRA layer's scaling multiplied by the adapter's scale."""
    model = copy.deepcopy(setup["base"])
    names = [n for n, s in scales.items() if s]
    if names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = peft.PeftModel.from_pretrained(model, str(setup["work"] / names[0]), adapter_name=names[0])
            for n in names[1:]:
                model.load_adapter(str(setup["work"] / n), adapter_name=n)
        model.base_model.set_adapter(names)
        for module in model.modules():
            if isinstance(module, peft.tuners.lora.LoraLayer):
                for n in names:
                    if n in module.scaling:
                        module.scaling[n] *= scales[n]
    with torch.no_grad():
        return model.eval()(torch.from_numpy(xs)).numpy()


def test_depthwise_slot_kernels(dw_setup) -> None:
    kernels = [(r["type"], r["kernel"].rsplit("_", 1)[0]) for r in dw_setup["report"]["ops"]
               if r["type"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert kernels == [("CONV_2D", "edgec_k_conv2d"), ("DEPTHWISE_CONV_2D", "edgec_k_depthwise_slots"),
                       ("CONV_2D", "edgec_k_conv2d_slots"), ("FULLY_CONNECTED", "edgec_k_fully_connected")]


def test_depthwise_no_adapter_active_is_bitexact_with_the_base_build(dw_setup) -> None:
    xs = np.concatenate([dw_setup["cal"], np.random.default_rng(8).normal(0, 3, (8, *CONV_IN)).astype(np.float32)])
    want = _run(dw_setup, "base", "host", inputs=xs)
    assert np.array_equal(_run(dw_setup, "slots", "host", inputs=xs), want)
    assert np.array_equal(_run(dw_setup, "slots", "host", schedule=[[0, 0]], inputs=xs), want)


@pytest.mark.parametrize("scales", [{"a": 1.0}, {"b": 1.0}, {"a": 1.0, "b": 0.5}], ids=["a", "b", "a+0.5b"])
def test_depthwise_adapters_vs_peft(dw_setup, scales: dict[str, float]) -> None:
    schedule = [[round(scales.get(n, 0) * ONE) for n in DW_ADAPTERS]]
    got = _run(dw_setup, "slots", "host", schedule).astype(np.float64)
    want = _peft_forward(dw_setup, scales, dw_setup["cal"][:, 0]).reshape(got.shape)
    base = _peft_forward(dw_setup, {}, dw_setup["cal"][:, 0]).reshape(got.shape)
    print(f"{scales}: {_sqnr(got, want):.1f} dB, max abs {np.abs(got - want).max():.3f}, "
          f"adapter moves the output by {np.abs(want - base).max():.3f}, output range {np.ptp(want):.3f}")
    assert _sqnr(got, want) >= MIN_SQNR_DB and np.abs(got - want).max() <= MAX_ABS_ERROR
    # This model's outputs span only ~0.6, so the absolute bound is loose: also within 10% of the range.
    assert np.abs(got - want).max() <= 0.1 * np.ptp(want)
    assert np.abs(want - base).max() > 5 * np.abs(got - want).max() or _sqnr(got, want) > _sqnr(got, base) + 10


def test_depthwise_merged_reference_vs_peft(dw_setup) -> None:
    """verify's float reference (merged_graph: the depthwise layer as a CONV_2D with expand(W) + sum s_i ΔW_i,
    the folded BatchNorm's scale applied to ΔW) against PEFT's forward."""
    from edgec.frontends.onnx_reader import read_onnx
    from edgec.frontends.peft_reader import read_adapter
    from edgec.ir.reference import run_float
    from edgec.passes.lora_slots import merged_graph

    graph = read_onnx(dw_setup["work"] / "dw.onnx")
    dw = next(op for op in graph.ops if op.type == "DEPTHWISE_CONV_2D")
    assert any(s[0] == "scale" for s in graph.t(dw.inputs[1]).origin["steps"])  # the BatchNorm was folded
    adapters = [read_adapter(n, dw_setup["work"] / n) for n in DW_ADAPTERS]
    xs = dw_setup["cal"][:16]
    for scales in ({"a": 1.0}, {"b": 1.0}, {"a": 1.0, "b": 0.5}, {"a": -0.5, "b": 2.0}):
        merged = merged_graph(graph, adapters, [scales.get(n, 0.0) for n in DW_ADAPTERS])
        assert [op.type for op in merged.ops if "CONV" in op.type] == ["CONV_2D"] * 3
        got = np.stack([run_float(merged, [x])[0] for x in xs]).reshape(len(xs), -1)
        want = _peft_forward(dw_setup, scales, xs[:, 0])
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max()), scales
    # Nothing active: the graph is the base, depthwise op and all.
    assert merged_graph(graph, adapters, [0.0, 0.0]).ops == graph.ops


def test_depthwise_switching_qemu_matches_host(dw_setup) -> None:
    require_target()
    xs = dw_setup["cal"][:6]
    schedule = [[0, 0], [ONE, 0], [0, ONE], [ONE, ONE // 2], [-ONE // 2, 2 * ONE], [0, 0]]
    qemu = _run(dw_setup, "slots", "qemu", schedule, inputs=xs)
    host = _run(dw_setup, "slots", "host", schedule, inputs=xs)
    assert np.array_equal(qemu, host)
    assert np.array_equal(host[0], _run(dw_setup, "base", "host", inputs=xs[:1])[0])
    assert np.array_equal(host[3], _run(dw_setup, "slots", "host", [schedule[3]], inputs=xs[3:4])[0])


def test_depthwise_tflite_base_with_adapter_map(dw_setup, tmp_path) -> None:
    """A float TFLite base (no PyTorch names) bound through --adapter-map: depthwise weights [1, KH, KW, C*M]."""
    from edgec.frontends.onnx_reader import read_onnx
    from edgec.frontends.peft_reader import read_adapter
    from edgec.frontends.tflite_reader import read_tflite
    from edgec.ir.reference import run_float
    from edgec.oracle.ir_export import graph_to_tflite
    from edgec.passes.lora_slots import merged_graph

    # The TFLite tensor must hold the module's own weight: the same base without the BatchNorm.
    setup = {**dw_setup, "base": copy.deepcopy(dw_setup["base"])}
    setup["base"][3] = nn.Identity()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(setup["base"], (torch.zeros(*CONV_IN),), str(tmp_path / "m.onnx"), dynamo=False,
                          do_constant_folding=False, input_names=["x"], output_names=["y"])
    (tmp_path / "m.tflite").write_bytes(graph_to_tflite(read_onnx(tmp_path / "m.onnx")))
    graph = read_tflite(tmp_path / "m.tflite")
    weights = {op.type: graph.t(op.inputs[1]).name for op in graph.ops if op.type == "DEPTHWISE_CONV_2D"}
    weights["CONV_2D"] = graph.t([op for op in graph.ops if op.type == "CONV_2D"][1].inputs[1]).name
    mapping = {"2": weights["DEPTHWISE_CONV_2D"], "5": weights["CONV_2D"]}
    # (One map serves every adapter and may name only modules each of them adapts: adapter a alone.)
    adapters = [read_adapter("a", dw_setup["work"] / "a")]
    xs = dw_setup["cal"][:8]
    want = _peft_forward(setup, {"a": 1.0}, xs[:, 0])
    merged = merged_graph(graph, adapters, [1.0], mapping)
    got = np.stack([run_float(merged, [x])[0] for x in xs]).reshape(want.shape)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    report = build(tmp_path / "m.tflite", "host", tmp_path / "p", adapters=[("a", dw_setup["work"] / "a")],
                   adapter_mode="slots", adapter_map=str(tmp_path / "map.json"),
                   calibration=str(dw_setup["work"] / "cal.npz"), warn=lambda m: None)
    assert "edgec_k_depthwise_slots" in " ".join(str(r["kernel"]) for r in report["ops"])
    outs, _ = run_project(tmp_path / "p", report, [[x] for x in xs], "host", tmp_path / "run", [[ONE]])
    got = np.stack([o[0] for o in outs]).reshape(want.shape)
    assert _sqnr(got, want) >= MIN_SQNR_DB and np.abs(got - want).max() <= MAX_ABS_ERROR


@pytest.mark.parametrize("target", ["cortex-m55", "esp32c3"])
@pytest.mark.parametrize("fixture", ["conv_setup", "dw_setup"])
def test_slot_kernels_of_every_variant_qemu(request, fixture: str, target: str) -> None:
    """The slot kernels over the mve and rv32 micro-kernels (cortex-m55, esp32c3 under QEMU) give the bytes of
    the cortex-m4 slots project (dsp) compiled for the host, with adapters off, on, mixed and negative."""
    require_target(target)
    setup = request.getfixturevalue(fixture)
    work = setup["work"]
    report = build(work / setup["onnx"], target, work / f"slots_{target}", adapter_mode="slots",
                   adapters=[(n, work / n) for n in setup["adapters"]], calibration=str(work / "cal.npz"),
                   warn=lambda m: None)
    assert report["kernels"] == load_target(target)["kernel_variant"] != "portable"
    xs = setup["cal"][:4]
    schedule = [[0, 0], [ONE, 0], [ONE, ONE // 2], [-ONE // 2, 2 * ONE]]
    outs, _ = run_project(work / f"slots_{target}", report, [[x] for x in xs], "qemu", work / f"run_{target}",
                          schedule)
    assert np.array_equal(np.stack([o[0] for o in outs]), _run(setup, "slots", "host", schedule, inputs=xs))
