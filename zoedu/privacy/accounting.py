"""Privacy accounting through Opacus — an adapter, never a hand-rolled analysis.

DP-SGD with Poisson sampling of rate ``q``, noise multiplier ``σ`` (noise std ``σ·C`` on
the sum of per-sample gradients clipped to ``C``) and ``T`` steps is the T-fold
composition of the subsampled Gaussian mechanism (Abadi et al. 2016). Its ``(ε, δ)``
guarantee is computed by Opacus's accountants:

* ``"rdp"``: Rényi DP of the subsampled Gaussian (Mironov 2017; Mironov, Talwar, Zhang
  2019), converted to ``(ε, δ)``;
* ``"prv"``: the privacy-random-variable accountant (Gopi, Lee, Wutschitz 2021), tighter
  and slower.

``epsilon`` / ``noise_for_epsilon`` are thin, cached calls of Opacus
(``create_accountant(...).get_epsilon`` and ``opacus.accountants.utils.get_noise_multiplier``).
:class:`PrivacyAccountant` keeps the running history of a training run; for ``"rdp"`` it
caches the one-step Rényi divergence of each ``(σ, q)`` — Opacus's RDP is additive over
steps, so ``ε`` after every step costs microseconds and equals Opacus's value for the same
history exactly (tested).

In the semi-DP setting of Lowy et al. (ICML 2024) privacy is owed to the private examples
only: ``q`` is the private batch's sampling rate ``B_priv / n_priv`` and public examples
never enter the accounting.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

ACCOUNTANTS = ("rdp", "prv")


# --------------------------------------------------------------------------- checks
def check_epsilon(epsilon, name: str = "epsilon") -> float:
    """``epsilon`` as a float; ValueError unless it is finite and > 0."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name}={epsilon!r} must be a number > 0")
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(f"{name}={epsilon!r} must be finite and > 0 (ε ≤ 0 would mean no release at all)")
    return float(epsilon)


#: The largest δ accepted anywhere. δ is the probability that the ε guarantee fails outright,
#: so it must be well below 1/n (n private examples): δ = 1/n is met by a mechanism that
#: publishes one random example in the clear. 1e-5 is the usual choice.
MAX_DELTA = 0.01


def check_delta(delta, *, allow_zero: bool = True, name: str = "delta", n: int | None = None) -> float:
    """``delta`` as a float in [0, MAX_DELTA] (or (0, MAX_DELTA] when ``allow_zero`` is False),
    and below ``1/n`` when the number of private examples ``n`` is known."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name}={delta!r} must be a number in [0, {MAX_DELTA}]")
    delta = float(delta)
    if not (0.0 <= delta < 1.0) or math.isnan(delta):
        raise ValueError(f"{name}={delta!r} must be in [0, {MAX_DELTA}]")
    if delta > MAX_DELTA:
        raise ValueError(f"{name}={delta!r} is too large: δ is the probability that the guarantee fails "
                         f"outright and must be well below 1/n (n the private examples); at most {MAX_DELTA} "
                         "is accepted (1e-5 is usual)")
    if n is not None and n > 0 and delta >= 1.0 / n:
        raise ValueError(f"{name}={delta!r} must be below 1/n = {1.0 / n:.3g} (n = {n} private examples): "
                         "with δ ≥ 1/n, publishing one example in the clear meets the definition")
    if delta == 0.0 and not allow_zero:
        raise ValueError(f"{name}=0 is not allowed here: the Gaussian mechanism needs δ in (0, 1) "
                         "(use δ = 0 only with mechanisms that offer pure ε-DP, e.g. Laplace)")
    return delta


def check_noise_multiplier(noise_multiplier, name: str = "noise_multiplier") -> float:
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name}={noise_multiplier!r} must be a number ≥ 0")
    if not math.isfinite(noise_multiplier) or noise_multiplier < 0:
        raise ValueError(f"{name}={noise_multiplier!r} must be finite and ≥ 0")
    return float(noise_multiplier)


def check_sample_rate(sample_rate, name: str = "sample_rate") -> float:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name}={sample_rate!r} must be a number in (0, 1]")
    if not (0.0 < float(sample_rate) <= 1.0):
        raise ValueError(f"{name}={sample_rate!r} must be in (0, 1] (batch size / number of private examples)")
    return float(sample_rate)


def check_steps(steps, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"{name}={steps!r} must be an integer ≥ 0")
    return int(steps)


def check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant={accountant!r} is unknown; allowed: {', '.join(ACCOUNTANTS)}")
    return accountant


@contextmanager
def _quiet():
    """Silence Opacus's advisory warnings (optimal order at the edge; log(0) inside PRV at q = 1)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"opacus\.")
        yield


