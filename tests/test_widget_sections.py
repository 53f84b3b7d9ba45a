"""The Sections dock widget on the real public datasets, the demo, and bad input.

Run under a display: ``xvfb-run -a python -m pytest tests/test_widget_sections.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_brainatlas.colors import categorical_colors, continuous_colors
from napari_brainatlas.io import gene_values, read_sections

from ._data import MERFISH, OSMFISH, SLIDESEQ, VISIUM, shared
from ._shots import save_shot
from .bad_inputs import make_bad_files, sha1

pytestmark = pytest.mark.gui


# rel path, cells, genes, label columns that must be features, a gene to colour by
DATASETS = {
    "osmfish": (OSMFISH, 6471, 33, ("ClusterName", "Region"), "Gad2"),
    "merfish": (MERFISH, 750, 134, ("nUMI",), None),
    "slideseq": (SLIDESEQ, 100, 378, (), None),
    "visium": (VISIUM, 49, 1999, ("leiden",), None),
}


def _load(qtbot, widget, path, n_before=0):
    widget.path_edit.setText(str(path))
    qtbot.mouseClick(widget.load_button, _left())
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    qtbot.waitUntil(lambda: len(widget.section_layers()) > n_before, timeout=30000)
    return widget.section_layers()[n_before:]


def _left():
    from qtpy.QtCore import Qt

    return Qt.LeftButton


def _busiest_gene(adata):
    """The measured gene with the most expressing cells (a gene worth looking at)."""
    X = adata.X
    nz = np.asarray((X > 0).sum(axis=0)).ravel()
    return str(adata.var_names[int(np.argmax(nz))])


def _check_canvas(viewer, name: str, min_colours: int = 2) -> np.ndarray:
    """Screenshot the canvas and check it shows cells, not an empty background."""
    viewer.reset_view()
    img = viewer.screenshot(canvas_only=True, flash=False)
    save_shot(img, name)
    rgb = img[..., :3].reshape(-1, 3).astype(int)
    bg = np.median(img[[0, 0, -1, -1], [0, -1, 0, -1], :3], axis=0).astype(int)
    fg = np.abs(rgb - bg).sum(axis=1) > 30
    assert fg.mean() > 0.005, f"{name}: canvas looks empty ({fg.mean():.4f} non-background)"
    colours = {tuple(c) for c in (rgb[fg] // 16)}
    assert len(colours) >= min_colours, f"{name}: only {len(colours)} colours drawn"
    return img


# ---------------------------------------------------------------------- real datasets
@pytest.mark.parametrize("key", list(DATASETS))
def test_load_real_dataset_through_widget(qtbot, sections_dock, key):
    viewer, widget = sections_dock
    rel, n_cells, n_genes, labels, gene = DATASETS[key]
    path = shared(rel)
    before = sha1(path)
    import threading

    main_thread = []
    viewer.layers.events.inserted.connect(
        lambda e: main_thread.append(threading.current_thread() is threading.main_thread())
    )
    (layer,) = _load(qtbot, widget, path)
    assert main_thread == [True]  # the layer was added in the main thread
    ad = layer.metadata["adata"]
    assert len(layer.data) == n_cells and ad.n_obs == n_cells and ad.n_vars == n_genes
    # layer data are (y, x) in um = obsm['spatial'] reversed, every cell kept
    np.testing.assert_allclose(layer.data, ad.obsm["spatial"][:, ::-1])
    feats = layer.features
    assert list(feats["cell_id"]) == list(ad.obs_names)
    for col in labels:
        assert col in feats.columns
    # the table lists the section with its cells and genes
    assert widget.table.rowCount() == 1
    assert widget.table.item(0, 1).text() == layer.name
    assert widget.table.item(0, 2).text() == f"{n_cells:,}"
    assert widget.table.item(0, 3).text() == f"{n_genes:,}"

    # colour by a gene: face colours are the engine's colours, the gene is a hover feature
    gene = gene or _busiest_gene(ad)
    widget.gene_edit.setText(gene)
    qtbot.mouseClick(widget.gene_button, _left())
    clim = widget._color["clim"]
    expect, _ = continuous_colors(
        gene_values(ad, gene), clim=clim, cmap=widget.cmap_combo.currentText()
    )
    np.testing.assert_allclose(layer.face_color, expect, atol=1e-6)
    assert gene in layer.features.columns
    np.testing.assert_allclose(layer.features[gene].to_numpy(), gene_values(ad, gene))
    assert widget.legend_categories() == [gene]
    i = int(np.argmax(gene_values(ad, gene)))
    world = layer.data_to_world(layer.data[i])
    status = layer.get_status(world, world=True)
    assert "cell_id: " in status["coordinates"] and f"{gene}: " in status["coordinates"]
    j = layer.get_value(world, world=True)
    assert j is not None and np.isclose(layer.features[gene].iloc[j], gene_values(ad, gene)[j])
    _check_canvas(viewer, f"{key}_gene_{gene}")

    # contrast limits and colormap recolour in place
    widget.clim_max.setValue(clim[0] + (clim[1] - clim[0]) / 2)
    expect, _ = continuous_colors(
        gene_values(ad, gene),
        clim=(widget.clim_min.value(), widget.clim_max.value()),
        cmap=widget.cmap_combo.currentText(),
    )
    np.testing.assert_allclose(layer.face_color, expect, atol=1e-6)
    widget.cmap_combo.setCurrentText("magma")
    expect, _ = continuous_colors(gene_values(ad, gene), clim=widget._color["clim"], cmap="magma")
    np.testing.assert_allclose(layer.face_color, expect, atol=1e-6)

    # colour by a label column: engine colours and a legend listing the categories
    cat_cols = [c for c in labels if c in widget._labels_union()]
    for col in cat_cols:
        widget.color_by_annotation(col)
        cats = sorted(ad.obs[col].astype(str).unique())
        expect, _ = categorical_colors(ad.obs[col].astype(str).to_numpy(), categories=cats)
        np.testing.assert_allclose(layer.face_color, expect, atol=1e-6)
        assert widget.legend_categories() == cats
        assert gene not in layer.features.columns  # the hover gene column went away
        # select cells by a label value
        value = str(ad.obs[col].astype(str).value_counts().index[0])
        widget.select_column.setCurrentText(col)
        widget.select_value.setCurrentText(value)
        qtbot.mouseClick(widget.select_button, _left())
        want = set(np.flatnonzero(ad.obs[col].astype(str).to_numpy() == value).tolist())
        assert set(layer.selected_data) == want and len(want) > 0
        qtbot.mouseClick(widget.clear_button, _left())
        assert len(layer.selected_data) == 0
    if cat_cols:
        _check_canvas(viewer, f"{key}_label_{cat_cols[0]}", min_colours=3)

    # hide / show through the table's check box, and the other way round
    widget.set_section_visible(0, False)
    assert not layer.visible
    widget.set_section_visible(0, True)
    assert layer.visible
    layer.visible = False
    from qtpy.QtCore import Qt

    assert widget.table.item(0, 0).checkState() == Qt.Unchecked
    layer.visible = True
    assert sha1(path) == before  # the input was only read


def test_numeric_annotation_uses_colormap(qtbot, sections_dock):
    _, widget = sections_dock
    (layer,) = _load(qtbot, widget, shared(MERFISH))
    ad = layer.metadata["adata"]
    i = widget.annotation_combo.findText("nUMI")
    assert i > 0
    widget.annotation_combo.setCurrentIndex(i)
    widget.annotation_combo.activated.emit(i)
    expect, _ = continuous_colors(ad.obs["nUMI"].to_numpy(float))
    np.testing.assert_allclose(layer.face_color, expect, atol=1e-6)
    assert widget.cmap_combo.isEnabled()
    # "(none)" goes back to the default colouring (log total counts for MERFISH)
    by_numi = np.array(layer.face_color)
    widget.color_by_gene(_busiest_gene(ad))
    assert not np.allclose(layer.face_color, by_numi)
    widget.annotation_combo.setCurrentIndex(0)
    widget.annotation_combo.activated.emit(0)
    from napari_brainatlas.layers import color_values

    np.testing.assert_allclose(layer.face_color, color_values(ad, None)[1], atol=1e-6)
    assert widget.legend.count() == 0 and not widget.cmap_combo.isEnabled()
    assert layer.metadata["hover_columns"] == []


def test_two_datasets_gene_missing_in_one_is_grey(qtbot, sections_dock):
    viewer, widget = sections_dock
    (osm,) = _load(qtbot, widget, shared(OSMFISH))
    (mer,) = _load(qtbot, widget, shared(MERFISH), n_before=1)
    assert widget.table.rowCount() == 2
    genes = set(widget._gene_model.stringList())
    assert genes == set(osm.metadata["adata"].var_names) | set(mer.metadata["adata"].var_names)
    only_osm = sorted(set(osm.metadata["adata"].var_names) - set(mer.metadata["adata"].var_names))
    gene = only_osm[0]
    widget.color_by_gene(gene.upper() if gene.upper() not in genes else gene)
    assert np.allclose(mer.face_color, [0.6, 0.6, 0.6, 1.0])
    assert "not measured in" in widget.status.text() and mer.name in widget.status.text()
    assert np.isnan(mer.features[gene].to_numpy()).all()
    # side by side: the two sections do not overlap in the world
    lo0, hi0 = osm.extent.world
    lo1, hi1 = mer.extent.world
    assert hi0[1] <= lo1[1] or hi1[1] <= lo0[1] or hi0[0] <= lo1[0] or hi1[0] <= lo0[0]
    _check_canvas(viewer, "osmfish_merfish_side_by_side")
    # removing a layer removes its row
    viewer.layers.remove(mer)
    assert widget.table.rowCount() == 1


# ---------------------------------------------------------------------- demo
def test_demo_viewer_coloured_by_region(qtbot, make_napari_viewer):
    from napari_brainatlas.widgets.launch import build_demo_viewer

    viewer = make_napari_viewer(show=True)
    docks = build_demo_viewer(viewer, seed=0)
    widget = docks["Sections"]
    layers = widget.section_layers()
    assert len(layers) == 4 and widget.table.rowCount() == 4
    regions = sorted(
        set().union(*(set(ly.metadata["adata"].obs["region"].astype(str)) for ly in layers))
    )
    assert widget.legend_categories() == regions
    for ly in layers:
        ad = ly.metadata["adata"]
        expect, _ = categorical_colors(ad.obs["region"].astype(str).to_numpy(), categories=regions)
        np.testing.assert_allclose(ly.face_color, expect, atol=1e-6)
    _check_canvas(viewer, "demo_region", min_colours=5)
    # full window with the dock, for the README
    viewer.window._qt_window.resize(1400, 900)
    qtbot.wait(100)
    from napari_brainatlas.widgets.launch import _narrow

    _narrow(viewer, viewer.window.dock_widgets["Sections"].parent(), 420)  # the QDockWidget
    qtbot.wait(200)
    viewer.reset_view()
    img = viewer.screenshot(canvas_only=False, flash=False)
    save_shot(img, "demo_region_window", docs_name="sections_demo")  # the README's picture
    assert img.shape[0] > 300 and img.shape[1] > 600


# ---------------------------------------------------------------------- bad input
BAD_CASES = (
    "unreadable",
    "no_coordinates",
    "nan_coordinates",
    "duplicate_genes",
    "zero_cells",
    "non_numeric",
)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_one_notification(qtbot, sections_dock, error_notifications, tmp_path, case):
    viewer, widget = sections_dock
    path, words = make_bad_files(tmp_path)[case]
    before = sha1(path)
    n_layers = len(viewer.layers)
    widget.path_edit.setText(str(path))
    qtbot.mouseClick(widget.load_button, _left())
    qtbot.waitUntil(lambda: len(error_notifications) >= 1, timeout=30000)
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    qtbot.wait(50)
    assert len(error_notifications) == 1, [n.message for n in error_notifications]
    msg = error_notifications[0].message
    assert words.lower() in msg.lower() and "\n" not in msg
    assert len(viewer.layers) == n_layers  # no new layer
    assert sha1(path) == before  # input untouched
    assert widget.load_button.isEnabled()
    # the viewer is still usable: a good file loads afterwards
    (layer,) = _load(qtbot, widget, shared(VISIUM))
    assert len(layer.data) == 49


def test_empty_path_and_unknown_gene_notify(qtbot, sections_dock, error_notifications):
    _, widget = sections_dock
    widget.path_edit.setText("")
    qtbot.mouseClick(widget.load_button, _left())
    assert len(error_notifications) == 1 and not widget.busy
    (layer,) = _load(qtbot, widget, shared(VISIUM))
    before = np.array(layer.face_color)
    widget.color_by_gene("NoSuchGene123")
    assert len(error_notifications) == 2
    assert "NoSuchGene123" in error_notifications[1].message
    np.testing.assert_array_equal(layer.face_color, before)


def test_engine_reads_what_widget_shows(qtbot, sections_dock):
    """The widget adds exactly the sections the engine reads (names and order)."""
    _, widget = sections_dock
    secs = read_sections(shared(VISIUM))
    layers = _load(qtbot, widget, shared(VISIUM))
    assert [ly.metadata["section"] for ly in layers] == [
        s.uns["napari_brainatlas"]["section"] for s in secs
    ]
