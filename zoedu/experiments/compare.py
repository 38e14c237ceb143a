"""Compare training methods side by side: the same model, task, batches and budget.

``compare(methods, task=..., model=..., steps=...)`` returns a summary table and the
History of every method; ``zoedu compare`` prints the table and writes an HTML plot of
loss against step and against wall seconds.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from ..checks import integer
from ..defaults import DEFAULT_LR, default_batch_size, default_lr


def parse_lr(text: str | float | None, methods: list[str], head: str | None = None,
             batch_sizes: dict[str, int] | None = None) -> dict[str, float]:
    """``"1e-4"`` (all methods) or ``"adam=1e-4,mezo=1e-6"`` → ``{method: lr}`` (the others:
    :func:`zoedu.defaults.default_lr` for ``head`` and the method's batch size in ``batch_sizes``)."""
    lrs = {m: default_lr(m, head, (batch_sizes or {}).get(m)) for m in methods}
    if text is None or text == "":
        return lrs
    if isinstance(text, (int, float)):
        return {m: float(text) for m in methods}
    for part in str(text).split(","):
        key, _, value = part.rpartition("=")
        try:
            lr = float(value)
        except ValueError:
            raise ValueError(f"lr={text!r}: {value!r} is not a number; use e.g. 1e-4 or adam=1e-4,mezo=1e-6") from None
        if key:
            if key not in lrs:
                raise ValueError(f"lr={text!r} names method {key!r}, which is not in methods={methods}")
            lrs[key] = lr
        else:
            lrs = {m: lr for m in methods}
    return lrs


def summarize(histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per method: steps and batch size, final loss and validation metrics, wall
    seconds, peak memory."""
    rows = []
    for name, h in histories.items():
        last = h.iloc[-1]
        evals = h.dropna(subset=["eval_loss"])
        final = evals.iloc[-1] if len(evals) else last
        rows.append({
            "method": name,
            "steps": int(last["step"]),
            "batch_size": int(h.attrs.get("batch_size", 0)) or np.nan,
            "train_loss": float(h["loss"].tail(max(1, len(h) // 10)).mean()),
            "eval_loss": float(final.get("eval_loss", np.nan)),
            "eval_accuracy": float(final.get("eval_accuracy", np.nan)),
            "seconds": float(last["seconds"]),
            "peak_memory_mb": float(h["peak_memory"].max()) / 2**20 if h["peak_memory"].notna().any() else np.nan,
            "forward_passes": int(last["forward_passes"]),
            "backward_passes": int(last["backward_passes"]),
        })
    return pd.DataFrame(rows)


def compare(methods, *, task: str = "sentiment", model: str = "minilm", steps: int = 50,
            lr=None, batch_size: int | None = None, seed: int = 0, device="auto", eval_every: int | None = None,
            eval_examples: int | None = 200, task_options: dict | None = None,
            model_options: dict | None = None, method_options: dict | None = None,
            head: str | None = "prompt", zero_shot: bool = True, lr_schedule: str = "constant",
            quiet: bool = True) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Train a fresh copy of ``model`` on ``task`` with each method; return (table, histories).

    Every method starts from the same weights (same seed) and sees batches drawn with the
    same seed (:func:`zoedu.experiments.optim.run_methods` runs them). ``lr`` is a float for
    all methods, a ``{method: lr}`` dict, or a string as in :func:`parse_lr`; missing methods
    use :func:`zoedu.defaults.default_lr` (for their head and batch size). ``method_options``
    maps a method name to keyword options for it (on top of
    :data:`zoedu.defaults.METHOD_DEFAULTS`; a ``batch_size`` there wins). ``batch_size=None``
    gives each method its default (:func:`zoedu.defaults.default_batch_size`: MeZO 64 with
    the prompt head, as in the MeZO paper, else 16); a number sets every method's.

    ``head="prompt"`` (the default for tasks with a prompt) fine-tunes the task's prompt
    classifier, which is the zero-shot classifier before training (the MeZO paper's
    setting); ``head="linear"`` a freshly initialised linear head (their ablation). With
    ``zero_shot`` the table's first row is the untrained model (steps 0; ``"zero-shot"``
    with the prompt head, ``"untrained"`` otherwise), whose peak memory is that of a forward
    pass: inference memory. ``lr_schedule`` is every method's :func:`zoedu.train.fit` schedule
    (``"constant"``, ``"linear"`` or ``"cosine"`` over ``steps``) unless its
    ``method_options`` name one.
    """
    from ..tasks import task_prompt
    from .optim import run_methods
    from .optim import zero_shot as zero_shot_row

    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(methods)
    if head == "prompt" and isinstance(task, str) and task_prompt(task) is None:
        head = None  # e.g. multidomain (language modelling) or tabular: no prompt to use
    if batch_size is not None:
        integer("batch_size", batch_size, low=1, what="examples per step for every method; None: each method's default")
    specs = {m: {"batch_size": default_batch_size(m, head) if batch_size is None else batch_size,
                 "lr_schedule": lr_schedule,
                 **(method_options or {}).get(m, {})} for m in methods}  # a method's own batch_size wins
    batches = {m: spec["batch_size"] for m, spec in specs.items()}
    lrs = dict(lr) if isinstance(lr, dict) else parse_lr(lr, methods, head, batches)
    for m, spec in specs.items():
        spec["lr"] = lrs.get(m, default_lr(m, head, batches[m]))
    histories = run_methods(model, task, specs, steps, seed=seed, device=device,
                            eval_every=eval_every, eval_examples=eval_examples, model_options=model_options,
                            task_options=task_options, head=head, quiet=quiet)
    table = summarize(histories)
    if zero_shot:
        # inference memory at the largest batch a method trains on (MeZO's, where it runs)
        largest = max(spec["batch_size"] for spec in specs.values())
        row = zero_shot_row(model, task, head=head, seed=seed, batch_size=largest, eval_examples=eval_examples,
                            device=device, model_options=model_options, task_options=task_options)
        if head != "prompt":
            row["method"] = "untrained"  # a fresh linear head: chance, not zero-shot
        table = pd.concat([pd.DataFrame([row]), table], ignore_index=True)
    return table, histories


def format_table(table: pd.DataFrame) -> str:
    """The summary as aligned text."""
    fmt = {"batch_size": lambda v: "" if v != v else f"{v:.0f}", "train_loss": "{:.4f}".format,
           "eval_loss": "{:.4f}".format, "eval_accuracy": "{:.3f}".format, "seconds": "{:.1f}".format,
           "peak_memory_mb": "{:.1f}".format}
    return table.to_string(index=False, formatters=fmt)


# --------------------------------------------------------------------------- CLI
def _spawn(args, argv: list[str]) -> int:
    """``zoedu compare --nproc N``: re-run this command under ``torchrun --nproc-per-node N``."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "zoedu", "compare", *argv]
    return subprocess.call(cmd)


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _run(args) -> int:
    import sys

    from .. import distributed

    if args.nproc > 1 and not distributed.launched():
        argv = list(getattr(args, "argv", None) or sys.argv[1:])
        return _spawn(args, _without_nproc(argv[argv.index("compare") + 1:]))
    if distributed.launched():
        distributed.init()
    try:
        return _compare_and_report(args)
    finally:
        distributed.shutdown()


def _compare_and_report(args) -> int:
    from ..distributed import is_main

    table, histories = compare(
        args.methods, task=args.task, model=args.model, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, seed=args.seed, device=args.device, eval_every=args.eval_every,
        eval_examples=args.eval_examples,
        task_options=({"max_length": args.max_length, "train_max_length": args.train_max_length}
                      if args.task in ("sentiment", "sst2", "multidomain") else None),
        model_options=_model_options(args), head=args.head, zero_shot=args.zero_shot,
        lr_schedule=args.lr_schedule, quiet=args.quiet,
    )
    if not is_main():  # every rank holds the same table; rank 0 prints and writes
        return 0
    print(format_table(table))
    diverged = [m for m, h in histories.items() if not np.isfinite(h["loss"].iloc[-1])
                or not np.isfinite(h.loc[h["eval_accuracy"].notna(), "eval_loss"]).all()]
    if diverged:  # e.g. MeZO skipping every step: the table would show NaN and exit 0
        if args.csv:
            table.to_csv(args.csv, index=False)
        raise FloatingPointError(f"{', '.join(diverged)} diverged (a NaN or infinite loss): lower --lr")
    if args.html:  # experiments return data; the cli draws it (zoedu.cli.write_figure)
        args.figure = ("convergence", histories, f"{args.model} on {args.task}: loss against step and seconds")
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


def _model_options(args) -> dict | None:
    options = {"size": args.size} if args.model.startswith("tiny-") else {}
    if args.peft:
        options["peft"] = args.peft
    return options or None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _methods(text: str) -> str:
    from ..train import available_methods

    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no method given")
    allowed = available_methods()
    unknown = [m for m in names if m not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(map(repr, unknown))} unknown; allowed: {', '.join(allowed)}")
    return text


#: The tasks ``zoedu compare`` trains its text models on (tabular needs a feature-vector model).
CLI_TASKS = ("sentiment", "sst2", "multidomain")


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="fine-tune one model with several methods and print a comparison table",
        description="Fine-tune a fresh copy of MODEL on TASK with each method (same seed, same batches); "
                    "print final loss, validation accuracy, wall seconds and peak memory per method, "
                    "and write an HTML plot of loss against step and against seconds.",
    )
    p.add_argument("--task", default="sentiment", choices=CLI_TASKS, help="task name (default: sentiment)")
    p.add_argument("--model", default="minilm", help="model name: minilm, tiny-opt, tiny-gpt2 or a hub id (default: minilm)")
    p.add_argument("--size", default="5m", help="size of a tiny model: 1m, 5m, 25m (default: 5m)")
    p.add_argument("--methods", default="adam,sgd", type=_methods, help="comma-separated methods (default: adam,sgd)")
    p.add_argument("--steps", type=_positive_int, default=50, help="training steps per method (default: 50)")
    p.add_argument("--lr", default=None, help="learning rate for all methods, or per method: adam=5e-5,mezo=1e-3")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="examples per step for every method (default: each method's own: MeZO 64 with the "
                        "prompt head, as in the MeZO paper; the others 16)")
    p.add_argument("--lr-schedule", choices=("constant", "linear", "cosine"), default="constant",
                   help="every method's learning-rate schedule over --steps: constant (default), linear or cosine "
                        "decay (long zeroth-order runs want a decaying rate)")
    p.add_argument("--max-length", type=_positive_int, default=128, help="truncate examples to this many tokens (default: 128)")
    p.add_argument("--train-max-length", type=_positive_int, default=None,
                   help="train on the first N tokens of each example, evaluate on --max-length (cheaper steps; "
                        "default: --max-length)")
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (default: only at the end)")
    p.add_argument("--eval-examples", type=int, default=200, help="validation examples per evaluation (default: 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--head", choices=("prompt", "linear"), default="prompt",
                   help="prompt: the task's prompt classifier, zero-shot before training (the MeZO paper's "
                        "setting); linear: a fresh linear head (their ablation). Default: prompt")
    p.add_argument("--peft", choices=("lora", "prefix", "prompt"), default=None,
                   help="train only a peft adapter: lora, prefix (causal LMs) or prompt tuning")
    p.add_argument("--no-zero-shot", dest="zero_shot", action="store_false",
                   help="skip the first row (the untrained model's accuracy and inference memory)")
    p.add_argument("--html", default="zoedu-compare.html", help="where to write the loss plot ('' for none)")
    p.add_argument("--csv", default=None, help="also write the table as CSV here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--nproc", type=_positive_int, default=1,
                   help="run on N local processes (re-launches itself with torchrun --nproc-per-node N; "
                        "under torchrun already, leave it out)")
    p.set_defaults(func=_run)


__all__ = ["DEFAULT_LR", "compare", "summarize", "parse_lr", "format_table", "add_cli"]
