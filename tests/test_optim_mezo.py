"""MeZO (zoedu.optim.mezo, estimators, forward_gradient): Algorithm 1, the estimator, seeding, NaN handling, variants, arguments."""

import math

import numpy as np
import pytest
import torch
from conftest import Quadratic, mlp, mlp_data, same, snapshot
from torch import nn

from zoedu.optim import MeZO, direction, direction_seed, forward_gradient, replay


# --------------------------------------------------------------------------- the estimator
def test_projected_gradient_is_unbiased_on_a_quadratic():
    """E[g z] = ∇L (MeZO Eq. 1 with E[z zᵀ] = I): the mean of g z over many seeds is within
    four standard errors of the true gradient in every coordinate."""
    q = Quadratic()
    true = q.grad()
    opt = MeZO(q.parameters(), lr=0.0, eps=1e-4, chunk=4)
    n = 400
    samples = []
    for t in range(n):
        opt.step(q)
        samples.append(opt.last_projected_grad * direction([q.theta], direction_seed(0, t), chunk=4)[0])
    samples = torch.stack(samples)
    mean, sem = samples.mean(0), samples.std(0) / math.sqrt(n)
    assert ((mean - true).abs() < 4 * sem).all(), (mean, true, sem)
    assert float((mean - true).norm() / true.norm()) < 0.3
    # one direction alone is far from the gradient: the estimate is noisy
    assert float((samples[0] - true).norm() / true.norm()) > 0.15


def test_spsa_matches_forward_gradient_jvp():
    """(L(θ+εz) − L(θ−εz)) / 2ε equals the jvp ∇L·z for a quadratic (exact up to rounding)."""
    q = Quadratic(d=9)
    loss, jvp, z = forward_gradient(q, lambda m: m(), seed=direction_seed(7, 0))
    assert jvp == pytest.approx(float(q.grad() @ z[0]), rel=1e-10)
    opt = MeZO(q.parameters(), lr=0.0, eps=1e-3, seed=7)
    opt.step(q)
    assert opt.last_projected_grad == pytest.approx(jvp, rel=1e-6)
    assert loss == pytest.approx(float(q().detach()), rel=1e-12)


def test_forward_gradient_on_a_transformer_matches_spsa():
    from zoedu.models import load_model

    model, _ = load_model("tiny-opt", size="1m", num_labels=2)
    model.double().eval()  # float64: the SPSA difference is then limited by ε, not by rounding
    ids = torch.randint(1000, 2000, (2, 8), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1])}

    def loss_fn(m):
        out = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return nn.functional.cross_entropy(out.double(), batch["labels"])

    params = [p for p in model.parameters() if p.requires_grad]
    _, jvp, _ = forward_gradient(model, loss_fn, seed=direction_seed(3, 0), params=params)
    # OPT's ReLUs make the loss piecewise smooth: the SPSA error is O(ε), so ε is tiny here
    opt = MeZO(params, lr=0.0, eps=1e-8, seed=3)
    with torch.no_grad():
        opt.step(lambda: loss_fn(model))
    assert opt.last_projected_grad == pytest.approx(jvp, rel=1e-3)


def test_minimises_a_quadratic():
    q = Quadratic()
    start = float(q())
    opt = MeZO(q.parameters(), lr=0.05, eps=1e-3)
    for _ in range(300):
        opt.step(q)
    assert float(q()) < 0.2 * start


# --------------------------------------------------------------------------- seeding, restoration, replay
def test_same_seed_same_trajectory_other_seed_other():
    x, y = mlp_data()
    finals = []
    for seed in (5, 5, 6):
        model = mlp()
        opt = MeZO(model.parameters(), lr=1e-2, seed=seed, workers=2)
        for _ in range(10):
            opt.step(lambda: ((model(x) - y) ** 2).mean())
        finals.append(snapshot(model))
    assert same(finals[0], finals[1])
    assert not same(finals[0], finals[2])


