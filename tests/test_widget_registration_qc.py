"""The Registration dock's flows of issue 23, driven as a user would (under Xvfb):
QC that shows a wrong plane, the unit warning, a crop skipped by the batch and per-section
overlays, the flip / cutting-angle / start-pose controls, series interpolation and the
QuickNII export.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_brainatlas.register import register_section

from ._regdock import add_sections as _add_sections
from ._regdock import click_midline as _click_midline
from ._regdock import demo_two_sections, open_reg_dock
from ._regdock import left as _left
from ._regdock import load_atlas as _load_atlas
from ._regdock import run as _run
from ._regdock import shot as _shot

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def demo_two():
    return demo_two_sections()


@pytest.fixture
def reg_dock(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    yield from open_reg_dock(make_napari_viewer, qtbot, tmp_path, monkeypatch)


@pytest.fixture
def warnings_seen():
    """Every napari notification of warning severity while the test runs."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    seen = []

    def grab(n):
        if n.severity == NotificationSeverity.WARNING:
            seen.append(str(n.message))

    notification_manager.notification_ready.connect(grab)
    yield seen
    notification_manager.notification_ready.disconnect(grab)


def _ready(viewer, widget, qtbot, sections):
    layers = _add_sections(viewer, [s.copy() for s in sections])
    _load_atlas(qtbot, widget)
    return layers


def _pick(widget, layer, position_um=None, hemisphere=None):
    widget.section_combo.setCurrentText(layer.name)
    truth = layer.metadata["adata"].uns["demo_truth"]
    widget.hemi_combo.setCurrentText(hemisphere or truth["hemisphere"])
    widget.set_position(truth["position_um"] if position_um is None else position_um)
    return truth


# ---------------------------------------------------------------------- QC
def test_wrong_position_shows_in_the_agreement_view(reg_dock, qtbot, demo_two, error_notifications):
    """Registered 1 mm off its plane on purpose, the section's own 'region' labels
    disagree with where its cells landed: lower agreement, red cells, the table says
    which labels; hover, the outline level, the checkerboard."""
    viewer, widget = reg_dock
    (sec,) = _ready(viewer, widget, qtbot, demo_two[:1])
    truth = _pick(widget, sec)
    _click_midline(widget, sec, truth["midline"])
    assert _run(qtbot, widget, widget.register_button)
    right = widget.agreement()
    assert right is not None and right.column == "region" and right.overall > 0.85
    assert all(int(r[2].rstrip("%")) >= 50 for r in widget.agreement_rows())

    widget.set_position(truth["position_um"] + 1000)
    assert _run(qtbot, widget, widget.register_button)
    wrong = widget.agreement()
    assert wrong.overall < right.overall - 0.2
    rows = widget.agreement_rows()
    assert [r[0] for r in rows][:2] == ["Isocortex", "STR"]  # most cells first
    low = [r for r in rows if int(r[2].rstrip("%")) < 50]
    assert low, rows  # the table says which labels landed elsewhere
    assert f"{100 * wrong.overall:.0f}% of" in widget.metrics_label.text()
    assert widget.batch_rows()[0][2] == f"{100 * wrong.overall:.0f}%"
    cells = viewer.layers[f"{sec.name} in atlas"]
    verdict = cells.features["agreement"].to_numpy()
    assert np.mean(verdict == "disagree") > 0.3
    # hover on a disagreeing cell: its id, own label, landed region, verdict
    i = int(np.flatnonzero(verdict == "disagree")[0])
    status = cells.get_status(np.asarray(cells.data)[i], world=False)
    text = str(status["coordinates"]) + str(status.get("value", ""))
    own = sec.metadata["adata"].obs["region"].iloc[i]
    assert "disagree" in text and str(own) in text and cells.features["cell_id"][i] in text
    _shot(viewer, widget, "registration_wrong_position")

    # the outline at the finest level has more edges than at the major divisions
    major = np.asarray(viewer.layers["template outline"].data).sum()
    widget.level_combo.setCurrentText("finest")
    assert np.asarray(viewer.layers["template outline"].data).sum() > major
    widget.level_combo.setCurrentText("major divisions")
    # the checkerboard replaces the cells by the section's labels, tile by tile
    qtbot.mouseClick(widget.checker_button, _left())
    board = viewer.layers["checkerboard"]
    assert board.visible and not cells.visible
    assert board.data.shape == widget.current_slice.labels.shape
    assert len(np.unique(np.asarray(board.data))) > 3
    _shot(viewer, widget, "registration_checkerboard")
    qtbot.mouseClick(widget.checker_button, _left())
    assert cells.visible and not board.visible
    # other labels are compared side by side (consistency)
    widget.set_compare_column("celltype")
    ct = widget.agreement()
    assert ct.mode == "consistency" and "celltype" in cells.features.columns
    widget.set_compare_column(None)
    assert widget.agreement() is None and widget.color_combo.currentText() == "one colour"
    assert not error_notifications, [str(n.message) for n in error_notifications]


