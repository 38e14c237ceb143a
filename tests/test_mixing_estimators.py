"""PiKE's better statistics: averages across statistics steps, the training-loss tilt, the noise experiment."""

import copy

import numpy as np
import pytest

from zoedu.mixing import BalancedPiKE, MixedBatchSource, PiKE


class Recording(BalancedPiKE):
    """Balanced-PiKE that records what it is given."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen = []

    def update(self, sq_norms, variances, losses=None, n_examples=None):
        self.seen.append((np.array(sq_norms), np.array(variances), np.array(losses),
                          None if n_examples is None else np.array(n_examples)))
        return super().update(sq_norms, variances, losses, n_examples)


@pytest.fixture(scope="module")
def corpus(tokenizer):
    from zoedu.tasks import load_task

    return load_task("multidomain", tokenizer=tokenizer, domains=("prose", "noise", "duplicated"),
                     sizes=[10, 10, 10], n_validation=2, max_length=16)


@pytest.fixture(scope="module")
def gpt2():
    from zoedu.models import load_model

    return load_model("tiny-gpt2", size="1m", seed=0)[0]


def run(gpt2, corpus, source, steps=6):
    from zoedu.train import fit

    return fit(copy.deepcopy(gpt2), corpus, "adam", steps=steps, lr=3e-3, batch_size=6, quiet=True,
               track_memory=False, device="cpu", eval_every=0, mixer=source)


def test_smoothing_is_the_bias_corrected_average_of_the_draws(gpt2, corpus):
    plain = Recording(3, update_every=1, shrink=True)
    run(gpt2, corpus, MixedBatchSource(plain, stats_every=1, n_groups=2), steps=3)
    avg = Recording(3, update_every=1, shrink=True)
    run(gpt2, corpus, MixedBatchSource(avg, stats_every=1, n_groups=2, smoothing=0.5), steps=1)
    # the first update: the average of one draw is the draw itself, n_eff = n
    np.testing.assert_allclose(avg.seen[0][0], plain.seen[0][0])
    np.testing.assert_allclose(avg.seen[0][3], plain.seen[0][3])
    # by hand: two draws x1, x2 → (0.25 x1 + 0.5 x2)/0.75, n_eff = n·0.75²/(0.0625 + 0.25)
    src = MixedBatchSource("uniform", smoothing=0.5)

    class S:
        def __init__(self, g, v, l):
            self.unbiased_sq_norms, self.variances, self.losses = np.array(g), np.array(v), np.array(l)
            self.n_examples = np.array([4, 4])

    src._average(S([1.0, 2.0], [4.0, 4.0], [3.0, 1.0]))
    g, v, l, n, spread, along = src._average(S([3.0, 0.0], [0.0, 8.0], [1.0, 1.0]))
    assert np.isnan(spread).all() and np.isnan(along).all()   # statistics without tr Σ²: the bound is used
    np.testing.assert_allclose(g, [(0.25 * 1 + 0.5 * 3) / 0.75, (0.25 * 2) / 0.75])
    np.testing.assert_allclose(v, [(0.25 * 4) / 0.75, (0.25 * 4 + 0.5 * 8) / 0.75])
    np.testing.assert_allclose(n, 4 * 0.75 ** 2 / (0.0625 + 0.25))


def test_updates_every_update_every_and_tilt_from_training_losses(gpt2, corpus):
    pike = Recording(3, update_every=4, tau=1.0)
    h = run(gpt2, corpus, MixedBatchSource(pike, stats_every=2, n_groups=2, tilt_losses="train",
                                           loss_smoothing=0.5), steps=8)
    assert len(pike.seen) == 2                               # statistics at 2, 4, 6, 8; updates at 4, 8
    assert (h["mixer_backward_passes"] > 0).sum() == 4
    # the tilt's losses are the averaged training-batch losses, not the statistics' batch losses
    train = h[[f"loss/{d}" for d in corpus.domains]].to_numpy()
    ema = np.full(3, np.nan)
    for row in train[:4]:
        for k, x in enumerate(row):
            if np.isfinite(x):
                ema[k] = x if not np.isfinite(ema[k]) else 0.5 * ema[k] + 0.5 * x
    np.testing.assert_allclose(pike.seen[0][2], ema)


@pytest.mark.parametrize("kwargs,match", [
    (dict(smoothing=1.0), "smoothing"), (dict(smoothing=-0.1), "smoothing"),
    (dict(loss_smoothing=2), "loss_smoothing"), (dict(tilt_losses="eval"), "tilt_losses.*allowed"),
])
def test_bad_estimator_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixedBatchSource("pike", **kwargs)


def test_effective_counts_may_be_fractional_but_not_below_two():
    p = PiKE(2, shrink=True)
    p.update([1.0, 2.0], [1.0, 1.0], n_examples=[7.2, 7.2])
    with pytest.raises(ValueError, match="n_examples"):
        p.update([1.0, 2.0], [1.0, 1.0], n_examples=[1.5, 7.2])


def test_averaging_draws_makes_the_score_less_noisy():
    from zoedu.experiments.multidomain import statistics_noise

    df = statistics_noise(fast=True, domains=("prose", "noise", "duplicated"), warm_steps=2, repeats=4,
                          draws=(1, 4), sizes=[12, 12, 12], n_validation=2)
    sd = df.pivot(index="domain", columns="draws", values="score_sd")
    assert (sd[4] < sd[1]).mean() >= 2 / 3                     # 4 draws: about half the s.d.
    assert set(df.columns) >= {"relative_sd", "weight_mean", "weight_sd", "backward_passes", "se_bound", "se_measured"}
    assert (df.se_measured <= df.se_bound * (1 + 1e-9)).all() and (df.se_measured < df.se_bound).any()


def test_precondition_takes_the_statistics_in_adams_coordinates(gpt2, corpus):
    # precondition="optimizer": every task gradient is multiplied by (√v̂ + ε)^(-½) from AdamW's
    # own second moments; the statistics then equal task_gradient_stats with that scale
    import torch

    from zoedu.mixing import task_gradient_stats
    from zoedu.train import fit

    seen = {}

    class Source(MixedBatchSource):
        def after_step(self, ctx, step, out):
            scale = self._preconditioner(ctx)
            if scale is not None:
                opt = ctx.optimizer
                p = next(iter(scale))
                st, group = opt.state[p], opt.param_groups[0]
                v_hat = st["exp_avg_sq"] / (1 - group["betas"][1] ** float(st["step"]))
                torch.testing.assert_close(scale[p], (v_hat.sqrt() + group["eps"]).rsqrt())
                assert len(scale) == len([q for q in ctx.model.parameters() if q.requires_grad])
                rng_state = copy.deepcopy(ctx.rng.bit_generator.state)
                batches = self.task_batches(ctx)
                ctx.rng.bit_generator.state = rng_state   # the statistics below draw the same batches
                seen["expected"] = task_gradient_stats(ctx.model, self.task.loss, batches, n_groups=2,
                                                       scale=scale)
            super().after_step(ctx, step, out)
            if scale is not None:
                seen["got"] = self.last_stats

    model = copy.deepcopy(gpt2)
    fit(model, corpus, "adam", steps=2, lr=3e-3, batch_size=6, quiet=True, track_memory=False,
        device="cpu", eval_every=0, mixer=Source("pike", stats_every=1, n_groups=2, precondition="optimizer"))
    np.testing.assert_allclose(seen["got"].sq_norms, seen["expected"].sq_norms, rtol=1e-5)
    np.testing.assert_allclose(seen["got"].variances, seen["expected"].variances, rtol=1e-5)
    # Adam's coordinates are not the Euclidean ones: the norms differ by orders of magnitude
    h = run(gpt2, corpus, MixedBatchSource("pike", stats_every=1, n_groups=2), steps=2)
    plain = h[[f"grad_sq_norm/{d}" for d in corpus.domains]].to_numpy()[-1]
    assert not np.allclose(plain, seen["got"].sq_norms, rtol=0.5)


def test_precondition_is_the_identity_without_second_moments(gpt2, corpus):
    # SGD keeps no exp_avg_sq: the statistics are the Euclidean ones, bit for bit
    from zoedu.train import fit

    def sgd(precondition):
        return fit(copy.deepcopy(gpt2), corpus, "sgd", steps=3, lr=1e-2, batch_size=6, quiet=True,
                   track_memory=False, device="cpu", eval_every=0,
                   mixer=MixedBatchSource("pike", stats_every=1, n_groups=2, precondition=precondition))

    cols = [f"grad_sq_norm/{d}" for d in corpus.domains]
    np.testing.assert_array_equal(sgd("optimizer")[cols].to_numpy(), sgd("none")[cols].to_numpy())


def test_bad_precondition():
    with pytest.raises(ValueError, match="precondition='adam'.*allowed: none, optimizer"):
        MixedBatchSource("pike", precondition="adam")


# --------------------------------------------------------------------------- how the noise spreads
def _score_draws(rng, mu, scales, n, reps, pike, gain=None):
    """Scores of ``pike`` from ``reps`` draws of n per-example gradients N(μ_k, diag(scales_k²))."""
    import torch

    from zoedu.mixing.stats import _noise_spread

    K = len(mu)
    scores, spreads = [], []
    for _ in range(reps):
        sq, var, spread = np.zeros(K), np.zeros(K), np.zeros((K, 2))
        for k in range(K):
            g = mu[k] + rng.normal(size=(n, mu[k].size)) * scales[k]
            mean = g.mean(0)
            var[k] = ((g - mean) ** 2).sum() / (n - 1)
            sq[k] = max(mean @ mean - var[k] / n, 0.0)
            spread[k] = _noise_spread(torch.tensor(g), [1] * n)
        gain_ = np.ones(K) if gain is None else gain
        scores.append(pike._scores(sq, var, gain_))
        spreads.append(spread)
    return np.array(scores), np.array(spreads)


def test_measured_score_noise_matches_the_scores_spread_and_the_bound_overstates_it():
    # per-example noise spread evenly over 200 directions: tr Σ² = (tr Σ)²/200
    rng = np.random.default_rng(0)
    d, n, K = 200, 8, 3
    mu = [np.full(d, 0.05 * (k + 1)) for k in range(K)]
    scales = [np.full(d, 0.1 * (k + 1)) for k in range(K)]
    pike = PiKE(K, normalize=False, shrink=True, batch_size=16)
    scores, spreads = _score_draws(rng, mu, scales, n, 400, pike)
    true_var = np.array([d * s[0] ** 2 for s in scales])       # tr Σ
    true_mu = np.array([m @ m for m in mu])
    true_q = np.array([d * s[0] ** 4 for s in scales])          # tr Σ²
    true_along = np.array([(m ** 2 * s ** 2).sum() for m, s in zip(mu, scales)])   # μᵀΣμ
    np.testing.assert_allclose(spreads.mean(0)[:, 0], true_q, rtol=0.1)       # both estimated without bias
    np.testing.assert_allclose(spreads.mean(0)[:, 1], true_along, rtol=0.25)
    sd = scores.std(0)
    measured = pike.score_se(true_mu, true_var, [n] * K, cov_sq=true_q, cov_along_mean=true_along)
    bound = pike.score_se(true_mu, true_var, [n] * K)
    assert np.all(measured >= 0.8 * sd)                          # still (nearly) an upper bound …
    assert np.all(measured <= 1.5 * sd)                          # … and a close one
    # with tr Σ² alone (μᵀΣμ bounded by ‖μ‖²√tr Σ²) it is looser but still far below the bound
    assert np.all(pike.score_se(true_mu, true_var, [n] * K, cov_sq=true_q) < 0.5 * bound)
    assert np.all(bound >= 5 * sd)                               # the one-direction bound: far too wide


def test_cov_sq_at_its_bound_is_the_one_direction_formula_and_bad_input_is_refused():
    p = PiKE(3, shrink=True)
    sq, var, n = [1.0, 2.0, 0.5], [4.0, 9.0, 1.0], [8, 8, 8]
    np.testing.assert_allclose(p.score_se(sq, var, n, cov_sq=np.square(var)), p.score_se(sq, var, n))
    np.testing.assert_allclose(p.score_se(sq, var, n, cov_sq=[np.nan] * 3), p.score_se(sq, var, n))
    # above the bound it is clipped to it (tr Σ² ≤ (tr Σ)²); below it the noise is smaller
    np.testing.assert_allclose(p.score_se(sq, var, n, cov_sq=[1e9] * 3), p.score_se(sq, var, n))
    assert np.all(p.score_se(sq, var, n, cov_sq=[0.1, 0.1, 0.1]) < p.score_se(sq, var, n))
    for bad in ([-1.0, 1.0, 1.0], [1.0, 1.0], [np.inf, 1.0, 1.0]):
        with pytest.raises(ValueError, match="cov_sq"):
            p.score_se(sq, var, n, cov_sq=bad)
    with pytest.raises(ValueError, match="cov_along_mean"):
        p.score_se(sq, var, n, cov_sq=[1.0] * 3, cov_along_mean=[np.inf, 0.0, 0.0])
    # μᵀΣμ is clipped to [0, ‖μ‖²√tr Σ²]: a negative chance estimate counts as 0
    np.testing.assert_allclose(p.score_se(sq, var, n, cov_sq=[0.1] * 3, cov_along_mean=[-5.0] * 3),
                               p.score_se(sq, var, n, cov_sq=[0.1] * 3, cov_along_mean=[0.0] * 3))


@pytest.mark.parametrize("kwargs", [dict(score_noise="exact"), dict(score_noise="measured", n_groups=2),
                                    dict(score_noise="measured", variance="per-sample")])
def test_bad_score_noise(kwargs):
    with pytest.raises(ValueError, match="score_noise"):
        MixedBatchSource("pike", **kwargs)


class RecordingSpread(PiKE):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.spreads = []

    def update(self, sq_norms, variances, n_examples=None, cov_sq=None, cov_along_mean=None):
        self.spreads.append(None if cov_sq is None else np.array([cov_sq, cov_along_mean]))
        return super().update(sq_norms, variances, n_examples, cov_sq, cov_along_mean)


def test_measured_score_noise_reaches_pike_and_narrows_its_noise(gpt2, corpus):
    bound = RecordingSpread(3, update_every=2, shrink=True)
    run(gpt2, corpus, MixedBatchSource(bound, stats_every=2, n_groups=4), steps=2)
    measured = RecordingSpread(3, update_every=2, shrink=True)
    run(gpt2, corpus, MixedBatchSource(measured, stats_every=2, n_groups=4, score_noise="measured"), steps=2)
    assert bound.spreads == [None]
    assert len(measured.spreads) == 1 and np.all(np.isfinite(measured.spreads[0]))
    assert np.all(measured.spreads[0][0] >= 0)
    # the same draw and the same move; the noise credited to it is what the spread allows, no more
    np.testing.assert_allclose(measured.raw_weights, bound.raw_weights)
    assert np.all(measured._noise <= bound._noise + 1e-12) and np.any(measured._noise < bound._noise)


def test_a_checkpoint_from_before_the_spread_was_averaged_resumes_with_it_unknown(gpt2, corpus):
    source = MixedBatchSource(PiKE(3, update_every=2, shrink=True), stats_every=2, n_groups=4, smoothing=0.5)
    run(gpt2, corpus, source, steps=2)
    old = source.state_dict()
    old["state"]["_avg"][0] = old["state"]["_avg"][0][:3]      # what an older zoedu saved: ĝ, σ̂², losses
    source.load_state_dict(old)
    stats = source.last_stats
    g2, v2, l2, n2, spread2, along2 = source._average(stats)
    assert np.all(np.isfinite(g2)) and np.isnan(spread2).all() and np.isnan(along2).all()
