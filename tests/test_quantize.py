"""Post-training quantization (edgec.quantize) and the IR -> .tflite exporter (edgec.oracle.ir_export).

Oracles: TFLite Micro runs the original and the exported models (round trip must be identical) and the
quantized int8 graphs (whose dequantized outputs must be close to the float model's, which TFLM's float
kernels compute); edgec's compiled C must be bit-exact with TFLM on every quantized graph.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgec.errors import EdgecError
from edgec.frontends.tflite_reader import parse_tflite, read_tflite
from edgec.frontends.tflite_writer import WOp, WTensor, write_tflite
from edgec.ir.graph import Graph, Tensor
from edgec.oracle.ir_export import graph_to_tflite
from edgec.oracle.tflm import run_tflm_batch
from edgec.quantize import load_calibration, quantization_report, quantize_graph, random_calibration
from edgec.quantize.ptq import collect_stats
from edgec.quantize.ranges import RangeStats, choose_range, mse_range, quant_mse, quant_params
from support import SHARED_MODELS, assert_matches_tflm, shared_model

RNG = np.random.default_rng(7)
TFLITE_MODELS = ["ad01_int8", "hello_world_float", "hello_world_int8", "kws_ref_model",
                 "micro_speech_quantized", "pretrainedResnet_quant", "simple_add_model", "vww_96_int8"]


def f32(name: str, shape: tuple, data: np.ndarray | None = None) -> WTensor:
    return WTensor(name, tuple(shape), "float32", None if data is None else np.asarray(data, np.float32))


def i32(name: str, values) -> WTensor:
    v = np.asarray(values, np.int32)
    return WTensor(name, v.shape, "int32", v)


def rnd(*shape: int, std: float = 0.5) -> np.ndarray:
    return RNG.normal(0, std, shape).astype(np.float32)


class Net:
    """A float model under construction: `t` adds a tensor, `op` an op; returns tensor ids."""

    def __init__(self) -> None:
        self.tensors: list[WTensor] = []
        self.ops: list[WOp] = []

    def t(self, name: str, shape: tuple, data=None) -> int:
        self.tensors.append(f32(name, shape, data) if data is None or np.asarray(data).dtype.kind == "f"
                            else i32(name, data))
        return len(self.tensors) - 1

    def op(self, op: str, ins: list[int], shape: tuple, options: dict | None = None, name: str = "") -> int:
        out = self.t(name or f"{op.lower()}_{len(self.ops)}", shape)
        self.ops.append(WOp(op, ins, [out], options or {}))
        return out

    def model(self, inputs: list[int], outputs: list[int]) -> bytes:
        return write_tflite(self.tensors, self.ops, inputs, outputs)


def conv_net() -> bytes:
    """Image classifier: conv (RELU6) -> depthwise (x2, stride 2, RELU) -> 1x1 conv + residual ADD ->
    max / average pool -> concatenation -> reshape -> FC -> softmax."""
    n = Net()
    x = n.t("image", (1, 8, 8, 3))
    c1 = n.op("CONV_2D", [x, n.t("w1", (8, 3, 3, 3), rnd(8, 3, 3, 3)), n.t("b1", (8,), rnd(8))], (1, 8, 8, 8),
              {"fused_activation_function": "RELU6"})
    d = n.op("DEPTHWISE_CONV_2D", [c1, n.t("wd", (1, 3, 3, 16), rnd(1, 3, 3, 16)), n.t("bd", (16,), rnd(16))],
             (1, 4, 4, 16),
             {"depth_multiplier": 2, "stride_h": 2, "stride_w": 2, "fused_activation_function": "RELU"})
    c2 = n.op("CONV_2D", [d, n.t("w2", (16, 1, 1, 16), rnd(16, 1, 1, 16, std=0.2)), -1], (1, 4, 4, 16))
    s = n.op("ADD", [d, c2], (1, 4, 4, 16))
    pool = {"filter_height": 2, "filter_width": 2, "stride_h": 2, "stride_w": 2}
    mp = n.op("MAX_POOL_2D", [s], (1, 2, 2, 16), pool)
    ap = n.op("AVERAGE_POOL_2D", [s], (1, 2, 2, 16), pool)
    cat = n.op("CONCATENATION", [mp, ap], (1, 2, 2, 32), {"axis": 3})
    flat = n.op("RESHAPE", [cat, n.t("shape", (2,), np.array([1, 128]))], (1, 128))
    wf, bf = n.t("wf", (10, 128), rnd(10, 128, std=0.1)), n.t("bf", (10,), rnd(10))
    fc = n.op("FULLY_CONNECTED", [flat, wf, bf], (1, 10))
    sm = n.op("SOFTMAX", [fc], (1, 10), {"beta": 1.0}, name="scores")
    return n.model([x], [sm])


def misc_net() -> bytes:
    """Two inputs, three outputs: PAD, dilated VALID conv, LOGISTIC, TANH, HARD_SWISH, MUL, SUB, DIV by a
    constant, MUL by a constant, a concatenation of LOGISTIC and TANH outputs (two fixed quantizations:
    needs a requantize), MEAN, SQUEEZE, TRANSPOSE, STRIDED_SLICE, RELU, RELU6, FC without bias."""
    n = Net()
    x = n.t("x", (1, 6, 6, 4))
    y = n.t("y", (1, 6))
    p = n.op("PAD", [x, n.t("pads", (4, 2), np.array([[0, 0], [1, 1], [2, 0], [0, 0]]))], (1, 8, 8, 4))
    c = n.op("CONV_2D", [p, n.t("wc", (6, 3, 3, 4), rnd(6, 3, 3, 4)), n.t("bc", (6,), rnd(6))], (1, 4, 4, 6),
             {"padding": "VALID", "dilation_h_factor": 2, "dilation_w_factor": 2})
    lg = n.op("LOGISTIC", [c], (1, 4, 4, 6))
    th = n.op("TANH", [c], (1, 4, 4, 6))
    hs = n.op("HARD_SWISH", [c], (1, 4, 4, 6))
    m = n.op("MUL", [lg, th], (1, 4, 4, 6))
    sb = n.op("SUB", [hs, m], (1, 4, 4, 6))
    dv = n.op("DIV", [sb, n.t("four", (1,), np.array([4.0], np.float32))], (1, 4, 4, 6))
    mc = n.op("MUL", [dv, n.t("gain", (6,), np.linspace(-2, 3, 6))], (1, 4, 4, 6))
    cat = n.op("CONCATENATION", [lg, th], (1, 4, 4, 12), {"axis": 3})
    mean = n.op("MEAN", [mc, n.t("axes", (2,), np.array([1, 2]))], (1, 1, 1, 6), {"keep_dims": True})
    sq = n.op("SQUEEZE", [mean], (1, 6), {"squeeze_dims": [1, 2]})
    add = n.op("ADD", [sq, y], (1, 6), {"fused_activation_function": "RELU"})
    tr = n.op("TRANSPOSE", [cat, n.t("perm", (4,), np.array([0, 3, 1, 2]))], (1, 12, 4, 4))
    begin, end = n.t("begin", (4,), np.array([0, 1, 0, 0])), n.t("end", (4,), np.array([1, 9, 4, 4]))
    sl = n.op("STRIDED_SLICE", [tr, begin, end, n.t("strides", (4,), np.array([1, 2, 1, 2]))], (1, 4, 4, 2))
    r6 = n.op("RELU6", [sl], (1, 4, 4, 2))
    rl = n.op("RELU", [add], (1, 6))
    fc = n.op("FULLY_CONNECTED", [rl, n.t("wf", (3, 6), rnd(3, 6)), -1], (1, 3))
    return n.model([x, y], [r6, fc, mc])


def fc_net() -> bytes:
    """FC autoencoder-like MLP with keep_num_dims and a batch of 2 rows."""
    n = Net()
    x = n.t("x", (2, 12))
    h = n.op("FULLY_CONNECTED", [x, n.t("w1", (16, 12), rnd(16, 12)), n.t("b1", (16,), rnd(16))], (2, 16),
             {"fused_activation_function": "RELU"})
    h2 = n.op("FULLY_CONNECTED", [h, n.t("w2", (8, 16), rnd(8, 16)), n.t("b2", (8,), rnd(8))], (2, 8),
              {"fused_activation_function": "RELU_N1_TO_1"})
    o = n.op("FULLY_CONNECTED", [h2, n.t("w3", (12, 8), rnd(12, 8)), n.t("b3", (12,), rnd(12))], (2, 12))
    return n.model([x], [o])


def calib(graph: Graph, n: int, seed: int = 1, std: float = 1.0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.normal(0, std, graph.t(t).shape).astype(np.float32) for t in graph.inputs] for _ in range(n)]


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64).reshape(np.shape(ref))
    return 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - got) ** 2), 1e-30))


def check_against_float(model: bytes, qgraph: Graph, sets: list[list[np.ndarray]], min_db: float) -> None:
    """The int8 graph run by TFLM vs the float model run by TFLM's float kernels, output by output."""
    want = run_tflm_batch(model, sets)
    got = run_tflm_batch(graph_to_tflite(qgraph), sets)
    for o in range(len(want[0])):
        ref = np.stack([w[o] for w in want])
        q = np.stack([g[o] for g in got])
        assert q.dtype == np.float32  # the quantized graph keeps float I/O
        db = sqnr(ref, q)
        assert db > min_db, f"output {o}: SQNR {db:.1f} dB <= {min_db} dB"


