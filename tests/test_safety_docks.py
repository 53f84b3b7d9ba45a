"""Docks on bad input (issue 28): a corrupt model folder, an output path that cannot be
written and zero-count cells give at most one notification, never NaN, and leave the
viewer usable. Run under a display: ``xvfb-run -a python -m pytest tests/test_safety_docks.py``."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

SMALL = {"min_steps": 5, "n_hidden": 64, "disc_hidden": 32, "n_latent": 16}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A small FuseMap model folder on two demo sections (1 epoch), files beside it, and
    a held-out query section with zero-count cells."""
    import torch

    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.workflows import embed_sections, write_embedding

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    secs = make_demo_sections(seed=0, n_sections=3, cells_per_mm2=30)
    res = embed_sections(secs[:2], epochs=1, device="cpu", seed=0, model_options=SMALL)
    run = tmp_path_factory.mktemp("safety_run")
    write_embedding(res, run)
    query = secs[2].copy()
    X = np.asarray(query.X.toarray() if hasattr(query.X, "toarray") else query.X, np.float32)
    X[::6] = 0  # zero-count cells
    query.X = X
    if "counts" in query.layers:
        query.layers["counts"] = X.copy()
    torch.set_num_threads(n)
    return run, query


def _dock(make_napari_viewer, sections):
    from napari.layers import Layer

    from napari_brainatlas.layers import section_layer_data
    from napari_brainatlas.widgets.annotate import AnnotateWidget

    viewer = make_napari_viewer(show=False)
    for s in sections:
        viewer.add_layer(Layer.create(*section_layer_data(s)))
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Annotate", area="right")
    widget.reference_list.set_ticked([])
    widget.query_list.set_ticked([widget.query_list.item(0).text()])
    widget.epochs.setValue(1)
    return viewer, widget


def test_corrupt_model_folder_one_notification(
    qtbot, make_napari_viewer, small_run, error_notifications, tmp_path
):
    run, query = small_run
    shutil.copytree(run, tmp_path / "run")  # the model and the reference files beside it
    broken = tmp_path / "run" / "model"
    data = (broken / "weights.pt").read_bytes()
    (broken / "weights.pt").write_bytes(data[: len(data) // 2])
    viewer, w = _dock(make_napari_viewer, [query])
    w.model_edit.setText(str(broken))
    w._inspect_model()  # reads config.json and the reference files: all intact
    assert w.wait_for_workers()
    w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=180000)
    assert len(error_notifications) == 1, [n.message for n in error_notifications]
    assert "weights.pt" in str(error_notifications[0].message)
    ad = viewer.layers[0].metadata["adata"]
    assert "celltype_transfer" not in ad.obs  # nothing half-written into the layer
    # the viewer and the dock stay usable: the intact model works next
    w.model_edit.setText(str(run / "model"))
    w._inspect_model()
    assert w.wait_for_workers()
    w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=180000)
    assert len(error_notifications) == 1, [n.message for n in error_notifications]


def test_zero_count_cells_in_the_dock(qtbot, make_napari_viewer, small_run, error_notifications):
    run, query = small_run
    viewer, w = _dock(make_napari_viewer, [query])
    w.model_edit.setText(str(run / "model"))
    w._inspect_model()
    assert w.wait_for_workers()
    w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=180000)
    assert not error_notifications, [n.message for n in error_notifications]
    layer = w.query_layers[0]
    ad = layer.metadata["adata"]
    zero = np.arange(ad.n_obs) % 6 == 0
    for key in ("X_fusemap_cell", "X_fusemap_tissue"):
        assert np.isfinite(np.asarray(ad.obsm[key])).all()
    flag = ad.obs["fusemap_low_counts"].to_numpy(bool)
    assert flag[zero].all()
    for label in ("celltype", "region"):
        if f"{label}_transfer" in ad.obs:
            u = ad.obs[f"{label}_transfer_uncertainty"].to_numpy(float)
            assert np.isfinite(u).all() and (u[flag] == 1.0).all()
            assert (ad.obs[f"{label}_transfer"][flag] == "unassigned").all()
    numeric = layer.features.select_dtypes("number").to_numpy(float)
    assert np.isfinite(numeric).all()


def test_unwritable_output_one_notification(
    qtbot, make_napari_viewer, error_notifications, tmp_path
):
    """The Sections writer hook (File > Save) into a path under a file: one error, no file."""
    from napari_brainatlas import BrainAtlasInputError
    from napari_brainatlas._napari import write_sections
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.layers import section_layer_data

    blocker = tmp_path / "plain.txt"
    blocker.write_text("x")
    data, meta, _kind = section_layer_data(make_demo_sections(seed=0, n_sections=1)[0])
    with pytest.raises(BrainAtlasInputError) as info:
        write_sections(str(blocker / "out.h5ad"), [(data, meta, "points")])
    assert "plain.txt" in str(info.value)
    assert list(tmp_path.iterdir()) == [blocker]
