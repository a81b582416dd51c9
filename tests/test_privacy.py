"""`edgec privacy` (DP-SGD accounting by dp-accounting). Oracle: the exact privacy curve of the Gaussian
mechanism (Balle & Wang 2018), which full-batch DP-SGD (q = 1) is: S steps of noise multiplier sigma
compose to one Gaussian mechanism with mu = sqrt(S) / sigma, and
delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu)."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from edgec.cli.main import main
from edgec.train.privacy import dp_sgd_epsilon


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _exact_epsilon(steps: int, noise: float, delta: float) -> float:
    mu = math.sqrt(steps) / noise

    def delta_of(eps: float) -> float:
        return _phi(mu / 2 - eps / mu) - math.exp(eps) * _phi(-mu / 2 - eps / mu)

    lo, hi = 0.0, 100.0
    for _ in range(200):  # delta_of decreases in eps
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize("steps,noise,delta", [(1, 1.0, 1e-5), (100, 10.0, 1e-5), (400, 20.0, 1e-6)])
def test_full_batch_matches_the_exact_gaussian_curve(steps: int, noise: float, delta: float) -> None:
    got = dp_sgd_epsilon(steps, 1.0, noise, delta)
    exact = _exact_epsilon(steps, noise, delta)
    # PLD is tight (pessimistic by its discretization only); RDP is an upper bound.
    assert exact <= got["epsilon_pld"] <= exact * 1.02 + 1e-3, (got, exact)
    assert got["epsilon_rdp"] >= exact - 1e-9


def test_subsampled_monotone() -> None:
    base = dp_sgd_epsilon(1000, 0.01, 1.1, 1e-5)
    assert base["epsilon_pld"] <= base["epsilon_rdp"]
    assert dp_sgd_epsilon(2000, 0.01, 1.1, 1e-5)["epsilon_pld"] > base["epsilon_pld"]  # more steps
    assert dp_sgd_epsilon(1000, 0.01, 2.0, 1e-5)["epsilon_pld"] < base["epsilon_pld"]  # more noise
    assert dp_sgd_epsilon(1000, 0.02, 1.1, 1e-5)["epsilon_pld"] > base["epsilon_pld"]  # larger batches
    # Subsampling amplifies privacy: far below the same steps on the full batch.
    assert base["epsilon_pld"] < _exact_epsilon(1000, 1.1, 1e-5) / 10


def test_cli() -> None:
    res = CliRunner().invoke(main, ["privacy", "--steps", "100", "--sample-rate", "1", "--noise", "10",
                                    "--delta", "1e-5", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert abs(out["epsilon_pld"] - _exact_epsilon(100, 10.0, 1e-5)) < 0.05
    for bad in (["--steps", "0"], ["--sample-rate", "1.5"], ["--noise", "0"], ["--delta", "1"]):
        args = {"--steps": "10", "--sample-rate": "0.1", "--noise": "1", "--delta": "1e-5"}
        args[bad[0]] = bad[1]
        res = CliRunner().invoke(main, ["privacy", *[v for kv in args.items() for v in kv]])
        assert res.exit_code == 2 and bad[0] in res.output, res.output
