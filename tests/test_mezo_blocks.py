"""Block-coordinate MeZO (``MeZO(blocks=...)``, ``fit(..., "mezo", blocks="layers")``): one block a
step at B times the rate, replayed and resumed bit for bit, and the cached forwards of
zoedu.methods.layers equal to whole ones."""

import warnings

import pytest
import torch
from conftest import mlp, mlp_data, same, snapshot

from zoedu.methods.layers import LayerCache, find_layer_stack, layer_blocks
from zoedu.optim import MeZO, replay
from zoedu.optim._perturb import block_for_step


def _fit(model, task, steps, **options):
    from zoedu.train import fit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit(model, task, "mezo", steps=steps, lr=1e-3, batch_size=8, seed=1, device="cpu", eval_every=0,
                   quiet=True, track_memory=False, **options)


def test_a_block_step_moves_its_block_alone_at_b_times_the_rate():
    x, y = mlp_data()
    x, y, model = x.double(), y.double(), mlp().double()
    params = list(model.parameters())
    blocks = [params[:2], params[2:]]  # the first layer, the second
    opt = MeZO(params, lr=1e-2, eps=1e-3, seed=5, directions="rademacher", blocks=blocks)
    assert opt.n_blocks == 2
    seen = set()
    for t in range(8):
        before = snapshot(model)
        block = opt.block_at()
        assert block == block_for_step(5, t, 2)
        opt.step(lambda: ((model(x) - y) ** 2).mean())
        after = snapshot(model)
        g = opt.last_projected_grad
        for k, (b, a) in enumerate(zip(before, after)):
            if (k >= 2) != bool(block):
                assert torch.equal(a, b), f"step {t}: parameter {k} outside block {block} moved"
            else:  # θ ← θ − (B·η) g z with z = ±1: every weight moved by 2·0.01·|g|
                z = (a - b) / (-2 * 1e-2 * g)
                assert torch.allclose(z.abs(), torch.ones_like(z), atol=1e-6), f"step {t}: parameter {k}"
        seen.add(block)
    assert seen == {0, 1}


def test_block_runs_replay_bit_for_bit_and_resume_refuses_other_blocks():
    x, y = mlp_data()
    model = mlp()
    base = snapshot(model)
    params = list(model.parameters())
    opt = MeZO(params, lr=1e-2, weight_decay=0.1, seed=2, directions="rademacher", blocks=[params[:2], params[2:]])
    for _ in range(10):
        opt.step(lambda: ((model(x) - y) ** 2).mean())
    rebuilt = [b.clone() for b in base]
    replay(rebuilt, opt.trajectory())
    assert same(rebuilt, snapshot(model))
    other = MeZO(params, lr=1e-2, weight_decay=0.1, seed=2, directions="rademacher",
                 blocks=[params[:1], params[1:]])
    with pytest.raises(ValueError, match="blocks"):
        other.load_state_dict(opt.state_dict())
    dense = MeZO(params, lr=1e-2, weight_decay=0.1, seed=2, directions="rademacher")
    with pytest.raises(ValueError, match="blocks"):
        dense.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("bad, match", [
    (dict(blocks=[["x"]]), "not one of the optimizer's trainable parameters"),
    (dict(n_perturb=2), "n_perturb=2"),
    (dict(estimator="adam"), "estimator='adam'"),
    (dict(one_sided=True), "one_sided=True"),
    (dict(sparsity=0.5), "sparsity=0.5"),
    (dict(exact_restore=True), "exact_restore=True"),
])
def test_bad_blocks_are_refused(bad, match):
    params = list(mlp().parameters())
    options = {"blocks": [params[:2], params[2:]], **bad}
    with pytest.raises(ValueError, match=match):
        MeZO(params, lr=1e-3, **options)


