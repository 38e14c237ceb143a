"""Memory experiments: estimated footprints of real models, measured footprints of tiny ones.

* :func:`estimate_table` — :func:`zoedu.memory.estimate` for many models × methods, with
  the GPUs (24 / 40 / 80 GB) each fits on and how many 80 GB GPUs it needs: the MeZO
  paper's argument (Malladi et al. 2023, Fig. 3 and Table 22) in one table.
* :func:`measure_table` — one real training step of each ``fit`` method on a small model,
  measured with :func:`zoedu.memory.measure`, next to the estimate for the same batch.
* ``zoedu memory MODEL --methods … --batch-size … --seq-len … --dtype …`` prints the
  estimate table in GB (``--measure TASK`` measures a tiny model instead).
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from ..defaults import GPU_MEMORY_GB
from ..memory import CATEGORIES, GB, METHODS, Footprint, estimate, measure, parameter_count

DEFAULT_GPUS = tuple(GPU_MEMORY_GB.values())
"""GPU memory sizes in GB (10⁹ bytes), from the one table :data:`zoedu.defaults.GPU_MEMORY_GB`."""

OPT_FAMILY = ("facebook/opt-125m", "facebook/opt-350m", "facebook/opt-1.3b", "facebook/opt-2.7b",
              "facebook/opt-6.7b", "facebook/opt-13b", "facebook/opt-30b", "facebook/opt-66b")
LLAMA_2 = ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-70b-hf")


def _methods(methods) -> list[str]:
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(methods)
    if not methods:
        raise ValueError(f"methods must name at least one method; allowed: {', '.join(METHODS)}")
    return methods


def _gpus(gpus) -> tuple[float, ...]:
    if isinstance(gpus, str):
        try:
            gpus = [float(g) for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise ValueError(f"gpus={gpus!r} must be comma-separated sizes in GB, e.g. 24,40,80") from None
    gpus = tuple(float(g) for g in gpus)
    if not gpus or any(not g > 0 for g in gpus):
        raise ValueError(f"gpus={gpus!r} must be positive sizes in GB, e.g. (24, 40, 80)")
    return gpus


def _gb_label(g: float) -> str:
    return f"{g:g}GB"


def fits_on(total_bytes: float, gpus: Sequence[float] = DEFAULT_GPUS) -> dict:
    """Which GPUs hold ``total_bytes``: ``{"fits_24GB": bool, …, "smallest_gpu_GB": 24.0 | nan,
    "gpus_needed": n}`` (``n`` GPUs of the largest size, if the memory could be split
    perfectly, as with fully sharded data parallelism)."""
    gpus = _gpus(gpus)
    out: dict = {f"fits_{_gb_label(g)}": bool(total_bytes <= g * GB) for g in gpus}
    fitting = [g for g in sorted(gpus) if total_bytes <= g * GB]
    out["smallest_gpu_GB"] = fitting[0] if fitting else math.nan
    out["gpus_needed"] = max(1, math.ceil(total_bytes / (max(gpus) * GB)))
    return out


def estimate_table(models: str | Iterable = OPT_FAMILY + LLAMA_2, methods=METHODS, *, batch_size: int = 1,
                   seq_len: int = 400, dtype: str = "float16", gpus: Sequence[float] = DEFAULT_GPUS,
                   **options) -> pd.DataFrame:
    """Estimated peak memory for every model × method (one row each).

    Columns: ``model``, ``method``, ``parameters`` (count), the five categories and
    ``total`` in bytes, ``total_GB``, and :func:`fits_on`'s columns. ``options`` go to
    :func:`zoedu.memory.estimate` (``num_labels``, ``size``, ``device``,
    ``mixed_precision``, Addax's ``k0``/``k1``/``length_threshold``). The defaults are the
    MeZO paper's setting for Table 22 (fp16, batch 1, ~400 tokens as in MultiRC).
    """
    if isinstance(models, str):
        models = [models]
    rows = []
    for model in models:
        params = parameter_count(model, num_labels=options.get("num_labels"), size=options.get("size", "5m"))
        name = model if isinstance(model, str) else type(model).__name__
        for method in _methods(methods):
            fp = estimate(model, method, batch_size=batch_size, seq_len=seq_len, dtype=dtype, **options)
            rows.append({"model": name, "method": method, "parameters": params, **fp.to_dict(),
                         "total_GB": fp.total / GB, **fits_on(fp.total, gpus)})
    return pd.DataFrame(rows)


class _RecordingContext:
    """Wraps a FitContext's ``sample`` to record the shape of every batch a step draws."""

    def __init__(self, ctx):
        self.ctx, self.shapes = ctx, []
        original = ctx.sample

        def sample(*args, **kwargs):
            batch = original(*args, **kwargs)
            ids = batch.get("input_ids")
            self.shapes.append(tuple(ids.shape) if ids is not None else None)
            return batch

        ctx.sample = sample


def measure_step(model: torch.nn.Module, task, method: str, *, batch_size: int = 8, lr: float = 1e-4,
                 seed: int = 0, first_step: bool = False, **method_options) -> tuple[Footprint, list]:
    """Measure a training step of ``fit``'s ``method`` on a copy of ``model`` (on CPU).

    The steady state by default: step 1 runs unmeasured, then step 2 is measured on the
    same batches as step 1 (the sampler is re-seeded), with Adam's moments alive from its
    start. ``first_step=True`` measures step 1 instead (no optimizer state yet).

    Returns the :class:`~zoedu.memory.Footprint` and the ``(batch, seq_len)`` shape of
    every batch the measured step drew (Addax draws a zeroth-order and a first-order batch).
    """
    from ..loop import FitContext
    from ..train import methods as fit_methods

    table = fit_methods()
    if method not in table:
        raise ValueError(f"method={method!r} is not a fit method; allowed: {', '.join(sorted(table))}")
    model = copy.deepcopy(model).to("cpu")
    model.train()
    torch.manual_seed(seed)
    ctx = FitContext(model=model, task=task, lr=float(lr), batch_size=int(batch_size), seed=seed,
                     device=torch.device("cpu"), rng=np.random.default_rng(seed))
    recorder = _RecordingContext(ctx)
    runner = table[method](ctx, **method_options)
    optimizer = getattr(runner, "optimizer", None)
    step = 1
    if not first_step:  # warm up: the state of step 1 exists when step 2 starts
        runner.step(1)
        ctx.rng = np.random.default_rng(seed)  # step 2 draws step 1's batches again
        recorder.shapes.clear()
        step = 2
    fp = measure(lambda: runner.step(step), model=model, optimizer=optimizer)
    if hasattr(optimizer, "remove_hooks"):  # IP-SGD and Addax hook the (discarded) copy's parameters
        optimizer.remove_hooks()
    return fp, recorder.shapes


def _estimate_for(model, method: str, shapes: list, method_options: dict,
                  first_step: bool = False) -> Footprint | None:
    if method not in METHODS or not shapes or any(s is None for s in shapes):
        return None
    if method == "addax":
        if len(shapes) == 1:  # alpha = 1 (zeroth-order part only) or 0 (first-order part only)
            part = "mezo" if method_options.get("alpha", 1e-3) >= 1 else "ipsgd"
            return estimate(model, part, batch_size=shapes[0][0], seq_len=shapes[0][1], device="cpu")
        (k0, t0), (k1, t1) = shapes[:2]
        return estimate(model, "addax", batch_size=k0, seq_len=max(t0, t1), k0=k0, k1=k1,
                        length_threshold=t1, device="cpu")
    b, s = shapes[0]
    return estimate(model, method, batch_size=b, seq_len=s, device="cpu", first_step=first_step)


def measure_table(model: torch.nn.Module, task, methods=None, *, batch_size: int = 8, lr: float = 1e-4,
                  seed: int = 0, method_options: dict | None = None, first_step: bool = False) -> pd.DataFrame:
    """Measured footprint of a training step per method (the steady state: step 2), next to its estimate.

    Args:
        model: a small model (e.g. ``load_model("tiny-opt", size="1m")[0]``); each method
            trains its own copy.
        task: the task whose batches are used (same seed → same first batch).
        methods: ``fit`` method names (default: every method in ``zoedu.train.methods()``
            that :func:`zoedu.memory.estimate` also knows, plus ``"inference"``).
        method_options: ``{method: {option: value}}`` passed to the method's factory.
        first_step: measure (and estimate) the first step instead, before Adam's moments
            exist (see :func:`measure_step`).

    Returns one row per method: ``method``, ``batch`` (the shapes drawn), the measured
    categories and ``total`` (bytes), ``measured`` (= total), ``estimated`` and
    ``ratio`` (estimated / measured; NaN where no estimate exists).
    """
    from ..train import methods as fit_methods

    if methods is None:
        methods = ["inference"] + [m for m in METHODS if m != "inference" and m in fit_methods()]
    method_options = dict(method_options or {})
    rows = []
    for method in _methods(methods):
        opts = dict(method_options.get(method, {}))
        if method == "inference":
            fp, shapes = _measure_inference(model, task, batch_size=batch_size, seed=seed)
        else:
            fp, shapes = measure_step(model, task, method, batch_size=batch_size, lr=lr, seed=seed,
                                      first_step=first_step, **opts)
        est = _estimate_for(model, method, shapes, opts, first_step=first_step)
        rows.append({"method": method, "batch": " + ".join(f"{b}×{s}" for b, s in shapes),
                     **fp.to_dict(), "measured": fp.total,
                     "estimated": est.total if est is not None else math.nan,
                     "ratio": est.total / fp.total if est is not None else math.nan})
    return pd.DataFrame(rows)


def _measure_inference(model, task, *, batch_size: int, seed: int):
    model = copy.deepcopy(model).to("cpu")
    batch = task.sample("train", batch_size, np.random.default_rng(seed))

    @torch.no_grad()
    def forward():
        task.loss(model, batch)

    return measure(forward, model=model), [tuple(batch["input_ids"].shape)]


# --------------------------------------------------------------------------- CLI
def format_gb_table(df: pd.DataFrame) -> str:
    """The estimate table in GB, one row per (model, method), for the terminal."""
    cols = list(CATEGORIES) + ["total"]
    out = df[["model", "method"]].copy()
    for c in cols:
        out[c] = (df[c] / GB).map(lambda v: f"{v:.3f}")
    fit_cols = [c for c in df.columns if c.startswith("fits_")]
    for c in fit_cols:
        out[c.removeprefix("fits_")] = df[c].map({True: "yes", False: "no"})
    if "gpus_needed" in df:
        out["GPUs"] = df["gpus_needed"]
    if out["model"].nunique() == 1:
        out = out.drop(columns="model")
    return out.to_string(index=False)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ 1")
    return value


def _run(args) -> int:
    options = {}
    if args.num_labels is not None:
        options["num_labels"] = args.num_labels
    for key in ("k0", "k1", "length_threshold"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.measure:
        from ..models import load_model
        from ..tasks import load_task

        model, tok = load_model(args.model, size=args.size, num_labels=args.num_labels)
        task = load_task(args.measure, tokenizer=tok, n_train=200, n_validation=20, max_length=args.seq_len)
        df = measure_table(model, task, _methods(args.methods), batch_size=args.batch_size, seed=args.seed)
        show = df[["method", "batch"]].copy()
        for c in list(CATEGORIES) + ["total", "estimated"]:
            show[c] = (df[c] / 2 ** 20).map(lambda v: f"{v:.2f}")
        show["ratio"] = df["ratio"].map(lambda v: f"{v:.2f}")
        print(f"{args.model} ({args.size}) on {args.measure}: one training step measured on CPU (MiB)")
        print(show.to_string(index=False))
        if args.csv:
            df.to_csv(args.csv, index=False)
        return 0
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    options.update(size=args.size, device=args.device, mixed_precision=args.mixed_precision)
    df = estimate_table(models, _methods(args.methods), batch_size=args.batch_size, seq_len=args.seq_len,
                        dtype=args.dtype, gpus=_gpus(args.gpus), **options)
    params = ", ".join(f"{m}: {p / 1e9:.3g} B params" if p >= 1e8 else f"{m}: {p / 1e6:.3g} M params"
                       for m, p in df.groupby("model", sort=False)["parameters"].first().items())
    print(f"Estimated peak memory (GB = 1e9 bytes), {args.dtype}, batch {args.batch_size}, "
          f"sequence {args.seq_len}{', mixed precision' if args.mixed_precision else ''} — {params}")
    print(format_gb_table(df))
    if args.csv:
        df.to_csv(args.csv, index=False)
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "memory", help="estimate (or measure) the memory of training a model with each method",
        description="Print the estimated peak memory of one training step per method, broken down into "
                    "parameters, gradients, optimizer state, activations and other, in GB, and which GPUs "
                    "it fits on. MODEL is a known name (facebook/opt-125m … opt-66b, gpt2 … gpt2-xl, "
                    "meta-llama/Llama-2-7b-hf …, tiny-opt, tiny-gpt2, minilm) or several, comma-separated. "
                    "With --measure TASK, a tiny model is trained for one step per method and measured.",
    )
    p.add_argument("model", help="model name(s), comma-separated, e.g. facebook/opt-13b")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated methods (default: {','.join(METHODS)})")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="examples per step (default: 1)")
    p.add_argument("--seq-len", type=_positive_int, default=400, help="tokens per example (default: 400)")
    p.add_argument("--dtype", default="float16", help="float32, bfloat16 or float16 (default: float16)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="autocast training: fp32 weights, gradients and Adam state, activations in --dtype")
    p.add_argument("--num-labels", type=int, default=None, help="a classification head with this many classes")
    p.add_argument("--size", default="5m", help="size of a tiny model: 1m, 5m, 25m (default: 5m)")
    p.add_argument("--device", default="cuda", help="cuda (foreach optimizers) or cpu (default: cuda)")
    p.add_argument("--k0", type=_positive_int, default=None, help="Addax: zeroth-order examples per step")
    p.add_argument("--k1", type=_positive_int, default=None, help="Addax: first-order examples per step")
    p.add_argument("--length-threshold", type=_positive_int, default=None,
                   help="Addax: longest first-order example in tokens (default: --seq-len)")
    p.add_argument("--gpus", default="24,40,80", help="GPU sizes in GB to check (default: 24,40,80)")
    p.add_argument("--measure", metavar="TASK", default=None,
                   help="measure one step per method of a tiny model on TASK (e.g. sentiment) on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", default=None, help="also write the table as CSV here")
    p.set_defaults(func=_run)


__all__ = ["DEFAULT_GPUS", "LLAMA_2", "OPT_FAMILY", "add_cli", "estimate_table", "fits_on", "format_gb_table",
           "measure_step", "measure_table"]
