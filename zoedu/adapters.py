"""Parameter-efficient fine-tuning through ``peft``: LoRA, prefix tuning and prompt tuning.

``load_model(name, peft="lora" | "prefix" | "prompt" | a peft config)`` attaches the adapter
here; only the adapter (and a classification model's own head) stays trainable, and every
zoedu optimizer trains exactly the trainable parameters. The defaults are the MeZO paper's
(Table 15): LoRA r = 8, α = 16 on the attention's query and value projections; 5 virtual
tokens for prefix and prompt tuning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from torch import nn

PEFT_METHODS = ("lora", "prefix", "prompt")

#: LoRA's default targets: the attention's query and value projections (Hu et al., 2021),
#: by the names each architecture gives them.
LORA_TARGETS = (("query", "value"), ("q_proj", "v_proj"), ("c_attn",), ("q_lin", "v_lin"))


def head_modules(model: nn.Module) -> list[str]:
    """Names of a sequence-classification model's own head (trained beside an adapter)."""
    return [n for n in ("classifier", "score") if isinstance(getattr(model, n, None), nn.Module)]


def _lora_targets(model: nn.Module) -> list[str]:
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if len(list(m.children())) == 0}
    for targets in LORA_TARGETS:
        if all(t in names for t in targets):
            return list(targets)
    raise ValueError("peft='lora' found no attention projections it knows "
                     f"({', '.join('/'.join(t) for t in LORA_TARGETS)}); pass a peft.LoraConfig "
                     "with target_modules")


def peft_config(method: str, model: nn.Module, *, keep: Sequence[str] = ()):
    """The ``peft`` config for ``method`` (``"lora"``, ``"prefix"``, ``"prompt"``) on ``model``."""
    import peft

    is_causal = "CausalLM" in type(model).__name__
    task = peft.TaskType.CAUSAL_LM if is_causal else peft.TaskType.FEATURE_EXTRACTION
    keep = list(keep) or None
    if method == "lora":
        # Table 15 of the MeZO paper: r = 8, α = 16
        return peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=_lora_targets(model),
                               modules_to_save=keep)
    if method == "prefix":
        if not is_causal:
            raise ValueError("peft='prefix' (prefix tuning) is supported for causal LMs here; for "
                             "encoders and masked LMs use peft='prompt' (prompt tuning) or 'lora'")
        return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=5)
    if method == "prompt":
        return peft.PromptTuningConfig(task_type=task, num_virtual_tokens=5)
    raise ValueError(f"peft={method!r} is not a method; allowed: {', '.join(PEFT_METHODS)} or a peft config")


def apply_peft(model: nn.Module, method, *, keep: Sequence[str] = ()) -> nn.Module:
    """``model`` with a ``peft`` adapter (only the adapter, and ``keep`` modules, trainable)."""
    if method is None:
        return model
    import peft

    config = method if isinstance(method, peft.PeftConfig) else peft_config(method, model, keep=keep)
    with warnings.catch_warnings():
        # peft asks transformers' deprecated `is_gradient_checkpointing`: a FutureWarning about
        # peft's code, not the user's, that would otherwise print under every notebook cell
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(model, config)
