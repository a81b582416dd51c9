"""Memory planning: turn a lowered model into one arena with an offset per activation and scratch."""

from __future__ import annotations

from edgec.ir.graph import Graph
from edgec.lower.kernel import LoweredOp
from edgec.plan.arena import Buffer, Plan, pack


def plan_memory(graph: Graph, lowered: list[LoweredOp]) -> Plan:
    """Liveness over the op sequence (file order), alias and in-place merging, then packing."""
    n = len(lowered)
    first: dict[int, int] = {t: -1 for t in graph.inputs}
    last: dict[int, int] = {}
    for step, lo in enumerate(lowered):
        for t in lo.op.inputs:
            if t >= 0 and not graph.t(t).is_const:
                last[t] = step
        for t in lo.op.outputs:
            first.setdefault(t, step)
            last.setdefault(t, step)
    for t in graph.outputs:
        last[t] = n
    for t in first:
        last.setdefault(t, first[t])

    # Union-find over tensors that share bytes.
    parent = {t: t for t in first}

    def root(t: int) -> int:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for step, lo in enumerate(lowered):
        if lo.alias:
            parent[root(lo.op.outputs[0])] = root(lo.op.inputs[0])
        for tin, tout in lo.inplace:
            # Share only when nothing reads the input after this op (and it is not a graph output).
            group_in = [t for t in first if root(t) == root(tin)]
            if all(last[t] <= step for t in group_in) and graph.t(tin).nbytes == graph.t(tout).nbytes:
                parent[root(tout)] = root(tin)

    groups: dict[int, list[int]] = {}
    for t in first:
        groups.setdefault(root(t), []).append(t)
    buffers = []
    for r, members in groups.items():
        size = max(graph.t(t).nbytes for t in members)
        buffers.append(Buffer(f"tensor:{r}", size, min(first[t] for t in members), max(last[t] for t in members),
                              sorted(members)))
    for step, lo in enumerate(lowered):
        scratch = sum(a.scratch_bytes for a in lo.args if a.kind == "scratch")
        if scratch:
            buffers.append(Buffer(f"scratch:{step}", scratch, step, step))
    return pack(buffers, n)
