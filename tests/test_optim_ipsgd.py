"""IP-SGD (zoedu.optim.ipsgd): equals SGD, holds no full gradient, plugs into fit."""

import pytest
import torch
from torch import nn

from zoedu.optim import IPSGD


@pytest.fixture(scope="module")
def tiny():
    from zoedu.models import load_model, load_tokenizer
    from zoedu.tasks import load_task

    task = load_task("sentiment", tokenizer=load_tokenizer("tiny-opt"), n_train=120, n_validation=30,
                     max_length=48)
    return task, lambda: load_model("tiny-opt", size="1m", num_labels=2, seed=0)[0]


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
