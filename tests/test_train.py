"""zoedu.train.fit: the one training loop."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from zoedu.models import load_model
from zoedu.tasks import load_task
from zoedu.train import FitContext, available_methods, fit, register_method

COLUMNS = {"step", "loss", "eval_loss", "eval_accuracy", "seconds", "forward_passes",
           "backward_passes", "peak_memory"}


@pytest.fixture(scope="module")
def tabular():
    return load_task("tabular", dataset="breast_cancer")


def _linear(task, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(task.batch("train", [0])["x"].shape[1], task.num_labels)


def test_history_columns_and_counts(sentiment):
    model, _ = load_model("tiny-opt", size="1m", num_labels=2)
    h = fit(model, sentiment, "adam", steps=6, lr=1e-3, batch_size=4, eval_every=3,
            eval_examples=20, quiet=True, track_memory=False)
    assert isinstance(h, pd.DataFrame) and len(h) == 6
    assert COLUMNS <= set(h.columns)
    assert list(h["step"]) == [1, 2, 3, 4, 5, 6]
    assert list(h["forward_passes"]) == [1, 2, 3, 4, 5, 6]
    assert list(h["backward_passes"]) == [1, 2, 3, 4, 5, 6]
    assert h["eval_loss"].notna().tolist() == [False, False, True, False, False, True]
    assert h["seconds"].is_monotonic_increasing
    assert h.attrs["method"] == "adam" and h.attrs["parameters"] > 0


def test_same_seed_same_history_other_seed_differs(sentiment):
    def run(seed):
        model, _ = load_model("tiny-gpt2", size="1m", num_labels=2, seed=0)
        return fit(model, sentiment, "sgd", steps=5, lr=0.05, batch_size=4, seed=seed,
                   eval_examples=20, quiet=True, track_memory=False).drop(columns=["seconds"])

    a, b, c = run(1), run(1), run(2)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["loss"], c["loss"])


def test_training_reduces_loss_on_real_data(tabular):
    model = _linear(tabular)
    before = tabular.evaluate(model)
    h = fit(model, tabular, "sgd", steps=150, lr=0.5, batch_size=32, quiet=True, track_memory=False)
    assert h["eval_loss"].iloc[-1] < before["loss"] - 0.2
    assert h["eval_accuracy"].iloc[-1] > 0.9


def test_optimizer_instance_is_a_method(tabular):
    model = _linear(tabular)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    h = fit(model, tabular, opt, steps=3, batch_size=8, lr=0.1, quiet=True, track_memory=False)
    assert h.attrs["method"] == "sgd" and h["backward_passes"].iloc[-1] == 3


class _RandomSearch(torch.optim.Optimizer):
    """A tiny zeroth-order optimizer for the test: keep a random step if it lowers the loss."""

    zeroth_order = True
    forwards_per_step = 2

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure):
        params = [p for g in self.param_groups for p in g["params"]]
        before = float(closure())
        noise = [torch.randn_like(p) * self.param_groups[0]["lr"] for p in params]
        for p, n in zip(params, noise):
            p.add_(n)
        after = float(closure())
        if after > before:
            for p, n in zip(params, noise):
                p.sub_(n)
        return min(before, after)


def test_zeroth_order_optimizer_instance_runs_forward_only(tabular):
    model = _linear(tabular)
    opt = _RandomSearch(model.parameters(), lr=0.05)
    h = fit(model, tabular, opt, steps=30, lr=0.05, batch_size=64, quiet=True, track_memory=False)
    assert h["backward_passes"].iloc[-1] == 0 and h["forward_passes"].iloc[-1] == 60
    assert all(p.grad is None for p in model.parameters())
    assert h["loss"].iloc[-10:].mean() < h["loss"].iloc[:3].mean()


def test_register_method_and_extra_columns(tabular):
    class Runner:
        optimizer = None

        def __init__(self, ctx: FitContext, scale):
            self.ctx, self.scale = ctx, scale

        def step(self, step):
            batch = self.ctx.sample()
            with torch.no_grad():
                loss = self.ctx.loss(batch)
            return {"loss": float(loss), "forward_passes": 1, "backward_passes": 0,
                    "scaled": self.scale * step}

    register_method("probe", lambda ctx, scale=1.0: Runner(ctx, scale))
    assert "probe" in available_methods()
    h = fit(_linear(tabular), tabular, "probe", steps=3, lr=1.0, scale=2.0, quiet=True, track_memory=False)
    assert list(h["scaled"]) == [2.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="probe"):
        fit(_linear(tabular), tabular, "probe", steps=1, lr=1.0, colour=2, quiet=True)


def test_nan_loss_is_a_clear_error(tabular):
    model = _linear(tabular)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss at step 1 is nan"):
        fit(model, tabular, "adam", steps=2, lr=0.1, quiet=True, track_memory=False)


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "lbfgs"}, "allowed: .*adam.*sgd"),
    ({"steps": 0}, "steps=0 must be a positive integer"),
    ({"steps": 2.5}, "steps=2.5"),
    ({"lr": 0.0}, "lr=0.0 must be a positive"),
    ({"lr": -1e-3}, "lr=-0.001"),
    ({"lr": math.inf}, "lr=inf"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"eval_every": -1}, "eval_every=-1"),
    ({"device": "tpu"}, "device"),
])
def test_bad_arguments(tabular, kwargs, match):
    args = {"method": "sgd", "steps": 2, "lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        fit(_linear(tabular), tabular, args.pop("method"), quiet=True, **args)


def test_bad_task_and_model(tabular):
    with pytest.raises(ValueError, match="task must be"):
        fit(_linear(tabular), "sentiment", "sgd", steps=1, lr=0.1)
    with pytest.raises(ValueError, match="model must be"):
        fit("minilm", tabular, "sgd", steps=1, lr=0.1)


def test_fit_hands_memory_back_only_for_models_where_it_matters(tabular, monkeypatch):
    # zoedu.memory.release_memory (a full garbage collection and malloc_trim) after a CPU run whose
    # parameters reach RELEASE_MIN_BYTES; a small model's fit does not pay its ~150 ms
    import zoedu.memory
    import zoedu.train

    calls = []
    monkeypatch.setattr(zoedu.memory, "release_memory", lambda: calls.append(1) or True)
    fit(torch.nn.Linear(30, 2), tabular, "sgd", steps=1, lr=0.1, quiet=True, device="cpu")
    assert calls == []
    width = zoedu.train.RELEASE_MIN_BYTES // 4 // 30 + 1  # first layer alone reaches the threshold
    big = torch.nn.Sequential(torch.nn.Linear(30, width), torch.nn.Linear(width, 2))
    fit(big, tabular, "sgd", steps=1, lr=0.1, quiet=True, device="cpu", track_memory=False)
    assert calls == [1]


def test_fit_draws_mezo_directions_as_rademacher_on_cpu(tabular):
    """fit's MeZO on CPU: ±1 directions (the cheap draw) unless asked otherwise; the choice is
    in attrs["settings"], the default run is the explicit rademacher run bit for bit, and an
    explicit "gaussian" is another run."""
    runs = {}
    for label, opts in (("default", {}), ("rademacher", {"directions": "rademacher"}),
                        ("gaussian", {"directions": "gaussian"})):
        model = _linear(tabular)
        h = fit(model, tabular, "mezo", steps=5, lr=1e-2, batch_size=8, quiet=True, track_memory=False, **opts)
        runs[label] = (h, model.weight.detach().clone())
    assert runs["default"][0].attrs["settings"]["directions"] == "rademacher"
    assert runs["gaussian"][0].attrs["settings"]["directions"] == "gaussian"
    assert runs["default"][0].attrs["settings"]["eps"] == 1e-3             # the ε the run used
    h = fit(_linear(tabular), tabular, "mezo", steps=1, lr=1e-2, eps=3e-3, quiet=True, track_memory=False)
    assert h.attrs["settings"]["eps"] == 3e-3
    assert torch.equal(runs["default"][1], runs["rademacher"][1])
    assert list(runs["default"][0]["loss"]) == list(runs["rademacher"][0]["loss"])
    assert not torch.equal(runs["default"][1], runs["gaussian"][1])
