"""Prompt-based heads (zoedu.prompts) and adapters (peft) through load_model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoedu.models import count_parameters, load_model
from zoedu.prompts import (
    EmbeddingSimilarityClassifier,
    LabelWordClassifier,
    Prompt,
    PromptTokenizer,
    label_word_ids,
)
from zoedu.tasks import load_task, task_prompt

SENTIMENT = task_prompt("sentiment")


def tiny_mlm(tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    return BertForMaskedLM(cfg).eval()


def test_prompt_tokenizer_keeps_the_template_and_cuts_the_text(tokenizer):
    ptok = PromptTokenizer(tokenizer, "{text} it was {mask} .")
    long = "the plot was good . " * 40
    for max_length in (12, 32, 64):
        ids = ptok(long, truncation=True, max_length=max_length)["input_ids"]
        assert len(ids) == max_length
        assert ids.count(tokenizer.mask_token_id) == 1
        text = tokenizer.decode(ids)
        assert text.startswith("[CLS] the plot") and text.endswith("it was [MASK]. [SEP]")
    short = ptok(["a fine film", "bad"], truncation=True, max_length=64)["input_ids"]
    assert tokenizer.decode(short[1]) == "[CLS] bad it was [MASK]. [SEP]"
    with pytest.raises(ValueError, match="max_length=6 leaves no room"):
        ptok(long, truncation=True, max_length=6)
    with pytest.raises(ValueError, match="return_tensors"):
        ptok(["a", "b"], return_tensors="pt")


def test_templates_and_label_words_are_checked(tokenizer):
    for bad in ("it was {mask}", "{text} it was", "{mask} {text}", "{text} {mask} {mask}"):
        with pytest.raises(ValueError, match="template"):
            PromptTokenizer(tokenizer, bad)
    with pytest.raises(ValueError, match=r"is \d tokens"):
        label_word_ids(tokenizer, ["great", "zoedurific"])
    with pytest.raises(ValueError, match="distinct"):
        label_word_ids(tokenizer, ["great", "great"])


def test_masked_lm_label_word_logits_equal_the_mlm_logits_at_the_mask(tokenizer):
    lm = tiny_mlm(tokenizer)
    ptok = PromptTokenizer(tokenizer, SENTIMENT.template)
    ids = label_word_ids(tokenizer, SENTIMENT.label_words)
    model = LabelWordClassifier(lm, ids, causal=False, mask_token_id=tokenizer.mask_token_id)
    task = load_task("sentiment", tokenizer=ptok, n_train=20, n_validation=10, max_length=40)
    batch = task.batch("train", np.arange(6))
    got = model(batch["input_ids"], batch["attention_mask"]).logits
    full = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for row in range(6):
        pos = int((batch["input_ids"][row] == tokenizer.mask_token_id).nonzero())
        manual = full[row, pos, [tokenizer.convert_tokens_to_ids(w) for w in ("terrible", "great")]]
        torch.testing.assert_close(got[row], manual)
    assert task.loss(model, batch).shape == ()


def test_causal_lm_label_word_logits_are_the_next_token_logits_after_the_template(tokenizer):
    model, ptok = load_model("tiny-opt", size="1m", head="prompt", labels=SENTIMENT)
    assert isinstance(model, LabelWordClassifier) and isinstance(ptok, PromptTokenizer)
    task = load_task("sentiment", tokenizer=ptok, n_train=20, n_validation=10, max_length=40)
    batch = task.batch("train", np.arange(5))
    got = model(batch["input_ids"], batch["attention_mask"]).logits
    full = model.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    great, terrible = (tokenizer.convert_tokens_to_ids(w) for w in ("great", "terrible"))
    for row in range(5):
        last = int(batch["attention_mask"][row].sum()) - 1
        assert tokenizer.decode(batch["input_ids"][row, last - 1: last + 1]) == "it was"
        torch.testing.assert_close(got[row], full[row, last, [terrible, great]])


def test_embedding_head_zero_shot_is_cosine_classification():
    model, tok = load_model("minilm", head="prompt", labels=SENTIMENT)
    assert isinstance(model, EmbeddingSimilarityClassifier)
    task = load_task("sentiment", tokenizer=tok, n_train=20, n_validation=40, max_length=32)
    batch = task.batch("validation", np.arange(40))
    enc = model.encoder

    def pooled(ids, mask):
        h = enc(input_ids=ids, attention_mask=mask).last_hidden_state
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    with torch.no_grad():
        d = tok(list(SENTIMENT.label_descriptions), padding=True, return_tensors="pt")
        labels = F.normalize(pooled(d["input_ids"], d["attention_mask"]), dim=-1)
        x = F.normalize(pooled(batch["input_ids"], batch["attention_mask"]), dim=-1)
        cos = x @ labels.T
        logits = model(batch["input_ids"], batch["attention_mask"]).logits
    torch.testing.assert_close(logits, 20.0 * cos, rtol=1e-4, atol=1e-4)
    acc = task.evaluate(model, max_examples=40)["accuracy"]
    assert acc == pytest.approx(float((cos.argmax(-1) == batch["labels"]).float().mean()))
    assert model.label_embeddings.requires_grad


def test_peft_lora_trains_only_the_adapter():
    from zoedu.train import fit

    model, ptok = load_model("tiny-opt", size="1m", head="prompt", labels=SENTIMENT, peft="lora")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert count_parameters(model, trainable_only=True) < count_parameters(model) / 100
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    task = load_task("sentiment", tokenizer=ptok, n_train=40, n_validation=10, max_length=32)
    for method, lr in (("mezo", 1e-2), ("adam", 1e-2)):
        fit(model, task, method, steps=3, lr=lr, batch_size=4, quiet=True, track_memory=False)
    for n, p in model.named_parameters():
        if n in trainable:
            continue
        assert torch.equal(p, before[n]), n
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in trainable)


@pytest.mark.parametrize("peft", ["prefix", "prompt"])
def test_virtual_token_adapters_read_the_label_after_the_virtual_tokens(peft):
    model, ptok = load_model("tiny-opt", size="1m", head="prompt", labels=SENTIMENT, peft=peft)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("prompt_encoder" in n for n in trainable)
    task = load_task("sentiment", tokenizer=ptok, n_train=20, n_validation=10, max_length=32)
    batch = task.batch("train", np.arange(4))
    out = model(batch["input_ids"], batch["attention_mask"]).logits
    assert out.shape == (4, 2) and torch.isfinite(out).all()


def test_linear_head_with_lora_keeps_its_classifier_trainable():
    model, _ = load_model("tiny-opt", size="1m", num_labels=2, peft="lora")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any("score" in n for n in trainable)


def test_bad_prompt_arguments_name_the_argument():
    with pytest.raises(ValueError, match="head="):
        load_model("tiny-opt", size="1m", head="mlp")
    with pytest.raises(ValueError, match="needs labels="):
        load_model("tiny-opt", size="1m", head="prompt")
    with pytest.raises(ValueError, match="num_labels=3"):
        load_model("tiny-opt", size="1m", head="prompt", labels=SENTIMENT, num_labels=3)
    with pytest.raises(ValueError, match="labels="):
        load_model("tiny-opt", size="1m", head="prompt", labels="great")
    with pytest.raises(ValueError, match="go with head='prompt'"):
        load_model("tiny-opt", size="1m", num_labels=2, labels=["a", "b"])
    with pytest.raises(ValueError, match="peft="):
        load_model("tiny-opt", size="1m", head="prompt", labels=SENTIMENT, peft="adapters")
    with pytest.raises(ValueError, match="template"):
        Prompt("{text} was good", ("a", "b"), ("x", "y"))


def test_the_ablation_direction_prompt_head_beats_linear_head_in_the_same_mezo_budget():
    """The MeZO paper's Table 5 in miniature: same steps, same lr, same batches; the prompt
    head starts at its zero-shot accuracy and stays above the linear head, which starts at
    chance and cannot get there in a small zeroth-order budget."""
    from zoedu.experiments.prompts import prompt_ablation
    from zoedu.viz.prompts import ablation_figure

    variants = {"prompt": {"head": "prompt", "method": "mezo", "lr": 1e-5},
                "linear": {"head": "linear", "method": "mezo", "lr": 1e-5}}
    curves, summary = prompt_ablation("minilm", "sentiment", variants=variants, steps=2, eval_every=2,
                                      eval_examples=200, device="cpu",
                                      task_options={"n_train": 64, "n_validation": 200, "max_length": 64})
    s = summary.set_index("variant")
    assert s.loc["prompt", "final"] > s.loc["linear", "final"] + 0.05, summary
    assert abs(s.loc["linear", "final"] - 0.5) < 0.1  # a fresh head: chance
    assert s.loc["prompt", "trainable"] == s.loc["linear", "trainable"] - 2  # 2×384 head vs 384×2 + 2 bias
    assert list(curves[curves.variant == "prompt"]["step"]) == [0, 2]
    fig = ablation_figure(curves)
    assert [t.name for t in fig.data] == ["prompt", "linear"]
    with pytest.raises(ValueError, match="columns"):
        ablation_figure(curves.drop(columns=["step"]))


def test_hub_prompt_models_fail_offline_naming_the_offline_choices():
    with pytest.raises(ValueError, match="offline choices: tiny-opt, tiny-gpt2, minilm"):
        load_model("roberta-base", head="prompt", labels=SENTIMENT)


def test_zeroth_order_steps_on_the_embedding_head_perturb_only_the_rows_a_batch_reads(sentiment):
    """The prompt classifier exposes the encoder's token embedding, so MeZO under ``fit``
    (``sparse_embedding``) perturbs and updates only the looked-up rows; a causal LM's tied
    head reads every row, so its prompt classifier exposes no untied embedding."""
    from zoedu.optim.embedding_rows import untied_input_embedding
    from zoedu.train import fit

    model, _ = load_model("minilm", head="prompt", labels=task_prompt("sentiment"))
    emb = model.encoder.get_input_embeddings().weight
    assert untied_input_embedding(model) is emb
    assert untied_input_embedding(load_model("tiny-opt", size="1m", head="prompt", labels=["bad", "good"])[0]) is None
    before = emb.detach().clone()
    fit(model, sentiment, "mezo", steps=1, lr=1e-3, batch_size=4, seed=0, device="cpu", quiet=True,
        track_memory=False, eval_examples=None)
    moved = int((emb.detach() != before).any(dim=1).sum())
    assert 0 < moved <= 4 * sentiment.max_length < emb.shape[0]  # at most the batch's tokens, of 30,522 rows
