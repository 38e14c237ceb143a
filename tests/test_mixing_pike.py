"""PiKE and Balanced-PiKE (zoedu.mixing.pike): Algorithm 1, the noise-aware step, bounds, bad input."""

import numpy as np
import pytest

from zoedu.mixing import (
    BalancedPiKE,
    PiKE,
)


# --------------------------------------------------------------------------- PiKE
def test_pike_weights_stay_on_the_simplex_and_batch_sizes_sum_to_b():
    rng = np.random.default_rng(0)
    p = PiKE(5, zeta1=3.0, zeta2=2.0, batch_size=8)
    for _ in range(30):
        w = p.update(rng.exponential(size=5) * 10 ** rng.uniform(-3, 3), rng.exponential(size=5) * 100)
        assert np.all(w >= p.min_weight - 1e-12) and np.all(w <= 1)
        assert w.sum() == pytest.approx(1.0, abs=1e-12)
        for b in (5, 8, 13, 64):
            assert p.batch_sizes(b).sum() == b
            assert p.batch_sizes(b, rng=rng).sum() == b
            assert np.all(p.batch_sizes(b, require_all=True) >= 1)


def test_pike_moves_toward_the_larger_gradient_at_equal_variance():
    p = PiKE(3)
    w = p.update([1.0, 2.0, 4.0], [1.0, 1.0, 1.0])
    assert w[2] > w[1] > w[0]
    assert w[2] > 1 / 3 > w[0]


def test_pike_moves_away_from_the_noisier_task_at_equal_norm():
    p = PiKE(3, batch_size=4)
    w = p.update([1.0, 1.0, 1.0], [0.0, 4.0, 16.0])
    assert w[0] > w[1] > w[2]
    assert w[0] > 1 / 3 > w[2]


def test_pike_update_is_the_exponentiated_step_of_algorithm_1():
    p = PiKE(2, zeta1=0.5, zeta2=2.0, batch_size=4, min_weight=0.0, normalize=False)
    sq, var = np.array([0.3, 0.1]), np.array([1.0, 0.2])
    w = p.update(sq, var)
    expect = 0.5 * np.exp(0.5 * sq - 2.0 / (2 * 4) * var)
    np.testing.assert_allclose(w, expect / expect.sum())
    # with normalize=True the step is scale-free: multiplying both statistics by 1e6 changes nothing
    a, b = PiKE(2), PiKE(2)
    np.testing.assert_allclose(a.update(sq, var), b.update(sq * 1e6, var * 1e6))


def test_min_weight_keeps_every_task_sampled():
    p = PiKE(4, zeta1=50.0, min_weight=0.02)
    for _ in range(5):
        w = p.update([10.0, 0.0, 0.0, 0.0], [0.0] * 4)
    assert w.min() == pytest.approx(0.02)
    assert w[0] == pytest.approx(1 - 3 * 0.02)


def test_balanced_pike_with_large_tau_favours_the_worst_task():
    bp = BalancedPiKE(3, tau=20.0)
    w = bp.update([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], losses=[2.0, 3.0, 2.5])
    assert np.argmax(w) == 1 and w[1] > 0.5
    # plain PiKE sees three identical tasks and stays uniform
    np.testing.assert_allclose(PiKE(3).update([1.0] * 3, [1.0] * 3), 1 / 3)


def test_balanced_pike_with_small_tau_is_pike():
    stats = ([0.5, 2.0, 1.0], [3.0, 1.0, 2.0])
    np.testing.assert_allclose(BalancedPiKE(3, tau=1e-9).update(*stats, losses=[1.0, 9.0, 4.0]),
                               PiKE(3).update(*stats), rtol=1e-6)


def test_one_update_moves_log_weights_by_at_most_max_log_step():
    p = PiKE(3, zeta1=100.0, min_weight=0.0, max_log_step=0.5)
    w = p.update([1.0, 0.0, 1e3], [0.0, 0.0, 0.0])
    moved = np.log(w) - np.log(1 / 3)
    assert np.ptp(moved) <= 2 * 0.5 + 1e-9          # relative moves bounded on both sides
    assert w[2] > w[0] >= w[1]
    # the default bound does not bind on moderate statistics: Algorithm 1's step exactly
    q = PiKE(2, min_weight=0.0)
    sq, var = np.array([0.3, 0.1]), np.array([1.0, 0.2])
    expect = np.exp((sq - var / 32) / sq.mean())
    np.testing.assert_allclose(q.update(sq, var), expect / expect.sum())


def test_noise_aware_pike_with_noise_free_statistics_is_algorithm_1_exactly():
    rng = np.random.default_rng(1)
    shrunk, plain = PiKE(4, batch_size=8, shrink=True), PiKE(4, batch_size=8)
    for _ in range(6):
        sq = rng.exponential(size=4)
        w = shrunk.update(sq, np.zeros(4), n_examples=[4] * 4)   # σ̂ = 0: the statistics are exact
        np.testing.assert_array_equal(w, plain.update(sq, np.zeros(4)))
        np.testing.assert_array_equal(shrunk.shrink_factors, 1.0)
    assert not np.allclose(w, 0.25)
    # without n_examples the noise is unknown and nothing is shrunk either
    a, b = PiKE(3, shrink=True), PiKE(3)
    np.testing.assert_array_equal(a.update([1.0, 2.0, 4.0], [3.0] * 3), b.update([1.0, 2.0, 4.0], [3.0] * 3))


