"""The Registration dock widget, driven as a user would, on demo sections and on a
section cut from the real Allen CCFv3 (50 um).

Run under a display: ``xvfb-run -a python -m pytest tests/test_widget_registration.py``.
The flows of issue 23 are in test_widget_registration_qc.py.
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

from ._regdock import add_sections as _add_sections
from ._regdock import click_midline as _click_midline
from ._regdock import demo_two_sections, open_reg_dock
from ._regdock import left as _left
from ._regdock import load_atlas as _load_atlas
from ._regdock import run as _run
from ._regdock import shot as _shot

pytestmark = pytest.mark.gui

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def demo_two():
    return demo_two_sections()


@pytest.fixture
def reg_dock(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    yield from open_reg_dock(make_napari_viewer, qtbot, tmp_path, monkeypatch)


# ---------------------------------------------------------------------- demo flow
def test_demo_flow(reg_dock, qtbot, demo_two, error_notifications, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    from napari_brainatlas.widgets.registration._overlays import AGREEMENT_COLORS

    viewer, widget = reg_dock
    sections = [s.copy() for s in demo_two]
    layers = _add_sections(viewer, sections)
    assert layers[1].translate[-1] != 0  # laid out side by side: clicks must be converted
    _load_atlas(qtbot, widget)
    assert "template" in viewer.layers and "template outline" in viewer.layers
    tmpl = viewer.layers["template"]
    # Load atlas frames the sections and the template
    x0 = min(float(np.asarray(ly.translate)[-1]) for ly in layers)
    x1 = float(tmpl.translate[-1] + tmpl.data.shape[1] * tmpl.scale[-1])
    assert x0 < viewer.camera.center[-1] < x1
    # hover text: the features table carries the acronym and name of every label
    feats = tmpl.features
    assert {"index", "acronym", "name"} <= set(feats.columns)
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
    n_layers = len(viewer.layers)

    xy = np.asarray(sections[1].obsm["spatial"])
    _click_midline(widget, sec, truth["midline"])
    assert np.allclose(widget.midline_xy(), truth["midline"])
    n_err = len(error_notifications)
    assert _run(qtbot, widget, widget.register_button)
    res = widget.result
    assert res is not None and len(error_notifications) == n_err
    assert res.confidence > 0.5 and res.converged
    assert len(widget.cost_plot.values) >= 1
    assert widget.progress.value() == res.iterations
    assert "Dice" in widget.metrics_label.text() and "scale" in widget.metrics_label.text()

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

    # few layers, named per section: the section's midline, landmarks, cells in atlas
    new = [ly.name for ly in viewer.layers][n_layers - 2 :]
    assert sorted(new) == sorted(
        ["template", "template outline"]
        + [f"{sec.name} {w}" for w in ("midline", "landmarks", "in atlas")]
    ), new
    # anchors: four on the section, four on the template, numbered, colour-matched
    lm = viewer.layers[f"{sec.name} landmarks"]
    f = lm.features
    a_s = np.flatnonzero((f["kind"] == "anchor") & (f["side"] == "section"))
    a_a = np.flatnonzero((f["kind"] == "anchor") & (f["side"] == "atlas"))
    assert len(a_s) == len(a_a) == 4
    assert list(f["label"].iloc[a_s]) == ["1", "2", "3", "4"]
    assert np.allclose(lm.face_color[a_s], lm.face_color[a_a])
    ov = widget.overlays
    assert np.allclose(ov.world_to_section(ov.world(lm)[a_s], sec), res.anchors_section)
    assert np.allclose(ov.world_to_atlas(ov.world(lm)[a_a]), res.anchors_atlas)
    # markers small next to the atlas slice
    assert lm.size.max() <= 0.015 * widget.current_slice.extent_um[0] + 1e-6
    # cells in atlas: where the fit puts them, coloured by agreement with their own
    # 'region' labels (not by the region they land in), the outline on top
    cells = viewer.layers[f"{sec.name} in atlas"]
    assert np.allclose(np.asarray(cells.data)[:, ::-1], res.transform(xy))
    assert widget.compare_column == "region" and widget.color_combo.currentText() == "agreement"
    allowed = np.array(list(AGREEMENT_COLORS.values()))
    fc = np.asarray(cells.face_color)
    assert np.all(np.isclose(fc[:, None, :], allowed[None]).all(axis=2).any(axis=1))
    assert {"cell_id", "region", "landed region", "agreement"} <= set(cells.features.columns)
    names = [ly.name for ly in viewer.layers]
    assert names.index("template outline") > names.index(cells.name)
    _shot(viewer, widget, "registration_demo", docs=True)

    # bad midlines: identical points, points outside the tissue -> one notification
    # each, no traceback, the fit kept
    for bad in ([xy[0], xy[0] + 1e-9], xy.max(0) + [[5e4, 5e4], [6e4, 7e4]]):
        widget.set_midline(np.asarray(bad, float))
        n0 = len(error_notifications)
        qtbot.mouseClick(widget.register_button, _left())
        qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
        qtbot.wait(50)
        assert len(error_notifications) == n0 + 1, [str(n.message) for n in error_notifications]
        assert widget.result is res
    assert widget.register_button.isEnabled()
    n_err = len(error_notifications)
    widget.set_midline(truth["midline"])

    # colour by the landed region on request only
    widget.color_combo.setCurrentText("landed region")
    assert not np.allclose(np.asarray(cells.face_color), fc)
    widget.color_combo.setCurrentText("agreement")

    # blink toggles the cells' visibility with a timer
    seen = set()
    widget.blink_button.setChecked(True)
    qtbot.waitUntil(lambda: seen.add(cells.visible) or len(seen) == 2, timeout=5000)
    widget.blink_button.setChecked(False)
    assert cells.visible

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
    row = {r[0]: r for r in widget.batch_rows()}[sec.name]
    assert row[1] == "accepted" and row[2].endswith("%")

    # Save state: a file dialog opening in the user's registrations folder (never beside
    # the data); the file carries the atlas name and version
    asked = {}

    def save_dialog(parent, caption, start, filters):
        asked["start"] = start
        return str(tmp_path / "chosen.registration.json"), filters

    monkeypatch.setattr(QFileDialog, "getSaveFileName", save_dialog)
    qtbot.mouseClick(widget.save_button, _left())
    start = Path(asked["start"])
    assert start.parent == tmp_path / "user_states" / "demo"
    assert start.name == f"{sec.name}.registration.json"
    p = tmp_path / "chosen.registration.json"
    doc = json.loads(p.read_text())
    assert doc["atlas"] == "demo" and doc["atlas_version"] == widget.atlas.version
    assert np.allclose(doc["result"]["affine"], res.affine)

    # drag one anchor (the atlas side) and Re-fit: the fit changes
    moved = np.asarray(lm.data).copy()
    moved[a_a[2]] += [0.0, 400.0]
    lm.data = moved
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
    # Load state through its dialog
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(p), ""))
    qtbot.mouseClick(widget.load_button, _left())
    assert np.allclose(widget.result.affine, res.affine)
    assert widget.session.state(sec.name).status == "loaded"
    # reset: no registration at all
    widget.reset()
    assert widget.result is None and "ccf_coords" not in sec.metadata["adata"].obsm
    assert f"{sec.name} in atlas" not in viewer.layers

    # register the rest: the first section has no midline -> skipped with the reason,
    # not stretched; asked to, it is fitted by the rotation sweep
    widget.section_combo.setCurrentText(layers[0].name)
    widget.hemi_combo.setCurrentText("both")
    widget.set_position(sections[0].uns["demo_truth"]["position_um"])
    widget.section_combo.setCurrentText(sec.name)
    widget.hemi_combo.setCurrentText(truth["hemisphere"])
    qtbot.mouseClick(widget.batch_button, _left())
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    rows = {r[0]: r for r in widget.batch_rows()}
    assert rows[layers[0].name][1].startswith("skipped: no midline"), rows
    assert rows[sec.name][1] == "fitted"
    assert widget.session.result(layers[0].name) is None
    widget.no_midline_check.setChecked(True)
    qtbot.mouseClick(widget.batch_button, _left())
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    rows = {r[0]: r for r in widget.batch_rows()}
    assert rows[layers[0].name][1] == "fitted", rows
    assert float(rows[layers[0].name][4]) >= 0.0
    # the table fits its width: no horizontal scrolling
    qtbot.wait(50)
    assert widget.batch_table.horizontalScrollBar().maximum() == 0
    assert not error_notifications[n_err:], [str(n.message) for n in error_notifications]


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
    assert widget.level == "major divisions"
    truth = a.uns["demo_truth"]
    widget.set_position(truth["position_um"])
    tmpl = viewer.layers["template"]
    assert len(np.unique(np.asarray(tmpl.data))) > 50  # the real CCF's many structures
    # the outline is drawn at the major divisions, not at the finest level
    from napari_brainatlas.workflows.register_qc import outline_image

    finest = outline_image(widget.current_slice.labels, widget.atlas.ontology, "finest")
    assert 0 < np.asarray(viewer.layers["template outline"].data).sum() < 0.6 * finest.sum()
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
    slider ``offset_um`` off its true position and the true midline drawn."""
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