# --------------------------------------------------------------------------- ε and σ
def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
            accountant: str = "rdp") -> float:
    """ε spent by ``steps`` steps of the subsampled Gaussian mechanism, from Opacus.

    Args:
        noise_multiplier: σ, the noise std divided by the sensitivity (clipping norm).
        sample_rate: q, the Poisson sampling rate of the private examples (1 = full batch).
        steps: number of compositions T.
        delta: target δ in (0, 1).
        accountant: ``"rdp"`` or ``"prv"``.

    Returns:
        ε (``inf`` when ``noise_multiplier`` is 0 and ``steps`` > 0; 0 when ``steps`` is 0).
    """
    sigma = check_noise_multiplier(noise_multiplier)
    q = check_sample_rate(sample_rate)
    steps = check_steps(steps)
    delta = check_delta(delta, allow_zero=False)
    check_accountant(accountant)
    if steps == 0:
        return 0.0
    if sigma == 0.0:
        return math.inf
    return max(0.0, _epsilon_cached(sigma, q, steps, delta, accountant))  # a bound below 0 means ε = 0 holds


@lru_cache(maxsize=4096)
def _epsilon_cached(sigma: float, q: float, steps: int, delta: float, accountant: str) -> float:
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(sigma, q, steps)]
    with _quiet():
        return float(acc.get_epsilon(delta=delta))


INTEGER_ORDERS = tuple([float(a) for a in range(2, 11)] + [float(a) for a in range(12, 64)])
"""Integer Rényi orders, a subset of Opacus's default ones: ``noise_for_epsilon(...,
orders=INTEGER_ORDERS)`` is ~10× faster (no fractional-order series) and slightly
conservative — the σ it returns has an ε under the default orders that is ≤ the target."""


def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float,
                      accountant: str = "rdp", *, epsilon_tolerance: float = 0.01,
                      orders: tuple[float, ...] | None = None) -> float:
    """The smallest noise multiplier σ (to ``epsilon_tolerance``) whose ε is ≤ ``target_epsilon``.

    Opacus's ``get_noise_multiplier`` (a bisection on its accountant): the returned σ
    satisfies ``target_epsilon - epsilon_tolerance ≤ epsilon(σ, …) ≤ target_epsilon``.
    ``orders`` (RDP only) restricts the Rényi orders searched, e.g. :data:`INTEGER_ORDERS`
    for speed; ε under Opacus's default orders is then ≤ the target (a superset of orders
    can only lower ε), and may be more than ``epsilon_tolerance`` below it.
    """
    target = check_epsilon(target_epsilon, "target_epsilon")
    q = check_sample_rate(sample_rate)
    steps = check_steps(steps)
    if steps == 0:
        raise ValueError("steps=0 spends no privacy; there is no noise multiplier to find")
    delta = check_delta(delta, allow_zero=False)
    check_accountant(accountant)
    if not (0 < epsilon_tolerance < target):
        raise ValueError(f"epsilon_tolerance={epsilon_tolerance!r} must be in (0, target_epsilon)")
    if orders is not None:
        if accountant != "rdp":
            raise ValueError(f"orders= applies to accountant='rdp' only, not {accountant!r}")
        orders = tuple(float(a) for a in orders)
        if not orders or min(orders) <= 1:
            raise ValueError(f"orders={orders!r} must be a non-empty list of Rényi orders > 1")
    return _noise_cached(target, q, steps, delta, accountant, float(epsilon_tolerance), orders)


@lru_cache(maxsize=1024)
def _noise_cached(target: float, q: float, steps: int, delta: float, accountant: str,
                  tolerance: float, orders) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    extra = {} if orders is None else {"alphas": list(orders)}
    with _quiet():
        return float(get_noise_multiplier(target_epsilon=target, target_delta=delta, sample_rate=q,
                                          steps=steps, accountant=accountant,
                                          epsilon_tolerance=tolerance, **extra))


