"""Conflict-averse baselines: PCGrad and MGDA, aggregating K task gradients into one.

PiKE's premise is that task gradients rarely conflict in large-scale mixing; these are the
methods built for when they do, kept here for comparison. The aggregators come from
`torchjd <https://github.com/TorchJD/torchjd>`_ (a maintained library of Jacobian
descent aggregators); this module only adapts them to a ``(K, d)`` matrix of task
gradients (:mod:`zoedu.methods.conflict` makes them :func:`zoedu.train.fit` methods):

* **PCGrad** (Yu et al., NeurIPS 2020, Algorithm 1): for each task gradient g_i, in a
  random order of the others, if ⟨g_i, g_j⟩ < 0 replace g_i by g_i − ⟨g_i, g_j⟩/‖g_j‖²·g_j
  (project out the conflicting component); the update is Σ_i g_i^PC. We return the mean
  (Σ/K), so its scale matches the gradient of the mean loss that the mixers train on.
* **MGDA** (Sener & Koltun, NeurIPS 2018, Algorithm 2 — Frank–Wolfe): the min-norm point of
  the convex hull of the task gradients, Σ_i α_i g_i with α on the simplex. For two tasks
  α = clip(⟨g₂ − g₁, g₂⟩/‖g₁ − g₂‖², 0, 1) (their Eq. 4).

(torchjd's UPGrad is left out: it needs the extra ``quadprog`` solver packages.)

``fit(model, task, "pcgrad" | "mgda", ...)`` splits each (mixed) batch by
``batch["domain"]``, runs one forward and one backward pass per task present (K of each,
counted honestly in the History), aggregates and takes an Adam (or SGD) step.
"""

from __future__ import annotations

import numpy as np
import torch

AGGREGATORS = ("mean", "pcgrad", "mgda")


def _torchjd():
    try:
        import torchjd.aggregation as agg
    except ImportError as err:  # pragma: no cover - torchjd is a dependency
        raise ImportError("PCGrad/MGDA need the torchjd package: pip install torchjd") from err
    return agg


def _check_matrix(grads) -> torch.Tensor:
    if not torch.is_tensor(grads):
        grads = torch.as_tensor(np.asarray(grads, dtype=np.float64))
    if grads.dim() != 2 or grads.shape[0] < 2:
        raise ValueError(f"grads must be a (K, d) matrix of K ≥ 2 task gradients, got shape {tuple(grads.shape)}")
    if not torch.isfinite(grads).all():
        raise ValueError("grads contain NaN or inf; the aggregate would be meaningless")
    return grads


def pcgrad(grads) -> torch.Tensor:
    """PCGrad's update direction (Yu et al. 2020, Alg. 1), divided by K (see the module docstring)."""
    g = _check_matrix(grads)
    return _torchjd().PCGrad()(g) / g.shape[0]


def mgda(grads, *, epsilon: float = 1e-3, max_iters: int = 100) -> torch.Tensor:
    """MGDA's min-norm convex combination of the task gradients (Sener & Koltun 2018, Alg. 2)."""
    g = _check_matrix(grads)
    return _torchjd().MGDA(epsilon=epsilon, max_iters=max_iters)(g)


def aggregate(grads, method: str = "mean") -> torch.Tensor:
    """Combine a ``(K, d)`` matrix of task gradients with ``method`` in :data:`AGGREGATORS`."""
    if method not in AGGREGATORS:
        raise ValueError(f"method={method!r} is unknown; allowed: {', '.join(AGGREGATORS)}")
    if method == "mean":
        return _check_matrix(grads).mean(0)
    return {"pcgrad": pcgrad, "mgda": mgda}[method](grads)


__all__ = ["AGGREGATORS", "aggregate", "mgda", "pcgrad"]
