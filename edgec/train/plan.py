"""The training plan of `edgec build --train`: which ops run in float for training, their buffers, and the
static training memory (docs/training.md).

The int8 model runs up to the first trained layer (the "prefix", the plain inference kernels); the
activations the rest of the graph reads from it are dequantized, and the rest (the "tail") runs in float32
through the training kernels of runtime_c/train: frozen weights dequantized on the fly, the trained adapters
in float, a forward pass that keeps what the backward pass needs, and a backward pass down to the first
trained layer. Every buffer is static; this module places them and reports the bytes per category.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

import numpy as np

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Op
from edgec.passes.lora_slots import ADAPTER_VERSION, SlotAdapter, SlotPlan

LOSSES = ("xent", "mse")
OPTIMIZERS = ("sgd", "adam")
TRAIN_TENSORS = ("ab", "b")
ADAPTABLE = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
TAIL_OPS = ADAPTABLE + ("AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN", "RESHAPE", "ADD")
AUTO_LAYERS = 2  # --train-layers auto: the last two adaptable layers


@dataclasses.dataclass
class TrainOptions:
    adapter: str  # an --adapter's name (train it) or a new adapter's name
    layers: str = "auto"  # "auto" or op indices "8,11"
    rank: int = 4  # rank of a new adapter
    loss: str = "xent"
    optimizer: str = "sgd"
    lr: float = 0.01
    batch: int = 8
    tensors: str = "ab"  # train A and B, or B only
    dp_clip: float | None = None
    dp_noise: float | None = None
    seed: int = 0  # initial A of a new adapter

    def check(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", self.adapter):
            raise EdgecError(f"--train '{self.adapter}': an adapter name of 1 to 15 letters, digits, '_', '.' "
                             "or '-' (it is stored in the bank's 16-byte name field)")
        for what, value, allowed in (("--loss", self.loss, LOSSES), ("--optimizer", self.optimizer, OPTIMIZERS),
                                     ("--train-tensors", self.tensors, TRAIN_TENSORS)):
            if value not in allowed:
                raise EdgecError(f"{what} '{value}': supported: {', '.join(allowed)}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise EdgecError(f"--lr {self.lr}: the learning rate must be a positive number")
        if self.batch < 1:
            raise EdgecError(f"--train-batch {self.batch}: at least 1")
        if not 1 <= self.rank <= 64:
            raise EdgecError(f"--train-rank {self.rank}: supported 1..64")
        if (self.dp_clip is None) != (self.dp_noise is None):
            raise EdgecError("DP-SGD needs both --dp-clip C and --dp-noise SIGMA")
        if self.dp_clip is not None and not (self.dp_clip > 0 and self.dp_noise >= 0):
            raise EdgecError(f"--dp-clip {self.dp_clip} must be > 0 and --dp-noise {self.dp_noise} >= 0")

    def layer_indices(self) -> list[int] | None:
        """The op indices of --train-layers, or None for auto."""
        if self.layers == "auto":
            return None
        try:
            return sorted({int(v) for v in self.layers.split(",") if v.strip()})
        except ValueError:
            raise EdgecError(f"--train-layers '{self.layers}': expected 'auto' or op indices like 8,11 "
                             "(see `edgec inspect`)") from None


def adaptable_ops(graph: Graph) -> list[Op]:
    """Layers a trained adapter can sit on: FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D with constant
    weights (dilation 1)."""
    return [op for op in graph.ops if op.type in ADAPTABLE and len(op.inputs) > 1 and graph.t(op.inputs[1]).is_const
            and op.attrs.get("dilation_h", 1) == 1 and op.attrs.get("dilation_w", 1) == 1]


def choose_layers(graph: Graph, options: TrainOptions) -> list[Op]:
    """The ops --train-layers names (a new adapter): auto = the last AUTO_LAYERS adaptable layers."""
    ops = adaptable_ops(graph)
    wanted = options.layer_indices()
    if wanted is None:
        if not ops:
            raise EdgecError(f"{graph.source}: no layer to train (supported: {', '.join(ADAPTABLE)})")
        return ops[-AUTO_LAYERS:]
    by_index = {op.index: op for op in ops}
    bad = [i for i in wanted if i not in by_index]
    if bad:
        raise EdgecError(f"{graph.source}: --train-layers: op(s) {', '.join(map(str, bad))} cannot be trained "
                         f"(adaptable layers: {', '.join(str(op.index) for op in ops)})")
    return [by_index[i] for i in wanted]


def new_adapter_factors(graph: Graph, ops: list[Op], rank: int, seed: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """PEFT's initialisation of a new LoRA adapter, per weight tensor id: A uniform in +-1/sqrt(K) (the
    Kaiming-uniform bound PEFT uses), B zero, so the adapter starts as the base model."""
    rng = np.random.default_rng(seed)
    factors = {}
    for op in ops:
        w = graph.t(op.inputs[1])
        if op.type == "FULLY_CONNECTED":
            oc, k = w.shape
        else:  # A is a full convolution [r, KH, KW, C], also on a depthwise layer
            oc = w.shape[-1] if op.type == "DEPTHWISE_CONV_2D" else w.shape[0]
            k = w.shape[1] * w.shape[2] * graph.t(op.inputs[0]).shape[-1]
        r = min(rank, k, oc)
        factors[op.inputs[1]] = (rng.uniform(-1, 1, (r, k)) / np.sqrt(k), np.zeros((oc, r)))
    return factors


def add_new_adapter(graph: Graph, plan: SlotPlan, options: TrainOptions, grow: bool) -> None:
    """Add the new adapter `options.adapter` to the slot plan: the next slot (a new one when `grow`, else the
    first slot no adapter holds) with PEFT's initial factors on the --train-layers layers."""
    ops = choose_layers(graph, options)
    slot = len(plan.adapters)
    if grow:
        plan.slots += 1
        for per_slot in plan.layers.values():
            per_slot.append(None)
    elif slot >= plan.slots:
        raise EdgecError(f"--slots {plan.slots}: no free slot for the new adapter '{options.adapter}'")
    if plan.slots > 32:
        raise EdgecError(f"{plan.slots} slots: at most 32")
    factors = new_adapter_factors(graph, ops, options.rank, options.seed)
    modules = []
    for op, (tid, (a, _)) in zip(ops, factors.items()):
        plan.layers.setdefault(tid, [None] * plan.slots)[slot] = factors[tid]
        modules.append({"module": f"layers.{op.index}", "target": op.describe(), "tensors": [graph.t(tid).name],
                        "rank": a.shape[0], "scale": 1.0, "new": True})
    adapter_id = int.from_bytes(hashlib.sha256(f"edgec-train:{options.adapter}".encode()).digest()[:4], "big")
    plan.adapters.append(SlotAdapter(options.adapter, "", adapter_id, ADAPTER_VERSION,
                                     max(m["rank"] for m in modules), modules))


