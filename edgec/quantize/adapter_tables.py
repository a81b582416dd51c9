"""Quantize LoRA slot factors into the int8 tables the slot kernels read (docs/adapters.md, "Scheme").

Used by the build (edgec.lower.ops.slots) and by OTA patches (edgec.ota), which must produce the same bytes.
"""

from __future__ import annotations

import numpy as np

from edgec.errors import EdgecError

SLOT_SCALE_ONE = 1 << 16  # the user's adapter scale 1.0 (Q16)
SLOT_SCALE_MAX = 16 << 16  # |scale| <= 16.0, which bounds the int64 products below
_SLOT_U_LIMIT = 2**42  # |u| * SLOT_SCALE_MAX and |v| * 2^15 stay below 2^62
_SLOT_MAX_SHIFT = 62


def _round_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def slot_tables(w_scales: np.ndarray, factors: list, rank: int, k: int, oc: int, where: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int8 A [S, R, K] (per-tensor scale 1/127 after folding each row's max into B), int8 B [S, OC, R]
    (per output channel) and int32 (multiplier, shift) [S, OC, 2] with multiplier / 2^shift = s_A * s_B[c] /
    s_w[c] (the branch's scale in units of the base accumulator). `factors[s]`: float (A [r, K],
    B [OC, r]) with ΔW = B @ A in the IR layout, or None when slot s does not adapt this layer. `where` names
    the layer in errors."""
    n = len(factors)
    a_q = np.zeros((n, rank, k), np.int8)
    b_q = np.zeros((n, oc, rank), np.int8)
    mult = np.zeros((n, oc, 2), np.int32)
    mult[:, :, 1] = 1
    sw = np.broadcast_to(np.asarray(w_scales, np.float64), (oc,))
    for s, f in enumerate(factors):
        if f is None:
            continue
        a, b = np.asarray(f[0], np.float64), np.asarray(f[1], np.float64)
        r = a.shape[0]
        rowmax = np.abs(a).max(1)
        rowmax[rowmax == 0] = 1.0
        a, b = a / rowmax[:, None], b * rowmax[None, :]  # fold A's per-row scale into B
        aq = np.clip(_round_away(a * 127.0), -127, 127)
        sb = np.abs(b).max(1) / 127.0
        bq = np.clip(_round_away(b / np.where(sb > 0, sb, 1.0)[:, None]), -127, 127)
        a_q[s, :r], b_q[s, :, :r] = aq, bq
        umax = (np.abs(bq) @ (255.0 * np.abs(aq).sum(1))).max(initial=0.0)
        if umax >= _SLOT_U_LIMIT:
            raise EdgecError(f"{where}: adapter slot {s}: the LoRA branch can reach {umax:.3g} (int64 overflow "
                             "risk); supported: |B t| < 2^42")
        for c in range(oc):
            real = (1.0 / 127.0) * sb[c] / sw[c]
            if real == 0:
                continue
            frac, exp = np.frexp(real)
            m = int(np.floor(float(frac) * 2**15 + 0.5))
            if m == 2**15:
                m, exp = 2**14, exp + 1
            shift = 15 - int(exp)
            if shift < 1:
                raise EdgecError(f"{where}: adapter slot {s}: the LoRA branch of channel {c} is {real:.3g} times "
                                 "the base weights' quantization step (the adapter dwarfs the base layer); "
                                 "supported: adapters smaller than 2^14 base weight steps")
            if shift > _SLOT_MAX_SHIFT:
                continue  # contributes less than 2^-47 accumulator units
            mult[s, c] = (m, shift)
    return a_q, b_q, mult
