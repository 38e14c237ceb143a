"""Addax (zoedu.optim.addax): the length split, the update rule, its two reductions, fit."""

import math

import numpy as np
import pytest
import torch
from conftest import same, tiny_opt_task

from zoedu.optim import IPSGD, Addax, MeZO, direction, direction_seed, split_by_length
from zoedu.optim import addax as addax_module


@pytest.fixture(scope="module")
def tiny():
    return tiny_opt_task(n_train=200, n_validation=30, max_length=64)


def batches(task, n, k, seed):
    rng = np.random.default_rng(seed)
    return [task.sample("train", k, rng) for _ in range(n)]


def snap(model):
    return [p.detach().clone() for p in model.parameters()]


# --------------------------------------------------------------------------- split
def test_split_by_length(tiny):
    task, _ = tiny
    batch = task.batch("train", np.arange(16))
    lengths = batch["lengths"]
    threshold = int(lengths.median())
    long, short = split_by_length(batch, threshold)
    assert (long["lengths"] > threshold).all() and (short["lengths"] <= threshold).all()
    assert len(long["lengths"]) + len(short["lengths"]) == 16
    assert short["input_ids"].shape[1] == int(short["lengths"].max())  # padding trimmed
    assert long["labels"].shape[0] == long["input_ids"].shape[0]
    # rows are the same examples
    idx = (lengths <= threshold).nonzero().squeeze(1)
    assert torch.equal(short["input_ids"], batch["input_ids"][idx, : short["input_ids"].shape[1]])
    none, everything = split_by_length(batch, 10_000)
    assert none is None and len(everything["lengths"]) == 16
    with pytest.raises(ValueError, match="length_threshold"):
        split_by_length(batch, -1)
    with pytest.raises(ValueError, match="lengths"):
        split_by_length({"input_ids": batch["input_ids"]}, 5)


# --------------------------------------------------------------------------- the rule
def closures(task, model, zo_batch, fo_batch):
    def zo():
        return task.loss(model, zo_batch)

    def fo():
        loss = task.loss(model, fo_batch)
        loss.backward()
        return loss

    return zo, fo


def test_alpha_one_is_mezo_on_the_long_part(tiny):
    task, make = tiny
    steps = batches(task, 3, 6, seed=2)
    model = make()
    opt = Addax(model.parameters(), lr=1e-3, alpha=1.0, eps=1e-3, seed=4)
    for b in steps:
        zo, _ = closures(task, model, b, None)
        opt.step(zo, None)
    ref = make()
    mezo = MeZO(ref.parameters(), lr=1e-3, eps=1e-3, seed=4, exact_restore=False)  # Addax: two round trips
    for b in steps:
        mezo.step(lambda b=b: task.loss(ref, b))
    assert all(torch.equal(a, b) for a, b in zip(snap(model), snap(ref)))
    assert not all(torch.equal(a, b) for a, b in zip(snap(model), snap(make())))


def test_alpha_zero_is_ipsgd_on_the_short_part(tiny):
    task, make = tiny
    steps = batches(task, 3, 6, seed=3)
    model = make()
    opt = Addax(model.parameters(), lr=0.05, alpha=0.0)
    for b in steps:
        _, fo = closures(task, model, None, b)
        opt.step(None, fo)
    ref = make()
    ip = IPSGD(ref.parameters(), lr=0.05)
    for b in steps:
        ip.step(closures(task, ref, None, b)[1])
    assert all(torch.equal(a, b) for a, b in zip(snap(model), snap(ref)))


