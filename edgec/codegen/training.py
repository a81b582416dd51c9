"""C of the training step (`edgec build --train`): the statements of src/train.c, from an
edgec.train.plan.TrainPlan. The fixed parts (sample, apply, step, validate, checkpoint) are in
templates/project/train.c.j2."""

from __future__ import annotations

import numpy as np

from edgec.ir.graph import Graph
from edgec.train.plan import TrainPlan


def _c_float(v: float) -> str:
    return "-INFINITY" if v == -np.inf else "INFINITY" if v == np.inf else f"{float(np.float32(v))!r}f"


def training_context(graph: Graph, plan: TrainPlan, tensor_offset: dict[int, int], const_symbol) -> dict:
    """Template context: buffer macros, layer structs, forward / backward / loss statements.
    `const_symbol(array, comment)` puts a constant array into weights.c and returns its name."""
    o = plan.options
    buf = {b.name: f"EDGEC_TRAIN_{b.name.upper()}" for b in plan.buffers}
    names = {tid: graph.t(tid).name for tid in plan.value}
    macros = [{"name": buf[b.name], "offset": b.offset, "floats": b.floats, "category": b.category,
               "tensor": names.get(int(b.name[1:])) if b.name[0] in "vg" and b.name[1:].isdigit() else None}
              for b in plan.buffers]

    def val(tid: int) -> str:
        return buf[plan.value[tid]]

    def grad(tid: int) -> str:
        return buf[plan.grad[tid]]

    structs, forward, backward = [], [], []
    for tid in plan.tail_inputs:
        t = graph.t(tid)
        src = f"(arena + {tensor_offset[tid]}u)"
        if t.dtype == "float32":
            forward.append(f"memcpy({val(tid)}, {src}, {t.size}u * sizeof(float));")
        elif t.dtype == "int8":
            forward.append(f"edgec_train_dequantize((const int8_t *){src}, {t.size}, {t.zero_point}, "
                           f"{float(t.scale)!r}f, {val(tid)});")
        else:
            raise AssertionError(f"tail input {t.name} has dtype {t.dtype}")

    def clamp_args(s) -> str:
        lo, hi = s.clamp
        return f"{graph.t(s.y).size}, {_c_float(lo)}, {_c_float(hi)}"

    def activation(s, into: list[str]) -> None:
        if s.clamp is not None:
            into.append(f"edgec_train_clamp({val(s.y)}, {clamp_args(s)});")

    for n, s in enumerate(plan.steps):
        name = f"edgec_train_op{n}"
        x = val(s.x[0])
        layer = plan.layers[s.layer] if s.layer is not None else None
        t = buf[f"t{s.layer}"] if layer is not None else buf["gt"]  # a frozen layer (r 0) never touches t
        if s.kind in ("fc", "conv"):
            w = s.weights
            wq = const_symbol(graph.t(w["wq"]).data, f"training: {s.op.describe()} weights")
            ws = const_symbol(w["ws"], f"training: {s.op.describe()} weight scales")
            bias = const_symbol(w["bias"], f"training: {s.op.describe()} bias (float)") if w["bias"] is not None \
                else "NULL"
            fields = [f".wq = {wq}", f".ws = {ws}", f".bias = {bias}", ".scale = 1.0f"]
            if layer is not None:
                fields += [f".r = {layer.r}", f".a = {buf['p']} + {layer.a_offset}u",
                           f".b = {buf['p']} + {layer.b_offset}u"]
            geo = ", ".join(f".{k} = {v}" for k, v in s.geometry.items())
            ctype = "edgec_train_fc_t" if s.kind == "fc" else "edgec_train_conv_t"
            structs.append(f"static const {ctype} {name} = {{ {geo}, {', '.join(fields)} }};")
            forward.append(f"edgec_train_{s.kind}_forward(&{name}, {x}, {t}, {val(s.y)});")
        elif s.kind == "pool":
            geo = ", ".join(f".{k} = {v}" for k, v in s.geometry.items() if k != "oc")
            structs.append(f"static const edgec_train_pool_t {name} = {{ {geo} }};")
            argmax = f"edgec_train_argmax_{n}" if s.geometry["max"] and s.y in plan.grad else "NULL"
            if argmax != "NULL":
                structs.append(f"static int32_t {argmax}[{graph.t(s.y).size}];")
            forward.append(f"edgec_train_pool_forward(&{name}, {x}, {val(s.y)}, {argmax});")
        elif s.kind == "mean":
            forward.append(f"edgec_train_mean_forward({x}, {s.geometry['n']}, {s.geometry['c']}, {val(s.y)});")
        elif s.kind == "add":
            forward.append(f"edgec_train_add({x}, {val(s.x[1])}, {s.geometry['n']}, {val(s.y)});")
        activation(s, forward)

    # Backward, last op first. A tensor read by several ops gets its first gradient written in place and
    # the others added through gtmp.
    written: set[int] = set()

    def gx_for(x: int, pending: list[str]) -> str:
        if x not in plan.grad:
            return "NULL"
        if x not in written:
            written.add(x)
            return grad(x)
        pending.append(f"edgec_train_accumulate({grad(x)}, {buf['gtmp']}, {graph.t(x).size});")
        return buf["gtmp"]

    for n in reversed(range(len(plan.steps))):
        s = plan.steps[n]
        if s.y not in plan.grad or s.kind == "reshape":
            continue
        gy = grad(s.y)
        if s.clamp is not None:
            backward.append(f"edgec_train_clamp_backward({val(s.y)}, {gy}, {clamp_args(s)});")
        after: list[str] = []
        if s.kind in ("fc", "conv"):
            layer = plan.layers[s.layer] if s.layer is not None else None
            ga = gb = "NULL"
            t = buf["gt"]
            if layer is not None:
                t = buf[f"t{s.layer}"]
                if layer.b_offset < plan.trainable:
                    gb = f"{buf['g_sample']} + {layer.b_offset}u"
                if layer.a_offset < plan.trainable:
                    ga = f"{buf['g_sample']} + {layer.a_offset}u"
            gx = gx_for(s.x[0], after)
            if gx == "NULL" and layer is None:
                continue
            backward.append(f"edgec_train_{s.kind}_backward(&edgec_train_op{n}, {val(s.x[0])}, {t}, {gy}, {gx}, "
                            f"{ga}, {gb}, {buf['gt']});")
        elif s.kind == "pool":
            gx = gx_for(s.x[0], after)
            argmax = f"edgec_train_argmax_{n}" if s.geometry["max"] else "NULL"
            backward.append(f"edgec_train_pool_backward(&edgec_train_op{n}, {argmax}, {gy}, {gx});")
        elif s.kind == "mean":
            gx = gx_for(s.x[0], after)
            backward.append(f"edgec_train_mean_backward({gy}, {s.geometry['n']}, {s.geometry['c']}, {gx});")
        elif s.kind == "add":
            for x in s.x:
                pending: list[str] = []
                gx = gx_for(x, pending)
                if gx != "NULL":
                    backward.append(f"memcpy({gx}, {gy}, {s.geometry['n']}u * sizeof(float));")
                    backward += pending
            continue
        backward += after

    init = []
    for la in plan.layers:
        for which, arr, off in (("A", la.a0, la.a_offset), ("B", la.b0, la.b_offset)):
            sym = const_symbol(np.ascontiguousarray(arr, np.float32),
                               f"training: initial {which} of the adapter on {la.op.describe()}")
            init.append({"symbol": sym, "offset": off, "count": arr.size})
    layers = [{"layout_index": la.layout_index, "r": la.r, "k": la.k, "oc": la.oc, "rank": la.rank,
               "a": f"{buf['p']} + {la.a_offset}u", "b": f"{buf['p']} + {la.b_offset}u",
               "ws": const_symbol(plan.steps[_step_of(plan, la)].weights["ws"], "")} for la in plan.layers]
    return {"o": o, "plan": plan, "memory_floats": plan.memory_floats, "buf": buf, "macros": macros, "structs": structs,
            "forward": forward, "backward": backward, "init": init, "layers": layers,
            "loss_value": val(plan.loss_tensor), "loss_grad": grad(plan.loss_tensor),
            "target_buf": buf.get("target"), "trainable": plan.trainable, "params": plan.params,
            "dp_std": None if o.dp_clip is None else float(np.float32(o.dp_noise * o.dp_clip))}


def _step_of(plan: TrainPlan, layer) -> int:
    return next(i for i, s in enumerate(plan.steps) if s.op is layer.op)
