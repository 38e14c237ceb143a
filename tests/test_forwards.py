"""MeZO's forwards in bfloat16 (``fit(..., "mezo", autocast=...)``): when "auto" chooses it,
that the forwards really run in bf16 while the weights and the evaluation stay fp32, and
that the bf16 estimate is the fp32 one up to a small error."""

import numpy as np
import pytest
import torch

from zoedu.methods import forwards as A
from zoedu.models import load_model
from zoedu.optim import MeZO
from zoedu.tasks import task_prompt
from zoedu.train import fit


def test_auto_chooses_bf16_only_for_a_large_fp32_cpu_model_on_a_cpu_with_native_bf16(monkeypatch):
    big = torch.nn.Linear(2500, 2100)  # 5.25 M weights
    small = torch.nn.Linear(10, 2)
    monkeypatch.setattr(A, "cpu_has_native_bf16", lambda: True)
    assert A.resolve_autocast("auto", big) == "bf16"
    assert A.resolve_autocast("auto", small) == "off"  # below AUTO_MIN_PARAMS: overheads, not products
    assert A.resolve_autocast("auto", big.to(torch.bfloat16)) == "off"  # already low precision
    assert A.resolve_autocast("bf16", small) == "bf16"  # asked for: always
    assert A.resolve_autocast(None, big) == A.resolve_autocast("off", big) == "off"
    monkeypatch.setattr(A, "cpu_has_native_bf16", lambda: False)
    assert A.resolve_autocast("auto", big) == "off"
    with pytest.raises(ValueError, match=r"autocast='fp8' is unknown; allowed: 'auto', 'bf16', 'off'"):
        A.resolve_autocast("fp8", big)


def test_fit_refuses_an_unknown_autocast(tiny_task):
    model, _ = load_model("tiny-opt", size="1m", num_labels=2)
    for method in ("mezo", "addax"):
        with pytest.raises(ValueError, match="autocast='half'"):
            fit(model, tiny_task, method, steps=1, lr=1e-3, quiet=True, autocast="half")


@pytest.fixture(scope="module")
def minilm_prompt():
    model, _ = load_model("minilm", head="prompt", labels=task_prompt("sentiment"))
    return model


def test_fit_runs_the_zeroth_order_forwards_in_bf16_and_evaluates_in_fp32(minilm_prompt, sentiment):
    model = minilm_prompt
    seen = []  # (training?, output dtype of the first query projection)
    layer = model.encoder.encoder.layer[0].attention.self.query
    hook = layer.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.dtype)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        h = fit(model, sentiment, "mezo", steps=2, lr=1e-5, batch_size=4, seed=0, device="cpu", quiet=True,
                track_memory=False, eval_every=2, eval_examples=8, autocast="bf16")
    finally:
        hook.remove()
        model.load_state_dict(state)
    assert h.attrs["settings"]["autocast"] == "bf16"
    dtypes = [d for _, d in seen]
    assert dtypes[:4] == [torch.bfloat16] * 4  # two steps, two forwards each
    assert set(dtypes[4:]) == {torch.float32}  # the evaluation
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_the_bf16_projected_gradient_is_the_fp32_one_up_to_a_small_error(minilm_prompt, sentiment):
    """The same 10 directions at the same weights on the same batch: g in bf16 against g in
    fp32 (the benchmark measures 0.985 on MiniLM at batch 64). The transformer layers are
    perturbed (not the 30,522-row embedding, to keep the test fast)."""
    model = minilm_prompt.eval()
    batch = sentiment.batch("train", list(range(8)))
    params = [p for n, p in model.named_parameters() if "embeddings" not in n]
    opt = MeZO(params, lr=0.0, directions="rademacher")
    g = {"off": [], "bf16": []}
    eps = 1e-3
    with torch.no_grad():
        for seed in range(10):
            for mode in g:
                opt.perturber.add(seed, eps)
                with A.forward_context(mode, "cpu"):
                    plus = float(sentiment.loss(model, batch))
                opt.perturber.add_twice(seed, -eps)
                with A.forward_context(mode, "cpu"):
                    minus = float(sentiment.loss(model, batch))
                opt.perturber.add(seed, eps)
                g[mode].append((plus - minus) / (2 * eps))
    fp32, bf16 = np.array(g["off"]), np.array(g["bf16"])
    assert np.corrcoef(fp32, bf16)[0, 1] > 0.9
    assert np.var(bf16 - fp32) < 0.2 * np.var(fp32)


