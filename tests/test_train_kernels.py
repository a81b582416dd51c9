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
                    "-fno-sanitize-recover=all", "-DEDGEC_TRAIN_TEST_RNG", f"-I{TRAIN}",
                    str(ROOT / "tests" / "train" / "train_driver.c"), str(TRAIN / "edgec_train.c"),
                    str(TRAIN / "edgec_train_rng.c"), "-lm", "-o", str(exe)], check=True)
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


def _conv_layer(rng, h, w, c, oc, k, stride, pad, depthwise, r) -> dict:
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    wf = rng.normal(0, 0.3, (k, k, oc) if depthwise else (oc, k, k, c))
    axis = (0, 1) if depthwise else (1, 2, 3)
    ws = np.abs(wf).max(axis=axis) / 127
    wq = np.clip(np.round(wf / (ws if depthwise else ws[:, None, None, None])), -127, 127).astype(np.int8)
    return {"dims": (h, w, c, oh, ow, oc, k, k, stride, stride, pad, pad, int(depthwise), r), "scale": 0.5,
            "wq": wq, "ws": ws.astype(np.float32), "bias": rng.normal(0, 0.1, oc).astype(np.float32),
            "a": rng.normal(0, 0.3, (r, k, k, c)).astype(np.float32),
            "b": rng.normal(0, 0.3, (oc, r)).astype(np.float32)}


def _torch_conv(layer: dict, x, a, b):
    """NHWC x [1, h, w, c] (torch tensor) through the layer (float64), NHWC out."""
    c, s, pad, depthwise = (layer["dims"][i] for i in (2, 8, 10, 12))
    t = {n: torch.tensor(np.asarray(layer[n]).astype(np.float64)) for n in ("wq", "ws", "bias")}
    xn = x.permute(0, 3, 1, 2)
    if depthwise:
        wt = (t["wq"] * t["ws"]).permute(2, 0, 1)[:, None]  # [oc, 1, k, k]
        base = torch.nn.functional.conv2d(xn, wt, t["bias"], stride=s, padding=pad, groups=c)
    else:
        wt = (t["wq"] * t["ws"][:, None, None, None]).permute(0, 3, 1, 2)
        base = torch.nn.functional.conv2d(xn, wt, t["bias"], stride=s, padding=pad)
    tt = torch.nn.functional.conv2d(xn, a.permute(0, 3, 1, 2), stride=s, padding=pad)
    lora = torch.nn.functional.conv2d(tt, b[:, :, None, None])
    return (base + layer["scale"] * lora).permute(0, 2, 3, 1)


def test_conv_depthwise_fc_gradients_match_autograd(driver: Path) -> None:
    """conv 3x3 stride 1 pad 1 (+ adapter r=3) -> ReLU -> depthwise 3x3 stride 2 pad 1, multiplier 2 (+ adapter
    r=4) -> ReLU -> global mean -> FC (+ adapter r=2) -> cross-entropy: every adapter gradient and the input
    gradient within 1e-4 (relative) of autograd, through the frozen layers between them."""
    rng = np.random.default_rng(5)
    c1 = _conv_layer(rng, 7, 6, 3, 8, 3, 1, 1, False, 3)
    c2 = _conv_layer(rng, 7, 6, 8, 16, 3, 2, 1, True, 4)
    fc = _model(rng, 16, 16, 5, 2, 2)
    fcp = {n: fc[n + "2"] for n in ("wq", "ws", "bias", "a", "b")}
    x = rng.normal(0, 1, (7, 6, 3)).astype(np.float32)
    target = 3
    blob = b""
    for layer in (c1, c2):
        blob += struct.pack("<14i", *layer["dims"]) + struct.pack("<f", layer["scale"])
        blob += b"".join(np.ascontiguousarray(layer[n]).tobytes() for n in ("wq", "ws", "bias", "a", "b"))
    blob += struct.pack("<3i", 16, 5, 2) + struct.pack("<f", 1.5)
    blob += b"".join(np.ascontiguousarray(fcp[n]).tobytes() for n in ("wq", "ws", "bias", "a", "b"))
    blob += x.tobytes() + struct.pack("<i", target)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}
    out = np.frombuffer(subprocess.run([str(driver), "cnn"], input=blob, capture_output=True, check=True,
                                       env=env).stdout, "<f4").astype(np.float64)

    params = {f"{n}{i}": torch.tensor(np.asarray(p[n]).astype(np.float64), requires_grad=True)
              for i, p in enumerate((c1, c2, fcp)) for n in ("a", "b")}
    xt = torch.tensor(x.astype(np.float64)[None], requires_grad=True)
    y1 = torch.relu(_torch_conv(c1, xt, params["a0"], params["b0"]))
    y2 = torch.relu(_torch_conv(c2, y1, params["a1"], params["b1"]))
    m = y2.mean(dim=(0, 1, 2))
    wf = torch.tensor(fcp["wq"].astype(np.float64)) * torch.tensor(fcp["ws"].astype(np.float64))[:, None]
    z = wf @ m + torch.tensor(fcp["bias"].astype(np.float64)) + 1.5 * (params["b2"] @ (params["a2"] @ m))
    loss = torch.nn.functional.cross_entropy(z[None], torch.tensor([target]))
    loss.backward()
    want = [loss.detach().numpy().reshape(1)] + [params[n].grad.numpy().ravel()
                                                 for n in ("a0", "b0", "a1", "b1", "a2", "b2")]
    want.append(xt.grad.numpy().ravel())
    off = 0
    for name, w in zip(("loss", "ga_conv", "gb_conv", "ga_dw", "gb_dw", "ga_fc", "gb_fc", "gx"), want):
        got = out[off:off + w.size]
        off += w.size
        rel = np.abs(got - w).max() / max(np.abs(w).max(), 1e-12)
        assert rel < REL_TOL and np.abs(w).max() > 0, (name, rel)
    assert off == out.size


