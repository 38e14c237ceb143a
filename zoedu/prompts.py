"""Prompt-based classification heads: the objective under which MeZO learns.

MeZO (Malladi et al., 2023, §3 and Appendix A.1, Table 5) fine-tunes well only when the
classification task is phrased as the pretraining task: with a prompt, RoBERTa-large on
SST-2 reaches 89.6 after 10,000 forward passes; with a freshly initialised linear head,
51.9 (chance). Their §4 explains why: the rate of zeroth-order SGD depends on the
*effective rank* of the loss's Hessian, which a prompt keeps low, not on the parameter
count. A prompt head starts as the zero-shot classifier and needs only small moves; a
random head must first be learned, through directions MeZO samples one at a time.

Three heads, one per kind of model (each returns ``logits`` of shape ``(batch, classes)``,
so :meth:`zoedu.tasks.Task.loss` treats them like any classifier):

* :class:`LabelWordClassifier`, masked LMs — the input is put in a template with a mask
  token (``"{text} it was {mask} ."``) and the class logits are the MLM head's logits of
  the label words (``terrible``/``great``) at the mask, as in the MeZO paper's code;
* :class:`LabelWordClassifier`, causal LMs — the template ends where the label word would
  follow, and the class logits are the next-token logits of the label words there;
* :class:`EmbeddingSimilarityClassifier`, sentence encoders without an LM head (the
  bundled MiniLM) — logits are ``scale · cos(embed(x), w_c)``, with ``w_c`` initialised to
  the embedding of class ``c``'s description (``"A positive review"``) and trainable, so the
  untrained model is the zero-shot cosine classifier.

The template is applied by :class:`PromptTokenizer`, which wraps the model's tokenizer:
tasks tokenize through it, so the template counts in ``max_length`` and in the token
lengths that Addax splits by, and the text (never the template) is what gets truncated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

TEXT, MASK = "{text}", "{mask}"


@dataclass(frozen=True)
class Prompt:
    """A task's prompt: the template and, per class, a label word and a label description.

    Args:
        template: contains ``{text}`` (the example) and ``{mask}`` (where the label word
            goes); a causal LM reads the label word as the next token, so for it the
            template ends at ``{mask}`` (what follows is dropped).
        label_words: one word per class, each a single token of the model's vocabulary
            (masked and causal LMs).
        label_descriptions: one short phrase per class (sentence encoders).
    """

    template: str
    label_words: tuple[str, ...]
    label_descriptions: tuple[str, ...]

    def __post_init__(self):
        check_template(self.template)
        if len(self.label_words) != len(self.label_descriptions):
            raise ValueError(f"label_words={self.label_words} and label_descriptions="
                             f"{self.label_descriptions} must have one entry per class each")


def check_template(template: str) -> str:
    """``template`` if it holds ``{text}`` once and ``{mask}`` once after it, else a ValueError."""
    if not isinstance(template, str) or template.count(TEXT) != 1 or template.count(MASK) != 1:
        raise ValueError(f"template={template!r} must contain {TEXT} and {MASK} exactly once each, "
                         "e.g. '{text} it was {mask} .'")
    if template.index(MASK) < template.index(TEXT):
        raise ValueError(f"template={template!r}: {MASK} must come after {TEXT}")
    return template


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def label_word_ids(tokenizer, words: Sequence[str], *, causal: bool = False) -> list[int]:
    """The vocabulary id of each label word; a ValueError for a word that is not one token.

    Causal and BPE tokenizers see a word after a space as another token (``Ġgreat``), so
    the word is tokenized as it follows the template: with a leading space unless the
    tokenizer lower-cases words into WordPiece (BERT-style), where spaces are not tokens.
    """
    out = []
    for w in words:
        if not isinstance(w, str) or not w.strip():
            raise ValueError(f"label word {w!r} must be a non-empty string")
        ids = _ids(tokenizer, " " + w.strip())
        if len(ids) != 1:
            raise ValueError(f"label word {w!r} is {len(ids)} tokens for this tokenizer; choose "
                             "words that are one token each (e.g. 'great'/'terrible')")
        out.append(ids[0])
    if len(set(out)) != len(out):
        raise ValueError(f"label words {list(words)} must be distinct tokens")
    return out


class PromptTokenizer:
    """A tokenizer that puts every text into ``template`` (see the module docstring).

    Called like a transformers tokenizer (``tok(texts, truncation=True, max_length=64)``),
    it returns ``{"input_ids": ...}`` with the model's special tokens around
    ``prefix + text + suffix``, the ``{mask}`` placeholder replaced by the mask token
    (masked LMs) or cut off (causal LMs: the label word is the next token). Only the text
    is truncated, so that ``max_length`` is never exceeded and the template always
    survives. Every other attribute is the wrapped tokenizer's.
    """

    def __init__(self, tokenizer, template: str, *, causal: bool = False):
        check_template(template)
        self.tokenizer = tokenizer
        self.template = template
        self.causal = causal
        head, rest = template.split(TEXT)
        mid, tail = rest.split(MASK)
        self._prefix = _ids(tokenizer, head.rstrip())
        if causal:
            self._suffix = _ids(tokenizer, mid.rstrip())
        else:
            if tokenizer.mask_token_id is None:
                raise ValueError("a masked-LM template needs a tokenizer with a mask token")
            self._suffix = _ids(tokenizer, mid.rstrip()) + [tokenizer.mask_token_id] + _ids(tokenizer, tail.rstrip())
        probe = _ids(tokenizer, "a")
        full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
        at = next(i for i in range(len(full)) if full[i:i + len(probe)] == probe)
        self._start, self._end = full[:at], full[at + len(probe):]
        if causal:  # the label word is read right after the template: no end token between
            self._end = []

    @property
    def template_length(self) -> int:
        """Tokens the template and the special tokens add to every text."""
        return len(self._start) + len(self._prefix) + len(self._suffix) + len(self._end)

    def encode_one(self, text: str, max_length: int | None = None) -> list[int]:
        """Token ids of ``text`` in the template, the text cut to fit ``max_length``."""
        ids = _ids(self.tokenizer, text)
        if max_length is not None:
            room = int(max_length) - self.template_length
            if room < 1:
                raise ValueError(f"max_length={max_length} leaves no room for the text: the template "
                                 f"{self.template!r} takes {self.template_length} tokens; use a "
                                 f"max_length of at least {self.template_length + 1}")
            ids = ids[:room]
        return self._start + self._prefix + ids + self._suffix + self._end

    def __call__(self, text, *, truncation: bool = False, max_length: int | None = None,
                 add_special_tokens: bool = True, **options):
        unsupported = {k: v for k, v in options.items() if v not in (None, False)}
        if unsupported:
            raise ValueError(f"PromptTokenizer returns lists of ids; {sorted(unsupported)} are not supported "
                             "(tasks pad their batches themselves; call .tokenizer for the plain tokenizer)")
        if not add_special_tokens:
            raise ValueError("add_special_tokens=False: a template always carries the model's special tokens")
        limit = max_length if truncation else None
        if isinstance(text, str):
            return {"input_ids": self.encode_one(text, limit)}
        return {"input_ids": [self.encode_one(t, limit) for t in text]}

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __getattr__(self, name):
        if name == "tokenizer":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __repr__(self) -> str:
        return f"PromptTokenizer({self.template!r}, {type(self.tokenizer).__name__})"


def _logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output[0]


class _ClassifierOutput(dict):
    """``out.logits`` (and ``out["logits"]``), like transformers' model outputs."""

    @property
    def logits(self) -> torch.Tensor:
        return self["logits"]


