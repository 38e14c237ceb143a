"""The ``zoedu`` command.

Each subcommand lives next to the code it drives: a module listed in
:data:`SUBCOMMAND_MODULES` defines ``add_cli(subparsers)``, which adds its parser and sets
``func`` (called with the parsed arguments; its return value is the exit code).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from importlib import import_module

from . import __version__, checks

SUBCOMMAND_MODULES = (
    "zoedu.experiments.compare",   # zoedu compare
    "zoedu.experiments.memory",    # zoedu memory
    "zoedu.experiments.mixing",    # zoedu mix
    "zoedu.experiments.privacy",   # zoedu privacy
    "zoedu.notebooks",             # zoedu notebooks run|check
    "zoedu.assignments",           # zoedu assignments build
)


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``zoedu compare: error: argument --steps: …`` (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="zoedu",
        description="Memory-efficient and private training of language models, made visible.",
    )
    parser.add_argument("--version", action="version", version=f"zoedu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = import_module(name)
        except ImportError as err:
            if err.name == name:  # not written yet
                continue
            raise
        module.add_cli(sub)
    return parser


# --------------------------------------------------------------------------- flag rules
# One rule per kind of flag, applied after parsing to every subcommand that has the flag
# (by its dest), so a bad value is refused before any work starts, naming the flag.
def _positive_int(v, low=1):
    return checks.integer("", v, low=low)


def _floats_in(low=None, high=None, low_open=False, high_open=False):
    def rule(v):
        values = [v] if isinstance(v, (int, float)) else (
            [float(x) for x in str(v).split(",") if x.strip()] if isinstance(v, str) else list(v))
        if not values:
            raise ValueError("no numbers given")
        for x in values:
            checks.number("", x, low=low, high=high, low_open=low_open, high_open=high_open)
    return rule


def _lr_spec(v):
    if isinstance(v, (int, float)):
        checks.positive("", v)
        return
    for part in str(v).split(","):
        value = part.rpartition("=")[2]
        try:
            x = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number; use e.g. 1e-4 or adam=1e-4,mezo=1e-6") from None
        checks.positive("", x)


def _delta(v):
    from .privacy.accounting import check_delta

    check_delta(v, allow_zero=False)


FLAG_RULES = {
    **{dest: _positive_int for dest in ("steps", "batch_size", "eval_examples", "seeds", "n_priv", "d", "trials",
                                        "nproc", "seq_len", "k0", "k1", "length_threshold", "timeout", "jobs")},
    "max_length": lambda v: _positive_int(v, low=2),
    "train_max_length": lambda v: _positive_int(v, low=2),
    "num_labels": lambda v: _positive_int(v, low=2),
    "seed": lambda v: _positive_int(v, low=0),
    "eval_every": lambda v: _positive_int(v, low=0),
    "lr": _lr_spec,
    "noise_multiplier": _floats_in(low=0.0),
    "sample_rate": _floats_in(low=0.0, high=1.0, low_open=True),
    "delta": _delta,
    "epsilons": _floats_in(low=0.0, low_open=True),
    "public_fractions": _floats_in(low=0.0, high=1.0, high_open=True),
    "cosines": _floats_in(low=-1.0, high=1.0),
    "gpus": _floats_in(low=0.0, low_open=True),
    "tau": _floats_in(low=0.0, low_open=True),
    "zeta2": _floats_in(low=0.0),
}
#: Flags naming a file to write: its folder must exist (checked before the work starts).
OUTPUT_FILES = ("csv", "html", "json")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_flags(args) -> None:
    """Apply :data:`FLAG_RULES` and the output-file check; a ``ValueError`` names the flag."""
    for dest, rule in FLAG_RULES.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        try:
            rule(value)
        except ValueError as err:
            why = str(err).split(" must ", 1)[1] if " must " in str(err) else str(err)
            raise ValueError(f"argument {_flag(dest)}: {value!r} must {why}" if " must " in str(err)
                             else f"argument {_flag(dest)}: {value!r}: {why}") from None
    if args.command == "notebooks":  # its --html and --out are folders it creates
        return
    for dest in OUTPUT_FILES:
        path = getattr(args, dest, None)
        if not path or not isinstance(path, str):
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise ValueError(f"argument {_flag(dest)}: {path!r} is a folder; give a file name")
        if not os.path.isdir(folder):
            raise ValueError(f"argument {_flag(dest)}: the folder {folder!r} does not exist")
        if not os.access(folder, os.W_OK):
            raise ValueError(f"argument {_flag(dest)}: the folder {folder!r} is not writable")


def _one_line(err: BaseException, args) -> str:
    """The error as one line, naming a flag where the message names its parameter (``sample_rate=``)."""
    text = " ".join(str(err).split()) or type(err).__name__
    for dest in vars(args):
        if dest in ("func", "argv", "command"):
            continue
        text = re.sub(rf"(?<![\w-]){re.escape(dest)}=", f"{_flag(dest)}=", text)
    return text


def write_figure(args) -> None:
    """A subcommand that leaves ``args.figure = (kind, data, title)`` gets it drawn (zoedu.viz)
    and written to ``args.html``: experiments return data, only the top layer draws."""
    figure = getattr(args, "figure", None)
    if figure is None or not getattr(args, "html", None):
        return
    kind, data, title = figure
    if kind != "convergence":
        raise ValueError(f"figure kind {kind!r} is unknown; allowed: convergence")
    from .viz.optim import convergence_figure

    convergence_figure(data, title=title).write_html(args.html, include_plotlyjs=True)
    print(f"wrote {args.html}")


def main(argv: list[str] | None = None) -> int:
    """Run the ``zoedu`` command; returns the exit code: 0 success, 2 a usage error or bad input
    (one line naming the flag), 1 a failure while working (one line; ``ZOEDU_DEBUG=1`` shows
    the traceback), 130 interrupted."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # a usage error (already printed, one line): its code; --help/--version: exit
        if stop.code in (0, None):
            raise
        return stop.code if isinstance(stop.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # e.g. compare --nproc re-launches itself
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    prog = f"zoedu {args.command}"
    debug = os.environ.get("ZOEDU_DEBUG", "") not in ("", "0")
    with warnings.catch_warnings():  # restores the warning display after an in-process call
        if not debug:  # a warning is one line too, not Python's file:line + source line
            warnings.showwarning = lambda message, category, *a, **k: print(
                f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr)
        return _run(args, prog, debug)


def _run(args, prog: str, debug: bool) -> int:
    try:
        check_flags(args)
        code = int(args.func(args) or 0)
        write_figure(args)
        return code
    except (ValueError, TypeError, FileNotFoundError) as err:
        if debug:
            raise
        print(f"{prog}: error: {_one_line(err, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - never a traceback on the command line
        if debug:
            raise
        print(f"{prog}: error: {type(err).__name__}: {_one_line(err, args)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
