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
from .coords import SECTION_KEYS, find_coordinates, is_visium, pixel_size_from_file
from .tables import (
    CellTable,
    _first_text,
    _listing,
    coord_columns,
    parse_genes_option,
    read_table,
    split_columns,
)
from .validate import is_integer_matrix, validate_section

__all__ = [
    "SECTION_KEYS",
    "CSV_SUFFIXES",
    "SUFFIXES",
    "find_coordinates",
    "normalise_section",
    "read_csv_sections",
    "read_h5ad",
    "read_loom",
    "read_sections",
]

#: file suffixes the readers accept
SUFFIXES = (".h5ad", ".loom", ".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt")
#: the cell-table suffixes (csv / tsv, gzipped too)
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt")


def read_sections(
    path: str | Path,
    pixel_size_um: float | None = None,
    section_key: str | None = None,
    backed: bool = False,
    genes=None,
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
    genes : csv / tsv cell tables only: which numeric columns beside the coordinates are
        genes (``True``/``"all"``, a list of names, ``"FIRST:LAST"``); default none, they
        stay obs columns (see :func:`read_csv_sections`). Refused for other formats.
    """
    p = Path(path)
    if not p.exists():
        raise BrainAtlasInputError(f"file not found: {p}")
    name = p.name.lower()
    table = p.is_dir() or name.endswith(CSV_SUFFIXES)
    if genes is not None and genes is not False and not table:
        raise BrainAtlasInputError(
            f"{p.name}: genes= (--genes-from-columns) applies to csv / tsv cell tables only"
        )
    try:
        if table:
            return read_csv_sections(p, pixel_size_um=pixel_size_um, genes=genes)
        if name.endswith(".h5ad"):
            return read_h5ad(p, pixel_size_um=pixel_size_um, section_key=section_key, backed=backed)
        if name.endswith(".loom"):
            return read_loom(p, pixel_size_um=pixel_size_um)
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
    X = adata.X
    if X is not None and not sp.issparse(X) and not getattr(adata, "isbacked", False):
        if np.asarray(X).dtype == object:
            try:
                adata.X = np.asarray(X, dtype=np.float64)
            except (TypeError, ValueError):
                raise BrainAtlasInputError(_not_numeric(adata, source)) from None
    validate_section(adata, source)
    X = adata.X
    if X is not None and not getattr(adata, "isbacked", False):
        if not sp.issparse(X):
            X = np.asarray(X)
        try:
            integer = is_integer_matrix(X)
            X = X.astype(np.float32) if X.dtype != np.float32 else X
        except (TypeError, ValueError):
            raise BrainAtlasInputError(_not_numeric(adata, source)) from None
        adata.X = X
        if integer and adata.n_vars and "counts" not in adata.layers:
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


def _not_numeric(adata: AnnData, source: str) -> str:
    """The sentence for a matrix holding text: the first gene with a text value named."""
    X = adata.X
    if not sp.issparse(X):
        df = pd.DataFrame(np.asarray(X, dtype=object), index=adata.obs_names)
        for j in range(df.shape[1]):
            where = _first_text(df.iloc[:, j])
            if where is not None:
                return (
                    f"{source}: expression values are not numeric: gene "
                    f"{adata.var_names[j]!r} of cell {where[0]!r} holds {where[1]!r}"
                )
    return f"{source}: expression values are not numeric"


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
def _csv_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    found = [
        f for f in sorted(path.iterdir()) if f.is_file() and f.name.lower().endswith(CSV_SUFFIXES)
    ]
    return found


def _counts_partner(coords: CellTable, others: list[CellTable]):
    """(counts cells x genes, its table) among ``others`` whose cells are the
    coordinates table's, or None: a genes x cells table (cells are its columns) first,
    else the widest all-numeric cells x genes table."""
    ids = set(coords.df.index.astype(str))
    need = 0.5 * len(ids)
    for t in others:
        if t.df.shape[1] > 1 and len(ids & set(t.df.columns.astype(str))) >= need:
            return t.df.T, t
    wide = [
        t
        for t in others
        if t.df.shape[1] > 2
        and len(ids & set(t.df.index.astype(str))) >= need
        and all(pd.api.types.is_numeric_dtype(d) for d in t.df.dtypes)
    ]
    if wide:
        t = max(wide, key=lambda t: t.df.shape[1])
        return t.df, t
    return None


def _side_obs(obs: pd.DataFrame, others: list[CellTable]) -> None:
    """Per-cell side tables (e.g. nUMI.csv, cell_types.csv) with the same cell ids as
    obs columns; a one-column table is named by its file."""
    ids = set(obs.index)
    for t in others:
        df = t.df
        if len(ids & set(df.index.astype(str))) < 0.5 * len(ids):
            continue
        if df.shape[1] == 1:
            t = CellTable(t.path, df.set_axis([t.path.name.split(".")[0]], axis=1), t.types)
        _, extra = split_columns(t, ())
        extra = extra.reindex(obs.index)
        for c in extra.columns:
            if c not in obs.columns:
                obs[c] = extra[c].to_numpy() if not hasattr(extra[c], "cat") else extra[c].values


def _numeric_counts(counts: pd.DataFrame, file: str) -> pd.DataFrame:
    """``counts`` as numbers; the first text value named (gene and cell)."""
    num = counts.apply(pd.to_numeric, errors="coerce")
    bad = num.isna().to_numpy() & counts.notna().to_numpy()
    if bad.any():
        i, j = (int(v[0]) for v in np.nonzero(bad))
        raise BrainAtlasInputError(
            f"{file}: expression values are not numeric: gene {counts.columns[j]!r} of cell "
            f"{counts.index[i]!r} holds {counts.iat[i, j]!r}; correct the value (counts "
            "tables hold numbers only)"
        )
    return num


def read_csv_sections(
    path: str | Path, pixel_size_um: float | None = None, genes=None
) -> list[AnnData]:
    """Read cells from csv / tsv files, as spacexr, STARmap PLUS and many labs publish them
    (see :mod:`napari_brainatlas.io.tables` for what becomes obs and what genes).

    ``path`` is a folder holding a coordinates table (columns x/y, X/Y, xcoord/ycoord,
    ...; index = cell ids; its other columns become obs) and a counts table (genes x
    cells or cells x genes, matched by cell ids), or one cell table (a file, or a folder
    with one table holding coordinates). Per-cell side tables with the same ids (e.g.
    nUMI.csv, cell_types.csv) become obs columns. In a cell table, text columns become
    obs and numeric columns become genes only as ``genes`` says (``True``: every
    numeric column but per-cell measures such as Z or area; a list of column names;
    ``"FIRST:LAST"``); otherwise they stay numeric obs columns and the section has no
    genes (``uns['napari_brainatlas']['numeric_columns']`` lists them). Where a counts
    table is found, genes come from it (``True`` is then satisfied; column names are
    refused).
    """
    path = Path(path)
    files = _csv_files(path)
    if not files:
        raise BrainAtlasInputError(f"no csv or tsv files in {path}")
    tables = [read_table(f) for f in files]
    with_coords = [t for t in tables if coord_columns(t.df)]
    if not with_coords:
        cols = tables[0].df.columns
        raise BrainAtlasInputError(
            f"{path.name}: no cell coordinates found (need x/y, X/Y, center_x/center_y or "
            f"xcoord/ycoord columns; {tables[0].path.name} has {_listing(cols)})"
        )
    for ct in sorted(with_coords, key=lambda t: t.df.shape[1]):
        others = [t for t in tables if t is not ct]
        partner = _counts_partner(ct, others)
        if partner is not None:
            if parse_genes_option(genes) not in (None, True):  # names that go unused
                raise BrainAtlasInputError(
                    f"{path.name}: the genes come from {partner[1].path.name}; leave out "
                    "genes= (--genes-from-columns) for this folder"
                )
            rest = [t for t in others if t is not partner[1]]
            return [_counts_section(path, ct, partner, rest, pixel_size_um)]
    table = with_coords[0]
    return [_table_section(path, table, tables, pixel_size_um, genes)]


def _table_section(path, table: CellTable, tables, pixel_size_um, genes) -> AnnData:
    """One cell table (+ side tables): genes from its columns as ``genes`` says."""
    cx, cy = coord_columns(table.df)
    gene_cols, obs = split_columns(table, (cx, cy), genes)
    _side_obs(obs, [t for t in tables if t is not table])
    X = table.df[gene_cols].to_numpy() if gene_cols else np.zeros((len(obs), 0), np.float32)
    adata = AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(gene_cols, dtype=str)))
    numbers = [c for c in obs.columns if pd.api.types.is_numeric_dtype(obs[c].dtype)]
    adata.uns["napari_brainatlas"] = {
        "genes_from": f"{table.path.name} columns" if gene_cols else "none",
        "numeric_columns": numbers,
    }
    single = path if not path.is_dir() else table.path
    return normalise_section(
        adata,
        source=str(single),
        section=path.name if path.is_dir() else _stem(path),
        fmt="csv",
        pixel_size_um=pixel_size_um,
        coords=_coords(table, cx, cy),
        coords_from=f"{table.path.name} {cx}/{cy}",
    )


def _coords(table: CellTable, cx: str, cy: str, rows=None) -> np.ndarray:
    df = table.df if rows is None else table.df.loc[rows]
    for c in (cx, cy):
        if not pd.api.types.is_numeric_dtype(df[c].dtype):
            where = _first_text(df[c])
            held = f": row {where[0]!r} holds {where[1]!r}" if where else ""
            raise BrainAtlasInputError(
                f"{table.path.name}: coordinate column {c!r} is not numeric{held}"
            )
    return df[[cx, cy]].to_numpy(dtype=np.float64)


def _counts_section(path, coords: CellTable, partner, others, pixel_size_um) -> AnnData:
    """A coordinates table + a counts table (+ side tables) as one section."""
    counts, counts_table = partner
    cx, cy = coord_columns(coords.df)
    counts.index = counts.index.astype(str)
    ids = coords.df.index
    inside = set(counts.index)
    common = [i for i in ids if i in inside]
    if not common:
        raise BrainAtlasInputError(
            f"{path.name}: no cell is in both {coords.path.name} and {counts_table.path.name}"
        )
    counts = _numeric_counts(counts.loc[common], counts_table.path.name)
    _, obs = split_columns(coords, (cx, cy))
    obs = obs.loc[common]
    _side_obs(obs, others)
    X = sp.csr_matrix(counts.to_numpy())
    adata = AnnData(X=X, obs=obs, var=pd.DataFrame(index=counts.columns.astype(str)))
    adata.uns["napari_brainatlas"] = {"genes_from": counts_table.path.name}
    xy = _coords(coords, cx, cy, rows=common)
    return normalise_section(
        adata,
        source=str(path),
        section=path.name if path.is_dir() else _stem(path),
        fmt="csv",
        pixel_size_um=pixel_size_um,
        coords=xy,
        coords_from=f"{coords.path.name} {cx}/{cy}",
    )


def _stem(path: Path) -> str:
    name = path.name
    for suffix in CSV_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