def _input_embeddings(inner: nn.Module):
    """The wrapped model's input embedding (``None`` where it has none)."""
    get = getattr(inner, "get_input_embeddings", None)
    return get() if callable(get) else None


def _output_embeddings(inner: nn.Module):
    """The wrapped model's output embedding: a tied LM head reads every row of the input
    embedding, and :func:`zoedu.optim.embedding_rows.untied_input_embedding` must see it."""
    get = getattr(inner, "get_output_embeddings", None)
    return get() if callable(get) else None


class LabelWordClassifier(nn.Module):
    """Class logits = the language model's logits of the label words where the label goes.

    Masked LMs: at the mask token. Causal LMs: at the last real token of each row (the
    batches are right-padded), i.e. the next-token logits after the template. Prompt
    tuning (peft) prepends virtual tokens to the output; the read position follows them.
    """

    def __init__(self, lm: nn.Module, label_ids: Sequence[int], *, causal: bool,
                 mask_token_id: int | None = None):
        super().__init__()
        if not causal and mask_token_id is None:
            raise ValueError("a masked LM's label-word head needs the tokenizer's mask_token_id")
        self.lm = lm
        self.causal = causal
        self.mask_token_id = mask_token_id
        self.register_buffer("label_ids", torch.tensor(list(label_ids), dtype=torch.long), persistent=False)
        self.config = getattr(lm, "config", None)

    @property
    def num_labels(self) -> int:
        return int(self.label_ids.numel())

    def get_input_embeddings(self):
        return _input_embeddings(self.lm)

    def get_output_embeddings(self):
        return _output_embeddings(self.lm)

    def read_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per row, the position whose logits score the label words."""
        if self.causal:
            return attention_mask.long().sum(1) - 1
        is_mask = input_ids == self.mask_token_id
        if not bool((is_mask.sum(1) == 1).all()):
            raise ValueError("every row must hold exactly one mask token; tokenize through the "
                             "PromptTokenizer that load_model(..., head='prompt') returns")
        return is_mask.long().argmax(1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits = _logits(self.lm(input_ids=input_ids, attention_mask=attention_mask))
        offset = logits.shape[1] - input_ids.shape[1]  # virtual tokens of prompt tuning
        pos = self.read_positions(input_ids, attention_mask) + offset
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return _ClassifierOutput(logits=logits[rows, pos][:, self.label_ids])


class EmbeddingSimilarityClassifier(nn.Module):
    """Class logits = ``scale · cos(mean-pooled embedding of x, w_c)``, ``w_c`` trainable.

    ``label_embeddings`` (classes × hidden) start as the encoder's embeddings of the label
    descriptions, so before training this is zero-shot classification by cosine similarity.
    ``scale`` (a fixed temperature; 20 by default) turns cosines in [-1, 1] into logits.
    """

    def __init__(self, encoder: nn.Module, label_embeddings: torch.Tensor, *, scale: float = 20.0):
        super().__init__()
        if label_embeddings.dim() != 2 or label_embeddings.shape[0] < 2:
            raise ValueError(f"label_embeddings must be (classes ≥ 2, hidden), got {tuple(label_embeddings.shape)}")
        if not (isinstance(scale, (int, float)) and scale > 0 and scale == scale and scale != float("inf")):
            raise ValueError(f"scale={scale!r} must be a positive finite number")
        self.encoder = encoder
        self.scale = float(scale)
        self.label_embeddings = nn.Parameter(label_embeddings.detach().clone())
        self.config = getattr(encoder, "config", None)

    @property
    def num_labels(self) -> int:
        return int(self.label_embeddings.shape[0])

    def get_input_embeddings(self):
        """The encoder's token embedding: MeZO and Addax then perturb only the rows a batch
        looks up (``fit``'s ``sparse_embedding``), as for the encoder alone."""
        return _input_embeddings(self.encoder)

    def get_output_embeddings(self):
        return _output_embeddings(self.encoder)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the last hidden states over the real tokens (sentence-transformers' pooling)."""
        hidden = _last_hidden(self.encoder(input_ids=input_ids, attention_mask=attention_mask))
        hidden = hidden[:, -input_ids.shape[1]:]  # drop virtual tokens of prompt tuning
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = F.normalize(self.embed(input_ids, attention_mask).float(), dim=-1)
        w = F.normalize(self.label_embeddings.float(), dim=-1)
        return _ClassifierOutput(logits=self.scale * x @ w.T)


def _last_hidden(output) -> torch.Tensor:
    return output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]


@torch.no_grad()
def describe(encoder: nn.Module, tokenizer, descriptions: Sequence[str]) -> torch.Tensor:
    """The mean-pooled embedding of each description (rows), as the encoder sees it."""
    if len(descriptions) < 2 or not all(isinstance(d, str) and d.strip() for d in descriptions):
        raise ValueError(f"labels={list(descriptions)!r} must be ≥ 2 non-empty descriptions, one per class")
    device = next(encoder.parameters()).device
    enc = tokenizer(list(descriptions), padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    was = encoder.training
    encoder.eval()
    try:
        hidden = _last_hidden(encoder(input_ids=ids, attention_mask=mask))
    finally:
        encoder.train(was)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


__all__ = [
    "EmbeddingSimilarityClassifier", "LabelWordClassifier", "Prompt", "PromptTokenizer",
    "check_template", "describe", "label_word_ids",
]
