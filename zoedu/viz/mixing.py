"""Figures and dashboards for multi-task data mixing and gradient conflicts (notebook 04).

Li, Deng, Zhong, Razaviyayn, Mirrokni, "PiKE: Adaptive Data Mixing for Large-Scale
Multi-Task Learning Under Low Gradient Conflicts", NeurIPS 2025; the conflict-averse
baselines PCGrad (Yu et al., NeurIPS 2020) and MGDA (Sener & Koltun, NeurIPS 2018).

Builders are pure functions from the data of :mod:`zoedu.experiments.mixing` (DataFrames,
Histories, cosine matrices) to plotly figures:

* :func:`conflict_figure` / :class:`ConflictDashboard` — the synthetic K-task problem at
  one conflict level (a slider over the levels): average and worst-task loss per mixer;
* :func:`conflict_summary_figure` — final loss against the conflict level;
* :func:`cosine_heatmap` / :class:`CosineDashboard` — the K×K cosine matrix between domain
  gradients (a negative entry is a conflict), with a slider over training steps;
* :func:`mixing_weights_figure` — PiKE's mixing weights w_k over training against uniform;
* :func:`domain_losses_figure` — per-domain validation loss of each mixer, its average and worst;
* :func:`tau_figure` — Balanced-PiKE's τ against the average and the worst-domain loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import apply_theme, hline, log_ticks, method_color, method_label, require_columns
from .common import Dashboard as _Dashboard

MIXERS = ("uniform", "proportional", "round_robin", "random_task", "pcgrad", "mgda", "pike",
          "balanced_pike")
"""The mixers in the order they are drawn (others follow in the order they appear)."""

DOMAIN_COLORS = {"prose": "#0072B2", "code": "#D55E00", "rot13": "#009E73", "arithmetic": "#CC79A7"}
DOMAIN_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def _key(name) -> str:
    return str(name).lower().replace("-", "_")


def _ordered(names: Sequence) -> list:
    present = list(dict.fromkeys(names))
    known = [m for m in MIXERS if m in {_key(p) for p in present}]
    by_key = {_key(p): p for p in present}
    ordered = [by_key[m] for m in known]
    return ordered + [p for p in present if p not in ordered]


def domain_color(name: str, index: int = 0) -> str:
    """The colour of a domain (``prose``, ``code`` …); a method colour or fallback otherwise."""
    return DOMAIN_COLORS.get(str(name), method_color(f"domain_{name}", index))


def _mixer_label(name) -> str:
    key = _key(name)
    return method_label(key) if key in ("pike", "balanced_pike", "pcgrad", "mgda", "uniform") else str(name)


# --------------------------------------------------------------------------- synthetic conflict
KNOB_TITLE = "cosine between task gradients (+1 aligned, 0 orthogonal, −1 opposed)"


def _levels(results: pd.DataFrame, knob: str) -> list[float]:
    """The knob's levels from aligned (+1) to opposed (−1): descending cosines."""
    return sorted(set(results[knob].astype(float)), reverse=True)


def _at_level(results: pd.DataFrame, knob: str, level: float | None) -> tuple[pd.DataFrame, float | None]:
    if knob not in results:
        if level is not None:
            raise ValueError(f"a {knob} level was given but results has no {knob!r} column")
        return results, None
    levels = np.asarray(_levels(results, knob))
    if level is None:
        if len(levels) > 1:
            raise ValueError(f"results holds several {knob} levels {levels.tolist()}; pass {knob}=")
        level = levels[0]
    chosen = float(levels[np.argmin(np.abs(levels - float(level)))])
    return results[np.isclose(results[knob].astype(float), chosen)], chosen


