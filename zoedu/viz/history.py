"""Training curves from Histories: loss against step and against wall seconds."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import apply_theme, method_color, method_label


def loss_curves(histories: dict[str, pd.DataFrame], *, column: str = "loss", smooth: int = 1,
                title: str | None = None) -> go.Figure:
    """Two panels, ``column`` against step (left) and against wall seconds (right), one line per method.

    ``smooth`` > 1 averages the curve over a trailing window of that many steps.
    """
    if not histories:
        raise ValueError("histories must hold at least one History")
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=("against steps", "against wall seconds"))
    for name, h in histories.items():
        if column not in h:
            raise ValueError(f"column={column!r} is not in the History of {name!r}; columns: {list(h.columns)}")
        y = h[column].rolling(max(1, smooth), min_periods=1).mean()
        style = dict(name=method_label(name), line=dict(color=method_color(name)), legendgroup=name)
        fig.add_trace(go.Scatter(x=h["step"], y=y, mode="lines", **style), row=1, col=1)
        fig.add_trace(go.Scatter(x=h["seconds"], y=y, mode="lines", showlegend=False, **style), row=1, col=2)
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="seconds", row=1, col=2)
    fig.update_yaxes(title_text=column.replace("_", " "), row=1, col=1)
    fig.update_layout(title=title or f"{column.replace('_', ' ')} during training")
    return apply_theme(fig)
