"""The methods of the embedding benchmark, each run on one split (benchmarks/embedding/
splits.py) and one seed, returning the same kind of result for the common evaluation
(run.py):

* ``fusemap_joint``: FuseMap trained on every section of the split (as ``napari-brainatlas
  embed``); z_C per section; the MLP label transfer (``annotate.transfer_labels``) from
  the reference sections' z_C; imputation with ``annotate.impute_genes`` (its default).
* ``fusemap_chain``: FuseMap trained on the reference sections only, the query sections
  mapped with ``annotate.map_query``, labels by ``transfer_labels`` (MLP), imputation by
  ``impute_genes`` on the mapping (its default) - what annotation runs on new data.
* ``pca_harmony``: PCA of the genes every section measures (normalise, log1p, scale,
  30 components) and harmonypy over sections; also the plain PCA ("pca").
* ``scvi_scanvi``: scVI on the counts of the shared genes (batch = section; the
  scvi-tools defaults), then scANVI from it given the reference labels (query cells
  unlabelled); scANVI's own classifier predictions are kept as well.
* ``ingest``: scanpy ingest of each query section onto the reference sections' PCA
  (shared genes, 15 neighbours).

A result is a dict: ``emb`` (one (n_cells, k) array per section, NaN rows for cells the
method cannot embed), optional ``pred`` (method-native predictions per query section:
the MLP of FuseMap, scANVI's classifier), optional ``impute`` ({section: DataFrame
cells x genes}, the method's own imputation; else run.py imputes by kNN-50 in ``emb``),
``seconds`` and ``info``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
from splits import CELL_LABEL

warnings.filterwarnings("ignore")


def lognorm(counts: np.ndarray) -> np.ndarray:
    """log1p of counts normalised to the median total of the matrix (per row)."""
    X = np.asarray(counts, np.float64)
    tot = X.sum(1, keepdims=True)
    med = np.median(tot[tot > 0]) if (tot > 0).any() else 1.0
    return np.log1p(X / np.maximum(tot, 1e-12) * med)


def _shared_matrix(split, genes=None):
    genes = genes or split.shared_genes()
    mats = []
    for a in split.sections:
        col = {g: i for i, g in enumerate(a.var_names)}
        mats.append(np.asarray(a.layers["counts"])[:, [col[g] for g in genes]])
    return genes, mats


def _labels(a) -> np.ndarray:
    return np.array([None if pd.isna(v) else str(v) for v in a.obs[CELL_LABEL]], dtype=object)


# ----------------------------------------------------------------------------- FuseMap
def _impute_targets(split, v: int) -> list[str]:
    """Genes section ``v`` lacks that some reference section measures."""
    own = set(split.panels[v])
    ref = set().union(*(set(split.panels[r]) for r in split.reference))
    return [g for g in split.truth_genes if g in ref and g not in own]


def _mlp_transfer(ref_adatas, qry_adatas, seed, model=None):
    from napari_brainatlas.annotate import transfer_labels
    from napari_brainatlas.fusemap import CELL_KEY

    out = transfer_labels(
        ref_adatas,
        qry_adatas,
        labels=[CELL_LABEL],
        embedding={CELL_LABEL: CELL_KEY},
        hierarchy={},
        smooth_regions=False,
        seed=seed,
        model=model,  # the panel views (TransferSettings.views, default) where given
    )
    return [
        np.array([None if pd.isna(v) else str(v) for v in a.obs[f"{CELL_LABEL}_transfer"]])
        for a in out
    ]


def _impute_frames(model_or_mapping, split, sections, index_of) -> dict:
    from napari_brainatlas.annotate import impute_genes

    out = {}
    known = set(model_or_mapping.module.genes)  # genes with no count anywhere are not
    for v in split.query:  # in the model: skipped (their R is undefined for every method)
        genes = [g.upper() for g in _impute_targets(split, v) if g.upper() in known]
        if not genes:
            continue
        df = impute_genes(model_or_mapping, index_of(v), genes)
        full = pd.DataFrame(np.nan, index=split.sections[v].obs_names, columns=genes)
        full.loc[df.index, genes] = df[genes].to_numpy()
        out[v] = full
    return out


def fusemap_joint(split, seed: int, cfg: dict | None = None, epochs: int | None = None) -> dict:
    import torch

    from napari_brainatlas.fusemap import FuseMap

    cfg = dict(cfg or {})
    t0 = time.time()
    secs = [a.copy() for a in split.sections]
    with torch.random.fork_rng(devices=[]):
        m = FuseMap(secs, seed=seed, **cfg)
        m.train(epochs=epochs)  # None: the API default (FuseMapSettings.epochs)
    t_train = time.time() - t0
    emb = m.get_latent_representation("cell")
    adatas = m.write_embeddings(copy=True)
    pred_q = _mlp_transfer(
        [adatas[r] for r in split.reference], [adatas[q] for q in split.query], seed, model=m
    )
    pred = {q: p for q, p in zip(split.query, pred_q)}
    imp = _impute_frames(m, split, secs, lambda v: v)
    return {
        "emb": emb,
        "pred": pred,
        "impute": imp,
        "seconds": time.time() - t0,
        "info": _fusemap_info(m, t_train),
    }


def _fusemap_info(m, t_train) -> dict:
    h = m.history
    return {
        "train_s": t_train,
        "epochs": len(h),
        "pre_epochs": sum(1 for r in h if r.get("phase") == "pretrain"),
        "steps": int(sum(int(r.get("steps", 0)) for r in h)),
        "recon_last": float(h[-1].get("recon", np.nan)) if h else np.nan,
        "dropped_cells": [int(p.n_obs - p.n_cells) for p in m.prepared],
    }


def fusemap_chain(
    split,
    seed: int,
    cfg: dict | None = None,
    epochs: int | None = None,
    query_kw: dict | None = None,
) -> dict:
    import torch

    from napari_brainatlas.annotate import map_query
    from napari_brainatlas.fusemap import FuseMap

    cfg = dict(cfg or {})
    query_kw = dict(query_kw or {})
    t0 = time.time()
    refs = [split.sections[r].copy() for r in split.reference]
    qrys = [split.sections[q].copy() for q in split.query]
    with torch.random.fork_rng(devices=[]):
        m = FuseMap(refs, seed=seed, **cfg)
        m.train(epochs=epochs)
        t_train = time.time() - t0
        mapping = map_query(m, qrys, seed=seed, **query_kw)  # map_query's defaults
    emb = [None] * len(split.sections)
    for r, z in zip(split.reference, m.get_latent_representation("cell")):
        emb[r] = z
    for q, z in zip(split.query, mapping.get_latent_representation("cell")):
        emb[q] = z
    ref_ad = m.write_embeddings(copy=True)
    qry_ad = mapping.write_embeddings(copy=True)
    pred = dict(zip(split.query, _mlp_transfer(ref_ad, qry_ad, seed, model=mapping)))
    pos = {q: i for i, q in enumerate(split.query)}
    imp = _impute_frames(mapping, split, qrys, lambda v: pos[v])
    info = _fusemap_info(m, t_train)
    info.update(
        query_epochs=len(mapping.history),
        query_s=time.time() - t0 - t_train,
        query_adversarial=bool(mapping.adversarial),
        query_anchored=bool(mapping.anchored),
        query_dropped=[int(np.isnan(e).any(1).sum()) for e in emb if e is not None],
    )
    return {"emb": emb, "pred": pred, "impute": imp, "seconds": time.time() - t0, "info": info}


# ----------------------------------------------------------------------------- baselines
def pca_harmony(split, seed: int) -> tuple[dict, dict]:
    import harmonypy

    t0 = time.time()
    genes, mats = _shared_matrix(split)
    X = np.vstack([lognorm(M) for M in mats])
    sd = X.std(0)
    X = np.clip((X - X.mean(0)) / np.where(sd > 0, sd, 1.0), -10, 10)
    n_comp = int(min(30, len(genes) - 1, len(X) - 1))
    from sklearn.decomposition import PCA

    P = PCA(n_comp, random_state=seed).fit_transform(X)
    sizes = np.cumsum([len(M) for M in mats])[:-1]
    t_pca = time.time() - t0
    batch = np.concatenate([np.full(len(M), i) for i, M in enumerate(mats)]).astype(str)
    ho = harmonypy.run_harmony(
        P, pd.DataFrame({"batch": batch}), ["batch"], random_state=seed, verbose=False
    )
    Z = np.asarray(ho.Z_corr)
    if Z.shape[0] != P.shape[0]:
        Z = Z.T
    info = {"n_shared": len(genes), "n_comp": n_comp}
    return (
        {"emb": np.split(P, sizes), "seconds": t_pca, "info": info},
        {"emb": np.split(Z, sizes), "seconds": time.time() - t0, "info": info},
    )


def scvi_scanvi(split, seed: int, max_epochs: int = 200, scanvi_epochs: int = 20) -> tuple:
    """scVI then scANVI (scvi-tools defaults for the networks; early stopping on)."""
    import anndata as ad
    import scvi
    import torch

    scvi.settings.seed = seed
    scvi.settings.dl_num_workers = 0
    scvi.settings.verbosity = 40
    t0 = time.time()
    genes, mats = _shared_matrix(split)
    X = np.vstack(mats).astype(np.float32)
    ok = X.sum(1) > 0  # scVI needs a library size: empty cells get no embedding
    lab = np.concatenate(
        [
            np.where([r in split.reference] * a.n_obs, _labels(a), None)
            for r, a in enumerate(split.sections)
        ]
    )
    lab = np.array(["Unknown" if v is None else v for v in lab], dtype=object)
    batch = np.concatenate([np.full(a.n_obs, f"s{i}") for i, a in enumerate(split.sections)])
    A = ad.AnnData(X=X[ok], obs=pd.DataFrame({"batch": batch[ok], "label": lab[ok]}))
    A.obs_names = [f"c{i}" for i in range(A.n_obs)]
    A.var_names = genes
    A.layers["counts"] = A.X.copy()
    kw = dict(
        accelerator="cpu",
        devices=1,
        early_stopping=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        # a last minibatch of one cell breaks BatchNorm in scvi-tools: drop it
        datasplitter_kwargs={"drop_last": True},
    )
    with torch.random.fork_rng(devices=[]):
        scvi.model.SCVI.setup_anndata(A, layer="counts", batch_key="batch", labels_key="label")
        vae = scvi.model.SCVI(A)
        vae.train(max_epochs=max_epochs, **kw)
        t_scvi = time.time() - t0
        z_scvi = vae.get_latent_representation()
        lvae = scvi.model.SCANVI.from_scvi_model(
            vae, unlabeled_category="Unknown", labels_key="label"
        )
        lvae.train(max_epochs=scanvi_epochs, n_samples_per_label=100, **kw)
        z_scanvi = lvae.get_latent_representation()
        pred_all = np.asarray(lvae.predict(), dtype=object)
    sizes = np.cumsum([a.n_obs for a in split.sections])[:-1]

    def full(z):
        out = np.full((len(X), z.shape[1]), np.nan, np.float32)
        out[ok] = z
        return np.split(out, sizes)

    p = np.full(len(X), None, dtype=object)
    p[ok] = pred_all
    pred = {
        q: pp for q, pp in zip(range(len(split.sections)), np.split(p, sizes)) if q in split.query
    }
    info = {
        "n_shared": len(genes),
        "empty_cells": int((~ok).sum()),
        "scvi_epochs": int(len(vae.history["elbo_train"])),
        "scanvi_epochs": int(len(lvae.history["elbo_train"])),
    }
    return (
        {"emb": full(z_scvi), "seconds": t_scvi, "info": info},
        {"emb": full(z_scanvi), "pred": pred, "seconds": time.time() - t0, "info": info},
    )


def _patch_scanpy():
    """Two library fixes for scanpy ingest (as benchmarks/annotation/run.py): pynndescent
    0.7 leaves ``n_search_trees`` None in the forest rebuild (use 1 tree, its default);
    scanpy 1.11's neighbour shortcut calls ``getnnz``, which scipy's ``csr_array`` lacks
    (hand it a ``csr_matrix``). Only the baseline's libraries are patched."""
    import pynndescent.rp_trees as rp
    import scipy.sparse as sp
    from scanpy.neighbors import _common

    if not getattr(rp.make_forest, "_patched", False):
        orig = rp.make_forest

        def make_forest(data, n_neighbors, n_trees, *a, **k):
            return orig(data, n_neighbors, n_trees or 1, *a, **k)

        make_forest._patched = True
        rp.make_forest = make_forest
    if not getattr(_common._ind_dist_shortcut, "_patched", False):
        orig_s = _common._ind_dist_shortcut

        def shortcut(d, /):
            return orig_s(sp.csr_matrix(d) if not hasattr(d, "getnnz") else d)

        shortcut._patched = True
        _common._ind_dist_shortcut = shortcut


def ingest(split, seed: int) -> dict:
    import anndata as ad
    import scanpy as sc

    _patch_scanpy()
    t0 = time.time()
    genes, mats = _shared_matrix(split)
    R = ad.AnnData(np.vstack([lognorm(mats[r]) for r in split.reference]).astype(np.float32))
    R.var_names = genes
    n_comp = int(min(30, len(genes) - 1, R.n_obs - 1))
    sc.pp.pca(R, n_comps=n_comp, random_state=seed)
    sc.pp.neighbors(R, n_neighbors=15, random_state=seed)
    emb = [None] * len(split.sections)
    off = 0
    for r in split.reference:
        emb[r] = R.obsm["X_pca"][off : off + len(mats[r])]
        off += len(mats[r])
    for q in split.query:
        Q = ad.AnnData(lognorm(mats[q]).astype(np.float32))
        Q.var_names = genes
        sc.tl.ingest(Q, R, embedding_method="pca")
        emb[q] = np.asarray(Q.obsm["X_pca"])
    return {"emb": emb, "seconds": time.time() - t0, "info": {"n_shared": len(genes)}}
