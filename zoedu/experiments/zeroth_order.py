"""Zeroth-order experiments for notebook 01: SPSA in 2-D, its variance, a non-differentiable objective.

Everything here drives the real optimizer, :class:`zoedu.optim.MeZO` (Malladi et al.,
NeurIPS 2023, Algorithm 1): the estimates are the projected gradients MeZO logs, and
the directions are re-drawn from their seeds with :func:`zoedu.optim.direction`, exactly
as MeZO re-draws them (it never stores ``z``).

* :func:`spsa_2d` — MeZO's n-SPSA estimate ``ĝ = (1/n) Σ_j g_j z_j`` (Definition 1,
  Eq. 1) of the gradient of a 2-D objective from :data:`OBJECTIVES_2D`, with each
  direction's term, for the arrows of :class:`zoedu.viz.optim.SPSADashboard`.
* :func:`variance_vs_dimension` — the measured ``E‖ĝ‖² / ‖∇L‖²`` against the dimension
  ``d``, with MeZO's Lemma 2 law ``(d + n − 1)/n``.
* MeZO on a non-differentiable objective (minus the batch accuracy, MeZO §3.3) is the
  fit method ``"mezo-accuracy"`` of :mod:`zoedu.optim`.

The data comes back as dicts and DataFrames; figures are in :mod:`zoedu.viz.optim`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..optim import MeZO, direction, direction_seed


# --------------------------------------------------------------------------- 2-D objectives
def _bowl(x, y):
    """An ill-conditioned, rotated quadratic: the gradient does not point at the minimum."""
    return 0.5 * x ** 2 + 0.6 * x * y + 2.0 * y ** 2


def _rosenbrock(x, y):
    """Rosenbrock's banana (scaled by 1/10): a curved valley."""
    return 0.1 * ((1 - x) ** 2 + 10.0 * (y - x ** 2) ** 2)


def _ripple(x, y):
    """A bowl with ripples: finite differences with a large ε see the ripples' average."""
    if isinstance(x, torch.Tensor):
        return 0.5 * (x ** 2 + y ** 2) + 0.3 * torch.sin(4 * x) * torch.cos(4 * y)
    return 0.5 * (x ** 2 + y ** 2) + 0.3 * np.sin(4 * x) * np.cos(4 * y)


OBJECTIVES_2D: dict[str, Callable] = {"bowl": _bowl, "rosenbrock": _rosenbrock, "ripple": _ripple}
"""2-D test objectives ``f(x, y)``, vectorised over numpy arrays and torch tensors."""


def objective_2d(name: str) -> Callable:
    """The 2-D objective ``name`` (one of :data:`OBJECTIVES_2D`)."""
    if name not in OBJECTIVES_2D:
        raise ValueError(f"name={name!r} is not a 2-D objective; allowed: {', '.join(OBJECTIVES_2D)}")
    return OBJECTIVES_2D[name]


def _point(point) -> torch.Tensor:
    p = torch.as_tensor(np.asarray(point, dtype=np.float64)).reshape(-1)
    if p.numel() != 2 or not torch.isfinite(p).all():
        raise ValueError(f"point={point!r} must be two finite numbers")
    return p


def gradient_2d(name: str, point) -> np.ndarray:
    """The exact gradient of objective ``name`` at ``point`` (by autograd)."""
    f = objective_2d(name)
    theta = _point(point).clone().requires_grad_(True)
    f(theta[0], theta[1]).backward()
    return theta.grad.numpy().copy()


def spsa_2d(name: str, point, eps: float = 1e-2, n: int = 1, seed: int = 0) -> dict:
    """One MeZO n-SPSA estimate of objective ``name``'s gradient at ``point``.

    Runs ``MeZO(lr=0, eps=eps, n_perturb=n, seed=seed).step`` on a 2-element parameter
    (lr 0: the weights do not move), reads the ``n`` projected gradients
    ``g_j = (f(θ + εz_j) − f(θ − εz_j)) / 2ε`` from its trajectory log and re-draws each
    ``z_j`` from its seed (Algorithm 1; Definition 1, Eq. 1).

    Returns:
        ``{"estimate": ĝ (2,), "directions": z (n, 2), "projected_grads": g (n,),
        "direction_estimates": g_j z_j (n, 2), "true_gradient": ∇f (2,)}``.
    """
    f = objective_2d(name)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r} must be a positive integer (directions per estimate)")
    theta = torch.nn.Parameter(_point(point).clone())
    opt = MeZO([theta], lr=0.0, eps=eps, n_perturb=int(n), seed=int(seed), workers=1)
    opt.step(lambda: f(theta[0], theta[1]))
    grads = opt.trajectory()["projected_grads"][-1].numpy()
    z = np.stack([direction([theta.detach()], direction_seed(int(seed), 0, j), chunk=opt.chunk)[0].numpy()
                  for j in range(int(n))])
    per = grads[:, None] * z
    return {"estimate": per.mean(0), "directions": z, "projected_grads": grads, "direction_estimates": per,
            "true_gradient": gradient_2d(name, point)}


