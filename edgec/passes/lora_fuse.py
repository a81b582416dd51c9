"""LoRA `fuse` mode: merge one adapter's ΔW = scale * B @ A into the weights it adapts (IR -> IR).

Binding a PEFT module (torch path, e.g. "features.0") to an IR weight:
- ONNX: the float reader records each weight's source initializer in `Tensor.origin` with the linear
  steps that made the IR data from it (layout transposes, Gemm alpha, the column permutation of a
  Flatten absorbed into an FC, BatchNorm / per-channel scales folded by edgec). The module binds to the
  initializer `<path>.weight` (or one ending in `.<path>.weight`, which must be unique), or to the
  initializer named in `--adapter-map`; ΔW goes through the same steps, so a BatchNorm that edgec folded
  scales ΔW by gamma / sqrt(var + eps) exactly as it scaled W.
- Weights whose values were already rewritten by the exporter (torch's dynamo exporter folds a BatchNorm
  into the conv but keeps the name `conv.weight`; constant folding renames folded values `onnx::...`) are
  refused: ΔW is relative to the unfolded weight and the BatchNorm statistics are gone.
- TFLite (no provenance): only through `--adapter-map` (module path -> tensor name); the tensor must hold
  the module's weight in TFLite's layout (CONV_2D [OC,KH,KW,IC] from torch OIHW, DEPTHWISE_CONV_2D
  [1,KH,KW,C*M], FULLY_CONNECTED [OC,K]).
- Depthwise convs: PEFT's LoRA on one is a full convolution (lora_A spans all input channels), so fuse
  mode refuses it (`ir_delta`); slots mode takes its full-conv ΔW [OC,KH,KW,C] from `depthwise_delta`.

Float weights get W + ΔW. Int8 weights (an int8 base) are dequantized, merged and requantized with the
same scheme as edgec's quantizer: symmetric int8 (zero point 0, [-127, 127]) per channel (per tensor if
the base was), each consuming op's int32 bias requantized to the new s_in * s_w, the weight scale widened
where the bias would not fit int32.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgec.errors import EdgecError
from edgec.frontends.peft_reader import Adapter, LoraModule
from edgec.ir.graph import Graph, Op, Quant, Tensor

# op type -> output-channel axis of its weights (input 1); bias is input 2
WEIGHTED = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}
_INT32_MAX = 2**31 - 1
_REEXPORT = ("re-export the base with torch.onnx.export(model, args, path, dynamo=False, "
             "do_constant_folding=False), which keeps every weight and BatchNorm as it is in PyTorch")


@dataclasses.dataclass
class Binding:
    module: LoraModule
    target: str  # the initializer or tensor name the module was bound to
    tids: list[int]  # IR weight tensors holding it (several when the weight is shared)


def _err(graph: Graph, msg: str) -> EdgecError:
    return EdgecError(f"{graph.source}: {msg}" if graph.source else msg)


def _weight_users(graph: Graph) -> dict[int, list[Op]]:
    users: dict[int, list[Op]] = {}
    for op in graph.ops:
        if op.type in WEIGHTED and len(op.inputs) > 1 and op.inputs[1] >= 0 and graph.t(op.inputs[1]).is_const:
            users.setdefault(op.inputs[1], []).append(op)
    return users


def _listing(names, limit: int = 12) -> str:
    names = sorted(names)
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(f"'{n}'" for n in names[:limit]) + more


def bind(graph: Graph, adapter: Adapter, adapter_map: dict[str, str] | None = None) -> list[Binding]:
    """Bind every module of `adapter` to the IR weights it adapts; EdgecError when one matches no weight,
    several, or a weight another module already took."""
    users = _weight_users(graph)
    by_init: dict[str, list[int]] = {}
    by_name: dict[str, list[int]] = {}
    for tid in users:
        t = graph.t(tid)
        by_name.setdefault(t.name, []).append(tid)
        if t.origin is not None:
            by_init.setdefault(t.origin["initializer"], []).append(tid)
    adapter_map = adapter_map or {}
    stray = sorted(set(adapter_map) - set(adapter.modules))
    if stray:
        raise _err(graph, f"--adapter-map names module(s) {_listing(stray)} that adapter '{adapter.name}' does not "
                          f"adapt (its modules: {_listing(adapter.modules)})")
    bindings, taken = [], {}
    for path, module in adapter.modules.items():
        if path in adapter_map:
            target = adapter_map[path]
            tids = by_init.get(target) or by_name.get(target)
            if not tids:
                raise _err(graph, f"--adapter-map maps module '{path}' to '{target}', which is not the weights of a "
                                  "CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED in this model (weights: "
                                  f"{_listing(by_init or by_name)})")
        elif not by_init:
            raise _err(graph, f"adapter '{adapter.name}': module '{path}' has no counterpart by name: this model's "
                              "tensors carry no PyTorch module names (a TFLite file or an already-quantized ONNX model); map it with --adapter-map "
                              f"MAP.json ({{\"{path}\": \"<tensor name>\"}}; weight tensors: {_listing(by_name)})")
        else:
            exact = f"{path}.weight"
            names = [n for n in by_init if n == exact] or [n for n in by_init if n.endswith(f".{exact}")]
            if not names:
                raise _err(graph, f"adapter '{adapter.name}': module '{path}' matches no layer (no weight initializer "
                                  f"'{exact}'; weights: {_listing(by_init)}); map it with --adapter-map if the "
                                  "exporter renamed it")
            if len(names) > 1:
                raise _err(graph, f"adapter '{adapter.name}': module '{path}' matches several layers ambiguously "
                                  f"({_listing(names)}); choose one with --adapter-map")
            target, tids = names[0], by_init[names[0]]
        key = tuple(sorted(tids))
        if key in taken:
            raise _err(graph, f"adapter '{adapter.name}': modules '{taken[key]}' and '{path}' both bind to "
                              f"'{target}' (ambiguous); fix the names with --adapter-map")
        taken[key] = path
        bindings.append(Binding(module, target, list(tids)))
    return bindings


def _apply_steps(d: np.ndarray, steps: list) -> np.ndarray:
    for step in steps:
        if step[0] == "transpose":
            d = d.transpose(step[1])
        elif step[0] == "scale":
            axis, factor = step[1], np.asarray(step[2], np.float64)
            if axis is not None:
                shape = [1] * d.ndim
                shape[axis] = -1
                factor = factor.reshape(shape)
            d = d * factor
        elif step[0] == "take":
            d = np.take(d, step[2], axis=step[1])
        else:
            raise AssertionError(f"unknown origin step {step[0]}")
    return d


def _check_origin(graph: Graph, where: str, origin: dict) -> str:
    """Refuse weights the exporter rewrote (a folded BatchNorm, computed values); returns the initializer."""
    init = origin["initializer"]
    if "BatchNorm" in origin.get("rewrites", ""):
        raise _err(graph, f"{where}: the exporter folded a BatchNorm into initializer '{init}' (ONNX rewrite "
                          f"'{origin['rewrites']}') and kept its name: its values are gamma/sqrt(var+eps) * W, "
                          "while the adapter's ΔW is relative to W, and the BatchNorm statistics are not in the "
                          f"file, so the fused model would be wrong; {_REEXPORT}")
    if init.startswith("onnx::") or origin.get("computed"):
        raise _err(graph, f"{where}: '{init}' was computed by the exporter or the graph (constant folding, e.g. a "
                          "BatchNorm or a transpose folded into it), not the module's own weight; "
                          f"{_REEXPORT}")
    return init


def ir_delta(graph: Graph, b: Binding, tid: int, op: Op) -> tuple[np.ndarray, bool]:
    """ΔW of the binding's module in the layout (and scaling) of IR weight `tid`; True when a per-channel
    scale (a BatchNorm edgec folded) was applied."""
    m, t = b.module, graph.t(tid)
    where = f"adapter module '{m.path}' -> '{b.target}' ({op.describe()})"
    if op.type == "DEPTHWISE_CONV_2D" or (m.is_conv and m.groups > 1):
        raise _err(graph, f"{where}: a depthwise/grouped convolution: PEFT's LoRA on it (lora_A spans all input "
                          "channels, lora_B is grouped) is not a change of the convolution's own weights, so it "
                          "cannot be fused into them; supported: Linear and groups=1 Conv2d modules (fuse and slots "
                          "mode), depthwise Conv2d modules (slots mode only)")
    if m.is_conv != (op.type == "CONV_2D"):
        kind = "Conv2d" if m.is_conv else "Linear"
        raise _err(graph, f"{where}: a {kind} adapter (lora_A {list(m.a.shape)}) bound to a {op.type}")
    if op.type == "CONV_2D" and (op.attrs.get("dilation_h", 1) != 1 or op.attrs.get("dilation_w", 1) != 1):
        raise _err(graph, f"{where}: a dilated convolution: PEFT's lora_A does not use the base dilation, so its "
                          "output is not a weight change; supported: dilation 1")
    delta = m.delta()
    origin = t.origin
    if origin is not None:
        init = _check_origin(graph, where, origin)
        if delta.shape != tuple(origin["shape"]):
            raise _err(graph, f"{where}: shape mismatch: the adapter's ΔW is {list(delta.shape)} but initializer "
                              f"'{init}' is {list(origin['shape'])}")
        scaled = any(s[0] == "scale" and s[1] is not None for s in origin["steps"])
        delta = _apply_steps(delta, origin["steps"])
    else:
        scaled = False
        if op.type == "CONV_2D":
            delta = delta.transpose(0, 2, 3, 1)  # torch OIHW -> the IR's [OC, KH, KW, IC]
    if delta.shape != tuple(t.shape):
        raise _err(graph, f"{where}: shape mismatch: the adapter's ΔW is {list(delta.shape)} in the IR layout but "
                          f"tensor '{t.name}' is {list(t.shape)}")
    return delta, scaled


def depthwise_delta(graph: Graph, b: Binding, tid: int, op: Op) -> tuple[np.ndarray, bool]:
    """ΔW of a module on a depthwise Conv2d (DEPTHWISE_CONV_2D weight `tid`, [1, KH, KW, C*M]) as the ΔW of
    the equivalent FULL convolution, in CONV_2D's IR layout [C*M, KH, KW, C]: PEFT's lora_A spans all input
    channels, so depthwise + adapter is a CONV_2D with weights expand(W) + ΔW (slots mode; fuse mode refuses).
    Per-output-channel scales edgec folded into the depthwise weights (a BatchNorm) scale ΔW's output
    channels; True when one was applied."""
    m, t = b.module, graph.t(tid)
    where = f"adapter module '{m.path}' -> '{b.target}' ({op.describe()})"
    c = graph.t(op.inputs[0]).shape[-1]
    if op.type != "DEPTHWISE_CONV_2D" or not m.is_conv or m.groups != m.a.shape[1] or m.groups != c:
        kind = f"Conv2d (groups={m.groups})" if m.is_conv else "Linear"
        raise _err(graph, f"{where}: a {kind} adapter (lora_A {list(m.a.shape)}, lora_B {list(m.b.shape)}) bound to "
                          f"a {op.type} with {c} input channels; a DEPTHWISE_CONV_2D takes adapters of a depthwise "
                          "Conv2d (groups = in_channels)")
    if op.attrs.get("dilation_h", 1) != 1 or op.attrs.get("dilation_w", 1) != 1:
        raise _err(graph, f"{where}: a dilated convolution: PEFT's lora_A does not use the base dilation, so its "
                          "output is not a weight change; supported: dilation 1")
    if len(t.shape) != 4 or t.shape[0] != 1:
        raise _err(graph, f"{where}: depthwise weights '{t.name}' have shape {list(t.shape)}; expected [1, KH, KW, OC]")
    _, kh, kw, oc = t.shape
    torch_shape = (oc, 1, kh, kw)  # the depthwise Conv2d's own weight
    if (m.b.shape[0], 1, *m.a.shape[2:]) != torch_shape:
        raise _err(graph, f"{where}: shape mismatch: the adapter (lora_A {list(m.a.shape)}, lora_B "
                          f"{list(m.b.shape)}) is for a depthwise weight {[m.b.shape[0], 1, *m.a.shape[2:]]} but "
                          f"tensor '{t.name}' is {list(t.shape)} (torch {list(torch_shape)})")
    delta = m.delta()  # [OC, C, KH, KW]
    origin, scaled = t.origin, False
    if origin is not None:
        init = _check_origin(graph, where, origin)
        if tuple(origin["shape"]) != torch_shape:
            raise _err(graph, f"{where}: shape mismatch: the adapter is for a depthwise weight {list(torch_shape)} "
                              f"but initializer '{init}' is {list(origin['shape'])}")
        # The steps (a layout transpose, per-channel scales) applied to ones: each IR weight's factor, which
        # must depend on the output channel only (the last axis).
        if any(s[0] not in ("transpose", "scale") for s in origin["steps"]):
            raise _err(graph, f"{where}: depthwise weights '{t.name}' were made by steps "
                              f"{[s[0] for s in origin['steps']]}; supported: transposes and per-channel scales")
        factor = _apply_steps(np.ones(torch_shape), origin["steps"])
        per_oc = factor.reshape(-1, oc)[0] if factor.shape == tuple(t.shape) else None
        if per_oc is None or not np.array_equal(factor, np.broadcast_to(per_oc, factor.shape)):
            raise _err(graph, f"{where}: the steps that made depthwise weights '{t.name}' from '{init}' are not a "
                              "per-output-channel scale")
        scaled = any(s[0] == "scale" and s[1] is not None for s in origin["steps"])
        delta = delta * per_oc[:, None, None, None]
    return delta.transpose(0, 2, 3, 1), scaled  # torch OIHW -> the IR's [OC, KH, KW, C]


def _channel_shape(ndim: int, axis: int) -> list[int]:
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def _merge_int8(graph: Graph, tensors: list[Tensor], tid: int, delta: np.ndarray, users: list[Op], where: str) -> None:
    """Dequantize weight `tid`, add ΔW, requantize it (and the users' biases) in place in `tensors`."""
    t = graph.t(tid)
    q = t.quant
    if t.dtype != "int8" or q is None or np.any(q.zero_point != 0):
        raise _err(graph, f"{where}: weight '{t.name}' is {t.dtype} with "
                          f"{'no quantization' if q is None else 'a non-zero zero point'}; supported: float32 weights "
                          "or symmetric int8 weights")
    if q.axis is not None:
        shape = _channel_shape(t.data.ndim, q.axis)
        w = t.data.astype(np.float64) * q.scale.astype(np.float64).reshape(shape)
    else:
        w = t.data.astype(np.float64) * float(q.scale[0])
    w = w + delta
    old = q.scale.astype(np.float64)
    if q.axis is not None:
        amax = np.moveaxis(np.abs(w), q.axis, 0).reshape(w.shape[q.axis], -1).max(axis=1)
    else:
        amax = np.array([np.abs(w).max()])
    scales = np.where(amax > 0, amax / 127.0, old)  # an all-zero channel keeps its old scale
    biases = []
    for op in users:
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            bt = graph.t(op.inputs[2])
            if bt.dtype != "int32" or bt.quant is None:
                raise _err(graph, f"{where}: {op.describe()} has a {bt.dtype} bias; supported: int32")
            b_real = bt.data.astype(np.float64) * bt.quant.scale.astype(np.float64)
            s_in = float(graph.t(op.inputs[0]).scale)
            # The bias must fit int32 at s_in * s_w: widen the weight scale where it does not (as ptq does).
            need = np.abs(b_real) / (s_in * (_INT32_MAX - 1))
            scales = np.maximum(scales, need.max() if q.axis is None else need)
            biases.append((op.inputs[2], b_real, s_in))
    scales = scales.astype(np.float32)
    s64 = scales.astype(np.float64)
    ws = w / (s64.reshape(_channel_shape(w.ndim, q.axis)) if q.axis is not None else s64[0])
    # Round half away from zero, as edgec's quantizer (and TFLite's) does.
    wq = np.clip(np.sign(ws) * np.floor(np.abs(ws) + 0.5), -127, 127).astype(np.int8)
    tensors[tid] = dataclasses.replace(t, data=wq, quant=Quant(scales, np.zeros(scales.size, np.int64), q.axis))
    for bid, b_real, s_in in biases:
        bt = tensors[bid]
        bscale = (np.float64(np.float32(s_in)) * s64).astype(np.float32)
        bq = b_real / bscale.astype(np.float64)
        bq = np.clip(np.sign(bq) * np.floor(np.abs(bq) + 0.5), -_INT32_MAX - 1, _INT32_MAX).astype(np.int32)
        tensors[bid] = dataclasses.replace(bt, data=bq, quant=Quant(bscale, np.zeros(bscale.size, np.int64),
                                                                    bt.quant.axis if bscale.size > 1 else None))


def merge_deltas(graph: Graph, deltas: dict[int, np.ndarray]) -> Graph:
    """The graph with ΔW (IR layout) added to each weight tensor id in `deltas`: float weights get W + ΔW,
    int8 weights are dequantized, merged and requantized once (with their consumers' biases)."""
    users = _weight_users(graph)
    tensors = list(graph.tensors)
    for tid, delta in deltas.items():
        t = graph.t(tid)
        if t.dtype == "float32":
            tensors[tid] = dataclasses.replace(t, data=(t.data.astype(np.float64) + delta).astype(np.float32))
        else:
            _merge_int8(graph, tensors, tid, delta, users[tid], f"adapted weight '{t.name}'")
    return Graph(tensors, graph.ops, list(graph.inputs), list(graph.outputs), graph.source)


def adapter_deltas(graph: Graph, adapter: Adapter, adapter_map: dict[str, str] | None = None,
                   depthwise: bool = False) -> tuple[dict[int, np.ndarray], list[dict]]:
    """ΔW of every module of `adapter` in the IR layout of the weight it binds to (weight tensor id ->
    ΔW), and one report row per module. `depthwise` (slots mode): a module on a DEPTHWISE_CONV_2D gets the
    full-conv ΔW [OC, KH, KW, C] of `depthwise_delta` (else it is refused, as fuse mode must)."""
    users = _weight_users(graph)
    deltas, rows = {}, []
    for b in bind(graph, adapter, adapter_map):
        bn_scaled = False
        for tid in b.tids:
            ops = users[tid]
            fn = depthwise_delta if depthwise and ops[0].type == "DEPTHWISE_CONV_2D" else ir_delta
            deltas[tid], scaled = fn(graph, b, tid, ops[0])
            for op in ops[1:]:
                fn(graph, b, tid, op)  # the same checks for every user of a shared weight
            bn_scaled |= scaled
        rows.append({"module": b.module.path, "target": b.target,
                     "tensors": [graph.t(tid).name for tid in b.tids], "rank": b.module.rank,
                     "scale": b.module.scale, "channel_scaled": bn_scaled,
                     "delta_max_abs": float(np.abs(b.module.delta()).max())})
    return deltas, rows


def fuse_adapter(graph: Graph, adapter: Adapter, adapter_map: dict[str, str] | None = None
                 ) -> tuple[Graph, list[dict]]:
    """The graph with `adapter` merged into its weights (the input graph is not modified), and one report
    row per adapted module."""
    deltas, rows = adapter_deltas(graph, adapter, adapter_map)
    return merge_deltas(graph, deltas), rows