def check_spec(qgraph: Graph) -> None:
    """TFLite quantization spec: weights symmetric per channel, int32 bias at s_in * s_w, fixed softmax /
    logistic / tanh output quantization, shared quantization for ops TFLM runs on raw int8 values."""
    axes = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}
    for op in qgraph.ops:
        ts = [qgraph.t(i) if i >= 0 else None for i in op.inputs]
        y = qgraph.t(op.outputs[0])
        if op.type in axes:
            x, w = ts[0], ts[1]
            axis = axes[op.type]
            assert w.dtype == "int8" and w.quant.axis == axis and len(w.quant.scale) == w.shape[axis]
            assert np.all(w.quant.zero_point == 0) and w.data.min() >= -127
            # the largest |w| of each channel uses the full range
            assert np.all(np.abs(np.moveaxis(w.data, axis, 0).reshape(w.shape[axis], -1)).max(1) == 127)
            if len(ts) > 2 and ts[2] is not None:
                b = ts[2]
                assert b.dtype == "int32" and np.all(b.quant.zero_point == 0)
                want = np.float32(x.scale) * w.quant.scale.astype(np.float64)
                np.testing.assert_allclose(b.quant.scale, want, rtol=1e-7)
        if op.type in ("SOFTMAX", "LOGISTIC"):
            assert (y.scale, y.zero_point) == (np.float32(1 / 256), -128)
        if op.type == "TANH":
            assert (y.scale, y.zero_point) == (np.float32(1 / 128), 0)
        shared = {"MAX_POOL_2D": [0], "AVERAGE_POOL_2D": [0], "RESHAPE": [0], "SQUEEZE": [0], "PAD": [0],
                  "TRANSPOSE": [0], "STRIDED_SLICE": [0], "RELU6": [0],
                  "CONCATENATION": range(len(op.inputs))}.get(op.type, [])
        for i in shared:
            assert (ts[i].scale, ts[i].zero_point) == (y.scale, y.zero_point), f"{op.describe()} input {i}"
        if op.type not in ("QUANTIZE", "DEQUANTIZE"):
            for t in ts + [y]:
                if t is not None and not t.is_const:
                    assert t.dtype == "int8" and not t.quant.per_axis
    for tid in qgraph.inputs + qgraph.outputs:
        assert qgraph.t(tid).dtype == "float32"


