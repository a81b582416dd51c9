"""runtime_c/train: the float32 training kernels for LoRA adapter tensors (one sample at a time). Oracle:
PyTorch autograd (float64) on the same model: a frozen int8 two-layer MLP (weights dequantized exactly as
the kernels do) with a LoRA adapter on each layer, softmax + cross-entropy or MSE; and torch.optim for the
optimizer steps, torch.nn.utils.clip_grad_norm_ for clipping."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the gradient checks need PyTorch (pip install torch)")

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "runtime_c" / "train"
REL_TOL = 1e-4  # issue 6: relative error of the adapter gradients in float32


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found")
    exe = tmp_path_factory.mktemp("train") / "train_driver"
    subprocess.run(["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", f"-I{TRAIN}", str(ROOT / "tests" / "train" / "train_driver.c"),
                    str(TRAIN / "edgec_train.c"), "-lm", "-o", str(exe)], check=True)
    return exe


def _model(rng, k: int, h: int, o: int, r1: int, r2: int) -> dict:
    p = {}
    for name, (rows, cols, r) in {"1": (h, k, r1), "2": (o, h, r2)}.items():
        w = rng.normal(0, 0.3, (rows, cols))
        ws = np.abs(w).max(1) / 127
        p["wq" + name] = np.clip(np.round(w / ws[:, None]), -127, 127).astype(np.int8)
        p["ws" + name] = ws.astype(np.float32)
        p["bias" + name] = rng.normal(0, 0.1, rows).astype(np.float32)
        p["a" + name] = rng.normal(0, 0.3, (r, cols)).astype(np.float32)
        p["b" + name] = rng.normal(0, 0.3, (rows, r)).astype(np.float32)
    return p


def _run_c(driver: Path, p: dict, dims: tuple, scales: tuple, x: np.ndarray, yt: np.ndarray) -> dict:
    k, h, o, r1, r2 = dims[:5]
    blob = struct.pack("<8i", *dims) + struct.pack("<2f", *scales)
    for n in "12":
        blob += b"".join(np.ascontiguousarray(p[f"{f}{n}"]).tobytes() for f in ("wq", "ws", "bias", "a", "b"))
    blob += x.astype(np.float32).tobytes() + yt.astype(np.float32).tobytes()
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}  # the driver's buffers live until exit
    out = np.frombuffer(subprocess.run([str(driver)], input=blob, capture_output=True, check=True, env=env).stdout,
                        "<f4")
    sizes = {"loss": 1, "ga1": r1 * k, "gb1": h * r1, "ga2": r2 * h, "gb2": o * r2, "gx": k}
    res, off = {}, 0
    for name, n in sizes.items():
        res[name] = out[off:off + n].astype(np.float64)
        off += n
    return res


def _torch(p: dict, scales: tuple, x: np.ndarray, yt: np.ndarray, target: int, loss: str, relu6: bool) -> dict:
    t = {k: torch.tensor(v.astype(np.float64)) for k, v in p.items()}
    a1, b1, a2, b2 = (t[n].clone().requires_grad_(True) for n in ("a1", "b1", "a2", "b2"))
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    w1, w2 = t["wq1"] * t["ws1"][:, None], t["wq2"] * t["ws2"][:, None]
    z1 = w1 @ xt + t["bias1"] + scales[0] * (b1 @ (a1 @ xt))
    z1 = torch.clamp(z1, 0, 6) if relu6 else torch.relu(z1)
    z2 = w2 @ z1 + t["bias2"] + scales[1] * (b2 @ (a2 @ z1))
    if loss == "xent":
        value = torch.nn.functional.cross_entropy(z2[None], torch.tensor([target]))
    else:
        value = torch.mean((z2 - torch.tensor(yt.astype(np.float64))) ** 2)
    value.backward()
    return {"loss": value.detach().numpy().reshape(1), "ga1": a1.grad.numpy().ravel(), "gb1": b1.grad.numpy().ravel(),
            "ga2": a2.grad.numpy().ravel(), "gb2": b2.grad.numpy().ravel(), "gx": xt.grad.numpy().ravel()}


@pytest.mark.parametrize("loss,relu6,seed", [("xent", False, 0), ("xent", True, 1), ("mse", False, 2)])
def test_adapter_gradients_match_autograd(driver: Path, loss: str, relu6: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, h, o, r1, r2 = 24, 32, 10, 4, 2
    p = _model(rng, k, h, o, r1, r2)
    scales = (1.0, 2.0)
    x = rng.normal(0, 1, k).astype(np.float32) * (4 if relu6 else 1)  # large inputs reach ReLU6's clamp
    yt = rng.normal(0, 1, o).astype(np.float32)
    target = int(rng.integers(o))
    got = _run_c(driver, p, (k, h, o, r1, r2, target, 0 if loss == "xent" else 1, int(relu6)), scales, x, yt)
    want = _torch(p, scales, x, yt, target, loss, relu6)
    for name in got:
        rel = np.abs(got[name] - want[name]).max() / max(np.abs(want[name]).max(), 1e-12)
        assert rel < REL_TOL, (name, rel)
        assert np.abs(want[name]).max() > 0, name  # every gradient is really exercised


def test_optimizers_and_clipping_match_torch(driver: Path) -> None:
    rng = np.random.default_rng(3)
    n, steps, lr, clip = 50, 3, 0.01, 0.5
    p0 = rng.normal(0, 1, n).astype(np.float32)
    grads = [rng.normal(0, 1, n).astype(np.float32) for _ in range(steps)]
    blob = struct.pack("<2i", n, steps) + struct.pack("<5f", lr, 0.9, 0.999, 1e-8, clip) + p0.tobytes()
    blob += b"".join(g.tobytes() for g in grads)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}
    out = np.frombuffer(subprocess.run([str(driver), "opt"], input=blob, capture_output=True, check=True,
                                       env=env).stdout, "<f4").astype(np.float64)
    p_sgd, p_adam, clipped, norm = out[:n], out[n:2 * n], out[2 * n:3 * n], out[3 * n]
    for opt_cls, got in ((torch.optim.SGD, p_sgd), (torch.optim.Adam, p_adam)):
        param = torch.nn.Parameter(torch.tensor(p0.astype(np.float64)))
        opt = opt_cls([param], lr=lr)
        for g in grads:
            param.grad = torch.tensor(g.astype(np.float64))
            opt.step()
        assert np.abs(got - param.detach().numpy()).max() < 1e-6, opt_cls.__name__
    param = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
    param.grad = torch.tensor(grads[-1].astype(np.float64))
    want_norm = float(torch.nn.utils.clip_grad_norm_([param], clip))
    assert abs(norm - want_norm) < 1e-5 * want_norm and want_norm > clip
    assert np.abs(clipped - param.grad.numpy()).max() < 1e-6
