"""The arena planner: invariants on random liveness patterns, and the checker catches bad plans."""

from __future__ import annotations

import random

import pytest

from edgec.plan.arena import Buffer, Plan, lower_bound, pack, verify_plan


@pytest.mark.parametrize("seed", range(30))
def test_random_plans_are_valid_and_near_the_bound(seed):
    rng = random.Random(seed)
    n_steps = rng.randint(1, 30)
    buffers = []
    for i in range(rng.randint(1, 40)):
        first = rng.randint(-1, n_steps)
        last = rng.randint(first, n_steps)
        buffers.append(Buffer(f"tensor:{i}", rng.choice([1, 3, 16, 100, 640, 4096]) * rng.randint(1, 8), first, last))
    plan = pack(buffers, n_steps)  # pack() runs verify_plan itself; run it again to be explicit
    verify_plan(plan)
    assert plan.lower_bound_bytes == lower_bound(buffers, n_steps)
    assert plan.arena_bytes >= plan.lower_bound_bytes


def test_chain_meets_the_bound_exactly():
    # A sequential network: each op reads the previous output; two buffers live at a time.
    sizes = [490, 8000, 8000, 8000, 8000, 64, 12]
    buffers = [Buffer(f"tensor:{i}", s, i - 1, i) for i, s in enumerate(sizes)]
    plan = pack(buffers, len(sizes))
    assert plan.arena_bytes == plan.lower_bound_bytes == 16000


def test_checker_rejects_overlap_and_out_of_arena():
    a, b = Buffer("tensor:a", 64, 0, 2, offset=0), Buffer("tensor:b", 64, 1, 3, offset=32)
    with pytest.raises(AssertionError, match="overlap"):
        verify_plan(Plan([a, b], 128, 128, {}, {}))
    with pytest.raises(AssertionError, match="outside"):
        verify_plan(Plan([Buffer("tensor:c", 64, 0, 0, offset=96)], 128, 64, {}, {}))
