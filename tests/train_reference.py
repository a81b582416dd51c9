"""PyTorch (float64, autograd) reference for on-device adapter training: the loss and gradients of the float
"tail" of a frozen int8 model.

The generated training step runs the int8 model up to the first trained layer, dequantizes that activation,
then runs the rest of the graph (the tail) in float with the frozen weights dequantized, plus a LoRA branch on
each trained layer, and backpropagates. This module computes the same thing independently with torch autograd,
as the oracle for tests (tests/test_train_reference.py checks the oracle itself).

Semantics (TFLite's, as edgec/ir/reference.py implements them; tensors NHWC with batch 1):
- Frozen weights: W = int8 data * per-channel scale (quant.scale along quant.axis, zero point 0); bias = int32
  data * input_scale * weight_scale[c]. CONV_2D weights [OC, KH, KW, C]; DEPTHWISE_CONV_2D [1, KH, KW, OC]
  (output channel o reads input channel o // depth_multiplier); FULLY_CONNECTED [O, K] (input flattened into
  rows of K). Padding SAME / VALID by TFLite's rule (SAME may pad one more at the end). Dilation 1 only.
- Trained layers (params[op_index] = (A, B)): y = act(base(x) + adapter(x)). FULLY_CONNECTED: adapter(x) =
  B @ (A @ x), A [r, K], B [O, r]. CONV_2D and DEPTHWISE_CONV_2D: a full convolution (all input channels, also
  for depthwise) with filters A reshaped to [r, KH, KW, C] (A[:, (i*KW + j)*C + c]) at the layer's stride and
  padding, then B [OC, r] as a 1x1 convolution.
- Other ops: AVERAGE_POOL_2D (mean over the in-image taps), MAX_POOL_2D, MEAN (axes from its constant input,
  keep_dims), RESHAPE (to the output tensor's shape), ADD (two non-constant inputs, fused activation), SOFTMAX
  (last op only, beta 1). Anything else raises ValueError.
- Loss "xent": cross-entropy of softmax(z) with an integer class, z = the final SOFTMAX's input (or the last
  op's output when the graph does not end with SOFTMAX), flattened. "mse": mean of (y - target)^2 over the
  last op's output (refused when the last op is SOFTMAX).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edgec.ir.graph import Graph, Op, Tensor

ADAPTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
TAIL_OPS = ADAPTED_OPS + ("AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN", "RESHAPE", "ADD", "SOFTMAX")
_DT = torch.float64

Params = dict[int, tuple[np.ndarray, np.ndarray]]


def _err(op_index: int, op: Op, msg: str) -> ValueError:
    return ValueError(f"op {op_index} {op.type} ('{op.name}'): {msg}")


# --- frozen weights --------------------------------------------------------------------------------------


def frozen_weight(t: Tensor) -> np.ndarray:
    """int8 weights times their scales (per tensor, or per channel along quant.axis), float64."""
    if t.data is None or t.dtype != "int8" or t.quant is None:
        raise ValueError(f"weight '{t.name}' must be a constant int8 tensor with quantization parameters")
    if np.any(np.asarray(t.quant.zero_point) != 0):
        raise ValueError(f"weight '{t.name}' has a non-zero zero point")
    q = np.asarray(t.data, np.float64).reshape(t.shape)
    scale = np.asarray(t.quant.scale, np.float32).astype(np.float64).reshape(-1)
    if t.quant.axis is None or scale.size == 1:
        return q * scale[0]
    shape = [1] * q.ndim
    shape[t.quant.axis] = -1
    return q * scale.reshape(shape)


def frozen_bias(graph: Graph, op: Op, channels: int) -> np.ndarray | None:
    """int32 bias * input_scale * weight_scale[c] (float64, [channels]); None when the op has no bias."""
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return None
    b, x, w = graph.t(op.inputs[2]), graph.t(op.inputs[0]), graph.t(op.inputs[1])
    if b.data is None or b.dtype != "int32":
        raise ValueError(f"bias '{b.name}' must be a constant int32 tensor")
    if x.quant is None:
        raise ValueError(f"input '{x.name}' has no quantization parameters (needed for the bias scale)")
    ws = np.asarray(w.quant.scale, np.float32).astype(np.float64).reshape(-1)
    ws = np.broadcast_to(ws, (channels,)) if ws.size == 1 else ws
    return np.asarray(b.data, np.float64).reshape(-1) * float(np.float32(x.scale)) * ws


# --- NHWC helpers ------------------------------------------------------------------------------------------


def tflite_padding(size: int, k: int, stride: int, padding: str) -> tuple[int, int, int]:
    """(output size, pad before, pad after) by TFLite's rule, dilation 1."""
    if padding == "SAME":
        out = (size + stride - 1) // stride
        total = max((out - 1) * stride + k - size, 0)
        return out, total // 2, total - total // 2
    if padding == "VALID":
        return (size - k + stride) // stride, 0, 0
    raise ValueError(f"padding {padding!r} (supported: SAME, VALID)")


