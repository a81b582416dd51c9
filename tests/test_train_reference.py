"""Checks of the PyTorch training reference (tests/train_reference.py) itself, so it can serve as the oracle
for the generated training step: forward values against a plain numpy float forward written here (loops over
in-image taps, no torch) and against edgec's float reference / TFLite Micro on the int8 model, gradients
against central finite differences (float64), the adapter branch against a convolution with the merged
rank-r delta B @ A, and the MSE path with RELU6, MAX_POOL_2D and ADD on a small graph built here."""

from __future__ import annotations

import numpy as np
import pytest

from edgec.frontends.tflite_reader import read_tflite
from edgec.ir.graph import Graph, Op, Quant, Tensor
from edgec.ir.reference import run_float_all
from edgec.oracle.ir_export import graph_to_tflite
from edgec.oracle.tflm import run_tflm
from support import shared_model

# train_reference imports torch: only after the skip.
pytest.importorskip("torch", reason="the training reference needs PyTorch (pip install torch)")
from train_reference import adapter_output, tail_forward, tail_loss_and_grads

FD_REL_TOL = 1e-6

# --- plain numpy float forward (independent of the module under test) --------------------------------------


def np_weight(t: Tensor) -> np.ndarray:
    q = np.asarray(t.data, np.float64)
    s = np.asarray(t.quant.scale, np.float64)
    if t.quant.axis is None or s.size == 1:
        return q * s[0]
    return np.moveaxis(np.moveaxis(q, t.quant.axis, -1) * s, -1, t.quant.axis)


def np_bias(graph: Graph, op: Op, n: int) -> np.ndarray:
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return np.zeros(n)
    ws = np.asarray(graph.t(op.inputs[1]).quant.scale, np.float64)
    x_scale = float(graph.t(op.inputs[0]).quant.scale[0])
    return np.asarray(graph.t(op.inputs[2]).data, np.float64) * x_scale * np.broadcast_to(ws, (n,))