def plan_for_adapter(graph: Graph, source_graph: Graph, slot_plan: SlotPlan, options: TrainOptions, banks
                     ) -> TrainPlan:
    """The training plan for the slot adapter named options.adapter (given with --adapter, or added by
    `add_new_adapter`) in the compiled `graph`; --train-layers are op indices of `source_graph` (the model as
    read, which shares tensor ids with `graph`); `banks` is the lowering's edgec.lower.ops.slots.AdapterBanks."""
    slot = next(i for i, a in enumerate(slot_plan.adapters) if a.name == options.adapter)
    own = {tid: f[slot] for tid, f in slot_plan.layers.items() if f[slot] is not None}
    wanted = options.layer_indices()
    if wanted is not None:
        users = {op.inputs[1]: op.index for op in adaptable_ops(source_graph)}
        missing = sorted(set(wanted) - {users.get(tid) for tid in own})
        if missing:
            raise EdgecError(f"--train-layers: adapter '{options.adapter}' has no LoRA on op(s) "
                             f"{', '.join(map(str, missing))} (it adapts ops "
                             f"{', '.join(str(users[t]) for t in own if t in users)})")
        own = {tid: f for tid, f in own.items() if users.get(tid) in wanted}
    return plan_training(graph, options, slot, options.adapter, own, banks.layout, banks.nbytes)