def conflict_figure(results: pd.DataFrame, *, cosine: float | None = None, knob: str = "cosine",
                    by: str = "method", losses: Sequence[str] = ("average", "worst"),
                    log_y: bool = True, title: str | None = None) -> go.Figure:
    """Loss curves of each method on the synthetic K-task problem at one conflict level.

    ``results`` is long-format, one row per (``knob`` level, ``by``, step) — the
    concatenated output of :func:`zoedu.experiments.mixing.synthetic_conflict` — with
    the columns named in ``losses`` (one panel each: the average excess loss over tasks
    and the worst task's). ``cosine`` selects the level (nearest available); ``None``
    needs a single level.
    """
    require_columns(results, [by, "step", *losses], "results")
    data, level = _at_level(results, knob, cosine)
    fig = make_subplots(rows=1, cols=len(losses), horizontal_spacing=0.08,
                        subplot_titles=[f"{c.replace('_', ' ')} excess loss" for c in losses])
    for mixer in _ordered(data[by].tolist()):
        part = data[data[by] == mixer].sort_values("step")
        for j, col in enumerate(losses):
            fig.add_trace(go.Scatter(
                x=part["step"].to_numpy(float), y=part[col].to_numpy(float), mode="lines",
                name=_mixer_label(mixer), legendgroup=str(mixer), showlegend=j == 0,
                line=dict(color=method_color(_key(mixer)), width=2.5),
                hovertemplate=f"{_mixer_label(mixer)}<br>step=%{{x}}<br>{col}=%{{y:.4g}}<extra></extra>"),
                row=1, col=j + 1)
    fig.update_xaxes(title_text="step")
    # ticks from every level's losses, so the dashboard's axes stay labelled as the slider moves
    if log_y:
        fig.update_yaxes(type="log", **log_ticks(results[list(losses)].to_numpy()))
    else:
        fig.update_yaxes(type="linear")
    fig.update_yaxes(title_text="excess loss L_k − L_k*", row=1, col=1)
    suffix = f" — task gradients at cosine {level:+g}" if level is not None else ""
    return apply_theme(fig, title=title or "Synthetic multi-task problem" + suffix, height=420)


def conflict_summary_figure(results: pd.DataFrame, *, knob: str = "cosine", by: str = "method",
                            loss: str = "average", last: int = 1, log_y: bool = True,
                            title: str | None = None) -> go.Figure:
    """Final ``loss`` of each method against the conflict knob (aligned → orthogonal → opposed).

    ``results`` is either the per-step output of ``synthetic_conflict`` (with ``step``:
    the mean of the ``last`` steps is taken) or the per-level summary of
    :func:`zoedu.experiments.mixing.conflict_sweep` (one row per level and method).
    """
    require_columns(results, [knob, by, loss], "results")
    if "step" in results:
        cut = results["step"].max() - max(1, int(last))
        results = results[results["step"] > cut]
    final = results.groupby([by, knob], as_index=False)[loss].mean()
    fig = go.Figure()
    for mixer in _ordered(final[by].tolist()):
        part = final[final[by] == mixer].sort_values(knob, ascending=False)
        fig.add_trace(go.Scatter(x=part[knob].to_numpy(float), y=part[loss].to_numpy(float),
                                 mode="lines+markers", name=_mixer_label(mixer),
                                 line=dict(color=method_color(_key(mixer)), width=2.5)))
    fig.update_xaxes(title_text=KNOB_TITLE if knob == "cosine" else knob, autorange="reversed")
    fig.update_yaxes(title_text=f"final {loss.replace('_', ' ')} excess loss", type="log" if log_y else "linear",
                     **(log_ticks(final[loss].to_numpy()) if log_y else {}))
    return apply_theme(fig, title=title or "Which method wins depends on the conflict level", height=400)


class ConflictDashboard(_Dashboard):
    """A slider over the synthetic problem's conflict levels redrawing :func:`conflict_figure`.

    The slider runs from aligned (cosine +1, left) to opposed (−1, right). Set
    ``dash.cosine.value``; ``dash.figure`` (a ``go.Figure``, shown in ``dash.view``) gets the curves of that
    level. ``dash.widget`` is the container to display.
    """

    def __init__(self, results: pd.DataFrame, *, knob: str = "cosine", by: str = "method",
                 losses: Sequence[str] = ("average", "worst"), cosine: float | None = None,
                 log_y: bool = True):
        import ipywidgets as widgets

        require_columns(results, [knob, by, "step", *losses], "results")
        if results.empty:
            raise ValueError("results is empty")
        self.results, self.knob, self.by, self.losses, self.log_y = results, knob, by, tuple(losses), log_y
        levels = _levels(results, knob)
        start = levels[0] if cosine is None else min(levels, key=lambda v: abs(v - cosine))
        self.cosine = widgets.SelectionSlider(options=[(f"{v:+g}", v) for v in levels], value=start,
                                              description=knob, continuous_update=False)
        self.figure = self._build(start)
        self.cosine.observe(self._on_change, names="value")
        self.widget = widgets.VBox([self.cosine, self.view])

    def _build(self, level: float) -> go.Figure:
        return conflict_figure(self.results, cosine=level, knob=self.knob, by=self.by, losses=self.losses,
                               log_y=self.log_y)

    def _on_change(self, change=None) -> None:
        self._replace(self._build(self.cosine.value))


def conflict_dashboard(results: pd.DataFrame, **options):
    """The :class:`ConflictDashboard` (it displays as its widget) for ``results`` (see the class)."""
    return ConflictDashboard(results, **options)


