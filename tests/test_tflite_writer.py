"""The TFLite writer and the TFLM oracle, checked against independent numpy computations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tflite
from hypothesis import given, settings
from hypothesis import strategies as st

from edgec.frontends.tflite_writer import WOp, WTensor, write_tflite
from edgec.oracle.tflm import TflmRunner, run_tflm, run_tflm_batch, tflm_min_arena

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "tflite"
needs_models = pytest.mark.skipif(not MODELS.is_dir(), reason=f"shared models not found at {MODELS}")
RNG = np.random.default_rng(1234)


def q8(name: str, shape: tuple, scale: float = 0.05, zp: int = -3) -> WTensor:
    return WTensor(name, shape, "int8", scale=[scale], zero_point=[zp])


def i32(name: str, values) -> WTensor:
    v = np.asarray(values, dtype=np.int32)
    return WTensor(name, v.shape, "int32", data=v)


def rand8(*shape: int) -> np.ndarray:
    return RNG.integers(-128, 128, shape, dtype=np.int8)


def one_op(op: str, tensors: list[WTensor], n_in: int, options: dict | None = None) -> bytes:
    """Model with a single op: tensors[:n_in] are graph inputs or constants, the last tensor the output."""
    ins = [i for i in range(n_in) if tensors[i].data is None]
    return write_tflite(tensors, [WOp(op, list(range(n_in)), [len(tensors) - 1], options or {})],
                        ins, [len(tensors) - 1])


# --- data movement ops: TFLM must match numpy exactly -------------------------------------------------


def test_reshape_and_squeeze():
    x = rand8(1, 4, 1, 6)
    m = write_tflite([q8("x", (1, 4, 1, 6)), i32("s", [6, 4]), q8("r", (6, 4)), q8("q", (4, 6))],
                     [WOp("RESHAPE", [0, 1], [2], {"new_shape": [6, 4]}),
                      WOp("SQUEEZE", [0], [3], {"squeeze_dims": [0, 2]})], [0], [2, 3])
    r, q = run_tflm(m, [x])
    assert np.array_equal(r, x.reshape(6, 4)) and np.array_equal(q, x.reshape(4, 6))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=5).flatmap(
    lambda s: st.tuples(st.just(tuple(s)), st.permutations(range(len(s))))))
def test_transpose(shape_perm):
    shape, perm = shape_perm
    x = rand8(*shape)
    out = tuple(shape[p] for p in perm)
    m = one_op("TRANSPOSE", [q8("x", shape), i32("perm", perm), q8("y", out)], 2)
    assert np.array_equal(run_tflm(m, [x])[0], np.transpose(x, perm))


def test_pad_uses_zero_point():
    x, pads = rand8(1, 3, 4, 2), [[0, 0], [1, 2], [0, 3], [0, 0]]
    m = one_op("PAD", [q8("x", (1, 3, 4, 2), zp=7), i32("p", pads), q8("y", (1, 6, 7, 2), zp=7)], 2)
    assert np.array_equal(run_tflm(m, [x])[0], np.pad(x, pads, constant_values=7))


@pytest.mark.parametrize("k,s,pad", [(2, 2, "VALID"), (3, 1, "VALID"), (3, 2, "SAME")])
def test_max_pool_is_numpy_max(k, s, pad):
    h, w, c = 7, 6, 3
    oh, ow = ((h - k) // s + 1, (w - k) // s + 1) if pad == "VALID" else (-(-h // s), -(-w // s))
    x = rand8(1, h, w, c)
    m = one_op("MAX_POOL_2D", [q8("x", x.shape), q8("y", (1, oh, ow, c))], 1,
               {"padding": pad, "stride_w": s, "stride_h": s, "filter_width": k, "filter_height": k})
    ph, pw = max((oh - 1) * s + k - h, 0) // 2, max((ow - 1) * s + k - w, 0) // 2
    xp = np.pad(x, [(0, 0), (ph, k), (pw, k), (0, 0)], constant_values=-128)  # pad never wins the max
    ref = np.stack([np.stack([xp[:, i * s:i * s + k, j * s:j * s + k].max(axis=(1, 2)) for j in range(ow)], 1)
                    for i in range(oh)], 1)
    assert np.array_equal(run_tflm(m, [x])[0], ref)


@pytest.mark.parametrize("axis", [0, 1, 3, -1])
def test_concatenation_two_inputs(axis):
    a, b = rand8(2, 3, 1, 4), rand8(2, 3, 1, 4)
    ref = np.concatenate([a, b], axis=axis)
    m = one_op("CONCATENATION", [q8("a", a.shape), q8("b", b.shape), q8("y", ref.shape)], 2, {"axis": axis})
    assert np.array_equal(run_tflm(m, [a, b])[0], ref)


def test_strided_slice_masks():
    x = rand8(1, 6, 8, 3)
    ref = x[0, 1:6:2, 7:0:-3, :]
    m = one_op("STRIDED_SLICE", [q8("x", x.shape), i32("b", [0, 1, 7, 5]), i32("e", [1, 6, 0, 0]),
                                 i32("s", [1, 2, -3, 1]), q8("y", ref.shape)], 4,
               {"begin_mask": 0b1000, "end_mask": 0b1000, "shrink_axis_mask": 0b0001})
    assert np.array_equal(run_tflm(m, [x])[0], ref)


def test_opcode_above_127_runs():
    # BROADCAST_TO is builtin 130: only builtin_code can hold it.
    x = rand8(1, 3)
    m = one_op("BROADCAST_TO", [q8("x", (1, 3)), i32("s", [4, 3]), q8("y", (4, 3))], 2)
    assert np.array_equal(run_tflm(m, [x])[0], np.broadcast_to(x, (4, 3)))
    oc = tflite.Model.GetRootAs(m, 0).OperatorCodes(0)
    assert (oc.DeprecatedBuiltinCode(), oc.BuiltinCode()) == (127, 130)


# --- float ops (reference kernels) --------------------------------------------------------------------


def _conv_ref(x, w, b, stride, dil, depthwise=False):
    """NHWC conv / depthwise conv with TF 'SAME' padding, float64 accumulate."""
    _, h, wd, c = x.shape
    kh, kw = w.shape[1:3]
    oh, ow = -(-h // stride), -(-wd // stride)
    ph = max((oh - 1) * stride + (kh - 1) * dil + 1 - h, 0) // 2
    pw = max((ow - 1) * stride + (kw - 1) * dil + 1 - wd, 0) // 2
    xp = np.pad(x.astype(np.float64), [(0, 0), (ph, kh * dil), (pw, kw * dil), (0, 0)])
    out = np.zeros((1, oh, ow, w.shape[0] if not depthwise else w.shape[3]))
    for i in range(oh):
        for j in range(ow):
            win = xp[0, i * stride:i * stride + (kh - 1) * dil + 1:dil, j * stride:j * stride + (kw - 1) * dil + 1:dil]
            if depthwise:  # channel ic*dm+m reads input channel ic
                out[0, i, j] = (np.repeat(win, w.shape[3] // c, axis=2) * w[0]).sum(axis=(0, 1))
            else:
                out[0, i, j] = np.einsum("hwc,ohwc->o", win, w)
    return out + b


def test_float_conv_depthwise_fc():
    x = RNG.standard_normal((1, 7, 9, 3)).astype(np.float32)
    w, bw = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)
    dw, bdw = RNG.standard_normal((1, 3, 3, 6)).astype(np.float32), RNG.standard_normal(6).astype(np.float32)
    fw = RNG.standard_normal((5, 4 * 5 * 4)).astype(np.float32)
    f = "float32"
    t = [WTensor("x", x.shape, f), WTensor("w", w.shape, f, w), WTensor("bw", (4,), f, bw),
         WTensor("c", (1, 4, 5, 4), f), WTensor("dw", dw.shape, f, dw), WTensor("bdw", (6,), f, bdw),
         WTensor("d", (1, 7, 9, 6), f), WTensor("fw", fw.shape, f, fw), WTensor("fc", (1, 5), f)]
    m = write_tflite(t, [
        WOp("CONV_2D", [0, 1, 2], [3], {"stride_w": 2, "stride_h": 2, "fused_activation_function": "RELU"}),
        WOp("DEPTHWISE_CONV_2D", [0, 4, 5], [6], {"depth_multiplier": 2, "dilation_w_factor": 2}),
        WOp("FULLY_CONNECTED", [3, 7, -1], [8])], [0], [3, 6, 8])
    c, d, fc = run_tflm(m, [x])
    ref_c = np.maximum(_conv_ref(x, w, bw, 2, 1), 0)
    assert np.allclose(c, ref_c, rtol=1e-5, atol=1e-5)
    # dilation only along W: compare with an explicitly dilated kernel (zeros between taps) and dil=1
    dw_dil = np.zeros((1, 3, 5, 6), np.float32)
    dw_dil[:, :, ::2] = dw
    assert np.allclose(d, _conv_ref(x, dw_dil, bdw, 1, 1, depthwise=True), rtol=1e-5, atol=1e-5)
    assert np.allclose(fc, ref_c.reshape(1, -1) @ fw.T, rtol=1e-4, atol=1e-4)


def test_float_elementwise_multi_io():
    a = RNG.uniform(-8, 8, (2, 5)).astype(np.float32)
    b = RNG.uniform(-8, 8, (2, 5)).astype(np.float32)
    f, sh = "float32", (2, 5)
    names = ["add", "sub", "mul", "relu", "relu6", "logistic", "tanh", "hswish", "softmax", "mean", "q", "dq"]
    t = [WTensor("a", sh, f), WTensor("b", sh, f), i32("axis", [1])]
    t += [WTensor(n, (2, 1) if n == "mean" else sh, f) for n in names[:-2]]
    t += [WTensor("q", sh, "int8", scale=[0.1], zero_point=[-3]), WTensor("dq", sh, f)]
    o = {n: 3 + k for k, n in enumerate(names)}
    ops = [WOp("ADD", [0, 1], [o["add"]], {"fused_activation_function": "RELU"}),
           WOp("SUB", [0, 1], [o["sub"]]), WOp("MUL", [0, 1], [o["mul"]]),
           WOp("RELU", [0], [o["relu"]]), WOp("RELU6", [0], [o["relu6"]]), WOp("LOGISTIC", [0], [o["logistic"]]),
           WOp("TANH", [0], [o["tanh"]]), WOp("HARD_SWISH", [0], [o["hswish"]]),
           WOp("SOFTMAX", [0], [o["softmax"]], {"beta": 0.5}), WOp("MEAN", [0, 2], [o["mean"]], {"keep_dims": True}),
           WOp("QUANTIZE", [0], [o["q"]]), WOp("DEQUANTIZE", [o["q"]], [o["dq"]])]
    res = dict(zip(names, run_tflm(write_tflite(t, ops, [0, 1], [o[n] for n in names]), [a, b])))
    # exact in float32
    assert np.array_equal(res["add"], np.maximum(a + b, 0))
    assert np.array_equal(res["sub"], a - b) and np.array_equal(res["mul"], a * b)
    assert np.array_equal(res["relu"], np.maximum(a, 0)) and np.array_equal(res["relu6"], np.clip(a, 0, 6))
    close = {"logistic": 1 / (1 + np.exp(-a.astype(np.float64))), "tanh": np.tanh(a),
             "hswish": a * np.clip(a + 3, 0, 6) / 6, "mean": a.mean(axis=1, keepdims=True),
             "softmax": np.exp(0.5 * a) / np.exp(0.5 * a).sum(axis=1, keepdims=True)}
    for n, ref in close.items():
        assert np.allclose(res[n], ref, rtol=1e-5, atol=1e-6), n
    # QUANTIZE: float32 division, round half away from zero; DEQUANTIZE: double scale * (q - zp)
    v = (a / np.float32(0.1)).astype(np.float64)
    q = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5) - 3, -128, 127)
    assert np.array_equal(res["q"], q.astype(np.int8))
    assert np.array_equal(res["dq"], (float(np.float32(0.1)) * (q + 3)).astype(np.float32))


# --- int8 requantization: TFLM is built with double rounding ------------------------------------------


def _mbqm(acc: int, real: float) -> int:
    """TFLite MultiplyByQuantizedMultiplier, default (double-rounding, gemmlowp) build."""
    frac, shift = math.frexp(real)
    m = round(frac * (1 << 31))
    if m == 1 << 31:
        m, shift = m // 2, shift + 1
    ab = acc * (1 << max(shift, 0)) * m
    n = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    hi = abs(n) >> 31 if n >= 0 else -(abs(n) >> 31)  # C division truncates toward zero
    r = max(-shift, 0)
    mask = (1 << r) - 1
    return (hi >> r) + int((hi & mask) > (mask >> 1) + (hi < 0))


def test_fully_connected_double_rounding():
    # effective scale 0.25*127: exact ties where single and double rounding differ
    x = np.arange(-128, 128, dtype=np.int8).reshape(256, 1)
    m = write_tflite([q8("x", (256, 1), 1.0, 0), WTensor("w", (1, 1), "int8", np.array([[127]]), [0.25]),
                      q8("y", (256, 1), 1.0, 0)], [WOp("FULLY_CONNECTED", [0, 1, -1], [2])], [0], [2])
    ref = [min(127, max(-128, _mbqm(int(v) * 127, 0.25))) for v in x.ravel()]
    assert run_tflm(m, [x])[0].ravel().tolist() == ref


def test_depthwise_per_channel_quantization():
    c = 4
    scales = [0.011, 0.0037, 0.02, 0.0051]
    w = RNG.integers(-127, 128, (1, 1, 1, c))
    bias = RNG.integers(-500, 500, c)
    x = rand8(1, 3, 3, c)
    t = [q8("x", x.shape, 0.5, 5),
         WTensor("w", (1, 1, 1, c), "int8", w, scales, [0] * c, quantized_dimension=3),
         WTensor("b", (c,), "int32", bias, [0.5 * s for s in scales], [0] * c),
         q8("y", x.shape, 0.1, -10)]
    m = one_op("DEPTHWISE_CONV_2D", t, 3, {"padding": "VALID"})
    acc = (x.astype(np.int64) - 5) * w[0, 0, 0] + bias
    real = [float(np.float32(0.5)) * float(np.float32(s)) / float(np.float32(0.1)) for s in scales]
    ref = np.array([_mbqm(int(a), real[i % c]) for i, a in enumerate(acc.ravel())]).reshape(x.shape) - 10
    assert np.array_equal(run_tflm(m, [x])[0], np.clip(ref, -128, 127))


# --- reading back with the tflite package -------------------------------------------------------------


def test_roundtrip_through_reader():
    w = np.arange(2 * 3 * 3 * 4, dtype=np.int8).reshape(2, 3, 3, 4)
    t = [q8("in", (1, 8, 8, 4)),
         WTensor("w", (2, 3, 3, 4), "int8", w, [0.5, 0.25], [0, 0], quantized_dimension=0),
         WTensor("f", (3,), "float32"), i32("shape", [1, -1])]
    ops = [WOp("CONV_2D", [0, 1, -1], [0], {"padding": "VALID", "stride_w": 2, "stride_h": 3,
                                            "dilation_w_factor": 2, "fused_activation_function": "RELU6"}),
           WOp("DEPTHWISE_CONV_2D", [0], [0], {"depth_multiplier": 3}),
           WOp("FULLY_CONNECTED", [0], [0], {"keep_num_dims": True}),
           WOp("AVERAGE_POOL_2D", [0], [0], {"filter_width": 5, "filter_height": 2, "padding": "SAME"}),
           WOp("SOFTMAX", [0], [0], {"beta": 0.25}), WOp("MEAN", [0], [0], {"keep_dims": True}),
           WOp("RESHAPE", [0, 3], [0], {"new_shape": [1, -1]}), WOp("SQUEEZE", [0], [0], {"squeeze_dims": [0, 2]}),
           WOp("STRIDED_SLICE", [0], [0], {"begin_mask": 5, "end_mask": 2, "ellipsis_mask": 0, "new_axis_mask": 8,
                                           "shrink_axis_mask": 1, "offset": True}),
           WOp("CONCATENATION", [0, 0], [0], {"axis": -1, "fused_activation_function": "RELU"}),
           WOp("NON_MAX_SUPPRESSION_V5", [0], [0])]
    model = tflite.Model.GetRootAs(write_tflite(t, ops, [0], [2], description="rt"), 0)
    assert model.Version() == 3 and model.Description() == b"rt"
    assert model.BuffersLength() == 3 and model.Buffers(0).DataLength() == 0
    sg = model.Subgraphs(0)
    assert sg.InputsAsNumpy().tolist() == [0] and sg.OutputsAsNumpy().tolist() == [2]
    tw = sg.Tensors(1)
    assert tw.Name() == b"w" and tw.ShapeAsNumpy().tolist() == [2, 3, 3, 4] and tw.Type() == tflite.TensorType.INT8
    qp = tw.Quantization()
    assert qp.ScaleAsNumpy().tolist() == [0.5, 0.25] and qp.ZeroPointAsNumpy().tolist() == [0, 0]
    assert qp.QuantizedDimension() == 0
    buf = model.Buffers(tw.Buffer())
    assert np.array_equal(buf.DataAsNumpy().view(np.int8).reshape(w.shape), w)
    assert buf._tab.Vector(buf._tab.Offset(4)) % 16 == 0  # constant data is 16-byte aligned in the file
    assert sg.Tensors(2).Buffer() == 0 and sg.Tensors(2).Quantization() is None
    assert sg.Tensors(0).Quantization().QuantizedDimension() == 0

    def opts(i, cls):
        op = sg.Operators(i)
        o = cls()
        o.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
        return op, o

    op, o = opts(0, tflite.Conv2DOptions)
    assert op.BuiltinOptionsType() == tflite.BuiltinOptions.Conv2DOptions
    assert op.InputsAsNumpy().tolist() == [0, 1, -1]
    assert (o.Padding(), o.StrideW(), o.StrideH(), o.DilationWFactor(), o.DilationHFactor(),
            o.FusedActivationFunction()) == (tflite.Padding.VALID, 2, 3, 2, 1, tflite.ActivationFunctionType.RELU6)
    _, o = opts(1, tflite.DepthwiseConv2DOptions)
    assert (o.DepthMultiplier(), o.StrideW(), o.Padding()) == (3, 1, tflite.Padding.SAME)
    _, o = opts(2, tflite.FullyConnectedOptions)
    assert o.KeepNumDims() and o.WeightsFormat() == tflite.FullyConnectedOptionsWeightsFormat.DEFAULT
    _, o = opts(3, tflite.Pool2DOptions)
    assert (o.FilterWidth(), o.FilterHeight(), o.Padding(), o.StrideW()) == (5, 2, tflite.Padding.SAME, 1)
    assert opts(4, tflite.SoftmaxOptions)[1].Beta() == 0.25
    assert opts(5, tflite.ReducerOptions)[1].KeepDims()
    assert opts(6, tflite.ReshapeOptions)[1].NewShapeAsNumpy().tolist() == [1, -1]
    assert opts(7, tflite.SqueezeOptions)[1].SqueezeDimsAsNumpy().tolist() == [0, 2]
    _, o = opts(8, tflite.StridedSliceOptions)
    assert (o.BeginMask(), o.EndMask(), o.EllipsisMask(), o.NewAxisMask(), o.ShrinkAxisMask(), o.Offset()) == \
        (5, 2, 0, 8, 1, True)
    _, o = opts(9, tflite.ConcatenationOptions)
    assert (o.Axis(), o.FusedActivationFunction()) == (-1, tflite.ActivationFunctionType.RELU)
    last = sg.Operators(10)
    assert last.BuiltinOptionsType() == 0 and last.BuiltinOptions() is None
    codes = [model.OperatorCodes(sg.Operators(i).OpcodeIndex()) for i in range(sg.OperatorsLength())]
    assert [max(c.BuiltinCode(), c.DeprecatedBuiltinCode()) for c in codes][:2] == [
        tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.DEPTHWISE_CONV_2D]
    assert codes[10].BuiltinCode() == tflite.BuiltinOperator.NON_MAX_SUPPRESSION_V5


def test_writer_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown TFLite builtin"):
        write_tflite([q8("x", (1,))], [WOp("NOT_AN_OP", [0], [0])], [0], [0])
    with pytest.raises(ValueError, match="no field"):
        write_tflite([q8("x", (1,))], [WOp("ADD", [0, 0], [0], {"stride_w": 1})], [0], [0])
    with pytest.raises(ValueError, match="data size"):
        write_tflite([WTensor("c", (2, 2), "int8", np.zeros(3))], [], [], [0])


# --- oracle wrapper -----------------------------------------------------------------------------------


def test_oracle_unsupported_op_and_input_checks():
    m = one_op("NON_MAX_SUPPRESSION_V4", [WTensor("x", (1, 3), "float32"), WTensor("y", (1, 3), "float32")], 1)
    with pytest.raises(RuntimeError, match="failed to allocate"):
        run_tflm(m, [np.zeros((1, 3), np.float32)])
    r = TflmRunner(one_op("RELU", [q8("x", (2, 3)), q8("y", (2, 3))], 1))
    assert r.run([[1, -2, 3, -4, 5, 6]])[0].tolist() == [[1, -2, 3], [-3, 5, 6]]  # list reshaped; RELU at zp=-3
    with pytest.raises(TypeError):
        r.run([np.zeros((2, 3), np.float32)])
    with pytest.raises(ValueError):
        r.run([np.full((2, 3), 300)])


@needs_models
@pytest.mark.parametrize("name,expected", [("hello_world_int8", 1936), ("kws_ref_model", 24272),
                                           ("ad01_int8", 4632)])
def test_min_arena_matches_readme(name, expected):
    assert tflm_min_arena(MODELS / f"{name}.tflite") == expected


@needs_models
def test_min_arena_is_tight_and_batch_matches_single():
    path = MODELS / "kws_ref_model.tflite"
    xs = [[rand8(1, 49, 10, 1)] for _ in range(5)]
    batch = run_tflm_batch(path, xs)
    assert all(np.array_equal(b[0], run_tflm(path, x, arena_size=24272)[0]) for b, x in zip(batch, xs))
    with pytest.raises(RuntimeError):
        TflmRunner(path, arena_size=24271)
