"""The notebooks in a real browser: JupyterLab driven by Debian's chromium through Playwright.

One JupyterLab server (127.0.0.1, a random token, ``ZOEDU_SIZE=fast`` in its environment)
serves a copy of ``notebooks/`` for the whole module; for every notebook the test waits for
an idle kernel, runs all cells from the menu, and checks what a person would see:

- every code cell ran (its prompt reads ``[n]:``) and no cell shows an error output;
- no output reads "Error displaying widget";
- the browser logged no console error and no page error;
- every dashboard (an output holding a slider and a plotly figure) draws data, and redraws: its
  first slider is moved one step with the keyboard and the figure's data must change. The page
  runs with anywidget's 2 s module deadline cut to 1 ms (a slow machine, deterministically), so
  a dashboard that depends on an anywidget such as plotly's FigureWidget fails every time.

A screenshot of the page and of every output holding a figure goes to the folder named by
``ZOEDU_UI_SCREENSHOTS`` (default: ``<tmp>/zoedu-ui-screenshots``, printed in the output).
``ZOEDU_UI_LESSON=1`` runs the notebooks at their lesson size instead (what a person gets;
minutes each), to look at the screenshots.

Skipped, with the reason, when chromium (``ZOEDU_CHROMIUM`` or ``chromium`` on the PATH) or
the ``playwright`` package is missing; never downloads a browser. Every wait has a timeout,
and the server is killed by its process id when the module ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.ui

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SCREENSHOTS = Path(os.environ.get("ZOEDU_UI_SCREENSHOTS") or Path(tempfile.gettempdir()) / "zoedu-ui-screenshots")

SERVER_START_S = 90      # JupyterLab answering /api/status
KERNEL_IDLE_S = 120      # the status bar reading "Idle" after the notebook opens
LESSON = os.environ.get("ZOEDU_UI_LESSON", "0") not in ("0", "")
RUN_ALL_S = 900 if LESSON else 300  # every cell run (fast is ≤ 60 s alone; CI shares 2 cores with the other tests)
SLIDER_S = 30            # a dashboard's figure redrawn after its slider moved
DRAW_S = 120             # a live figure drawn at all (slow on a loaded machine)
UI_S = 30                # a menu, a dialog, a page load

_CHOSEN = os.environ.get("ZOEDU_CHROMIUM")
CHROMIUM = ((_CHOSEN if os.access(_CHOSEN, os.X_OK) else None) if _CHOSEN
            else shutil.which("chromium") or shutil.which("chromium-browser"))
try:
    import playwright.sync_api  # noqa: F401
    _PLAYWRIGHT = None
except ImportError as err:  # pragma: no cover - depends on the environment
    _PLAYWRIGHT = f"the playwright package is missing ({err}); pip install -e '.[test]'"

if _PLAYWRIGHT:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_PLAYWRIGHT)]
elif not CHROMIUM:
    pytestmark = [pytestmark, pytest.mark.skip(
        reason=f"ZOEDU_CHROMIUM={_CHOSEN!r} is not an executable" if _CHOSEN else
        "no chromium on the PATH (apt-get install -y chromium, or set ZOEDU_CHROMIUM to a chromium binary)")]

# JupyterLab settings for a quiet, deterministic session: no news or update toasts, no
# autosave (the copies are throw-away anyway), every cell kept in the DOM.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server in its own process group, serving ``root``."""

    def __init__(self, root: Path, home: Path):
        import secrets

        self.root, self.token, self.port = root, secrets.token_hex(16), _free_port()
        settings = home / "settings"
        for name, value in LAB_SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(value))
        env = {**os.environ, "ZOEDU_SIZE": "lesson" if LESSON else "fast", "JUPYTERLAB_SETTINGS_DIR": str(settings),
               "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.log = (home / "jupyterlab.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
             "--port", str(self.port), f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={root}",
             "--ServerApp.port_retries=0"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.log_path = home / "jupyterlab.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def wait_ready(self, timeout: float = SERVER_START_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                self.api("status")
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"jupyter lab did not answer within {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def shutdown_sessions(self) -> None:
        for session in self.api("sessions") or []:
            self.api(f"sessions/{session['id']}", method="DELETE")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the server and the kernels it started
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("ui")
    root = work / "notebooks"
    root.mkdir()
    for path in NOTEBOOKS:  # a copy: running in the browser must not touch the committed notebooks
        shutil.copy(path, root / path.name)
    server = Lab(root, work)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nUI screenshots: {SCREENSHOTS}")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], timeout=UI_S * 1000)
        try:
            yield chromium
        finally:
            chromium.close()


# --------------------------------------------------------------------------- page helpers
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"  # the notebook in the visible tab

ALL_CELLS_RAN = """() => {
  const nb = document.querySelector('%s');
  if (!nb) return false;
  const indicator = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator')
                    || document.querySelector('.jp-Notebook-ExecutionIndicator');
  if (indicator && indicator.getAttribute('data-status') !== 'idle') return false;
  const prompts = [...nb.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
  return prompts.length > 0 && prompts.every(p => /^\\[\\d+\\]:$/.test(p.textContent.trim()));
}""" % NOTEBOOK

PROMPTS = """() => [...document.querySelectorAll('%s .jp-CodeCell .jp-InputArea-prompt')]
                    .map(p => p.textContent.trim())""" % NOTEBOOK

ANYWIDGET_NO_TIME = """(() => {
  const timeout = AbortSignal.timeout.bind(AbortSignal);
  AbortSignal.timeout = ms => timeout(ms === 2000 ? 1 : ms);  // anywidget's model-ready deadline
})()"""

# what a slider may change: the traces (values, but also emphasis: width, opacity, colour),
# the title, the shapes and annotations
PLOT_DATA = """cell => JSON.stringify([...cell.querySelectorAll('.js-plotly-plot')]
                    .map(el => [el.data || [], el.layout?.title, el.layout?.shapes, el.layout?.annotations]))"""


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click(timeout=UI_S * 1000)
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click(timeout=UI_S * 1000)


def _dismiss_toasts(page) -> None:
    for button in page.locator(".jp-toast-button", has_text="No").all():
        try:
            button.click(timeout=2000)
        except Exception:  # a toast that closed itself meanwhile
            pass


def _has_data(plot_data: str) -> bool:
    return any(plot[0] for plot in json.loads(plot_data))


def _wait_for_data(page, cell, before: str, seconds: float) -> str:
    """The cell's plot data once a figure holds data, or at the timeout; every 5 s the figure
    is scrolled back into view and a resize sent (JupyterLab renders only the cells in view;
    plotly draws on a resize), what a person would do."""
    deadline = time.monotonic() + seconds
    waited = 0
    while not _has_data(before) and time.monotonic() < deadline:
        page.wait_for_timeout(500)  # a busy machine: the live figure is still being drawn
        waited += 1
        if waited % 10 == 0:
            cell.scroll_into_view_if_needed(timeout=UI_S * 1000)
            page.evaluate("() => window.dispatchEvent(new Event('resize'))")
        before = cell.evaluate(PLOT_DATA)
    return before


def _move_first_slider(page, cell) -> tuple[str, str]:
    """Move the cell's first slider one step (right, or left at the end); return the plot
    data before (once the figure holds data, or after DRAW_S) and after (as soon as it
    differs, or at the timeout)."""
    handle = cell.locator(".widget-slider .noUi-handle").first
    handle.scroll_into_view_if_needed(timeout=UI_S * 1000)
    before = _wait_for_data(page, cell, cell.evaluate(PLOT_DATA), DRAW_S)
    handle.click(timeout=UI_S * 1000)
    after = before
    for key in ("ArrowRight", "ArrowLeft", "ArrowLeft"):
        handle.press(key)
        deadline = time.monotonic() + SLIDER_S
        while time.monotonic() < deadline:
            page.wait_for_timeout(1000)
            after = cell.evaluate(PLOT_DATA)
            if after != before:
                return before, after
        # no change: perhaps the slider sat at its right end; try the other way
    return before, after


# --------------------------------------------------------------------------- the test
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_jupyterlab(path, lab, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    # a slow machine, made deterministic: anywidget gives a widget's module 2 s to load before
    # it drops every message to the model; a plotly FigureWidget (a 4.9 MB module) then draws
    # empty and never updates. Shortening that deadline to 1 ms makes any dashboard built on
    # an anywidget fail here every time, not once in a few loaded CI runs.
    page.add_init_script(ANYWIDGET_NO_TIME)
    page.set_default_timeout(UI_S * 1000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    stem = path.stem
    try:
        # ?reset: a fresh workspace, so the notebooks opened before are not reopened as tabs
        page.goto(f"{lab.url}/lab/tree/{path.name}?reset&token={lab.token}", timeout=UI_S * 2000)
        page.wait_for_function(
            "() => /Idle/.test(document.querySelector('#jp-main-statusbar')?.textContent || '')",
            timeout=KERNEL_IDLE_S * 1000)
        _dismiss_toasts(page)
        _menu(page, "Run", "Run All Cells")
        try:
            page.wait_for_function(ALL_CELLS_RAN, timeout=RUN_ALL_S * 1000, polling=1000)
        except Exception:
            page.screenshot(path=str(SCREENSHOTS / f"{stem}-timeout.png"))
            pytest.fail(f"{path.name}: not every code cell ran within {RUN_ALL_S} s; prompts: "
                        f"{page.evaluate(PROMPTS)}; screenshot in {SCREENSHOTS}")
        page.wait_for_timeout(2000)  # widgets render after the kernel is idle
        errors = page.locator(f"{NOTEBOOK} .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                              has_text="Traceback")
        assert errors.count() == 0, f"{path.name}: a cell shows an error:\n{errors.first.inner_text()[:2000]}"
        broken = page.get_by_text("Error displaying widget")
        assert broken.count() == 0, f"{path.name}: {broken.count()} output(s) read 'Error displaying widget'"

        assert page.locator(".jp-NotebookPanel").count() == 1, "another notebook is open in the page"
        cells = page.locator(f"{NOTEBOOK} .jp-CodeCell")
        for i in range(cells.count()):
            cell = cells.nth(i)
            if cell.locator(".js-plotly-plot").count():
                cell.scroll_into_view_if_needed()
                page.wait_for_timeout(300)
                cell.locator(".jp-OutputArea").first.screenshot(path=str(SCREENSHOTS / f"{stem}-cell{i:02d}.png"))
        dashboards = [cells.nth(i) for i in range(cells.count())
                      if cells.nth(i).locator(".widget-slider").count() and cells.nth(i).locator(".js-plotly-plot").count()]
        for k, cell in enumerate(dashboards):
            before, after = _move_first_slider(page, cell)
            assert _has_data(before), (
                f"{path.name}: dashboard {k} ({cell.locator('.js-plotly-plot').count()} plot(s)) drew no data "
                f"within {DRAW_S} s")
            assert after != before, (f"{path.name}: moving a dashboard's first slider did not change its figure "
                                     f"within {SLIDER_S} s")
        page.screenshot(path=str(SCREENSHOTS / f"{stem}.png"))
        assert not problems, f"{path.name}: the browser reported errors:\n" + "\n".join(problems[:20])
    finally:
        context.close()
        lab.shutdown_sessions()
