"""LoRA `slots` mode: several adapters kept beside the frozen base, switchable at run time.

This pass binds each adapter's modules to the base's weights exactly as fuse mode does
(`edgec.passes.lora_fuse.bind` / `ir_delta`: names, --adapter-map, BatchNorm scaling, layouts) and
returns, per adapted weight and slot, float factors (A [r, K], B [OC, r]) with B @ A = ΔW in the IR layout
(K = KH*KW*IC for a conv; a rank-r SVD of ΔW, so the layout steps of the ONNX reader need no factor-wise
rewrite). The graph itself is not changed: the base is quantized without adapters, and the lowering
(`edgec.lower.ops.conv.lower_fully_connected_slots` / `lower_conv2d_slots`) quantizes the factors against the
base's scales.

Supported so far: FULLY_CONNECTED and CONV_2D (groups=1) layers of a float base model, int8 code.
Depthwise/grouped convs, int8 bases and --precision float32 are refused with EdgecError.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError
from edgec.frontends.peft_reader import BIN, SAFETENSORS, Adapter
from edgec.ir.graph import Graph
from edgec.passes.lora_fuse import _weight_users, bind, fuse_adapter, ir_delta

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


def plan_slots(graph: Graph, adapters: list[Adapter], n_slots: int | None = None,
               adapter_map: dict[str, str] | None = None) -> SlotPlan:
    """Bind every adapter to the graph's FULLY_CONNECTED / CONV_2D weights and factor its ΔW per layer."""
    n_slots = len(adapters) if n_slots is None else n_slots
    if n_slots < len(adapters):
        raise _err(graph, f"--slots {n_slots} is less than the {len(adapters)} adapters given")
    if n_slots > 32:
        raise _err(graph, f"--slots {n_slots}: at most 32 slots (the active-slot bitmask is 32 bits)")
    users = _weight_users(graph)
    layers: dict[int, list] = {}
    rows = []
    for s, adapter in enumerate(adapters):
        modules, rank = [], 0
        for b in bind(graph, adapter, adapter_map):
            for tid in b.tids:
                ops = users[tid]
                where = f"adapter '{adapter.name}' module '{b.module.path}' -> '{b.target}'"
                bad = [op for op in ops if op.type not in ("FULLY_CONNECTED", "CONV_2D") or (
                    op.type == "CONV_2D" and graph.t(op.inputs[0]).shape[-1] != graph.t(tid).shape[-1])]
                if bad:
                    raise _err(graph, f"{where} ({bad[0].describe()}): slots mode supports FULLY_CONNECTED and "
                                      "CONV_2D (groups=1) layers; PEFT's LoRA on a depthwise/grouped convolution is "
                                      "not a change of its weights (not fusable either)")
                t = graph.t(tid)
                if t.dtype != "float32":
                    raise _err(graph, f"{where}: weight '{t.name}' is {t.dtype}: slots mode needs a float base model "
                                      "so far (it quantizes the base itself); use --adapter-mode fuse for int8 bases")
                delta, _ = ir_delta(graph, b, tid, ops[0])
                # conv ΔW [OC, KH, KW, IC] -> [OC, KH*KW*IC]: A's rows are conv filters in the weights' tap order
                layers.setdefault(tid, [None] * n_slots)[s] = _factors(delta.reshape(delta.shape[0], -1),
                                                                       b.module.rank)
            rank = max(rank, b.module.rank)
            modules.append({"module": b.module.path, "target": b.target,
                            "tensors": [graph.t(tid).name for tid in b.tids], "rank": b.module.rank,
                            "scale": b.module.scale, "delta_max_abs": float(np.abs(b.module.delta()).max())})
        rows.append(SlotAdapter(adapter.name, str(adapter.path), adapter_id(adapter), ADAPTER_VERSION, rank,
                                modules))
    return SlotPlan(n_slots, rows, layers)


def merged_graph(graph: Graph, adapters: list[Adapter], scales: list[float],
                 adapter_map: dict[str, str] | None = None) -> Graph:
    """The float base with W + sum_i scales[i] * ΔW_i (PEFT's semantics for several active adapters)."""
    for adapter, scale in zip(adapters, scales):
        if scale == 0:
            continue
        scaled = dataclasses.replace(adapter, modules={p: dataclasses.replace(m, scale=m.scale * scale)
                                                       for p, m in adapter.modules.items()})
        graph, _ = fuse_adapter(graph, scaled, adapter_map)
    return graph
