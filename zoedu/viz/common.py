"""Shared look of every zoedu figure: theme, one colour per method, notebook setup.

Every figure builder in :mod:`zoedu.viz` is a pure function from data (a History, a
DataFrame of footprints, arrays) to a ``plotly.graph_objects.Figure`` and calls
:func:`apply_theme` last, so all notebooks look alike. Colours are keyed by *name*
(method, memory category, domain) so the same method has the same colour in every
notebook.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import plotly.graph_objects as go
import plotly.io as pio

# One colour per method, stable across notebooks (Okabe–Ito-like, colour-blind safe).
METHOD_COLORS: dict[str, str] = {
    # optimizers (notebooks 00–03)
    "adam": "#0072B2",
    "sgd": "#56B4E9",
    "ipsgd": "#009E73",
    "mezo": "#D55E00",
    "addax": "#CC79A7",
    "inference": "#7F7F7F",
    # data mixing (notebook 04)
    "uniform": "#7F7F7F",
    "pike": "#CC79A7",
    "balanced_pike": "#882255",
    "pcgrad": "#E69F00",
    "mgda": "#0072B2",
    # DP with public data (notebook 05)
    "throw_away": "#E69F00",
    "treat_as_private": "#56B4E9",
    "semi_dp": "#CC79A7",
    "public_only": "#E69F00",
    "dp_sgd": "#56B4E9",
    "semi_dp_sgd": "#CC79A7",
}

# Memory categories of zoedu.memory.Footprint, bottom to top of a stacked bar.
MEMORY_CATEGORIES: tuple[str, ...] = ("params", "grads", "optimizer", "activations", "other")
MEMORY_COLORS: dict[str, str] = {
    "params": "#4C72B0",
    "grads": "#DD8452",
    "optimizer": "#C44E52",
    "activations": "#55A868",
    "other": "#B0B0B0",
}

# Human names for legends and axes.
METHOD_LABELS: dict[str, str] = {
    "adam": "Adam", "sgd": "SGD", "ipsgd": "IP-SGD", "mezo": "MeZO", "addax": "Addax",
    "inference": "inference", "uniform": "uniform", "pike": "PiKE",
    "balanced_pike": "Balanced-PiKE", "pcgrad": "PCGrad", "mgda": "MGDA",
    "throw_away": "throw away private", "treat_as_private": "treat public as private",
    "semi_dp": "semi-DP (weighted)", "public_only": "public only", "dp_sgd": "DP-SGD",
    "semi_dp_sgd": "semi-DP SGD",
}

_FALLBACK = ("#332288", "#117733", "#44AA99", "#88CCEE", "#DDCC77", "#CC6677", "#AA4499",
             "#882255", "#999933", "#661100")

TEMPLATE = "zoedu"
GiB = 1024 ** 3


def _register_template() -> None:
    if TEMPLATE in pio.templates:
        return
    base = pio.templates["plotly_white"]
    tmpl = go.layout.Template(base)
    tmpl.layout.font = dict(family="Helvetica, Arial, sans-serif", size=13)
    tmpl.layout.margin = dict(l=60, r=20, t=60, b=50)
    tmpl.layout.legend = dict(bgcolor="rgba(255,255,255,0.6)")
    tmpl.layout.colorway = list(_FALLBACK)
    pio.templates[TEMPLATE] = tmpl


_register_template()


def _key(name: str, table: dict) -> str:
    """``name`` normalised to a key of ``table``: case, '-' vs '_' and 'IP-SGD' vs 'ipsgd' ignored."""
    key = str(name).lower().replace("-", "_").replace(" ", "_")
    if key not in table and key.replace("_", "") in table:
        return key.replace("_", "")
    return key


def method_color(name: str, index: int = 0) -> str:
    """The colour of ``name`` (a method, mixer or estimator); a stable fallback otherwise."""
    key = _key(name, METHOD_COLORS)
    if key in METHOD_COLORS:
        return METHOD_COLORS[key]
    if key in MEMORY_COLORS:
        return MEMORY_COLORS[key]
    return _FALLBACK[(index if index else sum(map(ord, key))) % len(_FALLBACK)]


def method_label(name: str) -> str:
    """The display name of ``name`` ("ipsgd" -> "IP-SGD"); the name itself otherwise."""
    return METHOD_LABELS.get(_key(name, METHOD_LABELS), str(name))


def apply_theme(fig: go.Figure, *, title: str | None = None, height: int | None = None,
                width: int | None = None) -> go.Figure:
    """Give ``fig`` the zoedu look (template, title, size) and return it."""
    if not isinstance(fig, go.Figure):
        raise ValueError(f"fig must be a plotly.graph_objects.Figure, got {type(fig).__name__}")
    fig.update_layout(template=TEMPLATE)
    if title is not None:
        fig.update_layout(title=dict(text=title, x=0.01, xanchor="left"))
    if height is not None:
        fig.update_layout(height=height)
    if width is not None:
        fig.update_layout(width=width)
    return fig


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``: bytes in the largest unit that keeps the number ≥ 1."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"  # pragma: no cover


def log_ticks(values, max_ticks: int = 8) -> dict:
    """Tick values and labels for a log axis over ``values``: 1-2-5 (or 1-3, or 1) per
    decade, as dense as ``max_ticks`` allows, so that plotly does not label every minor
    tick ("2 3 4 5 6 7 8 9") when the data span a decade or less. ``{}`` without positive data."""
    import numpy as np

    v = np.asarray(values, dtype=float).reshape(-1)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return {}
    lo, hi = float(v.min()), float(v.max())
    e0, e1 = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    ticks: list[float] = []
    for mults in ((1, 2, 5), (1, 3), (1,)):
        all_ticks = [m * 10.0 ** e for e in range(e0, e1 + 1) for m in mults]
        inside = [t for t in all_ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        if len(inside) < 2:  # a narrow range: the nearest ticks either side too
            below = [t for t in all_ticks if t < lo][-1:]
            above = [t for t in all_ticks if t > hi][:1]
            inside = below + inside + above
        ticks = inside
        if len(ticks) <= max_ticks:
            break
    if len(ticks) > max_ticks:  # many decades: every k-th power of ten
        decades = [10.0 ** e for e in range(e0, e1 + 1)]
        step = -(-len(decades) // max_ticks)
        ticks = decades[::step]
    return {"tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]}


def hline(fig: go.Figure, y: float, line: dict, *, label: str | None = None, row=None, col=None,
          **annotation) -> None:
    """A horizontal line at ``y``, labelled only when ``label`` is given (``annotation_*``
    options, e.g. ``position="bottom right"``, apply then). Panels of one figure often share a
    line but not its label; ``fig.add_hline(annotation_text=None)`` would draw plotly.js's
    placeholder "new text" on every unlabelled one."""
    text = {"annotation_text": label, **{f"annotation_{k}": v for k, v in annotation.items()}} if label else {}
    fig.add_hline(y=float(y), line=line, row=row, col=col, **text)


def require_columns(df, columns: Iterable[str], argument: str = "data") -> None:
    """Raise a ValueError naming ``argument`` when ``df`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{argument} is missing column(s) {missing}; it has {list(df.columns)}")


def check_choice(value, allowed: Iterable, argument: str):
    """Return ``value`` if it is one of ``allowed``; else a ValueError naming both."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{argument}={value!r} is not allowed; choose one of {allowed}")
    return value


def setup_notebook(*, renderer: str | None = None, quiet: bool = True) -> None:
    """Prepare a notebook for zoedu figures (returns nothing, so the cell shows no output).

    - plotly renderer ``"plotly_mimetype+notebook"``: figures render in JupyterLab and
      the executed notebook's HTML (nbconvert) embeds plotly.js, so it works offline;
    - the zoedu template is the default for every figure;
    - ``quiet`` silences the progress bars and transformers' warnings, which would
      otherwise clutter executed notebooks.

    ``ZOEDU_PLOTLY_RENDERER`` overrides the renderer (e.g. ``png`` for a static export).
    """
    renderer = renderer or os.environ.get("ZOEDU_PLOTLY_RENDERER", "plotly_mimetype+notebook")
    pio.renderers.default = renderer
    pio.templates.default = TEMPLATE
    if quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            import transformers

            transformers.logging.set_verbosity_error()
        except Exception:  # pragma: no cover - transformers is a dependency
            pass
    import warnings

    warnings.filterwarnings("ignore", message=".*TypedStorage.*")


def static_bundle(fig: go.Figure) -> dict:
    """``fig``'s display bundle for the default renderers, loading plotly.js at most once.

    ``go.Figure._repr_mimebundle_`` passes the renderer names explicitly, which makes plotly
    activate the "notebook" renderer again, i.e. embed all of plotly.js (≈ 4.8 MB) in the
    output every time, and still leaves it pending for the next ``fig.show()``: a notebook
    with two dashboards carried three copies. Building the bundle for the default renderers
    activates the pending ones once, shared with every later figure.
    """
    fig_dict = fig.to_plotly_json()
    return pio.renderers._build_mime_bundle(fig_dict) or {}


class Dashboard:
    """Base of every zoedu dashboard: ``figure`` (a ``go.Figure``) holds what is drawn,
    ``view`` (an ``ipywidgets.Output``) draws it, ``controls`` are the widgets.

    Every control change runs the subclass's handler, which edits ``figure`` and ends with
    :meth:`redraw` (``_replace`` does), which puts the figure into ``view`` as one plotly
    display bundle (``application/vnd.plotly.v1+json``, drawn by JupyterLab's plotly
    renderer); so a handler called from Python updates the view too. Handlers are plain
    methods (``update``), so tests drive a dashboard by setting a control's ``.value`` from
    Python and reading ``figure`` (and ``view.outputs``).

    Why not ``go.FigureWidget``: it is an anywidget whose model, in the browser, must load
    plotly's 4.9 MB module within 2 s; when it does not (a busy laptop, Binder, a shared
    CI machine) anywidget drops every message to that model, so the figure is drawn empty
    and never changes again (reproduced by shortening that timeout; tests/test_ui.py had
    failed that way intermittently). An Output widget is part of ipywidgets itself and has
    no such deadline.

    It displays as its live widget in Jupyter and, where widgets cannot run (nbconvert's
    HTML of an executed notebook carries no widget state), as a static copy of the figure:
    the display bundle holds the figure's own plotly bundle (which also loads plotly.js in
    the page) with the widget view on top.
    """

    figure: go.Figure
    controls: dict
    _widget = None
    _view = None

    def _observe(self) -> None:
        for control in self.controls.values():
            style = getattr(control, "style", None)
            if style is not None and hasattr(style, "description_width"):
                style.description_width = "initial"  # the whole label ("sequence length", not "sequence …")
            control.observe(lambda change: self.update(), names="value")

    def _outputs(self) -> tuple:
        import json

        title = self.figure.layout.title.text
        bundle = {"application/vnd.plotly.v1+json": json.loads(self.figure.to_json()),  # arrays as typed arrays
                  "text/plain": f"<{type(self).__name__}" + (f": {title}>" if title else ">")}
        return ({"output_type": "display_data", "data": bundle, "metadata": {}},)

    @property
    def view(self):
        """The ``ipywidgets.Output`` that shows ``figure`` (made on first use)."""
        if self._view is None:
            import ipywidgets as w

            self._view = w.Output(outputs=self._outputs())
        return self._view

    def redraw(self) -> None:
        """Show the current ``figure`` in ``view`` (one message; no flicker, no kernel needed)."""
        if self._view is not None:
            self._view.outputs = self._outputs()

    @property
    def widget(self):
        """The layout: the one a subclass set, else the controls in a row above the figure."""
        if self._widget is not None:
            return self._widget
        import ipywidgets as w

        self._widget = w.VBox([w.HBox(list(self.controls.values())), self.view])
        return self._widget

    @widget.setter
    def widget(self, value) -> None:
        self._widget = value

    def _repr_mimebundle_(self, include=None, exclude=None):
        self.redraw()  # a figure changed from Python since the last control change
        bundle = dict(static_bundle(self.figure))
        bundle.update(self.widget._repr_mimebundle_(include=include, exclude=exclude) or {})
        return bundle

    def _replace(self, fig: go.Figure) -> None:
        """Copy ``fig``'s traces and layout into ``figure`` (kept: the same object), then :meth:`redraw`."""
        if len(self.figure.data) == len(fig.data) and all(
                a.type == b.type for a, b in zip(self.figure.data, fig.data)):
            for live, new in zip(self.figure.data, fig.data):
                live.update(new.to_plotly_json(), overwrite=True)
        else:
            self.figure.data = ()
            self.figure.add_traces(list(fig.data))
        self.figure.layout = fig.layout
        self.redraw()
