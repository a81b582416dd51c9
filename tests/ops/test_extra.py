"""LEAKY_RELU, PRELU, MAXIMUM, MINIMUM, DIV and TRANSPOSE_CONV (int8): seeded sweeps compared bit-exactly
with TFLite Micro, plus rejection tests.

Each model holds several independent ops (own graph inputs and outputs), so one edgec build, one gcc run
and one TFLM interpreter cover many shapes and quantization parameters.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgec.errors import EdgecError
from edgec.frontends.tflite_reader import parse_tflite
from edgec.frontends.tflite_writer import WOp, WTensor, write_tflite
from edgec.lower.ops.extra import LOWERINGS, div_exponent, div_multiplier, get_reciprocal
from support import ModelBuilder, assert_matches_tflm, compile_run_host

ACTIVATIONS = ["NONE", "RELU", "RELU6", "RELU_N1_TO_1"]


def q8(name: str, shape: tuple, scale: float, zp: int, data: np.ndarray | None = None) -> WTensor:
    return WTensor(name, tuple(shape), "int8", data=data, scale=[float(np.float32(scale))],
                   zero_point=[int(zp)])


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(10 ** rng.uniform(np.log10(lo), np.log10(hi)))


def rand_q(rng: np.random.Generator) -> tuple[float, int]:
    """A scale in [1e-3, 1] (log-uniform) and a zero point anywhere in int8."""
    return log_uniform(rng, 1e-3, 1.0), int(rng.integers(-128, 128))


def rand8(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    return rng.integers(-128, 128, shape).astype(np.int8)


def rand_shape(rng: np.random.Generator, max_rank: int = 4, max_dim: int = 6) -> tuple:
    return tuple(int(d) for d in rng.integers(1, max_dim + 1, int(rng.integers(1, max_rank + 1))))


def broadcast_partner(rng: np.random.Generator, shape: tuple) -> tuple:
    """A shape that broadcasts to `shape`: some dimensions set to 1, maybe fewer leading dimensions."""
    keep = len(shape) - int(rng.integers(0, len(shape)))
    return tuple(1 if rng.random() < 0.4 else d for d in shape[len(shape) - keep:])


def all_int8(shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Every int8 value (shuffled) when the tensor holds at least 256 elements."""
    size = int(np.prod(shape))
    v = np.resize(np.arange(-128, 128), max(size, 256))
    rng.shuffle(v)
    return v[:size].astype(np.int8).reshape(shape)


def lower_single(model: bytes, index: int = 0):
    graph = parse_tflite(model)
    op = graph.ops[index]
    return LOWERINGS[op.type](graph, op)


def check_sets(mb: ModelBuilder, data: dict[int, list[np.ndarray]]) -> None:
    """assert_matches_tflm with given input sets: data[tensor id] holds one array per set."""
    n = len(next(iter(data.values())))
    assert_matches_tflm(mb.build(), input_sets=[[data[t][k] for t in mb.inputs] for k in range(n)])


# --- LEAKY_RELU -------------------------------------------------------------------------------------------


def test_leaky_relu_sweep() -> None:
    rng = np.random.default_rng(11)
    mb = ModelBuilder()
    data: dict[int, list[np.ndarray]] = {}
    alphas = [0.2, 0.01, 0.1, 0.0, 1.0, -1.0, 0.3, 2.5, -0.5, 1e-4]
    for i in range(28):
        alpha = alphas[i] if i < len(alphas) else float(rng.uniform(-3, 3))
        shape = rand_shape(rng, 4, 8) if i % 3 else (256,)
        xs, xz = rand_q(rng)
        ys, yz = (xs, xz) if i % 7 == 0 else rand_q(rng)
        x = mb.add(q8(f"x{i}", shape, xs, xz))
        y = mb.add(q8(f"y{i}", shape, ys, yz))
        mb.op("LEAKY_RELU", [x], y, {"alpha": alpha})
        data[x] = [all_int8(shape, rng) for _ in range(2)]
    check_sets(mb, data)


