"""Sparse MeZO (``MeZO(sparsity=)``, ``Perturber(masks=)``): packed masks, masked directions,
only the masked weights move, resume and replay keep the mask, bad input."""

import copy
import math

import pytest
import torch
from conftest import mlp, mlp_data, same, snapshot

from zoedu.optim import MeZO, direction, replay
from zoedu.optim._perturb import Perturber, magnitude_mask, pack_mask, unpack_mask


def mse(model, x, y):
    return lambda: float(((model(x) - y) ** 2).mean().detach())


def resumes_and_replays(opt, options, base, state, weights, rest, reference):
    """A MeZO made with ``options`` on ``weights`` and loaded with ``state`` ends, after
    ``rest`` more steps, at ``reference`` bit for bit; so does replaying ``opt``'s log from
    ``base``."""
    x, y = mlp_data()
    resumed = mlp()
    with torch.no_grad():
        for p, w in zip(resumed.parameters(), weights):
            p.copy_(w)
    again = MeZO(resumed.parameters(), **options)
    again.load_state_dict(state)
    for _ in range(rest):
        again.step(mse(resumed, x, y))
    rebuilt = [b.clone() for b in base]
    replay(rebuilt, opt.state_dict()["trajectory"])
    return same(snapshot(resumed), reference) and same(rebuilt, reference)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 1003])
def test_pack_unpack_round_trip(n):
    g = torch.Generator().manual_seed(n)
    mask = torch.rand(n, generator=g) < 0.4
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n // 8)
    assert torch.equal(unpack_mask(packed, n), mask)
    # bit k of byte j is element 8j + k
    assert int(pack_mask(torch.tensor([False, True, False, False, False, False, False, True]))[0]) == 2 + 128


@pytest.mark.parametrize("density", [0.1, 0.25, 0.5, 0.9])
def test_magnitude_mask_keeps_each_tensors_smallest_weights(density):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(37, 29, generator=g)
    kept = unpack_mask(magnitude_mask(w, density), w.numel()).view(w.shape)
    assert int(kept.sum()) == math.ceil(density * w.numel())  # no ties among gaussian weights
    assert float(w.abs()[kept].max()) <= float(w.abs()[~kept].min())
    assert bool(unpack_mask(magnitude_mask(w, 1.0), w.numel()).all())
    with pytest.raises(ValueError, match="density"):
        magnitude_mask(w, 0.0)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
@pytest.mark.parametrize("chunk", [12, 64])  # 12: streams that start inside a byte of the mask
def test_masked_direction_is_the_dense_direction_times_the_mask(kind, chunk):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(10, 13, generator=g), torch.randn(5, generator=g), torch.randn(6, 4, generator=g).t()]
    masks = [magnitude_mask(p, 0.5) for p in params[:2]] + [None]  # the last parameter: dense, not contiguous
    dense = direction(params, 11, chunk=chunk, directions=kind)
    sparse = direction(params, 11, chunk=chunk, directions=kind, masks=masks)
    for p, m, d, s in zip(params, masks, dense, sparse):
        bits = unpack_mask(m, p.numel()).view(p.shape) if m is not None else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(s, d * bits)
        assert bool((s[~bits] == 0).all()) and bool((s[bits] != 0).all())
    # a non-contiguous parameter's mask is in its row-major order
    t = params[2]
    m = magnitude_mask(t, 0.5)
    z = direction([t], 11, chunk=chunk, directions=kind, masks=[m])[0]
    assert torch.equal(z != 0, unpack_mask(m, t.numel()).view(t.shape))


def test_row_streams_apply_the_rows_masks():
    emb = torch.randn(50, 24, generator=torch.Generator().manual_seed(1))
    mask = magnitude_mask(emb, 0.5)
    bits = unpack_mask(mask, emb.numel()).view(emb.shape)
    out = torch.zeros_like(emb)
    pert = Perturber([out], chunk=40, directions="rademacher", masks=[mask])
    rows = torch.tensor([3, 17, 18, 41])
    pert.add(5, 1.0, pert.plan({0: rows}))
    touched = torch.zeros_like(bits)
    touched[rows] = True
    assert bool((out[touched & bits].abs() == 1).all())  # ±1 where the row is read and the weight is small
    assert bool((out[~(touched & bits)] == 0).all())      # zero elsewhere


