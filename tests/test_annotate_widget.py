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
    qtbot.waitUntil(lambda: w.mapping is not None and not w.busy, timeout=600000)
    assert not error_notifications, [n.message for n in error_notifications]
    assert w.progress.value() == w.progress.maximum() > 0
    assert "anchored query mapping" in w.status.text()  # anchor in use: no adversary
    _save_screenshot(viewer, "annotate_demo")
    q = queries[0]
    ad = q.metadata["adata"]
    # the status says when the labels were read through FuseMap's panel views
    assert w.mapped.sections[0].uns["label_transfer"]["celltype"].get("views") == "panels"
    # region labels (tissue context) read the embedding alone: the status names celltype
    assert "celltype read through the panel views" in w.status.text()
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
    # uncertainty as a colormap with a colour bar
    w.show_combo.setCurrentText("region uncertainty")
    fc_unc = np.array(q.face_color)
    assert w.shown == "region uncertainty" and not np.array_equal(fc_unc, fc_label)
    assert w.colour_bar.isVisible() and w.colour_bar.limits == (0.0, 1.0)
    # impute a gene through the completer's list (the data's spelling)
    genes = w._gene_model.stringList()
    assert "Gad1" in genes and len(genes) >= ad.n_vars
    w.gene_edit.setText("gad1")
    qtbot.keyClick(w.gene_edit, "\r")
    assert w.wait_for_workers()
    assert w.shown == "imputed_Gad1" and "imputed_Gad1" in ad.obs
    assert not np.array_equal(np.array(q.face_color), fc_unc)
    # the panel follows: the imputed gene is what Show says, with its colour bar
    assert w.show_combo.currentText() == "imputed Gad1"
    assert w.colour_bar.isVisible() and w.colour_bar.title.text() == "imputed Gad1"
    assert not w.legend_list.isVisible()
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


# ---------------------------------------------------------------------- issue 23
SMALL = {"min_steps": 5, "n_hidden": 64, "disc_hidden": 32, "n_latent": 16}


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """A small FuseMap model folder over one labelled and one unlabelled demo section
    (the unlabelled one has no celltype columns), the embedded files beside it."""
    import torch

    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.workflows import embed_sections, write_embedding

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    secs = make_demo_sections(seed=0, n_sections=3, cells_per_mm2=30)
    unlabelled = secs[1].copy()
    unlabelled.obs = unlabelled.obs.drop(columns=["celltype", "celltype_main"])
    res = embed_sections([secs[0], unlabelled], epochs=1, device="cpu", seed=0, model_options=SMALL)
    run = tmp_path_factory.mktemp("annotate_run")
    write_embedding(res, run)
    torch.set_num_threads(n)
    return run, secs, res.names


def _dock_with(make_napari_viewer, sections):
    from napari.layers import Layer

    from napari_brainatlas.layers import section_layer_data
    from napari_brainatlas.widgets.annotate import AnnotateWidget

    viewer = make_napari_viewer(show=True)
    for s in sections:
        viewer.add_layer(Layer.create(*section_layer_data(s)))
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Annotate", area="right")
    return viewer, widget


def test_model_folder_with_a_mixed_label_reference(
    qtbot, make_napari_viewer, model_run, error_notifications
):
    """A model over one labelled and one unlabelled section: the dock lists the model's
    label columns (celltype: 1 of 2 sections), nothing silently, and the transfer learns
    cell types from the labelled section."""
    import torch

    torch.set_num_threads(1)
    run, secs, names = model_run
    viewer, w = _dock_with(make_napari_viewer, [secs[2]])
    w.reference_list.set_ticked([])
    w.query_list.set_ticked([w.query_list.item(0).text()])
    assert w.label_list.count() == 0  # nothing offered before the model is read
    w.model_edit.setText(str(run / "model"))
    w._inspect_model()
    assert w.wait_for_workers()
    offered = w.offered_labels()
    assert offered["celltype"] == (1, 2) and offered["region"] == (2, 2)
    items = [w.label_list.item(i).text() for i in range(w.label_list.count())]
    assert "celltype  (1 of 2 sections)" in items
    assert set(w.labels()) == {"celltype", "region"}  # visible ticks
    w.epochs.setValue(1)
    qtbot.mouseClick(w.run_button, _left())
    qtbot.waitUntil(lambda: not w.busy, timeout=180000)
    assert not error_notifications, [n.message for n in error_notifications]
    ad = w.query_layers[0].metadata["adata"]
    assert ad.obs["celltype_transfer"].notna().all()
    assert f"celltype learnt from {names[0]} (1 of 2 reference sections)" in w.status.text()
    _save_screenshot(viewer, "annotate_mixed_labels")


