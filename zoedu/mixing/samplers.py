"""Samplers: how many examples of each of K tasks go into a mixed batch of size b.

Every sampler answers ``counts(b, step=..., rng=...)`` with K non-negative integers that
sum to ``b`` exactly. Mixing samplers (:class:`Uniform`, :class:`Proportional`,
:class:`Static`) put every task in every batch in proportion to their ``weights``;
one-task-per-batch samplers (:class:`RoundRobin`, :class:`RandomTask`) give all ``b`` to
one task, chosen by :meth:`task`.

Fractional shares ``b·w_k`` are turned into integers by :func:`apportion`: the floors, plus
one more example for ``r = b − Σ⌊b·w_k⌋`` tasks. Without a generator the r tasks with the
largest remainders get it (Hamilton's method, deterministic); with a generator they are
drawn by systematic sampling, which includes task k with probability exactly its
remainder, so E[counts_k] = b·w_k: a task with a small weight still appears, just rarely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..checks import positive
from ._state import Checkpointable


def _check_n_tasks(n_tasks) -> int:
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, (int, np.integer)) or n_tasks < 2:
        raise ValueError(f"n_tasks={n_tasks!r} must be an integer ≥ 2 (mixing needs at least two tasks)")
    return int(n_tasks)


def _check_b(b, n_tasks: int, require_all: bool) -> int:
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
        raise ValueError(f"b={b!r} (the batch size) must be a positive integer")
    if require_all and b < n_tasks:
        raise ValueError(f"b={b} is smaller than n_tasks={n_tasks}, but every task must appear in the "
                         f"batch (require_all=True); use b ≥ {n_tasks}")
    return int(b)


def check_weights(weights, n_tasks: int | None = None, *, name: str = "weights") -> np.ndarray:
    """``weights`` as a float array on the probability simplex, or a clear ValueError."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size < 2:
        raise ValueError(f"{name} must be a 1-D sequence of at least 2 task weights, got shape {w.shape}")
    if n_tasks is not None and w.size != n_tasks:
        raise ValueError(f"{name} has {w.size} entries but there are n_tasks={n_tasks} tasks")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name}={w.tolist()} must be finite")
    if np.any(w < 0) or np.any(w > 1):
        raise ValueError(f"{name}={w.tolist()}: every mixing weight must lie in [0, 1]")
    if not math.isclose(w.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"{name}={w.tolist()} must sum to 1 (they sum to {w.sum():.6g})")
    return w / w.sum()


def apportion(weights, b: int, *, rng: np.random.Generator | None = None,
              require_all: bool = False) -> np.ndarray:
    """Integers ``counts`` with ``counts.sum() == b`` and ``counts ≈ b·weights`` (see module docstring).

    With ``require_all`` every task gets at least one example first (needs ``b ≥ K``) and
    the remaining ``b − K`` are apportioned by the weights.
    """
    w = check_weights(weights)
    K = w.size
    b = _check_b(b, K, require_all)
    base = np.ones(K, dtype=np.int64) if require_all else np.zeros(K, dtype=np.int64)
    free = b - int(base.sum())
    share = free * w
    floors = np.floor(share).astype(np.int64)
    rest = share - floors
    r = free - int(floors.sum())
    counts = base + floors
    if r > 0:
        if rng is None:
            order = np.argsort(-rest, kind="stable")            # Hamilton: largest remainders
            counts[order[:r]] += 1
        else:
            rest = rest * (r / rest.sum())                      # Σ rest = r exactly (up to round-off)
            edges = np.cumsum(rest)
            points = rng.uniform() + np.arange(r)               # systematic sampling (Madow)
            chosen = np.searchsorted(edges, points, side="right")
            counts[np.minimum(chosen, K - 1)] += 1
    return counts


class Sampler(Checkpointable):
    """Base class: ``n_tasks`` tasks, ``weights`` on the simplex, ``counts(b, ...)`` summing to b.

    The samplers here are stateless between steps (their randomness is the caller's ``rng``);
    ``state_dict()`` holds their arguments, so a resume with other ones is refused."""

    one_task_per_batch = False

    def _config(self) -> dict:
        return {"n_tasks": self.n_tasks, "weights": self.weights.tolist()}

    def __init__(self, n_tasks: int):
        self.n_tasks = _check_n_tasks(n_tasks)

    @property
    def weights(self) -> np.ndarray:
        """The expected share of each task in a batch (uniform unless a subclass says otherwise)."""
        return np.full(self.n_tasks, 1.0 / self.n_tasks)

    def counts(self, b: int, *, step: int = 0, rng: np.random.Generator | None = None,
               require_all: bool = False) -> np.ndarray:
        """Per-task example counts for a batch of ``b`` (they sum to ``b``)."""
        return apportion(self.weights, b, rng=rng, require_all=require_all)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_tasks={self.n_tasks})"


