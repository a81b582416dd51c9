"""Float32 numpy reference interpreter of edgec's IR (TFLite semantics, see docs/ir.md).

Used by the quantizer (calibration ranges, per-layer errors) and by frontend tests. Results follow
TFLite's float reference kernels (as run by TFLite Micro) to about 1e-5 relative: convolutions and
matrix products accumulate in float64 and round once to float32, where TFLM accumulates in float32.

Batches: every input may be given with the graph's input shape (one sample), or for B samples either as
(B, *shape) or, when the input's first dimension is 1, as (B, *shape[1:]). Internally each non-constant
value carries one leading sample axis; values derived only from constants keep a sample axis of 1, so
weights can also come out of ops (e.g. DEQUANTIZE of int8 weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Op, Tensor

_ACT_RANGES = {"NONE": None, "RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}
_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
_NP = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
       "float32": np.float32, "bool": np.bool_}

Kernel = Callable[["_Ctx", Op], np.ndarray]


class _Ctx:
    """Values of the tensors computed so far, each with a leading sample axis (1 or B)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.env: dict[int, np.ndarray] = {}

    def err(self, op: Op, msg: str) -> EdgecError:
        src = f"{self.graph.source}: " if self.graph.source else ""
        return EdgecError(f"{src}{op.describe()}: {msg}")

    def x(self, op: Op, i: int = 0) -> np.ndarray:
        """Op input i with its sample axis."""
        if i >= len(op.inputs) or op.inputs[i] < 0:
            raise self.err(op, f"input {i} is missing")
        return self.env[op.inputs[i]]

    def opt(self, op: Op, i: int) -> np.ndarray | None:
        """Optional input (bias): without the sample axis, or None when absent."""
        if i >= len(op.inputs) or op.inputs[i] < 0:
            return None
        return self.param(op, i)

    def param(self, op: Op, i: int) -> np.ndarray:
        """An input that must not depend on the graph inputs (weights, shapes), without the sample axis."""
        v = self.x(op, i)
        if v.shape[0] != 1:
            raise self.err(op, f"input {i} ('{self.graph.t(op.inputs[i]).name}') depends on the graph "
                               "inputs; the float reference needs it constant")
        return v[0]

    def ints(self, op: Op, i: int) -> list[int]:
        return [int(v) for v in self.param(op, i).reshape(-1)]

    def out(self, op: Op) -> Tensor:
        return self.graph.t(op.outputs[0])


def _sample_shape(v: np.ndarray) -> tuple[int, ...]:
    return v.shape[1:]


def _act(v: np.ndarray, activation: str) -> np.ndarray:
    rng = _ACT_RANGES.get(activation, "?")
    if rng == "?":
        raise ValueError(f"fused activation {activation!r} (supported: {', '.join(_ACT_RANGES)})")
    if rng is None:
        return v
    lo, hi = rng
    return np.clip(v, lo, hi) if hi is not None else np.maximum(v, lo)