def gaussian_noise_multiplier(epsilon: float, delta: float, accountant: str = "gdp") -> float:
    """σ such that adding ``N(0, (σ·Δ)²)`` to a statistic of L2 sensitivity Δ is (ε, δ)-DP.

    One Gaussian release (no subsampling, one step). ``accountant="gdp"`` (default) is
    exact: that release is exactly μ-GDP with ``μ = 1/σ`` (Dong, Roth, Su 2019,
    Theorem 2.7), and Opacus's ``delta_eps_mu`` is the exact (ε, δ) curve of μ-GDP
    (Corollary 2.13 there; the analytic Gaussian mechanism of Balle & Wang 2018), so the
    σ found by root-finding on it is the smallest that works. ``"rdp"`` / ``"prv"`` use
    :func:`noise_for_epsilon` with q = 1 and one step (RDP is looser; PRV close to exact
    but slow).
    """
    epsilon = check_epsilon(epsilon)
    delta = check_delta(delta, allow_zero=False)
    if accountant == "gdp":
        return _gdp_sigma(epsilon, delta)
    check_accountant(accountant)
    return noise_for_epsilon(epsilon, 1.0, 1, delta, accountant,
                             epsilon_tolerance=min(0.01, 0.01 * epsilon))


@lru_cache(maxsize=1024)
def _gdp_sigma(epsilon: float, delta: float) -> float:
    from opacus.accountants.analysis.gdp import delta_eps_mu
    from scipy.optimize import brentq

    # δ(ε; μ) increases with μ: find the μ at which it reaches the target δ.
    def gap(log_mu):
        return delta_eps_mu(eps=epsilon, mu=math.exp(log_mu)) - delta

    lo, hi = math.log(1e-6), math.log(1e3)
    if gap(lo) > 0:
        raise ValueError(f"(epsilon={epsilon}, delta={delta}) needs more noise than σ = 1e6")
    mu = math.exp(brentq(gap, lo, hi, xtol=1e-12, rtol=1e-12))
    return 1.0 / mu


# --------------------------------------------------------------------------- running
class PrivacyAccountant:
    """The privacy spent by a training run so far: ``step(σ, q)`` per step, ``epsilon(δ)``.

    Holds an Opacus accountant (``self.opacus``) whose ``history`` is the run's history, so
    Opacus can be asked directly; ``epsilon`` gives the same number, faster for ``"rdp"``.
    """

    def __init__(self, accountant: str = "rdp"):
        from opacus.accountants import create_accountant

        self.mechanism = check_accountant(accountant)
        self.opacus = create_accountant(mechanism=accountant)
        self._rdp_per_step: dict[tuple[float, float], np.ndarray] = {}

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """``[(noise_multiplier, sample_rate, steps), ...]`` as Opacus keeps it."""
        return list(self.opacus.history)

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.opacus.history)

    def step(self, noise_multiplier: float, sample_rate: float) -> None:
        """Record one step of the subsampled Gaussian mechanism."""
        sigma = check_noise_multiplier(noise_multiplier)
        q = check_sample_rate(sample_rate)
        self.opacus.step(noise_multiplier=sigma, sample_rate=q)

    def epsilon(self, delta: float) -> float:
        """ε spent so far at ``delta`` (0 before the first step; inf if a step had σ = 0)."""
        delta = check_delta(delta, allow_zero=False)
        history = self.opacus.history
        if not history:
            return 0.0
        if any(sigma == 0 for sigma, _, _ in history):
            return math.inf
        if self.mechanism != "rdp":
            with _quiet():
                return max(0.0, float(self.opacus.get_epsilon(delta=delta)))
        from opacus.accountants.analysis import rdp as rdp_analysis

        orders = self.opacus.DEFAULT_ALPHAS
        total = 0.0
        for sigma, q, n in history:
            key = (sigma, q)
            if key not in self._rdp_per_step:
                self._rdp_per_step[key] = np.asarray(rdp_analysis.compute_rdp(
                    q=q, noise_multiplier=sigma, steps=1, orders=orders))
            total = total + self._rdp_per_step[key] * n
        with _quiet():
            eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=total, delta=delta)
        return max(0.0, float(eps))
