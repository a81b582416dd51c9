"""Bit-exact oracle: the TFLite Micro Python interpreter (reference kernels).

TFLM is the runtime edgec replaces on MCUs, so its outputs are the ground truth for int8 models.
Facts this wrapper relies on (tflite-micro 0.dev20261023):
- wrong input dtype / rank raises ValueError; too-small arenas raise RuntimeError, but arenas below
  ~500 B segfault the process (the interpreter's own objects do not fit), so `tflm_min_arena` probes in
  a subprocess;
- get_output() returns a fresh copy; stateless models give identical results with or without reset().
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tflite
from tflite_micro.python.tflite_micro import runtime

# Generous: covers e.g. vww_96_int8 (needs ~104 KB) many times over; untouched arena pages cost nothing.
DEFAULT_ARENA = 4 << 20
_RETRY_ARENA = 256 << 20
_MAX_ARENA = 1 << 30


def _bytes(model: bytes | Path | str) -> bytes:
    return bytes(model) if isinstance(model, (bytes, bytearray, memoryview)) else Path(model).read_bytes()


def _io_counts(data: bytes) -> tuple[int, int]:
    sg = tflite.Model.GetRootAs(data, 0).Subgraphs(0)
    return sg.InputsLength(), sg.OutputsLength()


def _coerce(x: np.ndarray, dtype: type, shape: Sequence[int], i: int) -> np.ndarray:
    """Accept lists / int64 test data for integer inputs, but never silently quantize floats."""
    x = np.asarray(x)
    want = np.dtype(dtype)
    if x.dtype != want:
        same_kind = x.dtype.kind in "iub" and want.kind in "iu" or x.dtype.kind == want.kind == "f"
        if not same_kind:
            raise TypeError(f"input {i}: got {x.dtype}, model expects {want}")
        if want.kind in "iu":
            info = np.iinfo(want)
            if x.size and (x.min() < info.min or x.max() > info.max):
                raise ValueError(f"input {i}: values outside {want} range")
        x = x.astype(want)
    if x.size != int(np.prod(shape)):
        raise ValueError(f"input {i}: {x.size} elements, model expects shape {tuple(shape)}")
    return np.ascontiguousarray(x.reshape(shape))


class TflmRunner:
    """One TFLM interpreter reused across many input sets (creating one per run costs allocation)."""

    def __init__(self, model: bytes | Path | str, arena_size: int | None = None) -> None:
        self.model = _bytes(model)
        self.n_inputs, self.n_outputs = _io_counts(self.model)
        # TFLM reports every Prepare failure (arena too small, unsupported op, bad shapes) as the same
        # RuntimeError, so the default retries once with a huge arena instead of growing step by step.
        # An explicit arena_size is a request to test exactly that size, so it is never grown.
        sizes = [arena_size] if arena_size else [max(DEFAULT_ARENA, 10 * len(self.model)), _RETRY_ARENA]
        for size in sizes:
            try:
                self._it = runtime.Interpreter.from_bytes(self.model, arena_size=size)
                break
            except RuntimeError as e:
                if size == sizes[-1]:
                    raise RuntimeError(f"{e} (arena {size} B; TFLM's reason, e.g. an unsupported op, "
                                       "is printed on stderr)") from None
        self.arena_size = size
        self.input_details = [self._it.get_input_details(i) for i in range(self.n_inputs)]
        self.output_details = [self._it.get_output_details(i) for i in range(self.n_outputs)]

    def run(self, inputs: Sequence[np.ndarray], reset: bool = True) -> list[np.ndarray]:
        """Invoke once. reset() first so stateful graphs (variables, LSTM) start fresh like a new interpreter."""
        if len(inputs) != self.n_inputs:
            raise ValueError(f"model has {self.n_inputs} inputs, got {len(inputs)}")
        if reset:
            self._it.reset()
        for i, (x, d) in enumerate(zip(inputs, self.input_details)):
            self._it.set_input(_coerce(x, d["dtype"], d["shape"], i), i)
        self._it.invoke()
        return [self._it.get_output(i) for i in range(self.n_outputs)]

    def run_many(self, input_sets: Iterable[Sequence[np.ndarray]], reset: bool = True) -> list[list[np.ndarray]]:
        return [self.run(xs, reset=reset) for xs in input_sets]


def run_tflm(model: bytes | Path | str, inputs: Sequence[np.ndarray],
             arena_size: int | None = None) -> list[np.ndarray]:
    """Run the model once in TFLM; returns the outputs in model order."""
    return TflmRunner(model, arena_size).run(inputs)


def run_tflm_batch(model: bytes | Path | str, input_sets: Iterable[Sequence[np.ndarray]],
                   arena_size: int | None = None) -> list[list[np.ndarray]]:
    """Run many input sets through one interpreter (reset between invokes); one output list per set."""
    return TflmRunner(model, arena_size).run_many(input_sets)


# Probe worker: reads arena sizes on stdin, answers 1/0. Runs in its own process because tiny arenas
# segfault the interpreter; a crash is read as "does not fit" and the worker is restarted.
_WORKER = r"""
import sys, numpy as np
from tflite_micro.python.tflite_micro import runtime
data = open(sys.argv[1], 'rb').read()
n_in = int(sys.argv[2])
for line in sys.stdin:
    ok = 1
    try:
        it = runtime.Interpreter.from_bytes(data, arena_size=int(line))
        for i in range(n_in):
            d = it.get_input_details(i)
            it.set_input(np.zeros(d['shape'], d['dtype']), i)
        it.invoke()
    except Exception:
        ok = 0
    print(ok, flush=True)
"""


class _Prober:
    def __init__(self, path: str, n_inputs: int) -> None:
        self.args = [sys.executable, "-c", _WORKER, path, str(n_inputs)]
        self.proc: subprocess.Popen | None = None

    def fits(self, size: int) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(f"{size}\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:  # worker died (segfault): too small
            self.proc.wait()
            return False
        return line.strip() == "1"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait()


def tflm_min_arena(model: bytes | Path | str) -> int:
    """Smallest arena (bytes) with which TFLM allocates and invokes the model, by bisection.

    Byte granularity, because TFLM's tail allocations are not all 16-byte multiples (ad01_int8 needs
    4,632 B). Assumes "fits" is monotone in the size, which holds for TFLM's linear arena allocator.
    """
    import tempfile

    data = _bytes(model)
    n_in, _ = _io_counts(data)
    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(data)
        f.flush()
        prober = _Prober(f.name, n_in)
        try:
            lo, hi = 0, 1 << 14  # lo never fits (invariant), hi fits once found
            while not prober.fits(hi):
                lo, hi = hi, hi * 2
                if hi > _MAX_ARENA:
                    raise RuntimeError("model does not fit in a 1 GiB TFLM arena")
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if prober.fits(mid) else (mid, hi)
            return hi
        finally:
            prober.close()
