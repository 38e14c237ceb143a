"""Course assignments: build them with otter-grader and grade submissions locally.

Three autograded assignments live as otter-assign *master notebooks* under
``notebooks/assignments/`` (otter's notebook format v1: an ``# ASSIGNMENT CONFIG`` raw cell,
``# BEGIN QUESTION`` / ``# BEGIN SOLUTION`` / ``# BEGIN TESTS`` blocks, public tests that
students run with ``grader.check`` and hidden tests that only the autograder has):

====================  ===================================================================
name                  what students write
====================  ===================================================================
``zeroth_order``      the two-point SPSA estimator, a MeZO step with the seed trick
``mixing``            per-task gradient norms, variances and cosines; PiKE's weight update
``privacy``           the Gaussian mechanism's calibration; three semi-DP mean estimators
====================  ===================================================================

:func:`build` runs ``otter assign`` on each master and returns, per assignment, the student
notebook (solutions and hidden tests stripped), the autograder notebook (with solutions)
and the autograder zip. :func:`grade` grades one notebook against an autograder zip with
otter's local runner (:func:`otter.api.grade_submission`): no Docker, no server — the
notebook is executed in the current environment's ``python3`` Jupyter kernel.

The command line: ``zoedu assignments build [--out DIR]`` and
``zoedu assignments grade SUBMISSION.ipynb --autograder ZIP``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ASSIGNMENTS: dict[str, str] = {
    "zeroth_order": "01_zeroth_order/zeroth_order.ipynb",
    "mixing": "02_mixing/mixing.ipynb",
    "privacy": "03_privacy/privacy.ipynb",
}
"""Assignment name → master notebook, relative to the assignments folder."""


def source_dir() -> Path:
    """The folder with the master notebooks (``notebooks/assignments`` of a source checkout).

    ``ZOEDU_ASSIGNMENTS`` overrides it. A wheel does not carry the notebooks; then this
    raises :class:`FileNotFoundError` saying where to point ``--source``.
    """
    env = os.environ.get("ZOEDU_ASSIGNMENTS")
    root = Path(env) if env else Path(__file__).resolve().parent.parent / "notebooks" / "assignments"
    if not root.is_dir():
        raise FileNotFoundError(
            f"no assignment masters at {root}; run from a source checkout of zoedu or pass "
            "--source DIR (or set ZOEDU_ASSIGNMENTS) to the folder holding 01_zeroth_order/ etc.")
    return root


def _check_names(names) -> list[str]:
    if names is None:
        return list(ASSIGNMENTS)
    if isinstance(names, str):
        names = [names]
    names = list(names)
    unknown = [n for n in names if n not in ASSIGNMENTS]
    if unknown or not names:
        raise ValueError(f"names={names!r}: unknown or empty; allowed: {', '.join(ASSIGNMENTS)}")
    return names


@dataclass
class BuiltAssignment:
    """What ``otter assign`` produced for one assignment."""

    name: str
    student: Path
    """The student notebook: solutions replaced by ``...``, hidden tests removed."""
    autograder_notebook: Path
    """The notebook with solutions (what a perfect submission looks like)."""
    autograder_zip: Path
    """The autograder configuration (tests included) for :func:`grade` or Gradescope."""

    @property
    def directory(self) -> Path:
        return self.student.parent.parent


def _assign(master: Path, dest: Path, *, run_tests: bool, quiet: bool) -> None:
    """``otter assign MASTER DEST`` through otter's Python API (one import of otter for all)."""
    import contextlib
    import io

    from otter.assign import main as otter_assign

    buffer = io.StringIO()
    quiet_cm = contextlib.redirect_stdout(buffer) if quiet else contextlib.nullcontext()
    cwd = os.getcwd()
    try:
        with quiet_cm:
            otter_assign(str(master), str(dest), no_pdfs=True, no_run_tests=not run_tests)
    except Exception as err:
        raise RuntimeError(f"otter assign failed for {master}: {err}\n{buffer.getvalue()[-4000:]}") from err
    finally:
        os.chdir(cwd)


def build(out_dir, *, names=None, source=None, run_tests: bool = False,
          quiet: bool = True) -> dict[str, BuiltAssignment]:
    """Run ``otter assign`` on each master notebook; return the artefacts per assignment.

    Args:
        out_dir: where to write; each assignment gets ``out_dir/<name>/{student,autograder}``
            (an existing ``out_dir/<name>`` is replaced).
        names: which assignments (default: all of :data:`ASSIGNMENTS`).
        source: the folder holding the masters (default: :func:`source_dir`).
        run_tests: let otter execute the solution notebook and run every test while
            building (slower; :func:`grade` on the autograder notebook checks the same).
        quiet: capture otter's output (shown only on failure).

    Returns:
        ``{name: BuiltAssignment}`` in the order of ``names``.
    """
    names = _check_names(names)
    root = Path(source) if source is not None else source_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"source={str(root)!r} is not a folder with assignment masters")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    built = {}
    for name in names:
        master = (root / ASSIGNMENTS[name]).resolve()
        if not master.is_file():
            raise FileNotFoundError(f"master notebook for {name!r} not found at {master}")
        dest = out / name
        if dest.exists():
            shutil.rmtree(dest)
        _assign(master, dest, run_tests=run_tests, quiet=quiet)
        zips = sorted((dest / "autograder").glob("*-autograder_*.zip"))
        if not zips:
            raise RuntimeError(f"otter assign wrote no autograder zip for {name!r} under {dest}")
        built[name] = BuiltAssignment(
            name=name,
            student=dest / "student" / master.name,
            autograder_notebook=dest / "autograder" / master.name,
            autograder_zip=zips[-1],
        )
    return built


