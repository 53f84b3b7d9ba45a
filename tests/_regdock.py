"""Helpers of the Registration dock's GUI tests (test_widget_registration*.py): a
docked widget with state files in a temporary user folder, demo sections as layers,
the user's clicks."""

from __future__ import annotations

import numpy as np

from ._shots import save_shot


def demo_two_sections():
    from napari_brainatlas.demo import make_demo_sections

    return make_demo_sections(seed=0, n_sections=2, cells_per_mm2=100)


def open_reg_dock(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """(viewer, RegistrationWidget) docked; a generator for a fixture (cancels its jobs
    at the end)."""
    from napari_brainatlas.widgets.registration import RegistrationWidget

    # state files go to a user folder: a temporary one here
    monkeypatch.setenv("NAPARI_BRAINATLAS_STATE_DIR", str(tmp_path / "user_states"))
    viewer = make_napari_viewer(show=True)
    widget = RegistrationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Registration", area="right")
    viewer.window._qt_window.resize(1600, 1000)
    yield viewer, widget
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)


def left():
    from qtpy.QtCore import Qt

    return Qt.LeftButton


def add_sections(viewer, sections, offsets=None):
    from napari.layers import Layer

    from napari_brainatlas.layers import section_layer_data, tile_offsets

    offsets = offsets or tile_offsets(sections)
    layers = []
    for s, off in zip(sections, offsets):
        data, kw, lt = section_layer_data(s, name=s.uns.get("section"), translate=off)
        layers.append(viewer.add_layer(Layer.create(data, kw, lt)))
    return layers


def load_atlas(qtbot, widget, spec="demo", ontology=""):
    widget.atlas_edit.setText(str(spec))
    widget.ontology_edit.setText(str(ontology))
    qtbot.mouseClick(widget.load_atlas_button, left())
    qtbot.waitUntil(lambda: widget.atlas is not None and not widget.busy, timeout=60000)


def click_midline(widget, layer, midline_xy):
    """'Draw midline', then the user's line from the dorsal to the ventral point (world
    (y, x) = data + translate)."""
    widget.section_combo.setCurrentText(layer.name)
    widget.midline_button.click()
    mid = widget.midline_layer()
    assert mid is not None and mid.name == f"{layer.name} midline" and mid.mode == "add_line"
    world = np.asarray(midline_xy, float)[:, ::-1] + np.asarray(layer.translate)[-2:]
    mid.add_lines([world])
    return mid


def run(qtbot, widget, button):
    n = len(widget.session.results())
    before = widget.result
    qtbot.mouseClick(button, left())
    qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
    return widget.result is not before or len(widget.session.results()) != n


def shot(viewer, widget, name, docs=False):
    from qtpy.QtWidgets import QApplication

    viewer.reset_view()
    QApplication.processEvents()
    img = viewer.screenshot(canvas_only=False, flash=False)
    path = save_shot(img, name, docs_name=name if docs else None)
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    rgb = canvas[..., :3].reshape(-1, 3).astype(int)
    bg = np.median(canvas[[0, 0, -1, -1], [0, -1, 0, -1], :3], axis=0).astype(int)
    fg = np.abs(rgb - bg).sum(axis=1) > 30
    assert fg.mean() > 0.02, f"{name}: canvas looks empty"
    assert len({tuple(c) for c in (rgb[fg] // 16)}) >= 5
    return path
