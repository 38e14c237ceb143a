"""Default learning rates and method options: the one table that the notebooks, the CLI
(``zoedu compare``), :func:`zoedu.experiments.optim.run_methods` and the benchmarks read.

The values are the settings tuned for fine-tuning the bundled MiniLM on ``sentiment``
(``python benchmarks/bench_optim.py minilm``; the probes behind each choice are in
benchmarks/README.md, section 4) and a sensible start elsewhere. Zeroth-order methods need
far smaller steps than first-order SGD: their estimate's variance grows with the number of
perturbed weights (MeZO, Lemma 2).
"""

from __future__ import annotations

import copy

#: ``{fit method: {"lr": ..., option: value}}``: the learning rate and the method options
#: (keywords of :func:`zoedu.train.fit`) that differ from the factories' own defaults.
METHOD_DEFAULTS: dict[str, dict] = {
    "adam": {"lr": 5e-5},
    "sgd": {"lr": 1e-1},
    "ipsgd": {"lr": 1e-1, "sparse_embedding_grads": True},
    "mezo": {"lr": 1e-3, "eps": 1e-3},
    "addax": {"lr": 5e-2, "alpha": 1e-3, "eps": 1e-3, "k0": 4, "k1": 4, "sparse_embedding_grads": True},
    "addax-wa": {"lr": 5e-2, "alpha": 1e-3, "eps": 1e-3, "k0": 4, "k1": 4, "sparse_embedding_grads": True},
}

#: Batch sizes that replace the common one with the prompt head (``zoedu compare`` and
#: :func:`zoedu.experiments.optim.run_methods` when no batch size is given): the MeZO
#: paper's own protocol (Table 15: MeZO batch 64, fine-tuning 8). Why, measured on MiniLM's
#: prompt head (benchmarks/README.md, "MeZO with a prompt"): per-example gradients are
#: noisy (gradient noise scale tr Σ/‖∇L‖² ≈ 150), so at batch 16 the minibatch noise
#: inflates E[(∇L_B·z)²] 15-fold and MeZO's learning rate must stay at 1e-5; at batch 64
#: (4.4-fold) lr 1e-4 is stable and the validation loss falls 2.7× as far per CPU-second.
PROMPT_BATCH_SIZE: dict[str, int] = {"mezo": 64}

#: The batch size of every method not in :data:`PROMPT_BATCH_SIZE` (and of all with the
#: linear head).
BATCH_SIZE = 16

#: MeZO's learning rate with the prompt head by its batch size: ``(smallest batch, lr)``,
#: the first that fits wins. Measured (benchmarks/README.md, "MeZO with a prompt"): batch
#: 16 needs 1e-5, batch 32 learns at 5e-5 as fast per CPU-second as batch 64 at 1e-4. The smaller the batch, the noisier ∇L_B·z and the
#: smaller the rate MeZO stands.
PROMPT_MEZO_LR_BY_BATCH: tuple[tuple[int, float], ...] = ((64, 1e-4), (32, 5e-5), (1, 1e-5))


def _prompt_mezo_lr(batch_size: int) -> float:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive number of examples per step")
    return next(lr for smallest, lr in PROMPT_MEZO_LR_BY_BATCH if batch_size >= smallest)


#: Learning rates that replace :data:`METHOD_DEFAULTS`' with the prompt head
#: (``load_model(..., head="prompt")``): it starts at the zero-shot classifier, where the
#: linear head's rates (MeZO 1e-3, SGD 0.1) wreck it within a few steps. Probed on MiniLM,
#: ``sentiment``, 40 steps (benchmarks/README.md, "MeZO with a prompt"): Adam 1e-5 → 0.700,
#: IP-SGD 1e-2 → 0.708 from zero-shot 0.652; Addax with K¹ = 4 fell below zero-shot at every
#: rate tried (1e-3 → 0.600, 3e-3 → 0.605, 1e-2 → 0.608), and learns with K¹ = 12 at 5e-3
#: (:data:`PROMPT_OPTIONS`). MeZO's 1e-4 goes with its batch of 64
#: (:data:`PROMPT_BATCH_SIZE`); at batch 16 its rate must stay at 1e-5 (3e-5 and above lose
#: accuracy), and in the same 5 CPU-minutes batch 64 at 1e-4 lowers the validation loss 2.7×
#: as much as batch 16 at 1e-5 (3 seeds: +2.75 points over zero-shot against +0.17).
PROMPT_LR: dict[str, float] = {"adam": 1e-5, "sgd": 1e-2, "ipsgd": 1e-2,
                               "mezo": _prompt_mezo_lr(PROMPT_BATCH_SIZE["mezo"]), "addax": 5e-3, "addax-wa": 5e-3}

