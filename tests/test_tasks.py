"""zoedu.tasks: the tasks' data, tokenization, lengths and losses."""

import numpy as np
import pytest
import torch

from zoedu.models import load_model
from zoedu.tasks import TASKS, load_task


def test_sentiment_is_deterministic_and_seed_dependent(tokenizer):
    a = load_task("sentiment", tokenizer=tokenizer, n_train=50, n_validation=10, seed=3)
    b = load_task("sentiment", tokenizer=tokenizer, n_train=50, n_validation=10, seed=3)
    c = load_task("sentiment", tokenizer=tokenizer, n_train=50, n_validation=10, seed=4)
    assert a.data["train"]["text"] == b.data["train"]["text"]
    assert np.array_equal(a.data["train"]["label"], b.data["train"]["label"])
    assert a.data["train"]["text"] != c.data["train"]["text"]
    assert a.data["train"]["text"][:10] != a.data["validation"]["text"][:10]


def test_sentiment_has_negation_intensifiers_and_a_long_tail(tokenizer):
    task = load_task("sentiment", tokenizer=tokenizer, n_train=2000, n_validation=10)
    text = " ".join(task.data["train"]["text"])
    for word in (" not ", " never ", " very ", " extremely ", " but "):
        assert word in text
    lengths = task.lengths("train")
    assert lengths.max() >= 5 * np.median(lengths)
    assert np.median(lengths) < 40 and lengths.max() >= 200  # most short, a tail of hundreds
    labels = task.data["train"]["label"]
    assert 0.4 < labels.mean() < 0.6


def test_sentiment_is_learnable_but_not_by_bag_of_words(tokenizer):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    task = load_task("sentiment", tokenizer=tokenizer, n_train=2000, n_validation=500)
    vec = CountVectorizer()
    x = vec.fit_transform(task.data["train"]["text"])
    clf = LogisticRegression(max_iter=2000).fit(x, task.data["train"]["label"])
    acc = clf.score(vec.transform(task.data["validation"]["text"]), task.data["validation"]["label"])
    assert 0.6 < acc < 0.95  # above chance, far from perfect


def test_batches_carry_lengths_and_pad_right(sentiment):
    idx = [0, 1, 2, 3]
    batch = sentiment.batch("train", idx)
    lengths = sentiment.lengths("train")[idx]
    assert torch.equal(batch["lengths"], torch.as_tensor(lengths))
    assert torch.equal(batch["attention_mask"].sum(1), batch["lengths"])
    assert batch["input_ids"].shape == (4, lengths.max())
    assert torch.equal(batch["labels"], torch.as_tensor(sentiment.data["train"]["label"][idx]))
    # collate of raw examples tokenizes on the fly and gives the same batch
    again = sentiment.collate(sentiment.examples("train", idx))
    for key in batch:
        assert torch.equal(batch[key], again[key])


def test_lengths_respect_max_length(tokenizer):
    task = load_task("sentiment", tokenizer=tokenizer, n_train=500, n_validation=10, max_length=64)
    assert task.lengths("train").max() == 64


def test_train_max_length_cuts_only_the_training_examples(tokenizer):
    full = load_task("sentiment", tokenizer=tokenizer, n_train=300, n_validation=40, max_length=32)
    short = load_task("sentiment", tokenizer=tokenizer, n_train=300, n_validation=40, max_length=16)
    crop = load_task("sentiment", tokenizer=tokenizer, n_train=300, n_validation=40, max_length=32,
                     train_max_length=16)
    # training examples as the tokenizer truncates them at 16 (special tokens kept), validation at 32
    assert crop.encoded("train") == short.encoded("train") != full.encoded("train")
    assert crop.encoded("validation") == full.encoded("validation")
    assert crop.lengths("train").max() == 16 and crop.lengths("validation").max() == 32
    assert crop.max_length_of("train") == 16 and crop.max_length_of("validation") == 32
    batch = crop.sample("train", 64, np.random.default_rng(0))
    assert batch["input_ids"].shape[1] <= 16
    assert set(batch["input_ids"][batch["lengths"] == 16, 15].tolist()) == {tokenizer.sep_token_id}
    # set later: the training tokens are re-cut; None goes back to max_length
    crop.train_max_length = 8
    assert crop.lengths("train").max() == 8 and crop.lengths("validation").max() == 32
    crop.train_max_length = None
    assert crop.train_max_length == 32 and crop.encoded("train") == full.encoded("train")


@pytest.mark.parametrize("value, match", [(40, "larger than max_length=32"), (1, "integer ≥ 2"),
                                          (8.5, "integer ≥ 2")])
def test_bad_train_max_length(tokenizer, value, match):
    with pytest.raises(ValueError, match="train_max_length.*" + match):
        load_task("sentiment", tokenizer=tokenizer, n_train=5, n_validation=5, max_length=32,
                  train_max_length=value)
    with pytest.raises(ValueError, match="train_max_length.*tabular"):
        load_task("tabular", train_max_length=8)


