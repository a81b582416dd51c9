"""Memory planning: turn a lowered model into one arena with an offset per activation and scratch."""

from __future__ import annotations

from edgec.errors import EdgecError
from edgec.ir.graph import Graph
from edgec.lower.kernel import LoweredOp
from edgec.plan.arena import SCRATCH_ALIGN, Buffer, Plan, lower_bound, pack


def plan_memory(graph: Graph, lowered: list[LoweredOp], fixed: dict[int, int] | None = None) -> Plan:
    """Liveness over the op sequence (file order), alias and in-place merging, then packing.

    `fixed` (Ethos-U targets: Vela's OfflineMemoryAllocation): tensor id -> arena offset that the plan must keep
    (`pinned` buffers); everything else is packed around them. The scratch of each ETHOSU op is pinned for that
    step only (`npu_step`): Vela placed the op's IFMs and OFMs inside it (docs/npu.md)."""
    fixed = fixed or {}
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
            a, b = lo.op.outputs[0], lo.op.inputs[0]
            if a in fixed and b in fixed and fixed[a] != fixed[b]:
                raise EdgecError(f"{graph.source}: {lo.op.describe()} is a CPU op whose output edgec aliases to its "
                                 f"input, but Vela placed them at different arena offsets ({fixed[b]}, {fixed[a]}); "
                                 "not supported yet")
            parent[root(a)] = root(b)

    def buffers_of_groups() -> list[Buffer]:
        groups: dict[int, list[int]] = {}
        for t in first:
            groups.setdefault(root(t), []).append(t)
        return [Buffer(f"tensor:{r}", max(graph.t(t).nbytes for t in members), min(first[t] for t in members),
                       max(last[t] for t in members), sorted(members)) for r, members in groups.items()]

    scratch = []
    npu_regions, npu_steps = [], set()
    for step, lo in enumerate(lowered):
        if lo.op.type == "ETHOSU":  # the NPU's scratch / scratch_fast: Vela's region, this step only
            npu_steps.add(step)
            for t in dict.fromkeys(lo.op.inputs[2:4]):
                npu_regions.append(Buffer(f"npu:{step}:{t}", graph.t(t).nbytes, step, step, [t], offset=fixed[t],
                                      pinned=True))
            continue

        # A slots op runs either its slot kernel or its idle kernel: the larger scratch serves both.
        nbytes = max(sum(a.scratch_bytes for a in alt.args if a.kind == "scratch") for alt in (lo, lo.idle) if alt)
        if nbytes:
            scratch.append(Buffer(f"scratch:{step}", nbytes, step, step, align=SCRATCH_ALIGN))
    # The bound counts every tensor on its own (aliases are one tensor): in-place reuse can beat it.
    bound = lower_bound(buffers_of_groups() + scratch, n)

    for step, lo in enumerate(lowered):
        # At most one in-place pair per op: its output takes the bytes of one input that dies here.
        for tin, tout in lo.inplace:
            if tin in fixed or tout in fixed:
                continue
            group_in = [t for t in first if root(t) == root(tin)]
            group_out = [t for t in first if root(t) == root(tout)]
            if (len(group_out) == 1 and all(last[t] <= step for t in group_in)
                    and graph.t(tin).nbytes == graph.t(tout).nbytes):
                parent[root(tout)] = root(tin)
                break

    buffers = buffers_of_groups()
    for b in buffers:
        offsets = {fixed[t] for t in b.tensors if t in fixed}
        if len(offsets) > 1:
            raise EdgecError(f"{graph.source}: tensors {b.tensors} share bytes in edgec's plan but Vela placed them "
                             f"at different offsets {sorted(offsets)}")
        if offsets:
            b.offset, b.pinned = offsets.pop(), True
    plan = pack(buffers + scratch + npu_regions, n, npu_steps)
    # An Ethos-U op needs its whole scratch region (Vela's IFMs/OFMs lie inside it).
    plan.lower_bound_bytes = max([bound] + [b.size for b in npu_regions])
    return plan
