"""Per-sample gradients and clipping (zoedu.privacy.per_sample) against a one-backward-per-example loop."""

import copy

import pytest
import torch
from conftest import ce, loop_grads, tab_batch, tab_mlp

from zoedu.privacy import (
    PerSampleGradients,
    clip_and_sum,
    clip_per_sample,
    per_sample_norms,
)


# --------------------------------------------------------------------------- per-sample gradients
@pytest.mark.parametrize("backend", ["linear", "func", "loop", "opacus"])
def test_per_sample_gradients_match_a_loop(backend):
    batch = tab_batch(7)
    for model in (torch.nn.Linear(6, 3), tab_mlp()):
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
    assert PerSampleGradients(tab_mlp(), ce).backend == "linear"


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
    grads, _ = PerSampleGradients(tab_mlp(), ce)(batch)
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