def _nchw_padded(x: torch.Tensor, attrs: dict, kh: int, kw: int, value: float = 0.0) -> torch.Tensor:
    """NHWC [1, H, W, C] -> NCHW padded as TFLite pads for this window (possibly one more at the end)."""
    _, h, w, _ = x.shape
    pad = attrs.get("padding", "VALID")
    _, ph0, ph1 = tflite_padding(h, kh, attrs.get("stride_h", 1), pad)
    _, pw0, pw1 = tflite_padding(w, kw, attrs.get("stride_w", 1), pad)
    return F.pad(x.permute(0, 3, 1, 2), (pw0, pw1, ph0, ph1), value=value)


def _nhwc(y: torch.Tensor) -> torch.Tensor:
    return y.permute(0, 2, 3, 1)


def _stride(attrs: dict) -> tuple[int, int]:
    return attrs.get("stride_h", 1), attrs.get("stride_w", 1)


def _activation(y: torch.Tensor, op_index: int, op: Op) -> torch.Tensor:
    act = op.attrs.get("activation", "NONE")
    if act == "NONE":
        return y
    if act == "RELU":
        return torch.relu(y)
    if act == "RELU6":
        return torch.clamp(y, 0.0, 6.0)
    raise _err(op_index, op, f"fused activation {act} (supported: NONE, RELU, RELU6)")


def _check_conv_attrs(op_index: int, op: Op) -> None:
    if op.attrs.get("dilation_h", 1) != 1 or op.attrs.get("dilation_w", 1) != 1:
        raise _err(op_index, op, "dilation other than 1")


# --- the adapter branch ----------------------------------------------------------------------------------


def _adapter(graph: Graph, op_index: int, op: Op, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor
             ) -> torch.Tensor:
    """The LoRA branch of a trained layer for input x (NHWC, or any shape for FULLY_CONNECTED), before the
    fused activation, shaped like the op's output."""
    w = graph.t(op.inputs[1])
    r = a.shape[0]
    if op.type == "FULLY_CONNECTED":
        k = w.shape[-1]
        rows = x.reshape(-1, k)
        return ((rows @ a.T) @ b.T).reshape(graph.t(op.outputs[0]).shape)
    kh, kw = w.shape[1], w.shape[2]
    c = x.shape[-1]
    filters = a.reshape(r, kh, kw, c).permute(0, 3, 1, 2)  # [r, C, KH, KW]
    t = F.conv2d(_nchw_padded(x, op.attrs, kh, kw), filters, stride=_stride(op.attrs))  # [1, r, OH, OW]
    return _nhwc(torch.einsum("or,nrhw->nohw", b, t))


