"""Level of detail (engine) and the napari fast path for large sections.

Engine tests need no display; the GUI tests run under a display
(``xvfb-run -a python -m pytest tests/test_fastpath.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_brainatlas.lod import (
    LevelOfDetail,
    ViewRect,
    allocate_budget,
    rasterize,
    rgba8,
)


def _cells(n: int, seed: int = 0) -> np.ndarray:
    """(y, x) of ``n`` cells with a strongly non-uniform density (a dense blob in a
    sparse field)."""
    rng = np.random.default_rng(seed)
    k = n // 2
    dense = rng.normal([3000, 4000], 400, (k, 2))
    sparse = rng.random((n - k, 2)) * [7000, 10000]
    return np.vstack([dense, sparse])


def _inside(yx, r: ViewRect) -> np.ndarray:
    return (yx[:, 0] >= r.y0) & (yx[:, 0] <= r.y1) & (yx[:, 1] >= r.x0) & (yx[:, 1] <= r.x1)


# ---------------------------------------------------------------------- engine
def test_range_queries_match_brute_force():
    yx = _cells(50_000)
    lod = LevelOfDetail(yx, grid=64)
    rng = np.random.default_rng(1)
    for _ in range(30):
        y0, x0 = rng.random(2) * [7000, 10000] - 500
        r = ViewRect(y0, x0, y0 + rng.random() * 3000, x0 + rng.random() * 4000)
        assert np.array_equal(lod.in_rect(r), np.flatnonzero(_inside(yx, r)))
    everything = ViewRect(-1e9, -1e9, 1e9, 1e9)
    assert np.array_equal(lod.in_rect(everything), np.arange(len(yx)))
    assert lod.in_rect(ViewRect(2e4, 2e4, 3e4, 3e4)).size == 0


def test_zoomed_in_every_cell_in_view_is_shown():
    yx = _cells(80_000)
    lod = LevelOfDetail(yx)
    rng = np.random.default_rng(2)
    for _ in range(20):
        c = yx[rng.integers(len(yx))]
        r = ViewRect.from_center(c, (300, 400))
        mask = lod.shown_mask(r, budget=20_000, subset=2_000)
        assert mask[_inside(yx, r)].all()  # every cell of the region is drawn


def test_zoomed_out_subset_is_density_preserving_and_within_budget():
    yx = _cells(200_000)
    lod = LevelOfDetail(yx)
    mask, k, idx = lod.shown(None, budget=20_000, subset=10_000)
    assert k < lod.n and len(idx) == lod.n
    assert 10_000 <= mask.sum() <= 10_000 * 1.3  # the ladder rounds k up by < 25 %
    # the same fraction of cells is drawn in the dense blob and in the sparse field
    blob = np.hypot(yx[:, 0] - 3000, yx[:, 1] - 4000) < 400
    field = ~blob
    f_blob, f_field = mask[blob].mean(), mask[field].mean()
    assert f_blob == pytest.approx(mask.mean(), rel=0.1)
    assert f_field == pytest.approx(mask.mean(), rel=0.1)
    # the subset is the cells of lowest rank: nested as the budget grows
    bigger = lod.shown_mask(None, budget=20_000, subset=15_000)
    assert not (mask & ~bigger).any()


def test_subset_is_stable_when_panning():
    rng = np.random.default_rng(3)
    yx = rng.random((300_000, 2)) * [7000, 10000]  # uniform: same count in every view
    lod = LevelOfDetail(yx)
    r1 = ViewRect(1000, 1000, 4000, 5000)
    r2 = ViewRect(1300, 1500, 4300, 5500)  # the same view panned
    m1, k1, _ = lod.shown(r1, budget=20_000, subset=5_000, margin=0)
    m2, k2, _ = lod.shown(r2, budget=20_000, subset=5_000, margin=0)
    assert k1 == k2 < lod.n
    both = _inside(yx, r1) & _inside(yx, r2)
    assert np.array_equal(m1[both], m2[both])  # cells in both views: shown in both or neither
    assert not m1[~_inside(yx, r1)].any()


def test_allocate_budget_gives_the_same_density():
    b = allocate_budget([100_000, 300_000, 0], 40_000)
    assert b[2] == 0
    assert b[0] / 100_000 == pytest.approx(b[1] / 300_000, rel=0.01)
    assert sum(b) == pytest.approx(40_000, abs=3)


def test_rasterize_top_and_mean():
    yx = np.array([[0.5, 0.5], [0.6, 0.4], [1.5, 2.5]])
    rgba = np.array([[1, 0, 0, 1], [0, 0, 1, 1], [0, 1, 0, 1]], np.float32)
    img, origin, px = rasterize(yx, rgba8(rgba), ViewRect(0, 0, 2, 3), 1.0)
    assert img.shape == (2, 3, 4) and origin == (0.0, 0.0) and px == 1.0
    assert tuple(img[0, 0]) == (0, 0, 255, 255)  # the last cell of the pixel
    assert tuple(img[1, 2]) == (0, 255, 0, 255)
    assert img[0, 1, 3] == 0 and img[1, 0, 3] == 0  # empty pixels stay transparent
    mean, _, _ = rasterize(yx, rgba, ViewRect(0, 0, 2, 3), 1.0, mode="mean")
    assert tuple(mean[0, 0]) == (128, 0, 128, 255)
    filled, _, _ = rasterize(yx, rgba8(rgba), ViewRect(0, 0, 2, 3), 1.0, fill=1)
    assert (filled[..., 3] == 255).sum() > 2


@pytest.mark.parametrize("layout", ["uniform", "jittered_lattice", "clusters"])
def test_cell_size_from_windows_matches_the_exact_median(layout):
    """Above 80k cells the point size comes from random windows of the section: the
    same median nearest-neighbour distance as a k-d tree of every cell (within 5 %)."""
    from scipy.spatial import cKDTree

    from napari_brainatlas.layers import cell_size_um

    rng = np.random.default_rng(3)
    n = 150_000
    if layout == "uniform":
        xy = rng.random((n, 2)) * [4000, 2500]
    elif layout == "jittered_lattice":  # cells ~10 um apart in an ellipse
        g = np.stack(np.meshgrid(np.arange(500), np.arange(500)), -1).reshape(-1, 2) * 10.0
        g = g + rng.normal(0, 1.5, g.shape)
        c = (g - 2500) / [2500, 1500]
        xy = g[(c**2).sum(1) < 1]
    else:  # Gaussian clusters of different spreads: density varies 100-fold
        lab = rng.integers(0, 60, n)
        spread = rng.uniform(30, 300, 60)
        xy = rng.random((60, 2))[lab] * 8000 + rng.normal(0, 1, (n, 2)) * spread[lab, None]
    assert len(xy) > 80_000  # the windowed estimate is the one under test
    d, _ = cKDTree(xy).query(xy, k=2)
    exact = 0.8 * np.median(d[:, 1])
    assert cell_size_um(xy) == pytest.approx(exact, rel=0.05)
    assert cell_size_um(xy, seed=1) == pytest.approx(exact, rel=0.05)


# ---------------------------------------------------------------------- napari
def _section(n: int, seed: int = 0):
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    r = np.sqrt(rng.random(n))
    t = rng.random(n) * 2 * np.pi
    xy = np.column_stack([500 * r * np.cos(t), 350 * r * np.sin(t)]) + 600
    region = np.digitize(r, [0.3, 0.6, 0.8])
    X = sp.csr_matrix(rng.poisson(rng.gamma(0.5, 1.0, (4, 5))[region]).astype(np.float32))
    a = ad.AnnData(X=X, var=pd.DataFrame(index=[f"G{i}" for i in range(5)]))
    a.obs_names = [f"c{i}" for i in range(n)]
    a.obs["region"] = pd.Categorical(np.array(["A", "B", "C", "D"])[region])
    a.obsm["spatial"] = xy
    a.uns["napari_brainatlas"] = {"section": "s1", "format": "h5ad"}
    return a


def _plain_and_fast(viewer, adata, fast=None):
    from napari.layers import Layer

    from napari_brainatlas.layers import section_layer_data
    from napari_brainatlas.widgets.fastpoints import fast_layer_kwargs, make_fast_layer

    data, kwargs, _ = section_layer_data(adata)
    plain = Layer.create(data, dict(kwargs, name="plain"), "points")
    fd, fk = fast_layer_kwargs(data, dict(kwargs, name="fast"))
    layer = make_fast_layer(fd, fk)
    viewer.add_layer(plain)
    viewer.add_layer(layer)
    if fast is not None:
        assert fast.track(layer)
    return plain, layer


@pytest.mark.gui
def test_fast_layer_shows_the_plain_colours(make_napari_viewer):
    from napari_brainatlas.colors import continuous_colors
    from napari_brainatlas.io import gene_values
    from napari_brainatlas.widgets.fastpoints import FastSections, set_colors

    viewer = make_napari_viewer()
    adata = _section(30_000)
    fast = FastSections(viewer, budget=5_000, subset=2_000)
    plain, layer = _plain_and_fast(viewer, adata, fast)
    viewer.reset_view()
    fast.update_now()
    assert fast.drawn() <= 2_000 * 1.3  # zoomed out: a subset is drawn ...
    ov = fast.overview_layer(layer)
    assert ov is not None and ov.visible  # ... over an overview of every cell
    assert np.array_equal(layer.data, plain.data)
    assert np.allclose(layer.face_color, plain.face_color)
    shown = layer._view_indices
    assert len(shown) < len(layer.data)
    assert np.allclose(layer._view_face_color, plain.face_color[shown])
    # recolour: the same colours through the public path
    rgba, _ = continuous_colors(gene_values(adata, "G3"))
    set_colors(layer, rgba)
    plain.face_color = rgba
    assert np.allclose(layer.face_color, plain.face_color)
    assert np.allclose(layer._view_face_color, rgba[layer._view_indices])
    # and the overview follows the new colours
    img = np.asarray(fast.overview_layer(layer).data)
    assert img[..., 3].any()


@pytest.mark.gui
def test_private_and_public_recolour_agree(make_napari_viewer):
    from napari.layers import Points

    from napari_brainatlas.widgets.fastpoints import set_colors

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    pts = rng.random((500, 2)) * 100
    a = viewer.add_points(pts, face_color="red", border_color="blue")
    b = viewer.add_points(pts, face_color="red", border_color="blue")
    rgba = rng.random((500, 4)).astype(np.float32)
    set_colors(a, rgba, private=True)
    set_colors(b, rgba, private=False)
    for la in (a, b):
        assert isinstance(la, Points)
    assert np.allclose(a.face_color, b.face_color)
    assert np.allclose(a.border_color, b.border_color)
    assert np.allclose(a.face_color, rgba)
    assert np.allclose(a._view_face_color, b._view_face_color)
    assert a._face.color_mode == b._face.color_mode


@pytest.mark.gui
def test_screenshot_same_as_plain_when_everything_is_shown(make_napari_viewer):
    from napari_brainatlas.widgets.fastpoints import FastSections

    viewer = make_napari_viewer(show=True)
    adata = _section(3_000)
    fast = FastSections(viewer)  # budget above the section: every cell is drawn
    plain, layer = _plain_and_fast(viewer, adata, fast)
    viewer.reset_view()
    fast.update_now()
    assert fast.drawn() == len(layer.data)
    assert fast.overview_layer(layer) is None
    layer.visible = False
    shot_plain = viewer.screenshot(canvas_only=True, flash=False)
    layer.visible, plain.visible = True, False
    fast.update_now()
    shot_fast = viewer.screenshot(canvas_only=True, flash=False)
    assert shot_plain.shape == shot_fast.shape
    assert (shot_plain[..., :3] > 0).any(axis=-1).mean() > 0.1  # cells were drawn
    assert np.array_equal(shot_plain, shot_fast)


@pytest.mark.gui
def test_every_cell_is_reachable_by_zooming_in(make_napari_viewer):
    from napari_brainatlas.widgets.fastpoints import FastSections

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1000, 800)
    adata = _section(60_000, seed=4)
    fast = FastSections(viewer, budget=3_000, subset=800)
    _, layer = _plain_and_fast(viewer, adata, fast)
    viewer.layers.remove("plain")
    layer.translate = (250.0, -100.0)  # sections are tiled: views are in world coords
    viewer.reset_view()
    fast.update_now()
    zoomed_out = fast.drawn()
    assert zoomed_out < 1_500
    lod = fast.lod(layer)
    rng = np.random.default_rng(5)
    data = np.asarray(layer.data)
    seen = np.zeros(len(data), bool)
    for i in rng.choice(len(data), 12, replace=False):
        viewer.camera.center = tuple(data[i] + np.asarray(layer.translate))
        viewer.camera.zoom = 8.0
        fast.update_now()
        rect = fast.view_rect(layer)
        inview = np.flatnonzero(_inside(data, rect))
        assert 0 < len(inview) <= 3_000
        drawn = set(layer._view_indices.tolist())
        assert drawn.issuperset(inview.tolist())  # every cell in the view is drawn
        assert (
            not fast._state[id(layer)].full
            or not fast.overview_layer(layer)
            or not fast.overview_layer(layer).visible
        )
        seen[inview] = True
        # hovering a cell in view finds it
        pos = data[inview[0]] + np.asarray(layer.translate)
        assert layer.get_value(pos, world=True) is not None
    assert seen.sum() > 0 and lod.n == len(data)
    # back out: a subset again, the same as before
    viewer.reset_view()
    fast.update_now()
    assert fast.drawn() == zoomed_out


@pytest.mark.gui
def test_sections_widget_uses_the_fast_path_for_large_sections(sections_dock, qtbot, tmp_path):
    from napari_brainatlas.colors import continuous_colors
    from napari_brainatlas.io import gene_values
    from napari_brainatlas.widgets.fastpoints import FAST_THRESHOLD, is_fast

    _viewer, widget = sections_dock
    big = _section(FAST_THRESHOLD + 5_000, seed=6)
    small = _section(2_000, seed=7)
    small.uns["napari_brainatlas"] = {"section": "s2", "format": "h5ad"}
    big.write_h5ad(tmp_path / "big.h5ad")
    small.write_h5ad(tmp_path / "small.h5ad")
    for i, p in enumerate(("big.h5ad", "small.h5ad")):
        widget.load(str(tmp_path / p))
        qtbot.waitUntil(lambda: not widget.busy, timeout=60000)
        qtbot.waitUntil(lambda i=i: len(widget.section_layers()) > i, timeout=30000)
    layers = {ly.name: ly for ly in widget.section_layers()}
    assert set(layers) == {"s1", "s2"}
    assert is_fast(layers["s1"]) and not is_fast(layers["s2"])
    widget.fast.update_now()
    assert widget.fast.drawn() < len(layers["s1"].data)
    widget.color_by_gene("G2")
    (b,) = [ly for ly in widget.section_layers() if ly.name == "s1"]
    want, _ = continuous_colors(gene_values(big, "G2"), clim=widget._color["clim"])
    assert np.allclose(b.face_color, want)
    assert np.allclose(b.border_color, want)
    assert "G2" in b.features.columns  # hover shows the gene
    widget.color_by_annotation("region")
    assert widget.legend_categories() == ["A", "B", "C", "D"]
    n = widget.select_cells("region", "A")
    assert n == int((big.obs["region"] == "A").sum() + (small.obs["region"] == "A").sum())


@pytest.mark.gui
def test_overview_follows_its_section(make_napari_viewer):
    from napari_brainatlas.widgets.fastpoints import FastSections

    viewer = make_napari_viewer()
    fast = FastSections(viewer, budget=2_000, subset=500)
    plain, layer = _plain_and_fast(viewer, _section(20_000, seed=8), fast)
    viewer.layers.remove(plain)
    viewer.reset_view()
    fast.update_now()
    ov = fast.overview_layer(layer)
    assert ov is not None and viewer.layers.index(ov) == viewer.layers.index(layer) - 1
    assert viewer.layers.selection.active is layer  # the overview is not made active
    layer.visible = False
    fast.update_now()
    assert not ov.visible and fast.drawn() == 0
    layer.visible = True
    fast.update_now()
    assert ov.visible
    viewer.layers.remove(layer)  # removing the section removes its overview
    assert ov not in viewer.layers and not fast.layers


def test_fast_layer_is_a_points_layer_sliced_to_its_subset_from_the_start():
    """The fast layer is a napari Points layer (same type string, so writers and layer
    controls treat it as one), holding every cell but sliced to the density-preserving
    subset as soon as it is made."""
    from napari.layers import Points

    from napari_brainatlas.layers import section_layer_data
    from napari_brainatlas.widgets.fastpoints import fast_layer_kwargs, make_fast_layer

    adata = _section(120_000, seed=5)
    data, kwargs, _ = section_layer_data(adata)
    fd, fk = fast_layer_kwargs(data, kwargs)
    layer = make_fast_layer(fd, fk)
    assert isinstance(layer, Points)
    assert layer._type_string == "points" and layer.as_layer_data_tuple()[2] == "points"
    n_shown = int(np.count_nonzero(fk["shown"]))
    assert 0 < n_shown < len(adata) // 2
    assert len(layer._view_indices) == n_shown
    np.testing.assert_array_equal(np.sort(layer._view_indices), np.flatnonzero(fk["shown"]))
    assert len(layer.data) == len(adata)  # every cell is still in the layer
