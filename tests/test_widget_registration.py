"""The Registration dock widget, driven as a user would, on demo sections and on a
section cut from the real Allen CCFv3 (50 um).

Run under a display: ``xvfb-run -a python -m pytest tests/test_widget_registration.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_brainatlas.register import apply_registration, register_section

from ._shots import save_shot

pytestmark = pytest.mark.gui

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _left():
    from qtpy.QtCore import Qt

    return Qt.LeftButton


@pytest.fixture(scope="module")
def demo_two():
    from napari_brainatlas.demo import make_demo_sections

    return make_demo_sections(seed=0, n_sections=2, cells_per_mm2=100)


@pytest.fixture
def reg_dock(make_napari_viewer, qtbot):
    from napari_brainatlas.widgets.registration import RegistrationWidget

    viewer = make_napari_viewer(show=True)
    widget = RegistrationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Registration", area="right")
    viewer.window._qt_window.resize(1600, 1000)
    yield viewer, widget
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)


def _add_sections(viewer, sections, offsets=None):
    from napari.layers import Layer

    from napari_brainatlas.layers import section_layer_data, tile_offsets

    offsets = offsets or tile_offsets(sections)
    layers = []
    for s, off in zip(sections, offsets):
        data, kw, lt = section_layer_data(s, name=s.uns.get("section"), translate=off)
        layers.append(viewer.add_layer(Layer.create(data, kw, lt)))
    return layers


def _load_atlas(qtbot, widget, spec="demo", ontology=""):
    widget.atlas_edit.setText(str(spec))
    widget.ontology_edit.setText(str(ontology))
    qtbot.mouseClick(widget.load_atlas_button, _left())
    qtbot.waitUntil(lambda: widget.atlas is not None and not widget.busy, timeout=60000)


def _click_midline(widget, layer, midline_xy):
    """The user's two clicks: the true midline as world (y, x) = data + translate."""
    qtb = widget.midline_button
    qtb.click()
    mid = widget.midline_layer()
    assert mid is not None and mid.name == f"{layer.name} midline"
    world = np.asarray(midline_xy, float)[:, ::-1] + np.asarray(layer.translate)[-2:]
    mid.data = world
    return mid


def _run(qtbot, widget, button):
    n = len(widget.session.results())
    before = widget.result
    qtbot.mouseClick(button, _left())
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    return widget.result is not before or len(widget.session.results()) != n