def _check_params(graph: Graph, first_op: int, params: Params) -> None:
    for idx, (a, b) in params.items():
        if not first_op <= idx < len(graph.ops):
            raise ValueError(f"params for op {idx}: not in the tail (ops {first_op}..{len(graph.ops) - 1})")
        op = graph.ops[idx]
        if op.type not in ADAPTED_OPS:
            raise _err(idx, op, f"adapters are trained on {', '.join(ADAPTED_OPS)} only")
        w = graph.t(op.inputs[1]).shape
        x = graph.t(op.inputs[0]).shape
        if op.type == "FULLY_CONNECTED":
            k, oc = w[1], w[0]
        elif op.type == "CONV_2D":
            k, oc = w[1] * w[2] * w[3], w[0]
        else:
            k, oc = w[1] * w[2] * x[-1], w[3]
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != k or b.shape != (oc, a.shape[0]):
            raise _err(idx, op, f"A {list(a.shape)}, B {list(b.shape)}; expected A [r, {k}], B [{oc}, r]")


# --- forward -----------------------------------------------------------------------------------------------


def tail_inputs_of(graph: Graph, first_op: int) -> list[int]:
    """The non-constant tensors the tail reads that no tail op produces, in first-use order."""
    produced: set[int] = set()
    need: list[int] = []
    for op in graph.ops[first_op:]:
        for tid in op.inputs:
            if tid >= 0 and not graph.t(tid).is_const and tid not in produced and tid not in need:
                need.append(tid)
        produced.update(op.outputs)
    return need


def _saturate(y: torch.Tensor, t: Tensor) -> torch.Tensor:
    """Clamp to the range the int8 output tensor can hold (the generated training step does the same)."""
    if t.quant is None or t.dtype != "int8":
        return y
    lo, hi = (float(np.float32(q - t.zero_point) * np.float32(t.scale)) for q in (-128, 127))
    return torch.clamp(y, lo, hi)


