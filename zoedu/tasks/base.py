"""The Task: splits of examples, a collate that tokenizes, batches that carry token lengths.

A batch is a plain ``dict`` of tensors:

* text tasks: ``input_ids``, ``attention_mask`` (right-padded), ``labels`` (class ids for
  classification, ``-100``-masked token ids for language modelling), ``lengths`` (tokens
  per example) and, for multi-domain tasks, ``domain`` (the domain index of each example);
* tabular tasks: ``x``, ``labels``, ``lengths`` (the feature count).

``Task.example_losses(model, batch)`` gives one loss per example; ``Task.loss`` is their
mean. Every method in :func:`zoedu.train.fit` goes through these two, so the objective is
the same for all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import integer, optional_integer

SPLITS = ("train", "validation")
KINDS = ("classification", "lm", "tabular")


def move_batch(batch: dict, device) -> dict:
    """The batch with every tensor on ``device``."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a split; allowed: {', '.join(SPLITS)}")
    return split


class Task:
    """A dataset with a train and a validation split and the objective trained on it.

    Args:
        name: the task's registry name.
        kind: ``"classification"``, ``"lm"`` or ``"tabular"``.
        splits: per split, a dict of columns: ``text`` (list of str) and ``label``
            (int array) for text tasks, plus ``domain`` (int array) when ``domains`` is
            given; ``x`` (float tensor) and ``label`` for tabular tasks.
        tokenizer: a transformers tokenizer (text tasks).
        num_labels: number of classes (classification and tabular).
        max_length: examples are truncated to this many tokens.
        train_max_length: training examples are truncated to this many tokens instead
            (at most ``max_length``; ``None``: ``max_length``); validation keeps
            ``max_length``. Training on the start of each example costs less per step:
            MeZO's forwards on the first 16 of the ``sentiment`` reviews' 32 tokens cost
            0.62× and taught as much per step (benchmarks/README.md, "Training on shorter
            crops"). Settable later (``task.train_max_length = 16``).
        domains: names of the domains of a multi-task corpus, or ``None``.
        label_names: names of the classes, for display.
        prompt: the task phrased for a language model (:class:`zoedu.prompts.Prompt`: a
            template, label words and label descriptions), for ``load_model(head="prompt")``.
    """

    def __init__(self, name: str, kind: str, splits: dict[str, dict], *, tokenizer=None,
                 num_labels: int | None = None, max_length: int = 512,
                 domains: Sequence[str] | None = None, label_names: Sequence[str] | None = None,
                 description: str = "", prompt=None, train_max_length: int | None = None):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not a task kind; allowed: {', '.join(KINDS)}")
        for split in SPLITS:
            if split not in splits:
                raise ValueError(f"splits must have a {split!r} split")
            n = len(splits[split]["label"] if kind != "lm" else splits[split]["text"])
            if n == 0:
                raise ValueError(f"the {split!r} split of task {name!r} is empty; a task needs examples")
        if kind != "tabular" and tokenizer is None:
            raise ValueError(f"task {name!r} is a text task and needs a tokenizer")
        self.name = name
        self.kind = kind
        self.data = splits
        self.tokenizer = tokenizer
        self.num_labels = num_labels
        # at least 2 tokens: the special tokens a tokenizer adds and one word
        self.max_length = integer("max_length", max_length, low=2, what="tokens per example after truncation")
        self.domains = list(domains) if domains is not None else None
        self.label_names = list(label_names) if label_names is not None else None
        self.description = description
        self.prompt = prompt
        self._encoded: dict[str, list[list[int]]] = {}
        self.train_max_length = train_max_length

    # ------------------------------------------------------------------ sizes
    def size(self, split: str = "train") -> int:
        """Number of examples in ``split``."""
        cols = self.data[_check_split(split)]
        return len(cols["x"] if self.kind == "tabular" else cols["text"])

    def __repr__(self) -> str:
        doms = f", domains={self.domains}" if self.domains else ""
        return (f"Task({self.name!r}, kind={self.kind!r}, train={self.size('train')}, "
                f"validation={self.size('validation')}{doms})")

    @property
    def label_words(self) -> list[str] | None:
        """One label word per class (the prompt's), or ``None`` without a prompt."""
        return list(self.prompt.label_words) if self.prompt is not None else None

    @property
    def template(self) -> str | None:
        """The prompt's template (``"{text} it was {mask} ."``), or ``None`` without a prompt."""
        return self.prompt.template if self.prompt is not None else None

    @property
    def n_domains(self) -> int:
        return len(self.domains) if self.domains else 1

    def domain_of(self, split: str) -> np.ndarray:
        """Domain index of every example of ``split`` (zeros for a one-domain task)."""
        cols = self.data[_check_split(split)]
        if "domain" in cols:
            return np.asarray(cols["domain"])
        return np.zeros(self.size(split), dtype=np.int64)

    def domain_indices(self, split: str, domain: int | str) -> np.ndarray:
        """Indices of the examples of ``split`` that belong to ``domain`` (index or name)."""
        if isinstance(domain, str):
            if not self.domains or domain not in self.domains:
                raise ValueError(f"domain={domain!r} is not a domain of {self.name!r}; "
                                 f"allowed: {self.domains}")
            domain = self.domains.index(domain)
        if not 0 <= domain < self.n_domains:
            raise ValueError(f"domain={domain} is out of range 0..{self.n_domains - 1}")
        return np.flatnonzero(self.domain_of(split) == domain)

    @property
    def train_max_length(self) -> int:
        """Tokens per training example after truncation (``max_length`` unless set lower)."""
        return self._train_max_length

    @train_max_length.setter
    def train_max_length(self, value: int | None) -> None:
        if value is not None and self.kind == "tabular":
            raise ValueError(f"train_max_length={value!r}: task {self.name!r} is tabular and has no tokens to "
                             f"truncate; allowed: None")
        value = self.max_length if value is None else integer(
            "train_max_length", value, low=2, what="tokens per training example after truncation")
        if value > self.max_length:
            raise ValueError(f"train_max_length={value} is larger than max_length={self.max_length}; "
                             f"allowed: 2..{self.max_length} or None (the same as max_length)")
        if value != getattr(self, "_train_max_length", None):
            self._encoded.pop("train", None)  # re-tokenized at the new length when next used
        self._train_max_length = value

    def max_length_of(self, split: str) -> int:
        """Tokens per example of ``split`` after truncation."""
        return self.train_max_length if _check_split(split) == "train" else self.max_length

    # ------------------------------------------------------------ tokenizing
    def encoded(self, split: str) -> list[list[int]]:
        """Token ids of every example of ``split`` (tokenized once, truncated, cached)."""
        _check_split(split)
        if self.kind == "tabular":
            raise ValueError("a tabular task has no tokens")
        if split not in self._encoded:
            enc = self.tokenizer(list(self.data[split]["text"]), truncation=True,
                                 max_length=self.max_length_of(split), add_special_tokens=True)
            self._encoded[split] = enc["input_ids"]
        return self._encoded[split]

    def lengths(self, split: str = "train") -> np.ndarray:
        """Token length of every example of ``split`` (feature count for tabular tasks)."""
        if self.kind == "tabular":
            return np.full(self.size(split), self.data[split]["x"].shape[1], dtype=np.int64)
        return np.fromiter((len(ids) for ids in self.encoded(split)), dtype=np.int64,
                           count=self.size(split))

    def examples(self, split: str, indices: Sequence[int]) -> list[dict]:
        """The examples at ``indices`` as dicts (``text``/``x``, ``label``, ``domain``)."""
        cols = self.data[_check_split(split)]
        out = []
        for i in indices:
            ex = {k: cols[k][int(i)] for k in cols}
            out.append(ex)
        return out

    def collate(self, examples: Sequence[dict]) -> dict:
        """Tokenize and pad a list of examples into a batch (see the module docstring); text is
        truncated at ``max_length`` (a training batch of a task with a lower ``train_max_length``
        comes from :meth:`batch` or :meth:`sample`)."""
        if len(examples) == 0:
            raise ValueError("collate needs at least one example")
        if self.kind == "tabular":
            x = torch.stack([torch.as_tensor(e["x"], dtype=torch.float32) for e in examples])
            labels = torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)
            return {"x": x, "labels": labels,
                    "lengths": torch.full((len(examples),), x.shape[1], dtype=torch.long)}
        ids = [e["input_ids"] if "input_ids" in e else
               self.tokenizer(e["text"], truncation=True, max_length=self.max_length)["input_ids"]
               for e in examples]
        batch = self._pad(ids)
        if self.kind == "classification":
            batch["labels"] = torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)
        if self.domains:
            batch["domain"] = torch.tensor([int(e.get("domain", 0)) for e in examples], dtype=torch.long)
        return batch

    def _pad(self, ids: list[list[int]]) -> dict:
        pad = self.tokenizer.pad_token_id or 0
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
        width = int(lengths.max())
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        attention_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "lengths": lengths}
        if self.kind == "lm":
            batch["labels"] = input_ids.masked_fill(attention_mask == 0, -100)
        return batch

    def batch(self, split: str, indices: Sequence[int]) -> dict:
        """The batch of the examples at ``indices`` of ``split`` (uses the token cache)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            raise ValueError("a batch needs at least one index")
        cols = self.data[_check_split(split)]
        if self.kind == "tabular":
            idx = torch.as_tensor(indices)
            x = cols["x"][idx]
            return {"x": x, "labels": torch.as_tensor(cols["label"])[idx].long(),
                    "lengths": torch.full((len(indices),), x.shape[1], dtype=torch.long)}
        enc = self.encoded(split)
        batch = self._pad([enc[int(i)] for i in indices])
        if self.kind == "classification":
            batch["labels"] = torch.as_tensor(np.asarray(cols["label"])[indices], dtype=torch.long)
        if self.domains:
            batch["domain"] = torch.as_tensor(self.domain_of(split)[indices], dtype=torch.long)
        return batch

    def sample(self, split: str, batch_size: int, generator: np.random.Generator,
               indices: np.ndarray | None = None) -> dict:
        """A random batch of ``batch_size`` distinct examples (from ``indices`` if given)."""
        pool = np.arange(self.size(split)) if indices is None else np.asarray(indices)
        if pool.size == 0:
            raise ValueError(f"cannot sample from an empty set of examples of task {self.name!r}")
        integer("batch_size", batch_size, low=1)
        if batch_size > pool.size:
            raise ValueError(f"batch_size={batch_size} is larger than the {pool.size} examples to sample from "
                             f"(split {split!r} of task {self.name!r}); a batch holds distinct examples")
        chosen = generator.choice(pool, size=batch_size, replace=False)
        return self.batch(split, chosen)

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                max_examples: int | None = None) -> Iterator[dict]:
        """Iterate once over ``split`` in batches (sorted by length when not shuffled, to pad less)."""
        integer("batch_size", batch_size, low=1)
        optional_integer("max_examples", max_examples, low=1, what="None: the whole split")
        n = self.size(split)
        if max_examples is not None:
            n = min(n, int(max_examples))
        order = np.arange(n)
        if shuffle:
            order = np.random.default_rng(seed).permutation(n)
        elif self.kind != "tabular":
            order = order[np.argsort(self.lengths(split)[:n], kind="stable")]
        for start in range(0, n, batch_size):
            yield self.batch(split, order[start:start + batch_size])

    # ------------------------------------------------------------- objective
    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """Logits of ``model`` on ``batch``."""
        if self.kind == "tabular":
            return model(batch["x"])
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.logits if hasattr(out, "logits") else out[0]

    def example_losses(self, model: nn.Module, batch: dict, *, pieces: int = 1) -> torch.Tensor:
        """One loss per example: cross-entropy of the label, or mean next-token cross-entropy.

        ``pieces`` > 1 (text tasks): the examples sorted by length run as that many forwards,
        each padded only to its own longest example, and the losses come back in the batch's
        order: the same losses (the attention mask hides the padding), fewer padded tokens. A
        batch of 64 reviews of 7–32 tokens pads to 32 and is 45 % padding; in two pieces a MeZO
        step on MiniLM costs 0.79× as much (benchmarks/README.md, "MeZO in bfloat16").
        """
        if pieces != 1:  # checked only when asked for: every method's loss passes here
            integer("pieces", pieces, low=1)
            if self.kind != "tabular":
                return self._losses_by_length(model, batch, pieces)
        return self._losses_from_logits(self.forward(model, batch), batch)

    @staticmethod
    def _next_token_labels(labels: torch.Tensor) -> torch.Tensor:
        """The label of position t is token t + 1 (−100, ignored, at the last position).

        The labels are shifted, not the logits: slicing the logits (B × T × vocabulary, the
        largest tensor of a small LM's step) would copy them and, in the backward pass, fill a
        zero tensor of their size and copy into it."""
        return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)

    def _losses_from_logits(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """One loss per example (see :meth:`example_losses`) from the model's logits."""
        if self.kind == "lm":
            labels = self._next_token_labels(batch["labels"])
            tok = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                  ignore_index=-100, reduction="none").view(labels.shape)
            return tok.sum(1) / (labels != -100).sum(1).clamp_min(1)
        return F.cross_entropy(logits.float(), batch["labels"], reduction="none")

    def _losses_by_length(self, model: nn.Module, batch: dict, pieces: int) -> torch.Tensor:
        lengths = batch["lengths"]
        n, width = len(lengths), batch["input_ids"].shape[1]
        order = torch.argsort(lengths, stable=True)
        out = None
        for idx in order.chunk(min(pieces, n)):
            cut = int(lengths[idx].max())
            part = {}
            for k, v in batch.items():
                if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n:
                    v = v[idx]
                    if v.dim() == 2 and v.shape[1] == width:
                        v = v[:, :cut]
                part[k] = v
            losses = self.example_losses(model, part)
            if out is None:
                out = losses.new_empty(n)
            out[idx] = losses
        return out

    def loss(self, model: nn.Module, batch: dict, *, pieces: int = 1) -> torch.Tensor:
        """The training objective: the mean of :meth:`example_losses`."""
        return self.example_losses(model, batch, pieces=pieces).mean()

    def correct(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(example_losses, correct predictions, count)`` on a batch, without gradients."""
        logits = self.forward(model, batch)
        pred = logits.argmax(-1)
        if self.kind == "lm":
            labels = self._next_token_labels(batch["labels"])
            mask = labels != -100
            correct = ((pred == labels) & mask).sum()
            count = int(mask.sum())
        else:
            correct = (pred == batch["labels"]).sum()
            count = int(batch["labels"].numel())
        # the losses from the same logits: no second forward pass
        return self._losses_from_logits(logits, batch), correct, count

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "validation", *, batch_size: int = 64,
                 max_examples: int | None = None, device=None) -> dict[str, float]:
        """Mean loss and accuracy (token accuracy for LM) over ``split``.

        Multi-domain tasks also report ``loss/<domain>`` for every domain.
        """
        integer("batch_size", batch_size, low=1)
        optional_integer("max_examples", max_examples, low=1, what="None: the whole split")
        if device is None:
            device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros(self.n_domains, dtype=torch.float64)
        loss_cnt = torch.zeros(self.n_domains, dtype=torch.float64)
        correct, count = 0, 0
        try:
            for batch in self.batches(split, batch_size, max_examples=max_examples):
                batch = move_batch(batch, device)
                losses, c, n = self.correct(model, batch)
                dom = batch.get("domain")
                dom = dom.cpu() if dom is not None else torch.zeros(len(losses), dtype=torch.long)
                loss_sum.index_add_(0, dom, losses.double().cpu())
                loss_cnt.index_add_(0, dom, torch.ones(len(losses), dtype=torch.float64))
                correct += int(c)
                count += n
        finally:
            model.train(was_training)
        out = {"loss": float(loss_sum.sum() / loss_cnt.sum()), "accuracy": correct / max(count, 1)}
        if self.domains:
            for k, name in enumerate(self.domains):
                out[f"loss/{name}"] = float(loss_sum[k] / loss_cnt[k]) if loss_cnt[k] else float("nan")
        return out


def batch_loss(task: Task, model: nn.Module, batch: dict, *, pieces: int = 1,
               per_example: bool = False) -> torch.Tensor:
    """``task.loss(model, batch)`` (``task.example_losses`` with ``per_example``), passing
    ``pieces=`` only when it is not 1, so that a loss wrapped or overridden with the plain
    ``(model, batch)`` signature keeps working (the loop and the data-parallel loss call this)."""
    fn = task.example_losses if per_example else task.loss
    return fn(model, batch) if pieces == 1 else fn(model, batch, pieces=pieces)

