"""zoedu compare: the experiment and the command."""

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
    assert parse_lr(None, ["sgd", "lion"]) == {"sgd": defaults.DEFAULT_LR["sgd"], "lion": defaults.FALLBACK_LR}
