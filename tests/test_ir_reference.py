"""The float reference interpreter (edgec.ir.reference) against TFLite Micro's float kernels.

Each test writes a float32 TFLite model holding many independent, randomly parameterized (seeded) ops,
reads it back with the TFLite reader and compares `run_float` on a batch of input sets with TFLM run
on each set. TFLM accumulates in float32 and the reference in float64, so results agree to ~1e-6
relative rather than bit-exactly (QUANTIZE's integer output is compared exactly).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgec.errors import EdgecError
from edgec.frontends.tflite_reader import parse_tflite, read_tflite
from edgec.frontends.tflite_writer import WOp, WTensor, write_tflite
from edgec.ir.graph import Graph, Op, Tensor
from edgec.ir.reference import run_float, run_float_all
from edgec.oracle.tflm import run_tflm_batch
from support import ModelBuilder, shared_model

ACTS = ["NONE", "RELU", "RELU6", "RELU_N1_TO_1"]
STDS = (2.0, 10.0, 0.5)  # input i is drawn from N(0, STDS[i % 3]): small, large and saturating values


def f32(name: str, shape: tuple, data: np.ndarray | None = None) -> WTensor:
    return WTensor(name, tuple(int(d) for d in shape), "float32",
                   data=None if data is None else np.asarray(data, np.float32))


def i32(name: str, values) -> WTensor:
    v = np.asarray(values, dtype=np.int32)
    return WTensor(name, v.shape, "int32", data=v)


def input_sets(graph: Graph, n: int, seed: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.normal(0, STDS[i % 3], graph.t(tid).shape).astype(np.float32) for i, tid in enumerate(graph.inputs)]
            for _ in range(n)]


def assert_close(got: np.ndarray, want: np.ndarray, what: str, rtol: float = 2e-5, atol: float | None = None) -> None:
    want = np.asarray(want).reshape(got.shape)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, TFLM {want.dtype}"
    if got.dtype != np.float32:
        bad = np.argwhere(got != want)
        assert not bad.size, f"{what}: {len(bad)} elements differ, first at {tuple(bad[0])}"
        return
    # Accumulation-order error scales with the magnitudes summed, so allow it relative to the output's range.
    if atol is None:
        atol = rtol * max(1.0, float(np.abs(want).max(initial=0)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def check(model: bytes, n_sets: int = 3, seed: int = 0, sets: list[list[np.ndarray]] | None = None,
          **tol: float) -> Graph:
    """run_float on all input sets at once (a batch) must match TFLM run set by set."""
    graph = parse_tflite(model)
    sets = sets if sets is not None else input_sets(graph, n_sets, seed)
    want = run_tflm_batch(model, sets)
    got = run_float(graph, [np.stack([s[i] for s in sets]) for i in range(len(graph.inputs))])
    for o, tid in enumerate(graph.outputs):
        assert got[o].shape == (len(sets),) + graph.t(tid).shape
        for r in range(len(sets)):
            assert_close(got[o][r], want[r][o], f"output '{graph.t(tid).name}', input set {r}", **tol)
    return graph


def _out_size(size: int, k: int, stride: int, dil: int, padding: str) -> int:
    eff = (k - 1) * dil + 1
    return (size + stride - 1) // stride if padding == "SAME" else (size - eff + stride) // stride


def _rint(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    return int(rng.integers(lo, hi, endpoint=True))


# --- convolutions ---------------------------------------------------------------------------------------


def add_conv(mb: ModelBuilder, rng: np.random.Generator, case: int, depthwise: bool) -> None:
    n, h, w = _rint(rng, 1, 2), _rint(rng, 1, 9), _rint(rng, 1, 9)
    kh, kw, sh, sw, dh, dw = (_rint(rng, 1, m) for m in (4, 4, 3, 3, 2, 2))
    pad = str(rng.choice(["SAME", "VALID"]))
    if (kh - 1) * dh + 1 > h or (kw - 1) * dw + 1 > w:
        pad = "SAME"
    act = str(rng.choice(ACTS))
    if depthwise:
        c, mult = _rint(rng, 1, 4), _rint(rng, 1, 3)
        oc, wshape = c * mult, (1, kh, kw, c * mult)
    else:
        groups = int(rng.choice([1, 1, 2, 3]))
        c, oc = groups * _rint(rng, 1, 3), groups * _rint(rng, 1, 3)
        wshape = (oc, kh, kw, c // groups)
    x = mb.add(f32(f"x{case}", (n, h, w, c)))
    wt = mb.add(f32(f"w{case}", wshape, rng.normal(0, 1, wshape)))
    # TFLM's float depthwise kernel reads the bias unconditionally (segfaults without one).
    b = mb.add(f32(f"b{case}", (oc,), rng.normal(0, 1, oc))) if depthwise or rng.random() < 0.7 else -1
    y = mb.add(f32(f"y{case}", (n, _out_size(h, kh, sh, dh, pad), _out_size(w, kw, sw, dw, pad), oc)))
    opts = {"padding": pad, "stride_h": sh, "stride_w": sw, "dilation_h_factor": dh, "dilation_w_factor": dw,
            "fused_activation_function": act}
    if depthwise:
        opts["depth_multiplier"] = mult
    mb.op("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", [x, wt, b], y, opts)


@pytest.mark.parametrize("depthwise", [False, True], ids=["conv", "depthwise"])
def test_conv(depthwise: bool) -> None:
    rng = np.random.default_rng(10 + depthwise)
    mb = ModelBuilder()
    for case in range(40):
        add_conv(mb, rng, case, depthwise)
    graph = check(mb.build(), seed=1, n_sets=4)
    if not depthwise:
        groups = [g.t(op.inputs[0]).shape[3] // g.t(op.inputs[1]).shape[3] for g in [graph] for op in g.ops]
        assert max(groups) > 1  # grouped convolutions are covered


def test_transpose_conv() -> None:
    rng = np.random.default_rng(12)
    mb = ModelBuilder()
    for case in range(24):
        n, h, w, ic, oc = _rint(rng, 1, 2), _rint(rng, 1, 5), _rint(rng, 1, 5), _rint(rng, 1, 4), _rint(rng, 1, 4)
        kh, kw, sh, sw = _rint(rng, 1, 4), _rint(rng, 1, 4), _rint(rng, 1, 3), _rint(rng, 1, 3)
        pad, act = str(rng.choice(["SAME", "VALID"])), str(rng.choice(ACTS))
        # Any output size whose forward convolution gives back the input size is valid.
        if pad == "SAME":
            oh, ow = _rint(rng, (h - 1) * sh + 1, h * sh), _rint(rng, (w - 1) * sw + 1, w * sw)
        else:
            oh, ow = (h - 1) * sh + kh + _rint(rng, 0, sh - 1), (w - 1) * sw + kw + _rint(rng, 0, sw - 1)
        shape = mb.add(i32(f"s{case}", [n, oh, ow, oc]))
        wt = mb.add(f32(f"w{case}", (oc, kh, kw, ic), rng.normal(0, 1, (oc, kh, kw, ic))))
        x = mb.add(f32(f"x{case}", (n, h, w, ic)))
        b = mb.add(f32(f"b{case}", (oc,), rng.normal(0, 1, oc))) if rng.random() < 0.5 else -1
        y = mb.add(f32(f"y{case}", (n, oh, ow, oc)))
        mb.op("TRANSPOSE_CONV", [shape, wt, x, b], y,
              {"padding": pad, "stride_h": sh, "stride_w": sw, "fused_activation_function": act})
    graph = check(mb.build(), seed=2)
    op = graph.ops[0]
    assert set(op.attrs) == {"padding", "stride_h", "stride_w", "activation"}


def test_fully_connected() -> None:
    rng = np.random.default_rng(13)
    mb = ModelBuilder()
    for case in range(16):
        shape = [_rint(rng, 1, 4) for _ in range(_rint(rng, 1, 4))]
        keep = bool(rng.random() < 0.5) and len(shape) > 1
        # Without keep_num_dims TFLite flattens into rows of K = filter columns, which may span dimensions.
        k = shape[-1] if keep or rng.random() < 0.5 else int(np.prod(shape[-2:]))
        oc = _rint(rng, 1, 5)
        out = tuple(shape[:-1]) + (oc,) if keep else (int(np.prod(shape)) // k, oc)
        x = mb.add(f32(f"x{case}", tuple(shape)))
        wt = mb.add(f32(f"w{case}", (oc, k), rng.normal(0, 1, (oc, k))))
        b = mb.add(f32(f"b{case}", (oc,), rng.normal(0, 1, oc))) if rng.random() < 0.7 else -1
        mb.op("FULLY_CONNECTED", [x, wt, b], mb.add(f32(f"y{case}", out)),
              {"keep_num_dims": keep, "fused_activation_function": str(rng.choice(ACTS))})
    check(mb.build(), seed=3)


@pytest.mark.parametrize("op", ["AVERAGE_POOL_2D", "MAX_POOL_2D"])
def test_pool(op: str) -> None:
    rng = np.random.default_rng(14)
    mb = ModelBuilder()
    for case in range(24):
        n, h, w, c = _rint(rng, 1, 2), _rint(rng, 1, 8), _rint(rng, 1, 8), _rint(rng, 1, 3)
        kh, kw, sh, sw = _rint(rng, 1, 4), _rint(rng, 1, 4), _rint(rng, 1, 3), _rint(rng, 1, 3)
        pad = str(rng.choice(["SAME", "VALID"])) if kh <= h and kw <= w else "SAME"
        x = mb.add(f32(f"x{case}", (n, h, w, c)))
        y = mb.add(f32(f"y{case}", (n, _out_size(h, kh, sh, 1, pad), _out_size(w, kw, sw, 1, pad), c)))
        mb.op(op, [x], y, {"padding": pad, "stride_h": sh, "stride_w": sw, "filter_height": kh,
                           "filter_width": kw, "fused_activation_function": str(rng.choice(ACTS))})
    check(mb.build(), seed=4)


# --- elementwise ----------------------------------------------------------------------------------------


def _broadcast_pair(rng: np.random.Generator) -> tuple[tuple, tuple]:
    full = [_rint(rng, 1, 4) for _ in range(_rint(rng, 1, 4))]
    other = [d if rng.random() < 0.6 else 1 for d in full][_rint(rng, 0, len(full) - 1):]
    return (tuple(full), tuple(other)) if rng.random() < 0.5 else (tuple(other), tuple(full))


@pytest.mark.parametrize("op", ["ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM"])
def test_binary(op: str) -> None:
    rng = np.random.default_rng(15)
    mb = ModelBuilder()
    for case in range(12):
        sa, sb = _broadcast_pair(rng)
        const = _rint(rng, 0, 2)  # 0: both inputs, 1: a constant, 2: b constant
        a = mb.add(f32(f"a{case}", sa, rng.normal(0, 2, sa) if const == 1 else None))
        b = mb.add(f32(f"b{case}", sb, rng.normal(0, 2, sb) if const == 2 else None))
        opts = {} if op in ("MAXIMUM", "MINIMUM") else {"fused_activation_function": str(rng.choice(ACTS))}
        mb.op(op, [a, b], mb.add(f32(f"y{case}", np.broadcast_shapes(sa, sb))), opts)
    graph = check(mb.build(), seed=5)
    assert all(set(o.attrs) == ({"activation"} if opts else set()) for o in graph.ops)  # the reader's attrs


@pytest.mark.parametrize("op", ["LOGISTIC", "TANH", "RELU", "RELU6", "HARD_SWISH", "LEAKY_RELU"])
def test_unary(op: str) -> None:
    rng = np.random.default_rng(16)
    mb = ModelBuilder()
    for case in range(6):
        shape = tuple(_rint(rng, 1, 5) for _ in range(_rint(rng, 1, 4)))
        opts = {"alpha": float(rng.uniform(-1, 2))} if op == "LEAKY_RELU" else {}
        mb.op(op, [mb.add(f32(f"x{case}", shape))], mb.add(f32(f"y{case}", shape)), opts)
    graph = check(mb.build(), seed=6, n_sets=4)
    if op == "LEAKY_RELU":
        assert all(set(o.attrs) == {"alpha"} for o in graph.ops)


def test_logistic_cutoffs() -> None:
    """TFLite's float logistic is exactly 1 above 16.62 and exp(x) below -9."""
    x = np.concatenate([np.linspace(-30, 30, 301), [-9.0, -8.999, 16.619, 16.62, 17.0, 88.0, 89.0, -104.0]])
    x = x.astype(np.float32).reshape(1, -1)
    model = write_tflite([f32("x", x.shape), f32("y", x.shape)], [WOp("LOGISTIC", [0], [1])], [0], [1])
    check(model, sets=[[x]], rtol=1e-6, atol=0.0)  # relative: exp(x) and the sigmoid differ by 1e-4 at -9


