"""``tabular``: scikit-learn's bundled real datasets as tensors (for the privacy experiments).

``dataset="breast_cancer"`` (569 × 30, 2 classes) or ``"digits"`` (1797 × 64, 10 classes).
Features are standardised with the training split's statistics and, with
``row_norm=True`` (the default), every row is scaled to unit Euclidean norm so that a
bound on the feature norm — which differential privacy's sensitivity analysis needs —
holds by construction.
"""

from __future__ import annotations

import numpy as np
import torch

DATASETS = ("breast_cancer", "digits")


def build(tokenizer=None, *, seed: int = 0, dataset: str = "breast_cancer",
          validation_fraction: float = 0.3, row_norm: bool = True):
    from sklearn import datasets

    from .base import Task

    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} is not bundled; allowed: {', '.join(DATASETS)}")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must be in (0, 1)")
    loader = datasets.load_breast_cancer if dataset == "breast_cancer" else datasets.load_digits
    bunch = loader()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, int(round(validation_fraction * len(y))))
    val, train = order[:n_val], order[n_val:]
    mean, std = x[train].mean(0), x[train].std(0)
    std[std == 0] = 1.0
    x = (x - mean) / std
    if row_norm:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    num_labels = int(y.max()) + 1
    splits = {name: {"x": torch.tensor(x[idx], dtype=torch.float32),
                     "label": torch.tensor(y[idx], dtype=torch.long)}
              for name, idx in (("train", train), ("validation", val))}
    names = [str(n) for n in getattr(bunch, "target_names", range(num_labels))]
    return Task("tabular", "tabular", splits, num_labels=num_labels, label_names=names,
                description=f"scikit-learn {dataset}: {x.shape[1]} features, {num_labels} classes")
