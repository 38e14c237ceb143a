r"""PiKE and Balanced-PiKE: adaptive mixing weights from per-task gradient norms and variances.

Li, Deng, Zhong, Razaviyayn, Mirrokni, "PiKE: Adaptive Data Mixing for Large-Scale
Multi-Task Learning Under Low Gradient Conflicts", NeurIPS 2025 (Sec. 3 and Algorithm 1
for PiKE; Sec. 4 for Balanced-PiKE). Measurements: benchmarks/README.md, "PiKE and data mixing".

Setting. K tasks with losses L_k; one SGD step on a mixed batch of b examples, b_k = w_k·b
of task k (w ∈ Δ_K), x⁺ = x − η g, E[g] = Σ_k w_k ∇L_k. For an ℓ-smooth L = (1/K)Σ_k L_k
and *low gradient conflict* (⟨∇L_j, ∇L_k⟩ ≥ 0 for j ≠ k, dropped from the bound) the
guaranteed one-step decrease is, up to a factor and a term quadratic in w,

    Σ_k w_k [ ‖∇L_k‖² − (ℓη / 2b) σ_k² ],      σ_k² = E‖∇ℓ_{k,i} − ∇L_k‖².

Algorithm 1 maximises it online by mirror ascent with a KL proximal term; every
T₀ = ``update_every`` steps, from fresh statistics,

    (1)  w_k ← w_k · exp( ζ₁ ‖∇L_k‖² − (ζ₂ / 2b) σ_k² ),   then normalise,

with ζ₁ = ζ and ζ₂ = ζℓη. Balanced-PiKE replaces L by the tilted loss
L_τ = (1/τ) log Σ_k exp(τ L_k), whose gradient is Σ_k p_k ∇L_k with p = softmax(τ L), so

    (2)  w_k ← w_k · exp( ζ₁ K p_k ‖∇L_k‖² − (ζ₂ / 2b) σ_k² ):

PiKE as τ → 0, the worst task's term dominating as τ grows.

What this implementation adds to (1)–(2), each a documented option:

* Unbiased input. ‖∇L_k‖² must be estimated without bias: the plug-in ‖ḡ_k‖² from n
  examples is inflated by σ_k²/n. Callers pass ‖ḡ_k‖² − σ̂_k²/n
  (``TaskGradientStats.unbiased_sq_norms``); the batch source in ``fit`` does.
* Scale (``normalize=True``). Both statistics are divided by m = (1/K)Σ_j ‖∇L_j‖² (the same
  as ζ/m), so ζ₁ = ζ₂ = 1 need no tuning across models and training phases.
* Bounded steps (``max_log_step``, default 2). The exponent is centred on its weighted mean
  and clipped to ±``max_log_step`` per update; ``None`` is (1) exactly.
* Floor (``min_weight``, default 0.1/K) after every update, so every task stays sampled.
* Noise-aware steps (``shrink=True``; off by default). With s_k the score in (1) after
  scaling, a_k = ζ₁·gain_k, c = ζ₂/2b, n = n_k examples, Gaussian per-example noise:

      (3)  SE_k² = [ a_k² (4 ĝ_k σ̂_k² + 2 σ̂_k⁴/n)/n + (a_k/n + c)² · 2 σ̂_k⁴/(n − 1) ] / m²,

  an upper bound (equality for noise along one direction). Given ``cov_sq`` = tr Σ_k² (how
  the noise spreads over directions, ``TaskGradientStats.cov_sq``) and ``cov_along_mean`` =
  μ_kᵀΣ_kμ_k, σ̂_k⁴ is replaced by Q_k = min(tr Σ_k², σ̂_k⁴) and 4 ĝ_k σ̂_k² by 4 M_k, M_k =
  μᵀΣμ clipped to [0, ĝ_k √Q_k] (ĝ_k √Q_k without it): the Gaussian variances of ‖ḡ‖²
  (4 μᵀΣμ/n + 2 tr Σ²/n², and μᵀΣμ ≤ ‖μ‖² √tr Σ²) and of σ̂² (2 tr Σ²/(n − 1)). With noise
  along one direction Q = σ̂⁴ and (3) is unchanged. On the benchmark's tiny GPT-2 the bound
  is 3–17× the scores' measured spread; told the real noise, PiKE moves further and loses to
  uniform mixing (benchmarks/README.md, "How wide is the noise"), so callers pass it only
  when asked (``MixedBatchSource(score_noise="measured")``). After t updates a task's
  log-weight has moved by A_k = Σ_t step_{k,t} relative to the tasks' mean, with noise
  variance V_k = Σ_t Var(step_{k,t}), Var(s_k − mean_j s_j) = SE_k²(1 − 2/K) + Σ_j SE_j²/K²
  (capped at (2·``max_log_step``·(K − 1)/K)² for clipped steps). The weights used shrink
  Algorithm 1's accumulated displacement D_k = log w_k^raw − log w⁰_k (centred) by its
  evidence, positive-part James–Stein style,

      (4)  log w_k = log w⁰_k + max(0, 1 − V_k / A_k²) · D_k,   then normalise and floor.

  ``raw_weights`` runs (1) unchanged; with noise-free statistics (σ̂ = 0, or no
  ``n_examples``) the weights are (1)'s. When the statistics are averages over several
  draws (``MixedBatchSource(smoothing=…)``) ``n_examples`` is their effective count;
  successive averages overlap, so V_k then counts their noise as independent and shrinks
  less than an exact accounting would.

Contract. ``update(sq_norms, variances[, losses][, n_examples][, cov_sq, cov_along_mean])``
takes one non-negative, finite entry per task (a ValueError otherwise; NaN marks an unknown
``cov_sq``/``cov_along_mean``) and returns the new weights; ``weights`` is
always on the simplex with every entry ≥ ``min_weight``; ``counts(b)`` / ``batch_sizes(b)``
turn them into integers summing to b (:func:`zoedu.mixing.apportion`). The bound behind
(1) is for SGD; under Adam, which rescales coordinates, a large ‖∇L_k‖² need not buy a
proportional decrease.
"""

