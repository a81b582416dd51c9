"""Calibration samples: load them from files (with clear errors) or draw random ones.

A calibration set is `list[list[np.ndarray]]`: one record per sample, one array per graph input, each
with exactly the input tensor's shape and dtype.

Accepted sources:
- an .npz file: one array per graph input, keyed by the input tensor's name or positionally
  (`arr_0`, `arr_1`, ... as `np.savez(path, a, b)` writes them; a single array with any key for a
  single-input model). Each array holds N samples `[N, *input_shape]` or one sample `[*input_shape]`;
  when the input's batch dimension is 1, `[N, *input_shape[1:]]` (samples stacked along the batch)
  and `[*input_shape[1:]]` (one sample without the batch dimension) are accepted too.
- a folder of .npy files (single-input models), one sample (or a stack, as above) per file, in file name
  order;
- a folder of ONNX test data: `test_data_set_*/input_<k>.pb` (or `input_<k>.pb` directly in the
  folder), TensorProto files read with `onnx.numpy_helper.to_array`, input k of the graph each.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError
from edgec.ir.graph import Graph, Tensor

# What np.load raises on a file that is not a (pickle-free) .npy / .npz.
_NPY_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError)
_NP = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
       "float32": np.float32, "bool": np.bool_}


def _samples(arr: np.ndarray, t: Tensor, where: str) -> list[np.ndarray]:
    """Split `arr` into samples of tensor `t`'s shape, converting the dtype where it is safe."""
    shape = tuple(t.shape)
    want = np.dtype(_NP[t.dtype])
    if arr.dtype.kind not in "biuf":
        raise EdgecError(f"{where}: has dtype {arr.dtype}; input '{t.name}' expects {t.dtype} values")
    # Integer data (e.g. raw uint8 pixels) for a float input is almost always unnormalized: refuse it
    # rather than calibrate on ranges the model never sees.
    if want.kind == "f" and arr.dtype.kind != "f":
        raise EdgecError(f"{where}: has dtype {arr.dtype} but input '{t.name}' is float32: save the samples "
                         "as float32 with the model's own preprocessing (e.g. scaling to [0, 1]) applied")
    if want.kind in "iub" and arr.dtype.kind == "f":
        raise EdgecError(f"{where}: has dtype {arr.dtype} but input '{t.name}' is {t.dtype}")
    if arr.shape == shape:
        stack = arr[None]
    elif arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
        stack = arr
    elif shape and shape[0] == 1 and arr.ndim == len(shape) and arr.shape[1:] == shape[1:]:
        stack = arr[:, None]
    elif shape and shape[0] == 1 and arr.shape == shape[1:]:
        stack = arr[None, None]
    else:
        raise EdgecError(f"{where}: has shape {list(arr.shape)}; input '{t.name}' expects one sample "
                         f"{list(shape)} or N samples [N, {', '.join(str(d) for d in shape)}]")
    if len(stack) == 0:
        raise EdgecError(f"{where}: holds no samples (shape {list(arr.shape)})")
    if want.kind in "iu":
        info = np.iinfo(want)
        if stack.min() < info.min or stack.max() > info.max:
            raise EdgecError(f"{where}: values {stack.min()}..{stack.max()} do not fit input '{t.name}' "
                             f"({t.dtype})")
    if want.kind == "f" and not np.all(np.isfinite(stack)):
        raise EdgecError(f"{where}: contains NaN or infinite values")
    return [np.ascontiguousarray(s.astype(want)) for s in stack]


def _records(per_input: list[list[np.ndarray]], graph: Graph, source: str) -> list[list[np.ndarray]]:
    counts = {len(s) for s in per_input}
    if len(counts) != 1:
        names = ", ".join(f"'{graph.t(t).name}': {len(s)}" for t, s in zip(graph.inputs, per_input))
        raise EdgecError(f"{source}: the inputs have different numbers of samples ({names})")
    return [list(r) for r in zip(*per_input)]


