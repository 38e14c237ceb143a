"""Figures for multi-process runs: what each method sends per step, and 1 vs N processes."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .common import apply_theme, format_bytes, method_color, method_label, require_columns


def communication_figure(data: pd.DataFrame, *, y: str = "wire_bytes", title: str | None = None,
                         height: int = 420) -> go.Figure:
    """Bytes per rank per step against the parameter count (log–log), one line per (method,
    parallel), from :func:`zoedu.experiments.distributed.communication_per_step`."""
    require_columns(data, ["model", "parameters", "method", "parallel", y])
    if y not in ("wire_bytes", "payload_bytes"):
        raise ValueError(f"y={y!r} is unknown; allowed: 'wire_bytes', 'payload_bytes'")
    fig = go.Figure()
    for k, ((method, parallel), part) in enumerate(data.groupby(["method", "parallel"], sort=False)):
        part = part.sort_values("parameters")
        name = f"{method_label(method)} ({parallel})"
        fig.add_trace(go.Scatter(
            x=part["parameters"], y=part[y], mode="lines+markers", name=name,
            line=dict(color=method_color(method, k), dash="dot" if parallel == "directions" else "solid"),
            text=[f"{m}: {format_bytes(b)}" for m, b in zip(part["model"], part[y])],
            hovertemplate="%{text}<extra>" + name + "</extra>"))
    fig.update_xaxes(type="log", title="parameters")
    fig.update_yaxes(type="log", title="bytes per rank per step" + (" (on the wire)" if y == "wire_bytes" else ""))
    return apply_theme(fig, title=title or "Communication per step: zeroth-order scalars vs the gradient",
                       height=height)


def processes_figure(histories: dict[str, pd.DataFrame], *, title: str | None = None,
                     height: int = 360) -> go.Figure:
    """Loss against step of the same run on 1 and on N processes (``{label: History}``)."""
    fig = go.Figure()
    dashes = ("solid", "dash", "dot", "dashdot")
    for k, (label, h) in enumerate(histories.items()):
        require_columns(h, ["step", "loss"], f"histories[{label!r}]")
        fig.add_trace(go.Scatter(x=h["step"], y=h["loss"], mode="lines+markers", name=label,
                                 line=dict(dash=dashes[k % len(dashes)], width=3 - k * 0.8)))
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="training loss (whole batch)")
    return apply_theme(fig, title=title or "The same run on one process and on two", height=height)


__all__ = ["communication_figure", "processes_figure"]
