"""The "Genes & neighbours" dock: modules (table, written to the model folder), module
scores painted on the sections, a panel saved as CSV, the proximity heatmap and a click
that paints the pair's cells, Cancel, and one message per bad input. Run under a
display: ``xvfb-run -a python -m pytest tests/test_genes_widget.py``; the screenshots'
paths are printed (``NAPARI_BRAINATLAS_DOCS_SCREENSHOTS=1`` also draws the gene UMAP
and refreshes docs/screenshots/genes_*.png)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ._shots import save_shot

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

DOCS = os.environ.get("NAPARI_BRAINATLAS_DOCS_SCREENSHOTS") == "1"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Two small demo sections embedded by a tiny FuseMap; RUN/model and the embedded
    RUN/<name>.h5ad files (what `embed` writes)."""
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.fusemap import FuseMap
    from napari_brainatlas.io import write_h5ad

    secs = make_demo_sections(seed=0, n_sections=2, cells_per_mm2=40)
    model = FuseMap(secs, n_hidden=32, n_latent=8, min_steps=2, device="cpu", seed=0)
    model.train(pretrain_epochs=1, final_epochs=0)
    run = tmp_path_factory.mktemp("run")
    model.save(run / "model")
    out = model.write_embeddings(copy=True)
    for a, name in zip(out, model.section_names):
        write_h5ad(a, run / f"{name}.h5ad")
    return run, out


@pytest.fixture
def genes_dock(make_napari_viewer, embedded):
    from napari.layers import Layer

    from napari_brainatlas.layers import section_layer_data
    from napari_brainatlas.widgets.genes import GenesWidget

    run, sections = embedded
    viewer = make_napari_viewer(show=True)
    x0 = 0.0
    for s in sections:  # side by side
        xy = s.obsm["spatial"]
        shift = (0.0, x0 - float(xy[:, 0].min()))
        viewer.add_layer(Layer.create(*section_layer_data(s.copy(), translate=shift)))
        x0 += float(np.ptp(xy[:, 0])) + 500.0
    widget = GenesWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Genes & neighbours", area="right")
    viewer.window._qt_window.resize(1500, 1000)
    yield viewer, widget, run
    widget.cancel()
    widget.wait_for_workers()


def _wait(qtbot, w, timeout=120000):
    qtbot.waitUntil(lambda: not w.busy, timeout=timeout)


def test_modules_scores_panel_proximity(qtbot, genes_dock, error_notifications, tmp_path):
    viewer, w, run = genes_dock
    assert w.section_list.count() == 2
    assert w.celltype_choice.currentText() == "celltype"
    assert w.region_choice.currentText() == "region"
    # modules: table, files in the model folder
    w.model_edit.setText(str(run / "model"))
    w.umap_box.setChecked(DOCS)
    w.find_button.click()
    _wait(qtbot, w)
    assert not error_notifications, [n.message for n in error_notifications]
    gm = w.session.modules
    assert w.module_table.rowCount() == gm.n_modules >= 2
    assert (run / "model" / "modules.csv").is_file()
    # scores: obs columns in the layers' AnnData, cells coloured by the chosen module
    before = np.array(viewer.layers[0].face_color)
    w.score_button.click()
    _wait(qtbot, w)
    ad = viewer.layers[0].metadata["adata"]
    assert "module_1_score" in ad.obs and "module_1_score" in viewer.layers[0].features
    assert w.module_choice.count() == gm.n_modules
    w.module_choice.setCurrentText(f"module_{gm.n_modules}_score")
    after = np.array(viewer.layers[0].face_color)
    assert not np.array_equal(before, after)
    assert not error_notifications, [n.message for n in error_notifications]
    w.module_choice.setCurrentText("module_1_score")
    viewer.reset_view()
    path = save_shot(viewer.screenshot(canvas_only=False), "genes_modules", "genes_modules")
    print(f"screenshot: {path}")
    # panel: table and CSV
    w.tabs.setCurrentIndex(1)
    gene = gm.genes[0]
    w.panel_size.setValue(10)
    w.include_edit.setText(gene)
    w.panel_button.click()
    _wait(qtbot, w)
    assert w.panel_table.rowCount() == 10 and w.panel_table.item(0, 0).text() == gene
    out = w.save_panel(str(tmp_path / "panel.csv"))
    assert len(pd.read_csv(out)) == 10
    # proximity: heatmap, table, a click paints the pair's cells
    w.tabs.setCurrentIndex(2)
    w.n_shifts.setValue(60)
    w.proximity_button.click()
    _wait(qtbot, w)
    assert not error_notifications, [n.message for n in error_notifications]
    assert w.region_view.count() == len(w.session.regions()) > 1
    assert w.pair_table.rowCount() > 0
    region = w.region_view.currentText()
    row = w.session.table(region).iloc[0]
    m = w.session.heatmap(region)
    i, j = list(m.index).index(row["type_a"]), list(m.columns).index(row["type_b"])
    w._on_heatmap_click(SimpleNamespace(inaxes=True, xdata=float(j), ydata=float(i)))
    _wait(qtbot, w)
    assert w.session.highlighted == (region, row["type_a"], row["type_b"])
    assert w.highlighted_cells > 0
    colours = np.array(viewer.layers[0].face_color)
    red = np.all(np.isclose(colours[:, :3], [1.0, 0.25, 0.2], atol=0.02), axis=1)
    assert red.any() or np.array(viewer.layers[1].face_color)[:, 0].max() == 1.0
    path = save_shot(viewer.screenshot(canvas_only=False), "genes_proximity", "genes_proximity")
    print(f"screenshot: {path}")
    # a table row highlights too
    w._on_table_click(1, 0)
    _wait(qtbot, w)
    assert w.session.highlighted[0] == w.pair_table.item(1, 0).text()


def test_cancel_and_bad_input(qtbot, genes_dock, error_notifications):
    viewer, w, run = genes_dock
    w.find_button.click()  # no model folder
    _wait(qtbot, w)
    assert len(error_notifications) == 1 and "model folder" in str(error_notifications[0].message)
    w.model_edit.setText(str(run))  # a folder, but not a model
    w.panel_button.click()
    _wait(qtbot, w)
    assert len(error_notifications) == 2 and "not a model folder" in str(
        error_notifications[1].message
    )
    w.score_button.click()  # no modules yet: refused at once
    assert "modules first" in w.status.text()
    # Cancel a long proximity run: no result, a quiet status
    w.n_shifts.setValue(100000)
    w.proximity_button.click()
    qtbot.waitUntil(lambda: w.progress.value() > 0, timeout=60000)
    w.cancel_button.click()
    _wait(qtbot, w)
    assert w.session.proximity is None and "cancelled" in w.status.text()
    w.section_list.set_ticked([])
    w.proximity_button.click()
    assert "tick the sections" in w.status.text()
    assert len(error_notifications) == 4