def test_sparse_mezo_moves_only_the_masked_weights_and_descends():
    model = mlp()
    x, y = mlp_data()
    base = snapshot(model)
    opt = MeZO(model.parameters(), lr=3e-2, sparsity=0.75, seed=2, directions="rademacher")
    first = mse(model, x, y)()
    for _ in range(150):
        opt.step(mse(model, x, y))
    assert mse(model, x, y)() < 0.8 * first
    for p, b in zip(model.parameters(), base):
        bits = unpack_mask(opt.state[p]["sparse_mask"], p.numel()).view(p.shape)
        assert torch.equal(bits, unpack_mask(magnitude_mask(b, 0.25), p.numel()).view(p.shape))  # chosen at step 0
        assert torch.equal(p.detach()[~bits], b[~bits])      # the large weights, bit for bit
        assert bool((p.detach()[bits] != b[bits]).any())     # the small ones moved


def test_resume_keeps_the_mask_and_replay_rebuilds_the_run():
    x, y = mlp_data()
    model = mlp()
    base = snapshot(model)
    options = dict(lr=5e-2, sparsity=0.5, seed=4, directions="rademacher")
    opt = MeZO(model.parameters(), **options)
    for _ in range(40):
        opt.step(mse(model, x, y))
    state, weights = copy.deepcopy(opt.state_dict()), snapshot(model)
    # the weights have moved enough that a mask chosen now would be another one
    assert any(not torch.equal(magnitude_mask(p, 0.5), opt.state[p]["sparse_mask"]) for p in model.parameters())
    for _ in range(10):
        opt.step(mse(model, x, y))
    assert resumes_and_replays(opt, options, base, state, weights, 10, snapshot(model))
    with pytest.raises(ValueError, match="sparsity=0.5"):
        MeZO(mlp().parameters(), lr=5e-2, seed=4, directions="rademacher").load_state_dict(state)


