"""Integration metrics used by the embedding benchmark (plain numpy / scikit-learn).

* ``ilisi``: kNN inverse Simpson index of section proportions among the k nearest
  neighbours of each cell (unweighted LISI), rescaled to [0, 1]: (iLISI - 1) / (V - 1);
  1 = every neighbourhood holds all sections in equal parts.
* ``batch_asw``: scib-style batch ASW, mean over labels of 1 - |silhouette of the
  sections| within the label (1 = mixed).
* ``label_asw``: silhouette of the labels, rescaled (s + 1) / 2 (higher = labels kept apart).
* ``cross_knn_accuracy``: each cell's label predicted by the majority of its k nearest
  cells from *other* sections; mean accuracy (label transfer across sections).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import silhouette_samples
from sklearn.neighbors import NearestNeighbors


def _sub(rng, n, m):
    return np.sort(rng.choice(n, m, replace=False)) if n > m else np.arange(n)


def ilisi(Z, batch, k=30):
    b = np.asarray(batch)
    cats, codes = np.unique(b, return_inverse=True)
    V = len(cats)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z)[1][:, 1:]
    counts = np.zeros((len(Z), V))
    for v in range(V):
        counts[:, v] = (codes[idx] == v).sum(1)
    p = counts / k
    lisi = 1.0 / (p**2).sum(1)
    return float((lisi.mean() - 1) / max(V - 1, 1))


def batch_asw(Z, batch, labels, max_cells=10000, seed=0):
    rng = np.random.default_rng(seed)
    s = _sub(rng, len(Z), max_cells)
    Z, b, L = Z[s], np.asarray(batch)[s], np.asarray(labels)[s]
    vals = []
    for lab in np.unique(L):
        m = L == lab
        if m.sum() < 10 or len(np.unique(b[m])) < 2:
            continue
        sil = silhouette_samples(Z[m], b[m])
        vals.append(np.mean(1 - np.abs(sil)))
    return float(np.mean(vals)) if vals else float("nan")


def label_asw(Z, labels, max_cells=10000, seed=0):
    rng = np.random.default_rng(seed)
    s = _sub(rng, len(Z), max_cells)
    return float((silhouette_samples(Z[s], np.asarray(labels)[s]).mean() + 1) / 2)


def cross_knn_accuracy(Z, batch, labels, k=15):
    b = np.asarray(batch)
    L = np.asarray(labels)
    correct = np.zeros(len(Z), bool)
    for v in np.unique(b):
        q, r = b == v, b != v
        nn = NearestNeighbors(n_neighbors=k).fit(Z[r])
        idx = nn.kneighbors(Z[q])[1]
        lr = L[r][idx]
        pred = []
        for row in lr:
            u, c = np.unique(row, return_counts=True)
            pred.append(u[np.argmax(c)])
        correct[q] = np.asarray(pred) == L[q]
    return float(correct.mean())


def all_metrics(Z, batch, labels):
    return dict(
        iLISI=ilisi(Z, batch),
        batch_ASW=batch_asw(Z, batch, labels),
        label_ASW=label_asw(Z, labels),
        cross_kNN_acc=cross_knn_accuracy(Z, batch, labels),
    )
