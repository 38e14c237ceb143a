"""Privacy settings that would break the guarantee are refused or accounted (issue 15, item 6)."""

import math

import numpy as np
import pytest
import torch

from zoedu.privacy import PrivacyAccountant, epsilon, noise_for_epsilon


@pytest.fixture(scope="module")
def cancer():
    from zoedu.tasks import load_task

    return load_task("tabular", dataset="breast_cancer")


def run(task, method, steps=12, **kw):
    from zoedu.train import fit

    torch.manual_seed(0)
    return fit(torch.nn.Linear(30, 2), task, method, steps=steps, lr=0.5, batch_size=32, quiet=True,
               track_memory=False, eval_every=0, **kw)


@pytest.mark.parametrize("delta", [0.5, 0.02, 0.999, math.nan, math.inf, -1e-9])
def test_delta_out_of_bounds_is_refused_with_its_name(delta):
    with pytest.raises(ValueError, match="delta"):
        epsilon(1.0, 0.04, 20, delta)
    with pytest.raises(ValueError, match="delta"):
        noise_for_epsilon(1.0, 0.04, 20, delta)
    with pytest.raises(ValueError, match="delta"):
        PrivacyAccountant().epsilon(delta)


def test_epsilon_is_never_negative():
    assert epsilon(1.0, 0.04, 20, 1e-5) > 0
    assert epsilon(1e4, 0.001, 1, 0.01) >= 0.0
    acc = PrivacyAccountant()
    acc.step(1e4, 0.001)
    assert acc.epsilon(0.01) >= 0.0


def test_fit_refuses_delta_not_below_one_over_n(cancer):
    with pytest.raises(ValueError, match=r"delta=0.005.*1/n"):
        run(cancer, "dp_sgd", noise_multiplier=1.0, delta=0.005)


def test_fixed_size_batches_are_accounted_without_amplification(cancer):
    with pytest.warns(RuntimeWarning, match="poisson=False"):
        h = run(cancer, "dp_sgd", noise_multiplier=1.0, poisson=False)
    assert (h["private_batch_size"] == 32).all()
    for t in (1, 12):  # the Gaussian mechanism on the whole set, replace-one sensitivity 2C
        assert h["epsilon"].iloc[t - 1] == pytest.approx(epsilon(0.5, 1.0, t, 1e-5), rel=1e-9)
    poisson = run(cancer, "dp_sgd", noise_multiplier=1.0)
    assert h["epsilon"].iloc[-1] > 5 * poisson["epsilon"].iloc[-1]


def test_fixed_size_batches_with_a_target_meet_it(cancer):
    with pytest.warns(RuntimeWarning, match="poisson=False"):
        h = run(cancer, "dp_sgd", target_epsilon=8.0, poisson=False)
    assert h["epsilon"].iloc[-1] <= 8.0


def test_a_run_longer_than_planned_is_refused(cancer):
    with pytest.raises(ValueError, match="steps_planned=5"):
        run(cancer, "dp_sgd", target_epsilon=1.0, steps_planned=5)


def test_overspending_warns_loudly_and_the_history_keeps_the_true_epsilon(cancer):
    from zoedu.loop import FitContext
    from zoedu.methods import FIT_METHODS

    torch.manual_seed(0)
    model = torch.nn.Linear(30, 2)
    ctx = FitContext(model=model, task=cancer, lr=0.5, batch_size=32, seed=0, device=torch.device("cpu"),
                     rng=np.random.default_rng(0), steps=None)
    runner = FIT_METHODS["dp_sgd"](ctx, target_epsilon=1.0, steps_planned=4)
    spent = [runner.step(t)["epsilon"] for t in range(1, 5)]
    assert spent[-1] <= 1.0 and not runner.budget_exceeded
    with pytest.warns(RuntimeWarning, match="PRIVACY BUDGET EXCEEDED"):
        out = runner.step(5)
    assert out["budget_exceeded"] and out["epsilon"] > 1.0
    assert out["epsilon"] == pytest.approx(runner.accountant.epsilon(1e-5))


@pytest.mark.parametrize("kw, name", [(dict(poisson="yes"), "poisson"), (dict(delta=0.5), "delta")])
def test_bad_privacy_options_name_themselves(cancer, kw, name):
    with pytest.raises(ValueError, match=name):
        run(cancer, "dp_sgd", noise_multiplier=1.0, **kw)


def test_batch_larger_than_the_private_set_is_refused(cancer):
    from zoedu.train import fit

    with pytest.raises(ValueError, match="batch_size"):
        fit(torch.nn.Linear(30, 2), cancer, "dp_sgd", steps=1, lr=0.5, batch_size=5000, quiet=True,
            track_memory=False, noise_multiplier=1.0)
