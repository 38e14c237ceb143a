"""Architecture numbers for :func:`zoedu.memory.estimate`: parameter counts (exact, from the
meta device) and the activation bytes a forward pass saves, per model family."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: Architecture numbers of the models :func:`estimate` knows offline:
#: (family, hidden, layers, heads, kv_heads, ffn, vocab, max_positions).
KNOWN_MODELS: dict[str, tuple] = {
    "facebook/opt-125m": ("opt", 768, 12, 12, 12, 3072, 50272, 2048),
    "facebook/opt-350m": ("opt", 1024, 24, 16, 16, 4096, 50272, 2048),
    "facebook/opt-1.3b": ("opt", 2048, 24, 32, 32, 8192, 50272, 2048),
    "facebook/opt-2.7b": ("opt", 2560, 32, 32, 32, 10240, 50272, 2048),
    "facebook/opt-6.7b": ("opt", 4096, 32, 32, 32, 16384, 50272, 2048),
    "facebook/opt-13b": ("opt", 5120, 40, 40, 40, 20480, 50272, 2048),
    "facebook/opt-30b": ("opt", 7168, 48, 56, 56, 28672, 50272, 2048),
    "facebook/opt-66b": ("opt", 9216, 64, 72, 72, 36864, 50272, 2048),
    "gpt2": ("gpt2", 768, 12, 12, 12, 3072, 50257, 1024),
    "gpt2-medium": ("gpt2", 1024, 24, 16, 16, 4096, 50257, 1024),
    "gpt2-large": ("gpt2", 1280, 36, 20, 20, 5120, 50257, 1024),
    "gpt2-xl": ("gpt2", 1600, 48, 25, 25, 6400, 50257, 1024),
    "meta-llama/Llama-2-7b-hf": ("llama", 4096, 32, 32, 32, 11008, 32000, 4096),
    "meta-llama/Llama-2-13b-hf": ("llama", 5120, 40, 40, 40, 13824, 32000, 4096),
    "meta-llama/Llama-2-70b-hf": ("llama", 8192, 80, 64, 8, 28672, 32000, 4096),
}
_ALIASES = {name.split("/")[-1].lower(): name for name in KNOWN_MODELS}
_ALIASES.update({"llama-2-7b": "meta-llama/Llama-2-7b-hf", "llama-2-13b": "meta-llama/Llama-2-13b-hf",
                 "llama-2-70b": "meta-llama/Llama-2-70b-hf"})


@dataclass(frozen=True)
class _Coefficients:
    """Activation elements per token, in units of the model's dtype (see :func:`estimate`).

    ``train_*``: tensors autograd saves for backward, per layer; ``infer_*``: the working
    set of one layer under ``torch.no_grad``; ``*_attn``: times ``heads × seq_len`` (the
    ``seq_len²`` attention matrix, when the attention kernel materialises it); ``cache``:
    whether the model keeps a key/value cache (2 × kv_hidden per layer) while it runs.
    """

    train_h: float
    train_kv: float
    train_f: float
    train_attn: float
    infer_h: float
    infer_f: float
    infer_attn: float
    cache: bool
    dropout_sites: int  # dropout masks (1 byte per hidden element each) per layer in training


#: Counted from the tensors that autograd saves (``torch.autograd.graph.saved_tensors_hooks``)
#: and from the live set at the no-grad peak (:func:`measure`), on small instances of each
#: architecture with 2 and 4 layers and two ffn widths (so the per-layer, per-h and per-ffn
#: parts separate), for transformers' implementations with PyTorch SDPA attention
#: (flash/efficient kernels: no seq_len² matrix; BERT's training path with dropout has one). OPT decoder layer: residual input, LN out,
#: q, k, v, attention out, LN-2 in and out (8 h) + ReLU out (f). GPT-2 block: 14 h + 4 f
#: (its Conv1D c_attn output, head splits, and the tanh-GELU's four f-sized tensors).
#: Llama: 2 RMSNorms, q, rotary q/k and their halves (7 h + 4 kv) + gate, up, SiLU and
#: product (4 f). BERT (post-LN, dropout 0.1, eager softmax path): 10 h + 2 f + 3 heads·seq.
_FAMILIES = {
    "opt": _Coefficients(8, 0, 1, 0, 4, 2, 0, True, 2),
    "gpt2": _Coefficients(14, 0, 4, 0, 5, 4, 0, True, 2),
    "llama": _Coefficients(7, 4, 4, 0, 4, 3, 0, True, 0),
    "bert": _Coefficients(10, 0, 2, 3, 3, 2, 0, False, 0),
}
_LLAMA_LIKE = ("llama", "mistral", "qwen2", "gemma")


@dataclass(frozen=True)
class _Arch:
    name: str
    family: str
    params: int
    largest: int  # elements of the largest parameter tensor
    hidden: int
    layers: int
    heads: int
    kv_hidden: int
    ffn: int
    vocab: int
    max_positions: int
    head: str  # "lm", "classification" or "none"
    dropout: bool
    embed_dim: int = 0      # width of the input embedding (OPT's word_embed_proj_dim)
    tied: bool = True       # the input embedding is also the LM head (reads every row)


def known_models() -> list[str]:
    """Names :func:`estimate` accepts offline (besides configs and modules)."""
    return list(KNOWN_MODELS) + ["tiny-opt", "tiny-gpt2", "minilm"]


def parameter_count(model, *, num_labels: int | None = None, size: str = "5m") -> int:
    """Exact parameter count of a known name, config or module (names and configs are built
    on the meta device: no weights are allocated), tied weights counted once."""
    return _arch(model, num_labels=num_labels, size=size).params


def _config_of(name: str, *, num_labels, size):
    from ..models import TINY_MODELS, bundled_model_path, tiny_config

    if name in TINY_MODELS:
        return tiny_config(name, size, num_labels=num_labels)
    if name == "minilm":
        from transformers import BertConfig

        cfg = BertConfig.from_pretrained(bundled_model_path())
        if num_labels:
            cfg.num_labels = num_labels
        return cfg
    full = KNOWN_MODELS.get(name) and name or _ALIASES.get(name.lower())
    if full is None:
        raise ValueError(f"model={name!r} is not a known model; known: {', '.join(known_models())} "
                         "(or pass a transformers config or an nn.Module)")
    family, h, layers, heads, kv, f, vocab, pos = KNOWN_MODELS[full]
    extra = {"num_labels": num_labels} if num_labels else {}
    if family == "opt":
        from transformers import OPTConfig

        proj = 512 if full.endswith("350m") else h
        return OPTConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=f,
                         vocab_size=vocab, max_position_embeddings=pos, word_embed_proj_dim=proj,
                         do_layer_norm_before=not full.endswith("350m"), dropout=0.1, **extra)
    if family == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(n_embd=h, n_layer=layers, n_head=heads, vocab_size=vocab, n_positions=pos, **extra)
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, intermediate_size=f, vocab_size=vocab,
                       max_position_embeddings=pos, rms_norm_eps=1e-5, tie_word_embeddings=False, **extra)


def _count(module: nn.Module) -> tuple[int, int]:
    seen, total, largest = set(), 0, 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
            largest = max(largest, p.numel())
    return total, largest


def _arch_from_config(cfg, name: str, head: str, counts: tuple[int, int] | None = None) -> _Arch:
    kind = getattr(cfg, "model_type", None)
    family = "llama" if kind in _LLAMA_LIKE else kind
    if family not in _FAMILIES:
        raise ValueError(f"model type {kind!r} is not supported by estimate; supported: opt, gpt2, bert, "
                         f"{', '.join(_LLAMA_LIKE)}")
    if counts is None:
        counts = _meta_counts(cfg, head)
    h = cfg.hidden_size
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    ffn = (getattr(cfg, "ffn_dim", None) or getattr(cfg, "intermediate_size", None)
           or getattr(cfg, "n_inner", None) or 4 * h)
    drop = max(float(getattr(cfg, a, 0.0) or 0.0) for a in ("dropout", "resid_pdrop", "hidden_dropout_prob"))
    return _Arch(name=name, family=family, params=counts[0], largest=counts[1], hidden=h,
                 layers=cfg.num_hidden_layers, heads=heads, kv_hidden=h // heads * kv, ffn=ffn,
                 vocab=cfg.vocab_size, max_positions=getattr(cfg, "max_position_embeddings", 0) or
                 getattr(cfg, "n_positions", 0), head=head, dropout=drop > 0,
                 embed_dim=getattr(cfg, "word_embed_proj_dim", None) or h,
                 tied=head == "lm" and bool(getattr(cfg, "tie_word_embeddings", True)))


def _meta_counts(cfg, head: str) -> tuple[int, int]:
    """Exact parameter count (and largest tensor) of the model built on the meta device: no weights."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = {"lm": AutoModelForCausalLM, "classification": AutoModelForSequenceClassification}.get(head, AutoModel)
    with torch.device("meta"):
        model = cls.from_config(cfg)
    return _count(model)