#: Method options that replace :data:`METHOD_DEFAULTS`' with the prompt head. Addax's
#: first-order part takes K¹ = 12 short examples a step (with the linear head's K¹ = 4, at
#: the prompt head's earlier lr 1e-3, its accuracy swung by up to 15 points between
#: evaluations and fell below zero-shot at first); with 12 at lr 5e-3 its validation loss falls
#: steadily on seeds 0–2, and its peak stays at MeZO's (the short examples' activations are
#: small). Probes and the item-7
#: measurement: benchmarks/README.md, "Addax with K¹ = 12".
PROMPT_OPTIONS: dict[str, dict] = {"addax": {"k1": 12}, "addax-wa": {"k1": 12}}

#: ``{fit method: learning rate}`` (from :data:`METHOD_DEFAULTS`).
DEFAULT_LR: dict[str, float] = {m: o["lr"] for m, o in METHOD_DEFAULTS.items()}

#: The GPUs notebook 02, ``zoedu memory`` and the memory figures compare against, by their
#: memory in GB (10⁹ bytes, as vendors count).
GPU_MEMORY_GB: dict[str, float] = {"24 GB (RTX 4090 / A10)": 24, "40 GB (A100-40G)": 40, "80 GB (A100/H100-80G)": 80}

#: The learning rate of a method the table does not list.
FALLBACK_LR = 1e-3


def default_lr(method: str, head: str | None = None, batch_size: int | None = None) -> float:
    """The default learning rate of ``method`` (:data:`FALLBACK_LR` if the table has none);
    with ``head="prompt"``, :data:`PROMPT_LR`'s where it has one — for MeZO at a given
    ``batch_size``, :data:`PROMPT_MEZO_LR_BY_BATCH`'s (its default batch gives PROMPT_LR's)."""
    if head == "prompt" and method == "mezo" and batch_size is not None:
        return _prompt_mezo_lr(batch_size)
    if head == "prompt" and method in PROMPT_LR:
        return PROMPT_LR[method]
    return DEFAULT_LR.get(method, FALLBACK_LR)


def default_batch_size(method: str, head: str | None = None) -> int:
    """The default batch size of ``method``: :data:`PROMPT_BATCH_SIZE`'s with
    ``head="prompt"`` where it has one, else :data:`BATCH_SIZE`."""
    if head == "prompt" and method in PROMPT_BATCH_SIZE:
        return PROMPT_BATCH_SIZE[method]
    return BATCH_SIZE


def default_options(method: str, head: str | None = None) -> dict:
    """The default options of ``method`` for :func:`zoedu.train.fit`, without ``lr`` (a copy);
    with ``head="prompt"``, :data:`PROMPT_OPTIONS`' replace those it names."""
    options = {k: v for k, v in METHOD_DEFAULTS.get(method, {}).items() if k != "lr"}
    if head == "prompt":
        options.update(PROMPT_OPTIONS.get(method, {}))
    return {k: copy.copy(v) for k, v in options.items()}


__all__ = ["BATCH_SIZE", "DEFAULT_LR", "FALLBACK_LR", "GPU_MEMORY_GB", "METHOD_DEFAULTS", "PROMPT_BATCH_SIZE",
           "PROMPT_LR", "PROMPT_OPTIONS", "PROMPT_MEZO_LR_BY_BATCH", "default_batch_size", "default_lr", "default_options"]
