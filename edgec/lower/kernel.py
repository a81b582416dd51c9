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
    kind "adapter": a LoRA slot table (const, src/adapters.c); kind "adapter_state": the slots' active scales.
    """

    kind: str
    tensor: int = -1
    array: np.ndarray | None = None
    scratch_bytes: int = 0
    readonly: bool = True

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
    def adapter_table(array: np.ndarray) -> Arg:
        """A LoRA slot table: constant, placed in src/adapters.c (not weights.c)."""
        return Arg("adapter", array=np.ascontiguousarray(array))

    @staticmethod
    def adapter_state() -> Arg:
        """The per-slot active scales (int32 Q16, RAM), written by edgec_adapter_activate()."""
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
