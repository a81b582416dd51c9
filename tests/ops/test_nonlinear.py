"""SOFTMAX, LOGISTIC, TANH, HARD_SWISH, RELU, RELU6, QUANTIZE, DEQUANTIZE: seeded sweeps compared
bit-exactly with TFLite Micro.

Each model holds several independent single ops (one graph input and output each), so one edgec build,
one gcc run and one TFLM interpreter cover many quantization parameters. The int8 -> int8 ops are
pure functions of the input value, so their inputs contain all 256 values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from edgec.errors import EdgecError
from edgec.frontends.tflite_reader import parse_tflite
from edgec.frontends.tflite_writer import WOp, WTensor, write_tflite
from edgec.lower.ops.nonlinear import LOWERINGS, hard_swish_params
from support import assert_matches_tflm, compile_run_host


@dataclass
class ModelBuilder:
    """Accumulates independent single-input ops into one model and their input data."""

    tensors: list[WTensor] = field(default_factory=list)
    ops: list[WOp] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    data: list[list[np.ndarray]] = field(default_factory=list)  # per graph input: one array per input set

    def op(self, name: str, x: WTensor, y: WTensor, values: list[np.ndarray],
           options: dict | None = None) -> None:
        self.tensors += [x, y]
        xi, yi = len(self.tensors) - 2, len(self.tensors) - 1
        self.ops.append(WOp(name, [xi], [yi], options or {}))
        self.inputs.append(xi)
        self.outputs.append(yi)
        self.data.append(values)

    def check(self) -> None:
        model = write_tflite(self.tensors, self.ops, self.inputs, self.outputs)
        sets = [[d[k] for d in self.data] for k in range(len(self.data[0]))]
        assert_matches_tflm(model, input_sets=sets)


def q(name: str, shape: tuple, dtype: str, scale: float, zp: int) -> WTensor:
    return WTensor(name, shape, dtype, scale=[float(np.float32(scale))], zero_point=[int(zp)])


def rand_shape(rng: np.random.Generator, min_size: int = 1) -> tuple:
    while True:
        shape = tuple(int(d) for d in rng.integers(1, 9, int(rng.integers(1, 5))))
        if int(np.prod(shape)) >= min_size:
            return shape


def all_int8(shape: tuple, rng: np.random.Generator, n_sets: int = 2) -> list[np.ndarray]:
    """Input sets that contain every int8 value (in shuffled positions) when the tensor is big enough."""
    size = int(np.prod(shape))
    out = []
    for _ in range(n_sets):
        v = np.resize(np.arange(-128, 128), max(size, 256))
        rng.shuffle(v)
        out.append(v[:size].astype(np.int8).reshape(shape))
    return out


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(10 ** rng.uniform(np.log10(lo), np.log10(hi)))


# --- int8 -> int8 elementwise ops (tables / clamps) ----------------------------------------------------


def _elementwise_case(op: str, rng: np.random.Generator, wide: bool) -> tuple[float, int, float, int]:
    lo, hi = (1e-5, 50.0) if wide else (1e-3, 1.0)
    xs, xz = log_uniform(rng, lo, hi), int(rng.integers(-128, 128))
    if op == "LOGISTIC":
        return xs, xz, 1 / 256, -128
    if op == "TANH":
        return xs, xz, 1 / 128, 0
    if op == "RELU6":  # TFLM uses the input quantization; models give the output the same one
        return xs, xz, xs, xz
    ys, yz = log_uniform(rng, lo, hi), int(rng.integers(-128, 128))
    if op == "HARD_SWISH":
        while hard_swish_params(xs, ys)[1] > 0:  # TFLM rejects these (see test_hard_swish_rejects_...)
            ys *= 4
    if op == "RELU" and rng.random() < 0.3:  # identical quantization: lowered to a clamp
        ys, yz = xs, xz
    return xs, xz, ys, yz


@pytest.mark.parametrize("op", ["LOGISTIC", "TANH", "HARD_SWISH", "RELU", "RELU6", "QUANTIZE"])
def test_elementwise_int8_sweep(op: str) -> None:
    rng = np.random.default_rng(sum(map(ord, op)))
    m = ModelBuilder()
    for i in range(16):
        shape = rand_shape(rng, 256) if i % 4 else rand_shape(rng)
        xs, xz, ys, yz = _elementwise_case(op, rng, wide=i >= 10)
        m.op(op, q(f"x{i}", shape, "int8", xs, xz), q(f"y{i}", shape, "int8", ys, yz), all_int8(shape, rng))
    m.check()


def _lower(model: bytes, index: int = 0):
    graph = parse_tflite(model)
    op = graph.ops[index]
    return LOWERINGS[op.type](graph, op)


def _one_op(op: str, x: WTensor, y: WTensor, options: dict | None = None) -> bytes:
    return write_tflite([x, y], [WOp(op, [0], [1], options or {})], [0], [1])


def test_relu_relu6_same_quantization_are_clamps_in_place() -> None:
    shape = (2, 8, 16)
    for op in ("RELU", "RELU6"):
        model = _one_op(op, q("x", shape, "int8", 0.05, -7), q("y", shape, "int8", 0.05, -7))
        lo = _lower(model)
        assert lo.kind == "clamp" and lo.inplace == [(0, 1)]
        assert_matches_tflm(model, input_sets=[all_int8(shape, np.random.default_rng(0), 1)])
    lo = _lower(_one_op("RELU", q("x", shape, "int8", 0.05, -7), q("y", shape, "int8", 0.03, -128)))
    assert lo.kind == "relu" and lo.inplace == [(0, 1)] and lo.args[1].array.shape == (256,)


# --- SOFTMAX -----------------------------------------------------------------------------------------


def _softmax_inputs(shape: tuple, rng: np.random.Generator) -> list[np.ndarray]:
    """Random rows, rows with many equal maxima (large sums, big exponents) and narrow-spread rows."""
    full = rng.integers(-128, 128, shape).astype(np.int8)
    peaky = np.where(rng.random(shape) < 0.7, 100, rng.integers(-128, 100, shape)).astype(np.int8)
    narrow = (int(rng.integers(-128, 120)) + rng.integers(0, 8, shape)).astype(np.int8)
    return [full, peaky, narrow]


def test_softmax_sweep() -> None:
    rng = np.random.default_rng(1234)
    for _ in range(2):
        m = ModelBuilder()
        for i in range(12):
            shape = rand_shape(rng)[:-1] + (int(rng.integers(1, 70)),)
            xs = log_uniform(rng, 1e-3, 1.0) if i % 6 else log_uniform(rng, 1.0, 40.0)
            beta = float(rng.choice([1.0, 1.0, 0.5, 2.0, log_uniform(rng, 0.05, 10.0)]))
            ydt = "int16" if i % 4 == 3 else "int8"
            y = (q(f"y{i}", shape, "int8", 1 / 256, -128) if ydt == "int8"
                 else q(f"y{i}", shape, "int16", 1 / 65536, -32768))
            m.op("SOFTMAX", q(f"x{i}", shape, "int8", xs, int(rng.integers(-128, 128))), y,
                 _softmax_inputs(shape, rng), {"beta": beta})
        m.check()


def test_softmax_long_rows_reach_exponent_31() -> None:
    # 256..511 equal maxima put the sum of exps in [2^27, 2^28): the final shift is 31, TFLM's limit
    # (it aborts above). Rows stay below 512 elements so that TFLM never aborts.
    m = ModelBuilder()
    for i, (depth, scale) in enumerate([(300, 0.004), (511, 1e-3), (400, 0.08), (257, 0.5)]):
        shape = (2, depth)
        equal = np.full(shape, 5, np.int8)
        mostly = equal.copy()
        mostly[:, ::7] = -100
        rand = np.random.default_rng(i).integers(-128, 128, shape).astype(np.int8)
        m.op("SOFTMAX", q(f"x{i}", shape, "int8", scale, 3), q(f"y{i}", shape, "int8", 1 / 256, -128),
             [equal, mostly, rand], {"beta": 1.0})
    m.check()


def test_softmax_is_in_place_for_int8_output() -> None:
    lo = _lower(_one_op("SOFTMAX", q("x", (1, 10), "int8", 0.1, 0), q("y", (1, 10), "int8", 1 / 256, -128),
                        {"beta": 1.0}))
    assert lo.inplace == [(0, 1)] and lo.args[1].array.dtype == np.int32


# --- QUANTIZE / DEQUANTIZE ---------------------------------------------------------------------------


def _float_inputs(shape: tuple, scale: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Wide random values, exact and near halves of the scale, signed zeros. No NaN or int32 overflow:
    TFLM's float -> int conversion is undefined there (see test_quantize_nan_and_overflow_saturate)."""
    size = int(np.prod(shape))
    k = rng.integers(-300, 300, size)
    halves = ((k + 0.5) * scale).astype(np.float32)
    near = np.nextafter(halves, np.where(rng.random(size) < 0.5, np.inf, -np.inf).astype(np.float32))
    wide = (rng.normal(0, 1, size) * scale * 10 ** rng.uniform(0, 3, size)).astype(np.float32)
    special = wide.copy()
    special[::5] = np.float32(0.0)
    special[1::5] = -np.float32(0.0)
    return [v.astype(np.float32).reshape(shape) for v in (halves, near, wide, special)]


