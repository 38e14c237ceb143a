"""Mean estimation with public data (zoedu.privacy.mean): the MSE formulas, semi-DP against both baselines."""

import math

import numpy as np
import pytest
import torch

from zoedu.privacy import mean_estimate, mean_mse, semi_dp_weights


# --------------------------------------------------------------------------- mean estimation
def rademacher(rng, n, d, radius):
    """Scaled random signs: ‖x‖ = radius exactly and μ = 0, so V = R² and mean_mse is exact."""
    return rng.choice([-1.0, 1.0], size=(n, d)) * radius / math.sqrt(d)


@pytest.mark.parametrize("model,delta", [("central", 1e-5), ("central", 0.0), ("local", 1e-5), ("local", 0.0)])
def test_monte_carlo_mse_matches_mean_mse_and_semi_dp_is_best(model, delta):
    rng = np.random.default_rng(1)
    n_priv, n_pub, d, R, eps = 120, 15, 4, 2.0, 1.0
    trials = 500
    results = {}
    for method in ("semi_dp", "throw_away", "treat_as_private"):
        errs = np.empty(trials)
        for t in range(trials):
            x = rademacher(rng, n_priv + n_pub, d, R)
            est = mean_estimate(x[:n_priv], x[n_priv:], epsilon=eps, delta=delta, radius=R,
                                method=method, model=model, seed=t)
            errs[t] = np.sum(est ** 2)
        formula = mean_mse(n_priv, n_pub, d, epsilon=eps, delta=delta, radius=R, method=method, model=model)
        se = errs.std(ddof=1) / math.sqrt(trials)
        assert abs(errs.mean() - formula) < 4 * se + 1e-12, (method, errs.mean(), formula, se)
        results[method] = (errs.mean(), formula)
    assert results["semi_dp"][1] <= min(results["throw_away"][1], results["treat_as_private"][1])
    assert results["semi_dp"][0] <= min(results["throw_away"][0], results["treat_as_private"][0]) * 1.1


def test_semi_dp_mse_never_exceeds_either_baseline():
    for model in ("central", "local"):
        for n_priv, n_pub in [(1000, 10), (1000, 100), (100, 1000), (50, 5), (5000, 150)]:
            for eps in (0.1, 1.0, 8.0):
                for delta in (0.0, 1e-6):
                    kw = dict(epsilon=eps, delta=delta, radius=1.0, model=model)
                    semi = mean_mse(n_priv, n_pub, 20, method="semi_dp", **kw)
                    assert semi <= mean_mse(n_priv, n_pub, 20, method="throw_away", **kw) * (1 + 1e-12)
                    assert semi <= mean_mse(n_priv, n_pub, 20, method="treat_as_private", **kw) * (1 + 1e-12)
                    a, b = semi_dp_weights(n_priv, n_pub, 20, **kw)
                    assert n_pub * a + n_priv * b == pytest.approx(1.0)
                    assert 0 <= b <= 1 / n_priv


def test_semi_dp_weights_move_to_the_private_data_as_epsilon_grows():
    kw = dict(radius=1.0, delta=1e-5)
    b_small = semi_dp_weights(2000, 60, 50, epsilon=0.1, **kw)[1]
    b_large = semi_dp_weights(2000, 60, 50, epsilon=50.0, **kw)[1]
    assert b_small < b_large
    assert b_large * 2000 > 0.5  # with little noise most weight goes to the 2000 private rows


def test_norm_bound_is_refused_or_clipped_never_silently():
    rng = np.random.default_rng(0)
    priv, pub = rng.normal(size=(30, 3)), rng.normal(size=(5, 3)) * 0.1
    with pytest.raises(ValueError, match="radius"):
        mean_estimate(priv, pub, epsilon=1.0, radius=0.5)
    clipped = mean_estimate(priv, pub, epsilon=1.0, radius=0.5, clip=True, method="treat_as_private",
                            delta=1e-5, seed=3)
    by_hand = priv * np.minimum(1, 0.5 / np.linalg.norm(priv, axis=1))[:, None]
    manual = mean_estimate(by_hand, pub, epsilon=1.0, radius=0.5, method="treat_as_private",
                           delta=1e-5, seed=3)
    np.testing.assert_allclose(clipped, manual)


def test_empty_sets_behave_as_documented():
    rng = np.random.default_rng(0)
    priv, pub = rademacher(rng, 40, 3, 1.0), rademacher(rng, 10, 3, 1.0)
    kw = dict(epsilon=1.0, radius=1.0, delta=1e-5)
    # no private data: semi-DP is the exact public mean
    np.testing.assert_allclose(mean_estimate(None, pub, **kw), pub.mean(0))
    np.testing.assert_allclose(mean_estimate(np.zeros((0, 3)), pub, **kw), pub.mean(0))
    # no public data: semi-DP is treat-as-private on the private rows
    np.testing.assert_allclose(mean_estimate(priv, None, seed=5, **kw),
                               mean_estimate(priv, None, seed=5, method="treat_as_private", **kw))
    with pytest.raises(ValueError, match="throw_away.*public"):
        mean_estimate(priv, None, method="throw_away", **kw)
    with pytest.raises(ValueError, match="empty"):
        mean_estimate(None, np.zeros((0, 3)), **kw)
    out = mean_estimate(torch.tensor(priv), torch.tensor(pub), **kw)
    assert torch.is_tensor(out) and out.shape == (3,)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,match", [
    (dict(epsilon=0.0), "epsilon"), (dict(epsilon=-1.0), "epsilon"),
    (dict(delta=1.0), "delta"), (dict(delta=-0.1), "delta"),
    (dict(radius=0.0), "radius"), (dict(method="both"), "method.*allowed"),
    (dict(model="federated"), "model.*allowed"),
])
def test_mean_estimate_bad_input(kwargs, match):
    args = dict(epsilon=1.0, delta=1e-5, radius=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mean_estimate(np.zeros((3, 2)), np.zeros((2, 2)), **args)