from __future__ import annotations

import math

import numpy as np

from ._state import Checkpointable
from .samplers import _check_b, _check_n_tasks, apportion


def _check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) \
        and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name}={value!r} must be a {'non-negative' if allow_zero else 'positive'} finite number")
    return float(value)


def _check_stat(name: str, values, n_tasks: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n_tasks,):
        raise ValueError(f"{name} must have one entry per task ({n_tasks}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}={arr.tolist()} must be finite (a NaN or inf statistic would corrupt the weights)")
    if name != "losses" and np.any(arr < 0):
        raise ValueError(f"{name}={arr.tolist()} must be non-negative (squared norms and variances are ≥ 0)")
    return arr


def _check_spread(name: str, values, n_tasks: int, *, non_negative: bool) -> np.ndarray:
    """One entry per task, NaN where unknown (all NaN for None); no infinities."""
    if values is None:
        return np.full(n_tasks, np.nan)
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n_tasks,) or np.any(np.isinf(arr)) or (non_negative and np.any(arr < 0)):
        raise ValueError(f"{name}={arr.tolist()!r} must hold one {'non-negative' if non_negative else 'finite'} "
                         f"entry per task ({n_tasks}; NaN where unknown)")
    return arr


def _check_counts(values, n_tasks: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n_tasks,) or not np.all(np.isfinite(arr)) or np.any(arr < 2):
        raise ValueError(f"n_examples={np.asarray(values).tolist()!r} must be one number ≥ 2 per task "
                         f"({n_tasks}): the examples (or effective examples of an average) behind each "
                         "task's statistics")
    return arr


