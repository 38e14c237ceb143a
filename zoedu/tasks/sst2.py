"""``sst2``: GLUE SST-2 (Stanford Sentiment Treebank) through the ``datasets`` library.

Needs the ``hub`` extra (``pip install "zoedu[hub]"``) and a network connection. Offline
it raises an error that names the offline alternative, ``sentiment``.
"""

from __future__ import annotations

import os

import numpy as np

from .sentiment import PROMPT


def build(tokenizer, *, seed: int = 0, n_train: int | None = None, max_length: int = 128):
    from .base import Task

    offline_hint = "use the offline task 'sentiment' instead"
    if any(os.environ.get(v, "").lower() in {"1", "true", "yes", "on"}
           for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        raise ValueError(f"task 'sst2' downloads GLUE SST-2 but HF_HUB_OFFLINE is set; {offline_hint}")
    try:
        from datasets import load_dataset
    except ImportError as err:
        raise ValueError(f"task 'sst2' needs the 'datasets' library (pip install 'zoedu[hub]'); "
                         f"{offline_hint}") from err
    try:
        ds = load_dataset("glue", "sst2")
    except Exception as err:  # network errors come in many types
        raise ValueError(f"task 'sst2' could not download GLUE SST-2 ({type(err).__name__}: {err}); "
                         f"{offline_hint}") from err
    train = ds["train"]
    if n_train is not None:
        train = train.shuffle(seed=seed).select(range(min(n_train, len(train))))
    splits = {"train": {"text": list(train["sentence"]), "label": np.asarray(train["label"])},
              "validation": {"text": list(ds["validation"]["sentence"]),
                             "label": np.asarray(ds["validation"]["label"])}}
    return Task("sst2", "classification", splits, tokenizer=tokenizer, num_labels=2,
                max_length=max_length, label_names=["negative", "positive"], prompt=PROMPT,
                description="GLUE SST-2 movie-review sentences")
