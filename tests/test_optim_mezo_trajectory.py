"""MeZO's trajectory log and replay (zoedu.optim.trajectory): bit-for-bit replays, the log in state_dict."""

import io
import warnings

import pytest
import torch
from conftest import Quadratic, mlp, mlp_data, same, snapshot

from zoedu.optim import MeZO, replay


def test_rademacher_run_replays_bit_for_bit():
    x, y = mlp_data()
    model = mlp()
    base = snapshot(model)
    opt = MeZO(model.parameters(), lr=1e-2, weight_decay=0.1, directions="rademacher", seed=7)
    for _ in range(6):
        opt.step(lambda: ((model(x) - y) ** 2).mean())
    log = opt.trajectory()
    assert log["directions"] == "rademacher"
    rebuilt = [b.clone() for b in base]
    replay(rebuilt, log)
    assert same(rebuilt, snapshot(model))
    with pytest.raises(ValueError, match="directions.*gaussian, rademacher"):
        MeZO(model.parameters(), lr=1e-3, directions="uniform")


def test_replay_reproduces_a_50_step_fit_exactly(tiny_task):
    from zoedu.models import load_model
    from zoedu.train import fit

    model, _ = load_model("tiny-opt", size="1m", num_labels=2, seed=0)
    base = snapshot(model)
    opt = MeZO(model.parameters(), lr=1e-3, eps=1e-3, weight_decay=0.1, seed=3)
    fit(model, tiny_task, opt, steps=50, lr=1e-3, batch_size=4, quiet=True, track_memory=False, eval_every=0)
    final = snapshot(model)
    assert not same(base, final)
    state = opt.state_dict()
    buf = io.BytesIO()
    torch.save(state["trajectory"], buf)
    assert buf.tell() < 100_000  # the paper's "checkpoint of under 0.1 MB"
    rebuilt = [b.clone() for b in base]
    replay(rebuilt, state["trajectory"])
    assert same(rebuilt, final)
    approx = [b.clone() for b in base]
    replay(approx, state["trajectory"], passes=False)
    assert max(float((a - b).abs().max()) for a, b in zip(approx, final)) < 1e-5


def test_replay_of_exact_restore_run_needs_no_passes():
    x, y = mlp_data()
    model = mlp()
    base = snapshot(model)
    opt = MeZO(model.parameters(), lr=1e-2, n_perturb=2, estimator="momentum", exact_restore=True)
    for _ in range(8):
        opt.step(lambda: ((model(x) - y) ** 2).mean())
    rebuilt = [b.clone() for b in base]
    replay(rebuilt, opt.trajectory())
    assert same(rebuilt, snapshot(model))


def test_state_dict_round_trip_keeps_the_log():
    q = Quadratic()
    opt = MeZO(q.parameters(), lr=1e-2)
    for _ in range(3):
        opt.step(q)
    other = MeZO(q.parameters(), lr=1e-2)
    other.load_state_dict(opt.state_dict())
    assert other.step_count == 3
    assert torch.equal(other.trajectory()["projected_grads"], opt.trajectory()["projected_grads"])


def test_replay_after_a_skipped_step_is_still_exact():
    x, y = mlp_data()
    model = mlp()
    base = snapshot(model)
    opt = MeZO(model.parameters(), lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(6):
            opt.step(lambda t=t: float("inf") if t == 2 else ((model(x) - y) ** 2).mean())
    rebuilt = [b.clone() for b in base]
    replay(rebuilt, opt.trajectory())
    assert same(rebuilt, snapshot(model))
