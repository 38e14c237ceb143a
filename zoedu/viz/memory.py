"""Figures and dashboards for memory footprints (notebooks 00, 02, 03).

Pure figure builders:

- :func:`footprint_bars` — one stacked bar per method: parameters, gradients, optimizer
  state, activations, other (the fields of :class:`zoedu.memory.Footprint`);
- :func:`gpu_capacity_figure` — estimated totals for models from OPT-125m to 66b and
  Llama-2, per method, against the memory of 24, 40 and 80 GB GPUs;
- :func:`fits_table_figure` — the smallest of those GPUs each (model, method) fits on;
- :func:`estimate_vs_measure_figure` — the estimator against the measurement.

Dashboard: :class:`FootprintDashboard` — sliders for batch size and sequence length
that recompute the footprints and redraw the stacked bars.

The arithmetic behind the bars is the MeZO paper's (Malladi et al. 2023, §2 and Table
22: MeZO needs inference memory, first-order fine-tuning adds gradients, Adam adds two
moments) and Addax's (Li et al. 2025, §3: in-place SGD keeps no full gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..defaults import GPU_MEMORY_GB  # the one GPU list, shared with zoedu.experiments.memory
from .common import (
    MEMORY_CATEGORIES,
    MEMORY_COLORS,
    Dashboard,
    apply_theme,
    check_choice,
    format_bytes,
    method_color,
    method_label,
    require_columns,
)

_UNITS = {"B": 1, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "GB": 1e9}
_CATEGORY_LABELS = {"params": "parameters", "grads": "gradients", "optimizer": "optimizer state",
                    "activations": "activations", "other": "other"}


def footprints_frame(footprints) -> pd.DataFrame:
    """A DataFrame (one row per method, a column per category plus ``total``) from
    ``{method: Footprint}``, ``{method: {category: bytes}}`` or a DataFrame with ``method``."""
    if isinstance(footprints, pd.DataFrame):
        require_columns(footprints, ["method"], "footprints")
        df = footprints.copy()
    elif isinstance(footprints, Mapping):
        if not footprints:
            raise ValueError("footprints is empty; pass {method: Footprint}")
        rows = []
        for name, fp in footprints.items():
            if isinstance(fp, Mapping):
                row = dict(fp)
            elif hasattr(fp, "to_dict"):
                row = fp.to_dict()
            elif hasattr(fp, "_asdict"):
                row = fp._asdict()
            elif hasattr(fp, "__dataclass_fields__"):
                row = {k: getattr(fp, k) for k in fp.__dataclass_fields__}
            else:
                row = {k: getattr(fp, k) for k in (*MEMORY_CATEGORIES, "total") if hasattr(fp, k)}
            rows.append({"method": str(name), **row})
        df = pd.DataFrame(rows)
    else:
        raise ValueError(f"footprints must be a dict {{method: Footprint}} or a DataFrame, got {type(footprints).__name__}")
    present = [c for c in MEMORY_CATEGORIES if c in df.columns]
    if not present:
        raise ValueError(f"footprints has none of the categories {list(MEMORY_CATEGORIES)}; columns: {list(df.columns)}")
    for c in MEMORY_CATEGORIES:
        df[c] = pd.to_numeric(df[c], errors="coerce").fillna(0.0) if c in df.columns else 0.0
    if "total" not in df.columns:
        df["total"] = df[list(MEMORY_CATEGORIES)].sum(axis=1)
    return df


def footprint_bars(footprints, *, unit: str = "MiB", title: str | None = None, height: int = 420,
                   x: str = "method") -> go.Figure:
    """One stacked bar per row of ``footprints`` (categories bottom to top in
    :data:`zoedu.viz.common.MEMORY_CATEGORIES` order), the total written on top.

    Args:
        footprints: ``{method: Footprint}`` from :func:`zoedu.memory.measure` or
            :func:`zoedu.memory.estimate`, or a DataFrame with ``method`` and category columns.
        unit: ``"B"``, ``"KiB"``, ``"MiB"``, ``"GiB"`` or ``"GB"``.
        x: the column naming each bar (``"method"``, or e.g. ``"label"``).
    """
    check_choice(unit, _UNITS, "unit")
    df = footprints_frame(footprints)
    require_columns(df, [x], "footprints")
    scale = _UNITS[unit]
    names = [str(v) for v in df[x]]
    labels = [method_label(n) for n in names]
    fig = go.Figure()
    for cat in MEMORY_CATEGORIES:
        vals = df[cat].to_numpy(dtype=float) / scale
        if not np.any(vals > 0):
            continue
        fig.add_trace(go.Bar(x=labels, y=vals, name=_CATEGORY_LABELS[cat], marker_color=MEMORY_COLORS[cat],
                             hovertemplate=f"%{{x}}<br>{_CATEGORY_LABELS[cat]}: %{{y:.3g}} {unit}<extra></extra>"))
    totals = df["total"].to_numpy(dtype=float)
    fig.add_trace(go.Scatter(x=labels, y=totals / scale, mode="text", text=[format_bytes(t) for t in totals],
                             textposition="top center", showlegend=False, hoverinfo="skip"))
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text=f"memory ({unit})", rangemode="tozero")
    fig.update_yaxes(range=[0, 1.15 * float(np.nanmax(totals)) / scale] if np.nanmax(totals) > 0 else None)
    return apply_theme(fig, title=title or "Where the memory goes", height=height)


def gpu_capacity_figure(estimates: pd.DataFrame, *, gpus: Mapping[str, float] | None = None,
                        title: str | None = None, height: int = 480) -> go.Figure:
    """Estimated total memory per model (x, in the order given) and method (colour),
    on a log axis, with a dashed line at each GPU's capacity.

    ``estimates`` has columns ``model``, ``method`` and ``total`` (bytes), e.g. from
    :func:`zoedu.experiments.memory` or :func:`zoedu.memory.estimate` over a list of models.
    """
    require_columns(estimates, ["model", "method", "total"], "estimates")
    gpus = dict(GPU_MEMORY_GB if gpus is None else gpus)
    models = list(dict.fromkeys(estimates["model"].astype(str)))
    short = [m.split("/")[-1] for m in models]
    fig = go.Figure()
    for i, (method, part) in enumerate(estimates.groupby("method", sort=False)):
        part = part.set_index(part["model"].astype(str)).reindex(models)
        fig.add_trace(go.Bar(x=short, y=part["total"].to_numpy(dtype=float) / 1e9, name=method_label(method),
                             marker_color=method_color(method, i),
                             hovertemplate=f"{method_label(method)}<br>%{{x}}: %{{y:.3g}} GB<extra></extra>"))
    for name, gb in gpus.items():
        if not gb > 0:
            raise ValueError(f"gpus[{name!r}]={gb!r} must be a positive number of GB")
        # on a log axis plotly.js places shapes at data values but annotations at log10 values
        fig.add_shape(type="line", xref="paper", x0=0, x1=1, yref="y", y0=gb, y1=gb,
                      line=dict(color="black", dash="dash", width=1))
        fig.add_annotation(xref="paper", x=0.0, xanchor="left", yref="y", y=np.log10(gb), yanchor="bottom",
                           text=name, showarrow=False, font=dict(size=11))
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=-0.2))
    fig.update_yaxes(type="log", title_text="estimated memory (GB, log scale)")
    fig.update_xaxes(title_text="model")
    return apply_theme(fig, title=title or "What fits where: estimated memory against GPU capacity", height=height)


def smallest_gpu(total_bytes: float, gpus: Mapping[str, float] | None = None) -> str:
    """The name of the smallest GPU in ``gpus`` with at least ``total_bytes``; ``"none"`` if none."""
    gpus = dict(GPU_MEMORY_GB if gpus is None else gpus)
    for name, gb in sorted(gpus.items(), key=lambda kv: kv[1]):
        if total_bytes <= gb * 1e9:
            return name
    return "none"


def fits_table_figure(estimates: pd.DataFrame, *, gpus: Mapping[str, float] | None = None,
                      title: str | None = None, height: int = 380) -> go.Figure:
    """A model × method grid coloured by the smallest GPU that holds the estimate."""
    require_columns(estimates, ["model", "method", "total"], "estimates")
    gpus = dict(GPU_MEMORY_GB if gpus is None else gpus)
    ordered = sorted(gpus.items(), key=lambda kv: kv[1])
    rank = {name: i for i, (name, _) in enumerate(ordered)}
    rank["none"] = len(ordered)
    models = list(dict.fromkeys(estimates["model"].astype(str)))
    methods = list(dict.fromkeys(estimates["method"].astype(str)))
    z = np.full((len(methods), len(models)), np.nan)
    text = [["" for _ in models] for _ in methods]
    for _, r in estimates.iterrows():
        i, j = methods.index(str(r["method"])), models.index(str(r["model"]))
        where = smallest_gpu(float(r["total"]), gpus)
        z[i, j] = rank[where]
        text[i][j] = f"{float(r['total']) / 1e9:.3g} GB<br>{where.split(' (')[0] if where != 'none' else 'does not fit'}"
    colors = ["#1a9850", "#91cf60", "#fee08b", "#d73027", "#7f0000"]
    n = len(ordered) + 1
    scale = []
    for k in range(n):
        c = colors[min(k, len(colors) - 2)] if k < n - 1 else colors[3]
        scale += [[k / n, c], [(k + 1) / n, c]]
    fig = go.Figure(go.Heatmap(z=z, x=[m.split("/")[-1] for m in models], y=[method_label(m) for m in methods], text=text,
                               texttemplate="%{text}", colorscale=scale, zmin=0, zmax=n, showscale=False,
                               hoverinfo="text", xgap=2, ygap=2))
    fig.update_yaxes(autorange="reversed")
    return apply_theme(fig, title=title or "Smallest GPU that holds each method (green: 24 GB … red: none)",
                       height=height)


def estimate_vs_measure_figure(data: pd.DataFrame, *, unit: str = "MiB", title: str | None = None,
                               height: int = 420) -> go.Figure:
    """Estimated against measured totals, one marker per row (method), with the ``y = x`` line.

    ``data`` has ``method``, ``estimated`` and ``measured`` (bytes).
    """
    check_choice(unit, _UNITS, "unit")
    require_columns(data, ["method", "estimated", "measured"], "data")
    s = _UNITS[unit]
    est, meas = data["estimated"].to_numpy(float) / s, data["measured"].to_numpy(float) / s
    hi = float(np.nanmax(np.r_[est, meas])) * 1.1
    fig = go.Figure(go.Scatter(x=[0, hi], y=[0, hi], mode="lines", name="estimate = measurement",
                               line=dict(color="gray", dash="dash")))
    # several methods land on almost the same point (SGD, IP-SGD, Addax): named in the
    # legend and on hover, not by text labels that would overlap
    symbols = ("circle", "diamond", "square", "triangle-up", "x", "star", "cross", "pentagon")
    for i, (m, e, v) in enumerate(zip(data["method"].astype(str), est, meas)):
        fig.add_trace(go.Scatter(x=[v], y=[e], mode="markers", name=method_label(m),
                                 marker=dict(size=12, color=method_color(m, i), symbol=symbols[i % len(symbols)],
                                             line=dict(width=1, color="white")),
                                 hovertemplate=f"{method_label(m)}<br>measured %{{x:.4g}} {unit}"
                                               f"<br>estimated %{{y:.4g}} {unit}<extra></extra>"))
    fig.update_xaxes(title_text=f"measured ({unit})", range=[0, hi])
    fig.update_yaxes(title_text=f"estimated ({unit})", range=[0, hi])
    return apply_theme(fig, title=title or "The estimator against the measurement", height=height)


class FootprintDashboard(Dashboard):
    """Sliders for batch size and sequence length; the stacked footprint bars follow.

    Args:
        compute: ``compute(batch_size, seq_len) -> {method: Footprint}`` or a DataFrame
            (e.g. a call to :func:`zoedu.memory.estimate` or ``measure`` per method).
        batch_sizes, seq_lens: the slider positions.
    """

    def __init__(self, compute: Callable[[int, int], object], *, batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32),
                 seq_lens: Sequence[int] = (16, 32, 64, 128, 256, 512), batch_size: int | None = None,
                 seq_len: int | None = None, unit: str = "MiB"):
        import ipywidgets as w

        check_choice(unit, _UNITS, "unit")
        if not batch_sizes or not seq_lens:
            raise ValueError("batch_sizes and seq_lens must each hold at least one value")
        self.compute, self.unit = compute, unit
        bs = list(batch_sizes)
        sl = list(seq_lens)
        self.controls = {
            "batch_size": w.SelectionSlider(options=bs, value=check_choice(batch_size or bs[len(bs) // 2], bs, "batch_size"),
                                            description="batch size", continuous_update=False),
            "seq_len": w.SelectionSlider(options=sl, value=check_choice(seq_len or sl[len(sl) // 2], sl, "seq_len"),
                                         description="sequence length", continuous_update=False),
        }
        self.figure = self.build()
        self._observe()

    def build(self) -> go.Figure:
        b, s = int(self.controls["batch_size"].value), int(self.controls["seq_len"].value)
        self.data = footprints_frame(self.compute(b, s))
        return footprint_bars(self.data, unit=self.unit, title=f"Memory at batch size {b}, sequence length {s}")

    def update(self) -> None:
        self._replace(self.build())


__all__ = ["GPU_MEMORY_GB", "footprints_frame", "footprint_bars", "gpu_capacity_figure", "smallest_gpu",
           "fits_table_figure", "estimate_vs_measure_figure", "FootprintDashboard"]