def out_and_pad(size: int, k: int, s: int, padding: str) -> tuple[int, int]:
    if padding == "VALID":
        return (size - k) // s + 1, 0
    out = -(-size // s)
    return out, max((out - 1) * s + k - size, 0) // 2


def taps(x: np.ndarray, kh: int, kw: int, attrs: dict):
    """(oy, ox, i, j, x[iy, ix]) for every in-image tap of every output pixel of x [H, W, C]."""
    h, w = x.shape[:2]
    sh, sw, pad = attrs.get("stride_h", 1), attrs.get("stride_w", 1), attrs.get("padding", "VALID")
    oh, ph = out_and_pad(h, kh, sh, pad)
    ow, pw = out_and_pad(w, kw, sw, pad)
    for oy in range(oh):
        for ox in range(ow):
            for i in range(kh):
                for j in range(kw):
                    iy, ix = oy * sh - ph + i, ox * sw - pw + j
                    if 0 <= iy < h and 0 <= ix < w:
                        yield oy, ox, i, j, x[iy, ix]


def out_hw(x: np.ndarray, kh: int, kw: int, attrs: dict) -> tuple[int, int]:
    pad = attrs.get("padding", "VALID")
    return (out_and_pad(x.shape[0], kh, attrs.get("stride_h", 1), pad)[0],
            out_and_pad(x.shape[1], kw, attrs.get("stride_w", 1), pad)[0])


def np_conv(x: np.ndarray, w: np.ndarray, attrs: dict) -> np.ndarray:
    """x [H, W, C], w [OC, KH, KW, C] -> [OH, OW, OC], no bias."""
    y = np.zeros(out_hw(x, w.shape[1], w.shape[2], attrs) + (w.shape[0],))
    for oy, ox, i, j, v in taps(x, w.shape[1], w.shape[2], attrs):
        y[oy, ox] += w[:, i, j, :] @ v
    return y


def np_depthwise(x: np.ndarray, w: np.ndarray, attrs: dict) -> np.ndarray:
    """x [H, W, C], w [1, KH, KW, C*M] -> [OH, OW, C*M]; output channel o reads input channel o // M."""
    m = attrs.get("depth_multiplier", 1)
    y = np.zeros(out_hw(x, w.shape[1], w.shape[2], attrs) + (w.shape[3],))
    for oy, ox, i, j, v in taps(x, w.shape[1], w.shape[2], attrs):
        y[oy, ox] += np.repeat(v, m) * w[0, i, j]
    return y


def np_pool(x: np.ndarray, attrs: dict, kind: str) -> np.ndarray:
    kh, kw = attrs["filter_h"], attrs["filter_w"]
    windows: dict[tuple[int, int], list[np.ndarray]] = {}
    for oy, ox, _, _, v in taps(x, kh, kw, attrs):
        windows.setdefault((oy, ox), []).append(v)
    y = np.zeros(out_hw(x, kh, kw, attrs) + (x.shape[2],))
    for (oy, ox), vs in windows.items():
        y[oy, ox] = np.max(vs, axis=0) if kind == "max" else np.mean(vs, axis=0)
    return y


def np_act(y: np.ndarray, act: str) -> np.ndarray:
    return {"NONE": y, "RELU": np.maximum(y, 0), "RELU6": np.clip(y, 0, 6)}[act]


def np_forward(graph: Graph, first_op: int, inputs: dict[int, np.ndarray], params: dict | None = None,
               pre: dict | None = None) -> dict[int, np.ndarray]:
    """Float64 forward of ops first_op.. with each trained layer's adapter merged into its weights:
    CONV_2D and FULLY_CONNECTED W + B @ A; DEPTHWISE_CONV_2D depthwise(W) + a full conv with B @ A.
    `pre` (if given) collects the pre-activation value of each conv/FC op by op index."""
    params = params or {}
    env = {k: np.asarray(v, np.float64) for k, v in inputs.items()}
    for idx in range(first_op, len(graph.ops)):
        op = graph.ops[idx]
        x = env[op.inputs[0]]
        out = tuple(graph.t(op.outputs[0]).shape)
        act = op.attrs.get("activation", "NONE")
        if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            w = np_weight(graph.t(op.inputs[1]))
            delta = params[idx][1] @ params[idx][0] if idx in params else None
            if op.type == "CONV_2D":
                y = np_conv(x[0], w if delta is None else w + delta.reshape(w.shape), op.attrs)
            elif op.type == "DEPTHWISE_CONV_2D":
                y = np_depthwise(x[0], w, op.attrs)
                if delta is not None:
                    y = y + np_conv(x[0], delta.reshape(w.shape[3], w.shape[1], w.shape[2], x.shape[3]), op.attrs)
            else:
                y = (w if delta is None else w + delta) @ x.reshape(-1)
            y = y + np_bias(graph, op, y.shape[-1])
            if pre is not None:
                pre[idx] = y
            y = np_act(y, act)
        elif op.type in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
            y = np_act(np_pool(x[0], op.attrs, "max" if op.type == "MAX_POOL_2D" else "mean"), act)
        elif op.type == "MEAN":
            axes = tuple(int(a) % x.ndim for a in np.asarray(graph.t(op.inputs[1]).data).reshape(-1))
            y = x.mean(axis=axes, keepdims=bool(op.attrs.get("keep_dims")))
        elif op.type == "RESHAPE":
            y = x
        elif op.type == "ADD":
            y = np_act(x + env[op.inputs[1]], act)
        elif op.type == "SOFTMAX":
            e = np.exp(x - x.max())
            y = e / e.sum()
        else:
            raise AssertionError(op.type)
        env[op.outputs[0]] = np.asarray(y).reshape(out)
    return env


# --- helpers -----------------------------------------------------------------------------------------------


def random_params(graph: Graph, ranks: dict[int, int], rng: np.random.Generator, scale: float = 0.05) -> dict:
    params = {}
    for idx, r in ranks.items():
        op = graph.ops[idx]
        w = graph.t(op.inputs[1]).shape
        c = graph.t(op.inputs[0]).shape[-1]
        if op.type == "FULLY_CONNECTED":
            k, oc = w[1], w[0]
        elif op.type == "CONV_2D":
            k, oc = w[1] * w[2] * w[3], w[0]
        else:
            k, oc = w[1] * w[2] * c, w[3]
        params[idx] = (rng.normal(0, scale, (r, k)), rng.normal(0, scale, (oc, r)))
    return params


def assert_close(got: np.ndarray, want: np.ndarray, what: str, rel: float = 1e-10) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-300)
    assert err < rel, f"{what}: max error {err:.3g} of the largest magnitude (tolerance {rel:g})"


