"""The one evaluation every method of the embedding benchmark gets (issue 26).

* ``knn``: cell-type transfer by a k = 15 majority vote of the reference sections'
  labelled cells in the method's embedding, onto every labelled cell of the query
  sections: accuracy and macro-F1 (over the cell types present in the query). A query
  cell the method gave no embedding (NaN row: FuseMap drops cells with <= 5 counts,
  scVI cells with no count in the shared genes) counts as wrong.
* ``pred``: the method's own label transfer where it has one (FuseMap's MLP,
  ``transfer_labels``; scANVI's classifier), scored the same way.
* ``ilisi``: section mixing, kNN-30 inverse Simpson index of the sections among each
  cell's neighbours, rescaled to [0, 1] (metrics.py), over every embedded cell.
* ``impute_r``: for each query section, the genes it lacks that a reference section
  measures; Pearson R over the query's cells between the method's imputation and the
  real measurement of those cells (the set's original counts, log1p of total-normalised
  counts); mean over (section, gene). The baselines (and any method without its own)
  impute by the mean of the 50 nearest reference cells that measured the gene in the
  method's embedding (the paper's baseline); cells without an imputation get the mean
  imputed value (a constant, so they lower R instead of being left out).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from methods import lognorm
from metrics import ilisi
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neighbors import NearestNeighbors
from splits import CELL_LABEL

NONE = "__none__"


def _labels(a) -> np.ndarray:
    return np.array([None if pd.isna(v) else str(v) for v in a.obs[CELL_LABEL]], dtype=object)


def _query_truth(split):
    out = []
    for q in split.query:
        lab = _labels(split.sections[q])
        out.append((q, lab, np.array([v is not None for v in lab])))
    return out


def score(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    t = np.asarray(truth).astype(str)
    p = np.array([NONE if v is None else str(v) for v in pred])
    return float(accuracy_score(t, p)), float(
        f1_score(t, p, labels=np.unique(t), average="macro", zero_division=0)
    )


def knn_predict(emb, split, k: int = 15) -> dict:
    Zr, yr = [], []
    for r in split.reference:
        z, lab = np.asarray(emb[r], float), _labels(split.sections[r])
        ok = np.isfinite(z).all(1) & np.array([v is not None for v in lab])
        Zr.append(z[ok])
        yr.append(lab[ok])
    Zr, yr = np.concatenate(Zr), np.concatenate(yr).astype(str)
    nn = NearestNeighbors(n_neighbors=min(k, len(Zr))).fit(Zr)
    cats, codes = np.unique(yr, return_inverse=True)
    out = {}
    for q in split.query:
        z = np.asarray(emb[q], float)
        ok = np.isfinite(z).all(1)
        pred = np.full(len(z), None, dtype=object)
        if ok.any():
            idx = nn.kneighbors(z[ok])[1]
            votes = np.zeros((len(idx), len(cats)))
            np.add.at(votes, (np.arange(len(idx))[:, None], codes[idx]), 1.0)
            pred[ok] = cats[votes.argmax(1)]
        out[q] = pred
    return out


def label_metrics(pred: dict, split) -> dict:
    T, P = [], []
    for q, lab, ok in _query_truth(split):
        T.append(lab[ok])
        P.append(np.asarray(pred[q], dtype=object)[ok])
    if not T or sum(len(t) for t in T) == 0:
        return {}
    acc, f1 = score(np.concatenate(T), np.concatenate(P))
    return {"acc": acc, "f1": f1}


def mixing(emb) -> float:
    Z = np.concatenate([np.asarray(e, float) for e in emb])
    b = np.concatenate([np.full(len(e), i) for i, e in enumerate(emb)])
    ok = np.isfinite(Z).all(1)
    return ilisi(Z[ok], b[ok], k=30)


def impute_targets(split, v: int) -> list[str]:
    own = set(split.panels[v])
    ref = set().union(*(set(split.panels[r]) for r in split.reference))
    return [g for g in split.truth_genes if g in ref and g not in own]


def knn_impute(emb, split, v: int, genes: list[str], k: int = 50) -> pd.DataFrame:
    """Mean of the k nearest reference cells that measured each gene (the paper's
    baseline), in the embedding ``emb``."""
    zq = np.asarray(emb[v], float)
    okq = np.isfinite(zq).all(1)
    out = pd.DataFrame(np.nan, index=split.sections[v].obs_names, columns=genes)
    by_ref = {}
    for r in split.reference:
        a = split.sections[r]
        z = np.asarray(emb[r], float)
        ok = np.isfinite(z).all(1)
        X = lognorm(np.asarray(a.layers["counts"]))
        by_ref[r] = (z[ok], X[ok], {g: i for i, g in enumerate(a.var_names)})
    for g in genes:
        Z = [by_ref[r][0] for r in split.reference if g in by_ref[r][2]]
        V = [by_ref[r][1][:, by_ref[r][2][g]] for r in split.reference if g in by_ref[r][2]]
        if not Z or not okq.any():
            continue
        Z, V = np.concatenate(Z), np.concatenate(V)
        idx = NearestNeighbors(n_neighbors=min(k, len(Z))).fit(Z).kneighbors(zq[okq])[1]
        col = np.full(len(zq), np.nan)
        col[okq] = V[idx].mean(1)
        out[g] = col
    return out


def _pearson(a, b) -> float:
    if a.std() == 0 or b.std() == 0:
        return np.nan
    return float(np.corrcoef(a, b)[0, 1])


def imputation(result: dict, split) -> dict:
    rs = []
    own = result.get("impute") or {}
    for v in split.query:
        genes = impute_targets(split, v)
        if not genes:
            continue
        truth = lognorm(split.truth[v])
        col = {g: i for i, g in enumerate(split.truth_genes)}
        if v in own:
            df = own[v]
            df = df.rename(columns={c: c for c in df.columns})
            up = {g.upper(): g for g in genes}
            df = df[[c for c in df.columns if c in up]].rename(columns=up)
        else:
            df = knn_impute(result["emb"], split, v, genes)
        for g in genes:
            if g not in df.columns:
                continue
            p = df[g].to_numpy(float)
            if not np.isfinite(p).any():
                continue
            p = np.where(np.isfinite(p), p, np.nanmean(p))
            r = _pearson(truth[:, col[g]], p)
            if np.isfinite(r):
                rs.append(r)
    return {"impute_r": float(np.mean(rs)) if rs else np.nan, "impute_genes": len(rs)}


def evaluate(result: dict, split, with_impute: bool = True) -> dict:
    emb = result["emb"]
    out = {"ilisi": mixing(emb)}
    knn = label_metrics(knn_predict(emb, split), split)
    out.update({f"knn_{k}": v for k, v in knn.items()})
    if result.get("pred"):
        lm = label_metrics(result["pred"], split)
        out.update({f"pred_{k}": v for k, v in lm.items()})
    if with_impute:
        out.update(imputation(result, split))
    out["unembedded_query"] = int(
        sum((~np.isfinite(np.asarray(emb[q], float)).all(1)).sum() for q in split.query)
    )
    return out
