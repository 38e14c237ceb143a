"""Figures and dashboards for zeroth-order optimisation, convergence and Addax (notebooks 00, 01, 03).

Pure figure builders (data in, ``go.Figure`` out):

- :func:`convergence_figure` — loss (or any History column) against steps and against seconds,
  one colour per method;
- :func:`spsa_figure` — a 2-D objective's contours, the true gradient and the SPSA
  estimate (MeZO, Malladi et al. 2023, Eq. 1 / Definition 1) with one faint arrow per
  random direction;
- :func:`variance_figure` — measured ``E‖ĝ‖² / ‖∇L‖²`` against the dimension next to
  MeZO's Lemma 2 law ``(d + n − 1) / n``;
- :func:`length_histogram` — the task's token lengths, split by Addax's threshold
  ``L_T`` into the first-order (``≤ L_T``) and zeroth-order (``> L_T``) parts
  (Li et al., ICLR 2025, Algorithm 1);
- :func:`alpha_figure` — Addax's convergence for several mixing weights ``α`` (Algorithm 1's update);
- :func:`replay_figure` — a training run's loss next to its replay from the trajectory log.

Dashboards (ipywidgets controls redrawing a ``go.Figure`` in an Output; handlers are plain
methods, so tests drive them by setting ``control.value``): :class:`SPSADashboard`,
:class:`VarianceDashboard`, :class:`LengthThresholdDashboard`, :class:`AlphaDashboard`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..checks import number
from .common import (
    Dashboard as _Dashboard,
    MEMORY_COLORS,
    apply_theme,
    check_choice,
    format_bytes,
    hline,
    method_color,
    method_label,
    require_columns,
)

FIRST_ORDER_COLOR = "#009E73"   # short examples: in-place first-order gradients
ZEROTH_ORDER_COLOR = "#D55E00"  # long examples: zeroth-order (SPSA) estimates
ALPHA_COLORS = ("#332288", "#117733", "#AA3377", "#CC6600", "#0077BB", "#882255")  # dark enough on white
ALPHA_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


# --------------------------------------------------------------------------- helpers
def _as_histories(histories) -> dict[str, pd.DataFrame]:
    """``{name: History}`` from a dict, a single History, or a long DataFrame with ``method``."""
    if isinstance(histories, pd.DataFrame):
        if "method" in histories.columns:
            return {str(m): h.reset_index(drop=True) for m, h in histories.groupby("method", sort=False)}
        return {str(histories.attrs.get("method", "run")): histories}
    if isinstance(histories, Mapping):
        out = {}
        for name, h in histories.items():
            if not isinstance(h, pd.DataFrame):
                raise ValueError(f"histories[{name!r}] must be a History (pandas DataFrame), got {type(h).__name__}")
            out[str(name)] = h
        if not out:
            raise ValueError("histories is empty; pass {method: History} from zoedu.train.fit")
        return out
    raise ValueError(f"histories must be a dict {{method: History}} or a DataFrame, got {type(histories).__name__}")


def smooth(values, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (NaNs ignored); ``window=1`` is the identity."""
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window={window!r} must be a positive integer")
    s = pd.Series(np.asarray(values, dtype=float))
    return s.rolling(int(window), min_periods=1).mean().to_numpy()


_AXIS_TITLES = {"step": "step", "seconds": "wall seconds", "forward_passes": "forward passes",
                "loss": "training loss", "eval_loss": "validation loss",
                "eval_accuracy": "validation accuracy", "train_accuracy": "batch accuracy (training)"}


