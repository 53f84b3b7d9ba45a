"""Checks every section must pass before anything else sees it."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._errors import BrainAtlasInputError

__all__ = ["is_integer_matrix", "validate_section"]


def is_integer_matrix(X, sample: int = 200_000) -> bool:
    """True when ``X`` holds non-negative integer values (checked on a sample)."""
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    if np.issubdtype(data.dtype, np.integer):
        return bool(data.size == 0 or data[:sample].min() >= 0)
    if data.size == 0:
        return True
    d = data[:sample] if data.size > sample else data
    return bool(np.all(d >= 0) and np.all(np.mod(d, 1) == 0))


def validate_section(adata: AnnData, source: str = "input") -> None:
    """Raise :class:`BrainAtlasInputError` with one sentence for input that cannot be used.

    Checks: at least one cell; coordinates present as a finite (n, 2) float array in
    ``obsm['spatial']``; unique gene names; numeric expression.
    """
    if adata.n_obs == 0:
        raise BrainAtlasInputError(f"{source}: the section has zero cells")
    xy = adata.obsm.get("spatial")
    if xy is None:
        raise BrainAtlasInputError(f"{source}: no cell coordinates found")
    xy = np.asarray(xy)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise BrainAtlasInputError(f"{source}: coordinates must be an (n, 2) array")
    if not np.issubdtype(xy.dtype, np.number):
        raise BrainAtlasInputError(f"{source}: coordinates are not numeric")
    bad = ~np.isfinite(xy[:, :2]).all(axis=1)
    if bad.any():
        raise BrainAtlasInputError(
            f"{source}: {int(bad.sum())} of {len(xy)} cells have NaN or infinite coordinates"
        )
    names = adata.var_names
    if not names.is_unique:
        dup = names[names.duplicated()].unique()[:5]
        raise BrainAtlasInputError(
            f"{source}: duplicate gene names ({', '.join(map(str, dup))}); make them unique first"
        )
    X = adata.X
    if X is not None:
        dtype = X.dtype if hasattr(X, "dtype") else np.asarray(X).dtype
        if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
            raise BrainAtlasInputError(f"{source}: expression values are not numeric")
