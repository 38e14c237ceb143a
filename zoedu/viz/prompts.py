"""The prompt ablation (MeZO paper, Table 5): validation accuracy against step per variant."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .common import apply_theme

#: One colour per variant of :data:`zoedu.experiments.prompts.DEFAULT_VARIANTS` (others cycle).
VARIANT_COLORS = ("#D55E00", "#7F7F7F", "#0072B2", "#009E73", "#CC79A7", "#E69F00")


def ablation_figure(curves: pd.DataFrame, *, chance: float | None = 0.5, title: str | None = None,
                    height: int = 420) -> go.Figure:
    """Accuracy against step, one line per variant, from ``prompt_ablation``'s ``curves``.

    Step 0 is each variant's untrained model: the prompt head's zero-shot accuracy, the
    linear head's chance. A dotted line marks chance.
    """
    missing = {"variant", "step", "eval_accuracy"} - set(curves.columns)
    if missing:
        raise ValueError(f"curves lacks the columns {sorted(missing)}; pass prompt_ablation(...)[0]")
    fig = go.Figure()
    for k, (variant, part) in enumerate(curves.groupby("variant", sort=False)):
        fig.add_trace(go.Scatter(x=part["step"], y=part["eval_accuracy"], mode="lines+markers", name=variant,
                                 line={"color": VARIANT_COLORS[k % len(VARIANT_COLORS)], "width": 2.5}))
    if chance is not None:
        fig.add_hline(y=chance, line={"dash": "dot", "color": "#555"}, annotation_text="chance",
                      annotation_position="bottom right")
    fig.update_layout(title=title or "The same MeZO budget with a prompt and without", height=height,
                      xaxis_title="step", yaxis_title="validation accuracy", legend={"orientation": "h", "y": -0.2})
    return apply_theme(fig)


__all__ = ["VARIANT_COLORS", "ablation_figure"]
