"""Figures and dashboards of notebook 04 (gradient conflicts, PiKE), tested headlessly."""

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from zoedu.viz import mixing as vm


def _conflict_results() -> pd.DataFrame:
    """Per-step rows shaped like zoedu.experiments.mixing.synthetic_conflict's, at three cosines."""
    rows = []
    for cosine in (1.0, 0.0, -1.0):
        for method, rate in (("uniform", 0.9), ("pcgrad", 0.8), ("pike", 0.7)):
            for step in range(1, 6):
                avg = (rate + (1 - cosine) / 20) ** step
                rows.append(dict(cosine=cosine, method=method, step=step, average=avg, worst=2 * avg))
    return pd.DataFrame(rows)


def test_conflict_figure_selects_the_level():
    res = _conflict_results()
    fig = vm.conflict_figure(res, cosine=0.1)  # nearest level: 0
    assert len(fig.data) == 6  # 3 methods × (average, worst)
    pike = next(t for t in fig.data if t.name == "PiKE" and t.xaxis in (None, "x"))
    np.testing.assert_allclose(pike.y, 0.75 ** np.arange(1, 6))
    assert "+0" in fig.layout.title.text or "cosine 0" in fig.layout.title.text
    with pytest.raises(ValueError, match="pass cosine="):
        vm.conflict_figure(res)
    with pytest.raises(ValueError, match="results is missing"):
        vm.conflict_figure(res.drop(columns="worst"), cosine=0.0)


def test_conflict_dashboard_slider_runs_from_aligned_to_opposed_and_changes_the_curves():
    dash = vm.ConflictDashboard(_conflict_results())
    assert isinstance(dash.figure, go.Figure)
    assert [v for _, v in dash.cosine.options] == [1.0, 0.0, -1.0]
    assert dash.cosine.value == 1.0
    before = np.array(dash.figure.data[0].y)
    dash.cosine.value = -1.0
    after = np.array(dash.figure.data[0].y)
    np.testing.assert_allclose(before, 0.9 ** np.arange(1, 6))
    np.testing.assert_allclose(after, 1.0 ** np.arange(1, 6))
    assert "-1" in dash.figure.layout.title.text


def test_conflict_summary_takes_the_final_step_or_a_sweep_summary():
    fig = vm.conflict_summary_figure(_conflict_results())
    uniform = next(t for t in fig.data if t.name == "uniform")
    np.testing.assert_allclose(uniform.x, [1.0, 0.0, -1.0])
    np.testing.assert_allclose(uniform.y, [0.9 ** 5, 0.95 ** 5, 1.0])
    summary = pd.DataFrame({"cosine": [1.0, -1.0], "method": ["pike", "pike"], "average": [0.1, 0.2]})
    fig = vm.conflict_summary_figure(summary)
    np.testing.assert_allclose(fig.data[0].y, [0.1, 0.2])


def test_conflict_dashboard_on_the_real_synthetic_experiment():
    from zoedu.experiments.mixing import synthetic_conflict

    res = pd.concat([synthetic_conflict(c, steps=12, methods=("uniform", "pike"), update_every=4)
                     for c in (1.0, -1.0)], ignore_index=True)
    dash = vm.ConflictDashboard(res)
    uniform_aligned = np.array(dash.figure.data[0].y)
    dash.cosine.value = -1.0
    uniform_opposed = np.array(dash.figure.data[0].y)
    expected = res[(res.cosine == -1.0) & (res.method == "uniform")].sort_values("step")["average"]
    np.testing.assert_allclose(uniform_opposed, expected.to_numpy())
    assert not np.allclose(uniform_aligned, uniform_opposed)


