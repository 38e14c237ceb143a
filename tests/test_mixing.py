"""Samplers, PiKE / Balanced-PiKE, task gradient statistics and PCGrad/MGDA (no language model)."""

import numpy as np
import pytest
import torch
from torch import nn

from zoedu.mixing import (
    BalancedPiKE,
    PiKE,
    Proportional,
    RandomTask,
    RoundRobin,
    Static,
    Uniform,
    aggregate,
    apportion,
    mgda,
    pcgrad,
    task_gradient_stats,
)


# --------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("b", [1, 7, 16, 33])
def test_apportion_sums_to_b_and_is_close_to_the_shares(b):
    rng = np.random.default_rng(0)
    for _ in range(50):
        w = rng.dirichlet(np.ones(5))
        for r in (None, rng):
            c = apportion(w, b, rng=r)
            assert c.sum() == b and np.all(c >= 0)
            assert np.all(np.abs(c - b * w) < 1 + 1e-9)


def test_apportion_with_a_generator_is_unbiased():
    w = np.array([0.02, 0.18, 0.8])
    rng = np.random.default_rng(1)
    mean = np.mean([apportion(w, 10, rng=rng) for _ in range(4000)], axis=0)
    np.testing.assert_allclose(mean, 10 * w, atol=0.04)
    assert apportion(w, 10)[0] == 0        # deterministic rounding never gives the 0.2 share


def test_uniform_counts_are_equal_and_remainders_rotate():
    s = Uniform(4)
    np.testing.assert_array_equal(s.counts(16), [4, 4, 4, 4])
    total = sum(s.counts(10, step=t) for t in range(4))
    np.testing.assert_array_equal(total, [10, 10, 10, 10])
    assert all(s.counts(10, step=t).sum() == 10 for t in range(7))


def test_proportional_follows_sizes_and_temperature():
    s = Proportional([100, 300, 600])
    np.testing.assert_allclose(s.weights, [0.1, 0.3, 0.6])
    np.testing.assert_array_equal(s.counts(10), [1, 3, 6])
    hot = Proportional([100, 300, 600], temperature=2.0)
    w = np.sqrt([100, 300, 600])
    np.testing.assert_allclose(hot.weights, w / w.sum())
    np.testing.assert_allclose(Proportional([100, 300, 600], temperature=1e6).weights, 1 / 3, atol=1e-4)


def test_static_round_robin_and_random_task():
    np.testing.assert_array_equal(Static([0.5, 0.25, 0.25]).counts(8), [4, 2, 2])
    rr = RoundRobin(3)
    assert [int(np.argmax(rr.counts(5, step=t))) for t in range(6)] == [0, 1, 2, 0, 1, 2]
    assert all(rr.counts(5, step=t).max() == 5 for t in range(3))
    rt = RandomTask(2, weights=[0.8, 0.2])
    rng = np.random.default_rng(0)
    picks = [rt.task(rng=rng) for _ in range(2000)]
    assert abs(np.mean(picks) - 0.2) < 0.03
    c = rt.counts(6, rng=rng)
    assert c.sum() == 6 and c.max() == 6


@pytest.mark.parametrize("call, match", [
    (lambda: Uniform(1), "n_tasks"),
    (lambda: Static([0.5, 0.6]), "sum to 1"),
    (lambda: Static([1.5, -0.5]), r"\[0, 1\]"),
    (lambda: Static([1.0]), "at least 2"),
    (lambda: Proportional([10, -1]), "sizes"),
    (lambda: Proportional([10, 20], temperature=0), "temperature"),
    (lambda: Uniform(4).counts(3, require_all=True), "b=3"),
    (lambda: apportion([0.5, 0.5], 0), "b=0"),
    (lambda: RoundRobin(2).counts(4, require_all=True), "require_all"),
    (lambda: RandomTask(2).task(), "rng"),
])
def test_sampler_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


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


# --------------------------------------------------------------------------- statistics
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x):
        return self.body(x)


def _loss(model, batch):
    return nn.functional.cross_entropy(model(batch["x"]), batch["labels"])


def _task_batches(n=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(k):
        x = torch.randn(n, 5, generator=g) + t            # shifted inputs: genuinely different tasks
        out.append({"x": x, "labels": torch.randint(0, 3, (n,), generator=g)})
    return out


def _flat(model, loss):
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads]).double()


def test_stats_equal_a_direct_computation():
    model, batches = _Net(), _task_batches()
    stats = task_gradient_stats(model, _loss, batches, variance="per-sample", chunk_size=4)
    means = torch.stack([_flat(model, _loss(model, b)) for b in batches])
    cos = torch.nn.functional.cosine_similarity(means[:, None, :], means[None, :, :], dim=-1)
    np.testing.assert_allclose(stats.cosine, cos.numpy(), atol=1e-5)
    np.testing.assert_allclose(stats.sq_norms, (means ** 2).sum(1).numpy(), rtol=1e-5)
    for k, b in enumerate(batches):                     # per-example variance, by a loop
        per = torch.stack([_flat(model, _loss(model, {"x": b["x"][i:i + 1], "labels": b["labels"][i:i + 1]}))
                           for i in range(len(b["x"]))])
        var = ((per - per.mean(0)) ** 2).sum(1).sum() / (len(per) - 1)
        assert stats.variances[k] == pytest.approx(float(var), rel=1e-4)
        assert stats.losses[k] == pytest.approx(float(_loss(model, b).detach()), rel=1e-5)
    assert np.all(np.diag(stats.cosine) == 1.0)
    assert all(p.grad is None for p in model.parameters())


