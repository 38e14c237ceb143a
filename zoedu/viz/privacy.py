"""Figures and dashboards for differential privacy with public data (notebook 05).

Lowy, Li, Huang, Razaviyayn, "Optimal Differentially Private Model Training with Public
Data", ICML 2024. Privacy is owed to the ``n_priv`` private examples only; ``n_pub``
public examples are free. The figures compare the paper's three strategies:

* **throw away** the private data (public mean / public-only SGD, no noise);
* **treat the public data as private** (an optimal DP algorithm on all examples);
* **semi-DP**: the weighted middle (a·Σ_pub x + b·Σ_priv x + noise for mean estimation;
  g = β·g_priv + (1 − β)·g_pub for SGD), which is never worse than either.

Builders are pure functions from the DataFrames of :mod:`zoedu.experiments.privacy` to
plotly figures. :class:`MeanEstimationDashboard` wires an ``n_pub`` and an ``ε`` slider to
two panels (MSE against n_pub at the chosen ε, MSE against ε at the chosen n_pub):
formula curves as lines, Monte Carlo estimates as markers. :class:`PrivacyUtilityDashboard`
picks ε and the metric for the privacy–utility curves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import apply_theme, method_color, method_label, require_columns
from .common import Dashboard as _Dashboard

MEAN_METHODS = ("throw_away", "treat_as_private", "semi_dp")
"""The mean estimators of the paper's Section 3, in the order they are drawn."""

_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
BUDGET_COLOR = "#4D4D4D"  # a limit line: no accountant's or method's colour


def _methods_in(df: pd.DataFrame, column: str = "method") -> list[str]:
    present = list(dict.fromkeys(df[column].tolist()))
    ordered = [m for m in MEAN_METHODS if m in present]
    return ordered + [m for m in present if m not in ordered]


def _nearest(values: Sequence[float], target: float) -> float:
    values = np.asarray(sorted(set(float(v) for v in values)))
    return float(values[np.argmin(np.abs(values - float(target)))])


def _fmt(value: float) -> str:
    return f"{value:g}"


# --------------------------------------------------------------------------- mean estimation
def _mse_traces(df: pd.DataFrame, x: str, *, mse: str, monte_carlo: str | None,
                showlegend: bool) -> list[go.Scatter]:
    traces = []
    for method in _methods_in(df):
        part = df[df["method"] == method].sort_values(x)
        colour = method_color(method)
        traces.append(go.Scatter(
            x=part[x].to_numpy(float), y=part[mse].to_numpy(float), mode="lines",
            name=f"{method_label(method)} (formula)", legendgroup=method,
            line=dict(color=colour, width=2.5), showlegend=showlegend,
            hovertemplate=f"{method_label(method)}<br>{x}=%{{x}}<br>MSE=%{{y:.3g}}<extra>formula</extra>"))
        if monte_carlo is not None and monte_carlo in part:  # always a trace, so slices align
            mc = part[part[monte_carlo].notna()]
            traces.append(go.Scatter(
                x=mc[x].to_numpy(float), y=mc[monte_carlo].to_numpy(float), mode="markers",
                name=f"{method_label(method)} (Monte Carlo)", legendgroup=method,
                marker=dict(color=colour, size=9, symbol="circle-open", line=dict(width=2)),
                showlegend=showlegend,
                hovertemplate=f"{method_label(method)}<br>{x}=%{{x}}<br>MSE=%{{y:.3g}}<extra>Monte Carlo</extra>"))
    return traces


def mean_mse_figure(curves: pd.DataFrame, *, x: str = "n_pub", mse: str = "mse",
                    monte_carlo: str | None = "mc_mse", log_x: bool = True,
                    title: str | None = None) -> go.Figure:
    """MSE of each mean estimator against ``x`` (``"n_pub"`` or ``"epsilon"``).

    ``curves`` has one row per (method, x) with the formula MSE in ``mse`` (a line per
    method, from :func:`zoedu.privacy.mean_mse`) and optionally a Monte Carlo estimate
    in ``monte_carlo`` (open markers). Every other column must be constant, so that the
    figure is one slice: select a single ε (or n_pub) before calling.
    """
    require_columns(curves, ["method", x, mse], "curves")
    if curves.empty:
        raise ValueError("curves is empty; it needs one row per (method, x)")
    fig = go.Figure(_mse_traces(curves, x, mse=mse, monte_carlo=monte_carlo, showlegend=True))
    fig.update_xaxes(title_text=_axis_title(x), type="log" if log_x else "linear")
    fig.update_yaxes(title_text="mean squared error", type="log")
    return apply_theme(fig, title=title or f"Mean estimation: MSE against {_axis_title(x)}", height=420)


