"""Faults inside a step (issue 15, items 2–4): an exception or Ctrl-C in a closure, a NaN loss
in direct use, a perturbation that overflows float16 — the weights are put back (bit for bit
where the step is exact), never left between states, never made non-finite; ``fit`` hands
back the History of its completed steps."""

import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoedu.optim import IPSGD, Addax, MeZO, replay


@pytest.fixture(autouse=True)
def python_ctrl_c():
    """A real Ctrl-C needs Python's own SIGINT handler (KeyboardInterrupt). A process started
    as a background job of a non-interactive shell (``.ci/run &``, ``nohup … &``) inherits
    SIGINT ignored, Python then installs no handler, and os.kill(SIGINT) does nothing (seen:
    7 failures in such a CI run). These tests set the handler a person's Python process has
    (zoedu's DeferredInterrupt rightly leaves an ignored SIGINT alone) and put the old one back."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def net(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


X = torch.randn(12, 6, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(2))


def loss_of(model):
    return F.cross_entropy(model(X.to(next(model.parameters()).dtype)).float(), Y)


def snap(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


class Boom(Exception):
    pass


def failing(model, at, error=Boom):
    """A closure that raises on its ``at``-th call (1-based)."""
    calls = [0]

    def closure():
        calls[0] += 1
        if calls[0] == at:
            raise error("stop")
        return loss_of(model)

    return closure


# --------------------------------------------------------------------------- MeZO
MEZO = {
    "exact": dict(exact_restore=True),
    "exact-n3": dict(exact_restore=True, n_perturb=3),
    "exact-one-sided": dict(exact_restore=True, one_sided=True, n_perturb=2),
    "exact-adam": dict(exact_restore=True, estimator="adam"),
}


FORWARDS = {"exact": 2, "exact-n3": 6, "exact-one-sided": 3, "exact-adam": 2}


@pytest.mark.parametrize("variant, at", [(v, at) for v in sorted(MEZO) for at in range(1, FORWARDS[v] + 1)])
@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_mezo_exact_puts_every_weight_back_when_the_closure_raises(variant, at, error):
    opts = MEZO[variant]
    model = net()
    opt = MeZO(model.parameters(), lr=1e-2, eps=1e-2, **opts)
    opt.step(lambda: loss_of(model))
    before = snap(model)
    assert opt.forwards_per_step == FORWARDS[variant]
    with pytest.raises(error):
        opt.step(failing(model, at, error))
    assert same(before, snap(model))
    assert opt.interrupted_steps == 1 and opt.step_count == 2
    opt.step(lambda: loss_of(model))  # the run goes on


@pytest.mark.parametrize("at", [1, 2])
def test_mezo_plain_puts_the_weights_back_and_replay_stays_exact(at):
    model = net()
    base = snap(model)
    opt = MeZO(model.parameters(), lr=1e-2, eps=1e-2, weight_decay=0.1)
    for k in range(6):
        if k == 3:
            before = snap(model)
            with pytest.raises(Boom):
                opt.step(failing(model, at))
            # back at θ by the inverse pass, as for a NaN loss: an ulp at most
            assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(before, snap(model)))
        else:
            opt.step(lambda: loss_of(model))
    rebuilt = [b.clone() for b in base]
    replay(rebuilt, opt.trajectory())
    assert same(rebuilt, snap(model))


def test_mezo_ctrl_c_in_the_closure_puts_the_weights_back():
    model = net()
    opt = MeZO(model.parameters(), lr=1e-2, eps=1e-2, exact_restore=True)
    before = snap(model)

    def closure():
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C while the forward runs
        return loss_of(model)

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    assert same(before, snap(model))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_mezo_ctrl_c_during_a_pass_is_held_until_the_weights_are_known():
    model = net()
    opt = MeZO(model.parameters(), lr=1e-2, eps=1e-2, exact_restore=True)
    before = snap(model)
    perturber = opt.perturber
    original = perturber.run

    def run(kernel, **kw):  # Ctrl-C arrives in the middle of the first perturbation pass
        os.kill(os.getpid(), signal.SIGINT)
        return original(kernel, **kw)

    perturber.run = run
    seen = []
    with pytest.raises(KeyboardInterrupt):
        opt.step(lambda: seen.append(1) or loss_of(model))
    assert seen == []  # raised as the closure was about to start, then undone
    assert same(before, snap(model))


def test_mezo_float16_overflow_is_refused_before_any_weight_moves():
    model = net(torch.float16)
    before = snap(model)
    opt = MeZO(model.parameters(), lr=1e-3, eps=3e4)
    with pytest.warns(RuntimeWarning, match="overflow float16 in [0-9]+ weights.*unchanged"):
        opt.step(lambda: loss_of(model))
    assert same(before, snap(model))
    assert opt.skipped_steps == 1
    rebuilt = [b.clone() for b in before]
    replay(rebuilt, opt.trajectory())
    assert same(rebuilt, snap(model))
    ok = MeZO(model.parameters(), lr=1e-3, eps=1e-2)  # a sane ε still steps
    ok.step(lambda: loss_of(model))
    assert not same(before, snap(model))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_mezo_nan_warning_says_how_the_weights_were_restored():
    model = net()
    opt = MeZO(model.parameters(), lr=1e-2)
    with pytest.warns(RuntimeWarning, match="inverse pass"):
        opt.step(lambda: float("nan"))
    exact = MeZO(model.parameters(), lr=1e-2, exact_restore=True)
    with pytest.warns(RuntimeWarning, match="bit for bit"):
        exact.step(lambda: float("nan"))


# --------------------------------------------------------------------------- Addax
def fo_closure(model, value=None):
    def closure():
        loss = loss_of(model)
        if value is not None:
            loss = loss * value
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("at", [1, 2])
@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_addax_exact_puts_every_weight_back_when_the_zo_closure_raises(at, alpha):
    model = net()
    opt = Addax(model.parameters(), lr=1e-2, eps=1e-2, alpha=alpha, exact_restore=True)
    before = snap(model)
    with pytest.raises(KeyboardInterrupt):
        opt.step(failing(model, at, KeyboardInterrupt), fo_closure(model))
    assert same(before, snap(model))
    assert opt.interrupted_steps == 1


@pytest.mark.parametrize("bad", [1, 2])
def test_addax_nan_zo_loss_restores_exactly(bad):
    model = net()
    opt = Addax(model.parameters(), lr=1e-2, eps=1e-2, alpha=0.5, exact_restore=True)
    before = snap(model)
    calls = [0]

    def zo():
        calls[0] += 1
        return float("nan") if calls[0] == bad else loss_of(model)

    with pytest.warns(RuntimeWarning, match="bit for bit"):
        opt.step(zo, fo_closure(model))
    assert same(before, snap(model))


def test_addax_nan_first_order_loss_writes_no_nan():
    model = net()
    opt = Addax(model.parameters(), lr=1e-2, eps=1e-2, alpha=0.5, exact_restore=True)
    before = snap(model)
    with pytest.warns(RuntimeWarning, match="not finite"):
        opt.step(lambda: loss_of(model), fo_closure(model, float("nan")))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert same(before, snap(model))  # backward meets the NaN at the first parameter it reaches


def test_addax_float16_overflow_is_refused():
    model = net(torch.float16)
    before = snap(model)
    opt = Addax(model.parameters(), lr=1e-3, eps=3e4, alpha=1.0)
    with pytest.warns(RuntimeWarning, match="overflow"):
        opt.step(lambda: loss_of(model))
    assert same(before, snap(model))


# --------------------------------------------------------------------------- IP-SGD
def test_ipsgd_nan_loss_writes_no_nan_and_says_so():
    model = net()
    opt = IPSGD(model.parameters(), lr=0.1)
    before = snap(model)
    with pytest.warns(RuntimeWarning, match="skipped"):
        opt.step(fo_closure(model, float("nan")))
    assert same(before, snap(model))
    assert opt.skipped_steps == 1
    opt.step(fo_closure(model))
    assert not same(before, snap(model))


def test_ipsgd_ctrl_c_during_backward_completes_the_step_first():
    model = net()
    reference = net()
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1)
    sgd.zero_grad()
    loss_of(reference).backward()
    sgd.step()

    opt = IPSGD(model.parameters(), lr=0.1)
    model[2].weight.register_hook(lambda g: os.kill(os.getpid(), signal.SIGINT))  # during backward
    with pytest.raises(KeyboardInterrupt):
        opt.step(fo_closure(model))
    assert same(snap(reference), snap(model))  # every parameter got its update
    assert opt.last_step_updates == 4


def test_ipsgd_ctrl_c_during_forward_moves_nothing():
    model = net()
    opt = IPSGD(model.parameters(), lr=0.1)
    before = snap(model)

    def closure():
        os.kill(os.getpid(), signal.SIGINT)
        return fo_closure(model)()

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    assert same(before, snap(model))


# --------------------------------------------------------------------------- fit
class Stopping(torch.optim.SGD):
    """SGD that raises (or receives Ctrl-C) at a given step."""

    def __init__(self, params, at, how):
        super().__init__(params, lr=0.1)
        self.at, self.how, self.n = at, how, 0

    def step(self, closure=None):
        self.n += 1
        if self.n == self.at:
            if self.how == "raise":
                raise Boom("step failed")
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the step
        return super().step(closure)


@pytest.fixture(scope="module")
def tab():
    from zoedu.tasks import load_task

    return load_task("tabular", dataset="breast_cancer")


def tab_model(task):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(30, 3), nn.Tanh(), nn.Linear(3, task.num_labels))


@pytest.mark.parametrize("how, done", [("raise", 2), ("sigint", 3)])
def test_fit_hands_back_the_history_of_its_completed_steps(tab, how, done):
    from zoedu.train import fit

    model = tab_model(tab)
    opt = Stopping(model.parameters(), at=3, how=how)
    error = Boom if how == "raise" else KeyboardInterrupt
    with pytest.raises(error) as info:
        fit(model, tab, opt, steps=6, lr=0.1, batch_size=4, quiet=True, track_memory=False, eval_every=0)
    history = info.value.history
    assert history["step"].tolist() == list(range(1, done + 1))  # Ctrl-C: the step it hit completes
    assert np.isfinite(history["loss"]).all()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # the model holds exactly the completed steps: redo them without the fault
    again = tab_model(tab)
    fit(again, tab, torch.optim.SGD(again.parameters(), lr=0.1), steps=done, lr=0.1, batch_size=4, quiet=True,
        track_memory=False, eval_every=0)
    assert same(snap(again), snap(model))


def test_fit_ctrl_c_leaves_a_checkpoint_to_resume_from(tab, tmp_path):
    from zoedu.train import fit

    opts = dict(lr=0.1, batch_size=4, quiet=True, track_memory=False, eval_every=0)
    straight = tab_model(tab)
    fit(straight, tab, Stopping(straight.parameters(), at=99, how="raise"), steps=5, **opts)
    model = tab_model(tab)
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit(model, tab, Stopping(model.parameters(), at=3, how="sigint"), steps=5, checkpoint=path, **opts)
    again = tab_model(tab)
    h = fit(again, tab, Stopping(again.parameters(), at=99, how="raise"), steps=5, resume=path, **opts)
    assert h["step"].tolist() == [1, 2, 3, 4, 5]
    assert same(snap(straight), snap(again))
