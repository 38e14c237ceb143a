"""Pretraining a tiny GPT-2 on the ``multidomain`` corpus with data mixers (PiKE, notebook 04,
``zoedu mix``). Returns data, never figures.

* :func:`pretrain_multidomain` — one run per mixer on the same corpus and seed: per-domain
  validation loss, average, worst, weights over time, cosine matrices over training, and the
  statistics' overhead.
* :func:`fixed_mixture_sweep`, :func:`mixture_grid` — fixed mixtures over a grid (is uniform
  the best fixed mixture of a scenario?).
* :func:`statistics_noise` — the noise of PiKE's per-task statistics, estimator by estimator.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..mixing import MixedBatchSource, PiKE

MULTIDOMAIN_MIXERS = ("uniform", "proportional", "static", "round-robin", "random-task", "pike", "balanced-pike")
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
#: statistics steps, the statistics taken in Adam's preconditioned coordinates (the bound PiKE
#: maximises is for SGD; since 2026-12-03) and Balanced-PiKE's tilt from the free training-batch losses.
PIKE_DEFAULTS = {"pike": dict(shrink=True, smoothing=0.5, precondition="optimizer"),
                 "balanced-pike": dict(shrink=True, smoothing=0.5, tilt_losses="train", precondition="optimizer")}


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
            ``{"pike": {"zeta1": 2.0}}``; ``{"pike": {"shrink": False, "smoothing": 0.0, "precondition": "none"}}``
            is Algorithm 1 as published;
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
    uniform gives, with the default ζ₁ = ζ₂ = 1 and ``max_log_step`` = 2), ``se_bound`` and
    ``se_measured`` (the mean over repeats of the standard error PiKE's noise-aware step
    assigns to the score: the one-direction bound, and the one from the measured spread tr Σ²
    and μᵀΣμ, ``MixedBatchSource(score_noise="measured")`` — to set beside ``score_sd``), and
    ``backward_passes`` (statistics' passes per estimate).
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
        scores, weights, se_bound, se_measured, passes = [], [], [], [], 0
        for _ in range(repeats):
            sq, var, cov_sq, along = np.zeros(K), np.zeros(K), np.zeros(K), np.zeros(K)
            for _ in range(m):
                batches = [task.sample("train", n, rng, indices=p) for p in pools]
                st = task_gradient_stats(model, task.loss, batches)
                sq += st.unbiased_sq_norms / m
                var += st.variances / m
                cov_sq += st.cov_sq / m
                along += st.cov_along_mean / m
                passes += st.backward_passes
            pike = PiKE(K, batch_size=b)
            scores.append((sq - var / (2 * b)) / max(sq.mean(), 1e-30))
            se_bound.append(pike.score_se(sq, var, [m * n] * K))
            se_measured.append(pike.score_se(sq, var, [m * n] * K, cov_sq=cov_sq, cov_along_mean=along))
            weights.append(pike.update(sq, var))
        scores, weights = np.array(scores), np.array(weights)
        se_bound, se_measured = np.array(se_bound), np.array(se_measured)
        for k, dom in enumerate(task.domains):
            mean, sd = float(scores[:, k].mean()), float(scores[:, k].std(ddof=1))
            rows.append(dict(draws=m, examples=m * n, domain=dom, score_mean=mean, score_sd=sd,
                             relative_sd=sd / max(abs(mean), 1e-12), weight_mean=float(weights[:, k].mean()),
                             weight_sd=float(weights[:, k].std(ddof=1)), se_bound=float(se_bound[:, k].mean()),
                             se_measured=float(se_measured[:, k].mean()), backward_passes=passes / repeats))
    return pd.DataFrame(rows)


def format_summary(summary: pd.DataFrame) -> str:
    """The summary of :func:`pretrain_multidomain` as a plain-text table."""
    cols = [c for c in summary.columns if c.startswith("val/")] + ["val_average", "val_worst", "worst_domain",
                                                                  "train_seconds", "overhead"]
    table = summary.set_index("mixer")[cols].copy()
    table["overhead"] = (100 * table["overhead"]).map(lambda v: f"{v:.1f}%")
    return table.to_string(float_format=lambda v: f"{v:.3f}")
