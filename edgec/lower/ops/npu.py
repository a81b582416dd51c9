"""ETHOSU: one Ethos-U NPU partition made by Vela (the CUSTOM op 'ethos-u'), run by the NPU driver.

The kernel computes nothing itself: it hands the partition's command stream, the read-only blob (weights,
in flash) and the arena to `edgec_npu_invoke` (runtime_c/npu/edgec_npu.c), which calls the Ethos-U driver's
`ethosu_invoke_v3` with base_addr[0] = read-only blob, [1] = scratch (edgec's arena at Vela's scratch offset,
0), [2] = scratch_fast (the same arena in Vela's Shared_Sram memory mode). The IFMs and OFMs are not
arguments: the command stream addresses them at Vela's arena offsets, which the memory planner keeps
(edgec.plan, docs/npu.md). Errors are recorded by the wrapper and returned by edgec_run().
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Op
from edgec.lower.kernel import Arg, LoweredOp


def ethosu_func(CMS: int, BLOB: int, SCRATCH: int, FAST: int) -> tirx.PrimFunc:
    """edgec_npu_invoke(command stream, its bytes, read-only blob, its bytes, scratch, bytes, fast, bytes)."""
    # The buffers only give the pointers their type; a zero-byte one would be an empty array.
    NC, NB, NS, NF = (max(n, 1) for n in (CMS, BLOB, SCRATCH, FAST))

    @T.prim_func(s_tir=True)
    def ethosu(cms_p: T.handle("uint8"), blob_p: T.handle("uint8"), scratch_p: T.handle("uint8"),
               fast_p: T.handle("uint8")):
        cms = T.decl_buffer((NC,), "uint8", data=cms_p)
        blob = T.decl_buffer((NB,), "uint8", data=blob_p)
        scratch = T.decl_buffer((NS,), "uint8", data=scratch_p)
        fast = T.decl_buffer((NF,), "uint8", data=fast_p)
        T.evaluate(T.call_extern("int32", "edgec_npu_invoke", T.address_of(cms[0]), CMS, T.address_of(blob[0]),
                                 BLOB, T.address_of(scratch[0]), SCRATCH, T.address_of(fast[0]), FAST))
    return ethosu


def lower_ethosu(graph: Graph, op: Op) -> LoweredOp:
    if len(op.inputs) < 4:
        raise EdgecError(f"{graph.source}: {op.describe()}: an Ethos-U op needs command stream, read-only blob, "
                         f"scratch and scratch_fast inputs; it has {len(op.inputs)}")
    cms, blob, scratch, fast = op.inputs[:4]
    if not (graph.t(cms).is_const and graph.t(blob).is_const) or graph.t(scratch).is_const or \
            graph.t(fast).is_const or any(graph.t(t).dtype != "uint8" for t in op.inputs[:4]):
        raise EdgecError(f"{graph.source}: {op.describe()}: expected constant uint8 command stream and read-only "
                         "blob, and uint8 scratch / scratch_fast tensors in the arena")
    sizes = [graph.t(t).nbytes for t in (cms, blob, scratch, fast)]
    args = [Arg.input(cms), Arg.input(blob), Arg("tensor", tensor=scratch, readonly=False),
            Arg("tensor", tensor=fast, readonly=False)]
    return LoweredOp(op, ethosu_func(*sizes), args, kind="ethosu")


LOWERINGS = {"ETHOSU": lower_ethosu}