def test_mixed_update_matches_the_formula(tiny):
    """θ ← θ − η (α g⁰ z + (1 − α) g¹), both estimates at the same θ (Algorithm 1)."""
    task, make = tiny
    zo_batch, fo_batch = batches(task, 2, 6, seed=5)
    lr, alpha, eps = 0.05, 0.3, 1e-3
    model = make()
    model.eval()
    theta = snap(model)
    params = list(model.parameters())
    loss = task.loss(model, fo_batch)
    g1 = torch.autograd.grad(loss, params)
    opt = Addax(params, lr=lr, alpha=alpha, eps=eps, seed=9)
    zo, fo = closures(task, model, zo_batch, fo_batch)
    zo_loss, fo_loss = opt.step(zo, fo)
    g0 = opt.last_projected_grad
    z = direction(theta, direction_seed(9, 0))
    assert fo_loss == pytest.approx(float(loss), rel=1e-5)
    assert math.isfinite(zo_loss) and g0 != 0
    for p, t, g, zz in zip(params, theta, g1, z):
        want = t - lr * (alpha * g0 * zz + (1 - alpha) * g)
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in params)


def test_nan_in_zeroth_order_part_restores_and_skips(tiny):
    task, make = tiny
    model = make()
    before = snap(model)
    opt = Addax(model.parameters(), lr=0.05, alpha=0.5)
    fo_calls = []
    with pytest.warns(RuntimeWarning, match="restored"):
        zo_loss, fo_loss = opt.step(lambda: float("nan"), lambda: fo_calls.append(1))
    assert math.isnan(zo_loss) and not fo_calls and opt.skipped_steps == 1
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(before, snap(model)))


@pytest.mark.parametrize("kwargs,match", [({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"),
                                          ({"eps": 0.0}, "eps"), ({"lr": -1.0}, "lr")])
def test_bad_arguments(kwargs, match):
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=match):
        Addax(lin.parameters(), **{"lr": 0.1, **kwargs})


def test_missing_closures_are_refused():
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="zo_closure"):
        Addax(lin.parameters(), lr=0.1, alpha=0.5).step(None, lambda: 0.0)
    with pytest.raises(ValueError, match="fo_closure"):
        Addax(lin.parameters(), lr=0.1, alpha=0.5).step(lambda: 0.0, None)


# --------------------------------------------------------------------------- fit
def test_fit_addax_draws_long_and_short_pools(tiny):
    from zoedu.train import fit

    task, make = tiny
    threshold = int(np.median(task.lengths("train")))
    seen = []
    original = task.loss
    task.loss = lambda m, b: (seen.append((torch.is_grad_enabled(), m.training, b["lengths"].clone())),
                              original(m, b))[1]
    try:
        h = fit(make(), task, "addax", steps=2, lr=1e-2, batch_size=4, quiet=True, eval_every=0,
                track_memory=False, length_threshold=threshold, k0=3, k1=5, alpha=0.1)
    finally:
        del task.loss
    zo = [(m, lengths) for grad, m, lengths in seen if not grad]
    fo = [(m, lengths) for grad, m, lengths in seen if grad]
    assert len(zo) == 4 and len(fo) == 2
    assert all((lengths > threshold).all() and len(lengths) == 3 and not m for m, lengths in zo)
    assert all((lengths <= threshold).all() and len(lengths) == 5 and m for m, lengths in fo)
    assert h["forward_passes"].tolist() == [3, 6] and h["backward_passes"].tolist() == [1, 2]
    assert {"zo_loss", "fo_loss", "projected_grad"} <= set(h.columns)


def test_fit_addax_wa_uses_all_examples(tiny):
    from zoedu.train import fit

    task, make = tiny
    h = fit(make(), task, "addax-wa", steps=2, lr=1e-2, batch_size=4, quiet=True, eval_every=0,
            track_memory=False, alpha=0.1)
    assert h["forward_passes"].tolist() == [3, 6]
    assert h.attrs["settings"] == {"k0": 4, "k1": 4, "length_threshold": None, "autocast": "off",
                                  "directions": "rademacher"}


