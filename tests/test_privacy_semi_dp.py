"""Semi-DP SGD (zoedu.privacy.semi_dp): its step against Opacus and public-only SGD, NaN, fit integration."""

import copy

import numpy as np
import pytest
import torch
from conftest import ce, tab_batch, tab_mlp

from zoedu.privacy import (
    PerSampleGradients,
    SemiDPSGD,
    clip_per_sample,
    epsilon,
    mean_estimate,
    noise_for_epsilon,
    split_public,
)


# --------------------------------------------------------------------------- Semi-DP SGD
def test_beta_one_step_equals_an_opacus_dp_sgd_step():
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    private, public = tab_batch(16, seed=1), tab_batch(4, seed=2)
    ours_model = tab_mlp(seed=3)
    ref_model = copy.deepcopy(ours_model)
    opt = SemiDPSGD(ours_model, ce, lr=0.3, beta=1.0, noise_multiplier=1.3, max_grad_norm=0.5, seed=11)
    opt.step(private, public)

    gsm = GradSampleModule(ref_model)
    dp = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.3), noise_multiplier=1.3, max_grad_norm=0.5,
                     expected_batch_size=16, generator=torch.Generator().manual_seed(11))
    dp.zero_grad()
    ce(gsm, private).backward()
    dp.step()
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_beta_zero_step_equals_public_only_sgd():
    private, public = tab_batch(16, seed=1), tab_batch(8, seed=2)
    model = tab_mlp(seed=4)
    ref = copy.deepcopy(model)
    opt = SemiDPSGD(model, ce, lr=0.2, beta=0.0, noise_multiplier=5.0, max_grad_norm=1.0, clip_public=False)
    opt.step(private, public)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.2)
    ce(ref, public).backward()
    sgd.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert opt.generator is None  # no private data, no noise drawn


