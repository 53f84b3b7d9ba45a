"""The Annotate dock widget: train on reference demo sections, map the held-out query,
show labels (legend, counts) and uncertainty, impute a gene, bad input as one
notification. Run under a display: ``xvfb-run -a python -m pytest tests/test_annotate_widget.py``."""

from __future__ import annotations

import numpy as np
import pytest

from ._shots import save_shot

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
from qtpy.QtCore import Qt  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def annotate_dock(make_napari_viewer):
    import torch
    from napari.layers import Layer

    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.layers import section_layer_data
    from napari_brainatlas.widgets.annotate import AnnotateWidget

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    viewer = make_napari_viewer(show=True)
    for s in make_demo_sections(seed=0, n_sections=3, cells_per_mm2=30):
        viewer.add_layer(Layer.create(*section_layer_data(s)))
    viewer.add_points(np.zeros((3, 2)), name="not a section")
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Annotate", area="right")
    yield viewer, widget
    widget.cancel()
    widget.wait_for_workers()
    torch.set_num_threads(n)


def _save_screenshot(viewer, name):
    """The whole window after the transfer (see tests/_shots.py)."""
    from qtpy.QtWidgets import QApplication

    viewer.reset_view()
    QApplication.processEvents()
    img = viewer.screenshot(canvas_only=False, flash=False)
    save_shot(img, name)


def _left():
    from qtpy.QtCore import Qt

    return Qt.LeftButton


def test_transfer_show_and_impute(qtbot, annotate_dock, error_notifications):
    viewer, w = annotate_dock
    assert w.reference_list.count() == 3 and w.query_list.count() == 3
    refs, queries = w.reference_layers(), w.chosen_query_layers()
    assert len(refs) == 2 and len(queries) == 1 and queries[0] not in refs
    assert set(w.labels()) == {"celltype", "region"}
    w.epochs.setValue(2)
    qtbot.mouseClick(w.run_button, _left())
    qtbot.waitUntil(lambda: w.mapping is not None and not w.busy, timeout=180000)
    assert not error_notifications, [n.message for n in error_notifications]
    assert w.progress.value() == w.progress.maximum() > 0
    assert "anchored query mapping" in w.status.text()  # anchor in use: no adversary
    _save_screenshot(viewer, "annotate_demo")
    q = queries[0]
    ad = q.metadata["adata"]
    for c in (
        "celltype_transfer",
        "celltype_transfer_uncertainty",
        "region_transfer",
        "region_transfer_uncertainty",
    ):
        assert c in ad.obs and c in q.features.columns
    u = ad.obs["region_transfer_uncertainty"].to_numpy()
    assert np.nanmin(u) >= 0 and np.nanmax(u) <= 1
    acc = (ad.obs["region_transfer"].astype(str) == ad.obs["region"].astype(str)).mean()
    assert acc > 0.4
    # labels shown with a legend and a count table
    assert w.shown == "celltype"
    assert w.legend_list.count() == len(w.legend) >= 2
    assert w.count_table.rowCount() == len(w.legend)
    total = sum(int(w.count_table.item(i, 1).text()) for i in range(w.count_table.rowCount()))
    assert total == int(ad.obs["celltype_transfer"].notna().sum())
    fc_label = np.array(q.face_color)
    assert len(np.unique(fc_label, axis=0)) >= 2
    # uncertainty as a colormap
    w.show_combo.setCurrentText("region uncertainty")
    fc_unc = np.array(q.face_color)
    assert w.shown == "region uncertainty" and not np.array_equal(fc_unc, fc_label)
    # impute a gene through the completer's list
    genes = w._gene_model.stringList()
    assert "GAD1" in genes and len(genes) >= ad.n_vars
    w.gene_edit.setText("gad1")
    qtbot.keyClick(w.gene_edit, "\r")
    assert w.wait_for_workers()
    assert w.shown == "imputed_GAD1" and "imputed_GAD1" in ad.obs
    assert not np.array_equal(np.array(q.face_color), fc_unc)
    assert not error_notifications
    # an unknown gene: one notification
    assert not w.impute("NOT_A_GENE")
    assert len(error_notifications) == 1
    del viewer


def test_bad_input_is_one_notification(qtbot, annotate_dock, error_notifications, tmp_path):
    _viewer, w = annotate_dock
    for i in range(w.query_list.count()):  # no query ticked
        w.query_list.item(i).setCheckState(Qt.CheckState.Unchecked)
    assert w.run() is None
    assert len(error_notifications) == 1 and "query" in str(error_notifications[0].message)
    w.query_list.item(2).setCheckState(Qt.CheckState.Checked)
    w.model_edit.setText(str(tmp_path / "no_model"))
    assert w.run() is None
    assert len(error_notifications) == 2
    w.model_edit.setText("")
    w.set_labels(["no_such_label"])  # not offered: nothing ticked
    assert w.labels() == []
    assert w.run() is None
    assert len(error_notifications) == 3
    assert not w.busy
