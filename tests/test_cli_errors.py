"""The CLI on bad input (issue 15, items 8–9): every subcommand, bad values — exit code 2 and one
line on stderr naming the flag, checked before any work starts; never a traceback, never exit 0."""

import subprocess
import sys

import pytest

from zoedu.cli import main

TINY = ["--model", "tiny-opt", "--size", "1m", "--steps", "1", "--batch-size", "2", "--html", "", "--quiet"]

BAD = [
    # compare
    (["compare", "--steps", "0"], "--steps"),
    (["compare", "--steps", "x"], "--steps"),
    (["compare", "--batch-size", "-1"], "--batch-size"),
    (["compare", "--max-length", "1"], "--max-length"),
    (["compare", "--train-max-length", "1"], "--train-max-length"),
    (["compare", "--task", "sentiment", "--max-length", "16", "--train-max-length", "32", *TINY], "--train-max-length"),
    (["compare", "--lr", "nan"], "--lr"),
    (["compare", "--lr", "adam=-1"], "--lr"),
    (["compare", "--seed", "-1"], "--seed"),
    (["compare", "--eval-examples", "0"], "--eval-examples"),
    (["compare", "--eval-every", "-2"], "--eval-every"),
    (["compare", "--methods", "adam,lion"], "--methods"),
    (["compare", "--task", "tabular"], "--task"),
    (["compare", "--nproc", "0"], "--nproc"),
    (["compare", *TINY, "--csv", "/nonexistent/folder/x.csv"], "--csv"),
    (["compare", *TINY, "--html", "/nonexistent/folder/x.html"], "--html"),
    # memory
    (["memory", "tiny-opt", "--batch-size", "0"], "--batch-size"),
    (["memory", "tiny-opt", "--seq-len", "-4"], "--seq-len"),
    (["memory", "tiny-opt", "--gpus", "nan"], "--gpus"),
    (["memory", "tiny-opt", "--num-labels", "1"], "--num-labels"),
    (["memory", "tiny-opt", "--seed", "-3"], "--seed"),
    (["memory", "tiny-opt", "--csv", "/nonexistent/folder/x.csv"], "--csv"),
    # mix
    (["mix", "--steps", "0"], "--steps"),
    (["mix", "--steps", "-3"], "--steps"),
    (["mix", "--batch-size", "0"], "--batch-size"),
    (["mix", "--lr", "nan"], "--lr"),
    (["mix", "--lr", "-1"], "--lr"),
    (["mix", "--cosines", "2"], "--cosines"),
    (["mix", "--seed", "-1"], "--seed"),
    (["mix", "--csv", "/nonexistent/folder/x.csv"], "--csv"),
    (["mix", "--task", "tabular"], "--task"),
    (["mix", "--task", "synthetic", "--mixers", "proportional"], "--mixers"),
    (["mix", "--tau", "0"], "--tau"),
    (["mix", "--tau", "inf"], "--tau"),
    (["mix", "--zeta2", "-0.5"], "--zeta2"),
    (["mix", "--zeta2", "nan"], "--zeta2"),
    (["mix", "--score-noise", "exact"], "--score-noise"),
    (["mix", "--task", "synthetic", "--fast", "--steps", "1", "--score-noise", "measured"], "--score-noise"),
    # privacy
    (["privacy", "epsilon", "--steps", "-5"], "--steps"),
    (["privacy", "epsilon", "--delta", "0.5"], "--delta"),
    (["privacy", "epsilon", "--delta", "0"], "--delta"),
    (["privacy", "epsilon", "--sample-rate", "nan"], "--sample-rate"),
    (["privacy", "epsilon", "--sample-rate", "1.5"], "--sample-rate"),
    (["privacy", "epsilon", "--noise-multiplier", "inf"], "--noise-multiplier"),
    (["privacy", "epsilon", "--csv", "/nonexistent/folder/x.csv"], "--csv"),
    (["privacy", "mean", "--trials", "0"], "--trials"),
    (["privacy", "mean", "--n-priv", "-1"], "--n-priv"),
    (["privacy", "mean", "--d", "0"], "--d"),
    (["privacy", "sweep", "--epsilons", "nan"], "--epsilons"),
    (["privacy", "sweep", "--epsilons", "-1"], "--epsilons"),
    (["privacy", "sweep", "--public-fractions", "1.5"], "--public-fractions"),
    (["privacy", "sweep", "--seeds", "0"], "--seeds"),
    (["privacy", "what"], "what"),
    # notebooks and assignments
    (["notebooks", "run", "--timeout", "0"], "--timeout"),
    (["notebooks", "nothing"], "ACTION"),
    (["assignments", "build", "--only", "nosuch"], "--only"),
    (["assignments", "grade", "x.ipynb", "--autograder", "a.zip", "--jobs", "0"], "--jobs"),
]


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr()