def variance_figure(curves: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """MSE against V/R² for the worst-case and public-estimate weights and the baselines.

    ``curves`` is :func:`zoedu.experiments.privacy.variance_curves` output (one row per
    (ratio, estimator)): lines are ``mean_mse`` at the true V, open markers Monte Carlo.
    """
    require_columns(curves, ["estimator", "ratio", "mse", "mc_mse"], "curves")
    df = curves.assign(method=curves["estimator"])
    first = df.iloc[0]
    return mean_mse_figure(df, x="ratio", title=title or (
        f"MSE against V/R² (n_priv = {int(first['n_priv'])}, n_pub = {int(first['n_pub'])}, "
        f"d = {int(first['d'])}, ε = {first['epsilon']:g})"))


def _axis_title(column: str) -> str:
    return {"ratio": "data variance V / R²", "n_pub": "public examples n_pub", "epsilon": "privacy budget ε",
            "n_priv": "private examples n_priv", "public_fraction": "public fraction",
            "step": "step", "steps": "steps"}.get(column, column.replace("_", " "))


class MeanEstimationDashboard(_Dashboard):
    """Sliders for n_pub and ε over a grid of mean-estimation MSEs (formula and Monte Carlo).

    ``grid`` is a DataFrame with columns ``method``, ``n_pub``, ``epsilon``, ``mse`` and
    optionally ``mc_mse``, one row per (method, n_pub, ε) — the output of
    :func:`zoedu.experiments.privacy.mean_estimation_curves` over a grid. Rows with
    ``n_pub = 0`` are left out (the n_pub axis is logarithmic). The left panel
    shows MSE against n_pub at the ε slider's value; the right panel MSE against ε at the
    n_pub slider's value; a dotted vertical line marks the other slider's position.

    Handlers are plain methods: set ``dash.n_pub.value`` or ``dash.epsilon.value`` and
    ``dash.figure`` (a ``go.Figure``, shown in ``dash.view``) is redrawn; ``dash.widget`` is the container.
    """

    def __init__(self, grid: pd.DataFrame, *, mse: str = "mse", monte_carlo: str | None = "mc_mse",
                 n_pub: float | None = None, epsilon: float | None = None):
        import ipywidgets as widgets

        require_columns(grid, ["method", "n_pub", "epsilon", mse], "grid")
        if grid.empty:
            raise ValueError("grid is empty; it needs rows for every (method, n_pub, epsilon)")
        self.grid = grid[grid["n_pub"].astype(float) > 0].copy()
        if self.grid.empty:
            raise ValueError("grid has no rows with n_pub > 0")
        self.mse = mse
        self.monte_carlo = monte_carlo if monte_carlo in grid else None
        n_values = sorted(set(self.grid["n_pub"].astype(float)))
        e_values = sorted(set(self.grid["epsilon"].astype(float)))
        n0 = _nearest(n_values, n_pub if n_pub is not None else n_values[len(n_values) // 2])
        e0 = _nearest(e_values, epsilon if epsilon is not None else e_values[len(e_values) // 2])
        self.n_pub = widgets.SelectionSlider(options=[(_fmt(v), v) for v in n_values], value=n0,
                                             description="n_pub", continuous_update=False)
        self.epsilon = widgets.SelectionSlider(options=[(_fmt(v), v) for v in e_values], value=e0,
                                               description="ε", continuous_update=False)
        self.figure = self._build(n0, e0)
        self.n_pub.observe(self._on_change, names="value")
        self.epsilon.observe(self._on_change, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.n_pub, self.epsilon]), self.view])

    def _slices(self, n_pub: float, epsilon: float) -> tuple[pd.DataFrame, pd.DataFrame]:
        g = self.grid
        by_n = g[np.isclose(g["epsilon"].astype(float), epsilon)]
        by_e = g[np.isclose(g["n_pub"].astype(float), n_pub)]
        return by_n, by_e

    def _build(self, n_pub: float, epsilon: float) -> go.Figure:
        by_n, by_e = self._slices(n_pub, epsilon)
        fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                            subplot_titles=(f"against n_pub at ε = {_fmt(epsilon)}",
                                            f"against ε at n_pub = {_fmt(n_pub)}"))
        for t in _mse_traces(by_n, "n_pub", mse=self.mse, monte_carlo=self.monte_carlo, showlegend=True):
            fig.add_trace(t, row=1, col=1)
        for t in _mse_traces(by_e, "epsilon", mse=self.mse, monte_carlo=self.monte_carlo, showlegend=False):
            fig.add_trace(t, row=1, col=2)
        fig.add_vline(x=n_pub, line=dict(color="#444", dash="dot", width=1), row=1, col=1)
        fig.add_vline(x=epsilon, line=dict(color="#444", dash="dot", width=1), row=1, col=2)
        fig.update_xaxes(type="log", title_text=_axis_title("n_pub"), row=1, col=1)
        fig.update_xaxes(type="log", title_text=_axis_title("epsilon"), row=1, col=2)
        fig.update_yaxes(type="log", title_text="mean squared error", row=1, col=1)
        fig.update_yaxes(type="log", row=1, col=2)
        fig.update_layout(legend=dict(orientation="h", y=-0.2))
        return apply_theme(fig, title="Mean estimation with public data: lines = formula, "
                                      "markers = Monte Carlo", height=480)

    def _on_change(self, change=None) -> None:
        self.update(self.n_pub.value, self.epsilon.value)

    def update(self, n_pub: float, epsilon: float) -> None:
        """Redraw both panels for the slice at ``n_pub`` and ``epsilon``."""
        self._replace(self._build(float(n_pub), float(epsilon)))


def mean_estimation_dashboard(grid: pd.DataFrame, **options):
    """The :class:`MeanEstimationDashboard` (it displays as its widget) for ``grid`` (see the class)."""
    return MeanEstimationDashboard(grid, **options)


# --------------------------------------------------------------------------- privacy–utility
UTILITY_METRICS = {"test_loss": "test loss", "test_accuracy": "test accuracy",
                   "loss": "loss", "accuracy": "accuracy"}


def privacy_utility_figure(sweep: pd.DataFrame, *, metric: str = "test_loss",
                           x: str = "public_fraction", epsilon: float | None = None,
                           error: str | None = None, title: str | None = None) -> go.Figure:
    """Test loss (or accuracy) of each method against the public fraction.

    ``sweep`` has one row per (method, public_fraction, epsilon) — the output of
    :func:`zoedu.experiments.privacy.privacy_utility_sweep`. With ``epsilon`` given only
    that privacy level is drawn; otherwise one line style per ε (solid for the smallest).
    ``error`` names an optional column of standard errors drawn as error bars.
    """
    require_columns(sweep, ["method", x, metric], "sweep")
    data = sweep
    if epsilon is not None:
        require_columns(sweep, ["epsilon"], "sweep")
        epsilon = _nearest(sweep["epsilon"], epsilon)
        data = sweep[np.isclose(sweep["epsilon"].astype(float), epsilon)]
    if data.empty:
        raise ValueError("sweep has no rows to draw")
    eps_values = sorted(set(data["epsilon"].astype(float))) if "epsilon" in data else [None]
    fig = go.Figure()
    for method in _methods_in(data):
        for i, eps in enumerate(eps_values):
            part = data[data["method"] == method]
            if eps is not None:
                part = part[np.isclose(part["epsilon"].astype(float), eps)]
            if part.empty:
                continue
            part = part.groupby(x, as_index=False).mean(numeric_only=True).sort_values(x)
            label = method_label(method) + (f", ε = {_fmt(eps)}" if len(eps_values) > 1 else "")
            err = dict(type="data", array=part[error].to_numpy(float)) if error and error in part else None
            fig.add_trace(go.Scatter(
                x=part[x].to_numpy(float), y=part[metric].to_numpy(float), mode="lines+markers",
                name=label, legendgroup=method, error_y=err,
                line=dict(color=method_color(method), dash=_DASHES[i % len(_DASHES)]),
                hovertemplate=f"{label}<br>{x}=%{{x}}<br>{metric}=%{{y:.4g}}<extra></extra>"))
    ticks = sorted(set(data[x].astype(float)))
    fig.update_xaxes(title_text=_axis_title(x), type="log", tickvals=ticks,
                     ticktext=[f"{v:.0%}" if x == "public_fraction" else _fmt(v) for v in ticks])
    fig.update_yaxes(title_text=UTILITY_METRICS.get(metric, metric.replace("_", " ")))
    suffix = f" at ε = {_fmt(epsilon)}" if epsilon is not None else ""
    return apply_theme(fig, title=title or f"Privacy–utility: {UTILITY_METRICS.get(metric, metric)} "
                                            f"against the public fraction{suffix}", height=420)


class PrivacyUtilityDashboard(_Dashboard):
    """An ε slider and a metric toggle over a privacy–utility sweep.

    Set ``dash.epsilon.value`` or ``dash.metric.value``; ``dash.figure`` (a
    ``go.Figure``, shown in ``dash.view``) is redrawn with :func:`privacy_utility_figure`.
    """

    def __init__(self, sweep: pd.DataFrame, *, x: str = "public_fraction",
                 metrics: Sequence[str] | None = None, epsilon: float | None = None):
        import ipywidgets as widgets

        require_columns(sweep, ["method", x, "epsilon"], "sweep")
        metrics = [m for m in (metrics or UTILITY_METRICS) if m in sweep]
        if not metrics:
            raise ValueError(f"sweep has none of the metrics {list(UTILITY_METRICS)}; columns: {list(sweep.columns)}")
        self.sweep, self.x = sweep.copy(), x
        e_values = sorted(set(sweep["epsilon"].astype(float)))
        e0 = _nearest(e_values, epsilon if epsilon is not None else e_values[0])
        self.epsilon = widgets.SelectionSlider(options=[(_fmt(v), v) for v in e_values], value=e0,
                                               description="ε", continuous_update=False)
        self.metric = widgets.ToggleButtons(options=[(UTILITY_METRICS.get(m, m), m) for m in metrics],
                                            value=metrics[0], description="metric")
        self.figure = self._build()
        self.epsilon.observe(self._on_change, names="value")
        self.metric.observe(self._on_change, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.epsilon, self.metric]), self.view])

    def _build(self) -> go.Figure:
        return privacy_utility_figure(self.sweep, metric=self.metric.value, x=self.x,
                                      epsilon=self.epsilon.value)

    def _on_change(self, change=None) -> None:
        self._replace(self._build())