# --- export round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TFLITE_MODELS)
def test_export_round_trip_shared_models(name):
    path = shared_model(f"tflite/{name}.tflite")
    original = path.read_bytes()
    graph = read_tflite(path)
    rng = np.random.default_rng(3)
    sets = [[(rng.normal(0, 2, graph.t(t).shape).astype(np.float32) if graph.t(t).dtype == "float32"
              else rng.integers(-128, 128, graph.t(t).shape).astype(np.int8)) for t in graph.inputs]
            for _ in range(3)]
    want = run_tflm_batch(original, sets)
    extra = [o for op in graph.ops for o in op.outputs]
    got = run_tflm_batch(graph_to_tflite(graph, extra_outputs=extra), sets)
    for w_rec, g_rec in zip(want, got):
        assert len(g_rec) == len(w_rec) + len([t for t in dict.fromkeys(extra) if t not in graph.outputs])
        for w, g in zip(w_rec, g_rec):
            assert w.dtype == g.dtype and np.array_equal(w, g)
    # the re-read export is the same IR
    again = parse_tflite(graph_to_tflite(graph))
    assert [(o.type, o.inputs, o.outputs, o.attrs) for o in again.ops] == \
        [(o.type, o.inputs, o.outputs, o.attrs) for o in graph.ops]


def test_export_float_models_round_trip():
    for model in (conv_net(), misc_net(), fc_net()):
        graph = parse_tflite(model)
        sets = calib(graph, 2)
        for w_rec, g_rec in zip(run_tflm_batch(model, sets), run_tflm_batch(graph_to_tflite(graph), sets)):
            assert all(np.array_equal(w, g) for w, g in zip(w_rec, g_rec))


