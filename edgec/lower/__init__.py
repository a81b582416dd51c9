"""The lowering stage: every IR op becomes a call to a TIR-generated plain C kernel.

This package is the only place in edgec that imports TVM.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
import tvm_ffi

from edgec.errors import EdgecError
from edgec.ir.graph import Graph
from edgec.lower.kernel import Arg, LoweredOp
from edgec.lower.ops import LOWERINGS, MICRO_KERNEL_LOWERINGS, lowering_for
from edgec.lower.ops.slots import SLOT_LOWERINGS, AdapterBanks
from edgec.lower.tir_to_c import emit_c

__all__ = ["Arg", "LoweredModel", "LoweredOp", "lower_graph"]


@dataclass
class LoweredModel:
    graph: Graph
    ops: list[LoweredOp]
    kernel_of_op: list[str | None]  # C symbol per op (None for alias-only ops)
    kernel_params: dict[str, list[str]]  # C symbol -> parameter names
    kernels_c: str  # C definitions of all kernels
    adapter_banks: AdapterBanks | None = None  # LoRA slots mode: every slot's table image
    micro_kernels: str | None = None  # the runtime_c/kernels/ header kernels_c calls (edgec_dsp.h, ...)
    npu_kernels: bool = False  # kernels_c calls edgec_npu_invoke (runtime_c/npu/edgec_npu.h): Ethos-U targets
    idle_kernel_of_op: list[str | None] | None = None  # C symbol of each op's LoweredOp.idle kernel, or None


# "portable": plain C everywhere. The others send the int8 work of the MICRO_KERNEL_LOWERINGS ops through the
# micro-kernels of runtime_c/kernels/edgec_<variant>.h, bit-exact with portable: "dsp" Arm DSP extension
# (SMLAD), "mve" Arm Helium, "rv32" register-blocked plain C for RISC-V (docs/targets.md).
KERNEL_VARIANTS = ("portable", "dsp", "mve", "rv32")


def lower_graph(graph: Graph, slots: dict[int, list] | None = None, variant: str = "portable") -> LoweredModel:
    """Lower every op, share identical kernels, and emit all kernels as one C source.

    `slots` (LoRA slots mode): weight tensor id -> per slot (A, B) float factors or None; the
    FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D ops using that weight get the slot kernel
    (edgec.lower.ops.slots), whose tables go to `adapter_banks`. `variant`: one of KERNEL_VARIANTS."""
    if variant not in KERNEL_VARIANTS:
        raise EdgecError(f"kernel variant '{variant}' (supported: {', '.join(KERNEL_VARIANTS)})")
    mk = None if variant == "portable" else variant
    slots = slots or {}
    banks = AdapterBanks(len(next(iter(slots.values())))) if slots else None
    lowered = []
    for op in graph.ops:
        if op.type in SLOT_LOWERINGS and len(op.inputs) > 1 and op.inputs[1] in slots:
            lowered.append(SLOT_LOWERINGS[op.type](graph, op, slots[op.inputs[1]], banks, mk=mk))
            continue
        lower = lowering_for(graph, op)
        if lower is None:
            raise EdgecError(f"{graph.source}: {op.describe()} has no lowering (supported: "
                             f"{', '.join(sorted(LOWERINGS))})")
        if mk and lower is MICRO_KERNEL_LOWERINGS.get(op.type):  # int8 kernels only
            lowered.append(lower(graph, op, mk=mk))
        else:
            lowered.append(lower(graph, op))

    funcs: dict[str, tvm.tirx.PrimFunc] = {}
    readonly: dict[str, list[str]] = {}
    params: dict[str, list[str]] = {}
    by_hash: dict[int, list[str]] = {}

    def kernel_name(lo: LoweredOp) -> str | None:
        if lo.func is None:
            return None
        h = tvm_ffi.structural_hash(lo.func)
        name = next((n for n in by_hash.get(h, []) if tvm_ffi.structural_equal(funcs[n], lo.func)), None)
        if name is None:
            name = f"edgec_k_{lo.kind or lo.op.type.lower()}_{len(funcs)}"
            funcs[name] = lo.func
            names = [p.name for p in lo.func.params]
            if len(names) != len(lo.args):
                raise AssertionError(f"{lo.op.describe()}: kernel has {len(names)} params, {len(lo.args)} args")
            params[name] = names
            readonly[name] = [p for p, a in zip(names, lo.args) if a.readonly]
            by_hash.setdefault(h, []).append(name)
        return name

    kernel_of_op = [kernel_name(lo) for lo in lowered]
    idle_kernel_of_op = [kernel_name(lo.idle) if lo.idle is not None else None for lo in lowered]
    kernels_c = emit_c(funcs, readonly) if funcs else ""
    header = f"edgec_{mk}.h" if mk and f"edgec_{mk}_" in kernels_c else None
    return LoweredModel(graph, lowered, kernel_of_op, params, kernels_c, banks, header, "edgec_npu_invoke" in kernels_c,
                        idle_kernel_of_op)