def test_leaky_relu_is_a_table_in_place() -> None:
    m = write_tflite([q8("x", (2, 8), 0.05, 3), q8("y", (2, 8), 0.04, -5)],
                     [WOp("LEAKY_RELU", [0], [1], {"alpha": 0.2})], [0], [1])
    lo = lower_single(m)
    assert lo.kind == "leaky_relu" and lo.inplace == [(0, 1)] and lo.args[1].array.shape == (256,)
    # alpha 1 with equal quantization is the identity: a clamp to the full range.
    m = write_tflite([q8("x", (2, 8), 0.05, 3), q8("y", (2, 8), 0.05, 3)],
                     [WOp("LEAKY_RELU", [0], [1], {"alpha": 1.0})], [0], [1])
    assert lower_single(m).kind == "clamp"


def test_leaky_relu_float32_prepare_arithmetic() -> None:
    """Scales where s_in * alpha / s_out (and s_in / s_out) in float32, as TFLM's source writes them, and in
    double give different tables: the pinned TFLM matches double."""
    cases = [(0.006917428225278854, -2.5143229961395264, 0.04508174583315849),
             (0.07469941675662994, 2.218806266784668, 0.18769130110740662),
             (0.07036614418029785, -0.3559103310108185, 0.10901796817779541),
             (0.009374860674142838, -1.100298523902893, 0.048560429364442825),
             (0.12937210500240326, -2.2598133087158203, 0.8816469311714172)]
    mb = ModelBuilder()
    data: dict[int, list[np.ndarray]] = {}
    for i, (xs, alpha, ys) in enumerate(cases):
        x = mb.add(q8(f"x{i}", (256,), xs, 0))
        mb.op("LEAKY_RELU", [x], mb.add(q8(f"y{i}", (256,), ys, 0)), {"alpha": alpha})
        data[x] = [np.arange(-128, 128).astype(np.int8)]
    check_sets(mb, data)


# --- PRELU -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_prelu_sweep(seed: int) -> None:
    rng = np.random.default_rng(12 + seed)
    mb = ModelBuilder()
    for i in range(16):
        # Rank 5 too: TFLM's BroadcastBinaryOpSimple (rank <= 8) replaced the 4-D-only loops.
        shape = tuple(int(d) for d in rng.integers(1, 4, 5)) if i % 4 == 3 else rand_shape(rng, 4)
        # Common alpha shapes: per channel (last dimension), scalar, full, then random broadcasts.
        a_shape = [shape[-1:], (1,), shape][i % 3] if i < 9 else broadcast_partner(rng, shape)
        xs, xz = rand_q(rng)
        as_, az = log_uniform(rng, 1e-3, 1 / 128), int(rng.integers(-128, 128))  # |alpha| <= 2
        ys, yz = xs * log_uniform(rng, 0.7, 3), int(rng.integers(-64, 64))  # outputs mostly in range
        x = mb.add(q8(f"x{i}", shape, xs, xz))
        const = i % 5 != 4  # ONNX PRelu slopes are constants; TFLM also takes a run-time alpha
        alpha = mb.add(q8(f"a{i}", a_shape, as_, az, rand8(rng, a_shape) if const else None))
        y = mb.add(q8(f"y{i}", shape, ys, yz))
        mb.op("PRELU", [x, alpha], y)
    assert_matches_tflm(mb.build(), n_inputs=6, seed=seed)


# --- MAXIMUM / MINIMUM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["MAXIMUM", "MINIMUM"])
def test_max_min_sweep(kind: str) -> None:
    rng = np.random.default_rng(13 + len(kind))
    mb = ModelBuilder()
    for i in range(12):
        shape = rand_shape(rng, 6 if i % 4 == 3 else 4)
        a_shape, b_shape = shape, shape
        if i % 3 == 1:
            b_shape = broadcast_partner(rng, shape)
        elif i % 3 == 2:
            a_shape, b_shape = broadcast_partner(rng, shape), broadcast_partner(rng, shape)
            shape = tuple(np.broadcast_shapes(a_shape, b_shape))
        s, z = rand_q(rng)
        a = mb.add(q8(f"a{i}", a_shape, s, z))
        b = mb.add(q8(f"b{i}", b_shape, s, z, rand8(rng, b_shape) if i % 4 == 2 else None))
        y = mb.add(q8(f"y{i}", shape, s, z))
        mb.op(kind, [a, b], y)
    assert_matches_tflm(mb.build(), n_inputs=6, seed=13)