def test_directions_do_not_depend_on_thread_count():
    ps = [torch.zeros(3000), torch.zeros(40, 30)]
    a = direction(ps, 11, chunk=256)
    from zoedu.optim import Perturber

    b = [torch.zeros_like(p) for p in ps]
    Perturber(b, chunk=256, workers=3).add(11, 1.0)
    assert same(a, b)
    assert abs(float(torch.cat([t.flatten() for t in a]).std()) - 1) < 0.05


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_spans_draw_the_streams_numbers_bit_for_bit(kind, dtype):
    """A span of streams (GROUP on CPU) draws exactly what its streams draw one by one:
    full spans, a span cut short by the end of its parameter, a last stream shorter than
    a chunk (and not a multiple of 8 entries), a parameter smaller than a chunk, a
    non-contiguous one; with one worker and with several."""
    from zoedu.optim import Perturber

    shapes = [(3,), (1000, 77), (64,), (300_001,), (5, 7)]
    ps = [torch.zeros(s, dtype=dtype) for s in shapes] + [torch.zeros(40, 30, dtype=dtype).t()]
    for chunk in (64, 4096):
        alone = [torch.zeros_like(p) for p in ps]
        Perturber(alone, chunk=chunk, directions=kind, group=1).add(7, 1.0)
        for group, workers in ((5, 1), (16, 3)):
            spans = [torch.zeros_like(p) for p in ps]
            pert = Perturber(spans, chunk=chunk, directions=kind, group=group, workers=workers)
            assert any(st.chunks > 1 for st in pert.streams) and len(pert.streams) < len(
                Perturber(alone, chunk=chunk, group=1).streams)
            pert.add(7, 1.0)
            assert same(alone, spans), (chunk, group, workers)
    # a chunk that is not a multiple of 64 is never grouped (its ±1 bytes would not be contiguous)
    assert all(st.chunks == 1 for st in Perturber([torch.zeros(1000)], chunk=100, group=8).streams)
    with pytest.raises(ValueError, match="group=0 must be a positive integer"):
        Perturber([torch.zeros(3)], group=0)


