"""Experiments for DP with public data (Lowy, Li, Huang, Razaviyayn, ICML 2024).

Functions the notebook ``05_dp_public_data`` and ``zoedu privacy ...`` call; each returns a
pandas DataFrame and never draws.

* :func:`mean_estimation_curves` — MSE of the three mean estimators (formula and Monte
  Carlo) against the number of public examples and ε.
* :func:`variance_curves` — MSE against V/R² (data far inside the ball): the worst-case
  and the public-estimate (``variance="public"``) weights against the two baselines,
  formula and Monte Carlo; :func:`adaptive_grid` runs it over a grid and reports the ratio
  to the better baseline.
* :func:`epsilon_curve` — ε spent against the step count (Opacus's accountants).
* :func:`privacy_utility_sweep`, :func:`sweep_summary`, :func:`load_problem`,
  :func:`train_private` — private training with public data, in
  :mod:`zoedu.experiments.private_training` (re-exported here).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd

from ..privacy import (
    gaussian_noise_multiplier,
    mean_estimate,
    mean_mse,
    public_variance,
    semi_dp_weights,
)
from ..privacy.accounting import ACCOUNTANTS

# The problems and the privacy–utility sweep live in private_training; their names are
# re-exported here so that ``zoedu.experiments.privacy`` stays the notebook's one import.
from .private_training import (
    DATASETS,
    METHODS,
    Problem,
    load_problem,
    privacy_utility_sweep,
    sweep_summary,
    to_markdown,
    train_private,
)


def mean_estimation_curves(*, n_priv: int = 1000, n_pubs=(0, 5, 10, 20, 50, 100, 200, 500),
                           epsilons=(0.5, 1.0, 4.0), d: int = 10, radius: float = 1.0,
                           delta: float = 1e-5, model: str = "central", trials: int = 50,
                           seed: int = 0) -> pd.DataFrame:
    """MSE of ``semi_dp``, ``throw_away`` and ``treat_as_private`` against ``n_pub`` and ε.

    ``mse`` is :func:`zoedu.privacy.mean_mse` (worst-case variance ``R²``); ``mc_mse`` and
    ``mc_se`` are the Monte Carlo mean and standard error of ``‖μ̂ − μ‖²`` over ``trials``
    data sets of scaled random-sign vectors (``‖x‖ = R``, ``μ = 0``, where the formula is
    exact), each estimated with :func:`zoedu.privacy.mean_estimate`. ``trials=0`` skips
    the simulation. Defaults: about 3 s of CPU.

    Columns: model, epsilon, delta, n_priv, n_pub, d, method, mse, mc_mse, mc_se, weight_private
    (``n_priv·b``, the private data's share of the estimate).
    """
    if trials < 0:
        raise ValueError(f"trials={trials!r} must be ≥ 0")
    rng = np.random.default_rng(seed)
    rows = []
    for eps in epsilons:
        for n_pub in n_pubs:
            for method in METHODS:
                if method == "throw_away" and n_pub == 0:
                    continue
                kw = dict(epsilon=eps, delta=delta, radius=radius, method=method, model=model)
                mse = mean_mse(n_priv, n_pub, d, **kw)
                _, b = semi_dp_weights(n_priv, n_pub, d, **kw)
                errs = np.empty(trials)
                for t in range(trials):
                    x = rng.choice([-1.0, 1.0], size=(n_priv + n_pub, d)) * (radius / math.sqrt(d))
                    est = mean_estimate(x[:n_priv], x[n_priv:], seed=int(rng.integers(2**31)), **kw)
                    errs[t] = float(np.sum(est ** 2))
                rows.append(dict(model=model, epsilon=float(eps), delta=delta, n_priv=n_priv, n_pub=n_pub,
                                 d=d, method=method, mse=mse,
                                 mc_mse=float(errs.mean()) if trials else np.nan,
                                 mc_se=float(errs.std(ddof=1) / math.sqrt(trials)) if trials > 1 else np.nan,
                                 weight_private=n_priv * b))
    return pd.DataFrame(rows)


def _sphere_rows(rng: np.random.Generator, n: int, mu: np.ndarray, spread: float) -> np.ndarray:
    """``n`` rows μ + spread·u, u uniform on the unit sphere: E‖x − μ‖² = spread² exactly."""
    u = rng.standard_normal((n, mu.size))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return mu + spread * u


#: the estimators :func:`variance_curves` compares: (label, method, variance=)
VARIANCE_CHOICES = (("semi_dp (worst case)", "semi_dp", None), ("semi_dp (public V̂)", "semi_dp", "public"),
                    ("throw_away", "throw_away", None), ("treat_as_private", "treat_as_private", None))


def variance_curves(*, n_priv: int = 2000, n_pub: int = 200, d: int = 20,
                    ratios=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0), epsilon: float = 0.3,
                    delta: float = 1e-5, radius: float = 1.0, model: str = "central",
                    trials: int = 100, seed: int = 0, private_rows: bool = True) -> pd.DataFrame:
    """MSE against V/R²: the worst-case weights, the public estimate's, and the baselines.

    ``private_rows=False`` (central model only) draws the private rows' *sum* instead of the
    rows, from a Gaussian with the sum's exact mean and covariance (n_priv·μ, n_priv·s²/d·I):
    the weights never depend on the private rows, so the MSE depends on them only through
    those two moments — the same expected MSE at a fraction of the cost for large n_priv·d.
    The public rows are always drawn (V̂ is computed from them).

    Data: rows ``μ + s·u`` with ``u`` uniform on the unit sphere, ``s = R·√ratio`` and
    ``‖μ‖ = R − s`` (so ``‖x‖ ≤ R`` and ``V = s²`` exactly; ratio 1 is ``μ = 0``). ``mse`` is
    :func:`zoedu.privacy.mean_mse` at the true V (for ``"public"``: the weights at the true
    V, the plug-in value); ``mc_mse`` / ``mc_se`` the Monte Carlo mean and standard error
    of ``‖μ̂ − μ‖²`` over ``trials`` data sets, every estimator on the same data.

    Columns: ratio (V/R²), variance, estimator, method, mse, mc_mse, mc_se, weight_private
    (``n_priv·b`` of the last trial), and the configuration.
    """
    if trials < 1:
        raise ValueError(f"trials={trials!r} must be ≥ 1")
    rng = np.random.default_rng(seed)
    rows = []
    for ratio in ratios:
        if not 0 <= ratio <= 1:
            raise ValueError(f"ratios must lie in [0, 1] (V ≤ R²), got {ratio!r}")
        spread = radius * math.sqrt(ratio)
        direction = rng.standard_normal(d)
        mu = direction / np.linalg.norm(direction) * (radius - spread) * (1 - 1e-9)
        errs = {label: np.empty(trials) for label, _, _ in VARIANCE_CHOICES}
        for t in range(trials):
            pub = _sphere_rows(rng, n_pub, mu, spread)
            if private_rows:
                priv = _sphere_rows(rng, n_priv, mu, spread)
                noise_seed = int(rng.integers(2**31))
                for label, method, variance in VARIANCE_CHOICES:
                    est = mean_estimate(priv, pub, epsilon=epsilon, delta=delta, radius=radius, method=method,
                                        model=model, variance=variance, seed=noise_seed)
                    errs[label][t] = float(np.sum((est - mu) ** 2))
                continue
            if model != "central":
                raise ValueError("private_rows=False is for the central model only")
            priv_sum = n_priv * mu + rng.standard_normal(d) * spread * math.sqrt(n_priv / d)
            z = rng.standard_normal(d) if delta > 0 else rng.laplace(size=d)
            scale = (2 * radius * gaussian_noise_multiplier(epsilon, delta) if delta > 0
                     else 2 * radius * math.sqrt(d) / epsilon)
            v_hat = public_variance(pub, radius)
            for label, method, variance in VARIANCE_CHOICES:
                v = v_hat if variance == "public" else variance
                if method == "treat_as_private":
                    a = b = 1.0 / (n_priv + n_pub)
                else:
                    a, b = semi_dp_weights(n_priv, n_pub, d, epsilon=epsilon, delta=delta, radius=radius,
                                           method=method, variance=v)
                est = a * pub.sum(0) + b * priv_sum + b * scale * z
                errs[label][t] = float(np.sum((est - mu) ** 2))
        for label, method, variance in VARIANCE_CHOICES:
            kw = dict(epsilon=epsilon, delta=delta, radius=radius, method=method, model=model)
            mse = mean_mse(n_priv, n_pub, d, variance=variance, true_variance=spread ** 2, **kw)
            wv = spread ** 2 if variance == "public" else variance
            _, b = semi_dp_weights(n_priv, n_pub, d, variance=wv, **kw)
            e = errs[label]
            rows.append(dict(ratio=float(ratio), variance=spread ** 2, estimator=label, method=method,
                             mse=mse, mc_mse=float(e.mean()), mc_se=float(e.std(ddof=1) / math.sqrt(trials)),
                             weight_private=n_priv * b, n_priv=n_priv, n_pub=n_pub, d=d, epsilon=epsilon,
                             delta=delta, model=model))
    return pd.DataFrame(rows)


def adaptive_grid(*, ns=(200, 2000), public_shares=(0.05, 0.1), ds=(2, 20, 500),
                  epsilons=(0.1, 0.3, 1.0, 2.0, 8.0), ratios=(0.001, 0.01, 0.1, 1.0),
                  delta: float = 1e-5, model: str = "central", trials: int | None = None,
                  seed: int = 0) -> pd.DataFrame:
    """:func:`variance_curves` over a grid; one row per setting with each estimator's Monte
    Carlo MSE divided by the better baseline's (``min(throw_away, treat_as_private)``).

    ``trials``: per setting; default ``max(200, 8000 // d)`` (the MSE of a d-dimensional
    estimate averages d coordinates, so large d needs fewer trials). Central model: the
    private sums are drawn directly (``variance_curves(private_rows=False)``).
    """
    rows = []
    for n in ns:
        for share in public_shares:
            n_pub = max(1, int(round(share * n)))
            for d in ds:
                for eps in epsilons:
                    t = trials or max(200, 8000 // d)
                    c = variance_curves(n_priv=n - n_pub, n_pub=n_pub, d=d, ratios=ratios, epsilon=eps,
                                        delta=delta, model=model, trials=t, seed=seed,
                                        private_rows=model != "central")
                    for ratio, g in c.groupby("ratio"):
                        mc = g.set_index("estimator")["mc_mse"]
                        se = g.set_index("estimator")["mc_se"]
                        best = min(mc["throw_away"], mc["treat_as_private"])
                        rows.append(dict(n=n, n_pub=n_pub, d=d, epsilon=eps, ratio=ratio, trials=t,
                                         throw_away=mc["throw_away"], treat_as_private=mc["treat_as_private"],
                                         worst_case=mc["semi_dp (worst case)"], public=mc["semi_dp (public V̂)"],
                                         worst_case_ratio=mc["semi_dp (worst case)"] / best,
                                         public_ratio=mc["semi_dp (public V̂)"] / best,
                                         public_ratio_se=se["semi_dp (public V̂)"] / best))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- accounting
def epsilon_curve(noise_multiplier: float = 1.0, sample_rate: float = 0.01, steps: int = 1000,
                  delta: float = 1e-5, *, accountants=("rdp",), points: int = 20) -> pd.DataFrame:
    """ε spent after ``t`` steps for ``points`` values of ``t`` up to ``steps`` (one row each).

    Columns: step, epsilon, accountant, noise_multiplier, sample_rate, delta.
    """
    from ..privacy import PrivacyAccountant

    if points < 1:
        raise ValueError(f"points={points!r} must be ≥ 1")
    marks = sorted({int(round(v)) for v in np.linspace(1, steps, points)} | {steps})
    rows = []
    for name in accountants:
        if name not in ACCOUNTANTS:
            raise ValueError(f"accountant={name!r} is unknown; allowed: {', '.join(ACCOUNTANTS)}")
        acc = PrivacyAccountant(name)
        done = 0
        for t in marks:
            for _ in range(t - done):
                acc.step(noise_multiplier, sample_rate)
            done = t
            rows.append(dict(step=t, epsilon=acc.epsilon(delta), accountant=name,
                             noise_multiplier=noise_multiplier, sample_rate=sample_rate, delta=delta))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- problems




# --------------------------------------------------------------------------- CLI
def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _run_cli(args) -> int:
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    if args.what == "mean":
        df = mean_estimation_curves(n_priv=args.n_priv, epsilons=args.epsilons, model=args.model,
                                    trials=args.trials, d=args.d)
    elif args.what == "epsilon":
        df = epsilon_curve(args.noise_multiplier, args.sample_rate, args.steps, args.delta,
                           accountants=tuple(args.accountants.split(",")))
    else:
        datasets = DATASETS if args.dataset == "all" else (args.dataset,)
        parts = [privacy_utility_sweep(ds, args.public_fractions, args.epsilons, fast=not args.full,
                                       seeds=tuple(range(args.seeds)), delta=args.delta)
                 for ds in datasets]
        df = pd.concat(parts, ignore_index=True)
        if args.summary:
            df = sweep_summary(df)
    if args.csv:
        df.to_csv(args.csv, index=False)
    if args.markdown:
        print(to_markdown(df))
    else:
        print(df.to_string(index=False))
    return 0


def add_cli(subparsers) -> None:
    """``zoedu privacy {sweep,mean,epsilon}``."""
    p = subparsers.add_parser("privacy", help="DP with public data: semi-DP sweeps, mean estimation, ε curves",
                              description="Differential privacy with public data (Lowy et al., ICML 2024).")
    p.add_argument("what", choices=("sweep", "mean", "epsilon"),
                   help="sweep: semi-DP SGD vs baselines; mean: mean-estimation MSE; epsilon: ε vs steps")
    p.add_argument("--dataset", default="breast_cancer", choices=DATASETS + ("all",),
                   help="sweep: which problem (default breast_cancer)")
    p.add_argument("--public-fractions", type=_floats, default=(0.01, 0.03, 0.1),
                   help="sweep: comma-separated public fractions (default 0.01,0.03,0.1)")
    p.add_argument("--epsilons", type=_floats, default=(0.5, 1.0, 4.0, 8.0),
                   help="comma-separated ε values (default 0.5,1,4,8)")
    p.add_argument("--delta", type=float, default=1e-5, help="δ (default 1e-5)")
    p.add_argument("--full", action="store_true", help="sweep: the benchmark settings instead of the fast ones")
    p.add_argument("--seeds", type=int, default=1, help="sweep: seeds averaged per configuration (default 1)")
    p.add_argument("--summary", action="store_true", help="sweep: one row per setting, methods side by side")
    p.add_argument("--model", default="central", choices=("central", "local"), help="mean: privacy model")
    p.add_argument("--n-priv", type=int, default=1000, help="mean: private examples (default 1000)")
    p.add_argument("--d", type=int, default=10, help="mean: dimension (default 10)")
    p.add_argument("--trials", type=int, default=100, help="mean: Monte Carlo trials (default 100)")
    p.add_argument("--noise-multiplier", type=float, default=1.0, help="epsilon: σ (default 1)")
    p.add_argument("--sample-rate", type=float, default=0.01, help="epsilon: q (default 0.01)")
    p.add_argument("--steps", type=int, default=1000, help="epsilon: steps (default 1000)")
    p.add_argument("--accountants", default="rdp", help="epsilon: comma-separated, rdp and/or prv")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.set_defaults(func=_run_cli)


__all__ = ["DATASETS", "METHODS", "Problem", "adaptive_grid", "epsilon_curve", "load_problem", "mean_estimation_curves",
           "privacy_utility_sweep", "sweep_summary", "to_markdown", "train_private", "variance_curves"]