def fd_check(graph: Graph, first_op: int, params: dict, inputs: dict, target, loss: str,
             rng: np.random.Generator, per_tensor: int = 3, eps: float = 1e-6) -> int:
    """Central finite differences on `per_tensor` entries of each A, B and tail input (entries whose gradient
    is at least 10 % of the tensor's largest); returns the number of entries checked."""
    _, gp, gx = tail_loss_and_grads(graph, first_op, params, inputs, target, loss)

    def loss_at(p: dict, x: dict) -> float:
        return tail_loss_and_grads(graph, first_op, p, x, target, loss)[0]

    cases = [(("param", idx, k), params[idx][k], gp[idx][k]) for idx in params for k in (0, 1)]
    cases += [(("input", tid, 0), inputs[tid], gx[tid]) for tid in inputs]
    checked = 0
    for (kind, key, k), value, grad in cases:
        assert grad.shape == np.shape(value), f"{kind} {key}/{k}: gradient shape {grad.shape}"
        assert np.abs(grad).max() > 0, f"{kind} {key}/{k}: gradient is all zero"
        big = np.flatnonzero(np.abs(grad) >= 0.1 * np.abs(grad).max())
        for flat in rng.choice(big, size=min(per_tensor, big.size), replace=False):
            vals = []
            for sign in (1, -1):
                v = np.array(value, np.float64)
                v.reshape(-1)[flat] += sign * eps
                if kind == "param":
                    p = dict(params)
                    p[key] = (v, params[key][1]) if k == 0 else (params[key][0], v)
                    vals.append(loss_at(p, inputs))
                else:
                    vals.append(loss_at(params, {**inputs, key: v}))
            fd = (vals[0] - vals[1]) / (2 * eps)
            g = grad.reshape(-1)[flat]
            rel = abs(fd - g) / max(abs(fd), abs(g))
            assert rel < FD_REL_TOL, f"{kind} {key}/{'AB'[k] if kind == 'param' else 'x'}[{flat}]: autograd {g:.10g}, " \
                                     f"finite difference {fd:.10g}, relative error {rel:.3g}"
            checked += 1
    return checked


# --- the KWS model (ops 5..12: depthwise, conv 1x1, depthwise, conv 1x1, avgpool, reshape, FC, softmax) ------

KWS_RANKS = {5: 4, 8: 3, 11: 2}


@pytest.fixture(scope="module")
def kws():
    graph = read_tflite(shared_model("tflite/kws_ref_model.tflite"))
    assert [graph.ops[i].type for i in KWS_RANKS] == ["DEPTHWISE_CONV_2D", "CONV_2D", "FULLY_CONNECTED"]
    assert graph.ops[-1].type == "SOFTMAX"
    tid = graph.ops[5].inputs[0]
    t = graph.t(tid)
    q = np.random.default_rng(0).integers(-128, 128, t.shape)  # exactly representable in the int8 tensor
    x = (q - t.zero_point) * np.float64(t.scale)
    return graph, tid, x


