"""Views of trained embeddings across sections: joint Leiden clusters and a joint UMAP.

Inputs are AnnData sections carrying ``obsm[key]`` (``X_fusemap_cell`` or
``X_fusemap_tissue``, (n, k)); rows that are NaN (cells dropped by preprocessing) get
cluster ``"NA"`` / UMAP coordinates NaN.
"""

from __future__ import annotations

import itertools

import numpy as np

from .._errors import BrainAtlasInputError
from ._balance import leiden_labels

__all__ = ["joint_clusters", "joint_umap"]


def _stack(sections, key: str):
    missing = [i for i, s in enumerate(sections) if key not in s.obsm]
    if missing:
        raise BrainAtlasInputError(f"no obsm['{key}'] in section {missing[0]}: embed it first")
    Z = np.vstack([np.asarray(s.obsm[key], dtype=np.float32) for s in sections])
    ok = np.isfinite(Z).all(axis=1)
    if ok.sum() < 3:
        raise BrainAtlasInputError("too few embedded cells to cluster")
    bounds = np.cumsum([0] + [s.n_obs for s in sections])
    return Z, ok, bounds


def joint_clusters(
    sections, key: str = "X_fusemap_cell", resolution: float = 1.0, seed: int = 0
) -> list[np.ndarray]:
    """Leiden clusters of all sections' embeddings together (so cluster ``"3"`` means the
    same thing in every section); one string array per section."""
    Z, ok, bounds = _stack(sections, key)
    lab = np.full(len(Z), "NA", dtype=object)
    lab[ok] = leiden_labels(Z[ok], resolution=resolution, seed=seed).astype(str)
    return [lab[a:b].astype(str) for a, b in itertools.pairwise(bounds)]


def joint_umap(
    sections, key: str = "X_fusemap_cell", seed: int = 0, max_cells: int = 200_000
) -> list[np.ndarray]:
    """2D UMAP of all sections' embeddings together; one (n, 2) array per section.

    Above ``max_cells`` the map is fitted on a random subset and the rest are placed by
    ``transform``.
    """
    import umap

    Z, ok, bounds = _stack(sections, key)
    idx = np.flatnonzero(ok)
    rng = np.random.default_rng(seed)
    fit = idx if len(idx) <= max_cells else rng.choice(idx, max_cells, replace=False)
    reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=15)
    emb = np.full((len(Z), 2), np.nan, dtype=np.float32)
    emb[fit] = reducer.fit_transform(Z[fit])
    rest = np.setdiff1d(idx, fit)
    if len(rest):
        emb[rest] = reducer.transform(Z[rest])
    return [emb[a:b] for a, b in itertools.pairwise(bounds)]
