"""Render the C project (Jinja2 templates in the top-level templates/ folder) into an output folder.

The folder is written to a temporary sibling and renamed into place, so a failed build never leaves
a half-written output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import tvm

from edgec import __version__
from edgec.ir.graph import C_TYPES
from edgec.lower import LoweredModel
from edgec.plan.arena import Plan

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = REPO_ROOT / "templates"


@dataclass
class ConstArray:
    name: str
    ctype: str
    count: int
    body: str
    comment: str
    nbytes: int


def _c_literals(array: np.ndarray) -> str:
    flat = array.reshape(-1)
    if flat.dtype == np.float32:
        items = [f"{float(v)!r}f" if np.isfinite(v) else ("NAN" if np.isnan(v) else "-INFINITY" if v < 0 else "INFINITY")
                 for v in flat]
    elif flat.dtype == np.int32:
        # INT32_MIN has no literal form in C.
        items = [str(int(v)) if v != -(2**31) else "(-2147483647 - 1)" for v in flat]
    else:
        items = [str(int(v)) for v in flat]
    lines = [", ".join(items[i:i + 24]) for i in range(0, len(items), 24)]
    return "    " + ",\n    ".join(lines)


_NP_TO_IR = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8", np.dtype(np.int16): "int16",
             np.dtype(np.int32): "int32", np.dtype(np.int64): "int64", np.dtype(np.float32): "float32"}


def render_project(model: LoweredModel, plan: Plan, out_dir: Path, model_bytes: bytes, model_name: str,
                   target: dict, report: dict, slot_plan=None, ota_keys: list[bytes] | None = None,
                   training=None) -> None:
    """Write the C project for `model` into `out_dir` atomically. `slot_plan` (LoRA slots mode, an
    edgec.passes.lora_slots.SlotPlan) adds src/adapters.c and src/edgec_adapters.h; `ota_keys` (raw Ed25519
    public keys, possibly none) adds A/B banks and the OTA receiver (runtime_c/ota, copied into runtime/);
    `training` (an edgec.train.plan.TrainPlan) adds the training step (src/train.c, include/edgec_training.h,
    runtime_c/train)."""
    graph = model.graph
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES / "project")),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    common = {"version": __version__, "model_name": model_name,
              "model_hash": hashlib.sha256(model_bytes).hexdigest(), "tvm_version": tvm.__version__}

    arrays, calls, const_symbol = _arrays_and_calls(model, plan)
    train_ctx = None
    if training is not None:
        from edgec.codegen.training import training_context

        train_ctx = training_context(graph, training, plan.tensor_offset, const_symbol)
        train_ctx["adapter_id"] = slot_plan.adapters[training.slot].id
        report["c_defines"] = ["EDGEC_OTA_LOCAL"]
    prototypes = [_prototype(model.kernels_c, name) for name in model.kernel_params]
    weights_bytes = sum(a.nbytes for a in arrays)
    report["weights_bytes"] = weights_bytes
    slots = _slot_context(slot_plan, model.adapter_banks, target, ota_keys)
    if slots:
        from edgec.ota.format import layout_sha256

        layout = model.adapter_banks.layout if model.adapter_banks is not None else []
        layout_hash = layout_sha256(layout, slots["layout_bytes"])
        slots.update(base_digest=_c_bytes(bytes.fromhex(common["model_hash"])), layout_digest=_c_bytes(layout_hash))
        report.update(adapter_slots=slots["count"], adapter_layout_bytes=slots["layout_bytes"],
                      adapter_bank_bytes=slots["bank_bytes"], adapter_page_bytes=slots["page_bytes"],
                      adapter_layout_sha256=layout_hash.hex(), adapter_layout=layout)
        if slots["ota"]:
            report["ota"] = {"key_ids": [k["hex"] for k in slots["ota"]["keys"]], "banks_per_slot": 2,
                             "counter_pages": 2, "write_bytes": slots["ota"]["write_bytes"],
                             "region_bytes": slots["region_bytes"]}

    def sizes(tids):
        return [graph.t(t).nbytes for t in tids]

    files = {
        "include/edgec_model.h": env.get_template("edgec_model.h.j2").render(
            common, arena_bytes=plan.arena_bytes, weights_bytes=weights_bytes, slots=slots, npu=model.npu_kernels,
            inputs=[graph.t(t) for t in graph.inputs], outputs=[graph.t(t) for t in graph.outputs]),
        "src/model.c": env.get_template("model.c.j2").render(
            common, calls=calls, slots=slots, npu=model.npu_kernels,
            prefix_calls=calls[:training.first_op] if training is not None else None,
            input_offsets=[plan.tensor_offset[t] for t in graph.inputs], input_sizes=sizes(graph.inputs),
            output_offsets=[plan.tensor_offset[t] for t in graph.outputs], output_sizes=sizes(graph.outputs)),
        "src/weights.c": env.get_template("weights.c.j2").render(common, arrays=arrays),
        "src/edgec_weights.h": env.get_template("edgec_weights.h.j2").render(common, arrays=arrays),
        "src/kernels.c": env.get_template("kernels.c.j2").render(common, kernels_c=model.kernels_c,
                                                                 micro_kernels=model.micro_kernels,
                                                                 npu_kernels=model.npu_kernels),
        "src/edgec_kernels.h": env.get_template("edgec_kernels.h.j2").render(common, prototypes=prototypes),
        "edgec-report.json": json.dumps(report, indent=2) + "\n",
    }
    if model.micro_kernels:
        files[f"src/{model.micro_kernels}"] = (REPO_ROOT / "runtime_c" / "kernels" / model.micro_kernels).read_text()
    if model.npu_kernels:  # Ethos-U targets (docs/npu.md): the driver bridge; the mock driver for tests
        for name in ("edgec_npu.h", "edgec_npu.c"):
            files[f"src/{name}"] = (REPO_ROOT / "runtime_c" / "npu" / name).read_text()
    if train_ctx is not None:
        files["src/train.c"] = env.get_template("train.c.j2").render(common, **train_ctx)
        files["include/edgec_training.h"] = env.get_template("edgec_training.h.j2").render(common, **train_ctx)
        files["include/edgec_train.h"] = (REPO_ROOT / "runtime_c" / "train" / "edgec_train.h").read_text()
        for name in ("edgec_train.c", "edgec_train_rng.c"):
            files[f"runtime/{name}"] = (REPO_ROOT / "runtime_c" / "train" / name).read_text()
    if slots:
        files["src/adapters.c"] = env.get_template("adapters.c.j2").render(common, slots=slots)
        files["src/edgec_adapters.h"] = env.get_template("edgec_adapters.h.j2").render(common, slots=slots)
    for name in ("CMakeLists.txt.j2", "platformio.ini.j2", "library.json.j2", "cmake/arm-none-eabi.cmake.j2",
                 "examples/platformio/main.cpp.j2"):
        if name.startswith("cmake/") and not target.get("board"):
            continue  # the cross toolchain file is only for firmware targets
        if (TEMPLATES / "project" / name).exists():
            files[name[:-3]] = env.get_template(name).render(common, target=target, report=report)
    runtime = _runtime_dirs(target)
    if model.npu_kernels:
        runtime["runtime/npu_mock"] = REPO_ROOT / "runtime_c" / "npu" / "mock"
    if slots and slots["ota"]:
        runtime = {"runtime": REPO_ROOT / "runtime_c" / "ota", **runtime}
    write_atomically(out_dir, files, extra_dirs=runtime)


def _runtime_dirs(target: dict) -> dict[str, Path]:
    """Runtime sources copied into the project: the harness, semihosting and the board support for the target.

    Project layout: runtime/harness/, runtime/semihost/ (edgec_semihost.{h,c}: the harness includes the
    header on every target, firmware builds compile the .c) and runtime/boards/<board>/. The semihosting
    files must not go to runtime/ itself: the runner compiles runtime/*.c into every host and firmware build.
    """
    runtime = REPO_ROOT / "runtime_c"
    dirs = {"runtime/harness": runtime / "harness"}
    dirs["runtime/semihost"] = runtime / "semihost"
    board = target.get("board")
    if board and (runtime / "boards" / board).is_dir():
        dirs[f"runtime/boards/{board}"] = runtime / "boards" / board
        # The PlatformIO dev-platform of platformio.ini's [env:qemu] (docs/platformio.md).
        dirs["runtime/platformio/edgec-qemu"] = runtime / "platformio" / "edgec-qemu"
    return dirs


def _slot_context(slot_plan, banks, target: dict, ota_keys: list[bytes] | None) -> dict | None:
    """What the templates need about the adapter slots (None without slots): the slot metadata and the bank
    region, each bank padded to whole flash pages (the target's `flash_page_bytes`). With OTA (`ota_keys`:
    raw Ed25519 public keys) each slot has two banks with metadata and the region ends with two counter
    pages (docs/ota-format.md); flash that holds nothing is erased (0xFF)."""
    if slot_plan is None:
        return None
    from edgec.ota import format as fmt

    infos = [{"name": a.name, "id": a.id, "version": a.version, "rank": a.rank} for a in slot_plan.adapters]
    infos += [{"name": "", "id": 0, "version": 0, "rank": 0}] * (slot_plan.slots - len(infos))
    page = int(target.get("flash_page_bytes", 4096))
    layout = banks.nbytes if banks is not None else 0
    images = [bytes(im) for im in banks.images] if banks is not None else [b""] * slot_plan.slots
    ctx = {"count": slot_plan.slots, "infos": infos, "page_bytes": page, "layout_bytes": layout, "ota": None}
    if ota_keys is None:
        bank_bytes = max(1, -(-layout // page)) * page
        region = b"".join(im + bytes(bank_bytes - len(im)) for im in images)
    else:
        bank_bytes = -(-(-(-layout // 16) * 16 + fmt.META_BYTES) // page) * page
        erased = b"\xff" * bank_bytes
        region = b""
        for image, info in zip(images, infos):
            if info["rank"]:
                meta = fmt.bank_metadata(1, 0, info["id"], (info["version"], 0, 0), 0, info["name"], info["rank"],
                                         hashlib.sha256(image).digest(), confirmed=True)
                region += image + b"\xff" * (bank_bytes - len(image) - len(meta)) + meta + erased
            else:
                region += erased * 2
        region += b"\xff" * (2 * page)
        write = int(target.get("flash_write_bytes", 8))
        if write not in (1, 2, 4, 8, 16):
            raise ValueError(f"target {target['name']}: flash_write_bytes {write} (supported: 1, 2, 4, 8, 16)")
        ctx["ota"] = {"keys": [{"id": _c_bytes(fmt.key_id(k)), "public": _c_bytes(k), "hex": fmt.key_id(k).hex()}
                               for k in ota_keys], "write_bytes": write, "layers": banks.layout if banks else []}
    ctx.update(bank_bytes=bank_bytes, region_bytes=len(region),
               words=_c_literals(np.frombuffer(region, "<i4")))
    return ctx


def _c_bytes(data: bytes) -> str:
    return ", ".join(f"0x{b:02x}" for b in data)


def _arrays_and_calls(model: LoweredModel, plan: Plan) -> tuple[list[ConstArray], list[dict], object]:
    """Constant arrays of weights.c, the kernel calls, and `const_symbol(array, comment)`, which adds an array
    to weights.c (once per content) and returns its name."""
    graph = model.graph
    arrays: list[ConstArray] = []
    by_content: dict[tuple, str] = {}

    def const_symbol(array: np.ndarray, comment: str) -> str:
        array = np.ascontiguousarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in by_content:
            name = f"edgec_const_{len(arrays)}"
            ctype = C_TYPES[_NP_TO_IR[array.dtype]]
            arrays.append(ConstArray(name, ctype, max(array.size, 1), _c_literals(array if array.size else
                                                                                   np.zeros(1, array.dtype)),
                                     comment, array.nbytes))
            by_content[key] = name
        return by_content[key]

    def call_args(lo, step: int) -> list[str]:
        args = []
        scratch_cursor = plan.scratch_offset.get(step, 0)
        for a in lo.args:
            if a.kind == "tensor":
                t = graph.t(a.tensor)
                ctype = C_TYPES[t.dtype]
                if t.is_const:
                    args.append(const_symbol(t.data, f"tensor {a.tensor} '{t.name}' {t.dtype} {list(t.shape)}"))
                else:
                    args.append(f"({ctype} *)(edgec_arena + {plan.tensor_offset[a.tensor]}u)")
            elif a.kind == "const":
                args.append(const_symbol(a.array, f"{lo.op.describe()}: compile-time constant"))
            elif a.kind == "adapter_banks":
                args.append("(const int8_t *)edgec_adapter_banks" if a.dtype == "int8" else "edgec_adapter_banks")
            elif a.kind == "adapter_state":
                args.append("edgec_adapter_state")
            else:
                args.append(f"(void *)(edgec_arena + {scratch_cursor}u)")
                scratch_cursor += a.scratch_bytes
        return args

    calls = []
    idle_kernels = model.idle_kernel_of_op or [None] * len(model.ops)
    for step, (lo, kernel, idle_kernel) in enumerate(zip(model.ops, model.kernel_of_op, idle_kernels)):
        calls.append({"index": lo.op.index, "type": lo.op.type, "name": lo.op.name.replace("*/", "* /"),
                      "kernel": kernel, "args": call_args(lo, step), "idle_kernel": idle_kernel,
                      "idle_args": call_args(lo.idle, step) if idle_kernel else None})
    return arrays, calls, const_symbol


def _prototype(kernels_c: str, name: str) -> str:
    m = re.search(rf"^void {re.escape(name)}\([^)]*\)", kernels_c, re.MULTILINE)
    if m is None:
        raise AssertionError(f"kernel {name} not found in the emitted C")
    return m.group(0)


def write_atomically(out_dir: Path, files: dict[str, str], extra_dirs: dict[str, Path] | None = None) -> None:
    """Write `files` (relative path -> text) and copy `extra_dirs` into a temp dir, then rename it to out_dir."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for rel, src in (extra_dirs or {}).items():
            shutil.copytree(src, tmp / rel, dirs_exist_ok=True)
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
