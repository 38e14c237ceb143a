"""zoedu compare: the experiment and the command."""

import pandas as pd
import pytest

from zoedu.cli import main
from zoedu.experiments.compare import compare, parse_lr


def test_compare_trains_each_method_from_the_same_start(tmp_path, capsys):
    table, histories = compare(["adam", "sgd"], model="tiny-opt", model_options={"size": "1m"},
                               task_options={"n_train": 60, "n_validation": 20, "max_length": 32},
                               steps=3, batch_size=4, eval_examples=20, head="linear", zero_shot=False)
    assert list(table["method"]) == ["adam", "sgd"]
    assert set(histories) == {"adam", "sgd"}
    # the same seed: both methods see the same first batch from the same weights
    assert histories["adam"]["loss"].iloc[0] == pytest.approx(histories["sgd"]["loss"].iloc[0])
    assert (table["peak_memory_mb"] > 0).all() and (table["seconds"] > 0).all()
    assert table["eval_accuracy"].between(0, 1).all()


def test_compare_command_prints_a_table_and_writes_html(tmp_path, capsys):
    html = tmp_path / "plot.html"
    code = main(["compare", "--model", "tiny-gpt2", "--size", "1m", "--methods", "sgd,adam", "--steps", "2",
                 "--batch-size", "2", "--max-length", "16", "--eval-examples", "8", "--quiet",
                 "--html", str(html)])
    out = capsys.readouterr().out
    assert code == 0
    for column in ("method", "eval_accuracy", "seconds", "peak_memory_mb"):
        assert column in out
    assert "sgd" in out and "adam" in out
    assert html.exists() and "plotly" in html.read_text()[:5000].lower()


def test_compare_runs_every_method_on_the_schedule(tmp_path, capsys):
    _, histories = compare(["sgd", "mezo"], model="tiny-opt", model_options={"size": "1m"},
                           task_options={"n_train": 60, "n_validation": 20, "max_length": 32}, steps=4,
                           batch_size=4, eval_examples=20, head="linear", zero_shot=False, lr_schedule="linear",
                           method_options={"mezo": {"lr_schedule": "cosine"}})
    sgd = histories["sgd"]["lr"].to_numpy()
    assert sgd == pytest.approx(sgd[0] * pd.Series([1, 0.75, 0.5, 0.25]).to_numpy())
    mezo = histories["mezo"]["lr"].to_numpy()  # its own option wins
    assert mezo[1:3] == pytest.approx(mezo[0] * pd.Series([0.853553, 0.5]).to_numpy(), rel=1e-5)
    assert main(["compare", "--model", "tiny-opt", "--lr-schedule", "step"]) == 2
    assert "--lr-schedule: invalid choice: 'step'" in capsys.readouterr().err


def test_compare_starts_with_the_zero_shot_prompt_model():
    kw = dict(model="tiny-opt", model_options={"size": "1m"}, batch_size=4, eval_examples=20,
              task_options={"n_train": 60, "n_validation": 20, "max_length": 32})
    table, histories = compare(["adam", "mezo"], steps=2, **kw)
    assert list(table["method"]) == ["zero-shot", "adam", "mezo"] and set(histories) == {"adam", "mezo"}
    zs = table.iloc[0]
    assert zs["steps"] == 0 and zs["seconds"] == 0 and zs["forward_passes"] == 0
    # inference memory: below Adam's training step (weights + gradients + moments)
    assert 0 < zs["peak_memory_mb"] < table.set_index("method").loc["adam", "peak_memory_mb"]
    # the zero-shot row is the untrained prompt model: both methods start from it
    from zoedu.experiments.optim import zero_shot

    again = zero_shot("tiny-opt", "sentiment", eval_examples=20, model_options={"size": "1m"},
                      task_options={"n_train": 60, "n_validation": 20, "max_length": 32}, track_memory=False)
    assert again["eval_accuracy"] == zs["eval_accuracy"] and again["eval_loss"] == pytest.approx(zs["eval_loss"])
    linear, _ = compare(["sgd"], steps=1, head="linear", **kw)
    assert list(linear["method"]) == ["untrained", "sgd"]


def test_compare_command_writes_the_zero_shot_row_to_csv(tmp_path):
    import pandas as pd

    csv = tmp_path / "t.csv"
    code = main(["compare", "--model", "tiny-opt", "--size", "1m", "--methods", "mezo", "--steps", "2",
                 "--batch-size", "2", "--max-length", "24", "--eval-examples", "8", "--quiet", "--peft", "lora",
                 "--html", "", "--csv", str(csv)])
    assert code == 0
    assert list(pd.read_csv(csv)["method"]) == ["zero-shot", "mezo"]


def test_prompt_head_has_its_own_learning_rates():
    from zoedu import defaults

    assert parse_lr(None, ["mezo", "adam", "lion"], "prompt") == {
        "mezo": defaults.PROMPT_LR["mezo"], "adam": defaults.PROMPT_LR["adam"], "lion": defaults.FALLBACK_LR}
    assert parse_lr(None, ["mezo"])["mezo"] == defaults.DEFAULT_LR["mezo"] != defaults.PROMPT_LR["mezo"]


def test_parse_lr():
    assert parse_lr("1e-3", ["adam", "sgd"]) == {"adam": 1e-3, "sgd": 1e-3}
    assert parse_lr("adam=2e-4", ["adam", "sgd"])["adam"] == 2e-4
    with pytest.raises(ValueError, match="not in methods"):
        parse_lr("mezo=1e-6", ["adam"])
    with pytest.raises(ValueError, match="not a number"):
        parse_lr("adam=fast", ["adam"])


