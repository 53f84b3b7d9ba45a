import pickle
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import numpy as np
import torch

torch.set_num_threads(1)
import run as B
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier

from napari_brainatlas.model import CELL_KEY

d = pickle.load(open(sys.argv[1], "rb"))
lab = sys.argv[2]
refs, refw, q, qw, q_full = d["refs"], d["refw"], d["q"], d["qw"], d["q_full"]
Z = np.concatenate([a.obsm[CELL_KEY] for a in refw]); y = np.concatenate([a.obs[lab].astype(str) for a in refw])
ok = np.isfinite(Z).all(1); Z, y = Z[ok], y[ok]
genes = B.upper_panel(refs[0]); X = np.vstack([B.lognorm(a, genes) for a in refs])[ok]
X = (X - X.mean(0)) / (X.std(0) + 1e-8); P = PCA(20, random_state=0).fit_transform(X)
rng = np.random.default_rng(0); idx = rng.permutation(len(y)); tr, te = idx[:int(.8*len(y))], idx[int(.8*len(y)):]
for name, F in (("zC", Z), ("PCA all ref genes", P)):
    acc = (KNeighborsClassifier(15).fit(F[tr], y[tr]).predict(F[te]) == y[te]).mean()
    print("within-ref knn15", name, round(acc, 3))
# query: own-panel PCA kNN cross-val (how separable are query types in its own genes)
kept = np.isfinite(qw.obsm[CELL_KEY]).all(1)
yq = q.obs[lab].astype(str).to_numpy()[kept]
for name, F in (("query zC", qw.obsm[CELL_KEY][kept]),):
    idx = rng.permutation(len(yq)); tr, te = idx[:int(.8*len(yq))], idx[int(.8*len(yq)):]
    print("within-query knn15", name, round((KNeighborsClassifier(15).fit(F[tr], yq[tr]).predict(F[te]) == yq[te]).mean(), 3))
gq = B.upper_panel(q); Xq = B.lognorm(q, gq)[kept]; Xq = (Xq - Xq.mean(0)) / (Xq.std(0) + 1e-8)
Pq = PCA(20, random_state=0).fit_transform(Xq)
print("within-query knn15 PCA query genes", round((KNeighborsClassifier(15).fit(Pq[tr], yq[tr]).predict(Pq[te]) == yq[te]).mean(), 3))