# --------------------------------------------------------------------------- convergence
def convergence_figure(histories, *, x: str | Sequence[str] = ("step", "seconds"), y: str = "loss",
                window: int = 1, log_y: bool = False, title: str | None = None,
                reference: dict[str, float] | None = None, start: float | None = None,
                height: int = 380) -> go.Figure:
    """``y`` against each of ``x`` (side-by-side panels), one coloured line per method.

    Args:
        histories: ``{method: History}`` (from :func:`zoedu.train.fit` or
            :func:`zoedu.experiments.compare.compare`), or a long DataFrame with ``method``.
        x: one column or several (``"step"``, ``"seconds"``, ``"forward_passes"``): one panel each.
        y: the History column to plot; rows where it is NaN are skipped (so
            ``"eval_accuracy"`` shows the eval steps only).
        window: trailing moving-average window applied to ``y`` (noisy zeroth-order losses).
        log_y: logarithmic y axis.
        reference: ``{label: value}`` drawn as labelled dotted horizontal lines in every panel
            (e.g. ``{"zero-shot": 0.685}`` under a validation-accuracy curve).
        start: the value of ``y`` before the first step, shared by every run (e.g. the
            zero-shot accuracy all methods start from): each line then begins there, at 0 on
            every x axis, so that an evaluated-every-50-steps curve shows where it came from.
    """
    runs = _as_histories(histories)
    xs = [x] if isinstance(x, str) else list(x)
    for label, value in (reference or {}).items():
        number(f"reference[{label!r}]", value)
    if start is not None:
        number("start", start)
    if not xs:
        raise ValueError("x must name at least one column, e.g. 'step' or 'seconds'")
    for name, h in runs.items():
        require_columns(h, [*xs, y], f"histories[{name!r}]")
    fig = make_subplots(rows=1, cols=len(xs), shared_yaxes=True, horizontal_spacing=0.06)
    for i, (name, h) in enumerate(runs.items()):
        h = h.dropna(subset=[y])
        if start is not None:  # the shared starting point, at 0 steps / seconds / passes
            h = pd.concat([pd.DataFrame([{**{c: 0 for c in xs}, y: float(start)}]), h[[*xs, y]]], ignore_index=True)
        yy = smooth(h[y], window) if window > 1 else h[y].to_numpy(dtype=float)
        for j, col in enumerate(xs, start=1):
            fig.add_trace(go.Scatter(
                x=h[col].to_numpy(), y=yy, mode="lines+markers" if len(h) < 30 else "lines",
                name=method_label(name), legendgroup=name, showlegend=(j == 1),
                line=dict(color=method_color(name, i), width=2), marker=dict(size=5),
                hovertemplate=f"{method_label(name)}<br>{col}=%{{x:.4g}}<br>{y}=%{{y:.4g}}<extra></extra>",
            ), row=1, col=j)
            fig.update_xaxes(title_text=_AXIS_TITLES.get(col, col), row=1, col=j)
    fig.update_yaxes(title_text=_AXIS_TITLES.get(y, y), row=1, col=1)
    for label, value in (reference or {}).items():
        for j in range(1, len(xs) + 1):  # labelled in the last panel only
            hline(fig, value, dict(color="#555", width=1.5, dash="dot"), row=1, col=j,
                  label=f"{label} {float(value):.3g}" if j == len(xs) else None, position="bottom right")
    if log_y:
        fig.update_yaxes(type="log")
    default = f"{_AXIS_TITLES.get(y, y)} against " + " and ".join(_AXIS_TITLES.get(c, c) for c in xs)
    return apply_theme(fig, title=title or default, height=height)


def final_metrics_bar(table: pd.DataFrame, *, metric: str = "eval_accuracy", method_col: str = "method",
                      title: str | None = None) -> go.Figure:
    """One bar per method of a summary table's ``metric`` (e.g. from ``compare``'s table)."""
    require_columns(table, [method_col, metric], "table")
    names = [str(m) for m in table[method_col]]
    fig = go.Figure(go.Bar(
        x=[method_label(m) for m in names], y=table[metric].to_numpy(dtype=float),
        marker_color=[method_color(m, i) for i, m in enumerate(names)],
        text=[f"{v:.3g}" for v in table[metric]], textposition="outside",
    ))
    fig.update_yaxes(title_text=_AXIS_TITLES.get(metric, metric))
    return apply_theme(fig, title=title or _AXIS_TITLES.get(metric, metric), height=340)


# --------------------------------------------------------------------------- SPSA in 2-D
def _arrow(x0, g, scale, **kwargs) -> go.Scatter:
    """A line from ``x0`` to ``x0 + scale * g`` with an arrowhead pointing along it."""
    end = np.asarray(x0, float) + scale * np.asarray(g, float)
    return go.Scatter(x=[x0[0], end[0]], y=[x0[1], end[1]], mode="lines+markers",
                      marker=dict(symbol=["circle", "arrow"], size=[4, 14], angleref="previous"),
                      **kwargs)