def test_sparsity_zero_is_dense_mezo_bit_for_bit():
    x, y = mlp_data()
    a, b = mlp(), mlp()
    oa = MeZO(a.parameters(), lr=1e-2, seed=1)
    ob = MeZO(b.parameters(), lr=1e-2, seed=1, sparsity=0.0)
    for _ in range(5):
        oa.step(mse(a, x, y))
        ob.step(mse(b, x, y))
    assert same(snapshot(a), snapshot(b))
    assert "sparse_mask" not in ob.state.get(next(b.parameters()), {})


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), "half"])
def test_bad_sparsity_is_refused(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        MeZO(mlp().parameters(), lr=1e-2, sparsity=sparsity)


def test_fused_passes_are_refused_with_a_mask():
    model = mlp()
    x, y = mlp_data()
    opt = MeZO(model.parameters(), lr=1e-2, sparsity=0.5, fused=True)
    with pytest.raises(ValueError, match="sparsity=0.5"):
        opt.step(mse(model, x, y))


def test_bad_masks_are_refused():
    p = torch.zeros(20)
    with pytest.raises(ValueError, match="one entry per parameter"):
        Perturber([p], masks=[None, None])
    with pytest.raises(ValueError, match=r"masks\[0\].*3 bytes"):
        Perturber([p], masks=[torch.zeros(2, dtype=torch.uint8)])
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        Perturber([p], masks=[torch.zeros(3)])


def test_fit_records_the_sparsity(tiny_task):
    from zoedu.models import load_model
    from zoedu.train import fit

    model, _ = load_model("tiny-opt", size="1m", num_labels=2)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    h = fit(model, tiny_task, "mezo", steps=2, lr=1e-3, batch_size=4, quiet=True, sparsity=0.5,
            eval_every=0, track_memory=False)
    assert h.attrs["settings"]["sparsity"] == 0.5
    # the largest half of a dense matrix never moves
    name, w = next((n, p) for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    big = ~unpack_mask(magnitude_mask(base[name], 0.5), w.numel()).view(w.shape)
    assert torch.equal(w.detach()[big], base[name][big])
    assert not torch.equal(w.detach(), base[name])



def test_memory_estimate_counts_the_masks_and_matches_measure(tokenizer):
    """One bit per weight of optimizer state (tiny-opt 1m: its weights / 32 in fp32), and a
    Sparse MeZO step measured within 25 % of the estimate."""
    from zoedu.memory import estimate, measure
    from zoedu.models import load_model
    from zoedu.tasks.base import Task

    model, _ = load_model("tiny-opt", size="1m", num_labels=2)
    split = {"text": ["x"], "label": [0]}
    task = Task("probe", "classification", {"train": split, "validation": split}, tokenizer=tokenizer, num_labels=2)
    ids = torch.randint(1000, 2000, (4, 48), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(4, dtype=torch.long)}
    opt = MeZO(model.parameters(), lr=1e-4, sparsity=0.5, directions="rademacher", mask_every=2)

    def step():
        opt.step(lambda: float(task.loss(model, batch)))

    kw = dict(batch_size=4, seq_len=48, device="cpu", sparse_embedding=False)
    first = measure(step, model=model, optimizer=opt)             # step 0: the masks are chosen
    measured = measure(step, model=model, optimizer=opt)          # step 1: they are kept
    refresh = measure(step, model=model, optimizer=opt)           # step 2: re-chosen
    n = sum(p.numel() for p in model.parameters())
    sparse, dense = estimate(model, "mezo", sparsity=0.5, **kw), estimate(model, "mezo", **kw)
    assert sparse.optimizer - dense.optimizer == -(-n // 8)
    assert measured.optimizer == sum(-(-p.numel() // 8) for p in model.parameters())
    assert 0.75 <= sparse.ratio(measured) <= 1.25, (str(sparse), str(measured))
    choosing = estimate(model, "mezo", sparsity=0.5, first_step=True, **kw)
    assert choosing.total > sparse.total and refresh.total > measured.total
    for peak in (first, refresh):
        assert 0.75 <= choosing.ratio(peak) <= 1.25, (str(choosing), str(peak))
    assert estimate(model, "mezo", sparsity=0.5, mask_every=2, **kw).total == choosing.total
    with pytest.raises(ValueError, match="sparsity"):
        estimate(model, "adam", sparsity=0.5, **kw)
    with pytest.raises(ValueError, match="sparsity"):
        estimate(model, "mezo", sparsity=1.0, **kw)


def test_masks_re_chosen_every_k_steps_resume_and_replay_bit_for_bit():
    x, y = mlp_data()
    model = mlp()
    base = snapshot(model)
    options = dict(lr=5e-2, sparsity=0.5, mask_every=10, seed=6, directions="rademacher")
    opt = MeZO(model.parameters(), **options)
    first = None
    for t in range(25):
        opt.step(mse(model, x, y))
        if t == 0:
            first = [opt.state[p]["sparse_mask"].clone() for p in model.parameters()]
        if t == 14:
            state, weights = copy.deepcopy(opt.state_dict()), snapshot(model)
    now = [opt.state[p]["sparse_mask"] for p in model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(first, now))  # re-chosen (at steps 10 and 20)
    assert resumes_and_replays(opt, options, base, state, weights, 10, snapshot(model))
    with pytest.raises(ValueError, match="mask_every"):
        MeZO(mlp().parameters(), lr=5e-2, sparsity=0.5, seed=6, directions="rademacher").load_state_dict(state)


@pytest.mark.parametrize("kwargs", [{"mask_every": 0, "sparsity": 0.5}, {"mask_every": 2.5, "sparsity": 0.5},
                                    {"mask_every": 10}])
def test_bad_mask_every_is_refused(kwargs):
    with pytest.raises(ValueError, match="mask_every"):
        MeZO(mlp().parameters(), lr=1e-2, **kwargs)