def test_kws_forward_matches_numpy_and_int8_model(kws) -> None:
    graph, tid, x = kws
    logits_id = graph.ops[-1].inputs[0]
    rng = np.random.default_rng(1)
    zero = {i: (np.zeros_like(a), np.zeros_like(b)) for i, (a, b) in random_params(graph, KWS_RANKS, rng).items()}
    got = tail_forward(graph, 5, zero, {tid: x})
    want = np_forward(graph, 5, {tid: x})
    for op in graph.ops[5:]:
        assert_close(got[op.outputs[0]], want[op.outputs[0]], f"{op.describe()} output, zero adapters")

    # edgec's float reference interpreter on a float copy of the tail (weights dequantized): float32 accuracy.
    tensors = [Tensor(t.name, t.shape, "float32") if t.data is None else t for t in graph.tensors]
    for op in graph.ops[5:]:
        if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            w = graph.t(op.inputs[1])
            tensors[op.inputs[1]] = Tensor(w.name, w.shape, "float32", data=np_weight(w).astype(np.float32))
            n = graph.t(op.outputs[0]).shape[-1]
            tensors[op.inputs[2]] = Tensor("bias", (n,), "float32", data=np_bias(graph, op, n).astype(np.float32))
    float_graph = Graph(tensors, graph.ops[5:], [tid], [logits_id])
    ref = run_float_all(float_graph, [x.astype(np.float32)])
    assert_close(got[logits_id], ref[logits_id], "logits vs edgec.ir.reference (float32)", rel=1e-5)

    # TFLite Micro on the int8 model, only loosely (int8 activations at every tail layer): the tail input is
    # the prefix's own int8 activation (TFLM's, dequantized) for model inputs N(zero point, 20^2); uniform
    # int8 values overflow the calibrated activation ranges (SQNR ~15 dB instead of 28-42 dB).
    model = graph_to_tflite(graph, extra_outputs=[tid, logits_id])
    inp, act, lt, pt = graph.t(graph.inputs[0]), graph.t(tid), graph.t(logits_id), graph.t(graph.outputs[0])
    for seed in range(5):
        rng_in = np.random.default_rng(100 + seed)
        model_in = np.clip(np.round(rng_in.normal(inp.zero_point, 20, inp.shape)), -128, 127).astype(np.int8)
        probs_q, act_q, logits_q = run_tflm(model, [model_in])
        x_int8 = (act_q.astype(np.float64).reshape(act.shape) - act.zero_point) * act.scale
        fl = tail_forward(graph, 5, {}, {tid: x_int8})
        logits = np.clip(fl[logits_id], (-128 - lt.zero_point) * lt.scale, (127 - lt.zero_point) * lt.scale)
        int8_logits = (logits_q.astype(np.float64).reshape(lt.shape) - lt.zero_point) * lt.scale
        int8_probs = (probs_q.astype(np.float64).reshape(pt.shape) - pt.zero_point) * pt.scale
        sqnr = 10 * np.log10((logits ** 2).sum() / ((int8_logits - logits) ** 2).sum())
        assert sqnr > 25, f"seed {seed}: int8 logits vs float reference: {sqnr:.1f} dB"
        assert int8_logits.argmax() == logits.argmax()
        assert np.abs(int8_probs - fl[graph.outputs[0]]).max() < 0.05

    # Non-zero adapters: the same as the numpy forward with every delta B @ A merged.
    params = random_params(graph, KWS_RANKS, rng)
    got = tail_forward(graph, 5, params, {tid: x})
    want = np_forward(graph, 5, {tid: x}, params)
    assert_close(got[logits_id], want[logits_id], "logits with adapters vs merged numpy forward")
    assert np.abs(got[logits_id] - ref[logits_id]).max() > 0.01 * np.ptp(ref[logits_id]), "adapters change nothing"

    loss, _, _ = tail_loss_and_grads(graph, 5, params, {tid: x}, 3, "xent")
    z = want[logits_id].reshape(-1)
    assert loss == pytest.approx(np.log(np.exp(z - z.max()).sum()) + z.max() - z[3], rel=1e-12)


