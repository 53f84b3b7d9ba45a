"""Gene modules (analyses/modules.py): planted modules and hub genes recovered from a
synthetic gene embedding, module scores that follow the planted programmes (measured
and decoded genes), files written next to a model without touching the model's own."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score

from napari_brainatlas import BrainAtlasInputError, Cancelled
from napari_brainatlas.analyses import gene_modules, score_key, score_modules

SIZES = [50, 40, 30, 30, 25, 20]


def planted_embedding(sizes=SIZES, dim=16, noise=0.5, n_core=3, seed=0):
    """Genes = module direction + noise; the first ``n_core`` genes of each module sit
    on the direction (the planted hubs). Returns (DataFrame genes x dim, labels, cores)."""
    r = np.random.default_rng(seed)
    C = r.normal(size=(len(sizes), dim))
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    rows, lab, cores = [], [], []
    for k, s in enumerate(sizes):
        eps = noise * r.normal(size=(s, dim)) / np.sqrt(dim)
        eps[:n_core] *= 0.1
        rows.append(C[k] + eps)
        lab += [k] * s
    X = np.vstack(rows)
    genes = [f"G{i}" for i in range(len(X))]
    start = np.cumsum([0] + list(sizes))
    cores = [genes[start[k] + j] for k in range(len(sizes)) for j in range(n_core)]
    return pd.DataFrame(X, index=genes), np.array(lab), cores


def test_planted_modules_and_hubs_are_recovered():
    E, lab, cores = planted_embedding()
    gm = gene_modules(E, umap=False)
    assert adjusted_rand_score(lab, gm.table.loc[E.index, "module"]) >= 0.9
    assert gm.n_modules == len(SIZES)
    # modules numbered by size, sizes sum to the genes
    sizes = gm.sizes()
    assert list(sizes.index) == list(range(1, gm.n_modules + 1))
    assert sizes.is_monotonic_decreasing and sizes.sum() == len(E)
    # most planted core genes are hubs of their module
    hubs = {g for hs in gm.hubs().values() for g in hs}
    assert len(hubs & set(cores)) >= 0.7 * len(cores)
    t = gm.table
    assert t["hub_score"].between(0, 1).all() and t["centrality"].between(-1, 1).all()
    assert np.isfinite(t.select_dtypes("number").to_numpy()).all()


def test_resolution_options():
    E, lab, _ = planted_embedding()
    assert gene_modules(E, umap=False, n_modules=9).n_modules == 9
    gm = gene_modules(E, umap=False, resolution=0.05)
    assert gm.resolution == 0.05 and gm.params["resolution_rule"] == "given"
    with pytest.raises(BrainAtlasInputError, match="resolution"):
        gene_modules(E, umap=False, resolution="high")
    with pytest.raises(BrainAtlasInputError, match="not in the gene embedding"):
        gene_modules(E, genes=["G1", "NOPE"], umap=False)
    with pytest.raises(BrainAtlasInputError):
        gene_modules(None)
    with pytest.raises(Cancelled):
        gene_modules(E, umap=False, cancel=lambda: True)


def _programme_section(E: pd.DataFrame, lab, n_cells=600, seed=1):
    """Cells with one activity per module; counts ~ Poisson(depth * activity of the gene's
    module); the cell embedding is the activities, so the decoder is z_C E^T with E the
    one-hot module membership."""
    r = np.random.default_rng(seed)
    K = lab.max() + 1
    act = r.gamma(1.0, 1.0, size=(n_cells, K))
    rate = 3.0 * act[:, lab] + 0.2
    counts = r.poisson(rate)
    a = AnnData(X=counts.astype(np.float32), var=pd.DataFrame(index=list(E.index)))
    a.obs_names = [f"c{i}" for i in range(n_cells)]
    a.layers["counts"] = a.X.copy()
    a.obsm["spatial"] = r.uniform(0, 500, (n_cells, 2))
    onehot = pd.DataFrame(np.eye(K)[lab], index=E.index)
    return a, act, onehot


def test_module_scores_follow_the_planted_programmes_with_decoded_genes():
    E, lab, _ = planted_embedding(noise=0.3)
    gm = gene_modules(E, umap=False)
    full, act, onehot = _programme_section(E, lab)
    # the section measures only the first half of every module; the rest is decoded
    measured = [g for k in range(lab.max() + 1) for g in list(E.index[lab == k])[::2]]
    a = full[:, measured].copy()
    a.obsm["X_fusemap_cell"] = act.astype(np.float32)
    keys = score_modules(a, gm, model=onehot)
    assert keys == {k: score_key(k) for k in range(1, gm.n_modules + 1)}
    info = a.uns["gene_modules"]
    assert sum(info["n_imputed"].values()) == len(E) - len(measured)
    for k, key in keys.items():
        planted = np.bincount(lab[gm.table.loc[E.index, "module"].to_numpy() == k]).argmax()
        r = np.corrcoef(a.obs[key], act[:, planted])[0, 1]
        assert r > 0.8, (k, r)
        assert a.obs[key].dtype == np.float32 and np.isfinite(a.obs[key]).all()
    # measured genes only (no model): still follows the programme, nothing imputed
    b = full[:, measured].copy()
    score_modules(b, gm)
    assert sum(b.uns["gene_modules"]["n_imputed"].values()) == 0
    r = np.corrcoef(b.obs[score_key(1)], a.obs[score_key(1)])[0, 1]
    assert r > 0.8


def test_cells_dropped_by_preprocessing_score_zero_and_no_nan():
    E, lab, _ = planted_embedding(noise=0.3)
    gm = gene_modules(E, umap=False)
    a, _, _ = _programme_section(E, lab, n_cells=200)
    a.X[:3] = 0
    a.layers["counts"][:3] = 0
    score_modules(a, gm)
    assert (a.obs[score_key(1)].iloc[:3] == 0).all()
    assert np.isfinite(a.obs.select_dtypes("number").to_numpy()).all()
    with pytest.raises(BrainAtlasInputError, match="no module gene"):
        other = a.copy()
        other.var_names = [f"OTHER{i}" for i in range(other.n_vars)]
        score_modules(other, gm)


@pytest.fixture(scope="module")
def tiny_model():
    from napari_brainatlas.fusemap import FuseMap, make_synthetic_sections

    secs = make_synthetic_sections(n_sections=2, n_cells=200, n_genes=40, n_shared=20, seed=0)
    model = FuseMap(secs, n_hidden=32, n_latent=8, min_steps=2, device="cpu", seed=0)
    model.train(pretrain_epochs=1, final_epochs=0)
    return model


def test_scores_of_a_section_the_model_holds_decode_its_unmeasured_genes(tiny_model):
    gm = gene_modules(tiny_model, umap=False)
    a = tiny_model.adatas[0]
    b = a.copy()
    keys = score_modules(b, gm, model=tiny_model)  # a copy: decoded from obsm, absent
    assert sum(b.uns["gene_modules"]["n_imputed"].values()) == 0
    keys = score_modules(a, gm, model=tiny_model)  # the model's own section
    info = a.uns["gene_modules"]
    own = {g.upper() for g in a.var_names}
    assert sum(info["n_imputed"].values()) == len(set(gm.genes) - own) > 0
    assert all(np.isfinite(a.obs[k]).all() for k in keys.values())
    # the same numbers through the written embedding (obsm['X_fusemap_cell'])
    c = tiny_model.write_embeddings(copy=True)[0]
    score_modules(c, gm, model=tiny_model)
    for k in keys.values():
        np.testing.assert_allclose(c.obs[k], a.obs[k], rtol=1e-5, atol=1e-6)
