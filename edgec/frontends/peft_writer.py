"""Write PEFT LoRA adapter directories without PyTorch, and make synthetic adapters for a model's layers.

`edgec bench` (and tests on TFLite bases, which have no PyTorch model) need adapters for models that only
exist as .tflite files: `synthetic_adapter` draws random rank-r factors for every CONV_2D / FULLY_CONNECTED
layer, names the modules `layers.<op index>` and returns the `--adapter-map` that binds them to the layers'
weight tensors. The directory is a regular PEFT directory (safetensors + adapter_config.json) that
`peft_reader` (and PEFT itself) reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from edgec.frontends.peft_reader import CONFIG, SAFETENSORS
from edgec.ir.graph import Graph


def write_adapter(directory: Path, modules: dict[str, tuple[np.ndarray, np.ndarray]], r: int, lora_alpha: float
                  ) -> None:
    """A PEFT directory with `modules` {torch module path: (lora_A weight, lora_B weight)} (PEFT's shapes:
    Linear A [r, in], B [out, r]; Conv2d A [r, in, kh, kw], B [out, r, 1, 1])."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for path, (a, b) in modules.items():
        tensors[f"base_model.model.{path}.lora_A.weight"] = np.ascontiguousarray(a, np.float32)
        tensors[f"base_model.model.{path}.lora_B.weight"] = np.ascontiguousarray(b, np.float32)
    save_file(tensors, str(directory / SAFETENSORS))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": lora_alpha, "target_modules": sorted(modules),
              "bias": "none", "use_rslora": False, "use_dora": False, "fan_in_fan_out": False}
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def _weight_real(graph: Graph, tid: int) -> np.ndarray:
    t = graph.t(tid)
    if t.quant is None:
        return t.data.astype(np.float64)
    shape = [1] * t.data.ndim
    if t.quant.axis is not None:
        shape[t.quant.axis] = -1
    return (t.data.astype(np.float64) - t.quant.zero_point.reshape(shape)) * t.quant.scale.reshape(shape)


def synthetic_adapter(graph: Graph, directory: Path, rank: int = 4, relative: float = 0.05, seed: int = 0
                      ) -> dict[str, str]:
    """Write a rank-`rank` adapter on every CONV_2D (groups 1) and FULLY_CONNECTED layer with constant
    weights; returns the adapter map {module path: weight tensor name}. Each output channel of ΔW = B A has
    an RMS of `relative` times the RMS of that channel's (dequantized) weights: a fine-tuning-sized change."""
    rng = np.random.default_rng(seed)
    modules, mapping, seen = {}, {}, set()
    for op in graph.ops:
        if op.type not in ("CONV_2D", "FULLY_CONNECTED") or len(op.inputs) < 2:
            continue
        tid = op.inputs[1]
        w = graph.t(tid)
        if not w.is_const or tid in seen:
            continue
        if op.type == "CONV_2D" and graph.t(op.inputs[0]).shape[-1] != w.shape[-1]:
            continue  # a grouped convolution
        seen.add(tid)
        oc, k = w.shape[0], int(np.prod(w.shape[1:]))
        a = rng.normal(size=(rank, k)) / np.sqrt(k)
        b = rng.normal(size=(oc, rank)) / np.sqrt(rank)
        # Per output channel: a channel the base barely uses (tiny weights and scale) stays barely changed.
        delta_rms = np.sqrt(np.mean((b @ a) ** 2, axis=1))
        w_rms = np.sqrt(np.mean(_weight_real(graph, tid).reshape(oc, -1) ** 2, axis=1))
        b *= (relative * w_rms / np.where(delta_rms > 0, delta_rms, 1.0))[:, None]
        path = f"layers.{op.index}"
        if op.type == "CONV_2D":  # IR [OC, KH, KW, IC] -> torch [r, IC, KH, KW] / [OC, r, 1, 1]
            _, kh, kw, ic = w.shape
            a = a.reshape(rank, kh, kw, ic).transpose(0, 3, 1, 2)
            b = b.reshape(oc, rank, 1, 1)
        modules[path] = (a, b)
        mapping[path] = w.name
    write_adapter(directory, modules, rank, float(rank))
    return mapping
