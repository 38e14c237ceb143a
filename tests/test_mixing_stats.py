"""Per-task gradient statistics (zoedu.mixing.stats): against direct computation, unbiasedness, bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from zoedu.mixing import (
    task_gradient_stats,
)


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


def test_scale_multiplies_every_gradient_before_the_statistics():
    # D ⊙ g for every task and example: norms, variances and cosines of the scaled gradients
    model, batches = _Net(), _task_batches(n=5)
    g = torch.Generator().manual_seed(3)
    params = list(model.parameters())
    scale = {p: torch.rand(p.shape, generator=g) + 0.1 for p in params[:3]}    # the last one: 1
    flat = torch.cat([scale.get(p, torch.ones(p.shape)).reshape(-1) for p in params]).double()
    for est in ("per-sample", "groups"):
        stats = task_gradient_stats(model, _loss, batches, variance=est, n_groups=5, chunk_size=2, scale=scale)
        means = torch.stack([_flat(model, _loss(model, b)) * flat for b in batches])
        np.testing.assert_allclose(stats.sq_norms, (means ** 2).sum(1).numpy(), rtol=1e-5)
        cos = torch.nn.functional.cosine_similarity(means[:, None, :], means[None, :, :], dim=-1)
        np.testing.assert_allclose(stats.cosine, cos.numpy(), atol=1e-5)
        for k, b in enumerate(batches):
            per = torch.stack([_flat(model, _loss(model, {"x": b["x"][i:i + 1], "labels": b["labels"][i:i + 1]}))
                               for i in range(len(b["x"]))]) * flat
            var = ((per - per.mean(0)) ** 2).sum(1).sum() / (len(per) - 1)
            assert stats.variances[k] == pytest.approx(float(var), rel=1e-4)
    plain = task_gradient_stats(model, _loss, batches, variance="groups", n_groups=5)
    assert not np.allclose(plain.sq_norms, stats.sq_norms)


@pytest.mark.parametrize("scale,match", [
    ([1.0], "scale must be None or a dict"),
    ("wrong-shape", "scale for a parameter of shape"),
    ("negative", "non-negative"),
])
def test_bad_scale(scale, match):
    model, batches = _Net(), _task_batches(n=4)
    p = next(model.parameters())
    if scale == "wrong-shape":
        scale = {p: torch.ones(3)}
    elif scale == "negative":
        scale = {p: -torch.ones(p.shape)}
    with pytest.raises(ValueError, match=match):
        task_gradient_stats(model, _loss, batches, scale=scale)


def test_noise_spread_is_unbiased_and_only_from_four_or_more_groups():
    from zoedu.mixing.stats import _noise_spread

    rng = np.random.default_rng(0)
    d = 30
    for directions in (1, 6, 30):                 # noise along 1, 6 or 30 directions, tr Σ = 3
        ev = np.zeros(d)
        ev[:directions] = 3.0 / directions
        sizes = [1, 2, 1, 3, 2]                   # unequal groups: g_j has covariance Σ/m_j
        mu = 0.2 + 0.1 * np.arange(d) / d
        est = np.array([_noise_spread(torch.tensor(np.stack([mu + rng.normal(size=d) * np.sqrt(ev / m)
                                                            for m in sizes])), sizes) for _ in range(3000)])
        assert est[:, 0].mean() == pytest.approx(float((ev ** 2).sum()), rel=0.08)       # tr Σ²
        if directions > 1:   # along one direction μᵀΣμ's estimate is heavy-tailed: s.d. 9× its mean
            assert est[:, 1].mean() == pytest.approx(float((mu ** 2 * ev).sum()), rel=0.2)  # μᵀΣμ
    model, batches = _Net(), _task_batches(n=6)
    four = task_gradient_stats(model, _loss, batches, n_groups=4)
    assert np.all(np.isfinite(four.cov_sq)) and np.all(np.isfinite(four.cov_along_mean))
    for stats in (task_gradient_stats(model, _loss, batches, n_groups=3),
                  task_gradient_stats(model, _loss, batches, variance="per-sample")):
        assert np.all(np.isnan(stats.cov_sq)) and np.all(np.isnan(stats.cov_along_mean))
