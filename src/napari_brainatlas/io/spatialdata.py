"""SpatialData zarr stores in and out (scverse's format for points, shapes and tables).

Reading (:func:`read_spatialdata`): every table of the store that annotates a points or
shapes element (``table.uns['spatialdata_attrs']``: ``region``, ``region_key``,
``instance_key``) gives one section per annotated element. A table row belongs to the
element named in its ``obs[region_key]`` and to the instance (the element's index value)
in its ``obs[instance_key]``. The cell positions are the element's coordinates (points:
``x``/``y``; shapes: circle centres, polygon centroids) mapped through the element's
coordinate transformation to the chosen coordinate system (``'global'`` by default),
taken as micrometres (``pixel_size_um`` when that system is in other units). Genes
(``X``, ``var``, ``layers``), ``obs``, ``obsm`` and ``uns`` come from the table rows, and
the section follows ../shared/docs/conventions.md (``obsm['spatial']`` in um,
``uns['napari_brainatlas']`` saying where the coordinates came from, with the store's
table, element and transformation under ``'spatialdata'``).

Writing (:func:`write_spatialdata`): each section becomes one element (circles, of the
cells' typical diameter, or points) at ``obsm['spatial']`` in the ``'global'``
coordinate system (micrometres, identity transformation) and one table annotating it
with the section's genes, ``obs`` (CCF keys ``ccf_id``/``ccf_acronym``, transferred
labels ...), ``obsm`` (``ccf_coords``, ``X_fusemap_*`` ...), ``layers`` and ``uns``. The
store is written to a temporary folder beside the target and renamed into place; it is
never written over a section's input.

``spatialdata`` is an optional dependency (``pip install 'napari-brainatlas[spatialdata]'``),
imported only when a store is read or written.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import BrainAtlasInputError

__all__ = [
    "INSTANCE_KEY",
    "REGION_KEY",
    "is_spatialdata_store",
    "read_spatialdata",
    "write_spatialdata",
]

#: obs columns the writer adds to each table (a free name is found if the section has one)
REGION_KEY = "element"
INSTANCE_KEY = "instance_id"
#: uns['napari_brainatlas'] entry listing the obs columns the writer added (the reader
#: drops them again, so a round trip gives back the section's own obs)
_ADDED = "spatialdata_added_obs"
_INSTALL = "pip install 'napari-brainatlas[spatialdata]'"


# ---------------------------------------------------------------------- helpers
def _spatialdata():
    try:
        with _quiet():
            import spatialdata
    except ImportError as exc:
        raise BrainAtlasInputError(
            f"SpatialData stores need the spatialdata package ({_INSTALL}): {exc}"
        ) from None
    return spatialdata


@contextmanager
def _quiet():
    """spatialdata and zarr log and warn freely while reading and writing; keep the
    user's console for our own messages."""
    log = logging.getLogger("spatialdata")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _short(exc: Exception) -> str:
    msg = str(exc).strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:200]


def is_spatialdata_store(path: str | Path) -> bool:
    """True for a folder that looks like a SpatialData zarr store (a ``.zarr`` folder,
    or a zarr group with ``points``/``shapes``/``tables`` in it)."""
    p = Path(path)
    if not p.is_dir():
        return False
    if p.name.lower().endswith(".zarr"):
        return True
    zarr_group = (p / "zarr.json").exists() or (p / ".zgroup").exists()
    return zarr_group and any((p / k).is_dir() for k in ("points", "shapes", "tables"))