def test_multidomain_has_distinct_real_domains(tokenizer):
    task = load_task("multidomain", tokenizer=tokenizer, n_train=20, n_validation=5)
    assert task.domains == ["prose", "code", "rot13", "arithmetic"]
    assert task.kind == "lm" and task.size("train") == 80 and task.size("validation") == 20
    texts = {d: " ".join(task.data["train"]["text"][i] for i in task.domain_indices("train", d))
             for d in task.domains}
    assert " the " in texts["prose"] and " gur " in texts["rot13"]  # ROT13 of "the"
    assert "def " in texts["code"] or "return" in texts["code"] or "import" in texts["code"]
    assert " = " in texts["arithmetic"] and any(op in texts["arithmetic"] for op in "+-*")
    batch = task.batch("train", task.domain_indices("train", "code")[:3])
    assert torch.equal(batch["domain"], torch.ones(3, dtype=torch.long))
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_multidomain_unequal_sizes_and_bad_domain(tokenizer):
    task = load_task("multidomain", tokenizer=tokenizer, domains=("prose", "arithmetic"),
                     n_train={"prose": 30, "arithmetic": 10}, n_validation=5)
    assert len(task.domain_indices("train", "prose")) == 30
    assert len(task.domain_indices("train", 1)) == 10
    with pytest.raises(ValueError, match="allowed domains"):
        load_task("multidomain", tokenizer=tokenizer, domains=("poetry",))


@pytest.mark.parametrize("dataset,shape,classes", [("breast_cancer", 30, 2), ("digits", 64, 10)])
def test_tabular(dataset, shape, classes):
    task = load_task("tabular", dataset=dataset)
    assert task.num_labels == classes
    batch = task.batch("train", [0, 1, 2])
    assert batch["x"].shape == (3, shape)
    assert torch.allclose(batch["x"].norm(dim=1), torch.ones(3), atol=1e-5)
    model = torch.nn.Linear(shape, classes)
    loss = task.loss(model, batch)
    assert loss.ndim == 0 and loss > 0
    assert task.size("train") + task.size("validation") == {"breast_cancer": 569, "digits": 1797}[dataset]


def test_losses_classification_and_lm(sentiment, tokenizer):
    model, _ = load_model("tiny-opt", size="1m", num_labels=2)
    batch = sentiment.batch("train", range(6))
    losses = sentiment.example_losses(model, batch)
    assert losses.shape == (6,)
    assert torch.allclose(sentiment.loss(model, batch), losses.mean())
    lm_task = load_task("multidomain", tokenizer=tokenizer, n_train=10, n_validation=4)
    lm, _ = load_model("tiny-gpt2", size="1m")
    lm_batch = lm_task.batch("train", range(4))
    per = lm_task.example_losses(lm, lm_batch)
    # an untrained LM is near the uniform loss log(V)
    assert torch.all((per - np.log(len(tokenizer))).abs() < 1.0)
    metrics = lm_task.evaluate(lm, batch_size=3)
    assert set(metrics) >= {"loss", "accuracy", "loss/prose", "loss/code", "loss/rot13", "loss/arithmetic"}


def test_lm_loss_is_each_examples_mean_next_token_cross_entropy(tokenizer):
    """Shifting the labels (not the logits) gives each example's mean −log p(token t+1 | ≤ t) over
    its own tokens, with the gradient of that mean — checked against a loop over examples."""
    task = load_task("multidomain", tokenizer=tokenizer, n_train=12, n_validation=4, max_length=128)
    model, _ = load_model("tiny-gpt2", size="1m", seed=1)
    batch = task.batch("train", range(6))
    assert (batch["labels"] == -100).any(), "the check needs padded examples"
    per = task.example_losses(model, batch)
    per.mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = task.forward(model, batch)
    manual = []
    for i in range(6):
        n = int((batch["labels"][i] != -100).sum())          # the example's real tokens
        logp = torch.log_softmax(logits[i, :n - 1].double(), -1)
        manual.append(-logp[torch.arange(n - 1), batch["labels"][i, 1:n]].mean())
    manual = torch.stack(manual)
    assert torch.allclose(per.double(), manual, rtol=1e-5, atol=1e-6)
    manual.float().mean().backward()
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-7)


def test_evaluate_accuracy_matches_predictions(sentiment):
    model, _ = load_model("tiny-opt", size="1m", num_labels=2)
    metrics = sentiment.evaluate(model, batch_size=7)
    with torch.no_grad():
        preds = torch.cat([sentiment.forward(model, b).argmax(-1) for b in
                           sentiment.batches("validation", 100, shuffle=True)])
    order = np.random.default_rng(0).permutation(sentiment.size("validation"))
    labels = torch.as_tensor(sentiment.data["validation"]["label"][order])
    assert metrics["accuracy"] == pytest.approx((preds == labels).float().mean().item(), abs=1e-6)


def test_bad_task_arguments(tokenizer):
    with pytest.raises(ValueError, match="allowed: " + ", ".join(TASKS)):
        load_task("imdb")
    with pytest.raises(ValueError, match="allowed options"):
        load_task("sentiment", tokenizer=tokenizer, n_examples=3)
    with pytest.raises(ValueError, match="n_train"):
        load_task("sentiment", tokenizer=tokenizer, n_train=0)
    with pytest.raises(ValueError, match="dataset"):
        load_task("tabular", dataset="iris")
    task = load_task("sentiment", tokenizer=tokenizer, n_train=5, n_validation=5)
    with pytest.raises(ValueError, match="split"):
        task.lengths("test")
    with pytest.raises(ValueError, match="empty"):
        task.sample("train", 2, np.random.default_rng(0), indices=np.array([], dtype=int))


def test_sst2_offline_names_the_offline_task(tokenizer):
    with pytest.raises(ValueError, match="sentiment"):
        load_task("sst2", tokenizer=tokenizer)
