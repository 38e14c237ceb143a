"""Private training with public data: the problems and the privacy–utility sweep.

* :func:`load_problem` — the synthetic linear regression of the paper (d = 2000) or logistic
  regression on scikit-learn's breast-cancer and digits data, split into private, public,
  tuning and test rows.
* :func:`train_private` — one semi-DP SGD / throw-away / treat-as-private run at a given ε.
* :func:`privacy_utility_sweep` — the three methods over public fractions and ε, β (and the
  learning rate) tuned on the held-out split, test loss reported; :func:`sweep_summary`
  puts the methods side by side.

Per-sample gradients: the closed-form ``"linear"`` path of :mod:`zoedu.privacy.per_sample`
(all models here are ``nn.Linear``); benchmarks/README.md compares it with Opacus's hooks.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..privacy import (
    SemiDPSGD,
    noise_for_epsilon,
    split_public,
)
from ..privacy import epsilon as epsilon_spent
from ..privacy.accounting import INTEGER_ORDERS, check_delta, check_epsilon

DATASETS = ("linear_regression", "breast_cancer", "digits")
METHODS = ("semi_dp", "throw_away", "treat_as_private")


@contextmanager
def _single_thread():
    """Tiny linear models: one intra-op thread is fastest (and fair on a shared machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)