@pytest.mark.parametrize("kind", ["classification", "lm"])
def test_length_pieces_give_the_same_losses_in_the_batch_order(kind, tiny_task):
    """A batch run as 1, 2, 3 or 8 length-sorted pieces (each padded to its own longest
    example): the same per-example losses, in the batch's order."""
    from zoedu.models import load_model, load_tokenizer
    from zoedu.tasks import load_task

    if kind == "lm":
        task = load_task("multidomain", tokenizer=load_tokenizer("tiny-gpt2"), max_length=128)
        model, _ = load_model("tiny-gpt2", size="1m")
    else:
        task = tiny_task
        model, _ = load_model("tiny-opt", size="1m", num_labels=2)
    model.eval()
    batch = task.batch("train", list(range(11)))
    assert len(set(batch["lengths"].tolist())) > 2  # lengths differ: the pieces are padded less
    with torch.no_grad():
        whole = task.example_losses(model, batch)
        for pieces in (2, 3, 8, 20):
            torch.testing.assert_close(task.example_losses(model, batch, pieces=pieces), whole,
                                       rtol=1e-5, atol=1e-6)
        assert float(task.loss(model, batch, pieces=3)) == pytest.approx(float(whole.mean()), rel=1e-6)
    with pytest.raises(ValueError, match="pieces=0"):
        task.example_losses(model, batch, pieces=0)


def test_fit_runs_mezo_in_two_length_pieces_from_a_batch_of_32(tiny_task):
    """length_pieces=None: two pieces for a text batch of 32 or more, one below; the choice is
    in the settings, and a bad value is refused naming the argument."""
    from zoedu.models import load_model

    sizes = {}
    for batch_size, opts in ((8, {}), (32, {}), (32, {"length_pieces": 1}), (32, {"length_pieces": 4})):
        model, _ = load_model("tiny-opt", size="1m", num_labels=2)
        widths = []
        hook = model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[0]),
                                               with_kwargs=True)
        h = fit(model, tiny_task, "mezo", steps=1, lr=1e-4, batch_size=batch_size, quiet=True,
                track_memory=False, eval_every=0, **opts)
        hook.remove()
        sizes[(batch_size, opts.get("length_pieces"))] = (h.attrs["settings"]["length_pieces"], widths)
    assert sizes[(8, None)] == (1, [8, 8])
    assert sizes[(32, None)] == (2, [16, 16, 16, 16])
    assert sizes[(32, 1)] == (1, [32, 32])
    assert sizes[(32, 4)] == (4, [8] * 8)
    model, _ = load_model("tiny-opt", size="1m", num_labels=2)
    with pytest.raises(ValueError, match="length_pieces=0 must be a positive integer"):
        fit(model, tiny_task, "mezo", steps=1, lr=1e-4, quiet=True, length_pieces=0)


def test_addax_runs_only_its_zeroth_order_forwards_in_bf16(tiny_task):
    """Addax with autocast="bf16": the forwards without gradients (ℓ₊, ℓ₋ on the long
    examples) in bf16, the first-order forward on the short ones in fp32."""
    model, _ = load_model("tiny-opt", size="1m", num_labels=2)
    seen = []
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    hook = linear.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.dtype)))
    h = fit(model, tiny_task, "addax", steps=2, lr=1e-3, batch_size=4, quiet=True, track_memory=False,
            eval_every=0, autocast="bf16")
    hook.remove()
    assert h.attrs["settings"]["autocast"] == "bf16"
    assert {d for grad, d in seen if not grad} == {torch.bfloat16}
    assert {d for grad, d in seen if grad} == {torch.float32}
    assert sum(1 for grad, _ in seen if not grad) == 4 and sum(1 for grad, _ in seen if grad) == 2


def test_bf16_forwards_keep_no_bf16_copy_of_the_weights(tokenizer):
    """A zeroth-order forward uses each weight once, so autocast's weight cache would only
    hold a bf16 copy of every matrix for the length of the forward (MiniLM at 16 × 64: 16 MB
    on top of inference, 1.15×). Without it a bf16 MeZO step peaks no higher than fp32."""
    from zoedu.experiments.memory import measure_table
    from zoedu.tasks import load_task

    model, tok = load_model("tiny-opt", size="5m", num_labels=2)
    task = load_task("sentiment", tokenizer=tok, n_train=64, n_validation=8, max_length=32)
    peak = {mode: float(measure_table(model, task, ["mezo"], batch_size=4,
                                      method_options={"mezo": {"autocast": mode}})["measured"].iloc[0])
            for mode in ("off", "bf16")}
    weights = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    assert weights * 2 > 0.05 * peak["off"]  # a cached bf16 copy (2 bytes a weight) would show
    assert peak["bf16"] <= peak["off"], peak
