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
from edgec.oracle.ir_export import graph_to_tflite
from edgec.oracle.tflm import run_tflm_batch
from edgec.passes.lora_slots import merged_graph
from edgec.pipeline import build_model
from support import kws_with_adapters, require_target, shared_model

ONE = 1 << 16
# Slots output vs TFLM on the dequantize-merge-requantize graph (docs/adapters.md): that reference rounds
# every merged weight afresh, an error of the size of the base's own quantization error.
MIN_SQNR_DB = 22.0


@pytest.fixture(scope="module")
def kws(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("int8_base")
    model, graph = kws_with_adapters(work, {"a": (4, 1), "b": (2, 2)})
    mapping = json.loads((work / "map.json").read_text())
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
    require_target()
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


def test_slot_banks_are_page_aligned_in_their_own_section(kws) -> None:
    """The firmware's .edgec_adapters section holds every slot's bank at page-aligned flash addresses."""
    import subprocess

    from edgec.toolchain.runner import build_firmware

    target = require_target()
    report = kws["built"].report
    elf = build_firmware(kws["work"] / "slots", target, kws["work"] / "elf")
    sections = subprocess.run(["arm-none-eabi-objdump", "-h", str(elf)], capture_output=True, text=True,
                              check=True).stdout.split("\n")
    row = next(line.split() for line in sections if " .edgec_adapters " in line)
    size, address = int(row[2], 16), int(row[3], 16)
    page = report["adapter_page_bytes"]
    assert address % page == 0 and report["adapter_bank_bytes"] % page == 0
    assert size == report["adapter_slots"] * report["adapter_bank_bytes"]
    assert report["adapter_layout_bytes"] <= report["adapter_bank_bytes"] < report["adapter_layout_bytes"] + page
    assert address < 0x20000000  # flash, not RAM


def test_verify_cli_int8_base_qemu(kws) -> None:
    from click.testing import CliRunner

    from edgec.cli.main import main

    require_target()
    w = kws["work"]
    res = CliRunner().invoke(main, ["verify", str(kws["model"]), "-t", "cortex-m4", "--adapter", f"a={w / 'a'}",
                                    "--adapter", f"b={w / 'b'}", "--adapter-map", str(w / "map.json"),
                                    "--activate", "a", "--activate", "b:0.5", "--on", "qemu", "--inputs", "6",
                                    "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output.strip().splitlines()[-1])
    assert result["bitexact_host_vs_target"] is True and result["passed"] is True
    assert result["active_adapters"] == {"a": 1.0, "b": 0.5}
    assert "TFLite Micro" in result["reference"] and result["sqnr_db"] is not None


def test_bench_adapter_costs(tmp_path: Path) -> None:
    """edgec bench's adapter columns on the smallest MLPerf model: fuse mode runs the base's kernels, a slot
    costs whole flash pages, an active slot costs instructions."""
    from edgec.cli.bench import adapter_costs
    from edgec.cli.verify import random_input_sets_for_model
    from edgec.pipeline import build

    model = shared_model("tflite/ad01_int8.tflite")
    require_target()
    inputs = random_input_sets_for_model(model.read_bytes(), 1, seed=0)
    report = build(model, "cortex-m4", tmp_path / "base")
    base = run_project(tmp_path / "base", report, inputs, "qemu", tmp_path / "run")[1]
    costs = adapter_costs(model, "cortex-m4", tmp_path, inputs, base, progress=lambda m: None)
    assert costs["adapted_layers"] == sum(op["type"] == "FULLY_CONNECTED" for op in report["ops"])
    assert abs(costs["fuse_instructions"] - base["instructions_per_inference"]) < 0.01 * costs["fuse_instructions"]
    assert costs["slot_bank_bytes"] % 4096 == 0 and costs["slot_bank_bytes"] >= costs["slot_table_bytes"] > 0
    assert costs["slots_extra_flash_bytes"] > costs["slot_bank_bytes"]
    assert costs["slots_active_extra_instructions"] > costs["slots_idle_extra_instructions"] >= 0
