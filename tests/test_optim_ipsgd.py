"""IP-SGD (zoedu.optim.ipsgd): equals SGD (sparse embedding gradients too), holds no full gradient,
plugs into fit."""

import pytest
import torch
from conftest import tiny_opt_task
from torch import nn

from zoedu.optim import IPSGD


@pytest.fixture(scope="module")
def tiny():
    return tiny_opt_task(n_train=120, n_validation=30, max_length=48)


def run(model, opt, batches, task):
    for batch in batches:
        def closure():
            if not isinstance(opt, IPSGD):
                opt.zero_grad()
            loss = task.loss(model, batch)
            loss.backward()
            return loss

        opt.step(closure)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_ipsgd_equals_sgd(tiny, weight_decay):
    task, make = tiny
    rng = __import__("numpy").random.default_rng(0)
    batches = [task.sample("train", 8, rng) for _ in range(3)]
    ref = make()
    want = run(ref, torch.optim.SGD(ref.parameters(), lr=0.05, weight_decay=weight_decay), batches, task)
    model = make()
    got = run(model, IPSGD(model.parameters(), lr=0.05, weight_decay=weight_decay), batches, task)
    start = [p.detach() for p in make().parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(got, start))  # it moved
    for a, b in zip(got, want):
        assert torch.equal(a, b)  # bit for bit: the same operations, in a different order of parameters
    assert all(p.grad is None for p in model.parameters())  # every gradient was freed


def test_no_full_gradient_in_memory(tiny):
    from zoedu.memory import measure

    task, make = tiny
    batch = task.sample("train", 8, __import__("numpy").random.default_rng(1))
    feet = {}
    for name in ("sgd", "ipsgd"):
        model = make()
        opt = IPSGD(model.parameters(), lr=0.01) if name == "ipsgd" else torch.optim.SGD(model.parameters(), lr=0.01)

        def closure():
            opt.zero_grad()
            loss = task.loss(model, batch)
            loss.backward()
            return loss

        feet[name] = measure(lambda: opt.step(closure), model=model, optimizer=opt)
    n_bytes = sum(p.numel() * p.element_size() for p in make().parameters())
    assert feet["sgd"].grads >= 0.9 * n_bytes
    assert feet["ipsgd"].grads < 0.5 * feet["sgd"].grads  # only a few parameters' gradients at a time
    assert feet["ipsgd"].total < feet["sgd"].total


def test_backward_outside_step_accumulates_normally():
    lin = nn.Linear(3, 2)
    opt = IPSGD(lin.parameters(), lr=1.0)
    w = lin.weight.detach().clone()
    lin(torch.ones(1, 3)).sum().backward()
    assert lin.weight.grad is not None and torch.equal(lin.weight.detach(), w)
    opt.step(lambda: lin(torch.ones(1, 3)).sum().backward())
    assert not torch.equal(lin.weight.detach(), w)
    opt.remove_hooks()
    w = lin.weight.detach().clone()
    opt.step(lambda: lin(torch.ones(1, 3)).sum().backward())
    assert torch.equal(lin.weight.detach(), w)


def test_fit_ipsgd(tiny):
    from zoedu.train import fit

    task, make = tiny
    h = fit(make(), task, "ipsgd", steps=3, lr=1e-2, batch_size=4, quiet=True, eval_every=0, track_memory=False)
    assert h["forward_passes"].tolist() == [1, 2, 3]
    assert h["backward_passes"].tolist() == [1, 2, 3]