def test_fit_records_the_split_addax_chose(tiny):
    # the defaults resolved (median training length, K0 = K1 = batch size), as estimate() takes them
    from zoedu.train import fit

    task, make = tiny
    h = fit(make(), task, "addax", steps=1, lr=1e-2, batch_size=4, quiet=True, eval_every=0, track_memory=False)
    assert h.attrs["settings"] == {"k0": 4, "k1": 4, "length_threshold": int(np.median(task.lengths("train"))),
                                  "autocast": "off", "directions": "rademacher"}
    h = fit(make(), task, "addax", steps=1, lr=1e-2, batch_size=4, quiet=True, eval_every=0, track_memory=False,
            k0=2, k1=3, length_threshold=20)
    assert h.attrs["settings"] == {"k0": 2, "k1": 3, "length_threshold": 20, "autocast": "off",
                                  "directions": "rademacher"}
    assert "settings" not in fit(make(), task, "adam", steps=1, lr=1e-3, quiet=True, eval_every=0,
                                 track_memory=False).attrs  # a method without choices records none


def test_fit_addax_draws_plus_minus_one_directions_on_cpu(tiny):
    """fit's Addax, like its MeZO, perturbs along ±1 directions on CPU: the same run as an
    explicit directions="rademacher", not the gaussian one; the class keeps the paper's
    gaussian; a saved state refuses to resume under the other kind."""
    from zoedu.optim import Addax
    from zoedu.train import fit

    task, make = tiny
    runs = {}
    for d in (None, "rademacher", "gaussian"):
        model = make()
        h = fit(model, task, "addax", steps=3, lr=1e-2, batch_size=4, quiet=True, eval_every=0,
                track_memory=False, alpha=0.5, **({} if d is None else {"directions": d}))
        runs[d] = (h["loss"].tolist(), [p.detach().clone() for p in model.parameters()])
        assert h.attrs["settings"]["directions"] == (d or "rademacher")
    assert runs[None][0] == runs["rademacher"][0] and same(runs[None][1], runs["rademacher"][1])
    assert not same(runs[None][1], runs["gaussian"][1])
    net = torch.nn.Linear(3, 2)
    assert Addax(net.parameters(), lr=0.1).directions == "gaussian"
    with pytest.raises(ValueError, match="directions='uniform'"):
        Addax(net.parameters(), lr=0.1, directions="uniform")
    state = Addax(net.parameters(), lr=0.1, directions="rademacher").state_dict()
    with pytest.raises(ValueError, match="directions"):
        Addax(net.parameters(), lr=0.1).load_state_dict(state)


def test_fit_addax_refuses_an_empty_pool(tiny):
    from zoedu.train import fit

    task, make = tiny
    with pytest.raises(ValueError, match="length_threshold"):
        fit(make(), task, "addax", steps=1, lr=1e-2, quiet=True, length_threshold=10_000)
    with pytest.raises(ValueError, match="k0"):
        fit(make(), task, "addax", steps=1, lr=1e-2, quiet=True, k0=0)


