"""Files for every bad-input case (shared by the engine, CLI and GUI tests)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd


def sha1(path: Path) -> str:
    h = hashlib.sha1()
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f.read_bytes())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def _good(n=20, genes=("A", "B", "C")) -> ad.AnnData:
    rng = np.random.default_rng(0)
    a = ad.AnnData(
        X=rng.poisson(2, (n, len(genes))).astype(np.float32), var=pd.DataFrame(index=list(genes))
    )
    a.obs_names = [f"c{i}" for i in range(n)]
    a.obsm["spatial"] = rng.uniform(0, 100, (n, 2))
    return a


def make_bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """{case: (path, words the error message must contain)}"""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    p = folder / "unreadable.h5ad"
    p.write_bytes(b"this is not an HDF5 file\x00\x01")
    out["unreadable"] = (p, "cannot read")
    a = _good()
    del a.obsm["spatial"]
    p = folder / "nocoords.h5ad"
    a.write_h5ad(p)
    out["no_coordinates"] = (p, "no cell coordinates")
    a = _good()
    a.obsm["spatial"][3] = [np.nan, 1.0]
    a.obsm["spatial"][5] = [np.inf, 1.0]
    p = folder / "nan_coords.h5ad"
    a.write_h5ad(p)
    out["nan_coordinates"] = (p, "NaN or infinite")
    a = _good()
    a.var_names = ["A", "B", "A"]
    p = folder / "dup_genes.h5ad"
    a.write_h5ad(p)
    out["duplicate_genes"] = (p, "duplicate gene")
    a = _good()[:0].copy()
    p = folder / "zero_cells.h5ad"
    a.write_h5ad(p)
    out["zero_cells"] = (p, "zero cells")
    # a counts table (genes x cells) beside the coordinates, one count typed as text
    p = folder / "nonnumeric"
    p.mkdir()
    cells = ["c1", "c2", "c3"]
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 3.0]}, index=cells).to_csv(p / "coords.csv")
    pd.DataFrame([[1, 2, 3], [4, "hi", 6]], index=["GeneA", "GeneB"], columns=cells).to_csv(
        p / "counts.csv"
    )
    out["non_numeric"] = (p, "gene 'GeneB' of cell 'c2' holds 'hi'")
    return out