# ---------------------------------------------------------------------- demo flow
def test_demo_flow(reg_dock, qtbot, demo_two, error_notifications, tmp_path):
    viewer, widget = reg_dock
    sections = [s.copy() for s in demo_two]
    layers = _add_sections(viewer, sections)
    assert layers[1].translate[-1] != 0  # laid out side by side: clicks must be converted
    _load_atlas(qtbot, widget)
    assert "template" in viewer.layers and "template outline" in viewer.layers
    tmpl = viewer.layers["template"]
    # hover text: the features table carries the acronym and name of every label
    feats = tmpl.features
    assert {"index", "acronym", "name"} <= set(feats.columns)
    # region name in the status bar when hovering a labelled pixel
    rows, cols = np.nonzero(np.asarray(tmpl.data) > 0)
    rc = np.array([rows[len(rows) // 2], cols[len(cols) // 2]])
    lid = int(np.asarray(tmpl.data)[rc[0], rc[1]])
    status = tmpl.get_status(rc, world=False)
    acr = widget.atlas.ontology.acronym(lid)
    assert acr in status["value"] or acr in status["coordinates"]

    # the second section (a left hemisection) with the slider at its position
    sec = layers[1]
    truth = sec.metadata["adata"].uns["demo_truth"]
    widget.section_combo.setCurrentText(sec.name)
    widget.hemi_combo.setCurrentText(truth["hemisphere"])
    widget.set_position(truth["position_um"])
    assert widget.position_spin.value() == int(truth["position_um"])
    assert tmpl.data.shape == widget.current_slice.labels.shape

    xy = np.asarray(sections[1].obsm["spatial"])
    # the true midline, then Register
    mid = _click_midline(widget, sec, truth["midline"])
    assert f"{sec.name} midline line" in viewer.layers
    assert np.allclose(widget.midline_xy(), truth["midline"])
    n_err = len(error_notifications)
    assert _run(qtbot, widget, widget.register_button)
    res = widget.result
    assert res is not None and len(error_notifications) == n_err
    assert res.confidence > 0.5 and res.converged
    assert len(widget.cost_plot.values) >= 1
    assert widget.progress.value() == res.iterations
    assert "Dice" in widget.metrics_label.text()

    # the engine with the same input gives the same fit
    ref = register_section(
        sections[1],
        widget.atlas,
        "coronal",
        truth["position_um"],
        truth["hemisphere"],
        midline=truth["midline"],
        section_name=sec.name,
    )
    assert np.allclose(res.affine, ref.affine, atol=1e-6)

    # anchors: four on the section, four on the template, numbered, colour-matched
    a_s = viewer.layers[f"{sec.name} anchors (section)"]
    a_a = viewer.layers[f"{sec.name} anchors (atlas)"]
    assert len(a_s.data) == len(a_a.data) == 4
    assert list(a_s.text.values) == ["1", "2", "3", "4"]
    assert np.allclose(a_s.face_color, a_a.face_color)
    assert np.allclose(widget.overlays.to_section_xy(a_s, sec), res.anchors_section)
    assert np.allclose(widget.overlays.to_atlas_xy(a_a), res.anchors_atlas)
    cells = viewer.layers[f"{sec.name} in atlas"]
    assert np.allclose(np.asarray(cells.data)[:, ::-1], res.transform(xy))
    _shot(viewer, widget, "registration_demo", docs=True)

    # bad midlines: identical points, points outside the tissue, one point -> one
    # notification each, no traceback, the fit kept
    for bad in ([xy[0], xy[0]], xy.max(0) + [[5e4, 5e4], [6e4, 7e4]], [xy[0]]):
        mid.data = np.asarray(bad, float).reshape(-1, 2)[:, ::-1] + np.asarray(sec.translate)
        n0 = len(error_notifications)
        qtbot.mouseClick(widget.register_button, _left())
        qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
        qtbot.wait(50)
        assert len(error_notifications) == n0 + 1, [str(n.message) for n in error_notifications]
        assert widget.result is res
    assert widget.register_button.isEnabled()
    n_err = len(error_notifications)
    mid = _click_midline(widget, sec, truth["midline"])

    # colour toggle: own labels vs atlas regions
    c_atlas = np.asarray(cells.face_color).copy()
    widget.own_labels_check.setChecked(True)
    c_own = np.asarray(viewer.layers[f"{sec.name} in atlas"].face_color)
    assert c_own.shape == c_atlas.shape and not np.allclose(c_own, c_atlas)
    widget.own_labels_check.setChecked(False)

    # blink toggles the cells' visibility with a timer
    seen = set()
    widget.blink_button.setChecked(True)
    qtbot.waitUntil(
        lambda: seen.add(viewer.layers[f"{sec.name} in atlas"].visible) or len(seen) == 2,
        timeout=5000,
    )
    widget.blink_button.setChecked(False)
    assert viewer.layers[f"{sec.name} in atlas"].visible

    # accept: written keys equal the engine's for the same input
    out = widget.accept()
    ref_out = apply_registration(sections[1], ref, widget.atlas)
    got = sec.metadata["adata"]
    assert got is out
    np.testing.assert_allclose(got.obsm["ccf_coords"], ref_out.obsm["ccf_coords"], atol=1e-6)
    assert (got.obs["ccf_id"].to_numpy() == ref_out.obs["ccf_id"].to_numpy()).all()
    assert (got.obs["ccf_acronym"].to_numpy() == ref_out.obs["ccf_acronym"].to_numpy()).all()
    assert sec.name in got.uns["ccf_registration"]
    assert "ccf_acronym" in sec.features.columns
    assert any(r[1] == "accepted" for r in widget.batch_rows())

    # save / load beside the data (here tmp_path)
    p = widget.save_state(tmp_path / "s2.registration.json")
    doc = json.loads(Path(p).read_text())
    assert doc["atlas"] == "demo" and doc["atlas_version"] == widget.atlas.version
    assert np.allclose(doc["result"]["affine"], res.affine)

    # drag one anchor (the atlas side) and Re-fit: the fit changes
    moved = np.asarray(a_a.data).copy()
    moved[2] += [0.0, 400.0]
    a_a.data = moved
    pairs = widget.landmark_pairs()
    assert pairs.shape == (1, 4)
    assert _run(qtbot, widget, widget.refit_button)
    res2 = widget.result
    assert not np.allclose(res2.affine, res.affine, atol=1e-3)
    ref2 = register_section(
        sections[1],
        widget.atlas,
        "coronal",
        res.position_um,
        truth["hemisphere"],
        midline=truth["midline"],
        landmarks=pairs,
        section_name=sec.name,
    )
    assert np.allclose(res2.affine, ref2.affine, atol=1e-6)

    # undo twice: back to the accepted state, then to the first fit before accepting
    assert widget.undo()
    assert widget.result is res
    assert "ccf_coords" in sec.metadata["adata"].obsm
    assert widget.undo()
    assert widget.result is res and "ccf_coords" not in sec.metadata["adata"].obsm
    # load the saved state back
    assert widget.load_state(p) is not None
    assert np.allclose(widget.result.affine, res.affine)
    # reset: no registration at all
    widget.reset()
    assert widget.result is None and "ccf_coords" not in sec.metadata["adata"].obsm
    assert f"{sec.name} in atlas" not in viewer.layers

    # register the rest (both sections now, the first without a midline layer)
    widget.set_position(sections[0].uns["demo_truth"]["position_um"])
    widget.hemi_combo.setCurrentText("both")
    qtbot.mouseClick(widget.batch_button, _left())
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    rows = {r[0]: r for r in widget.batch_rows()}
    assert rows[layers[0].name][1] == "fitted", rows
    assert float(rows[layers[0].name][4]) >= 0.0
    assert not error_notifications[n_err:], [str(n.message) for n in error_notifications]


def _shot(viewer, widget, name, docs=False):
    from qtpy.QtWidgets import QApplication

    viewer.reset_view()
    QApplication.processEvents()
    img = viewer.screenshot(canvas_only=False, flash=False)
    save_shot(img, name, docs_name=name if docs else None)
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    rgb = canvas[..., :3].reshape(-1, 3).astype(int)
    bg = np.median(canvas[[0, 0, -1, -1], [0, -1, 0, -1], :3], axis=0).astype(int)
    fg = np.abs(rgb - bg).sum(axis=1) > 30
    assert fg.mean() > 0.02, f"{name}: canvas looks empty"
    assert len({tuple(c) for c in (rgb[fg] // 16)}) >= 5
    return img


# ---------------------------------------------------------------------- UI stays live
def test_cancel_keeps_ui_alive_and_state(reg_dock, qtbot, demo_two, error_notifications):
    from napari.utils.notifications import notification_manager

    viewer, widget = reg_dock
    s = demo_two[0].copy()
    (sec,) = _add_sections(viewer, [s], [(0.0, 0.0)])
    _load_atlas(qtbot, widget)
    truth = s.uns["demo_truth"]
    widget.set_position(truth["position_um"])
    _click_midline(widget, sec, truth["midline"])
    assert _run(qtbot, widget, widget.register_button)
    first = widget.result

    infos = []
    notification_manager.notification_ready.connect(lambda n: infos.append(str(n.message)))
    ticks = []
    from qtpy.QtCore import QTimer

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start()
    # a slow progress (in the worker thread) makes the run last
    widget.progress_hook = lambda i, c: time.sleep(0.03)
    widget.max_iter_spin.setValue(2000)
    qtbot.mouseClick(widget.register_button, _left())
    assert widget.busy and widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: len(widget.cost_plot.values) >= 3, timeout=30000)
    n_ticks = len(ticks)
    qtbot.wait(200)
    assert len(ticks) > n_ticks  # the event loop runs while the worker fits
    qtbot.mouseClick(widget.cancel_button, _left())
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    timer.stop()
    assert widget.result is first
    assert "registration cancelled" in widget.status.text()
    assert not infos, infos  # quiet: the status line says it, no notification
    assert not error_notifications
    assert widget.register_button.isEnabled()


# ---------------------------------------------------------------------- real CCFv3
def test_ccf50_section(reg_dock, qtbot, error_notifications):
    from napari_brainatlas.atlas import Atlas
    from napari_brainatlas.register import sample_section

    ann = DATA / "ccfv3_annotation" / "annotation_50.nrrd"
    onto = DATA / "ccfv3_ontology" / "structure_tree_safe_2017.csv"
    if not ann.exists() or not onto.exists():
        pytest.skip("CCFv3 50 um annotation not found")
    viewer, widget = reg_dock
    atlas = Atlas.load(ann, ontology=onto)
    a = sample_section(
        atlas,
        "coronal",
        6500.0,
        "both",
        n_cells=6000,
        rotation_deg=37.0,
        scale=1.1,
        offset_um=(3000.0, -1000.0),
        seed=1,
        name="ccf_AP6500",
    )
    layers = _add_sections(viewer, [a], [(500.0, 800.0)])
    sec = layers[0]
    _load_atlas(qtbot, widget, ann, onto)
    assert widget.atlas.name == "annotation_50"
    truth = a.uns["demo_truth"]
    widget.set_position(truth["position_um"])
    tmpl = viewer.layers["template"]
    assert len(np.unique(np.asarray(tmpl.data))) > 50  # the real CCF's many structures
    _click_midline(widget, sec, truth["midline"])
    assert _run(qtbot, widget, widget.register_button)
    res = widget.result
    ref = register_section(
        a,
        widget.atlas,
        "coronal",
        truth["position_um"],
        "both",
        midline=truth["midline"],
        section_name=sec.name,
    )
    assert np.allclose(res.affine, ref.affine, atol=1e-6)
    assert res.metrics["dice"] > 0.9
    widget.accept()
    out = sec.metadata["adata"]
    ref_out = apply_registration(a, ref, widget.atlas)
    np.testing.assert_allclose(out.obsm["ccf_coords"], ref_out.obsm["ccf_coords"], atol=1e-6)
    assert (out.obs["ccf_acronym"].to_numpy() == ref_out.obs["ccf_acronym"].to_numpy()).all()
    err = np.linalg.norm(out.obsm["ccf_coords"] - a.obsm["ccf_coords_true"], axis=1)
    assert np.median(err) < 100.0  # 6,000 cells on a 50 um atlas: about a voxel or two
    _shot(viewer, widget, "registration_ccf50")
    assert not error_notifications


def _demo_section_ready(viewer, widget, qtbot, adata, offset_um):
    """A demo section added and chosen, the demo atlas loaded, its hemisphere set, the
    slider ``offset_um`` off its true position and the true midline clicked."""
    sec = _add_sections(viewer, [adata.copy()])[0]
    truth = sec.metadata["adata"].uns["demo_truth"]
    _load_atlas(qtbot, widget)
    widget.section_combo.setCurrentText(sec.name)
    widget.hemi_combo.setCurrentText(truth["hemisphere"])
    widget.set_position(truth["position_um"] + offset_um)
    _click_midline(widget, sec, truth["midline"])
    return sec, truth


def test_estimate_position_finds_the_plane(reg_dock, qtbot, demo_two, error_notifications):
    """'Estimate position' scans the axis in a worker and moves the slider to the plane."""
    viewer, widget = reg_dock
    _sec, truth = _demo_section_ready(viewer, widget, qtbot, demo_two[0], 1500)  # far off
    qtbot.mouseClick(widget.estimate_button, _left())
    qtbot.waitUntil(lambda: not widget.busy, timeout=120000)
    assert not error_notifications, [n.message for n in error_notifications]
    res = widget.result
    assert res is not None and res.position_estimated
    assert abs(res.position_um - truth["position_um"]) < 300
    assert abs(widget.position_spin.value() - res.position_um) <= 1


def test_quick_plane_search_from_the_dock(reg_dock, qtbot, demo_two, error_notifications):
    """'quick search' is offered once 'refine position' is ticked; Register then runs the
    engine's quick plane search, the same fit as the Python API's (its accuracy is tested
    on the real CCFv3 in test_register_quick_search.py)."""
    viewer, widget = reg_dock
    sec, truth = _demo_section_ready(viewer, widget, qtbot, demo_two[0], 100)
    assert not widget.quick_check.isEnabled()
    qtbot.mouseClick(widget.refine_check, _left())
    assert widget.refine_check.isChecked() and widget.quick_check.isEnabled()
    qtbot.mouseClick(widget.quick_check, _left())
    assert widget.options().kwargs()["plane_search"] == "quick"
    assert _run(qtbot, widget, widget.register_button)
    assert not error_notifications, [n.message for n in error_notifications]
    res = widget.result
    assert any(n.startswith("quick plane search") for n in res.notes)
    ref = register_section(
        sec.metadata["adata"],
        widget.atlas,
        "coronal",
        widget.position_um,
        truth["hemisphere"],
        midline=truth["midline"],
        refine_position=True,
        plane_search="quick",
        max_iter=int(widget.max_iter_spin.value()),
    )
    assert np.allclose(res.affine, ref.affine, atol=1e-6)
    assert ref.position_um == res.position_um
    _shot(viewer, widget, "registration_quick_search")
    # unticking 'refine position' turns the choice off again
    qtbot.mouseClick(widget.refine_check, _left())
    assert not widget.quick_check.isEnabled()
    assert widget.options().kwargs()["plane_search"] == "joint"
