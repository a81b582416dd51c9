"""One static arena: liveness analysis and offset packing of activations and kernel scratch.

The invariants (checked by `verify_plan`, described in docs/memory-plan.md): every buffer lies inside
the arena at an aligned offset, and no two buffers whose live ranges intersect share a byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALIGN = 4  # int32/float tensors need 4-byte alignment; the arena base itself is 16-byte aligned
SCRATCH_ALIGN = 8  # kernel scratch may start with int64 values


@dataclass
class Buffer:
    """A region of the arena: one tensor, an alias/in-place group of tensors, or an op's scratch."""

    name: str
    size: int
    first: int  # first step at which it holds live data (-1 = before the first op: graph inputs)
    last: int  # last step at which it is read (n_ops = after the last op: graph outputs)
    tensors: list[int] = field(default_factory=list)
    offset: int = -1
    align: int = ALIGN
    pinned: bool = False  # offset fixed beforehand (Ethos-U targets: Vela's arena offsets), not chosen by `pack`

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last

    def overlaps_in_space(self, other: Buffer) -> bool:
        return self.offset < other.offset + other.size and other.offset < self.offset + self.size


@dataclass
class Plan:
    buffers: list[Buffer]
    arena_bytes: int
    lower_bound_bytes: int
    tensor_offset: dict[int, int]  # tensor id -> arena offset
    scratch_offset: dict[int, int]  # op position -> arena offset of its scratch


def _align(x: int, align: int = ALIGN) -> int:
    return (x + align - 1) // align * align


def lower_bound(buffers: list[Buffer], n_steps: int) -> int:
    """Largest sum of sizes of buffers live at the same step: no plan can use less."""
    best = 0
    for step in range(-1, n_steps + 1):
        best = max(best, sum(b.size for b in buffers if b.first <= step <= b.last))
    return best


def _place(buffers: list[Buffer], order: list[Buffer]) -> int:
    """Greedy first fit: each buffer, in `order`, goes to the lowest aligned offset that does not
    overlap any already placed buffer that is live at the same time."""
    placed = [b for b in buffers if b.pinned]
    end = max((b.offset + b.size for b in placed), default=0)
    for b in order:
        if b.pinned:
            continue
        conflicts = sorted((p for p in placed if p.overlaps_in_time(b)), key=lambda p: p.offset)
        offset = 0
        for p in conflicts:
            if offset + b.size <= p.offset:
                break
            offset = max(offset, _align(p.offset + p.size, b.align))
        b.offset = offset
        placed.append(b)
        end = max(end, offset + b.size)
    return _align(end)


def pack(buffers: list[Buffer], n_steps: int, npu_steps: set[int] | frozenset = frozenset()) -> Plan:
    """Place every buffer; tries a few greedy orders and keeps the smallest arena. Pinned buffers keep their
    offsets (the others are placed around them); `npu_steps`: see `verify_plan`."""
    orders = [
        sorted(buffers, key=lambda b: (-b.size, b.first)),
        sorted(buffers, key=lambda b: (-b.size * (b.last - b.first + 1), -b.size)),
        sorted(buffers, key=lambda b: (b.first, -b.size)),
    ]
    best_size, best_offsets = None, None
    for order in orders:
        size = _place(buffers, order)
        if best_size is None or size < best_size:
            best_size, best_offsets = size, [b.offset for b in buffers]
    for b, off in zip(buffers, best_offsets):
        b.offset = off
    tensor_offset = {t: b.offset for b in buffers for t in b.tensors}
    scratch_offset = {int(b.name.split(":")[1]): b.offset for b in buffers if b.name.startswith("scratch:")}
    plan = Plan(buffers, best_size or 0, lower_bound(buffers, n_steps), tensor_offset, scratch_offset)
    verify_plan(plan, npu_steps)
    return plan


def _overlap_outside(a: Buffer, b: Buffer, steps: set[int] | frozenset) -> bool:
    """Whether a and b are both live at some step that is not in `steps`."""
    return any(s not in steps for s in range(max(a.first, b.first), min(a.last, b.last) + 1))


def verify_plan(plan: Plan, npu_steps: set[int] | frozenset = frozenset()) -> None:
    """Raise AssertionError if two simultaneously live buffers overlap or a buffer leaves the arena.

    Two pinned buffers (offsets from Vela) may overlap at an Ethos-U op (`npu_steps`): Vela placed that op's
    IFMs, OFMs and working memory inside its scratch region itself; elsewhere they are checked like any other."""
    bufs = plan.buffers
    for i, a in enumerate(bufs):
        if a.offset < 0 or a.offset % a.align or a.offset + a.size > plan.arena_bytes:
            raise AssertionError(f"buffer {a.name} at {a.offset}+{a.size} is outside the {plan.arena_bytes}-byte "
                                 "arena or misaligned")
        for b in bufs[i + 1:]:
            if a.pinned and b.pinned and npu_steps and not _overlap_outside(a, b, npu_steps):
                continue
            if a.overlaps_in_time(b) and a.overlaps_in_space(b) and a.size and b.size:
                raise AssertionError(f"arena plan overlap: {a.name} [{a.offset}, {a.offset + a.size}) live "
                                     f"{a.first}..{a.last} and {b.name} [{b.offset}, {b.offset + b.size}) live "
                                     f"{b.first}..{b.last}")
