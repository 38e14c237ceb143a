"""Tasks: ``load_task(name, tokenizer=None, seed=0, **options) -> Task``.

=============  ==============  ===========================================================
name           kind            what it is
=============  ==============  ===========================================================
sentiment      classification  generated reviews: negation, intensifiers, long-tailed lengths
sst2           classification  GLUE SST-2 through ``datasets`` (online only)
multidomain    lm              prose, code, ROT13, arithmetic (+ noise, duplicated, reversed) — one task each
tabular        tabular         scikit-learn breast cancer or digits, as tensors
=============  ==============  ===========================================================
"""

from __future__ import annotations

from importlib import import_module

from .base import SPLITS, Task, batch_loss, move_batch

TASKS = ("sentiment", "sst2", "multidomain", "tabular")


def load_task(name: str, *, tokenizer=None, seed: int = 0, **options) -> Task:
    """Build the task ``name`` (see the table above); ``options`` go to its builder.

    Text tasks tokenize with ``tokenizer``, by default the bundled MiniLM tokenizer
    (:func:`zoedu.models.default_tokenizer`), which every offline model shares. Every text
    task also takes ``train_max_length`` (see :class:`Task`): its training examples are cut
    shorter than ``max_length``, its validation examples are not.
    """
    if name not in TASKS:
        raise ValueError(f"task name={name!r} is unknown; allowed: {', '.join(TASKS)}")
    from ..checks import integer, seed as check_seed

    check_seed("seed", seed)
    if "max_length" in options:  # before a builder tokenizes with it
        integer("max_length", options["max_length"], low=2, what="tokens per example after truncation")
    for key in ("n_train", "n_validation"):  # a number, or (multidomain) one per domain
        value = options.get(key)
        for v in (value.values() if isinstance(value, dict) else [] if value is None else [value]):
            integer(key, v, low=1, what="examples (per domain when a dict)")
    train_max_length = options.pop("train_max_length", None)  # every text task's, set on the built Task
    module = import_module(f".{name}", __name__)
    if name != "tabular" and tokenizer is None:
        from ..models import default_tokenizer

        tokenizer = default_tokenizer()
    try:
        task = module.build(tokenizer, seed=seed, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            import inspect

            allowed = [p for p in inspect.signature(module.build).parameters if p not in ("tokenizer", "seed")]
            allowed.append("train_max_length")
            raise ValueError(f"task {name!r}: {err}; allowed options: {', '.join(allowed)}") from None
        raise
    task.train_max_length = train_max_length  # checked against the task's max_length
    return task


def task_prompt(name: str):
    """The :class:`zoedu.prompts.Prompt` of task ``name`` (before a tokenizer exists), or ``None``.

    ``load_model(model, head="prompt", labels=task_prompt("sentiment"))`` builds the
    model that the task's prompt turns into a zero-shot classifier.
    """
    if name not in TASKS:
        raise ValueError(f"task name={name!r} is unknown; allowed: {', '.join(TASKS)}")
    return getattr(import_module(f".{name}", __name__), "PROMPT", None)


__all__ = ["SPLITS", "TASKS", "Task", "batch_loss", "load_task", "move_batch", "task_prompt"]
