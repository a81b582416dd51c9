"""Memory planning: turn a lowered model into one arena with an offset per activation and scratch."""

from __future__ import annotations

from edgec.ir.graph import Graph
from edgec.lower.kernel import LoweredOp
from edgec.plan.arena import SCRATCH_ALIGN, Buffer, Plan, lower_bound, pack


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
    for t, step in first.items():
        last.setdefault(t, step)

    # Union-find over tensors that share bytes.
    parent = {t: t for t in first}

    def root(t: int) -> int:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for lo in lowered:
        if lo.alias:
            parent[root(lo.op.outputs[0])] = root(lo.op.inputs[0])

    def buffers_of_groups() -> list[Buffer]:
        groups: dict[int, list[int]] = {}
        for t in first:
            groups.setdefault(root(t), []).append(t)
        return [Buffer(f"tensor:{r}", max(graph.t(t).nbytes for t in members), min(first[t] for t in members),
                       max(last[t] for t in members), sorted(members)) for r, members in groups.items()]

    scratch = []
    for step, lo in enumerate(lowered):
        nbytes = sum(a.scratch_bytes for a in lo.args if a.kind == "scratch")
        if nbytes:
            scratch.append(Buffer(f"scratch:{step}", nbytes, step, step, align=SCRATCH_ALIGN))
    # The bound counts every tensor on its own (aliases are one tensor): in-place reuse can beat it.
    bound = lower_bound(buffers_of_groups() + scratch, n)

    for step, lo in enumerate(lowered):
        # At most one in-place pair per op: its output takes the bytes of one input that dies here.
        for tin, tout in lo.inplace:
            group_in = [t for t in first if root(t) == root(tin)]
            group_out = [t for t in first if root(t) == root(tout)]
            if (len(group_out) == 1 and all(last[t] <= step for t in group_in)
                    and graph.t(tin).nbytes == graph.t(tout).nbytes):
                parent[root(tout)] = root(tin)
                break

    plan = pack(buffers_of_groups() + scratch, n)
    plan.lower_bound_bytes = bound
    return plan
