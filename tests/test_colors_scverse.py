"""Categorical colours follow the scverse convention: uns['<key>_colors'] in category
order, so scanpy's plots and ours show the same colour for the same label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.colors import to_hex as mpl_hex
from matplotlib.colors import to_rgba

from napari_brainatlas.colors import scanpy_categories, to_hex, uns_colors, write_uns_colors
from napari_brainatlas.layers import color_values, label_colors_across

sc = pytest.importorskip("scanpy")


def _adata(seed=0, n=60, cats=("T", "B", "NK"), ordered_cats=None):
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n)])
    vals = rng.choice(list(cats), n)
    obs["celltype"] = (
        pd.Categorical(vals, categories=ordered_cats) if ordered_cats else pd.Categorical(vals)
    )
    obs["plain"] = vals.astype(object)  # a string column scanpy turns into a categorical
    ad = AnnData(X=rng.poisson(1.0, (n, 4)).astype(np.float32), obs=obs)
    ad.obsm["X_umap"] = rng.normal(size=(n, 2))
    ad.obsm["spatial"] = rng.random((n, 2)) * 100
    return ad


def _plotted(ad, key):
    """Per-cell face colours scanpy drew for ``key`` (its scatter keeps the obs order
    for a categorical colouring)."""
    import matplotlib.pyplot as plt

    ax = sc.pl.embedding(ad, basis="umap", color=key, show=False, frameon=False)
    rgba = np.asarray(ax.collections[0].get_facecolors())
    plt.close("all")
    return rgba


def test_we_use_the_colours_scanpy_filled_in():
    # categories in a non-sorted order: the colours go by category order, not by name
    ad = _adata(ordered_cats=["T", "NK", "B"])
    assert "celltype_colors" not in ad.uns
    _plotted(ad, "celltype")  # scanpy's palette behaviour fills uns['celltype_colors']
    theirs = list(ad.uns["celltype_colors"])
    assert len(theirs) == 3
    kind, rgba, legend = color_values(ad, "celltype")
    assert kind == "categorical"
    for cat, hexcol in zip(["T", "NK", "B"], theirs):
        np.testing.assert_allclose(legend[cat], to_rgba(hexcol), atol=1e-6)
        rows = (ad.obs["celltype"] == cat).to_numpy()
        np.testing.assert_allclose(rgba[rows], np.tile(to_rgba(hexcol), (rows.sum(), 1)))
    assert list(ad.uns["celltype_colors"]) == theirs  # nothing rewritten


def test_scanpy_uses_the_colours_we_wrote():
    ad = _adata(ordered_cats=["T", "NK", "B"])
    _, ours, legend = color_values(ad, "celltype", colors={"NK": (1.0, 0.0, 0.0)})
    assert list(ad.uns["celltype_colors"]) == [to_hex(legend[c]) for c in ["T", "NK", "B"]]
    assert ad.uns["celltype_colors"][1] == "#ff0000"
    drawn = _plotted(ad, "celltype")
    np.testing.assert_allclose(drawn[:, :3], ours[:, :3], atol=1 / 255)
    # a string column: scanpy makes sorted categories of it, we wrote in that order
    _, ours_plain, _ = color_values(ad, "plain")
    assert scanpy_categories(ad.obs["plain"]) == ["B", "NK", "T"]
    drawn = _plotted(ad, "plain")
    np.testing.assert_allclose(drawn[:, :3], ours_plain[:, :3], atol=1 / 255)


def test_user_colours_and_invalid_lists():
    ad = _adata()
    ad.uns["celltype_colors"] = ["red", "#00ff00", (0.0, 0.0, 1.0)]  # any matplotlib colour
    got = uns_colors(ad, "celltype")
    assert [mpl_hex(got[c]) for c in ["B", "NK", "T"]] == ["#ff0000", "#00ff00", "#0000ff"]
    ad.uns["celltype_colors"] = ["red"]  # too short: scanpy would replace it, so do we
    assert uns_colors(ad, "celltype") is None
    _, _, legend = color_values(ad, "celltype")
    assert len(ad.uns["celltype_colors"]) == 3
    assert uns_colors(ad, "celltype")["T"].tolist() == pytest.approx(to_rgba(to_hex(legend["T"])))
    ad.uns["celltype_colors"] = ["red", "not-a-colour", "blue"]
    assert uns_colors(ad, "celltype") is None
    # a view is never written to
    view = ad[:10]
    assert write_uns_colors(view, "celltype", {"B": (0, 0, 0)}) is False


def test_one_legend_across_sections_keeps_scanpy_colours():
    a = _adata(0, cats=("T", "B"))
    b = _adata(1, cats=("B", "NK", "Astro"))
    _plotted(b, "celltype")  # b's colours are scanpy's
    b_colors = {
        c: to_rgba(h) for c, h in zip(b.obs["celltype"].cat.categories, b.uns["celltype_colors"])
    }
    rgbas, legend = label_colors_across([a, b, _adata(2)], "celltype")
    assert sorted(legend) == ["Astro", "B", "NK", "T"]
    for c in ("Astro", "B", "NK"):
        np.testing.assert_allclose(legend[c], b_colors[c], atol=1e-6)
    # every section now carries the shared colours in its own category order
    for ad in (a, b):
        cats = list(ad.obs["celltype"].cat.categories)
        assert list(ad.uns["celltype_colors"]) == [to_hex(legend[c]) for c in cats]
    assert rgbas[0].shape == (a.n_obs, 4)
    no_key = _adata(3)
    del no_key.obs["celltype"]
    rgbas, _ = label_colors_across([no_key], "celltype")
    assert rgbas == [None]
