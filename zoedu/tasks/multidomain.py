"""``multidomain``: a language-modelling corpus of genuinely different real text domains.

Built offline from text that every Python installation carries:

* ``prose``: English prose — the help topics of the Python documentation
  (``pydoc_data.topics``), the reference text behind ``help()``;
* ``code``: Python source code of the standard library;
* ``rot13``: English prose (a disjoint part of the documentation) enciphered with ROT13 —
  same statistics of word lengths, entirely different tokens;
* ``arithmetic``: generated sums and products such as ``37 + 48 = 85``;
* ``noise``: *low-value* — words drawn uniformly at random from the documentation's
  vocabulary: a high irreducible loss and nothing to learn beyond which words occur;
* ``duplicated``: *saturating* — the same ``DUPLICATED_PASSAGES`` = 8 passages of English
  prose (from the part of the documentation ``rot13`` enciphers), repeated; training and
  validation examples are draws from those 8, so it is learned fast and then has nothing
  left to teach;
* ``reversed``: *hard* — English prose (the same part) with every word spelled backwards:
  fully regular, but in word pieces the tokenizer rarely uses, so it is learned slowly.

The first four are the original mixture; the last three make a mixture whose best fixed
weights are far from uniform (benchmarks/README.md). Everything is deterministic given
``seed`` and needs no network.

Each domain is one task for multi-task mixing (PiKE). Examples are chunks of about
``chunk_words`` words, truncated to ``max_length`` tokens.
"""

from __future__ import annotations

import codecs
import re
import sysconfig
from pathlib import Path

import numpy as np

DOMAINS = ("prose", "code", "rot13", "arithmetic", "noise", "duplicated", "reversed")
#: the original four-domain mixture (the default of :func:`build`)
DEFAULT_DOMAINS = ("prose", "code", "rot13", "arithmetic")
DUPLICATED_PASSAGES = 8


def _doc_text() -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def _code_text(max_chars: int = 3_000_000) -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        total += len(text)
        if total > max_chars:
            break
    if not parts:
        raise RuntimeError(f"no standard-library source found under {stdlib}")
    return "\n".join(parts)


def _arithmetic_text(rng: np.random.Generator, n_lines: int) -> str:
    lines = []
    for _ in range(n_lines):
        a, b = rng.integers(0, 100, size=2)
        op = rng.choice(["+", "-", "*"])
        val = a + b if op == "+" else a - b if op == "-" else a * b
        lines.append(f"{a} {op} {b} = {val} ;")
    return " ".join(lines)


def _chunks(text: str, chunk_words: int) -> list[str]:
    words = re.findall(r"\S+", text)
    return [" ".join(words[i:i + chunk_words]) for i in range(0, len(words) - chunk_words + 1, chunk_words)]


def _noise_chunks(rng: np.random.Generator, n: int, chunk_words: int) -> list[str]:
    vocab = sorted(set(re.findall(r"\S+", _doc_text().lower())))
    return [" ".join(vocab[i] for i in rng.integers(0, len(vocab), size=chunk_words)) for _ in range(n)]


def domain_chunks(domain: str, n: int, *, chunk_words: int, rng: np.random.Generator) -> list[str]:
    """``n`` chunks of ``domain`` (chosen at random without replacement, reproducibly;
    ``duplicated`` draws with replacement from its few passages, ``noise`` generates them)."""
    if domain not in DOMAINS:
        raise ValueError(f"domain={domain!r} is unknown; allowed: {', '.join(DOMAINS)}")
    if domain == "arithmetic":
        return _chunks(_arithmetic_text(rng, n * chunk_words // 5 + 10), chunk_words)[:n]
    if domain == "noise":
        return _noise_chunks(rng, n, chunk_words)
    if domain == "code":
        chunks = _chunks(_code_text(), chunk_words)
    else:
        prose = _chunks(_doc_text(), chunk_words)
        half = len(prose) // 2  # prose comes from one half of the docs; rot13, duplicated, reversed the other
        if domain == "prose":
            chunks = prose[:half]
        elif domain == "rot13":
            chunks = [codecs.encode(c, "rot13") for c in prose[half:]]
        elif domain == "reversed":
            chunks = [" ".join(w[::-1] for w in c.split()) for c in prose[half:]]
        else:  # duplicated: a few passages, drawn again and again
            passages = [prose[half + i] for i in rng.choice(len(prose) - half, DUPLICATED_PASSAGES, replace=False)]
            return [passages[i] for i in rng.integers(0, DUPLICATED_PASSAGES, size=n)]
    if len(chunks) < n:
        raise ValueError(f"domain {domain!r} has only {len(chunks)} chunks of {chunk_words} words; "
                         f"asked for {n}")
    pick = rng.choice(len(chunks), size=n, replace=False)
    return [chunks[i] for i in pick]


def build(tokenizer, *, seed: int = 0, domains=DEFAULT_DOMAINS, n_train: int | dict = 400,
          n_validation: int = 100, chunk_words: int = 48, max_length: int = 64, sizes=None):
    """The corpus of ``domains`` (any of :data:`DOMAINS`; default the original four).

    ``n_train`` (or its alias ``sizes``) is the number of training examples per domain: an
    int, a ``{domain: count}`` dict, or a sequence with one count per domain.
    """
    from .base import Task

    if isinstance(domains, str):
        domains = [d.strip() for d in domains.split(",") if d.strip()]
    domains = tuple(domains)
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or len(domains) < 1 or len(set(domains)) != len(domains):
        raise ValueError(f"domains={domains!r}: allowed domains are {', '.join(DOMAINS)} (each at most once)")
    if sizes is not None:
        if n_train != 400:
            raise ValueError("give the training sizes once: sizes= or n_train=, not both")
        n_train = sizes
    if isinstance(n_train, dict):
        extra = sorted(set(n_train) - set(domains))
        if extra:
            raise ValueError(f"sizes/n_train name domains {extra} that are not in domains={list(domains)}")
        counts = n_train
    elif isinstance(n_train, (list, tuple, np.ndarray)):
        if len(n_train) != len(domains):
            raise ValueError(f"sizes/n_train={list(n_train)!r} must have one count per domain ({len(domains)})")
        counts = dict(zip(domains, n_train))
    else:
        counts = {d: n_train for d in domains}
    if any(isinstance(counts.get(d, 0), bool) or not isinstance(counts.get(d, 0), (int, np.integer))
           for d in domains):
        raise ValueError(f"sizes/n_train={n_train!r} must be integers")
    if any(counts.get(d, 0) < 1 for d in domains) or n_validation < 1:
        raise ValueError(f"n_train={n_train!r} and n_validation={n_validation} must give every domain ≥ 1 example")
    rng = np.random.default_rng(seed)
    splits = {s: {"text": [], "domain": []} for s in ("train", "validation")}
    for k, dom in enumerate(domains):
        chunks = domain_chunks(dom, counts[dom] + n_validation, chunk_words=chunk_words, rng=rng)
        for split, part in (("train", chunks[:counts[dom]]), ("validation", chunks[counts[dom]:])):
            splits[split]["text"] += part
            splits[split]["domain"] += [k] * len(part)
    for s in splits.values():
        s["domain"] = np.asarray(s["domain"], dtype=np.int64)
        s["label"] = s["domain"]  # per-example bookkeeping; the LM target is the text itself
    return Task("multidomain", "lm", splits, tokenizer=tokenizer, max_length=max_length,
                domains=domains,
                description=f"{', '.join(domains)}: one LM task per domain")