class Uniform(Sampler):
    """Every task gets b/K of every batch (remainders rotate over steps, so the average is exact)."""

    def counts(self, b, *, step=0, rng=None, require_all=False):
        b = _check_b(b, self.n_tasks, require_all)
        counts = np.full(self.n_tasks, b // self.n_tasks, dtype=np.int64)
        r = b % self.n_tasks
        counts[(np.arange(r) + step * r) % self.n_tasks] += 1
        return counts


class Proportional(Sampler):
    """Tasks in proportion to their sizes, tempered: w_k ∝ n_k^(1/temperature).

    ``temperature=1`` samples every *example* equally often (proportional mixing);
    ``temperature → ∞`` tends to uniform over tasks (the multilingual "temperature
    sampling" of XLM/mT5).
    """

    def __init__(self, sizes: Sequence[int], temperature: float = 1.0):
        sizes = np.asarray(sizes, dtype=np.float64)
        if sizes.ndim != 1:
            raise ValueError(f"sizes must be a 1-D sequence of task sizes, got shape {sizes.shape}")
        super().__init__(sizes.size)
        if not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
            raise ValueError(f"sizes={sizes.tolist()} must be positive numbers of examples")
        positive("temperature", temperature)
        self.sizes = sizes
        self.temperature = float(temperature)
        w = sizes ** (1.0 / self.temperature)
        self._weights = w / w.sum()

    def _config(self) -> dict:
        return {"sizes": self.sizes.tolist(), "temperature": self.temperature}

    @property
    def weights(self):
        return self._weights.copy()

    def __repr__(self):
        return f"Proportional(sizes={self.sizes.astype(int).tolist()}, temperature={self.temperature})"


class Static(Sampler):
    """Fixed mixing weights on the simplex (a hand-tuned or offline-optimised mixture)."""

    def __init__(self, weights: Sequence[float]):
        w = check_weights(weights)
        super().__init__(w.size)
        self._weights = w

    @property
    def weights(self):
        return self._weights.copy()

    def __repr__(self):
        return f"Static(weights={np.round(self._weights, 4).tolist()})"


class RoundRobin(Sampler):
    """One task per batch, in turn: task ``step mod K``."""

    one_task_per_batch = True

    def task(self, step: int, rng: np.random.Generator | None = None) -> int:
        return int(step) % self.n_tasks

    def counts(self, b, *, step=0, rng=None, require_all=False):
        b = _check_b(b, self.n_tasks, False)
        if require_all:
            raise ValueError("require_all=True is impossible for RoundRobin: it puts one task in each batch")
        out = np.zeros(self.n_tasks, dtype=np.int64)
        out[self.task(step)] = b
        return out


class RandomTask(Sampler):
    """One task per batch, drawn with probabilities ``weights`` (uniform by default)."""

    one_task_per_batch = True

    def __init__(self, n_tasks: int, weights: Sequence[float] | None = None):
        super().__init__(n_tasks)
        self._weights = (check_weights(weights, self.n_tasks) if weights is not None
                         else np.full(self.n_tasks, 1.0 / self.n_tasks))

    @property
    def weights(self):
        return self._weights.copy()

    def task(self, step: int = 0, rng: np.random.Generator | None = None) -> int:
        if rng is None:
            raise ValueError("RandomTask needs rng (a numpy Generator) to draw the task")
        return int(rng.choice(self.n_tasks, p=self._weights))

    def counts(self, b, *, step=0, rng=None, require_all=False):
        b = _check_b(b, self.n_tasks, False)
        if require_all:
            raise ValueError("require_all=True is impossible for RandomTask: it puts one task in each batch")
        out = np.zeros(self.n_tasks, dtype=np.int64)
        out[self.task(step, rng)] = b
        return out


__all__ = ["Sampler", "Uniform", "Proportional", "Static", "RoundRobin", "RandomTask",
           "apportion", "check_weights"]