def test_impute_without_a_transfer(qtbot, make_napari_viewer, model_run, error_notifications):
    """Impute straight away: the query is mapped onto the model folder, the gene keeps
    the data's spelling, a colour bar shows its range, and the mapping is reused."""
    import torch

    torch.set_num_threads(1)
    run, secs, _names = model_run
    viewer, w = _dock_with(make_napari_viewer, [secs[2]])
    w.reference_list.set_ticked([])
    w.query_list.set_ticked([w.query_list.item(0).text()])
    w.model_edit.setText(str(run / "model"))
    w._inspect_model()
    assert w.wait_for_workers()
    assert "Slc17a7" in w._gene_model.stringList()
    w.epochs.setValue(1)
    w.gene_edit.setText("SLC17A7")
    qtbot.mouseClick(w.impute_button, _left())
    qtbot.waitUntil(lambda: not w.busy, timeout=180000)
    assert not error_notifications, [n.message for n in error_notifications]
    q = w.query_layers[0]
    ad = q.metadata["adata"]
    assert "imputed_Slc17a7" in ad.obs and "imputed_SLC17A7" not in ad.obs
    assert np.isfinite(ad.obs["imputed_Slc17a7"]).all()
    assert "X_fusemap_cell" in ad.obsm and w.mapped is not None
    assert w.show_combo.currentText() == "imputed Slc17a7"
    assert w.colour_bar.isVisible() and "Slc17a7" in w.colour_bar.text()
    _save_screenshot(viewer, "annotate_impute_no_transfer")
    mapping = w.mapping
    w.impute("gad1")  # a second gene: the same mapping, no mapping again
    assert w.wait_for_workers()
    assert w.mapping is mapping and "imputed_Gad1" in ad.obs
    items = [w.show_combo.itemText(i) for i in range(w.show_combo.count())]
    assert items == ["imputed Slc17a7", "imputed Gad1"]


def test_few_shared_genes_warn(qtbot, make_napari_viewer, model_run):
    """A query sharing 3 genes with the model: one warning that says so."""
    import torch
    from napari.utils.notifications import NotificationSeverity, notification_manager

    torch.set_num_threads(1)
    run, secs, _names = model_run
    few = secs[2][:, ["Slc17a7", "Gad1", "Mbp"]].copy()
    _viewer, w = _dock_with(make_napari_viewer, [few])
    seen = []
    grab = seen.append
    notification_manager.notification_ready.connect(grab)
    try:
        w.reference_list.set_ticked([])
        w.query_list.set_ticked([w.query_list.item(0).text()])
        w.model_edit.setText(str(run / "model"))
        w._inspect_model()
        assert w.wait_for_workers()
        w.epochs.setValue(1)
        w.impute("Gad1")
        assert w.wait_for_workers(180000)
    finally:
        notification_manager.notification_ready.disconnect(grab)
    warns = [n.message for n in seen if n.severity == NotificationSeverity.WARNING]
    assert any("shares only 3 of its 3 genes" in m for m in warns), [n.message for n in seen]
    assert "Warning: section" in w.status.text()


def test_one_epochs_default_and_early_stopping_said(
    qtbot, make_napari_viewer, model_run, error_notifications
):
    """Annotate, Embed and the CLI start from one default number of epochs (the
    settings'); a mapping that early stopping ends says so in the status line and the
    progress bar, which moved (a busy bar with the time) before the first epoch."""
    import torch

    from napari_brainatlas.cli import build_parser
    from napari_brainatlas.fusemap.settings import FuseMapSettings
    from napari_brainatlas.widgets.embed import EmbedWidget

    torch.set_num_threads(1)
    default = FuseMapSettings().epochs
    run, secs, _names = model_run
    viewer, w = _dock_with(make_napari_viewer, [secs[2]])
    assert w.epochs.value() == default
    assert EmbedWidget(viewer).epochs.value() == default
    for argv in (
        ["embed", "x.h5ad", "--out", "o"],
        ["transfer", "--model", "m", "--query", "q.h5ad", "--labels", "region", "--out", "o"],
        ["impute", "--model", "m", "--data", "d.h5ad", "--genes", "Gad1", "--out", "o"],
    ):
        assert build_parser().parse_args(argv).epochs is None  # the workflows' default
    w.reference_list.set_ticked([])
    w.query_list.set_ticked([w.query_list.item(0).text()])
    w.model_edit.setText(str(run / "model"))
    w._inspect_model()
    assert w.wait_for_workers()
    w.set_labels(["region"])
    w.epochs.setValue(40)  # room for the validation loss to flatten on this small query
    bars = []
    w.job_progress.connect(lambda d, n, info: bars.append((d, w.progress.text())))
    qtbot.mouseClick(w.run_button, _left())
    assert w.progress.maximum() == 0 and w.progress.text().startswith("starting")
    qtbot.waitUntil(lambda: not w.busy, timeout=180000)
    assert not error_notifications, [n.message for n in error_notifications]
    done = [d for d, _t in bars if d > 0]
    assert done and "ETA" in next(t for d, t in bars if d > 0)
    last = max(done)
    assert last < 40, "the demo mapping ran all 40 epochs"
    said = f"query mapping stopped at epoch {last} of 40: validation loss flat"
    assert said in w.status.text(), w.status.text()
    assert "(early stopping)" in w.progress.text()
