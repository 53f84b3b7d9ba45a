"""Balance weights between pretraining and final training (method.md, "Training").

For each embedding (z_C, then z_T) and each section: Leiden clusters on a kNN graph of
the section's cells; cosine similarity of cluster centroids across sections, values
< 0.5 set to 0, then raised to the 4th power; a cluster's score is the mean over the
other sections of its best match there; each cell gets its cluster's score, rescaled
to mean 1 within its section (all ones when nothing in the section matches). Cells of
clusters with no counterpart elsewhere then count little in the adversarial terms, so
sections with different cell-type compositions are not forced together.

Large sections are clustered on a random subset of ``max_cells`` cells; the other cells
take the cluster of the nearest centroid. Without ``leidenalg`` k-means is used.
"""

from __future__ import annotations

import numpy as np

__all__ = ["balance_weights", "leiden_labels"]


def leiden_labels(
    z: np.ndarray, resolution: float = 1.0, n_neighbors: int = 15, seed: int = 0
) -> np.ndarray:
    """Leiden clusters of the rows of ``z`` on a symmetric kNN graph (euclidean)."""
    n = len(z)
    if n <= 2:
        return np.zeros(n, dtype=np.int64)
    from sklearn.neighbors import NearestNeighbors

    k = min(n_neighbors, n - 1)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(z)
    _, idx = nn.kneighbors(z)
    src = np.repeat(np.arange(n), k)
    dst = idx[:, 1:].ravel()
    try:
        import igraph as ig
        import leidenalg
    except ImportError:  # pragma: no cover - optional dependency
        from sklearn.cluster import KMeans

        n_cl = int(max(2, min(30, round(np.sqrt(n / 10)))))
        return KMeans(n_cl, n_init=3, random_state=seed).fit_predict(z).astype(np.int64)
    edges = np.stack([np.minimum(src, dst), np.maximum(src, dst)], 1)
    edges = np.unique(edges, axis=0)
    g = ig.Graph(n=n, edges=edges.tolist(), directed=False)
    part = leidenalg.find_partition(
        g, leidenalg.RBConfigurationVertexPartition, resolution_parameter=resolution, seed=int(seed)
    )
    return np.asarray(part.membership, dtype=np.int64)


def _cluster_section(z: np.ndarray, resolution: float, max_cells: int, rng) -> tuple:
    n = len(z)
    sub = np.sort(rng.choice(n, max_cells, replace=False)) if n > max_cells else np.arange(n)
    lab_sub = leiden_labels(z[sub], resolution=resolution, seed=int(rng.integers(1 << 30)))
    n_cl = int(lab_sub.max()) + 1
    cent = np.stack([z[sub][lab_sub == c].mean(0) for c in range(n_cl)])
    if len(sub) == n:
        labels = lab_sub
    else:
        from scipy.spatial import cKDTree

        labels = cKDTree(cent).query(z)[1].astype(np.int64)
        labels[sub] = lab_sub
    return labels, cent


def balance_weights(
    latents: list[np.ndarray],
    resolution: float = 1.0,
    cutoff: float = 0.5,
    power: float = 4.0,
    max_cells: int = 20000,
    seed: int = 0,
) -> list[np.ndarray]:
    """Per-cell weights (mean 1 per section) from one embedding of every section."""
    rng = np.random.default_rng(seed)
    if len(latents) < 2:
        return [np.ones(len(z), np.float32) for z in latents]
    clus = [
        _cluster_section(np.asarray(z, np.float64), resolution, max_cells, rng) for z in latents
    ]
    unit = []
    for _, cent in clus:
        nrm = np.linalg.norm(cent, axis=1, keepdims=True)
        unit.append(cent / np.maximum(nrm, 1e-12))
    out = []
    for v, (labels, _) in enumerate(clus):
        scores = []
        for u in range(len(clus)):
            if u == v:
                continue
            s = unit[v] @ unit[u].T
            s[s < cutoff] = 0.0
            s = np.power(s, power)
            scores.append(s.max(axis=1))
        w_cl = np.mean(scores, axis=0)
        w = w_cl[labels]
        if not np.isfinite(w).all() or w.sum() <= 0:
            w = np.ones(len(labels))
        else:
            w = w / w.mean()
        out.append(w.astype(np.float32))
    return out
