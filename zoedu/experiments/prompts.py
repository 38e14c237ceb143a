"""The MeZO paper's prompt ablation: the same zeroth-order budget with a prompt and without.

Malladi et al. (2023), Table 5 (RoBERTa-large, k = 16 examples per class, 10,000 forward
passes): MeZO reaches 89.6 on SST-2 with the prompt and 51.9 with a freshly initialised
linear head — "MeZO only works when using prompts". Their §4 explains it: the rate of
zeroth-order SGD depends on the effective rank of the loss's Hessian, which a prompt-based
objective keeps low, not on the parameter count. :func:`prompt_ablation` runs the same
comparison on a model zoedu loads offline and returns the data; the figure lives in
:mod:`zoedu.viz.prompts`.
"""

from __future__ import annotations

import pandas as pd

from .optim import run_methods, zero_shot

#: Table 5 of the MeZO paper (accuracy, %): MeZO with the prompt and with a linear head.
PAPER_TABLE5 = pd.DataFrame({
    "task": ["SST-2", "SNLI", "TREC"],
    "MeZO, prompt": [89.6, 65.1, 66.7],
    "MeZO, linear head": [51.9, 34.8, 19.5],
})

#: The variants :func:`prompt_ablation` runs by default: ``{label: options}``, where the
#: options hold ``head``, ``peft`` (optional), ``method`` and its ``lr`` (the rest go to fit).
DEFAULT_VARIANTS: dict[str, dict] = {
    "MeZO, prompt head": {"head": "prompt", "method": "mezo", "lr": 1e-5},
    "MeZO, linear head": {"head": "linear", "method": "mezo", "lr": 1e-5},
    "MeZO(LoRA), prompt head": {"head": "prompt", "peft": "lora", "method": "mezo", "lr": 1e-4},
    "MeZO(prompt tuning), prompt head": {"head": "prompt", "peft": "prompt", "method": "mezo", "lr": 1e-3},
}


def prompt_ablation(model: str = "minilm", task: str = "sentiment", *, variants: dict | None = None,
                    steps: int = 200, batch_size: int = 16, seed: int = 0, eval_every: int = 50,
                    eval_examples: int | None = 200, task_options: dict | None = None,
                    model_options: dict | None = None, device="auto",
                    quiet: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run each variant for ``steps`` steps from the same seed; return ``(curves, summary)``.

    ``curves``: one row per variant and evaluation (``variant``, ``step``, ``seconds``,
    ``eval_accuracy``, ``eval_loss``), starting with step 0 (the untrained model).
    ``summary``: per variant, the trainable parameter count, the untrained accuracy, the
    final accuracy and its change.
    """
    variants = dict(DEFAULT_VARIANTS if variants is None else variants)
    if not variants:
        raise ValueError("variants must hold at least one variant, e.g. zoedu.experiments.prompts.DEFAULT_VARIANTS")
    curves, rows = [], []
    for label, options in variants.items():
        spec = dict(options)
        head = spec.pop("head", "prompt")
        options_for_model = dict(model_options or {}, peft=spec.pop("peft", None))
        start = zero_shot(model, task, head=head, seed=seed, eval_examples=eval_examples, device=device,
                          model_options=options_for_model, task_options=task_options, track_memory=False)
        h = run_methods(model, task, {label: spec}, steps, batch_size=batch_size, seed=seed, device=device,
                        eval_every=eval_every, eval_examples=eval_examples, model_options=options_for_model,
                        task_options=task_options, head=head, quiet=quiet)[label]
        ev = h.dropna(subset=["eval_accuracy"])
        curves.append(pd.DataFrame({"variant": label, "step": [0, *ev["step"]],
                                    "seconds": [0.0, *ev["seconds"]],
                                    "eval_accuracy": [start["eval_accuracy"], *ev["eval_accuracy"]],
                                    "eval_loss": [start["eval_loss"], *ev["eval_loss"]]}))
        rows.append({"variant": label, "trainable": h.attrs["trainable_parameters"],
                     "untrained": start["eval_accuracy"], "final": float(ev["eval_accuracy"].iloc[-1]),
                     "change": float(ev["eval_accuracy"].iloc[-1]) - start["eval_accuracy"],
                     "seconds": float(h["seconds"].iloc[-1])})
    return pd.concat(curves, ignore_index=True), pd.DataFrame(rows)


__all__ = ["DEFAULT_VARIANTS", "PAPER_TABLE5", "prompt_ablation"]