def test_cosine_heatmap_and_dashboard_slider_over_steps():
    domains = ["prose", "code", "rot13"]
    m1 = np.eye(3)
    m2 = np.array([[1, -0.5, 0.2], [-0.5, 1, 0.1], [0.2, 0.1, 1]])
    fig = vm.cosine_heatmap(m2, domains, step=20)
    assert fig.data[0].zmid == 0 and list(fig.data[0].x) == domains
    history = pd.DataFrame({"step": [10, 11, 20], "cosine": [m1, np.nan, m2],
                            **{f"weight/{d}": [1 / 3] * 3 for d in domains}})
    dash = vm.CosineDashboard(history)
    assert dash.domains == domains
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
    # one label, on the first panel: no plotly placeholder "new text" on the others
    # (an annotation without text is what plotly.js draws as "new text")
    assert all(a.text for a in fig.layout.annotations)
    assert [a.text for a in fig.layout.annotations].count("uniform 1/K") == 1
    with pytest.raises(ValueError, match="weight/"):
        vm.mixing_weights_figure(h.drop(columns=["weight/prose", "weight/code"]))


def test_domain_losses_figure_adds_average_and_worst():
    summary = pd.DataFrame({"mixer": ["uniform"] * 2 + ["pike"] * 2, "domain": ["prose", "code"] * 2,
                            "loss": [3.0, 5.0, 2.0, 4.0]})
    fig = vm.domain_losses_figure(summary)
    assert list(fig.data[0].x) == ["prose", "code", "average", "worst"]
    wide = pd.DataFrame({"mixer": ["uniform", "pike"], "val/prose": [3.0, 2.0], "val/code": [5.0, 4.0],
                         "val_average": [4.0, 3.0]})
    fig = vm.domain_losses_figure(wide)
    assert list(fig.data[0].x) == ["prose", "code", "average", "worst"]
    np.testing.assert_allclose(fig.data[0].y, [3.0, 5.0, 4.0, 5.0])
    np.testing.assert_allclose(fig.data[1].y, [2.0, 4.0, 3.0, 4.0])
    low, high = fig.layout.yaxis.range
    assert 1.0 < low < 2.0 and 5.0 < high < 6.0  # zoomed on the losses, not from 0


def test_tau_figure_and_reference_line():
    sweep = pd.DataFrame({"tau": [10.0, 0.1, 1.0], "average": [3.2, 3.0, 3.1], "worst": [3.5, 4.0, 3.8]})
    fig = vm.tau_figure(sweep, reference={"uniform": 4.1})
    np.testing.assert_allclose(fig.data[0].x, [0.1, 1.0, 10.0])
    np.testing.assert_allclose(fig.data[0].y, [4.0, 3.8, 3.5])
    assert fig.layout.shapes[0].y0 == 4.1
    per_step = pd.DataFrame({"tau": [1.0, 1.0, 2.0, 2.0], "step": [1, 2, 1, 2], "average": [9, 1, 9, 2],
                             "worst": [9, 3, 9, 4]})
    np.testing.assert_allclose(vm.tau_figure(per_step).data[0].y, [3, 4])
    np.testing.assert_allclose(vm.tau_figure(per_step, last=2).data[0].y, [6, 6.5])


def test_cosine_dashboard_and_weights_on_a_real_mixed_training_history():
    from zoedu.experiments.multidomain import pretrain_multidomain

    run = pretrain_multidomain(("pike",), fast=True, steps=4, stats_every=2, eval_every=4, batch_size=8,
                               n_train={"prose": 16, "code": 16, "rot13": 16, "arithmetic": 16},
                               n_validation=4, max_length=16)
    history = run["histories"]["pike"]
    dash = vm.CosineDashboard(history)
    assert dash.domains == ["prose", "code", "rot13", "arithmetic"]
    assert list(dash.step.options) == [2, 4]
    dash.step.value = 4
    np.testing.assert_allclose(np.array(dash.figure.data[0].z), history.loc[history.step == 4, "cosine"].iloc[0])
    fig = vm.mixing_weights_figure({"pike": history})
    assert [t.name for t in fig.data] == dash.domains
    np.testing.assert_allclose(sum(np.array(t.y) for t in fig.data), 1.0)
    bars = vm.domain_losses_figure(run["summary"])
    assert bars.data[0].y[-2] == pytest.approx(run["summary"]["val_average"].iloc[0])
    assert bars.data[0].y[-1] == pytest.approx(run["summary"]["val_worst"].iloc[0])