# --- quantized models: accuracy, spec, bit-exact compile --------------------------------------------------


def test_conv_net():
    model = conv_net()
    graph = parse_tflite(model)
    cal = calib(graph, 48)
    q = quantize_graph(graph, cal)
    assert graph_to_tflite(graph) == graph_to_tflite(parse_tflite(model))  # the float graph is left as it was
    check_spec(q)
    check_against_float(model, q, calib(graph, 20, seed=99), min_db=20)
    report = quantization_report(graph, q, cal)
    json.dumps(report, allow_nan=False)
    assert report["samples"] == 48 and report["end_to_end_sqnr_db"] > 20
    assert report["top1_agreement"] >= 0.9
    assert report["outputs"][0]["top1_agreement"] == report["top1_agreement"]
    assert [r["type"] for r in report["layers"]] == [op.type for op in graph.ops]
    assert all(r["sqnr_db"] > 20 for r in report["layers"]), report["layers"]
    # tensor ids are stable: each op output keeps its id (and its quantization is the reported one)
    for r, op in zip(report["layers"], graph.ops):
        t = q.t(op.outputs[0])
        assert t.name.startswith(graph.t(op.outputs[0]).name) and r["scale"] == t.scale
    assert_matches_tflm(graph_to_tflite(q), n_inputs=8)


def test_misc_net_requantizes_fixed_concat_inputs():
    model = misc_net()
    graph = parse_tflite(model)
    cal = calib(graph, 32)
    q = quantize_graph(graph, cal)
    check_spec(q)
    # concatenation of LOGISTIC (1/256) and TANH (1/128) outputs: exactly one input is requantized
    cat = next(op for op in q.ops if op.type == "CONCATENATION")
    requant = [op for op in q.ops if op.type == "QUANTIZE" and op.outputs[0] in cat.inputs]
    assert len(requant) == 1 and q.t(requant[0].inputs[0]).dtype == "int8"
    assert "DIV" not in [op.type for op in q.ops]  # DIV by a constant became MUL by its reciprocal
    check_against_float(model, q, calib(graph, 16, seed=5), min_db=22)
    report = quantization_report(graph, q, cal)
    json.dumps(report, allow_nan=False)
    # only the FC output [1, 3] reads as class scores (RELU6's [1, 4, 4, 2] does not: not after FC/SOFTMAX)
    assert [o["top1_agreement"] is None for o in report["outputs"]] == [True, False, True]
    assert report["top1_agreement"] == report["outputs"][1]["top1_agreement"] >= 0.9
    assert_matches_tflm(graph_to_tflite(q), n_inputs=8)


def test_fc_net_all_methods():
    model = fc_net()
    graph = parse_tflite(model)
    cal = calib(graph, 40)
    for method in ("minmax", "percentile", "mse"):
        q = quantize_graph(graph, cal, method)
        check_spec(q)
        check_against_float(model, q, calib(graph, 10, seed=3), min_db=25)
        r = quantization_report(graph, q, cal, method=method)
        assert r["method"] == method and r["end_to_end_sqnr_db"] > 25
    assert_matches_tflm(graph_to_tflite(q), n_inputs=6)


def test_hello_world_float():
    path = shared_model("tflite/hello_world_float.tflite")
    graph = read_tflite(path)
    xs = np.linspace(0, 2 * np.pi, 100, dtype=np.float32)
    cal = [[np.array([[v]], np.float32)] for v in xs]
    q = quantize_graph(graph, cal)
    check_spec(q)
    test = [[np.array([[v]], np.float32)] for v in np.random.default_rng(0).uniform(0, 2 * np.pi, 50)]
    check_against_float(path.read_bytes(), q, test, min_db=25)
    report = quantization_report(graph, q, cal)
    assert report["end_to_end_sqnr_db"] > 25 and report["max_abs_error"] < 0.1
    assert report["top1_agreement"] is None  # one value: not class scores
    # the network computes sin(x): the quantized outputs still follow it
    got = np.array([o[0] for o in run_tflm_batch(graph_to_tflite(q), test)]).ravel()
    assert np.max(np.abs(got - np.sin([t[0].item() for t in test]))) < 0.25
    assert_matches_tflm(graph_to_tflite(q), input_sets=test[:10])


# --- calibration methods ----------------------------------------------------------------------------------


