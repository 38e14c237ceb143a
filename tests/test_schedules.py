"""fit(..., lr_schedule=): the factor reaches every method's update, resumes continue the
schedule, and bad schedules are clear errors."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from zoedu.loop import LR_SCHEDULES, lr_factor
from zoedu.tasks import load_task
from zoedu.train import fit


@pytest.fixture(scope="module")
def tabular():
    return load_task("tabular", dataset="breast_cancer")


def _linear(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(30, 2)


def _tiny(seed=0):
    from zoedu.models import load_model

    return load_model("tiny-opt", size="1m", num_labels=2, seed=seed)[0]


def test_named_schedules():
    assert LR_SCHEDULES == ("constant", "linear", "cosine")
    assert [lr_factor("linear", t, 4) for t in (1, 2, 3, 4)] == [1.0, 0.75, 0.5, 0.25]
    cos = [lr_factor("cosine", t, 100) for t in range(1, 101)]
    assert cos[0] == 1.0 and np.all(np.diff(cos) < 0) and 0 < cos[-1] < 1e-3
    assert math.isclose(lr_factor("cosine", 51, 100), 0.5)
    assert lr_factor("constant", 7, 3) == 1.0
    with pytest.raises(ValueError, match="outside the schedule's horizon"):
        lr_factor("linear", 5, 4)


def test_history_records_the_scheduled_rate(tabular):
    h = fit(_linear(), tabular, "sgd", steps=4, lr=0.2, quiet=True, track_memory=False, lr_schedule="linear")
    assert np.allclose(h["lr"], [0.2, 0.15, 0.1, 0.05])
    assert "lr" not in fit(_linear(), tabular, "sgd", steps=2, lr=0.2, quiet=True, track_memory=False).columns


def _stops_after_two(step):
    return 1.0 if step <= 2 else 0.0


@pytest.mark.parametrize("method, lr", [("sgd", 0.05), ("adam", 1e-3), ("ipsgd", 0.05), ("mezo", 1e-3),
                                        ("addax", 1e-3)])
def test_every_method_steps_with_the_scheduled_rate(tiny_task, method, lr):
    """A schedule that drops to 0 after step 2 leaves the weights where 2 steps left them: the
    factor reaches the update of each optimizer (IP-SGD's and Addax's inside backward hooks).
    Zeroth-order steps at lr 0 still perturb and restore, which rounds (~1e-9 here)."""
    two = _tiny()
    fit(two, tiny_task, method, steps=2, lr=lr, batch_size=4, seed=5, quiet=True, track_memory=False, eval_every=0)
    five = _tiny()
    h = fit(five, tiny_task, method, steps=5, lr=lr, batch_size=4, seed=5, quiet=True, track_memory=False,
            eval_every=0, lr_schedule=_stops_after_two)
    assert list(h["lr"]) == [lr, lr, 0.0, 0.0, 0.0]
    moved = _tiny()
    for (name, a), b in zip(two.named_parameters(), five.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-7), name
    assert max(float((a - c).abs().max()) for a, c in zip(two.parameters(), moved.parameters())) > 1e-5


def test_an_optimizer_instance_gets_its_rate_back(tabular):
    model = _linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    h = fit(model, tabular, opt, steps=4, lr=0.2, quiet=True, track_memory=False, lr_schedule="linear")
    assert np.allclose(h["lr"], [0.2, 0.15, 0.1, 0.05]) and opt.param_groups[0]["lr"] == 0.2


def test_a_decaying_schedule_changes_the_run(tabular):
    const = _linear()
    fit(const, tabular, "sgd", steps=20, lr=0.3, batch_size=32, quiet=True, track_memory=False)
    decayed = _linear()
    fit(decayed, tabular, "sgd", steps=20, lr=0.3, batch_size=32, quiet=True, track_memory=False, lr_schedule="cosine")
    assert not torch.equal(const.weight, decayed.weight)


@pytest.mark.parametrize("method", ["sgd", "mezo"])
def test_a_schedule_resumes_bit_for_bit(tabular, tmp_path, method):
    kw = dict(lr=0.1 if method == "sgd" else 1e-2, batch_size=16, seed=2, quiet=True, track_memory=False,
              lr_schedule="linear", schedule_steps=8)
    straight = _linear()
    h = fit(straight, tabular, method, steps=8, **kw)
    path = tmp_path / "run.ckpt"
    first = _linear()
    fit(first, tabular, method, steps=3, checkpoint=path, **kw)
    again = _linear(seed=1)
    h2 = fit(again, tabular, method, steps=8, resume=path, **kw)
    assert np.array_equal(h["lr"], h2["lr"]) and np.array_equal(h["loss"], h2["loss"])
    assert torch.equal(straight.weight, again.weight)
    with pytest.raises(ValueError, match="schedule_steps=8"):  # another horizon is another run
        fit(_linear(), tabular, method, steps=8, resume=path, **{**kw, "schedule_steps": 10})
    with pytest.raises(ValueError, match="lr_schedule='linear'"):
        fit(_linear(), tabular, method, steps=8, resume=path, **{k: v for k, v in kw.items()
                                                                   if k not in ("lr_schedule", "schedule_steps")})


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr_schedule="step"), "lr_schedule='step' is unknown; allowed: constant, linear, cosine"),
    (dict(lr_schedule="constant", schedule_steps=10), "schedule_steps=10 is the horizon"),
    (dict(lr_schedule="linear", schedule_steps=2), "shorter than steps=4"),
    (dict(lr_schedule="linear", schedule_steps=0), "schedule_steps=0"),
    (dict(lr_schedule=lambda step: -1.0), r"lr_schedule\(1\) returned -1.0"),
    (dict(lr_schedule=lambda step: "fast"), "returned 'fast'"),
])
def test_bad_schedules(tabular, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(_linear(), tabular, "sgd", steps=4, lr=0.1, quiet=True, track_memory=False, **kwargs)
