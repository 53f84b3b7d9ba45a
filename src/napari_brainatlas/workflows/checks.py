"""Degenerate data, refused with one sentence before any slow step.

* :func:`check_spread` - cells all at one point, or all on one line (registration needs
  a two-dimensional section).
* :func:`check_expression` - NaN / infinite or negative expression values (the models
  read counts or non-negative normalised values).
* :func:`check_shared_genes` - a section sharing no gene with the others (a joint
  embedding needs a link between every section and the rest).
* :func:`low_count_cells` - per section, the cells at or below a total-count threshold
  (what the models cannot embed); :func:`flag_low_counts` keeps them flagged in
  ``obs['low_counts']``.

Each takes a section's name for the message; none modifies its input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._errors import BrainAtlasInputError

__all__ = [
    "LOW_COUNTS_KEY",
    "check_expression",
    "check_shared_genes",
    "check_spread",
    "finite_results",
    "flag_low_counts",
    "low_count_cells",
    "restore_missing",
]

#: obs column flagging the cells a model could not embed (too few counts: FuseMap's
#: preprocessing drops cells at or below its ``min_cell_counts``, zero-count cells always)
LOW_COUNTS_KEY = "fusemap_low_counts"
#: the label a flagged cell gets from a transfer (its uncertainty is 1)
UNASSIGNED = "unassigned"


def check_spread(xy, name: str = "the section") -> None:
    """One error when the cells sit at one point or on one line."""
    xy = np.asarray(xy, dtype=float)[:, :2]
    n = len(xy)
    if n == 0:
        raise BrainAtlasInputError(f"{name} has zero cells")
    centred = xy - xy.mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False) if n > 1 else np.zeros(2)
    scale = max(float(np.abs(xy).max()), 1.0)
    if n == 1 or s[0] <= 1e-9 * scale * np.sqrt(n):
        raise BrainAtlasInputError(
            f"all {n} cells of {name} are at one point; the coordinates are missing or "
            "constant (check the coordinate columns)"
        )
    if s[1] <= 1e-6 * s[0]:
        raise BrainAtlasInputError(
            f"all {n} cells of {name} lie on one line; a section needs two-dimensional "
            "coordinates (check the coordinate columns)"
        )


def _values(X) -> np.ndarray:
    if X is None:
        return np.zeros(0)
    if sp.issparse(X):
        return np.asarray(X.data)
    return np.asarray(X)


def check_expression(sections: Sequence[AnnData], names: Sequence[str], what: str) -> None:
    """One error when a section's expression holds NaN / infinite or negative values."""
    for a, name in zip(sections, names):
        if getattr(a, "isbacked", False):
            continue
        v = _values(a.X)
        if v.size == 0 or not np.issubdtype(v.dtype, np.number):
            continue
        bad = ~np.isfinite(v)
        if bad.any():
            raise BrainAtlasInputError(
                f"section {name!r} has {int(bad.sum())} NaN or infinite expression values; "
                f"{what} needs finite values (fill or drop them first)"
            )
        if (v < 0).any():
            raise BrainAtlasInputError(
                f"section {name!r} has {int((v < 0).sum())} negative expression values; "
                f"{what} needs counts or non-negative normalised values"
            )


def check_shared_genes(sections: Sequence[AnnData], names: Sequence[str]) -> None:
    """One error when a section shares no gene with the other sections."""
    if len(sections) < 2:
        return
    sets = [set(map(str, a.var_names)) for a in sections]
    for i, (genes, name) in enumerate(zip(sets, names)):
        others = set().union(*(s for j, s in enumerate(sets) if j != i))
        if not genes & others:
            raise BrainAtlasInputError(
                f"section {name!r} shares no gene with the other sections; a joint "
                "embedding needs shared genes (check the gene names, e.g. symbols vs ids)"
            )


def _totals(a: AnnData) -> np.ndarray:
    X = a.layers["counts"] if "counts" in a.layers else a.X
    if X is None:
        return np.zeros(a.n_obs)
    return np.asarray(X.sum(axis=1)).ravel().astype(float)