def test_quant_params_include_zero_and_are_exact_at_zero():
    for lo, hi in [(-1.0, 3.0), (0.5, 2.0), (-4.0, -1.0), (0.0, 0.0), (-1e-3, 250.0)]:
        scale, zp = quant_params(lo, hi)
        assert scale > 0 and -128 <= zp <= 127
        assert scale * (-128 - zp) <= min(lo, 0) + scale / 2 and scale * (127 - zp) >= max(hi, 0) - scale / 2


def test_mse_no_worse_than_minmax_with_outliers():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, 20000).astype(np.float32)
    x[:5] = [40.0, -35.0, 60.0, 38.0, -50.0]  # rare outliers stretch the minmax range
    st = RangeStats(keep=x.size)
    st.add(x)
    lo, hi = choose_range(st, "minmax")
    assert (lo, hi) == (-50.0, 60.0)
    mlo, mhi = choose_range(st, "mse")
    plo, phi = choose_range(st, "percentile", 99.9)
    # MSE weighs the clipped outliers' large errors against finer steps for everything else: it clips a
    # little, and is never worse than minmax on the values it searched
    assert quant_mse(x, mlo, mhi) < quant_mse(x, lo, hi)
    assert mhi - mlo < hi - lo and plo > mlo and phi < mhi  # the percentile clips far more
    assert -50 < plo < 0 < phi < 60 and lo <= mlo <= 0 <= mhi <= hi
    # without outliers the mse grid still never does worse than minmax (minmax is a grid point)
    y = rng.uniform(-1, 2, 5000)
    assert quant_mse(y, *mse_range(y, y.min(), y.max())) <= quant_mse(y, y.min(), y.max())


def test_methods_on_a_graph_with_outliers():
    model = fc_net()
    graph = parse_tflite(model)
    cal = calib(graph, 40)
    cal[3][0] = cal[3][0] * 25  # one sample far outside the others
    ranges = {}
    for method in ("minmax", "percentile", "mse"):
        q = quantize_graph(graph, cal, method)
        ranges[method] = q.t(graph.inputs[0]).scale
    assert ranges["percentile"] < ranges["minmax"] and ranges["mse"] < ranges["minmax"]
    # mse's input range gives a smaller quantization error on the calibration values than minmax's
    st = collect_stats(graph, cal, keep_values=True)[graph.inputs[0]]
    v = st.values()
    assert quant_mse(v, *choose_range(st, "mse")) <= quant_mse(v, *choose_range(st, "minmax"))


def test_unknown_method_and_bad_calibration_list():
    graph = parse_tflite(fc_net())
    with pytest.raises(EdgecError, match="unknown calibration method 'kl'.*minmax, percentile, mse"):
        quantize_graph(graph, calib(graph, 2), "kl")
    with pytest.raises(EdgecError, match="no calibration samples"):
        quantize_graph(graph, [])
    with pytest.raises(EdgecError, match="sample 0 has 2 arrays; the model has 1 inputs"):
        quantize_graph(graph, [[np.zeros((2, 12), np.float32)] * 2])


def test_refuses_quantized_and_unquantizable_graphs():
    with pytest.raises(EdgecError, match="already quantized"):
        quantize_graph(read_tflite(shared_model("tflite/hello_world_int8.tflite")),
                       [[np.zeros((1, 1), np.int8)]])
    n = Net()
    a, b = n.t("a", (1, 4)), n.t("b", (1, 4))
    d = n.op("DIV", [a, b], (1, 4))
    graph = parse_tflite(n.model([a, b], [d]))
    with pytest.raises(EdgecError, match=r"op #0 DIV .*DIV by a computed tensor cannot be quantized"):
        quantize_graph(graph, calib(graph, 2))


# --- calibration files --------------------------------------------------------------------------------


