"""`edgec run` / `edgec inspect` / `edgec targets` as a user types them, on the bundled example model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from edgec.cli.main import main
from edgec.oracle.tflm import run_tflm_batch

REPO = Path(__file__).resolve().parents[1]


def _example(tmp_path: Path) -> Path:
    model = tmp_path / "kws_example.tflite"
    subprocess.run([sys.executable, str(REPO / "examples" / "kws_example.py"), "-o", str(model)], check=True)
    return model


def test_build_run_inspect_example(tmp_path):
    model = _example(tmp_path)
    out = tmp_path / "proj"
    runner = CliRunner()
    result = runner.invoke(main, ["build", str(model), "--target", "cortex-m4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "arena bytes" in result.output and "CONV_2D" in result.output

    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (4, 1, 49, 10, 1)).astype(np.int8)
    np.save(tmp_path / "x.npy", x)
    want = np.stack([o[0] for o in run_tflm_batch(model.read_bytes(), [[xi] for xi in x])])
    for on in ("host", "qemu"):
        y_path = tmp_path / f"y_{on}.npy"
        result = runner.invoke(main, ["run", str(out), "--input", str(tmp_path / "x.npy"), "--on", on,
                                      "-o", str(y_path), "--json"])
        assert result.exit_code == 0, result.output
        info = json.loads(result.stdout)
        assert info["inferences"] == 4
        got = np.load(y_path)
        assert got.shape == (4, 1, 12) and got.dtype == np.int8
        assert np.array_equal(got, want.reshape(got.shape))
    assert info["instructions_per_inference"] > 0

    result = runner.invoke(main, ["inspect", str(out)])
    assert result.exit_code == 0 and "SOFTMAX" in result.output and "input 0: 'input' int8" in result.output
    result = runner.invoke(main, ["inspect", str(out), "--json"])
    assert json.loads(result.stdout)["arena_bytes"] > 0


def test_run_rejects_wrong_input(tmp_path):
    model = _example(tmp_path)
    out = tmp_path / "proj"
    assert CliRunner().invoke(main, ["build", str(model), "--target", "host", "-o", str(out)]).exit_code == 0
    np.save(tmp_path / "bad.npy", np.zeros((1, 10, 49, 1), np.int8))
    result = CliRunner().invoke(main, ["run", str(out), "--input", str(tmp_path / "bad.npy"), "-o",
                                       str(tmp_path / "y.npy")])
    assert result.exit_code == 2 and "bad.npy: shape [1, 10, 49, 1]" in result.output
    result = CliRunner().invoke(main, ["run", str(tmp_path), "--input", str(tmp_path / "bad.npy"), "-o", "y.npy"])
    assert result.exit_code == 2 and "not an edgec output folder" in result.output


def test_targets_json():
    result = CliRunner().invoke(main, ["targets", "--json"])
    names = {t["name"] for t in json.loads(result.stdout)["targets"]}
    assert {"host", "cortex-m4"} <= names
