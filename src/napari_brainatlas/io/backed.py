"""Backed (on-disk) reading of large .h5ad files: coordinates and obs in memory, X on disk.

``read_sections(path, backed=True)`` opens the file once (anndata ``backed='r'``): obs,
obsm and var are read, ``X`` stays in the file. A multi-section file is split lazily:
each section is a view of the one backed AnnData (``adata[rows]``), so nothing of X is
read until a gene is looked at. Then:

* :func:`gene_values` reads one gene for a section: the whole column is read once per
  file and gene (streamed through the sparse matrix's ``indices`` in chunks, never the
  whole matrix) and kept in a small cache, so colouring eight sections by a gene reads
  it once;
* :func:`iter_chunks` streams cells in row chunks (for training or export), each cell
  once, with the expression of chosen genes or of all of them.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._errors import BrainAtlasInputError
from .coords import SECTION_KEYS, find_coordinates, pixel_size_from_file

__all__ = ["CHUNK_NNZ", "backed_sections", "gene_values", "iter_chunks", "section_rows"]

#: non-zeros read at a time when streaming a column out of an on-disk sparse matrix
CHUNK_NNZ = 8_000_000
#: columns kept in memory per process (file, gene) -> float32 vector over all cells
_COLUMN_CACHE: OrderedDict = OrderedDict()
_COLUMN_CACHE_SIZE = 8


def backed_sections(adata: AnnData, path: Path, pixel_size_um, section_key, fmt) -> list[AnnData]:
    """Sections of a backed AnnData: the file's own object when it holds one section,
    else one view per section (rows in file order), all sharing the on-disk X."""
    if adata.n_obs == 0:
        raise BrainAtlasInputError(f"{path.name}: the section has zero cells")
    if not adata.var_names.is_unique:
        raise BrainAtlasInputError(f"{path.name}: duplicate gene names; make them unique first")
    if section_key and section_key not in adata.obs.columns:
        raise BrainAtlasInputError(f"{path.name}: no obs column {section_key!r} to split by")
    xy, where = find_coordinates(adata)
    if not np.isfinite(xy).all():
        raise BrainAtlasInputError(f"{path.name}: some cells have NaN or infinite coordinates")
    px = float(pixel_size_um) if pixel_size_um is not None else pixel_size_from_file(adata)
    adata.obsm["spatial"] = xy * px
    key = section_key or next((k for k in SECTION_KEYS if k in adata.obs.columns), None)
    names = adata.obs[key].astype(str).to_numpy() if key else None
    old = adata.uns.get("napari_brainatlas", {})
    default = str(old.get("section", path.stem)) if isinstance(old, dict) else path.stem
    labels = pd.Categorical(names if names is not None else np.full(adata.n_obs, default))
    adata.obs["section"] = labels
    meta = {
        "source": str(path),
        "coords_from": where,
        "pixel_size_um": px,
        "format": fmt,
        "backed": True,
    }
    if len(labels.categories) <= 1:
        meta["section"] = str(labels.categories[0]) if len(labels.categories) else default
        adata.uns["napari_brainatlas"] = meta
        return [adata]
    # several sections: no section name in the shared uns (each view's name is its
    # obs['section']); one view per section, in order of first appearance
    adata.uns["napari_brainatlas"] = meta
    codes = labels.codes
    first = pd.unique(codes)
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(labels.categories)))])
    return [adata[np.sort(order[bounds[c] : bounds[c + 1]])] for c in first]


def section_rows(adata: AnnData) -> tuple[AnnData, np.ndarray | None]:
    """``(file_adata, rows)``: the AnnData that owns the data and the integer rows of
    ``adata`` in it (``None``: all rows, ``adata`` is not a view)."""
    if not adata.is_view:
        return adata, None
    parent = adata._adata_ref  # anndata keeps the parent and the row index of a view
    oidx = adata._oidx
    if isinstance(oidx, slice):
        rows = np.arange(parent.n_obs)[oidx]
    else:
        rows = np.asarray(oidx)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
    return parent, rows.astype(np.int64)


# ---------------------------------------------------------------------- columns
def _csr_column(indptr, indices, data, j: int, n: int) -> np.ndarray:
    """Column ``j`` of an in-memory CSR matrix without scipy's general indexing."""
    out = np.zeros(n, dtype=np.float32)
    pos = np.flatnonzero(np.asarray(indices) == j)
    if pos.size:
        rows = np.searchsorted(np.asarray(indptr), pos, side="right") - 1
        vals = np.asarray(data)[pos]
        if _has_duplicates(rows):  # non-canonical CSR: duplicate entries add up
            np.add.at(out, rows, vals)
        else:
            out[rows] = vals
    return out


def _has_duplicates(rows: np.ndarray) -> bool:
    return rows.size > 1 and bool(np.any(np.diff(rows) == 0))