def test_unit_warning_and_fitted_scale(reg_dock, qtbot, demo_two, warnings_seen):
    """A section whose coordinates are 0.2 um pixels read as um (pixel size 1): one
    warning with the pixel size to use when it is picked, and a warning on the fitted
    scale after registration."""
    viewer, widget = reg_dock
    s = demo_two[0].copy()
    s.obsm["spatial"] = np.asarray(s.obsm["spatial"], float) / 0.2
    s.uns["napari_brainatlas"] = {**s.uns["napari_brainatlas"], "pixel_size_um": 1.0}
    (sec,) = _add_sections(viewer, [s])
    _load_atlas(qtbot, widget)
    units = [w for w in warnings_seen if "pixel size of about" in w]
    assert len(units) == 1, warnings_seen
    assert "0.2 um" in units[0] and sec.name in units[0]
    assert "pixel size of about 0.2" in widget.status.text()
    # picking it again warns no more
    widget.section_combo.setCurrentText("")
    widget.section_combo.setCurrentText(sec.name)
    assert len([w for w in warnings_seen if "pixel size of about" in w]) == 1
    truth = _pick(widget, sec)
    _click_midline(widget, sec, np.asarray(truth["midline"]) / 0.2)
    assert _run(qtbot, widget, widget.register_button)
    scale = [w for w in warnings_seen if "fitted scale" in w]
    assert len(scale) == 1 and "pixel size of about 0.2" in scale[0], warnings_seen
    assert "implausible" in widget.metrics_label.text()


# ---------------------------------------------------------------------- batch
def test_batch_skips_a_crop_and_overlays_follow_the_section(
    reg_dock, qtbot, demo_two, error_notifications
):
    viewer, widget = reg_dock
    full, hemi = demo_two[0].copy(), demo_two[1].copy()
    xy = np.asarray(full.obsm["spatial"], float)
    c = np.median(xy, axis=0)
    crop = full[(np.abs(xy - c) < 700).all(axis=1)].copy()
    crop.uns["section"] = "S1_crop"
    crop.uns["napari_brainatlas"] = {**full.uns["napari_brainatlas"], "section": "S1_crop"}
    crop.obs["section"] = "S1_crop"
    crop.obs_names = [f"crop_{n}" for n in crop.obs_names]
    layers = _ready(viewer, widget, qtbot, [full, hemi, crop])
    l_full, l_hemi, l_crop = layers
    assert l_crop.name == "S1_crop"
    t_full = _pick(widget, l_full)
    _click_midline(widget, l_full, t_full["midline"])
    assert _run(qtbot, widget, widget.register_button)
    t_hemi = _pick(widget, l_hemi)
    _click_midline(widget, l_hemi, t_hemi["midline"])
    cxy = np.asarray(crop.obsm["spatial"], float)
    _pick(widget, l_crop, t_full["position_um"], "both")
    _click_midline(
        widget, l_crop, [[cxy[:, 0].mean(), cxy[:, 1].min()], [cxy[:, 0].mean(), cxy[:, 1].max()]]
    )
    widget.section_combo.setCurrentText(l_hemi.name)
    widget.set_position(t_hemi["position_um"])
    qtbot.mouseClick(widget.batch_button, _left())
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    rows = {r[0]: r for r in widget.batch_rows()}
    assert rows["S1_crop"][1].startswith("skipped: looks partial"), rows
    assert widget.session.result("S1_crop") is None and "S1_crop in atlas" not in viewer.layers
    assert rows[l_hemi.name][1] == "fitted"
    # only the shown section's overlays are on the template
    shown = {n: viewer.layers[f"{n} in atlas"].visible for n in (l_full.name, l_hemi.name)}
    assert shown == {l_full.name: False, l_hemi.name: True}
    assert not viewer.layers[f"{l_full.name} landmarks"].visible
    widget.section_combo.setCurrentText(l_full.name)
    assert viewer.layers[f"{l_full.name} in atlas"].visible
    assert not viewer.layers[f"{l_hemi.name} in atlas"].visible
    # the status column is elided to fit, the whole reason in its tooltip
    t = widget.batch_table
    assert t.horizontalScrollBar().maximum() == 0
    r = [t.item(i, 0).text() for i in range(t.rowCount())].index("S1_crop")
    assert t.item(r, 1).toolTip().startswith("skipped: looks partial")
    _shot(viewer, widget, "registration_batch")
    assert not error_notifications, [str(n.message) for n in error_notifications]


