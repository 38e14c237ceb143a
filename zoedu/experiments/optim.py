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
                head: str | None = None, quiet: bool = True) -> dict[str, pd.DataFrame]:
    """Train ``model_name`` on ``task`` with every method; return ``{label: History}``.

    Args:
        model_name: a :func:`zoedu.models.load_model` name (``"tiny-opt"``, ``"minilm"``, …).
        task: a task name (loaded with ``task_options``) or a :class:`zoedu.tasks.Task`.
        methods: names, a comma-separated string, or ``{label: options}`` (see the module
            docstring).
        steps: steps per method (an entry's ``steps`` overrides it).
        batch_size: examples per step (an entry's ``batch_size`` overrides it).
        lr: one learning rate, ``{label: lr}``, or ``None`` for
            :func:`zoedu.defaults.default_lr` (for ``head`` and the entry's batch size). An
            entry's options are added to the method's :func:`zoedu.defaults.default_options`
            (for ``head``: Addax's K¹ = 12 with the prompt head).
        eval_every, eval_examples: passed to :func:`zoedu.train.fit`.
        head: ``None``/``"linear"`` (a fresh linear classifier) or ``"prompt"`` (the task's
            prompt: the untrained model is the zero-shot classifier; see :func:`load_models`).
    """
    from ..train import available_methods, fit

    specs = _normalise(methods)
    known = available_methods()
    for label, spec in specs.items():
        name = spec.get("method", label)
        if name not in known:
            raise ValueError(f"method {name!r} (for {label!r}) is unknown; allowed: {', '.join(known)}")
    load, the_task = load_models(model_name, task, head=head, seed=seed, model_options=model_options,
                                 task_options=task_options)
    histories = {}
    for label, spec in specs.items():
        spec = dict(spec)
        name = spec.pop("method", label)
        spec = {**default_options(name, head), **spec}
        method_lr = spec.pop("lr", None)
        n_steps = int(spec.pop("steps", steps))
        n_batch = int(spec.pop("batch_size", batch_size))
        if method_lr is None:
            method_lr = lr.get(label) if isinstance(lr, dict) else lr
        if method_lr is None:
            method_lr = default_lr(name, head, n_batch)
        model = load()
        h = fit(model, the_task, name, steps=n_steps, lr=float(method_lr), batch_size=n_batch, seed=seed,
                device=device, eval_every=eval_every, eval_examples=eval_examples, quiet=quiet,
                progress_desc=label, **spec)
        h.attrs["label"] = label
        histories[label] = h
    return histories


def load_models(model_name: str, task, *, head: str | None = None, seed: int = 0,
                model_options: dict | None = None, task_options: dict | None = None):
    """``(load, task)``: a function returning a fresh copy of the model, and the task.

    With ``head="prompt"`` the model is the task's prompt classifier
    (``load_model(..., head="prompt", labels=task_prompt(task))``) and the task is tokenized
    through the model's tokenizer, so that it holds the template; otherwise a classification
    task gets a fresh linear head (``num_labels``) and a language-modelling task none.
    """
    from ..models import load_model, load_tokenizer
    from ..tasks import Task, load_task, task_prompt

    options = dict(model_options or {})
    if head == "prompt":
        name = task.name if isinstance(task, Task) else task
        prompt = task.prompt if isinstance(task, Task) else task_prompt(name)
        if prompt is None:
            raise ValueError(f"head='prompt': task {name!r} has no prompt; use head='linear'")
        options.update(head="prompt", labels=prompt)
        model, tokenizer = load_model(model_name, seed=seed, **options)
        unused = [model]  # loaded for its tokenizer; it serves the first run instead of a reload
    else:
        tokenizer, unused = load_tokenizer(model_name), []
    if isinstance(task, Task):
        the_task = task
    else:
        the_task = load_task(task, tokenizer=tokenizer, seed=seed, **(task_options or {}))
    if head != "prompt" and the_task.kind == "classification":
        options["num_labels"] = the_task.num_labels
        if head is not None:
            options["head"] = head

    def load():
        return unused.pop() if unused else load_model(model_name, seed=seed, **options)[0]

    return load, the_task


def zero_shot(model_name: str, task, *, head: str | None = "prompt", seed: int = 0, batch_size: int = 16,
              eval_examples: int | None = 200, device="auto", model_options: dict | None = None,
              task_options: dict | None = None, track_memory: bool = True) -> dict:
    """The untrained model's validation metrics (the zero-shot row of a comparison).

    Also its peak memory for a forward pass on a training batch of ``batch_size`` (what
    inference needs, the floor a zeroth-order method's memory should sit on).
    """
    import torch

    from ..memory import measure
    from ..models import resolve_device
    from ..tasks import move_batch

    load, the_task = load_models(model_name, task, head=head, seed=seed, model_options=model_options,
                                 task_options=task_options)
    dev = resolve_device(device)
    model = load().to(dev).eval()
    metrics = the_task.evaluate(model, "validation", max_examples=eval_examples, device=dev)
    peak = np.nan
    if track_memory:
        batch = move_batch(the_task.sample("train", batch_size, np.random.default_rng(seed)), dev)

        def forward():
            with torch.no_grad():
                the_task.loss(model, batch)

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            forward()
            peak = float(torch.cuda.max_memory_allocated(dev))
        else:
            peak = float(measure(forward, model=model).total)
    return {"method": "zero-shot", "steps": 0, "batch_size": batch_size, "train_loss": np.nan,
            "eval_loss": metrics["loss"], "eval_accuracy": metrics["accuracy"], "seconds": 0.0,
            "peak_memory_mb": peak / 2**20, "forward_passes": 0, "backward_passes": 0}


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
