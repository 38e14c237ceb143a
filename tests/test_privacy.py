"""DP with public data: accounting, mean estimation, per-sample gradients, Semi-DP SGD."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoedu.privacy import (PerSampleGradients, PrivacyAccountant, SemiDPSGD, clip_and_sum,
                           clip_per_sample, epsilon, gaussian_noise_multiplier, mean_estimate,
                           mean_mse, noise_for_epsilon, per_sample_norms, semi_dp_weights,
                           split_public)


def ce(model, batch):
    return F.cross_entropy(model(batch["x"]), batch["labels"])


def tab_batch(n, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, d, generator=g), "labels": torch.randint(0, k, (n,), generator=g)}


def mlp(d=6, k=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 8), torch.nn.Tanh(), torch.nn.Linear(8, k))


def loop_grads(model, loss_fn, batch):
    """Reference per-sample gradients: one backward per example."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = [[] for _ in params]
    n = batch["x"].shape[0]
    for i in range(n):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        grads = torch.autograd.grad(loss_fn(model, one), params)
        for slot, g in zip(out, grads):
            slot.append(g)
    return [torch.stack(s) for s in out]


# --------------------------------------------------------------------------- accounting
def test_accountant_equals_opacus_for_the_same_history():
    from opacus.accountants import PRVAccountant, RDPAccountant

    ours, theirs = PrivacyAccountant("rdp"), RDPAccountant()
    steps = [(1.1, 0.02)] * 30 + [(0.8, 0.05)] * 10 + [(1.1, 0.02)] * 5
    for sigma, q in steps:
        ours.step(sigma, q)
        theirs.step(noise_multiplier=sigma, sample_rate=q)
    assert ours.history == theirs.history
    assert ours.epsilon(1e-5) == pytest.approx(theirs.get_epsilon(delta=1e-5), rel=1e-12)
    assert ours.steps == 45
    # the one-shot function agrees with an Opacus accountant holding the same history
    ref = RDPAccountant()
    ref.history = [(1.3, 0.01, 200)]
    assert epsilon(1.3, 0.01, 200, 1e-6) == pytest.approx(ref.get_epsilon(delta=1e-6), rel=1e-12)
    prv, ours_prv = PRVAccountant(), PrivacyAccountant("prv")
    prv.history = [(1.5, 0.02, 20)]
    for _ in range(20):
        ours_prv.step(1.5, 0.02)
    assert ours_prv.epsilon(1e-5) == pytest.approx(prv.get_epsilon(delta=1e-5), rel=1e-9)
    # ε grows with the number of steps and is 0 before any
    assert PrivacyAccountant().epsilon(1e-5) == 0.0
    assert epsilon(1.0, 0.05, 10, 1e-5) < epsilon(1.0, 0.05, 100, 1e-5)
    assert epsilon(0.0, 0.05, 10, 1e-5) == math.inf


@pytest.mark.parametrize("target,q,steps,accountant", [(1.0, 0.05, 200, "rdp"), (0.5, 1.0, 1, "rdp")])
def test_noise_for_epsilon_inverts_epsilon(target, q, steps, accountant):
    sigma = noise_for_epsilon(target, q, steps, 1e-5, accountant)
    eps = epsilon(sigma, q, steps, 1e-5, accountant)
    assert target - 0.011 <= eps <= target + 1e-9
    # a little less noise overshoots the target: σ is (near) the smallest that works
    assert epsilon(sigma * 0.97, q, steps, 1e-5, accountant) > target - 0.011


def test_gaussian_mechanism_calibration_is_exact_and_tighter_than_rdp():
    from scipy.stats import norm

    for eps, delta in [(1.0, 1e-5), (0.3, 1e-3), (8.0, 1e-6)]:
        s = gaussian_noise_multiplier(eps, delta)
        # Balle & Wang (2018), Theorem 8: δ(ε) of the Gaussian mechanism with std σ·Δ
        d = norm.cdf(1 / (2 * s) - eps * s) - math.exp(eps) * norm.cdf(-1 / (2 * s) - eps * s)
        assert d == pytest.approx(delta, rel=1e-6)
        assert s <= gaussian_noise_multiplier(eps, delta, accountant="rdp")


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


# --------------------------------------------------------------------------- per-sample gradients
@pytest.mark.parametrize("backend", ["linear", "func", "loop", "opacus"])
def test_per_sample_gradients_match_a_loop(backend):
    batch = tab_batch(7)
    for model in (torch.nn.Linear(6, 3), mlp()):
        ref = loop_grads(model, ce, batch)
        engine = PerSampleGradients(copy.deepcopy(model) if backend == "opacus" else model, ce, backend=backend)
        grads, loss = engine(batch)
        engine.close()
        assert loss == pytest.approx(float(ce(model, batch).detach()), rel=1e-6)
        for g, r in zip(grads, ref):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_linear_backend_handles_sequences_and_refuses_other_layers():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)

    def seq_loss(m, b):  # a token sequence per example; positions share the weights
        return (m(b["x"]).sum(1) ** 2).sum(1).mean()

    batch = {"x": torch.randn(5, 3, 4)}
    grads, _ = PerSampleGradients(model, seq_loss, backend="linear")(batch)
    ref, _ = PerSampleGradients(model, seq_loss, backend="func")(batch)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    conv = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    with pytest.raises(ValueError, match="nn.Linear"):
        PerSampleGradients(conv, ce, backend="linear")
    assert PerSampleGradients(conv, ce).backend == "func"
    assert PerSampleGradients(mlp(), ce).backend == "linear"


def test_auto_falls_back_to_a_loop_when_vmap_cannot_trace_the_model():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.norm = torch.nn.Linear(6, 3), torch.nn.LayerNorm(3)

        def forward(self, x):
            h = self.norm(self.lin(x))
            return h if float(h.abs().sum()) > 0 else -h  # data-dependent: vmap refuses

    torch.manual_seed(0)
    model, batch = Branchy(), tab_batch(5)
    engine = PerSampleGradients(model, ce)
    with pytest.warns(RuntimeWarning, match="fall back"):
        grads, _ = engine(batch)
    assert engine.backend == "loop"
    for g, r in zip(grads, loop_grads(model, ce, batch)):
        torch.testing.assert_close(g, r)
    with pytest.raises(RuntimeError, match="vmap"):
        PerSampleGradients(model, ce, backend="func")(batch)  # an explicit backend never falls back


def test_clipping_bounds_every_per_sample_gradient():
    batch = tab_batch(32, seed=2)
    batch["x"] = batch["x"] * torch.linspace(0.01, 20, 32)[:, None]  # some tiny, some huge
    grads, _ = PerSampleGradients(mlp(), ce)(batch)
    norms = per_sample_norms(grads)
    C = float(norms.median())
    clipped = clip_per_sample(grads, C)
    new = per_sample_norms(clipped)
    assert (new <= C * (1 + 1e-5)).all()
    small = norms < C
    torch.testing.assert_close(new[small], norms[small], rtol=1e-4, atol=0)  # short ones untouched
    torch.testing.assert_close(new[~small], torch.full_like(new[~small], C), rtol=1e-4, atol=0)
    sums, _ = clip_and_sum(grads, C)
    for s, c in zip(sums, clipped):
        torch.testing.assert_close(s, c.sum(0), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- Semi-DP SGD
def test_beta_one_step_equals_an_opacus_dp_sgd_step():
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    private, public = tab_batch(16, seed=1), tab_batch(4, seed=2)
    ours_model = mlp(seed=3)
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
    model = mlp(seed=4)
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
    base = mlp(seed=7)
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
    cpu = mlp(seed=5)
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