def test_group_estimator_with_one_example_per_group_is_the_per_sample_estimator():
    model, batches = _Net(), _task_batches(n=5)
    a = task_gradient_stats(model, _loss, batches, variance="per-sample", chunk_size=2)
    b = task_gradient_stats(model, _loss, batches, variance="groups", n_groups=5)
    np.testing.assert_allclose(a.variances, b.variances, rtol=1e-4)
    np.testing.assert_allclose(a.cosine, b.cosine, atol=1e-6)
    assert b.backward_passes == 15 and a.backward_passes == 9   # 3 tasks × 5 groups; 3 × ⌈5/2⌉ chunks


def test_group_variance_estimator_is_unbiased():
    # linear least squares: per-example gradient (xᵀw − y)x, true σ² known in closed form at w
    torch.manual_seed(0)
    lin = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]))

    def loss(model, batch):
        return 0.5 * ((model(batch["x"]).squeeze(1) - batch["y"]) ** 2).mean()

    g = torch.Generator().manual_seed(1)
    big = torch.randn(200_000, 3, generator=g)
    big_y = torch.randn(200_000, generator=g)
    with torch.no_grad():
        r = lin(big).squeeze(1) - big_y
        per = r[:, None] * big
        true_var = float(((per - per.mean(0)) ** 2).sum(1).mean())
    estimates = []
    for rep in range(300):
        batches = []
        for _ in range(2):
            x = torch.randn(8, 3, generator=g)
            batches.append({"x": x, "y": torch.randn(8, generator=g)})
        estimates.append(task_gradient_stats(lin, loss, batches, variance="groups", n_groups=4).variances[0])
    assert np.mean(estimates) == pytest.approx(true_var, rel=0.1)


@pytest.mark.parametrize("kwargs, match, exc", [
    (dict(batches="one"), "sequence", ValueError),
    (dict(variance="exact"), "variance", ValueError),
    (dict(n_groups=1), "n_groups", ValueError),
    (dict(chunk_size=0), "chunk_size", ValueError),
])
def test_stats_bad_input(kwargs, match, exc):
    model, batches = _Net(), _task_batches()
    args = dict(batches=batches)
    args.update(kwargs)
    if args["batches"] == "one":
        args["batches"] = batches[:1]
    with pytest.raises(exc, match=match):
        task_gradient_stats(model, _loss, **args)


def test_stats_reject_single_examples_and_nan_losses():
    model, batches = _Net(), _task_batches()
    with pytest.raises(ValueError, match="at least 2"):
        task_gradient_stats(model, _loss, [batches[0], {"x": batches[1]["x"][:1], "labels": batches[1]["labels"][:1]}])
    bad = dict(batches[1], x=batches[1]["x"].clone())
    bad["x"][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="task 1"):
        task_gradient_stats(model, _loss, [batches[0], bad])


# --------------------------------------------------------------------------- PCGrad / MGDA
def test_pcgrad_matches_the_two_task_projection():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2           # Yu et al. 2020, Alg. 1: project out the conflict
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    torch.testing.assert_close(pcgrad(torch.stack([g1, g2])), (p1 + p2) / 2)
    # no conflict: PCGrad is the plain mean
    G = torch.tensor([[1.0, 0.2], [0.5, 1.0]])
    torch.testing.assert_close(pcgrad(G), G.mean(0))
    torch.testing.assert_close(aggregate(G, "mean"), G.mean(0))


def test_mgda_is_the_min_norm_point_of_two_gradients():
    g1, g2 = torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([-0.5, 1.0], dtype=torch.float64)
    alpha = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))   # Sener & Koltun 2018, Eq. 4
    alpha = min(max(alpha, 0.0), 1.0)
    expect = alpha * g1 + (1 - alpha) * g2
    got = mgda(torch.stack([g1, g2]), epsilon=1e-9, max_iters=1000)
    torch.testing.assert_close(got, expect, atol=1e-4, rtol=1e-4)
    # the min-norm point is no longer than either gradient and does not conflict with either
    assert got.norm() <= min(g1.norm(), g2.norm()) + 1e-9
    assert float(got @ g1) >= -1e-6 and float(got @ g2) >= -1e-6


@pytest.mark.parametrize("grads, method, match", [
    (torch.ones(3), "pcgrad", "matrix"),
    (torch.ones(1, 3), "mgda", "K ≥ 2"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "pcgrad", "NaN"),
    (torch.ones(2, 3), "nash", "allowed"),
])
def test_aggregate_bad_input(grads, method, match):
    with pytest.raises(ValueError, match=match):
        aggregate(grads, method)


def test_pike_without_a_step_bound_is_algorithm_1_even_for_large_scores():
    w0 = np.array([0.1, 0.2, 0.3, 0.4])
    sq, var = np.array([9.0, 0.5, 0.1, 3.0]), np.array([1.0, 2.0, 0.5, 4.0])
    got = PiKE(4, batch_size=8, min_weight=0.0, normalize=False, weights=w0, max_log_step=None).update(sq, var)
    expect = w0 * np.exp(sq - var / 16)
    np.testing.assert_allclose(got, expect / expect.sum(), rtol=1e-12)
    bounded = PiKE(4, batch_size=8, min_weight=0.0, normalize=False, weights=w0).update(sq, var)
    assert not np.allclose(bounded, got)  # the default bound (2) binds on these scores