# ---------------------------------------------------------------------- reading
def read_spatialdata(
    path: str | Path,
    *,
    pixel_size_um: float | None = None,
    coordinate_system: str | None = None,
    table: str | None = None,
) -> list[AnnData]:
    """Every section of a SpatialData store: one per points/shapes element annotated by
    a table (see the module docstring).

    Parameters
    ----------
    pixel_size_um : micrometres per unit of the coordinate system (default 1: SpatialData
        readers put the ``'global'`` system of imaging-based technologies in um).
    coordinate_system : the system the cells are placed in (default ``'global'`` where
        the element has it, else its only one).
    table : read only this table (default: every table).
    """
    p = Path(path)
    if not p.exists():
        raise BrainAtlasInputError(f"file not found: {p}")
    sd = _spatialdata()
    try:
        with _quiet():
            sdata = sd.read_zarr(p)
    except Exception as exc:  # noqa: BLE001 - any failure of the store is the user's file
        raise BrainAtlasInputError(
            f"cannot read {p.name}: not a readable SpatialData store ({_short(exc)})"
        ) from None
    tables = dict(sdata.tables)
    if table is not None:
        if table not in tables:
            raise BrainAtlasInputError(
                f"{p.name}: no table {table!r} (tables: {', '.join(tables) or 'none'})"
            )
        tables = {table: tables[table]}
    if not tables:
        raise BrainAtlasInputError(f"{p.name}: the SpatialData store holds no table of cells")
    sections, skipped, names = [], [], set()
    for tname, tab in tables.items():
        try:
            got, why = _table_sections(sdata, p, tname, tab, pixel_size_um, coordinate_system)
        except BrainAtlasInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - malformed element or table
            raise BrainAtlasInputError(
                f"cannot read {p.name}: table {tname!r}: {_short(exc)}"
            ) from None
        skipped.extend(why)
        for s in got:
            name = s.uns["napari_brainatlas"]["section"]
            if name in names:  # two tables annotate the same element: tell them apart
                name = f"{tname}:{name}"
                s.uns["napari_brainatlas"]["section"] = name
                s.obs["section"] = pd.Categorical([name] * s.n_obs)
            names.add(name)
            sections.append(s)
    if not sections:
        raise BrainAtlasInputError(
            f"{p.name}: no table annotates points or shapes ({'; '.join(skipped) or 'none'})"
        )
    return sections


def _table_sections(sdata, path: Path, tname: str, tab: AnnData, pixel_size_um, cs):
    """The sections of one table, and why any of its regions was skipped."""
    attrs = tab.uns.get("spatialdata_attrs")
    if not isinstance(attrs, dict) or not {"region", "region_key", "instance_key"} <= set(attrs):
        return [], [f"table {tname!r} annotates no element (no spatialdata_attrs)"]
    region, region_key, instance_key = attrs["region"], attrs["region_key"], attrs["instance_key"]
    regions = [region] if isinstance(region, str) else [str(r) for r in np.ravel(region)]
    for key in (region_key, instance_key):
        if key not in tab.obs.columns:
            raise BrainAtlasInputError(f"{path.name}: table {tname!r} has no obs column {key!r}")
    out, skipped = [], []
    labels = tab.obs[region_key].astype(str).to_numpy()
    for reg in regions:
        if reg in sdata.points:
            kind, element = "points", sdata.points[reg]
        elif reg in sdata.shapes:
            kind, element = "shapes", sdata.shapes[reg]
        else:
            where = "labels" if reg in sdata.labels else "missing"
            skipped.append(f"table {tname!r} annotates {reg!r} ({where}, not points or shapes)")
            continue
        rows = np.flatnonzero(labels == reg)
        if len(rows) == 0:
            skipped.append(f"table {tname!r} has no rows for {reg!r}")
            continue
        xyz, index, what = _element_coordinates(element, kind)
        system, matrix = _transformation(element, cs, xyz.shape[1], path, reg)
        xy = (np.column_stack([xyz, np.ones(len(xyz))]) @ matrix.T)[:, :2]
        ids = tab.obs[instance_key].to_numpy()[rows]
        if not index.is_unique:
            raise BrainAtlasInputError(f"{path.name}: element {reg!r} has duplicate instance ids")
        pos = _match(index, ids)
        keep = pos >= 0
        if not keep.any():
            raise BrainAtlasInputError(
                f"{path.name}: no row of table {tname!r} matches an instance of {reg!r} "
                f"(obs[{instance_key!r}] against the element's index)"
            )
        sub = tab[rows[keep]].copy()
        name = _section_name(sub, reg, len(regions))
        meta = dict(sub.uns.get("napari_brainatlas") or {})
        added = [str(c) for c in np.ravel(meta.pop(_ADDED, []))]
        sub.obs = sub.obs.drop(columns=[c for c in added if c in sub.obs.columns])
        sub.uns.pop("spatialdata_attrs", None)
        sub.uns["napari_brainatlas"] = meta
        scale = 1.0 if pixel_size_um is None else float(pixel_size_um)
        extra = "; z dropped" if xyz.shape[1] == 3 else ""
        from .readers import normalise_section

        sec = normalise_section(
            sub,
            source=str(path),
            section=name,
            fmt="spatialdata",
            pixel_size_um=scale,
            coords=xy[pos[keep]],
            coords_from=(
                f"SpatialData {kind} {reg!r} ({what}) in coordinate system {system!r}{extra}"
            ),
        )
        sec.uns["napari_brainatlas"]["spatialdata"] = {
            "table": tname,
            "element": reg,
            "element_type": kind,
            "coordinate_system": system,
            "transformation": matrix.tolist(),
            "instance_key": instance_key,
            "rows_without_instance": int((~keep).sum()),
        }
        out.append(sec)
    return out, skipped


