"""Graph clean-ups after ONNX import, done on the IR (float graphs only).

- MUL / ADD / SUB by a per-output-channel constant right after a convolution or fully-connected layer is
  folded into its weights and bias (this is how BatchNormalization and a separate bias Add disappear).
- RELU / RELU6 / a MAXIMUM(-1)+MINIMUM(1) clamp right after CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED,
  ADD, SUB or MUL becomes that op's fused activation, as TFLite's converter does.
Both only when the intermediate tensor has no other consumer and is not a graph output.
"""

from __future__ import annotations

import numpy as np

from edgec.ir.graph import Graph, Op, Tensor

# op type -> (weight input, output-channel axis of the weights, bias input)
_AFFINE = {"CONV_2D": (1, 0, 2), "DEPTHWISE_CONV_2D": (1, 3, 2), "FULLY_CONNECTED": (1, 0, 2),
           "TRANSPOSE_CONV": (1, 0, 3)}
_ACT_FUSABLE = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL"}
_CLAMPS = {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1"}


def optimize(g: Graph) -> None:
    while _fold_affine(g) or _fuse_activation(g):
        pass
    remove_dead(g)


def _uses(g: Graph) -> dict[int, list[Op]]:
    uses: dict[int, list[Op]] = {}
    for op in g.ops:
        for t in op.inputs:
            if t >= 0:
                uses.setdefault(t, []).append(op)
    return uses


def _producers(g: Graph) -> dict[int, Op]:
    return {t: op for op in g.ops for t in op.outputs}


def _single_use(g: Graph, uses: dict[int, list[Op]], tid: int) -> bool:
    return len(uses.get(tid, [])) == 1 and tid not in g.outputs


def _new_const(g: Graph, like: Tensor, data: np.ndarray, suffix: str) -> int:
    g.tensors.append(Tensor(f"{like.name}_{suffix}", tuple(data.shape), "float32", None,
                            np.ascontiguousarray(data.astype(np.float32))))
    return len(g.tensors) - 1


def _per_channel(c: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray | None:
    """The constant as one value per output channel (last axis), or None when it is not that."""
    try:
        if tuple(np.broadcast_shapes(out_shape, c.shape)) != tuple(out_shape):
            return None
    except ValueError:
        return None
    rows = np.broadcast_to(c, out_shape).reshape(-1, out_shape[-1])
    return np.array(rows[0]) if np.all(rows == rows[0]) else None


def _fold_affine(g: Graph) -> bool:
    uses, prod = _uses(g), _producers(g)
    for op in g.ops:
        if op.type not in ("MUL", "ADD", "SUB") or len(op.inputs) != 2:
            continue
        a, b = op.inputs
        if g.t(a).is_const == g.t(b).is_const or (op.type == "SUB" and g.t(a).is_const):
            continue
        x, c = (a, b) if g.t(b).is_const else (b, a)
        p = prod.get(x)
        if p is None or p.type not in _AFFINE or not _single_use(g, uses, x) or g.t(c).dtype != "float32":
            continue
        act = op.attrs.get("activation", "NONE")
        if p.attrs.get("activation", "NONE") != "NONE" or (act != "NONE" and p.type not in _ACT_FUSABLE):
            continue
        w_in, axis, b_in = _AFFINE[p.type]
        w = g.t(p.inputs[w_in])
        if w.dtype != "float32" or not w.is_const:
            continue
        vec = _per_channel(g.t(c).data.astype(np.float32), g.t(x).shape)
        if vec is None:
            continue
        has_bias = len(p.inputs) > b_in and p.inputs[b_in] >= 0
        bias = g.t(p.inputs[b_in]).data.astype(np.float32) if has_bias else np.zeros(vec.size, np.float32)
        if op.type == "MUL":
            shape = [1] * w.data.ndim
            shape[axis] = vec.size
            p.inputs[w_in] = _new_const(g, w, w.data * vec.reshape(shape), "scaled")
            if w.origin is not None:  # keep the provenance: LoRA deltas must be scaled the same way
                g.t(p.inputs[w_in]).origin = {**w.origin, "steps": [*w.origin["steps"], ("scale", axis, vec)]}
            bias = bias * vec
            if not has_bias:
                bias = None
        else:
            bias = bias + vec if op.type == "ADD" else bias - vec
        if bias is not None:
            name_src = g.t(p.inputs[b_in]) if has_bias else g.t(op.outputs[0])
            bt = _new_const(g, name_src, bias, "bias")
            while len(p.inputs) <= b_in:
                p.inputs.append(-1)
            p.inputs[b_in] = bt
        p.outputs = list(op.outputs)
        p.attrs["activation"] = act if p.type in _ACT_FUSABLE else p.attrs.get("activation", "NONE")
        g.ops.remove(op)
        return True
    return False


def _scalar(g: Graph, tid: int) -> float | None:
    t = g.t(tid)
    if not t.is_const or t.dtype != "float32" or t.size == 0:
        return None
    flat = t.data.reshape(-1)
    return float(flat[0]) if np.all(flat == flat[0]) else None


def _fuse_activation(g: Graph) -> bool:
    uses, prod = _uses(g), _producers(g)
    for op in g.ops:
        act, remove = None, []
        if op.type in ("RELU", "RELU6"):
            act, x, remove, last = op.type, op.inputs[0], [op], op
        elif op.type == "MAXIMUM" and len(op.inputs) == 2 and _single_use(g, uses, op.outputs[0]):
            nxt = uses[op.outputs[0]][0]
            lo = _scalar(g, op.inputs[1])
            hi = _scalar(g, nxt.inputs[1]) if nxt.type == "MINIMUM" and len(nxt.inputs) == 2 and \
                nxt.inputs[0] == op.outputs[0] else None
            if lo is None or hi is None or (lo, hi) not in _CLAMPS or g.t(op.inputs[1]).size != 1 or \
                    g.t(nxt.inputs[1]).size != 1:
                continue
            act, x, remove, last = _CLAMPS[(lo, hi)], op.inputs[0], [op, nxt], nxt
        else:
            continue
        p = prod.get(x)
        if p is None or p.type not in _ACT_FUSABLE or p.attrs.get("activation", "NONE") != "NONE" \
                or not _single_use(g, uses, x) or g.t(x).dtype != "float32":
            continue
        p.attrs["activation"] = act
        p.outputs = list(last.outputs)
        for o in remove:
            g.ops.remove(o)
        return True
    return False


def remove_dead(g: Graph) -> None:
    """Drop ops none of whose outputs is used (e.g. conversions made for a consumer that was folded)."""
    while True:
        used = {t for op in g.ops for t in op.inputs} | set(g.outputs)
        dead = [op for op in g.ops if not any(t in used for t in op.outputs)]
        if not dead:
            return
        for op in dead:
            g.ops.remove(op)


def compact(g: Graph) -> Graph:
    """Keep only the tensors the ops and graph I/O use, renumbered in first-use order."""
    order: list[int] = []
    seen: set[int] = set()

    def visit(t: int) -> None:
        if t >= 0 and t not in seen:
            seen.add(t)
            order.append(t)

    for t in g.inputs:
        visit(t)
    for op in g.ops:
        for t in op.inputs + op.outputs:
            visit(t)
    for t in g.outputs:
        visit(t)
    new_id = {old: i for i, old in enumerate(order)}
    tensors = [g.tensors[t] for t in order]
    for op in g.ops:
        op.inputs = [new_id[t] if t >= 0 else -1 for t in op.inputs]
        op.outputs = [new_id[t] for t in op.outputs]
    return Graph(tensors, g.ops, [new_id[t] for t in g.inputs], [new_id[t] for t in g.outputs], g.source)
