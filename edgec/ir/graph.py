"""edgec's IR: a small typed graph of tensors and ops, NHWC layout."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DTYPE_BYTES = {"int8": 1, "uint8": 1, "int16": 2, "int32": 4, "int64": 8, "float32": 4, "bool": 1}
C_TYPES = {"int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "int32": "int32_t",
           "int64": "int64_t", "float32": "float", "bool": "uint8_t"}


@dataclass
class Quant:
    """Affine quantization: real = scale * (q - zero_point), per tensor (axis None) or per axis."""

    scale: np.ndarray  # float32, 1 element per tensor or one per channel along `axis`
    zero_point: np.ndarray  # int64, same length as scale
    axis: int | None = None

    @property
    def per_axis(self) -> bool:
        return self.axis is not None


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    quant: Quant | None = None
    data: np.ndarray | None = None  # constant (weights) when not None
    # Where a weight came from, for LoRA fusion (passes/lora_fuse.py): {"initializer": source name,
    # "shape": its shape, "steps": the linear transforms that turned it into `data`, ...}; None = unknown.
    origin: dict | None = None

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.size * DTYPE_BYTES[self.dtype]

    @property
    def scale(self) -> float:
        """The per-tensor scale (first entry), as TFLite stores it (float32)."""
        assert self.quant is not None, f"tensor {self.name} is not quantized"
        return float(self.quant.scale[0])

    @property
    def zero_point(self) -> int:
        assert self.quant is not None, f"tensor {self.name} is not quantized"
        return int(self.quant.zero_point[0])


@dataclass
class Op:
    type: str  # TFLite builtin name, e.g. "CONV_2D"
    inputs: list[int]  # tensor ids; -1 = optional input absent
    outputs: list[int]
    attrs: dict = field(default_factory=dict)
    index: int = 0  # position in the source model
    name: str = ""  # a readable name (first output tensor's name)

    def describe(self) -> str:
        return f"op #{self.index} {self.type} ('{self.name}')"


@dataclass
class Graph:
    tensors: list[Tensor]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]
    source: str = ""  # file name, for messages

    def t(self, tid: int) -> Tensor:
        return self.tensors[tid]