def test_kws_gradients_by_finite_differences(kws) -> None:
    graph, tid, x = kws
    rng = np.random.default_rng(2)
    params = random_params(graph, KWS_RANKS, rng)
    _, gp, gx = tail_loss_and_grads(graph, 5, params, {tid: x}, 7, "xent")
    assert set(gp) == set(KWS_RANKS) and set(gx) == {tid}
    assert fd_check(graph, 5, params, {tid: x}, 7, "xent", rng, eps=1e-5) == 3 * 7


def test_kws_refusals(kws) -> None:
    graph, tid, x = kws
    params = random_params(graph, KWS_RANKS, np.random.default_rng(3))
    with pytest.raises(ValueError, match="mse"):
        tail_loss_and_grads(graph, 5, params, {tid: x}, np.zeros(12), "mse")
    with pytest.raises(ValueError, match="tail reads"):
        tail_loss_and_grads(graph, 6, {}, {tid: x}, 0, "xent")
    with pytest.raises(ValueError, match=r"expected A \[r, 576\]"):
        tail_loss_and_grads(graph, 5, {5: (np.zeros((2, 64)), np.zeros((64, 2)))}, {tid: x}, 0, "xent")
    with pytest.raises(ValueError, match="adapters are trained on"):
        tail_loss_and_grads(graph, 5, {9: (np.zeros((2, 64)), np.zeros((64, 2)))}, {tid: x}, 0, "xent")


# --- small graphs built here --------------------------------------------------------------------------------


class Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.tensors: list[Tensor] = []
        self.ops: list[Op] = []

    def _add(self, t: Tensor) -> int:
        self.tensors.append(t)
        return len(self.tensors) - 1

    def act(self, name: str, shape: tuple, scale: float = 0.05, zp: int = 0) -> int:
        return self._add(Tensor(name, shape, "int8", Quant(np.array([scale], np.float32), np.array([zp]))))

    def weight(self, name: str, shape: tuple, axis: int | None, lo: float = 0.005, hi: float = 0.02) -> int:
        n = 1 if axis is None else shape[axis]
        q = self.rng.integers(-127, 128, shape).astype(np.int8)
        quant = Quant(self.rng.uniform(lo, hi, n).astype(np.float32), np.zeros(n, np.int64), axis)
        return self._add(Tensor(name, shape, "int8", quant, data=q))

    def bias(self, name: str, n: int) -> int:
        return self._add(Tensor(name, (n,), "int32", data=self.rng.integers(-3000, 3000, n).astype(np.int32)))

    def const_i32(self, name: str, values: list[int]) -> int:
        return self._add(Tensor(name, (len(values),), "int32", data=np.array(values, np.int32)))

    def op(self, kind: str, ins: list[int], out: int, **attrs) -> None:
        self.ops.append(Op(kind, ins, [out], attrs, index=len(self.ops), name=self.tensors[out].name))

    def graph(self, inputs: list[int]) -> Graph:
        return Graph(self.tensors, self.ops, inputs, [self.ops[-1].outputs[0]], source="test graph")


def conv_attrs(stride: int = 1, padding: str = "SAME", act: str = "NONE", **more) -> dict:
    return dict(padding=padding, stride_h=stride, stride_w=stride, dilation_h=1, dilation_w=1, activation=act,
                **more)