def test_prelu() -> None:
    rng = np.random.default_rng(17)
    mb = ModelBuilder()
    for case in range(8):
        shape = (1, _rint(rng, 1, 4), _rint(rng, 1, 4), _rint(rng, 1, 4))
        ashape = [shape[3:], shape[2:], (1, 1, shape[3]), shape[1:]][case % 4]
        alpha = rng.uniform(-1, 1, ashape) if case < 6 else None  # alpha may also be a graph input
        x, a = mb.add(f32(f"x{case}", shape)), mb.add(f32(f"a{case}", ashape, alpha))
        mb.op("PRELU", [x, a], mb.add(f32(f"y{case}", shape)))
    graph = check(mb.build(), seed=7)
    assert all(o.attrs == {} for o in graph.ops)


def test_softmax() -> None:
    rng = np.random.default_rng(18)
    mb = ModelBuilder()
    for case in range(8):
        shape = tuple(_rint(rng, 1, 6) for _ in range(_rint(rng, 1, 4)))
        mb.op("SOFTMAX", [mb.add(f32(f"x{case}", shape))], mb.add(f32(f"y{case}", shape)),
              {"beta": float(rng.uniform(0.1, 3.0))})
    check(mb.build(), seed=8)


# --- reductions and data movement -----------------------------------------------------------------------


