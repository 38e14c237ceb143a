"""The batch source behind ``fit(..., mixer=X)``: mixed multi-task batches plus History columns.

``fit`` calls :func:`make_batch_source` once, then every step ``next_batch(ctx)`` (inside the
timed step) and ``after_step(ctx, step, out)`` (after it). The source

1. asks its sampler (or PiKE) for per-task counts summing to ``ctx.batch_size``, draws that
   many examples of each domain with ``ctx.rng`` and builds one batch on their union;
2. records each domain's mean training loss *of that batch* without an extra forward pass:
   ``ctx.loss`` hands it the per-example losses the method computes anyway
   (:meth:`MixedBatchSource.record_losses`), split by ``batch["domain"]``;
3. every ``stats_every`` steps draws a fresh batch per task and runs
   :func:`~zoedu.mixing.task_gradient_stats`; PiKE updates its weights every
   ``update_every`` steps (Algorithm 1's "every T₀ steps") from the unbiased ‖∇L_k‖²
   estimate ‖ḡ_k‖² − σ̂_k²/n (``TaskGradientStats.unbiased_sq_norms``) and σ̂_k².

Better statistics at no or little cost (``smoothing``, ``tilt_losses``):

* ``smoothing=α`` keeps exponential averages of ĝ_k and σ̂_k² across statistics steps,
  ``m ← α m + (1 − α) x`` with Adam's bias correction (divide by 1 − α^t), so an update
  uses every statistics draw since the start, the recent ones most. The average of t
  draws has the variance of one draw of ``n_eff = n·(Σ w)²/Σ w²`` examples (w the EMA's
  weights), which is what the noise-aware step is told. ``α = 0`` (the default) is the
  published one-draw-per-update estimator.
* ``tilt_losses="train"``: Balanced-PiKE's tilt softmax(τ L) reads an exponential average
  (factor ``loss_smoothing``) of each domain's loss *on the training batches* — recorded
  every step from the per-example losses the training step computes anyway, so free —
  instead of the mean loss of the statistics' few examples (``"stats"``, the default).

* ``score_noise="measured"``: tell PiKE's noise-aware step how each task's per-example
  noise spreads over directions (tr Σ_k² and μ_kᵀΣ_kμ_k, estimated from the Gram matrix of the
  group gradients the statistics already take, ``TaskGradientStats.cov_sq`` and
  ``cov_along_mean``; averaged like the rest with ``smoothing``).
  ``"bound"`` (the default) assumes all of it along one direction — an upper bound on the
  scores' noise that is loose by about the noise's effective number of directions.

* ``precondition="optimizer"``: take the statistics in the optimizer's own geometry. PiKE's
  bound is for SGD; Adam(W) steps −η P m̂ with P = diag(1/(√v̂ + ε)), which is SGD in the
  coordinates u = P^{-½}x, where a task's gradient is P^½ ∇L_k. So every task gradient is
  multiplied by P^½ (from the optimizer's ``exp_avg_sq``, bias-corrected, and its ε) before
  the norms, variances and cosines are taken: ‖∇L_k‖² becomes ⟨∇L_k, P ∇L_k⟩, the decrease
  an Adam step along task k buys. A task whose gradient is large only in coordinates Adam
  already scales down (its own, frequently large ones) no longer looks worth more. Optimizers
  without second moments (SGD, IP-SGD, MeZO) and steps before the first update use P = I.

Columns added to the History (one per domain ``d``): ``loss/d`` (training loss of the
step's batch, NaN if the domain was absent), ``count/d`` (its examples in the batch),
``weight/d`` (the mixing weight the batch was drawn with); at statistics steps
``grad_sq_norm/d``, ``grad_variance/d`` and ``cosine`` (the K×K matrix as a numpy array,
NaN elsewhere); every step ``mixer_forward_passes``, ``mixer_backward_passes`` and
``mixer_seconds``: the statistics' own cost in that step, which ``fit``'s
``forward_passes``/``backward_passes``/``seconds`` do not include.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..tasks import move_batch
from .pike import BalancedPiKE, PiKE
from .samplers import Proportional, RandomTask, RoundRobin, Sampler, Static, Uniform
from .stats import task_gradient_stats

TILT_LOSSES = ("stats", "train")
PRECONDITION = ("none", "optimizer")
SCORE_NOISE = ("bound", "measured")
_AVERAGED = 5  # rows of the statistics' running average: ĝ, σ̂², losses, tr Σ², μᵀΣμ
MIXERS = ("uniform", "proportional", "static", "round-robin", "random-task", "pike", "balanced-pike")


def make_mixer(name, n_tasks: int, *, sizes=None, batch_size: int = 16, **options):
    """The sampler or PiKE object for a mixer ``name`` in :data:`MIXERS` (``options`` go to it)."""
    if not isinstance(name, str) or name not in MIXERS:
        raise ValueError(f"mixer={name!r} is unknown; allowed: {', '.join(MIXERS)} "
                         "(or a Sampler, PiKE or MixedBatchSource object)")
    try:
        if name == "uniform":
            return Uniform(n_tasks, **options)
        if name == "proportional":
            if sizes is None:
                raise ValueError("the proportional mixer needs sizes (examples per task)")
            return Proportional(sizes, **options)
        if name == "static":
            if "weights" not in options:
                raise ValueError("the static mixer needs weights= (one fixed weight per task)")
            return Static(**options)
        if name == "round-robin":
            return RoundRobin(n_tasks, **options)
        if name == "random-task":
            return RandomTask(n_tasks, **options)
        if name == "pike":
            return PiKE(n_tasks, batch_size=batch_size, **options)
        return BalancedPiKE(n_tasks, batch_size=batch_size, **options)
    except TypeError as err:
        raise ValueError(f"mixer {name!r}: {err}") from None


class MixedBatchSource:
    """Mixed multi-task batches for ``fit`` (see the module docstring).

    Args:
        mixer: a name from :data:`MIXERS`, a :class:`~zoedu.mixing.Sampler` or a
            :class:`~zoedu.mixing.PiKE` / :class:`~zoedu.mixing.BalancedPiKE`.
        stats_every: compute gradient statistics (and the cosine matrix) every this many
            steps; default: PiKE's ``update_every`` for PiKE, never for other samplers.
        stats_batch_size: examples per task for the statistics; default ``max(4, b // K)``.
        variance: σ² estimator, ``"groups"`` or ``"per-sample"`` (see ``task_gradient_stats``).
        n_groups: groups for the ``"groups"`` estimator.
        require_all: every task in every batch (needs b ≥ K).
        smoothing: α in [0, 1), exponential averaging of the statistics across statistics
            steps (module docstring); 0 uses each draw alone.
        tilt_losses: ``"stats"`` or ``"train"``, the losses behind Balanced-PiKE's tilt.
        loss_smoothing: averaging factor in [0, 1) of the training-batch losses.
        precondition: ``"none"`` (the published Euclidean statistics) or ``"optimizer"``
            (in the optimizer's preconditioned coordinates, module docstring).
        score_noise: ``"bound"`` or ``"measured"``, the noise model of PiKE's noise-aware step
            (module docstring); ``"measured"`` needs the groups estimator with ``n_groups`` ≥ 4.
        **mixer_options: passed to the mixer when it is given by name (e.g. ``zeta1``, ``tau``).
    """

    def __init__(self, mixer="uniform", *, stats_every: int | None = None,
                 stats_batch_size: int | None = None, variance: str = "groups", n_groups: int = 4,
                 require_all: bool = False, smoothing: float = 0.0, tilt_losses: str = "stats",
                 loss_smoothing: float = 0.9, precondition: str = "none", score_noise: str = "bound",
                 **mixer_options):
        if stats_every is not None and (isinstance(stats_every, bool) or not isinstance(stats_every, int)
                                        or stats_every < 1):
            raise ValueError(f"stats_every={stats_every!r} must be None or a positive integer")
        if stats_batch_size is not None and (not isinstance(stats_batch_size, int) or stats_batch_size < 2):
            raise ValueError(f"stats_batch_size={stats_batch_size!r} must be an integer ≥ 2")
        for name, v in (("smoothing", smoothing), ("loss_smoothing", loss_smoothing)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"{name}={v!r} must be a number in [0, 1) (the weight of the past)")
        if tilt_losses not in TILT_LOSSES:
            raise ValueError(f"tilt_losses={tilt_losses!r} is unknown; allowed: {', '.join(TILT_LOSSES)}")
        if precondition not in PRECONDITION:
            raise ValueError(f"precondition={precondition!r} is unknown; allowed: {', '.join(PRECONDITION)}")
        self.precondition = precondition
        if score_noise not in SCORE_NOISE:
            raise ValueError(f"score_noise={score_noise!r} is unknown; allowed: {', '.join(SCORE_NOISE)}")
        if score_noise == "measured" and (variance != "groups" or not isinstance(n_groups, int) or n_groups < 4):
            raise ValueError(f"score_noise='measured' estimates tr Σ² from at least 4 group gradients: it needs "
                             f"variance='groups' and n_groups ≥ 4 (got variance={variance!r}, n_groups={n_groups!r})")
        self.score_noise = score_noise
        self.smoothing, self.tilt_losses, self.loss_smoothing = float(smoothing), tilt_losses, float(loss_smoothing)
        if mixer_options and not isinstance(mixer, str):
            raise ValueError(f"mixer options {sorted(mixer_options)} only apply to a mixer given by name")
        if not isinstance(mixer, (str, Sampler, PiKE)):
            raise ValueError(f"mixer={mixer!r} must be a name ({', '.join(MIXERS)}), a Sampler or a PiKE object")
        self.spec, self.mixer_options = mixer, mixer_options
        self.stats_every, self.stats_batch_size = stats_every, stats_batch_size
        self.variance, self.n_groups, self.require_all = variance, n_groups, require_all
        self.mixer = None
        self.task = None
        self._avg = None

    # ------------------------------------------------------------------ binding
    def bind(self, ctx) -> MixedBatchSource:
        """Attach to a ``FitContext``: resolve the mixer for its task (``ctx.loss`` then calls
        :meth:`record_losses`)."""
        task = ctx.task
        if not task.domains or task.n_domains < 2:
            raise ValueError(f"mixer= needs a multi-domain task (at least 2 domains, e.g. load_task('multidomain')); "
                             f"task {task.name!r} has {task.n_domains}")
        K = task.n_domains
        self.task = task
        self.names = list(task.domains)
        self.pools = [task.domain_indices("train", k) for k in range(K)]
        if any(p.size == 0 for p in self.pools):
            empty = [self.names[k] for k, p in enumerate(self.pools) if p.size == 0]
            raise ValueError(f"domains {empty} have no training examples")
        if isinstance(self.spec, str):
            self.mixer = make_mixer(self.spec, K, sizes=[p.size for p in self.pools],
                                    batch_size=ctx.batch_size, **self.mixer_options)
        else:
            self.mixer = self.spec
            if isinstance(self.mixer, PiKE):
                self.mixer.batch_size = ctx.batch_size  # the b of the variance term is fit's batch size
        if self.mixer.n_tasks != K:
            raise ValueError(f"the mixer has n_tasks={self.mixer.n_tasks} but the task has {K} domains {self.names}")
        if self.stats_every is None and isinstance(self.mixer, PiKE):
            self.stats_every = self.mixer.update_every
        self.b_stats = self.stats_batch_size or max(4, ctx.batch_size // K)
        self._step = 1
        self._task_losses: dict[int, float] = {}
        self._counts = np.zeros(K, dtype=np.int64)
        self._weights = self.mixer.weights
        self._avg = None                      # EMA state of (ĝ, σ̂², losses, tr Σ², μᵀΣμ), its weight sums
        self._train_loss = np.full(K, np.nan)  # EMA of the training-batch losses per domain
        return self

    def record_losses(self, batch: dict, losses: torch.Tensor) -> None:
        """``FitContext.loss``'s hook: keep each domain's mean loss on this batch."""
        dom = batch.get("domain")
        if dom is None:
            return
        K = len(self.names)
        with torch.no_grad():
            d = dom.to(losses.device)
            sums = torch.zeros(K, dtype=torch.float64, device=losses.device).index_add_(
                0, d, losses.detach().double())
            cnt = torch.bincount(d, minlength=K)
            for k in torch.nonzero(cnt).flatten().tolist():
                self._task_losses[k] = float(sums[k] / cnt[k])

    # ------------------------------------------------------------------ batches
    def next_batch(self, ctx) -> dict:
        """The mixed batch of this step (CPU tensors): per-task counts, then one draw per task."""
        counts = np.asarray(self.mixer.counts(ctx.batch_size, step=self._step - 1, rng=ctx.rng,
                                              require_all=self.require_all), dtype=np.int64)
        if counts.sum() != ctx.batch_size or np.any(counts < 0):
            raise RuntimeError(f"mixer {self.mixer!r} returned counts {counts.tolist()} that do not sum to "
                               f"the batch size {ctx.batch_size}")
        chosen = [ctx.rng.choice(pool, size=int(c), replace=bool(c > pool.size))
                  for pool, c in zip(self.pools, counts) if c > 0]
        self._counts = counts
        self._weights = self.mixer.weights
        self._task_losses = {}
        return self.task.batch("train", np.concatenate(chosen))

    def task_batches(self, ctx, n: int | None = None) -> list[dict]:
        """A fresh batch of ``n`` examples from every task, on the device (for statistics)."""
        n = n or self.b_stats
        return [move_batch(self.task.sample("train", n, ctx.rng, indices=pool), ctx.device)
                for pool in self.pools]

    def _average(self, stats) -> tuple[np.ndarray, ...]:
        """(ĝ, σ̂², losses, n_eff, tr Σ², μᵀΣμ): this draw's statistics, or their bias-corrected EMAs."""
        unknown = np.full(len(stats.losses), np.nan)
        spread = [unknown if getattr(stats, k, None) is None else getattr(stats, k)
                  for k in ("cov_sq", "cov_along_mean")]
        x = np.stack([stats.unbiased_sq_norms, stats.variances, stats.losses, *spread])
        n = stats.n_examples.astype(np.float64)
        a = self.smoothing
        if a == 0:
            return x[0], x[1], x[2], n, x[3], x[4]
        if self._avg is None:
            self._avg = [np.zeros_like(x), 0.0, 0.0]
        m, s1, s2 = self._avg
        m = a * m + (1 - a) * x
        s1, s2 = a * s1 + (1 - a), a * a * s2 + (1 - a) ** 2
        self._avg = [m, s1, s2]
        est = m / s1
        return est[0], est[1], est[2], n * s1 * s1 / s2, est[3], est[4]

    def _preconditioner(self, ctx) -> dict | None:
        """P^½ = (√v̂ + ε)^(-½) per parameter from the optimizer's second moments, or None (P = I)."""
        opt = getattr(ctx, "optimizer", None)
        if self.precondition == "none" or opt is None or not hasattr(opt, "state"):
            return None
        scale = {}
        for group in opt.param_groups:
            beta2 = group.get("betas", (None, None))[1]
            eps = group.get("eps")
            for p in group["params"]:
                st = opt.state.get(p, {})
                v, t = st.get("exp_avg_sq"), st.get("step")
                if v is None or t is None or beta2 is None or eps is None:
                    continue
                t = float(t)
                if t < 1:
                    continue
                v_hat = v.detach().float() / (1 - beta2 ** t)
                scale[p] = (v_hat.sqrt() + eps).rsqrt()
        return scale or None

    def after_step(self, ctx, step: int, out: dict) -> None:
        """Add the per-domain columns; every ``stats_every`` steps the statistics (and PiKE's update)."""
        b = self.loss_smoothing
        for k, v in self._task_losses.items():
            old = self._train_loss[k]
            self._train_loss[k] = v if not np.isfinite(old) else b * old + (1 - b) * v
        for k, name in enumerate(self.names):
            out[f"loss/{name}"] = self._task_losses.get(k, float("nan"))
            out[f"count/{name}"] = int(self._counts[k])
            out[f"weight/{name}"] = float(self._weights[k])
        fwd = bwd = 0
        seconds = 0.0
        if self.stats_every and step % self.stats_every == 0:
            t0 = time.perf_counter()
            stats = task_gradient_stats(ctx.model, self.task.loss, self.task_batches(ctx),
                                        variance=self.variance, n_groups=self.n_groups,
                                        scale=self._preconditioner(ctx))
            # PiKE needs ‖∇L_k‖², not ‖ḡ_k‖²: the plug-in is inflated by σ_k²/n (n = b_stats), far
            # more than the σ_k²/2b penalty, and would steer weight toward the *noisy* tasks.
            # the example counts only where the noise-aware step uses them, so a subclass that
            # overrides update(sq_norms, variances[, losses]) keeps working
            sq, var, losses, n_eff, cov_sq, along = self._average(stats)
            if self.tilt_losses == "train" and np.all(np.isfinite(self._train_loss)):
                losses = self._train_loss.copy()
            extra = {"n_examples": n_eff} if getattr(self.mixer, "shrink", False) else {}
            if extra and self.score_noise == "measured":
                extra.update(cov_sq=cov_sq, cov_along_mean=along)
            if isinstance(self.mixer, PiKE) and step % self.mixer.update_every == 0:
                if isinstance(self.mixer, BalancedPiKE):
                    self.mixer.update(sq, var, losses, **extra)
                else:
                    self.mixer.update(sq, var, **extra)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            seconds = time.perf_counter() - t0
            fwd, bwd = stats.forward_passes, stats.backward_passes
            for k, name in enumerate(self.names):
                out[f"grad_sq_norm/{name}"] = float(stats.sq_norms[k])
                out[f"grad_variance/{name}"] = float(stats.variances[k])
            out["cosine"] = stats.cosine
            self.last_stats = stats
        out["mixer_forward_passes"] = fwd
        out["mixer_backward_passes"] = bwd
        out["mixer_seconds"] = seconds
        self._step = step + 1

    # ------------------------------------------------------------------ checkpoints
    _STATE = ("_step", "_counts", "_weights", "_avg", "_train_loss", "_task_losses")

    def state_dict(self) -> dict:
        """The source's running state (step, averages, per-domain losses) and its mixer's
        ``state_dict()``; the batches' randomness is ``fit``'s ``rng``, saved with the run."""
        import copy

        if self.mixer is None:
            raise ValueError("MixedBatchSource.state_dict: bind it first (fit does)")
        return {"mixer": self.mixer.state_dict(), "stats_every": self.stats_every,
                "state": {k: copy.deepcopy(getattr(self, k)) for k in self._STATE}}

    def load_state_dict(self, state_dict: dict) -> None:
        import copy

        from ..checks import same_config

        if self.mixer is None:
            raise ValueError("MixedBatchSource.load_state_dict: bind it first (fit does)")
        same_config("MixedBatchSource", {"stats_every": state_dict["stats_every"]}, {"stats_every": self.stats_every})
        self.mixer.load_state_dict(state_dict["mixer"])
        for k, v in state_dict["state"].items():
            if k in self._STATE:
                setattr(self, k, copy.deepcopy(v))
        if self._avg is not None and len(self._avg[0]) < _AVERAGED:
            # a checkpoint from before tr Σ² and μᵀΣμ were averaged: those rows are unknown (NaN) so far
            m = self._avg[0]
            self._avg[0] = np.vstack([m, np.full((_AVERAGED - len(m), m.shape[1]), np.nan)])

    def __repr__(self):
        return f"MixedBatchSource(mixer={self.mixer or self.spec!r}, stats_every={self.stats_every})"


def make_batch_source(mixer, ctx) -> MixedBatchSource:
    """What ``fit(..., mixer=mixer)`` calls: a :class:`MixedBatchSource` bound to ``ctx``.

    ``mixer`` is a name from :data:`MIXERS`, a Sampler, a PiKE/BalancedPiKE object, or an
    unbound :class:`MixedBatchSource` (to set ``stats_every`` and friends).
    """
    source = mixer if isinstance(mixer, MixedBatchSource) else MixedBatchSource(mixer)
    return source.bind(ctx)


__all__ = ["MIXERS", "MixedBatchSource", "make_batch_source", "make_mixer"]