def _noise(driver: Path, seed: int, g: np.ndarray, std: float) -> np.ndarray:
    blob = struct.pack("<Qif", seed, g.size, std) + g.astype(np.float32).tobytes()
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}
    out = subprocess.run([str(driver), "noise"], input=blob, capture_output=True, check=True, env=env).stdout
    return np.frombuffer(out, "<f4").astype(np.float64)


def test_dp_noise_is_gaussian_and_deterministic(driver: Path) -> None:
    """The DP-SGD noise (edgec_train_add_noise from the seeded test RNG): standard normal by a
    Kolmogorov-Smirnov test against scipy's normal CDF, scaled by std, added to g, the same for the same
    seed and different for another."""
    from scipy import stats

    z = _noise(driver, 7, np.zeros(20000), 1.0)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    g = np.linspace(-1, 1, 1000)
    a, b = _noise(driver, 11, g, 0.5), _noise(driver, 11, g, 0.5)
    assert np.array_equal(a, b) and not np.array_equal(a, _noise(driver, 12, g, 0.5))
    assert abs((a - g).std() - 0.5) < 0.05


@pytest.mark.parametrize("kind,k,stride,pad", [("avg", 3, 2, 1), ("avg", 2, 2, 0), ("max", 3, 2, 1),
                                               ("max", 2, 1, 0)])
def test_pooling_matches_torch(driver: Path, kind: str, k: int, stride: int, pad: int) -> None:
    """Pooling forward and backward vs torch (average over in-image taps: count_include_pad=False, as
    TFLite's AVERAGE_POOL_2D with SAME padding)."""
    rng = np.random.default_rng(k * 10 + stride)
    h, w, c = 7, 6, 3
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    x = rng.normal(0, 1, (h, w, c)).astype(np.float32)
    gy = rng.normal(0, 1, (oh, ow, c)).astype(np.float32)
    blob = struct.pack("<12i", h, w, c, oh, ow, k, k, stride, stride, pad, pad, int(kind == "max"))
    blob += x.tobytes() + gy.tobytes()
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}
    out = np.frombuffer(subprocess.run([str(driver), "pool"], input=blob, capture_output=True, check=True,
                                       env=env).stdout, "<f4").astype(np.float64)
    xt = torch.tensor(x.astype(np.float64)).permute(2, 0, 1)[None].requires_grad_(True)
    if kind == "avg":
        yt = torch.nn.functional.avg_pool2d(xt, k, stride, pad, count_include_pad=False)
    else:
        yt = torch.nn.functional.max_pool2d(xt, k, stride, pad)
    yt.backward(torch.tensor(gy.astype(np.float64)).permute(2, 0, 1)[None])
    want_y = yt.detach()[0].permute(1, 2, 0).numpy().ravel()
    want_gx = xt.grad[0].permute(1, 2, 0).numpy().ravel()
    assert np.abs(out[:want_y.size] - want_y).max() < 1e-5
    assert np.abs(out[want_y.size:] - want_gx).max() < 1e-5


@pytest.mark.parametrize("capacity,holdout,pushes", [(8, 4, 5), (8, 4, 21), (5, 3, 100), (6, 0, 9), (1, 2, 3)])
def test_sample_buffer(driver: Path, capacity: int, holdout: int, pushes: int) -> None:
    """The ring keeps the last `capacity` records, oldest first; records pushed as 0, holdout, 2 holdout, ...
    are the validation split (the buffer's documented semantics)."""
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}
    out = np.frombuffer(subprocess.run([str(driver), "buffer"], input=struct.pack("<3i", capacity, holdout, pushes),
                                       capture_output=True, check=True, env=env).stdout, "<i4").tolist()
    held = list(range(max(0, pushes - capacity), pushes))
    val = [s for s in held if holdout and s % holdout == 0]
    train = [s for s in held if s not in val]
    assert out == [len(train), *train, len(val), *val]
