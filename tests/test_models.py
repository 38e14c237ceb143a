"""zoedu.models: tiny models from configs, the bundled MiniLM, hub ids offline."""

import pytest
import torch

from zoedu.models import (
    OFFLINE_MODELS,
    TINY_SIZES,
    count_parameters,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-gpt2"])
def test_tiny_sizes_span_one_to_twentyfive_million(name):
    counts = {size: count_parameters(load_model(name, size=size)[0]) for size in ("1m", "25m")}
    assert 0.8e6 <= counts["1m"] <= 1.3e6
    assert 22e6 <= counts["25m"] <= 28e6


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-gpt2"])
def test_tiny_models_are_lm_or_classifier(name, tokenizer):
    lm, tok = load_model(name, size="1m")
    batch = tok(["a short text", "and another, longer one"], padding=True, return_tensors="pt")
    logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    clf, _ = load_model(name, size="1m", num_labels=3)
    logits = clf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (2, 3)
    assert tok is tokenizer  # the offline tokenizer is shared


def test_same_seed_same_weights_and_other_seed_differs():
    a, _ = load_model("tiny-opt", size="1m", seed=1)
    b, _ = load_model("tiny-opt", size="1m", seed=1)
    c, _ = load_model("tiny-opt", size="1m", seed=2)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)


def test_minilm_is_the_real_pretrained_encoder():
    model, tok = load_model("minilm", num_labels=2)
    assert count_parameters(model) == pytest.approx(22.7e6, rel=0.01)
    # pretrained: the embeddings of related words are closer than of unrelated words
    enc, _ = load_model("minilm")
    emb = enc.get_input_embeddings().weight
    ids = tok.convert_tokens_to_ids(["good", "great", "table"])
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb[ids[0]], emb[ids[1]], dim=0) > cos(emb[ids[0]], emb[ids[2]], dim=0) + 0.1
    # the sentence encoder distinguishes sentiments out of the box (no training)
    texts = ["a wonderful, moving film", "a brilliant and delightful film", "an awful, boring film"]
    with torch.no_grad():
        out = enc(**tok(texts, padding=True, return_tensors="pt")).last_hidden_state.mean(1)
    assert cos(out[0], out[1], dim=0) > cos(out[0], out[2], dim=0)


@pytest.mark.parametrize("dtype,expected", [("bfloat16", torch.bfloat16), ("float16", torch.float16),
                                            (torch.float32, torch.float32)])
def test_dtype(dtype, expected):
    model, _ = load_model("tiny-gpt2", size="1m", dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}


def test_hub_id_offline_names_offline_choices(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as err:
        load_model("facebook/opt-125m")
    for name in OFFLINE_MODELS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="offline choices"):
        load_tokenizer("facebook/opt-125m")


@pytest.mark.parametrize("kwargs,match", [
    ({"name": ""}, "offline choices"),
    ({"name": "tiny-opt", "size": "3m"}, "allowed: " + ", ".join(TINY_SIZES)),
    ({"name": "tiny-opt", "num_labels": 1}, "num_labels"),
    ({"name": "tiny-opt", "dtype": "float8"}, "allowed: float32, bfloat16, float16"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_model(**kwargs)


def test_resolve_device_and_dtype():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype(None) is None


def _cgroup(tmp_path, v2=None, v1=None):
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(str(v1[0]))
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(str(v1[1]))
    return str(tmp_path)


@pytest.mark.parametrize("v2, v1, quota", [
    ("150000 100000\n", None, 2),      # cgroup v2: 1.5 cores → 2 threads
    ("50000 100000\n", None, 1),       # half a core → 1
    (None, (100000, 100000), 1),       # cgroup v1: one core
    (None, (300000, 100000), 3),
    ("max 100000\n", None, None),      # no quota: the affinity count
    (None, (-1, 100000), None),        # v1's "no quota"
    (None, None, None),                # no cgroup files at all
    ("garbage\n", None, None),         # unreadable: ignored, not an error
])
def test_available_cpus_is_affinity_capped_by_the_cgroup_quota(tmp_path, monkeypatch, v2, v1, quota):
    import os

    from zoedu.models import available_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    got = available_cpus(_cgroup(tmp_path, v2, v1))
    assert got == (16 if quota is None else quota)
