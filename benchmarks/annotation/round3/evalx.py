import pickle
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import numpy as np
import pandas as pd
import torch

torch.set_num_threads(1)
import run as B

from napari_brainatlas.annotate import impute_genes
from napari_brainatlas.annotate.classifier import KNNLabelClassifier, MLPLabelClassifier
from napari_brainatlas.model import CELL_KEY, TISSUE_KEY

d = pickle.load(open(sys.argv[1], "rb"))
refs, q_full, q, hidden, refw, qw, E = (d[k] for k in ["refs", "q_full", "q", "hidden", "refw", "qw", "E"])
lab = sys.argv[2]
what = sys.argv[3] if len(sys.argv) > 3 else "both"
kept = np.isfinite(qw.obsm[CELL_KEY]).all(1)
ZrC = np.concatenate([a.obsm[CELL_KEY] for a in refw]); ZqC = qw.obsm[CELL_KEY]
ZrT = np.concatenate([a.obsm[TISSUE_KEY] for a in refw]); ZqT = qw.obsm[TISSUE_KEY]
yr = np.concatenate([a.obs[lab].astype(str) for a in refw])
okr = np.isfinite(ZrC).all(1)
truth = q.obs[lab].astype(str).to_numpy()[kept]
shared = sorted(set(B.upper_panel(q)) & set.intersection(*(set(B.upper_panel(a)) for a in refs)))
Zr, Zq = B.harmony_space(refs, q, shared, 0)
print("harmony knn", B.scores(truth, B.knn_vote(Zr, np.concatenate([a.obs[lab].astype(str) for a in refs]), Zq)[kept]))
def ev(name, pred):
    print(f"{name:40s} acc {B.scores(truth, pred)[0]:.3f} f1 {B.scores(truth, pred)[1]:.3f}", flush=True)
if what in ("both", "cls"):
    for mon in ["balanced_accuracy"]:
        P = []
        for s in range(5):
            c = MLPLabelClassifier(seed=s, monitor=mon).fit(ZrC[okr], yr[okr])
            p = c.predict_proba(ZqC[kept]); P.append(p)
            ev(f"mlp seed{s}", c.classes_[p.argmax(1)])
        ev("mlp 5-seed mean", c.classes_[np.mean(P, 0).argmax(1)])
    for k in (15, 30, 50):
        c = KNNLabelClassifier(k).fit(ZrC[okr], yr[okr]); ev(f"knn{k} zC", c.classes_[c.predict_proba(ZqC[kept]).argmax(1)])
    J = np.hstack([ZrC, ZrT]); Jq = np.hstack([ZqC, ZqT])
    c = MLPLabelClassifier(seed=0).fit(J[okr], yr[okr]); ev("mlp joint", c.classes_[c.predict_proba(Jq[kept]).argmax(1)])
if what in ("both", "imp"):
    from sklearn.neighbors import NearestNeighbors
    nn = NearestNeighbors(n_neighbors=50).fit(Zr).kneighbors(Zq)[1]
    ref_genes = set().union(*(B.upper_panel(a) for a in refs))
    genes = [g for g in hidden if g in ref_genes]
    variants = {}
    for k in (30, 50, 100):
        variants[f"knn{k} joint"] = impute_genes(E, qw, genes, method="knn", k=k, reference=refw, space="joint")
    variants["knn50 cell"] = impute_genes(E, qw, genes, method="knn", k=50, reference=refw, space="cell")
    variants["decoder"] = impute_genes(E, qw, genes, method="decoder")
    res = {k: [] for k in list(variants) + ["ens knn50j+dec", "baseline"]}
    for g in genes:
        meas = B.lognorm(q_full, [g])[:, 0]
        src = [B.lognorm(a, [g])[:, 0] if g in B.upper_panel(a) else np.full(a.n_obs, np.nan) for a in refs]
        base = np.nanmean(np.concatenate(src)[nn], 1)
        m = kept & np.isfinite(base)
        r = lambda a, b: float(np.corrcoef(a, b)[0, 1])
        for k, df in variants.items():
            res[k].append(r(meas[m], df[g].to_numpy()[m]))
        z = lambda v: (v - v[m].mean()) / (v[m].std() + 1e-9)
        ens = z(variants["knn50 joint"][g].to_numpy()) + z(variants["decoder"][g].to_numpy())
        res["ens knn50j+dec"].append(r(meas[m], ens[m]))
        res["baseline"].append(r(meas[m], base[m]))
    print(pd.DataFrame(res, index=genes).round(3).to_string())
    print(pd.DataFrame(res).mean().round(3).to_string())
