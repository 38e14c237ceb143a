"""Data-mixing experiments (PiKE, notebook 04 and ``zoedu mix``). They return data, never figures.

* :func:`synthetic_conflict` — K noisy linear-regression tasks whose optima (and hence
  whose gradients at the start) have one pairwise cosine, the conflict knob, from aligned
  (+1) through orthogonal (0) to opposed (−1/(K−1); −1 for two tasks). Every mixer and
  conflict-averse method trains on the same stream of examples; seconds to run.
* :func:`conflict_sweep` — :func:`synthetic_conflict` over several cosines, one summary row
  per (cosine, method).
* :func:`pretrain_multidomain` — a tiny GPT-2 pretrained from scratch on the ``multidomain``
  corpus (prose, code, ROT13, arithmetic) with several mixers: per-domain validation loss,
  average, worst, weights over time, cosine matrices over training, and PiKE's overhead.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..mixing import BalancedPiKE, MixedBatchSource, PiKE, aggregate
from ..mixing.samplers import Uniform

SYNTHETIC_METHODS = ("uniform", "pike", "balanced-pike", "pcgrad", "mgda")
MULTIDOMAIN_MIXERS = ("uniform", "proportional", "static", "round-robin", "random-task", "pike", "balanced-pike")


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
                       tau: float = 1.0, shrink: bool = False, seed: int = 0) -> pd.DataFrame:
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
    step (:class:`~zoedu.mixing.PiKE`; False: Algorithm 1 as published). ``pcgrad`` and ``mgda`` take b/K examples per task and aggregate the K task gradients.

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
            mixer = PiKE(K, batch_size=batch_size, update_every=update_every, shrink=shrink)
        elif method == "balanced-pike":
            mixer = BalancedPiKE(K, tau=tau, batch_size=batch_size, update_every=update_every, shrink=shrink)
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


# --------------------------------------------------------------------------- multidomain
#: The benchmark configuration (a few minutes on 2 CPU cores) and the notebook's fast one (≤ 20 s).
MULTIDOMAIN_FULL = dict(size="1m", steps=200, batch_size=16, lr=3e-3, max_length=32, eval_every=50,
                        n_train={"prose": 600, "code": 600, "rot13": 300, "arithmetic": 150},
                        n_validation=32, stats_every=50,
                        domains=("prose", "code", "rot13", "arithmetic"))
MULTIDOMAIN_FAST = dict(size="1m", steps=12, batch_size=8, lr=3e-3, max_length=32, eval_every=12,
                        n_train={"prose": 60, "code": 60, "rot13": 30, "arithmetic": 15},
                        n_validation=6, stats_every=6,
                        domains=("prose", "code", "rot13", "arithmetic"))
#: training examples per domain when ``domains=`` names domains ``n_train`` does not list (FULL;
#: FAST uses a tenth): noise is abundant (boilerplate is), the duplicated domain is 8 passages.
DOMAIN_SIZES = {"prose": 600, "code": 600, "rot13": 300, "arithmetic": 150, "noise": 600,
                "duplicated": 300, "reversed": 300}
#: the benchmark's scenario with a non-uniform best fixed mixture (benchmarks/README.md)
SCENARIO_DOMAINS = ("prose", "code", "noise", "duplicated", "reversed")
#: PiKE's settings in these experiments unless ``mixer_options`` says otherwise (the same for
#: every mixture; benchmarks/README.md): the noise-aware step, statistics averaged across
#: statistics steps, and Balanced-PiKE's tilt from the free training-batch losses.
PIKE_DEFAULTS = {"pike": dict(shrink=True, smoothing=0.5),
                 "balanced-pike": dict(shrink=True, smoothing=0.5, tilt_losses="train")}


def pretrain_multidomain(mixers: Sequence[str] = ("uniform", "proportional", "pike", "balanced-pike"), *,
                         fast: bool = False, seed: int = 0, task=None, device: str = "auto",
                         quiet: bool = True, mixer_options: dict | None = None, **config) -> dict:
    """Pretrain a fresh tiny GPT-2 on ``multidomain`` with each mixer (same seed, same init).

    Args:
        mixers: names from :data:`MULTIDOMAIN_MIXERS`.
        fast: use :data:`MULTIDOMAIN_FAST` (the notebook's FAST mode) instead of
            :data:`MULTIDOMAIN_FULL`; keys in ``config`` override either
            (``size``, ``steps``, ``batch_size``, ``lr``, ``max_length``, ``eval_every``,
            ``n_train`` (alias ``sizes``), ``n_validation``, ``stats_every``, ``domains``).
        seed: model initialisation and batch order.
        task: a prebuilt multidomain task (skips building it; must match ``max_length``).
        mixer_options: per mixer name, options for it (over :data:`PIKE_DEFAULTS`), e.g.
            ``{"pike": {"zeta1": 2.0}}``; ``{"pike": {"shrink": False, "smoothing": 0.0}}`` is
            Algorithm 1 as published;
            ``"static"`` needs ``{"static": {"weights": [...]}}``.
        domains (in config): the domains (names from ``zoedu.tasks.multidomain.DOMAINS``);
            sizes of domains ``n_train`` does not list come from :data:`DOMAIN_SIZES`.
        stats_every (in config): gradient statistics and the cosine matrix every this many
            steps for every mixer (PiKE updates its weights at the same steps).

    Returns:
        A dict of
        ``summary`` (DataFrame, one row per mixer: final ``val/<domain>`` losses,
        ``val_average``, ``val_worst``, ``worst_domain``, ``train_seconds``,
        ``mixer_seconds``, ``overhead`` = mixer_seconds / (train_seconds − mixer_seconds), forward/backward
        passes of training and of the statistics),
        ``curves`` (long DataFrame: mixer, step, domain, val_loss at eval steps),
        ``weights`` (long DataFrame: mixer, step, domain, weight every step),
        ``cosine`` (long DataFrame: mixer, step, task_i, task_j, cosine at statistics steps),
        ``histories`` (mixer → the full ``fit`` History) and ``config``.
    """
    from ..models import load_model
    from ..tasks import load_task
    from ..train import fit

    cfg = _config(fast, config)
    if isinstance(mixers, str):
        mixers = [m.strip() for m in mixers.split(",") if m.strip()]
    for m in mixers:
        if m not in MULTIDOMAIN_MIXERS:
            raise ValueError(f"mixer {m!r} is unknown; allowed: {', '.join(MULTIDOMAIN_MIXERS)}")
    if not mixers:
        raise ValueError("mixers must name at least one mixer")
    mixer_options = mixer_options or {}
    if task is None:
        task = _task(cfg, seed)
    domains = list(task.domains)
    summary, curves, weights, cosines, histories = [], [], [], [], {}
    initial, _ = load_model("tiny-gpt2", size=cfg["size"], seed=seed)
    for name in mixers:
        model = copy.deepcopy(initial)                      # the same initialisation for every mixer
        opts = {**PIKE_DEFAULTS.get(name, {}), **mixer_options.get(name, {})}
        if name in ("pike", "balanced-pike"):
            opts.setdefault("update_every", cfg["stats_every"])
        source = MixedBatchSource(name, stats_every=cfg["stats_every"], **opts)
        hist = fit(model, task, "adam", steps=cfg["steps"], lr=cfg["lr"], batch_size=cfg["batch_size"],
                   seed=seed, device=device, eval_every=cfg["eval_every"], mixer=source,
                   track_memory=False, quiet=quiet, progress_desc=f"mix {name}")
        histories[name] = hist
        last = hist.iloc[-1]
        val = {d: float(last[f"eval_loss/{d}"]) for d in domains}
        train_s = float(last["seconds"])
        mix_s = float(hist["mixer_seconds"].sum())
        summary.append({"mixer": name, **{f"val/{d}": v for d, v in val.items()},
                        "val_average": float(np.mean(list(val.values()))),
                        "val_worst": max(val.values()), "worst_domain": max(val, key=val.get),
                        "train_seconds": train_s, "mixer_seconds": mix_s, "overhead": mix_s / max(train_s - mix_s, 1e-12),
                        "forward_passes": int(last["forward_passes"]),
                        "backward_passes": int(last["backward_passes"]),
                        "mixer_forward_passes": int(hist["mixer_forward_passes"].sum()),
                        "mixer_backward_passes": int(hist["mixer_backward_passes"].sum())})
        evals = hist.dropna(subset=["eval_loss"])
        for _, r in evals.iterrows():
            for d in domains:
                curves.append({"mixer": name, "step": int(r["step"]), "domain": d,
                               "val_loss": float(r[f"eval_loss/{d}"])})
        for d in domains:
            weights.append(pd.DataFrame({"mixer": name, "step": hist["step"], "domain": d,
                                         "weight": hist[f"weight/{d}"]}))
        if "cosine" in hist:
            for step, mat in zip(hist["step"], hist["cosine"]):
                if isinstance(mat, np.ndarray):
                    for i, di in enumerate(domains):
                        for j, dj in enumerate(domains):
                            cosines.append({"mixer": name, "step": int(step), "task_i": di, "task_j": dj,
                                            "cosine": float(mat[i, j])})
    return {"summary": pd.DataFrame(summary), "curves": pd.DataFrame(curves),
            "weights": pd.concat(weights, ignore_index=True),
            "cosine": pd.DataFrame(cosines, columns=["mixer", "step", "task_i", "task_j", "cosine"]),
            "histories": histories, "config": cfg}


def _config(fast: bool, config: dict) -> dict:
    cfg = dict(MULTIDOMAIN_FAST if fast else MULTIDOMAIN_FULL)
    if "sizes" in config:
        if "n_train" in config:
            raise ValueError("give the training sizes once: sizes= or n_train=, not both")
        config = dict(config)
        config["n_train"] = config.pop("sizes")
    unknown = set(config) - set(cfg)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; allowed: {', '.join(sorted(cfg))}, sizes")
    cfg.update(config)
    domains = cfg["domains"]
    if isinstance(domains, str):
        domains = [d.strip() for d in domains.split(",") if d.strip()]
    cfg["domains"] = tuple(domains)
    sizes = cfg["n_train"]
    if isinstance(sizes, dict):
        sizes = {d: sizes.get(d, DOMAIN_SIZES.get(d, 1) // (10 if fast else 1)) for d in cfg["domains"]}
    elif isinstance(sizes, (list, tuple)):
        if len(sizes) != len(cfg["domains"]):
            raise ValueError(f"sizes={list(sizes)!r} must have one count per domain {list(cfg['domains'])}")
        sizes = dict(zip(cfg["domains"], sizes))
    cfg["n_train"] = sizes
    return cfg


def _task(cfg: dict, seed: int):
    from ..models import default_tokenizer
    from ..tasks import load_task

    return load_task("multidomain", tokenizer=default_tokenizer(), seed=seed, domains=cfg["domains"],
                     n_train=cfg["n_train"], n_validation=cfg["n_validation"], max_length=cfg["max_length"])


def fixed_mixture_sweep(mixtures, *, fast: bool = False, seed: int = 0, device: str = "auto",
                        quiet: bool = True, **config) -> pd.DataFrame:
    """Train with each fixed mixture (no statistics): where does the best static mixture lie?

    ``mixtures``: a sequence of weight vectors (one weight per domain, in ``domains`` order),
    or ``"grid"`` for uniform, proportional-free corners and halves (:func:`mixture_grid`).
    Same configuration, seed and initialisation as :func:`pretrain_multidomain`.

    Returns:
        One row per mixture: ``weights`` (as text), ``val/<domain>``, ``val_average``, ``val_worst``.
    """
    cfg = _config(fast, config)
    task = _task(cfg, seed)
    if isinstance(mixtures, str):
        if mixtures != "grid":
            raise ValueError(f"mixtures={mixtures!r} must be a list of weight vectors or 'grid'")
        mixtures = mixture_grid(len(task.domains))
    rows = []
    for w in mixtures:
        out = pretrain_multidomain(("static",), fast=fast, seed=seed, task=task, device=device, quiet=quiet,
                                   mixer_options={"static": {"weights": list(w)}}, **config)
        s = out["summary"].iloc[0]
        rows.append({"weights": "/".join(f"{x:g}" for x in w),
                     **{c: float(s[c]) for c in out["summary"].columns if c.startswith("val/")},
                     "val_average": float(s["val_average"]), "val_worst": float(s["val_worst"])})
    return pd.DataFrame(rows)


def mixture_grid(n_tasks: int) -> list[list[float]]:
    """Uniform, and for each domain the mixtures that halve it and that drop it to 0.1/K."""
    K = n_tasks
    out = [[1.0 / K] * K]
    for k in range(K):
        for share in (0.5 / K, 0.1 / K):
            w = [(1 - share) / (K - 1)] * K
            w[k] = share
            out.append([round(x, 4) for x in w])
    return out


def statistics_noise(*, domains=SCENARIO_DOMAINS, warm_steps: int = 100, repeats: int = 8,
                     draws=(1, 2, 4), seed: int = 0, device: str = "cpu", fast: bool = False,
                     **config) -> pd.DataFrame:
    """How noisy is PiKE's score from each estimator? Repeated draws at one frozen model.

    A tiny GPT-2 is trained ``warm_steps`` steps with uniform mixing (the configuration of
    :func:`pretrain_multidomain`); then, with the parameters frozen, ``repeats`` times per
    estimator, the statistics are drawn as ``MixedBatchSource`` draws them (``n`` = max(4, b/K)
    fresh examples per task, grouped estimator) and PiKE's normalised score
    s_k = (ĝ_k − σ̂_k²/2b)/mean_j ĝ_j is computed from the average of ``draws`` such draws —
    1 is the published estimator; ``m`` draws is what an exponential average across steps
    reaches when the parameters move little (``smoothing`` = (m − 1)/(m + 1) has
    ``n_eff`` = m·n) at m times the statistics' cost.

    Returns one row per (draws, domain): ``score_mean``, ``score_sd``, ``relative_sd``
    (s.d./|mean|), ``weight_mean`` and ``weight_sd`` (the weights one PiKE update from
    uniform gives, with the default ζ₁ = ζ₂ = 1 and ``max_log_step`` = 2), and ``backward_passes``
    (statistics' passes per estimate).
    """
    from ..mixing import task_gradient_stats
    from ..models import load_model
    from ..train import fit

    cfg = _config(fast, dict(config, domains=domains))
    task = _task(cfg, seed)
    model, _ = load_model("tiny-gpt2", size=cfg["size"], seed=seed)
    if warm_steps:
        fit(model, task, "adam", steps=warm_steps, lr=cfg["lr"], batch_size=cfg["batch_size"], seed=seed,
            device=device, eval_every=0, mixer="uniform", track_memory=False, quiet=True)
    model.eval()
    K, b = task.n_domains, cfg["batch_size"]
    n = max(4, b // K)
    pools = [task.domain_indices("train", k) for k in range(K)]
    rng = np.random.default_rng([seed, 99])
    rows = []
    for m in draws:
        scores, weights, passes = [], [], 0
        for _ in range(repeats):
            sq = np.zeros(K)
            var = np.zeros(K)
            for _ in range(m):
                batches = [task.sample("train", n, rng, indices=p) for p in pools]
                st = task_gradient_stats(model, task.loss, batches)
                sq += st.unbiased_sq_norms / m
                var += st.variances / m
                passes += st.backward_passes
            pike = PiKE(K, batch_size=b)
            scores.append((sq - var / (2 * b)) / max(sq.mean(), 1e-30))
            weights.append(pike.update(sq, var))
        scores, weights = np.array(scores), np.array(weights)
        for k, dom in enumerate(task.domains):
            mean, sd = float(scores[:, k].mean()), float(scores[:, k].std(ddof=1))
            rows.append(dict(draws=m, examples=m * n, domain=dom, score_mean=mean, score_sd=sd,
                             relative_sd=sd / max(abs(mean), 1e-12), weight_mean=float(weights[:, k].mean()),
                             weight_sd=float(weights[:, k].std(ddof=1)), backward_passes=passes / repeats))
    return pd.DataFrame(rows)


def format_summary(summary: pd.DataFrame) -> str:
    """The summary of :func:`pretrain_multidomain` as a plain-text table."""
    cols = [c for c in summary.columns if c.startswith("val/")] + ["val_average", "val_worst", "worst_domain",
                                                                  "train_seconds", "overhead"]
    table = summary.set_index("mixer")[cols].copy()
    table["overhead"] = (100 * table["overhead"]).map(lambda v: f"{v:.1f}%")
    return table.to_string(float_format=lambda v: f"{v:.3f}")


# --------------------------------------------------------------------------- CLI
def _run(args) -> int:
    mixers = [m.strip() for m in args.mixers.split(",") if m.strip()]
    if args.task == "synthetic":
        methods = [m for m in mixers if m in SYNTHETIC_METHODS]
        bad = [m for m in mixers if m not in SYNTHETIC_METHODS]
        if bad:
            raise ValueError(f"--mixers {bad} unknown for the synthetic task; allowed: {', '.join(SYNTHETIC_METHODS)}")
        cosines = [float(c) for c in args.cosines.split(",")]
        table = conflict_sweep(cosines, methods=methods, steps=args.steps or 100, seed=args.seed)
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
    result = pretrain_multidomain(mixers, fast=args.fast, seed=args.seed, device=args.device,
                                  quiet=args.quiet, **config)
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
    p.add_argument("--task", default="multidomain", help="multidomain or synthetic (default: multidomain)")
    p.add_argument("--mixers", default="uniform,proportional,pike,balanced-pike",
                   help=f"comma-separated; multidomain: {', '.join(MULTIDOMAIN_MIXERS)}; "
                        f"synthetic: {', '.join(SYNTHETIC_METHODS)}")
    p.add_argument("--domains", default=None,
                   help="multidomain: comma-separated domains (prose, code, rot13, arithmetic, noise, duplicated, "
                        "reversed; default: the first four)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 200; 12 with --fast)")
    p.add_argument("--size", default=None, help="tiny GPT-2 size: 1m, 5m, 25m (default: 1m)")
    p.add_argument("--batch-size", type=int, default=None, help="mixed batch size (default: 16; 8 with --fast)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 3e-3)")
    p.add_argument("--fast", action="store_true", help="the notebook's FAST configuration (seconds)")
    p.add_argument("--cosines", default="1,0.5,0,-1", help="synthetic: conflict levels to sweep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--csv", default=None, help="also write the summary table as CSV here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


__all__ = ["DOMAIN_SIZES", "PIKE_DEFAULTS", "MULTIDOMAIN_FAST", "MULTIDOMAIN_FULL", "MULTIDOMAIN_MIXERS", "SCENARIO_DOMAINS",
           "fixed_mixture_sweep", "mixture_grid", "statistics_noise", "SYNTHETIC_METHODS", "add_cli",
           "conflict_sweep", "format_summary", "pretrain_multidomain", "synthetic_conflict", "task_directions"]
