"""The notebooks' structure and output policy, the Binder file, and ``zoedu notebooks``.

Every notebook under notebooks/ (assignments/ excluded) must:
- start with a Markdown title, cite its paper(s) and state the idea with equations;
- have a first code cell tagged ``parameters`` that sets ``SIZE`` from ``ZOEDU_SIZE``, default
  ``"lesson"`` (what a person's Run All gets), and ``FAST``/``FULL`` from it (nbval injects
  nothing: the repository's conftest.py sets ``ZOEDU_SIZE=fast`` for pytest);
- have at least one ``# NBVAL_CHECK_OUTPUT`` cell, whose committed output is the reference;
- carry no other outputs (``zoedu notebooks strip`` enforces this);
- keep code cells short: calls into zoedu, not algorithms.
Executing the notebooks is nbval's job (``pytest --nbval-lax notebooks/``); here
papermill runs a small synthetic notebook to test the runner itself.
"""

import re
from pathlib import Path

import nbformat
import pytest
import tomllib

from zoedu import notebooks as znb

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_CODE_LINES = 20
# Author names of the papers the notebooks teach; each notebook must cite at least one.
PAPERS = ("Malladi", "Li, Zhang, Zhong", "Li et al", "Lowy", "Spall", "Zhang et al")


def _read(path):
    return nbformat.read(path, as_version=4)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert {"00_tour", "01_zeroth_order", "02_memory_footprints", "03_addax"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_is_the_size_parameters_cell(path):
    first = _code_cells(_read(path))[0]
    assert "parameters" in first.metadata.get("tags", []), f"{path.name}: first code cell must be tagged 'parameters'"
    src = first.source
    assert 'SIZE = os.environ.get("ZOEDU_SIZE", "lesson")' in src, (
        f"{path.name}: SIZE must default from ZOEDU_SIZE, and to the lesson size")
    # (papermill skips a line with two '=', so not SIZE == "fast")
    assert re.search(r'^FAST = SIZE in \("fast",\)$', src, re.M) and re.search(r'^FULL = SIZE in \("full",\)$', src, re.M)
    # every size-dependent value names all three sizes
    for line in src.splitlines():
        if "[SIZE]" in line:
            assert all(f'"{s}":' in line for s in znb.SIZES), f"{path.name}: {line!r} must give fast, lesson and full"
    from papermill.translators import PythonTranslator

    import logging

    class Warnings(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    catch = Warnings()
    logger = logging.getLogger("papermill.translators")
    logger.addHandler(catch)
    try:
        found = [p.name for p in PythonTranslator.inspect(first)]
    finally:
        logger.removeHandler(catch)
    # papermill warns "Unable to parse line" for a multi-line value, a call with keyword
    # arguments or an '=' in a comment: every line of the parameters cell must be one it reads
    assert not catch.messages, f"{path.name}: papermill cannot read the parameters cell: {catch.messages}"
    assert {"SIZE", "FAST", "FULL"} <= set(found), f"{path.name}: papermill must read the SIZE, FAST and FULL lines"


def test_pytest_runs_the_notebooks_at_the_fast_size(monkeypatch):
    import os
    import runpy

    # the repository's conftest.py: nbval (the README's test command) runs the CI size unless told otherwise
    monkeypatch.delenv("ZOEDU_SIZE", raising=False)
    runpy.run_path(str(ROOT / "conftest.py"))
    assert os.environ["ZOEDU_SIZE"] == "fast"
    monkeypatch.setenv("ZOEDU_SIZE", "lesson")
    runpy.run_path(str(ROOT / "conftest.py"))
    assert os.environ["ZOEDU_SIZE"] == "lesson"


def test_run_refuses_an_unknown_size(tmp_path):
    with pytest.raises(ValueError, match="size='medium': allowed are 'fast', 'lesson', 'full'"):
        znb.run_notebooks(None, size="medium", directory=tmp_path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_has_a_check_cell_with_committed_output(path):
    checks = [c for c in _code_cells(_read(path)) if znb.is_check_cell(c)]
    assert checks, f"{path.name}: needs at least one '# NBVAL_CHECK_OUTPUT' cell"
    for cell in checks:
        text = "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in cell.outputs)
        assert text.strip(), f"{path.name}: a NBVAL_CHECK_OUTPUT cell has no committed output (run `zoedu notebooks run --adopt`)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_stripped_except_check_cells(path):
    assert not znb.strip_outputs(path, write=False), (
        f"{path.name} carries outputs outside NBVAL_CHECK_OUTPUT cells; run `zoedu notebooks strip`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_cells_are_short_calls(path):
    for i, cell in enumerate(_code_cells(_read(path))):
        lines = [ln for ln in cell.source.splitlines() if ln.strip()]
        assert len(lines) <= MAX_CODE_LINES, f"{path.name}: code cell {i} has {len(lines)} lines (max {MAX_CODE_LINES})"
        assert not re.search(r"^\s*(def|class) ", cell.source, re.M), (
            f"{path.name}: code cell {i} defines a function or class; algorithms belong in zoedu")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_markdown_has_title_citation_equations_and_a_question(path):
    nb = _read(path)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("# "), (
        f"{path.name}: the first cell must be a Markdown title")
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert any(name in md for name in PAPERS), f"{path.name}: cite the paper(s) it teaches"
    assert re.search(r"\(?(19|20)\d\d\)?", md), f"{path.name}: citations need a year"
    assert "$" in md, f"{path.name}: state the idea with the paper's equations (LaTeX)"
    assert "?" in md, f"{path.name}: ask the reader a question"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _normalise(re.split(r"[<>=!~\[; ]", spec.strip(), maxsplit=1)[0])


def test_binder_installs_every_runtime_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {_requirement_name(s) for s in project["dependencies"]}
    lines = [ln.strip() for ln in (ROOT / "binder" / "requirements.txt").read_text().splitlines()]
    listed = {_requirement_name(ln) for ln in lines if ln and not ln.startswith(("#", "-"))}
    assert not needed - listed, f"binder/requirements.txt lacks {sorted(needed - listed)}"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines, "Binder must install CPU-only torch"
    assert "-e ." in lines or "." in lines, "Binder must install the package itself (repo2docker skips it)"


# --------------------------------------------------------------------------- the runner
def _toy_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('import os\nSIZE = os.environ.get("ZOEDU_SIZE", "lesson")\n'
                                       'N = {"fast": 2, "lesson": 20, "full": 200}[SIZE]')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Toy"),
        params,
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint('SIZE', SIZE, 'N', N)"),
        nbformat.v4.new_code_cell("print('noise')"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_find_notebooks_by_name_and_bad_names(tmp_path):
    _toy_notebook(tmp_path / "00_toy.ipynb")
    _toy_notebook(tmp_path / "01_other.ipynb")
    assert [p.name for p in znb.find_notebooks(None, tmp_path)] == ["00_toy.ipynb", "01_other.ipynb"]
    assert [p.name for p in znb.find_notebooks(["01"], tmp_path)] == ["01_other.ipynb"]
    with pytest.raises(ValueError, match="names: 'zz' matches no notebook"):
        znb.find_notebooks(["zz"], tmp_path)
    with pytest.raises(FileNotFoundError, match="directory"):
        znb.find_notebooks(None, tmp_path / "missing")


def test_run_injects_the_size_and_the_sizes_follow_then_strip_keeps_check_outputs(tmp_path, capsys):
    src = _toy_notebook(tmp_path / "nb" / "00_toy.ipynb") if (tmp_path / "nb").mkdir() is None else None
    table = znb.run_notebooks(None, size="lesson", out_dir=tmp_path / "out", directory=tmp_path / "nb")
    assert list(table["status"]) == ["ok"] and table.loc[0, "seconds"] > 0
    assert "00_toy.ipynb" in capsys.readouterr().out  # a line per notebook with its time
    executed = _read(tmp_path / "out" / "00_toy.ipynb")
    printed = [c for c in executed.cells if znb.is_check_cell(c)][0].outputs[0]["text"]
    assert printed.strip() == "SIZE lesson N 20"
    # adopt the check output into the source; everything else stays stripped
    znb.adopt_outputs(tmp_path / "out" / "00_toy.ipynb", src)
    nb = _read(src)
    assert [len(c.outputs) for c in _code_cells(nb)] == [0, 1, 0]
    assert not znb.strip_outputs(src, write=False)
    # an executed notebook is not policy-clean; stripping makes it so
    assert znb.strip_outputs(tmp_path / "out" / "00_toy.ipynb")
    again = _read(tmp_path / "out" / "00_toy.ipynb")
    assert [len(c.outputs) for c in _code_cells(again) if "injected-parameters" not in c.metadata.get("tags", [])] \
        == [0, 1, 0]
    counts = [c.execution_count for c in _code_cells(again) if "injected-parameters" not in c.metadata.get("tags", [])]
    assert counts[0] is None and counts[1] is not None and counts[2] is None  # nbval needs the check cell's count


def test_export_html_prefers_the_static_figure_over_the_widget(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("dashboard")
    cell.outputs = [nbformat.v4.new_output("execute_result", data={
        znb.WIDGET_MIME: {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/html": "<div id='static-figure'>figure</div>", "text/plain": "Dashboard"}, execution_count=1)]
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), cell]
    nbformat.write(nb, tmp_path / "x.ipynb")
    html = znb.export_html(tmp_path / "x.ipynb", tmp_path / "html").read_text()
    assert "static-figure" in html and "abc" not in html


def test_cli_has_the_notebooks_subcommands(tmp_path, capsys):
    from zoedu.cli import main

    _toy_notebook(tmp_path / "00_toy.ipynb")
    assert main(["notebooks", "strip", "--check", "--dir", str(tmp_path)]) == 0
    with pytest.raises(SystemExit):
        main(["notebooks", "--help"])
    out = capsys.readouterr().out
    assert "run" in out and "check" in out and "strip" in out
