"""The AHBA dock widget on the hand-made AHBA fixture (run under Xvfb:
``xvfb-run -a python -m pytest tests/test_ahba_widget.py``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from ._shots import save_shot
from .test_ahba import make_ahba_fixture

pytestmark = pytest.mark.gui


@pytest.fixture
def dock(make_napari_viewer):
    from napari_brainatlas.widgets.ahba import AHBAWidget

    viewer = make_napari_viewer(show=True)
    widget = AHBAWidget(viewer)
    viewer.window.add_dock_widget(widget, name="AHBA", area="right")
    yield viewer, widget
    widget.wait_for_workers()


def _fill(widget, fx, donors=None):
    for d in donors or [fx["donors"]]:
        widget.add_donor(d)
    widget.atlas_edit.setText(str(fx["atlas"]))
    widget.atlas_info_edit.setText(str(fx["atlas_info"]))
    widget.reannot_edit.setText(str(fx["reannotated"]))
    widget.corrected_edit.setText(str(fx["corrected"]))


def test_widget_process_and_show_gene(dock, qtbot, tmp_path, error_notifications):
    from qtpy.QtCore import Qt

    viewer, widget = dock
    fx = make_ahba_fixture(tmp_path / "fx")
    _fill(widget, fx)
    seen = []
    widget.progress.valueChanged.connect(seen.append)
    qtbot.mouseClick(widget.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.result is not None or not widget.busy, timeout=60000)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    assert not error_notifications
    assert widget.result is not None and max(seen) == 100 and len(set(seen)) > 2
    pts = viewer.layers["AHBA samples"]
    img = viewer.layers["AHBA parcels"]
    assert pts.data.shape == (10, 3) and pts.ndim == 3
    assert img.data.shape == (12, 6, 6)
    np.testing.assert_allclose(img.affine.affine_matrix[:3, 3], [-6, -3, -3])
    assert viewer.dims.ndisplay == 3
    # completion lists the genes; choosing one recolours points and repaints parcels
    assert widget._gene_model.stringList()[:3] == ["GA", "GB", "GE"]
    widget.gene_edit.setText("gb")
    qtbot.keyClick(widget.gene_edit, Qt.Key_Return)
    assert pts.metadata["ahba_gene"] == "GB" and img.metadata["ahba_gene"] == "GB"
    want = widget.result.expression["GB"]
    assert img.data[2, 0, 0] == pytest.approx(want.loc[1])
    assert img.data[8, 0, 0] == pytest.approx(want.loc[2])
    assert np.isnan(img.data[0, 0, 0])
    gb = np.asarray(widget.result.samples[:, "GB"].X).ravel()
    lo, hi = int(np.argmin(gb)), int(np.argmax(gb))
    assert not np.allclose(pts.face_color[lo], pts.face_color[hi])
    # points sized by the samples' spacing and capped on screen: no screen-filling discs
    from scipy.spatial import cKDTree

    from napari_brainatlas.widgets.ahba import CANVAS_SIZE_LIMITS

    gap = np.median(cKDTree(pts.data).query(pts.data, k=2)[0][:, 1])
    assert np.all(pts.size <= gap) and tuple(pts.canvas_size_limits) == CANVAS_SIZE_LIMITS
    viewer.reset_view()
    save_shot(viewer.screenshot(canvas_only=False, flash=False), "ahba_fixture")
    img.visible = False  # the samples alone, framed in 3D: small discs, not the canvas
    shot = viewer.screenshot(canvas_only=True, flash=False)
    img.visible = True
    bg = shot[0, 0, :3].astype(int)
    covered = (np.abs(shot[..., :3].astype(int) - bg).sum(-1) > 30).mean()
    assert 0 < covered < 0.05, f"10 samples cover {covered:.1%} of the canvas"


def test_widget_bad_input_is_one_notification(dock, qtbot, tmp_path, error_notifications):
    viewer, widget = dock
    fx = make_ahba_fixture(tmp_path / "fx")
    _fill(widget, fx, donors=[tmp_path / "no-such-donor"])
    widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    assert len(error_notifications) == 1
    msg = str(error_notifications[0].message)
    assert "donor folder not found" in msg and "Traceback" not in msg
    assert "AHBA samples" not in [layer.name for layer in viewer.layers]
    widget.show_gene("GA")  # nothing processed yet: no error, no layer
    assert len(error_notifications) == 1