def _load_npz(path: Path, graph: Graph) -> list[list[np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except _NPY_ERRORS as e:
        raise EdgecError(f"{path}: cannot read calibration samples as .npz: {e}") from None
    names = [graph.t(t).name for t in graph.inputs]
    per_input = []
    for i, (tid, name) in enumerate(zip(graph.inputs, names)):
        if name in arrays:
            key = name
        elif f"arr_{i}" in arrays:
            key = f"arr_{i}"
        elif len(names) == 1 and len(arrays) == 1:
            key = next(iter(arrays))
        else:
            raise EdgecError(f"{path}: no array for input {i} '{name}': expected key '{name}' or 'arr_{i}' "
                             f"(the file has {sorted(arrays) or 'no arrays'})")
        per_input.append(_samples(arrays[key], graph.t(tid), f"{path} ['{key}']"))
    return _records(per_input, graph, str(path))


def _load_npy_dir(path: Path, files: list[Path], graph: Graph) -> list[list[np.ndarray]]:
    if len(graph.inputs) != 1:
        raise EdgecError(f"{path}: a folder of .npy files calibrates single-input models; this model has "
                         f"{len(graph.inputs)} inputs: use an .npz file with one array per input")
    t = graph.t(graph.inputs[0])
    records = []
    for f in files:
        try:
            arr = np.load(f, allow_pickle=False)
        except _NPY_ERRORS as e:
            raise EdgecError(f"{f}: cannot read as .npy: {e}") from None
        records += [[s] for s in _samples(np.asarray(arr), t, str(f))]
    return records


def _input_index(f: Path) -> int:
    return int(re.fullmatch(r"input_(\d+)\.pb", f.name).group(1))  # type: ignore[union-attr]


def _load_onnx_sets(path: Path, sets: list[Path], graph: Graph) -> list[list[np.ndarray]]:
    from google.protobuf.message import DecodeError
    from onnx import TensorProto, numpy_helper

    records = []
    for d in sets:
        files = sorted((f for f in d.iterdir() if re.fullmatch(r"input_\d+\.pb", f.name)), key=_input_index)
        found = [_input_index(f) for f in files]
        if found != list(range(len(graph.inputs))):
            raise EdgecError(f"{d}: has input files {[f.name for f in files]}; the model has "
                             f"{len(graph.inputs)} input(s): expected "
                             f"{[f'input_{i}.pb' for i in range(len(graph.inputs))]}")
        per_input = []
        for f, tid in zip(files, graph.inputs):
            proto = TensorProto()
            try:
                proto.ParseFromString(f.read_bytes())
                arr = numpy_helper.to_array(proto)
            except (DecodeError, ValueError, TypeError) as e:
                raise EdgecError(f"{f}: cannot read as an ONNX TensorProto: {e}") from None
            per_input.append(_samples(arr, graph.t(tid), str(f)))
        records += _records(per_input, graph, str(d))
    return records


def load_calibration(path: Path | str, graph: Graph) -> list[list[np.ndarray]]:
    """Read calibration samples for `graph` from an .npz file or a folder (see the module docstring).

    Raises EdgecError naming the file and what was expected when a file is missing, unreadable, or its
    shape or dtype does not fit the graph's inputs.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".npz":
            if path.suffix.lower() == ".npy" and len(graph.inputs) == 1:
                return _load_npy_dir(path.parent, [path], graph)
            raise EdgecError(f"{path}: calibration samples must be an .npz file or a folder of .npy files or "
                             "ONNX test_data_set_*/input_*.pb files")
        return _load_npz(path, graph)
    if not path.is_dir():
        raise EdgecError(f"{path}: calibration samples not found (expected an .npz file or a folder)")
    sets = sorted(d for d in path.iterdir() if d.is_dir() and d.name.startswith("test_data_set_"))
    if not sets and any(re.fullmatch(r"input_\d+\.pb", f.name) for f in path.iterdir()):
        sets = [path]
    if sets:
        return _load_onnx_sets(path, sets, graph)
    npys = sorted(f for f in path.iterdir() if f.suffix.lower() == ".npy")
    if npys:
        return _load_npy_dir(path, npys, graph)
    raise EdgecError(f"{path}: no calibration samples found: expected .npy files or ONNX "
                     "test_data_set_*/input_<k>.pb files in this folder")


def random_calibration(graph: Graph, n: int, seed: int = 0) -> list[list[np.ndarray]]:
    """`n` random samples: N(0, 2) for float inputs (as `edgec verify` draws them), the full range for
    integer inputs. Ranges calibrated on these rarely match real data; use real samples when possible."""
    if n < 1:
        raise EdgecError(f"random calibration needs at least 1 sample, got {n}")
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        record = []
        for tid in graph.inputs:
            t = graph.t(tid)
            if t.dtype == "float32":
                record.append(rng.normal(0.0, 2.0, t.shape).astype(np.float32))
            elif t.dtype == "bool":
                record.append(rng.integers(0, 2, t.shape).astype(np.bool_))
            else:
                info = np.iinfo(_NP[t.dtype])
                record.append(rng.integers(info.min, info.max, t.shape, endpoint=True).astype(_NP[t.dtype]))
        records.append(record)
    return records
