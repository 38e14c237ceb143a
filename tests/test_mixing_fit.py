"""Mixing inside ``fit`` (tiny GPT-2 on a tiny multidomain corpus), the experiments and ``zoedu mix``."""

import numpy as np
import pytest
import torch

from zoedu.mixing import MixedBatchSource, PiKE, Static, task_gradient_stats

DOMAINS = ["prose", "code", "rot13", "arithmetic"]


@pytest.fixture(scope="module")
def corpus(tokenizer):
    from zoedu.tasks import load_task

    return load_task("multidomain", tokenizer=tokenizer, n_train={"prose": 12, "code": 12, "rot13": 8, "arithmetic": 6},
                     n_validation=2, max_length=16)


@pytest.fixture(scope="module")
def gpt2():
    from zoedu.models import load_model

    model, _ = load_model("tiny-gpt2", size="1m", seed=0)
    return model


@pytest.fixture
def model(gpt2):
    import copy

    return copy.deepcopy(gpt2)


def _fit(model, task, method="adam", **kw):
    from zoedu.train import fit

    kw.setdefault("steps", 4)
    kw.setdefault("batch_size", 8)
    return fit(model, task, method, lr=3e-3, quiet=True, track_memory=False, device="cpu",
               eval_every=kw.pop("eval_every", 0), **kw)


def test_fit_with_pike_records_weights_counts_losses_and_cosines(model, corpus):
    pike = PiKE(4, update_every=2, shrink=True)
    h = _fit(model, corpus, mixer=MixedBatchSource(pike, variance="groups", n_groups=2))
    weights = h[[f"weight/{d}" for d in DOMAINS]].to_numpy()
    np.testing.assert_allclose(weights.sum(1), 1.0)
    counts = h[[f"count/{d}" for d in DOMAINS]].to_numpy()
    assert np.all(counts.sum(1) == 8)
    assert pike.n_updates == 2                                  # steps 2 and 4
    assert not np.allclose(pike.raw_weights, 0.25)              # Algorithm 1's iterate moved; the weights
    assert np.all(pike.shrink_factors <= 1)                     # used are shrunk by its signal-to-noise
    np.testing.assert_allclose(weights[0], 0.25)                # the first batch used the initial ones
    stats_rows = h[h["mixer_backward_passes"] > 0]
    assert stats_rows["step"].tolist() == [2, 4]
    for mat in stats_rows["cosine"]:
        assert mat.shape == (4, 4) and np.allclose(np.diag(mat), 1.0) and np.allclose(mat, mat.T)
    assert h["mixer_forward_passes"].sum() == 2 * 4 * 2        # 2 updates × 4 tasks × 2 groups
    # fit's totals include the statistics: 4 training backwards plus the statistics' ones
    assert h["backward_passes"].iloc[-1] == 4 + h["mixer_backward_passes"].sum()
    # the per-domain training loss of a step's batch, recorded without an extra forward pass
    for d in DOMAINS:
        present = h[f"count/{d}"] > 0
        assert np.isfinite(h.loc[present, f"loss/{d}"]).all() and h.loc[~present, f"loss/{d}"].isna().all()
    row = h.iloc[0]
    mean = sum(row[f"loss/{d}"] * row[f"count/{d}"] for d in DOMAINS if row[f"count/{d}"] > 0) / 8
    assert mean == pytest.approx(row["loss"], rel=1e-5)


def test_static_mixer_draws_batches_that_follow_its_weights(model, corpus):
    h = _fit(model, corpus, mixer=Static([0.5, 0.25, 0.25, 0.0]), steps=3)
    assert (h["count/prose"] == 4).all() and (h["count/arithmetic"] == 0).all()
    assert h["loss/arithmetic"].isna().all()


@pytest.mark.parametrize("name", ["uniform", "proportional", "round-robin", "random-task", "balanced-pike"])
def test_every_named_mixer_runs_in_fit(model, corpus, name):
    h = _fit(model, corpus, mixer=name, steps=2, batch_size=4)
    assert np.isfinite(h["loss"]).all()
    assert (h[[f"count/{d}" for d in DOMAINS]].sum(axis=1) == 4).all()
    if name == "round-robin":
        assert h["count/prose"].tolist() == [4, 0] and h["count/code"].tolist() == [0, 4]


def test_pcgrad_and_mgda_as_fit_methods_count_one_pass_per_task(model, corpus):
    before = [p.detach().clone() for p in model.parameters()]
    h = _fit(model, corpus, "pcgrad", mixer="uniform", steps=2)
    assert h["forward_passes"].tolist() == [4, 8] and h["backward_passes"].tolist() == [4, 8]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    h = _fit(model, corpus, "mgda", steps=2)                   # no mixer: a uniform draw of examples
    assert np.isfinite(h["loss"]).all() and (h["tasks_in_batch"] >= 2).all()


def test_per_sample_statistics_on_gpt2_match_the_group_estimator(model, corpus):
    batches = [corpus.batch("train", corpus.domain_indices("train", k)[:3]) for k in range(2)]
    impl = model.config._attn_implementation
    a = task_gradient_stats(model, corpus.loss, batches, variance="per-sample", chunk_size=2)
    b = task_gradient_stats(model, corpus.loss, batches, variance="groups", n_groups=3)
    np.testing.assert_allclose(a.variances, b.variances, rtol=1e-3)
    np.testing.assert_allclose(a.sq_norms, b.sq_norms, rtol=1e-4)
    np.testing.assert_allclose(a.cosine, b.cosine, atol=1e-4)
    assert model.config._attn_implementation == impl           # vmap's eager attention was undone