# --------------------------------------------------------------------------- cosine matrices
def _check_matrix(matrix, domains: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be a square K×K cosine matrix, got shape {m.shape}")
    names = list(domains) if domains is not None else [f"task {k}" for k in range(m.shape[0])]
    if len(names) != m.shape[0]:
        raise ValueError(f"domains has {len(names)} names but the matrix is {m.shape[0]}×{m.shape[0]}")
    return m, [str(n) for n in names]


def cosine_heatmap(matrix, domains: Sequence[str] | None = None, *, step: int | None = None,
                   title: str | None = None) -> go.Figure:
    """The K×K cosine matrix between task gradients: red < 0 (conflict), blue > 0 (aligned)."""
    m, names = _check_matrix(matrix, domains)
    fig = go.Figure(go.Heatmap(
        z=m, x=names, y=names, zmin=-1, zmax=1, zmid=0, colorscale="RdBu",
        text=np.round(m, 2), texttemplate="%{text:.2f}", colorbar=dict(title="cosine"),
        hovertemplate="cos(∇L_%{y}, ∇L_%{x}) = %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x")
    fig.update_layout(margin=dict(t=90))  # room for the title above the mode bar
    default = "Cosine between domain gradients" + (f" at step {step}" if step is not None else "")
    return apply_theme(fig, title=title or default, height=480, width=580)


def history_domains(history: pd.DataFrame, prefix: str = "weight/") -> list[str]:
    """The domain names of a mixed-training History, read off its ``weight/<domain>`` columns."""
    return [c[len(prefix):] for c in history.columns if c.startswith(prefix)]


def cosine_snapshots(history: pd.DataFrame, column: str = "cosine") -> list[tuple[int, np.ndarray]]:
    """The (step, K×K matrix) pairs stored in a History's ``column`` (NaN rows skipped)."""
    require_columns(history, ["step", column], "history")
    out = []
    for step, value in zip(history["step"], history[column]):
        if value is None or (np.isscalar(value) and pd.isna(value)):
            continue
        out.append((int(step), np.asarray(value, dtype=float)))
    if not out:
        raise ValueError(f"history has no cosine matrices in column {column!r}")
    return out


class CosineDashboard(_Dashboard):
    """A slider over training steps redrawing :func:`cosine_heatmap`.

    ``snapshots`` is a list of ``(step, K×K matrix)`` (see :func:`cosine_snapshots`) or a
    History with a ``cosine`` column. Set ``dash.step.value`` to a recorded step;
    ``dash.figure.data[0].z`` becomes that step's matrix.
    """

    def __init__(self, snapshots, domains: Sequence[str] | None = None):
        import ipywidgets as widgets

        if isinstance(snapshots, pd.DataFrame):
            if domains is None:
                domains = history_domains(snapshots) or None
            snapshots = cosine_snapshots(snapshots)
        snapshots = [(int(s), np.asarray(m, dtype=float)) for s, m in snapshots]
        if not snapshots:
            raise ValueError("snapshots must hold at least one (step, matrix) pair")
        self.snapshots = dict(snapshots)
        _, self.domains = _check_matrix(snapshots[0][1], domains)
        steps = sorted(self.snapshots)
        self.step = widgets.SelectionSlider(options=steps, value=steps[0], description="step",
                                            continuous_update=True)
        self.figure = cosine_heatmap(self.snapshots[steps[0]], self.domains, step=steps[0])
        self.step.observe(self._on_change, names="value")
        self.widget = widgets.VBox([self.step, self.view])

    def _on_change(self, change=None) -> None:
        step = self.step.value
        m, _ = _check_matrix(self.snapshots[step], self.domains)
        self.figure.data[0].z = m
        self.figure.data[0].text = np.round(m, 2)
        self.figure.layout.title.text = f"Cosine between domain gradients at step {step}"
        self.redraw()


def cosine_dashboard(snapshots, domains: Sequence[str] | None = None):
    """The :class:`CosineDashboard` (it displays as its widget) (see the class)."""
    return CosineDashboard(snapshots, domains)


def off_diagonal_summary(snapshots) -> pd.DataFrame:
    """Per recorded step: the mean, min and fraction of negative off-diagonal cosines."""
    if isinstance(snapshots, pd.DataFrame):
        snapshots = cosine_snapshots(snapshots)
    rows = []
    for step, m in snapshots:
        m = np.asarray(m, dtype=float)
        off = m[~np.eye(len(m), dtype=bool)]
        rows.append({"step": int(step), "mean_cosine": float(off.mean()), "min_cosine": float(off.min()),
                     "fraction_negative": float((off < 0).mean())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- weights and losses
def _prefixed(history: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in history.columns if c.startswith(prefix)]


def mixing_weights_figure(histories: pd.DataFrame | Mapping[str, pd.DataFrame], *,
                          prefix: str = "weight/", title: str | None = None) -> go.Figure:
    """Mixing weights w_k over training (one line per domain) against uniform 1/K (dashed).

    ``histories`` is a History with ``weight/<domain>`` columns, or a dict of them (one
    panel per mixer, e.g. PiKE and Balanced-PiKE).
    """
    if isinstance(histories, pd.DataFrame):
        histories = {histories.attrs.get("mixer", "pike"): histories}
    if not histories:
        raise ValueError("histories must hold at least one History")
    names = list(histories)
    fig = make_subplots(rows=1, cols=len(names), shared_yaxes=True, horizontal_spacing=0.05,
                        subplot_titles=[_mixer_label(n) for n in names])
    for j, name in enumerate(names):
        h = histories[name]
        cols = _prefixed(h, prefix)
        if not cols:
            raise ValueError(f"the History of {name!r} has no {prefix}<domain> columns; columns: {list(h.columns)}")
        require_columns(h, ["step"], f"histories[{name!r}]")
        for i, col in enumerate(cols):
            domain = col[len(prefix):]
            part = h[["step", col]].dropna()
            # weights often coincide (uniform at the start, or two domains alike): the lines drawn
            # first are wider and each has its own dash, so none hides under the next
            fig.add_trace(go.Scatter(x=part["step"].to_numpy(float), y=part[col].to_numpy(float),
                                     mode="lines", name=domain, legendgroup=domain, showlegend=j == 0,
                                     line=dict(color=domain_color(domain, i), width=2 + 2 * (len(cols) - 1 - i),
                                               dash=DOMAIN_DASHES[i % len(DOMAIN_DASHES)], shape="hv")),
                          row=1, col=j + 1)
        hline(fig, 1.0 / len(cols), dict(color="#7F7F7F", dash="dash"), label="uniform 1/K" if j == 0 else None,
              row=1, col=j + 1)
        fig.update_xaxes(title_text="step", row=1, col=j + 1)
    fig.update_yaxes(title_text="mixing weight w_k", rangemode="tozero", row=1, col=1)
    return apply_theme(fig, title=title or "Mixing weights over training (dashed: uniform)", height=400)


def domain_losses_figure(summary: pd.DataFrame, *, mixer: str = "mixer", domain: str = "domain",
                         loss: str = "loss", prefix: str = "val/", title: str | None = None) -> go.Figure:
    """Per-domain validation loss of each mixer (grouped bars), with its average and worst.

    ``summary`` is either wide — one row per mixer with ``val/<domain>`` columns, the
    ``summary`` of :func:`zoedu.experiments.multidomain.pretrain_multidomain` — or long, one row
    per (mixer, domain) with the final ``loss``. The bars "average" and "worst" are
    computed here from the per-domain values.
    """
    wide = [c for c in summary.columns if c.startswith(prefix)]
    if domain not in summary and wide:
        require_columns(summary, [mixer], "summary")
        summary = summary.melt(id_vars=[mixer], value_vars=wide, var_name=domain, value_name=loss)
        summary[domain] = summary[domain].str[len(prefix):]
    require_columns(summary, [mixer, domain, loss], "summary")
    if summary.empty:
        raise ValueError("summary is empty")
    domains = list(dict.fromkeys(summary[domain].astype(str)))
    fig = go.Figure()
    for m in _ordered(summary[mixer].tolist()):
        part = summary[summary[mixer] == m].set_index(summary[summary[mixer] == m][domain].astype(str))[loss]
        values = [float(part.get(d, np.nan)) for d in domains]
        values += [float(np.nanmean(values)), float(np.nanmax(values))]
        fig.add_trace(go.Bar(x=domains + ["average", "worst"], y=values, name=_mixer_label(m),
                             marker_color=method_color(_key(m)),
                             hovertemplate=f"{_mixer_label(m)}<br>%{{x}}: %{{y:.4f}}<extra></extra>"))
    fig.update_layout(barmode="group")
    values = np.array([v for t in fig.data for v in t.y], dtype=float)
    values = values[np.isfinite(values)]
    if values.size:  # losses differ by little between mixers: zoom in on them instead of starting at 0
        low, high = float(values.min()), float(values.max())
        pad = 0.15 * (high - low) if high > low else 0.05 * abs(high) or 0.1
        fig.update_yaxes(range=[low - pad, high + pad])
    fig.update_yaxes(title_text="validation loss (axis does not start at 0)")
    return apply_theme(fig, title=title or "Validation loss per domain, on average and on the worst domain",
                       height=420)


def domain_loss_curves(histories: Mapping[str, pd.DataFrame], *, prefix: str = "eval_loss/",
                       title: str | None = None) -> go.Figure:
    """Per-domain validation loss over training, one panel per domain, one line per mixer."""
    if not histories:
        raise ValueError("histories must hold at least one History")
    first = next(iter(histories.values()))
    domains = [c[len(prefix):] for c in _prefixed(first, prefix)]
    if not domains:
        raise ValueError(f"the Histories have no {prefix}<domain> columns; columns: {list(first.columns)}")
    fig = make_subplots(rows=1, cols=len(domains), subplot_titles=domains, horizontal_spacing=0.05)
    for name in _ordered(list(histories)):
        h = histories[name]
        for j, d in enumerate(domains):
            part = h[["step", prefix + d]].dropna()
            fig.add_trace(go.Scatter(x=part["step"].to_numpy(float), y=part[prefix + d].to_numpy(float),
                                     mode="lines+markers", name=_mixer_label(name), legendgroup=str(name),
                                     showlegend=j == 0, line=dict(color=method_color(_key(name)))),
                          row=1, col=j + 1)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="validation loss", row=1, col=1)
    return apply_theme(fig, title=title or "Validation loss per domain during training", height=380)


def tau_figure(sweep: pd.DataFrame, *, tau: str = "tau", average: str = "average",
               worst: str = "worst", reference: Mapping[str, float] | None = None, last: int = 1,
               y_title: str = "loss", title: str | None = None) -> go.Figure:
    """Balanced-PiKE: the average and the worst-domain loss against its temperature τ.

    The tilted objective (1/τ)·log Σ_k exp(τ·L_k) is the average loss as τ → 0 and the
    worst-task loss as τ → ∞, so the worst-domain line should fall as τ grows (at some cost
    in the average). ``reference`` maps a label (e.g. ``"uniform"``) to its worst-domain
    loss, drawn as a dashed horizontal line. With per-step rows (a ``step`` column, e.g.
    ``synthetic_conflict`` at several τ) the mean over the ``last`` steps of each τ is drawn.
    """
    require_columns(sweep, [tau, average, worst], "sweep")
    if sweep.empty:
        raise ValueError("sweep is empty")
    if "step" in sweep:  # per-step rows (e.g. synthetic_conflict at several τ): the last steps of each
        cut = sweep["step"].max() - max(1, int(last))
        sweep = sweep[sweep["step"] > cut].groupby(tau, as_index=False)[[average, worst]].mean()
    part = sweep.sort_values(tau)
    fig = go.Figure()
    colour = method_color("balanced_pike")
    fig.add_trace(go.Scatter(x=part[tau].to_numpy(float), y=part[worst].to_numpy(float),
                             mode="lines+markers", name="Balanced-PiKE: worst task", line=dict(color=colour, width=2.5)))
    fig.add_trace(go.Scatter(x=part[tau].to_numpy(float), y=part[average].to_numpy(float),
                             mode="lines+markers", name="Balanced-PiKE: average over tasks",
                             line=dict(color=colour, width=2.5, dash="dot")))
    # reference lines often lie close together: their labels alternate above and below the
    # line, and left and right, so that they do not overlap
    positions = ("top right", "bottom left", "bottom right", "top left")
    for k, (label, value) in enumerate((reference or {}).items()):
        fig.add_hline(y=float(value), line=dict(color=method_color(_key(label)), dash="dash"),
                      annotation_text=f"{_mixer_label(label)}: worst task",
                      annotation_position=positions[k % len(positions)],
                      annotation_font_color=method_color(_key(label)))
    taus = sorted(set(part[tau].to_numpy(float)))  # label the τ that were run, nothing else
    fig.update_xaxes(title_text="τ (log scale)", type="log", tickvals=taus, ticktext=[f"{t:g}" for t in taus])
    fig.update_yaxes(title_text=y_title)
    return apply_theme(fig, title=title or "Balanced-PiKE: larger τ protects the worst domain", height=400)


__all__ = [
    "ConflictDashboard",
    "CosineDashboard",
    "DOMAIN_COLORS",
    "MIXERS",
    "conflict_dashboard",
    "conflict_figure",
    "conflict_summary_figure",
    "cosine_dashboard",
    "cosine_heatmap",
    "cosine_snapshots",
    "domain_color",
    "domain_loss_curves",
    "domain_losses_figure",
    "history_domains",
    "mixing_weights_figure",
    "off_diagonal_summary",
    "tau_figure",
]