def small_graph(last_softmax: bool = False) -> tuple[Graph, dict[int, int]]:
    """x [1,6,7,3] -> CONV_2D 3x3 SAME RELU6 (adapter) -> MAX_POOL 2x2/2 -> DEPTHWISE 3x3 x2 SAME RELU (adapter)
    -> CONV_2D 1x1 -> ADD(s) RELU6 -> ADD(pool) -> AVERAGE_POOL 3x3/2 SAME -> MEAN(1,2) keep -> RESHAPE
    -> FULLY_CONNECTED (adapter) [-> SOFTMAX]; a second tail input s [1,3,3,4]."""
    b = Builder(10)
    x, s = b.act("x", (1, 6, 7, 3)), b.act("s", (1, 3, 3, 4))
    c1 = b.act("c1", (1, 6, 7, 4))
    b.op("CONV_2D", [x, b.weight("w1", (4, 3, 3, 3), 0, 0.002, 0.006), b.bias("b1", 4)], c1, **conv_attrs(act="RELU6"))
    p1 = b.act("p1", (1, 3, 3, 4))
    b.op("MAX_POOL_2D", [c1], p1, padding="VALID", stride_h=2, stride_w=2, filter_h=2, filter_w=2, activation="NONE")
    d1 = b.act("d1", (1, 3, 3, 8))
    b.op("DEPTHWISE_CONV_2D", [p1, b.weight("w2", (1, 3, 3, 8), 3, 0.002, 0.008), b.bias("b2", 8)], d1,
         **conv_attrs(act="RELU", depth_multiplier=2))
    c2 = b.act("c2", (1, 3, 3, 4))
    b.op("CONV_2D", [d1, b.weight("w3", (4, 1, 1, 8), 0), b.bias("b3", 4)], c2, **conv_attrs())
    a1 = b.act("a1", (1, 3, 3, 4))
    b.op("ADD", [c2, s], a1, activation="RELU6")
    a2 = b.act("a2", (1, 3, 3, 4))
    b.op("ADD", [a1, p1], a2, activation="NONE")
    ap = b.act("ap", (1, 2, 2, 4))
    b.op("AVERAGE_POOL_2D", [a2], ap, padding="SAME", stride_h=2, stride_w=2, filter_h=3, filter_w=3,
         activation="NONE")
    m = b.act("m", (1, 1, 1, 4))
    b.op("MEAN", [ap, b.const_i32("axes", [1, 2])], m, keep_dims=True)
    r = b.act("r", (1, 4))
    b.op("RESHAPE", [m, b.const_i32("shape", [1, 4])], r)
    y = b.act("y", (1, 3))
    b.op("FULLY_CONNECTED", [r, b.weight("w4", (3, 4), None, 0.004, 0.006), b.bias("b4", 3)], y, activation="NONE")
    if last_softmax:
        b.op("SOFTMAX", [y], b.act("p", (1, 3)), beta=1.0)
    return b.graph([x, s]), {0: 2, 2: 3, 9: 2}


