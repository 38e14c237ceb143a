"""MeZO on the fused Triton passes (``MeZO(..., fused=True)``), run in Triton's interpreter on CPU.

On a GPU the same code runs compiled (``fused=None`` picks it for CUDA parameters); here
``TRITON_INTERPRET=1`` makes the kernels run on CPU tensors, so the wiring — which kernel for
which pass, the keys, the fused restore + update's coefficients, the log and replay — is
checked without one.
"""

import math

import pytest
import torch
from torch import nn

pytest.importorskip("triton")

from conftest import snapshot  # noqa: E402

from zoedu.optim import MeZO, direction_seed, replay, stream_seed  # noqa: E402
from zoedu.optim import _triton as T  # noqa: E402


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def model_and_data(dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(16, 6, generator=g).to(dtype), torch.randn(16, 1, generator=g).to(dtype)


def test_fused_step_is_mezo_with_the_triton_direction():
    model, x, y = model_and_data()
    before = snapshot(model)
    lr, eps, wd = 1e-2, 1e-3, 0.1
    opt = MeZO(model.parameters(), lr=lr, eps=eps, weight_decay=wd, exact_restore=False, fused=True, seed=3)
    opt.step(lambda: ((model(x) - y) ** 2).mean())
    assert opt.trajectory()["fused"].tolist() == [True]
    seed = direction_seed(3, 0)
    z = [T.randn_(torch.empty_like(p), stream_seed(seed, i, 0)) for i, p in enumerate(before)]

    def loss_at(sign):
        ref, _, _ = model_and_data()
        with torch.no_grad():
            for p, b, zi in zip(ref.parameters(), before, z):
                p.copy_(b.double().add(zi.double(), alpha=sign * eps).float())
            return float(((ref(x) - y) ** 2).mean())

    g_ref = (loss_at(1) - loss_at(-1)) / (2 * eps)
    g = opt.trajectory()["projected_grads"][0, 0].item()
    assert math.isclose(g, g_ref, rel_tol=1e-3, abs_tol=1e-4)
    for p, b, zi in zip(model.parameters(), before, z):
        decay = 1 - lr * wd if p.dim() >= 2 else 1.0
        expected = b.double() * decay - lr * g * zi.double()
        assert torch.allclose(p.detach().double(), expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("one_sided", [False, True])
def test_fused_run_replays_bit_for_bit(one_sided):
    model, x, y = model_and_data()
    base = snapshot(model)
    opt = MeZO(model.parameters(), lr=5e-2, eps=1e-3, weight_decay=0.05, exact_restore=False, fused=True,
               one_sided=one_sided, seed=7)
    for _ in range(6):
        opt.step(lambda: ((model(x) - y) ** 2).mean())
    rebuilt = [b.clone() for b in base]
    replay(rebuilt, opt.trajectory())
    assert all(torch.equal(a, b) for a, b in zip(rebuilt, snapshot(model)))
    assert not all(torch.equal(a, b) for a, b in zip(base, snapshot(model)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_lr_zero_drift_is_rounding_only(dtype):
    model, x, y = model_and_data(dtype)
    before = snapshot(model)
    opt = MeZO(model.parameters(), lr=0.0, eps=1e-3, exact_restore=False, fused=True)
    for _ in range(20):
        opt.step(lambda: 0.0)
    drift = max(float((a.float() - b.float()).abs().max()) for a, b in zip(before, snapshot(model)))
    assert drift < (1e-2 if dtype == torch.bfloat16 else 1e-5)


def test_fused_nan_loss_restores_and_skips():
    model, x, y = model_and_data()
    before = snapshot(model)
    opt = MeZO(model.parameters(), lr=1e-2, exact_restore=False, fused=True)
    with pytest.warns(RuntimeWarning, match="restored"):
        opt.step(lambda: float("nan"))
    assert opt.skipped_steps == 1
    assert max(float((a - b).abs().max()) for a, b in zip(before, snapshot(model))) < 1e-6


def test_fused_is_refused_with_a_reason_and_auto_stays_on_torch_on_cpu():
    model, x, y = model_and_data()

    def loss():
        return ((model(x) - y) ** 2).mean()

    with pytest.raises(ValueError, match="exact restoration"):
        MeZO(model.parameters(), lr=1e-3, exact_restore=True, fused=True).step(loss)
    with pytest.raises(ValueError, match="estimator='adam'"):
        MeZO(model.parameters(), lr=1e-3, estimator="adam", exact_restore=False, fused=True).step(loss)
    with pytest.raises(ValueError, match="fused="):
        MeZO(model.parameters(), lr=1e-3, fused="yes")
    with pytest.raises(ValueError, match="directions='rademacher'"):  # the kernels draw gaussian z
        MeZO(model.parameters(), lr=1e-3, directions="rademacher", fused=True).step(loss)
    auto = MeZO(model.parameters(), lr=1e-3, exact_restore=False)  # CPU tensors: the torch path
    auto.step(loss)
    assert auto.trajectory()["fused"].tolist() == [False]