def _match(index: pd.Index, ids: np.ndarray) -> np.ndarray:
    """Position in the element's ``index`` of each table instance id (-1: none)."""
    try:
        pos = index.get_indexer(pd.Index(ids).astype(index.dtype, copy=False))
    except (TypeError, ValueError):
        pos = np.full(len(ids), -1)
    if (pos < 0).all():  # ids stored as text on one side and numbers on the other
        pos = index.astype(str).get_indexer(pd.Index(ids).astype(str))
    return pos


def _section_name(sub: AnnData, region: str, n_regions: int) -> str:
    meta = sub.uns.get("napari_brainatlas")
    if n_regions == 1 and isinstance(meta, dict) and meta.get("section"):
        return str(meta["section"])  # written by this package: the section's own name
    return region


def _element_coordinates(element, kind: str) -> tuple[np.ndarray, pd.Index, str]:
    """(n, 2 or 3) coordinates of an element's instances in its own space, its index
    (the instance ids), and what the coordinates are."""
    if kind == "points":
        cols = [c for c in ("x", "y", "z") if c in element.columns]
        if cols[:2] != ["x", "y"]:
            raise BrainAtlasInputError("a points element has no x/y columns")
        df = element[cols].compute()
        return df.to_numpy(dtype=np.float64), pd.Index(df.index), "point x/y"
    geom = element.geometry
    types = set(geom.geom_type.unique())
    if types <= {"Point"}:
        xy = np.column_stack([geom.x.to_numpy(), geom.y.to_numpy()])
        what = "circle centres" if "radius" in element.columns else "point shapes"
    elif types <= {"Polygon", "MultiPolygon"}:
        c = geom.centroid
        xy = np.column_stack([c.x.to_numpy(), c.y.to_numpy()])
        what = "polygon centroids"
    else:
        raise BrainAtlasInputError(f"shapes of type {', '.join(sorted(types))} are not cells")
    return np.asarray(xy, dtype=np.float64), pd.Index(element.index), what


def _transformation(element, cs: str | None, ndim: int, path: Path, name: str):
    """The chosen coordinate system and the (ndim+1)^2 affine matrix into it."""
    from spatialdata.transformations import get_transformation

    all_t = get_transformation(element, get_all=True) or {}
    if cs is None:
        cs = "global" if "global" in all_t else (next(iter(sorted(all_t))) if all_t else None)
    if cs is None or cs not in all_t:
        raise BrainAtlasInputError(
            f"{path.name}: element {name!r} is not in coordinate system {cs!r} "
            f"(it is in: {', '.join(sorted(all_t)) or 'none'})"
        )
    axes = ("x", "y", "z")[:ndim]
    m = np.asarray(all_t[cs].to_affine_matrix(input_axes=axes, output_axes=axes), dtype=float)
    if not np.isfinite(m).all():
        raise BrainAtlasInputError(f"{path.name}: element {name!r} has a non-finite transformation")
    return cs, m


# ---------------------------------------------------------------------- writing
def write_spatialdata(
    sections: AnnData | list[AnnData],
    path: str | Path,
    *,
    shapes: str = "circles",
    overwrite: bool = False,
) -> Path:
    """Write sections as a SpatialData store (see the module docstring).

    Parameters
    ----------
    sections : one section or several (each an AnnData with ``obsm['spatial']`` in um).
    path : the store, a ``.zarr`` folder.
    shapes : ``'circles'`` (a shapes element of circles of the cells' typical diameter,
        what napari-spatialdata draws as spots) or ``'points'`` (a points element).
    overwrite : replace an existing store (never one a section was read from).

    Element names are the section names made safe (letters, digits, ``_-.``); the table
    of a single section is ``'table'``, otherwise ``'table_<element>'``.
    """
    if isinstance(sections, AnnData):
        sections = [sections]
    sections = list(sections)
    out = Path(path)
    if not sections:
        raise BrainAtlasInputError("nothing to write: no sections")
    if shapes not in ("circles", "points"):
        raise BrainAtlasInputError(f"shapes must be 'circles' or 'points', not {shapes!r}")
    if not out.name.lower().endswith(".zarr"):
        raise BrainAtlasInputError(f"a SpatialData store must be a .zarr folder, not {out.name}")
    _check_not_input(sections, out)
    if out.exists() and not overwrite:
        raise BrainAtlasInputError(f"{out} exists; choose another path or overwrite it")
    sd = _spatialdata()
    elements, tables, taken = {}, {}, set()
    for s in sections:
        name = _element_name(s, taken)
        elements[name] = _element(s, shapes)
        tables["table" if len(sections) == 1 else f"table_{name}"] = _table(s, name)
    kw = {"points": elements} if shapes == "points" else {"shapes": elements}
    try:
        with _quiet():
            sdata = sd.SpatialData(tables=tables, **kw)
    except Exception as exc:  # noqa: BLE001
        raise BrainAtlasInputError(f"cannot build the SpatialData store: {_short(exc)}") from None
    _atomic_store(sdata, out)
    return out