def test_load_calibration_npz(tmp_path):
    graph = parse_tflite(misc_net())  # inputs x [1, 6, 6, 4], y [1, 6]
    xs, ys = rnd(5, 1, 6, 6, 4), rnd(5, 1, 6)
    np.savez(tmp_path / "named.npz", x=xs, y=ys.astype(np.float64))
    np.savez(tmp_path / "positional.npz", xs[:, 0], ys[:, 0])  # [N, *shape[1:]] stacks
    for f in ("named.npz", "positional.npz"):
        got = load_calibration(tmp_path / f, graph)
        assert len(got) == 5 and all(r[0].dtype == np.float32 and r[1].dtype == np.float32 for r in got)
        assert np.array_equal(got[2][0], xs[2]) and np.allclose(got[4][1], ys[4])
    np.savez(tmp_path / "one.npz", x=xs[0], y=ys[0])
    assert len(load_calibration(str(tmp_path / "one.npz"), graph)) == 1


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.zeros((3, 1, 6, 6, 3), np.float32), "y": np.zeros((3, 1, 6), np.float32)},
     r"bad.npz \['x'\]: has shape \[3, 1, 6, 6, 3\]; input 'x' expects one sample \[1, 6, 6, 4\]"),
    ({"x": np.zeros((3, 1, 6, 6, 4), np.uint8), "y": np.zeros((3, 1, 6), np.float32)},
     r"\['x'\]: has dtype uint8 but input 'x' is float32"),
    ({"x": np.zeros((3, 1, 6, 6, 4), np.float32)}, r"no array for input 1 'y': expected key 'y' or 'arr_1'"),
    ({"x": np.zeros((3, 1, 6, 6, 4), np.float32), "y": np.zeros((2, 1, 6), np.float32)},
     r"different numbers of samples \('x': 3, 'y': 2\)"),
    ({"x": np.full((1, 6, 6, 4), np.nan, np.float32), "y": np.zeros((1, 6), np.float32)}, "NaN or infinite"),
])
def test_load_calibration_errors(tmp_path, arrays, match):
    graph = parse_tflite(misc_net())
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(EdgecError, match=match):
        load_calibration(tmp_path / "bad.npz", graph)


def test_load_calibration_folders(tmp_path):
    graph = parse_tflite(conv_net())  # one input [1, 8, 8, 3]
    samples = rnd(4, 1, 8, 8, 3)
    npy = tmp_path / "npy"
    npy.mkdir()
    for k, s in enumerate(samples):
        np.save(npy / f"s{k}.npy", s if k % 2 else s[0])  # [1, 8, 8, 3] or [8, 8, 3]
    got = load_calibration(npy, graph)
    assert len(got) == 4 and all(np.array_equal(g[0], s) for g, s in zip(got, samples))
    onx = tmp_path / "onnx"
    for k, s in enumerate(samples[:3]):
        (onx / f"test_data_set_{k}").mkdir(parents=True)
        proto = numpy_helper.from_array(s).SerializeToString()
        (onx / f"test_data_set_{k}" / "input_0.pb").write_bytes(proto)
        (onx / f"test_data_set_{k}" / "output_0.pb").write_bytes(b"ignored")
    got = load_calibration(onx, graph)
    assert len(got) == 3 and all(np.array_equal(g[0], s) for g, s in zip(got, samples))
    assert len(load_calibration(onx / "test_data_set_1", graph)) == 1  # one set's folder
    # errors
    (npy / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(EdgecError, match=r"bad.npy: cannot read as .npy"):
        load_calibration(npy, graph)
    (onx / "test_data_set_0" / "input_0.pb").write_bytes(
        numpy_helper.from_array(np.zeros((1, 3, 8, 8), np.float32)).SerializeToString())
    with pytest.raises(EdgecError, match=r"test_data_set_0/input_0.pb: has shape \[1, 3, 8, 8\]; "
                                         r"input 'image' expects one sample \[1, 8, 8, 3\]"):
        load_calibration(onx, graph)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgecError, match="no calibration samples found"):
        load_calibration(tmp_path / "empty", graph)
    with pytest.raises(EdgecError, match="calibration samples not found"):
        load_calibration(tmp_path / "missing.npz", graph)
    with pytest.raises(EdgecError, match="a folder of .npy files calibrates single-input models"):
        load_calibration(npy, parse_tflite(misc_net()))


def test_onnx_test_data_calibration():
    folder = SHARED_MODELS / "onnx" / "mnist-8"
    shared_model("onnx/mnist-8/model.onnx")
    first = numpy_helper.to_array(onnx.load_tensor(str(folder / "test_data_set_0" / "input_0.pb")))
    n = Net()
    x = n.t("Input3", first.shape)
    model = n.model([x], [n.op("RELU", [x], first.shape)])
    got = load_calibration(folder, parse_tflite(model))
    assert len(got) == 3 and np.array_equal(got[0][0], first)


def test_random_calibration():
    graph = parse_tflite(misc_net())
    a, b = random_calibration(graph, 3, seed=4), random_calibration(graph, 3, seed=4)
    assert len(a) == 3 and all(np.array_equal(u, v) for ra, rb in zip(a, b) for u, v in zip(ra, rb))
    assert [r.shape for r in a[0]] == [(1, 6, 6, 4), (1, 6)] and a[0][0].dtype == np.float32