def test_blocks_must_partition_the_parameters():
    params = list(mlp().parameters())
    with pytest.raises(ValueError, match="at least 2"):
        MeZO(params, lr=1e-3, blocks=[params])
    with pytest.raises(ValueError, match="must not overlap"):
        MeZO(params, lr=1e-3, blocks=[params[:3], params[2:]])
    with pytest.raises(ValueError, match="leaves 1 trainable parameters out"):
        MeZO(params, lr=1e-3, blocks=[params[:2], params[2:-1]])
    with pytest.raises(ValueError, match="blocks\\[1\\] is empty"):
        MeZO(params, lr=1e-3, blocks=[params, []])
    with pytest.raises(ValueError, match="list of lists"):
        MeZO(params, lr=1e-3, blocks=5)


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-gpt2"])
def test_the_cached_forward_is_the_whole_forward(name, tiny_task):
    from zoedu.models import load_model, load_tokenizer
    from zoedu.tasks import load_task

    model, _ = load_model(name, size="1m", num_labels=2, seed=0)
    model.eval()
    task = tiny_task if name == "tiny-opt" else load_task("sentiment", tokenizer=load_tokenizer(name), n_train=50,
                                                          n_validation=10, max_length=32)
    batch = task.batch("train", list(range(8)))
    stack = find_layer_stack(model)
    blocks, starts = layer_blocks(list(model.parameters()), stack)
    assert starts == list(range(len(stack))) and sum(len(b) for b in blocks) == len(list(model.parameters()))
    cache = LayerCache(stack)
    with torch.no_grad():
        whole = float(task.loss(model, batch))
        for start in range(1, len(stack)):
            hidden = cache.record(start, lambda: task.loss(model, batch))
            assert float(cache.resume(start, hidden, lambda: task.loss(model, batch))) == pytest.approx(whole, abs=1e-6)
            assert len(stack) == len(blocks)  # the stack is whole again after each cut forward
        cache.check(1, lambda: task.loss(model, batch))


def test_fit_with_layer_blocks_equals_block_mezo_without_the_cache(tiny_task, monkeypatch):
    """The cached forwards change the cost, not the run: patching them out leaves every loss."""
    from zoedu.models import load_model

    model, _ = load_model("tiny-opt", size="1m", num_labels=2, seed=0)
    base = snapshot(model)
    cached = _fit(model, tiny_task, 12, blocks="layers")
    assert cached.attrs["settings"]["blocks"] == "layers"
    weights = snapshot(model)
    assert not same(base, weights)
    model2, _ = load_model("tiny-opt", size="1m", num_labels=2, seed=0)
    monkeypatch.setattr(LayerCache, "record", lambda self, start, run: None)
    monkeypatch.setattr(LayerCache, "resume", lambda self, start, hidden, run: run())
    monkeypatch.setattr(LayerCache, "check", lambda self, start, run: None)
    plain = _fit(model2, tiny_task, 12, blocks="layers")
    assert cached["loss"].tolist() == pytest.approx(plain["loss"].tolist(), abs=1e-6)
    assert max(float((a - b).abs().max()) for a, b in zip(weights, snapshot(model2))) < 1e-6


def test_fit_with_layer_blocks_resumes_bit_for_bit(tiny_task, tmp_path):
    from zoedu.models import load_model

    model, _ = load_model("tiny-opt", size="1m", num_labels=2, seed=0)
    straight = _fit(model, tiny_task, 8, blocks="layers")
    model2, _ = load_model("tiny-opt", size="1m", num_labels=2, seed=0)
    ck = tmp_path / "run.pt"
    _fit(model2, tiny_task, 4, blocks="layers", checkpoint=ck)
    model3, _ = load_model("tiny-opt", size="1m", num_labels=2, seed=0)
    resumed = _fit(model3, tiny_task, 8, blocks="layers", resume=ck)
    assert resumed["loss"].tolist() == straight["loss"].tolist()
    assert same(snapshot(model3), snapshot(model))


def test_fit_refuses_layer_blocks_where_they_cannot_apply(tiny_task):
    from zoedu.models import load_model
    from zoedu.tasks import load_task

    model, _ = load_model("tiny-opt", size="1m", num_labels=2, seed=0)
    with pytest.raises(ValueError, match="blocks='rows' is unknown"):
        _fit(model, tiny_task, 1, blocks="rows")
    with pytest.raises(ValueError, match="length_pieces=2"):
        _fit(model, tiny_task, 1, blocks="layers", length_pieces=2)
    with pytest.raises(ValueError, match="n_perturb=2"):
        _fit(model, tiny_task, 1, blocks="layers", n_perturb=2)
    frozen, _ = load_model("tiny-opt", size="1m", num_labels=2, seed=0)
    for p in find_layer_stack(frozen).parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="one block and nothing to cache"):
        _fit(frozen, tiny_task, 1, blocks="layers")
    linear = torch.nn.Linear(30, 2)
    with pytest.raises(ValueError, match="nn.ModuleList"):
        _fit(linear, load_task("tabular", dataset="breast_cancer"), 1, blocks="layers")
