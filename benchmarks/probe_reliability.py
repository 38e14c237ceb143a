"""Probe zoedu with bad inputs and faults; count clear errors, unclear errors and silent wrong results.

Issue 15's categories, re-run before and after the reliability work::

    PYTHONPATH=<checkout> python benchmarks/probe_reliability.py [--root <checkout>] [--no-cli] [--json out.json]

Each probe is classified as

* ``clear``   — a ValueError/TypeError/FloatingPointError (exit code 2 with one line naming the
  flag, for the CLI) whose message names the argument at fault;
* ``ok``      — a fault handled correctly without an error (weights put back, a true warning,
  a resumed run equal to a straight one);
* ``unclear`` — an error of another type, one not naming the argument, a traceback (CLI) or
  a crash;
* ``silent``  — no error and a wrong result: corrupted or non-finite weights, a lost state,
  a wrong ε, exit code 0 on bad input.

The "good" outcomes are clear + ok. Everything is offline, tiny and CPU-only.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(1)
PROBES: list[tuple[str, str, object]] = []  # (category, name, fn)


def probe(category: str, name: str):
    def wrap(fn):
        PROBES.append((category, name, fn))
        return fn
    return wrap


class Silent(Exception):
    """Raised by a probe when it found a wrong result without any error."""


def expect_error(fn, argument: str):
    """The probe's outcome when ``fn`` must raise an error naming ``argument``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except (ValueError, TypeError, FloatingPointError) as err:
        return "clear" if argument.lower() in str(err).lower() else f"unclear: {type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001
        return f"unclear: {type(err).__name__}: {str(err)[:120]}"
    return "silent: accepted"


