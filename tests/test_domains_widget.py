"""The Domains dock widget: train on registered demo sections, alpha recolours, cancel,
errors. Run under a display: ``xvfb-run -a python -m pytest tests/test_domains_widget.py``."""

from __future__ import annotations

import numpy as np
import pytest

from ._shots import save_shot

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def demo_two():
    from napari_brainatlas.demo import make_demo_sections

    return make_demo_sections(seed=0, n_sections=2, cells_per_mm2=30)


def _registered_demo(sections):
    out = []
    for s in (x.copy() for x in sections):
        s.obs["ccf_id"] = s.obs["ccf_id_true"].to_numpy().astype(np.int64)
        s.obs["ccf_acronym"] = s.obs["ccf_acronym_true"].astype(str).to_numpy()
        s.obsm["ccf_coords"] = np.asarray(s.obsm["ccf_coords_true"], float)
        s.uns["ccf_registration"] = {"truth": {"atlas": "demo"}}
        out.append(s)
    return out


@pytest.fixture
def domains_dock(make_napari_viewer, demo_two):
    from napari.layers import Layer

    from napari_brainatlas.layers import section_layer_data
    from napari_brainatlas.widgets.domains import DomainsWidget

    viewer = make_napari_viewer(show=True)
    for s in _registered_demo(demo_two):
        viewer.add_layer(Layer.create(*section_layer_data(s)))
    viewer.add_points(np.zeros((3, 2)), name="not a section")
    widget = DomainsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Domains", area="right")
    yield viewer, widget
    widget.cancel()
    widget.wait_for_workers()


def test_train_then_alpha_recolours(qtbot, domains_dock, error_notifications):
    viewer, w = domains_dock
    assert w.section_list.count() == 2  # the plain Points layer is no section
    w.epochs.setValue(3)
    qtbot.mouseClick(w.train_button, _left())
    qtbot.waitUntil(lambda: w.labels is not None and not w.busy, timeout=120000)
    assert not error_notifications, [n.message for n in error_notifications]
    assert w.progress.value() == w.progress.maximum() > 0 and w.alpha_shown == 0.5
    layers = w.trained_layers
    assert len(layers) == 2
    before = [np.array(ly.face_color) for ly in layers]
    for ly in layers:
        ad = ly.metadata["adata"]
        assert "spacon_domain" in ad.obs and ad.obsm["X_spacon"].shape == (ad.n_obs, 16)
        assert "spacon_domain" in ly.features.columns
        assert len(np.unique(np.array(ly.face_color), axis=0)) >= 2
    weights = {k: v.clone() for k, v in w.model.net.state_dict().items()}
    labels_half = w.labels.copy()
    w.set_alpha(1.0)  # re-mix + re-cluster, no retraining
    qtbot.waitUntil(lambda: w.alpha_shown == 1.0 and not w.busy, timeout=60000)
    assert layers[0].metadata["adata"].uns["spacon"]["alpha"] == 1.0
    assert not np.array_equal(labels_half, w.labels)
    after = [np.array(ly.face_color) for ly in layers]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    import torch

    assert all(torch.equal(weights[k], v) for k, v in w.model.net.state_dict().items())
    viewer.reset_view()
    save_shot(viewer.screenshot(canvas_only=False, flash=False), "domains_demo")


def test_cancel_training(qtbot, domains_dock, error_notifications):
    _viewer, w = domains_dock
    w.epochs.setValue(5000)
    w.train()
    qtbot.waitUntil(lambda: w.progress.value() > 0 or "epoch" in w.status.text(), timeout=60000)
    qtbot.mouseClick(w.cancel_button, _left())
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    assert w.model is None and "cancelled" in w.status.text()
    assert not error_notifications


def test_bad_connectome_is_one_notification(qtbot, domains_dock, error_notifications, tmp_path):
    _viewer, w = domains_dock
    w.connectome_edit.setText(str(tmp_path / "missing.xlsx"))
    w.train()
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    assert len(error_notifications) == 1
    assert "not found" in str(error_notifications[0].message)
    assert w.model is None


def test_no_registered_sections_notifies(qtbot, make_napari_viewer, error_notifications):
    from napari_brainatlas.widgets.domains import DomainsWidget

    viewer = make_napari_viewer()
    w = DomainsWidget(viewer)
    assert w.train() is None
    assert len(error_notifications) == 1 and "register" in str(error_notifications[0].message)


def _left():
    from qtpy.QtCore import Qt

    return Qt.LeftButton
