"""Run, validate and tidy the notebooks headlessly: ``zoedu notebooks run|check|strip``.

Every notebook has three sizes, chosen by ``ZOEDU_SIZE`` in the kernel's environment:

- ``"lesson"`` (the default, what a person gets from Run All in JupyterLab or on Binder):
  large enough that every claim in the notebook's text shows in its figures, ≤ 3 min on
  2 CPU cores and ≤ 1.5 GB (benchmarks/README.md, "Notebooks", times each);
- ``"fast"`` (CI, nbval, papermill by default): ≤ 60 s, to check that every cell runs;
- ``"full"``: the benchmark's size (minutes; a GPU is used when present).

- :func:`run_notebooks` executes notebooks with papermill at one size (it sets
  ``ZOEDU_SIZE`` in the kernel's environment, which the parameters cell reads, and injects
  ``SIZE``) and returns one row per notebook with its wall and CPU seconds and the peak
  memory (PSS) of the kernel process tree.
- :func:`check_notebooks` runs ``pytest --nbval-lax`` on the notebooks: every cell must
  run, and cells marked ``# NBVAL_CHECK_OUTPUT`` must print what the committed notebook
  holds. nbval injects no parameters; the repository's ``conftest.py`` sets
  ``ZOEDU_SIZE=fast`` for any pytest run that has not set it.
- :func:`strip_outputs` enforces the output policy of the committed notebooks: outputs
  and execution counts are removed from every cell except those marked
  ``# NBVAL_CHECK_OUTPUT``, whose text outputs are kept (they are the reference nbval
  compares against).

The parameters cell of every notebook (tagged ``parameters``, the first code cell)::

    import os
    SIZE = os.environ.get("ZOEDU_SIZE", "lesson")           # lesson, fast or full
    FAST = SIZE in ("fast",)
    FULL = SIZE in ("full",)
    STEPS = {"fast": 20, "lesson": 100, "full": 300}[SIZE]  # sizes derived from SIZE

(papermill skips a line with more than one ``=``: hence ``SIZE in ("fast",)``, not ``==``.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
SIZES = ("fast", "lesson", "full")
"""The notebooks' sizes (``ZOEDU_SIZE``): CI's, a person's Run All, the benchmark's."""
SIZE_ENV = "ZOEDU_SIZE"
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
"""The repository's ``notebooks/`` folder (a source checkout; pass ``directory=`` otherwise)."""


# --------------------------------------------------------------------------- finding
def find_notebooks(names: Iterable[str] | None = None, directory: str | Path | None = None) -> list[Path]:
    """The notebooks to run: all top-level ``*.ipynb`` in ``directory`` (sorted; assignments
    excluded), or those matching ``names`` (a file name, a stem such as ``00_tour``, or a
    prefix such as ``00``)."""
    directory = Path(directory) if directory is not None else NOTEBOOK_DIR
    if not directory.is_dir():
        raise FileNotFoundError(f"directory={str(directory)!r} is not a folder of notebooks")
    available = sorted(p for p in directory.glob("*.ipynb") if not p.name.startswith("."))
    if names is None:
        return available
    if isinstance(names, str):
        names = [names]
    chosen = []
    for name in names:
        hits = [p for p in available if p.name == name or p.stem == name or p.stem.startswith(str(name))]
        if not hits:
            raise ValueError(f"names: {name!r} matches no notebook in {directory}; "
                             f"allowed: {', '.join(p.stem for p in available)}")
        chosen += [p for p in hits if p not in chosen]
    return chosen


