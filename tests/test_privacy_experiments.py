"""The privacy experiments (fast configurations) and ``zoedu privacy``."""

import math

import numpy as np
import pytest
import torch

from zoedu.experiments import privacy as curves
from zoedu.experiments import private_training as ex
from zoedu.privacy import epsilon


def test_mean_estimation_curves_formula_matches_simulation_and_semi_dp_wins():
    df = curves.mean_estimation_curves(n_priv=200, n_pubs=(0, 10, 100), epsilons=(0.5, 4.0), d=5, trials=40)
    assert set(df.method) == {"semi_dp", "throw_away", "treat_as_private"}
    assert not ((df.method == "throw_away") & (df.n_pub == 0)).any()
    z = (df.mc_mse - df.mse).abs() / df.mc_se
    assert (z < 4.5).all(), df[z >= 4.5]
    for (_, _), g in df.groupby(["epsilon", "n_pub"]):
        semi = g[g.method == "semi_dp"].mse.iloc[0]
        assert semi <= g.mse.min() * (1 + 1e-12)
    # more public data lowers the semi-DP error; a larger ε moves weight to the private data
    semi = df[df.method == "semi_dp"].set_index(["epsilon", "n_pub"])
    assert semi.loc[(0.5, 100), "mse"] < semi.loc[(0.5, 10), "mse"] < semi.loc[(0.5, 0), "mse"]
    assert semi.loc[(4.0, 100), "weight_private"] > semi.loc[(0.5, 100), "weight_private"]


def test_epsilon_curve_is_the_accountant():
    df = curves.epsilon_curve(1.1, 0.02, 200, 1e-5, points=5)
    assert df.step.iloc[-1] == 200 and df.epsilon.is_monotonic_increasing
    assert df.epsilon.iloc[-1] == pytest.approx(epsilon(1.1, 0.02, 200, 1e-5), rel=1e-12)
    with pytest.raises(ValueError, match="accountant"):
        curves.epsilon_curve(accountants=("moments",))


def test_problems_respect_the_norm_bound_and_split():
    p = ex.regression_problem(n=300, d=50, public_fraction=0.1, n_tune=20, n_test=30)
    assert (p.n_private, p.n_public) == (270, 30)
    assert torch.allclose(p.x_private.norm(dim=1), torch.ones(270), atol=1e-5)
    c = ex.classification_problem("digits", public_fraction=0.03)
    assert c.outputs == 10 and c.n_public == round(0.03 * (c.n_private + c.n_public))
    assert c.x_tune.shape[0] + c.x_test.shape[0] > 500
    with pytest.raises(ValueError, match="dataset"):
        ex.load_problem("mnist", public_fraction=0.1)


def test_train_private_spends_at_most_the_target_and_learns():
    p = ex.classification_problem("breast_cancer", public_fraction=0.1)
    before = p.evaluate(p.model(), "test")["loss"]
    model, info = ex.train_private(p, "semi_dp", epsilon=2.0, beta=0.7, steps=25, lr=1.0, batch_size=32)
    assert 0 < info["epsilon_spent"] <= 2.0 and info["noise_multiplier"] > 0
    assert p.evaluate(model, "test")["loss"] < before
    _, info = ex.train_private(p, "throw_away", epsilon=2.0, steps=5, batch_size=8)
    assert info["epsilon_spent"] == 0.0 and info["noise_multiplier"] == 0.0
    _, union = ex.train_private(p, "treat_as_private", epsilon=2.0, steps=5, batch_size=32, account=False)
    assert union["sample_rate"] == pytest.approx(32 / (p.n_private + p.n_public))


def test_privacy_utility_sweep_fast():
    df = ex.privacy_utility_sweep("breast_cancer", (0.05,), (2.0,), fast=True, steps=30)
    assert list(df.method) == ["semi_dp", "throw_away", "treat_as_private"]
    assert df.test_loss.map(math.isfinite).all()
    semi = df[df.method == "semi_dp"].iloc[0]
    assert 0 < semi.beta < 1 and semi.noise_multiplier > 0
    assert df[df.method == "throw_away"].noise_multiplier.iloc[0] == 0
    summary = ex.sweep_summary(df)
    assert len(summary) == 1 and summary.semi_dp_best.iloc[0] == (
        summary.semi_dp.iloc[0] <= min(summary.throw_away.iloc[0], summary.treat_as_private.iloc[0]))
    assert "| dataset |" in ex.to_markdown(summary)
    for bad, match in [(dict(epsilons=(0.0,)), "epsilon"), (dict(public_fractions=(1.0,)), "public_fractions"),
                       (dict(dataset="mnist"), "dataset"), (dict(betas=(1.5,)), "betas")]:
        kw = dict(dataset="breast_cancer", public_fractions=(0.05,), epsilons=(1.0,))
        kw.update(bad)
        with pytest.raises(ValueError, match=match):
            ex.privacy_utility_sweep(**kw)


def test_cli(capsys):
    from zoedu.cli import main

    assert main(["privacy", "epsilon", "--steps", "40", "--sample-rate", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "epsilon" in out and "40" in out
    assert main(["privacy", "mean", "--trials", "3", "--n-priv", "50", "--epsilons", "1", "--markdown"]) == 0
    assert "| model |" in capsys.readouterr().out
    assert main(["privacy", "sweep", "--epsilons", "-1"]) == 2
    assert "epsilon" in capsys.readouterr().err
    np.testing.assert_array_equal(curves._floats("0.1, 1"), (0.1, 1.0))