def low_count_cells(a: AnnData, threshold: float = 0) -> np.ndarray:
    """Boolean mask of the cells whose total count is at or below ``threshold`` (with
    a threshold of 0: the cells with no count at all)."""
    t = _totals(a)
    return ~np.isfinite(t) | (t <= float(threshold))


def flag_low_counts(a: AnnData, mask: np.ndarray) -> None:
    """``obs['low_counts']`` = ``mask`` on ``a`` (a result object, not an input)."""
    a.obs[LOW_COUNTS_KEY] = np.asarray(mask, dtype=bool)


def _bad_rows(M) -> np.ndarray | None:
    try:
        M = np.asarray(M)
    except (TypeError, ValueError):
        return None
    if M.ndim != 2 or not np.issubdtype(M.dtype, np.floating):
        return None
    return ~np.isfinite(M).all(axis=1)


def finite_results(sections: Sequence[AnnData], names: Sequence[str]) -> list[str]:
    """Make result objects safe to write, in place, and say what changed per section.

    Cells whose embedding rows (float ``obsm`` arrays) are not finite - the cells a model
    dropped for too few counts - get zero rows and ``obs['fusemap_low_counts'] = True``;
    a transferred label of such a cell (``obs['<label>_transfer']``) becomes
    ``'unassigned'`` with uncertainty 1; an imputed value (``obs['imputed_<gene>']``)
    0. Returns one note per section with flagged cells."""
    notes = []
    for a, name in zip(sections, names):
        flag = np.zeros(a.n_obs, bool)
        if LOW_COUNTS_KEY in a.obs:
            flag |= a.obs[LOW_COUNTS_KEY].to_numpy(dtype=bool)
        for key in list(a.obsm.keys()):
            bad = _bad_rows(a.obsm[key])
            if bad is not None and bad.any():
                M = np.array(a.obsm[key], copy=True)
                M[bad] = 0.0
                M[~np.isfinite(M)] = 0.0
                a.obsm[key] = M
                flag |= bad
        for col in list(a.obs.columns):
            c = str(col)
            if c.endswith("_transfer"):
                v = a.obs[col].astype(object)
                miss = v.isna().to_numpy() | flag
                if miss.any():
                    v = v.where(~miss, UNASSIGNED).astype(str)
                    a.obs[col] = pd.Categorical(v)
            elif c.endswith("_transfer_uncertainty") or c.startswith("imputed_"):
                v = pd.to_numeric(a.obs[col], errors="coerce").to_numpy(dtype=float)
                miss = ~np.isfinite(v) | (flag & c.endswith("_uncertainty"))
                if miss.any():
                    v = v.copy()
                    v[miss] = 1.0 if c.endswith("_uncertainty") else 0.0
                    a.obs[col] = v.astype(np.float32)
        if flag.any() or LOW_COUNTS_KEY in a.obs:
            a.obs[LOW_COUNTS_KEY] = flag
        if flag.any():
            notes.append(
                f"{name}: {int(flag.sum())} of {a.n_obs} cells have too few counts to embed; "
                f"kept with zero embeddings, flagged in obs['{LOW_COUNTS_KEY}'] "
                f"(labels '{UNASSIGNED}', uncertainty 1)"
            )
    return notes


def restore_missing(sections: Sequence[AnnData]) -> list[AnnData]:
    """Copies of the sections flagged by :func:`finite_results` with NaN again in the
    flagged cells' embedding rows, so the engines leave them out (others unchanged)."""
    out = []
    for a in sections:
        flag = a.obs[LOW_COUNTS_KEY].to_numpy(dtype=bool) if LOW_COUNTS_KEY in a.obs else None
        if flag is None or not flag.any():
            out.append(a)
            continue
        b = a.copy()
        for key in ("X_fusemap_cell", "X_fusemap_tissue"):
            if key in b.obsm:
                M = np.array(b.obsm[key], dtype=np.float32, copy=True)
                M[flag] = np.nan
                b.obsm[key] = M
        out.append(b)
    return out
