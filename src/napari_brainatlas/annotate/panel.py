"""Cells of one panel seen through another panel's encoder: counts of a section for
another section's genes, and reference cells encoded by a query section's encoder (the
anchors of the query mapping and the panel-aware imputation reference)."""

from __future__ import annotations

import numpy as np
import torch
from anndata import AnnData

from ..fusemap.data import as_float32_matrix, clean_gene_names, normalize_log_scale, rows_dense

__all__ = ["counts_through_panel", "encode_through_panel"]


def counts_through_panel(adata: AnnData, rows: np.ndarray, genes: list[str]) -> np.ndarray:
    """Counts (``layers['counts']`` or ``X``) of cells ``rows`` of ``adata`` for the
    upper-case ``genes`` of another panel, in that order: float32 (len(rows), len(genes)),
    0 for genes ``adata`` does not measure."""
    names, cols = clean_gene_names(adata.var_names)
    pos = dict(zip(names, cols))
    src = adata.layers.get("counts", adata.X)
    M = as_float32_matrix(src[rows] if not hasattr(src, "tocsr") else src.tocsr()[rows])
    out = np.zeros((len(rows), len(genes)), np.float32)
    for j, g in enumerate(genes):
        if g in pos:
            c = M[:, pos[g]]
            out[:, j] = np.asarray(c.toarray() if hasattr(c, "toarray") else c).ravel()
    return out


def encode_through_panel(
    mapping, section, adata: AnnData, rows: np.ndarray, chunk: int = 16384
) -> np.ndarray:
    """Reference cells as a query section's encoder sees them: the counts of cells
    ``rows`` of ``adata`` (integer counts) for the query's gene panel get the query's
    preprocessing (normalise to the median total, log1p, scale without centring, clip 10;
    as for the reference anchor) and go through the query encoder (means, eval mode).
    Returns float32 (len(rows), n_latent); cells with no count in the query's panel are
    NaN."""
    name = mapping.query_names[mapping._index(section)]
    genes = mapping.module.section_genes[name]
    X = counts_through_panel(adata, rows, genes)
    ok = X.sum(1) > 0
    out = np.full((len(rows), mapping.module.n_latent), np.nan, np.float32)
    if not ok.any():
        return out
    Xn = normalize_log_scale(X[ok])
    enc = mapping.module.encoders[name]
    enc.eval()
    idx = np.flatnonzero(ok)
    with torch.no_grad():
        for i in range(0, len(idx), chunk):
            x = torch.from_numpy(rows_dense(Xn, np.arange(i, min(i + chunk, len(idx)))))
            out[idx[i : i + chunk]] = (
                mapping.module.encode(name, x.to(mapping.device))[0].float().cpu().numpy()
            )
    return out
