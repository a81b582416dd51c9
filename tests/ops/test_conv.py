"""CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED: seeded sweeps compared bit-exactly with TFLite Micro.

Each model holds several independent single ops (one graph input and output each) so one edgec build,
one gcc run and one TFLM interpreter cover many parameter combinations.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgec.errors import EdgecError
from edgec.frontends.tflite_reader import parse_tflite
from edgec.frontends.tflite_writer import WOp, WTensor, write_tflite
from edgec.lower.ops.conv import LOWERINGS
from edgec.oracle.tflm import run_tflm_batch
from support import UBSAN, ModelBuilder, assert_matches_tflm, compile_run_host, random_inputs

ACTIVATIONS = ["NONE", "RELU", "RELU6", "RELU_N1_TO_1"]


def _out_size(size: int, k: int, stride: int, dil: int, padding: str) -> int:
    eff = (k - 1) * dil + 1
    return (size + stride - 1) // stride if padding == "SAME" else (size + stride - eff) // stride


def _channel_scales(rng: np.random.Generator, n: int, x_scale: float, y_scale: float, k: int,
                    spread: float, gain: float, mults: list[float] | None = None) -> list[float]:
    """Weight scales giving effective multipliers around a useful level, spread over `spread` decades.

    gain scales the multiplier: 1 keeps outputs mostly inside int8 for random data, >> 1 forces
    multipliers above 1 (positive shifts), << 1 tiny ones (large right shifts / flush to zero).
    """
    base = gain * 0.02 / np.sqrt(k)
    mult = base * 10.0 ** rng.uniform(-spread / 2, spread / 2, n) if mults is None else np.asarray(mults)
    return [float(np.float32(m * y_scale / x_scale)) for m in mult]


def _bias(rng: np.random.Generator, n: int, k: int, x_scale: float, w_scales: list[float],
          zero: bool = False) -> WTensor:
    data = rng.normal(0, 4000 * np.sqrt(k), n).astype(np.int64).clip(-(2**31), 2**31 - 1).astype(np.int32)
    if zero:
        data[:] = 0
    ws = w_scales if len(w_scales) > 1 else w_scales * n
    return WTensor("b", (n,), "int32", data=data, scale=[x_scale * s for s in ws], zero_point=[0] * n)


def _xq(rng: np.random.Generator) -> tuple[float, int]:
    return float(10.0 ** rng.uniform(-3, 0)), int(rng.integers(-128, 128))


def add_conv(mb: ModelBuilder, rng: np.random.Generator, *, n: int = 1, h: int = 6, w: int = 6, c: int = 3,
             oc: int = 4, kh: int = 3, kw: int = 3, sh: int = 1, sw: int = 1, dh: int = 1, dw: int = 1,
             padding: str = "SAME", act: str = "NONE", per_channel: bool = True, bias: bool = True,
             spread: float = 3.0, gain: float = 1.0, groups: int = 1, x_q: tuple[float, int] | None = None,
             y_q: tuple[float, int] | None = None, mults: list[float] | None = None,
             bias_values: np.ndarray | None = None, w_zp: int = 0, weights: np.ndarray | None = None) -> None:
    """weights: int8 values (oc, kh, kw, c // groups) in place of random ones (the rng stream is the same)."""
    xs, xz = x_q or _xq(rng)
    ys, yz = y_q or _xq(rng)
    ic = c // groups
    k = kh * kw * ic
    scales = _channel_scales(rng, oc if per_channel else 1, xs, ys, k, spread, gain, mults)
    oh, ow = _out_size(h, kh, sh, dh, padding), _out_size(w, kw, sw, dw, padding)
    xi = mb.add(WTensor("x", (n, h, w, c), "int8", scale=[xs], zero_point=[xz]))
    wt = rng.integers(-127, 128, (oc, kh, kw, ic)).astype(np.int8)
    if weights is not None:
        wt = np.asarray(weights, np.int8).reshape(wt.shape)
    wi = mb.add(WTensor("w", wt.shape, "int8", data=wt, scale=scales, zero_point=[w_zp] * len(scales)))
    b = _bias(rng, oc, k, xs, scales)
    if bias_values is not None:
        b.data = np.asarray(bias_values, np.int32)
    bi = mb.add(b) if bias else -1
    yi = mb.add(WTensor("y", (n, oh, ow, oc), "int8", scale=[ys], zero_point=[yz]))
    mb.op("CONV_2D", [xi, wi, bi], yi, {"padding": padding, "stride_h": sh, "stride_w": sw,
                                        "dilation_h_factor": dh, "dilation_w_factor": dw,
                                        "fused_activation_function": act})


def add_depthwise(mb: ModelBuilder, rng: np.random.Generator, *, n: int = 1, h: int = 6, w: int = 6, c: int = 3,
                  dm: int = 1, kh: int = 3, kw: int = 3, sh: int = 1, sw: int = 1, dh: int = 1, dw: int = 1,
                  padding: str = "SAME", act: str = "NONE", per_channel: bool = True, bias: bool = True,
                  spread: float = 3.0, gain: float = 1.0, x_q: tuple[float, int] | None = None,
                  y_q: tuple[float, int] | None = None, zero_bias: bool = False,
                  mults: list[float] | None = None, w_zp: int = 0, weights: np.ndarray | None = None,
                  bias_values: np.ndarray | None = None) -> None:
    """zero_bias: a bias tensor of zeros, which TFLM must use in place of no bias: its depthwise Prepare
    crashes without one (DeallocateTempTfLiteTensor(nullptr) in CalculateOpDataDepthwiseConv).
    weights (int8, (1, kh, kw, c * dm)) and bias_values (int32, (c * dm,)) replace the random ones (the rng
    stream is the same)."""
    xs, xz = x_q or _xq(rng)
    ys, yz = y_q or _xq(rng)
    oc = c * dm
    scales = _channel_scales(rng, oc if per_channel else 1, xs, ys, kh * kw, spread, gain, mults)
    oh, ow = _out_size(h, kh, sh, dh, padding), _out_size(w, kw, sw, dw, padding)
    xi = mb.add(WTensor("x", (n, h, w, c), "int8", scale=[xs], zero_point=[xz]))
    wt = rng.integers(-127, 128, (1, kh, kw, oc)).astype(np.int8)
    if weights is not None:
        wt = np.asarray(weights, np.int8).reshape(wt.shape)
    wi = mb.add(WTensor("w", wt.shape, "int8", data=wt, scale=scales, zero_point=[w_zp] * len(scales),
                        quantized_dimension=3))
    b = _bias(rng, oc, kh * kw, xs, scales, zero=zero_bias)  # drawn either way: same rng stream
    if bias_values is not None:
        b.data = np.asarray(bias_values, np.int32)
    bi = mb.add(b) if bias or zero_bias else -1
    yi = mb.add(WTensor("y", (n, oh, ow, oc), "int8", scale=[ys], zero_point=[yz]))
    mb.op("DEPTHWISE_CONV_2D", [xi, wi, bi], yi, {
        "padding": padding, "stride_h": sh, "stride_w": sw, "dilation_h_factor": dh,
        "dilation_w_factor": dw, "depth_multiplier": dm, "fused_activation_function": act})


def add_fc(mb: ModelBuilder, rng: np.random.Generator, *, in_shape: tuple = (1, 16), oc: int = 5,
           act: str = "NONE", per_channel: bool = False, bias: bool = True, keep_num_dims: bool = False,
           w_zp: int = 0, spread: float = 3.0, gain: float = 1.0, x_q: tuple[float, int] | None = None,
           y_q: tuple[float, int] | None = None, mults: list[float] | None = None,
           weights: np.ndarray | None = None, bias_values: np.ndarray | None = None,
           const_weights: bool = True) -> None:
    xs, xz = x_q or _xq(rng)
    ys, yz = y_q or _xq(rng)
    k = in_shape[-1]
    scales = _channel_scales(rng, oc if per_channel else 1, xs, ys, k, spread if per_channel else 0, gain, mults)
    out_shape = tuple(in_shape[:-1]) + (oc,) if keep_num_dims else (int(np.prod(in_shape[:-1])), oc)
    xi = mb.add(WTensor("x", tuple(in_shape), "int8", scale=[xs], zero_point=[xz]))
    wt = rng.integers(-127, 128, (oc, k)).astype(np.int8) if weights is None else weights
    wi = mb.add(WTensor("w", wt.shape, "int8", data=wt if const_weights else None, scale=scales,
                        zero_point=[w_zp] * len(scales)))
    b = _bias(rng, oc, k, xs, scales)
    if bias_values is not None:
        b.data = np.asarray(bias_values, np.int32)
    bi = mb.add(b) if bias else -1
    yi = mb.add(WTensor("y", out_shape, "int8", scale=[ys], zero_point=[yz]))
    mb.op("FULLY_CONNECTED", [xi, wi, bi], yi, {"fused_activation_function": act,
                                                "keep_num_dims": keep_num_dims})


def add_conv_case(mb: ModelBuilder, rng: np.random.Generator, batch: bool = False) -> None:
    """One random CONV_2D: kernels 1..5 (often non-square), strides 1..3, dilations 1..3, groups."""
    kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    dh, dw = (int(rng.integers(1, 4)), int(rng.integers(1, 4))) if rng.random() < 0.3 else (1, 1)
    padding = "SAME" if rng.random() < 0.6 else "VALID"
    h = (kh - 1) * dh + 1 + int(rng.integers(0, 6))
    w = (kw - 1) * dw + 1 + int(rng.integers(0, 6))
    groups = int(rng.choice([1, 1, 1, 2, 3]))
    c = groups * int(rng.integers(1, 5))
    # One group: 1..9 output channels exercise the 4-channel blocks and their remainder.
    oc = groups * int(rng.integers(1, 4)) if groups > 1 else int(rng.integers(1, 10))
    add_conv(mb, rng, n=int(rng.integers(2, 4)) if batch else 1, h=h, w=w, c=c, oc=oc, kh=kh, kw=kw, sh=sh,
             sw=sw, dh=dh, dw=dw, padding=padding, act=str(rng.choice(ACTIVATIONS)),
             per_channel=rng.random() < 0.8, bias=rng.random() < 0.8, spread=float(rng.uniform(0, 4)),
             gain=float(10 ** rng.uniform(-1, 1)), groups=groups)


def add_depthwise_case(mb: ModelBuilder, rng: np.random.Generator, batch: bool = False) -> None:
    kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    dh, dw = (int(rng.integers(1, 4)), int(rng.integers(1, 4))) if rng.random() < 0.3 else (1, 1)
    padding = "SAME" if rng.random() < 0.6 else "VALID"
    h = (kh - 1) * dh + 1 + int(rng.integers(0, 6))
    w = (kw - 1) * dw + 1 + int(rng.integers(0, 6))
    add_depthwise(mb, rng, n=int(rng.integers(2, 4)) if batch else 1, h=h, w=w, c=int(rng.integers(1, 6)),
                  dm=int(rng.integers(1, 5)), kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw, padding=padding,
                  act=str(rng.choice(ACTIVATIONS)), per_channel=rng.random() < 0.8, bias=True,
                  spread=float(rng.uniform(0, 4)), gain=float(10 ** rng.uniform(-1, 1)))


def add_fc_case(mb: ModelBuilder, rng: np.random.Generator) -> None:
    k = int(rng.integers(1, 300))
    lead = [(1,), (int(rng.integers(2, 5)),), (int(rng.integers(1, 4)), int(rng.integers(1, 4)))][rng.integers(0, 3)]
    per_channel = rng.random() < 0.5
    add_fc(mb, rng, in_shape=(*lead, k), oc=int(rng.integers(1, 12)), act=str(rng.choice(ACTIVATIONS)),
           per_channel=per_channel, bias=rng.random() < 0.8, keep_num_dims=len(lead) > 1 and rng.random() < 0.5,
           w_zp=int(rng.integers(-20, 21)) if rng.random() < 0.3 else 0, spread=float(rng.uniform(0, 4)),
           gain=float(10 ** rng.uniform(-1, 1)))


def _sweep(add_case, seed: int, n_ops: int, **kw) -> None:
    rng = np.random.default_rng(seed)
    mb = ModelBuilder()
    for _ in range(n_ops):
        add_case(mb, rng, **kw)
    assert_matches_tflm(mb.build(), n_inputs=4, seed=seed)


@pytest.mark.parametrize("seed", range(8))
def test_conv2d_sweep(seed: int) -> None:
    _sweep(add_conv_case, 100 + seed, 6, batch=seed % 4 == 3)


@pytest.mark.parametrize("seed", range(6))
def test_depthwise_sweep(seed: int) -> None:
    _sweep(add_depthwise_case, 200 + seed, 6, batch=seed % 3 == 2)


@pytest.mark.parametrize("seed", range(5))
def test_fully_connected_sweep(seed: int) -> None:
    _sweep(add_fc_case, 300 + seed, 6)


# --- extreme quantization parameters -------------------------------------------------------------------

# Multipliers above 1 (positive shifts up to 31, where TFLM's x * 2^shift wraps in int32).
BIG = [1.0, 1.5, 3.0, 100.0, 2.0**20, 1.5 * 2.0**30]
# Shift -31 (the largest right shift), and below 2^-32 flushed to zero by QuantizeMultiplier.
TINY = [1.5 * 2.0**-32, 2.0**-31, 0.9999 * 2.0**-31, 1.2 * 2.0**-33, 1e-12, 0.0]
INT32_EDGE_BIAS = np.array([2**31 - 1, -(2**31), 2**31 - 5000, -(2**31) + 5000, 0, 0])


def test_extreme_multipliers() -> None:
    rng = np.random.default_rng(7)
    mb = ModelBuilder()
    for mults in (BIG, TINY):
        add_conv(mb, rng, oc=6, mults=mults)
        add_conv(mb, rng, oc=6, mults=mults, kh=1, kw=1, padding="VALID")
        add_depthwise(mb, rng, c=3, dm=2, mults=mults)
        add_fc(mb, rng, oc=6, per_channel=True, mults=mults)
        # Per-tensor FC without bias: TFLM's Prepare rejects a bias whose float32 scale differs from
        # s_x * s_w by more than 2% of s_y, which huge multipliers provoke.
        for m in mults[::2]:
            add_fc(mb, rng, oc=2, mults=[m], bias=False)
        for m in (mults[0], mults[1], mults[-2]):  # one shift shared by all channels: a C constant
            add_conv(mb, rng, oc=3, per_channel=False, mults=[m])
    assert_matches_tflm(mb.build(), n_inputs=4, seed=7)


def test_int32_edge_bias_wraps_like_tflm() -> None:
    rng = np.random.default_rng(8)
    mb = ModelBuilder()
    add_conv(mb, rng, oc=6, bias_values=INT32_EDGE_BIAS)
    add_conv(mb, rng, oc=6, bias_values=INT32_EDGE_BIAS, padding="VALID")
    add_fc(mb, rng, oc=6, bias_values=INT32_EDGE_BIAS)
    assert_matches_tflm(mb.build(), n_inputs=4, seed=8)


def test_accumulator_near_and_beyond_int32_limit() -> None:
    """65000 products of magnitude up to 255 * 127 come within 2% of INT32_MIN; with 70000 TFLM's int32
    sum wraps (edgec then accumulates in uint32 and must wrap the same way)."""
    rng = np.random.default_rng(9)
    mb = ModelBuilder()
    for k in (65000, 70000):
        weights = np.stack([np.full(k, 127), np.full(k, -127), np.full(k, -128)]).astype(np.int8)
        add_fc(mb, rng, in_shape=(1, k), oc=3, weights=weights, x_q=(0.01, 127), bias=False, mults=[1e-9])
        add_fc(mb, rng, in_shape=(1, k), oc=3, weights=weights, x_q=(0.01, -128), mults=[1e-9],
               bias_values=np.array([-(2**31) + 5, 2**31 - 7, 0]))
    model = mb.build()
    shapes = [t.shape for t in parse_tflite(model).tensors]
    sets = [[np.full(shapes[i], v, np.int8) for i in mb.inputs] for v in (-128, 127)]
    assert_matches_tflm(model, input_sets=sets + random_inputs(model, 2, seed=9))


def test_activation_ranges_and_zero_points() -> None:
    rng = np.random.default_rng(10)
    mb = ModelBuilder()
    for act in ACTIVATIONS:
        for x_q, y_q in [((0.1, 127), (0.001, -100)), ((0.02, -128), (0.9, 120)), ((0.5, 0), (0.05, -128)),
                         ((0.003, 50), (0.02, 127))]:
            add_conv(mb, rng, c=2, oc=3, act=act, x_q=x_q, y_q=y_q)
            add_fc(mb, rng, act=act, x_q=x_q, y_q=y_q)
    assert_matches_tflm(mb.build(), n_inputs=4, seed=10)


# --- variants -------------------------------------------------------------------------------------------


def test_depthwise_without_bias() -> None:
    """edgec compiles a bias-less depthwise conv; TFLM crashes on one, so compare with a zero bias."""
    def model(zero_bias: bool) -> bytes:
        rng = np.random.default_rng(11)
        mb = ModelBuilder()
        add_depthwise(mb, rng, dm=2, bias=False, zero_bias=zero_bias)
        add_depthwise(mb, rng, padding="VALID", kh=2, kw=3, bias=False, zero_bias=zero_bias)
        return mb.build()
    with_zeros = model(True)
    sets = random_inputs(with_zeros, 3, seed=11)
    got = compile_run_host(model(False), sets)
    want = run_tflm_batch(with_zeros, sets)
    for g_rec, w_rec in zip(got, want):
        for g, w in zip(g_rec, w_rec):
            assert np.array_equal(g, np.asarray(w).reshape(g.shape))


def test_fully_connected_variants() -> None:
    rng = np.random.default_rng(12)
    mb = ModelBuilder()
    add_fc(mb, rng, in_shape=(2, 3, 20), keep_num_dims=True)
    add_fc(mb, rng, in_shape=(2, 3, 20), keep_num_dims=True, per_channel=True)
    add_fc(mb, rng, in_shape=(2, 3, 20), keep_num_dims=False)
    add_fc(mb, rng, in_shape=(1, 5, 4, 8), oc=3)  # 4-D input flattened, as micro_speech has
    add_fc(mb, rng, in_shape=(4, 33), bias=False)
    add_fc(mb, rng, in_shape=(3, 40), w_zp=9)  # per-tensor: (w - w_zp) is applied
    add_fc(mb, rng, in_shape=(3, 40), w_zp=-9, per_channel=True)  # per-channel: w_zp is ignored
    add_fc(mb, rng, in_shape=(2, 24), const_weights=False)  # weights are a graph input
    add_fc(mb, rng, in_shape=(2, 24), const_weights=False, w_zp=5)
    assert_matches_tflm(mb.build(), n_inputs=4, seed=12)


def test_conv_variants() -> None:
    rng = np.random.default_rng(13)
    mb = ModelBuilder()
    add_conv(mb, rng, h=49, w=10, c=1, oc=8, kh=10, kw=4, sh=2, sw=2)  # DS-CNN's first layer
    add_conv(mb, rng, h=5, w=5, c=16, oc=8, kh=1, kw=1)  # pointwise: no padding, one contiguous row
    add_conv(mb, rng, h=6, w=6, c=16, oc=4, kh=1, kw=1, sh=2, sw=2)
    add_conv(mb, rng, h=6, w=7, c=8, oc=6, groups=2, kh=3, kw=2)
    add_conv(mb, rng, h=6, w=7, c=6, oc=6, groups=6, kh=3, kw=3, dh=2)  # depthwise-like grouping
    add_conv(mb, rng, n=3, h=4, w=4, c=2, oc=3, kh=2, kw=2, padding="SAME")  # SAME, padding after only
    add_conv(mb, rng, h=3, w=3, c=2, oc=2, kh=5, kw=5, padding="SAME")  # no window fully inside
    add_depthwise(mb, rng, h=49, w=40, c=1, dm=8, kh=10, kw=8, sh=2, sw=2)  # micro_speech's layer
    add_depthwise(mb, rng, h=7, w=7, c=4, dm=1, kh=3, kw=3, sh=2, sw=2)
    # TFLM's int8 conv kernels ignore the weights' zero point (per-tensor or per-channel).
    add_conv(mb, rng, c=3, oc=5, w_zp=6, per_channel=False)
    add_conv(mb, rng, c=3, oc=5, w_zp=-4)
    add_depthwise(mb, rng, c=3, dm=2, w_zp=5, per_channel=False)
    assert_matches_tflm(mb.build(), n_inputs=3, seed=13)


# --- unsupported input --------------------------------------------------------------------------------


def _lower_single(tensors: list[WTensor], op: str, ins: list[int], options: dict, graph_inputs: list[int]):
    model = write_tflite(tensors, [WOp(op, ins, [len(tensors) - 1], options)], graph_inputs, [len(tensors) - 1])
    graph = parse_tflite(model, "m.tflite")
    return LOWERINGS[op](graph, graph.ops[0])


def _q(name: str, shape: tuple, dtype: str = "int8", data=None, n_scales: int = 1, qdim: int = 0) -> WTensor:
    return WTensor(name, shape, dtype, data=data, scale=[0.05] * n_scales, zero_point=[0] * n_scales,
                   quantized_dimension=qdim)


W8 = np.ones((4, 3, 3, 2), np.int8)
DW8 = np.ones((1, 3, 3, 4), np.int8)
B32 = np.zeros(4, np.int32)


@pytest.mark.parametrize("case, tensors, op, ins, options, graph_inputs, message", [
    ("float conv", [WTensor("x", (1, 5, 5, 2), "float32"), WTensor("w", (4, 3, 3, 2), "float32", data=W8),
                    WTensor("y", (1, 5, 5, 4), "float32")], "CONV_2D", [0, 1], {}, [0], "input 'x' is float32"),
    ("int16 conv", [_q("x", (1, 5, 5, 2), "int16"), _q("w", (4, 3, 3, 2), data=W8), _q("y", (1, 5, 5, 4), "int16")],
     "CONV_2D", [0, 1], {}, [0], "input 'x' is int16"),
    ("uint8 fc", [_q("x", (1, 8), "uint8"), _q("w", (3, 8), "uint8", data=np.ones((3, 8), np.uint8)),
                  _q("y", (1, 3), "uint8")], "FULLY_CONNECTED", [0, 1], {}, [0], "input 'x' is uint8"),
    ("hybrid fc", [WTensor("x", (1, 8), "float32"), _q("w", (3, 8), data=np.ones((3, 8), np.int8)),
                   WTensor("y", (1, 3), "float32")], "FULLY_CONNECTED", [0, 1], {}, [0], "is float32"),
    ("runtime bias", [_q("x", (1, 5, 5, 2)), _q("w", (4, 3, 3, 2), data=W8), WTensor("b", (4,), "int32"),
                      _q("y", (1, 5, 5, 4))], "CONV_2D", [0, 1, 2], {}, [0, 2], "bias 'b' is a non-constant int32"),
    ("int64 bias", [_q("x", (1, 5, 5, 2)), _q("w", (1, 3, 3, 4), data=DW8),
                    WTensor("b", (4,), "int64", data=np.zeros(4, np.int64)), _q("y", (1, 5, 5, 4))],
     "DEPTHWISE_CONV_2D", [0, 1, 2], {"depth_multiplier": 2}, [0], "bias 'b' is a constant int64"),
    ("groups do not divide", [_q("x", (1, 5, 5, 5)), _q("w", (4, 3, 3, 2), data=W8), _q("y", (1, 5, 5, 4))],
     "CONV_2D", [0, 1], {}, [0], "input with 5 channels, filter [4, 3, 3, 2]"),
    ("outputs not a multiple of groups", [_q("x", (1, 5, 5, 6)), _q("w", (4, 3, 3, 2), data=W8),
                                          _q("y", (1, 5, 5, 4))], "CONV_2D", [0, 1], {}, [0], "6 channels"),
    ("depth multiplier", [_q("x", (1, 5, 5, 2)), _q("w", (1, 3, 3, 4), data=DW8), _q("b", (4,), "int32", B32),
                          _q("y", (1, 5, 5, 4))], "DEPTHWISE_CONV_2D", [0, 1, 2], {"depth_multiplier": 1}, [0],
     "depth_multiplier 1"),
    ("wrong output shape", [_q("x", (1, 5, 5, 2)), _q("w", (4, 3, 3, 2), data=W8), _q("y", (1, 5, 5, 4))],
     "CONV_2D", [0, 1], {"padding": "VALID"}, [0], "output 'y' has shape [1, 5, 5, 4]"),
    ("filter larger than input", [_q("x", (1, 2, 2, 2)), _q("w", (4, 3, 3, 2), data=W8), _q("y", (1, 0, 0, 4))],
     "CONV_2D", [0, 1], {"padding": "VALID"}, [0], "larger than the 2x2 input"),
    ("scales per input channel", [_q("x", (1, 5, 5, 2)), _q("w", (4, 3, 3, 2), data=W8, n_scales=2, qdim=3),
                                  _q("y", (1, 5, 5, 4))], "CONV_2D", [0, 1], {}, [0], "2 scales for 4 output"),
    ("fc input size", [_q("x", (1, 10)), _q("w", (3, 8), data=np.ones((3, 8), np.int8)), _q("y", (1, 3))],
     "FULLY_CONNECTED", [0, 1], {}, [0], "input shape [1, 10], weights [3, 8]"),
    ("per-axis input", [WTensor("x", (1, 5, 5, 2), "int8", scale=[0.1, 0.2], zero_point=[0, 0], quantized_dimension=3),
                        _q("w", (4, 3, 3, 2), data=W8), _q("y", (1, 5, 5, 4))], "CONV_2D", [0, 1], {}, [0],
     "input 'x' has per-axis quantization"),
])
def test_unsupported_raises(case, tensors, op, ins, options, graph_inputs, message) -> None:
    with pytest.raises(EdgecError) as info:
        _lower_single(tensors, op, ins, options, graph_inputs)
    text = str(info.value)
    assert text.startswith(f"m.tflite: op #0 {op} ('y'): "), text
    assert message in text and "supported:" in text, text


def test_fc_per_tensor_multiplier_is_a_double_product() -> None:
    """Per-tensor FULLY_CONNECTED: TFLite Micro's GetQuantizedConvolutionMultipler multiplies the scales in double.
    Scales whose float32 product gives another multiplier (1503238532 vs 1503238557): every int8 input, ties at
    x = +-5, +-15, ... tell them apart."""
    sx, sw, sy = (float(np.uint32(b).view(np.float32)) for b in (1048743861, 1012018470, 999891277))
    t = [WTensor("x", (256, 1), "int8", scale=[sx], zero_point=[0]),
         WTensor("w", (1, 1), "int8", data=np.array([[1]], np.int8), scale=[sw], zero_point=[0]),
         WTensor("y", (256, 1), "int8", scale=[sy], zero_point=[0])]
    model = write_tflite(t, [WOp("FULLY_CONNECTED", [0, 1, -1], [2], {"fused_activation_function": "NONE"})],
                         [0], [2])
    assert_matches_tflm(model, input_sets=[[np.arange(-128, 128, dtype=np.int8).reshape(256, 1)]])


@pytest.mark.parametrize("kernels", ["portable", "dsp", "mve", "rv32"])
def test_requantized_value_plus_output_zero_point_wraps(kernels: str) -> None:
    """A multiplier of 2^31 - 1 and a bias near INT32_MAX put the requantized value within y_zp of INT32_MAX: the
    sum with y_zp wraps like TFLM's int32 sum (giving -128), without undefined behaviour (UBSan)."""
    f32 = lambda v: float(np.float32(v))
    sx, sw, sy = f32(1 + 256 * 2**-23), f32(1 - 128 * 2**-23), f32(1 + 128 * 2**-23)
    shape = (1, 16, 16, 1)
    t = [WTensor("x", shape, "int8", scale=[sx], zero_point=[-128]),
         WTensor("w", (1, 1, 1, 1), "int8", data=np.ones((1, 1, 1, 1), np.int8), scale=[sw], zero_point=[0]),
         WTensor("b", (1,), "int32", data=np.array([2**31 - 51], np.int32), scale=[sx * sw], zero_point=[0]),
         WTensor("y", shape, "int8", scale=[sy], zero_point=[100])]
    model = write_tflite(t, [WOp("CONV_2D", [0, 1, 2], [3], {
        "padding": "VALID", "stride_h": 1, "stride_w": 1, "dilation_h_factor": 1, "dilation_w_factor": 1,
        "fused_activation_function": "NONE"})], [0], [3])
    x = np.arange(-128, 128, dtype=np.int8).reshape(shape)
    assert_matches_tflm(model, input_sets=[[x]], kernels=kernels, cflags=UBSAN)


def test_uint32_accumulators_with_micro_kernels() -> None:
    """More than 65793 taps need uint32 accumulators: every micro-kernel variant keeps the scalar requantization
    for them (the mve block requantization takes int32 sums) and matches TFLM."""
    mb = ModelBuilder()
    add_fc(mb, np.random.default_rng(0), in_shape=(1, 66000), oc=4)
    model = mb.build()
    for kernels in ("dsp", "mve", "rv32"):
        assert_matches_tflm(model, n_inputs=2, kernels=kernels)