def test_mean() -> None:
    rng = np.random.default_rng(19)
    mb = ModelBuilder()
    for case in range(12):
        shape = tuple(_rint(rng, 1, 5) for _ in range(_rint(rng, 1, 4)))
        axes = sorted(rng.choice(len(shape), _rint(rng, 1, len(shape)), replace=False).tolist())
        keep = bool(rng.random() < 0.5)
        out = tuple(1 if d in axes else s for d, s in enumerate(shape)) if keep else \
            tuple(s for d, s in enumerate(shape) if d not in axes)
        given = [a - len(shape) if rng.random() < 0.3 else a for a in axes]  # negative axes too
        mb.op("MEAN", [mb.add(f32(f"x{case}", shape)), mb.add(i32(f"a{case}", given))],
              mb.add(f32(f"y{case}", out)), {"keep_dims": keep})
    check(mb.build(), seed=9)


def test_pad_concat_reshape_squeeze_transpose() -> None:
    rng = np.random.default_rng(20)
    mb = ModelBuilder()
    for case in range(6):
        shape = tuple(_rint(rng, 1, 4) for _ in range(_rint(rng, 1, 4)))
        pads = rng.integers(0, 3, (len(shape), 2))
        mb.op("PAD", [mb.add(f32(f"p{case}", shape)), mb.add(i32(f"pp{case}", pads))],
              mb.add(f32(f"py{case}", tuple(s + p.sum() for s, p in zip(shape, pads)))))

        axis = _rint(rng, -len(shape), len(shape) - 1)
        parts = []
        for k in range(_rint(rng, 2, 4)):
            s = list(shape)
            s[axis] = _rint(rng, 1, 3)
            parts.append(tuple(s))
        ins = [mb.add(f32(f"c{case}_{k}", s, rng.normal(0, 1, s) if k == 1 else None)) for k, s in enumerate(parts)]
        out = list(shape)
        out[axis] = sum(s[axis] for s in parts)
        mb.op("CONCATENATION", ins, mb.add(f32(f"cy{case}", tuple(out))), {"axis": axis})

        new = list(rng.permutation([*shape, 1]))
        mb.op("RESHAPE", [mb.add(f32(f"r{case}", shape)), mb.add(i32(f"rs{case}", new))],
              mb.add(f32(f"ry{case}", tuple(new))), {"new_shape": new})

        sq = tuple(int(d) for d in rng.permutation([*shape, 1, 1]))
        ones = [d for d, s in enumerate(sq) if s == 1]
        dims = [] if case % 2 else sorted(rng.choice(ones, _rint(rng, 1, len(ones)), replace=False).tolist())
        out = tuple(s for d, s in enumerate(sq) if (d not in dims if dims else s != 1))
        mb.op("SQUEEZE", [mb.add(f32(f"s{case}", sq))], mb.add(f32(f"sy{case}", out)), {"squeeze_dims": dims})

        perm = [int(p) for p in rng.permutation(len(shape))]
        mb.op("TRANSPOSE", [mb.add(f32(f"t{case}", shape)), mb.add(i32(f"tp{case}", perm))],
              mb.add(f32(f"ty{case}", tuple(shape[p] for p in perm))))
    check(mb.build(), seed=10)


