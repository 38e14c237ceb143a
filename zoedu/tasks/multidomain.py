"""``multidomain``: a language-modelling corpus of genuinely different real text domains.

Built offline from text that every Python installation carries:

* ``prose``: English prose — the help topics of the Python documentation
  (``pydoc_data.topics``), the reference text behind ``help()``;
* ``code``: Python source code of the standard library;
* ``rot13``: English prose (a disjoint part of the documentation) enciphered with ROT13 —
  same statistics of word lengths, entirely different tokens;
* ``arithmetic``: generated sums and products such as ``37 + 48 = 85``.

Each domain is one task for multi-task mixing (PiKE). Examples are chunks of about
``chunk_words`` words, truncated to ``max_length`` tokens.
"""

from __future__ import annotations

import codecs
import re
import sysconfig
from pathlib import Path

import numpy as np

DOMAINS = ("prose", "code", "rot13", "arithmetic")


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


def domain_chunks(domain: str, n: int, *, chunk_words: int, rng: np.random.Generator) -> list[str]:
    """``n`` chunks of ``domain`` (chosen at random without replacement, reproducibly)."""
    if domain == "arithmetic":
        return _chunks(_arithmetic_text(rng, n * chunk_words // 5 + 10), chunk_words)[:n]
    if domain == "code":
        chunks = _chunks(_code_text(), chunk_words)
    else:
        prose = _chunks(_doc_text(), chunk_words)
        half = len(prose) // 2  # prose and rot13 come from disjoint halves of the docs
        chunks = prose[:half] if domain == "prose" else [codecs.encode(c, "rot13") for c in prose[half:]]
    if len(chunks) < n:
        raise ValueError(f"domain {domain!r} has only {len(chunks)} chunks of {chunk_words} words; "
                         f"asked for {n}")
    pick = rng.choice(len(chunks), size=n, replace=False)
    return [chunks[i] for i in pick]


def build(tokenizer, *, seed: int = 0, domains=DOMAINS, n_train: int | dict = 400,
          n_validation: int = 100, chunk_words: int = 48, max_length: int = 64):
    """The corpus; ``n_train`` is per domain, an int or a ``{domain: count}`` dict."""
    from .base import Task

    domains = tuple(domains)
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or len(domains) < 1:
        raise ValueError(f"domains={domains!r}: allowed domains are {', '.join(DOMAINS)}")
    counts = n_train if isinstance(n_train, dict) else {d: n_train for d in domains}
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
                description="prose, Python code, ROT13 prose and arithmetic: one LM task per domain")
