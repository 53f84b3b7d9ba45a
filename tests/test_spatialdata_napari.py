"""A store our writer made opens in napari-spatialdata (its Interactive viewer links the
element to its annotating table). napari-spatialdata is not a test dependency: the test
runs where it is installed. Run under a display:
``xvfb-run -a python -m pytest tests/test_spatialdata_napari.py``."""

from __future__ import annotations

import pytest

pytest.importorskip("spatialdata")
pytest.importorskip("napari_spatialdata")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui


def test_napari_spatialdata_opens_our_store(qtbot, tmp_path):
    import spatialdata as sd
    from napari_spatialdata import Interactive

    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.io import write_spatialdata

    from ._shots import save_shot

    secs = make_demo_sections(seed=0, n_sections=2, cells_per_mm2=30)
    store = write_spatialdata(secs, tmp_path / "cells.zarr")
    sdata = sd.read_zarr(store)
    it = Interactive(sdata, headless=True)
    viewer = it._viewer
    try:
        name = secs[0].uns["napari_brainatlas"]["section"]
        it.add_element(name, "global")
        qtbot.waitUntil(lambda: len(viewer.layers) > 0, timeout=30000)
        layer = viewer.layers[name]
        assert len(layer.data) == secs[0].n_obs
        table = layer.metadata["adata"]  # napari-spatialdata linked the annotating table
        assert table.shape == secs[0].shape
        assert list(layer.metadata["table_names"]) == [f"table_{name}"]
        save_shot(viewer.screenshot(canvas_only=False, flash=False), "napari_spatialdata_store")
    finally:
        viewer.close()
