"""The one way to read input paths into sections and to name a section.

* :func:`read_paths` - files / folders -> one in-memory AnnData per section (the
  readers of :mod:`napari_brainatlas.io`, which follow the data contract: ``obsm
  ['spatial']`` in micrometres, ``obs['section']``, ``uns['napari_brainatlas']``).
  Names are made unique across all paths (a repeated name ``n`` becomes ``n_<i>``,
  ``i`` the section's position) and written into the returned objects' ``uns`` and
  ``obs['section']``; the files are only read.
* :func:`section_name` / :func:`section_names` - the name of a section everywhere
  (output file names, model section names, printed lines): ``uns['napari_brainatlas']
  ['section']``, else a single ``obs['section']`` value, else ``section<i>``.
* :func:`as_sections` - what every workflow accepts: AnnData objects or paths.
* :func:`select_section` - one section of several by name (one clear error otherwise).
* :func:`describe_file` - what ``napari-brainatlas info`` prints about a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..io import read_sections

__all__ = [
    "FileInfo",
    "as_sections",
    "describe_file",
    "numeric_columns_note",
    "read_paths",
    "require_genes",
    "section_name",
    "section_names",
    "select_section",
]


def section_name(adata: AnnData, default: str | int = 0) -> str:
    """The section's name: ``uns['napari_brainatlas']['section']``, else the one value of
    ``obs['section']``, else ``default`` (an int ``i`` gives ``section<i>``)."""
    meta = adata.uns.get("napari_brainatlas", {})
    name = meta.get("section") if isinstance(meta, dict) else None
    if not name and "section" in adata.obs.columns:
        values = pd.unique(adata.obs["section"].astype(str))
        name = values[0] if len(values) == 1 else None
    if not name:
        name = f"section{default}" if isinstance(default, int) else default
    return str(name)


def section_names(sections: Sequence[AnnData]) -> list[str]:
    """Unique names of ``sections`` in order (a repeat of ``n`` becomes ``n_<i>``)."""
    names: list[str] = []
    seen: set[str] = set()
    for i, a in enumerate(sections):
        name = section_name(a, i)
        if name in seen:
            k, base = i, name
            name = f"{base}_{k}"
            while name in seen:
                k += 1
                name = f"{base}_{k}"
        seen.add(name)
        names.append(name)
    return names


def _set_name(adata: AnnData, name: str) -> None:
    meta = adata.uns.get("napari_brainatlas", {})
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta["section"] = name
    adata.uns["napari_brainatlas"] = meta
    adata.obs["section"] = pd.Categorical([name] * adata.n_obs)


def read_paths(
    paths: str | Path | Iterable[str | Path],
    pixel_size_um: float | None = None,
    *,
    section_key: str | None = None,
    genes=None,
) -> list[AnnData]:
    """Every section of every path, in memory, with unique names (see the module doc).

    ``pixel_size_um``: micrometres per coordinate unit (default: from the file, else 1);
    ``section_key``: the obs column splitting a multi-section file (default: the first
    of :data:`napari_brainatlas.io.SECTION_KEYS` present); ``genes``: which numeric
    columns of a csv / tsv cell table are genes (``True``, names, ``"FIRST:LAST"``;
    default none: they stay obs columns; see :mod:`napari_brainatlas.io.tables`). Raises one
    :class:`BrainAtlasInputError` for a missing or unreadable path, or when no path
    holds a section.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    sections = []
    kw = {"genes": genes} if genes is not None else {}
    for p in paths:
        for a in read_sections(p, pixel_size_um=pixel_size_um, section_key=section_key, **kw):
            sections.append(a.to_memory() if getattr(a, "isbacked", False) else a)
    if not sections:
        raise BrainAtlasInputError("no sections found in the input")
    for a, name in zip(sections, section_names(sections)):
        if section_name(a) != name:
            _set_name(a, name)
    return sections