class PiKE(Checkpointable):
    """PiKE's mixing weights (Algorithm 1): w_k ← w_k·exp(ζ₁‖∇L_k‖² − (ζ₂/2b)σ_k²), normalised.

    ``state_dict()``/``load_state_dict()`` save and restore the iterate, the accumulated moves
    and noise and the update count, so a resumed run continues bit for bit; a resume with
    other constructor arguments is a ``ValueError`` naming the argument.

    Args:
        n_tasks: K ≥ 2.
        zeta1: ζ₁, step size on the squared gradient norm (> 0).
        zeta2: ζ₂, step size on the variance penalty (≥ 0; 0 ignores noise).
        update_every: T₀, steps between updates (used by the batch source in ``fit``).
        batch_size: b in the variance term σ²/(2b); ``fit`` sets it to its batch size.
        min_weight: floor of every weight after an update (keeps all tasks sampled);
            must be < 1/K.
        normalize: divide the statistics by the mean squared norm first (module docstring).
        max_log_step: no log-weight moves by more than this in one update, relative to the
            weighted mean move (module docstring, "Bounded steps"); ``None``: no bound, the
            published Algorithm 1's update exactly.
        shrink: shrink the accumulated log-weight moves toward the initial weights by their
            signal-to-noise (module docstring, "Noise-aware steps"); needs ``n_examples``
            in :meth:`update`, without it (or with noise-free statistics) nothing changes.
        weights: initial weights (uniform by default).
    """

    def __init__(self, n_tasks: int, *, zeta1: float = 1.0, zeta2: float = 1.0, update_every: int = 50,
                 batch_size: int = 16, min_weight: float | None = None, normalize: bool = True,
                 max_log_step: float | None = 2.0, shrink: bool = False, weights=None):
        self.n_tasks = _check_n_tasks(n_tasks)
        self.zeta1 = _check_positive("zeta1", zeta1)
        self.zeta2 = _check_positive("zeta2", zeta2, allow_zero=True)
        if isinstance(update_every, bool) or not isinstance(update_every, (int, np.integer)) or update_every < 1:
            raise ValueError(f"update_every={update_every!r} must be a positive integer (steps between updates)")
        self.update_every = int(update_every)
        self.batch_size = _check_b(batch_size, self.n_tasks, False)
        if min_weight is None:
            min_weight = 0.1 / self.n_tasks
        self.min_weight = _check_positive("min_weight", min_weight, allow_zero=True)
        if self.min_weight >= 1.0 / self.n_tasks:
            raise ValueError(f"min_weight={min_weight} must be < 1/n_tasks = {1.0 / self.n_tasks:.4g}")
        self.normalize = bool(normalize)
        # None: no bound, Algorithm 1's update exactly
        self.max_log_step = None if max_log_step is None else _check_positive("max_log_step", max_log_step)
        if not isinstance(shrink, (bool, np.bool_)):
            raise ValueError(f"shrink={shrink!r} must be True or False")
        self.shrink = bool(shrink)
        if weights is None:
            self._weights = np.full(self.n_tasks, 1.0 / self.n_tasks)
        else:
            from .samplers import check_weights

            self._weights = check_weights(weights, self.n_tasks)
        self._initial = self._weights.copy()
        self._raw = self._weights.copy()                    # Algorithm 1's iterate, unshrunk
        self._moved = np.zeros(self.n_tasks)               # A_k: Σ of the (clipped) steps, unfloored
        self._noise = np.zeros(self.n_tasks)               # V_k: accumulated variance of the steps
        self.n_updates = 0

    _STATE = ("_weights", "_initial", "_raw", "_moved", "_noise", "n_updates", "_factors")

    def _config(self) -> dict:
        # batch_size is left out: fit sets it to its own batch size when it binds the mixer
        return {"n_tasks": self.n_tasks, "zeta1": self.zeta1, "zeta2": self.zeta2,
                "update_every": self.update_every, "min_weight": self.min_weight, "normalize": self.normalize,
                "max_log_step": self.max_log_step, "shrink": self.shrink}

    # -------------------------------------------------------------- the update
    @property
    def weights(self) -> np.ndarray:
        """The current mixing weights w (on the simplex)."""
        return self._weights.copy()

    @property
    def raw_weights(self) -> np.ndarray:
        """Algorithm 1's iterate before the noise-aware shrinkage (equal to ``weights`` when shrink=False)."""
        return self._raw.copy()

    @property
    def shrink_factors(self) -> np.ndarray:
        """max(0, 1 − V_k/D_k²) per task after the last update (1 where nothing was shrunk)."""
        return self._factors.copy() if hasattr(self, "_factors") else np.ones(self.n_tasks)

    def _scale(self, sq_norms: np.ndarray) -> float:
        return float(sq_norms.mean()) if self.normalize else 1.0

    def _scores(self, sq_norms: np.ndarray, variances: np.ndarray, gain: np.ndarray) -> np.ndarray:
        scale = self._scale(sq_norms)
        if scale <= 0:                 # every gradient is zero: nothing to learn, keep the weights
            return np.zeros_like(sq_norms)
        return (self.zeta1 * gain * sq_norms - self.zeta2 / (2 * self.batch_size) * variances) / scale

    def score_se(self, sq_norms, variances, n_examples, gain=None, cov_sq=None, cov_along_mean=None) -> np.ndarray:
        """Standard error of each task's score (module docstring, "Noise-aware steps").

        ``cov_sq``: tr Σ_k² per task (NaN: unknown, use the one-direction bound σ̂_k⁴);
        ``cov_along_mean``: μ_kᵀΣ_kμ_k (NaN: unknown, use ĝ_k √tr Σ_k²)."""
        sq = _check_stat("sq_norms", sq_norms, self.n_tasks)
        var = _check_stat("variances", variances, self.n_tasks)
        n = _check_counts(n_examples, self.n_tasks)
        a = self.zeta1 * (np.ones(self.n_tasks) if gain is None else np.asarray(gain, dtype=np.float64))
        c = self.zeta2 / (2 * self.batch_size)
        scale = self._scale(sq)
        if scale <= 0:
            return np.zeros(self.n_tasks)
        # unknown (None or NaN) entries fall back to the bounds tr Σ² ≤ (tr Σ)² (noise along one
        # direction) and μᵀΣμ ≤ ‖μ‖² λ_max ≤ ‖μ‖² √tr Σ²; known ones are clipped to them
        q = var ** 2
        spread = _check_spread("cov_sq", cov_sq, self.n_tasks, non_negative=True)
        q = np.where(np.isnan(spread), q, np.minimum(spread, q))
        along = sq * np.sqrt(q)
        m_ = _check_spread("cov_along_mean", cov_along_mean, self.n_tasks, non_negative=False)
        along = np.where(np.isnan(m_), along, np.clip(m_, 0.0, along))
        v_norm = (4 * along + 2 * q / n) / n
        v_var = 2 * q / (n - 1)
        return np.sqrt(a ** 2 * v_norm + (a / n + c) ** 2 * v_var) / scale

    def _apply(self, scores: np.ndarray, se: np.ndarray | None = None) -> np.ndarray:
        step = scores - float(self._raw @ scores)           # only differences matter after normalising
        if self.max_log_step is not None:
            step = np.clip(step, -self.max_log_step, self.max_log_step)
        self._raw = self._floor(np.log(self._raw) + step)
        self._moved += step
        if se is not None:
            # the move relative to the tasks' mean, s_k − (1/K)Σ_j s_j, has variance
            # SE_k²(1 − 2/K) + Σ_j SE_j²/K²; a step clipped to ±bound lies within ±2·bound·(K − 1)/K
            # of the mean, so (Popoviciu) its variance is at most (2·bound·(K − 1)/K)²
            K = self.n_tasks
            var_step = se ** 2 * (1 - 2 / K) + float((se ** 2).sum()) / K ** 2
            self._noise += (var_step if self.max_log_step is None
                            else np.minimum(var_step, (2 * self.max_log_step * (K - 1) / K) ** 2))
        if self.shrink and np.any(self._noise > 0):
            a = self._moved - self._moved.mean()
            with np.errstate(divide="ignore", invalid="ignore"):
                f = np.where(a != 0, np.maximum(0.0, 1.0 - self._noise / a ** 2), 0.0)
            d = np.log(self._raw) - np.log(self._initial)
            d -= d.mean()
            self._factors = f
            self._weights = self._floor(np.log(self._initial) + f * d)
        else:
            self._factors = np.ones(self.n_tasks)
            self._weights = self._raw.copy()
        self.n_updates += 1
        return self.weights

    def _floor(self, logw: np.ndarray) -> np.ndarray:
        w = np.exp(logw - logw.max())                       # softmax-stable exponentiated step
        w /= w.sum()
        fixed = np.zeros(self.n_tasks, dtype=bool)          # floor, then renormalise the rest
        for _ in range(self.n_tasks):
            low = (w < self.min_weight) & ~fixed
            if not low.any():
                break
            fixed |= low
            w[fixed] = self.min_weight
            w[~fixed] *= (1 - self.min_weight * fixed.sum()) / w[~fixed].sum()
        return w / w.sum()

    def update(self, sq_norms, variances, n_examples=None, cov_sq=None, cov_along_mean=None) -> np.ndarray:
        """One PiKE step from ‖∇L_k‖² and σ_k² (one entry per task); returns the new weights.

        ``n_examples`` (examples per task behind the statistics, each ≥ 2) lets the step
        account for the statistics' noise (``shrink``); without it they are taken as exact.
        ``cov_sq`` (tr Σ_k²) and ``cov_along_mean`` (μ_kᵀΣ_kμ_k; NaN where unknown) tell the
        noise-aware step how that noise spreads over directions; without them the
        one-direction bound is used.
        """
        sq = _check_stat("sq_norms", sq_norms, self.n_tasks)
        var = _check_stat("variances", variances, self.n_tasks)
        gain = np.ones(self.n_tasks)
        se = None if n_examples is None else self.score_se(sq, var, n_examples, gain, cov_sq, cov_along_mean)
        return self._apply(self._scores(sq, var, gain), se)

    def batch_sizes(self, b: int, *, rng: np.random.Generator | None = None,
                    require_all: bool = False) -> np.ndarray:
        """Integer examples per task summing to ``b`` exactly (see :func:`zoedu.mixing.apportion`)."""
        return apportion(self._weights, b, rng=rng, require_all=require_all)

    def counts(self, b, *, step=0, rng=None, require_all=False):
        """Sampler interface: :meth:`batch_sizes`."""
        return self.batch_sizes(b, rng=rng, require_all=require_all)

    one_task_per_batch = False

    def __repr__(self):
        return (f"{type(self).__name__}(n_tasks={self.n_tasks}, zeta1={self.zeta1}, zeta2={self.zeta2}, "
                f"update_every={self.update_every}, max_log_step={self.max_log_step}, shrink={self.shrink}, "
                f"weights={np.round(self._weights, 3).tolist()})")