def test_noise_aware_pike_does_not_move_on_scores_within_their_standard_error():
    p = PiKE(3, batch_size=16, shrink=True)
    sq, var, n = [1.0, 1.3, 0.8], [40.0, 40.0, 40.0], [4, 4, 4]
    se = p.score_se(sq, var, n)
    scores = p._scores(np.array(sq), np.array(var), np.ones(3))
    assert np.ptp(scores) < se.min()                            # indistinguishable within one SE
    for _ in range(3):
        w = p.update(sq, var, n_examples=n)
    np.testing.assert_allclose(w, 1 / 3, rtol=0, atol=1e-15)   # the weights PiKE uses stay put
    assert not np.allclose(p.raw_weights, 1 / 3)                # Algorithm 1 alone would have moved
    np.testing.assert_array_equal(p.shrink_factors, 0.0)


def test_noise_aware_pike_keeps_a_clear_difference():
    # the same scores from many examples: the SE is small and the move is (almost) all kept
    p = PiKE(3, batch_size=16, shrink=True)
    for _ in range(3):
        w = p.update([1.0, 1.3, 0.8], [40.0, 40.0, 40.0], n_examples=[40000] * 3)
    assert np.all(p.shrink_factors[1:] > 0.9)                   # the two tasks that moved (task 0 stays mid)
    assert w[1] > w[0] > w[2]
    moved, raw = np.log(w / w.mean()), np.log(p.raw_weights / p.raw_weights.mean())
    np.testing.assert_allclose(moved, raw, atol=0.1 * np.abs(raw).max())


def test_score_standard_error_matches_the_sampling_spread_of_gaussian_statistics():
    # rank-one Gaussian noise (all along the gradient): the bound in the docstring is exact there
    rng = np.random.default_rng(0)
    mu, sigma, n, K = 1.0, 2.0, 8, 2
    p = PiKE(K, batch_size=16, normalize=False)
    scores = []
    for _ in range(20000):
        g = mu + sigma * rng.standard_normal(n)
        v = g.var(ddof=1)
        sq = g.mean() ** 2 - v / n
        scores.append(p.zeta1 * sq - p.zeta2 / (2 * 16) * v)
    se = p.score_se([mu ** 2] * K, [sigma ** 2] * K, [n] * K)
    assert np.std(scores) == pytest.approx(se[0], rel=0.05)


def test_synthetic_sweep_noise_aware_pike_is_no_worse_than_uniform_without_opposition():
    from zoedu.experiments.mixing import conflict_sweep

    sweep = conflict_sweep((1.0, 0.0), methods=("uniform", "pike"), shrink=True).set_index(["cosine", "method"])
    for c in (1.0, 0.0):
        assert sweep.loc[(c, "pike"), "auc_average"] <= sweep.loc[(c, "uniform"), "auc_average"]


@pytest.mark.parametrize("call, match", [
    (lambda: PiKE(1), "n_tasks"),
    (lambda: PiKE(3).update([1.0, 2.0], [1.0, 1.0, 1.0]), "sq_norms"),
    (lambda: PiKE(2).update([1.0, -2.0], [1.0, 1.0]), "non-negative"),
    (lambda: PiKE(2).update([1.0, 2.0], [-1.0, 1.0]), "variances"),
    (lambda: PiKE(2).update([1.0, np.nan], [1.0, 1.0]), "finite"),
    (lambda: PiKE(2).update([1.0, 1.0], [np.inf, 1.0]), "finite"),
    (lambda: PiKE(3).batch_sizes(2, require_all=True), "b=2"),
    (lambda: PiKE(2, zeta1=0.0), "zeta1"),
    (lambda: PiKE(2, zeta2=-1.0), "zeta2"),
    (lambda: PiKE(2, update_every=0), "update_every"),
    (lambda: PiKE(4, min_weight=0.25), "min_weight"),
    (lambda: PiKE(2, max_log_step=0.0), "max_log_step"),
    (lambda: PiKE(2, shrink="yes"), "shrink"),
    (lambda: PiKE(2).update([1.0, 1.0], [1.0, 1.0], n_examples=[1, 4]), "n_examples"),
    (lambda: PiKE(2).update([1.0, 1.0], [1.0, 1.0], n_examples=[4, 4, 4]), "n_examples"),
    (lambda: BalancedPiKE(2, tau=0.0), "tau"),
    (lambda: BalancedPiKE(2, tau=-1.0), "tau"),
    (lambda: BalancedPiKE(2).update([1.0, 1.0], [1.0, 1.0]), "losses"),
    (lambda: BalancedPiKE(2).update([1.0, 1.0], [1.0, 1.0], [1.0, np.nan]), "finite"),
])
def test_pike_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_finite_statistics_leave_the_weights_untouched():
    p = PiKE(2)
    p.update([1.0, 3.0], [1.0, 1.0])
    before = p.weights
    with pytest.raises(ValueError):
        p.update([np.nan, 1.0], [1.0, 1.0])
    np.testing.assert_array_equal(p.weights, before)


def test_pike_without_a_step_bound_is_algorithm_1_even_for_large_scores():
    w0 = np.array([0.1, 0.2, 0.3, 0.4])
    sq, var = np.array([9.0, 0.5, 0.1, 3.0]), np.array([1.0, 2.0, 0.5, 4.0])
    got = PiKE(4, batch_size=8, min_weight=0.0, normalize=False, weights=w0, max_log_step=None).update(sq, var)
    expect = w0 * np.exp(sq - var / 16)
    np.testing.assert_allclose(got, expect / expect.sum(), rtol=1e-12)
    bounded = PiKE(4, batch_size=8, min_weight=0.0, normalize=False, weights=w0).update(sq, var)
    assert not np.allclose(bounded, got)  # the default bound (2) binds on these scores