def small_inputs(graph: Graph, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {tid: rng.uniform(-3, 3, graph.t(tid).shape) for tid in graph.inputs}


def test_small_graph_mse_relu6_maxpool_add() -> None:
    graph, ranks = small_graph()
    rng = np.random.default_rng(4)
    params = random_params(graph, ranks, rng, scale=0.3)
    inputs = small_inputs(graph, 5)
    target = rng.normal(0, 1, (1, 3))
    pre: dict[int, np.ndarray] = {}
    want = np_forward(graph, 0, inputs, params, pre)
    # The case exercises both clamps of RELU6 and the adapters matter.
    assert (pre[0] > 6).any() and (pre[0] < 0).any() and ((pre[0] > 0) & (pre[0] < 6)).any()
    got = tail_forward(graph, 0, params, inputs)
    for op in graph.ops:
        assert_close(got[op.outputs[0]], want[op.outputs[0]], f"{op.describe()} output")
    base = np_forward(graph, 0, inputs)
    assert np.abs(base[graph.outputs[0]] - want[graph.outputs[0]]).max() > 0.05

    loss, _, gx = tail_loss_and_grads(graph, 0, params, inputs, target, "mse")
    assert loss == pytest.approx(np.mean((want[graph.outputs[0]] - target) ** 2), rel=1e-12)
    assert set(gx) == set(graph.inputs)
    assert fd_check(graph, 0, params, inputs, target, "mse", rng) == 3 * (2 * len(ranks) + 2)
    # A target given flat is the same.
    assert tail_loss_and_grads(graph, 0, params, inputs, target.reshape(-1), "mse")[0] == loss

    # xent on a graph that does not end with SOFTMAX takes the last output as the logits; with a final
    # SOFTMAX its input: both give the same loss and gradients.
    loss_x, gp_x, _ = tail_loss_and_grads(graph, 0, params, inputs, 1, "xent")
    z = want[graph.outputs[0]].reshape(-1)
    assert loss_x == pytest.approx(np.log(np.exp(z).sum()) - z[1], rel=1e-12)
    graph_sm, _ = small_graph(last_softmax=True)
    loss_sm, gp_sm, _ = tail_loss_and_grads(graph_sm, 0, params, inputs, 1, "xent")
    assert loss_sm == loss_x
    for idx in ranks:
        assert_close(gp_sm[idx][0], gp_x[idx][0], f"op {idx} dL/dA")
        assert_close(gp_sm[idx][1], gp_x[idx][1], f"op {idx} dL/dB")
    assert fd_check(graph, 0, params, inputs, 1, "xent", rng, per_tensor=1) == 2 * len(ranks) + 2


def test_small_graph_tail_from_middle() -> None:
    """first_op in the middle: the tail reads two tensors computed by the prefix (p1 twice: DEPTHWISE and ADD)
    and the second graph input."""
    graph, _ = small_graph()
    inputs = small_inputs(graph, 6)
    full = np_forward(graph, 0, inputs)
    p1 = graph.ops[1].outputs[0]
    tail_in = {p1: full[p1], graph.inputs[1]: inputs[graph.inputs[1]]}
    rng = np.random.default_rng(7)
    params = random_params(graph, {2: 3, 3: 2}, rng, scale=0.3)
    got = tail_forward(graph, 2, params, tail_in)
    want = np_forward(graph, 2, tail_in, params)
    assert_close(got[graph.outputs[0]], want[graph.outputs[0]], "output")
    assert fd_check(graph, 2, params, tail_in, np.ones(3), "mse", rng, per_tensor=2) == 2 * (4 + 2)


def test_adapter_branch_is_a_rank_r_delta_convolution() -> None:
    """Torch-free check of the adapter branch: a CONV_2D / DEPTHWISE_CONV_2D adapter is the convolution with
    weights (B @ A) reshaped to [OC, KH, KW, C] (for depthwise a full convolution over all input channels), at
    the layer's stride and (asymmetric SAME) padding; FULLY_CONNECTED is B @ A @ x. And A's columns are in NHWC
    tap order: A[:, (i*KW + j)*C + c] reads tap (i, j) of input channel c."""
    b = Builder(11)
    x = b.act("x", (1, 8, 9, 3))
    y1 = b.act("y1", (1, 4, 5, 5))
    b.op("CONV_2D", [x, b.weight("w1", (5, 3, 3, 3), 0), b.bias("b1", 5)], y1, **conv_attrs(stride=2))
    y2 = b.act("y2", (1, 4, 5, 6))
    b.op("DEPTHWISE_CONV_2D", [x, b.weight("w2", (1, 3, 2, 6), 3), b.bias("b2", 6)], y2,
         **conv_attrs(stride=2, depth_multiplier=2))
    y3 = b.act("y3", (1, 3, 4, 6))
    b.op("DEPTHWISE_CONV_2D", [x, b.weight("w3", (1, 4, 3, 6), 3), -1], y3,
         **conv_attrs(stride=2, padding="VALID", depth_multiplier=2))
    y4 = b.act("y4", (1, 7))
    b.op("FULLY_CONNECTED", [x, b.weight("w4", (7, 216), 0), b.bias("b4", 7)], y4, activation="NONE")
    graph = b.graph([x])
    rng = np.random.default_rng(8)
    xv = rng.normal(0, 1, graph.t(x).shape)
    for idx, r in {0: 3, 1: 4, 2: 2, 3: 3}.items():
        (a, bb), = random_params(graph, {idx: r}, rng, scale=1.0).values()
        got = adapter_output(graph, idx, a, bb, xv)
        op = graph.ops[idx]
        if op.type == "FULLY_CONNECTED":
            want = (bb @ a @ xv.reshape(-1)).reshape(graph.t(op.outputs[0]).shape)
        else:
            kh, kw = graph.t(op.inputs[1]).shape[1:3]
            want = np_conv(xv[0], (bb @ a).reshape(bb.shape[0], kh, kw, 3), op.attrs)[None]
        assert_close(got, want, f"{op.describe()} adapter branch")

    # One-hot A row and B column: the adapter output at (oy, ox) is the input at tap (i, j), channel c.
    op = graph.ops[0]
    _, ph = out_and_pad(8, 3, 2, "SAME")
    _, pw = out_and_pad(9, 3, 2, "SAME")
    assert (ph, pw) == (0, 1)  # asymmetric: SAME pads 0/1 rows and 1/1 columns here
    for i, j, c in [(0, 0, 0), (2, 1, 2), (1, 2, 1)]:
        a = np.zeros((1, 27))
        a[0, (i * 3 + j) * 3 + c] = 1
        bb = np.zeros((5, 1))
        bb[4, 0] = 1
        got = adapter_output(graph, 0, a, bb, xv)[0]
        want = np.zeros((4, 5))
        for oy in range(4):
            for ox in range(5):
                iy, ix = oy * 2 - ph + i, ox * 2 - pw + j
                want[oy, ox] = xv[0, iy, ix, c] if 0 <= iy < 8 and 0 <= ix < 9 else 0.0
        assert np.array_equal(got[..., 4], want) and not got[..., :4].any(), (op.describe(), i, j, c)

    # Through the full forward: base + adapter before the fused activation (no activation here).
    params = {0: random_params(graph, {0: 2}, rng)[0]}
    fwd = tail_forward(graph, 0, params, {x: xv})
    base = tail_forward(graph, 0, {}, {x: xv})
    assert_close(fwd[y1] - base[y1], adapter_output(graph, 0, *params[0], xv), "forward - base")


def test_refusals() -> None:
    graph, _ = small_graph(last_softmax=True)
    inputs = small_inputs(graph, 9)
    with pytest.raises(ValueError, match="mse loss on a graph ending with SOFTMAX"):
        tail_loss_and_grads(graph, 0, {}, inputs, np.zeros(3), "mse")
    with pytest.raises(ValueError, match="loss 'l1'"):
        tail_loss_and_grads(graph, 0, {}, inputs, 0, "l1")
    with pytest.raises(ValueError, match="target class 3"):
        tail_loss_and_grads(graph, 0, {}, inputs, 3, "xent")
    with pytest.raises(ValueError, match="shape"):
        tail_loss_and_grads(graph, 0, {}, {k: v[..., :1] for k, v in inputs.items()}, 0, "xent")

    # SOFTMAX not last, an unsupported op, a constant ADD operand, a fused activation not in NONE/RELU/RELU6.
    b = Builder(12)
    x = b.act("x", (1, 4))
    sm = b.act("sm", (1, 4))
    b.op("SOFTMAX", [x], sm, beta=1.0)
    y = b.act("y", (1, 2))
    b.op("FULLY_CONNECTED", [sm, b.weight("w", (2, 4), 0), -1], y, activation="NONE")
    with pytest.raises(ValueError, match="SOFTMAX must be the last op"):
        tail_loss_and_grads(b.graph([x]), 0, {}, {x: np.ones((1, 4))}, 0, "xent")
    for kind, ins, attrs, match in [("TANH", ["x"], {}, "not supported in a training tail"),
                                    ("ADD", ["x", "const"], {"activation": "NONE"}, "two non-constant inputs"),
                                    ("ADD", ["x", "x"], {"activation": "TANH"}, "fused activation TANH")]:
        b = Builder(13)
        x = b.act("x", (1, 4))
        ins = [x if i == "x" else b.weight("c", (1, 4), None) for i in ins]
        b.op(kind, ins, b.act("y", (1, 4)), **attrs)
        with pytest.raises(ValueError, match=match):
            tail_loss_and_grads(b.graph([x]), 0, {}, {x: np.ones((1, 4))}, np.zeros(4), "mse")