# --------------------------------------------------------------------------- variance vs d
def variance_vs_dimension(dims: Sequence[int] = (10, 100, 1000, 10000), n_directions: Sequence[int] | int = (1, 4, 16),
                          *, trials: int = 100, distribution: str = "gaussian", seed: int = 0) -> pd.DataFrame:
    """Measure ``E‖ĝ‖² / ‖∇L‖²`` of MeZO's n-SPSA estimate against the dimension ``d``.

    For each ``d`` the loss is linear, ``L(θ) = gᵀθ`` with a random ``g`` (so the finite
    difference is exact and only the random directions make ĝ noisy); ``trials`` MeZO
    steps with ``lr = 0`` give ``trials`` independent estimates
    ``ĝ = (1/n) Σ_j g_j z_j``.

    MeZO's Lemma 2 states ``E‖ĝ‖² = (d + n − 1)/n · ‖∇L‖²`` for directions uniform on the
    sphere of radius √d. MeZO draws Gaussian directions, for which the same computation
    gives ``(d + n + 1)/n`` (``E‖z‖⁴ = d(d + 2)``); ``distribution="sphere"`` rescales
    each ``z`` to length √d (and its projected gradient with it) to check the Lemma
    itself. Either way the noise grows linearly with ``d``: why MeZO needs a learning
    rate about ``n/d`` times SGD's (Lemma 2's consequence, Theorem 1).

    Returns:
        One row per (d, n): ``d``, ``n``, ``measured`` (mean ratio), ``stderr``,
        ``theory`` ``(d + n − 1)/n`` and ``gaussian_theory`` ``(d + n + 1)/n``.
    """
    if distribution not in ("gaussian", "sphere"):
        raise ValueError(f"distribution={distribution!r}; allowed: 'gaussian', 'sphere'")
    if isinstance(n_directions, (int, np.integer)):
        n_directions = [int(n_directions)]
    if not dims or not n_directions:
        raise ValueError("dims and n_directions must each hold at least one value")
    for name, values in (("dims", dims), ("n_directions", n_directions)):
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values):
            raise ValueError(f"{name}={list(values)!r} must hold positive integers")
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 2:
        raise ValueError(f"trials={trials!r} must be an integer ≥ 2")
    rows = []
    gen = torch.Generator().manual_seed(seed)
    for d in dims:
        g = torch.randn(int(d), generator=gen, dtype=torch.float64)
        g2 = float(g @ g)
        for n in n_directions:
            theta = torch.nn.Parameter(torch.zeros(int(d), dtype=torch.float64))
            opt_seed = int(seed) * 1000003 + int(d) * 31 + int(n)
            opt = MeZO([theta], lr=0.0, eps=1e-3, n_perturb=int(n), seed=opt_seed, workers=1)
            ratios = np.empty(int(trials))
            for t in range(int(trials)):
                opt.step(lambda: g @ theta)
                grads = opt.trajectory()["projected_grads"][-1]
                est = torch.zeros(int(d), dtype=torch.float64)
                for j in range(int(n)):
                    z = direction([theta.detach()], direction_seed(opt_seed, t, j), chunk=opt.chunk)[0]
                    gj = float(grads[j])
                    if distribution == "sphere":
                        scale = math.sqrt(d) / float(z.norm())
                        z, gj = z * scale, gj * scale
                    est += gj * z
                est /= n
                ratios[t] = float(est @ est) / g2
            rows.append({"d": int(d), "n": int(n), "measured": float(ratios.mean()),
                         "stderr": float(ratios.std(ddof=1) / math.sqrt(trials)),
                         "theory": (d + n - 1) / n, "gaussian_theory": (d + n + 1) / n,
                         "distribution": distribution})
    return pd.DataFrame(rows)


__all__ = ["OBJECTIVES_2D", "objective_2d", "gradient_2d", "spsa_2d", "variance_vs_dimension"]
