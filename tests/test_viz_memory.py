"""Memory figures and the footprint dashboard, tested headlessly."""

import base64

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from zoedu.viz import common
from zoedu.viz import memory as vmem

MiB = 2 ** 20


def _compute(batch_size, seq_len):
    act = batch_size * seq_len * 1024.0
    return {"adam": dict(params=4 * MiB, grads=4 * MiB, optimizer=8 * MiB, activations=act),
            "mezo": dict(params=4 * MiB, activations=act / 16)}


def test_footprint_bars_stack_the_categories():
    fig = vmem.footprint_bars(_compute(4, 256))
    names = [t.name for t in fig.data if t.type == "bar"]
    assert names == ["parameters", "gradients", "optimizer state", "activations"]  # 'other' is all zero
    grads = fig.data[1]
    np.testing.assert_allclose(grads.y, [4, 0])
    text = fig.data[-1]
    assert text.text == ("17 MiB", "4.06 MiB")  # 4 + 4 + 8 + 1; 4 + 1/16
    with pytest.raises(ValueError, match="unit"):
        vmem.footprint_bars(_compute(1, 1), unit="furlongs")
    with pytest.raises(ValueError, match="none of the categories"):
        vmem.footprint_bars(pd.DataFrame({"method": ["x"], "bytes": [1]}))


def test_footprint_frame_accepts_real_footprints():
    memory = pytest.importorskip("zoedu.memory")
    fp = memory.Footprint(params=10, grads=20, optimizer=30, activations=40, other=5)
    df = vmem.footprints_frame({"adam": fp})
    assert df.loc[0, "total"] == 105 and df.loc[0, "grads"] == 20


def test_footprint_dashboard_sliders_recompute():
    dash = vmem.FootprintDashboard(_compute, batch_sizes=(1, 4, 16), seq_lens=(64, 512), batch_size=1, seq_len=64)
    assert isinstance(dash.figure, go.Figure)
    act = lambda: np.array([t for t in dash.figure.data if t.name == "activations"][0].y)  # noqa: E731
    np.testing.assert_allclose(act(), np.array([64 * 1024, 64 * 1024 / 16]) / MiB)
    dash.controls["seq_len"].value = 512
    np.testing.assert_allclose(act(), np.array([512 * 1024, 512 * 1024 / 16]) / MiB)
    dash.controls["batch_size"].value = 16
    np.testing.assert_allclose(act(), np.array([16 * 512 * 1024, 16 * 512 * 1024 / 16]) / MiB)
    assert "batch size 16, sequence length 512" in dash.figure.layout.title.text
    with pytest.raises(ValueError, match="batch_size"):
        vmem.FootprintDashboard(_compute, batch_sizes=(1, 2), batch_size=3)


def test_a_dashboard_changed_before_it_is_shown_draws_its_current_figure():
    """The live view (an Output inside the controls' box) shows the figure as of the last
    control change; a slider moved from Python redraws it at once, and showing the dashboard
    redraws it too, so a figure edited directly from Python is not shown stale."""
    dash = vmem.FootprintDashboard(_compute, batch_sizes=(1, 4, 16), seq_lens=(64, 512), batch_size=1, seq_len=64)
    drawn = lambda: dash.view.outputs[0]["data"]["application/vnd.plotly.v1+json"]  # noqa: E731

    def view():  # the drawn activations bars (plotly sends arrays as base64 typed arrays)
        y = [t for t in drawn()["data"] if t.get("name") == "activations"][0]["y"]
        return np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"]) if isinstance(y, dict) else np.asarray(y)

    dash.controls["batch_size"].value = 16
    np.testing.assert_allclose(view(), np.array([16 * 64 * 1024, 16 * 64 * 1024 / 16]) / MiB)
    dash.figure.update_layout(title_text="edited from Python")
    assert drawn()["layout"]["title"]["text"] != "edited from Python"
    bundle = dash._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert drawn()["layout"]["title"]["text"] == "edited from Python"


