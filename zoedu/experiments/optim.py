"""Optimizer comparisons for the notebooks: MeZO, its variants, IP-SGD, Addax, Adam, SGD.

``run_methods(model, task, methods, steps)`` trains a fresh copy of the model with each
method through :func:`zoedu.train.fit` (same initial weights, same batch seed) and
returns their Histories; ``time_to_target(histories, accuracy)`` summarises them as the
Addax paper's comparison does (Li et al. 2025, Fig. 1 and Table 2): steps and wall seconds
to a target validation accuracy, final accuracy, peak memory.

A method is a name that ``fit`` accepts, or an entry of a dict ``{label: options}`` whose
options may hold ``method`` (the fit name, default: the label), ``lr``, ``steps`` and any
method option — so one comparison can hold ``"mezo"`` and ``"mezo-adam": {"method":
"mezo", "estimator": "adam"}`` side by side.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..defaults import DEFAULT_LR, default_lr, default_options


def _normalise(methods) -> dict[str, dict]:
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if isinstance(methods, dict):
        out = {str(k): dict(v or {}) for k, v in methods.items()}
    else:
        out = {str(m): {} for m in methods}
    if not out:
        raise ValueError("methods must name at least one method; e.g. " + ", ".join(DEFAULT_LR))
    return out


def run_methods(model_name: str = "tiny-opt", task="sentiment", methods=("mezo", "addax"), steps: int = 100, *,
                lr: float | dict | None = None, batch_size: int = 16, seed: int = 0, device="auto",
                eval_every: int | None = None, eval_examples: int | None = 200,
                model_options: dict | None = None, task_options: dict | None = None,
                quiet: bool = True) -> dict[str, pd.DataFrame]:
    """Train ``model_name`` on ``task`` with every method; return ``{label: History}``.

    Args:
        model_name: a :func:`zoedu.models.load_model` name (``"tiny-opt"``, ``"minilm"``, …).
        task: a task name (loaded with ``task_options``) or a :class:`zoedu.tasks.Task`.
        methods: names, a comma-separated string, or ``{label: options}`` (see the module
            docstring).
        steps: steps per method (an entry's ``steps`` overrides it).
        lr: one learning rate, ``{label: lr}``, or ``None`` for :data:`zoedu.defaults.DEFAULT_LR`.
            An entry's options are added to the method's :data:`zoedu.defaults.METHOD_DEFAULTS`.
        eval_every, eval_examples: passed to :func:`zoedu.train.fit`.
    """
    from ..models import load_model, load_tokenizer
    from ..tasks import Task, load_task
    from ..train import available_methods, fit

    specs = _normalise(methods)
    known = available_methods()
    for label, spec in specs.items():
        name = spec.get("method", label)
        if name not in known:
            raise ValueError(f"method {name!r} (for {label!r}) is unknown; allowed: {', '.join(known)}")
    if isinstance(task, Task):
        the_task = task
    else:
        the_task = load_task(task, tokenizer=load_tokenizer(model_name), seed=seed, **(task_options or {}))
    num_labels = the_task.num_labels if the_task.kind == "classification" else None
    histories = {}
    for label, spec in specs.items():
        spec = dict(spec)
        name = spec.pop("method", label)
        spec = {**default_options(name), **spec}
        method_lr = spec.pop("lr", None)
        if method_lr is None:
            method_lr = lr.get(label, default_lr(name)) if isinstance(lr, dict) else lr
        if method_lr is None:
            method_lr = default_lr(name)
        n_steps = int(spec.pop("steps", steps))
        model, _ = load_model(model_name, num_labels=num_labels, seed=seed, **(model_options or {}))
        h = fit(model, the_task, name, steps=n_steps, lr=float(method_lr), batch_size=batch_size, seed=seed,
                device=device, eval_every=eval_every, eval_examples=eval_examples, quiet=quiet,
                progress_desc=label, **spec)
        h.attrs["label"] = label
        histories[label] = h
    return histories


def time_to_target(histories: dict[str, pd.DataFrame], accuracy: float) -> pd.DataFrame:
    """Per method: the first evaluated step and wall seconds at which the validation accuracy
    reached ``accuracy`` (NaN if never), the final accuracy, total seconds and peak memory."""
    rows = []
    for label, h in histories.items():
        ev = h.dropna(subset=["eval_accuracy"])
        hit = ev[ev["eval_accuracy"] >= accuracy]
        rows.append({
            "method": label,
            "steps_to_target": float(hit["step"].iloc[0]) if len(hit) else np.nan,
            "seconds_to_target": float(hit["seconds"].iloc[0]) if len(hit) else np.nan,
            "final_accuracy": float(ev["eval_accuracy"].iloc[-1]) if len(ev) else np.nan,
            "best_accuracy": float(ev["eval_accuracy"].max()) if len(ev) else np.nan,
            "steps": int(h["step"].iloc[-1]),
            "seconds": float(h["seconds"].iloc[-1]),
            "peak_memory_mb": float(h["peak_memory"].max()) / 2**20 if h["peak_memory"].notna().any() else np.nan,
            "forward_passes": int(h["forward_passes"].iloc[-1]),
            "backward_passes": int(h["backward_passes"].iloc[-1]),
        })
    return pd.DataFrame(rows)
