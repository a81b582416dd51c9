"""What an op lowers to: a TIR PrimFunc and the arguments the model passes to it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tvm import tirx

from edgec.ir.graph import Op


@dataclass
class Arg:
    """One pointer argument of a kernel call.

    kind "tensor": graph tensor `tensor` (an activation in the arena or a constant in flash);
    kind "const": an extra constant array made at compile time (e.g. per-channel multipliers);
    kind "scratch": `scratch_bytes` of arena scratch, live only during this op;
    kind "adapter_banks": the LoRA slot banks (const, src/adapters.c) viewed as `dtype` ("int8" or "int32");
    kind "adapter_state": the slots' scales and bank offsets (RAM).
    """

    kind: str
    tensor: int = -1
    array: np.ndarray | None = None
    scratch_bytes: int = 0
    readonly: bool = True
    dtype: str = ""

    @staticmethod
    def input(tid: int) -> Arg:
        return Arg("tensor", tensor=tid)

    @staticmethod
    def output(tid: int) -> Arg:
        return Arg("tensor", tensor=tid, readonly=False)

    @staticmethod
    def const(array: np.ndarray) -> Arg:
        return Arg("const", array=np.ascontiguousarray(array))

    @staticmethod
    def adapter_banks(dtype: str) -> Arg:
        """The LoRA slot banks (one per slot, in flash), read as `dtype` elements."""
        return Arg("adapter_banks", dtype=dtype)

    @staticmethod
    def adapter_state() -> Arg:
        """Per slot (int32 pairs, RAM): the active scale (Q16, 0 = off) and the bank's byte offset."""
        return Arg("adapter_state")

    @staticmethod
    def scratch(nbytes: int) -> Arg:
        return Arg("scratch", scratch_bytes=nbytes, readonly=False)


@dataclass
class LoweredOp:
    """An op after lowering. `func` is None for ops that only relabel memory (RESHAPE, SQUEEZE):
    their output aliases their input. `inplace` lists (input tensor, output tensor) pairs that may
    share arena memory because the kernel reads each element before writing the same element."""

    op: Op
    func: tirx.PrimFunc | None
    args: list[Arg] = field(default_factory=list)
    alias: bool = False
    inplace: list[tuple[int, int]] = field(default_factory=list)
    kind: str = ""  # short kernel family name used in the C symbol, e.g. "conv2d"
    # LoRA slots mode: the same op without adapters (the plain kernel), run instead while no slot is active.
    idle: LoweredOp | None = None