# --- the plan ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Buffer:
    name: str
    floats: int
    category: str  # activations, gradients, parameters, optimizer
    offset: int = 0  # in floats, inside the training memory


@dataclasses.dataclass
class TailStep:
    op: Op
    kind: str  # fc, conv, pool, mean, reshape, add
    x: list[int]  # input tensor ids (non-constant)
    y: int  # output tensor id
    geometry: dict  # shapes and windows for the kernel struct
    activation: str  # NONE, RELU, RELU6
    clamp: tuple[float, float] | None = None  # the output's range: fused activation and int8 range
    layer: int | None = None  # index into TrainPlan.layers when trained
    weights: dict | None = None  # fc / conv: wq tensor id, ws, bias (float arrays)


@dataclasses.dataclass
class TrainedLayer:
    op: Op
    layout_index: int  # position in the bank layout (edgec_ota_config.layer)
    r: int  # the adapter's rank on this layer
    k: int
    oc: int
    rank: int  # the layout's rank (tables are padded to it)
    a0: np.ndarray  # initial A [r, K]
    b0: np.ndarray  # initial B [OC, r]
    a_offset: int = 0  # in the parameter vector
    b_offset: int = 0


@dataclasses.dataclass
class TrainPlan:
    options: TrainOptions
    slot: int
    adapter_name: str
    first_op: int  # position in graph.ops of the first tail op; graph.ops[:first_op] is the prefix
    steps: list[TailStep]
    layers: list[TrainedLayer]
    tail_inputs: list[int]  # tensor ids dequantized from the arena
    loss_tensor: int  # logits (xent) or output (mse)
    loss_size: int
    value: dict[int, str]  # tensor id -> value buffer name
    grad: dict[int, str]  # tensor id -> gradient buffer name (tensors the backward pass reaches)
    buffers: list[Buffer]
    params: int  # floats in the parameter vector
    trainable: int  # the first `trainable` parameters are trained
    argmax_ints: int  # int32 entries of max-pool argmax buffers
    image_bytes: int  # the checkpoint's bank image
    input_bytes: int
    target_bytes: int

    @property
    def memory_floats(self) -> int:
        """Size of the float training memory (every buffer 16-byte aligned)."""
        return sum(_aligned(b.floats) for b in self.buffers)

    def memory_report(self) -> dict:
        by = {c: 0 for c in ("activations", "gradients", "parameters", "optimizer")}
        for b in self.buffers:
            by[b.category] += 4 * _aligned(b.floats)
        by["activations"] += 4 * self.argmax_ints
        by["checkpoint_image"] = self.image_bytes
        by["total"] = sum(by.values())
        return by

    def report(self) -> dict:
        o = self.options
        return {"adapter": self.adapter_name, "slot": self.slot, "loss": o.loss, "optimizer": o.optimizer,
                "lr": o.lr, "batch": o.batch, "tensors": o.tensors,
                "dp": None if o.dp_clip is None else {"clip": o.dp_clip, "noise": o.dp_noise},
                "layers": [{"op_index": la.op.index, "op_type": la.op.type, "rank": la.r, "k": la.k, "oc": la.oc,
                            "a_offset": la.a_offset, "b_offset": la.b_offset} for la in self.layers],
                "prefix_ops": self.first_op, "tail_ops": [s.op.index for s in self.steps],
                "params": self.params, "trainable_params": self.trainable,
                "record_bytes": self.input_bytes + self.target_bytes, "input_bytes": self.input_bytes,
                "target_bytes": self.target_bytes, "memory_bytes": self.memory_report()}


