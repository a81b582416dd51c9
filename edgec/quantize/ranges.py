"""Activation ranges from calibration values, and TFLite's affine int8 parameters for a range.

Methods (every range is widened to include 0, so that 0.0 is exactly representable: zero padding and
ReLU outputs stay exact):
- minmax: the smallest and largest value seen.
- percentile: the `100 - p` and `p` percentiles of the values seen (p = `percentile`, default 99.99),
  i.e. the rarest 0.01 % on each side are clipped.
- mse: the clipping range that minimizes the mean squared quantization error (clipping plus rounding)
  of the values seen, searched over a grid: first [lo, hi] shrunk jointly by factors 1, 0.99, ... 0.01,
  then each end alone. The grid contains the minmax range, so the MSE is never above minmax's on the
  values searched.

percentile and mse work on a random subsample of each tensor's values (at most SAMPLE_CAP values,
spread evenly over the calibration samples); min and max are always exact.
"""

from __future__ import annotations

import numpy as np

METHODS = ("minmax", "percentile", "mse")
DEFAULT_PERCENTILE = 99.99
SAMPLE_CAP = 1 << 18  # values kept per tensor for percentile / mse
MSE_CAP = 1 << 16  # values the mse grid search evaluates
_GRID = np.linspace(1.0, 0.01, 100)
# The smallest range width: keeps scales (and the multipliers TFLM derives from them) away from 0.
_MIN_WIDTH = 1e-6
QMIN, QMAX = -128, 127


class RangeStats:
    """Running min / max of one tensor over the calibration samples, plus a value subsample."""

    def __init__(self, keep: int = 0, seed: int = 0) -> None:
        self.lo, self.hi = np.inf, -np.inf
        self.keep = keep  # values kept per add() call (0: min / max only)
        self.chunks: list[np.ndarray] = []
        self._rng = np.random.default_rng(seed)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32).reshape(-1)
        if x.size == 0:
            return
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        if self.keep:
            # Random, not strided: a stride can alias with the channel count and see one channel only.
            self.chunks.append(x if x.size <= self.keep else self._rng.choice(x, self.keep, replace=False))

    def merge(self, other: RangeStats) -> None:
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self.chunks += other.chunks

    @property
    def seen(self) -> bool:
        return self.lo <= self.hi

    def values(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.array([self.lo, self.hi], np.float32)


def quant_params(lo: float, hi: float) -> tuple[np.float32, int]:
    """(scale, zero point) of the int8 range [lo, hi] (widened to include 0), as TFLite nudges them:
    scale = (hi - lo) / 255 in float32, zero point = round(-128 - lo / scale) clamped to int8."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < _MIN_WIDTH:
        hi = lo + _MIN_WIDTH
    scale = np.float32((hi - lo) / (QMAX - QMIN))
    zp = QMIN - lo / float(scale)
    zp = int(np.clip(np.floor(zp + 0.5), QMIN, QMAX))
    return scale, zp


def fake_quant(x: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """Quantize then dequantize (round half away from zero, like TFLite)."""
    v = np.asarray(x, np.float64) / float(scale)
    q = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5) + zp, QMIN, QMAX)
    return (q - zp) * float(scale)


def quant_mse(x: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of int8 quantization of `x` with the range [lo, hi]."""
    scale, zp = quant_params(lo, hi)
    return float(np.mean((fake_quant(x, scale, zp) - np.asarray(x, np.float64)) ** 2))


def mse_range(x: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """The clipping range within [lo, hi] minimizing `quant_mse` over the grid (see the module doc)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    x = np.asarray(x, np.float32).reshape(-1)
    if x.size > MSE_CAP:
        x = np.random.default_rng(0).choice(x, MSE_CAP, replace=False)
    best = (quant_mse(x, lo, hi), lo, hi)
    for a in _GRID[1:]:
        best = min(best, (quant_mse(x, lo * a, hi * a), lo * a, hi * a), key=lambda c: c[0])
    _, blo, bhi = best
    for a in _GRID[1:]:
        for cand in ((blo * a, bhi), (blo, bhi * a)):
            best = min(best, (quant_mse(x, *cand), *cand), key=lambda c: c[0])
    return best[1], best[2]


def choose_range(stats: RangeStats, method: str,
                 percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
    """The range to quantize a tensor with, from its calibration statistics (always includes 0)."""
    lo, hi = min(stats.lo, 0.0), max(stats.hi, 0.0)
    if method == "minmax" or not stats.chunks:
        return lo, hi
    values = stats.values()
    if method == "percentile":
        plo, phi = np.percentile(values, [100.0 - percentile, percentile])
        return min(max(float(plo), lo), 0.0), max(min(float(phi), hi), 0.0)
    if method == "mse":
        return mse_range(values, lo, hi)
    raise ValueError(f"unknown calibration method {method!r}")