def _check_not_input(sections: list[AnnData], out: Path) -> None:
    target = out.resolve()
    for s in sections:
        meta = s.uns.get("napari_brainatlas")
        src = meta.get("source") if isinstance(meta, dict) else None
        if not src or not Path(src).exists():
            continue
        src = Path(src).resolve()
        if src == target or target in src.parents or src in target.parents:
            raise BrainAtlasInputError(
                f"refusing to write over the input {src.name}; choose another output path"
            )


def _element_name(s: AnnData, taken: set[str]) -> str:
    meta = s.uns.get("napari_brainatlas")
    name = meta.get("section") if isinstance(meta, dict) else None
    if not name and "section" in s.obs.columns and s.n_obs:
        name = s.obs["section"].iloc[0]
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name or "section")).lstrip(".") or "section"
    if base.startswith("table"):
        base = f"cells_{base}"
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def _xy(s: AnnData) -> np.ndarray:
    if "spatial" not in s.obsm:
        raise BrainAtlasInputError("a section has no obsm['spatial'] coordinates to write")
    xy = np.asarray(s.obsm["spatial"], dtype=np.float64)[:, :2]
    if len(xy) == 0:
        raise BrainAtlasInputError("a section has zero cells")
    if not np.isfinite(xy).all():
        raise BrainAtlasInputError("a section has NaN or infinite coordinates")
    return xy


def _element(s: AnnData, shapes: str):
    from spatialdata.models import PointsModel, ShapesModel
    from spatialdata.transformations import Identity

    from ..layers import cell_size_um

    xy = _xy(s)
    t = {"global": Identity()}
    with _quiet():
        if shapes == "points":
            df = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})
            return PointsModel.parse(df, transformations=t)
        radius = np.full(len(xy), cell_size_um(xy) / 2.0)
        return ShapesModel.parse(
            xy, geometry=0, radius=radius, index=np.arange(len(xy)), transformations=t
        )


def _free(obs: pd.DataFrame, name: str) -> str:
    out, i = name, 1
    while out in obs.columns:
        i += 1
        out = f"{name}_{i}"
    return out


def _table(s: AnnData, region: str) -> AnnData:
    from spatialdata.models import TableModel

    t = s.to_memory() if getattr(s, "isbacked", False) else s.copy()
    t.uns.pop("spatialdata_attrs", None)
    rk, ik = _free(t.obs, REGION_KEY), _free(t.obs, INSTANCE_KEY)
    t.obs[rk] = pd.Categorical([region] * t.n_obs)
    t.obs[ik] = np.arange(t.n_obs, dtype=np.int64)
    meta = dict(t.uns.get("napari_brainatlas") or {})
    meta[_ADDED] = [rk, ik]
    t.uns["napari_brainatlas"] = meta
    with _quiet():
        return TableModel.parse(t, region=region, region_key=rk, instance_key=ik)


def _atomic_store(sdata, out: Path) -> None:
    """Write the store to a temporary folder beside ``out``, then rename it into place
    (an existing ``out`` is moved aside first and removed only after the rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out.with_name(f".{out.name}.tmp-{tag}")
    old = out.with_name(f".{out.name}.old-{tag}")
    try:
        with _quiet():
            sdata.write(tmp)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    except BrainAtlasInputError:
        raise
    except Exception as exc:  # noqa: BLE001
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise BrainAtlasInputError(f"cannot write {out.name}: {_short(exc)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