def test_compare_bad_method(capsys):
    assert main(["compare", "--methods", "adam,lion", "--model", "tiny-opt", "--steps", "1"]) == 2
    assert "lion" in capsys.readouterr().err


def test_one_defaults_table():
    """compare, run_methods and the benchmarks read one table (zoedu.defaults)."""
    from zoedu import defaults
    from zoedu.experiments import compare as compare_module
    from zoedu.experiments import optim

    assert compare_module.DEFAULT_LR is defaults.DEFAULT_LR is optim.DEFAULT_LR
    assert defaults.default_options("addax")["k1"] == 4 and "lr" not in defaults.default_options("mezo")
    # the prompt head replaces only what PROMPT_OPTIONS names, and hands out copies
    prompt = defaults.default_options("addax", "prompt")
    assert prompt["k1"] == defaults.PROMPT_OPTIONS["addax"]["k1"] != 4 and prompt["k0"] == 4
    assert defaults.default_options("addax", "linear") == defaults.default_options("addax")
    prompt["k1"] = 99
    assert defaults.default_options("addax", "prompt")["k1"] != 99
    assert parse_lr(None, ["sgd", "lion"]) == {"sgd": defaults.DEFAULT_LR["sgd"], "lion": defaults.FALLBACK_LR}


def test_mezo_trains_on_its_own_batch_size_with_the_prompt_head():
    """batch_size=None: MeZO 64 with the prompt head (the MeZO paper's protocol), the others 16;
    its learning rate is the one for that batch; the zero-shot row measures inference memory on
    the largest batch; a number sets every method's batch and a method's own option wins."""
    from zoedu import defaults

    kw = dict(model="tiny-opt", model_options={"size": "1m"}, eval_examples=8,
              task_options={"n_train": 80, "n_validation": 8, "max_length": 16})
    table, hist = compare(["adam", "mezo"], steps=1, **kw)
    assert hist["mezo"].attrs["batch_size"] == 64 and hist["adam"].attrs["batch_size"] == 16
    assert hist["mezo"].attrs["lr"] == defaults.default_lr("mezo", "prompt") == 1e-4
    assert list(table["batch_size"]) == [64, 16, 64]  # zero-shot row: the largest batch
    table, hist = compare(["adam", "mezo"], steps=1, batch_size=8, **kw)
    assert {h.attrs["batch_size"] for h in hist.values()} == {8}
    assert hist["mezo"].attrs["lr"] == defaults.default_lr("mezo", "prompt", 8) == 1e-5
    _, hist = compare(["mezo"], steps=1, batch_size=8, method_options={"mezo": {"batch_size": 32}},
                      zero_shot=False, **kw)
    assert hist["mezo"].attrs["batch_size"] == 32 and hist["mezo"].attrs["lr"] == 5e-5
    _, hist = compare(["mezo"], steps=1, head="linear", zero_shot=False, **kw)  # the linear head: 16, its own lr
    assert hist["mezo"].attrs["batch_size"] == 16 and hist["mezo"].attrs["lr"] == defaults.DEFAULT_LR["mezo"]
    with pytest.raises(ValueError, match="batch_size"):
        compare(["mezo"], steps=1, batch_size=0, **kw)


def test_mezo_prompt_learning_rate_follows_the_batch():
    from zoedu.defaults import default_lr

    assert [default_lr("mezo", "prompt", b) for b in (1, 16, 31, 32, 63, 64, 256)] == \
        [1e-5, 1e-5, 1e-5, 5e-5, 5e-5, 1e-4, 1e-4]
    assert default_lr("mezo", "linear", 64) == default_lr("mezo") == 1e-3  # the linear head: no batch rule
    assert default_lr("adam", "prompt", 64) == default_lr("adam", "prompt", 4)


def test_run_methods_gives_each_method_its_head_defaults(monkeypatch):
    """run_methods without an lr or options: the head's learning rate (for the method's batch)
    and the head's options (Addax's K¹ with the prompt head); an entry's own values win."""
    import zoedu.train
    from zoedu import defaults
    from zoedu.experiments.optim import run_methods

    calls = {}

    def fake_fit(model, task, method, **kw):
        calls[method] = kw
        return pd.DataFrame({"step": [1]})

    monkeypatch.setattr(zoedu.train, "fit", fake_fit)
    run_methods("tiny-opt", "sentiment", {"addax": {}, "mezo": {"batch_size": 64}}, 1, head="prompt",
                model_options={"size": "1m"}, task_options={"n_train": 8, "n_validation": 4, "max_length": 16})
    assert calls["addax"]["lr"] == defaults.PROMPT_LR["addax"] and calls["addax"]["k1"] == 12
    assert calls["mezo"]["lr"] == defaults.default_lr("mezo", "prompt", 64) == defaults.PROMPT_LR["mezo"]
    run_methods("tiny-opt", "sentiment", {"addax": {"k1": 3, "lr": 0.5}}, 1, head="linear",
                model_options={"size": "1m"}, task_options={"n_train": 8, "n_validation": 4, "max_length": 16})
    assert calls["addax"]["lr"] == 0.5 and calls["addax"]["k1"] == 3
    run_methods("tiny-opt", "sentiment", {"addax": {}}, 1, model_options={"size": "1m"},
                task_options={"n_train": 8, "n_validation": 4, "max_length": 16})
    assert calls["addax"]["lr"] == defaults.DEFAULT_LR["addax"] and calls["addax"]["k1"] == 4