def _h5_column(filename, key: str, j: int, n: int) -> np.ndarray:
    """Column ``j`` of the matrix ``key`` ('X' or 'layers/<name>') of an .h5ad, read by
    streaming (never the whole matrix in memory)."""
    import h5py

    with h5py.File(filename, "r") as f:
        node = f[key]
        if isinstance(node, h5py.Dataset):  # dense: row blocks (a strided column
            # selection of a chunked dataset is many times slower)
            out = np.empty(n, dtype=np.float32)
            step = max(1, CHUNK_NNZ // max(1, int(node.shape[1])))
            for lo in range(0, n, step):
                out[lo : lo + step] = node[lo : lo + step, :][:, j]
            return out
        enc = node.attrs.get("encoding-type", "")
        enc = enc.decode() if isinstance(enc, bytes) else str(enc)
        indptr = node["indptr"][:]
        if enc.startswith("csc"):
            lo, hi = int(indptr[j]), int(indptr[j + 1])
            out = np.zeros(n, dtype=np.float32)
            out[node["indices"][lo:hi]] = node["data"][lo:hi]
            return out
        out = np.zeros(n, dtype=np.float32)
        indices, data = node["indices"], node["data"]
        total = int(indptr[-1])
        for lo in range(0, total, CHUNK_NNZ):
            hi = min(total, lo + CHUNK_NNZ)
            pos = np.flatnonzero(indices[lo:hi] == j)
            if pos.size:
                vals = data[lo:hi][pos]
                rows = np.searchsorted(indptr, pos + lo, side="right") - 1
                out[rows] = vals
        return out


def _backed_column(parent: AnnData, j: int, layer: str | None) -> np.ndarray:
    filename = str(parent.filename)
    try:
        stamp = os.stat(filename).st_mtime_ns
    except OSError:
        stamp = 0
    key = (filename, stamp, layer, j)
    col = _COLUMN_CACHE.get(key)
    if col is None:
        col = _h5_column(filename, f"layers/{layer}" if layer else "X", j, parent.n_obs)
        _COLUMN_CACHE[key] = col
        while len(_COLUMN_CACHE) > _COLUMN_CACHE_SIZE:
            _COLUMN_CACHE.popitem(last=False)
    else:
        _COLUMN_CACHE.move_to_end(key)
    return col


def gene_values(adata: AnnData, gene: str, layer: str | None = None) -> np.ndarray:
    """Dense float32 vector of one gene for every cell of ``adata``; for a backed file
    only that column is read (once per file and gene)."""
    if gene not in adata.var_names:
        raise BrainAtlasInputError(f"gene {gene!r} is not in this section's panel")
    j = int(adata.var_names.get_loc(gene))
    if getattr(adata, "isbacked", False):
        parent, rows = section_rows(adata)
        if parent.var_names.equals(adata.var_names) and (layer is None or layer in parent.layers):
            try:
                col = _backed_column(parent, j, layer)
            except (OSError, KeyError, ValueError):
                col = None
            if col is not None:
                return col.copy() if rows is None else col[rows]
    X = adata.layers[layer] if layer else adata.X
    if (
        isinstance(X, (sp.csr_matrix, getattr(sp, "csr_array", sp.csr_matrix)))
        and not adata.is_view
    ):
        return _csr_column(X.indptr, X.indices, X.data, j, X.shape[0])
    col = X[:, j]
    if sp.issparse(col):
        col = col.toarray()
    return np.asarray(col, dtype=np.float32).ravel()


# ---------------------------------------------------------------------- chunks
def iter_chunks(adata: AnnData, genes=None, chunk_size: int = 100_000, layer: str | None = None):
    """Stream the cells of ``adata`` (backed or not, a section view or a whole file) in
    chunks of at most ``chunk_size`` cells, each cell exactly once, in order.

    Yields ``(rows, X)``: ``rows`` the integer positions of the chunk's cells in
    ``adata``, ``X`` their expression: a dense float32 (m, len(genes)) array for
    ``genes`` (names), else a CSR matrix of every gene. Only one chunk is in memory.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    cols = None
    if genes is not None:
        genes = [str(g) for g in genes]
        missing = [g for g in genes if g not in adata.var_names]
        if missing:
            raise BrainAtlasInputError(f"genes not in the panel: {', '.join(missing[:5])}")
        cols = adata.var_names.get_indexer(genes)
    backed = getattr(adata, "isbacked", False)
    parent, rows_in_parent = section_rows(adata) if backed else (adata, None)
    n = adata.n_obs
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        if backed:
            src_rows = (
                np.arange(start, stop) if rows_in_parent is None else rows_in_parent[start:stop]
            )
            X = parent.layers[layer] if layer else parent.X
            part = (
                X[src_rows]
                if not _contiguous(src_rows)
                else X[int(src_rows[0]) : int(src_rows[-1]) + 1]
            )
        else:
            X = adata.layers[layer] if layer else adata.X
            part = X[start:stop]
        if cols is not None:
            part = part[:, cols]
            part = part.toarray() if sp.issparse(part) else np.asarray(part)
            part = np.asarray(part, dtype=np.float32)
        elif not sp.issparse(part):
            part = sp.csr_matrix(np.asarray(part, dtype=np.float32))
        else:
            part = sp.csr_matrix(part, dtype=np.float32)
        yield np.arange(start, stop), part


def _contiguous(rows: np.ndarray) -> bool:
    return rows.size > 0 and int(rows[-1]) - int(rows[0]) + 1 == rows.size
