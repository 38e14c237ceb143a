"""Figures and dashboards of notebooks 00, 01 and 03, tested headlessly: set a control's
``.value`` from Python and check that the figure's data changed as it should."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from zoedu.viz import optim as vo


def _history(losses, seconds_per_step=0.1, **extra):
    n = len(losses)
    return pd.DataFrame({"step": np.arange(1, n + 1), "loss": losses,
                         "seconds": seconds_per_step * np.arange(1, n + 1), **extra})


def _quadratic_estimate(point, eps, n, seed):
    """SPSA on L(x, y) = x² + 5y² (exact for a quadratic: central differences have no bias)."""
    rng = np.random.default_rng(seed)
    g = np.array([2 * point[0], 10 * point[1]])
    z = rng.standard_normal((n, 2))
    per = (z @ g)[:, None] * z
    return {"estimate": per.mean(0), "directions": z, "direction_estimates": per}


def _gradient(p):
    return np.array([2 * p[0], 10 * p[1]])


def _objective(x, y):
    return x ** 2 + 5 * y ** 2


def test_convergence_figure_one_line_per_method_and_panel():
    hs = {"adam": _history([1.0, 0.5, 0.2]), "mezo": _history([1.0, 0.9, 0.85], seconds_per_step=0.05)}
    fig = vo.convergence_figure(hs)
    assert len(fig.data) == 4  # 2 methods × (steps, seconds)
    adam_seconds = [t for t in fig.data if t.name == "Adam" and t.xaxis == "x2"][0]
    np.testing.assert_allclose(adam_seconds.x, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(adam_seconds.y, [1.0, 0.5, 0.2])
    # smoothing is a trailing mean
    smooth = vo.convergence_figure(hs, x="step", window=2)
    np.testing.assert_allclose(smooth.data[0].y, [1.0, 0.75, 0.35])
    # eval columns skip the NaN rows
    h = _history([1.0, 0.5, 0.2], eval_accuracy=[np.nan, 0.6, 0.8])
    fig = vo.convergence_figure({"adam": h}, x="step", y="eval_accuracy")
    np.testing.assert_allclose(fig.data[0].x, [2, 3])
    with pytest.raises(ValueError, match="missing column"):
        vo.convergence_figure({"adam": h}, y="nope")
    with pytest.raises(ValueError, match="histories"):
        vo.convergence_figure([1, 2])


def test_convergence_figure_reference_lines_in_every_panel():
    hs = {"adam": _history([1.0, 0.5, 0.2], eval_accuracy=[np.nan, 0.6, 0.8])}
    fig = vo.convergence_figure(hs, y="eval_accuracy", reference={"zero-shot": 0.65})
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 2 and all(s.y0 == s.y1 == 0.65 for s in lines)  # one per panel (steps, seconds)
    assert {s.xref for s in lines} == {"x domain", "x2 domain"}
    assert [a.text for a in fig.layout.annotations] == ["zero-shot 0.65"]  # no plotly "new text" in panel 1
    with pytest.raises(ValueError, match="reference\\['zero-shot'\\]"):
        vo.convergence_figure(hs, y="eval_accuracy", reference={"zero-shot": float("nan")})


def test_convergence_figure_lines_begin_at_the_shared_start():
    hs = {"adam": _history([1.0, 0.5, 0.2], eval_accuracy=[np.nan, 0.6, 0.8]),
          "mezo": _history([1.0, 0.9, 0.8], eval_accuracy=[np.nan, 0.66, 0.67], seconds_per_step=0.05)}
    fig = vo.convergence_figure(hs, y="eval_accuracy", start=0.65)
    mezo_seconds = [t for t in fig.data if t.name == "MeZO" and t.xaxis == "x2"][0]
    np.testing.assert_allclose(mezo_seconds.x, [0.0, 0.1, 0.15])
    np.testing.assert_allclose(mezo_seconds.y, [0.65, 0.66, 0.67])
    adam_steps = [t for t in fig.data if t.name == "Adam" and t.xaxis == "x"][0]
    np.testing.assert_allclose(adam_steps.x, [0, 2, 3])
    with pytest.raises(ValueError, match="start"):
        vo.convergence_figure(hs, y="eval_accuracy", start=float("inf"))


def test_spsa_figure_arrows_start_at_the_point():
    gx = gy = np.linspace(-2, 2, 11)
    X, Y = np.meshgrid(gx, gy)
    out = _quadratic_estimate(np.array([1.0, 0.5]), 1e-2, 4, 0)
    fig = vo.spsa_figure(gx, gy, _objective(X, Y), [1.0, 0.5], _gradient([1.0, 0.5]), out["estimate"],
                         out["directions"], out["direction_estimates"], scale=0.1)
    true = [t for t in fig.data if t.name.startswith("true")][0]
    np.testing.assert_allclose(true.x, [1.0, 1.0 + 0.1 * 2.0])
    np.testing.assert_allclose(true.y, [0.5, 0.5 + 0.1 * 5.0])
    faint = [t for t in fig.data if t.name.startswith("one-direction")][0]
    assert len(faint.x) == 3 * 4  # one segment (and a gap) per direction
    with pytest.raises(ValueError, match="values has shape"):
        vo.spsa_figure(gx, gy, np.zeros((3, 3)), [0, 0], [1, 1], [1, 1])


def test_spsa_dashboard_sliders_redraw_the_estimate():
    dash = vo.SPSADashboard(_quadratic_estimate, _objective, _gradient, point=(1.0, 0.5), n=1)
    assert isinstance(dash.figure, go.Figure)
    est = lambda: [t for t in dash.figure.data if t.name.startswith("SPSA")][0]  # noqa: E731
    faint = lambda: [t for t in dash.figure.data if t.name.startswith("one-direction")][0]  # noqa: E731
    one = np.array(est().x, float)
    assert len(faint().x) == 3
    dash.controls["n"].value = 64
    assert len(faint().x) == 3 * 64
    many = np.array(est().x, float)
    assert not np.allclose(one, many)
    # with 64 directions the estimate points near the gradient
    assert "cosine" in dash.figure.layout.title.text
    g, ghat = _gradient([1.0, 0.5]), dash.last["estimate"]
    assert g @ ghat / (np.linalg.norm(g) * np.linalg.norm(ghat)) > 0.9
    before = np.array(est().y, float)
    dash.controls["seed"].value = 7
    assert not np.allclose(before, np.array(est().y, float))
    # displayed: the live widget, with the static figure as a fallback for nbconvert's HTML
    import plotly.io as pio

    before_renderer = pio.renderers.default
    pio.renderers.default = "json"
    try:
        bundle = dash._repr_mimebundle_()
    finally:
        pio.renderers.default = before_renderer
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "application/json" in bundle


def test_variance_figure_and_dashboard_follow_n():
    def measure(n):
        d = np.array([10, 100, 1000])
        return pd.DataFrame({"d": d, "n": n, "measured": (d + n - 1) / n * 1.05})

    fig = vo.variance_figure(pd.concat([measure(1), measure(4)]))
    assert len(fig.data) == 4 and fig.layout.xaxis.type == "log"
    law = [t for t in fig.data if t.name == "(d+n−1)/n, n=4"][0]
    np.testing.assert_allclose(law.y, (np.array([10, 100, 1000]) + 3) / 4)
    dash = vo.VarianceDashboard(measure, n=1)
    assert dash.figure.layout.title.text != fig.layout.title.text  # two charts, two titles
    np.testing.assert_allclose(dash.figure.data[0].y, [10, 100, 1000])
    dash.controls["n"].value = 10
    np.testing.assert_allclose(dash.figure.data[0].y, (np.array([10, 100, 1000]) + 9) / 10)
    with pytest.raises(ValueError, match="missing column"):
        vo.variance_figure(pd.DataFrame({"d": [1]}))


def test_length_threshold_dashboard_splits_examples_and_memory():
    lengths = np.arange(1, 101)
    seen = []

    def memory(t):
        seen.append(t)
        return {"first-order": 1e6 * t, "zeroth-order": 2e6}

    dash = vo.LengthThresholdDashboard(lengths, memory, threshold=30)
    short, long_ = dash.figure.data[0], dash.figure.data[1]
    assert len(short.x) == 30 and len(long_.x) == 70
    dash.controls["threshold"].value = 80
    assert len(dash.figure.data[0].x) == 80 and len(dash.figure.data[1].x) == 20
    assert seen == [30, 80]
    bars = dash.figure.data[2]
    np.testing.assert_allclose(bars.y, np.array([80e6, 2e6]) / 2 ** 20)
    assert "80%" in dash.figure.layout.title.text
    # the memory panel: labels unrotated, room above the bars for their values
    assert dash.figure.layout.xaxis2.tickangle == 0 and bars.cliponaxis is False
    assert dash.figure.layout.yaxis2.range[1] >= 1.15 * max(bars.y)
    with pytest.raises(ValueError, match="lengths is empty"):
        vo.length_histogram([], 3)
    with pytest.raises(ValueError, match="threshold"):
        vo.length_histogram([1, 2], -1)


def test_alpha_dashboard_highlights_the_selected_run():
    runs = {a: _history(list(np.linspace(1, 1 - a, 5))) for a in (0.1, 0.5, 0.9)}
    dash = vo.AlphaDashboard(runs, selected=0.5)
    widths = lambda: {t.name: t.line.width for t in dash.figure.data}  # noqa: E731
    assert widths() == {"α = 0.1": 2, "α = 0.5": 3.5, "α = 0.9": 2}
    dash.controls["alpha"].value = 0.9
    assert widths() == {"α = 0.1": 2, "α = 0.5": 2, "α = 0.9": 3.5}
    assert dash.figure.data[-1].name == "α = 0.9" and dash.figure.data[-1].opacity == 1.0  # drawn on top
    assert dash.figure.data[0].opacity < 1
    # every α keeps its colour and dash whichever is selected; none is a pale colour
    styles = {t.name: (t.line.color, t.line.dash) for t in dash.figure.data}
    assert len(set(styles.values())) == 3
    for color, _ in styles.values():
        r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
        assert 0.2126 * r + 0.7152 * g + 0.0722 * b < 160, color
    with pytest.raises(ValueError, match="selected"):
        vo.alpha_figure(runs, selected=0.3)


def test_replay_and_final_metrics():
    fig = vo.replay_figure([1.0, 0.9], [1.0, 0.9])
    np.testing.assert_allclose(fig.data[1].y, [1.0, 0.9])
    with pytest.raises(ValueError, match="equal length"):
        vo.replay_figure([1.0], [1.0, 2.0])
    table = pd.DataFrame({"method": ["adam", "mezo"], "eval_accuracy": [0.9, 0.6]})
    bar = vo.final_metrics_bar(table)
    assert list(bar.data[0].x) == ["Adam", "MeZO"]
    np.testing.assert_allclose(bar.data[0].y, [0.9, 0.6])


def test_spsa_figure_names_an_estimate_too_short_to_see():
    grid = np.linspace(-1, 1, 5)
    values = np.add.outer(grid, grid)
    tiny = vo.spsa_figure(grid, grid, values, (0, 0), (1.0, 2.0), (0.01, -0.02))
    assert any("ĝ ≈ 0" in a.text for a in tiny.layout.annotations)
    note = tiny.layout.annotations[0]
    assert note.ax < 0 and note.ay > 0  # placed away from the gradient (up and right): it hides no arrow
    clear = vo.spsa_figure(grid, grid, values, (0, 0), (1.0, 2.0), (1.1, 1.8))
    assert not clear.layout.annotations
