"""Semi-DP that adapts: variance="public" for the mean estimator and rule (5) for SemiDPSGD's β."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoedu.privacy import (
    PUBLIC_MIN,
    SemiDPSGD,
    mean_estimate,
    mean_mse,
    public_variance,
    semi_dp_weights,
)


def sphere_rows(rng, n, mu, spread):
    u = rng.standard_normal((n, mu.size))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return mu + spread * u


def monte_carlo(n_priv, n_pub, d, eps, ratio, trials, seed=0):
    rng = np.random.default_rng(seed)
    spread = math.sqrt(ratio)
    mu = np.zeros(d)
    mu[0] = (1 - spread) * (1 - 1e-9)
    errs = {k: np.empty(trials) for k in ("worst", "public", "throw_away", "treat_as_private")}
    for t in range(trials):
        priv, pub = sphere_rows(rng, n_priv, mu, spread), sphere_rows(rng, n_pub, mu, spread)
        kw = dict(epsilon=eps, delta=1e-5, radius=1.0, seed=t)
        for key, extra in (("worst", {}), ("public", dict(variance="public")),
                           ("throw_away", dict(method="throw_away")),
                           ("treat_as_private", dict(method="treat_as_private"))):
            errs[key][t] = np.sum((mean_estimate(priv, pub, **kw, **extra) - mu) ** 2)
    return {k: (v.mean(), v.std(ddof=1) / math.sqrt(trials)) for k, v in errs.items()}


@pytest.mark.parametrize("n_priv,n_pub,d,eps,ratio", [
    (2000, 300, 20, 0.3, 0.04),       # the example: worst case 5.4× throw-away
    (190, 10, 2, 1.0, 0.01),          # tiny public set, low dimension
    (950, 50, 50, 8.0, 0.1),          # large ε: the private data should count
    (380, 20, 5, 0.1, 1.0),           # worst-case data: the estimate is R² and nothing changes
])
def test_public_variance_is_within_ten_percent_of_the_better_baseline(n_priv, n_pub, d, eps, ratio):
    mc = monte_carlo(n_priv, n_pub, d, eps, ratio, trials=200)
    best = min(mc["throw_away"][0], mc["treat_as_private"][0])
    assert mc["public"][0] <= 1.1 * best + 3 * mc["public"][1], mc
    # and the formula at the estimate's target (the plug-in) matches the simulation
    formula = mean_mse(n_priv, n_pub, d, epsilon=eps, delta=1e-5, radius=1.0, variance="public",
                       true_variance=ratio)
    assert abs(mc["public"][0] - formula) < 4 * mc["public"][1] + 0.05 * formula, (mc["public"], formula)
    worst = mean_mse(n_priv, n_pub, d, epsilon=eps, delta=1e-5, radius=1.0, true_variance=ratio)
    assert abs(mc["worst"][0] - worst) < 4 * mc["worst"][1], (mc["worst"], worst)


def test_worst_case_weights_lose_where_the_data_is_concentrated():
    kw = dict(epsilon=0.3, delta=1e-5, radius=1.0)
    worst = mean_mse(2000, 300, 20, true_variance=0.04, **kw)
    public = mean_mse(2000, 300, 20, variance="public", true_variance=0.04, **kw)
    throw = mean_mse(2000, 300, 20, method="throw_away", true_variance=0.04, **kw)
    assert worst > 4 * throw and public <= throw
    # worst-case data: public and worst case coincide; variance=None keeps the old meaning
    assert mean_mse(2000, 300, 20, variance="public", **kw) == pytest.approx(mean_mse(2000, 300, 20, **kw))


def test_public_variance_estimate_and_its_guard():
    rng = np.random.default_rng(0)
    x = sphere_rows(rng, 400, np.zeros(10), 0.5)
    assert public_variance(x, 1.0) == pytest.approx(0.25, rel=0.02)
    assert public_variance(x[:PUBLIC_MIN - 1], 1.0) == 1.0           # too few rows: the worst case R²
    assert public_variance(x * 3, 1.0) == 1.0                        # capped at R²
    # with one public row mean_estimate falls back to the worst-case weights
    priv = sphere_rows(rng, 50, np.zeros(10), 0.5)
    a = mean_estimate(priv, x[:1], epsilon=1.0, radius=1.0, variance="public", seed=1)
    b = mean_estimate(priv, x[:1], epsilon=1.0, radius=1.0, seed=1)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="variance"):
        mean_estimate(priv, x, epsilon=1.0, radius=1.0, variance="estimated")
    with pytest.raises(ValueError, match="variance"):
        mean_mse(10, 5, 2, epsilon=1.0, radius=1.0, variance="estimated")
    with pytest.raises(ValueError, match="true_variance"):
        mean_mse(10, 5, 2, epsilon=1.0, radius=1.0, true_variance=2.0)
    with pytest.raises(ValueError, match="mean_estimate resolves"):
        semi_dp_weights(10, 5, 2, epsilon=1.0, radius=1.0, variance="public")


def ce(model, batch):
    return F.cross_entropy(model(batch["x"]), batch["y"])


def test_semi_dp_sgd_beta_rules():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2)
    g = torch.Generator().manual_seed(1)
    batch = {"x": torch.randn(16, 5, generator=g), "y": torch.randint(0, 2, (16,), generator=g)}
    rule = dict(n_private=500, n_public=20, epsilon=1.0, delta=1e-5)
    worst = SemiDPSGD(model, ce, lr=0.1, beta="worst_case", noise_multiplier=1.0, max_grad_norm=1.0, **rule)
    b_worst = worst.beta
    _, bw = semi_dp_weights(500, 20, 12, epsilon=1.0, delta=1e-5, radius=1.0)
    assert b_worst == pytest.approx(500 * bw)
    assert worst.step(batch, batch)["beta"] == pytest.approx(b_worst)       # fixed
    adaptive = SemiDPSGD(model, ce, lr=0.1, beta="public", noise_multiplier=1.0, max_grad_norm=1.0, **rule)
    # β from the public batch's clipped per-sample gradient variance, which a loop reproduces
    grads = []
    for i in range(16):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        gi = torch.cat([t.reshape(-1) for t in torch.autograd.grad(ce(model, one), list(model.parameters()))])
        grads.append(gi * min(1.0, 1.0 / (float(gi.norm()) + 1e-6)))
    G = torch.stack(grads).double()
    v = float(((G - G.mean(0)) ** 2).sum() / 15)
    out = adaptive.step(batch, batch)
    assert out["public_variance"] == pytest.approx(v, rel=1e-4)
    assert out["beta"] == pytest.approx(adaptive.rule_beta(v)) and 0 < out["beta"] < b_worst
    with pytest.raises(ValueError, match="needs n_private"):
        SemiDPSGD(model, ce, lr=0.1, beta="public", noise_multiplier=1.0, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="beta="):
        SemiDPSGD(model, ce, lr=0.1, beta="best", noise_multiplier=1.0, max_grad_norm=1.0, **rule)


def test_fit_semi_dp_with_a_beta_rule():
    from zoedu.tasks import load_task
    from zoedu.train import fit

    task = load_task("tabular", dataset="breast_cancer")
    torch.manual_seed(0)
    h = fit(torch.nn.Linear(30, 2), task, "semi_dp", steps=5, lr=0.5, batch_size=32, quiet=True,
            track_memory=False, eval_every=0, public_fraction=0.1, beta="public", target_epsilon=1.0)
    assert h["beta"].between(0, 1).all() and h["beta"].nunique() > 1 and h["epsilon"].iloc[-1] <= 1.0
    with pytest.raises(ValueError, match="target_epsilon"):
        fit(torch.nn.Linear(30, 2), task, "semi_dp", steps=2, lr=0.5, quiet=True, track_memory=False,
            eval_every=0, public_fraction=0.1, beta="public", noise_multiplier=1.0)


def test_variance_experiments_and_figure():
    from zoedu.experiments.privacy import (
        adaptive_grid,
        privacy_utility_sweep,
        sweep_summary,
        variance_curves,
    )
    from zoedu.viz.privacy import variance_figure

    curves = variance_curves(n_priv=300, n_pub=30, d=5, ratios=(0.01, 1.0), epsilon=1.0, trials=30)
    assert set(curves.estimator) == {"semi_dp (worst case)", "semi_dp (public V̂)", "throw_away", "treat_as_private"}
    fig = variance_figure(curves)
    assert len(fig.data) == 8 and fig.layout.xaxis.title.text == "data variance V / R²"
    grid = adaptive_grid(ns=(200,), public_shares=(0.1,), ds=(3,), epsilons=(0.5,), ratios=(0.01,), trials=300)
    assert len(grid) == 1 and grid.public_ratio.iloc[0] <= 1.1 + 3 * grid.public_ratio_se.iloc[0]
    assert grid.worst_case_ratio.iloc[0] > 2                 # the worst case is far off when V ≪ R²
    sweep = privacy_utility_sweep("breast_cancer", public_fractions=(0.1,), epsilons=(1.0,), methods=(),
                                  beta_rules=("worst_case",), steps=5)
    assert list(sweep.method) == ["semi_dp_worst_case"] and 0 < sweep.beta.iloc[0] < 1
    assert "beta_worst_case" in sweep_summary(sweep)