def test_mixer_bad_input(model, corpus, sentiment):
    with pytest.raises(ValueError, match="multi-domain"):
        _fit(model, sentiment, mixer="uniform", steps=1)
    with pytest.raises(ValueError, match="allowed: uniform"):
        _fit(model, corpus, mixer="temperature", steps=1)
    with pytest.raises(ValueError, match="n_tasks=3"):
        _fit(model, corpus, mixer=PiKE(3), steps=1)
    with pytest.raises(ValueError, match="b=2"):
        _fit(model, corpus, mixer=MixedBatchSource("uniform", require_all=True), steps=1, batch_size=2)
    with pytest.raises(ValueError, match="multi-domain"):
        _fit(model, sentiment, "pcgrad", steps=1)


# --------------------------------------------------------------------------- experiments
def test_task_directions_have_the_requested_cosine():
    from zoedu.experiments.mixing import task_directions

    for K, c in [(2, -1.0), (3, -0.5), (4, 0.0), (3, 0.7), (2, 1.0)]:
        u = task_directions(K, c, 8)
        gram = u @ u.T
        np.testing.assert_allclose(gram[~np.eye(K, dtype=bool)], c, atol=1e-9)
        np.testing.assert_allclose(np.diag(gram), 1.0)
    with pytest.raises(ValueError, match="cosine"):
        task_directions(3, -0.9, 8)


def test_synthetic_conflict_reports_losses_and_weights():
    from zoedu.experiments.mixing import conflict_sweep, synthetic_conflict

    h = synthetic_conflict(-1.0, steps=30, methods=("uniform", "pike", "mgda"))
    assert set(h["method"]) == {"uniform", "pike", "mgda"} and len(h) == 90
    first = h[h.step == 1].set_index("method")
    assert (first["average"] > 0).all() and np.allclose(h[["weight/0", "weight/1"]].sum(axis=1), 1.0)
    # opposed tasks (u₂ = −u₁, targets ±1): MGDA's min-norm direction is ~0, so it barely moves
    last = h[h.step == 30].set_index("method")
    assert last.loc["mgda", "average"] == pytest.approx(0.5 * (0.25 + 2.25) / 2, rel=0.05)
    # aligned tasks share one optimum: every method gets close to it
    table = conflict_sweep([1.0], steps=60, methods=("uniform", "pike"), last=10)
    assert (table["final_average"] < 0.05).all()
    with pytest.raises(ValueError, match="method"):
        synthetic_conflict(0.0, methods=("adam",))


def test_zeta2_weighs_the_variance_penalty():
    """Task 1 has the larger gradients (scale 1.5) and the noisier examples (ν 1.0): without the
    variance penalty (ζ₂ = 0) both PiKEs sample it most; with a heavy one (ζ₂ = 10), the quiet task 0."""
    from zoedu.experiments.mixing import synthetic_conflict

    for zeta2, noisy_task_at_least, noisy_task_at_most in ((0.0, 0.8, 1.0), (10.0, 0.0, 0.2)):
        h = synthetic_conflict(0.0, steps=60, methods=("pike", "balanced-pike"), zeta2=zeta2)
        last = h[h.step == 60].set_index("method")["weight/1"]
        assert ((last >= noisy_task_at_least) & (last <= noisy_task_at_most)).all(), (zeta2, last.to_dict())
    with pytest.raises(ValueError, match="zeta2"):
        synthetic_conflict(0.0, steps=2, methods=("pike",), zeta2=-1.0)


def test_pretrain_multidomain_returns_the_tables(corpus):
    from zoedu.experiments.multidomain import pretrain_multidomain

    r = pretrain_multidomain(["uniform", "pike"], task=corpus, steps=2, batch_size=4, eval_every=2,
                             stats_every=1, device="cpu")
    s = r["summary"].set_index("mixer")
    assert list(s.index) == ["uniform", "pike"]
    for d in DOMAINS:
        assert np.isfinite(s[f"val/{d}"]).all()
    np.testing.assert_allclose(s["val_worst"], s[[f"val/{d}" for d in DOMAINS]].max(axis=1))
    assert (s["mixer_seconds"] > 0).all() and (s["overhead"] > 0).all()
    assert set(r["cosine"]["step"]) == {1, 2} and len(r["cosine"]) == 2 * 2 * 16
    assert set(r["weights"]["domain"]) == set(DOMAINS)
    with pytest.raises(ValueError, match="mixer"):
        pretrain_multidomain(["pike", "nope"], task=corpus)
    with pytest.raises(ValueError, match="unknown options"):
        pretrain_multidomain(["pike"], task=corpus, epochs=3)


def test_cli_mix_synthetic_prints_a_table(capsys):
    from zoedu.cli import main

    assert main(["mix", "--task", "synthetic", "--mixers", "uniform,pcgrad", "--steps", "10",
                 "--cosines", "1,-1"]) == 0
    out = capsys.readouterr().out
    assert "pcgrad" in out and "auc_average" in out
    assert main(["mix", "--task", "synthetic", "--mixers", "adam"]) == 2
