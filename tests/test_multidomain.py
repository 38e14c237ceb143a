"""The multidomain corpus's added domains (noise, duplicated, reversed) and the experiments' domains=."""

import numpy as np
import pytest

from zoedu.tasks import load_task
from zoedu.tasks.multidomain import DOMAINS, DUPLICATED_PASSAGES

NEW = ("prose", "noise", "duplicated", "reversed")


def texts(task, split, domain):
    return [task.data[split]["text"][i] for i in task.domain_indices(split, domain)]


def test_new_domains_are_what_they_claim(tokenizer):
    task = load_task("multidomain", tokenizer=tokenizer, domains=NEW, sizes=[30, 30, 40, 30], n_validation=10)
    assert task.domains == list(NEW) and task.size("train") == 130 and task.size("validation") == 40
    # duplicated: every training and validation example is one of 8 passages
    dup = texts(task, "train", "duplicated") + texts(task, "validation", "duplicated")
    assert len(set(dup)) <= DUPLICATED_PASSAGES and len(dup) == 50
    assert set(texts(task, "validation", "duplicated")) <= set(texts(task, "train", "duplicated")) | set(dup)
    # reversed: English words spelled backwards ("eht" is "the")
    rev = " ".join(texts(task, "train", "reversed"))
    assert " eht " in rev and " the " not in rev
    # noise: words in no order — no two chunks share a 4-word sequence, unlike prose
    noise = [c.split() for c in texts(task, "train", "noise")]
    grams = [tuple(w[i:i + 4]) for w in noise for i in range(len(w) - 3)]
    assert len(set(grams)) == len(grams)
    prose = " ".join(texts(task, "train", "prose"))
    assert " the " in prose and len(set(noise[0])) > 0.8 * len(noise[0])


def test_same_seed_same_corpus_other_seed_other_corpus(tokenizer):
    a = load_task("multidomain", tokenizer=tokenizer, domains=NEW, n_train=8, n_validation=2, seed=3)
    b = load_task("multidomain", tokenizer=tokenizer, domains=NEW, n_train=8, n_validation=2, seed=3)
    c = load_task("multidomain", tokenizer=tokenizer, domains=NEW, n_train=8, n_validation=2, seed=4)
    assert a.data["train"]["text"] == b.data["train"]["text"]
    assert a.data["train"]["text"] != c.data["train"]["text"]


def test_original_four_domains_unchanged_by_the_additions(tokenizer):
    """The default corpus draws the same chunks as before the new domains existed."""
    task = load_task("multidomain", tokenizer=tokenizer, n_train=5, n_validation=2)
    assert task.domains == ["prose", "code", "rot13", "arithmetic"]
    again = load_task("multidomain", tokenizer=tokenizer, domains=DOMAINS[:4], sizes=5, n_validation=2)
    assert task.data["train"]["text"] == again.data["train"]["text"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(domains=("prose", "prose")), "allowed domains"),
    (dict(domains=("poetry",)), "allowed domains"),
    (dict(domains=("prose", "noise"), sizes=[3]), "one count per domain"),
    (dict(domains=("prose", "noise"), sizes={"code": 3}), "not in domains"),
    (dict(domains=("prose", "noise"), sizes=3, n_train=4), "sizes= or n_train="),
    (dict(domains=("prose", "noise"), sizes=[3, 0]), "≥ 1 example"),
])
def test_bad_domains_and_sizes(tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_task("multidomain", tokenizer=tokenizer, n_validation=2, **kwargs)


def test_experiment_and_cli_take_domains(capsys):
    from zoedu.cli import main
    from zoedu.experiments.multidomain import (
        fixed_mixture_sweep,
        mixture_grid,
        pretrain_multidomain,
    )

    out = pretrain_multidomain(("uniform", "static"), fast=True, steps=2, eval_every=2, device="cpu",
                               domains=("prose", "noise", "duplicated"), sizes=[6, 6, 6], n_validation=2,
                               mixer_options={"static": {"weights": [0.6, 0.2, 0.2]}})
    s = out["summary"].set_index("mixer")
    assert {"val/noise", "val/duplicated"} <= set(s.columns)
    w = out["weights"]
    assert np.allclose(w[(w.mixer == "static")].groupby("domain").weight.first()[["prose", "noise"]], [0.6, 0.2])
    sweep = fixed_mixture_sweep([[0.5, 0.25, 0.25]], fast=True, steps=2, eval_every=2, device="cpu",
                                domains="prose,noise,duplicated", n_validation=2)
    assert list(sweep["weights"]) == ["0.5/0.25/0.25"] and np.isfinite(sweep["val_average"]).all()
    assert len(mixture_grid(3)) == 7 and all(abs(sum(m) - 1) < 1e-3 for m in mixture_grid(3))
    assert main(["mix", "--fast", "--steps", "2", "--mixers", "uniform", "--domains", "prose,reversed",
                 "--device", "cpu", "--quiet"]) == 0
    assert "val/reversed" in capsys.readouterr().out
