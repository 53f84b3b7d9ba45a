"""Sanity checks around a registration, before and after the fit (plain Python).

* :func:`check_units` - does the section's size (and its typical nearest-neighbour cell
  spacing) fit the atlas? A section whose coordinates are pixels (a STARmap section at
  ~0.2 um per unit read as um spans 34.5 x 25.6 mm) is flagged with a suggested pixel
  size.
* :func:`partial_reason` - does the section look like a crop (its tissue area far below
  the template slice's)? Such a section is not stretched over a whole-brain slice by a
  batch run.
* :func:`fitted_scale`, :func:`scale_warning` - the scale of a fit (section um -> atlas
  um); far from 1 means wrong units or a wrong fit.

Every function takes plain arrays / AnnData and an :class:`~napari_brainatlas.atlas.Atlas`
and returns numbers and sentences for the caller (the dock, the command line) to show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "PARTIAL_AREA_RATIO",
    "SCALE_RANGE",
    "UnitCheck",
    "check_units",
    "fitted_scale",
    "nn_spacing_um",
    "partial_reason",
    "scale_warning",
    "section_area_um2",
    "section_xy",
]

#: a fitted scale outside this range is reported as implausible
SCALE_RANGE = (0.5, 2.0)
#: a section whose tissue area is below this fraction of the template slice's looks
#: partial (a crop) to a batch run
PARTIAL_AREA_RATIO = 0.35
#: typical nearest-neighbour distance of segmented cells in brain tissue (um)
TYPICAL_CELL_SPACING_UM = 10.0
#: plausible nearest-neighbour spacing of cells / spots (um): sub-micrometre spacing means
#: pixels, several hundred um means millimetres or a sparse subsample
SPACING_RANGE_UM = (1.0, 400.0)


def section_xy(adata, spatial_key: str = "spatial") -> np.ndarray:
    """(n, 2) finite section coordinates (um) of ``adata`` (or an array passed in)."""
    xy = adata if isinstance(adata, np.ndarray) else adata.obsm[spatial_key]
    xy = np.asarray(xy, dtype=float)[:, :2]
    return xy[np.isfinite(xy).all(axis=1)]


def nn_spacing_um(xy: np.ndarray, sample: int = 5000, seed: int = 0) -> float:
    """Median nearest-neighbour distance of the cells (um; a random sample of them)."""
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, float)
    if len(xy) < 2:
        return float("nan")
    q = xy
    if len(xy) > sample:
        q = xy[np.random.default_rng(seed).choice(len(xy), sample, replace=False)]
    d, _ = cKDTree(xy).query(q, k=2)
    d = d[:, 1]
    d = d[np.isfinite(d) & (d > 0)]
    return float(np.median(d)) if d.size else float("nan")


def _atlas_plane_extent_um(atlas, plane: str) -> np.ndarray:
    """(width, height) um of the atlas's slices along ``plane`` (x = ML or AP, y = DV)."""
    ap, dv, ml = atlas.shape_um
    return np.array([ml if plane == "coronal" else ap, dv], dtype=float)


def _nice(v: float) -> float:
    """Two significant digits."""
    if not np.isfinite(v) or v <= 0:
        return float("nan")
    return float(f"{v:.2g}")


def _size(w: float, h: float) -> str:
    """``34.5 x 25.6 mm`` or ``120 x 80 um``."""
    if max(w, h) >= 1000:
        return f"{w / 1000:.1f} x {h / 1000:.1f} mm"
    return f"{w:.3g} x {h:.3g} um"


def _pixel_size(adata) -> float:
    meta = getattr(adata, "uns", {}).get("napari_brainatlas", {}) if adata is not None else {}
    try:
        p = float(meta.get("pixel_size_um", 1.0)) if isinstance(meta, dict) else 1.0
    except (TypeError, ValueError):
        p = 1.0
    return p if np.isfinite(p) and p > 0 else 1.0


@dataclass
class UnitCheck:
    """The outcome of :func:`check_units`.

    extent_um : (width, height) of the section's cells; atlas_um : the atlas slice's;
    spacing_um : median nearest-neighbour distance; factor : what the coordinates should
    be multiplied by (1 when plausible); pixel_size_um : the pixel size to read the file
    with (the one used times ``factor``), None when plausible.
    """

    section: str
    extent_um: tuple[float, float]
    atlas_um: tuple[float, float]
    spacing_um: float
    plausible: bool
    factor: float = 1.0
    pixel_size_um: float | None = None
    problem: str = ""

    @property
    def message(self) -> str:
        """One sentence for the user ("" when plausible)."""
        if self.plausible:
            return ""
        w, h = self.extent_um
        aw, ah = self.atlas_um
        text = (
            f"{self.section} spans {_size(w, h)} with cells {self.spacing_um:.3g} um apart "
            f"({self.problem}; the atlas slice is {_size(aw, ah)})"
        )
        if self.pixel_size_um is not None:
            text += (
                f": its coordinates are probably not um; open it again with a pixel size of "
                f"about {self.pixel_size_um:.3g} um"
            )
        return text


