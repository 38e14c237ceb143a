"""Figures and dashboards of notebook 04 (gradient conflicts, PiKE), tested headlessly."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from zoedu.viz import mixing as vm


def _conflict_results() -> pd.DataFrame:
    rows = []
    for conflict in (0.0, 0.5, 1.0):
        for mixer, rate in (("uniform", 0.9), ("pcgrad", 0.8), ("pike", 0.7)):
            for step in range(1, 6):
                avg = (rate + conflict / 10) ** step
                rows.append(dict(conflict=conflict, mixer=mixer, step=step, average_loss=avg,
                                 worst_loss=2 * avg))
    return pd.DataFrame(rows)


def test_conflict_figure_selects_the_level():
    res = _conflict_results()
    fig = vm.conflict_figure(res, conflict=0.5)
    assert len(fig.data) == 6  # 3 mixers × (average, worst)
    pike = next(t for t in fig.data if t.name == "PiKE" and t.xaxis in (None, "x"))
    np.testing.assert_allclose(pike.y, 0.75 ** np.arange(1, 6))
    with pytest.raises(ValueError, match="pass conflict="):
        vm.conflict_figure(res)


def test_conflict_dashboard_slider_changes_the_curves():
    dash = vm.ConflictDashboard(_conflict_results())
    assert isinstance(dash.figure, go.FigureWidget)
    assert dash.conflict.value == 0.0
    before = np.array(dash.figure.data[0].y)
    dash.conflict.value = 1.0
    after = np.array(dash.figure.data[0].y)
    np.testing.assert_allclose(before, 0.9 ** np.arange(1, 6))
    np.testing.assert_allclose(after, 1.0 ** np.arange(1, 6))
    assert "conflict = 1" in dash.figure.layout.title.text


def test_conflict_summary_takes_the_final_step():
    fig = vm.conflict_summary_figure(_conflict_results())
    uniform = next(t for t in fig.data if t.name == "uniform")
    np.testing.assert_allclose(uniform.x, [0, 0.5, 1.0])
    np.testing.assert_allclose(uniform.y, [0.9 ** 5, 0.95 ** 5, 1.0])


def test_cosine_heatmap_and_dashboard_slider_over_steps():
    domains = ["prose", "code", "rot13"]
    m1 = np.eye(3)
    m2 = np.array([[1, -0.5, 0.2], [-0.5, 1, 0.1], [0.2, 0.1, 1]])
    fig = vm.cosine_heatmap(m2, domains, step=20)
    assert fig.data[0].zmid == 0 and list(fig.data[0].x) == domains
    history = pd.DataFrame({"step": [10, 11, 20], "cosine": [m1, np.nan, m2]})
    dash = vm.CosineDashboard(history, domains)
    assert list(dash.step.options) == [10, 20]
    np.testing.assert_allclose(np.array(dash.figure.data[0].z), m1)
    dash.step.value = 20
    np.testing.assert_allclose(np.array(dash.figure.data[0].z), m2)
    assert "step 20" in dash.figure.layout.title.text
    with pytest.raises(ValueError, match="square"):
        vm.cosine_heatmap(np.ones((2, 3)))
    with pytest.raises(ValueError, match="domains has 2"):
        vm.cosine_heatmap(m1, ["a", "b"])
    summary = vm.off_diagonal_summary(history)
    assert summary["fraction_negative"].tolist() == [0.0, pytest.approx(2 / 6)]


def test_mixing_weights_figure_draws_one_line_per_domain_and_the_uniform_reference():
    h = pd.DataFrame({"step": [1, 2, 3], "weight/prose": [0.5, 0.6, 0.7], "weight/code": [0.5, 0.4, 0.3]})
    fig = vm.mixing_weights_figure({"pike": h, "balanced_pike": h})
    assert len(fig.data) == 4
    assert fig.data[0].name == "prose" and list(fig.data[0].y) == [0.5, 0.6, 0.7]
    assert fig.layout.shapes[0].y0 == pytest.approx(0.5)
    with pytest.raises(ValueError, match="weight/"):
        vm.mixing_weights_figure(h.drop(columns=["weight/prose", "weight/code"]))


def test_domain_losses_figure_adds_average_and_worst():
    summary = pd.DataFrame({"mixer": ["uniform"] * 2 + ["pike"] * 2, "domain": ["prose", "code"] * 2,
                            "loss": [3.0, 5.0, 2.0, 4.0]})
    fig = vm.domain_losses_figure(summary)
    assert list(fig.data[0].x) == ["prose", "code", "average", "worst"]
    np.testing.assert_allclose(fig.data[0].y, [3.0, 5.0, 4.0, 5.0])
    np.testing.assert_allclose(fig.data[1].y, [2.0, 4.0, 3.0, 4.0])


def test_tau_figure_and_reference_line():
    sweep = pd.DataFrame({"tau": [10.0, 0.1, 1.0], "average_loss": [3.2, 3.0, 3.1], "worst_loss": [3.5, 4.0, 3.8]})
    fig = vm.tau_figure(sweep, reference={"uniform": 4.1})
    np.testing.assert_allclose(fig.data[0].x, [0.1, 1.0, 10.0])
    np.testing.assert_allclose(fig.data[0].y, [4.0, 3.8, 3.5])
    assert fig.layout.shapes[0].y0 == 4.1
