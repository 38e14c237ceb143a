"""zoedu.experiments.optim: run_methods and time_to_target."""

import math

import pytest

from zoedu.experiments.optim import run_methods, time_to_target


@pytest.fixture(scope="module")
def histories():
    from zoedu.models import load_tokenizer
    from zoedu.tasks import load_task

    task = load_task("sentiment", tokenizer=load_tokenizer("tiny-opt"), n_train=100, n_validation=20, max_length=32)
    return run_methods("tiny-opt", task, {"mezo": {"lr": 1e-4, "steps": 4},
                                          "mezo-adam": {"method": "mezo", "estimator": "adam", "lr": 1e-4},
                                          "ipsgd": {"lr": 1e-2}},
                       steps=2, batch_size=4, eval_every=2, model_options={"size": "1m"})


def test_run_methods_trains_each_from_the_same_start(histories):
    assert list(histories) == ["mezo", "mezo-adam", "ipsgd"]
    assert len(histories["mezo"]) == 4 and len(histories["ipsgd"]) == 2
    assert histories["mezo-adam"]["forward_passes"].iloc[-1] == 4
    assert histories["ipsgd"]["backward_passes"].iloc[-1] == 2
    # same initial weights and batches: the first step's loss estimate is the same for both MeZOs
    assert histories["mezo"]["loss"].iloc[0] == pytest.approx(histories["mezo-adam"]["loss"].iloc[0])


def test_time_to_target(histories):
    table = time_to_target(histories, accuracy=0.0)
    assert list(table["method"]) == ["mezo", "mezo-adam", "ipsgd"]
    assert (table["steps_to_target"] == 2).all()
    never = time_to_target(histories, accuracy=1.01)
    assert never["steps_to_target"].isna().all() and not math.isnan(never["final_accuracy"].iloc[0])


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        run_methods("tiny-opt", "sentiment", ["mezzo"], steps=1)