@pytest.mark.parametrize("argv, flag", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_exit_2_with_one_line_naming_the_flag(argv, flag, capsys):
    code, out = run(argv, capsys)
    lines = [x for x in out.err.splitlines() if x.strip()]
    assert code == 2, out.err
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in out.err, out.err
    assert out.out == ""  # refused before any work


def test_an_unexpected_failure_is_one_line_without_traceback(capsys, monkeypatch):
    def boom(args):
        raise RuntimeError("something broke deep inside")

    from zoedu import cli

    parser = cli.build_parser()
    args = parser.parse_args(["privacy", "epsilon", "--steps", "3"])
    args.func, args.argv = boom, []
    monkeypatch.setattr(cli.Parser, "parse_args", lambda self, argv=None: args)
    code, out = run(["privacy", "epsilon"], capsys)
    assert code == 1 and out.err.strip() == "zoedu privacy: error: RuntimeError: something broke deep inside"


def test_a_diverged_comparison_is_not_exit_0(capsys, monkeypatch):
    import numpy as np
    import pandas as pd

    import zoedu.experiments.compare as compare

    history = pd.DataFrame({"step": [1, 2], "loss": [0.7, np.nan], "eval_loss": [np.nan, np.nan],
                            "eval_accuracy": [np.nan, 0.5], "seconds": [0.1, 0.2], "peak_memory": [np.nan] * 2,
                            "forward_passes": [2, 4], "backward_passes": [0, 0]})
    monkeypatch.setattr(compare, "compare", lambda *a, **k: (compare.summarize({"mezo": history}), {"mezo": history}))
    code, out = run(["compare", *TINY, "--methods", "mezo", "--lr", "1e30"], capsys)
    assert code == 1 and out.err.strip().splitlines()[-1].endswith("mezo diverged (a NaN or infinite loss): lower --lr")


def test_fit_stops_a_mezo_run_whose_weights_are_not_finite():
    """A skipped step (NaN loss) is fine once, but with non-finite weights every later step would
    be skipped too: fit stops with an error naming the learning rate."""
    import warnings

    import torch

    from zoedu.tasks import load_task
    from zoedu.train import fit

    torch.manual_seed(0)
    model = torch.nn.Linear(30, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with warnings.catch_warnings(), pytest.raises(FloatingPointError, match="lr=0.1") as info:
        warnings.simplefilter("ignore")
        fit(model, load_task("tabular", dataset="breast_cancer"), "mezo", steps=5, lr=0.1, batch_size=8,
            quiet=True, track_memory=False, eval_every=0)
    assert len(info.value.history) == 0


def test_mix_synthetic_fast_runs_its_own_defaults(capsys):
    code, out = run(["mix", "--task", "synthetic", "--fast", "--steps", "2", "--cosines", "0"], capsys)
    assert code == 0, out.err
    assert "balanced-pike" in out.out


def test_mix_passes_the_pike_flags_to_the_mixers(capsys, monkeypatch):
    import zoedu.experiments.mixing as mixing

    seen = {}

    def fake(mixers, **kwargs):
        seen.update(kwargs, mixers=mixers)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(mixing, "pretrain_multidomain", fake)
    code, out = run(["mix", "--mixers", "pike,balanced-pike", "--tau", "2", "--zeta2", "0.1",
                     "--score-noise", "measured", "--quiet"], capsys)
    assert code == 2 and "stopped by the test" in out.err
    assert seen["mixer_options"] == {"pike": {"zeta2": 0.1, "score_noise": "measured"},
                                     "balanced-pike": {"tau": 2.0, "zeta2": 0.1, "score_noise": "measured"}}
    seen.clear()
    run(["mix", "--quiet"], capsys)  # no flags: the experiments' own defaults, untouched
    assert seen["mixer_options"] == {"pike": {}, "balanced-pike": {}}


def test_no_traceback_from_a_real_process():
    r = subprocess.run([sys.executable, "-m", "zoedu", "privacy", "epsilon", "--steps", "-5"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["zoedu privacy: error: argument --steps: -5 must be a positive integer"]
