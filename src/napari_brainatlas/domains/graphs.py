"""The two cell graphs SpaCon trains on, as edge lists ``(src, dst)`` (message src -> dst).

* spatial graph: each cell's ``k`` nearest cells in CCF space (plus itself);
* connectivity graph: cells linked to cells of the regions their region connects to,
  sparsified (top ``k`` strongest target region/hemisphere pairs per source
  region/hemisphere, ``m`` target cells sampled per target pair), made symmetric (a cell
  hears from the cells it projects to and from the cells projecting to it). Cells
  without a connectivity row (region -1) or whose targets hold no cells get a self-loop
  only.

:class:`Graph` keeps the edges sorted by destination (CSR over incoming edges) so a
neighbour-sampled mini-batch gathers a seed set's 1-hop neighbourhood in O(edges).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["Graph", "connectivity_graph", "spatial_graph"]


class Graph:
    """Directed edges ``src -> dst`` over ``n`` nodes, sorted by ``dst``."""

    def __init__(self, src: np.ndarray, dst: np.ndarray, n: int, weight: np.ndarray | None = None):
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        order = np.lexsort((src, dst))
        self.src = src[order]
        self.dst = dst[order]
        self.weight = None if weight is None else np.asarray(weight, np.float32)[order]
        self.n = int(n)
        self.indptr = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.dst, minlength=self.n), out=self.indptr[1:])

    @property
    def n_edges(self) -> int:
        return int(self.src.size)

    def in_degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    def incoming(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(src, dst) of every edge into ``nodes`` (global ids)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        starts, ends = self.indptr[nodes], self.indptr[nodes + 1]
        counts = ends - starts
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        # positions of every incoming edge, vectorised
        offs = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        pos = np.arange(total, dtype=np.int64) + offs
        return self.src[pos], self.dst[pos]


def spatial_graph(coords: np.ndarray, k: int = 8, groups: np.ndarray | None = None) -> Graph:
    """kNN graph on ``coords`` (n, d) um, self-loops included, made symmetric.

    ``groups``: optional per-cell group (e.g. section) - neighbours only within a group
    (used when the coordinates are per-section frames, not a shared atlas space).
    """
    coords = np.asarray(coords, dtype=float)
    n = len(coords)
    if groups is None:
        groups = np.zeros(n, dtype=np.int64)
    src_all, dst_all = [np.arange(n)], [np.arange(n)]
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        kk = min(k, len(idx) - 1)
        if kk < 1:
            continue
        _, nb = cKDTree(coords[idx]).query(coords[idx], k=kk + 1, workers=-1)
        nb = idx[nb[:, 1:]]
        src_all.append(nb.ravel())
        dst_all.append(np.repeat(idx, kk))
        src_all.append(np.repeat(idx, kk))  # symmetric
        dst_all.append(nb.ravel())
    src = np.concatenate(src_all)
    dst = np.concatenate(dst_all)
    key = np.unique(dst * n + src)
    return Graph(key % n, key // n, n)


def connectivity_graph(
    region: np.ndarray,
    hemi: np.ndarray,
    w_ipsi: np.ndarray,
    w_contra: np.ndarray,
    top_k: int = 4,
    per_region: int = 3,
    seed: int = 0,
    min_weight: float = 0.0,
) -> Graph:
    """Sparsified cell-cell connectivity graph (see the module docstring).

    ``region`` (n,) connectome row per cell (-1: none), ``hemi`` (n,) 0/1. For each
    (source region, hemisphere) group the ``top_k`` strongest (target region, hemisphere)
    pairs that hold cells are kept (same side through ``w_ipsi``, across through
    ``w_contra``, weight > ``min_weight``); each source cell is linked to ``per_region``
    cells drawn at random from each kept target group. Edge weight = the region weight.
    """
    rng = np.random.default_rng(seed)
    region = np.asarray(region, dtype=np.int64)
    hemi = np.asarray(hemi, dtype=np.int64)
    n = len(region)
    ok = region >= 0
    gid = np.where(ok, region * 2 + hemi, -1)
    members: dict[int, np.ndarray] = {}
    if ok.any():
        order = np.argsort(gid[ok], kind="stable")
        cells = np.flatnonzero(ok)[order]
        keys, starts = np.unique(gid[cells], return_index=True)
        bounds = np.append(starts, len(cells))
        for i, g in enumerate(keys):
            members[int(g)] = cells[bounds[i] : bounds[i + 1]]
    present = np.array(sorted(members), dtype=np.int64)
    src_l, dst_l, w_l = [], [], []
    for g, cells in members.items():
        r, h = divmod(g, 2)
        tr, th = present // 2, present % 2
        w = np.where(th == h, w_ipsi[r, tr], w_contra[r, tr])
        keep = np.flatnonzero(w > min_weight)
        if keep.size == 0:
            continue
        keep = keep[np.argsort(-w[keep], kind="stable")[:top_k]]
        for t in keep:
            tcells = members[int(present[t])]
            m = min(per_region, len(tcells))
            pick = tcells[rng.integers(0, len(tcells), size=(len(cells), m))]
            src_l.append(np.repeat(cells, m))
            dst_l.append(pick.ravel())
            w_l.append(np.full(cells.size * m, w[t], np.float32))
    if src_l:
        s = np.concatenate(src_l)
        d = np.concatenate(dst_l)
        w = np.concatenate(w_l)
        # messages both ways: a cell hears from its targets and from its inputs
        src = np.concatenate([d, s])
        dst = np.concatenate([s, d])
        w = np.concatenate([w, w])
        not_self = src != dst
        src, dst, w = src[not_self], dst[not_self], w[not_self]
    else:
        src = dst = np.zeros(0, np.int64)
        w = np.zeros(0, np.float32)
    # de-duplicate, keep the largest weight
    key = dst * n + src
    order = np.lexsort((-w, key))
    key, w = key[order], w[order]
    first = np.ones(key.size, bool)
    first[1:] = key[1:] != key[:-1]
    key, w = key[first], w[first]
    src, dst = key % n, key // n
    lonely = np.flatnonzero(np.bincount(dst, minlength=n) == 0)
    src = np.concatenate([src, lonely])
    dst = np.concatenate([dst, lonely])
    w = np.concatenate([w, np.ones(lonely.size, np.float32)])
    return Graph(src, dst, n, weight=w)