# ---------------------------------------------------------------------- peer controls
def test_flip_angles_and_start_pose(reg_dock, qtbot, demo_two, error_notifications):
    from napari_brainatlas.register.slices import atlas_slice
    from napari_brainatlas.workflows.register_pose import StartPose, placement

    viewer, widget = reg_dock
    l_full, l_hemi = _ready(viewer, widget, qtbot, demo_two)
    ad = l_full.metadata["adata"]
    truth = _pick(widget, l_full)
    _click_midline(widget, l_full, truth["midline"])
    # flip toggle: the fit is forced mirrored, as the engine's mirrored=True
    widget.flip_combo.setCurrentText("yes")
    assert _run(qtbot, widget, widget.register_button)
    res = widget.result
    assert res.mirrored
    ref = register_section(
        ad,
        widget.atlas,
        "coronal",
        truth["position_um"],
        "both",
        midline=truth["midline"],
        mirrored=True,
        section_name=l_full.name,
    )
    assert np.allclose(res.affine, ref.affine, atol=1e-6)
    widget.flip_combo.setCurrentText("auto")
    # cutting angles: the template follows the spin boxes at once, the fit uses them
    widget.angle_x_spin.setValue(3.0)
    widget.angle_y_spin.setValue(-2.0)
    want = atlas_slice(widget.atlas, "coronal", truth["position_um"], "both", (3.0, -2.0))
    assert np.array_equal(np.asarray(viewer.layers["template"].data), want.labels)
    assert "angles 3/-2 deg" in widget.status.text()
    assert _run(qtbot, widget, widget.register_button)
    assert list(widget.result.angles_deg) == [3.0, -2.0] and not widget.result.mirrored
    ref = register_section(
        ad,
        widget.atlas,
        "coronal",
        truth["position_um"],
        "both",
        midline=truth["midline"],
        angles_deg=(3.0, -2.0),
        section_name=l_full.name,
    )
    assert np.allclose(widget.result.affine, ref.affine, atol=1e-6)

    # start pose of the hemisection (no midline drawn): turned by the spin box, previewed
    # over the template, and the fit starts from it
    t2 = _pick(widget, l_hemi)
    assert widget.angle_x_spin.value() == 0.0  # the angles are the section's own
    assert f"{l_hemi.name} in atlas" not in viewer.layers
    widget.rotation_spin.setValue(-t2["rotation_deg"])
    prev = viewer.layers[f"{l_hemi.name} in atlas"]
    xy = np.asarray(l_hemi.metadata["adata"].obsm["spatial"], float)
    M = placement(
        xy,
        widget.atlas,
        "coronal",
        t2["position_um"],
        "left",
        (0, 0),
        StartPose(-t2["rotation_deg"], 1.0),
    )
    assert np.allclose(np.asarray(prev.data)[:, ::-1], xy @ M[:2, :2].T + M[:2, 2])
    assert "start pose preview" in widget.status.text()
    assert _run(qtbot, widget, widget.register_button)
    res = widget.result
    assert any(n.startswith("start pose") for n in res.notes)
    err = np.linalg.norm(
        res.to_ccf(xy, widget.atlas) - l_hemi.metadata["adata"].obsm["ccf_coords_true"], axis=1
    )
    assert np.median(err) < 150.0 and res.confidence > 0.5
    _shot(viewer, widget, "registration_pose")
    assert not error_notifications, [str(n.message) for n in error_notifications]


def test_series_interpolation_and_quicknii_export(
    reg_dock, qtbot, error_notifications, tmp_path, monkeypatch
):
    from qtpy.QtWidgets import QFileDialog

    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.io.quicknii import quicknii_target, section_frame, voxel_to_ccf

    viewer, widget = reg_dock
    series = make_demo_sections(seed=0, n_sections=4, cells_per_mm2=60)
    layers = _ready(viewer, widget, qtbot, series)
    for ly in layers:  # each section: its hemisphere and its midline
        t = _pick(widget, ly)
        _click_midline(widget, ly, t["midline"])
    for ly in (layers[0], layers[3]):  # the two ends placed by hand
        _pick(widget, ly)
        assert _run(qtbot, widget, widget.register_button)
    qtbot.mouseClick(widget.series_button, _left())
    qtbot.waitUntil(lambda: not widget.busy, timeout=120000)
    rows = {r[0]: r for r in widget.batch_rows()}
    plan = widget._series_plan
    for ly in layers[1:3]:
        assert rows[ly.name][1] == "fitted (interpolated)", rows
        res = widget.session.result(ly.name)
        pos, ang = plan.plane_of(ly.name)
        assert res.position_um == pytest.approx(pos) and tuple(res.angles_deg) == ang
        truth = ly.metadata["adata"].uns["demo_truth"]["position_um"]
        assert abs(res.position_um - truth) < 600
    # QuickNII / VisuAlign export of the four, through its dialog
    monkeypatch.setattr(
        QFileDialog, "getSaveFileName", lambda *a, **k: (str(tmp_path / "series.json"), "")
    )
    qtbot.mouseClick(widget.export_button, _left())
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    doc = json.loads((tmp_path / "series.json").read_text())
    assert [s["nr"] for s in doc["slices"]] == [1, 2, 3, 4]
    assert all((tmp_path / s["filename"]).exists() for s in doc["slices"])
    s3 = doc["slices"][2]
    res = widget.session.result(layers[2].name)
    xy = np.asarray(layers[2].metadata["adata"].obsm["spatial"], float)
    fr = section_frame(xy)
    st = fr.to_px(xy[:50]) / [fr.width, fr.height]
    o, u, v = np.split(np.asarray(s3["anchoring"]), 3)
    got = voxel_to_ccf(o + st[:, :1] * u + st[:, 1:] * v, quicknii_target(widget.atlas))
    assert np.allclose(got, res.to_ccf(xy[:50], widget.atlas), atol=1e-6)
    assert "series.json" in widget.status.text()
    assert not error_notifications, [str(n.message) for n in error_notifications]
