"""Turn TIR PrimFuncs into plain C99 functions with no TVM runtime symbols.

Follows the path in docs/tvm-notes: target "c" without a host, the stock s_tir lowering pipeline,
LowerIntrin, and removal of the TVM headers and export macros from the emitted source.
"""

from __future__ import annotations

import re

import tvm
from tvm import s_tir, tirx

_TARGET = None


def _target() -> tvm.target.Target:
    global _TARGET
    if _TARGET is None:
        _TARGET = tvm.target.Target({"kind": "c"})
    return _TARGET


def emit_c(funcs: dict[str, tirx.PrimFunc], readonly: dict[str, list[str]]) -> str:
    """Lower `funcs` (name -> PrimFunc with pointer params) and return C definitions.

    `readonly[name]` lists parameter names the function only reads; they are declared const.
    """
    mod = tvm.IRModule({name: _decompose_reductions(f).with_attr("global_symbol", name)
                        for name, f in funcs.items()})
    target = _target()
    with tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(_passes(target))(mod)
    for name in list(mod.functions.keys()):
        f = mod[name]
        if "tirx.is_entry_func" in f.attrs:
            mod[name] = f.without_attr("tirx.is_entry_func")
    src = tvm.get_global_func("target.build.c")(mod, target).inspect_source()
    return _clean(src, readonly)


def _decompose_reductions(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Hoist each reduction block's init out of its reduction loops (no `if (k == 0)` per MAC)."""
    sch = s_tir.Schedule(func)
    for block in _reduction_blocks(sch):
        loops = sch.get_loops(block)
        n_reduce = sum(1 for iv in sch.get(block).iter_vars if iv.iter_type == tirx.IterVar.CommReduce)
        if n_reduce and len(loops) >= n_reduce:
            sch.decompose_reduction(block, loops[len(loops) - n_reduce])
    return sch.mod["main"]


def _reduction_blocks(sch: s_tir.Schedule) -> list:
    """Templates name their reduction blocks "acc", "acc1", ... by convention."""
    found = []
    for name in ["acc"] + [f"acc{i}" for i in range(1, 8)]:
        try:
            found.append(sch.get_sblock(name))
        except Exception:  # noqa: BLE001, S112 - TVM raises its own error types for a missing block
            continue
    return found


def _passes(target: tvm.target.Target) -> list:
    """The stock s_tir pipeline's passes that matter for single-threaded CPU C.

    Left out: GPU/thread passes, VectorizeLoop (target c would emit OpenCL vector types),
    MakePackedAPI (we want plain pointer ABIs) and NarrowDataType (our indices are int32 already,
    and its bound analysis trips over Let expressions in TVM 0.27).
    """
    return [
        tirx.transform.BindTarget(target),
        s_tir.transform.CanonicalizeLoop(),
        s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.CompactBufferAllocation(),
        s_tir.transform.LowerMatchBuffer(),
        s_tir.transform.StmtSimplify(),
        s_tir.transform.LowerOpaqueBlock(),
        tirx.transform.FlattenBuffer(),
        s_tir.transform.LoopPartition(),
        tirx.transform.StorageRewrite(),
        tirx.transform.UnrollLoop(),
        tirx.transform.StmtSimplify(),
        tirx.transform.RemoveNoOp(),
        tirx.transform.CommonSubexprElim(),
        tirx.transform.LowerIntrin(),
    ]


_DROPPED_LINES = ("#include \"tvm/", "#define TVM_EXPORTS", "// tvm target", "void* __tvm_ffi__library_ctx",
                  "#ifdef __cplusplus", "extern \"C\"", "#endif")


def _clean(src: str, readonly: dict[str, list[str]]) -> str:
    """Drop TVM's headers, export macros, C++ guards and prototypes (ours are in edgec_kernels.h);
    declare read-only pointer parameters const."""
    out = []
    for line in src.splitlines():
        s = line.strip()
        if s.startswith(_DROPPED_LINES) or (s.startswith("TVM_DLL") and s.endswith(";")):
            continue
        out.append(line.replace("TVM_DLL ", ""))
    text = "\n".join(out)
    for name, params in readonly.items():
        for p in params:
            text = re.sub(rf"(\b{name}\([^)]*?)\b(\w+_t|float)\* {p}\b", rf"\1const \2* {p}", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return _mark_unused_params(text.strip() + "\n")


def _mark_unused_params(text: str) -> str:
    """Add `(void)p;` for parameters a kernel never reads (its result folded to a constant), so the C
    stays clean under -Wall -Wextra -Werror."""
    out = []
    for func in re.split(r"(?m)^(?=void )", text):
        m = re.match(r"void \w+\(([^)]*)\) \{\n", func)
        if m:
            body = func[m.end():]
            names = [p.split("*")[-1].strip() for p in m.group(1).split(",") if p.strip()]
            unused = [n for n in names if not re.search(rf"\b{re.escape(n)}\b", body)]
            func = func[:m.end()] + "".join(f"  (void){n};\n" for n in unused) + body
        out.append(func)
    return "".join(out)