def test_strided_slice() -> None:
    rng = np.random.default_rng(21)
    mb = ModelBuilder()
    case = 0
    while case < 30:
        shape = tuple(_rint(rng, 1, 6) for _ in range(_rint(rng, 1, 4)))
        begin, end, strides, index = [], [], [], []
        masks = {"begin_mask": 0, "end_mask": 0, "shrink_axis_mask": 0}
        for d, size in enumerate(shape):
            if rng.random() < 0.15:  # shrink: an in-range begin, stride 1 (else TFLM writes no output)
                masks["shrink_axis_mask"] |= 1 << d
                b = _rint(rng, -size, size - 1)
                begin.append(b), end.append(b + 1), strides.append(1)
                continue
            b, e, s = _rint(rng, -size - 2, size + 2), _rint(rng, -size - 2, size + 2), int(rng.choice([-3, -2, -1, 1, 2, 3]))
            bm, em = rng.random() < 0.25, rng.random() < 0.25
            masks["begin_mask"] |= bm << d
            masks["end_mask"] |= em << d
            begin.append(b), end.append(e), strides.append(s)
            index.append(slice(None if bm else b, None if em else e, s))
        out = tuple(len(range(size)[sl]) for sl, size in zip(index, [s for d, s in enumerate(shape)
                                                                     if not masks["shrink_axis_mask"] >> d & 1]))
        if 0 in out:  # empty results: TFLM's behaviour is not worth pinning down
            continue
        ins = [mb.add(f32(f"x{case}", shape))] + [mb.add(i32(f"{k}{case}", v)) for k, v in
                                                  (("b", begin), ("e", end), ("s", strides))]
        mb.op("STRIDED_SLICE", ins, mb.add(f32(f"y{case}", out)), masks)
        case += 1
    check(mb.build(), seed=11)


