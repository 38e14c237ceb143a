"""MeZO's exact restoration (zoedu.optim.exact): bitwise round trips in every dtype, on hard values and a transformer."""


import pytest
import torch
from conftest import mlp, mlp_data, same, snapshot

from zoedu.optim import MeZO


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_exact_restore_is_bitwise_with_lr_zero(dtype):
    model = mlp(dtype)
    x, y = mlp_data(dtype)
    before = snapshot(model)
    opt = MeZO(model.parameters(), lr=0.0, eps=1e-3, exact_restore=True, chunk=64)
    for _ in range(30):
        opt.step(lambda: ((model(x) - y) ** 2).mean())
    assert same(before, snapshot(model))


def test_exact_restore_is_bitwise_in_float32_and_the_default_rounds():
    """exact_restore=True: lr = 0 → the weights after any number of steps are bitwise the
    weights before, in fp32. The default (exact_restore=False, the plain path) keeps the
    cheaper two-round-trip scheme in every precision (ulp-level drift, measured in
    benchmarks/README.md)."""
    model = mlp()
    before = snapshot(model)
    opt = MeZO(model.parameters(), lr=0.0, eps=1e-3, exact_restore=True)
    for _ in range(300):
        opt.step(lambda: 0.0)
    assert same(before, snapshot(model))
    assert opt.trajectory()["exact_restore"] is True
    for dtype, exact in ((torch.bfloat16, None), (torch.float32, False), (torch.float32, None)):
        model = mlp(dtype)
        before = snapshot(model)
        opt = MeZO(model.parameters(), lr=0.0, eps=1e-3, exact_restore=exact)
        for _ in range(100):
            opt.step(lambda: 0.0)
        drift = max(float((a - b).abs().max()) for a, b in zip(before, model.parameters()))
        assert 0 < drift < (1e-2 if dtype == torch.bfloat16 else 1e-5)
        assert opt.trajectory()["exact_restore"] is False


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("one_sided", [False, True])
def test_exact_restore_on_hard_values(dtype, one_sided):
    """Zeros of both signs, subnormals, values just below and at powers of two (LayerNorm's 1.0),
    weights far smaller than εz and sign changes: every one comes back bit for bit, through
    the parity bit or the exception list, which this ε makes non-empty."""
    info = torch.finfo(dtype)
    special = torch.tensor([0.0, -0.0, info.tiny, -info.tiny, info.tiny / 4, 1.0, -1.0, 2.0, 0.5,
                            1e-6, -1e-6, 3e-4, 1 - info.eps / 2, 2 - info.eps, -(1 - info.eps / 2)], dtype=dtype)
    g = torch.Generator().manual_seed(0)
    rnd = (torch.randn(4000, generator=g) * 0.02).to(dtype)
    w = torch.nn.Parameter(torch.cat([special, rnd]))
    before = w.detach().clone()
    opt = MeZO([w], lr=0.0, eps=1e-2, exact_restore=True, one_sided=one_sided, chunk=1000, n_perturb=2)
    for _ in range(25):
        opt.step(lambda: float(w.detach().float().square().sum()))
    assert torch.equal(w.detach().view(torch.int16 if dtype != torch.float32 else torch.int32),
                       before.view(torch.int16 if dtype != torch.float32 else torch.int32))
    from zoedu.optim.exact import ExactKeeper

    keeper = ExactKeeper()
    z = torch.randn(w.shape, generator=g).to(dtype)
    keeper.save(0, before, z, (1e-2, -1e-2))
    assert 0 < sum(len(i) for i, _ in keeper.exceptions.values()) < 0.2 * w.numel()
    assert keeper.nbytes < w.numel() * w.element_size()  # below a copy, even at this large ε


def test_exact_restore_on_a_transformer_and_its_cost():
    """A real model, fp32, exact_restore=True: bitwise after steps at lr = 0, and the keeper
    holds a 2-byte code for the weights one ulp off and the rare farther ones by value."""
    from zoedu.models import load_model
    from zoedu.optim.exact import ExactKeeper

    model, _ = load_model("tiny-opt", size="1m", num_labels=2, seed=0)
    before = snapshot(model)
    opt = MeZO(model.parameters(), lr=0.0, eps=1e-3, exact_restore=True)
    ids = torch.randint(5, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        opt.step(lambda: model(input_ids=ids).logits.sum())
    assert same(before, snapshot(model))
    keeper = ExactKeeper()
    n = 0
    for k, p in enumerate(model.parameters()):
        flat = p.detach().reshape(-1)
        for c in range(0, flat.numel(), 32768):  # the optimizer's streams
            v = flat[c:c + 32768]
            keeper.save((k, c), v, torch.randn(v.shape, generator=torch.Generator().manual_seed(k + c)),
                        (1e-3, -1e-3))
        n += p.numel()
    far = sum(len(i) for i, _ in keeper.exceptions.values())
    ulps = sum(len(c) for c in keeper.ulps.values())
    assert 0.001 < far / n < 0.04       # per state: the weights smaller than about |εz|
    assert 0.01 < ulps / n < 0.2        # per state: one ulp off, where a binade was crossed
    assert keeper.nbytes < 0.08 * 4 * n  # < 8 % of the fp32 weights
