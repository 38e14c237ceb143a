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

#: Learning rates that replace :data:`METHOD_DEFAULTS`' with the prompt head
#: (``load_model(..., head="prompt")``): it starts at the zero-shot classifier, where the
#: linear head's rates (MeZO 1e-3, SGD 0.1) wreck it within a few steps. Probed on MiniLM,
#: ``sentiment``, 40 steps (benchmarks/README.md, "MeZO with a prompt"): Adam 1e-5 → 0.700,
#: IP-SGD 1e-2 → 0.708 from zero-shot 0.652; MeZO ≤ 3e-5 stays near zero-shot; Addax fell
#: below zero-shot at every rate tried (1e-3 → 0.600, 3e-3 → 0.605, 1e-2 → 0.608).
PROMPT_LR: dict[str, float] = {"adam": 1e-5, "sgd": 1e-2, "ipsgd": 1e-2, "mezo": 1e-5, "addax": 1e-3,
                               "addax-wa": 1e-3}

#: ``{fit method: learning rate}`` (from :data:`METHOD_DEFAULTS`).
DEFAULT_LR: dict[str, float] = {m: o["lr"] for m, o in METHOD_DEFAULTS.items()}

#: The GPUs notebook 02, ``zoedu memory`` and the memory figures compare against, by their
#: memory in GB (10⁹ bytes, as vendors count).
GPU_MEMORY_GB: dict[str, float] = {"24 GB (RTX 4090 / A10)": 24, "40 GB (A100-40G)": 40, "80 GB (A100/H100-80G)": 80}

#: The learning rate of a method the table does not list.
FALLBACK_LR = 1e-3


def default_lr(method: str, head: str | None = None) -> float:
    """The default learning rate of ``method`` (:data:`FALLBACK_LR` if the table has none);
    with ``head="prompt"``, :data:`PROMPT_LR`'s where it has one."""
    if head == "prompt" and method in PROMPT_LR:
        return PROMPT_LR[method]
    return DEFAULT_LR.get(method, FALLBACK_LR)


def default_options(method: str) -> dict:
    """The default options of ``method`` for :func:`zoedu.train.fit`, without ``lr`` (a copy)."""
    return {k: copy.copy(v) for k, v in METHOD_DEFAULTS.get(method, {}).items() if k != "lr"}


__all__ = ["DEFAULT_LR", "FALLBACK_LR", "GPU_MEMORY_GB", "METHOD_DEFAULTS", "PROMPT_LR", "default_lr", "default_options"]