def _f32(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


# --- convolutions and pools ------------------------------------------------------------------------------


def _padding(size: int, k: int, stride: int, dil: int, padding: str) -> tuple[int, int, int]:
    """(output size, pad before, pad after) by TFLite's rule (ComputePaddingHeightWidth)."""
    eff = (k - 1) * dil + 1
    if padding == "SAME":
        out = (size + stride - 1) // stride
        total = max((out - 1) * stride + eff - size, 0)
        return out, total // 2, total - total // 2
    if padding == "VALID":
        return (size - eff + stride) // stride, 0, 0
    raise ValueError(f"padding {padding!r} (supported: SAME, VALID)")


def _spatial(ctx: _Ctx, op: Op, x: np.ndarray, kh: int, kw: int, dh: int, dw: int, pad_value: float
             ) -> tuple[int, int, Callable[[int, int], np.ndarray]]:
    """Pads x [S, N, H, W, C] (merging samples into N); returns OH, OW and a function giving the
    [S*N, OH, OW, C] view of the padded input under filter tap (i, j)."""
    a = op.attrs
    sh, sw = a.get("stride_h", 1), a.get("stride_w", 1)
    if x.ndim != 5:
        raise ctx.err(op, f"input shape {list(_sample_shape(x))}; expected [N, H, W, C]")
    if min(sh, sw, dh, dw) < 1:
        raise ctx.err(op, f"stride {sh}x{sw}, dilation {dh}x{dw}: must be >= 1")
    x = x.reshape((-1,) + x.shape[2:])
    oh, ph0, ph1 = _padding(x.shape[1], kh, sh, dh, a.get("padding", "VALID"))
    ow, pw0, pw1 = _padding(x.shape[2], kw, sw, dw, a.get("padding", "VALID"))
    if oh < 1 or ow < 1:
        raise ctx.err(op, f"filter {kh}x{kw} does not fit input {list(x.shape[1:3])}")
    xp = np.pad(x, [(0, 0), (ph0, ph1), (pw0, pw1), (0, 0)], constant_values=pad_value)

    def tap(i: int, j: int) -> np.ndarray:
        return xp[:, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw, :]

    return oh, ow, tap


def _finish(ctx: _Ctx, op: Op, acc: np.ndarray, x: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    if bias is not None:
        acc = acc + bias.astype(np.float64).reshape(-1)
    acc = _act(_f32(acc), op.attrs.get("activation", "NONE"))
    return acc.reshape(x.shape[:2] + acc.shape[1:])


def _conv2d(ctx: _Ctx, op: Op) -> np.ndarray:
    x, w, bias = ctx.x(op), ctx.param(op, 1).astype(np.float64), ctx.opt(op, 2)
    oc, kh, kw, cg = w.shape
    c = x.shape[-1]
    if cg < 1 or c % cg or oc % (c // cg):
        raise ctx.err(op, f"input depth {c} with filter {list(w.shape)}: depth must divide into groups that "
                          "divide the output channels")
    g = c // cg
    oh, ow, tap = _spatial(ctx, op, x, kh, kw, op.attrs.get("dilation_h", 1), op.attrs.get("dilation_w", 1), 0.0)
    s = x.shape[0] * x.shape[1]
    acc = np.zeros((g, s * oh * ow, oc // g))
    wg = w.reshape(g, oc // g, kh, kw, cg)
    for i in range(kh):
        for j in range(kw):
            # [G, M, Cg] @ [G, Cg, OCg]: one BLAS product per group and tap.
            xs = tap(i, j).astype(np.float64).reshape(-1, g, cg).transpose(1, 0, 2)
            acc += xs @ wg[:, :, i, j, :].transpose(0, 2, 1)
    acc = acc.transpose(1, 0, 2).reshape(s, oh, ow, oc)
    return _finish(ctx, op, acc, x, bias)


def _depthwise(ctx: _Ctx, op: Op) -> np.ndarray:
    x, w, bias = ctx.x(op), ctx.param(op, 1).astype(np.float64), ctx.opt(op, 2)
    _, kh, kw, ocs = w.shape
    c = x.shape[-1]
    m = op.attrs.get("depth_multiplier", 1)
    if w.shape[0] != 1 or ocs != c * m:
        raise ctx.err(op, f"filter {list(w.shape)} for input depth {c} and depth_multiplier {m}; expected "
                          f"[1, KH, KW, {c * m}]")
    oh, ow, tap = _spatial(ctx, op, x, kh, kw, op.attrs.get("dilation_h", 1), op.attrs.get("dilation_w", 1), 0.0)
    s = x.shape[0] * x.shape[1]
    acc = np.zeros((s, oh, ow, c, m))
    for i in range(kh):
        for j in range(kw):
            acc += tap(i, j).astype(np.float64)[..., None] * w[0, i, j].reshape(c, m)  # oc = ic * M + m
    return _finish(ctx, op, acc.reshape(s, oh, ow, c * m), x, bias)


def _transpose_conv(ctx: _Ctx, op: Op) -> np.ndarray:
    shape = ctx.ints(op, 0)
    w, x, bias = ctx.param(op, 1).astype(np.float64), ctx.x(op, 2), ctx.opt(op, 3)
    oc, kh, kw, ic = w.shape
    a = op.attrs
    sh, sw = a.get("stride_h", 1), a.get("stride_w", 1)
    if x.ndim != 5 or x.shape[-1] != ic or len(shape) != 4 or shape[3] != oc:
        raise ctx.err(op, f"input {list(_sample_shape(x))}, filter {list(w.shape)}, output_shape {shape}: "
                          "expected input [N, H, W, IC], filter [OC, KH, KW, IC], output_shape [N, OH, OW, OC]")
    oh, ow = shape[1], shape[2]
    # TFLite pads as for the forward convolution that maps the output back to the input.
    _, ph, _ = _padding(oh, kh, sh, 1, a.get("padding", "VALID"))
    _, pw, _ = _padding(ow, kw, sw, 1, a.get("padding", "VALID"))
    xs = x.reshape((-1,) + x.shape[2:]).astype(np.float64)
    s, h, wd = xs.shape[:3]
    full = np.zeros((s, max((h - 1) * sh + kh, ph + oh), max((wd - 1) * sw + kw, pw + ow), oc))
    for i in range(kh):
        for j in range(kw):
            full[:, i: i + (h - 1) * sh + 1: sh, j: j + (wd - 1) * sw + 1: sw] += xs @ w[:, i, j, :].T
    return _finish(ctx, op, full[:, ph: ph + oh, pw: pw + ow], x, bias)


def _pool(ctx: _Ctx, op: Op) -> np.ndarray:
    x = ctx.x(op)
    kh, kw = op.attrs.get("filter_h", 1), op.attrs.get("filter_w", 1)
    is_max = op.type == "MAX_POOL_2D"
    _, _, tap = _spatial(ctx, op, x, kh, kw, 1, 1, -np.inf if is_max else 0.0)
    if is_max:
        acc = np.full(tap(0, 0).shape, -np.inf, np.float32)
        for i in range(kh):
            for j in range(kw):
                acc = np.maximum(acc, tap(i, j))
    else:
        # TFLite divides by the number of taps inside the image, not the filter size.
        acc = np.zeros(tap(0, 0).shape)
        for i in range(kh):
            for j in range(kw):
                acc += tap(i, j)
        _, _, ones = _spatial(ctx, op, np.ones((1, 1) + x.shape[2:4] + (1,)), kh, kw, 1, 1, 0.0)
        count = sum(ones(i, j) for i in range(kh) for j in range(kw))
        acc = acc / count
    return _finish(ctx, op, acc, x, None)


def _fully_connected(ctx: _Ctx, op: Op) -> np.ndarray:
    x, w, bias = ctx.x(op), ctx.param(op, 1).astype(np.float64), ctx.opt(op, 2)
    k = w.shape[-1]
    per = int(np.prod(_sample_shape(x), dtype=np.int64))
    if w.ndim != 2 or per % k:
        raise ctx.err(op, f"input {list(_sample_shape(x))} does not flatten into rows of the filter's "
                          f"{k} columns (filter {list(w.shape)})")
    # TFLite flattens the input into rows of K = filter columns, whatever the input's last dimension.
    y = x.reshape(-1, k).astype(np.float64) @ w.T
    if bias is not None:
        y = y + bias.astype(np.float64).reshape(-1)
    y = _act(_f32(y), op.attrs.get("activation", "NONE"))
    out = ctx.out(op).shape
    if y.size != x.shape[0] * int(np.prod(out, dtype=np.int64)) or out[-1:] != (w.shape[0],):
        raise ctx.err(op, f"input {list(_sample_shape(x))} and filter {list(w.shape)} give {per // k} rows of "
                          f"{w.shape[0]}, but output '{ctx.graph.t(op.outputs[0]).name}' has shape {list(out)}")
    return y.reshape((x.shape[0],) + out)


# --- elementwise -----------------------------------------------------------------------------------------


def _aligned(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right-align the sample shapes of a and b (numpy broadcasting) keeping the sample axes in front."""
    r = max(a.ndim, b.ndim) - 1
    return tuple(v.reshape(v.shape[:1] + (1,) * (r - v.ndim + 1) + v.shape[1:]) for v in (a, b))


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Kernel:
    def kernel(ctx: _Ctx, op: Op) -> np.ndarray:
        a, b = _aligned(_f32(ctx.x(op, 0)), _f32(ctx.x(op, 1)))
        try:
            with np.errstate(divide="ignore", invalid="ignore"):  # x / 0 gives inf/nan, as in TFLM
                y = fn(a, b)
        except ValueError:
            raise ctx.err(op, f"shapes {list(_sample_shape(ctx.x(op, 0)))} and {list(_sample_shape(ctx.x(op, 1)))} "
                              "do not broadcast") from None
        return _act(_f32(y), op.attrs.get("activation", "NONE"))
    return kernel


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Kernel:
    return lambda ctx, op: _f32(fn(_f32(ctx.x(op))))


def _logistic(x: np.ndarray) -> np.ndarray:
    # reference_ops::Logistic: exact 1 above the upper cutoff, exp(x) below the lower one.
    with np.errstate(over="ignore"):  # exp overflows to inf where the cutoffs apply anyway
        y = np.float32(1) / (np.float32(1) + np.exp(-x))
        return np.where(x > np.float32(16.619047164916992188), np.float32(1),
                        np.where(x < np.float32(-9), np.exp(x), y))


def _hard_swish(x: np.ndarray) -> np.ndarray:
    return x * np.minimum(np.float32(6), np.maximum(np.float32(0), x + np.float32(3))) / np.float32(6)


def _leaky_relu(ctx: _Ctx, op: Op) -> np.ndarray:
    x = _f32(ctx.x(op))
    return np.where(x > 0, x, x * np.float32(op.attrs.get("alpha", 0.0)))


def _softmax(ctx: _Ctx, op: Op) -> np.ndarray:
    x = ctx.x(op).astype(np.float64)
    e = np.exp((x - x.max(axis=-1, keepdims=True)) * float(op.attrs.get("beta", 1.0)))
    return _f32(e / e.sum(axis=-1, keepdims=True))


# --- quantization boundaries -----------------------------------------------------------------------------


def _qparams(ctx: _Ctx, op: Op, t: Tensor, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point shaped to broadcast against a value with a sample axis and `rank` dims."""
    if t.quant is None:
        raise ctx.err(op, f"tensor '{t.name}' ({t.dtype}) has no quantization parameters")
    scale, zp = np.asarray(t.quant.scale, np.float32), np.asarray(t.quant.zero_point, np.int64)
    if t.quant.axis is None:
        return scale[:1], zp[:1]
    shape = [1] * (rank + 1)
    shape[t.quant.axis + 1] = -1
    return scale.reshape(shape), zp.reshape(shape)


def _quantize(ctx: _Ctx, op: Op) -> np.ndarray:
    x, y = ctx.x(op), ctx.out(op)
    src = ctx.graph.t(op.inputs[0])
    if src.dtype != "float32":
        raise NotImplementedError(f"float reference only: {op.describe()} requantizes {src.dtype} to {y.dtype}")
    if y.dtype not in _INT_RANGES:
        raise ctx.err(op, f"output dtype {y.dtype}; supported: {', '.join(_INT_RANGES)}")
    scale, zp = _qparams(ctx, op, y, x.ndim - 1)
    # AffineQuantize: round(x / scale) half away from zero, in float32, then + zero point and clamp.
    v = (_f32(x) / scale).astype(np.float64)
    q = np.sign(v) * np.floor(np.abs(v) + 0.5) + zp
    lo, hi = _INT_RANGES[y.dtype]
    return np.clip(q, lo, hi).astype(_NP[y.dtype])


def _dequantize(ctx: _Ctx, op: Op) -> np.ndarray:
    x, src = ctx.x(op), ctx.graph.t(op.inputs[0])
    if src.dtype not in _INT_RANGES:
        raise ctx.err(op, f"input dtype {src.dtype}; supported: {', '.join(_INT_RANGES)}")
    scale, zp = _qparams(ctx, op, src, x.ndim - 1)
    # reference_ops::Dequantize computes in double from the float32 scale.
    return _f32(scale.astype(np.float64) * (x.astype(np.int64) - zp))


# --- data movement ---------------------------------------------------------------------------------------


def _reshape(ctx: _Ctx, op: Op) -> np.ndarray:
    x, shape = ctx.x(op), ctx.out(op).shape  # the output tensor's shape is authoritative
    if int(np.prod(_sample_shape(x), dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
        raise ctx.err(op, f"cannot reshape {list(_sample_shape(x))} to {list(shape)}")
    return x.reshape(x.shape[:1] + tuple(shape))


def _axis(ctx: _Ctx, op: Op, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ctx.err(op, f"axis {axis} out of range for rank {rank}")
    return axis % rank


def _squeeze(ctx: _Ctx, op: Op) -> np.ndarray:
    x = ctx.x(op)
    shape = _sample_shape(x)
    dims = [_axis(ctx, op, d, len(shape)) for d in op.attrs.get("squeeze_dims", [])]
    dims = dims or [d for d, n in enumerate(shape) if n == 1]
    if any(shape[d] != 1 for d in dims):
        raise ctx.err(op, f"squeeze_dims {op.attrs.get('squeeze_dims')} of shape {list(shape)} are not all 1")
    return x.reshape(x.shape[:1] + tuple(n for d, n in enumerate(shape) if d not in dims))


def _mean(ctx: _Ctx, op: Op) -> np.ndarray:
    x = ctx.x(op)
    axes = sorted({_axis(ctx, op, a, x.ndim - 1) + 1 for a in ctx.ints(op, 1)})
    return _f32(x.astype(np.float64).mean(axis=tuple(axes), keepdims=bool(op.attrs.get("keep_dims"))))


def _pad(ctx: _Ctx, op: Op) -> np.ndarray:
    x = ctx.x(op)
    pads = ctx.param(op, 1).astype(np.int64)
    if pads.shape != (x.ndim - 1, 2) or (pads < 0).any():
        raise ctx.err(op, f"paddings {pads.tolist()} for input {list(_sample_shape(x))}; expected "
                          f"[{x.ndim - 1}, 2] non-negative values")
    return np.pad(x, [(0, 0)] + pads.tolist())


def _concat(ctx: _Ctx, op: Op) -> np.ndarray:
    xs = [ctx.x(op, i) for i in range(len(op.inputs))]
    axis = _axis(ctx, op, op.attrs.get("axis", 0), xs[0].ndim - 1) + 1
    n = max(v.shape[0] for v in xs)
    xs = [np.broadcast_to(v, (n,) + v.shape[1:]) for v in xs]
    try:
        y = np.concatenate(xs, axis=axis)
    except ValueError:
        raise ctx.err(op, f"inputs {[list(_sample_shape(v)) for v in xs]} do not concatenate on axis "
                          f"{axis - 1}") from None
    return _act(y, op.attrs.get("activation", "NONE"))


def _transpose(ctx: _Ctx, op: Op) -> np.ndarray:
    x, perm = ctx.x(op), ctx.ints(op, 1)
    if sorted(perm) != list(range(x.ndim - 1)):
        raise ctx.err(op, f"perm {perm} for input rank {x.ndim - 1}")
    return x.transpose([0] + [p + 1 for p in perm])


def _strided_slice(ctx: _Ctx, op: Op) -> np.ndarray:
    """TFLite's StartForAxis/StopForAxis; like TFLM (and edgec's int8 lowering) without ellipsis/new axes."""
    x = ctx.x(op)
    shape = _sample_shape(x)
    a = op.attrs
    unsupported = [k for k in ("ellipsis_mask", "new_axis_mask") if a.get(k)] + (["offset"] if a.get("offset") else [])
    if unsupported:
        raise ctx.err(op, f"{', '.join(unsupported)} set; supported: begin_mask, end_mask, shrink_axis_mask")
    begin, end, strides = (ctx.ints(op, i) for i in (1, 2, 3))
    if min(len(begin), len(end), len(strides)) < len(shape):
        raise ctx.err(op, f"begin/end/strides have fewer than {len(shape)} values")
    index: list[slice | int] = [slice(None)]
    for d, size in enumerate(shape):
        stride = strides[d]
        bm, em, shrink = (bool(a.get(k, 0) >> d & 1) for k in ("begin_mask", "end_mask", "shrink_axis_mask"))
        if stride == 0:
            raise ctx.err(op, f"stride 0 on axis {d}")
        start = (-(2**31) if stride > 0 else 2**31 - 1) if bm else begin[d]
        start = start + size if start < 0 else start
        start = min(max(start, 0), size) if stride > 0 else min(max(start, -1), size - 1)
        if shrink:
            if not 0 <= start < size:
                raise ctx.err(op, f"shrink axis {d} begins at {begin[d]}, outside size {size}")
            index.append(start)
            continue
        stop = (2**31 - 1 if stride > 0 else -(2**31)) if em else end[d]
        stop = stop + size if stop < 0 else stop
        stop = min(max(stop, 0), size) if stride > 0 else min(max(stop, -1), size - 1)
        index.append(slice(start, stop if stop >= 0 else None, stride))  # stop -1 = before element 0
    return x[tuple(index)]


KERNELS: dict[str, Kernel] = {
    "CONV_2D": _conv2d,
    "DEPTHWISE_CONV_2D": _depthwise,
    "TRANSPOSE_CONV": _transpose_conv,
    "FULLY_CONNECTED": _fully_connected,
    "AVERAGE_POOL_2D": _pool,
    "MAX_POOL_2D": _pool,
    "ADD": _binary(np.add),
    "SUB": _binary(np.subtract),
    "MUL": _binary(np.multiply),
    "DIV": _binary(np.divide),
    "MAXIMUM": _binary(np.maximum),
    "MINIMUM": _binary(np.minimum),
    "RESHAPE": _reshape,
    "SQUEEZE": _squeeze,
    "SOFTMAX": _softmax,
    "MEAN": _mean,
    "PAD": _pad,
    "CONCATENATION": _concat,
    "LOGISTIC": _unary(_logistic),
    "TANH": _unary(np.tanh),
    "RELU": _unary(lambda v: np.maximum(v, np.float32(0))),
    "RELU6": _unary(lambda v: np.clip(v, np.float32(0), np.float32(6))),
    "HARD_SWISH": _unary(_hard_swish),
    "LEAKY_RELU": _leaky_relu,
    "PRELU": _binary(lambda x, alpha: np.where(x >= 0, x, x * alpha)),
    "STRIDED_SLICE": _strided_slice,
    "TRANSPOSE": _transpose,
    "QUANTIZE": _quantize,
    "DEQUANTIZE": _dequantize,
}
SUPPORTED_OPS = tuple(KERNELS)
# Ops whose data inputs may be non-float (integer parameter inputs are read separately).
_ANY_DTYPE_INPUT = {"QUANTIZE", "DEQUANTIZE"}
# Inputs that are integer parameters rather than data, per op.
_PARAM_INPUTS = {"RESHAPE": {1}, "MEAN": {1}, "PAD": {1}, "TRANSPOSE": {1}, "STRIDED_SLICE": {1, 2, 3},
                 "TRANSPOSE_CONV": {0}}


def _batch_form(graph: Graph, inputs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int, str]:
    """Inputs with a leading sample axis, the sample count and the form used ('one', 'extra', 'replace')."""
    if len(inputs) != len(graph.inputs):
        raise EdgecError(f"{graph.source or 'graph'} has {len(graph.inputs)} inputs, got {len(inputs)}")
    out, forms, counts = [], set(), set()
    for i, (tid, v) in enumerate(zip(graph.inputs, inputs)):
        t = graph.t(tid)
        v = np.asarray(v)
        shape = tuple(t.shape)
        if v.shape == shape:
            form, n = "one", 1
            v = v[None]
        elif v.shape[1:] == shape:
            form, n = "extra", v.shape[0]
        elif shape and shape[0] == 1 and v.ndim == len(shape) and v.shape[1:] == shape[1:]:
            form, n = "replace", v.shape[0]
            v = v[:, None]
        else:
            raise EdgecError(f"input {i} ('{t.name}'): shape {list(v.shape)}; expected {list(shape)}, or a batch "
                             f"of them as [B, *{list(shape)}]" + (" or [B, *shape[1:]]" if shape[:1] == (1,) else ""))
        if t.dtype == "float32":
            if v.dtype.kind not in "fiub":
                raise EdgecError(f"input {i} ('{t.name}'): dtype {v.dtype}, expected float32")
            v = v.astype(np.float32)
        elif v.dtype != np.dtype(_NP[t.dtype]):
            if v.dtype.kind not in "iub" or (v.size and (v.min() < np.iinfo(_NP[t.dtype]).min
                                                         or v.max() > np.iinfo(_NP[t.dtype]).max)):
                raise EdgecError(f"input {i} ('{t.name}'): dtype {v.dtype}, expected {t.dtype}")
            v = v.astype(_NP[t.dtype])
        forms.add(form)
        counts.add(n)
        out.append(v)
    forms.discard("one")
    if len(forms) > 1 or len(counts - {1}) > 1 or (forms and 1 in counts and len(counts) > 1):
        raise EdgecError("inputs mix batch forms/sizes: give every input the same batch size B")
    return out, max(counts, default=1), forms.pop() if forms else "one"


def _run(graph: Graph, inputs: Sequence[np.ndarray], partial: bool = False) -> tuple[_Ctx, int, str]:
    values, n, form = _batch_form(graph, inputs)
    ctx = _Ctx(graph)
    for tid, t in enumerate(graph.tensors):
        if t.data is not None:
            ctx.env[tid] = np.asarray(t.data)[None]
    for tid, v in zip(graph.inputs, values):
        ctx.env[tid] = v
    for op in graph.ops:
        kernel = KERNELS.get(op.type)
        if kernel is None:
            raise ctx.err(op, f"op {op.type} has no float reference implementation (supported: "
                              f"{', '.join(SUPPORTED_OPS)})")
        missing = [i for i, tid in enumerate(op.inputs) if tid >= 0 and tid not in ctx.env]
        if missing:
            if partial:  # downstream of a skipped op
                continue
            raise ctx.err(op, f"input {missing[0]} ('{graph.t(op.inputs[missing[0]]).name}') is neither a "
                              "constant, a graph input nor computed by an earlier op")
        params = _PARAM_INPUTS.get(op.type, set())
        try:
            for i, tid in enumerate(op.inputs):
                dt = graph.t(tid).dtype if tid >= 0 else "float32"
                if dt != "float32" and i not in params and op.type not in _ANY_DTYPE_INPUT:
                    raise NotImplementedError(f"float reference only: {op.describe()} has {dt} input "
                                              f"'{graph.t(tid).name}'")
            y = kernel(ctx, op)
        except NotImplementedError:
            if partial:
                continue
            raise
        except ValueError as e:  # an attribute value the kernel does not know
            raise ctx.err(op, f"unsupported {e}") from None
        t = graph.t(op.outputs[0])
        if _sample_shape(y) != tuple(t.shape):
            raise ctx.err(op, f"computes shape {list(_sample_shape(y))} but output '{t.name}' has shape "
                              f"{list(t.shape)}")
        ctx.env[op.outputs[0]] = y
    return ctx, n, form


def _present(v: np.ndarray, t: Tensor, n: int, form: str) -> np.ndarray:
    """A value with its sample axis in the caller's batch form."""
    if form == "one":
        return v[0]
    v = np.broadcast_to(v, (n,) + v.shape[1:]) if v.shape[0] != n else v
    if form == "replace" and t.shape and t.shape[0] == 1:
        return v.reshape((n,) + tuple(t.shape[1:]))
    return np.ascontiguousarray(v)


def run_float_all(graph: Graph, inputs: Sequence[np.ndarray], partial: bool = False) -> dict[int, np.ndarray]:
    """Value of every tensor id: constants (their data, never batched), graph inputs and every op output.

    Raises EdgecError for an op without a float reference (naming it) or inconsistent shapes, and
    NotImplementedError("float reference only: ...") for ops computing on integer tensors; QUANTIZE (from
    float) and DEQUANTIZE are evaluated. With partial=True such ops, and everything downstream of them, are
    skipped instead (absent from the result), so e.g. the float I/O around an int8 body is evaluated.
    """
    ctx, n, form = _run(graph, inputs, partial)
    return {tid: (np.asarray(graph.t(tid).data) if graph.t(tid).data is not None
                  else _present(v, graph.t(tid), n, form)) for tid, v in ctx.env.items()}


def run_float(graph: Graph, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The graph outputs, in graph order (batched like the inputs when a batch is given)."""
    ctx, n, form = _run(graph, inputs)
    return [np.asarray(graph.t(tid).data) if graph.t(tid).data is not None
            else _present(ctx.env[tid], graph.t(tid), n, form) for tid in graph.outputs]
