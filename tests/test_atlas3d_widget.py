"""The 3D atlas dock on the demo: every section registered by the headless pipeline's
registration step, shown in 3D, colour change, region highlight (click and list), the
CCF plane, export. Run under a display:
``xvfb-run -a python -m pytest tests/test_atlas3d_widget.py``; screenshots go where
tests/_shots.py says."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from ._data import CCF50, ONTO_CSV, shared
from ._fixtures import register_demo
from ._shots import save_shot

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def registered_demo():
    from napari_brainatlas.demo import make_demo_sections

    return register_demo(make_demo_sections(seed=0))


@pytest.fixture
def dock(make_napari_viewer, registered_demo):
    from napari.layers import Layer

    from napari_brainatlas.layers import section_layer_data, tile_offsets
    from napari_brainatlas.widgets.atlas3d import Atlas3DWidget

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    secs = [s.copy() for s in registered_demo]
    for s, t in zip(secs, tile_offsets(secs)):
        viewer.add_layer(Layer.create(*section_layer_data(s, translate=t)))
    viewer.add_points(np.zeros((3, 2)), name="not a section")
    widget = Atlas3DWidget(viewer)
    viewer.window.add_dock_widget(widget, name="3D atlas", area="right")
    yield viewer, widget, secs
    widget.wait_for_workers()
    widget.close()


def _shot(viewer, name, docs: bool = False):
    img = viewer.screenshot(canvas_only=False, flash=False)
    return save_shot(img, name, docs_name=name if docs else None)


def _settle(qtbot, w, timeout=120000):
    qtbot.waitUntil(lambda: not w.busy, timeout=timeout)


def test_all_registered_sections_in_3d(qtbot, dock, error_notifications, tmp_path):
    from napari_brainatlas.widgets.atlas3d import CELLS_LAYER, HIGHLIGHT_LAYER, REGIONS_LAYER

    viewer, w, secs = dock
    for ly in list(viewer.layers):  # the 2D sections out of the 3D view
        if ly.name != CELLS_LAYER:
            ly.visible = False
    w.refresh()
    _settle(qtbot, w)
    _settle(qtbot, w)  # the region surfaces follow the cells
    assert not error_notifications, [n.message for n in error_notifications]
    n_cells = sum(s.n_obs for s in secs)
    # the jobs read copies of the cells, never the layers' own sections
    assert not any(a is b for a in w.session.sections for b in secs)
    layer = viewer.layers[CELLS_LAYER]
    assert viewer.dims.ndisplay == 3 and layer.ndim == 3
    pts = w.session.points
    assert pts.n == n_cells  # every registered cell gathered, ONE layer draws them
    # first frame: the motion subset; once the camera rests, all 26k (under the budget)
    qtbot.waitUntil(lambda: w.drawn() == n_cells, timeout=10000)
    np.testing.assert_allclose(
        layer.data[: secs[0].n_obs], secs[0].obsm["ccf_coords"].astype(np.float32)
    )
    w._schedule()  # a camera move: the motion subset while it moves
    assert w.drawn() < n_cells and len(layer.data) == w.drawn()
    np.testing.assert_array_equal(layer.data, pts.coords[w.drawn_indices()])
    w.refine()
    assert REGIONS_LAYER in viewer.layers
    assert len(w._meshes) >= 5  # the major divisions at depth 3
    assert "4 registered section(s)" in w.summary.text()
    viewer.camera.angles = (0, 30, 60)
    viewer.camera.zoom *= 1.2
    p = _shot(viewer, "atlas3d_demo", docs=True)
    print("screenshot", p)

    # colour by a gene every section has: one colormap over all sections
    genes = [w.color_combo.itemText(i) for i in range(w.color_combo.count())]
    gene = next(g for g in genes if g not in secs[0].obs.columns)
    before = pts.rgba.copy()
    w.color_by(gene)
    _settle(qtbot, w)
    assert w.session.points.kind == "continuous" and w.color_combo.currentText() == gene
    assert not np.allclose(pts.rgba, before)
    np.testing.assert_allclose(layer.face_color, pts.rgba[w.drawn_indices()])
    w.color_by("celltype")
    _settle(qtbot, w)
    legend = w.session.points.legend
    assert set(legend) == set().union(*(set(s.obs["celltype"].astype(str)) for s in secs))
    # the shared legend is written to every section in the scverse convention
    assert all("celltype_colors" in s.uns for s in secs)

    # click on the brain: the ray from the top through section S1 (AP 2600 um) in the
    # left hemisphere meets the cortex first
    atlas = w.session.atlas
    sid = w.pick((2600.0, 100.0, 2500.0), (0.0, 1.0, 0.0))
    assert sid == atlas.ontology.id_of("Isocortex") and HIGHLIGHT_LAYER in viewer.layers
    inside = w.session.region_cells(sid)
    assert inside.any()
    w.refine()
    rgba = layer.face_color
    drawn_inside = inside[w.drawn_indices()]
    assert np.all(rgba[~drawn_inside, 3] < 0.5) and np.all(rgba[drawn_inside, 3] == 1.0)
    # the same through the list of regions, and the status names the region
    w.highlight(atlas.ontology.id_of("Isocortex"))
    assert "Isocortex" in w.status.text()
    n_iso = w.session.region_cells(atlas.ontology.id_of("Isocortex")).sum()
    assert f"{n_iso:,} cells" in w.status.text()
    viewer.camera.angles = (0, 30, 60)
    p = _shot(viewer, "atlas3d_highlight", docs=True)
    print("screenshot", p)
    w.highlight(None)

    # the CCF plane: clip to the cells near AP 3600 um (section S2)
    w.set_plane(axis=0, position_um=3600, mode="clip", thickness_um=300)
    near = np.abs(pts.coords[:, 0] - 3600) <= 150
    assert w.drawn() == near.sum() and np.all(np.abs(layer.data[:, 0] - 3600) <= 150)
    p = _shot(viewer, "atlas3d_plane_clip")
    print("screenshot", p)
    w.set_plane(mode="emphasise", position_um=4800)
    w.refine()
    assert w.drawn() == n_cells
    assert "cells within 150 um" in w.status.text()
    p = _shot(viewer, "atlas3d_plane_emphasise")
    print("screenshot", p)
    w.set_plane(mode="off")

    # export the per-cell CCF table
    out = tmp_path / "cells_ccf.csv"
    w.export(out, units="um")
    _settle(qtbot, w)
    table = pd.read_csv(out)
    assert len(table) == n_cells and f"wrote {n_cells:,} cells" in w.status.text()
    assert w.progress.text().startswith("100 %")
    np.testing.assert_allclose(table["x_ccf"], table["ap_um"] / 1000, rtol=1e-5)
    assert (tmp_path / "cells_ccf.json").exists()
    assert not error_notifications, [n.message for n in error_notifications]


def test_no_registered_section_tells_the_user(qtbot, make_napari_viewer, error_notifications):
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.layers import section_layer_data
    from napari_brainatlas.widgets.atlas3d import Atlas3DWidget

    viewer = make_napari_viewer(show=False)
    (s,) = make_demo_sections(seed=0, n_sections=1, cells_per_mm2=20)
    data, kw, _ = section_layer_data(s)
    viewer.add_points(data, **{k: v for k, v in kw.items() if k != "face_color"})
    w = Atlas3DWidget(viewer)
    assert w.refresh() is None
    assert "register sections first" in w.status.text()
    assert not error_notifications
    w.close()


@pytest.fixture
def empty_dock(make_napari_viewer):
    from napari_brainatlas.widgets.atlas3d import Atlas3DWidget

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    widget = Atlas3DWidget(viewer)
    viewer.window.add_dock_widget(widget, name="3D atlas", area="right")
    yield viewer, widget
    widget.cancel()
    widget.wait_for_workers()
    widget.close()


def test_real_ccf_surfaces_show_progress_and_cancel(qtbot, empty_dock, error_notifications):
    """The region surfaces of the real 50 um CCFv3 (31 regions at depth 3, tens of
    seconds): progress per region with an ETA, and Cancel stops them."""
    from napari_brainatlas.atlas import Atlas
    from napari_brainatlas.widgets.atlas3d import REGIONS_LAYER

    viewer, w = empty_dock
    w.session.atlas = Atlas.from_nrrd(shared(CCF50), shared(ONTO_CSV))
    seen = []
    w.job_progress.connect(lambda d, t, i: seen.append((d, t, w.progress.text())))
    w.set_depth(3)
    assert w.busy and w.cancel_button.isEnabled() and not w.export_btn.isEnabled()
    qtbot.waitUntil(lambda: any(d >= 1 for d, _, _ in seen), timeout=180000)
    assert seen[0][0] == 0  # the header ("surfaces of 31 regions ...") before the first
    done, total, text = next(x for x in seen if x[0] >= 1)
    assert total == len(w.session.regions(3)) > 20 and "regions" in text and "ETA" in text
    p = _shot(viewer, "atlas3d_surfaces_progress")
    print("screenshot", p)
    with qtbot.waitSignal(w.job_ended, timeout=60000) as ended:
        w.cancel_button.click()
    assert ended.args == ["region surfaces", "cancelled"]
    assert w.wait_for_workers() and not w.busy and w.export_btn.isEnabled()
    assert REGIONS_LAYER not in viewer.layers and w.meshes == []
    assert w.status.text() == "region surfaces cancelled" and w.progress.text() == "cancelled"
    assert not error_notifications, [n.message for n in error_notifications]


def test_depth_asked_while_building_waits_and_the_latest_wins(qtbot, empty_dock):
    from napari_brainatlas.atlas import make_demo_atlas

    viewer, w = empty_dock
    w.session.atlas = make_demo_atlas()
    assert w.set_depth(3) is not None
    assert w.set_depth(4) is None and w.set_depth(2) is None  # wait; 2 replaces 4
    qtbot.waitUntil(lambda: not w.busy, timeout=120000)
    ids = w.session.regions(2)
    assert sorted(m.structure_id for m in w.meshes) == ids
    assert w.region_combo.count() == len(ids) + 1 and "at depth 2" in w.status.text()


def test_sections_of_an_nrrd_atlas_reopen_it(
    qtbot, make_napari_viewer, error_notifications, tmp_path
):
    """Sections registered to an atlas read from an .nrrd file, with its ontology in
    another folder (not found beside it): the record keeps both files, and the 3D dock
    reopens that atlas from them (a record of the file's stem alone could not). A record
    written before the files were kept still reads (its name, nothing more)."""
    from napari.layers import Layer

    from napari_brainatlas.atlas import Atlas, make_demo_atlas
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.demo.files import write_atlas_files
    from napari_brainatlas.layers import section_layer_data
    from napari_brainatlas.register import RegistrationResult
    from napari_brainatlas.widgets.atlas3d import CELLS_LAYER, Atlas3DWidget

    files = write_atlas_files(make_demo_atlas(), tmp_path / "atlas")
    onto = tmp_path / "trees" / "my_tree.csv"
    onto.parent.mkdir()
    files["ontology"].replace(onto)
    atlas = Atlas.load(files["annotation"], ontology=onto)
    assert atlas.name == "annotation_50um"
    secs = make_demo_sections(seed=0, n_sections=2, cells_per_mm2=40)
    done = register_demo(secs, atlas)
    rec = next(iter(done[0].uns["ccf_registration"].values()))
    assert rec["atlas"] == "annotation_50um"
    assert rec["atlas_source"] == str(files["annotation"].resolve())
    assert rec["atlas_ontology"] == str(onto.resolve())
    res = RegistrationResult.from_uns(rec)
    assert res.atlas_spec() == (str(files["annotation"].resolve()), str(onto.resolve()))
    old = {k: v for k, v in rec.items() if k not in ("atlas_source", "atlas_ontology")}
    assert RegistrationResult.from_uns(old).atlas_spec() == ("annotation_50um", None)

    viewer = make_napari_viewer(show=True)
    for s in done:
        viewer.add_layer(Layer.create(*section_layer_data(s)))
    w = Atlas3DWidget(viewer)
    viewer.window.add_dock_widget(w, name="3D atlas", area="right")
    try:
        w.refresh()
        _settle(qtbot, w)
        _settle(qtbot, w)
        assert not error_notifications, [n.message for n in error_notifications]
        opened = w.session.atlas
        assert opened is not None and opened.name == "annotation_50um"
        assert opened.spec() == (str(files["annotation"].resolve()), str(onto.resolve()))
        assert np.array_equal(opened.annotation, atlas.annotation)
        assert viewer.layers[CELLS_LAYER].data.shape[0] == sum(s.n_obs for s in done)
        first = opened
        w.refresh()  # the same atlas again: kept, not read again
        _settle(qtbot, w)
        assert w.session.atlas is first
    finally:
        w.wait_for_workers()
        w.close()