def test_dashboards_display_as_widget_with_a_static_figure_fallback(monkeypatch):
    import plotly.io as pio

    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype")
    m = np.array([[1, -0.25], [-0.25, 1]])
    dash = vm.cosine_dashboard([(5, np.eye(2)), (10, m)], ["prose", "code"])
    assert isinstance(dash, vm.CosineDashboard)
    before = dash._repr_mimebundle_()["application/vnd.plotly.v1+json"]
    dash.step.value = 10
    bundle = dash._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # JupyterLab: the live widget
    static = bundle["application/vnd.plotly.v1+json"]  # nbconvert and other frontends: the current figure
    assert "step 10" in static["layout"]["title"]["text"] and "step 5" in before["layout"]["title"]["text"]


def test_log_axes_label_few_ticks_and_reference_labels_do_not_overlap():
    from zoedu.viz.common import log_ticks

    narrow = log_ticks([0.31, 0.9])  # less than a decade: 1-2-5 ticks, not "2 3 4 5 6 7 8 9"
    assert narrow["tickvals"] == [0.2, 0.5, 1.0] and narrow["ticktext"] == ["0.2", "0.5", "1"]
    wide = log_ticks([1e-6, 1e3])
    assert len(wide["tickvals"]) <= 8 and all(np.log10(t).is_integer() for t in wide["tickvals"])
    assert log_ticks([0, -1]) == {}
    results = pd.DataFrame({"cosine": 1.0, "method": "pike", "step": [1, 2, 3],
                            "average": [0.9, 0.5, 0.31], "worst": [0.95, 0.6, 0.4]})
    fig = vm.conflict_figure(results)
    assert fig.layout.yaxis.tickvals == (0.2, 0.5, 1.0)
    sweep = pd.DataFrame({"tau": [0.1, 1.0, 10.0, 100.0], "average": [1.0] * 4, "worst": [2.0, 1.9, 1.8, 1.7]})
    tau = vm.tau_figure(sweep, reference={"uniform": 1.80, "pike": 1.82})
    assert tau.layout.xaxis.tickvals == (0.1, 1.0, 10.0, 100.0)
    positions = [a.yanchor + a.xanchor for a in tau.layout.annotations]
    assert len(set(positions)) == len(positions) == 2


def test_mixing_weights_stay_visible_when_they_coincide():
    h = pd.DataFrame({"step": [1, 2], "weight/prose": [0.25, 0.25], "weight/code": [0.25, 0.25],
                      "weight/rot13": [0.25, 0.25], "weight/arithmetic": [0.25, 0.25]})
    fig = vm.mixing_weights_figure(h)
    lines = [t.line for t in fig.data]
    assert len({ln.dash for ln in lines}) == 4
    assert [ln.width for ln in lines] == sorted((ln.width for ln in lines), reverse=True)  # first drawn, widest


def _widget_tree(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _widget_tree(child)


def _drawn(dash) -> dict:
    (output,) = dash.view.outputs
    return output["data"]["application/vnd.plotly.v1+json"]


def test_dashboards_draw_into_an_output_widget_with_no_anywidget_in_the_tree():
    # go.FigureWidget (an anywidget) drew empty figures that never updated when plotly's
    # 4.9 MB module took > 2 s to load in the browser; the live view is a core Output now
    import anywidget
    import ipywidgets as w

    m = np.array([[1, -0.25], [-0.25, 1]])
    for dash, control, value in [
            (vm.cosine_dashboard([(5, np.eye(2)), (10, m)], ["prose", "code"]), "step", 10),
            (vm.ConflictDashboard(_conflict_results()), "cosine", -1.0)]:
        tree = list(_widget_tree(dash.widget))
        assert not [x for x in tree if isinstance(x, anywidget.AnyWidget)]
        assert dash.view in tree and isinstance(dash.view, w.Output)
        first = _drawn(dash)
        assert first["data"] and first["layout"]["title"]["text"] == dash.figure.layout.title.text
        setattr(getattr(dash, control), "value", value)
        now = _drawn(dash)
        assert now != first
        figure = json.loads(dash.figure.to_json())  # what is drawn is the figure, exactly
        assert (now["data"], now["layout"]) == (figure["data"], figure["layout"])
    heat = _drawn(vm.cosine_dashboard([(5, np.eye(2)), (10, m)], ["prose", "code"]))["data"][0]
    assert heat["type"] == "heatmap"