def test_quantize_float_to_int8_sweep() -> None:
    rng = np.random.default_rng(7)
    m = ModelBuilder()
    for i in range(14):
        shape = rand_shape(rng)
        # Power-of-two scales make x / scale exact, so exact halves reach the rounding.
        scale = 2.0 ** -int(rng.integers(0, 10)) if i % 3 == 0 else log_uniform(rng, 1e-4, 10.0)
        m.op("QUANTIZE", WTensor(f"x{i}", shape, "float32"),
             q(f"y{i}", shape, "int8", scale, int(rng.integers(-128, 128))), _float_inputs(shape, scale, rng))
    m.check()


def test_quantize_nan_and_overflow_saturate() -> None:
    """x86 TFLM turns NaN and out-of-int32 values into INT32_MIN + zp (wrapping); edgec gives what TFLM
    gives on Arm, the deployment target: saturation, and 0 + zp for NaN."""
    for zp in (-20, 0, 31):
        model = _one_op("QUANTIZE", WTensor("x", (7,), "float32"), q("y", (7,), "int8", 0.05, zp))
        x = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 3e9, -3e9], np.float32)
        (got,), = compile_run_host(model, [[x]])
        assert got.tolist() == [zp, 127, -128, 127, -128, 127, -128]


def test_dequantize_sweep() -> None:
    rng = np.random.default_rng(8)
    m = ModelBuilder()
    for i in range(14):
        shape = rand_shape(rng, 256) if i % 3 else rand_shape(rng)
        scale = log_uniform(rng, 1e-6, 100.0)
        m.op("DEQUANTIZE", q(f"x{i}", shape, "int8", scale, int(rng.integers(-128, 128))),
             WTensor(f"y{i}", shape, "float32"), all_int8(shape, rng))
    m.check()