# --------------------------------------------------------------------------- memory
class _PeakMemory:
    """Poll the memory and CPU time of this process's children (the kernel and what it
    spawns): ``peak`` is the largest summed proportional set size (PSS: each shared page
    counted once across the processes, as a container's memory limit counts it; resident
    size where the system has no PSS) seen, ``cpu`` the CPU seconds (user + system) they
    used, as of the last poll before each exited. Summing resident sizes instead would
    count torch's shared libraries once per process: a notebook that launches two workers
    (06) would read about 0.4 GB more than it uses."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._cpu: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu(self) -> float:
        return sum(self._cpu.values())

    @staticmethod
    def _size(process) -> int:
        try:
            return int(process.memory_full_info().pss)
        except (AttributeError, NotImplementedError):  # no PSS on this system
            return int(process.memory_info().rss)

    def _run(self):
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil comes with ipykernel
            return
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += self._size(child)
                    t = child.cpu_times()
                    self._cpu[child.pid] = t.user + t.system
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- running
def run_notebooks(names: Iterable[str] | None = None, *, size: str = "fast", out_dir: str | Path = "executed",
                  directory: str | Path | None = None, kernel_name: str | None = None,
                  timeout: int | None = None, parameters: dict | None = None,
                  quiet: bool = False) -> pd.DataFrame:
    """Execute notebooks with papermill, one at a time; return their times and peak memory.

    Args:
        names: notebooks to run (see :func:`find_notebooks`); ``None`` runs all.
        size: ``"fast"`` (≤ 60 s each, CI's), ``"lesson"`` (≤ 3 min each, what Run All gives a
            person) or ``"full"``; set as ``ZOEDU_SIZE`` in the kernel's environment and
            injected as ``SIZE``.
        out_dir: where the executed notebooks are written (same file names).
        directory: the folder holding the notebooks (default: the repository's ``notebooks/``).
        kernel_name: Jupyter kernel (default: the notebook's own, i.e. ``python3``).
        timeout: per-cell timeout in seconds (``None``: no limit).
        parameters: further parameters to inject.
        quiet: print nothing (by default a line per notebook).

    Returns:
        A DataFrame with ``notebook``, ``seconds`` (wall, kernel start included),
        ``cpu_seconds`` (CPU time of the kernel process tree: a timing that a busy machine
        does not inflate as much as wall time), ``peak_mb`` (peak memory of the kernel process
        tree in MiB, proportional set size: shared pages counted once; polled every 0.2 s),
        ``status`` (``"ok"`` or the error's first line) and ``output``.
    """
    import papermill as pm

    if size not in SIZES:
        raise ValueError(f"size={size!r}: allowed are {', '.join(map(repr, SIZES))}")
    paths = find_notebooks(names, directory)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = {"SIZE": size, **(parameters or {})}
    env_before = os.environ.get(SIZE_ENV)
    os.environ[SIZE_ENV] = size
    rows = []
    try:
        for path in paths:
            target = out / path.name
            status = "ok"
            t0 = time.perf_counter()
            with _PeakMemory() as mem:
                try:
                    pm.execute_notebook(str(path), str(target), parameters=params, kernel_name=kernel_name,
                                        cwd=str(path.parent), progress_bar=False, execution_timeout=timeout,
                                        log_output=False)
                except Exception as err:  # a failing notebook is reported, the others still run
                    status = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            seconds = time.perf_counter() - t0
            rows.append({"notebook": path.name, "seconds": round(seconds, 1), "cpu_seconds": round(mem.cpu, 1),
                         "peak_mb": round(mem.peak / 2 ** 20, 0), "status": status, "output": str(target)})
            if not quiet:
                print(f"{path.name:32s} {seconds:7.1f} s wall  {mem.cpu:7.1f} s CPU  {mem.peak / 2 ** 20:6.0f} MB  {status}",
                      flush=True)
    finally:
        if env_before is None:
            os.environ.pop(SIZE_ENV, None)
        else:
            os.environ[SIZE_ENV] = env_before
    return pd.DataFrame(rows)


def check_notebooks(names: Iterable[str] | None = None, *, directory: str | Path | None = None,
                    extra_args: Iterable[str] = ()) -> int:
    """Run ``pytest --nbval-lax`` on the notebooks (at ``ZOEDU_SIZE``, ``"fast"`` unless set); return
    pytest's exit code."""
    paths = find_notebooks(names, directory)
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:randomly", "-q",
           "--nbval-current-env", *map(str, paths), *extra_args]
    env = {**os.environ, SIZE_ENV: os.environ.get(SIZE_ENV, "fast")}
    return subprocess.call(cmd, env=env)


# --------------------------------------------------------------------------- output policy
def is_check_cell(cell) -> bool:
    """True for a code cell whose source contains ``# NBVAL_CHECK_OUTPUT``."""
    return cell.get("cell_type") == "code" and CHECK_MARK in "".join(cell.get("source", ""))


def strip_outputs(path: str | Path, *, write: bool = True) -> bool:
    """Apply the output policy to the notebook at ``path``; return True if it changed.

    Every code cell loses its outputs and execution count, except ``# NBVAL_CHECK_OUTPUT``
    cells, which keep their ``stream`` and ``text/plain`` outputs (nbval's reference) and
    get their position among the code cells as execution count (nbval treats a cell with
    outputs and no count as unrun).
    Notebook-level widget state and papermill's per-cell metadata are dropped too.
    """
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    number = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        number += 1
        for key in ("execution", "papermill", "collapsed", "scrolled", "jupyter"):
            cell.metadata.pop(key, None)
        if is_check_cell(cell):
            kept = []
            for o in cell.outputs:
                if o.output_type == "stream":
                    kept.append(o)
                elif o.output_type in ("execute_result", "display_data") and "text/plain" in o.get("data", {}):
                    o["data"] = {"text/plain": o["data"]["text/plain"]}
                    o["metadata"] = {}
                    kept.append(o)
            # nbval refuses a reference cell with outputs but no execution count ("unrun"),
            # so check cells get their position among the code cells: stable across runs
            for o in kept:
                if "execution_count" in o:
                    o["execution_count"] = number
            cell.outputs = kept
            cell.execution_count = number if kept else None
        else:
            cell.outputs = []
            cell.execution_count = None
    for key in ("widgets", "papermill"):
        nb.metadata.pop(key, None)
    after = nbformat.writes(nb)
    changed = after != before
    if changed and write:
        path.write_text(after + ("" if after.endswith("\n") else "\n"), encoding="utf-8")
    return changed


def adopt_outputs(executed: str | Path, source: str | Path) -> None:
    """Copy the ``# NBVAL_CHECK_OUTPUT`` cells' outputs from an executed notebook into the
    committed ``source`` notebook (matched by position), then strip the rest.
    This is how the reference outputs are refreshed after a deliberate change."""
    import nbformat

    ex = nbformat.read(Path(executed), as_version=4)
    src = nbformat.read(Path(source), as_version=4)
    ex_checks = [c for c in ex.cells if is_check_cell(c)]
    src_checks = [c for c in src.cells if is_check_cell(c)]
    if len(ex_checks) != len(src_checks):
        raise ValueError(f"executed={str(executed)!r} has {len(ex_checks)} check cells, "
                         f"source={str(source)!r} has {len(src_checks)}; they must be the same notebook")
    for e, s in zip(ex_checks, src_checks):
        s.outputs = e.outputs
    nbformat.write(src, Path(source))
    strip_outputs(source)


# --------------------------------------------------------------------------- static HTML
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def export_html(executed: str | Path, out_dir: str | Path) -> Path:
    """Render an executed notebook to a static HTML page (nbconvert) and return its path.

    Dashboards put the live widget and a static plotly copy of their figure in one output;
    nbconvert would pick the widget, which renders only with a kernel (or the widget
    state and a CDN), so the widget view is dropped wherever a static alternative exists.
    """
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(Path(executed), as_version=4)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_MIME in data and len(data) > 1:
                data.pop(WIDGET_MIME)
    nb.metadata.pop("widgets", None)
    body, _ = HTMLExporter().from_notebook_node(nb)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / (Path(executed).stem + ".html")
    target.write_text(body, encoding="utf-8")
    return target


# --------------------------------------------------------------------------- CLI
def _cmd_run(args) -> int:
    size = "full" if args.full else "lesson" if args.lesson else "fast"
    table = run_notebooks(args.names or None, size=size, out_dir=args.out, directory=args.dir,
                          timeout=args.timeout)
    total = table["seconds"].sum()
    print(f"{'total':32s} {total:7.1f} s wall  {table['cpu_seconds'].sum():7.1f} s CPU  "
          f"{table['peak_mb'].max():6.0f} MB (max)")
    if args.html:
        for _, row in table[table["status"] == "ok"].iterrows():
            print(f"wrote {export_html(row['output'], args.html)}")
    if args.adopt:
        for _, row in table[table["status"] == "ok"].iterrows():
            adopt_outputs(row["output"], find_notebooks([row["notebook"]], args.dir)[0])
        print("copied the NBVAL_CHECK_OUTPUT outputs into the source notebooks")
    return 0 if (table["status"] == "ok").all() else 1


def _cmd_check(args) -> int:
    return check_notebooks(args.names or None, directory=args.dir)


def _cmd_strip(args) -> int:
    paths = find_notebooks(args.names or None, args.dir)
    changed = [p.name for p in paths if strip_outputs(p, write=not args.check)]
    for name in changed:
        print(("would strip " if args.check else "stripped ") + name)
    return 1 if (args.check and changed) else 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("notebooks", help="run the notebooks headlessly (papermill), validate them (nbval), strip outputs",
                              description="Execute, validate and tidy zoedu's notebooks without a browser.")
    sub = p.add_subparsers(dest="notebooks_command", metavar="ACTION", required=True)
    common = {"nargs": "*", "metavar": "NAME", "help": "notebooks to use: a stem (00_tour) or prefix (00); default all"}

    r = sub.add_parser("run", help="execute the notebooks with papermill and print each one's time and peak memory")
    r.add_argument("names", **common)
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--fast", action="store_true", default=True,
                      help="SIZE='fast': the check size, ≤ 60 s each on 2 CPU cores (default)")
    mode.add_argument("--lesson", action="store_true",
                      help="SIZE='lesson': what Run All gives a person, ≤ 3 min each on 2 CPU cores")
    mode.add_argument("--full", action="store_true", help="SIZE='full': the benchmark size (minutes each; uses a GPU if present)")
    r.add_argument("--out", default="executed", help="folder for the executed notebooks (default: ./executed)")
    r.add_argument("--dir", default=None, help="folder holding the notebooks (default: the repository's notebooks/)")
    r.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    r.add_argument("--html", default=None, metavar="DIR",
                   help="also render each executed notebook to static HTML in DIR (dashboards as static figures)")
    r.add_argument("--adopt", action="store_true",
                   help="copy the NBVAL_CHECK_OUTPUT outputs of the run into the source notebooks")
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser("check", help="validate the notebooks with pytest --nbval-lax (ZOEDU_SIZE, 'fast' unless set)")
    c.add_argument("names", **common)
    c.add_argument("--dir", default=None, help="folder holding the notebooks")
    c.set_defaults(func=_cmd_check)

    s = sub.add_parser("strip", help="remove outputs except the NBVAL_CHECK_OUTPUT cells' (the committed-output policy)")
    s.add_argument("names", **common)
    s.add_argument("--dir", default=None, help="folder holding the notebooks")
    s.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook would change")
    s.set_defaults(func=_cmd_strip)


__all__ = ["CHECK_MARK", "NOTEBOOK_DIR", "SIZES", "SIZE_ENV", "find_notebooks", "run_notebooks", "check_notebooks", "is_check_cell",
           "strip_outputs", "adopt_outputs", "export_html", "add_cli"]
