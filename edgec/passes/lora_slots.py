"""LoRA `slots` mode: several adapters kept beside the frozen base, switchable at run time.

This pass binds each adapter's modules to the base's weights exactly as fuse mode does
(`edgec.passes.lora_fuse.bind` / `ir_delta`: names, --adapter-map, BatchNorm scaling, layouts) and
returns, per adapted weight and slot, float factors (A [r, K], B [OC, r]) with B @ A = ΔW in the IR layout
(K = KH*KW*IC for a conv; a rank-r SVD of ΔW, so the layout steps of the ONNX reader need no factor-wise
rewrite). The graph itself is not changed: the base is quantized without adapters, and the lowering
(`edgec.lower.ops.conv.lower_fully_connected_slots` / `lower_conv2d_slots` / `lower_depthwise_slots`)
quantizes the factors against the base's scales.

DEPTHWISE_CONV_2D: PEFT's LoRA on a depthwise Conv2d (lora_A a full conv over all input channels, lora_B a
grouped 1x1 conv) is a full convolution, not a change of the depthwise weights: its ΔW is the full-conv
[OC, KH, KW, C] of `lora_fuse.depthwise_delta`, factored like a CONV_2D's, and `merged_graph` turns the
adapted depthwise layer into the equivalent CONV_2D (`depthwise_as_conv`) whose weights take it.

Supported: FULLY_CONNECTED, CONV_2D (groups=1) and DEPTHWISE_CONV_2D layers of a float base model (quantized
by edgec) or an int8 base (TFLite, through --adapter-map), int8 code. Other grouped convs, dilated convs and
--precision float32 are refused with EdgecError.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError
from edgec.frontends.peft_reader import BIN, SAFETENSORS, Adapter
from edgec.ir.graph import Graph
from edgec.passes.lora_fuse import (
    _weight_users,
    adapter_deltas,
    merge_deltas,
)

ADAPTER_VERSION = 1  # version of a slot built from a PEFT directory (OTA patches will carry their own)


@dataclasses.dataclass
class SlotAdapter:
    name: str
    path: str
    id: int  # first 4 bytes (big-endian) of the SHA-256 of the adapter's weights file
    version: int
    rank: int  # the largest rank over its modules
    modules: list[dict]


@dataclasses.dataclass
class SlotPlan:
    slots: int  # number of slots (>= len(adapters)); slot i holds adapters[i], the rest are empty
    adapters: list[SlotAdapter]
    layers: dict[int, list]  # weight tensor id -> per slot (A [r, K], B [OC, r]) float64 or None

    def report(self) -> list[dict]:
        return [{"name": a.name, "path": a.path, "mode": "slots", "slot": i, "id": a.id, "version": a.version,
                 "rank": a.rank, "modules": a.modules} for i, a in enumerate(self.adapters)]


def _err(graph: Graph, msg: str) -> EdgecError:
    return EdgecError(f"{graph.source}: {msg}" if graph.source else msg)


def adapter_id(adapter: Adapter) -> int:
    for name in (SAFETENSORS, BIN):
        path = Path(adapter.path) / name
        if path.is_file():
            return int.from_bytes(hashlib.sha256(path.read_bytes()).digest()[:4], "big")
    return 0


def _factors(delta: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(A [r, K], B [OC, r]) with B @ A = delta (delta has rank <= r: exact up to float64 rounding)."""
    u, s, vt = np.linalg.svd(delta.astype(np.float64), full_matrices=False)
    r = max(1, min(rank, len(s)))
    return vt[:r], u[:, :r] * s[:r]


def own_map(adapter: Adapter, adapter_map: dict[str, str] | None) -> dict[str, str] | None:
    """The entries of a shared --adapter-map that concern `adapter`'s modules."""
    return None if adapter_map is None else {k: v for k, v in adapter_map.items() if k in adapter.modules}


