"""Figures and dashboards.

Figure builders are pure functions from data (a History, a DataFrame from
:mod:`zoedu.experiments`, arrays) to a ``plotly.graph_objects.Figure``. Dashboards wire
ipywidgets controls to those builders: a handler edits the dashboard's ``figure`` and an
``ipywidgets.Output`` (``view``) redraws it (see :class:`zoedu.viz.common.Dashboard` for why
not ``go.FigureWidget``); handlers are plain methods, testable by setting a control's
``.value`` from Python.

Modules: :mod:`zoedu.viz.common` (theme, colours, :func:`setup_notebook`),
:mod:`zoedu.viz.optim` (zeroth-order estimates, convergence, Addax),
:mod:`zoedu.viz.memory` (footprints, GPU capacity), :mod:`zoedu.viz.mixing` (gradient
conflicts, PiKE) and :mod:`zoedu.viz.privacy` (DP with public data).
"""

from .common import (
    MEMORY_CATEGORIES,
    MEMORY_COLORS,
    METHOD_COLORS,
    apply_theme,
    format_bytes,
    method_color,
    method_label,
    setup_notebook,
)

__all__ = [
    "MEMORY_CATEGORIES",
    "MEMORY_COLORS",
    "METHOD_COLORS",
    "apply_theme",
    "format_bytes",
    "method_color",
    "method_label",
    "setup_notebook",
]
