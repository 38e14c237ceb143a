"""Test configuration: offline, deterministic, small."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    from zoedu.models import default_tokenizer

    return default_tokenizer()


@pytest.fixture(scope="session")
def sentiment(tokenizer):
    from zoedu.tasks import load_task

    return load_task("sentiment", tokenizer=tokenizer, n_train=300, n_validation=100, max_length=128)


@pytest.fixture(scope="module")
def tiny_task():
    """``sentiment`` tokenized for tiny-opt (200 train, 50 validation, max_length 64)."""
    from zoedu.models import load_tokenizer
    from zoedu.tasks import load_task

    return load_task("sentiment", tokenizer=load_tokenizer("tiny-opt"), n_train=200, n_validation=50,
                     max_length=64)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------- shared helpers
# (plain functions: the test modules import them with `from conftest import ...`)
def snapshot(module):
    """Copies of a module's parameters, to compare with later."""
    return [p.detach().clone() for p in module.parameters()]


def same(a, b):
    """Bitwise equality of two lists of tensors."""
    return all(torch.equal(x, y) for x, y in zip(a, b))


def tiny_opt_task(n_train: int, n_validation: int, max_length: int):
    """``sentiment`` tokenized for tiny-opt, and a maker of the 1m tiny-OPT classifier (seed 0)."""
    from zoedu.models import load_model, load_tokenizer
    from zoedu.tasks import load_task

    task = load_task("sentiment", tokenizer=load_tokenizer("tiny-opt"), n_train=n_train,
                     n_validation=n_validation, max_length=max_length)
    return task, lambda: load_model("tiny-opt", size="1m", num_labels=2, seed=0)[0]


class Quadratic(nn.Module):
    """L(θ) = ½ (θ − c)ᵀ A (θ − c): gradient A (θ − c), known exactly."""

    def __init__(self, d=6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        m = torch.randn(d, d, generator=g, dtype=torch.float64)
        self.register_buffer("A", m @ m.T / d + torch.eye(d, dtype=torch.float64))
        self.register_buffer("c", torch.randn(d, generator=g, dtype=torch.float64))
        self.theta = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))

    def forward(self):
        r = self.theta - self.c
        return 0.5 * r @ self.A @ r

    def grad(self):
        return self.A @ (self.theta.detach() - self.c)


def mlp(dtype=torch.float32, seed=0):
    """A small MLP (12 → 16 → 1, LayerNorm, tanh) in ``dtype``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 1)).to(dtype)


def mlp_data(dtype=torch.float32):
    """32 regression rows for :func:`mlp`."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 12, generator=g).to(dtype), torch.randn(32, 1, generator=g).to(dtype)


def ce(model, batch):
    """Cross-entropy of a tabular classifier on a batch of ``x`` and ``labels``."""
    return torch.nn.functional.cross_entropy(model(batch["x"]), batch["labels"])


def tab_batch(n, d=6, k=3, seed=0):
    """``n`` random tabular rows of ``d`` features and ``k`` classes."""
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, d, generator=g), "labels": torch.randint(0, k, (n,), generator=g)}


def tab_mlp(d=6, k=3, seed=0):
    """A small tabular classifier (d → 8 → k, tanh)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 8), torch.nn.Tanh(), torch.nn.Linear(8, k))


def loop_grads(model, loss_fn, batch):
    """Reference per-sample gradients: one backward per example."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = [[] for _ in params]
    n = batch["x"].shape[0]
    for i in range(n):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        grads = torch.autograd.grad(loss_fn(model, one), params)
        for slot, g in zip(out, grads):
            slot.append(g)
    return [torch.stack(s) for s in out]
