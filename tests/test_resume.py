"""Checkpoint and resume (issue 15, item 5): for every zoedu optimizer and mixer, 10 steps, a
``state_dict()`` saved through ``torch.save``, a fresh model and optimizer that
``load_state_dict()`` it and run 10 more steps end bit for bit where 20 straight steps end.
A constructor argument that differs from the saved run's is a ValueError naming it."""

import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoedu.mixing import BalancedPiKE, PiKE, Proportional, RandomTask, RoundRobin, Static, Uniform
from zoedu.optim import IPSGD, Addax, MeZO
from zoedu.privacy import SemiDPSGD


def net(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    model[0].bias.requires_grad_(False)  # a frozen tensor rides along (item 1)
    return model


def data(t):
    g = torch.Generator().manual_seed(100 + t)
    return torch.randn(12, 6, generator=g), torch.randint(0, 3, (12,), generator=g)


def loss_at(model, t):
    x, y = data(t)
    return F.cross_entropy(model(x), y)


def through_disk(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def resume_matches(make_opt, step, n=10):
    """20 straight steps vs 10 + save/load into fresh objects + 10."""
    straight = net()
    opt = make_opt(straight)
    for t in range(2 * n):
        step(opt, straight, t)

    first = net()
    opt1 = make_opt(first)
    for t in range(n):
        step(opt1, first, t)
    saved = through_disk({"model": first.state_dict(), "opt": opt1.state_dict()})
    del first, opt1
    second = net(seed=1)  # other initial weights: everything must come from the checkpoint
    second.load_state_dict(saved["model"])
    opt2 = make_opt(second)
    opt2.load_state_dict(saved["opt"])
    for t in range(n, 2 * n):
        step(opt2, second, t)
    for (name, a), b in zip(straight.named_parameters(), second.parameters()):
        assert torch.equal(a, b), name
    return opt, opt2


def zo_step(opt, model, t):
    opt.step(lambda: loss_at(model, t))


MEZO_VARIANTS = {
    "plain": {},
    "weight_decay": dict(weight_decay=0.1),
    "momentum": dict(estimator="momentum"),
    "adam": dict(estimator="adam"),
    "sign": dict(estimator="sign"),
    "n_perturb": dict(n_perturb=3),
    "one_sided": dict(one_sided=True),
    "exact": dict(exact_restore=True),
    "rademacher": dict(directions="rademacher"),
}


@pytest.mark.parametrize("variant", sorted(MEZO_VARIANTS))
def test_mezo_resumes_bit_for_bit(variant):
    opts = MEZO_VARIANTS[variant]
    straight, resumed = resume_matches(lambda m: MeZO(m.parameters(), lr=1e-2, eps=1e-2, seed=5, **opts), zo_step)
    assert resumed.step_count == straight.step_count == 20
    assert torch.equal(resumed.trajectory()["projected_grads"], straight.trajectory()["projected_grads"])


def test_mezo_counts_skipped_steps_across_a_resume():
    model = net()
    opt = MeZO(model.parameters(), lr=1e-2, seed=5)
    with pytest.warns(RuntimeWarning):
        opt.step(lambda: float("nan"))
    other = MeZO(net().parameters(), lr=1e-2, seed=5)
    other.load_state_dict(through_disk(opt.state_dict()))
    assert (other.step_count, other.skipped_steps) == (1, 1)


@pytest.mark.parametrize("arg, value", [("seed", 6), ("eps", 1e-3), ("n_perturb", 2), ("estimator", "momentum"),
                                        ("directions", "rademacher"), ("one_sided", True)])
def test_mezo_refuses_a_state_made_with_other_arguments(arg, value):
    model = net()
    opt = MeZO(model.parameters(), lr=1e-2, eps=1e-2, seed=5)
    opt.step(lambda: loss_at(model, 0))
    kwargs = dict(lr=1e-2, eps=1e-2, seed=5)
    kwargs[arg] = value
    other = MeZO(net().parameters(), **kwargs)
    with pytest.raises(ValueError, match=arg):
        other.load_state_dict(opt.state_dict())
    assert other.step_count == 0  # nothing was loaded


def addax_step(opt, model, t):
    x, y = data(t)

    def zo():
        return F.cross_entropy(model(x[:6]), y[:6])

    def fo():
        loss = F.cross_entropy(model(x[6:]), y[6:])
        loss.backward()
        return loss

    opt.step(zo, fo)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_addax_resumes_bit_for_bit(alpha):
    straight, resumed = resume_matches(
        lambda m: Addax(m.parameters(), lr=1e-2, eps=1e-2, alpha=alpha, weight_decay=0.01, seed=3), addax_step)
    assert resumed.step_count == straight.step_count == 20


@pytest.mark.parametrize("arg, value", [("seed", 4), ("eps", 1e-3), ("alpha", 0.5)])
def test_addax_refuses_a_state_made_with_other_arguments(arg, value):
    model = net()
    opt = Addax(model.parameters(), lr=1e-2, eps=1e-2, alpha=0.3, seed=3)
    addax_step(opt, model, 0)
    kwargs = dict(lr=1e-2, eps=1e-2, alpha=0.3, seed=3)
    kwargs[arg] = value
    with pytest.raises(ValueError, match=arg):
        Addax(net().parameters(), **kwargs).load_state_dict(opt.state_dict())


def test_addax_hooks_follow_the_loaded_learning_rate():
    """load_state_dict replaces the param groups; the backward hooks must read the new ones."""
    model = net()
    opt = Addax(model.parameters(), lr=0.0, alpha=0.0)
    state = opt.state_dict()
    state["param_groups"][0]["lr"] = 0.5
    opt.load_state_dict(state)
    before = [p.detach().clone() for p in model.parameters()]
    addax_step(opt, model, 0)
    assert not torch.equal(before[0], model[0].weight)


def ipsgd_step(opt, model, t):
    def closure():
        loss = loss_at(model, t)
        loss.backward()
        return loss

    opt.step(closure)


def test_ipsgd_resumes_bit_for_bit():
    resume_matches(lambda m: IPSGD(m.parameters(), lr=5e-2, weight_decay=0.01), ipsgd_step)


def test_ipsgd_hooks_follow_a_scheduler_after_load_state_dict():
    model = net()
    opt = IPSGD(model.parameters(), lr=0.1)
    opt.load_state_dict(opt.state_dict())
    opt.param_groups[0]["lr"] = 0.0  # what a scheduler does
    before = [p.detach().clone() for p in model.parameters()]
    ipsgd_step(opt, model, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def dp_step(opt, model, t):
    x, y = data(t)
    k = 3 + t % 4  # batch sizes vary, as under Poisson sampling
    opt.step({"x": x[:k], "labels": y[:k]}, {"x": x[8:], "labels": y[8:]})


def ce(model, batch):
    return F.cross_entropy(model(batch["x"]), batch["labels"])


@pytest.mark.parametrize("beta", [1.0, 0.6, "public"])
def test_semi_dp_sgd_resumes_bit_for_bit_with_fresh_noise(beta):
    rule = dict(n_private=100, n_public=20, epsilon=2.0) if isinstance(beta, str) else {}

    def make(m):
        return SemiDPSGD(m, ce, lr=0.1, beta=beta, noise_multiplier=1.0, max_grad_norm=1.0, seed=7,
                         expected_batch_size=5, **rule)

    resume_matches(make, dp_step)


def test_semi_dp_sgd_refuses_a_state_without_its_noise_generator():
    model = net()
    opt = SemiDPSGD(model, ce, lr=0.1, beta=1.0, noise_multiplier=1.0, max_grad_norm=1.0, seed=7)
    dp_step(opt, model, 0)
    state = opt.state_dict()
    del state["semi_dp"]
    with pytest.raises(ValueError, match="noise"):
        SemiDPSGD(net(), ce, lr=0.1, beta=1.0, noise_multiplier=1.0, max_grad_norm=1.0, seed=7).load_state_dict(state)


@pytest.mark.parametrize("arg, value", [("seed", 8), ("noise_multiplier", 2.0), ("max_grad_norm", 0.5),
                                        ("beta", 0.5)])
def test_semi_dp_sgd_refuses_a_state_made_with_other_arguments(arg, value):
    kwargs = dict(lr=0.1, beta=1.0, noise_multiplier=1.0, max_grad_norm=1.0, seed=7)
    model = net()
    opt = SemiDPSGD(model, ce, **kwargs)
    dp_step(opt, model, 0)
    kwargs[arg] = value
    with pytest.raises(ValueError, match=arg):
        SemiDPSGD(net(), ce, **kwargs).load_state_dict(opt.state_dict())


# --------------------------------------------------------------------------- mixers
def stats(t, k=3):
    rng = np.random.default_rng(t)
    return rng.uniform(0.1, 2.0, k), rng.uniform(0.1, 3.0, k), rng.uniform(0.5, 2.0, k)


def pike_update(mixer, t):
    sq, var, losses = stats(t)
    extra = {"n_examples": np.full(3, 8.0)} if mixer.shrink else {}
    if isinstance(mixer, BalancedPiKE):
        mixer.update(sq, var, losses, **extra)
    else:
        mixer.update(sq, var, **extra)


@pytest.mark.parametrize("make", [
    lambda: PiKE(3, batch_size=8),
    lambda: PiKE(3, batch_size=8, shrink=True, max_log_step=None),
    lambda: BalancedPiKE(3, tau=2.0, batch_size=8, shrink=True),
], ids=["pike", "pike-shrink", "balanced-pike"])
def test_pike_resumes_bit_for_bit(make):
    straight = make()
    for t in range(20):
        pike_update(straight, t)
    first = make()
    for t in range(10):
        pike_update(first, t)
    saved = through_disk(first.state_dict())
    pike_update(first, 99)  # the saved state does not alias the live mixer
    second = make()
    second.load_state_dict(saved)
    for t in range(10, 20):
        pike_update(second, t)
    assert np.array_equal(straight.weights, second.weights)
    assert np.array_equal(straight.raw_weights, second.raw_weights)
    assert np.array_equal(straight.shrink_factors, second.shrink_factors)
    assert straight.n_updates == second.n_updates == 20


@pytest.mark.parametrize("arg, value", [("zeta1", 2.0), ("min_weight", 0.01), ("shrink", True), ("n_tasks", 4)])
def test_pike_refuses_a_state_made_with_other_arguments(arg, value):
    saved = PiKE(3).state_dict()
    kwargs = {"n_tasks": 3, arg: value}
    with pytest.raises(ValueError, match=arg):
        PiKE(**kwargs).load_state_dict(saved)


@pytest.mark.parametrize("make, other", [
    (lambda: Uniform(3), lambda: Uniform(4)),
    (lambda: Static([0.2, 0.3, 0.5]), lambda: Static([0.5, 0.3, 0.2])),
    (lambda: Proportional([10, 20, 30]), lambda: Proportional([10, 20, 30], temperature=2.0)),
    (lambda: RoundRobin(3), lambda: RoundRobin(2)),
    (lambda: RandomTask(3), lambda: RandomTask(3, weights=[0.5, 0.25, 0.25])),
], ids=["uniform", "static", "proportional", "round-robin", "random-task"])
def test_samplers_round_trip_and_refuse_other_arguments(make, other):
    sampler = make()
    fresh = make()
    fresh.load_state_dict(through_disk(sampler.state_dict()))
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    for step in range(5):
        assert np.array_equal(sampler.counts(9, step=step, rng=rng_a), fresh.counts(9, step=step, rng=rng_b))
    with pytest.raises(ValueError, match="load_state_dict"):
        other().load_state_dict(sampler.state_dict())


def test_load_state_dict_refuses_a_foreign_dict():
    with pytest.raises(ValueError, match="state_dict"):
        PiKE(3).load_state_dict({"weights": [1, 2, 3]})
    mixer = PiKE(3)
    assert copy.deepcopy(mixer.state_dict())["config"]["n_tasks"] == 3


# --------------------------------------------------------------------------- fit
def _fit_run(task, make_model, method, tmp_path, *, split=None, steps=6, mixer=None, **kw):
    """fit straight through, or ``split`` steps + checkpoint + a fresh model resumed for the rest."""
    from zoedu.train import fit

    opts = dict(lr=kw.pop("lr", 1e-3), batch_size=4, seed=3, quiet=True, track_memory=False, eval_every=3,
                eval_examples=8, **kw)
    model = make_model()
    if split is None:
        return fit(model, task, method, steps=steps, mixer=mixer() if mixer else None, **opts), model
    path = tmp_path / "run.ckpt"
    fit(model, task, method, steps=split, checkpoint=path, mixer=mixer() if mixer else None, **opts)
    again = make_model()
    torch.manual_seed(1234)  # the checkpoint restores the random streams too
    h = fit(again, task, method, steps=steps, resume=path, mixer=mixer() if mixer else None, **opts)
    return h, again


def _same_run(a, b):
    (ha, ma), (hb, mb) = a, b
    cols = [c for c in ha.columns if c not in ("seconds", "mixer_seconds")]
    assert list(ha.columns) == list(hb.columns)
    for c in cols:
        x, y = ha[c].to_numpy(), hb[c].to_numpy()
        if x.dtype == object:
            assert all(np.array_equal(np.asarray(u), np.asarray(v), equal_nan=True) for u, v in zip(x, y)), c
        else:
            assert np.array_equal(x, y, equal_nan=True), c
    for (name, p), q in zip(ma.named_parameters(), mb.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("method, kw", [
    ("sgd", {}), ("adam", {}), ("ipsgd", {}), ("mezo", dict(lr=1e-3)), ("mezo", dict(lr=1e-3, estimator="adam")),
    ("addax", dict(lr=1e-3)),
], ids=["sgd", "adam", "ipsgd", "mezo", "mezo-adam", "addax"])
def test_fit_resumes_bit_for_bit(tiny_task, tmp_path, method, kw):
    from zoedu.models import load_model

    def make():
        return load_model("tiny-opt", size="1m", num_labels=2, seed=0)[0]

    _same_run(_fit_run(tiny_task, make, method, tmp_path, **kw), _fit_run(tiny_task, make, method, tmp_path,
                                                                          split=3, **kw))


@pytest.mark.parametrize("method", ["semi_dp", "dp_sgd"])
def test_fit_dp_resumes_bit_for_bit_and_keeps_counting_epsilon(tmp_path, method):
    from zoedu.tasks import load_task

    task = load_task("tabular", dataset="breast_cancer")

    def make():
        torch.manual_seed(0)
        return nn.Linear(30, 2)

    kw = dict(lr=0.5, noise_multiplier=1.0, public_fraction=0.1, **({"beta": 0.5} if method == "semi_dp" else {}))
    straight = _fit_run(task, make, method, tmp_path, **kw)
    resumed = _fit_run(task, make, method, tmp_path, split=3, **kw)
    _same_run(straight, resumed)
    assert np.all(np.diff(resumed[0]["epsilon"]) > 0)


def test_fit_resumes_a_pike_mixer_bit_for_bit(tokenizer, tmp_path):
    from zoedu.mixing import MixedBatchSource
    from zoedu.models import load_model
    from zoedu.tasks import load_task

    corpus = load_task("multidomain", tokenizer=tokenizer, n_train={"prose": 12, "code": 12, "rot13": 8,
                                                                    "arithmetic": 6}, n_validation=2, max_length=16)

    def make():
        return load_model("tiny-gpt2", size="1m", seed=0)[0]

    def mixer():
        return MixedBatchSource("pike", stats_every=2, update_every=2, smoothing=0.5)

    _same_run(_fit_run(corpus, make, "adam", tmp_path, mixer=mixer, lr=3e-3),
              _fit_run(corpus, make, "adam", tmp_path, split=3, mixer=mixer, lr=3e-3))


def test_fit_resume_refuses_another_run(tmp_path):
    from zoedu.tasks import load_task
    from zoedu.train import fit

    task = load_task("tabular", dataset="breast_cancer")
    path = tmp_path / "run.ckpt"
    fit(nn.Linear(30, 2), task, "sgd", steps=2, lr=0.1, seed=1, quiet=True, track_memory=False, checkpoint=path)
    for kw, name in [(dict(lr=0.2), "lr"), (dict(seed=2), "seed"), (dict(batch_size=8), "batch_size")]:
        args = dict(steps=4, lr=0.1, seed=1, quiet=True, track_memory=False, resume=path)
        args.update(kw)
        with pytest.raises(ValueError, match=name):
            fit(nn.Linear(30, 2), task, "sgd", **args)
    with pytest.raises(ValueError, match="adam"):
        fit(nn.Linear(30, 2), task, "adam", steps=4, lr=0.1, seed=1, quiet=True, resume=path)
    with pytest.raises(ValueError, match="already at step 2"):
        fit(nn.Linear(30, 2), task, "sgd", steps=2, lr=0.1, seed=1, quiet=True, resume=path)
    with pytest.raises(ValueError, match="resume"):
        fit(nn.Linear(30, 2), task, "sgd", steps=2, lr=0.1, resume=tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="checkpoint"):
        fit(nn.Linear(30, 2), task, "sgd", steps=2, lr=0.1, checkpoint=tmp_path / "no" / "such.ckpt")


def test_fit_resume_refuses_a_task_cut_to_other_lengths(tiny_task, tmp_path):
    """The checkpoint records the task's max_length and train_max_length: continuing a run on
    examples cut at another length would silently train on other data."""
    from zoedu.models import load_model, load_tokenizer
    from zoedu.tasks import load_task
    from zoedu.train import fit

    path = tmp_path / "run.ckpt"
    opts = dict(lr=1e-3, batch_size=4, seed=3, quiet=True, track_memory=False, eval_every=0)
    fit(load_model("tiny-opt", size="1m", num_labels=2, seed=0)[0], tiny_task, "mezo", steps=2, checkpoint=path,
        **opts)
    short = load_task("sentiment", tokenizer=load_tokenizer("tiny-opt"), n_train=200, n_validation=50,
                      max_length=tiny_task.max_length, train_max_length=tiny_task.max_length - 1)
    with pytest.raises(ValueError, match=f"train_max_length={tiny_task.max_length}.*build the task with"):
        fit(load_model("tiny-opt", size="1m", num_labels=2, seed=0)[0], short, "mezo", steps=4, resume=path, **opts)
    h = fit(load_model("tiny-opt", size="1m", num_labels=2, seed=0)[0], tiny_task, "mezo", steps=4, resume=path,
            **opts)
    assert list(h["step"]) == [1, 2, 3, 4]
    # a checkpoint written before the lengths were recorded still resumes
    state = torch.load(path, weights_only=False)
    del state["config"]["max_length"], state["config"]["train_max_length"]
    torch.save(state, tmp_path / "old.ckpt")
    again = fit(load_model("tiny-opt", size="1m", num_labels=2, seed=0)[0], tiny_task, "mezo", steps=4,
                resume=tmp_path / "old.ckpt", **opts)
    assert np.array_equal(again["loss"], h["loss"])
