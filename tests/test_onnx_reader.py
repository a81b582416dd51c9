"""ONNX frontend (float): read_onnx + the IR's float reference against onnxruntime on the same model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.errors import EdgecError
from edgec.frontends.onnx_reader import read_onnx
from edgec.ir.reference import run_float
from support import shared_model

RNG = np.random.default_rng(7)


def w(*shape: int, scale: float = 0.5) -> np.ndarray:
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def make(nodes: list, inputs: dict[str, tuple], outputs: list[str], inits: dict[str, np.ndarray] | None = None,
         opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def ort_run(model: onnx.ModelProto | Path, feeds: list[np.ndarray]) -> list[np.ndarray]:
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), feeds)})


def input_shapes(model: onnx.ModelProto) -> list[list[int]]:
    inits = {i.name for i in model.graph.initializer}
    return [[d.dim_value or 1 for d in i.type.tensor_type.shape.dim] for i in model.graph.input if i.name not in inits]


def check(model: onnx.ModelProto | Path, tmp_path: Path, layouts=("model", "nhwc"), n_sets: int = 2,
          feeds: list[list[np.ndarray]] | None = None, rtol: float = 1e-4):
    """edgec's float graph (both I/O layouts) matches onnxruntime; returns the graph read with layout 'model'."""
    if isinstance(model, Path):
        path = model
        proto = onnx.load(str(path))
    else:
        path, proto = tmp_path / "m.onnx", model
        onnx.save(model, str(path))
    sets = feeds or [[RNG.normal(size=s).astype(np.float32) * 2 for s in input_shapes(proto)] for _ in range(n_sets)]
    graphs = {}
    for layout in layouts:
        g = read_onnx(path, layout)
        graphs[layout] = g
        for feed in sets:
            want = ort_run(path, feed)
            ins = [x.transpose(0, 2, 3, 1) if layout == "nhwc" and x.ndim == 4 else x for x in feed]
            got = run_float(g, ins)
            assert len(got) == len(want)
            for gv, wv in zip(got, want):
                gv = np.asarray(gv)
                if layout == "nhwc" and wv.ndim == 4:
                    gv = gv.transpose(0, 3, 1, 2)
                assert gv.shape == wv.shape, (layout, gv.shape, wv.shape)
                np.testing.assert_allclose(gv, wv, rtol=rtol, atol=rtol * max(1.0, float(np.abs(wv).max())))
    return graphs.get("model", next(iter(graphs.values())))


def types(g) -> list[str]:
    return [op.type for op in g.ops]