_ARCH_CACHE: dict[tuple, _Arch] = {}


def _arch(model, *, num_labels, size) -> _Arch:
    if num_labels is not None and (not isinstance(num_labels, int) or num_labels < 2):
        raise ValueError(f"num_labels={num_labels!r} must be an integer ≥ 2 (or None for a language model)")
    if isinstance(model, str):
        key = (model, num_labels, size)
        if key not in _ARCH_CACHE:
            cfg = _config_of(model, num_labels=num_labels, size=size)
            head = "classification" if num_labels else ("none" if cfg.model_type == "bert" else "lm")
            _ARCH_CACHE[key] = _arch_from_config(cfg, model, head)
        return _ARCH_CACHE[key]
    if isinstance(model, nn.Module):
        cfg = getattr(model, "config", None)
        if cfg is None or not hasattr(cfg, "model_type"):
            raise ValueError("model must be a transformers model (with .config), a transformers config or a "
                             f"known name ({', '.join(known_models())}); got a plain {type(model).__name__}")
        cls = type(model).__name__
        head = "lm" if cls.endswith(("ForCausalLM", "LMHeadModel")) else (
            "classification" if cls.endswith("ForSequenceClassification") else "none")
        return _arch_from_config(cfg, cls, head, counts=_count(model))
    if hasattr(model, "model_type") and hasattr(model, "hidden_size"):
        head = "classification" if num_labels else ("none" if model.model_type == "bert" else "lm")
        if num_labels:
            model = type(model).from_dict({**model.to_dict(), "num_labels": num_labels})
        return _arch_from_config(model, type(model).__name__, head)
    raise ValueError(f"model must be a known name ({', '.join(known_models())}), a transformers config or "
                     f"an nn.Module; got {type(model).__name__}")