def test_quantize_between_int8_and_uint8() -> None:
    rng = np.random.default_rng(9)
    m = ModelBuilder()
    for i in range(8):
        shape = rand_shape(rng, 256)
        xs, ys = log_uniform(rng, 1e-3, 1.0), log_uniform(rng, 1e-3, 1.0)
        if i < 2:  # same scale, zero points 128 apart: TFLM's `x ^ 0x80` fast path
            ys = xs
        if i % 2:
            xz = int(rng.integers(0, 256))
            yz = xz - 128 if i < 2 else int(rng.integers(-128, 128))
            x = q(f"x{i}", shape, "uint8", xs, xz)
            data = [(a.astype(np.int16) + 128).astype(np.uint8) for a in all_int8(shape, rng)]
            y = q(f"y{i}", shape, "int8", ys, yz)
        else:
            xz = int(rng.integers(-128, 128))
            yz = xz + 128 if i < 2 else int(rng.integers(0, 256))
            x, data = q(f"x{i}", shape, "int8", xs, xz), all_int8(shape, rng)
            y = q(f"y{i}", shape, "uint8", ys, yz)
        m.op("QUANTIZE", x, y, data)
    m.check()


def test_float_model_quantize_body_dequantize() -> None:
    """The shape of float-I/O models: float -> QUANTIZE -> int8 ops -> DEQUANTIZE -> float."""
    shape = (1, 4, 4, 8)
    t = [WTensor("in", shape, "float32"), q("q", shape, "int8", 0.02, 5), q("h", shape, "int8", 0.015, -3),
         q("r", shape, "int8", 0.015, -128), q("s", shape, "int8", 1 / 256, -128),
         WTensor("out", shape, "float32")]
    ops = [WOp("QUANTIZE", [0], [1]), WOp("HARD_SWISH", [1], [2]), WOp("RELU", [2], [3]),
           WOp("SOFTMAX", [3], [4], {"beta": 1.0}), WOp("DEQUANTIZE", [4], [5])]
    model = write_tflite(t, ops, [0], [5])
    rng = np.random.default_rng(3)
    assert_matches_tflm(model, input_sets=[[rng.normal(0, 1.5, shape).astype(np.float32)] for _ in range(4)])