def as_sections(items, pixel_size_um: float | None = None) -> list[AnnData]:
    """AnnData objects as given (not copied); paths read with :func:`read_paths`."""
    if isinstance(items, (AnnData, str, Path)):
        items = [items]
    items = list(items)
    if all(isinstance(a, AnnData) for a in items):
        return items
    if any(isinstance(a, AnnData) for a in items):
        raise BrainAtlasInputError("give sections either as AnnData objects or as paths")
    return read_paths(items, pixel_size_um)


def require_genes(sections: Sequence[AnnData], what: str) -> None:
    """One clear error when a section has no genes (a cell table read without
    ``genes``: its numeric columns are cell values)."""
    names = section_names(sections)
    for a, name in zip(sections, names):
        if a.n_vars == 0:
            meta = a.uns.get("napari_brainatlas", {})
            numbers = meta.get("numeric_columns", []) if isinstance(meta, dict) else []
            hint = (
                f"; its numeric columns ({', '.join(list(numbers)[:4])}) are cell values "
                "unless read with --genes-from-columns (genes=)"
                if numbers
                else ""
            )
            raise BrainAtlasInputError(f"{what} needs genes, but section {name!r} has none{hint}")


def select_section(sections: Sequence[AnnData], name: str | None = None, source="") -> AnnData:
    """The section called ``name``; without a name, the only section there is."""
    names = section_names(sections)
    where = f" in {source}" if source else ""
    if name is not None:
        if name not in names:
            raise BrainAtlasInputError(f"no section {name!r}{where} (it has {', '.join(names)})")
        return sections[names.index(name)]
    if len(sections) != 1:
        raise BrainAtlasInputError(
            f"there are {len(sections)} sections{where}; choose one by name ({', '.join(names)})"
        )
    return sections[0]


def numeric_columns_note(columns: Sequence[str]) -> str:
    """The line saying a cell table's numeric columns were kept as cell values."""
    cols = list(columns)
    shown = ", ".join(cols[:6]) + (f", ... ({len(cols)} in all)" if len(cols) > 6 else "")
    return (
        f"no genes: {len(cols)} numeric column(s) kept as cell values ({shown}); "
        "to read them as genes use --genes-from-columns (all, A,B,C or FIRST:LAST)"
    )


@dataclass
class FileInfo:
    """What a file holds: its sections' names, sizes, extents and label columns."""

    path: str
    format: str
    coords_from: str
    pixel_size_um: float
    sections: list[dict] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One line for the file, one indented line per section."""
        out = [
            f"{self.path}: {len(self.sections)} section(s), format {self.format}, "
            f"coordinates from {self.coords_from} x {self.pixel_size_um:g} um"
        ]
        for s in self.sections:
            out.append(
                f"  {s['name']}: {s['n_cells']} cells x {s['n_genes']} genes, extent "
                f"{s['extent_um'][0]:.0f} x {s['extent_um'][1]:.0f} um, "
                f"counts={s['counts']}, labels: {', '.join(s['labels']) or '-'}"
            )
            if not s["n_genes"] and s.get("numeric_obs"):
                out.append("    " + numeric_columns_note(s["numeric_obs"]))
        return out


def describe_file(
    path: str | Path,
    pixel_size_um: float | None = None,
    *,
    section_key: str | None = None,
    genes=None,
) -> FileInfo:
    """Read ``path`` and summarise it (cells, genes, extent in um, label columns)."""
    kw = {"genes": genes} if genes is not None else {}
    secs = read_sections(path, pixel_size_um=pixel_size_um, section_key=section_key, **kw)
    meta = secs[0].uns["napari_brainatlas"]
    info = FileInfo(str(path), meta["format"], meta["coords_from"], meta["pixel_size_um"])
    for i, s in enumerate(secs):
        xy = s.obsm["spatial"]
        labels = [c for c in s.obs.columns if str(s.obs[c].dtype) == "category" and c != "section"]
        info.sections.append(
            {
                "name": section_name(s, i),
                "n_cells": int(s.n_obs),
                "n_genes": int(s.n_vars),
                "extent_um": tuple(float(v) for v in xy.max(0) - xy.min(0)),
                "counts": "counts" in s.layers,
                "labels": labels,
                "numeric_obs": list(s.uns["napari_brainatlas"].get("numeric_columns", [])),
            }
        )
    return info