# ---- convolutions -----------------------------------------------------------------------------------------
CONV_CASES = {
    "sym_pads": ({"pads": [1, 1, 1, 1]}, 4, 1, 3),
    "no_pads_stride2": ({"strides": [2, 2]}, 4, 1, 3),
    "asym_pads": ({"pads": [0, 1, 2, 1]}, 4, 1, 3),
    "same_upper_stride2": ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, 4, 1, 3),
    "same_lower": ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, 4, 1, 4),
    "valid": ({"auto_pad": "VALID"}, 4, 1, 3),
    "dilation2": ({"dilations": [2, 2], "pads": [2, 2, 2, 2]}, 4, 1, 3),
    "depthwise": ({"group": 4, "pads": [1, 1, 1, 1]}, 4, 4, 3),
    "depthwise_mult2": ({"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}, 8, 4, 3),
    "grouped": ({"group": 2, "pads": [1, 1, 1, 1]}, 6, 2, 3),
    "rect_kernel": ({"pads": [0, 1, 0, 1]}, 5, 1, (1, 3)),
}


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(case, opset, tmp_path):
    attrs, oc, group, k = CONV_CASES[case]
    kh, kw = (k, k) if isinstance(k, int) else k
    c = 4
    inits = {"W": w(oc, c // group, kh, kw), "B": w(oc)}
    m = make([helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", **attrs)], {"x": (1, c, 9, 10)}, ["y"],
             inits, opset)
    g = check(m, tmp_path)
    want = "DEPTHWISE_CONV_2D" if case.startswith("depthwise") else "CONV_2D"
    assert want in types(g)
    if case == "asym_pads" or case == "same_lower":
        assert "PAD" in types(g)
    if case in ("sym_pads", "same_upper_stride2"):
        assert "PAD" not in types(g)


def test_conv_bias_bn_relu_fused(tmp_path):
    """Conv (no bias) + Add(per-channel) + BatchNormalization + Relu is one CONV_2D with activation RELU."""
    c, oc = 3, 5
    inits = {"W": w(oc, c, 3, 3), "b": w(oc, 1, 1), "s": np.abs(w(oc)) + 0.5, "bb": w(oc), "mu": w(oc),
             "var": np.abs(w(oc)) + 0.1}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "b"], ["a"]),
             helper.make_node("BatchNormalization", ["a", "s", "bb", "mu", "var"], ["bn"], epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["y"])]
    g = check(make(nodes, {"x": (1, c, 8, 8)}, ["y"], inits), tmp_path)
    assert types(g) == ["TRANSPOSE", "CONV_2D", "TRANSPOSE"]
    assert g.ops[1].attrs["activation"] == "RELU"
    g = read_onnx(tmp_path / "m.onnx", "nhwc")
    assert types(g) == ["CONV_2D"]


@pytest.mark.parametrize("clip,act", [((0.0, 6.0), "RELU6"), ((-1.0, 1.0), "RELU_N1_TO_1"), ((-0.5, 2.0), None)])
def test_conv_clip_fused(clip, act, tmp_path):
    inits = {"W": w(4, 3, 3, 3), "lo": np.array(clip[0], np.float32), "hi": np.array(clip[1], np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    g = check(make(nodes, {"x": (1, 3, 6, 6)}, ["y"], inits), tmp_path, layouts=("nhwc",))
    g = read_onnx(tmp_path / "m.onnx", "nhwc")
    if act:
        assert types(g) == ["CONV_2D"] and g.ops[0].attrs["activation"] == act
    else:
        assert types(g) == ["CONV_2D", "MAXIMUM", "MINIMUM"]


def test_relu_with_two_consumers_not_fused(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    g = check(make(nodes, {"x": (1, 2, 5, 5)}, ["y", "c"], {"W": w(3, 2, 1, 1)}), tmp_path)
    assert "RELU" in types(g)


@pytest.mark.parametrize("case", ["stride2", "stride2_pads", "output_padding", "same_upper", "stride1_bias"])
def test_conv_transpose(case, tmp_path):
    attrs = {"stride2": {"strides": [2, 2]}, "stride2_pads": {"strides": [2, 2], "pads": [1, 1, 1, 1]},
             "output_padding": {"strides": [2, 2], "output_padding": [1, 1]},
             "same_upper": {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, "stride1_bias": {"pads": [1, 1, 1, 1]}}[case]
    k = 4 if case == "stride2_pads" else 3
    ins = ["x", "W", "B"] if case == "stride1_bias" else ["x", "W"]
    m = make([helper.make_node("ConvTranspose", ins, ["y"], **attrs)], {"x": (1, 3, 5, 6)}, ["y"],
             {"W": w(3, 2, k, k), "B": w(2)})
    g = check(m, tmp_path)
    assert "TRANSPOSE_CONV" in types(g)


# ---- fully connected --------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["plain", "transB_alpha_beta", "transA", "bias_2d", "no_bias"])
def test_gemm(case, tmp_path):
    attrs = {"plain": {}, "transB_alpha_beta": {"transB": 1, "alpha": 0.5, "beta": 2.0}, "transA": {"transA": 1},
             "bias_2d": {}, "no_bias": {}}[case]
    a_shape = (6, 1) if case == "transA" else (1, 6)
    b = w(4, 6) if attrs.get("transB") else w(6, 4)
    c = w(1, 4) if case == "bias_2d" else w(4)
    ins = ["a", "B"] if case == "no_bias" else ["a", "B", "C"]
    g = check(make([helper.make_node("Gemm", ins, ["y"], **attrs)], {"a": a_shape}, ["y"], {"B": b, "C": c}), tmp_path)
    assert "FULLY_CONNECTED" in types(g)


def test_matmul_add_relu_fused(tmp_path):
    nodes = [helper.make_node("MatMul", ["a", "B"], ["m"]), helper.make_node("Add", ["m", "C"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    g = check(make(nodes, {"a": (2, 5)}, ["y"], {"B": w(5, 3), "C": w(3)}), tmp_path)
    assert types(g) == ["FULLY_CONNECTED"] and g.ops[0].attrs["activation"] == "RELU"


def test_matmul_rank3(tmp_path):
    g = check(make([helper.make_node("MatMul", ["a", "B"], ["y"])], {"a": (1, 3, 5)}, ["y"], {"B": w(5, 4)}), tmp_path)
    assert g.ops[0].attrs["keep_num_dims"]


@pytest.mark.parametrize("opset", [11, 13])
def test_flatten_conv_into_gemm_permutes_weights(opset, tmp_path):
    """Flattening an NHWC feature map for an FC costs nothing: the FC weight columns are permuted."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "G", "C"], ["y"], transB=1)]
    g = check(make(nodes, {"x": (1, 2, 4, 5)}, ["y"], {"W": w(3, 2, 3, 3), "G": w(7, 60), "C": w(7)}, opset),
              tmp_path)
    assert types(g) == ["TRANSPOSE", "CONV_2D", "RESHAPE", "FULLY_CONNECTED"]


def test_flatten_of_feature_map_to_other_consumer(tmp_path):
    """A flattened NHWC map used as an output is put back in ONNX (C, H, W) order."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Reshape", ["c", "s"], ["f"]),
             helper.make_node("Gemm", ["f", "G"], ["y"], transB=1), helper.make_node("Sigmoid", ["f"], ["z"])]
    check(make(nodes, {"x": (1, 2, 4, 5)}, ["y", "z"], {"W": w(3, 2, 1, 1), "G": w(7, 60),
                                                          "s": np.array([1, -1], np.int64)}), tmp_path)


# ---- elementwise ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary_with_constants(op, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]),
             helper.make_node(op, ["c", "k1"], ["y1"]),  # per-channel constant, NCHW-broadcast
             helper.make_node(op, ["c", "k2"], ["y2"]),  # scalar
             helper.make_node(op, ["x", "k3"], ["y3"])]  # full-shape constant on the NCHW input
    inits = {"W": w(3, 2, 1, 1), "k1": np.abs(w(3, 1, 1)) + 0.5, "k2": np.array(1.5, np.float32),
             "k3": np.abs(w(2, 4, 5)) + 0.5}
    check(make(nodes, {"x": (1, 2, 4, 5)}, ["y1", "y2", "y3"], inits), tmp_path)
    if op in ("Add", "Sub"):
        g = check(make([helper.make_node(op, ["k", "x"], ["y"])], {"x": (1, 2, 4, 5)}, ["y"], {"k": w(2, 1, 1)}),
                  tmp_path)
        assert types(g)[-1] == op.upper()


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
def test_binary_runtime(op, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node(op, ["c", "x2"], ["y1"]),
             helper.make_node(op, ["c", "v"], ["y2"])]  # broadcasting a run-time [C,1,1] along H, W
    check(make(nodes, {"x": (1, 2, 4, 5), "x2": (1, 3, 4, 5), "v": (3, 1, 1)}, ["y1", "y2"], {"W": w(3, 2, 1, 1)}),
          tmp_path)


UNARY = {
    "Relu": ({}, 13), "Sigmoid": ({}, 13), "Tanh": ({}, 13), "LeakyRelu": ({"alpha": 0.2}, 13),
    "HardSigmoid": ({"alpha": 0.3, "beta": 0.4}, 13), "HardSwish": ({}, 14), "Clip9": ({"min": -0.5, "max": 0.7}, 9),
    "Clip9_relu6": ({"min": 0.0, "max": 6.0}, 9),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary(name, tmp_path):
    attrs, opset = UNARY[name]
    op = name.split("9")[0]
    m = make([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": (1, 3, 4, 5)}, ["y"], opset=opset)
    check(m, tmp_path, n_sets=1)
    # and after a conv (NHWC body)
    m = make([helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node(op, ["c"], ["y"], **attrs)],
             {"x": (1, 3, 4, 5)}, ["y"], {"W": w(2, 3, 1, 1)}, opset=opset)
    check(m, tmp_path, n_sets=1)


@pytest.mark.parametrize("bounds", [("lo", ""), ("", "hi"), ("", ""), ("lo", "hi")])
def test_clip_optional_bounds(bounds, tmp_path):
    m = make([helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Clip", ["t", *bounds], ["y"])], {"x": (2, 7)}, ["y"],
             {"lo": np.array(-0.3, np.float32), "hi": np.array(0.4, np.float32)}, 13)
    check(m, tmp_path, n_sets=1)


@pytest.mark.parametrize("slope_shape", [(3, 1, 1), (1,), (5,)])
def test_prelu(slope_shape, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("PRelu", ["c", "s"], ["y"])]
    g = check(make(nodes, {"x": (1, 3, 4, 5)}, ["y"], {"W": w(3, 3, 1, 1), "s": w(*slope_shape)}), tmp_path)
    assert "PRELU" in types(g)


def test_batchnorm_standalone(tmp_path):
    c = 3
    inits = {"s": w(c), "b": w(c), "m": w(c), "v": np.abs(w(c)) + 0.2}
    g = check(make([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])], {"x": (1, c, 4, 4)},
                   ["y"], inits, 9), tmp_path)
    assert types(g) == ["MUL", "ADD"]


# ---- pooling ----------------------------------------------------------------------------------------------
POOLS = {
    "max_k2s2": ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "max_same_upper": ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "max_sym_pads_same": ("MaxPool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "max_ceil": ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    "avg_k2s2": ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "avg_same_exclude": ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "avg_pads_include": ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                              "count_include_pad": 1}),
    "avg_ceil_no_effect": ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    "global_avg": ("GlobalAveragePool", {}),
    "global_max": ("GlobalMaxPool", {}),
}


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("case", sorted(POOLS))
def test_pool(case, opset, tmp_path):
    op, attrs = POOLS[case]
    g = check(make([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": (1, 3, 8, 10)}, ["y"], opset=opset), tmp_path)
    if case == "avg_pads_include":
        assert "PAD" in types(g)
    if case in ("max_sym_pads_same", "max_same_upper", "avg_same_exclude"):
        assert "PAD" not in types(g)


@pytest.mark.parametrize("attrs", [{"pads": [1, 1, 1, 1]}, {"ceil_mode": 1}])
def test_maxpool_non_same_pads_after_relu(attrs, tmp_path):
    """ResNet's stem pool (k3 s2 p1) and ceil_mode windows pad differently from SAME; after Relu zero padding
    is exact."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2], **attrs)]
    g = check(make(nodes, {"x": (1, 2, 8, 9)}, ["y"], {"W": w(3, 2, 1, 1)}), tmp_path)
    assert "PAD" in types(g)


# ---- shapes and layout ------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze(opset, tmp_path):
    def axes_node(op, x, y, axes):
        if opset < 13:
            return [helper.make_node(op, [x], [y], axes=axes)]
        return [helper.make_node("Constant", [], [y + "_axes"], value=numpy_helper.from_array(np.array(axes, np.int64))),
                helper.make_node(op, [x, y + "_axes"], [y])]
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), *axes_node("Squeeze", "p", "s", [2, 3]),
             *axes_node("Unsqueeze", "s", "u", [0]), helper.make_node("Squeeze", ["u"], ["y"])]
    check(make(nodes, {"x": (1, 3, 4, 5)}, ["s", "u", "y"], opset=opset), tmp_path)


@pytest.mark.parametrize("perm", [(0, 2, 3, 1), (0, 3, 1, 2), (1, 0, 3, 2), (0, 1, 3, 2)])
def test_transpose(perm, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Transpose", ["c"], ["t"], perm=perm),
             helper.make_node("Relu", ["t"], ["y"]), helper.make_node("Transpose", ["x"], ["y2"], perm=perm)]
    check(make(nodes, {"x": (1, 2, 4, 5)}, ["y", "y2"], {"W": w(3, 2, 1, 1)}), tmp_path)


def test_nhwc_model_input_transposed_to_nchw_costs_nothing(tmp_path):
    """A PyTorch-style NHWC input Transposed to NCHW before Conv needs no TRANSPOSE op at all."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), helper.make_node("Conv", ["t", "W"], ["c"]),
             helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1])]
    g = check(make(nodes, {"x": (1, 4, 5, 2)}, ["y"], {"W": w(3, 2, 1, 1)}), tmp_path, layouts=("model",))
    assert types(g) == ["CONV_2D"]


@pytest.mark.parametrize("axis", [1, 0, -1, 2])
def test_concat(axis, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Concat", ["c", "x", "k"], ["y"], axis=axis)]
    kshape = [1, 2, 4, 5]
    kshape[axis] = 1
    check(make(nodes, {"x": (1, 2, 4, 5)}, ["y"], {"W": w(2, 2, 1, 1), "k": w(*kshape)}), tmp_path)


@pytest.mark.parametrize("opset,axis", [(11, 1), (11, 3), (11, -1), (13, 1), (13, -1), (13, 2), (17, 1)])
def test_softmax(opset, axis, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Softmax", ["c"], ["y"], axis=axis),
             helper.make_node("Softmax", ["m"], ["y2"], axis=axis if axis < 2 else -1)]
    check(make(nodes, {"x": (1, 2, 3, 4), "m": (2, 5)}, ["y", "y2"], {"W": w(3, 2, 1, 1)}, opset), tmp_path)


@pytest.mark.parametrize("opset", [9, 13, 18])
def test_pad(opset, tmp_path):
    pads = [0, 0, 1, 2, 0, 1, 0, 1]
    if opset < 11:
        nodes = [helper.make_node("Pad", ["c"], ["y"], pads=pads)]
        inits = {}
    else:
        nodes = [helper.make_node("Pad", ["c", "p"], ["y"])]
        inits = {"p": np.array(pads, np.int64)}
    nodes.insert(0, helper.make_node("Conv", ["x", "W"], ["c"]))
    inits["W"] = w(3, 2, 1, 1)
    g = check(make(nodes, {"x": (1, 2, 4, 5)}, ["y"], inits, opset), tmp_path)
    assert "PAD" in types(g)


@pytest.mark.parametrize("opset,keep,axes", [(13, 1, [2, 3]), (13, 0, [2, 3]), (13, 0, [1]), (18, 1, [1, 2]),
                                             (18, 0, [-1]), (11, 0, None)])
def test_reduce_mean(opset, keep, axes, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"])]
    inits = {"W": w(3, 2, 1, 1)}
    if opset >= 18:
        nodes.append(helper.make_node("ReduceMean", ["c", "ax"], ["y"], keepdims=keep))
        inits["ax"] = np.array(axes, np.int64)
    else:
        kw = {} if axes is None else {"axes": axes}
        nodes.append(helper.make_node("ReduceMean", ["c"], ["y"], keepdims=keep, **kw))
    nodes.append(helper.make_node("Relu", ["y"], ["z"]))
    g = check(make(nodes, {"x": (1, 2, 4, 5)}, ["z"], inits, opset), tmp_path)
    assert "MEAN" in types(g)


def test_constant_subgraph_folding(tmp_path):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, a Reshape of a weight, Constant, Identity, Dropout."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], axis=0),
        helper.make_node("Identity", ["x"], ["xi"]),
        helper.make_node("Dropout", ["xi"], ["xd"]),
        helper.make_node("Reshape", ["xd", "newshape"], ["flat"]),
        helper.make_node("Reshape", ["Wflat", "wshape"], ["W2"]),
        helper.make_node("MatMul", ["flat", "W2"], ["y"]),
    ]
    inits = {"ax0": np.array([0], np.int64), "minus1": np.array([-1], np.int64), "Wflat": w(60),
             "wshape": np.array([20, 3], np.int64)}
    g = check(make(nodes, {"x": (1, 4, 5)}, ["y"], inits), tmp_path)
    assert types(g) == ["RESHAPE", "FULLY_CONNECTED"]


def test_external_data(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    m = make(nodes, {"x": (1, 3, 6, 6)}, ["y"], {"W": w(8, 3, 3, 3)})
    path = tmp_path / "ext.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data",
                    size_threshold=0)
    assert (tmp_path / "ext.onnx.data").is_file()
    check(path, tmp_path)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(EdgecError, match="ext.onnx"):
        read_onnx(path)


def test_symbolic_batch_becomes_1(tmp_path):
    m = make([helper.make_node("Relu", ["x"], ["y"])], {"x": ("N", 3)}, ["y"])
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    g = read_onnx(path)
    assert g.t(g.inputs[0]).shape == (1, 3)


# ---- real models ------------------------------------------------------------------------------------------
def test_mnist8_test_data_sets(tmp_path):
    path = shared_model("onnx/mnist-8/model.onnx")
    g = read_onnx(path)
    assert types(g) == ["RESHAPE", "CONV_2D", "MAX_POOL_2D", "CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED"]
    feeds = []
    for d in sorted(path.parent.glob("test_data_set_*")):
        x = numpy_helper.to_array(onnx.load_tensor(str(d / "input_0.pb")))
        want = numpy_helper.to_array(onnx.load_tensor(str(d / "output_0.pb")))
        np.testing.assert_allclose(run_float(g, [x])[0], want, rtol=1e-4, atol=1e-3)
        feeds.append([x])
    assert len(feeds) == 3
    check(path, tmp_path, feeds=feeds)


@pytest.mark.parametrize("name", ["mnist-8/model.onnx", "mnist_simplified.onnx", "tfl_helloworld.onnx"])
def test_real_models(name, tmp_path):
    check(shared_model(f"onnx/{name}"), tmp_path, n_sets=3)


# ---- bad input --------------------------------------------------------------------------------------------
def save(m: onnx.ModelProto, tmp_path: Path) -> Path:
    path = tmp_path / "bad.onnx"
    onnx.save(m, str(path))
    return path


def test_unsupported_op_names_node_and_type(tmp_path):
    m = make([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Erf", ["r"], ["y"], name="my_erf")],
             {"x": (1, 4)}, ["y"])
    with pytest.raises(EdgecError, match=r"bad\.onnx.*node 'my_erf' \(Erf\) is not supported.*Conv"):
        read_onnx(save(m, tmp_path))


@pytest.mark.parametrize("data", [b"", b"garbage, not a protobuf at all \xff\xff\xff", "truncated"])
def test_garbage_and_truncated_files(data, tmp_path):
    if data == "truncated":
        data = shared_model("onnx/mnist-8/model.onnx").read_bytes()[:3000]
    path = tmp_path / "broken.onnx"
    path.write_bytes(data)
    with pytest.raises(EdgecError, match="broken.onnx"):
        read_onnx(path)


def test_missing_file(tmp_path):
    with pytest.raises(EdgecError, match="nothere.onnx"):
        read_onnx(tmp_path / "nothere.onnx")


def test_dynamic_non_batch_dim(tmp_path):
    m = make([helper.make_node("Relu", ["x"], ["y"])], {"x": (1, "seq", 4)}, ["y"])
    with pytest.raises(EdgecError, match=r"dynamic dimension 1 \('seq'\)"):
        read_onnx(save(m, tmp_path))


BAD_NODES = {
    "maxpool_pads_signed": (helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[3, 3], strides=[2, 2],
                                             pads=[1, 1, 1, 1]), "node 'mp' \\(MaxPool\\).*non-negative"),
    "avgpool_ceil": (helper.make_node("AveragePool", ["x"], ["y"], name="ap", kernel_shape=[3, 3], strides=[2, 2],
                                      ceil_mode=1), "node 'ap' \\(AveragePool\\): ceil_mode"),
    "avg_exclude_asym": (helper.make_node("AveragePool", ["x"], ["y"], name="ap", kernel_shape=[3, 3],
                                          pads=[0, 0, 1, 1]), "count_include_pad"),
    "pad_reflect": (helper.make_node("Pad", ["x", "p"], ["y"], name="pd", mode="reflect"), "mode=reflect"),
    "matmul_two_runtime": (helper.make_node("MatMul", ["x", "x"], ["y"], name="mm"), "node 'mm' \\(MatMul\\)"),
    "div_runtime": (helper.make_node("Div", ["x", "x"], ["y"], name="dv"), "Div by a constant"),
}


@pytest.mark.parametrize("case", sorted(BAD_NODES))
def test_unsupported_attributes(case, tmp_path):
    node, msg = BAD_NODES[case]
    m = make([node], {"x": (1, 2, 6, 6)}, ["y"], {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}, 13)
    with pytest.raises(EdgecError, match=msg):
        read_onnx(save(m, tmp_path))


def test_bad_layout_option(tmp_path):
    with pytest.raises(EdgecError, match="input layout"):
        read_onnx(shared_model("onnx/mnist-8/model.onnx"), "nchw")


def _bn(name: str, x: str, c: int, inits: dict) -> helper.NodeProto:
    for k, v in (("s", np.abs(w(c)) + 0.5), ("b", w(c)), ("m", w(c)), ("v", np.abs(w(c)) + 0.5)):
        inits[f"{name}_{k}"] = v
    return helper.make_node("BatchNormalization", [x, *(f"{name}_{k}" for k in "sbmv")], [name])


def test_resnet_like_network(tmp_path):
    """PyTorch-style export: conv-bn-relu, k3 s2 p1 max pool, a residual block, GAP, flatten, FC, softmax."""
    inits = {"c1": w(8, 3, 3, 3), "c2": w(8, 8, 3, 3), "c3": w(8, 8, 3, 3), "fc": w(5, 8), "fcb": w(5)}
    nodes = [helper.make_node("Conv", ["x", "c1"], ["a1"], pads=[1, 1, 1, 1], strides=[2, 2]), _bn("b1", "a1", 8, inits),
             helper.make_node("Relu", ["b1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p1", "c2"], ["a2"], pads=[1, 1, 1, 1]), _bn("b2", "a2", 8, inits),
             helper.make_node("Relu", ["b2"], ["r2"]),
             helper.make_node("Conv", ["r2", "c3"], ["a3"], pads=[1, 1, 1, 1]), _bn("b3", "a3", 8, inits),
             helper.make_node("Add", ["b3", "p1"], ["s"]), helper.make_node("Relu", ["s"], ["r3"]),
             helper.make_node("GlobalAveragePool", ["r3"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["y"], axis=1)]
    g = check(make(nodes, {"x": (1, 3, 16, 16)}, ["y"], inits, 11), tmp_path)
    # PyTorch's symmetric pads differ from SAME for stride 2 on an even size: PAD + VALID.
    assert types(g) == ["TRANSPOSE", "PAD", "CONV_2D", "PAD", "MAX_POOL_2D", "CONV_2D", "CONV_2D", "ADD", "MEAN",
                        "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"]
    assert [op.attrs.get("activation") for op in g.ops if op.type in ("CONV_2D", "ADD")] == \
        ["RELU", "RELU", "NONE", "RELU"]


def test_mobilenet_like_network(tmp_path):
    """conv-bn-relu6 (Clip), depthwise-bn-relu6, pointwise-bn, HardSwish, ReduceMean, Reshape, MatMul+Add."""
    inits = {"c1": w(8, 3, 3, 3), "dw": w(8, 1, 3, 3), "pw": w(12, 8, 1, 1), "fc": w(12, 4), "fcb": w(4),
             "lo": np.array(0, np.float32), "hi": np.array(6, np.float32), "shape": np.array([1, 12], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "c1"], ["a1"], pads=[0, 0, 1, 1], strides=[2, 2]), _bn("b1", "a1", 8, inits),
             helper.make_node("Clip", ["b1", "lo", "hi"], ["r1"]),
             helper.make_node("Conv", ["r1", "dw"], ["a2"], pads=[1, 1, 1, 1], group=8), _bn("b2", "a2", 8, inits),
             helper.make_node("Clip", ["b2", "lo", "hi"], ["r2"]),
             helper.make_node("Conv", ["r2", "pw"], ["a3"]), _bn("b3", "a3", 12, inits),
             helper.make_node("HardSwish", ["b3"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["m"], axes=[2, 3], keepdims=1),
             helper.make_node("Reshape", ["m", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["mm"]), helper.make_node("Add", ["mm", "fcb"], ["y"])]
    g = check(make(nodes, {"x": (1, 3, 16, 16)}, ["y"], inits, 14), tmp_path)
    assert types(g) == ["TRANSPOSE", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "HARD_SWISH", "MEAN", "RESHAPE",
                        "FULLY_CONNECTED"]


def test_cli_build_unsupported_op_exits_2(tmp_path):
    from click.testing import CliRunner

    from edgec.cli.main import main

    m = make([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Erf", ["r"], ["y"], name="my_erf")],
             {"x": (1, 4)}, ["y"])
    result = CliRunner().invoke(main, ["build", str(save(m, tmp_path)), "--target", "host", "-o",
                                       str(tmp_path / "out"), "--precision", "float32"])
    assert result.exit_code == 2, result.output
    assert "node 'my_erf' (Erf) is not supported" in result.output