@dataclass
class Problem:
    """Private / public training rows, a tuning split (to choose β and lr) and a test split."""

    name: str
    kind: str  # "regression" or "classification"
    x_private: torch.Tensor
    y_private: torch.Tensor
    x_public: torch.Tensor
    y_public: torch.Tensor
    x_tune: torch.Tensor
    y_tune: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    outputs: int

    @property
    def n_private(self) -> int:
        return int(self.x_private.shape[0])

    @property
    def n_public(self) -> int:
        return int(self.x_public.shape[0])

    def model(self, seed: int = 0) -> nn.Module:
        """A zero-initialised linear model (logistic regression for classification)."""
        m = nn.Linear(self.x_private.shape[1], self.outputs, bias=self.kind == "classification")
        nn.init.zeros_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
        return m

    def loss_fn(self, model: nn.Module, batch: dict) -> torch.Tensor:
        out = model(batch["x"])
        if self.kind == "regression":
            return 0.5 * ((out.squeeze(-1) - batch["y"]) ** 2).mean()
        return F.cross_entropy(out, batch["y"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict:
        x, y = (self.x_tune, self.y_tune) if split == "tune" else (self.x_test, self.y_test)
        out = model(x)
        if self.kind == "regression":
            return {"loss": float(0.5 * ((out.squeeze(-1) - y) ** 2).mean()), "accuracy": np.nan}
        return {"loss": float(F.cross_entropy(out, y)), "accuracy": float((out.argmax(-1) == y).float().mean())}


def regression_problem(*, n: int = 20000, d: int = 2000, public_fraction: float = 0.03,
                       noise: float = 0.5, n_tune: int = 500, n_test: int = 2000,
                       seed: int = 0) -> Problem:
    """Synthetic linear regression as in the paper's experiments: ``y = ⟨w*, x⟩ + ξ``.

    ``x`` uniform on the unit sphere of ``R^d`` (so ‖x‖ = 1, the norm bound clipping
    relies on), ``w*`` uniform on the sphere of radius ``√d`` (so ``⟨w*, x⟩`` has unit
    variance) and ``ξ ~ N(0, noise²)``. ``n`` training rows, a fraction of them public.
    """
    if d < 1 or n < 2:
        raise ValueError(f"need d ≥ 1 and n ≥ 2 (got d={d}, n={n})")
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    w = w / w.norm() * math.sqrt(d)

    def draw(m):
        x = torch.randn(m, d, generator=g, dtype=torch.float64)
        x = x / x.norm(dim=1, keepdim=True)
        return x.float(), (x @ w + noise * torch.randn(m, generator=g, dtype=torch.float64)).float()

    x, y = draw(n)
    x_tune, y_tune = draw(n_tune)
    x_test, y_test = draw(n_test)
    priv, pub = split_public(n, public_fraction, seed)
    return Problem("linear_regression", "regression", x[priv], y[priv], x[pub], y[pub],
                   x_tune, y_tune, x_test, y_test, outputs=1)


def classification_problem(dataset: str = "breast_cancer", *, public_fraction: float = 0.03,
                           seed: int = 0) -> Problem:
    """Logistic regression on scikit-learn's real data (``zoedu.tasks`` ``tabular``, unit-norm rows).

    The task's training split is split into private and public rows (:func:`split_public`);
    its validation split into equal tuning and test halves.
    """
    from ..tasks import load_task

    task = load_task("tabular", dataset=dataset, seed=seed)
    train, val = task.data["train"], task.data["validation"]
    priv, pub = split_public(len(train["label"]), public_fraction, seed)
    order = np.random.default_rng([seed, 7]).permutation(len(val["label"]))
    half = len(order) // 2
    tune, test = order[:half], order[half:]
    x, y = train["x"], torch.as_tensor(train["label"]).long()
    xv, yv = val["x"], torch.as_tensor(val["label"]).long()
    return Problem(dataset, "classification", x[priv], y[priv], x[pub], y[pub],
                   xv[tune], yv[tune], xv[test], yv[test], outputs=task.num_labels)


def load_problem(dataset: str, *, public_fraction: float, seed: int = 0, **options) -> Problem:
    if dataset == "linear_regression":
        return regression_problem(public_fraction=public_fraction, seed=seed, **options)
    if dataset in ("breast_cancer", "digits"):
        return classification_problem(dataset, public_fraction=public_fraction, seed=seed)
    raise ValueError(f"dataset={dataset!r} is unknown; allowed: {', '.join(DATASETS)}")


# --------------------------------------------------------------------------- training
def train_private(problem: Problem, method: str, *, epsilon: float, delta: float = 1e-5,
                  beta: float | None = None, steps: int = 200, lr: float = 0.5,
                  batch_size: int = 64, max_grad_norm: float = 1.0, seed: int = 0,
                  account: bool = True) -> tuple[nn.Module, dict]:
    """Train ``problem.model()`` with Semi-DP SGD or a baseline for ``steps`` steps.

    * ``"semi_dp"``: private batches Poisson-sampled at ``q = B/n_priv``, public batches of
      ``min(B, n_pub)``, weight ``beta``;
    * ``"throw_away"``: public batches only (β = 0, ε = 0);
    * ``"treat_as_private"``: DP-SGD on the union, Poisson at ``q = B/n``.

    The noise multiplier makes the whole run (ε, δ)-DP for the private rows
    (:func:`zoedu.privacy.noise_for_epsilon`, RDP over integer orders; ``epsilon_spent``
    in the returned info is Opacus's ε under its default orders, ≤ ``epsilon``; NaN when
    ``account=False``, which saves ~0.5 s per new noise level).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; allowed: {', '.join(METHODS)}")
    if method == "semi_dp" and beta is None:
        raise ValueError("method='semi_dp' needs beta= in [0, 1], 'public' or 'worst_case'")
    beta = {"throw_away": 0.0, "treat_as_private": 1.0}.get(method, beta)
    rule = beta if isinstance(beta, str) else None
    if rule is not None:
        beta = 0.5                      # both parts used; SemiDPSGD sets β by rule (5) every step
    if method == "treat_as_private":
        pool_x = torch.cat([problem.x_private, problem.x_public])
        pool_y = torch.cat([problem.y_private, problem.y_public])
    else:
        pool_x, pool_y = problem.x_private, problem.y_private
    n_pool = int(pool_x.shape[0])
    q = min(1.0, batch_size / max(n_pool, 1))
    sigma = 0.0
    if beta > 0:
        sigma = noise_for_epsilon(epsilon, q, steps, delta, orders=INTEGER_ORDERS)
    model = problem.model(seed)
    extra = {} if rule is None else dict(n_private=problem.n_private, n_public=problem.n_public,
                                         epsilon=epsilon, delta=delta)
    opt = SemiDPSGD(model, problem.loss_fn, lr=lr, beta=rule or beta, noise_multiplier=sigma,
                    max_grad_norm=max_grad_norm, seed=seed, expected_batch_size=batch_size,
                    per_sample="auto", **extra)
    betas_used = []
    rng = np.random.default_rng([seed, 11])
    pub_bs = min(batch_size, problem.n_public) if problem.n_public else 0
    for _ in range(steps):
        private = public = None
        if beta > 0:
            mask = torch.from_numpy(rng.random(n_pool) < q)
            if mask.any():
                private = {"x": pool_x[mask], "y": pool_y[mask]}
        if beta < 1:
            idx = torch.from_numpy(rng.choice(problem.n_public, size=pub_bs, replace=False))
            public = {"x": problem.x_public[idx], "y": problem.y_public[idx]}
        betas_used.append(opt.step(private, public).get("beta", beta))
    spent = (epsilon_spent(sigma, q, steps, delta) if account else math.nan) if beta > 0 else 0.0
    return model, dict(noise_multiplier=sigma, sample_rate=q, epsilon_spent=spent,
                       beta=float(np.mean(betas_used)) if rule else beta)


# --------------------------------------------------------------------------- the sweep
SETTINGS = {
    # dataset: (fast, full) training settings; full is the benchmark table's
    "linear_regression": (dict(steps=50, batch_size=128, lrs=(2.0,), betas=(0.25, 0.5, 0.75),
                               problem=dict(n=2000, d=500, n_test=500)),
                          dict(steps=200, batch_size=256, lrs=(10.0,), betas=(0.25, 0.5, 0.75, 0.9),
                               problem=dict(n=20000, d=2000, n_test=1000))),
    "breast_cancer": (dict(steps=50, batch_size=32, lrs=(1.0,), betas=(0.25, 0.5, 0.75)),
                      dict(steps=300, batch_size=32, lrs=(1.0,), betas=(0.1, 0.25, 0.5, 0.75, 0.9))),
    "digits": (dict(steps=50, batch_size=64, lrs=(2.0,), betas=(0.25, 0.5, 0.75)),
               dict(steps=300, batch_size=64, lrs=(2.0,), betas=(0.1, 0.25, 0.5, 0.75, 0.9))),
}


def privacy_utility_sweep(dataset: str = "breast_cancer", public_fractions=(0.01, 0.03, 0.1),
                          epsilons=(0.5, 1.0, 4.0, 8.0), *, fast: bool = True, betas=None,
                          delta: float = 1e-5, max_grad_norm: float = 1.0, seeds=(0,),
                          steps: int | None = None, batch_size: int | None = None,
                          lrs=None, problem_options: dict | None = None, methods=METHODS,
                          beta_rules=()) -> pd.DataFrame:
    """Semi-DP SGD against throw-away and treat-as-private over public fractions and ε.

    ``beta_rules`` (``"public"``, ``"worst_case"``) add semi-DP rows with β chosen by rule
    (5) of :mod:`zoedu.privacy.semi_dp` instead of tuned (method ``semi_dp_<rule>``; ``beta``
    is then the mean β used); ``methods`` restricts the rest (``semi_dp_best`` needs all three).

    For every (public fraction, ε): each method is trained per learning rate in ``lrs``
    (and, for semi-DP, per β in ``betas`` plus the proportional weight
    ``β = n_priv/n``, which makes semi-DP nearly treat-as-private without noising the public
    examples); the configuration with the lowest loss on the
    held-out *tuning* split is kept and its *test* loss and accuracy are reported. With
    several ``seeds`` the losses are averaged over the seeds (same data split per seed,
    fresh noise and batches) before choosing. ``fast=True`` uses few steps and one
    learning rate (one (fraction, ε) cell ≈ 1 s of CPU, the default 3 × 4 grid ≈ 12 s per
    data set); ``fast=False`` the settings of the benchmark table (minutes).

    Returns:
        One row per (public_fraction, epsilon, method): n_private, n_public, beta (chosen),
        lr (chosen), tune_loss, test_loss, test_accuracy, noise_multiplier, epsilon_spent,
        and ``semi_dp_best`` (whether semi-DP's test loss is ≤ both baselines' there).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} is unknown; allowed: {', '.join(DATASETS)}")
    for eps in epsilons:
        check_epsilon(eps)
    check_delta(delta, allow_zero=False)
    for f in public_fractions:
        if not 0 < f < 1:
            raise ValueError(f"public_fractions must lie in (0, 1), got {f!r}")
    setting = dict(SETTINGS[dataset][0 if fast else 1])
    betas = tuple(setting["betas"] if betas is None else betas)
    for b in betas:
        if not 0 <= b <= 1:
            raise ValueError(f"betas must lie in [0, 1], got {b!r}")
    steps = int(steps or setting["steps"])
    batch_size = int(batch_size or setting["batch_size"])
    lrs = tuple(lrs or setting["lrs"])
    options = {**setting.get("problem", {}), **(problem_options or {})}
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"methods: {m!r} is unknown; allowed: {', '.join(METHODS)}")
    for r in beta_rules:
        if r not in ("public", "worst_case"):
            raise ValueError(f"beta_rules: {r!r} is unknown; allowed: public, worst_case")
    runs = [(m, m, None) for m in methods] + [(f"semi_dp_{r}", "semi_dp", r) for r in beta_rules]
    rows = []
    with _single_thread():
        for frac in public_fractions:
            problem = load_problem(dataset, public_fraction=frac, seed=0, **options)
            for eps in epsilons:
                best = {}
                for label, method, rule in runs:
                    proportional = round(problem.n_private / (problem.n_private + problem.n_public), 4)
                    semi_betas = tuple(sorted(set(betas) | {proportional}))
                    if rule is not None:
                        semi_betas = (rule,)
                    grid = [(b, lr) for b in (semi_betas if method == "semi_dp" else (None,)) for lr in lrs]
                    results = []
                    for beta, lr in grid:
                        tune, test, acc, info = [], [], [], None
                        for seed in seeds:
                            model, info = train_private(problem, method, epsilon=eps, delta=delta, beta=beta,
                                                        steps=steps, lr=lr, batch_size=batch_size,
                                                        max_grad_norm=max_grad_norm, seed=seed,
                                                        account=not fast)
                            t, s = problem.evaluate(model, "tune"), problem.evaluate(model, "test")
                            tune.append(t["loss"])
                            test.append(s["loss"])
                            acc.append(s["accuracy"])
                        results.append(dict(beta=info["beta"], lr=lr, tune_loss=float(np.mean(tune)),
                                            test_loss=float(np.mean(test)), test_accuracy=float(np.mean(acc)),
                                            noise_multiplier=info["noise_multiplier"],
                                            epsilon_spent=info["epsilon_spent"]))
                    chosen = min(results, key=lambda r: (not math.isfinite(r["tune_loss"]), r["tune_loss"]))
                    best[label] = chosen
                    rows.append(dict(dataset=dataset, public_fraction=frac, epsilon=float(eps), method=label,
                                     n_private=problem.n_private, n_public=problem.n_public, steps=steps,
                                     batch_size=batch_size, **chosen))
                if all(m in best for m in METHODS):
                    ok = best["semi_dp"]["test_loss"] <= min(best["throw_away"]["test_loss"],
                                                             best["treat_as_private"]["test_loss"])
                    for r in rows[-len(runs):]:
                        r["semi_dp_best"] = bool(ok)
    return pd.DataFrame(rows)


def sweep_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, public fraction, ε): the three test losses side by side."""
    wide = df.pivot_table(index=["dataset", "public_fraction", "epsilon"], columns="method",
                          values="test_loss").reset_index()
    keys = ["dataset", "public_fraction", "epsilon"]
    for m in sorted(set(df.method)):
        if m.startswith("semi_dp"):
            beta = df[df.method == m].set_index(keys)["beta"]
            wide = wide.merge(beta.rename("beta" + m[len("semi_dp"):]).reset_index(), on=keys)
    base = [c for c in ("throw_away", "treat_as_private") if c in wide]
    for m in [c for c in wide.columns if c.startswith("semi_dp") and c in set(df.method)]:
        if len(base) == 2:
            wide[m + "_best"] = wide[m] <= wide[base].min(axis=1)
    wide.columns.name = None
    return wide


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A markdown table of ``df`` (floats to ``digits`` significant digits; no extra dependency)."""
    def cell(v):
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}g}"
        return str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
