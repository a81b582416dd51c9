"""The float ONNX models in ../shared/models/onnx, quantized by edgec and run on the host and under QEMU.

mnist-8 is calibrated with its three shipped digits and must classify them as the shipped expected
outputs do. mnist_simplified (14x14 input) is calibrated with the same digits downsampled 2x2, and
tfl_helloworld (sine MLP) with x in [0, 2 pi]; for those the max abs error against onnxruntime is
reported and bounded loosely (int8 accuracy, not bit-exactness, is what is checked there).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from edgec.cli.main import main
from edgec.cli.verify import verify
from support import shared_model


def _mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i in range(3):
        folder = shared_model(f"onnx/mnist-8/test_data_set_{i}/input_0.pb").parent
        xs.append(numpy_helper.to_array(onnx.load_tensor(str(folder / "input_0.pb"))))
        ys.append(numpy_helper.to_array(onnx.load_tensor(str(folder / "output_0.pb"))))
    return np.stack(xs).astype(np.float32), np.stack(ys)


@pytest.mark.parametrize("on", ["host", "qemu"])
def test_mnist8_classifies_the_shipped_digits(tmp_path, on):
    model = shared_model("onnx/mnist-8/model.onnx")
    digits, _ = _mnist_digits()  # [3, 1, 1, 28, 28]
    np.savez(tmp_path / "calib.npz", digits)
    result = verify(model, "cortex-m4", on, None, 0, [], progress=lambda m: None,
                    calibration=str(tmp_path / "calib.npz"))
    assert result["inputs"] == 3
    assert result["bitexact"], result["first_mismatch"]  # int8 C == TFLM on edgec's int8 graph
    assert result["top1_agreement"] == 1.0  # same argmax as onnxruntime's float model
    assert result["sqnr_db"] > 15


def test_mnist8_edgec_output_argmax_equals_shipped(tmp_path):
    from edgec.cli.verify import run_project
    from edgec.pipeline import build

    model = shared_model("onnx/mnist-8/model.onnx")
    digits, expected = _mnist_digits()
    np.savez(tmp_path / "calib.npz", digits)
    for on in ("host", "qemu"):
        report = build(model, "cortex-m4", tmp_path / f"proj_{on}", calibration=str(tmp_path / "calib.npz"))
        got, _ = run_project(tmp_path / f"proj_{on}", report, [[d] for d in digits], on, tmp_path / f"w_{on}")
        assert [int(g[0].argmax()) for g in got] == [int(e.argmax()) for e in expected]


@pytest.mark.parametrize("on", ["host", "qemu"])
def test_mnist_simplified(tmp_path, on):
    model = shared_model("onnx/mnist_simplified.onnx")
    digits, _ = _mnist_digits()
    small = digits.reshape(3, 1, 1, 14, 2, 14, 2).mean(axis=(4, 6)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", small)
    result = verify(model, "cortex-m4", on, None, 0, [], progress=lambda m: None,
                    calibration=str(tmp_path / "calib.npz"))
    assert result["bitexact"], result["first_mismatch"]
    assert result["top1_agreement"] == 1.0
    print("mnist_simplified max abs error", result["max_abs_error"], "SQNR", result["sqnr_db"])


@pytest.mark.parametrize("on", ["host", "qemu"])
def test_tfl_helloworld(tmp_path, on):
    model = shared_model("onnx/tfl_helloworld.onnx")
    xs = np.linspace(0, 2 * np.pi, 64, dtype=np.float32).reshape(64, 1, 1)
    np.savez(tmp_path / "calib.npz", xs)
    result = verify(model, "cortex-m4", on, None, 0, [], progress=lambda m: None,
                    calibration=str(tmp_path / "calib.npz"))
    assert result["bitexact"], result["first_mismatch"]
    print("tfl_helloworld max abs error", result["max_abs_error"], "SQNR", result["sqnr_db"])
    assert result["max_abs_error"] < 0.15  # int8 sine approximation: outputs span [-1, 1]


def test_float32_precision_matches_onnxruntime():
    result = verify(shared_model("onnx/mnist-8/model.onnx"), "cortex-m4", "qemu", 5, 0, [],
                    progress=lambda m: None, precision="float32")
    assert result["precision"] == "float32" and result["bitexact"] is None
    assert result["relative_error"] <= 1e-4 and result["passed"]


def test_nhwc_input_layout_and_random_calibration_warning(tmp_path):
    model = shared_model("onnx/mnist-8/model.onnx")
    runner = CliRunner()
    result = runner.invoke(main, ["build", str(model), "--target", "host", "-o", str(tmp_path / "o"),
                                  "--calibration", "random", "--input-layout", "nhwc", "--json"])
    assert result.exit_code == 0, result.output
    assert "calibrating with random inputs" in result.stderr
    report = json.loads(result.stdout)
    assert report["inputs"][0]["shape"] == [1, 28, 28, 1] and report["inputs"][0]["dtype"] == "float32"
    result = runner.invoke(main, ["build", str(model), "--target", "host", "-o", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "needs calibration samples" in result.output
    assert not (tmp_path / "o2").exists()