def test_bad_arguments():
    lin = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="lr"):
        IPSGD(lin.parameters(), lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        IPSGD(lin.parameters(), lr=0.1, weight_decay=-1)
    with pytest.raises(ValueError, match="closure"):
        IPSGD(lin.parameters(), lr=0.1).step()
    with pytest.raises(ValueError, match="sparse_embedding_grads"):
        IPSGD(lin.parameters(), lr=0.1, sparse_embedding_grads="yes")


# --------------------------------------------------------------------------- sparse embeddings
class Bag(nn.Module):
    """An embedding (with a padding row) and a linear head: the embedding gets row gradients."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(40, 6, padding_idx=0)
        self.head = nn.Linear(6, 3)

    def forward(self, ids):
        return self.head(self.emb(ids).tanh().mean(1))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_sparse_embedding_gradient_is_sgd_bit_for_bit(weight_decay, monkeypatch):
    from zoedu.optim import ipsgd

    monkeypatch.setattr(ipsgd, "DECAY_ROWS", 7)  # the decay of the untouched rows runs in several chunks
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randint(0, 12, (5, 9), generator=gen), torch.randint(0, 3, (5,), generator=gen))
            for _ in range(4)]  # rows repeat within a batch; row 0 is padding; rows 12..39 never used

    def train(model, opt):
        for ids, y in data:
            def closure():
                if not isinstance(opt, IPSGD):
                    opt.zero_grad()
                loss = nn.functional.cross_entropy(model(ids), y)
                loss.backward()
                return loss

            opt.step(closure)
        return [p.detach().clone() for p in model.parameters()]

    ref = Bag()
    want = train(ref, torch.optim.SGD(ref.parameters(), lr=0.5, weight_decay=weight_decay))
    model = Bag()
    layouts = []
    model.emb.weight.register_post_accumulate_grad_hook(lambda p: layouts.append(p.grad.layout))
    got = train(model, IPSGD(model.parameters(), lr=0.5, weight_decay=weight_decay, sparse_embedding_grads=True))
    assert layouts == [torch.sparse_coo] * len(data)  # the gradient arrived as rows
    assert model.emb.sparse is False  # switched back after each step
    assert not torch.equal(got[0], Bag().emb.weight)
    for a, b in zip(got, want):
        assert torch.equal(a, b)  # bit for bit, weight decay of the untouched rows included

    dense = Bag()
    layouts.clear()
    dense.emb.weight.register_post_accumulate_grad_hook(lambda p: layouts.append(p.grad.layout))
    got = train(dense, IPSGD(dense.parameters(), lr=0.5, weight_decay=weight_decay))  # the default
    assert layouts == [torch.strided] * len(data)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_frozen_or_foreign_embeddings_stay_dense():
    model = Bag()
    other = nn.Embedding(5, 6)
    opt = IPSGD(model.head.parameters(), lr=0.1, sparse_embedding_grads=True)  # the embedding is not ours
    seen = []

    def closure():
        seen.append((model.emb.sparse, other.sparse))
        out = model(torch.tensor([[1, 2]])).sum() + other(torch.tensor([1])).sum()
        seen.append((model.emb.sparse, other.sparse))
        out.backward()
        return out

    opt.step(closure)
    assert seen == [(False, False), (False, False)]
    assert model.emb.weight.grad is not None and model.emb.weight.grad.layout == torch.strided


def test_sparse_embedding_grads_lower_the_peak(tiny):
    from zoedu.memory import measure

    task, make = tiny
    batch = task.sample("train", 8, __import__("numpy").random.default_rng(1))
    feet = {}
    for sparse in (False, True):
        model = make()
        opt = IPSGD(model.parameters(), lr=0.01, sparse_embedding_grads=sparse)

        def closure():
            loss = task.loss(model, batch)
            loss.backward()
            return loss

        feet[sparse] = measure(lambda: opt.step(closure), model=model, optimizer=opt)
    emb = make().get_input_embeddings().weight
    emb_bytes = emb.numel() * emb.element_size()
    dense, sparse = feet[False], feet[True]
    assert dense.total - dense.params >= 0.9 * emb_bytes  # the dense run holds the embedding's whole gradient
    assert sparse.total - sparse.params - sparse.activations < 0.2 * emb_bytes  # the sparse one its rows only
    assert sparse.total < dense.total - 0.5 * emb_bytes  # (its peak is now the backward's activations)


def test_fit_ipsgd_sparse_embedding_grads_is_the_same_training(tiny):
    from zoedu.train import fit

    task, make = tiny
    kw = dict(steps=3, lr=5e-2, batch_size=4, quiet=True, eval_every=0, track_memory=False)
    a, b = make(), make()
    fit(a, task, "ipsgd", **kw)
    fit(b, task, "ipsgd", sparse_embedding_grads=True, **kw)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