def spsa_figure(grid_x, grid_y, values, point, true_grad, estimate, directions=None,
                direction_estimates=None, *, scale: float | None = None, title: str | None = None,
                height: int = 520) -> go.Figure:
    """Contours of a 2-D objective, its true gradient at ``point`` and the SPSA estimate.

    The estimate is MeZO's (Malladi et al. 2023, Eq. 1, averaged over ``n`` directions):
    ``ĝ = (1/n) Σ_i [(L(θ + εz_i) − L(θ − εz_i)) / 2ε] z_i``. Each term of that sum (if
    ``direction_estimates`` is given) is drawn as a faint arrow: each lies along its own
    random direction ``z_i``; only their average points near the gradient.

    Args:
        grid_x, grid_y: 1-D coordinates of the contour grid.
        values: the objective on the grid, shape ``(len(grid_y), len(grid_x))``.
        point: ``(2,)`` where the gradient is taken.
        true_grad, estimate: ``(2,)`` vectors.
        directions: optional ``(n, 2)`` random directions ``z_i`` (drawn as dotted lines).
        direction_estimates: optional ``(n, 2)`` per-direction estimates.
        scale: arrow length multiplier (default: fits the true gradient into a quarter of the grid).
    """
    gx, gy = np.asarray(grid_x, float), np.asarray(grid_y, float)
    z = np.asarray(values, float)
    if z.shape != (gy.size, gx.size):
        raise ValueError(f"values has shape {z.shape}; expected (len(grid_y), len(grid_x)) = {(gy.size, gx.size)}")
    p, g, ghat = (np.asarray(v, float).reshape(-1) for v in (point, true_grad, estimate))
    for name, v in (("point", p), ("true_grad", g), ("estimate", ghat)):
        if v.shape != (2,):
            raise ValueError(f"{name} must have 2 coordinates, got shape {v.shape}")
    if scale is None:
        span = min(np.ptp(gx), np.ptp(gy))
        scale = 0.25 * span / max(np.linalg.norm(g), 1e-12)
    fig = go.Figure()
    fig.add_trace(go.Contour(x=gx, y=gy, z=z, colorscale="Blues", reversescale=True, ncontours=25,
                             showscale=False, contours=dict(showlines=True), opacity=0.75,
                             name="objective", hoverinfo="skip"))
    if direction_estimates is not None:
        de = np.asarray(direction_estimates, float).reshape(-1, 2)
        xs, ys = [], []
        for d in de:
            end = p + scale * d
            xs += [p[0], end[0], None]
            ys += [p[1], end[1], None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"one-direction estimates (n={len(de)})",
                                 line=dict(color=method_color("mezo"), width=1), opacity=0.35,
                                 hoverinfo="skip"))
    fig.add_trace(_arrow(p, g, scale, name="true gradient ∇L", line=dict(color="black", width=3)))
    fig.add_trace(_arrow(p, ghat, scale, name="SPSA estimate ĝ", line=dict(color=method_color("mezo"), width=3)))
    fig.update_xaxes(title_text="θ₁", range=[gx.min(), gx.max()], constrain="domain")
    fig.update_yaxes(title_text="θ₂", range=[gy.min(), gy.max()], scaleanchor="x", scaleratio=1, constrain="domain")
    cos = float(g @ ghat / max(np.linalg.norm(g) * np.linalg.norm(ghat), 1e-12))
    if np.linalg.norm(ghat) < 0.1 * np.linalg.norm(g):  # the arrow is too short to see: say so
        # the label points at θ from the side away from the gradient, so it covers no arrow
        fig.add_annotation(x=p[0], y=p[1], ax=-70 if g[0] > 0 else 70, ay=50 if g[1] > 0 else -50,
                           showarrow=True, arrowcolor=method_color("mezo"),
                           text=f"ĝ ≈ 0 (|ĝ| = {np.linalg.norm(ghat) / np.linalg.norm(g):.0%} of |∇L|):<br>"
                                "z is almost ⟂ ∇L", font=dict(color=method_color("mezo")),
                           bgcolor="rgba(255,255,255,0.8)")
    fig.update_layout(legend=dict(orientation="h", y=-0.15))
    return apply_theme(fig, title=title or f"SPSA estimate vs true gradient (cosine {cos:+.2f})", height=height)