# --- what is rejected, and how it is reported ---------------------------------------------------------


@pytest.mark.parametrize("op,x,y,options,message", [
    ("SOFTMAX", q("x", (1, 10), "int8", 0.1, 0), q("y", (1, 10), "int8", 1 / 255, -128), {"beta": 1.0},
     r"output scale 0.00392157, zero point -128 .*supported: int8 output with scale 0.00390625"),
    ("SOFTMAX", q("x", (1, 10), "int8", 0.1, 0), q("y", (1, 10), "int8", 1 / 256, 0), {"beta": 1.0},
     r"zero point 0 .*supported: int8 output with scale"),
    ("SOFTMAX", q("x", (4,), "int8", 1e-9, 0), q("y", (4,), "int8", 1 / 256, -128), {"beta": 1.0},
     r"is not > 1 .*supported: beta \* input scale > 2\^-26"),
    ("SOFTMAX", WTensor("x", (4,), "float32"), WTensor("y", (4,), "float32"), {"beta": 1.0},
     r"input 'x' is float32, output 'y' is float32; supported: int8 -> int8, int8 -> int16"),
    ("LOGISTIC", q("x", (8,), "int8", 0.1, 0), q("y", (8,), "int8", 1 / 256, 0), None,
     r"output zero point is 0 .*supported: output zero point -128"),
    ("HARD_SWISH", q("x", (8,), "int8", 1.0, 0), q("y", (8,), "int8", 0.001, 0), None,
     r"needs a left shift .*supported: input scale < 128 \* output scale"),
    ("RELU", WTensor("x", (8,), "float32"), WTensor("y", (8,), "float32"), None,
     r"is float32.*supported: int8 -> int8"),
    ("TANH", q("x", (8,), "int16", 1 / 4096, 0), q("y", (8,), "int16", 1 / 32768, 0), None,
     r"is int16.*supported: int8 -> int8"),
    ("QUANTIZE", WTensor("x", (8,), "float32"), q("y", (8,), "int16", 0.1, 0), None,
     r"supported: float32 -> int8, int8 -> int8, uint8 -> int8, int8 -> uint8"),
    ("QUANTIZE", WTensor("x", (8,), "float32"), q("y", (8,), "uint8", 0.1, 0), None,
     r"float32 -> uint8; supported: float32 -> int8"),
    ("DEQUANTIZE", q("x", (8,), "int16", 0.1, 0), WTensor("y", (8,), "float32"), None,
     r"is int16, output 'y' is float32; supported: int8 -> float32"),
    ("RELU6", q("x", (8,), "int8", 0.1, 0), WTensor("y", (8,), "int8"), None,
     r"tensor 'y' \(int8\) has no quantization parameters"),
    ("RELU", WTensor("x", (2, 4), "int8", scale=[0.1, 0.2], zero_point=[0, 0], quantized_dimension=0),
     q("y", (2, 4), "int8", 0.1, 0), None, r"per-axis quantization \(2 scales\); supported: per-tensor"),
])
def test_unsupported_variants_raise(op: str, x: WTensor, y: WTensor, options: dict | None,
                                    message: str) -> None:
    with pytest.raises(EdgecError, match=message) as err:
        _lower(_one_op(op, x, y, options))
    assert f"op #0 {op} ('{y.name}')" in str(err.value) and "; supported: " in str(err.value)
