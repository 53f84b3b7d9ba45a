"""Preprocessing of one section for FuseMap (method.md, "Data").

* Gene symbols are upper-cased (and stripped); duplicates after upper-casing are dropped,
  keeping the first occurrence.
* Integer counts (``layers['counts']`` when present, else ``X`` when it holds non-negative
  integers): cells with total count <= 5 and then genes with sum <= 1 are dropped, then
  ``scanpy.pp.normalize_total`` (median target), ``log1p`` and
  ``scale(zero_center=False, max_value=10)``.
* Non-integer input is used as is (no filtering, no scaling).
* A dissociated section (scRNA-seq, snRNA-seq: no tissue coordinates) is given with
  ``obsm['spatial']`` all NaN; its coordinates stay NaN and its spatial graph is the
  identity (each cell its own neighbourhood, so z_T = z_C). Some NaN rows among finite
  ones are an input error.

The caller's AnnData is never modified: the matrices are copied. ``kept`` maps the rows
of the prepared matrix back to the caller's cells; dropped cells get NaN embeddings when
results are written back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._errors import BrainAtlasInputError

__all__ = [
    "PreparedSection",
    "clean_gene_names",
    "is_integer_matrix",
    "normalize_log_scale",
    "preprocess_section",
]


@dataclass
class PreparedSection:
    """One section ready for the model.

    Attributes
    ----------
    name : section name (key of its encoder).
    X : float32 (n_kept, n_genes) model input; scipy CSR when the input was sparse.
    genes : upper-cased, de-duplicated gene symbols (columns of ``X``).
    coords : float64 (n_kept, 2) micrometres (all NaN for a dissociated section).
    kept : int64 (n_kept,) positions of the kept cells in the caller's AnnData.
    n_obs : number of cells in the caller's AnnData.
    was_counts : True when the input was integer counts (and was normalised).
    """

    name: str
    X: np.ndarray | sp.csr_matrix
    genes: list[str]
    coords: np.ndarray
    kept: np.ndarray
    n_obs: int
    was_counts: bool
    info: dict = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return int(self.X.shape[0])


def is_integer_matrix(X, sample: int = 500_000) -> bool:
    """True when ``X`` holds non-negative integer values (checked on up to ``sample`` values)."""
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    if data.size == 0:
        return True
    d = data[:sample]
    if np.issubdtype(d.dtype, np.integer):
        return bool(d.min() >= 0)
    if not np.issubdtype(d.dtype, np.floating):
        return False
    return bool(np.all(d >= 0) and np.all(np.mod(d, 1) == 0))


def clean_gene_names(names) -> tuple[list[str], np.ndarray]:
    """Upper-case and de-duplicate gene symbols; returns (names, column positions kept)."""
    seen: dict[str, int] = {}
    keep = []
    out = []
    for i, g in enumerate(map(str, names)):
        u = g.strip().upper()
        if u in seen or not u:
            continue
        seen[u] = i
        keep.append(i)
        out.append(u)
    return out, np.asarray(keep, dtype=np.int64)


def normalize_log_scale(M, max_value: float = 10.0):
    """``scanpy.pp.normalize_total`` (target: median total), ``log1p`` and
    ``scale(zero_center=False, max_value)`` in plain numpy/scipy (same arithmetic as
    scanpy: per-gene std with ddof=1, zero std -> 1); returns float32, sparse stays sparse."""
    M = _as_csr_or_dense(M).copy()
    tot = np.asarray(M.sum(axis=1), dtype=np.float64).ravel()
    target = float(np.median(tot[tot > 0])) if (tot > 0).any() else 1.0
    f = np.divide(target, tot, out=np.zeros_like(tot), where=tot > 0)
    n = M.shape[0]
    if sp.issparse(M):
        M = sp.csr_matrix(sp.diags(f.astype(np.float32)) @ M, dtype=np.float32)
        np.log1p(M.data, out=M.data)
        sq = M.multiply(M).sum(axis=0)
        mean = np.asarray(M.sum(axis=0), dtype=np.float64).ravel() / n
        var = np.asarray(sq, dtype=np.float64).ravel() / n - mean**2
    else:
        M = (M * f[:, None].astype(np.float32)).astype(np.float32)
        np.log1p(M, out=M)
        mean = M.mean(axis=0, dtype=np.float64)
        var = M.var(axis=0, dtype=np.float64)
    if n > 1:
        var *= n / (n - 1)
    std = np.sqrt(np.maximum(var, 0))
    std[std == 0] = 1.0
    inv = (1.0 / std).astype(np.float32)
    if sp.issparse(M):
        M = sp.csr_matrix(M @ sp.diags(inv), dtype=np.float32)
        np.minimum(M.data, max_value, out=M.data)
    else:
        M *= inv[None, :]
        np.minimum(M, max_value, out=M)
    return M


def _as_csr_or_dense(M):
    if sp.issparse(M):
        return sp.csr_matrix(M, dtype=np.float32)
    return np.asarray(M, dtype=np.float32)


def preprocess_section(
    adata: AnnData,
    name: str,
    min_cell_counts: float = 5,
    min_gene_counts: float = 1,
    max_value: float = 10.0,
) -> PreparedSection:
    """Prepare one section as method.md describes (see module docstring)."""
    if adata.n_obs == 0:
        raise BrainAtlasInputError(f"section {name!r} has zero cells")
    xy = adata.obsm.get("spatial") if hasattr(adata, "obsm") else None
    if xy is None:
        raise BrainAtlasInputError(f"section {name!r} has no coordinates in obsm['spatial']")
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2 or xy.shape[0] != adata.n_obs:
        raise BrainAtlasInputError(f"section {name!r}: obsm['spatial'] must be an (n, 2) array")
    xy = xy[:, :2]
    finite = np.isfinite(xy).all(axis=1)
    if not finite.all() and (finite.any() or not np.isnan(xy).all()):
        raise BrainAtlasInputError(f"section {name!r} has NaN or infinite coordinates")

    genes, gcols = clean_gene_names(adata.var_names)
    if not genes:
        raise BrainAtlasInputError(f"section {name!r} has no gene names")
    source = adata.layers.get("counts")
    if source is None:  # (adata.X only read when there is no counts layer)
        source = adata.X
    if source is None:
        raise BrainAtlasInputError(f"section {name!r} has no expression matrix")
    if (
        getattr(adata, "isbacked", False)
        and not sp.issparse(source)
        and not isinstance(source, np.ndarray)
    ):
        source = source[:, :]
    M = _as_csr_or_dense(source)
    if M.shape[1] != adata.n_vars:
        raise BrainAtlasInputError(f"section {name!r}: expression and gene list disagree")
    M = M[:, gcols]
    was_counts = is_integer_matrix(source)
    kept = np.arange(adata.n_obs, dtype=np.int64)
    info: dict = {}
    if was_counts:
        totals = np.asarray(M.sum(axis=1)).ravel()
        cell_ok = totals > min_cell_counts
        kept = kept[cell_ok]
        M = M[cell_ok]
        gsum = np.asarray(M.sum(axis=0)).ravel()
        gene_ok = gsum > min_gene_counts
        M = M[:, gene_ok]
        genes = [g for g, ok in zip(genes, gene_ok) if ok]
        info.update(n_cells_dropped=int((~cell_ok).sum()), n_genes_dropped=int((~gene_ok).sum()))
        if M.shape[0] < 3 or M.shape[1] < 1:
            raise BrainAtlasInputError(
                f"section {name!r} keeps {M.shape[0]} cells and {M.shape[1]} genes after "
                "dropping cells with <= 5 counts and genes with <= 1 count"
            )
        M = normalize_log_scale(M, max_value=max_value)
    else:
        data = M.data if sp.issparse(M) else M
        if not np.isfinite(data).all():
            raise BrainAtlasInputError(f"section {name!r} has NaN or infinite expression values")
        if M.shape[0] < 3:
            raise BrainAtlasInputError(f"section {name!r} has fewer than 3 cells")
    return PreparedSection(
        name=name,
        X=M,
        genes=list(genes),
        coords=np.ascontiguousarray(xy[kept]),
        kept=kept,
        n_obs=int(adata.n_obs),
        was_counts=bool(was_counts),
        info=info,
    )