def _forward(graph: Graph, first_op: int, params: dict[int, tuple[torch.Tensor, torch.Tensor]],
             env: dict[int, torch.Tensor], saturate: bool = False) -> dict[int, torch.Tensor]:
    """Runs the tail on env (tail inputs as float64 torch tensors); returns env with every tail output.
    `saturate`: outputs clamped to their int8 tensors' ranges."""
    n_ops = len(graph.ops)
    for idx in range(first_op, n_ops):
        op = graph.ops[idx]
        if op.type not in TAIL_OPS:
            raise _err(idx, op, f"not supported in a training tail (supported: {', '.join(TAIL_OPS)})")
        x = env[op.inputs[0]]
        out = graph.t(op.outputs[0])
        if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            _check_conv_attrs(idx, op)
            if x.ndim != 4 or x.shape[0] != 1:
                raise _err(idx, op, f"input shape {list(x.shape)}; expected [1, H, W, C]")
            w = torch.tensor(frozen_weight(graph.t(op.inputs[1])), dtype=_DT)
            kh, kw = w.shape[1], w.shape[2]
            xp = _nchw_padded(x, op.attrs, kh, kw)
            if op.type == "CONV_2D":
                if w.shape[3] != x.shape[3]:
                    raise _err(idx, op, f"filter {list(w.shape)} for input depth {x.shape[3]} (groups=1 only)")
                y = F.conv2d(xp, w.permute(0, 3, 1, 2), stride=_stride(op.attrs))
            else:
                c, m = x.shape[3], op.attrs.get("depth_multiplier", 1)
                if w.shape[0] != 1 or w.shape[3] != c * m:
                    raise _err(idx, op, f"filter {list(w.shape)} for input depth {c} and depth_multiplier {m}")
                # [1, KH, KW, C*M] -> [C*M, 1, KH, KW]; groups=C: output channel o reads input channel o // M.
                y = F.conv2d(xp, w.permute(3, 0, 1, 2), stride=_stride(op.attrs), groups=c)
            y = _nhwc(y)
            bias = frozen_bias(graph, op, y.shape[-1])
            if bias is not None:
                y = y + torch.tensor(bias, dtype=_DT)
            if idx in params:
                y = y + _adapter(graph, idx, op, x, *params[idx])
            y = _activation(y, idx, op)
        elif op.type == "FULLY_CONNECTED":
            w = torch.tensor(frozen_weight(graph.t(op.inputs[1])), dtype=_DT)
            if w.ndim != 2 or x.numel() % w.shape[1]:
                raise _err(idx, op, f"input {list(x.shape)} does not flatten into rows of {w.shape[1]}")
            y = x.reshape(-1, w.shape[1]) @ w.T
            bias = frozen_bias(graph, op, w.shape[0])
            if bias is not None:
                y = y + torch.tensor(bias, dtype=_DT)
            if idx in params:
                y = y + _adapter(graph, idx, op, x, *params[idx]).reshape(y.shape)
            y = _activation(y, idx, op)
        elif op.type in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
            kh, kw = op.attrs.get("filter_h", 1), op.attrs.get("filter_w", 1)
            if op.type == "MAX_POOL_2D":
                y = F.max_pool2d(_nchw_padded(x, op.attrs, kh, kw, -np.inf), (kh, kw), _stride(op.attrs))
            else:  # sum over the window / number of in-image taps (TFLite divides by the latter)
                total = F.avg_pool2d(_nchw_padded(x, op.attrs, kh, kw), (kh, kw), _stride(op.attrs),
                                     divisor_override=1)
                ones = torch.ones((1,) + tuple(x.shape[1:3]) + (1,), dtype=_DT)
                count = F.avg_pool2d(_nchw_padded(ones, op.attrs, kh, kw), (kh, kw), _stride(op.attrs),
                                     divisor_override=1)
                y = total / count
            y = _activation(_nhwc(y), idx, op)
        elif op.type == "MEAN":
            axes_t = graph.t(op.inputs[1])
            if axes_t.data is None:
                raise _err(idx, op, "axes must be constant")
            axes = sorted({int(v) % x.ndim for v in np.asarray(axes_t.data).reshape(-1)})
            y = x.mean(dim=axes, keepdim=bool(op.attrs.get("keep_dims", False)))
        elif op.type == "RESHAPE":
            y = x.reshape(out.shape)
        elif op.type == "ADD":
            other = [tid for tid in op.inputs[:2] if tid >= 0 and graph.t(tid).is_const]
            if len(op.inputs) < 2 or other:
                raise _err(idx, op, "ADD needs two non-constant inputs")
            y = _activation(x + env[op.inputs[1]], idx, op)
        else:  # SOFTMAX
            if idx != n_ops - 1:
                raise _err(idx, op, "SOFTMAX must be the last op of the tail")
            if float(op.attrs.get("beta", 1.0)) != 1.0:
                raise _err(idx, op, f"beta {op.attrs.get('beta')} (supported: 1.0)")
            y = torch.softmax(x.reshape(-1), 0).reshape(x.shape)
        if saturate and op.type not in ("RESHAPE", "SOFTMAX"):
            y = _saturate(y, out)
        if tuple(y.shape) != tuple(out.shape):
            raise _err(idx, op, f"computes shape {list(y.shape)} but output '{out.name}' has shape {list(out.shape)}")
        env[op.outputs[0]] = y
    return env


def _setup(graph: Graph, first_op: int, params: Params, tail_inputs: dict[int, np.ndarray], grad: bool):
    if not 0 <= first_op < len(graph.ops):
        raise ValueError(f"first_op {first_op}: the graph has {len(graph.ops)} ops")
    need = tail_inputs_of(graph, first_op)
    if set(need) != set(tail_inputs):
        raise ValueError(f"tail_inputs has tensors {sorted(tail_inputs)}; the tail reads {sorted(need)}")
    env: dict[int, torch.Tensor] = {}
    for tid, v in tail_inputs.items():
        v = np.asarray(v, np.float64)
        if v.shape != tuple(graph.t(tid).shape):
            raise ValueError(f"tail input {tid} ('{graph.t(tid).name}'): shape {list(v.shape)}, expected "
                             f"{list(graph.t(tid).shape)}")
        env[tid] = torch.tensor(v, dtype=_DT, requires_grad=grad)
    _check_params(graph, first_op, params)
    tp = {i: (torch.tensor(np.asarray(a, np.float64), requires_grad=grad),
              torch.tensor(np.asarray(b, np.float64), requires_grad=grad)) for i, (a, b) in params.items()}
    return dict(env), env, tp


