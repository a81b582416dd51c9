"""Read a PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors` or `.bin`).

An adapter is a set of modules, each with its LoRA factors A and B and its scale (lora_alpha / r, or
lora_alpha / sqrt(r) with use_rslora; per-module overrides from rank_pattern / alpha_pattern, matched as
PEFT matches them). Everything edgec cannot reproduce exactly is refused here with EdgecError (exit 2):
other PEFT methods, DoRA, LoRA biases, modules_to_save, base-weight-changing initialisations, and any
config key edgec does not know that is set to a non-default value.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError

CONFIG = "adapter_config.json"
SAFETENSORS = "adapter_model.safetensors"
BIN = "adapter_model.bin"
_PREFIX = "base_model.model."
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Keys that only describe the adapter or its training (no effect on the merged weights).
_INFO_KEYS = {"base_model_name_or_path", "revision", "task_type", "inference_mode", "auto_mapping", "peft_version",
              "lora_dropout", "megatron_core", "qalora_group_size", "layers_to_transform", "layers_pattern",
              "exclude_modules", "ensure_weight_tying", "eva_config"}
# Keys whose value edgec honours (read below).
_MATH_KEYS = {"peft_type", "r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "target_modules",
              "fan_in_fan_out", "use_dora", "bias", "lora_bias", "modules_to_save", "init_lora_weights"}
# init_lora_weights values that also rewrite the base model's weights: the adapter is then relative to a
# modified base, which edgec does not have.
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")


@dataclass
class LoraModule:
    """One adapted module: A [r, in] / [r, in, kh, kw], B [out, r] / [out, r/groups, 1, 1] (float32)."""

    path: str  # torch module path in the base model, e.g. "features.0" or "fc"
    a: np.ndarray
    b: np.ndarray
    scale: float
    fan_in_fan_out: bool = False

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    @property
    def is_conv(self) -> bool:
        return self.a.ndim == 4

    @property
    def groups(self) -> int:
        """>1 when B is a grouped 1x1 conv (PEFT's LoRA on a grouped/depthwise Conv2d)."""
        return self.rank // int(self.b.shape[1]) if self.b.shape[1] else 1

    def delta(self) -> np.ndarray:
        """scale * B @ A in the module's own weight layout (float64): Linear [out, in] ([in, out] with
        fan_in_fan_out), Conv2d [out, in, kh, kw]. On a depthwise Conv2d (groups = in channels; PEFT's lora_A
        is a full conv over all input channels, lora_B a grouped 1x1 conv) the ΔW of the equivalent FULL
        convolution, [out, in, kh, kw], not a change of the depthwise weights [out, 1, kh, kw]."""
        a, b = self.a.astype(np.float64), self.b.astype(np.float64)
        if self.is_conv:
            out, g = b.shape[0], self.groups
            if g != 1 and (g != a.shape[1] or out % g):
                raise EdgecError(f"module '{self.path}': LoRA on a grouped convolution (groups={g}) has no "
                                 "weight delta (PEFT's lora_A spans all input channels), so it cannot be fused")
            if g != 1:
                # Output o (group o // M, M = out / g) reads rows (o // M) * r/g ... + r/g - 1 of A:
                # ΔW[o] = scale * sum_j B[o, j] A[(o // M) * r/g + j].
                d = np.einsum("gmj,gjk->gmk", b.reshape(g, out // g, -1), a.reshape(g, a.shape[0] // g, -1))
                return self.scale * d.reshape(out, *a.shape[1:])
            return self.scale * (b.reshape(out, -1) @ a.reshape(a.shape[0], -1)).reshape(out, *a.shape[1:])
        d = self.scale * (b @ a)
        return d.T if self.fan_in_fan_out else d


@dataclass
class Adapter:
    name: str
    path: Path
    config: dict
    modules: dict[str, LoraModule] = field(default_factory=dict)


def parse_adapter_spec(spec: str) -> tuple[str, Path]:
    """'NAME=DIR' -> (NAME, DIR); NAME must be a C identifier (it names the adapter in generated code)."""
    name, sep, directory = spec.partition("=")
    if not sep or not directory:
        raise EdgecError(f"--adapter '{spec}': expected NAME=PEFT_DIR")
    if not NAME_RE.fullmatch(name):
        raise EdgecError(f"--adapter '{spec}': adapter name '{name}' must be a C identifier ([A-Za-z_][A-Za-z0-9_]*)")
    return name, Path(directory)


def _pattern_key(patterns, path: str) -> str | None:
    """PEFT's get_pattern_key: the first pattern that matches the end of the module path."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", path):
            return key
    return None


def _targeted(target, path: str) -> bool:
    """PEFT's check_target_module_exists for target_modules (a regex string, a list of names or 'all-linear')."""
    if target is None or target == "all-linear":
        return True
    if isinstance(target, str):
        return re.fullmatch(target, path) is not None
    return path in target or any(path.endswith(f".{t}") for t in target)


def _default(value) -> bool:
    return value is None or value is False or value == {} or value == [] or value == ""


def check_config(cfg: dict, where: str) -> None:
    """Refuse what edgec cannot apply exactly (EdgecError naming the key and the value)."""
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise EdgecError(f"{where}: peft_type '{cfg.get('peft_type')}'; supported: LORA adapters only")
    if cfg.get("use_dora"):
        raise EdgecError(f"{where}: use_dora=true (DoRA rescales each weight column by a learned magnitude); "
                         "supported: plain LoRA (use_dora=false)")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise EdgecError(f"{where}: trained biases (bias='{cfg.get('bias')}', lora_bias={cfg.get('lora_bias')}); "
                         "supported: bias='none', lora_bias=false")
    if not _default(cfg.get("modules_to_save")):
        raise EdgecError(f"{where}: modules_to_save={cfg['modules_to_save']} (whole replacement modules); "
                         "supported: none")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        raise EdgecError(f"{where}: init_lora_weights='{init}' changes the base model's weights as well; supported: "
                         "adapters over the unmodified base (true, false, 'gaussian', 'eva')")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or cfg[key] <= 0:
            raise EdgecError(f"{where}: '{key}' is {cfg.get(key)!r}; expected a positive number")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(cfg.get(key) or {}, dict):
            raise EdgecError(f"{where}: '{key}' must be an object (module pattern -> value)")
    unknown = sorted(k for k, v in cfg.items() if k not in _INFO_KEYS | _MATH_KEYS and not _default(v))
    if unknown:
        raise EdgecError(f"{where}: unknown setting(s) {', '.join(f'{k}={cfg[k]!r}' for k in unknown)}: edgec cannot "
                         "tell whether they change the adapter's math; supported: plain LoRA settings (r, lora_alpha, "
                         "use_rslora, rank_pattern, alpha_pattern, target_modules, fan_in_fan_out)")


def _load_tensors(directory: Path) -> dict[str, np.ndarray]:
    st, bn = directory / SAFETENSORS, directory / BIN
    if st.is_file():
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return {k: np.asarray(v, np.float32) for k, v in load_file(str(st)).items()}
        except (SafetensorError, OSError, ValueError, TypeError) as e:
            raise EdgecError(f"{st}: cannot read the adapter weights: {e}") from None
    if bn.is_file():
        try:
            import torch
        except ImportError:
            raise EdgecError(f"{bn}: reading a .bin (torch pickle) adapter needs PyTorch; convert it to "
                             f"{SAFETENSORS} or install torch") from None
        try:
            state = torch.load(str(bn), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for bad pickles
            raise EdgecError(f"{bn}: cannot read the adapter weights: {e}") from None
        return {k: v.detach().float().numpy() for k, v in state.items()}
    raise EdgecError(f"{directory}: no adapter weights ({SAFETENSORS} or {BIN})")


def read_adapter(name: str, directory: str | Path) -> Adapter:
    """Read and check one PEFT LoRA directory."""
    directory = Path(directory)
    cfg_path = directory / CONFIG
    if not cfg_path.is_file():
        raise EdgecError(f"adapter '{name}': {directory} is not a PEFT adapter directory (no {CONFIG})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgecError(f"{cfg_path}: cannot read: {e}") from None
    if not isinstance(cfg, dict):
        raise EdgecError(f"{cfg_path}: expected a JSON object")
    check_config(cfg, str(cfg_path))
    tensors = _load_tensors(directory)

    factors: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        path = key.removeprefix(_PREFIX)
        m = re.fullmatch(r"(.+)\.(lora_A|lora_B)\.weight", path)
        if m is None:
            what = ("a DoRA magnitude vector (use_dora)" if "lora_magnitude_vector" in key else
                    "an embedding LoRA factor" if "lora_embedding" in key else
                    "a LoRA bias" if re.search(r"lora_[AB]\.bias$", key) else "not a LoRA factor")
            raise EdgecError(f"{directory}: tensor '{key}' is {what}; supported: "
                             "'<module>.lora_A.weight' and '<module>.lora_B.weight' only")
        factors.setdefault(m.group(1), {})[m.group(2)] = value

    adapter = Adapter(name, directory, cfg)
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    for path, f in sorted(factors.items()):
        where = f"{directory}: module '{path}'"
        if set(f) != {"lora_A", "lora_B"}:
            raise EdgecError(f"{where}: has {', '.join(sorted(f))} but not both lora_A and lora_B")
        a, b = f["lora_A"], f["lora_B"]
        if not _targeted(cfg.get("target_modules"), path):
            raise EdgecError(f"{where}: has LoRA weights but is not in target_modules {cfg.get('target_modules')!r}; "
                             "the config and the weights disagree")
        rk, ak = _pattern_key(rank_pattern, path), _pattern_key(alpha_pattern, path)
        r = rank_pattern[rk] if rk is not None else cfg["r"]
        alpha = alpha_pattern[ak] if ak is not None else cfg["lora_alpha"]
        ok = (a.ndim == b.ndim == 2 and a.shape[0] == r and b.shape[1] == r) or \
             (a.ndim == b.ndim == 4 and a.shape[0] == r and b.shape[2:] == (1, 1) and b.shape[1] > 0
              and r % b.shape[1] == 0)
        if not ok:
            raise EdgecError(f"{where}: lora_A {list(a.shape)} and lora_B {list(b.shape)} do not fit rank {r} "
                             "(Linear: A [r, in], B [out, r]; Conv2d: A [r, in, kh, kw], B [out, r, 1, 1])")
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        adapter.modules[path] = LoraModule(path, a, b, float(scale), bool(cfg.get("fan_in_fan_out")))
    if not adapter.modules:
        raise EdgecError(f"{directory}: the adapter has no LoRA weights")
    return adapter