def test_mixed_step_is_the_beta_weighted_sum():
    private, public = tab_batch(10, seed=5), tab_batch(6, seed=6)
    base = tab_mlp(seed=7)
    moved = {}
    for beta in (0.0, 0.3, 1.0):
        m = copy.deepcopy(base)
        SemiDPSGD(m, ce, lr=1.0, beta=beta, noise_multiplier=0.7, max_grad_norm=0.4, seed=9).step(private, public)
        moved[beta] = [p0 - p for p0, p in zip(base.parameters(), m.parameters())]
    for d0, d1, dm in zip(moved[0.0], moved[1.0], moved[0.3]):
        torch.testing.assert_close(dm, 0.3 * d1 + 0.7 * d0, rtol=1e-4, atol=1e-6)
    # with clipping on, the public update is the mean of clipped per-sample gradients
    grads, _ = PerSampleGradients(base, ce)(public)
    want = [c.mean(0) for c in clip_per_sample(grads, 0.4)]
    for got, w in zip(moved[0.0], want):
        torch.testing.assert_close(got.detach(), w, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_semi_dp_step_on_cuda_matches_cpu_without_noise():
    private, public = tab_batch(12, seed=1), tab_batch(6, seed=2)
    cpu = tab_mlp(seed=5)
    gpu = copy.deepcopy(cpu).cuda()
    kw = dict(lr=0.5, beta=0.4, noise_multiplier=0.0, max_grad_norm=0.3)
    SemiDPSGD(cpu, ce, **kw).step(private, public)
    SemiDPSGD(gpu, ce, **kw).step({k: v.cuda() for k, v in private.items()},
                                  {k: v.cuda() for k, v in public.items()})
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        torch.testing.assert_close(p, q.cpu(), rtol=1e-4, atol=1e-5)


def test_nan_loss_leaves_weights_untouched():
    model = torch.nn.Linear(6, 3)
    before = [p.detach().clone() for p in model.parameters()]
    bad = tab_batch(4)
    bad["x"][0, 0] = float("nan")
    opt = SemiDPSGD(model, ce, lr=0.1, beta=0.5, noise_multiplier=1.0, max_grad_norm=1.0)
    with pytest.raises(FloatingPointError, match="diverged"):
        opt.step(bad, tab_batch(4, seed=1))
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


# --------------------------------------------------------------------------- fit integration
@pytest.fixture(scope="module")
def cancer():
    from zoedu.tasks import load_task

    return load_task("tabular", dataset="breast_cancer")


def run(task, method, seed=0, steps=25, **kw):
    from zoedu.train import fit

    torch.manual_seed(123)
    model = torch.nn.Linear(30, 2)
    return fit(model, task, method, steps=steps, lr=0.5, batch_size=32, seed=seed, quiet=True,
               track_memory=False, eval_every=0, **kw)


def test_fit_semi_dp_records_epsilon_from_the_accountant(cancer):
    h = run(cancer, "semi_dp", public_fraction=0.1, beta=0.6, noise_multiplier=1.2, delta=1e-5)
    n_priv = split_public(cancer.size("train"), 0.1, 0)[0].size
    q = 32 / n_priv
    assert np.all(np.diff(h["epsilon"]) > 0)
    for t in (1, 10, 25):
        assert h["epsilon"].iloc[t - 1] == pytest.approx(epsilon(1.2, q, t, 1e-5), rel=1e-9)
    assert np.isfinite(h["loss"]).all() and (h["private_batch_size"] != 32).any()  # Poisson sizes vary
    assert h["loss"].iloc[-5:].mean() < h["loss"].iloc[:5].mean()
    again = run(cancer, "semi_dp", public_fraction=0.1, beta=0.6, noise_multiplier=1.2, delta=1e-5)
    np.testing.assert_array_equal(h["loss"].to_numpy(), again["loss"].to_numpy())
    other = run(cancer, "semi_dp", seed=1, public_fraction=0.1, beta=0.6, noise_multiplier=1.2)
    assert not np.array_equal(h["loss"].to_numpy(), other["loss"].to_numpy())


def test_fit_baselines_and_target_epsilon(cancer):
    h = run(cancer, "throw_away", public_fraction=0.1)
    assert (h["epsilon"] == 0).all() and (h["backward_passes"].diff().dropna() == 1).all()
    h = run(cancer, "treat_as_private", target_epsilon=2.0, steps_planned=25)
    assert 1.9 <= h["epsilon"].iloc[-1] <= 2.0  # calibrated over integer orders: a bit conservative
    h = run(cancer, "dp_sgd", public_fraction=0.05, noise_multiplier=1.0, poisson=False)
    assert (h["private_batch_size"] == 32).all()
    # without steps_planned, fit's own step count calibrates the noise to the whole run
    h = run(cancer, "semi_dp", beta=0.5, target_epsilon=1.0)
    assert 0.9 <= h["epsilon"].iloc[-1] <= 1.0


def test_bad_input_elsewhere():
    with pytest.raises(ValueError, match="different dimensions"):
        mean_estimate(np.zeros((3, 2)), np.zeros((2, 4)), epsilon=1.0, radius=1.0)
    with pytest.raises(ValueError, match="delta=0"):
        epsilon(1.0, 0.1, 10, 0.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        epsilon(-0.5, 0.1, 10, 1e-5)
    with pytest.raises(ValueError, match="sample_rate"):
        epsilon(1.0, 1.5, 10, 1e-5)
    with pytest.raises(ValueError, match="accountant.*allowed"):
        noise_for_epsilon(1.0, 0.1, 10, 1e-5, accountant="moments")
    with pytest.raises(ValueError, match="target_epsilon"):
        noise_for_epsilon(0.0, 0.1, 10, 1e-5)
    model = torch.nn.Linear(6, 3)
    for kw, match in [(dict(beta=1.5), "beta"), (dict(beta=-0.1), "beta"),
                      (dict(max_grad_norm=0.0), "max_grad_norm"),
                      (dict(noise_multiplier=-1.0), "noise_multiplier")]:
        args = dict(lr=0.1, beta=0.5, noise_multiplier=1.0, max_grad_norm=1.0)
        args.update(kw)
        with pytest.raises(ValueError, match=match):
            SemiDPSGD(model, ce, **args)
    opt = SemiDPSGD(model, ce, lr=0.1, beta=0.5, noise_multiplier=1.0, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="public_batch"):
        opt.step(tab_batch(4), None)
    with pytest.raises(ValueError, match="closure"):
        opt.step(lambda: 0.0)
    with pytest.raises(ValueError, match="public_fraction"):
        split_public(100, 1.0)
    with pytest.raises(ValueError, match="backend"):
        PerSampleGradients(model, ce, backend="jax")