def _activation_bytes(a: _Arch, batch: int, seq: int, e: int, *, training: bool) -> int:
    """Activation bytes at the peak of a forward pass and its loss (see :func:`estimate`)."""
    c = _FAMILIES[a.family]
    n = batch * seq
    # the LM loss: the logits and the fp32 log-softmax of the cross-entropy, and in training the
    # backward's fp32 gradient of the logits; in inference the fp32 copy of narrower (bf16/fp16)
    # logits instead (Task.example_losses shifts the labels, so the logits are not copied in fp32)
    lm_bytes = e + 8 if training or e < 4 else e + 4
    head = n * a.vocab * lm_bytes if a.head == "lm" else n * a.hidden * e
    if training:
        layer = (c.train_h * a.hidden + c.train_kv * a.kv_hidden + c.train_f * a.ffn
                 + c.train_attn * a.heads * seq) * e
        if a.dropout:
            layer += c.dropout_sites * a.hidden  # bool masks
        return int(n * (a.layers * layer + 3 * a.hidden * e) + head)
    work = (c.infer_h * a.hidden + c.infer_f * a.ffn + c.infer_attn * a.heads * seq) * e
    cache = 2 * a.layers * a.kv_hidden * e if c.cache else 0
    return int(max(n * (work + cache), head + n * a.hidden * e))
