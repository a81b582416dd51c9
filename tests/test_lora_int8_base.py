"""LoRA slots on an int8 TFLite base (the MLPerf Tiny KWS model from ../shared/models): synthetic PEFT
adapters (edgec.frontends.peft_writer) bound with --adapter-map. Oracles: TFLite Micro on the .tflite itself
(no slot active, bit-exact), TFLite Micro on the dequantize-merge-requantize graph of the active adapters
(accuracy bound, docs/adapters.md), and the host build vs QEMU (bit-exact)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgec.cli.verify import _dequantized, accuracy, run_project
from edgec.frontends.peft_reader import read_adapter
from edgec.frontends.peft_writer import synthetic_adapter
from edgec.frontends.tflite_reader import read_tflite
from edgec.oracle.ir_export import graph_to_tflite
from edgec.oracle.tflm import run_tflm_batch
from edgec.passes.lora_slots import merged_graph
from edgec.pipeline import build_model
from edgec.targets import load_target
from edgec.toolchain.runner import ToolchainError, ensure_tools
from support import shared_model

ONE = 1 << 16
# Slots output vs TFLM on the dequantize-merge-requantize graph (docs/adapters.md): that reference rounds
# every merged weight afresh, an error of the size of the base's own quantization error.
MIN_SQNR_DB = 22.0


@pytest.fixture(scope="module")
def kws(tmp_path_factory) -> dict:
    model = shared_model("tflite/kws_ref_model.tflite")
    work = tmp_path_factory.mktemp("int8_base")
    graph = read_tflite(model)
    mapping = synthetic_adapter(graph, work / "a", rank=4, seed=1)
    synthetic_adapter(graph, work / "b", rank=2, seed=2)
    (work / "map.json").write_text(json.dumps(mapping))
    built = build_model(model, "cortex-m4", work / "slots", adapters=[("a", work / "a"), ("b", work / "b")],
                        adapter_mode="slots", adapter_map=work / "map.json")
    # MFCC-like int8 inputs around the zero point (full-range noise saturates the softmax).
    x = graph.t(graph.inputs[0])
    rng = np.random.default_rng(3)
    inputs = [[np.clip(np.round(rng.normal(x.zero_point, 30, x.shape)), -128, 127).astype(np.int8)]
              for _ in range(24)]
    return {"model": model, "work": work, "graph": graph, "mapping": mapping, "built": built, "inputs": inputs}


def _run(kws, on: str, schedule=None) -> list:
    work = kws["work"] / f"run_{on}_{abs(hash(str(schedule))) % 10**8}"
    return run_project(kws["work"] / "slots", kws["built"].report, kws["inputs"], on, work, schedule)[0]


def _reference(kws, scales: list[float]) -> list:
    adapters = [read_adapter(n, kws["work"] / n) for n in ("a", "b")]
    merged = merged_graph(kws["graph"], adapters, scales, kws["mapping"])
    return run_tflm_batch(graph_to_tflite(merged), kws["inputs"])


def test_slot_kernels_on_the_int8_layers(kws) -> None:
    report = kws["built"].report
    adapted = {r["type"] for r in report["ops"] if "_slots" in (r["kernel"] or "")}
    assert adapted == {"CONV_2D", "FULLY_CONNECTED"} and report["adapter_slots"] == 2
    assert sum("_slots" in (r["kernel"] or "") for r in report["ops"]) == len(kws["mapping"])


def test_no_slot_active_is_bitexact_with_tflm(kws) -> None:
    want = run_tflm_batch(kws["model"].read_bytes(), kws["inputs"])
    got = _run(kws, "host")
    assert all(np.array_equal(g[0], np.asarray(w[0]).reshape(g[0].shape)) for g, w in zip(got, want))


@pytest.mark.parametrize("scales", [[1.0, 0.0], [0.0, 1.0], [1.0, 0.5]])
def test_active_slots_vs_requantized_merge(kws, scales: list[float]) -> None:
    got = _run(kws, "host", [[int(s * ONE) for s in scales]])
    want = _reference(kws, scales)
    base = run_tflm_batch(kws["model"].read_bytes(), kws["inputs"])
    outs = kws["built"].report["outputs"]
    acc = accuracy(_dequantized(got, outs), _dequantized(want, outs))
    off = accuracy(_dequantized(base, outs), _dequantized(want, outs))
    print(f"scales {scales}: {acc['sqnr_db']} dB, max abs {acc['max_abs_error']:.4f} (base alone: "
          f"{off['sqnr_db']} dB)")
    assert acc["sqnr_db"] >= MIN_SQNR_DB
    assert acc["sqnr_db"] > off["sqnr_db"] + 6  # the slot output follows the adapter, not the base


def test_switching_qemu_matches_host(kws) -> None:
    target = load_target("cortex-m4")
    try:
        ensure_tools(target)
    except ToolchainError as e:
        pytest.skip(str(e))
    schedule = [[ONE, 0], [0, ONE], [ONE, ONE // 2], [0, 0]]
    host = _run(kws, "host", schedule)
    qemu = _run(kws, "qemu", schedule)
    assert all(np.array_equal(h[0], q[0]) for h, q in zip(host, qemu))
    # Each record really ran its own adapter set: record 3 (none active) equals TFLM on the base.
    base = run_tflm_batch(kws["model"].read_bytes(), kws["inputs"][3:4])
    assert np.array_equal(qemu[3][0], np.asarray(base[0][0]).reshape(qemu[3][0].shape))
    assert not np.array_equal(qemu[0][0], qemu[1][0])


def test_adapter_map_required_and_checked(kws, tmp_path: Path) -> None:
    from edgec.errors import EdgecError

    with pytest.raises(EdgecError, match="--adapter-map"):
        build_model(kws["model"], "host", tmp_path / "o1", adapters=[("a", kws["work"] / "a")], adapter_mode="slots")
    bad = dict(kws["mapping"])
    first = next(iter(bad))
    bad[first] = "no_such_tensor"
    with pytest.raises(EdgecError, match="no_such_tensor"):
        build_model(kws["model"], "host", tmp_path / "o2", adapters=[("a", kws["work"] / "a")],
                    adapter_mode="slots", adapter_map=bad)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