def _estimates():
    rows = []
    for model, base in (("opt-125m", 0.25e9), ("opt-13b", 26e9), ("opt-66b", 132e9)):
        for method, factor in (("mezo", 1.0), ("adam", 4.0)):
            rows.append(dict(model=model, method=method, total=base * factor))
    return pd.DataFrame(rows)


def test_gpu_capacity_and_fits_table():
    fig = vmem.gpu_capacity_figure(_estimates())
    assert [t.name for t in fig.data] == ["MeZO", "Adam"]
    np.testing.assert_allclose(fig.data[0].y, [0.25, 26, 132])
    # 24, 40, 80 GB lines: plotly.js places shapes at data values on a log axis, annotations
    # at log10 values; each label sits on its line
    assert len(fig.layout.shapes) == 3
    np.testing.assert_allclose(sorted(s.y0 for s in fig.layout.shapes), [24, 40, 80])
    np.testing.assert_allclose(sorted(a.y for a in fig.layout.annotations), np.log10([24, 40, 80]))
    assert vmem.smallest_gpu(30e9) == "40 GB (A100-40G)"
    assert vmem.smallest_gpu(100e9) == "none"
    table = vmem.fits_table_figure(_estimates())
    z = np.array(table.data[0].z)
    # mezo: 0.25 → 24 GB, 26 → 40 GB, 132 → none; adam: 1 → 24, 104 → none, 528 → none
    np.testing.assert_array_equal(z, [[0, 1, 3], [0, 3, 3]])
    with pytest.raises(ValueError, match="gpus"):
        vmem.gpu_capacity_figure(_estimates(), gpus={"broken": 0})


def test_dashboard_slider_labels_are_not_cut():
    dash = vmem.FootprintDashboard(lambda b, t: {"adam": {"params": b * t, "activations": t}})
    for control in dash.controls.values():  # "sequence length", not "sequence …"
        assert control.style.description_width == "initial"


def test_estimate_vs_measure_and_common_helpers():
    data = pd.DataFrame({"method": ["adam", "mezo"], "estimated": [10 * MiB, 3 * MiB], "measured": [11 * MiB, 3 * MiB]})
    fig = vmem.estimate_vs_measure_figure(data)
    adam = [t for t in fig.data if t.name == "Adam"][0]
    assert adam.x == (11.0,) and adam.y == (10.0,)
    assert all("text" not in t.mode for t in fig.data)  # no method names to overlap; the legend names them
    assert common.format_bytes(512) == "512 B" and common.format_bytes(3 * 2 ** 30) == "3 GiB"
    assert common.method_color("IP-SGD") == common.METHOD_COLORS["ipsgd"]
    assert common.method_label("ipsgd") == "IP-SGD"
    with pytest.raises(ValueError, match="fig must be"):
        common.apply_theme("not a figure")
    import plotly.io as pio

    before = pio.renderers.default
    try:
        assert common.setup_notebook(renderer="json") is None
        assert pio.renderers.default == "json" and pio.templates.default == common.TEMPLATE
    finally:
        pio.renderers.default = before


def test_plotly_js_is_embedded_once_per_notebook(monkeypatch):
    """setup_notebook's "notebook" renderer embeds plotly.js (for the static HTML) when it is
    activated; dashboards and figures together must activate it once, not once each."""
    import plotly.io as pio
    import plotly.io._base_renderers as base

    shown = []
    monkeypatch.setattr(base.ipython_display, "display_html", lambda html, raw=True: shown.append(len(html)))
    before = pio.renderers.default
    try:
        common.setup_notebook()
        dash = vmem.FootprintDashboard(lambda b, t: {"adam": {"params": b * t, "activations": t}})
        for _ in range(2):
            bundle = dash._repr_mimebundle_()
            assert "application/vnd.plotly.v1+json" in bundle and "text/html" in bundle
        fig = vmem.footprint_bars({"adam": {"params": 1, "activations": 2}})
        pio.renderers._build_mime_bundle(fig.to_plotly_json())  # what fig.show() does in a notebook
        assert len(shown) == 1 and shown[0] > 1_000_000  # one copy of plotly.js
    finally:
        pio.renderers.default = before
