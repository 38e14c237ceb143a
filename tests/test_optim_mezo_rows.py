"""MeZO on the rows a batch uses (``MeZO.step(rows=...)``, ``embedding_rows``, fit's default)."""

import math

import pytest
import torch
from conftest import snapshot
from torch import nn

from zoedu.optim import MeZO, embedding_rows, replay


class Bag(nn.Module):
    """Mean of looked-up embeddings → linear head: the loss reads only the rows of ``ids``."""

    def __init__(self, vocab=50, dim=6, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1)).squeeze(1)


def data(seed=0, vocab=50, batch=8, seq=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab // 2, (batch, seq), generator=g), torch.randn(batch, generator=g)


def test_only_the_given_rows_move_and_the_rest_stay_bitwise():
    model = Bag()
    ids, y = data()
    before = model.emb.weight.detach().clone()
    opt = MeZO(model.parameters(), lr=1e-2, eps=1e-3, chunk=7)  # several row streams
    for _ in range(5):
        opt.step(lambda: ((model(ids) - y) ** 2).mean(), rows={model.emb.weight: ids})
    used = torch.unique(ids)
    unused = torch.tensor(sorted(set(range(50)) - set(used.tolist())))
    after = model.emb.weight.detach()
    assert torch.equal(after[unused], before[unused])
    assert (after[used] != before[used]).any(dim=1).all()  # every used row was updated


def test_row_direction_is_unbiased_for_the_gradient_of_the_used_rows():
    """Restricting z to the rows the loss reads keeps E[g z_S] = ∇L (the other rows' gradient is
    exactly 0): the mean update over many seeds matches autograd's gradient within 4 s.e."""
    model = Bag(vocab=20, dim=3).double()
    ids, y = data(vocab=20, batch=4, seq=3)
    y = y.double()

    def loss():
        return ((model(ids) - y) ** 2).mean()

    model.zero_grad()
    loss().backward()
    true = model.emb.weight.grad.clone()
    base = model.emb.weight.detach().clone()
    n, est = 600, []
    opt = MeZO([model.emb.weight], lr=1.0, eps=1e-5)
    for t in range(n):
        with torch.no_grad():
            model.emb.weight.copy_(base)
        opt.step(loss, rows={model.emb.weight: ids})
        est.append(base - model.emb.weight.detach())  # = lr · g z
    est = torch.stack(est)
    mean, sem = est.mean(0), est.std(0) / math.sqrt(n)
    used = torch.unique(ids)
    assert ((mean[used] - true[used]).abs() < 4 * sem[used] + 1e-9).all()
    assert float((mean - true).norm() / true.norm()) < 0.3
    assert torch.equal(est[:, [r for r in range(20) if r not in used.tolist()]], torch.zeros_like(
        est[:, [r for r in range(20) if r not in used.tolist()]]))


@pytest.mark.parametrize("estimator", ["sgd", "momentum", "adam"])
def test_replay_with_rows_is_exact_and_state_is_lazy(estimator):
    model = Bag()
    base = snapshot(model)
    opt = MeZO(model.parameters(), lr=1e-2, eps=1e-3, weight_decay=0.1, estimator=estimator, chunk=7, seed=5)
    for step in range(12):
        ids, y = data(seed=step)
        opt.step(lambda: ((model(ids) - y) ** 2).mean(), rows={model.emb.weight: ids})
    log = opt.state_dict()["trajectory"]
    assert len(log["rows"]) == 12 and set(log["rows"][0]) == {0}  # parameter 0 is the embedding
    rebuilt = [b.clone() for b in base]
    replay(rebuilt, log)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt, snapshot(model)))
    if estimator != "sgd":
        key = "momentum_buffer" if estimator == "momentum" else "exp_avg"
        state = opt.state[model.emb.weight][key]
        seen = torch.unique(torch.cat([r[0].long() for r in log["rows"]]))
        never = torch.tensor(sorted(set(range(50)) - set(seen.tolist())))
        assert torch.equal(state[never], torch.zeros_like(state[never]))
        assert (state[seen] != 0).any(dim=1).all()