def check_units(adata, atlas, plane: str = "coronal", *, name: str | None = None) -> UnitCheck:
    """Compare the section's extent and cell spacing with the atlas's slices.

    Implausible: wider than 1.5x the atlas slice, smaller than 3% of it, or cells closer
    than 1 um / further than 400 um apart. The suggested factor brings the spacing to
    ~10 um (a cell) when that gives a section 0.3-1.2x the atlas slice's size, else
    brings the extent to 0.7x the atlas slice."""
    xy = section_xy(adata)
    section = name or (
        str(getattr(adata, "uns", {}).get("section", "")) if adata is not None else ""
    )
    section = section or "the section"
    atlas_ext = _atlas_plane_extent_um(atlas, plane)
    if len(xy) < 3:
        return UnitCheck(section, (0.0, 0.0), tuple(atlas_ext), float("nan"), True)
    ext = np.ptp(xy, axis=0)
    spacing = nn_spacing_um(xy)
    big, small = ext.max() > 1.5 * atlas_ext.max(), ext.max() < 0.03 * atlas_ext.max()
    lo_s, hi_s = SPACING_RANGE_UM
    dense = np.isfinite(spacing) and spacing < lo_s
    sparse = np.isfinite(spacing) and spacing > hi_s
    ok = not (big or small or dense or sparse)
    out = UnitCheck(section, (float(ext[0]), float(ext[1])), tuple(atlas_ext), spacing, ok)
    if ok:
        return out
    out.problem = (
        "larger than the whole brain"
        if big
        else "smaller than a cortical column"
        if small
        else "cells closer than 1 um"
        if dense
        else "cells hundreds of um apart"
    )
    # the spacing of cells says the scale when the section is densely segmented; a
    # sparse (subsampled) section would come out a small crop that way: then the extent
    # says it (a section about 0.7 x the atlas slice)
    f_nn = TYPICAL_CELL_SPACING_UM / spacing if np.isfinite(spacing) and spacing > 0 else np.nan
    amax = atlas_ext.max()
    if np.isfinite(f_nn) and 0.3 * amax <= f_nn * ext.max() <= 1.2 * amax:
        f = f_nn
    else:
        f = 0.7 * amax / max(ext.max(), 1e-12)
    out.factor = _nice(f)
    out.pixel_size_um = _nice(_pixel_size(adata) * f)
    return out


def section_area_um2(xy: np.ndarray, spacing_um: float | None = None) -> float:
    """Tissue area (um^2) covered by the cells: an occupancy grid of bins ~2.5 cell
    spacings wide, closed and hole-filled."""
    from scipy import ndimage as ndi

    xy = np.asarray(xy, float)
    if len(xy) < 3:
        return 0.0
    s = spacing_um if spacing_um and np.isfinite(spacing_um) else nn_spacing_um(xy)
    ext = np.ptp(xy, axis=0)
    b = max(2.5 * s, float(ext.max()) / 400.0, 1e-9)
    ij = np.floor((xy - xy.min(0)) / b).astype(np.int64)
    grid = np.zeros(tuple(ij.max(0) + 3), dtype=bool)
    grid[ij[:, 0] + 1, ij[:, 1] + 1] = True
    grid = ndi.binary_closing(grid, iterations=1)
    grid = ndi.binary_fill_holes(grid)
    return float(grid.sum() * b * b)


def partial_reason(
    adata,
    atlas,
    plane: str = "coronal",
    position_um: float | None = None,
    hemisphere: str = "both",
    angles_deg=(0.0, 0.0),
    *,
    ratio: float = PARTIAL_AREA_RATIO,
) -> str | None:
    """Why the section should not be fitted to a whole template slice unattended (wrong
    units, or its tissue area below ``ratio`` x the template slice's), or None."""
    from ..register.slices import atlas_slice

    units = check_units(adata, atlas, plane)
    if not units.plausible:
        hint = f", pixel size about {units.pixel_size_um:.3g} um?" if units.pixel_size_um else ""
        return f"units look wrong ({units.problem}{hint})"
    xy = section_xy(adata)
    lo, hi = atlas.position_range_um(plane)
    pos = (lo + hi) / 2 if position_um is None or isinstance(position_um, str) else position_um
    pos = float(np.clip(pos, lo, hi - atlas.resolution_um))
    sl = atlas_slice(atlas, plane, pos, hemisphere, tuple(float(a) for a in angles_deg))
    tmpl = float(sl.mask.sum()) * sl.resolution_um**2
    if tmpl <= 0:
        return None
    area = section_area_um2(xy, units.spacing_um)
    if area < ratio * tmpl:
        return (
            f"looks partial: {area / 1e6:.2g} mm2 of tissue against {tmpl / 1e6:.2g} mm2 in "
            f"the template slice; register it by hand (midline, landmarks)"
        )
    return None


def fitted_scale(result) -> float:
    """sqrt(|det|) of the fit's linear part: atlas um per section um."""
    A = np.asarray(result.affine, float).reshape(3, 3)
    return float(np.sqrt(abs(np.linalg.det(A[:2, :2]))))


def scale_warning(result, *, pixel_size_um: float = 1.0) -> str | None:
    """A sentence when the fitted scale is outside :data:`SCALE_RANGE`, else None."""
    s = fitted_scale(result)
    lo, hi = SCALE_RANGE
    if lo <= s <= hi:
        return None
    return (
        f"fitted scale {s:.2f} (atlas um per section um) is far from 1: the section's units "
        f"are probably wrong (a pixel size of about {_nice(pixel_size_um * s):.3g} um would "
        f"match) or the fit is wrong"
    )
