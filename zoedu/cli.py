"""The ``zoedu`` command.

Each subcommand lives next to the code it drives: a module listed in
:data:`SUBCOMMAND_MODULES` defines ``add_cli(subparsers)``, which adds its parser and sets
``func`` (called with the parsed arguments; its return value is the exit code).
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from . import __version__

SUBCOMMAND_MODULES = (
    "zoedu.experiments.compare",   # zoedu compare
    "zoedu.experiments.memory",    # zoedu memory
    "zoedu.experiments.mixing",    # zoedu mix
    "zoedu.experiments.privacy",   # zoedu privacy
    "zoedu.notebooks",             # zoedu notebooks run|check
    "zoedu.assignments",           # zoedu assignments build
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # e.g. compare --nproc re-launches itself
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        write_figure(args)
        return code
    except (ValueError, FileNotFoundError) as err:
        print(f"zoedu {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # under torchrun: zoedu.distributed.RankFailure / RanksDiverged
        from .distributed import RankFailure, RanksDiverged

        if not isinstance(err, (RankFailure, RanksDiverged)):
            raise
        print(f"zoedu {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