# --- quantization boundaries ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_quantize_dequantize(dtype: str) -> None:
    scale, zp = (0.037, -5) if dtype == "int8" else (0.0021, 0)
    q = WTensor("q", (1, 64), dtype, scale=[scale], zero_point=[zp])
    model = write_tflite([f32("x", (1, 64)), q, f32("y", (1, 64))],
                         [WOp("QUANTIZE", [0], [1]), WOp("DEQUANTIZE", [1], [2])], [0], [1, 2])
    rng = np.random.default_rng(22)
    # Half steps test the rounding (half away from zero); large values the clamping.
    halves = ((np.arange(-16, 16) + 0.5) * np.float32(scale)).astype(np.float32)
    sets = [[np.concatenate([halves, rng.normal(0, 4 * scale * 127, 32)]).astype(np.float32).reshape(1, 64)]
            for _ in range(3)]
    check(model, sets=sets)


def test_dequantize_int8_input() -> None:
    model = write_tflite([WTensor("q", (2, 8), "int8", scale=[0.1], zero_point=[3]), f32("y", (2, 8))],
                         [WOp("DEQUANTIZE", [0], [1])], [0], [1])
    q = np.arange(-128, 128, dtype=np.int8).reshape(-1, 2, 8)
    check(model, sets=[[v] for v in q])


# --- whole models, batching and errors ------------------------------------------------------------------


def test_hello_world_float() -> None:
    model = shared_model("tflite/hello_world_float.tflite").read_bytes()
    x = np.linspace(0, 2 * np.pi, 40, dtype=np.float32).reshape(40, 1, 1)
    check(model, sets=[[v] for v in x])
    graph = read_tflite(shared_model("tflite/hello_world_float.tflite"))
    assert run_float(graph, [x.reshape(40, 1)])[0].shape == (40, 1)  # batch replacing the leading 1


