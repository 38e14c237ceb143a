"""Property tests (issue 15, items 7 and 9): arbitrary bad values given to the public API give a
ValueError/TypeError that names the argument — never a deep traceback, never a state change."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from zoedu import mixing, optim, privacy

FAST = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NON_NUMBERS = st.sampled_from(["1e-3", None, [], {}, object(), True, 1j])
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
NEGATIVE = st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=False)
NON_POSITIVE = st.one_of(NEGATIVE, st.just(0.0), st.just(0))
FRACTIONAL = st.floats(min_value=0.01, max_value=1e6).filter(lambda x: x != int(x))
NOT_INT = st.one_of(FRACTIONAL, NON_FINITE, st.sampled_from(["3", None, True, 2.0]))
BAD_POSITIVE = st.one_of(NON_FINITE, NON_POSITIVE, NON_NUMBERS)          # a finite number > 0 expected
BAD_NON_NEGATIVE = st.one_of(NON_FINITE, NEGATIVE, NON_NUMBERS)          # a finite number ≥ 0 expected
BAD_UNIT = st.one_of(NON_FINITE, NEGATIVE, st.floats(min_value=1.0001, max_value=1e9), NON_NUMBERS)
BAD_POSITIVE_INT = st.one_of(NOT_INT, st.integers(max_value=0))
BAD_SEED = st.one_of(NOT_INT, st.integers(max_value=-1))


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))


def ce(model, batch):
    return nn.functional.cross_entropy(model(batch["x"]), batch["labels"])


def refused(make, name, value):
    """``make(value)`` must raise a ValueError/TypeError naming ``name`` and change no weight."""
    model = net()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises((ValueError, TypeError)) as info:
        make(model, value)
    assert name in str(info.value), f"{name}={value!r}: {info.value}"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


CASES = {
    # zoedu.optim
    "MeZO.lr": (lambda m, v: optim.MeZO(m.parameters(), lr=v), "lr", BAD_NON_NEGATIVE),
    "MeZO.eps": (lambda m, v: optim.MeZO(m.parameters(), lr=0.1, eps=v), "eps", BAD_POSITIVE),
    "MeZO.weight_decay": (lambda m, v: optim.MeZO(m.parameters(), lr=0.1, weight_decay=v), "weight_decay",
                          BAD_NON_NEGATIVE),
    "MeZO.n_perturb": (lambda m, v: optim.MeZO(m.parameters(), lr=0.1, n_perturb=v), "n_perturb", BAD_POSITIVE_INT),
    "MeZO.momentum": (lambda m, v: optim.MeZO(m.parameters(), lr=0.1, momentum=v), "momentum", BAD_UNIT),
    "MeZO.adam_eps": (lambda m, v: optim.MeZO(m.parameters(), lr=0.1, adam_eps=v), "adam_eps", BAD_POSITIVE),
    "MeZO.seed": (lambda m, v: optim.MeZO(m.parameters(), lr=0.1, seed=v), "seed", NOT_INT),
    "MeZO.chunk": (lambda m, v: optim.MeZO(m.parameters(), lr=0.1, chunk=v), "chunk", BAD_POSITIVE_INT),
    "MeZO.workers": (lambda m, v: optim.MeZO(m.parameters(), lr=0.1, workers=v), "workers",
                     st.one_of(FRACTIONAL, st.integers(max_value=0), st.just("2"))),
    "MeZO.estimator": (lambda m, v: optim.MeZO(m.parameters(), lr=0.1, estimator=v), "estimator",
                       st.text(max_size=8).filter(lambda s: s not in optim.ESTIMATORS)),
    "MeZO.directions": (lambda m, v: optim.MeZO(m.parameters(), lr=0.1, directions=v), "directions",
                        st.text(max_size=8).filter(lambda s: s not in ("gaussian", "rademacher"))),
    "Addax.lr": (lambda m, v: optim.Addax(m.parameters(), lr=v), "lr", BAD_NON_NEGATIVE),
    "Addax.eps": (lambda m, v: optim.Addax(m.parameters(), lr=0.1, eps=v), "eps", BAD_POSITIVE),
    "Addax.alpha": (lambda m, v: optim.Addax(m.parameters(), lr=0.1, alpha=v), "alpha", BAD_UNIT),
    "Addax.seed": (lambda m, v: optim.Addax(m.parameters(), lr=0.1, seed=v), "seed", NOT_INT),
    "Addax.exact_restore": (lambda m, v: optim.Addax(m.parameters(), lr=0.1, exact_restore=v), "exact_restore",
                            st.sampled_from([1, "yes", None])),
    "IPSGD.lr": (lambda m, v: optim.IPSGD(m.parameters(), lr=v), "lr", BAD_NON_NEGATIVE),
    "IPSGD.weight_decay": (lambda m, v: optim.IPSGD(m.parameters(), lr=0.1, weight_decay=v), "weight_decay",
                           BAD_NON_NEGATIVE),
    # zoedu.mixing
    "PiKE.zeta1": (lambda m, v: mixing.PiKE(3, zeta1=v), "zeta1", BAD_POSITIVE),
    "PiKE.zeta2": (lambda m, v: mixing.PiKE(3, zeta2=v), "zeta2", BAD_NON_NEGATIVE),
    "PiKE.update_every": (lambda m, v: mixing.PiKE(3, update_every=v), "update_every", BAD_POSITIVE_INT),
    "PiKE.max_log_step": (lambda m, v: mixing.PiKE(3, max_log_step=v), "max_log_step",
                          BAD_POSITIVE.filter(lambda v: v is not None)),  # None: no bound
    "PiKE.n_tasks": (lambda m, v: mixing.PiKE(v), "n_tasks", st.one_of(NOT_INT, st.integers(max_value=1))),
    "BalancedPiKE.tau": (lambda m, v: mixing.BalancedPiKE(3, tau=v), "tau", BAD_POSITIVE),
    "PiKE.update": (lambda m, v: mixing.PiKE(3).update([1.0, v, 1.0], [1.0, 1.0, 1.0]), "sq_norms",
                    st.one_of(NON_FINITE, NEGATIVE)),
    "Static.weights": (lambda m, v: mixing.Static([v, 0.5, 0.5]), "weights", st.one_of(NON_FINITE, NEGATIVE)),
    "Proportional.sizes": (lambda m, v: mixing.Proportional([10, v, 3]), "sizes", st.one_of(NON_FINITE, NON_POSITIVE)),
    "Proportional.temperature": (lambda m, v: mixing.Proportional([10, 3], temperature=v), "temperature",
                                 BAD_POSITIVE),
    "apportion.b": (lambda m, v: mixing.apportion([0.5, 0.5], v), "b", BAD_POSITIVE_INT),
    # zoedu.privacy
    "epsilon.noise_multiplier": (lambda m, v: privacy.epsilon(v, 0.1, 10, 1e-5), "noise_multiplier",
                                 BAD_NON_NEGATIVE),
    "epsilon.sample_rate": (lambda m, v: privacy.epsilon(1.0, v, 10, 1e-5), "sample_rate", BAD_UNIT),
    "epsilon.steps": (lambda m, v: privacy.epsilon(1.0, 0.1, v, 1e-5), "steps",
                      st.one_of(NOT_INT, st.integers(max_value=-1))),
    "epsilon.delta": (lambda m, v: privacy.epsilon(1.0, 0.1, 10, v), "delta",
                      st.one_of(NON_FINITE, NON_POSITIVE, st.floats(min_value=0.0101, max_value=1e3), NON_NUMBERS)),
    "noise_for_epsilon.target_epsilon": (lambda m, v: privacy.noise_for_epsilon(v, 0.1, 10, 1e-5), "target_epsilon",
                                         BAD_POSITIVE),
    "mean_estimate.epsilon": (lambda m, v: privacy.mean_estimate(np.zeros((3, 2)), np.zeros((2, 2)), epsilon=v,
                                                                 radius=1.0), "epsilon", BAD_POSITIVE),
    "mean_estimate.radius": (lambda m, v: privacy.mean_estimate(np.zeros((3, 2)), np.zeros((2, 2)), epsilon=1.0,
                                                                radius=v), "radius", BAD_POSITIVE),
    "PrivacyAccountant.step": (lambda m, v: privacy.PrivacyAccountant().step(v, 0.1), "noise_multiplier",
                               BAD_NON_NEGATIVE),
    "SemiDPSGD.lr": (lambda m, v: privacy.SemiDPSGD(m, ce, lr=v, beta=1.0, noise_multiplier=1.0, max_grad_norm=1.0),
                     "lr", BAD_NON_NEGATIVE),
    "SemiDPSGD.beta": (lambda m, v: privacy.SemiDPSGD(m, ce, lr=0.1, beta=v, noise_multiplier=1.0,
                                                      max_grad_norm=1.0), "beta", BAD_UNIT),
    "SemiDPSGD.noise_multiplier": (lambda m, v: privacy.SemiDPSGD(m, ce, lr=0.1, beta=1.0, noise_multiplier=v,
                                                                  max_grad_norm=1.0), "noise_multiplier",
                                   BAD_NON_NEGATIVE),
    "SemiDPSGD.max_grad_norm": (lambda m, v: privacy.SemiDPSGD(m, ce, lr=0.1, beta=1.0, noise_multiplier=1.0,
                                                               max_grad_norm=v), "max_grad_norm", BAD_POSITIVE),
    "SemiDPSGD.seed": (lambda m, v: privacy.SemiDPSGD(m, ce, lr=0.1, beta=1.0, noise_multiplier=1.0,
                                                      max_grad_norm=1.0, seed=v), "seed", BAD_SEED),
    "split_public.public_fraction": (lambda m, v: privacy.split_public(100, v), "public_fraction", BAD_UNIT),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_values_are_refused_naming_the_argument(case):
    make, name, values = CASES[case]

    @FAST
    @given(value=values)
    def check(value):
        refused(make, name, value)

    check()


# --------------------------------------------------------------------------- memory and models
_MODEL = {}


def tiny_opt():
    if not _MODEL:
        from zoedu.models import load_model

        _MODEL["m"] = load_model("tiny-opt", size="1m", num_labels=2)[0]
    return _MODEL["m"]


def estimate_with(**kw):
    from zoedu.memory import estimate

    args = dict(batch_size=2, seq_len=8)
    args.update(kw)
    return estimate(tiny_opt(), args.pop("method", "mezo"), **args)


def load_with(**kw):
    from zoedu.models import load_model

    return load_model("tiny-opt", **{"size": "1m", **kw})


OTHER_CASES = {
    "estimate.batch_size": (lambda v: estimate_with(batch_size=v), "batch_size", BAD_POSITIVE_INT),
    "estimate.seq_len": (lambda v: estimate_with(seq_len=v), "seq_len", BAD_POSITIVE_INT),
    "estimate.method": (lambda v: estimate_with(method=v), "method",
                        st.sampled_from(["adamw", "", "MEZO", None])),
    "load_model.size": (lambda v: load_with(size=v), "size", st.sampled_from(["3m", "", "1M", None, 5])),
    "load_model.num_labels": (lambda v: load_with(num_labels=v), "num_labels",
                              st.one_of(st.integers(max_value=1), FRACTIONAL, NON_FINITE)),
    "load_model.dtype": (lambda v: load_with(dtype=v), "dtype", st.sampled_from(["float8", "int8", "half-ish"])),
}


@pytest.mark.parametrize("case", sorted(OTHER_CASES))
def test_memory_and_models_refuse_bad_values(case):
    make, name, values = OTHER_CASES[case]

    @settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(value=values)
    def check(value):
        with pytest.raises((ValueError, TypeError)) as info:
            make(value)
        assert name in str(info.value), f"{name}={value!r}: {info.value}"

    check()


# --------------------------------------------------------------------------- fit and tasks
_TAB = {}


def tab():
    if not _TAB:
        from zoedu.tasks import load_task

        _TAB["task"] = load_task("tabular", dataset="breast_cancer")
    return _TAB["task"]


def fit_with(model, **kw):
    from zoedu.train import fit

    args = dict(steps=1, lr=0.1, batch_size=4, quiet=True, track_memory=False, eval_every=0)
    args.update(kw)
    fit(model, tab(), "sgd", **args)


FIT_CASES = {
    "steps": BAD_POSITIVE_INT,
    "lr": BAD_POSITIVE,
    "batch_size": st.one_of(BAD_POSITIVE_INT, st.integers(min_value=10_000, max_value=10**9)),
    "seed": BAD_SEED,
    "eval_every": st.one_of(FRACTIONAL, st.integers(max_value=-1), st.just("5")),
    "eval_examples": st.one_of(FRACTIONAL, st.integers(max_value=0)),
    "eval_batch_size": BAD_POSITIVE_INT,
}


@pytest.mark.parametrize("name", sorted(FIT_CASES))
def test_fit_refuses_bad_values_before_touching_the_model(name):
    @FAST
    @given(value=FIT_CASES[name])
    def check(value):
        torch.manual_seed(0)
        model = nn.Linear(30, 2)
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises((ValueError, TypeError)) as info:
            fit_with(model, **{name: value})
        assert name in str(info.value)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

    check()


@FAST
@given(value=st.one_of(BAD_POSITIVE_INT, st.integers(min_value=10_000)))
def test_task_sample_and_evaluate_sizes(value):
    task = tab()
    with pytest.raises(ValueError, match="batch_size"):
        task.sample("train", value, np.random.default_rng(0))
    if not (isinstance(value, int) and value > 0):
        with pytest.raises(ValueError, match="batch_size"):
            task.evaluate(nn.Linear(30, 2), batch_size=value)
        if value is not None:  # None: the whole split
            with pytest.raises(ValueError, match="max_examples"):
                task.evaluate(nn.Linear(30, 2), max_examples=value)


@pytest.mark.parametrize("value", [0, 1, -3, 2.5, math.nan, "64"])
def test_load_task_refuses_a_bad_max_length(value):
    from zoedu.tasks import load_task

    with pytest.raises(ValueError, match="max_length"):
        load_task("sentiment", n_train=8, n_validation=4, max_length=value)


@pytest.mark.parametrize("kw, name", [(dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(n_train=0), "n_train"),
                                      (dict(n_validation=math.nan), "n_validation")])
def test_load_task_refuses_bad_sizes_and_seeds(kw, name):
    from zoedu.tasks import load_task

    with pytest.raises(ValueError, match=name):
        load_task("sentiment", **{"n_train": 8, "n_validation": 4, **kw})


def test_fit_refuses_a_text_model_on_a_tabular_task():
    from zoedu.models import load_model

    model = load_model("tiny-opt", size="1m", num_labels=2)[0]
    with pytest.raises(ValueError, match="tabular"):
        fit_with(model)


def test_fit_refuses_a_feature_model_on_a_text_task():
    from zoedu.tasks import load_task
    from zoedu.train import fit

    task = load_task("sentiment", n_train=8, n_validation=4, max_length=16)
    with pytest.raises(ValueError, match="text task"):
        fit(nn.Linear(30, 2), task, "sgd", steps=1, lr=0.1, batch_size=2, quiet=True, track_memory=False)
