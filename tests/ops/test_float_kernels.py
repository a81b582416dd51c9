"""float32 kernels (--precision float32): seeded sweeps compared with TFLite Micro's float reference kernels.

Each model holds several independent ops so one edgec build, one gcc run and one TFLM interpreter cover many
parameter combinations. Results must agree within |edgec - TFLM| <= 1e-6 + 1e-5 * |TFLM| (the kernels
follow TFLM's float operation order, so on the same host and libm they are in fact bit-identical; the
tolerance leaves room for another libm or compiler). The max error per op family is printed (pytest -s).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgec.errors import EdgecError
from edgec.frontends.tflite_reader import parse_tflite
from edgec.frontends.tflite_writer import WTensor
from edgec.lower import lower_graph
from edgec.lower.ops import FLOAT_LOWERINGS, lowering_for
from edgec.lower.ops.float_kernels import LOGISTIC_CUTOFF_UPPER
from edgec.oracle.tflm import run_tflm_batch
from edgec.pipeline import build
from edgec.targets import load_target
from edgec.toolchain.runner import (
    ToolchainError,
    build_firmware,
    build_host,
    ensure_tools,
    run_host,
    run_qemu,
)
from support import ModelBuilder, random_inputs, shared_model

RTOL, ATOL = 1e-5, 1e-6
ACTIVATIONS = ["NONE", "RELU", "RELU6", "RELU_N1_TO_1"]


def F(name: str, shape: tuple, data: np.ndarray | None = None) -> WTensor:
    return WTensor(name, tuple(int(d) for d in shape), "float32",
                   data=None if data is None else np.asarray(data, np.float32).reshape(shape))


def I32(name: str, values) -> WTensor:
    data = np.asarray(values, np.int32)
    return WTensor(name, data.shape, "int32", data=data)


def internal(mb: ModelBuilder, *tids: int) -> None:
    """Make op outputs that feed later ops internal tensors (ModelBuilder lists them as graph inputs/outputs)."""
    for t in tids:
        for lst in (mb.inputs, mb.outputs):
            if t in lst:
                lst.remove(t)


def build_f32(model: bytes, tmp: Path, target: str = "host") -> tuple[Path, list]:
    """edgec build with --precision float32; returns (project dir, output specs)."""
    path = tmp / "model.tflite"
    path.write_bytes(model)
    report = build(path, target, tmp / "out", precision="float32")
    assert report["precision"] == "float32"
    return tmp / "out", [(tuple(o["shape"]), o["dtype"]) for o in report["outputs"]]


def run_f32(model: bytes, input_sets: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    with tempfile.TemporaryDirectory(prefix="edgec_f32_") as tmp:
        out, specs = build_f32(model, Path(tmp))
        return run_host(build_host(out, Path(tmp) / "work"), input_sets, specs)


def compare(got: list[list[np.ndarray]], want: list[list[np.ndarray]], what: str) -> float:
    """Assert the tolerance on every output; returns the max abs error."""
    worst = 0.0
    for r, (g_rec, w_rec) in enumerate(zip(got, want)):
        for o, (g, w) in enumerate(zip(g_rec, w_rec)):
            w = np.asarray(w, np.float32).reshape(g.shape)
            assert g.dtype == np.float32
            assert np.array_equal(np.isnan(g), np.isnan(w)), f"{what}: set {r}, output {o}: NaN positions differ"
            g64, w64 = g.astype(np.float64), w.astype(np.float64)
            finite = np.isfinite(w64)
            inf = np.isinf(w64)
            assert np.array_equal(g64[inf], w64[inf]), f"{what}: set {r}, output {o}: infinities differ"
            err = np.abs(np.where(finite, g64, 0) - np.where(finite, w64, 0))
            bad = err > ATOL + RTOL * np.abs(np.where(finite, w64, 0))
            if bad.any():
                i = np.argwhere(bad)[0]
                raise AssertionError(f"{what}: set {r}, output {o}: {int(bad.sum())} of {g.size} beyond tolerance; "
                                     f"first at {tuple(i)}: edgec {g[tuple(i)]!r} vs TFLM {w[tuple(i)]!r}")
            worst = max(worst, float(err.max(initial=0.0)))
    return worst


def check(model: bytes, what: str, input_sets: list[list[np.ndarray]] | None = None, n: int = 3,
          seed: int = 0) -> float:
    sets = input_sets if input_sets is not None else random_inputs(model, n, seed)
    worst = compare(run_f32(model, sets), run_tflm_batch(model, sets), what)
    print(f"\n[float32 vs TFLM] {what}: max abs error {worst:.3g}")
    return worst


def wide_inputs(model: bytes, n: int, seed: int, scale: float) -> list[list[np.ndarray]]:
    """N(0, scale) float inputs (random_inputs draws N(0, 2))."""
    rng = np.random.default_rng(seed)
    graph = parse_tflite(model)
    return [[rng.normal(0, scale, graph.t(t).shape).astype(np.float32) for t in graph.inputs] for _ in range(n)]


def _out(size: int, k: int, s: int, d: int, padding: str) -> int:
    eff = (k - 1) * d + 1
    return (size + s - 1) // s if padding == "SAME" else (size + s - eff) // s


# --- convolution family -----------------------------------------------------------------------------------


def add_conv(mb: ModelBuilder, rng: np.random.Generator, *, n=1, h=6, w=6, c=3, oc=4, kh=3, kw=3, sh=1, sw=1,
             dh=1, dw=1, padding="SAME", act="NONE", bias=True, groups=1) -> None:
    if _out(h, kh, sh, dh, padding) < 1 or _out(w, kw, sw, dw, padding) < 1:
        padding = "SAME"  # a VALID window larger than the input
    oh, ow = _out(h, kh, sh, dh, padding), _out(w, kw, sw, dw, padding)
    x = mb.add(F("x", (n, h, w, c)))
    wt = mb.add(F("w", (oc, kh, kw, c // groups), rng.normal(0, 1, (oc, kh, kw, c // groups))))
    b = mb.add(F("b", (oc,), rng.normal(0, 2, oc))) if bias else -1
    y = mb.add(F("y", (n, oh, ow, oc)))
    mb.op("CONV_2D", [x, wt, b], y, {"padding": padding, "stride_h": sh, "stride_w": sw, "dilation_h_factor": dh,
                                     "dilation_w_factor": dw, "fused_activation_function": act})


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_conv2d_sweep(seed):
    rng = np.random.default_rng(100 + seed)
    mb = ModelBuilder()
    for i in range(10):
        groups = [1, 1, 1, 2, 3][rng.integers(5)]
        c = groups * int(rng.integers(1, 5))
        add_conv(mb, rng, n=int(rng.integers(1, 3)), h=int(rng.integers(3, 10)), w=int(rng.integers(3, 10)), c=c,
                 oc=groups * int(rng.integers(1, 4)) if groups > 1 else int(rng.integers(1, 10)),
                 kh=int(rng.integers(1, 4)), kw=int(rng.integers(1, 4)), sh=int(rng.integers(1, 3)),
                 sw=int(rng.integers(1, 3)), dh=int(rng.integers(1, 3)) if i % 3 == 0 else 1,
                 dw=int(rng.integers(1, 3)) if i % 3 == 0 else 1, padding=["SAME", "VALID"][i % 2],
                 act=ACTIVATIONS[i % 4], bias=i % 5 != 4, groups=groups)
    # 1x1 pointwise, a wide row (no unrolling) and a single-pixel output.
    add_conv(mb, rng, h=5, w=5, c=8, oc=12, kh=1, kw=1)
    add_conv(mb, rng, h=6, w=12, c=6, oc=5, kh=3, kw=5, padding="VALID", act="RELU")
    add_conv(mb, rng, h=3, w=3, c=2, oc=3, kh=3, kw=3, padding="VALID")
    # Weights and bias as graph inputs (not constants).
    x, w, b = mb.add(F("x", (1, 5, 4, 3))), mb.add(F("wv", (6, 2, 2, 3))), mb.add(F("bv", (6,)))
    mb.op("CONV_2D", [x, w, b], mb.add(F("y", (1, 5, 4, 6))), {"padding": "SAME"})
    check(mb.build(), f"CONV_2D seed {seed}", n=3, seed=seed)


def add_depthwise(mb: ModelBuilder, rng: np.random.Generator, *, n=1, h=6, w=6, c=3, dm=1, kh=3, kw=3, sh=1, sw=1,
                  dh=1, dw=1, padding="SAME", act="NONE", bias="random") -> None:
    """bias: "random", "none" (absent) or "zero" (explicit zeros)."""
    if _out(h, kh, sh, dh, padding) < 1 or _out(w, kw, sw, dw, padding) < 1:
        padding = "SAME"  # a VALID window larger than the input
    oh, ow = _out(h, kh, sh, dh, padding), _out(w, kw, sw, dw, padding)
    x = mb.add(F("x", (n, h, w, c)))
    wt = mb.add(F("w", (1, kh, kw, c * dm), rng.normal(0, 1, (1, kh, kw, c * dm))))
    values = rng.normal(0, 2, c * dm)
    b = -1 if bias == "none" else mb.add(F("b", (c * dm,), values if bias == "random" else np.zeros(c * dm)))
    y = mb.add(F("y", (n, oh, ow, c * dm)))
    mb.op("DEPTHWISE_CONV_2D", [x, wt, b], y, {"padding": padding, "stride_h": sh, "stride_w": sw,
                                               "dilation_h_factor": dh, "dilation_w_factor": dw,
                                               "depth_multiplier": dm, "fused_activation_function": act})


def _depthwise_sweep(bias: str) -> bytes:
    rng = np.random.default_rng(7)
    mb = ModelBuilder()
    for i in range(12):
        add_depthwise(mb, rng, n=int(rng.integers(1, 3)), h=int(rng.integers(3, 10)), w=int(rng.integers(3, 10)),
                      c=int(rng.integers(1, 6)), dm=int(rng.integers(1, 4)), kh=int(rng.integers(1, 4)),
                      kw=int(rng.integers(1, 4)), sh=int(rng.integers(1, 3)), sw=int(rng.integers(1, 3)),
                      dh=2 if i % 4 == 1 else 1, dw=2 if i % 4 == 1 else 1, padding=["SAME", "VALID"][i % 2],
                      act=ACTIVATIONS[i % 4], bias="random" if i % 5 != 3 else bias)
    add_depthwise(mb, rng, h=7, w=7, c=4, kh=5, kw=5)  # 25 taps: the non-unrolled loop
    return mb.build()


def test_depthwise_sweep():
    """Ops without bias are compared with TFLM running explicit zero biases: the pinned TFLM crashes in its
    float DEPTHWISE_CONV_2D Prepare when the bias is absent (it frees the missing bias tensor)."""
    model, oracle = _depthwise_sweep("none"), _depthwise_sweep("zero")
    sets = random_inputs(model, 3, 0)
    worst = compare(run_f32(model, sets), run_tflm_batch(oracle, sets), "DEPTHWISE_CONV_2D")
    print(f"\n[float32 vs TFLM] DEPTHWISE_CONV_2D: max abs error {worst:.3g}")


def test_fully_connected_sweep():
    rng = np.random.default_rng(3)
    mb = ModelBuilder()
    for i, (xs, k, oc) in enumerate([((1, 7), 7, 5), ((3, 16), 16, 8), ((2, 3, 10), 10, 3), ((1, 1), 1, 16),
                                     ((4, 33), 33, 1), ((1, 2, 2, 6), 24, 9)]):
        x = mb.add(F("x", xs))
        w = mb.add(F("w", (oc, k), rng.normal(0, 1, (oc, k))))
        b = mb.add(F("b", (oc,), rng.normal(0, 1, oc))) if i != 2 else -1
        keep = i == 2
        ys = xs[:-1] + (oc,) if keep else (int(np.prod(xs)) // k, oc)
        y = mb.add(F("y", ys))
        mb.op("FULLY_CONNECTED", [x, w, b], y, {"fused_activation_function": ACTIVATIONS[i % 4],
                                                 "keep_num_dims": keep})
    # Weights as a graph input (not constant).
    x, w = mb.add(F("x", (2, 6))), mb.add(F("wv", (3, 6)))
    mb.op("FULLY_CONNECTED", [x, w, -1], mb.add(F("y", (2, 3))))
    check(mb.build(), "FULLY_CONNECTED")


def add_transpose_conv(mb: ModelBuilder, rng: np.random.Generator, *, n=1, h=4, w=4, ic=3, oc=2, kh=3, kw=3,
                       sh=2, sw=2, padding="SAME", act="NONE", bias=True) -> None:
    if padding == "SAME":
        oh, ow = h * sh, w * sw
    else:
        oh, ow = (h - 1) * sh + kh, (w - 1) * sw + kw
    shape = mb.add(I32("oshape", [n, oh, ow, oc]))
    wt = mb.add(F("w", (oc, kh, kw, ic), rng.normal(0, 1, (oc, kh, kw, ic))))
    x = mb.add(F("x", (n, h, w, ic)))
    ins = [shape, wt, x] + ([mb.add(F("b", (oc,), rng.normal(0, 1, oc)))] if bias else [])
    y = mb.add(F("y", (n, oh, ow, oc)))
    mb.op("TRANSPOSE_CONV", ins, y, {"padding": padding, "stride_h": sh, "stride_w": sw,
                                     "fused_activation_function": act})


@pytest.mark.parametrize("seed", [0, 1])
def test_transpose_conv_sweep(seed):
    rng = np.random.default_rng(11 + seed)
    mb = ModelBuilder()
    for i in range(10):
        add_transpose_conv(mb, rng, n=int(rng.integers(1, 3)), h=int(rng.integers(1, 6)), w=int(rng.integers(1, 6)),
                           ic=int(rng.integers(1, 5)), oc=int(rng.integers(1, 5)), kh=int(rng.integers(1, 5)),
                           kw=int(rng.integers(1, 5)), sh=int(rng.integers(1, 4)), sw=int(rng.integers(1, 4)),
                           padding=["SAME", "VALID"][i % 2], act=ACTIVATIONS[i % 4], bias=i % 3 != 2)
    check(mb.build(), f"TRANSPOSE_CONV seed {seed}")


# --- pooling, MEAN, SOFTMAX ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_pool_sweep(seed):
    rng = np.random.default_rng(5 + seed)
    mb = ModelBuilder()
    for i in range(18):
        kind = ["AVERAGE_POOL_2D", "MAX_POOL_2D"][i % 2]
        n, h, w, c = int(rng.integers(1, 3)), int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 5))
        fh, fw = int(rng.integers(1, min(h, 4) + 1)), int(rng.integers(1, min(w, 4) + 1))
        if i >= 16:
            fh = fw = 1  # 1x1 windows: the running max is stored right after its only update
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        padding = ["SAME", "VALID"][(i // 2) % 2]
        x = mb.add(F("x", (n, h, w, c)))
        y = mb.add(F("y", (n, _out(h, fh, sh, 1, padding), _out(w, fw, sw, 1, padding), c)))
        mb.op(kind, [x], y, {"padding": padding, "stride_h": sh, "stride_w": sw, "filter_height": fh,
                             "filter_width": fw, "fused_activation_function": ACTIVATIONS[(i // 4) % 4]})
    check(mb.build(), f"AVERAGE_POOL_2D / MAX_POOL_2D seed {seed}")


def test_mean_sweep():
    mb = ModelBuilder()
    cases = [((2, 5, 6, 3), [1, 2], True), ((2, 5, 6, 3), [2, 1], False), ((1, 4, 4, 8), [1, 2], True),
             ((3, 4, 5), [0, 2], False), ((3, 4, 5), [-1], True), ((2, 3, 4, 5, 2), [1, 3, 4], False),
             ((6,), [0], False), ((2, 3, 4, 5), [0, 1, 2, 3], True), ((4, 7), [1, 1], False)]
    for shape, axes, keep in cases:
        x = mb.add(F("x", shape))
        red = {a % len(shape) for a in axes}
        out = tuple(1 if i in red else d for i, d in enumerate(shape)) if keep else \
            tuple(d for i, d in enumerate(shape) if i not in red)
        mb.op("MEAN", [x, mb.add(I32("axes", axes))], mb.add(F("y", out)), {"keep_dims": keep})
    check(mb.build(), "MEAN")


def test_softmax_sweep():
    mb = ModelBuilder()
    for shape, beta in [((1, 10), 1.0), ((3, 7), 0.37), ((2, 3, 5), 2.5), ((4,), 1e-3), ((2, 1), 1.0),
                        ((1, 2, 2, 33), 0.1)]:
        x = mb.add(F("x", shape))
        mb.op("SOFTMAX", [x], mb.add(F("y", shape)), {"beta": beta})
    model = mb.build()
    check(model, "SOFTMAX", input_sets=wide_inputs(model, 3, 0, 10.0))


# --- elementwise ------------------------------------------------------------------------------------------------


# Odd positions take a constant second operand (the scalar one: TFLM's Python wrapper cannot feed 0-d inputs).
BROADCASTS = [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((1, 4, 4, 3), (1, 1, 1, 3)), ((5,), ()),
              ((3, 1), (1, 5)), ((2, 1, 3, 1), (1, 4, 1, 2)), ((1, 2, 1, 2, 1, 2), (2, 1, 2, 1, 2, 1)),
              ((4, 1, 3), (2, 1))]


@pytest.mark.parametrize("kind", ["ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM"])
def test_binary_broadcast(kind):
    mb = ModelBuilder()
    rng = np.random.default_rng(len(kind))
    for i, (sa, sb) in enumerate(BROADCASTS):
        a = mb.add(F("a", sa))
        b = mb.add(F("b", sb, rng.normal(0, 2, sb) if i % 2 else None))
        out = np.broadcast_shapes(sa, sb)
        opts = {} if kind in ("MAXIMUM", "MINIMUM") else {"fused_activation_function": ACTIVATIONS[i % 4]}
        mb.op(kind, [a, b], mb.add(F("y", out)), opts)
    check(mb.build(), kind)


def test_prelu_and_leaky_relu():
    rng = np.random.default_rng(9)
    mb = ModelBuilder()
    for sx, sa, const in [((1, 4, 4, 3), (1, 1, 3), True), ((2, 5), (5,), True), ((2, 3, 4), (2, 3, 4), False),
                          ((1, 3, 3, 2), (3, 1, 2), True), ((6,), (), True)]:
        x = mb.add(F("x", sx))
        alpha = mb.add(F("alpha", sa, rng.normal(0, 0.5, sa) if const else None))
        mb.op("PRELU", [x, alpha], mb.add(F("y", sx)))
    for alpha in [0.2, 0.01, 1.7, -0.3, 0.1234567]:
        x = mb.add(F("x", (3, 5)))
        mb.op("LEAKY_RELU", [x], mb.add(F("y", (3, 5))), {"alpha": alpha})
    check(mb.build(), "PRELU / LEAKY_RELU")


def test_unary_activations():
    mb = ModelBuilder()
    for kind in ["RELU", "RELU6", "LOGISTIC", "TANH", "HARD_SWISH"]:
        x = mb.add(F("x", (4, 25)))
        mb.op(kind, [x], mb.add(F("y", (4, 25))))
    model = mb.build()
    sets = wide_inputs(model, 3, 0, 8.0)
    # Values at and around the branch points (LOGISTIC's cutoffs, RELU6 / HARD_SWISH's 0, 3, 6 bounds).
    c = LOGISTIC_CUTOFF_UPPER
    edges = np.array([c, np.nextafter(c, np.float32(0)), np.nextafter(c, np.float32(99)), -9.0,
                      np.nextafter(np.float32(-9), np.float32(0)), np.nextafter(np.float32(-9), np.float32(-99)),
                      0.0, -0.0, 3.0, -3.0, 6.0, 6.000001, -6.0, 1e-30, -1e-30, 88.0, -88.0, 100.0, -104.0, 20.0,
                      -20.0, 0.5, -0.5, 1e6, -1e6, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38], np.float32)
    sets.append([np.resize(edges, (4, 25))] * 5)
    check(model, "RELU / RELU6 / LOGISTIC / TANH / HARD_SWISH", input_sets=sets)


# --- data movement on float tensors ---------------------------------------------------------------------------


def test_movement_float():
    mb = ModelBuilder()
    x = mb.add(F("x", (2, 3, 4)))
    mb.op("PAD", [x, mb.add(I32("p", [[0, 1], [2, 0], [1, 1]]))], mb.add(F("y", (3, 5, 6))))
    x = mb.add(F("x", (1, 3, 3, 2)))
    mb.op("PAD", [x, mb.add(I32("p", [[0, 0], [1, 1], [1, 1], [0, 0]])), mb.add(F("v", (), np.float32(-1.2345678)))],
          mb.add(F("y", (1, 5, 5, 2))))
    a, b = mb.add(F("a", (2, 3, 2))), mb.add(F("b", (2, 1, 2)))
    mb.op("CONCATENATION", [a, b, mb.add(F("k", (2, 2, 2), np.arange(8)))], mb.add(F("y", (2, 6, 2))), {"axis": 1})
    x = mb.add(F("x", (4, 6, 5)))
    mb.op("STRIDED_SLICE", [x, mb.add(I32("b", [1, 5, 0])), mb.add(I32("e", [4, 0, 5])),
                            mb.add(I32("s", [2, -2, 2]))], mb.add(F("y", (2, 3, 3))))
    x = mb.add(F("x", (2, 3, 4, 5)))
    mb.op("TRANSPOSE", [x, mb.add(I32("perm", [0, 3, 1, 2]))], mb.add(F("y", (2, 5, 3, 4))))
    # RESHAPE / SQUEEZE alias their input; a RELU behind them makes them interior ops.
    x = mb.add(F("x", (1, 2, 1, 6)))
    sq = mb.add(F("sq", (2, 6)))
    mb.op("SQUEEZE", [x], sq, {"squeeze_dims": [0, 2]})
    rs = mb.add(F("rs", (3, 4)))
    mb.op("RESHAPE", [sq, mb.add(I32("shape", [3, 4]))], rs)
    mb.op("RELU", [rs], mb.add(F("y", (3, 4))))
    internal(mb, sq, rs)
    model = mb.build()
    sets = random_inputs(model, 2, 0)
    got, want = run_f32(model, sets), run_tflm_batch(model, sets)
    for g_rec, w_rec in zip(got, want):
        for g, w in zip(g_rec, w_rec):
            assert np.array_equal(g.view(np.uint32), np.asarray(w, np.float32).reshape(g.shape).view(np.uint32))
    print("\n[float32 vs TFLM] PAD / CONCATENATION / STRIDED_SLICE / TRANSPOSE / RESHAPE / SQUEEZE: bit-identical")


def test_float_ops_use_float_kernels():
    mb = ModelBuilder()
    x = mb.add(F("x", (1, 4, 4, 2)))
    mb.op("PAD", [x, mb.add(I32("p", [[0, 0], [1, 1], [1, 1], [0, 0]]))], mb.add(F("y", (1, 6, 6, 2))))
    mb.op("TANH", [x], mb.add(F("t", (1, 4, 4, 2))))
    graph = parse_tflite(mb.build())
    for op in graph.ops:
        assert lowering_for(graph, op) is FLOAT_LOWERINGS[op.type]


# --- real model and Cortex-M4 -----------------------------------------------------------------------------------


def test_hello_world_float_end_to_end():
    model = shared_model("tflite/hello_world_float.tflite").read_bytes()
    sets = [[np.array([[v]], np.float32)] for v in np.linspace(0, 2 * np.pi, 50)]
    worst = check(model, "hello_world_float.tflite", input_sets=sets)
    assert worst <= 1e-6


def _conv_model() -> bytes:
    rng = np.random.default_rng(21)
    mb = ModelBuilder()
    x = mb.add(F("x", (1, 8, 8, 3)))
    c1 = mb.add(F("c1", (1, 4, 4, 8)))
    mb.op("CONV_2D", [x, mb.add(F("w", (8, 3, 3, 3), rng.normal(0, 0.5, (8, 3, 3, 3)))),
                      mb.add(F("b", (8,), rng.normal(0, 0.1, 8)))], c1,
          {"padding": "SAME", "stride_h": 2, "stride_w": 2, "fused_activation_function": "RELU6"})
    d1 = mb.add(F("d1", (1, 4, 4, 8)))
    mb.op("DEPTHWISE_CONV_2D", [c1, mb.add(F("dw", (1, 3, 3, 8), rng.normal(0, 0.5, (1, 3, 3, 8)))),
                                mb.add(F("db", (8,), rng.normal(0, 0.1, 8)))], d1,
          {"padding": "SAME", "depth_multiplier": 1, "fused_activation_function": "RELU"})
    p = mb.add(F("p", (1, 1, 1, 8)))
    mb.op("MEAN", [d1, mb.add(I32("ax", [1, 2]))], p, {"keep_dims": True})
    f = mb.add(F("f", (1, 4)))
    mb.op("FULLY_CONNECTED", [p, mb.add(F("fw", (4, 8), rng.normal(0, 1, (4, 8)))),
                              mb.add(F("fb", (4,), rng.normal(0, 0.1, 4)))], f)
    mb.op("SOFTMAX", [f], mb.add(F("y", (1, 4))), {"beta": 1.0})
    internal(mb, c1, d1, p, f)
    return mb.build()


def _transcendental_model() -> bytes:
    mb = ModelBuilder()
    for kind in ["LOGISTIC", "TANH", "HARD_SWISH", "SOFTMAX"]:
        x = mb.add(F("x", (20, 50)))
        mb.op(kind, [x], mb.add(F("y", (20, 50))), {"beta": 0.5} if kind == "SOFTMAX" else None)
    return mb.build()


def _ulps(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64)).max(initial=0))


@pytest.mark.parametrize("name", ["hello_world_float", "conv", "transcendental"])
def test_cortex_m4_matches_host(name):
    """The float kernels cross-compile for the Cortex-M4F (hard-float fpv4-sp-d16) and agree with the host.

    Arithmetic kernels come out bit-identical (no FMA contraction under -std=c99; VMLA rounds the product).
    expf differs by 1-2 ulp between newlib and glibc, so LOGISTIC and SOFTMAX differ in the last bits."""
    target = load_target("cortex-m4")
    try:
        ensure_tools(target)
    except ToolchainError as e:
        pytest.skip(str(e))
    if name == "hello_world_float":
        model = shared_model("tflite/hello_world_float.tflite").read_bytes()
        sets = [[np.array([[v]], np.float32)] for v in np.linspace(0, 2 * np.pi, 20)]
    elif name == "conv":
        model = _conv_model()
        sets = random_inputs(model, 4, 1)
    else:
        model = _transcendental_model()
        sets = wide_inputs(model, 2, 0, 6.0)
    with tempfile.TemporaryDirectory(prefix="edgec_f32_m4_") as tmp:
        out, specs = build_f32(model, Path(tmp), "cortex-m4")
        arm, _ = run_qemu(build_firmware(out, target, Path(tmp) / "fw"), target, sets, specs, count_instructions=False)
        host = run_host(build_host(out, Path(tmp) / "host"), sets, specs)
    worst = compare(arm, host, f"{name} Cortex-M4 vs host")
    worst_tflm = compare(arm, run_tflm_batch(model, sets), f"{name} Cortex-M4 vs TFLM")
    for o in range(len(specs)):
        a = np.concatenate([r[o].ravel() for r in arm])
        h = np.concatenate([r[o].ravel() for r in host])
        print(f"\n[float32 Cortex-M4] {name} output {o}: {int((a != h).sum())} of {a.size} values differ from the "
              f"host, max {_ulps(a, h)} ulp")
    print(f"[float32 Cortex-M4] {name}: max abs error vs host {worst:.3g}, vs TFLM {worst_tflm:.3g}")
    if name != "transcendental":
        assert all(np.array_equal(a, h) for ra, rh in zip(arm, host) for a, h in zip(ra, rh))


def test_kernels_are_single_precision():
    """No double arithmetic in the kernels: float literals carry the f suffix, math calls are the float ones."""
    mb = ModelBuilder()
    x = mb.add(F("x", (1, 5, 5, 4)))
    for kind in ["LOGISTIC", "TANH", "HARD_SWISH", "SOFTMAX", "RELU6"]:
        mb.op(kind, [x], mb.add(F("y", (1, 5, 5, 4))))
    mb.op("AVERAGE_POOL_2D", [x], mb.add(F("y", (1, 3, 3, 4))), {"padding": "SAME", "stride_h": 2, "stride_w": 2,
                                                                "filter_height": 3, "filter_width": 3})
    mb.op("MEAN", [x, mb.add(I32("ax", [1, 2]))], mb.add(F("y", (1, 4))))
    mb.op("LEAKY_RELU", [x], mb.add(F("y", (1, 5, 5, 4))), {"alpha": 0.1})
    graph = parse_tflite(mb.build())
    src = lower_graph(graph).kernels_c
    assert "double" not in src
    assert not re.search(r"\d[eE][+-]?\d+(?![\deEf])|\d\.\d*(?![\deEf])", src), "float literal without f suffix"
    calls = {c for c in re.findall(r"\b([a-z]\w*)\(", src) if not c.startswith("edgec_k_")} - {"if", "for"}
    assert calls <= {"expf", "tanhf"}, calls


# --- rejected variants -------------------------------------------------------------------------------------------


def _lower_one(tensors: list[WTensor], op: str, n_in: int, options: dict | None = None):
    mb = ModelBuilder()
    ids = [mb.add(t) for t in tensors]
    mb.op(op, ids[:n_in], ids[n_in], options)
    graph = parse_tflite(mb.build(), "m.tflite")
    return FLOAT_LOWERINGS[op](graph, graph.ops[0])


REJECTED = {
    "prelu_rank5": (lambda: _lower_one([F("x", (1, 2, 2, 2, 2)), F("a", (2,)), F("y", (1, 2, 2, 2, 2))], "PRELU", 2),
                    "up to 4 dimensions"),
    "conv_groups": (lambda: _lower_one([F("x", (1, 4, 4, 6)), F("w", (5, 3, 3, 4), np.zeros((5, 3, 3, 4))),
                                        F("y", (1, 4, 4, 5))], "CONV_2D", 2), "filter depth dividing"),
    "conv_int8_bias": (lambda: _lower_one([F("x", (1, 4, 4, 2)), F("w", (3, 1, 1, 2), np.zeros((3, 1, 1, 2))),
                                           I32("b", [1, 2, 3]), F("y", (1, 4, 4, 3))], "CONV_2D", 3),
                       "bias 'b' is int32"),
    "fc_shape": (lambda: _lower_one([F("x", (2, 5)), F("w", (3, 4), np.zeros((3, 4))), F("y", (2, 3))],
                                    "FULLY_CONNECTED", 2), "input holding K values"),
    "transpose_conv_weights": (lambda: _lower_one([I32("s", [1, 4, 4, 2]), F("w", (2, 3, 3, 5), np.zeros((2, 3, 3, 5))),
                                                   F("x", (1, 2, 2, 3)), F("y", (1, 4, 4, 2))], "TRANSPOSE_CONV", 3,
                                                  {"padding": "SAME", "stride_h": 2, "stride_w": 2}),
                               r"weights \[OC, KH, KW, IC\]"),
    "mean_rank6": (lambda: _lower_one([F("x", (1,) * 6), I32("a", [1]), F("y", (1,) * 5)], "MEAN", 2),
                   "input rank 6"),
    "softmax_shape": (lambda: _lower_one([F("x", (2, 5)), F("y", (2, 4))], "SOFTMAX", 1), "equal shapes"),
    "pool_shape": (lambda: _lower_one([F("x", (1, 5, 5, 2)), F("y", (1, 4, 4, 2))], "MAX_POOL_2D", 1,
                                      {"padding": "VALID", "filter_height": 3, "filter_width": 3}),
                   "the window gives"),
    "broadcast": (lambda: _lower_one([F("a", (2, 3)), F("b", (4, 3)), F("y", (4, 3))], "ADD", 2),
                  "do not broadcast"),
    "pad_int_value": (lambda: _lower_one([F("x", (2, 2)), I32("p", [[1, 0], [0, 0]]), I32("v", 3), F("y", (3, 2))],
                                         "PAD", 3), "supported: one dtype|const float32 scalar"),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_with_clear_message(case):
    make, pattern = REJECTED[case]
    with pytest.raises(EdgecError, match=pattern) as e:
        make()
    assert str(e.value).startswith("m.tflite: op #0 ")
