"""Figures and dashboards of notebook 05 (DP with public data), tested headlessly."""

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from zoedu.viz import privacy as vp


def _grid() -> pd.DataFrame:
    """A (method × n_pub × ε) grid whose MSE depends on both knobs in a known way."""
    rows = []
    for method, scale in (("throw_away", 1.0), ("treat_as_private", 2.0), ("semi_dp", 0.5)):
        for n_pub in (10, 100, 1000):
            for eps in (0.5, 1.0, 4.0):
                mse = scale / n_pub + (0 if method == "throw_away" else 1.0 / eps ** 2)
                rows.append(dict(method=method, n_pub=n_pub, epsilon=eps, mse=mse, mc_mse=mse * 1.01))
    return pd.DataFrame(rows)


def _sweep() -> pd.DataFrame:
    rows = []
    for method, base in (("throw_away", 0.6), ("treat_as_private", 0.5), ("semi_dp", 0.4)):
        for frac in (0.01, 0.03, 0.1):
            for eps in (1.0, 8.0):
                rows.append(dict(method=method, public_fraction=frac, epsilon=eps,
                                 test_loss=base / eps + frac, test_accuracy=1 - base / eps))
    return pd.DataFrame(rows)


def test_mean_mse_figure_draws_formula_lines_and_monte_carlo_markers():
    g = _grid()
    fig = vp.mean_mse_figure(g[g.epsilon == 1.0])
    assert isinstance(fig, go.Figure)
    modes = [t.mode for t in fig.data]
    assert modes.count("lines") == 3 and modes.count("markers") == 3
    semi = next(t for t in fig.data if t.mode == "lines" and "semi" in t.name)
    np.testing.assert_allclose(semi.y, 0.5 / np.array([10, 100, 1000]) + 1.0)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    no_mc = vp.mean_mse_figure(g[g.epsilon == 1.0].drop(columns="mc_mse"))
    assert all(t.mode == "lines" for t in no_mc.data)


def test_mean_mse_figure_rejects_missing_columns():
    with pytest.raises(ValueError, match="curves is missing"):
        vp.mean_mse_figure(pd.DataFrame({"method": ["semi_dp"], "mse": [1.0]}))


def test_mean_estimation_dashboard_epsilon_slider_redraws_the_n_pub_panel():
    dash = vp.MeanEstimationDashboard(_grid(), n_pub=100, epsilon=1.0)
    fig = dash.figure
    assert isinstance(fig, go.Figure)
    # trace 0 = throw-away formula vs n_pub (unaffected by ε); trace 4 = treat-as-private formula
    tap = [i for i, t in enumerate(fig.data) if t.xaxis in (None, "x") and t.mode == "lines"
           and "public as private" in t.name][0]
    before = np.array(fig.data[tap].y)
    dash.epsilon.value = 4.0
    after = np.array(fig.data[tap].y)
    np.testing.assert_allclose(before, 2.0 / np.array([10, 100, 1000]) + 1.0)
    np.testing.assert_allclose(after, 2.0 / np.array([10, 100, 1000]) + 1.0 / 16)
    assert "ε = 4" in fig.layout.annotations[0].text
    assert fig.layout.shapes[1].x0 == 4.0  # the marker on the ε panel moved


def test_mean_estimation_dashboard_n_pub_slider_redraws_the_epsilon_panel():
    dash = vp.MeanEstimationDashboard(_grid(), n_pub=10, epsilon=1.0)
    right = [i for i, t in enumerate(dash.figure.data) if t.xaxis == "x2" and t.mode == "lines"
             and "semi" in t.name][0]
    np.testing.assert_allclose(dash.figure.data[right].x, [0.5, 1.0, 4.0])
    np.testing.assert_allclose(dash.figure.data[right].y, 0.05 + 1 / np.array([0.5, 1.0, 4.0]) ** 2)
    dash.n_pub.value = 1000
    np.testing.assert_allclose(dash.figure.data[right].y, 0.0005 + 1 / np.array([0.5, 1.0, 4.0]) ** 2)
    assert dash.figure.layout.shapes[0].x0 == 1000