def test_lr_zero_round_trip_on_rows_only_drifts_by_rounding():
    model = Bag()
    ids, y = data()
    before = snapshot(model)
    opt = MeZO(model.parameters(), lr=0.0, eps=1e-3)
    for _ in range(20):
        opt.step(lambda: ((model(ids) - y) ** 2).mean(), rows={model.emb.weight: ids})
    assert max(float((a - b).abs().max()) for a, b in zip(snapshot(model), before)) < 1e-6
    exact = MeZO(model.parameters(), lr=0.0, eps=1e-3, exact_restore=True)
    before = snapshot(model)
    for _ in range(20):
        exact.step(lambda: ((model(ids) - y) ** 2).mean(), rows={model.emb.weight: ids})
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), before))


def test_embedding_rows_finds_untied_input_embeddings_only():
    from zoedu.models import load_model

    batch = {"input_ids": torch.tensor([[5, 7, 7, 9]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    clf, _ = load_model("tiny-opt", size="1m", num_labels=2, seed=0)
    rows = embedding_rows(clf, batch)
    assert list(rows) == [clf.get_input_embeddings().weight]
    assert torch.equal(rows[clf.get_input_embeddings().weight], batch["input_ids"])
    lm, _ = load_model("tiny-opt", size="1m", seed=0)  # causal LM: the head is tied to the embedding
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    assert embedding_rows(lm, batch) == {}
    assert embedding_rows(nn.Linear(2, 2), batch) == {}
    assert embedding_rows(clf, {"features": torch.zeros(1, 2)}) == {}


def test_fit_mezo_leaves_unread_embedding_rows_untouched_unless_dense():
    from zoedu.models import load_model, load_tokenizer
    from zoedu.tasks import load_task
    from zoedu.train import fit

    task = load_task("sentiment", tokenizer=load_tokenizer("tiny-opt"), n_train=64, n_validation=16,
                     max_length=32)
    seen = torch.unique(task.batch("train", list(range(task.size("train"))))["input_ids"])
    for sparse in (True, False):
        model, _ = load_model("tiny-opt", size="1m", num_labels=2, seed=0)
        w0 = model.get_input_embeddings().weight.detach().clone()
        fit(model, task, "mezo", steps=6, lr=1e-3, batch_size=4, quiet=True, track_memory=False, eval_every=0,
            sparse_embedding=sparse)
        w = model.get_input_embeddings().weight.detach()
        unread = torch.ones(w.shape[0], dtype=torch.bool)
        unread[seen] = False
        changed = (w != w0).any(dim=1)
        if sparse:
            assert not changed[unread].any()
            assert changed.any()
        else:
            assert changed[unread].float().mean() > 0.5  # dense MeZO random-walks every row


def test_bad_rows_are_refused():
    model = Bag()
    opt = MeZO(model.parameters(), lr=1e-3)
    ids, y = data()

    def loss():
        return ((model(ids) - y) ** 2).mean()

    with pytest.raises(ValueError, match="rows must be a dict"):
        opt.step(loss, rows=[ids])
    with pytest.raises(ValueError, match="not one of this optimizer's parameters"):
        opt.step(loss, rows={torch.zeros(50, 6): ids})
    with pytest.raises(ValueError, match=r"row indices in \[0, 50\)"):
        opt.step(loss, rows={model.emb.weight: torch.tensor([3, 50])})
    with pytest.raises(ValueError, match="integer row indices"):
        opt.step(loss, rows={model.emb.weight: torch.tensor([1.0])})
    scalar = nn.Parameter(torch.tensor(1.0))
    with pytest.raises(ValueError, match="has no rows"):
        MeZO([scalar], lr=1e-3).step(lambda: scalar * 2, rows={scalar: [0]})
