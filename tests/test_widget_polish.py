"""Issue 23's polish of the docks, driven as a user would (run under Xvfb):

* the demo opens on the Sections tab and every tab name is readable (not elided);
* (Show UMAP runs in a worker while the event loop keeps running: in
  tests/test_widget_embed.py, where the UMAP is computed anyway);
* docks added through napari's plugin menu (which hands them a viewer proxy that warns
  about private attributes) use no private napari attribute, also on the fast path.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from ._shots import save_shot

pytestmark = pytest.mark.gui

PRIVATE = "Private attribute access"


def test_demo_opens_on_sections_with_readable_tab_names(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QTabBar

    from napari_brainatlas.widgets.launch import DOCK_WIDGETS, build_demo_viewer

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 950)
    docks = build_demo_viewer(viewer, seed=0)
    qtbot.wait(200)
    titles = [t for _m, _c, t in DOCK_WIDGETS if t in docks]
    bars = [
        b
        for b in docks["Sections"].window().findChildren(QTabBar)
        if b.isVisible() and {b.tabText(i) for i in range(b.count())} & set(titles)
    ]
    assert len(bars) == 1, [b.count() for b in bars]
    bar = bars[0]
    assert bar.tabText(bar.currentIndex()) == "Sections"
    assert not docks["Sections"].visibleRegion().isEmpty()
    assert docks["Annotate"].visibleRegion().isEmpty()  # behind its tab
    assert bar.elideMode() == Qt.ElideNone
    vertical = bar.shape() in (QTabBar.RoundedEast, QTabBar.RoundedWest)
    fm = bar.fontMetrics()
    for i in range(bar.count()):
        text = bar.tabText(i)
        rect = bar.tabRect(i)
        room = rect.height() if vertical else rect.width()
        assert room >= fm.horizontalAdvance(text), f"tab {text!r} is cut"
        assert bar.rect().contains(rect), f"tab {text!r} lies outside the bar"
    assert sorted(bar.tabText(i) for i in range(bar.count())) == sorted(titles)
    save_shot(viewer.screenshot(canvas_only=False, flash=False), "demo_tabs")


def test_plugin_docks_use_no_private_napari_attributes(make_napari_viewer, qtbot, tmp_path):
    """Through napari's plugin menu every dock gets a viewer proxy that warns (a
    FutureWarning) on private attribute access; a large section (fast path: level of
    detail, overview image, direct colours) is loaded, coloured and zoomed."""
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.io import write_h5ad
    from napari_brainatlas.widgets.fastpoints import FAST_THRESHOLD

    big = make_demo_sections(seed=0, n_sections=1, cells_per_mm2=2500)[0]
    assert big.n_obs > FAST_THRESHOLD
    path = write_h5ad(big, tmp_path / "big.h5ad")
    viewer = make_napari_viewer(show=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", FutureWarning)
        docks = {}
        for name in (
            "Sections",
            "Embed (FuseMap)",
            "Annotate (transfer, impute)",
            "Domains (SpaCon)",
            "Human brain (AHBA)",
        ):
            _dw, docks[name] = viewer.window.add_plugin_dock_widget("napari-brainatlas", name)
        s = docks["Sections"]
        assert type(s.viewer).__name__ == "PublicOnlyProxy"  # the plugin context
        s.load(str(path))
        assert s.wait_for_workers(120_000)
        s.color_by_gene("Gad1")
        s.color_by_annotation("region")
        viewer.reset_view()
        s.fast.update_now()
        viewer.camera.zoom = viewer.camera.zoom * 6
        s.fast.update_now()
        qtbot.wait(100)
        (layer,) = s.section_layers()
        assert 0 < s.fast.drawn() <= len(layer.data)
        a = docks["Annotate (transfer, impute)"]
        from napari_brainatlas.widgets._common import paint

        for ly in a.reference_layers() + a.chosen_query_layers():
            paint(ly, np.tile([0.2, 0.4, 0.6, 1.0], (len(ly.data), 1)))
    private = [str(w.message) for w in seen if PRIVATE in str(w.message)]
    assert not private, private