def variance_figure(data: pd.DataFrame, *, title: str | None = None, height: int = 420) -> go.Figure:
    """Measured ``E‖ĝ‖² / ‖∇L‖²`` against the dimension ``d``, next to MeZO's Lemma 2.

    ``data`` has columns ``d``, ``n`` (directions), ``measured``, optionally ``stderr``
    (drawn as 95 % error bars) and ``theory`` (default ``(d + n − 1) / n``, Malladi et al.
    2023, Lemma 2); one colour per ``n``.
    Both axes are logarithmic: the law is a straight line of slope 1 once ``d ≫ n``.
    """
    require_columns(data, ["d", "n", "measured"], "data")
    fig = go.Figure()
    for i, (n, part) in enumerate(data.sort_values("d").groupby("n", sort=True)):
        color = method_color(f"n={n}", i + 1)
        theory = part["theory"] if "theory" in part else (part["d"] + n - 1) / n
        fig.add_trace(go.Scatter(x=part["d"], y=theory, mode="lines", name=f"(d+n−1)/n, n={n}",
                                 legendgroup=str(n), line=dict(color=color, dash="dash")))
        err = dict(type="data", array=1.96 * part["stderr"].to_numpy(float), visible=True) if "stderr" in part else None
        fig.add_trace(go.Scatter(x=part["d"], y=part["measured"], mode="markers", name=f"measured, n={n}",
                                 legendgroup=str(n), marker=dict(color=color, size=9), error_y=err))
    fig.update_xaxes(type="log", title_text="dimension d (number of parameters)")
    fig.update_yaxes(type="log", title_text="E‖ĝ‖² / ‖∇L‖²")
    return apply_theme(fig, title=title or "The SPSA estimate's second moment grows linearly with d",
                       height=height)


# --------------------------------------------------------------------------- Addax
def length_histogram(lengths, threshold: float, *, nbins: int = 60, memory: Mapping[str, float] | None = None,
                     title: str | None = None, height: int = 420) -> go.Figure:
    """Token lengths split by Addax's threshold ``L_T`` (Li et al. 2025, Algorithm 1).

    Examples with ``length ≤ L_T`` form the first-order set ``D¹`` (in-place SGD), the
    rest the zeroth-order set ``D⁰`` (SPSA). Two stacked histograms on shared bins;
    with ``memory`` (``{"first-order": bytes, "zeroth-order": bytes}``, e.g. from
    :func:`zoedu.memory.estimate` at each part's longest sequence) a second panel shows
    the memory each part needs.
    """
    lengths = np.asarray(lengths, dtype=float).reshape(-1)
    if lengths.size == 0:
        raise ValueError("lengths is empty; pass task.lengths('train')")
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold={threshold!r} must be a non-negative number of tokens")
    lo, hi = float(lengths.min()), float(lengths.max())
    size = max(1.0, np.ceil((hi - lo + 1) / nbins))
    bins = dict(start=lo - 0.5, end=hi + 0.5, size=size)
    short, long_ = lengths[lengths <= threshold], lengths[lengths > threshold]
    cols = 2 if memory else 1
    fig = make_subplots(rows=1, cols=cols, column_widths=[0.66, 0.34] if memory else None,
                        horizontal_spacing=0.12)
    fig.add_trace(go.Histogram(x=short, xbins=bins, autobinx=False, name=f"first-order (≤ L_T): {short.size}",
                               marker_color=FIRST_ORDER_COLOR), row=1, col=1)
    fig.add_trace(go.Histogram(x=long_, xbins=bins, autobinx=False, name=f"zeroth-order (> L_T): {long_.size}",
                               marker_color=ZEROTH_ORDER_COLOR), row=1, col=1)
    fig.add_vline(x=threshold, line=dict(color="black", dash="dash"), row=1, col=1)
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title_text="tokens per example", row=1, col=1)
    fig.update_yaxes(title_text="examples", row=1, col=1)
    if memory:
        names = list(memory)
        vals = np.array([float(memory[k]) for k in names]) / 2 ** 20
        colors = [FIRST_ORDER_COLOR if "first" in k else ZEROTH_ORDER_COLOR if "zeroth" in k
                  else MEMORY_COLORS["other"] for k in names]
        labels = [k.replace(" part", "").replace("-order", "-<br>order") for k in names]  # short, unrotated
        fig.add_trace(go.Bar(x=labels, y=vals, marker_color=colors, showlegend=False,
                             text=[format_bytes(float(memory[k])) for k in names], textposition="outside",
                             cliponaxis=False, hovertext=names, hoverinfo="text+y"),
                      row=1, col=2)
        fig.update_yaxes(title_text="memory (MiB)", range=[0, 1.2 * float(np.nanmax(vals))], row=1, col=2)
        fig.update_xaxes(tickangle=0, row=1, col=2)
        fig.update_layout(legend=dict(orientation="h", x=0, y=-0.22))
    frac = short.size / lengths.size
    return apply_theme(fig, title=title or f"L_T = {threshold:g}: {frac:.0%} of examples go first-order",
                       height=height)


