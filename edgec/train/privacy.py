"""`edgec privacy`: the (epsilon, delta) of DP-SGD training, by Google's dp-accounting library.

DP-SGD with Poisson sampling at rate q, per-sample clipping to norm C and Gaussian noise sigma * C per step
is S self-composed Poisson-subsampled Gaussian mechanisms (noise multiplier sigma). Two accountants:
RDP (Renyi DP; the bound Abadi et al. and Opacus report) and PLD (privacy loss distributions; tighter).
"""

from __future__ import annotations

import math

from edgec.errors import EdgecError


def dp_sgd_epsilon(steps: int, sample_rate: float, noise: float, delta: float) -> dict:
    """Epsilon of `steps` DP-SGD steps (sampling rate q, noise multiplier sigma) at `delta`, by the RDP and
    the PLD accountants of dp-accounting."""
    if steps < 1:
        raise EdgecError(f"--steps {steps}: at least 1")
    if not 0 < sample_rate <= 1:
        raise EdgecError(f"--sample-rate {sample_rate}: expected 0 < q <= 1 (batch size / dataset size)")
    if not (noise > 0 and math.isfinite(noise)):
        raise EdgecError(f"--noise {noise}: expected a noise multiplier sigma > 0")
    if not 0 < delta < 1:
        raise EdgecError(f"--delta {delta}: expected 0 < delta < 1 (usually below 1 / dataset size)")
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    event = dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(sample_rate, dp_event.GaussianDpEvent(noise)),
                                         steps)
    rdp = rdp_privacy_accountant.RdpAccountant()
    rdp.compose(event)
    pld = pld_privacy_accountant.PLDAccountant()
    pld.compose(event)
    return {"steps": steps, "sample_rate": sample_rate, "noise_multiplier": noise, "delta": delta,
            "epsilon_rdp": float(rdp.get_epsilon(delta)), "epsilon_pld": float(pld.get_epsilon(delta)),
            "accountant": "dp-accounting (Google): RDP and PLD, Poisson-subsampled Gaussian"}