# --- DIV ---------------------------------------------------------------------------------------------------

_BITLEN = np.array([int(v).bit_length() for v in range(256)])


def div_exponents(v1: np.ndarray, v2: np.ndarray, shift: int) -> np.ndarray:
    """Vectorised div_exponent (headroom + recip_shift - shift) for offset values in [-255, 255]."""
    v1 = np.where(v2 < 0, -v1, v1)
    u = np.where(v1 < 0, -v1 - 1, v1)
    return (31 - _BITLEN[u]) + (_BITLEN[np.abs(v2)] - 1) - shift


def test_div_exponents_helper_matches_the_port() -> None:
    v1, v2 = np.meshgrid(np.arange(-255, 256, 7), np.arange(-255, 256, 5))
    want = np.vectorize(lambda a, b: div_exponent(int(a), int(b), 3))(v1, v2)
    assert np.array_equal(div_exponents(v1, v2, 3), want)


def tflm_defined_div_inputs(rng: np.random.Generator, a_shape: tuple, b_shape: tuple, z1: int, z2: int,
                            shift: int, b_const: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random x1, x2 where TFLM's last RoundingDivideByPOT exponent stays <= 31 (above it TFLM's C++ is
    undefined; edgec's exact result is checked in test_div_tiny_quotients_give_the_zero_point). Offending
    numerators move to the int8 end farthest from z1 (most headroom used), then divisors towards z2."""
    a = rand8(rng, a_shape).astype(np.int64)
    b = (b_const if b_const is not None else rand8(rng, b_shape)).astype(np.int64)
    if b_const is None and b.size > 2:
        b.reshape(-1)[:: max(b.size // 3, 1)] = z2  # a few divisions by zero (deterministic in TFLM)
    far = -128 if z1 > 0 else 127
    shape = np.broadcast_shapes(a.shape, b.shape)
    for attempt in range(6):
        bad = div_exponents(np.broadcast_to(a, shape) - z1, np.broadcast_to(b, shape) - z2, shift) > 31
        if not bad.any():
            return a.astype(np.int8), b.astype(np.int8)
        target, value = (a, far) if attempt < 2 or b_const is not None else (b, z2 + (1 if z2 < 127 else -1))
        for p in np.argwhere(bad):
            p = p[len(p) - target.ndim:]
            target[tuple(0 if target.shape[k] == 1 else p[k] for k in range(target.ndim))] = value
    raise AssertionError("could not avoid exponents above 31")


def div_case(rng: np.random.Generator) -> tuple[float, int, float, int, float, int]:
    """Scales whose output multiplier s1 / (s2 * s_out) is in [0.3, 60] (the output range covers most
    quotients, as a calibrated model's would)."""
    s1, z1 = rand_q(rng)
    s2, z2 = rand_q(rng)
    so = s1 / (s2 * log_uniform(rng, 0.3, 60.0))
    return s1, z1, s2, z2, so, int(rng.integers(-64, 64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_div_sweep(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    mb = ModelBuilder()
    data: dict[int, list[np.ndarray]] = {}
    n_sets = 4
    for i in range(12):
        shape = rand_shape(rng, 5 if i % 5 == 4 else 4)
        b_shape = broadcast_partner(rng, shape) if i % 2 else shape
        s1, z1, s2, z2, so, zo = div_case(rng)
        act = ACTIVATIONS[i % 4] if i % 3 == 0 else "NONE"
        if act != "NONE" and zo == 127:
            zo = 100
        shift = div_multiplier(s1, s2, so)[1]
        a = mb.add(q8(f"a{i}", shape, s1, z1))
        b_const = None
        if i % 4 == 3:  # a constant divisor tensor (general kernel with a flash operand)
            b_const = rng.integers(-128, 128, b_shape).astype(np.int8)
        b = mb.add(q8(f"b{i}", b_shape, s2, z2, b_const))
        y = mb.add(q8(f"y{i}", shape, so, zo))
        mb.op("DIV", [a, b], y, {"fused_activation_function": act})
        sets = [tflm_defined_div_inputs(rng, shape, b_shape, z1, z2, shift, b_const) for _ in range(n_sets)]
        data[a] = [s[0] for s in sets]
        if b_const is None:
            data[b] = [s[1] for s in sets]
    check_sets(mb, data)


def test_div_by_scalar_constant_is_a_table() -> None:
    rng = np.random.default_rng(7)
    mb = ModelBuilder()
    data: dict[int, list[np.ndarray]] = {}
    for i in range(10):
        s1, z1, s2, z2, so, zo = div_case(rng)
        divisor = np.array([int(rng.integers(-128, 128))], np.int8)
        if i == 0:
            divisor[0] = z2  # division by (quantized) zero: TFLM's value is deterministic
        b_shape = [(1,), (), (1, 1, 1)][i % 3]
        shape = (256,) if i % 2 else (4, 8, 8)
        a = mb.add(q8(f"a{i}", shape, s1, z1))
        b = mb.add(q8(f"b{i}", b_shape, s2, z2, divisor.reshape(b_shape)))
        y = mb.add(q8(f"y{i}", shape, so, zo))
        mb.op("DIV", [a, b], y, {"fused_activation_function": "RELU" if i == 5 else "NONE"})
        shift = div_multiplier(s1, s2, so)[1]
        data[a] = [tflm_defined_div_inputs(rng, shape, b_shape, z1, z2, shift, divisor.reshape(b_shape))[0]
                   if k else all_int8(shape, rng) for k in range(2)]
        # The all-values set may hold numerators with exponents above 31: move them out.
        v = data[a][0].astype(np.int64)
        bad = div_exponents(v - z1, np.full(v.shape, int(divisor[0]) - z2), shift) > 31
        data[a][0] = np.where(bad, -128 if z1 > 0 else 127, v).astype(np.int8)
    model = mb.build()
    graph = parse_tflite(model)
    # A lookup table on x1 (or a clamp when the table is one): no divisor operand, no reciprocal table.
    assert all(len(LOWERINGS["DIV"](graph, op).args) <= 3 for op in graph.ops)
    check_sets(mb, data)


def test_div_float32_prepare_arithmetic() -> None:
    """Scales where s1 / (s2 * s_out) in float32, as TFLM's source writes it, and in double give different
    outputs (the third case), over every (x1, x2) pair that TFLM defines: the pinned TFLM matches double."""
    cases = [(0.008450931869447231, 0.015369837172329426, 0.0027562049217522144),
             (0.019184617325663567, 0.0023311860859394073, 0.034735262393951416),
             (0.01597469113767147, 0.01129982154816389, 0.005634252913296223)]
    mb = ModelBuilder()
    data: dict[int, list[np.ndarray]] = {}
    a_all = np.repeat(np.arange(-128, 128), 256)
    b_all = np.tile(np.arange(-128, 128), 256)
    for i, (s1, s2, so) in enumerate(cases):
        a, b = mb.add(q8(f"a{i}", (65536,), s1, 0)), mb.add(q8(f"b{i}", (65536,), s2, 0))
        mb.op("DIV", [a, b], mb.add(q8(f"y{i}", (65536,), so, 0)))
        tiny = div_exponents(a_all, b_all, div_multiplier(s1, s2, so)[1]) > 31
        data[a] = [np.where(tiny, 127, a_all).astype(np.int8)]
        data[b] = [b_all.astype(np.int8)]
    check_sets(mb, data)


def test_div_tiny_quotients_give_the_zero_point() -> None:
    """Where TFLM's final shift exceeds 31 its C++ is undefined (x86 shifts by the exponent mod 32);
    the exact quotient is then below half an output step, and edgec returns the output zero point."""
    s1, z1, s2, z2, so, zo = 0.05, 3, 0.05, -2, 0.05, 1
    shift = div_multiplier(s1, s2, so)[1]
    a = np.repeat(np.arange(-128, 128), 256).astype(np.int64)
    b = np.tile(np.arange(-128, 128), 256).astype(np.int64)
    tiny = div_exponents(a - z1, b - z2, shift) > 31
    assert tiny.sum() > 100
    a, b = a[tiny], b[tiny]
    quotient = (a - z1) * np.float64(np.float32(s1)) / ((b - z2) * np.float64(np.float32(s2)))
    assert np.all(np.abs(quotient / np.float32(so)) < 0.5)  # the float model's answer is zo
    model = write_tflite([q8("a", a.shape, s1, z1), q8("b", b.shape, s2, z2), q8("y", a.shape, so, zo)],
                         [WOp("DIV", [0, 1], [2])], [0, 1], [2])
    got = compile_run_host(model, [[a.astype(np.int8), b.astype(np.int8)]])[0][0]
    assert np.all(got == zo)


def test_get_reciprocal_approximates_one_over_x() -> None:
    # GetReciprocal(x, 31) returns 2^num_bits_over_unit / x in Q0.31 (the DIV table's first half).
    for x in range(1, 256):
        inv, bits = get_reciprocal(x)
        assert abs(inv / 2**31 - 2.0**bits / x) < 1e-8, x


# --- TRANSPOSE_CONV ----------------------------------------------------------------------------------------


def add_transpose_conv(mb: ModelBuilder, rng: np.random.Generator, i: int, *, n: int, h: int, w: int, ic: int,
                       oc: int, kh: int, kw: int, sh: int, sw: int, padding: str, act: str, bias: bool,
                       per_channel: bool, const_weights: bool = True, out_delta: tuple = (0, 0)) -> None:
    if padding == "SAME":
        oh, ow = h * sh, w * sw
    else:
        oh, ow = (h - 1) * sh + kh, (w - 1) * sw + kw
    oh, ow = max(oh + out_delta[0], 1), max(ow + out_delta[1], 1)
    shape_t = mb.add(WTensor(f"os{i}", (4,), "int32", data=np.array([n, oh, ow, oc], np.int32)))
    w_scales = [log_uniform(rng, 1e-3, 0.05) for _ in range(oc if per_channel else 1)]
    w_data = rng.integers(-127, 128, (oc, kh, kw, ic)).astype(np.int8) if const_weights else None
    wt = mb.add(WTensor(f"w{i}", (oc, kh, kw, ic), "int8", data=w_data, scale=w_scales,
                        zero_point=[0] * len(w_scales)))
    xs, xz = rand_q(rng)
    x = mb.add(q8(f"x{i}", (n, h, w, ic), xs, xz))
    ins = [shape_t, wt, x]
    if bias:
        bs = xs * max(w_scales)
        ins.append(mb.add(WTensor(f"b{i}", (oc,), "int32",
                                  data=rng.integers(-int(2 / bs), int(2 / bs) + 1, oc).astype(np.int32))))
    # An output scale that puts a typical accumulator (sqrt(taps) * ~100 * ~73) ~40 steps from the zero point.
    taps = -(-kh // sh) * -(-kw // sw) * ic
    ys = xs * float(np.median(w_scales)) * 180 * np.sqrt(taps) * log_uniform(rng, 0.5, 2)
    yz = int(rng.integers(-64, 64))
    y = mb.add(q8(f"y{i}", (n, oh, ow, oc), ys, yz))
    mb.op("TRANSPOSE_CONV", ins, y, {"padding": padding, "stride_h": sh, "stride_w": sw,
                                     "fused_activation_function": act})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transpose_conv_sweep(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    mb = ModelBuilder()
    for i in range(12):
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        delta = (0, 0) if i % 3 else (int(rng.integers(-sh + 1, sh)), int(rng.integers(-sw + 1, sw)))
        add_transpose_conv(
            mb, rng, i, n=int(rng.integers(1, 3)), h=int(rng.integers(1, 6)), w=int(rng.integers(1, 6)),
            ic=int(rng.integers(1, 6)), oc=int(rng.integers(1, 7)), kh=int(rng.integers(1, 6)),
            kw=int(rng.integers(1, 6)), sh=sh, sw=sw, padding=["SAME", "VALID"][i % 2],
            act=ACTIVATIONS[i % 4] if i % 3 == 1 else "NONE", bias=i % 4 != 0, per_channel=i % 5 != 2,
            const_weights=i != 7, out_delta=delta)
    assert_matches_tflm(mb.build(), n_inputs=4, seed=seed)


def test_transpose_conv_common_upsampling() -> None:
    """The shapes ONNX ConvTranspose decoders use: 2x / 4x upsampling with 2x2, 3x3, 4x4 kernels."""
    rng = np.random.default_rng(5)
    mb = ModelBuilder()
    cases = [(8, 8, 8, 4, 2, 2, 2, "VALID"), (6, 6, 4, 8, 3, 3, 2, "SAME"), (4, 4, 8, 8, 4, 4, 2, "SAME"),
             (5, 7, 3, 2, 3, 3, 1, "SAME"), (3, 3, 16, 4, 8, 8, 4, "SAME")]
    for i, (h, w, ic, oc, kh, kw, s, pad) in enumerate(cases):
        add_transpose_conv(mb, rng, i, n=1, h=h, w=w, ic=ic, oc=oc, kh=kh, kw=kw, sh=s, sw=s, padding=pad,
                           act="RELU" if i % 2 else "NONE", bias=True, per_channel=True)
    assert_matches_tflm(mb.build(), n_inputs=3, seed=5)


def test_transpose_conv_wide_accumulator() -> None:
    """More taps than an int32 sum of |x * w| <= 255 * 128 can hold: the kernel accumulates in uint32
    (TFLM's int32 sum wraps the same way)."""
    rng = np.random.default_rng(6)
    mb = ModelBuilder()
    add_transpose_conv(mb, rng, 0, n=1, h=1, w=2, ic=4200, oc=3, kh=4, kw=4, sh=1, sw=1, padding="VALID",
                       act="NONE", bias=True, per_channel=True)
    assert_matches_tflm(mb.build(), n_inputs=3, seed=6)


def test_transpose_conv_needs_no_scratch() -> None:
    mb = ModelBuilder()
    add_transpose_conv(mb, np.random.default_rng(0), 0, n=1, h=3, w=3, ic=2, oc=3, kh=3, kw=3, sh=2, sw=2,
                       padding="SAME", act="NONE", bias=True, per_channel=True)
    lo = lower_single(mb.build())
    assert lo.kind == "transpose_conv" and all(a.kind != "scratch" for a in lo.args)


# --- constant outputs ---------------------------------------------------------------------------------------


def test_single_value_activation_range_fills() -> None:
    """RELU with output zero point 127 leaves one output value; TFLM computes it, edgec fills."""
    rng = np.random.default_rng(9)
    mb = ModelBuilder()
    a = mb.add(q8("a", (3, 4), 0.05, 3))
    b = mb.add(q8("b", (3, 4), 0.05, -2))
    mb.op("DIV", [a, b], mb.add(q8("y", (3, 4), 0.05, 127)), {"fused_activation_function": "RELU"})
    add_transpose_conv(mb, rng, 1, n=1, h=2, w=2, ic=2, oc=2, kh=2, kw=2, sh=2, sw=2, padding="VALID",
                       act="RELU", bias=False, per_channel=False)
    mb.tensors[mb.ops[-1].outputs[0]].zero_point = [127]
    model = mb.build()
    graph = parse_tflite(model)
    assert [LOWERINGS[op.type](graph, op).kind for op in graph.ops] == ["fill", "fill"]
    assert_matches_tflm(model, n_inputs=2)


# --- rejections ---------------------------------------------------------------------------------------------


def _expect_error(model: bytes, *fragments: str) -> None:
    with pytest.raises(EdgecError) as err:
        lower_single(model)
    msg = str(err.value)
    assert "supported:" in msg and "op #0" in msg, msg
    for f in fragments:
        assert f in msg, msg


def test_float_leaky_relu_rejected() -> None:
    m = write_tflite([WTensor("x", (4,), "float32"), WTensor("y", (4,), "float32")],
                     [WOp("LEAKY_RELU", [0], [1], {"alpha": 0.1})], [0], [1])
    _expect_error(m, "LEAKY_RELU", "float32", "int8 quantized")


def test_per_axis_alpha_rejected() -> None:
    alpha = WTensor("a", (3,), "int8", data=np.ones(3, np.int8), scale=[0.1, 0.2, 0.3], zero_point=[0, 0, 0])
    m = write_tflite([q8("x", (2, 3), 0.1, 0), alpha, q8("y", (2, 3), 0.1, 0)],
                     [WOp("PRELU", [0, 1], [2])], [0], [2])
    _expect_error(m, "PRELU", "per-axis", "per-tensor quantization")


def test_max_quantization_mismatch_rejected() -> None:
    m = write_tflite([q8("a", (2, 3), 0.1, 0), q8("b", (2, 3), 0.2, 0), q8("y", (2, 3), 0.1, 0)],
                     [WOp("MAXIMUM", [0, 1], [2])], [0, 1], [2])
    _expect_error(m, "MAXIMUM", "quantized differently", "same scale and zero point")


def test_incompatible_broadcast_rejected() -> None:
    m = write_tflite([q8("a", (2, 3), 0.1, 0), q8("b", (4,), 0.1, 0), q8("y", (2, 3), 0.1, 0)],
                     [WOp("MINIMUM", [0, 1], [2])], [0, 1], [2])
    _expect_error(m, "MINIMUM", "do not broadcast", "numpy-style broadcasting")


def test_div_huge_multiplier_rejected() -> None:
    m = write_tflite([q8("a", (4,), 1.0, 0), q8("b", (4,), 1e-4, 0), q8("y", (4,), 1e-3, 0)],
                     [WOp("DIV", [0, 1], [2])], [0, 1], [2])
    _expect_error(m, "DIV", "output multiplier", "s1 / (s2 * s_out) < 2^22")


def test_int16_div_rejected() -> None:
    t = [WTensor(n, (4,), "int16", scale=[0.1], zero_point=[0]) for n in "aby"]
    m = write_tflite(t, [WOp("DIV", [0, 1], [2])], [0, 1], [2])
    _expect_error(m, "DIV", "int16", "int8 quantized")


def _tconv_model(out_shape: list[int], w_axis: int = 0, bias_const: bool = True) -> bytes:
    tensors = [WTensor("os", (4,), "int32", data=np.array(out_shape, np.int32)),
               WTensor("w", (2, 3, 3, 2), "int8", data=np.ones((2, 3, 3, 2), np.int8), scale=[0.1, 0.2],
                       zero_point=[0, 0], quantized_dimension=w_axis),
               q8("x", (1, 2, 2, 2), 0.1, 0),
               WTensor("b", (2,), "int32", data=np.zeros(2, np.int32) if bias_const else None),
               q8("y", (1, 4, 4, 2), 0.1, 0)]
    inputs = [2] if bias_const else [2, 3]
    return write_tflite(tensors, [WOp("TRANSPOSE_CONV", [0, 1, 2, 3], [4], {"padding": "SAME", "stride_h": 2,
                                                                            "stride_w": 2})], inputs, [4])


def test_transpose_conv_rejections() -> None:
    assert lower_single(_tconv_model([1, 4, 4, 2])).kind == "transpose_conv"
    _expect_error(_tconv_model([1, 5, 4, 2]), "TRANSPOSE_CONV", "output_shape tensor",
                  "consistent output shape")
    _expect_error(_tconv_model([1, 4, 4, 2], bias_const=False), "bias", "constant int32 bias")
    _expect_error(_tconv_model([1, 4, 4, 2], w_axis=3), "weights", "one per output channel (axis 0)")
