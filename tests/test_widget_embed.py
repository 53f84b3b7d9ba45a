"""The Embed dock widget driven as a user would: train, cancel, clusters, UMAP, bad use."""

import numpy as np
import pytest

from ._shots import save_shot

pytest.importorskip("napari")
from qtpy.QtCore import Qt  # noqa: E402


@pytest.fixture
def embed_dock(make_napari_viewer):
    import torch

    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.layers import section_layer_data
    from napari_brainatlas.widgets.embed import EmbedWidget

    torch.set_num_threads(1)
    viewer = make_napari_viewer(show=True)
    for ad in make_demo_sections(seed=0, n_sections=2, cells_per_mm2=60):
        data, kw, _ = section_layer_data(ad)
        viewer.add_points(data, **kw)
    w = EmbedWidget(viewer)
    viewer.window.add_dock_widget(w, name="Embed")
    return viewer, w


def _wait_trained(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy, timeout=600_000)


def test_train_then_clusters_and_umap(qtbot, embed_dock, error_notifications):
    viewer, w = embed_dock
    assert w.section_list.count() == 2
    # a section added after the dock opened comes ticked
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.layers import section_layer_data

    extra = make_demo_sections(seed=1, n_sections=1, cells_per_mm2=40)[0]
    data, kw, _ = section_layer_data(extra, name="late")
    viewer.add_points(data, **kw)
    assert w.section_list.count() == 3 and len(w.chosen_layers()) == 3
    viewer.layers.remove("late")
    w.epochs.setValue(1)
    w.n_latent.setValue(8)
    seen = []
    w.job_progress.connect(lambda e, n, info: seen.append((e, n)))
    w.train_button.click()
    _wait_trained(qtbot, w)
    assert not error_notifications, [n.message for n in error_notifications]
    assert seen and seen[-1][0] >= 1  # per-epoch progress reached the main thread
    layers = w.chosen_layers()
    for ly in layers:
        ad = ly.metadata["adata"]
        assert ad.obsm["X_fusemap_cell"].shape == (ad.n_obs, 8)
        assert ad.obsm["X_fusemap_tissue"].shape == (ad.n_obs, 8)
    before = np.asarray(layers[0].face_color).copy()
    w.which.setCurrentText("tissue")
    w.cluster_button.click()
    assert w.wait_for_workers(600_000)
    col = "fusemap_tissue_leiden"
    lab = layers[0].features[col].to_numpy()
    assert len(set(lab)) > 1 and col in layers[0].metadata["adata"].obs
    assert not np.allclose(np.asarray(layers[0].face_color), before)
    # the same cluster has the same colour in both sections
    a, b = layers
    shared = sorted(set(a.features[col]) & set(b.features[col]))
    assert shared
    ca = np.asarray(a.face_color)[a.features[col].to_numpy() == shared[0]][0]
    cb = np.asarray(b.face_color)[b.features[col].to_numpy() == shared[0]][0]
    assert np.allclose(ca, cb)
    # UMAP in a worker: the click returns at once and the GUI thread keeps handling
    # events (timer ticks) while UMAP computes (issue 23: it froze the window for 48 s)
    from qtpy.QtCore import QTimer

    ticks = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(w.busy))
    timer.start()
    try:
        w.umap_button.click()
        assert w.busy and not w.umap_button.isEnabled()
        assert w.wait_for_workers(600_000)
    finally:
        timer.stop()
    assert sum(ticks) >= 3, f"{sum(ticks)} timer ticks while UMAP ran"
    um = viewer.layers["FuseMap UMAP (tissue)"]
    assert len(um.data) == sum(ly.metadata["adata"].n_obs for ly in layers)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert len(np.unique(shot.reshape(-1, shot.shape[-1]), axis=0)) > 10
    save_shot(viewer.screenshot(canvas_only=False, flash=False), "embed_demo")


def test_cancel_keeps_viewer_usable(qtbot, embed_dock):
    _viewer, w = embed_dock
    w.epochs.setValue(50)
    w.n_latent.setValue(8)
    w.job_progress.connect(lambda *a: w.cancel())  # cancel at the first epoch
    worker = w.train()
    assert worker is not None
    _wait_trained(qtbot, w)
    # one protocol (napari_brainatlas.Cancelled): nothing is written, a quiet status
    assert w.model is None and w.status.text() == "embedding cancelled"
    assert not any("X_fusemap_cell" in ly.metadata["adata"].obsm for ly in w.chosen_layers())
    assert w.train_button.isEnabled()


def test_needs_two_sections_and_training_first(qtbot, embed_dock, error_notifications):
    _viewer, w = embed_dock
    w.section_list.item(1).setCheckState(Qt.CheckState.Unchecked)
    assert w.train() is None
    assert len(error_notifications) == 1 and "two sections" in error_notifications[0].message
    w.section_list.item(1).setCheckState(Qt.CheckState.Checked)
    w.cluster_button.click()
    assert len(error_notifications) == 2 and "train first" in error_notifications[1].message
