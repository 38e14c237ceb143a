"""``sentiment``: generated movie reviews for binary classification, deterministic from a seed.

Each review has a hidden label (0 = negative, 1 = positive) and is built from
sentences about aspects of a film. What makes it learnable but not trivial:

* **negation** flips an adjective ("the plot was *not* good" is negative), so a bag of
  words sees the same "good" in positive and negative reviews;
* **intensifiers and diminishers** ("extremely", "slightly") change how strongly a
  sentence counts;
* **mixed reviews**: a fraction of the sentences disagree with the label, and a
  contrastive "…, but …" gives the second clause the last word;
* **a long tail of lengths**: the number of sentences is Pareto-distributed, so most
  reviews are one or two sentences (~10–30 tokens) while a tail runs to several hundred
  tokens, padded with neutral narration — the split Addax exploits;
* a little **label noise** (default 3 %), so no model reaches 100 %.
"""

from __future__ import annotations

import numpy as np

from ..prompts import Prompt

ASPECTS = [
    "the plot", "the acting", "the soundtrack", "the dialogue", "the cinematography",
    "the ending", "the lead actor", "the script", "the pacing", "the special effects",
    "the director's vision", "the supporting cast", "the humour", "the editing",
    "the costumes", "the story", "the score", "the screenplay", "the villain", "the finale",
]
POSITIVE = [
    "good", "great", "wonderful", "brilliant", "moving", "delightful", "superb", "charming",
    "gripping", "clever", "beautiful", "memorable", "fun", "excellent", "touching",
]
NEGATIVE = [
    "bad", "awful", "boring", "dull", "terrible", "clumsy", "forgettable", "weak",
    "tedious", "messy", "predictable", "lifeless", "annoying", "poor", "shallow",
]
INTENSIFIERS = ["very", "extremely", "really", "truly", "absolutely", "incredibly", "so"]
DIMINISHERS = ["somewhat", "slightly", "a bit", "fairly", "mildly"]
NEGATIONS = ["not", "never", "hardly", "by no means", "not at all"]
VERBS = ["was", "felt", "seemed", "turned out to be", "is"]
OPENERS_POS = ["i loved this film .", "what a treat .", "highly recommended .", "a real gem ."]
OPENERS_NEG = ["i regret watching this .", "what a waste of time .", "avoid this one .",
               "a real letdown ."]
VERDICT_POS = ["overall , i enjoyed it .", "all in all , worth seeing .", "in the end it won me over ."]
VERDICT_NEG = ["overall , i did not enjoy it .", "all in all , skip it .",
               "in the end it lost me ."]
NARRATION = [
    "i watched it on a rainy sunday with my family .",
    "the cinema was half empty that evening .",
    "my friend had recommended it to me weeks ago .",
    "it runs for a little over two hours .",
    "the film is based on a novel i have not read .",
    "i saw it in the original language with subtitles .",
    "there is a long scene set in a train station .",
    "the second act moves the story to a small coastal town .",
    "several characters return from the earlier film .",
    "the popcorn was cold but that is another story .",
    "we talked about it for a while on the way home .",
    "the trailer gives away more than it should .",
]


#: The prompt: the MeZO paper's SST-2 template and label words (Table 5 / their code's
#: ``*cls**sent_0*_It_was*mask*.*sep+*`` with {terrible, great}), and for sentence
#: encoders the label descriptions whose cosine similarity classifies zero-shot.
PROMPT = Prompt(template="{text} it was {mask} .", label_words=("terrible", "great"),
                label_descriptions=("A negative review", "A positive review"))


def _clause(rng: np.random.Generator, polarity: int) -> str:
    """One clause whose surface sentiment is ``polarity`` (1 positive, 0 negative)."""
    aspect = ASPECTS[rng.integers(len(ASPECTS))]
    verb = VERBS[rng.integers(len(VERBS))]
    negate = rng.random() < 0.3
    # a negated adjective of the opposite polarity reads as `polarity`
    adj_pos = (polarity == 1) != negate
    adj = (POSITIVE if adj_pos else NEGATIVE)[rng.integers(len(POSITIVE))]
    words = [aspect, verb]
    if negate:
        words.append(NEGATIONS[rng.integers(len(NEGATIONS))])
    r = rng.random()
    if r < 0.3:
        words.append(INTENSIFIERS[rng.integers(len(INTENSIFIERS))])
    elif r < 0.45:
        words.append(DIMINISHERS[rng.integers(len(DIMINISHERS))])
    words.append(adj)
    return " ".join(words)


def make_review(rng: np.random.Generator, label: int, *, tail: float = 1.6,
                max_sentences: int = 40, mixed: float = 0.3) -> str:
    """One review whose hidden sentiment is ``label``."""
    n_opinions = 1 + min(int(rng.pareto(tail) * 1.2), max_sentences)
    sentences = []
    if rng.random() < 0.25:
        sentences.append((OPENERS_POS if label else OPENERS_NEG)[rng.integers(4)])
    for _ in range(n_opinions):
        if rng.random() < 0.2:
            # contrast: the clause after "but" carries the review's sentiment
            first = _clause(rng, 1 - label)
            second = _clause(rng, label)
            sentences.append(f"{first} , but {second} .")
        else:
            pol = label if rng.random() >= mixed else 1 - label
            sentences.append(_clause(rng, pol) + " .")
        # long reviews also narrate: neutral sentences that add length, not signal
        if n_opinions > 3:
            for _ in range(rng.integers(0, 3)):
                sentences.append(NARRATION[rng.integers(len(NARRATION))])
    if n_opinions > 1 and rng.random() < 0.5:
        sentences.append((VERDICT_POS if label else VERDICT_NEG)[rng.integers(3)])
    return " ".join(sentences)


def generate(n: int, seed: int, *, label_noise: float = 0.03, **kwargs) -> tuple[list[str], np.ndarray]:
    """``n`` reviews and their (noisy) labels, deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    texts = [make_review(rng, int(y), **kwargs) for y in labels]
    flip = rng.random(n) < label_noise
    return texts, np.where(flip, 1 - labels, labels).astype(np.int64)


def build(tokenizer, *, seed: int = 0, n_train: int = 2000, n_validation: int = 500,
          label_noise: float = 0.03, max_length: int = 512, tail: float = 1.6):
    from .base import Task

    if n_train < 1 or n_validation < 1:
        raise ValueError(f"n_train={n_train} and n_validation={n_validation} must both be ≥ 1")
    if not 0.0 <= label_noise < 0.5:
        raise ValueError(f"label_noise={label_noise} must be in [0, 0.5)")
    if tail <= 0:
        raise ValueError(f"tail={tail} must be > 0 (the Pareto shape of the length distribution)")
    tr_text, tr_y = generate(n_train, seed, label_noise=label_noise, tail=tail)
    va_text, va_y = generate(n_validation, seed + 10_007, label_noise=label_noise, tail=tail)
    return Task(
        "sentiment", "classification",
        {"train": {"text": tr_text, "label": tr_y}, "validation": {"text": va_text, "label": va_y}},
        tokenizer=tokenizer, num_labels=2, max_length=max_length,
        label_names=["negative", "positive"], prompt=PROMPT,
        description="generated movie reviews with negation, intensifiers and a long tail of lengths",
    )