def plan_slots(graph: Graph, adapters: list[Adapter], n_slots: int | None = None,
               adapter_map: dict[str, str] | None = None) -> SlotPlan:
    """Bind every adapter to the graph's FULLY_CONNECTED / CONV_2D weights and factor its ΔW per layer."""
    n_slots = len(adapters) if n_slots is None else n_slots
    if n_slots < len(adapters):
        raise _err(graph, f"--slots {n_slots} is less than the {len(adapters)} adapters given")
    if n_slots > 32:
        raise _err(graph, f"--slots {n_slots}: at most 32 slots (the active-slot bitmask is 32 bits)")
    if adapter_map:
        stray = sorted(set(adapter_map) - {p for a in adapters for p in a.modules})
        if stray:
            raise _err(graph, f"--adapter-map names module(s) {', '.join(stray)} that no adapter adapts")
    layers: dict[int, list] = {}
    rows = []
    for s, adapter in enumerate(adapters):
        deltas, modules = adapter_deltas(graph, adapter, own_map(adapter, adapter_map), depthwise=True)
        for tid, delta in deltas.items():
            # conv ΔW [OC, KH, KW, IC] -> [OC, KH*KW*IC]: A's rows are conv filters in the weights' tap order
            rank = next(m["rank"] for m in modules if graph.t(tid).name in m["tensors"])
            layers.setdefault(tid, [None] * n_slots)[s] = _factors(delta.reshape(delta.shape[0], -1), rank)
        rows.append(SlotAdapter(adapter.name, str(adapter.path), adapter_id(adapter), ADAPTER_VERSION,
                                max(m["rank"] for m in modules), modules))
    return SlotPlan(n_slots, rows, layers)


def merged_graph(graph: Graph, adapters: list[Adapter], scales: list[float],
                 adapter_map: dict[str, str] | None = None) -> Graph:
    """The base with W + sum_i scales[i] * ΔW_i (PEFT's semantics for several active adapters): the float
    reference of a float base; for an int8 base the dequantize-merge-requantize graph (merged once)."""
    total: dict[int, np.ndarray] = {}
    for adapter, scale in zip(adapters, scales):
        if scale != 0:
            for tid, delta in adapter_deltas(graph, adapter, own_map(adapter, adapter_map), depthwise=True)[0].items():
                total[tid] = total.get(tid, 0.0) + scale * delta
    # An adapted depthwise layer becomes the equivalent CONV_2D, whose weights take the full-conv ΔW.
    users = _weight_users(graph)
    graph = depthwise_as_conv(graph, [tid for tid in total if users[tid][0].type == "DEPTHWISE_CONV_2D"])
    return merge_deltas(graph, total)


def depthwise_as_conv(graph: Graph, tids: list[int]) -> Graph:
    """The graph (input not modified) with every DEPTHWISE_CONV_2D whose weight is in `tids` replaced by the
    equivalent CONV_2D: weights [OC, KH, KW, C] (same tensor id, dtype and scales, quantization axis 0), zero
    except w[o, :, :, o // M] = W_dw[0, :, :, o]; same inputs, bias, outputs, stride, padding and activation."""
    if not tids:
        return graph
    users, tensors, ops = _weight_users(graph), list(graph.tensors), []
    for tid in tids:
        t = graph.t(tid)
        op = users[tid][0]
        c = graph.t(op.inputs[0]).shape[-1]
        _, kh, kw, oc = t.shape
        full = np.zeros((oc, kh, kw, c), t.data.dtype)
        o = np.arange(oc)
        full[o, :, :, o // (oc // c)] = t.data[0].transpose(2, 0, 1)
        quant = None if t.quant is None else dataclasses.replace(t.quant, axis=0 if t.quant.per_axis else None)
        tensors[tid] = dataclasses.replace(t, shape=full.shape, data=full, quant=quant, origin=None)
    for op in graph.ops:
        if op.type == "DEPTHWISE_CONV_2D" and op.inputs[1] in tids:
            attrs = {k: v for k, v in op.attrs.items() if k != "depth_multiplier"}
            op = dataclasses.replace(op, type="CONV_2D", inputs=list(op.inputs), outputs=list(op.outputs),
                                     attrs=attrs)
        ops.append(op)
    return dataclasses.replace(graph, tensors=tensors, ops=ops)