class BalancedPiKE(PiKE):
    """Balanced-PiKE: PiKE on the tilted loss (1/τ)·log Σ_k exp(τ·L_k) (module docstring).

    ``update(sq_norms, variances, losses)``: each task's gain is K·softmax(τ·L)_k, so a
    small τ behaves like PiKE (average loss) and a large τ favours the worst task.
    """

    def __init__(self, n_tasks: int, *, tau: float = 1.0, **options):
        super().__init__(n_tasks, **options)
        if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating)) or not math.isfinite(tau) \
                or tau <= 0:
            raise ValueError(f"tau={tau!r} must be a positive finite number (τ → 0: average loss, "
                             f"τ → ∞: worst-task loss)")
        self.tau = float(tau)

    def _config(self) -> dict:
        return {**super()._config(), "tau": self.tau}

    def tilt(self, losses) -> np.ndarray:
        """p = softmax(τ·L): the weight of each task in the gradient of the tilted objective."""
        losses = _check_stat("losses", losses, self.n_tasks)
        z = self.tau * losses
        p = np.exp(z - z.max())
        return p / p.sum()

    def update(self, sq_norms, variances, losses=None, n_examples=None, cov_sq=None,
               cov_along_mean=None) -> np.ndarray:
        if losses is None:
            raise ValueError("BalancedPiKE.update needs losses (one current loss per task) for the tilt")
        sq = _check_stat("sq_norms", sq_norms, self.n_tasks)
        var = _check_stat("variances", variances, self.n_tasks)
        gain = self.n_tasks * self.tilt(losses)
        se = None if n_examples is None else self.score_se(sq, var, n_examples, gain, cov_sq, cov_along_mean)
        return self._apply(self._scores(sq, var, gain), se)

    def __repr__(self):
        return super().__repr__()[:-1] + f", tau={self.tau})"


__all__ = ["PiKE", "BalancedPiKE"]