# --------------------------------------------------------------------------- helpers
def net(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


X = torch.randn(12, 6, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(2))


def loss_of(model, t=0):
    g = torch.Generator().manual_seed(100 + t)
    x = torch.randn(12, 6, generator=g)
    y = torch.randint(0, 3, (12,), generator=g)
    return F.cross_entropy(model(x.to(next(model.parameters()).dtype)).float(), y)


def snap(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def close(a, b, atol=1e-6):
    return all(torch.allclose(x, y, rtol=0, atol=atol) for x, y in zip(a, b))


def finite(model):
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


_CACHE: dict = {}


def tabular():
    if "tab" not in _CACHE:
        from zoedu.tasks import load_task

        _CACHE["tab"] = load_task("tabular", dataset="breast_cancer")
    return _CACHE["tab"]


def text_task():
    if "text" not in _CACHE:
        from zoedu.models import load_tokenizer
        from zoedu.tasks import load_task

        _CACHE["text"] = load_task("sentiment", tokenizer=load_tokenizer("tiny-opt"), n_train=40,
                                   n_validation=16, max_length=32)
    return _CACHE["text"]


def fit_tab(method="sgd", **kw):
    from zoedu.train import fit

    opts = dict(steps=3, lr=0.1, batch_size=8, quiet=True, track_memory=False, eval_every=0)
    opts.update(kw)
    torch.manual_seed(0)
    return fit(nn.Linear(30, 2), tabular(), method, **opts)


# --------------------------------------------------------------------------- arguments
def _args():
    from zoedu.mixing import PiKE, Proportional, Static, apportion
    from zoedu.mixing.source import MixedBatchSource
    from zoedu.optim import IPSGD, Addax, MeZO
    from zoedu.privacy import SemiDPSGD, epsilon, mean_estimate, noise_for_epsilon
    from zoedu.privacy.semi_dp import split_public

    def ce(model, batch):
        return F.cross_entropy(model(batch["x"]), batch["labels"])

    def mezo_step(**kw):
        m = net()
        MeZO(m.parameters(), **kw).step(lambda: loss_of(m))

    cases = [
        ("MeZO lr=nan", lambda: MeZO(net().parameters(), lr=math.nan), "lr"),
        ("MeZO eps=inf", lambda: MeZO(net().parameters(), lr=0.1, eps=math.inf), "eps"),
        ("MeZO momentum=nan", lambda: MeZO(net().parameters(), lr=0.1, momentum=math.nan), "momentum"),
        ("MeZO betas=(nan, .9)", lambda: MeZO(net().parameters(), lr=0.1, betas=(math.nan, 0.9)), "betas"),
        ("MeZO seed=1.5", lambda: mezo_step(lr=0.1, seed=1.5), "seed"),
        ("MeZO seed='a'", lambda: mezo_step(lr=0.1, seed="a"), "seed"),
        ("MeZO chunk=0", lambda: mezo_step(lr=0.1, chunk=0), "chunk"),
        ("MeZO workers=-1", lambda: mezo_step(lr=0.1, workers=-1), "workers"),
        ("MeZO workers=0", lambda: mezo_step(lr=0.1, workers=0), "workers"),
        ("Addax alpha=nan", lambda: Addax(net().parameters(), lr=0.1, alpha=math.nan), "alpha"),
        ("Addax seed=nan", lambda: Addax(net().parameters(), lr=0.1, seed=math.nan), "seed"),
        ("IPSGD lr=nan", lambda: IPSGD(net().parameters(), lr=math.nan), "lr"),
        ("IPSGD weight_decay=inf", lambda: IPSGD(net().parameters(), lr=0.1, weight_decay=math.inf), "weight_decay"),
        ("SemiDPSGD lr=nan", lambda: SemiDPSGD(net(), ce, lr=math.nan, beta=1.0, noise_multiplier=1.0,
                                               max_grad_norm=1.0), "lr"),
        ("SemiDPSGD seed='x'", lambda: SemiDPSGD(net(), ce, lr=0.1, beta=1.0, noise_multiplier=1.0,
                                                 max_grad_norm=1.0, seed="x"), "seed"),
        ("SemiDPSGD expected_batch_size=2.5", lambda: SemiDPSGD(net(), ce, lr=0.1, beta=1.0, noise_multiplier=1.0,
                                                                max_grad_norm=1.0, expected_batch_size=2.5),
         "expected_batch_size"),
        ("PiKE zeta1=nan", lambda: PiKE(3, zeta1=math.nan), "zeta1"),
        ("PiKE max_log_step=nan", lambda: PiKE(3, max_log_step=math.nan), "max_log_step"),
        ("Static weights with nan", lambda: Static([math.nan, 0.5, 0.5]), "weights"),
        ("Proportional sizes with nan", lambda: Proportional([1, math.nan, 2]), "sizes"),
        ("Proportional temperature=nan", lambda: Proportional([1, 2, 3], temperature=math.nan), "temperature"),
        ("apportion weights with nan", lambda: apportion([math.nan, 0.5, 0.5], 4), "weights"),
        ("apportion b=nan", lambda: apportion([0.5, 0.5], math.nan), "b"),
        ("MixedBatchSource smoothing=nan", lambda: MixedBatchSource(smoothing=math.nan), "smoothing"),
        ("epsilon σ=nan", lambda: epsilon(math.nan, 0.1, 10, 1e-5), "noise_multiplier"),
        ("epsilon q=nan", lambda: epsilon(1.0, math.nan, 10, 1e-5), "sample_rate"),
        ("epsilon steps=2.5", lambda: epsilon(1.0, 0.1, 2.5, 1e-5), "steps"),
        ("noise_for_epsilon target=nan", lambda: noise_for_epsilon(math.nan, 0.1, 10, 1e-5), "target_epsilon"),
        ("mean_estimate epsilon=nan", lambda: mean_estimate(np.zeros((3, 2)), np.zeros((2, 2)), epsilon=math.nan,
                                                            radius=1.0), "epsilon"),
        ("mean_estimate radius=inf", lambda: mean_estimate(np.zeros((3, 2)), np.zeros((2, 2)), epsilon=1.0,
                                                           radius=math.inf), "radius"),
        ("split_public fraction=nan", lambda: split_public(100, math.nan), "public_fraction"),
        ("split_public seed=-1", lambda: split_public(100, 0.1, seed=-1), "seed"),
        ("fit steps=0", lambda: fit_tab(steps=0), "steps"),
        ("fit lr=nan", lambda: fit_tab(lr=math.nan), "lr"),
        ("fit batch_size=nan", lambda: fit_tab(batch_size=math.nan), "batch_size"),
        ("fit batch_size=True", lambda: fit_tab(batch_size=True), "batch_size"),
        ("fit batch_size > split", lambda: fit_tab(batch_size=100_000), "batch_size"),
        ("fit seed=-1", lambda: fit_tab(seed=-1), "seed"),
        ("fit seed=1.5", lambda: fit_tab(seed=1.5), "seed"),
        ("fit eval_examples=0", lambda: fit_tab(eval_every=None, eval_examples=0), "eval_examples"),
        ("fit eval_batch_size=0", lambda: fit_tab(eval_every=None, eval_batch_size=0), "eval_batch_size"),
        ("fit eval_every=1.5", lambda: fit_tab(eval_every=1.5), "eval_every"),
        ("fit device='gpu'", lambda: fit_tab(device="gpu"), "device"),
        ("fit mezo eps=nan", lambda: fit_tab("mezo", eps=math.nan), "eps"),
        ("fit unknown option", lambda: fit_tab("mezo", epz=1e-3), "epz"),
        ("evaluate max_examples=0", lambda: tabular().evaluate(nn.Linear(30, 2), max_examples=0), "max_examples"),
        ("evaluate batch_size=0", lambda: tabular().evaluate(nn.Linear(30, 2), batch_size=0), "batch_size"),
        ("task.sample batch_size=0", lambda: tabular().sample("train", 0, np.random.default_rng(0)), "batch_size"),
        ("task.sample batch_size > split", lambda: tabular().sample("train", 10_000, np.random.default_rng(0)),
         "batch_size"),
    ]
    return cases


def _text_args():
    from zoedu.memory import estimate
    from zoedu.models import load_model, load_tokenizer
    from zoedu.tasks import load_task

    tok = lambda: load_tokenizer("tiny-opt")  # noqa: E731

    def small_model():
        if "model" not in _CACHE:
            _CACHE["model"] = load_model("tiny-opt", size="1m", num_labels=2)[0]
        return _CACHE["model"]

    def use_task(**kw):
        task = load_task("sentiment", tokenizer=tok(), n_train=20, n_validation=8, **kw)
        task.sample("train", 4, np.random.default_rng(0))
        return task

    return [
        ("load_task max_length=0", lambda: use_task(max_length=0), "max_length"),
        ("load_task max_length=1", lambda: use_task(max_length=1), "max_length"),
        ("load_task max_length=-3", lambda: use_task(max_length=-3), "max_length"),
        ("load_task max_length=nan", lambda: use_task(max_length=math.nan), "max_length"),
        ("load_task n_train=0", lambda: use_task(n_train=0), "n_train"),
        ("load_task unknown", lambda: load_task("imdbx"), "imdbx"),
        ("load_model size='3m'", lambda: load_model("tiny-opt", size="3m"), "size"),
        ("load_model num_labels=0", lambda: load_model("tiny-opt", size="1m", num_labels=0), "num_labels"),
        ("load_model num_labels=nan", lambda: load_model("tiny-opt", size="1m", num_labels=math.nan), "num_labels"),
        ("load_model dtype='float8'", lambda: load_model("tiny-opt", size="1m", dtype="float8"), "dtype"),
        ("estimate batch_size=0", lambda: estimate(small_model(), "mezo", batch_size=0, seq_len=8), "batch_size"),
        ("estimate seq_len=-1", lambda: estimate(small_model(), "mezo", batch_size=1, seq_len=-1), "seq_len"),
        ("estimate seq_len=nan", lambda: estimate(small_model(), "mezo", batch_size=1, seq_len=math.nan), "seq_len"),
        ("estimate method='adamw'", lambda: estimate(small_model(), "adamw", batch_size=1, seq_len=8), "method"),
        ("fit text task on tabular model", lambda: fit_text_on_tabular(), "task"),
    ]


def fit_text_on_tabular():
    from zoedu.train import fit

    fit(nn.Linear(30, 2), text_task(), "sgd", steps=1, lr=0.1, batch_size=2, quiet=True, track_memory=False)


def register_arguments():
    for name, fn, arg in _args() + _text_args():
        probe("arguments", name)(lambda fn=fn, arg=arg: expect_error(fn, arg))


# --------------------------------------------------------------------------- numerical faults
@probe("numerical", "MeZO fp16 with a huge eps: no non-finite weight, warning true")
def _():
    from zoedu.optim import MeZO

    m = net(torch.float16)
    before = snap(m)
    opt = MeZO(m.parameters(), lr=1e-3, eps=3e4)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        opt.step(lambda: loss_of(m))
    if not finite(m):
        n = sum(int((~torch.isfinite(p)).sum()) for p in m.parameters())
        return f"silent: {n} non-finite weights; warning: {str(w[0].message)[:80] if w else None}"
    if not same(before, snap(m)) and any("restored" in str(x.message) or "unchanged" in str(x.message) for x in w):
        return "silent: weights changed although the warning says restored/unchanged"
    return "ok"


@probe("numerical", "MeZO fp32 NaN loss: weights put back")
def _():
    from zoedu.optim import MeZO

    m = net()
    before = snap(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MeZO(m.parameters(), lr=1e-2, exact_restore=True).step(lambda: math.nan)
    return "ok" if same(before, snap(m)) else "silent: weights changed"


def nan_backward(m):
    """A first-order closure whose loss (and hence every gradient) is NaN."""
    def closure():
        loss = loss_of(m) * math.nan
        loss.backward()
        return loss
    return closure


@probe("numerical", "IP-SGD direct use, NaN loss: no NaN written")
def _():
    from zoedu.optim import IPSGD

    m = net()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        IPSGD(m.parameters(), lr=0.1).step(nan_backward(m))
    return "ok" if finite(m) else "silent: NaN written into the weights"


@probe("numerical", "Addax direct use, NaN first-order loss: no NaN written")
def _():
    from zoedu.optim import Addax

    m = net()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Addax(m.parameters(), lr=0.1, alpha=0.5).step(lambda: loss_of(m), nan_backward(m))
    return "ok" if finite(m) else "silent: NaN written into the weights"


@probe("numerical", "Addax NaN zeroth-order loss: restored as the warning says")
def _():
    from zoedu.optim import Addax

    m = net()
    before = snap(m)
    try:
        opt = Addax(m.parameters(), lr=0.1, alpha=0.5, exact_restore=True)
    except TypeError:
        opt = Addax(m.parameters(), lr=0.1, alpha=0.5)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        opt.step(lambda: math.nan, lambda: loss_of(m))
    if same(before, snap(m)):
        return "ok"
    text = " ".join(str(x.message) for x in w)
    if "up to" in text or "ulp" in text:
        return "ok"
    n = sum(int((a != b).sum()) for a, b in zip(before, snap(m)))
    return f"silent: says restored, {n} weights differ"


@probe("numerical", "PiKE update with a NaN statistic: refused")
def _():
    from zoedu.mixing import PiKE

    return expect_error(lambda: PiKE(3).update([1.0, math.nan, 1.0], [1.0, 1.0, 1.0]), "sq_norms")


@probe("numerical", "fit, MeZO with a huge lr: no non-finite weights left silently")
def _():
    from zoedu.train import fit

    torch.manual_seed(0)
    m = nn.Linear(30, 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = fit(m, tabular(), "mezo", steps=4, lr=1e30, batch_size=8, quiet=True, track_memory=False,
                    eval_every=0)
    except (ValueError, FloatingPointError) as err:
        return "clear" if "lr" in str(err) else f"unclear: {err}"
    if not finite(m) or not np.isfinite(h["loss"]).all():
        return "silent: NaN/inf in the weights or the History, no error"
    return "ok"


# --------------------------------------------------------------------------- interruption
def _raising(m, at, error=RuntimeError):
    calls = [0]

    def closure():
        calls[0] += 1
        if calls[0] == at:
            raise error("stop")
        return loss_of(m)

    return closure


for _at in (1, 2):
    for _err in (RuntimeError, KeyboardInterrupt):
        @probe("interruption", f"MeZO: {_err.__name__} in closure call {_at} puts θ back")
        def _(at=_at, err=_err):
            from zoedu.optim import MeZO

            m = net()
            before = snap(m)
            try:
                MeZO(m.parameters(), lr=1e-2, eps=1e-2).step(_raising(m, at, err))
            except err:
                pass
            return "ok" if close(before, snap(m)) else "silent: weights left perturbed"


@probe("interruption", "MeZO exact_restore: exception in the closure puts θ back bit for bit")
def _():
    from zoedu.optim import MeZO

    m = net()
    before = snap(m)
    try:
        MeZO(m.parameters(), lr=1e-2, eps=1e-2, exact_restore=True).step(_raising(m, 2))
    except RuntimeError:
        pass
    return "ok" if same(before, snap(m)) else "silent: weights left perturbed"


@probe("interruption", "Addax: KeyboardInterrupt in the zeroth-order closure puts θ back")
def _():
    from zoedu.optim import Addax

    m = net()
    before = snap(m)
    try:
        Addax(m.parameters(), lr=1e-2, eps=1e-2, alpha=0.5).step(_raising(m, 1, KeyboardInterrupt),
                                                                  lambda: loss_of(m))
    except KeyboardInterrupt:
        pass
    return "ok" if close(before, snap(m)) else "silent: weights left perturbed"


@probe("interruption", "IP-SGD: Ctrl-C during backward completes the step")
def _():
    import signal

    from zoedu.optim import IPSGD

    ref = net()
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1)
    loss_of(ref).backward()
    sgd.step()
    m = net()
    m[2].weight.register_hook(lambda g: os.kill(os.getpid(), signal.SIGINT))

    def closure():
        loss = loss_of(m)
        loss.backward()
        return loss

    try:
        IPSGD(m.parameters(), lr=0.1).step(nan_backward(m))
    except KeyboardInterrupt:
        pass
    return "ok" if same(snap(ref), snap(m)) else "silent: some parameters updated, others not"


@probe("interruption", "fit: an exception at step 3 hands back the History of steps 1-2")
def _():
    class Failing(torch.optim.SGD):
        n = 0

        def step(self, closure=None):
            self.n += 1
            if self.n == 3:
                raise RuntimeError("boom")
            return super().step(closure)

    from zoedu.train import fit

    torch.manual_seed(0)
    m = nn.Linear(30, 2)
    try:
        fit(m, tabular(), Failing(m.parameters(), lr=0.1), steps=5, lr=0.1, batch_size=8, quiet=True,
            track_memory=False, eval_every=0)
    except RuntimeError as err:
        h = getattr(err, "history", None)
        return "ok" if h is not None and len(h) == 2 else "silent: the History of the completed steps is lost"
    return "silent: no error"


# --------------------------------------------------------------------------- resume
def through_disk(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _resume(make, step):
    straight = net()
    opt = make(straight)
    for t in range(20):
        step(opt, straight, t)
    first = net()
    opt1 = make(first)
    for t in range(10):
        step(opt1, first, t)
    saved = through_disk({"m": first.state_dict(), "o": opt1.state_dict()})
    second = net(seed=1)
    second.load_state_dict(saved["m"])
    opt2 = make(second)
    opt2.load_state_dict(saved["o"])
    for t in range(10, 20):
        step(opt2, second, t)
    if same(snap(straight), snap(second)):
        return "ok"
    return f"silent: {sum(int((a != b).sum()) for a, b in zip(snap(straight), snap(second)))} weights differ"


def _zo(opt, m, t):
    opt.step(lambda: loss_of(m, t))


def _addax(opt, m, t):
    def fo():
        loss = loss_of(m, t)
        loss.backward()
        return loss

    opt.step(lambda: loss_of(m, t + 50), fo)


def _dp(opt, m, t):
    g = torch.Generator().manual_seed(t)
    x, y = torch.randn(12, 6, generator=g), torch.randint(0, 3, (12,), generator=g)
    opt.step({"x": x[:6], "labels": y[:6]}, {"x": x[6:], "labels": y[6:]})


def _ce(model, batch):
    return F.cross_entropy(model(batch["x"]), batch["labels"])


def _register_resume():
    from zoedu.optim import IPSGD, Addax, MeZO
    from zoedu.privacy import SemiDPSGD

    def ip(opt, m, t):
        def closure():
            loss = loss_of(m, t)
            loss.backward()
            return loss
        opt.step(closure)

    cases = {
        "MeZO": (lambda m: MeZO(m.parameters(), lr=1e-2, eps=1e-2, seed=3), _zo),
        "MeZO adam n=2": (lambda m: MeZO(m.parameters(), lr=1e-2, eps=1e-2, estimator="adam", n_perturb=2), _zo),
        "Addax": (lambda m: Addax(m.parameters(), lr=1e-2, eps=1e-2, alpha=0.3, seed=3), _addax),
        "IPSGD": (lambda m: IPSGD(m.parameters(), lr=0.05), ip),
        "SemiDPSGD (noise stream)": (lambda m: SemiDPSGD(m, _ce, lr=0.1, beta=0.7, noise_multiplier=1.0,
                                                          max_grad_norm=1.0, seed=7, expected_batch_size=6), _dp),
        "DP-SGD (beta=1)": (lambda m: SemiDPSGD(m, _ce, lr=0.1, beta=1.0, noise_multiplier=1.0, max_grad_norm=1.0,
                                                 seed=7, expected_batch_size=6), _dp),
    }
    for name, (make, step) in cases.items():
        probe("resume", f"{name}: 10 + save/load + 10 == 20 straight")(lambda make=make, step=step: _resume(make, step))


@probe("resume", "PiKE: 10 + save/load + 10 == 20 straight")
def _():
    from zoedu.mixing import PiKE

    def upd(p, t):
        r = np.random.default_rng(t)
        p.update(r.uniform(0.1, 2, 3), r.uniform(0.1, 2, 3), n_examples=np.full(3, 8.0))

    a = PiKE(3, shrink=True)
    for t in range(20):
        upd(a, t)
    b = PiKE(3, shrink=True)
    for t in range(10):
        upd(b, t)
    try:
        state = through_disk(b.state_dict())
        c = PiKE(3, shrink=True)
        c.load_state_dict(state)
    except AttributeError as err:
        return f"unclear: {err}"
    for t in range(10, 20):
        upd(c, t)
    return "ok" if np.array_equal(a.weights, c.weights) else "silent: weights differ"


@probe("resume", "MeZO: loading a state saved with another seed")
def _():
    from zoedu.optim import MeZO

    m = net()
    opt = MeZO(m.parameters(), lr=1e-2, seed=1)
    opt.step(lambda: loss_of(m))
    return expect_error(lambda: MeZO(net().parameters(), lr=1e-2, seed=2).load_state_dict(opt.state_dict()), "seed")


@probe("resume", "MeZO: loading a state saved with another eps")
def _():
    from zoedu.optim import MeZO

    m = net()
    opt = MeZO(m.parameters(), lr=1e-2, eps=1e-3)
    opt.step(lambda: loss_of(m))
    return expect_error(lambda: MeZO(net().parameters(), lr=1e-2, eps=1e-2).load_state_dict(opt.state_dict()), "eps")


@probe("resume", "SemiDPSGD: loading a state saved with another noise_multiplier")
def _():
    from zoedu.privacy import SemiDPSGD

    m = net()
    opt = SemiDPSGD(m, _ce, lr=0.1, beta=1.0, noise_multiplier=1.0, max_grad_norm=1.0)
    _dp(opt, m, 0)
    other = SemiDPSGD(net(), _ce, lr=0.1, beta=1.0, noise_multiplier=3.0, max_grad_norm=1.0)
    return expect_error(lambda: other.load_state_dict(opt.state_dict()), "noise_multiplier")


@probe("resume", "fit: 3 steps + checkpoint + resume == 6 straight (MeZO)")
def _():
    import tempfile

    from zoedu.train import fit

    opts = dict(lr=1e-2, batch_size=8, seed=1, quiet=True, track_memory=False, eval_every=0)

    def make():
        torch.manual_seed(0)
        return nn.Linear(30, 2)

    straight = make()
    fit(straight, tabular(), "mezo", steps=6, **opts)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "run.ckpt")
        first = make()
        try:
            fit(first, tabular(), "mezo", steps=3, checkpoint=path, **opts)
        except (TypeError, ValueError) as err:
            return f"unclear: fit cannot checkpoint ({str(err)[:80]})"
        again = make()
        fit(again, tabular(), "mezo", steps=6, resume=path, **opts)
    return "ok" if same(snap(straight), snap(again)) else "silent: weights differ"


# --------------------------------------------------------------------------- privacy
@probe("privacy", "epsilon(1.0, 0.04, 20, delta=0.5)")
def _():
    from zoedu.privacy import epsilon

    try:
        e = epsilon(1.0, 0.04, 20, 0.5)
    except ValueError as err:
        return "clear" if "delta" in str(err) else f"unclear: {err}"
    return f"silent: accepted, ε = {e:.3g}"


@probe("privacy", "fit dp_sgd with delta ≥ 1/n_priv")
def _():
    return expect_error(lambda: fit_tab("dp_sgd", noise_multiplier=1.0, delta=0.009), "delta")


@probe("privacy", "fit dp_sgd poisson=False: ε not the Poisson accountant's")
def _():
    from zoedu.privacy import epsilon

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = fit_tab("dp_sgd", noise_multiplier=1.0, poisson=False, batch_size=32, steps=5)
    n_priv = int(round(tabular().size("train") * 0.97))
    poisson_eps = epsilon(1.0, 32 / n_priv, 5, 1e-5)
    if abs(h["epsilon"].iloc[-1] - poisson_eps) < 0.05 * poisson_eps:
        return "silent: fixed-size batches reported with the Poisson accountant's ε"
    return "ok"


@probe("privacy", "fit target_epsilon with a run longer than steps_planned")
def _():
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            h = fit_tab("dp_sgd", target_epsilon=1.0, steps_planned=3, steps=8, batch_size=32)
    except ValueError as err:
        return "clear" if "steps_planned" in str(err) else f"unclear: {err}"
    if h["epsilon"].iloc[-1] > 1.0 and not any("EXCEEDED" in str(x.message).upper() for x in w):
        return f"silent: ε = {h['epsilon'].iloc[-1]:.3g} > 1.0 with no warning"
    return "ok"


# --------------------------------------------------------------------------- CLI
CLI_TINY = ["--model", "tiny-opt", "--size", "1m", "--steps", "2", "--batch-size", "2", "--eval-examples", "8",
            "--max-length", "32", "--html", "", "--quiet", "--no-zero-shot", "--head", "linear"]
CLI_CASES = [
    ("privacy epsilon --steps -5", ["privacy", "epsilon", "--steps", "-5"], "--steps"),
    ("privacy epsilon --delta 0.5", ["privacy", "epsilon", "--delta", "0.5"], "--delta"),
    ("privacy epsilon --sample-rate nan", ["privacy", "epsilon", "--sample-rate", "nan"], "--sample-rate"),
    ("privacy epsilon --noise-multiplier inf", ["privacy", "epsilon", "--noise-multiplier", "inf"],
     "--noise-multiplier"),
    ("privacy mean --trials 0", ["privacy", "mean", "--trials", "0"], "--trials"),
    ("privacy sweep --epsilons nan", ["privacy", "sweep", "--epsilons", "nan"], "--epsilons"),
    ("privacy epsilon --csv into a missing folder", ["privacy", "epsilon", "--csv", "/nonexistent/dir/x.csv"],
     "--csv"),
    ("mix --steps 0", ["mix", "--fast", "--steps", "0"], "--steps"),
    ("mix --lr nan", ["mix", "--fast", "--lr", "nan"], "--lr"),
    ("mix --batch-size -1", ["mix", "--fast", "--batch-size", "-1"], "--batch-size"),
    ("mix --task synthetic --fast (its own defaults)", ["mix", "--task", "synthetic", "--fast", "--steps", "2"], None),
    ("compare --steps 0", ["compare", *CLI_TINY[:4], "--steps", "0"], "--steps"),
    ("compare --lr nan", ["compare", *CLI_TINY, "--methods", "sgd", "--lr", "nan"], "--lr"),
    ("compare --lr 1e30 (MeZO diverges)", ["compare", *CLI_TINY, "--methods", "mezo", "--lr", "1e30"], "--lr"),
    ("compare --csv into a missing folder", ["compare", *CLI_TINY, "--methods", "sgd", "--csv",
                                             "/nonexistent/dir/x.csv"], "--csv"),
    ("compare --task tabular with a text model", ["compare", *CLI_TINY, "--methods", "sgd", "--task", "tabular"],
     "--task"),
    ("compare --seed -1", ["compare", *CLI_TINY, "--methods", "sgd", "--seed", "-1"], "--seed"),
    ("compare --eval-examples 0", ["compare", *CLI_TINY, "--methods", "sgd", "--eval-examples", "0"],
     "--eval-examples"),
    ("compare --methods nosuch", ["compare", *CLI_TINY, "--methods", "nosuch"], "--methods"),
    ("memory --batch-size 0", ["memory", "tiny-opt", "--batch-size", "0"], "--batch-size"),
    ("memory --dtype float8", ["memory", "tiny-opt", "--dtype", "float8", "--device", "cpu"], "--dtype"),
    ("memory --gpus nan", ["memory", "tiny-opt", "--gpus", "nan", "--device", "cpu"], "--gpus"),
    ("notebooks run 99", ["notebooks", "run", "99"], "99"),
]


def cli_probe(argv, flag, root):
    env = dict(os.environ, PYTHONPATH=root, ZOEDU_SIZE="fast")
    try:
        r = subprocess.run([sys.executable, "-m", "zoedu", *argv], capture_output=True, text=True, timeout=240,
                           cwd=root, env=env)
    except subprocess.TimeoutExpired:  # it went to work on a bad value instead of refusing it
        return "silent: ran (timed out after 240 s)" if flag is not None else "unclear: timed out"
    err = r.stderr.strip()
    if "Traceback" in err:
        return f"unclear: traceback ({err.splitlines()[-1][:100]})"
    if flag is None:  # a valid command: must run
        return "ok" if r.returncode == 0 else f"unclear: exit {r.returncode}: {err.splitlines()[-1][:100] if err else ''}"
    if r.returncode == 0:
        return "silent: exit 0"
    lines = [x for x in err.splitlines() if x.strip() and ": warning: " not in x]  # warnings: one line each
    if r.returncode in (1, 2) and len(lines) == 1 and flag in lines[0]:
        return "clear"  # 2: a usage error; 1: a failure while working (a diverged run), named
    return f"unclear: exit {r.returncode}, {len(lines)} lines: {lines[-1][:100] if lines else ''}"


def register_cli(root):
    for name, argv, flag in CLI_CASES:
        probe("cli", name)(lambda argv=argv, flag=flag: cli_probe(argv, flag, root))


# --------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.getcwd(), help="the checkout under test (for the CLI probes)")
    ap.add_argument("--no-cli", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None, help="only this category")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    import zoedu

    print(f"zoedu from {zoedu.__file__}")
    register_arguments()
    _register_resume()
    if not args.no_cli:
        register_cli(args.root)
    results = []
    for category, name, fn in PROBES:
        if args.only and category != args.only:
            continue
        t0 = time.perf_counter()
        try:
            outcome = fn()
        except Silent as err:
            outcome = f"silent: {err}"
        except BaseException as err:  # noqa: BLE001 - a probe that crashes is an unclear error
            outcome = f"unclear: {type(err).__name__}: {str(err)[:120]}"
        kind = outcome.split(":")[0]
        results.append({"category": category, "probe": name, "kind": kind, "detail": outcome,
                        "seconds": round(time.perf_counter() - t0, 2)})
        if args.verbose or kind in ("silent", "unclear"):
            print(f"  [{kind:7}] {category:12} {name} — {outcome[:160]}")
    cats = sorted({r["category"] for r in results})
    print(f"\n{'category':14}{'probes':>7}{'clear':>7}{'ok':>5}{'unclear':>9}{'silent':>8}")
    for c in cats + ["total"]:
        rs = [r for r in results if c == "total" or r["category"] == c]
        n = {k: sum(r["kind"] == k for r in rs) for k in ("clear", "ok", "unclear", "silent")}
        print(f"{c:14}{len(rs):7}{n['clear']:7}{n['ok']:5}{n['unclear']:9}{n['silent']:8}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
