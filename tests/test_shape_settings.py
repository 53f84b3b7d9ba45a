"""Options that travel as one settings object (issue 27): transfer_labels with
TransferSettings, prepare_arrays with SpaConPrepareSettings, the deprecated SpaCon train()
with SpaConSettings; the old keywords give the same results."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.annotate import TransferSettings, transfer_labels
from napari_brainatlas.domains import (
    SpaConPrepareSettings,
    SpaConSettings,
    demo_connectome,
    prepare_arrays,
    train,
)


def _embedded(n: int, seed: int, labelled: bool = True) -> AnnData:
    """A section with both FuseMap embeddings: two cell types, two regions."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n)
    a = AnnData(obs=pd.DataFrame(index=[f"s{seed}c{i}" for i in range(n)]))
    a.obsm["X_fusemap_cell"] = (rng.normal(0, 0.3, (n, 4)) + kind[:, None] * 2).astype(np.float32)
    a.obsm["X_fusemap_tissue"] = (rng.normal(0, 0.3, (n, 4)) - kind[:, None]).astype(np.float32)
    a.obsm["spatial"] = rng.uniform(0, 100, (n, 2))
    if labelled:
        a.obs["celltype"] = np.where(kind == 1, "Exc", "Inh")
        a.obs["region"] = np.where(kind == 1, "CTX", "STR")
    return a


def test_transfer_settings_and_old_keywords_agree():
    ref = [_embedded(80, 0), _embedded(60, 1)]
    query = _embedded(50, 2, labelled=False)
    old = transfer_labels(ref, [query], method="knn", knn_k=5, smooth_k=7)[0]
    s = TransferSettings(method="knn", knn_k=5, smooth_k=7)
    new = transfer_labels(ref, [query], settings=s)[0]
    pd.testing.assert_frame_equal(old.obs, new.obs)
    assert old.uns["label_transfer"] == new.uns["label_transfer"]
    # keywords apply on top of a given settings object
    both = transfer_labels(ref, [query], settings=s, smooth_regions=False)[0]
    assert both.uns["label_transfer"]["region"]["smoothed"] is False
    assert new.uns["label_transfer"]["region"]["smoothed"] is True
    acc = (
        new.obs["celltype_transfer"].astype(str)
        == np.where(query.obsm["X_fusemap_cell"][:, 0] > 1, "Exc", "Inh")
    ).mean()
    assert acc > 0.9


def test_transfer_settings_bad_values_are_one_input_error():
    ref, query = [_embedded(30, 0)], [_embedded(20, 1, labelled=False)]
    with pytest.raises(BrainAtlasInputError, match="method must be"):
        TransferSettings(method="svm")
    with pytest.raises(BrainAtlasInputError, match="hierarchy_mode"):
        transfer_labels(ref, query, hierarchy_mode="tree")
    with pytest.raises(BrainAtlasInputError, match="unknown label transfer option 'epochs'"):
        transfer_labels(ref, query, epochs=3)
    with pytest.raises(BrainAtlasInputError, match="settings must be a TransferSettings"):
        transfer_labels(ref, query, ["celltype"], {"celltype": "X_fusemap_cell"})
    s = dataclasses.replace(TransferSettings(), class_balance={"celltype": "sqrt"})
    assert s.balance_of("celltype", "X_fusemap_cell") == "sqrt"
    assert s.balance_of("region", "X_fusemap_tissue") == "balanced"


def _arrays():
    rng = np.random.default_rng(0)
    con = demo_connectome()
    n = 150
    expr = np.log1p(rng.poisson(2.0, (n, 10))).astype(np.float32)
    coords = rng.uniform(0, 2000, (n, 3))
    region = rng.integers(0, con.n_regions, n)
    hemi = (coords[:, 2] > 1000).astype(np.int64)
    return expr, coords, region, hemi, con


def test_prepare_settings_and_old_keywords_agree():
    expr, coords, region, hemi, con = _arrays()
    old = prepare_arrays(expr, coords, region, hemi, con, n_pcs=5, k_spatial=4, top_k=2, seed=1)
    s = SpaConPrepareSettings(n_pcs=5, k_spatial=4, top_k=2)
    new = prepare_arrays(expr, coords, region, hemi, con, settings=s, seed=1)
    assert np.array_equal(old.features, new.features) and old.features.shape[1] == 5
    assert np.array_equal(old.spatial.src, new.spatial.src)
    assert np.array_equal(old.connect.dst, new.connect.dst)
    with pytest.raises(BrainAtlasInputError, match="unknown SpaCon preparation option"):
        prepare_arrays(expr, coords, region, hemi, con, n_pc=5)
    with pytest.raises(BrainAtlasInputError, match="n_pcs cannot be"):
        SpaConPrepareSettings(n_pcs="many")


def test_deprecated_train_takes_settings_or_old_keywords():
    expr, coords, region, hemi, con = _arrays()
    data = prepare_arrays(expr, coords, region, hemi, con, n_pcs=5)
    kw = {"hidden": 8, "latent": 4, "heads": 1, "batch_size": 64, "epochs": 1, "num_threads": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        a = train(data, seed=0, **kw)
        b = train(data, SpaConSettings(**kw), seed=0)
        with pytest.raises(BrainAtlasInputError, match="epochs must be at least 1"):
            train(data, epochs=0)
    assert a.settings == b.settings and len(a.history) == 1
    assert np.array_equal(a.z_spatial, b.z_spatial)