def test_privacy_utility_figure_and_dashboard():
    sweep = _sweep()
    fig = vp.privacy_utility_figure(sweep)
    assert len(fig.data) == 6  # 3 methods × 2 ε
    one = vp.privacy_utility_figure(sweep, epsilon=1.0)
    assert len(one.data) == 3
    assert list(one.layout.xaxis.ticktext) == ["1%", "3%", "10%"]  # one tick per public fraction
    semi = next(t for t in one.data if "semi" in t.name)
    np.testing.assert_allclose(semi.y, [0.41, 0.43, 0.5])
    dash = vp.PrivacyUtilityDashboard(sweep)
    assert dash.epsilon.value == 1.0
    i = next(i for i, t in enumerate(dash.figure.data) if "semi" in t.name)
    dash.epsilon.value = 8.0
    np.testing.assert_allclose(dash.figure.data[i].y, [0.06, 0.08, 0.15])
    dash.metric.value = "test_accuracy"
    np.testing.assert_allclose(dash.figure.data[i].y, [0.95] * 3)
    assert "accuracy" in dash.figure.layout.yaxis.title.text


def test_epsilon_figure_one_line_per_group_and_budget_line():
    curve = pd.DataFrame({"step": np.tile(np.arange(1, 11), 2),
                          "noise_multiplier": np.repeat([1.0, 2.0], 10),
                          "epsilon": np.concatenate([np.sqrt(np.arange(1, 11)), 0.5 * np.sqrt(np.arange(1, 11))])})
    fig = vp.epsilon_figure(curve, group="noise_multiplier", target=2.0)
    assert len(fig.data) == 2 and fig.data[0].name == "σ = 1"
    assert fig.data[1].y[-1] == pytest.approx(0.5 * np.sqrt(10))
    assert fig.layout.shapes[0].y0 == 2.0
    # the budget line looks like no curve: a colour and a dash no accountant line uses
    two = curve.assign(accountant=np.where(np.arange(20) % 2, "rdp", "prv"))
    fig2 = vp.epsilon_figure(two, group=["noise_multiplier", "accountant"], target=2.0)
    budget = fig2.layout.shapes[0].line
    assert budget.color not in {t.line.color for t in fig2.data} and budget.dash not in {t.line.dash for t in fig2.data}
    with pytest.raises(ValueError, match="curve is missing"):
        vp.epsilon_figure(curve, group="accountant")


def test_dashboards_on_the_real_privacy_experiments():
    from zoedu.experiments.privacy import epsilon_curve, mean_estimation_curves

    grid = mean_estimation_curves(n_priv=200, n_pubs=(0, 10, 100), epsilons=(0.5, 4.0), d=5, trials=20)
    dash = vp.MeanEstimationDashboard(grid, n_pub=10, epsilon=0.5)
    assert [v for _, v in dash.n_pub.options] == [10.0, 100.0]  # n_pub = 0 is off the log axis
    i = next(i for i, t in enumerate(dash.figure.data) if t.xaxis in (None, "x") and t.mode == "lines"
             and "public as private" in t.name)
    strict = np.array(dash.figure.data[i].y)
    dash.epsilon.value = 4.0
    loose = np.array(dash.figure.data[i].y)
    assert np.all(loose < strict)  # less noise at a larger ε
    expected = grid[(grid.method == "treat_as_private") & (grid.epsilon == 4.0) & (grid.n_pub > 0)]["mse"]
    np.testing.assert_allclose(loose, expected.to_numpy())
    marks = [t for t in dash.figure.data if t.mode == "markers"]
    assert marks and all(np.all(np.isfinite(np.array(t.y, dtype=float))) for t in marks)

    curve = pd.concat([epsilon_curve(s, 0.02, 200, 1e-5, accountants=("rdp",), points=5) for s in (0.8, 1.6)])
    fig = vp.epsilon_figure(curve, group=["noise_multiplier", "accountant"])
    assert len(fig.data) == 2
    assert fig.data[0].y[-1] > fig.data[1].y[-1] > 0  # more noise, less ε spent
    assert fig.data[0].name == "σ = 0.8, accountant = rdp"


def test_mean_estimation_dashboard_update_from_python_redraws_its_view():
    # update() is public: calling it (not only moving a slider) must reach the view
    dash = vp.MeanEstimationDashboard(_grid(), n_pub=100, epsilon=1.0)
    (first,) = dash.view.outputs
    dash.update(1000, 4.0)
    (now,) = dash.view.outputs
    drawn = now["data"]["application/vnd.plotly.v1+json"]
    assert drawn != first["data"]["application/vnd.plotly.v1+json"]
    assert drawn["data"] == json.loads(dash.figure.to_json())["data"]
    dash.epsilon.value = 1.0  # the slider path: one redraw, the same figure drawn
    assert dash.view.outputs[0]["data"]["application/vnd.plotly.v1+json"]["data"] == \
        json.loads(dash.figure.to_json())["data"]
