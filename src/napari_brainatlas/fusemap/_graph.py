"""Spatial graph of a section (method.md, "Data"): Delaunay edges, self loops, symmetric
normalisation ``A = D^-1/2 (A + I) D^-1/2``, kept sparse (scipy CSR, float32)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["delaunay_edges", "normalized_adjacency", "spatial_graph"]


def delaunay_edges(coords: np.ndarray) -> sp.csr_matrix:
    """Binary symmetric adjacency (no self loops) of the Delaunay triangulation.

    Duplicate points are kept apart by qhull (they end up without edges, i.e. with a
    self loop only after :func:`normalized_adjacency`). When the points are degenerate
    (collinear, fewer than 3), the 6 nearest neighbours are used instead.
    """
    xy = np.asarray(coords, dtype=np.float64)
    n = len(xy)
    if n < 2:
        return sp.csr_matrix((n, n), dtype=np.float32)
    from scipy.spatial import Delaunay, QhullError

    try:
        tri = Delaunay(xy)
        s = tri.simplices
        i = np.concatenate([s[:, 0], s[:, 1], s[:, 2]])
        j = np.concatenate([s[:, 1], s[:, 2], s[:, 0]])
    except (
        QhullError,
        ValueError,
    ):  # degenerate geometry (collinear / too few points): kNN fallback
        from scipy.spatial import cKDTree

        k = min(7, n)
        _, nn = cKDTree(xy).query(xy, k=k)
        i = np.repeat(np.arange(n), k - 1)
        j = nn[:, 1:].ravel()
    A = sp.coo_matrix((np.ones(len(i), np.float32), (i, j)), shape=(n, n)).tocsr()
    A = A + A.T
    A.setdiag(0)
    A.eliminate_zeros()
    A.data[:] = 1.0
    return A.astype(np.float32)


def normalized_adjacency(A: sp.spmatrix) -> sp.csr_matrix:
    """``D^-1/2 (A + I) D^-1/2`` with D the degree of ``A + I`` (CSR, float32, sorted indices)."""
    n = A.shape[0]
    M = sp.csr_matrix(A, dtype=np.float64) + sp.identity(n, format="csr", dtype=np.float64)
    deg = np.asarray(M.sum(axis=1)).ravel()
    dinv = 1.0 / np.sqrt(deg)
    D = sp.diags(dinv)
    out = (D @ M @ D).tocsr().astype(np.float32)
    out.sort_indices()
    return out


def spatial_graph(coords: np.ndarray) -> sp.csr_matrix:
    """Normalised Delaunay adjacency with self loops of the given coordinates; the
    identity for a dissociated section (coordinates all NaN: no tissue context)."""
    xy = np.asarray(coords, dtype=np.float64)
    if len(xy) and np.isnan(xy).all():
        A = sp.identity(len(xy), format="csr", dtype=np.float32)
        A.sort_indices()
        return A
    return normalized_adjacency(delaunay_edges(xy))