def tail_forward(graph: Graph, first_op: int, params: Params, tail_inputs: dict[int, np.ndarray]
                 ) -> dict[int, np.ndarray]:
    """Values (float64) of the tail inputs and of every tensor the tail computes, by tensor id."""
    with torch.no_grad():
        _, env, tp = _setup(graph, first_op, params, tail_inputs, grad=False)
        env = _forward(graph, first_op, tp, env)
    return {tid: v.numpy().copy() for tid, v in env.items()}


def adapter_output(graph: Graph, op_index: int, a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The adapter branch alone (before the fused activation) of trained op `op_index` for input x (the op's
    input tensor's shape), float64, shaped like the op's output."""
    op = graph.ops[op_index]
    _check_params(graph, op_index, {op_index: (a, b)})
    if op.type != "FULLY_CONNECTED":
        _check_conv_attrs(op_index, op)
    with torch.no_grad():
        y = _adapter(graph, op_index, op, torch.tensor(np.asarray(x, np.float64)),
                     torch.tensor(np.asarray(a, np.float64)), torch.tensor(np.asarray(b, np.float64)))
    return y.reshape(graph.t(op.outputs[0]).shape).numpy().copy()


def tail_loss_and_grads(graph: Graph, first_op: int, params: dict[int, tuple[np.ndarray, np.ndarray]],
                        tail_inputs: dict[int, np.ndarray], target, loss: str, saturate: bool = False
                        ) -> tuple[float, dict[int, tuple[np.ndarray, np.ndarray]], dict[int, np.ndarray]]:
    """Loss of the tail (ops first_op.. of graph) and its gradients, in float64 by torch autograd.
    `saturate`: every output clamped to its int8 tensor's range, as the generated training step does.

    params: {op index: (A, B)} for the trained layers; tail_inputs: {tensor id: float array of the tensor's
    shape} for every non-constant tensor the tail reads and does not compute; target: an integer class
    ("xent") or an array of the last output's shape or size ("mse"). Returns (loss, {op index: (dL/dA, dL/dB)},
    {tensor id: dL/dx}).
    """
    if loss not in ("xent", "mse"):
        raise ValueError(f"loss {loss!r} (supported: xent, mse)")
    last = graph.ops[-1] if graph.ops else None
    ends_softmax = last is not None and last.type == "SOFTMAX"
    if loss == "mse" and ends_softmax:
        raise ValueError("mse loss on a graph ending with SOFTMAX: the loss needs the output before the softmax")
    leaves, env, tp = _setup(graph, first_op, params, tail_inputs, grad=True)
    env = _forward(graph, first_op, tp, env, saturate)
    if loss == "xent":
        z = env[last.inputs[0] if ends_softmax else last.outputs[0]].reshape(-1)
        cls = int(target)
        if not 0 <= cls < z.numel():
            raise ValueError(f"target class {cls}: the logits have {z.numel()} entries")
        value = F.cross_entropy(z[None], torch.tensor([cls]))
    else:
        y = env[last.outputs[0]]
        t = np.asarray(target, np.float64)
        if t.size != y.numel():
            raise ValueError(f"mse target has {t.size} elements; the output {list(y.shape)} has {y.numel()}")
        value = torch.mean((y - torch.tensor(t.reshape(y.shape), dtype=_DT)) ** 2)
    wrt = [v for ab in tp.values() for v in ab] + list(leaves.values())
    grads = torch.autograd.grad(value, wrt, allow_unused=True)
    grads = [np.zeros(tuple(v.shape)) if g is None else g.numpy().copy() for v, g in zip(wrt, grads)]
    n = 2 * len(tp)
    param_grads = {idx: (grads[2 * k], grads[2 * k + 1]) for k, idx in enumerate(tp)}
    input_grads = dict(zip(leaves, grads[n:]))
    return float(value.item()), param_grads, input_grads
