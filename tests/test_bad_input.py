"""Bad input: clear message, exit code 2, no output folder left behind. Plus a reader fuzz test."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgec.cli.main import main
from edgec.errors import EdgecError
from edgec.frontends.tflite_reader import parse_tflite
from edgec.frontends.tflite_writer import WOp, WTensor, write_tflite
from support import fc_model, shared_model


def _build(tmp_path: Path, model: bytes, target: str = "host", name: str = "m.tflite"):
    path = tmp_path / name
    path.write_bytes(model)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(path), "--target", target, "-o", str(out)])
    return result, out


def _assert_clean_failure(tmp_path: Path, result, out: Path, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    for needle in needles:
        assert needle in result.output, result.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "temporary folder left behind"


def test_truncated_file(tmp_path):
    data = shared_model("tflite/kws_ref_model.tflite").read_bytes()
    result, out = _build(tmp_path, data[:20000])
    _assert_clean_failure(tmp_path, result, out, "m.tflite", "byte")


@pytest.mark.parametrize("cut", [0, 3, 8, 64, 500])
def test_truncated_small_model(tmp_path, cut):
    result, out = _build(tmp_path, fc_model(8, 4)[:cut])
    _assert_clean_failure(tmp_path, result, out, "m.tflite")


def test_random_bytes(tmp_path):
    result, out = _build(tmp_path, random.Random(1).randbytes(4096))
    _assert_clean_failure(tmp_path, result, out, "m.tflite", "TFL3")


def test_unsupported_op(tmp_path):
    result, out = _build(tmp_path, fc_model(8, 4, extra_op="FLOOR"))
    _assert_clean_failure(tmp_path, result, out, "op #1 FLOOR", "not supported", "CONV_2D")


def test_model_larger_than_flash(tmp_path):
    # 4,300,800 bytes of weights: more than the 4 MB flash of the cortex-m4 (mps2-an386) target.
    result, out = _build(tmp_path, fc_model(2100, 2048), target="cortex-m4")
    _assert_clean_failure(tmp_path, result, out, "flash", "4194304")


def test_model_larger_than_ram(tmp_path):
    # A 4.2 MB activation: more than the 4 MB RAM of the cortex-m4 (mps2-an386) target.
    shape = (1, 4200, 1000, 1)
    tensors = [WTensor("x", shape, "int8", scale=[0.1], zero_point=[0]),
               WTensor("y", shape, "int8", scale=[0.1], zero_point=[0])]
    model = write_tflite(tensors, [WOp("RELU", [0], [1], {})], [0], [1])
    result, out = _build(tmp_path, model, target="cortex-m4")
    _assert_clean_failure(tmp_path, result, out, "arena needs 4200000 bytes", "RAM")


def test_unknown_target_and_missing_file(tmp_path):
    result, out = _build(tmp_path, fc_model(8, 4), target="z80")
    _assert_clean_failure(tmp_path, result, out, "unknown target 'z80'", "cortex-m4")
    result = CliRunner().invoke(main, ["build", str(tmp_path / "nope.tflite"), "--target", "host", "-o",
                                       str(tmp_path / "o2")])
    assert result.exit_code == 2 and "not found" in result.output


def test_failed_build_keeps_previous_output(tmp_path):
    result, out = _build(tmp_path, fc_model(8, 4))
    assert result.exit_code == 0, result.output
    before = (out / "edgec-report.json").read_text()
    bad, _ = _build(tmp_path, b"garbage" * 10, name="bad.tflite")
    assert bad.exit_code == 2
    assert (out / "edgec-report.json").read_text() == before


def test_build_json_report(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(fc_model(8, 4))
    result = CliRunner().invoke(main, ["build", str(path), "--target", "host", "-o", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("arena_bytes", "arena_lower_bound_bytes", "weights_bytes", "ops"):
        assert key in report
    assert report["ops"][0]["type"] == "FULLY_CONNECTED"
    assert report["ops"][0]["outputs"][0]["offset"] is not None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_reader_fuzz_never_crashes(data):
    """Mutated and truncated models either parse or raise EdgecError; nothing else escapes."""
    model = bytearray(fc_model(8, 4, extra_op="RELU"))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(model) - 1))
        model[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        model = model[: data.draw(st.integers(0, len(model)))]
    try:
        parse_tflite(bytes(model), "fuzz.tflite")
    except EdgecError as e:
        assert "fuzz.tflite" in str(e)