# --------------------------------------------------------------------------- threshold
def test_choose_threshold_bisects_the_estimate(tiny, monkeypatch):
    """With a known cost law, the chosen L_T is the largest task length within budget."""
    import zoedu.memory as memory

    task, make = tiny
    calls = []

    class Foot:
        def __init__(self, total):
            self.total = total

    def fake(model, method, *, batch_size, seq_len, dtype="float32"):
        calls.append((method, batch_size, seq_len))
        return Foot(1000 + 10 * batch_size * seq_len)

    monkeypatch.setattr(memory, "estimate", fake, raising=False)
    lengths = np.unique(task.lengths("train"))
    budget = 1000 + 10 * 4 * int(lengths[len(lengths) // 2]) + 5
    chosen = addax_module.choose_threshold(make(), task, budget, k1=4)
    assert chosen == int(lengths[len(lengths) // 2])
    assert all(m == "ipsgd" and b == 4 for m, b, _ in calls)
    assert len(calls) <= 2 + math.ceil(math.log2(len(lengths)))
    with pytest.raises(ValueError, match="memory_budget_bytes"):
        addax_module.choose_threshold(make(), task, 500, k1=4)


def test_choose_threshold_with_the_real_estimate(tiny):
    import zoedu.memory as memory

    if not hasattr(memory, "estimate"):
        pytest.skip("zoedu.memory.estimate is not there yet")
    task, make = tiny
    model = make()
    lengths = np.unique(task.lengths("train"))
    small = float(memory.estimate(model, "ipsgd", batch_size=8, seq_len=int(lengths[0])).total)
    large = float(memory.estimate(model, "ipsgd", batch_size=8, seq_len=int(lengths[-1])).total)
    assert addax_module.choose_threshold(model, task, large, k1=8) == int(lengths[-1])
    mid = addax_module.choose_threshold(model, task, (small + large) / 2, k1=8)
    assert lengths[0] <= mid <= lengths[-1]


# --------------------------------------------------------------------------- sparse embeddings
def test_sparse_embedding_gradients_change_nothing_but_memory(tiny):
    """The first-order pass gets the embedding's gradient as rows: same weights, lower peak."""
    from zoedu.memory import measure

    task, make = tiny
    zo_batch, fo_batch = batches(task, 2, 6, seed=7)
    out, feet = {}, {}
    for sparse in (False, True):
        model = make()
        layouts = []
        model.get_input_embeddings().weight.register_post_accumulate_grad_hook(
            lambda p: layouts.append(p.grad.layout))
        opt = Addax(model.parameters(), lr=0.05, alpha=0.3, weight_decay=0.1, seed=3, sparse_embedding_grads=sparse)
        zo, fo = closures(task, model, zo_batch, fo_batch)
        feet[sparse] = measure(lambda: opt.step(zo, fo), model=model, optimizer=opt)
        opt.step(zo, fo)
        assert layouts == [torch.sparse_coo if sparse else torch.strided] * 2
        assert model.get_input_embeddings().sparse is False
        out[sparse] = snap(model)
    assert all(torch.equal(a, b) for a, b in zip(out[True], out[False]))  # bit for bit
    emb = make().get_input_embeddings().weight
    assert feet[True].total < feet[False].total - 0.5 * emb.numel() * emb.element_size()


def test_rows_restrict_the_zeroth_order_part_like_mezo(tiny):
    """step(rows=): with α = 1 it is MeZO.step(rows=) bit for bit; only those embedding rows move."""
    from zoedu.optim import embedding_rows

    task, make = tiny
    steps = batches(task, 3, 6, seed=11)
    model, ref = make(), make()
    opt = Addax(model.parameters(), lr=1e-3, alpha=1.0, eps=1e-3, seed=4)
    mezo = MeZO(ref.parameters(), lr=1e-3, eps=1e-3, seed=4, exact_restore=False)
    for b in steps:
        opt.step(lambda b=b: task.loss(model, b), None, rows=embedding_rows(model, b))
        mezo.step(lambda b=b: task.loss(ref, b), rows=embedding_rows(ref, b))
    assert all(torch.equal(a, b) for a, b in zip(snap(model), snap(ref)))

    model = make()
    emb = model.get_input_embeddings().weight
    before = emb.detach().clone()
    zo_batch, fo_batch = batches(task, 2, 6, seed=12)
    opt = Addax(model.parameters(), lr=0.05, alpha=0.5, eps=1e-3, seed=1)
    zo, fo = closures(task, model, zo_batch, fo_batch)
    opt.step(zo, fo, rows=embedding_rows(model, zo_batch))
    used = torch.unique(torch.cat([zo_batch["input_ids"].flatten(), fo_batch["input_ids"].flatten()]))
    moved = (emb.detach() != before).any(1).nonzero().squeeze(1)
    assert moved.numel() > 0 and set(moved.tolist()) <= set(used.tolist())
    with pytest.raises(ValueError, match="rows"):
        opt.step(zo, fo, rows={torch.zeros(3): [0]})


def test_fit_addax_sparse_embedding_flags(tiny):
    from zoedu.train import fit

    task, make = tiny
    kw = dict(steps=2, lr=1e-2, batch_size=4, quiet=True, eval_every=0, track_memory=False, alpha=0.1)
    for flags in ({}, {"sparse_embedding": False}, {"sparse_embedding_grads": True}):
        h = fit(make(), task, "addax", **kw, **flags)
        assert h["backward_passes"].tolist() == [1, 2] and np.isfinite(h["loss"]).all()
