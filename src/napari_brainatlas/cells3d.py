"""Registered cells of several sections together in CCF space, for the 3D atlas view
(no napari here).

:func:`ccf_points` gathers every registered cell (a finite row of
``obsm['ccf_coords']``, CCF um in (AP, DV, ML) order, ../shared/docs/conventions.md) of
each section into one array, remembers which section and row each came from, and colours
them by one key shared across sections: a label column (one legend over all sections, in
the scverse colours of ``uns['<key>_colors']``, see :mod:`napari_brainatlas.colors`) or a
gene / numeric column (one colormap and contrast limits over all sections; cells of a
section without it are grey).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from anndata import AnnData

from ._errors import BrainAtlasInputError
from .colors import continuous_colors
from .io.backed import gene_values
from .layers import GREY, label_colors_across, label_columns, numeric_columns

__all__ = ["CCFPoints", "ccf_points", "color_points", "registered", "shared_keys"]


@dataclass
class CCFPoints:
    """Every registered cell of several sections.

    Attributes
    ----------
    coords : (n, 3) float32 CCF um (AP, DV, ML).
    section : (n,) int32 index into ``names``; ``rows`` (n,) int64 the cell's row in it.
    ccf_id : (n,) int64 structure id (``obs['ccf_id']``, 0 where a section has none).
    rgba : (n, 4) float32 colours by ``color_by``; ``kind`` 'categorical' (``legend``),
        'continuous' (``clim``) or 'none'.
    """

    coords: np.ndarray
    section: np.ndarray
    rows: np.ndarray
    names: list[str]
    ccf_id: np.ndarray
    rgba: np.ndarray
    color_by: str | None = None
    kind: str = "none"
    legend: dict = field(default_factory=dict)
    clim: tuple[float, float] | None = None

    @property
    def n(self) -> int:
        return len(self.coords)


def _name(ad: AnnData, i: int) -> str:
    meta = ad.uns.get("napari_brainatlas")
    if isinstance(meta, dict) and meta.get("section"):
        return str(meta["section"])
    if "section" in ad.obs.columns and ad.n_obs:
        return str(ad.obs["section"].iloc[0])
    return f"section {i + 1}"


def registered(ad: AnnData) -> np.ndarray:
    """Rows of ``ad`` with a finite CCF position (empty if it was never registered)."""
    c = ad.obsm.get("ccf_coords") if "ccf_coords" in ad.obsm else None
    if c is None:
        return np.zeros(0, dtype=np.int64)
    c = np.asarray(c, dtype=float)
    if c.ndim != 2 or c.shape[1] != 3:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.isfinite(c).all(axis=1))


def shared_keys(sections: list[AnnData]) -> tuple[list[str], list[str], list[str]]:
    """(label columns, numeric columns, genes) that every section has, in a stable order
    (labels and numbers by the first section's column order, genes sorted)."""
    if not sections:
        return [], [], []
    labels = [c for c in label_columns(sections[0]) if c]
    numbers = numeric_columns(sections[0])
    genes = set(map(str, sections[0].var_names))
    for ad in sections[1:]:
        have_l, have_n = set(label_columns(ad)), set(numeric_columns(ad))
        labels = [c for c in labels if c in have_l]
        numbers = [c for c in numbers if c in have_n]
        genes &= set(map(str, ad.var_names))
    return labels, numbers, sorted(genes)


def ccf_points(
    sections: list[AnnData], color_by: str | None = None, *, colors: dict | None = None
) -> CCFPoints:
    """Every registered cell of ``sections`` in one array, coloured by ``color_by``.

    Raises :class:`BrainAtlasInputError` when no section has a registered cell.
    """
    coords, sec, rows, ids, names = [], [], [], [], []
    for i, ad in enumerate(sections):
        names.append(_name(ad, i))
        r = registered(ad)
        if len(r) == 0:
            continue
        c = np.asarray(ad.obsm["ccf_coords"])
        coords.append((c if len(r) == len(c) else c[r]).astype(np.float32, copy=False))
        sec.append(np.full(len(r), i, dtype=np.int32))
        rows.append(r.astype(np.int64))
        if "ccf_id" in ad.obs.columns:
            v = np.asarray(ad.obs["ccf_id"].to_numpy(), dtype=np.int64)
            ids.append(v if len(r) == len(v) else v[r])
        else:
            ids.append(np.zeros(len(r), dtype=np.int64))
    if not coords:
        raise BrainAtlasInputError(
            "no section has registered cells (obsm['ccf_coords']); register sections first"
        )
    pts = CCFPoints(
        coords=np.concatenate(coords),
        section=np.concatenate(sec),
        rows=np.concatenate(rows),
        names=names,
        ccf_id=np.concatenate(ids),
        rgba=np.empty((0, 4), np.float32),
    )
    color_points(pts, sections, color_by, colors=colors)
    return pts


def _per_section(pts: CCFPoints, n_sections: int) -> list[slice]:
    """Slices of ``pts`` per section (cells are stored section after section)."""
    bounds = np.searchsorted(pts.section, np.arange(n_sections + 1), side="left")
    return [slice(int(bounds[i]), int(bounds[i + 1])) for i in range(n_sections)]


def color_points(
    pts: CCFPoints, sections: list[AnnData], color_by: str | None, *, colors: dict | None = None
) -> CCFPoints:
    """Colour ``pts`` (from :func:`ccf_points` of the same ``sections``) by ``color_by``:
    a label column, a numeric column or a gene (None: one colour per section)."""
    parts = _per_section(pts, len(sections))
    rgba = np.empty((pts.n, 4), dtype=np.float32)
    rgba[:] = GREY
    pts.color_by, pts.legend, pts.clim = color_by, {}, None
    is_label = color_by is not None and any(color_by in label_columns(ad) for ad in sections)
    if color_by is None:
        from .colors import _palette

        pal = _palette(len(sections))
        for i, s in enumerate(parts):
            rgba[s, :3] = pal[i]
        pts.kind = "categorical"
        pts.legend = {
            pts.names[i]: np.array([*pal[i], 1.0], np.float32) for i in range(len(sections))
        }
    elif is_label:
        per, legend = label_colors_across(sections, color_by, colors=colors)
        for s, ad_rgba, sl in zip(sections, per, parts):
            if ad_rgba is not None and sl.stop > sl.start:
                rgba[sl] = ad_rgba[pts.rows[sl]]
        pts.kind, pts.legend = "categorical", legend
    else:
        values = np.full(pts.n, np.nan, dtype=np.float32)
        for ad, sl in zip(sections, parts):
            if sl.stop == sl.start:
                continue
            if color_by in ad.obs.columns:
                v = ad.obs[color_by].to_numpy(dtype=float)
            elif color_by in ad.var_names:
                v = np.log1p(np.maximum(gene_values(ad, color_by), 0))
            else:
                continue
            values[sl] = np.asarray(v, dtype=np.float32)[pts.rows[sl]]
        rgba, clim = continuous_colors(values)
        pts.kind, pts.clim = "continuous", clim
    pts.rgba = np.ascontiguousarray(rgba, dtype=np.float32)
    return pts