def test_passes_default_to_one_worker_for_rademacher(monkeypatch):
    from zoedu.optim import Perturber

    monkeypatch.delenv("ZOEDU_PERTURB_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert Perturber([torch.zeros(10)], directions="rademacher").workers == 1
    assert Perturber([torch.zeros(10)], directions="gaussian").workers == 4
    monkeypatch.setenv("ZOEDU_PERTURB_THREADS", "3")
    assert Perturber([torch.zeros(10)], directions="rademacher").workers == 3


def rademacher_and_gaussian_samples(n=2000):
    """g z over n seeds for each kind of direction, and the true gradient."""
    out = {}
    for kind in ("gaussian", "rademacher"):
        q = Quadratic()
        opt = MeZO(q.parameters(), lr=0.0, eps=1e-4, chunk=4, directions=kind)
        samples = []
        for t in range(n):
            opt.step(q)
            z = direction([q.theta], direction_seed(0, t), chunk=4, directions=kind)[0]
            samples.append(opt.last_projected_grad * z)
        out[kind] = torch.stack(samples)
    q = Quadratic()
    q().backward()
    return out, q.theta.grad.detach()


def test_rademacher_directions_are_unbiased_with_a_smaller_variance():
    """E[g z] = ∇L (autograd) for ±1 directions too; per coordinate Var = ‖a‖² − aᵢ² against the
    gaussian's ‖a‖² + aᵢ², so the total variance ratio is (d − 1)/(d + 1) (5/7 here)."""
    samples, grad = rademacher_and_gaussian_samples()
    n = samples["rademacher"].shape[0]
    z = direction([torch.zeros(6, dtype=torch.float64)], 3, chunk=4, directions="rademacher")[0]
    assert set(z.tolist()) <= {-1.0, 1.0}
    for kind, s in samples.items():
        mean, sem = s.mean(0), s.std(0) / math.sqrt(n)
        assert ((mean - grad).abs() < 4 * sem).all(), (kind, mean, grad)
    var = {kind: float(s.var(0).sum()) for kind, s in samples.items()}
    a2 = float(grad.square().sum())
    assert var["rademacher"] / var["gaussian"] == pytest.approx(5 / 7, abs=0.12)
    assert var["rademacher"] == pytest.approx(5 * a2, rel=0.15) and var["gaussian"] == pytest.approx(7 * a2, rel=0.15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rademacher_draw_uses_every_bit_fairly_and_independently(dtype):
    """The byte-table draw: only ±1, each of the 64 bit positions of a word (entry i % 64)
    is +1 half the time, neighbours are uncorrelated, a length that is not a multiple of 8
    fills exactly that many entries, and the same generator seed gives the same entries."""
    from zoedu.optim._perturb import _padded, rademacher_

    n, draws = 61, 4000
    buf = torch.full((_padded(n),), 7.0, dtype=dtype)
    gen = torch.Generator()
    rows = []
    for seed in range(draws):
        gen.manual_seed(seed)
        rows.append(rademacher_(buf, n, gen).clone())
    z = torch.stack(rows).double()
    assert z.shape == (draws, n) and set(z.unique().tolist()) == {-1.0, 1.0}
    se = 1 / math.sqrt(draws)
    assert (z.mean(0).abs() < 4.5 * se).all(), z.mean(0)  # each position fair
    corr = (z[:, :-1] * z[:, 1:]).mean(0)
    assert (corr.abs() < 4.5 * se).all(), corr  # neighbours (within and across bytes) independent
    gen.manual_seed(3)
    again = rademacher_(buf, n, gen).clone()
    assert torch.equal(again.double(), z[3])
    # a long draw: every bit of the 64-bit words is used (mean over many words of each position)
    m = 64 * 2000
    big = torch.empty(_padded(m), dtype=torch.float32)
    gen.manual_seed(0)
    per_bit = rademacher_(big, m, gen).view(2000, 64).mean(0)
    assert (per_bit.abs() < 4.5 / math.sqrt(2000)).all(), per_bit


# --------------------------------------------------------------------------- the plain path
def test_the_default_step_is_mezo_step_bit_for_bit():
    """MeZO's plain configuration runs Algorithm 1 as :func:`mezo_step` prints it."""
    from zoedu.optim import Perturber, mezo_step

    x, y = mlp_data()
    model, ref = mlp(), mlp()
    opt = MeZO(model.parameters(), lr=1e-2, eps=1e-3, weight_decay=0.1, seed=5)
    perturber = Perturber(list(ref.parameters()))
    wds = [0.1 if p.dim() >= 2 else 0.0 for p in ref.parameters()]
    lrs = [1e-2] * len(wds)
    for t in range(5):
        loss = opt.step(lambda: ((model(x) - y) ** 2).mean())
        plus, minus, g = mezo_step(lambda: float(((ref(x) - y) ** 2).mean()), perturber, direction_seed(5, t),
                                   1e-3, lrs, wds)
        assert loss == pytest.approx(0.5 * (plus + minus)) and opt.last_projected_grad == g
        assert same(snapshot(model), snapshot(ref))


@pytest.mark.parametrize("variant", [{"exact_restore": True}, {"estimator": "momentum", "momentum": 0.0},
                                     {"n_perturb": 1, "estimator": "adam"}])
def test_variants_follow_mezo_step(variant):
    """The exact mode and the variant path agree with the plain step (momentum 0 is SGD; Adam's
    first step moves every weight by about lr in the direction of sign(g z))."""
    x, y = mlp_data()
    plain, other = mlp(), mlp()
    a = MeZO(plain.parameters(), lr=1e-3, eps=1e-3, seed=2)
    b = MeZO(other.parameters(), lr=1e-3, eps=1e-3, seed=2, **variant)
    a.step(lambda: ((plain(x) - y) ** 2).mean())
    b.step(lambda: ((other(x) - y) ** 2).mean())
    assert b.last_projected_grad == pytest.approx(a.last_projected_grad, rel=1e-4)
    for p, q, p0 in zip(plain.parameters(), other.parameters(), mlp().parameters()):
        if variant.get("estimator") == "adam":
            d_plain, d_adam = (p - p0).detach(), (q - p0).detach()
            big = d_plain.abs() > 1e-7
            assert torch.equal(d_plain[big].sign(), d_adam[big].sign())
            assert float(d_adam.abs().max()) <= 1.01e-3
        else:
            assert float((p - q).abs().max()) < 1e-6


def test_follows_the_model_after_to():
    """model.to(dtype) after making the optimizer: MeZO perturbs the new storage, as torch optimizers do."""
    x, y = mlp_data(torch.float64)
    model = mlp()
    opt = MeZO(model.parameters(), lr=1e-2)
    model.double()
    before = snapshot(model)
    opt.step(lambda: ((model(x) - y) ** 2).mean())
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert not same(before, snapshot(model))


# --------------------------------------------------------------------------- NaN
@pytest.mark.parametrize("bad_call", [0, 1])  # ℓ₊ or ℓ₋ is NaN
def test_nan_loss_restores_and_skips(bad_call):
    x, y = mlp_data()
    model = mlp()
    opt = MeZO(model.parameters(), lr=1e-2, exact_restore=True)
    before = snapshot(model)
    calls = []

    def closure():
        calls.append(1)
        return float("nan") if len(calls) == bad_call + 1 else ((model(x) - y) ** 2).mean()

    with pytest.warns(RuntimeWarning, match="restored"):
        loss = opt.step(closure)
    assert math.isnan(loss)
    assert opt.skipped_steps == 1
    assert same(before, snapshot(model))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    opt.step(lambda: ((model(x) - y) ** 2).mean())  # training goes on
    assert not same(before, snapshot(model))
    assert opt.trajectory()["status"].tolist() == [1 + bad_call, 0]


# --------------------------------------------------------------------------- variants
@pytest.mark.parametrize("n_perturb,one_sided,forwards", [(1, False, 2), (3, False, 6), (1, True, 2), (3, True, 4)])
def test_forward_counts(n_perturb, one_sided, forwards):
    q = Quadratic()
    opt = MeZO(q.parameters(), lr=1e-2, n_perturb=n_perturb, one_sided=one_sided)
    calls = []
    opt.step(lambda: (calls.append(1), q())[1])
    assert len(calls) == forwards == opt.forwards_per_step


@pytest.mark.parametrize("estimator", ["sgd", "sign", "momentum", "adam"])
def test_estimators_descend(estimator):
    q = Quadratic()
    start = float(q())
    lr = {"sgd": 0.05, "sign": 0.01, "momentum": 0.01, "adam": 0.02}[estimator]
    opt = MeZO(q.parameters(), lr=lr, estimator=estimator, n_perturb=2)
    for _ in range(200):
        opt.step(q)
    assert float(q()) < 0.5 * start
    keys = {"sgd": set(), "sign": set(), "momentum": {"momentum_buffer"}, "adam": {"exp_avg", "exp_avg_sq"}}
    assert set(opt.state[q.theta].keys()) == keys[estimator]


def test_stateful_estimators_show_in_memory_measure():
    from zoedu.memory import measure

    x, y = mlp_data()
    sizes = {}
    for est in ("sgd", "adam"):
        model = mlp()
        opt = MeZO(model.parameters(), lr=1e-3, estimator=est)
        closure = lambda: ((model(x) - y) ** 2).mean()  # noqa: E731
        sizes[est] = measure(lambda: opt.step(closure), model=model, optimizer=opt).optimizer
    n_bytes = sum(p.numel() * 4 for p in mlp().parameters())
    assert sizes["sgd"] == 0
    assert sizes["adam"] == 2 * n_bytes


def test_weight_decay_skips_biases_and_norm_weights():
    model = mlp()
    before = snapshot(model)
    opt = MeZO(model.parameters(), lr=0.1, weight_decay=0.5)
    opt.step(lambda: 0.0)  # g = 0: only the decay acts (and the restore's rounding)
    for (name, p), b in zip(model.named_parameters(), before):
        if p.dim() >= 2:
            assert torch.allclose(p, b * (1 - 0.05), atol=1e-6), name
        else:
            assert torch.allclose(p, b, atol=1e-6), name


def test_non_differentiable_objective_minus_accuracy():
    torch.manual_seed(0)
    x = torch.randn(200, 5)
    labels = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    model = nn.Linear(5, 2)
    acc = lambda: float((model(x).argmax(1) == labels).float().mean())  # noqa: E731
    start = acc()
    opt = MeZO(model.parameters(), lr=0.5, eps=0.05, seed=1)
    for _ in range(200):
        opt.step(lambda: -acc())
    assert acc() > max(start, 0.85)


def test_only_given_parameters_move_lora_through_peft():
    peft = pytest.importorskip("peft")
    from zoedu.models import load_model

    model, _ = load_model("tiny-opt", size="1m", num_labels=2)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                      lora_dropout=0.0, init_lora_weights=False))
    adapters = [p for n, p in lora.named_parameters() if "lora_" in n]
    frozen = [(n, p.detach().clone()) for n, p in lora.named_parameters() if "lora_" not in n]
    before = [p.detach().clone() for p in adapters]
    ids = torch.randint(1000, 2000, (4, 10), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1])
    opt = MeZO(adapters, lr=1e-2, eps=1e-2)

    def closure():
        return nn.functional.cross_entropy(lora(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, labels)

    for _ in range(3):
        opt.step(closure)
    assert all(torch.equal(p, b) for (_, b), (_, p) in zip(frozen, [(n, p) for n, p in lora.named_parameters()
                                                                    if "lora_" not in n]))
    assert not same(before, [p.detach() for p in adapters])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_training_step(dtype):
    model = mlp(dtype)
    x, y = mlp_data(dtype)
    loss0 = float(((model(x) - y) ** 2).mean())
    opt = MeZO(model.parameters(), lr=2e-2, eps=1e-2)
    for _ in range(60):
        opt.step(lambda: ((model(x) - y) ** 2).float().mean())
    assert all(p.dtype == dtype and torch.isfinite(p).all() for p in model.parameters())
    assert float(((model(x) - y) ** 2).mean()) < loss0


# --------------------------------------------------------------------------- fit integration
def test_fit_mezo_runs_eval_mode_and_counts(tiny_task):
    from zoedu.models import load_model
    from zoedu.train import fit

    model, _ = load_model("tiny-opt", size="1m", num_labels=2)
    modes = []
    original = tiny_task.loss
    tiny_task.loss = lambda m, b: (modes.append(m.training), original(m, b))[1]
    try:
        h = fit(model, tiny_task, "mezo", steps=3, lr=1e-4, batch_size=4, quiet=True, eps=1e-3, n_perturb=2,
                eval_every=0, track_memory=False)
    finally:
        del tiny_task.loss
    assert modes == [False] * 12  # dropout off in every zeroth-order forward
    assert model.training  # and the model is handed back in training mode
    assert h["forward_passes"].tolist() == [4, 8, 12]
    assert h["backward_passes"].tolist() == [0, 0, 0]
    assert {"projected_grad", "skipped_steps"} <= set(h.columns)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,match", [
    ({"eps": 0.0}, "eps"), ({"eps": -1e-3}, "eps"), ({"n_perturb": 0}, "n_perturb"),
    ({"estimator": "lbfgs"}, "estimator.*sgd, sign, momentum, adam"), ({"lr": -1.0}, "lr"),
    ({"weight_decay": -0.1}, "weight_decay"), ({"betas": (0.9, 1.5)}, "betas"),
])
def test_bad_arguments_are_refused(kwargs, match):
    q = Quadratic()
    args = {"lr": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=match):
        MeZO(q.parameters(), **args)


def test_bad_closures_are_refused():
    q = Quadratic()
    opt = MeZO(q.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="scalar"):
        opt.step(lambda: torch.ones(3))
    assert np.isfinite(q.theta.detach().numpy()).all()


# --------------------------------------------------------------------------- GPU
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mezo_on_cuda_restores_and_replays(dtype):
    x, y = (t.cuda() for t in mlp_data(dtype))
    model = mlp(dtype).cuda()
    before = snapshot(model)
    opt = MeZO(model.parameters(), lr=0.0, exact_restore=True)
    for _ in range(5):
        opt.step(lambda: ((model(x) - y) ** 2).float().mean())
    assert same(before, snapshot(model))
    opt = MeZO(model.parameters(), lr=1e-2)
    for _ in range(5):
        opt.step(lambda: ((model(x) - y) ** 2).float().mean())
    rebuilt = [b.clone() for b in before]
    replay(rebuilt, opt.trajectory())
    assert same(rebuilt, snapshot(model))