def alpha_figure(histories_by_alpha: Mapping[float, pd.DataFrame], *, selected: float | None = None,
                 x: str = "step", y: str = "loss", window: int = 1, title: str | None = None,
                 height: int = 400) -> go.Figure:
    """Addax's ``y`` against ``x`` for several ``α`` (Li et al. 2025, Algorithm 1's update
    ``θ ← θ − η (α g⁰ z + (1 − α) g¹)``, as in :mod:`zoedu.optim.addax`); the ``selected`` α is
    drawn bold, the others faint."""
    if not histories_by_alpha:
        raise ValueError("histories_by_alpha is empty; pass {alpha: History}")
    alphas = sorted(histories_by_alpha)
    if selected is not None and selected not in histories_by_alpha:
        raise ValueError(f"selected={selected!r} is not one of the alphas {alphas}")
    fig = go.Figure()
    # dark, distinct colours (no pale end of a colour ramp) and a dash per α, so lines that
    # coincide stay visible; the selected α is drawn last, on top
    order = [a for a in alphas if a != selected] + ([selected] if selected is not None else [])
    for a in order:
        i = alphas.index(a)
        h = histories_by_alpha[a].dropna(subset=[y])
        require_columns(h, [x, y], f"histories_by_alpha[{a!r}]")
        bold = selected is None or a == selected
        fig.add_trace(go.Scatter(x=h[x], y=smooth(h[y], window), mode="lines", name=f"α = {a:g}",
                                 legendrank=i + 1,
                                 line=dict(color=ALPHA_COLORS[i % len(ALPHA_COLORS)], dash=ALPHA_DASHES[i % len(ALPHA_DASHES)],
                                           width=3.5 if (selected is not None and bold) else 2),
                                 opacity=1.0 if bold else 0.55))
    fig.update_xaxes(title_text=_AXIS_TITLES.get(x, x))
    fig.update_yaxes(title_text=_AXIS_TITLES.get(y, y))
    return apply_theme(fig, title=title or "Addax: the weight α of the zeroth-order estimate", height=height)


def replay_figure(original, replayed, *, title: str | None = None, height: int = 360) -> go.Figure:
    """The loss logged during training next to the loss recomputed from the replayed
    trajectory (MeZO stores only seeds and projected gradients, Malladi et al. 2023, §2)."""
    a, b = np.asarray(original, float).reshape(-1), np.asarray(replayed, float).reshape(-1)
    if a.size != b.size or a.size == 0:
        raise ValueError(f"original and replayed must be non-empty and of equal length, got {a.size} and {b.size}")
    steps = np.arange(1, a.size + 1)
    fig = go.Figure([
        go.Scatter(x=steps, y=a, mode="lines", name="during training", line=dict(color=method_color("mezo"), width=4)),
        go.Scatter(x=steps, y=b, mode="lines+markers", name="replayed from the log",
                   line=dict(color="black", width=1.5, dash="dot"), marker=dict(size=4)),
    ])
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="value")
    return apply_theme(fig, title=title or "Replaying the trajectory log reproduces the run", height=height)


# --------------------------------------------------------------------------- dashboards
class SPSADashboard(_Dashboard):
    """Sliders for ε, the number of directions ``n`` and the seed; arrows update live.

    Args:
        estimate: ``estimate(point, eps, n, seed) -> dict`` with ``estimate`` (2,),
            ``directions`` (n, 2) and ``direction_estimates`` (n, 2) — e.g.
            :func:`zoedu.experiments.zeroth_order.spsa_2d`.
        objective: ``objective(X, Y) -> Z`` vectorised over a grid.
        gradient: ``gradient(point) -> (2,)`` the true gradient.
        point: where the gradient is estimated.
    """

    def __init__(self, estimate: Callable, objective: Callable, gradient: Callable, point=(1.0, 0.5), *,
                 eps: float = 1e-2, n: int = 1, seed: int = 0, extent: float = 2.0, resolution: int = 80):
        import ipywidgets as w

        self.estimate_fn, self.gradient_fn = estimate, gradient
        self.point = np.asarray(point, float)
        self.grid_x = np.linspace(self.point[0] - extent, self.point[0] + extent, resolution)
        self.grid_y = np.linspace(self.point[1] - extent, self.point[1] + extent, resolution)
        X, Y = np.meshgrid(self.grid_x, self.grid_y)
        self.values = np.asarray(objective(X, Y), float)
        self.controls = {
            "eps": w.FloatLogSlider(value=eps, base=10, min=-4, max=0.3, step=0.1, description="ε",
                                    readout_format=".1e", continuous_update=False),
            "n": w.IntSlider(value=n, min=1, max=64, description="directions n", continuous_update=False),
            "seed": w.IntSlider(value=seed, min=0, max=99, description="seed", continuous_update=False),
        }
        self.figure = self.build()
        self._observe()

    def build(self) -> go.Figure:
        c = self.controls
        out = self.estimate_fn(self.point, c["eps"].value, int(c["n"].value), int(c["seed"].value))
        self.last = out
        return spsa_figure(self.grid_x, self.grid_y, self.values, self.point, self.gradient_fn(self.point),
                           out["estimate"], out.get("directions"), out.get("direction_estimates"),
                           scale=0.25 * np.ptp(self.grid_x) / max(np.linalg.norm(self.gradient_fn(self.point)), 1e-12))

    def update(self) -> None:
        self._replace(self.build())