def newer_ops_net() -> bytes:
    """TRANSPOSE_CONV, LEAKY_RELU, PRELU, MAXIMUM, MINIMUM (with a constant), and a RESHAPE after a SOFTMAX
    (the reshape takes the softmax's fixed quantization)."""
    n = Net()
    x = n.t("x", (1, 4, 4, 3))
    oshape, wt = n.t("oshape", (4,), np.array([1, 8, 8, 4])), n.t("wt", (4, 3, 3, 3), rnd(4, 3, 3, 3))
    tc = n.op("TRANSPOSE_CONV", [oshape, wt, x, n.t("bt", (4,), rnd(4))], (1, 8, 8, 4),
              {"padding": "SAME", "stride_h": 2, "stride_w": 2})
    lr = n.op("LEAKY_RELU", [tc], (1, 8, 8, 4), {"alpha": 0.1})
    pr = n.op("PRELU", [tc, n.t("alpha", (1, 1, 4), np.array([[[0.2, -0.3, 0.5, 0.05]]]))], (1, 8, 8, 4))
    mx = n.op("MAXIMUM", [lr, pr], (1, 8, 8, 4))
    mn = n.op("MINIMUM", [mx, n.t("cap", (1,), np.array([1.5], np.float32))], (1, 8, 8, 4))
    sm = n.op("SOFTMAX", [mn], (1, 8, 8, 4), {"beta": 1.0})
    flat = n.op("RESHAPE", [sm, n.t("shape", (2,), np.array([1, 256]))], (1, 256))
    return n.model([x], [mx, flat])


def test_newer_ops_net():
    from edgec.lower.ops import LOWERINGS

    model = newer_ops_net()
    graph = parse_tflite(model)
    cal = calib(graph, 32)
    q = quantize_graph(graph, cal)
    check_spec(q)
    ops = {op.type: op for op in q.ops}
    w = q.t(ops["TRANSPOSE_CONV"].inputs[1])
    assert w.quant.axis == 0 and len(w.quant.scale) == 4 and np.all(w.quant.zero_point == 0)
    x, b = q.t(ops["TRANSPOSE_CONV"].inputs[2]), q.t(ops["TRANSPOSE_CONV"].inputs[3])
    want = np.float32(x.scale) * w.quant.scale.astype(np.float64)
    np.testing.assert_allclose(b.quant.scale, want, rtol=1e-7)
    for name in ("MAXIMUM", "MINIMUM"):  # TFLM compares raw int8 values: one quantization for all
        op = ops[name]
        assert len({(q.t(t).scale, q.t(t).zero_point) for t in op.inputs + op.outputs}) == 1
    reshaped = q.t(ops["RESHAPE"].outputs[0])
    assert (reshaped.scale, reshaped.zero_point) == (np.float32(1 / 256), -128)
    check_against_float(model, q, calib(graph, 10, seed=2), min_db=20)
    if all(op.type in LOWERINGS for op in q.ops):  # lowerings of these ops are being added
        assert_matches_tflm(graph_to_tflite(q), n_inputs=6)


def floatize(graph: Graph) -> Graph:
    """The float model an int8 model was quantized from (up to rounding): weights and biases dequantized,
    activations float32, same ops."""
    tensors = []
    for t in graph.tensors:
        if t.quant is None:
            tensors.append(t)
            continue
        data = None
        if t.data is not None:
            shape = [1] * len(t.shape)
            shape[t.quant.axis or 0] = -1
            s, z = t.quant.scale.astype(np.float64), t.quant.zero_point
            if t.quant.axis is not None:
                s, z = s.reshape(shape), z.reshape(shape)
            data = ((t.data.astype(np.float64) - z) * s).astype(np.float32)
        tensors.append(Tensor(t.name, t.shape, "float32", None, data))
    return Graph(tensors, graph.ops, graph.inputs, graph.outputs, graph.source)


def test_mlperf_kws_architecture():
    """MLPerf Tiny's DS-CNN (5 conv, 4 depthwise, average pool, reshape, FC, softmax) as a float model."""
    graph = floatize(read_tflite(shared_model("tflite/kws_ref_model.tflite")))
    rng = np.random.default_rng(0)
    cal = [[rng.uniform(-1, 1, (1, 49, 10, 1)).astype(np.float32)] for _ in range(24)]
    q = quantize_graph(graph, cal, "mse")
    check_spec(q)
    report = quantization_report(graph, q, cal)
    assert report["end_to_end_sqnr_db"] > 30 and report["top1_agreement"] == 1.0
    assert len(report["layers"]) == len(graph.ops) and min(r["sqnr_db"] for r in report["layers"]) > 25
    assert_matches_tflm(graph_to_tflite(q), input_sets=cal[:4])


