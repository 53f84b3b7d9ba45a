"""Read tissue sections from the formats labs publish and normalise them.

Every reader returns a list of AnnData, one per section, following
../shared/docs/conventions.md:

* ``obsm['spatial']``: float64 (n, 2) cell coordinates in micrometres;
* ``X``: float32 expression (sparse stays sparse); ``layers['counts']`` the same matrix
  when the input is integer counts;
* ``obs['section']``: the section name; ``obs_names`` unique cell ids;
* ``uns['napari_brainatlas']``: ``{'source', 'section', 'coords_from', 'pixel_size_um',
  'format'}`` saying where the data and its coordinates came from.

Input files are only ever opened for reading.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._errors import BrainAtlasInputError
from .coords import COORD_PAIRS, SECTION_KEYS, find_coordinates, is_visium, pixel_size_from_file
from .validate import is_integer_matrix, validate_section

__all__ = [
    "SECTION_KEYS",
    "SUFFIXES",
    "find_coordinates",
    "normalise_section",
    "read_csv_sections",
    "read_h5ad",
    "read_loom",
    "read_sections",
]

#: file suffixes the readers accept
SUFFIXES = (".h5ad", ".loom", ".csv", ".csv.gz", ".tsv", ".txt")


def read_sections(
    path: str | Path,
    pixel_size_um: float | None = None,
    section_key: str | None = None,
    backed: bool = False,
) -> list[AnnData]:
    """Read every section in ``path`` (a .h5ad, .loom, counts/coords .csv, or a folder).

    Parameters
    ----------
    pixel_size_um : micrometres per coordinate unit; default: from the file where it says
        (``uns['pixel_size_um']``, Visium scale factors, osmFISH ``size_um2/size_pix``),
        else 1 (coordinates already in um).
    section_key : obs column that splits a multi-section file; default: the first of
        :data:`SECTION_KEYS` present.
    backed : open .h5ad files backed (expression stays on disk).
    """
    p = Path(path)
    if not p.exists():
        raise BrainAtlasInputError(f"file not found: {p}")
    name = p.name.lower()
    try:
        if p.is_dir():
            return read_csv_sections(p, pixel_size_um=pixel_size_um)
        if name.endswith(".h5ad"):
            return read_h5ad(p, pixel_size_um=pixel_size_um, section_key=section_key, backed=backed)
        if name.endswith(".loom"):
            return read_loom(p, pixel_size_um=pixel_size_um)
        if name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
            return read_csv_sections(p, pixel_size_um=pixel_size_um)
    except BrainAtlasInputError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise BrainAtlasInputError(f"cannot read {p.name}: {_short(exc)}") from exc
    raise BrainAtlasInputError(
        f"cannot read {p.name}: unknown format (use .h5ad, .loom, .csv or a folder of csv files)"
    )


def _short(exc: Exception) -> str:
    msg = str(exc).strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:200]


# --------------------------------------------------------------------- normalise
def normalise_section(
    adata: AnnData,
    *,
    source: str,
    section: str,
    fmt: str,
    pixel_size_um: float | None = None,
    coords: np.ndarray | None = None,
    coords_from: str | None = None,
) -> AnnData:
    """Bring one section to the conventions (see module docstring); validates it."""
    if adata.n_obs == 0:
        raise BrainAtlasInputError(f"{source}: the section has zero cells")
    if coords is None:
        coords, coords_from = find_coordinates(adata)
    if pixel_size_um is None:
        pixel_size_um = pixel_size_from_file(adata)
    pixel_size_um = float(pixel_size_um)
    if not np.isfinite(pixel_size_um) or pixel_size_um <= 0:
        raise BrainAtlasInputError(f"pixel size must be a positive number, not {pixel_size_um}")
    adata.obsm["spatial"] = np.asarray(coords, dtype=np.float64)[:, :2] * pixel_size_um
    adata.uns.pop("pixel_size_um", None)  # consumed: obsm['spatial'] is in um from now on
    adata.obs_names = adata.obs_names.astype(str)
    if not adata.obs_names.is_unique:
        adata.obs_names_make_unique()
    adata.var_names = adata.var_names.astype(str)
    validate_section(adata, source)
    X = adata.X
    if X is not None and not getattr(adata, "isbacked", False):
        if not sp.issparse(X):
            X = np.asarray(X)
        try:
            integer = is_integer_matrix(X)
            X = X.astype(np.float32) if X.dtype != np.float32 else X
        except (TypeError, ValueError):
            raise BrainAtlasInputError(f"{source}: expression values are not numeric") from None
        adata.X = X
        if integer and "counts" not in adata.layers:
            adata.layers["counts"] = adata.X
    adata.obs["section"] = pd.Categorical([section] * adata.n_obs)
    meta = dict(adata.uns.get("napari_brainatlas", {}))
    meta.update(
        source=str(source),
        section=str(section),
        coords_from=str(coords_from),
        pixel_size_um=pixel_size_um,
        format=fmt,
    )
    adata.uns["napari_brainatlas"] = meta
    return adata


# --------------------------------------------------------------------- h5ad
def read_h5ad(
    path: str | Path,
    pixel_size_um: float | None = None,
    section_key: str | None = None,
    backed: bool = False,
) -> list[AnnData]:
    """Read a .h5ad; split into sections by ``section_key`` (or the first of
    :data:`SECTION_KEYS` present) when the file holds several."""
    import anndata as ad

    path = Path(path)
    try:
        adata = ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as exc:
        raise BrainAtlasInputError(f"cannot read {path.name}: {_short(exc)}") from exc
    fmt = "visium-h5ad" if is_visium(adata) else "h5ad"
    if backed:
        from .backed import backed_sections

        return backed_sections(adata, path, pixel_size_um, section_key, fmt)
    if adata.n_obs == 0:
        raise BrainAtlasInputError(f"{path.name}: the section has zero cells")
    coords, where = find_coordinates(adata)
    key = section_key or next((k for k in SECTION_KEYS if k in adata.obs.columns), None)
    if section_key and section_key not in adata.obs.columns:
        raise BrainAtlasInputError(f"{path.name}: no obs column {section_key!r} to split by")
    meta = adata.uns.get("napari_brainatlas", {})
    default_name = str(meta.get("section", path.stem)) if isinstance(meta, dict) else path.stem
    if key is None or adata.obs[key].nunique() <= 1:
        name = str(adata.obs[key].iloc[0]) if key else default_name
        return [
            normalise_section(
                adata,
                source=str(path),
                section=name,
                fmt=fmt,
                pixel_size_um=pixel_size_um,
                coords=coords,
                coords_from=where,
            )
        ]
    out = []
    labels = adata.obs[key].astype(str).to_numpy()
    for name in pd.unique(labels):
        idx = np.flatnonzero(labels == name)
        sub = adata[idx].copy()
        out.append(
            normalise_section(
                sub,
                source=str(path),
                section=str(name),
                fmt=fmt,
                pixel_size_um=pixel_size_um,
                coords=coords[idx],
                coords_from=where,
            )
        )
    return out


# --------------------------------------------------------------------- loom
def read_loom(path: str | Path, pixel_size_um: float | None = None) -> list[AnnData]:
    """Read a loom file as osmFISH publishes it: ``matrix`` genes x cells, gene names in
    ``row_attrs/Gene``, cell attributes (X, Y, ClusterName, Region, ...) in ``col_attrs``.
    Pixel size defaults to ``sqrt(size_um2 / size_pix)`` when both attributes exist."""
    import h5py

    path = Path(path)
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise BrainAtlasInputError(f"cannot read {path.name}: not a loom/HDF5 file") from exc
    with fh as f:
        if "matrix" not in f:
            raise BrainAtlasInputError(f"cannot read {path.name}: no 'matrix' in the loom file")
        mat = f["matrix"][()]
        if not np.issubdtype(mat.dtype, np.number):
            raise BrainAtlasInputError(f"{path.name}: expression values are not numeric")
        rows = {k: _decode(f["row_attrs"][k][()]) for k in f.get("row_attrs", {})}
        cols = {k: _decode(f["col_attrs"][k][()]) for k in f.get("col_attrs", {})}
    gene_key = next((k for k in ("Gene", "gene", "var_names", "GeneName") if k in rows), None)
    genes = rows[gene_key] if gene_key else np.array([f"gene{i}" for i in range(mat.shape[0])])
    cell_key = next((k for k in ("CellID", "obs_names", "cell_id") if k in cols), None)
    n = mat.shape[1]
    cells = cols[cell_key].astype(str) if cell_key else np.arange(n).astype(str)
    obs = pd.DataFrame(
        {k: v for k, v in cols.items() if np.ndim(v) == 1 and len(v) == n},
        index=pd.Index(cells, name=None),
    )
    for k in obs.columns:
        if obs[k].dtype == object:
            obs[k] = pd.Categorical(obs[k])
    var = pd.DataFrame(
        {k: v for k, v in rows.items() if np.ndim(v) == 1},
        index=pd.Index(np.asarray(genes).astype(str)),
    )
    adata = AnnData(X=np.ascontiguousarray(mat.T), obs=obs, var=var)
    if pixel_size_um is None and {"size_um2", "size_pix"} <= set(cols):
        ratio = np.asarray(cols["size_um2"], float) / np.asarray(cols["size_pix"], float)
        ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
        if ratio.size:
            pixel_size_um = float(np.sqrt(np.median(ratio)))
    xy, where = find_coordinates(adata)
    return [
        normalise_section(
            adata,
            source=str(path),
            section=path.stem,
            fmt="loom",
            pixel_size_um=pixel_size_um,
            coords=xy,
            coords_from=where.replace("obs", "col_attrs"),
        )
    ]


def _decode(a):
    a = np.asarray(a)
    if a.dtype.kind == "S":
        return a.astype(str)
    if a.dtype.kind == "O":
        return np.array([x.decode() if isinstance(x, bytes) else x for x in a.ravel()]).reshape(
            a.shape
        )
    return a


# --------------------------------------------------------------------- csv
def _read_table(path: Path) -> pd.DataFrame:
    sep = "\t" if path.name.lower().endswith((".tsv", ".txt")) else ","
    try:
        return pd.read_csv(path, sep=sep, index_col=0)
    except Exception as exc:
        raise BrainAtlasInputError(f"cannot read {path.name}: {_short(exc)}") from exc


def _coord_columns(df: pd.DataFrame) -> tuple[str, str] | None:
    for cx, cy in COORD_PAIRS:
        if cx in df.columns and cy in df.columns:
            return cx, cy
    return None


def read_csv_sections(path: str | Path, pixel_size_um: float | None = None) -> list[AnnData]:
    """Read counts + coordinates from csv files, as spacexr and many labs publish them.

    ``path`` is a folder holding a coordinates table (columns x/y, xcoord/ycoord, ...; index
    = cell ids) and a counts table (genes x cells or cells x genes, matched by cell ids), or
    a single csv with coordinate columns plus one column per gene. Extra per-cell tables in
    the folder with the same ids (e.g. nUMI.csv) become obs columns.
    """
    path = Path(path)
    files = sorted(path.glob("*.csv")) + sorted(path.glob("*.tsv")) if path.is_dir() else [path]
    if not files:
        raise BrainAtlasInputError(f"no csv files in {path}")
    tables = {f: _read_table(f) for f in files}
    coord_file = None
    if len(tables) > 1:  # a coordinates table beside a counts table
        coord_file = next(
            (f for f, t in tables.items() if _coord_columns(t) and t.shape[1] <= 6), None
        )
    if coord_file is None:
        single = next((f for f, t in tables.items() if _coord_columns(t)), None)
        if single is None:
            raise BrainAtlasInputError(
                f"{path.name}: no cell coordinates found (need x/y or xcoord/ycoord columns)"
            )
        t = tables[single]
        cx, cy = _coord_columns(t)
        genes = [c for c in t.columns if c not in (cx, cy)]
        num = t[genes].select_dtypes(include="number")
        if num.shape[1] != len(genes):
            raise BrainAtlasInputError(f"{single.name}: expression values are not numeric")
        adata = AnnData(
            X=num.to_numpy(),
            obs=pd.DataFrame(index=t.index.astype(str)),
            var=pd.DataFrame(index=pd.Index(genes, dtype=str)),
        )
        xy = t[[cx, cy]].to_numpy()
        return [
            normalise_section(
                adata,
                source=str(single),
                section=single.stem,
                fmt="csv",
                pixel_size_um=pixel_size_um,
                coords=xy,
                coords_from=f"{single.name} {cx}/{cy}",
            )
        ]
    coords = tables.pop(coord_file)
    cx, cy = _coord_columns(coords)
    ids = coords.index.astype(str)
    idset = set(ids)
    counts, counts_file, extra = None, None, []
    for f, t in tables.items():
        cols_match = len(idset & set(t.columns.astype(str)))
        rows_match = len(idset & set(t.index.astype(str)))
        if t.shape[1] > 1 and cols_match >= 0.5 * len(ids) and counts is None:
            counts, counts_file = t.T, f  # genes x cells
        elif t.shape[1] > 2 and rows_match >= 0.5 * len(ids) and counts is None:
            counts, counts_file = t, f
        elif rows_match >= 0.5 * len(ids):
            if t.shape[1] == 1:  # a one-column side table (e.g. nUMI.csv) is named by file
                t = t.set_axis([f.stem], axis=1)
            extra.append(t)
    if counts is None:
        raise BrainAtlasInputError(
            f"{path.name}: no counts table whose cells match {coord_file.name}"
        )
    counts.index = counts.index.astype(str)
    common = [i for i in ids if i in set(counts.index)]
    if not common:
        raise BrainAtlasInputError(
            f"{path.name}: no cell is in both {coord_file.name} and {counts_file.name}"
        )
    counts = counts.loc[common]
    num = counts.apply(pd.to_numeric, errors="coerce")
    if num.isna().to_numpy().any() and not counts.isna().to_numpy().any():
        raise BrainAtlasInputError(f"{counts_file.name}: expression values are not numeric")
    obs = pd.DataFrame(index=pd.Index(common))
    for t in extra:
        t.index = t.index.astype(str)
        for c in t.columns:
            obs[c] = t[c].reindex(obs.index).to_numpy()
    X = sp.csr_matrix(num.to_numpy())
    adata = AnnData(X=X, obs=obs, var=pd.DataFrame(index=num.columns.astype(str)))
    xy = coords.loc[common, [cx, cy]].to_numpy()
    return [
        normalise_section(
            adata,
            source=str(path),
            section=path.name if path.is_dir() else path.stem,
            fmt="csv",
            pixel_size_um=pixel_size_um,
            coords=xy,
            coords_from=f"{coord_file.name} {cx}/{cy}",
        )
    ]