def _aligned(floats: int) -> int:
    return -(-floats // 4) * 4  # whole 16-byte units


def _err(graph: Graph, op: Op, msg: str) -> EdgecError:
    return EdgecError(f"{graph.source}: {op.describe()}: {msg}")


def _same_pad(size: int, k: int, stride: int, padding: str) -> tuple[int, int]:
    """(output size, padding before) as TFLite computes them."""
    if padding == "VALID":
        return (size - k) // stride + 1, 0
    out = -(-size // stride)
    return out, max((out - 1) * stride + k - size, 0) // 2


def _window(graph: Graph, op: Op, kh: int, kw: int) -> dict:
    n, h, w, c = graph.t(op.inputs[0]).shape
    _, oh, ow, oc = graph.t(op.outputs[0]).shape
    sh, sw = op.attrs.get("stride_h", 1), op.attrs.get("stride_w", 1)
    pad = op.attrs.get("padding", "VALID")
    oh2, pt = _same_pad(h, kh, sh, pad)
    ow2, pl = _same_pad(w, kw, sw, pad)
    if (oh2, ow2) != (oh, ow) or n != 1:
        raise _err(graph, op, f"unexpected output shape {graph.t(op.outputs[0]).shape}")
    return {"h": h, "w": w, "c": c, "oh": oh, "ow": ow, "oc": oc, "kh": kh, "kw": kw, "sh": sh, "sw": sw, "pt": pt,
            "pl": pl}


def _weights(graph: Graph, op: Op, oc: int) -> dict:
    w = graph.t(op.inputs[1])
    if w.quant is None or w.dtype != "int8" or np.any(w.quant.zero_point != 0):
        raise _err(graph, op, "training needs int8 weights with zero points 0 (an int8 model)")
    ws = np.broadcast_to(np.asarray(w.quant.scale, np.float32), (oc,))
    bias = None
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        b = graph.t(op.inputs[2])
        bias = (b.data.astype(np.float64) * np.broadcast_to(b.quant.scale.astype(np.float64), (oc,))
                ).astype(np.float32)
    return {"wq": op.inputs[1], "ws": ws.copy(), "bias": bias}


def _output_range(graph: Graph, tid: int, activation: str) -> tuple[float, float] | None:
    """The range the int8 model can represent for this output (with its fused activation): the float forward
    clamps to it, so training sees the saturation inference has."""
    lo, hi = -np.inf, np.inf
    t = graph.t(tid)
    if t.quant is not None and t.dtype == "int8":
        lo, hi = ((np.float32(q - t.zero_point) * np.float32(t.scale)) for q in (-128, 127))
    if activation in ("RELU", "RELU6"):
        lo = max(lo, 0.0)
    if activation == "RELU6":
        hi = min(hi, 6.0)
    return None if (lo, hi) == (-np.inf, np.inf) else (float(lo), float(hi))


def _step(graph: Graph, op: Op) -> TailStep:
    step = _tail_step(graph, op)
    if step.kind != "reshape":
        step.clamp = _output_range(graph, step.y, step.activation)
    return step


def _tail_step(graph: Graph, op: Op) -> TailStep:
    ins = [t for t in op.inputs if t >= 0 and not graph.t(t).is_const]
    act = op.attrs.get("activation", "NONE")
    if act not in ("NONE", "RELU", "RELU6"):
        raise _err(graph, op, f"fused activation {act} cannot be trained through (supported: NONE, RELU, RELU6)")
    y = op.outputs[0]
    if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        if op.attrs.get("dilation_h", 1) != 1 or op.attrs.get("dilation_w", 1) != 1:
            raise _err(graph, op, "dilated convolutions cannot be trained through")
        w = graph.t(op.inputs[1])
        geo = _window(graph, op, w.shape[1], w.shape[2])
        geo["depthwise"] = int(op.type == "DEPTHWISE_CONV_2D")
        if op.type == "CONV_2D" and w.shape[3] != geo["c"]:
            raise _err(graph, op, "grouped convolutions cannot be trained through")
        return TailStep(op, "conv", ins, y, geo, act, weights=_weights(graph, op, geo["oc"]))
    if op.type == "FULLY_CONNECTED":
        w = graph.t(op.inputs[1])
        o, k = w.shape
        if graph.t(ins[0]).size != k:
            raise _err(graph, op, "batched FULLY_CONNECTED cannot be trained through (one sample at a time)")
        return TailStep(op, "fc", ins, y, {"k": k, "o": o}, act, weights=_weights(graph, op, o))
    if op.type in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        geo = _window(graph, op, op.attrs["filter_h"], op.attrs["filter_w"])
        geo["max"] = int(op.type == "MAX_POOL_2D")
        return TailStep(op, "pool", ins, y, geo, act)
    if op.type == "MEAN":
        x = graph.t(ins[0])
        axes = sorted(int(a) % 4 for a in np.asarray(graph.t(op.inputs[1]).data).reshape(-1))
        if len(x.shape) != 4 or axes != [1, 2] or x.shape[0] != 1:
            raise _err(graph, op, "only MEAN over the spatial axes of one NHWC image can be trained through")
        return TailStep(op, "mean", ins, y, {"n": x.shape[1] * x.shape[2], "c": x.shape[3]}, act)
    if op.type == "RESHAPE":
        return TailStep(op, "reshape", ins, y, {}, act)
    if op.type == "ADD":
        if len(ins) != 2 or graph.t(ins[0]).shape != graph.t(ins[1]).shape != graph.t(y).shape:
            raise _err(graph, op, "ADD is trained through for two inputs of the output's shape only")
        return TailStep(op, "add", ins, y, {"n": graph.t(y).size}, act)
    raise _err(graph, op, f"cannot train through {op.type} (supported after the first trained layer: "
                          f"{', '.join(TAIL_OPS)}, and a final SOFTMAX with the xent loss)")


def plan_training(graph: Graph, options: TrainOptions, slot: int, adapter_name: str,
                  factors: dict[int, tuple[np.ndarray, np.ndarray]], layout: list[dict], layout_bytes: int
                  ) -> TrainPlan:
    """Plan training of the adapter in `slot` on the layers whose weight tensor ids are `factors`' keys
    (initial float A, B in the IR layout); `layout` is the slot banks' layout (edgec.lower.ops.slots)."""
    options.check()
    if len(graph.outputs) != 1:
        raise EdgecError(f"{graph.source}: training needs a model with one output ({len(graph.outputs)} found)")
    position = {id(op): i for i, op in enumerate(graph.ops)}
    trained_ops = [op for op in graph.ops if len(op.inputs) > 1 and op.inputs[1] in factors
                   and op.type in ADAPTABLE]
    if not trained_ops:
        raise EdgecError(f"{graph.source}: adapter '{adapter_name}' adapts no layer that can be trained")
    first = position[id(trained_ops[0])]

    # The loss: a final SOFTMAX (and a DEQUANTIZE after it) is folded into the cross-entropy.
    out = graph.outputs[0]
    producer = {o: op for op in graph.ops for o in op.outputs}
    loss_tensor, skipped = out, set()
    while loss_tensor in producer and producer[loss_tensor].type in ("DEQUANTIZE", "SOFTMAX"):
        op = producer[loss_tensor]
        skipped.add(id(op))
        if op.type == "SOFTMAX":
            if options.loss != "xent":
                raise _err(graph, op, "the model ends with SOFTMAX: train it with --loss xent (mse on "
                                      "probabilities is not supported)")
            if op.attrs.get("beta", 1.0) != 1.0:
                raise _err(graph, op, "SOFTMAX with beta != 1 cannot be trained through")
        loss_tensor = op.inputs[0]
        if op.type == "SOFTMAX":
            break
    steps = [_step(graph, op) for op in graph.ops[first:] if id(op) not in skipped]

    produced = {s.y for s in steps}
    tail_inputs = sorted({x for s in steps for x in s.x if x not in produced})
    value: dict[int, str] = {}
    buffers: list[Buffer] = []

    def buffer(name: str, floats: int, category: str) -> str:
        buffers.append(Buffer(name, floats, category))
        return name

    for tid in tail_inputs:
        value[tid] = buffer(f"v{tid}", graph.t(tid).size, "activations")
    # Tensors the backward pass reaches: outputs of trained layers and everything computed from them.
    reached: set[int] = set()
    layer_of_op = {id(op): i for i, op in enumerate(trained_ops)}
    for s in steps:
        if s.kind == "reshape":
            value[s.y] = value[s.x[0]]
        else:
            value[s.y] = buffer(f"v{s.y}", graph.t(s.y).size, "activations")
        if id(s.op) in layer_of_op or any(x in reached for x in s.x):
            reached.add(s.y)
        s.layer = layer_of_op.get(id(s.op))
    if loss_tensor not in reached:
        raise EdgecError(f"{graph.source}: the trained layers do not reach the model's output")
    readers: dict[int, int] = {}
    for s in steps:
        for x in s.x:
            readers[x] = readers.get(x, 0) + 1
    grad: dict[int, str] = {}
    for s in steps:
        if s.y not in reached:
            continue
        if s.kind == "reshape":  # same bytes, same gradient
            if readers.get(s.x[0], 0) > 1:
                raise _err(graph, s.op, "a RESHAPE of a tensor that other ops read too cannot be trained through")
            grad[s.y] = grad[s.x[0]]
        else:
            grad[s.y] = buffer(f"g{s.y}", graph.t(s.y).size, "gradients")

    layout_index = {lay["op_index"]: i for i, lay in enumerate(layout)}
    layers = []
    for op in trained_ops:
        a0, b0 = (np.asarray(f, np.float32) for f in factors[op.inputs[1]])
        lay = layout[layout_index[op.index]]
        layers.append(TrainedLayer(op, layout_index[op.index], a0.shape[0], a0.shape[1], b0.shape[0], lay["rank"],
                                   a0, b0))
    # Parameter vector: the trained tensors first (clipping, noise and the optimizer see only them).
    cursor = 0
    order = [x for la in layers for x in ((la, "a"), (la, "b"))] if options.tensors == "ab" else \
        [(la, "b") for la in layers] + [(la, "a") for la in layers]
    for la, which in order:
        setattr(la, f"{which}_offset", cursor)
        cursor += la.a0.size if which == "a" else la.b0.size
    params = cursor
    trainable = params if options.tensors == "ab" else sum(la.b0.size for la in layers)
    t_max = 0
    for s in steps:
        if s.layer is not None:
            la = layers[s.layer]
            pixels = s.geometry["oh"] * s.geometry["ow"] if s.kind == "conv" else 1
            buffer(f"t{s.layer}", pixels * la.r, "activations")
            t_max = max(t_max, pixels * la.r)
    buffer("gt", t_max, "gradients")
    # Scratch for a gradient that must be added to one already there (a tensor read by several ops).
    shared = [graph.t(x).size for x, n in readers.items() if n > 1 and x in grad]
    if shared:
        buffer("gtmp", max(shared), "gradients")
    if options.loss == "mse":
        buffer("target", graph.t(loss_tensor).size, "activations")
    buffer("p", params, "parameters")
    buffer("p_best", params, "parameters")
    buffer("g_sample", trainable, "gradients")
    buffer("g_sum", trainable, "gradients")
    if options.optimizer == "adam":
        buffer("m", trainable, "optimizer")
        buffer("v", trainable, "optimizer")
    offset = 0
    for b in buffers:
        b.offset = offset
        offset += _aligned(b.floats)
    argmax = sum(graph.t(s.y).size for s in steps if s.kind == "pool" and s.geometry["max"] and s.y in grad)
    input_bytes = sum(graph.t(t).nbytes for t in graph.inputs)
    loss_size = graph.t(loss_tensor).size
    target_bytes = 4 if options.loss == "xent" else 4 * loss_size
    return TrainPlan(options, slot, adapter_name, first, steps, layers, tail_inputs, loss_tensor, loss_size, value,
                     grad, buffers, params, trainable, argmax, layout_bytes, input_bytes, target_bytes)