def test_onnx_mnist_against_its_test_data():
    """mnist-8 quantized with its own three test inputs: the int8 model's scores still agree with the
    expected outputs shipped with the model (computed by the original framework)."""
    onnx_reader = pytest.importorskip("edgec.frontends.onnx_reader")
    path = shared_model("onnx/mnist-8/model.onnx")
    graph = onnx_reader.read_onnx(path)
    cal = load_calibration(path.parent, graph)
    q = quantize_graph(graph, cal)
    check_spec(q)
    got = run_tflm_batch(graph_to_tflite(q), cal)
    for k, g in enumerate(got):
        expected = path.parent / f"test_data_set_{k}" / "output_0.pb"
        want = numpy_helper.to_array(onnx.load_tensor(str(expected)))
        assert np.argmax(g[0]) == np.argmax(want) and sqnr(want, g[0]) > 25
    assert_matches_tflm(graph_to_tflite(q), input_sets=cal)


def test_shared_constant_does_not_tie_groups():
    n = Net()
    x, y = n.t("x", (1, 8)), n.t("y", (1, 8))
    c = n.t("c", (1,), np.array([0.25], np.float32))
    mx = n.op("MAXIMUM", [x, c], (1, 8))
    mn = n.op("MINIMUM", [y, c], (1, 8))
    model = n.model([x, y], [mx, mn])
    graph = parse_tflite(model)
    rng = np.random.default_rng(0)
    cal = [[rng.normal(0, 1, (1, 8)).astype(np.float32), rng.normal(0, 20, (1, 8)).astype(np.float32)]
           for _ in range(16)]
    q = quantize_graph(graph, cal)
    check_spec(q)
    a, b = (next(op for op in q.ops if op.type == t) for t in ("MAXIMUM", "MINIMUM"))
    assert a.inputs[1] != b.inputs[1] and q.t(a.outputs[0]).scale < q.t(b.outputs[0]).scale / 5
    check_against_float(model, q, cal[:8], min_db=30)


def test_weight_scales_zero_channels_and_bias_overflow():
    from edgec.quantize.ptq import _quantize_weights

    w = np.zeros((3, 2, 2, 2), np.float32)
    w[0] = 0.5
    w[2, 0, 0, 0] = -2.0
    bias = np.array([0.1, 0.0, 1e6], np.float32)
    wq, ws, bq, bs = _quantize_weights(w, 0, bias, s_in=1e-3)
    assert np.all(wq[1] == 0) and ws[1] > 0  # an all-zero channel keeps a usable scale
    assert wq[0].max() == 127 and wq[2].min() < 0
    # channel 2's bias does not fit int32 at s_in * max|w| / 127: its weight scale is widened until it does
    assert ws[2] > np.float32(2.0 / 127) and abs(int(bq[2])) < 2**31 - 1
    np.testing.assert_allclose(bq * bs.astype(np.float64), bias, rtol=1e-6, atol=bs.max())
    np.testing.assert_allclose(bs, np.float32(1e-3) * ws.astype(np.float64), rtol=1e-7)


def test_weights_computed_from_constants_are_folded():
    """FC weights made by DEQUANTIZE of int8 constants (weight-only quantized models) and a bias made by
    an ADD of two constants: folded to float constants, then quantized like any weights."""
    n = Net()
    x = n.t("x", (1, 6))
    wq = len(n.tensors)
    n.tensors.append(WTensor("w_int8", (4, 6), "int8", RNG.integers(-127, 128, (4, 6)), scale=[0.02]))
    w = n.op("DEQUANTIZE", [wq], (4, 6))
    b = n.op("ADD", [n.t("b0", (4,), rnd(4)), n.t("b1", (4,), rnd(4))], (4,))
    y = n.op("FULLY_CONNECTED", [x, w, b], (1, 4))
    model = n.model([x], [y])
    graph = parse_tflite(model)
    cal = calib(graph, 16)
    q = quantize_graph(graph, cal)
    check_spec(q)
    assert [op.type for op in q.ops] == ["QUANTIZE", "FULLY_CONNECTED", "DEQUANTIZE"]
    check_against_float(model, q, cal, min_db=30)
    report = quantization_report(graph, q, cal)
    assert [r["type"] for r in report["layers"]] == ["FULLY_CONNECTED"]