def privacy_utility_dashboard(sweep: pd.DataFrame, **options):
    """The :class:`PrivacyUtilityDashboard` (it displays as its widget) for ``sweep`` (see the class)."""
    return PrivacyUtilityDashboard(sweep, **options)


# --------------------------------------------------------------------------- accounting
def epsilon_figure(curve: pd.DataFrame, *, x: str = "step", y: str = "epsilon",
                   group: str | Sequence[str] | None = None, target: float | None = None,
                   title: str | None = None) -> go.Figure:
    """ε spent against steps, from the accountant (RDP or PRV through Opacus).

    ``curve`` has columns ``x`` and ``y`` — e.g. :func:`zoedu.experiments.privacy.epsilon_curve`
    or a semi-DP History. ``group`` names one or more columns (e.g.
    ``["noise_multiplier", "accountant"]``): one line per combination, the colour following
    the first column and the dash the second. ``target`` draws a horizontal budget line.
    """
    groups = [group] if isinstance(group, str) else list(group or [])
    require_columns(curve, [x, y, *groups], "curve")
    if curve.empty:
        raise ValueError("curve is empty")
    fig = go.Figure()
    keys = list(dict.fromkeys(map(tuple, curve[groups].itertuples(index=False)))) if groups else [()]
    firsts = list(dict.fromkeys(k[0] for k in keys)) if groups else []
    seconds = list(dict.fromkeys(k[1] for k in keys)) if len(groups) > 1 else []
    palette = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
    for key in keys:
        part = curve
        for col, value in zip(groups, key):
            part = part[part[col] == value]
        part = part.sort_values(x)
        name = ", ".join(f"{_short(col)} = {v if isinstance(v, str) else _fmt(v)}" for col, v in zip(groups, key)) or y
        colour = palette[firsts.index(key[0]) % len(palette)] if groups else palette[0]
        dash = _DASHES[seconds.index(key[1]) % len(_DASHES)] if seconds else "solid"
        fig.add_trace(go.Scatter(x=part[x].to_numpy(float), y=part[y].to_numpy(float), mode="lines",
                                 name=name, line=dict(width=2.5, color=colour, dash=dash),
                                 hovertemplate=f"{name}<br>{x}=%{{x}}<br>ε=%{{y:.3g}}<extra></extra>"))
    if target is not None:
        # the budget is a limit, not a curve: thick, grey, dotted, labelled in its colour (a dashed
        # coloured line looked like an accountant's dashed curve)
        fig.add_hline(y=float(target), line=dict(color=BUDGET_COLOR, dash="dot", width=3),
                      annotation_text=f"budget ε = {_fmt(float(target))}", annotation_position="top left",
                      annotation_font_color=BUDGET_COLOR)
    fig.update_xaxes(title_text=_axis_title(x))
    fig.update_yaxes(title_text="ε spent", rangemode="tozero")
    return apply_theme(fig, title=title or "Privacy spent: ε against training steps", height=400)


def _short(column: str) -> str:
    return {"noise_multiplier": "σ", "accountant": "accountant", "sample_rate": "q"}.get(column, column)


__all__ = [
    "MEAN_METHODS",
    "MeanEstimationDashboard",
    "PrivacyUtilityDashboard",
    "epsilon_figure",
    "mean_estimation_dashboard",
    "mean_mse_figure",
    "privacy_utility_dashboard",
    "privacy_utility_figure",
    "variance_figure",
]
