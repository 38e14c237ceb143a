"""Prompt heads and parameter-efficient adapters on top of :func:`zoedu.models.load_model`.

``load_model(name, head="prompt", labels=..., peft=...)`` lands here: the base language
model (or encoder) is loaded, an adapter is attached through ``peft`` when asked, and the
prompt head of :mod:`zoedu.prompts` wraps it. The MeZO paper's Table 18 compares exactly
these: MeZO on the full model, MeZO(LoRA) and MeZO(prefix), all with the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import models as M
from .prompts import (
    EmbeddingSimilarityClassifier,
    LabelWordClassifier,
    Prompt,
    PromptTokenizer,
    describe,
    label_word_ids,
)

PEFT_METHODS = ("lora", "prefix", "prompt")

#: LoRA's default targets: the attention's query and value projections (Hu et al., 2021),
#: by the names each architecture gives them.
LORA_TARGETS = (("query", "value"), ("q_proj", "v_proj"), ("c_attn",), ("q_lin", "v_lin"))

DEFAULT_TEMPLATE = {"masked": "{text} it was {mask} .", "causal": "{text} It was {mask}"}


def lm_kind(name: str) -> str:
    """``"encoder"`` (MiniLM), ``"masked"`` or ``"causal"``: how a prompt reads the model."""
    if name == "minilm":
        return "encoder"
    if name in M.MASKED_MODELS:
        return "masked"
    if name in M.TINY_MODELS:
        return "causal"
    return M.hub_lm_kind(name)


def _base_model(name: str, kind: str, *, dtype, device, size: str, seed: int):
    """The language model (or encoder) under a prompt head, and its tokenizer."""
    if kind == "encoder" or name in M.OFFLINE_MODELS:
        return M.load_model(name, dtype=dtype, device=device, size=size, seed=seed)
    return M._load_hub_model(name, num_labels=None, dtype=dtype, device=device, lm=kind)


def _prompt_parts(labels, template: str | None, kind: str) -> tuple[list[str], str | None]:
    if isinstance(labels, Prompt):
        words = labels.label_descriptions if kind == "encoder" else labels.label_words
        return list(words), template if template is not None else labels.template
    if labels is None:
        raise ValueError("head='prompt' needs labels=: a task's Prompt (e.g. "
                         "zoedu.tasks.task_prompt('sentiment')) or one label word/description per class")
    if isinstance(labels, str) or not isinstance(labels, Sequence) or len(labels) < 2:
        raise ValueError(f"labels={labels!r} must be a Prompt or a list of ≥ 2 label words "
                         "(language models) or descriptions (MiniLM), one per class")
    return [str(x) for x in labels], template


def load_adapted(name: str, *, num_labels, head, labels, template, peft, dtype, device, size, seed):
    """``load_model`` with ``head="prompt"`` and/or ``peft=`` (see its docstring)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if head != "prompt":
            model, tok = M.load_model(name, num_labels=num_labels, head=head, dtype=dtype,
                                      device=device, size=size, seed=seed)
            return apply_peft(model, peft, keep=_head_modules(model)), tok
        kind = lm_kind(name)
        words, template = _prompt_parts(labels, template, kind)
        if num_labels is not None and num_labels != len(words):
            raise ValueError(f"num_labels={num_labels} but labels has {len(words)} entries; give one per class")
        base, tok = _base_model(name, kind, dtype=dtype, device=device, size=size, seed=seed)
        if kind == "encoder":
            if template is not None and not isinstance(labels, Prompt):
                raise ValueError(f"template= is for language models; {name!r} is a sentence encoder "
                                 "scored by similarity to the label descriptions")
            label_emb = describe(base, tok, words)
            model = EmbeddingSimilarityClassifier(apply_peft(base, peft), label_emb)
            return model, tok
        causal = kind == "causal"
        template = template if template is not None else DEFAULT_TEMPLATE[kind]
        ptok = PromptTokenizer(tok, template, causal=causal)
        ids = label_word_ids(tok, words, causal=causal)
        model = LabelWordClassifier(apply_peft(base, peft), ids, causal=causal,
                                    mask_token_id=tok.mask_token_id)
        return model, ptok


def _head_modules(model: nn.Module) -> list[str]:
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
    return peft.get_peft_model(model, config)


__all__ = ["DEFAULT_TEMPLATE", "LORA_TARGETS", "PEFT_METHODS", "apply_peft", "lm_kind",
           "load_adapted", "peft_config"]