class VarianceDashboard(_Dashboard):
    """A slider for the number of directions ``n``: measured variance against ``(d+n−1)/n``.

    ``measure(n) -> DataFrame`` with columns ``d``, ``n``, ``measured`` (e.g.
    :func:`zoedu.experiments.zeroth_order.variance_vs_dimension`).
    """

    def __init__(self, measure: Callable[[int], pd.DataFrame], *, n: int = 1, max_n: int = 64,
                 title: str | None = None):
        import ipywidgets as w

        self.measure, self.title = measure, title
        self.controls = {"n": w.IntSlider(value=n, min=1, max=max_n, description="directions n",
                                          continuous_update=False)}
        self.figure = self.build()
        self._observe()

    def build(self) -> go.Figure:
        n = int(self.controls["n"].value)
        self.data = self.measure(n)
        return variance_figure(self.data, title=self.title or f"Gaussian directions, n = {n}: measured against (d+n−1)/n")

    def update(self) -> None:
        self._replace(self.build())


class LengthThresholdDashboard(_Dashboard):
    """A slider for Addax's ``L_T``: which examples go first-order, and each part's memory.

    Args:
        lengths: token lengths of the training split (``task.lengths("train")``).
        memory: optional ``memory(threshold) -> {"first-order": bytes, "zeroth-order": bytes}``.
        threshold: initial ``L_T``.
    """

    def __init__(self, lengths, memory: Callable[[int], Mapping[str, float]] | None = None, *,
                 threshold: int | None = None):
        import ipywidgets as w

        self.lengths = np.asarray(lengths).reshape(-1)
        if self.lengths.size == 0:
            raise ValueError("lengths is empty; pass task.lengths('train')")
        self.memory = memory
        lo, hi = int(self.lengths.min()), int(self.lengths.max())
        start = int(np.median(self.lengths)) if threshold is None else int(threshold)
        self.controls = {"threshold": w.IntSlider(value=min(max(start, lo), hi), min=lo, max=hi,
                                                  description="L_T", continuous_update=False)}
        self.figure = self.build()
        self._observe()

    def build(self) -> go.Figure:
        t = int(self.controls["threshold"].value)
        mem = self.memory(t) if self.memory is not None else None
        return length_histogram(self.lengths, t, memory=mem)

    def update(self) -> None:
        self._replace(self.build())


class AlphaDashboard(_Dashboard):
    """A slider over precomputed ``{α: History}`` runs; the selected α is drawn bold."""

    def __init__(self, histories_by_alpha: Mapping[float, pd.DataFrame], *, x: str = "step", y: str = "loss",
                 window: int = 1, selected: float | None = None):
        import ipywidgets as w

        if not histories_by_alpha:
            raise ValueError("histories_by_alpha is empty; pass {alpha: History}")
        self.histories = dict(histories_by_alpha)
        self.x, self.y, self.window = x, y, window
        options = sorted(self.histories)
        value = options[len(options) // 2] if selected is None else check_choice(selected, options, "selected")
        self.controls = {"alpha": w.SelectionSlider(options=options, value=value, description="α",
                                                    continuous_update=False)}
        self.figure = self.build()
        self._observe()

    def build(self) -> go.Figure:
        return alpha_figure(self.histories, selected=self.controls["alpha"].value, x=self.x, y=self.y,
                            window=self.window)

    def update(self) -> None:
        self._replace(self.build())


__all__ = [
    "convergence_figure", "final_metrics_bar", "smooth", "spsa_figure", "variance_figure", "length_histogram",
    "alpha_figure", "replay_figure", "SPSADashboard", "VarianceDashboard", "LengthThresholdDashboard",
    "AlphaDashboard", "FIRST_ORDER_COLOR", "ZEROTH_ORDER_COLOR",
]