def _small_conv_model() -> bytes:
    rng = np.random.default_rng(23)
    mb = ModelBuilder()
    x = mb.add(f32("x", (1, 5, 5, 2)))
    w = mb.add(f32("w", (3, 3, 3, 2), rng.normal(0, 1, (3, 3, 3, 2))))
    b = mb.add(f32("b", (3,), rng.normal(0, 1, 3)))
    mb.op("CONV_2D", [x, w, b], mb.add(f32("y", (1, 5, 5, 3))), {"fused_activation_function": "RELU"})
    return mb.build()


def test_batch_forms_and_all_values() -> None:
    model = _small_conv_model()
    graph = parse_tflite(model)
    xs = np.random.default_rng(24).normal(0, 2, (4, 1, 5, 5, 2)).astype(np.float32)
    want = [r[0] for r in run_tflm_batch(model, [[x] for x in xs])]
    one = [run_float(graph, [x])[0] for x in xs]  # the graph's own input shape
    extra = run_float(graph, [xs])[0]  # [B, *shape]
    replace = run_float(graph, [xs[:, 0]])[0]  # [B, *shape[1:]]
    assert one[0].shape == (1, 5, 5, 3) and extra.shape == (4, 1, 5, 5, 3) and replace.shape == (4, 5, 5, 3)
    for r in range(4):
        assert_close(one[r], want[r], f"single run {r}")
        np.testing.assert_array_equal(extra[r], one[r])
        np.testing.assert_array_equal(replace[r], one[r][0])
    values = run_float_all(graph, [xs])
    assert set(values) == set(range(len(graph.tensors)))
    for tid, t in enumerate(graph.tensors):
        if t.is_const:
            np.testing.assert_array_equal(values[tid], t.data)
    np.testing.assert_array_equal(values[graph.outputs[0]], extra)
    with pytest.raises(EdgecError, match="shape"):
        run_float(graph, [xs[:, 0, :4]])


def _int8_body_model() -> bytes:
    q = {"scale": [0.05], "zero_point": [2]}
    tensors = [f32("x", (1, 8)), WTensor("q", (1, 8), "int8", **q), WTensor("s", (1, 8), "int8", **q),
               f32("y", (1, 8))]
    ops = [WOp("QUANTIZE", [0], [1]), WOp("ADD", [1, 1], [2]), WOp("DEQUANTIZE", [2], [3])]
    return write_tflite(tensors, ops, [0], [3])


def test_int8_compute_is_not_implemented_and_partial_evaluation() -> None:
    model = _int8_body_model()
    graph = parse_tflite(model)
    x = np.random.default_rng(25).normal(0, 2, (1, 8)).astype(np.float32)
    with pytest.raises(NotImplementedError, match="float reference only"):
        run_float(graph, [x])
    values = run_float_all(graph, [x], partial=True)
    assert set(values) == {0, 1}  # the float input and its quantization; not the int8 body nor after it
    assert values[1].dtype == np.int8
    # The QUANTIZE output equals TFLM's: a model that stops there.
    qmodel = write_tflite([f32("x", (1, 8)), WTensor("q", (1, 8), "int8", scale=[0.05], zero_point=[2])],
                          [WOp("QUANTIZE", [0], [1])], [0], [1])
    np.testing.assert_array_equal(values[1], run_tflm_batch(qmodel, [[x]])[0][0])


def test_unknown_op_and_bad_shapes_are_user_errors() -> None:
    t = [Tensor("x", (1, 4), "float32"), Tensor("i", (2,), "int32", data=np.array([0, 1], np.int32)),
         Tensor("y", (1, 2), "float32")]
    graph = Graph(t, [Op("GATHER", [0, 1], [2], name="y")], [0], [2], "m.onnx")
    with pytest.raises(EdgecError, match="GATHER"):
        run_float(graph, [np.zeros((1, 4), np.float32)])
    # An output shape that disagrees with the op's semantics is reported, not silently reshaped.
    graph = Graph([Tensor("x", (1, 4), "float32"), Tensor("y", (1, 5), "float32")],
                  [Op("RELU", [0], [1], name="y")], [0], [1], "m.tflite")
    with pytest.raises(EdgecError, match=r"RELU.*shape \[1, 4\].*\[1, 5\]"):
        run_float(graph, [np.zeros((1, 4), np.float32)])
