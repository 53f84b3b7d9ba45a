import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import numpy as np
import torch

torch.set_num_threads(1)
import os
from pathlib import Path

CACHE = os.environ.get("ROUND3_CACHE", "/tmp/explore")   # trained reference models
import run as B
from scipy.spatial import cKDTree

from napari_brainatlas.annotate import impute_genes, map_query
from napari_brainatlas.model import CELL_KEY, TISSUE_KEY, FuseMap
from napari_brainatlas.model._graph import spatial_graph
from napari_brainatlas.model._preprocess import (
    _as_csr_or_dense,
    clean_gene_names,
    normalize_log_scale,
)

which, ep, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if which == "osm":
    refs, q_full, hidden = B.osmfish_sets()
else:
    refs, q_full, hidden = B.demo_sets(True)
q = B.hide_genes(q_full, hidden)
model = FuseMap.load(Path(f"{CACHE}/{which}_ref{ep}"), sections=refs, device="cpu")
m = map_query(model, [q], epochs=ep, seed=seed, adversarial=False)
qw = m.write_embeddings()[0]
kept = np.isfinite(qw.obsm[CELL_KEY]).all(1)
ref_genes = set().union(*(B.upper_panel(a) for a in refs))
genes = [g for g in hidden if g in ref_genes]
name = m.query_names[0]; qp_genes = m.module.section_genes[name]
enc = m.module.encoders[name].eval()
# reference cells read through the query panel, encoded by the query encoder
Zs, Ts, V = [], [], []
for a, rp in zip(model.adatas, model.prepared):
    g2, cols = clean_gene_names(a.var_names); pos = dict(zip(g2, cols))
    src = a.layers.get("counts", a.X); M = _as_csr_or_dense(src[rp.kept])
    Xq = np.zeros((len(rp.kept), len(qp_genes)), np.float32)
    for j, g in enumerate(qp_genes):
        if g in pos:
            c = M[:, pos[g]]; Xq[:, j] = np.asarray(c.toarray() if hasattr(c, "toarray") else c).ravel()
    Xn = normalize_log_scale(Xq)
    with torch.no_grad():
        mu = enc(torch.from_numpy(np.asarray(Xn, np.float32)))[0].numpy()
    A = spatial_graph(rp.coords)
    Zs.append(mu); Ts.append(np.asarray(A @ mu, np.float32))
    vals = np.full((len(rp.kept), len(genes)), np.nan, np.float32)
    for j, g in enumerate(genes):
        if g in rp.genes:
            c = rp.X[:, rp.genes.index(g)]; vals[:, j] = np.asarray(c.toarray() if hasattr(c, "toarray") else c).ravel()
    V.append(vals)
Zs, Ts, V = np.concatenate(Zs), np.concatenate(Ts), np.concatenate(V)
Zq, Tq = qw.obsm[CELL_KEY], qw.obsm[TISSUE_KEY]
def knn_avg(R, Q, k=50, w=False):
    out = np.full((len(Q), V.shape[1]), np.nan, np.float32); ok = np.isfinite(Q).all(1)
    d, idx = cKDTree(R).query(Q[ok], k=k)
    if w:
        ww = np.exp(-(d / (d[:, [k // 2]] + 1e-9)) ** 2); ww /= ww.sum(1, keepdims=True)
        out[ok] = np.einsum("nk,nkg->ng", ww, V[idx])
    else:
        out[ok] = V[idx].mean(1)
    return out
variants = {"default": impute_genes(m, 0, genes)[genes].to_numpy()}
variants["sameview joint"] = knn_avg(np.hstack([Zs, Ts]), np.hstack([Zq, Tq]))
variants["sameview cell"] = knn_avg(Zs, Zq)
variants["sameview joint w"] = knn_avg(np.hstack([Zs, Ts]), np.hstack([Zq, Tq]), w=True)
variants["sameview joint k30"] = knn_avg(np.hstack([Zs, Ts]), np.hstack([Zq, Tq]), k=30)
shared = sorted(set(B.upper_panel(q)) & set.intersection(*(set(B.upper_panel(a)) for a in refs)))
Zr, Zh = B.harmony_space(refs, q, shared, 0)
from sklearn.neighbors import NearestNeighbors

nn = NearestNeighbors(n_neighbors=50).fit(Zr).kneighbors(Zh)[1]
res = {k: [] for k in list(variants) + ["baseline"]}
for j, g in enumerate(genes):
    meas = B.lognorm(q_full, [g])[:, 0]
    src = [B.lognorm(a, [g])[:, 0] if g in B.upper_panel(a) else np.full(a.n_obs, np.nan) for a in refs]
    base = np.nanmean(np.concatenate(src)[nn], 1)
    for k, v in variants.items():
        mm = kept & np.isfinite(v[:, j]) & np.isfinite(base)
        res[k].append(np.corrcoef(meas[mm], v[mm, j])[0, 1])
    res["baseline"].append(np.corrcoef(meas[mm], base[mm])[0, 1])
import pandas as pd

print(which, "seed", seed); print(pd.DataFrame(res, index=genes).mean().round(3).to_string(), flush=True)
