"""Backed (on-disk) reading of large .h5ad files: coordinates and obs in memory, X on disk.

A backed file is returned as one AnnData (mode 'r') whose ``obs['section']`` names each
cell's section; expression is read gene by gene with :func:`gene_values`, so a
multi-million-cell file opens without loading X.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._errors import BrainAtlasInputError

__all__ = ["backed_sections", "gene_values"]


def backed_sections(adata: AnnData, path: Path, pixel_size_um, section_key, fmt) -> list[AnnData]:
    from .readers import SECTION_KEYS, _pixel_size_from_file, find_coordinates

    if adata.n_obs == 0:
        raise BrainAtlasInputError(f"{path.name}: the section has zero cells")
    if not adata.var_names.is_unique:
        raise BrainAtlasInputError(f"{path.name}: duplicate gene names; make them unique first")
    xy, where = find_coordinates(adata)
    if not np.isfinite(xy).all():
        raise BrainAtlasInputError(f"{path.name}: some cells have NaN or infinite coordinates")
    px = float(pixel_size_um) if pixel_size_um is not None else _pixel_size_from_file(adata)
    adata.obsm["spatial"] = xy * px
    key = section_key or next((k for k in SECTION_KEYS if k in adata.obs.columns), None)
    names = adata.obs[key].astype(str).to_numpy() if key else np.full(adata.n_obs, path.stem)
    adata.obs["section"] = pd.Categorical(names)
    adata.uns["napari_brainatlas"] = dict(source=str(path), section=path.stem, coords_from=where,
                                          pixel_size_um=px, format=fmt, backed=True)
    return [adata]


def gene_values(adata: AnnData, gene: str, layer: str | None = None) -> np.ndarray:
    """Dense float32 vector of one gene for every cell; reads one column when backed."""
    if gene not in adata.var_names:
        raise BrainAtlasInputError(f"gene {gene!r} is not in this section's panel")
    j = int(adata.var_names.get_loc(gene))
    X = adata.layers[layer] if layer else adata.X
    col = X[:, j]
    if sp.issparse(col):
        col = col.toarray()
    return np.asarray(col, dtype=np.float32).ravel()
