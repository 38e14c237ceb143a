"""Data-mixing experiments (PiKE, notebook 04 and ``zoedu mix``). They return data, never figures.

* :func:`synthetic_conflict` — K noisy linear-regression tasks whose optima (and hence
  whose gradients at the start) have one pairwise cosine, the conflict knob, from aligned
  (+1) through orthogonal (0) to opposed (−1/(K−1); −1 for two tasks). Every mixer and
  conflict-averse method trains on the same stream of examples; seconds to run.
* :func:`conflict_sweep` — :func:`synthetic_conflict` over several cosines, one summary row
  per (cosine, method).* :func:`pretrain_multidomain`, :func:`fixed_mixture_sweep`, :func:`statistics_noise` — a tiny
  GPT-2 pretrained on the ``multidomain`` corpus with several mixers, in
  :mod:`zoedu.experiments.multidomain` (re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..mixing import BalancedPiKE, PiKE, aggregate
from ..mixing.samplers import Uniform

SYNTHETIC_METHODS = ("uniform", "pike", "balanced-pike", "pcgrad", "mgda")


# --------------------------------------------------------------------------- synthetic
def task_directions(n_tasks: int, cosine: float, dim: int) -> np.ndarray:
    """``n_tasks`` unit vectors in R^dim with every pairwise cosine equal to ``cosine``.

    The Gram matrix (1 − ρ)I + ρ11ᵀ is positive semi-definite only for
    ρ ∈ [−1/(K−1), 1]; its symmetric square root gives the vectors.
    """
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 2:
        raise ValueError(f"n_tasks={n_tasks!r} must be an integer ≥ 2")
    low = -1.0 / (n_tasks - 1)
    if not isinstance(cosine, (int, float)) or not math.isfinite(cosine) or not low - 1e-12 <= cosine <= 1:
        raise ValueError(f"cosine={cosine!r} must lie in [{low:.4g}, 1] for n_tasks={n_tasks} "
                         "(K vectors cannot be more opposed than −1/(K−1) pairwise)")
    if dim < n_tasks:
        raise ValueError(f"dim={dim} must be ≥ n_tasks={n_tasks}")
    gram = (1 - cosine) * np.eye(n_tasks) + cosine * np.ones((n_tasks, n_tasks))
    vals, vecs = np.linalg.eigh(gram)
    root = vecs @ np.diag(np.sqrt(np.clip(vals, 0, None))) @ vecs.T       # rows: the vectors in R^K
    out = np.zeros((n_tasks, dim))
    out[:, :n_tasks] = root
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _spread(value, n_tasks: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n_tasks, float(arr))
    elif arr.shape == (2,) and n_tasks != 2:
        arr = np.linspace(arr[0], arr[1], n_tasks)
    if arr.shape != (n_tasks,) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name}={value!r} must be a non-negative number, a (first, last) pair, "
                         f"or one value per task ({n_tasks})")
    return arr


def synthetic_conflict(cosine: float = 0.0, n_tasks: int = 2, *, dim: int = 20, steps: int = 100,
                       batch_size: int = 16, lr: float = 0.05, scales=(0.5, 1.5), noises=(0.1, 1.0),
                       methods: Sequence[str] = SYNTHETIC_METHODS, update_every: int = 10,
                       tau: float = 1.0, zeta2: float = 1.0, shrink: bool = False,
                       seed: int = 0) -> pd.DataFrame:
    """Train on K synthetic regression tasks with a chosen gradient conflict; the loss curves.

    Task k sees one feature direction u_k (unit vectors with pairwise cosine ``cosine``):
    a = s_k ξ u_k with ξ ~ N(0, 1), target y = s_k ξ + ν_k ε with ε ~ N(0, 1), loss
    ℓ = ½(aᵀx − y)², so L_k(x) = ½ s_k² (u_kᵀx − 1)² + ½ν_k² and
    ∇L_k = s_k² (u_kᵀx − 1) u_k. Every task gradient stays parallel to its u_k, so the
    cosine between two task gradients is ±``cosine`` for the whole run, not only at the
    start: +1 — one shared target (no conflict; any mixture has the same optimum);
    0 — independent tasks that compete only for the batch; −1 (two tasks) — opposed
    targets u₁ᵀx = 1 and u₁ᵀx = −1 that no x satisfies both. ``scales`` s_k set each task's
    gradient size, ``noises`` ν_k its per-example gradient variance — what PiKE reads.
    The reported loss of task k is its excess loss ½ s_k² (u_kᵀx − 1)².

    Methods: ``uniform``, ``pike`` and ``balanced-pike`` draw mixed batches of
    ``batch_size`` (per-task counts from the mixer) and take an SGD step on the batch mean;
    PiKE updates every ``update_every`` steps from per-example gradients of a fresh batch
    per task (their overhead is not part of this comparison); ``shrink`` is PiKE's noise-aware
    step (:class:`~zoedu.mixing.PiKE`; False: Algorithm 1 as published); ``tau`` is
    Balanced-PiKE's tilt and ``zeta2`` both PiKEs' weight on the variance penalty. ``pcgrad`` and ``mgda`` take b/K examples per task and aggregate the K task gradients.

    Returns:
        One row per (method, step): ``method``, ``step``, ``cosine``, ``loss/k`` (excess
        loss ½s_k²(u_kᵀx − 1)² of task k), ``average`` and ``worst`` of those, and
        ``weight/k`` (the mixing weights; uniform for the aggregating methods).
    """
    K = n_tasks
    dirs = task_directions(n_tasks, float(cosine), dim)
    scales, noises = _spread(scales, K, "scales"), _spread(noises, K, "noises")
    for m in methods:
        if m not in SYNTHETIC_METHODS:
            raise ValueError(f"method {m!r} is unknown; allowed: {', '.join(SYNTHETIC_METHODS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < K:
        raise ValueError(f"batch_size={batch_size!r} must be an integer ≥ n_tasks={K}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} must be a positive finite number")

    def draw(k, n, rng):
        xi = rng.standard_normal(n) * scales[k]
        return xi[:, None] * dirs[k][None, :], xi + rng.standard_normal(n) * noises[k]

    def per_example_grads(x, a, y):
        return (a @ x - y)[:, None] * a                          # ∇½(aᵀx − y)² = (aᵀx − y)a

    rows = []
    for method in methods:
        rng = np.random.default_rng(seed)                         # same stream for every method
        torch.manual_seed(seed)
        x = np.zeros(dim)
        mixer = None
        if method == "pike":
            mixer = PiKE(K, zeta2=zeta2, batch_size=batch_size, update_every=update_every, shrink=shrink)
        elif method == "balanced-pike":
            mixer = BalancedPiKE(K, tau=tau, zeta2=zeta2, batch_size=batch_size, update_every=update_every,
                                 shrink=shrink)
        uniform = Uniform(K)
        for step in range(1, steps + 1):
            if method in ("uniform", "pike", "balanced-pike"):
                counts = (mixer or uniform).counts(batch_size, step=step - 1, rng=rng)
                grads = [per_example_grads(x, *draw(k, int(c), rng)) for k, c in enumerate(counts) if c > 0]
                direction = np.concatenate(grads).mean(0)
            else:
                counts = uniform.counts(batch_size, step=step - 1, rng=rng)
                task_grads = np.stack([per_example_grads(x, *draw(k, int(c), rng)).mean(0)
                                       for k, c in enumerate(counts)])
                direction = aggregate(torch.as_tensor(task_grads), method).numpy()
            x = x - lr * direction
            if mixer is not None and step % update_every == 0:
                n_stat = max(4, batch_size // K)
                sq, var, losses = [], [], []
                for k in range(K):
                    a, y = draw(k, n_stat, rng)
                    g = per_example_grads(x, a, y)
                    mean = g.mean(0)
                    v = float(((g - mean) ** 2).sum(1).sum() / (n_stat - 1))
                    sq.append(max(float(mean @ mean) - v / n_stat, 0.0))   # unbiased ‖∇L_k‖², as in fit
                    var.append(v)
                    losses.append(float(0.5 * np.mean((a @ x - y) ** 2)))
                if isinstance(mixer, BalancedPiKE):
                    mixer.update(sq, var, losses, n_examples=[n_stat] * K)
                else:
                    mixer.update(sq, var, n_examples=[n_stat] * K)
            excess = 0.5 * scales ** 2 * (dirs @ x - 1.0) ** 2
            if not np.all(np.isfinite(excess)):
                raise FloatingPointError(f"{method} diverged at step {step}; lower lr={lr}")
            w = mixer.weights if mixer is not None else uniform.weights
            row = {"method": method, "step": step, "cosine": float(cosine),
                   "average": float(excess.mean()), "worst": float(excess.max())}
            row.update({f"loss/{k}": float(excess[k]) for k in range(K)})
            row.update({f"weight/{k}": float(w[k]) for k in range(K)})
            rows.append(row)
    return pd.DataFrame(rows)


def conflict_sweep(cosines: Sequence[float] = (1.0, 0.5, 0.0, -1.0), *, last: int = 20,
                   **options) -> pd.DataFrame:
    """:func:`synthetic_conflict` at every cosine; one row per (cosine, method).

    Columns: ``auc_average`` and ``auc_worst`` (the average and worst-task excess loss
    averaged over all steps: how fast a method makes progress), ``final_average`` and
    ``final_worst`` (averaged over the ``last`` steps: where it ends up), and
    ``final_loss/k`` per task.
    """
    frames = [synthetic_conflict(c, **options) for c in cosines]
    hist = pd.concat(frames, ignore_index=True)
    keys = ["cosine", "method"]
    auc = hist.groupby(keys, sort=False)[["average", "worst"]].mean().add_prefix("auc_")
    tail = hist[hist["step"] > hist["step"].max() - last]
    cols = ["average", "worst"] + [c for c in hist.columns if c.startswith("loss/")]
    final = tail.groupby(keys, sort=False)[cols].mean().add_prefix("final_")
    return auc.join(final).reset_index()


from .multidomain import (
    DOMAIN_SIZES,
    MULTIDOMAIN_FAST,
    MULTIDOMAIN_FULL,
    MULTIDOMAIN_MIXERS,
    PIKE_DEFAULTS,
    SCENARIO_DOMAINS,
    fixed_mixture_sweep,
    format_summary,
    mixture_grid,
    pretrain_multidomain,
    statistics_noise,
)


# --------------------------------------------------------------------------- CLI
#: ``zoedu mix``'s mixers when --mixers is not given, per task.
CLI_DEFAULT_MIXERS = {"multidomain": "uniform,proportional,pike,balanced-pike",
                      "synthetic": "uniform,pike,balanced-pike"}


def _pike_flags(args) -> dict:
    """``--tau`` and ``--zeta2`` as PiKE options (only those given)."""
    return {k: getattr(args, k) for k in ("tau", "zeta2") if getattr(args, k) is not None}


def _run(args) -> int:
    mixers = [m.strip() for m in (args.mixers or CLI_DEFAULT_MIXERS[args.task]).split(",") if m.strip()]
    if args.task == "synthetic":
        methods = [m for m in mixers if m in SYNTHETIC_METHODS]
        bad = [m for m in mixers if m not in SYNTHETIC_METHODS]
        if bad:
            raise ValueError(f"--mixers {bad} unknown for the synthetic task; allowed: {', '.join(SYNTHETIC_METHODS)}")
        if args.score_noise is not None:
            raise ValueError("--score-noise is for --task multidomain (the synthetic task's PiKE reads exact "
                             "per-example gradients); leave it out")
        cosines = [float(c) for c in args.cosines.split(",")]
        table = conflict_sweep(cosines, methods=methods, steps=args.steps or (20 if args.fast else 100), seed=args.seed,
                               **_pike_flags(args))
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if args.csv:
            table.to_csv(args.csv, index=False)
        return 0
    if args.task != "multidomain":
        raise ValueError(f"--task {args.task!r} is unknown; allowed: multidomain, synthetic")
    config = {}
    if args.domains:
        config["domains"] = args.domains
    if args.steps:
        config["steps"] = args.steps
    if args.size:
        config["size"] = args.size
    if args.batch_size:
        config["batch_size"] = args.batch_size
    if args.lr:
        config["lr"] = args.lr
    pike = _pike_flags(args)
    if args.score_noise is not None:
        pike["score_noise"] = args.score_noise
    options = {"pike": {k: v for k, v in pike.items() if k != "tau"}, "balanced-pike": pike}
    result = pretrain_multidomain(mixers, fast=args.fast, seed=args.seed, device=args.device,
                                  quiet=args.quiet, mixer_options=options, **config)
    print(format_summary(result["summary"]))
    cos = result["cosine"]
    if len(cos):
        off = cos[cos.task_i != cos.task_j]
        print(f"\noff-diagonal cosines over training: min {off.cosine.min():.3f}, "
              f"median {off.cosine.median():.3f}, share < 0: {(off.cosine < 0).mean():.1%}")
    if args.csv:
        result["summary"].to_csv(args.csv, index=False)
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "mix", help="multi-task data mixing: compare mixers (uniform, PiKE, ...) and print a table",
        description="Pretrain a tiny GPT-2 on the multidomain corpus with each mixer and print per-domain "
                    "validation loss, its average and worst, train seconds and the statistics' overhead; or, "
                    "with --task synthetic, sweep the gradient-conflict knob of the synthetic K-task problem.",
    )
    p.add_argument("--task", default="multidomain", choices=tuple(CLI_DEFAULT_MIXERS),
                   help="multidomain or synthetic (default: multidomain)")
    p.add_argument("--mixers", default=None,
                   help=f"comma-separated; multidomain: {', '.join(MULTIDOMAIN_MIXERS)} (default: "
                        f"{CLI_DEFAULT_MIXERS['multidomain']}); synthetic: {', '.join(SYNTHETIC_METHODS)} "
                        f"(default: {CLI_DEFAULT_MIXERS['synthetic']})")
    p.add_argument("--domains", default=None,
                   help="multidomain: comma-separated domains (prose, code, rot13, arithmetic, noise, duplicated, "
                        "reversed; default: the first four)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 200; 12 with --fast)")
    p.add_argument("--size", default=None, help="tiny GPT-2 size: 1m, 5m, 25m (default: 1m)")
    p.add_argument("--batch-size", type=int, default=None, help="mixed batch size (default: 16; 8 with --fast)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 3e-3)")
    p.add_argument("--fast", action="store_true", help="the notebook's FAST configuration (seconds)")
    p.add_argument("--cosines", default="1,0.5,0,-1", help="synthetic: conflict levels to sweep")
    p.add_argument("--tau", type=float, default=None,
                   help="Balanced-PiKE's tilt τ > 0: larger favours the worst domain (default: 1)")
    p.add_argument("--zeta2", type=float, default=None,
                   help="PiKE's and Balanced-PiKE's weight ζ₂ ≥ 0 on the variance penalty (default: 1; "
                        "benchmarks/README.md: Balanced-PiKE with τ 2, ζ₂ 0.1)")
    p.add_argument("--score-noise", default=None, choices=("bound", "measured"),
                   help="multidomain: the noise model of PiKE's noise-aware step (default: bound)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--csv", default=None, help="also write the summary table as CSV here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


__all__ = ["DOMAIN_SIZES", "PIKE_DEFAULTS", "MULTIDOMAIN_FAST", "MULTIDOMAIN_FULL", "MULTIDOMAIN_MIXERS", "SCENARIO_DOMAINS",
           "fixed_mixture_sweep", "mixture_grid", "statistics_noise", "SYNTHETIC_METHODS", "add_cli",
           "conflict_sweep", "format_summary", "pretrain_multidomain", "synthetic_conflict", "task_directions"]