@dataclass
class GradeReport:
    """Scores of one graded notebook."""

    notebook: Path
    scores: dict[str, float]
    """Question name → points earned (auto-graded questions only)."""
    possible: dict[str, float]
    """Question name → points available."""
    failures: dict[str, list[str]] = field(default_factory=dict)
    """Question name → messages of its failed test cases."""
    seconds: float = 0.0
    """Wall time of the grading (executing the notebook and running its tests)."""

    @property
    def total(self) -> float:
        return float(sum(self.scores.values()))

    @property
    def total_possible(self) -> float:
        return float(sum(self.possible.values()))

    def __str__(self) -> str:
        lines = [f"{self.notebook.name}: {self.total:g} / {self.total_possible:g} "
                 f"(graded in {self.seconds:.0f} s)"]
        for q in self.possible:
            lines.append(f"  {q:<24} {self.scores[q]:g} / {self.possible[q]:g}")
        return "\n".join(lines)


def grade(notebook, autograder_zip, *, quiet: bool = True) -> GradeReport:
    """Grade ``notebook`` with otter's local runner and the tests in ``autograder_zip``.

    The notebook is executed top to bottom (errors in a cell do not stop it, as otter
    grades), then every public and hidden test runs against its global variables. Manual
    (written) questions have no tests and do not appear in the report.
    """
    nb, ag = Path(notebook).resolve(), Path(autograder_zip).resolve()
    if not nb.is_file() or nb.suffix != ".ipynb":
        raise FileNotFoundError(f"notebook={str(notebook)!r} is not an .ipynb file")
    if not ag.is_file() or ag.suffix != ".zip":
        raise FileNotFoundError(f"autograder_zip={str(autograder_zip)!r} is not a .zip file")
    from otter.api import grade_submission

    cwd = os.getcwd()
    start = time.perf_counter()
    try:
        results = grade_submission(str(nb), str(ag), quiet=quiet)
    finally:
        os.chdir(cwd)
    seconds = time.perf_counter() - start
    scores, possible, failures = {}, {}, {}
    for name, res in results.results.items():
        scores[name] = float(res.score)
        possible[name] = float(res.possible)
        failed = [str(tc.message) for tc in res.test_case_results if not tc.passed]
        if failed:
            failures[name] = failed
    return GradeReport(notebook=nb, scores=scores, possible=possible, failures=failures,
                       seconds=seconds)


def _grade_job(job: tuple[str, str]) -> GradeReport:
    return grade(job[0], job[1], quiet=True)


def grade_many(jobs, *, workers: int = 2) -> list[GradeReport]:
    """Grade several ``(notebook, autograder_zip)`` pairs, ``workers`` processes at a time."""
    jobs = [(str(nb), str(ag)) for nb, ag in jobs]
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} must be a positive integer")
    if workers == 1 or len(jobs) <= 1:
        return [_grade_job(j) for j in jobs]
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_grade_job, jobs))


# --------------------------------------------------------------------------- CLI
def _cmd_build(args) -> int:
    built = build(args.out, names=args.names or None, source=args.source, run_tests=args.run_tests,
                  quiet=not args.verbose)
    for b in built.values():
        print(f"{b.name}:\n  student     {b.student}\n  autograder  {b.autograder_zip}\n"
              f"  solutions   {b.autograder_notebook}")
    return 0


def _cmd_grade(args) -> int:
    reports = grade_many([(nb, args.autograder) for nb in args.submissions], workers=args.jobs)
    for r in reports:
        print(r)
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"notebook": str(r.notebook), "scores": r.scores, "possible": r.possible,
              "total": r.total, "total_possible": r.total_possible} for r in reports], indent=2))
    return 0


def add_cli(subparsers) -> None:
    """Register ``zoedu assignments build|grade``."""
    parser = subparsers.add_parser(
        "assignments", help="build the otter-grader course assignments, or grade submissions",
        description="Build the three course assignments (student notebooks and autograders) "
                    "with otter-grader, or grade submissions locally (no Docker).")
    sub = parser.add_subparsers(dest="assignments_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="run `otter assign` for every assignment",
                       description="Run `otter assign` on each master notebook; writes "
                                   "OUT/<name>/student and OUT/<name>/autograder.")
    b.add_argument("--out", default="dist/assignments", help="output folder (default: %(default)s)")
    b.add_argument("--source", default=None, help="folder with the master notebooks "
                                                  "(default: notebooks/assignments of this checkout)")
    b.add_argument("--only", dest="names", action="append", choices=list(ASSIGNMENTS),
                   help="build only this assignment (repeatable)")
    b.add_argument("--run-tests", action="store_true",
                   help="let otter run every test on the solutions while building (slower)")
    b.add_argument("--verbose", action="store_true", help="show otter's output")
    b.set_defaults(func=_cmd_build)
    g = sub.add_parser("grade", help="grade submitted notebooks with an autograder zip",
                       description="Grade notebooks locally with otter's runner (executes each "
                                   "notebook in the python3 kernel of this environment).")
    g.add_argument("submissions", nargs="+", help="submitted .ipynb files")
    g.add_argument("--autograder", required=True, help="the autograder zip from `build`")
    g.add_argument("--jobs", type=int, default=1, help="grade this many notebooks at once")
    g.add_argument("--json", default=None, help="also write the scores to this JSON file")
    g.set_defaults(func=_cmd_grade)


__all__ = ["ASSIGNMENTS", "BuiltAssignment", "GradeReport", "add_cli", "build", "grade",
           "grade_many", "source_dir"]
