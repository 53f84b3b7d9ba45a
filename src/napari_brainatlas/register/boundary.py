"""Tissue outlines: boundary points of a cell point cloud and of a template slice.

The outline of a section is taken from a rasterised cell-density image: cells are
binned on a grid whose pixel holds a handful of cells, the image is smoothed and its
0.5 x (interior density) level line is traced with marching squares. For a straight
edge of uniformly spread cells that level line is an unbiased estimate of the tissue
edge, and it follows concave outlines (hemisections, torn tissue), unlike a convex hull.

The outline of a template slice is the 0.5 level line of its tissue mask (labels > 0,
holes filled), which runs along the pixel edges.

All coordinates are (x, y) micrometres: x = column axis, y = row axis (down).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .._errors import BrainAtlasInputError

__all__ = ["MIN_CELLS", "Outline", "resample_polyline", "section_outline", "template_outline"]

#: fewest cells a section may have to be registered
MIN_CELLS = 50


@dataclass
class Outline:
    """A tissue outline.

    Attributes
    ----------
    points : (m, 2) float, boundary points (x, y) um spaced about ``spacing_um`` apart.
    contours : list of (k, 2) float closed polylines (x, y) um, one per tissue piece.
    mask : (H, W) bool, filled tissue mask on the raster below.
    origin_um : (x0, y0) of the raster's corner; pixel (r, c) covers
        ``[x0 + c * pixel_um, x0 + (c + 1) * pixel_um)`` and the same for y with r.
    pixel_um : raster pixel size, um.
    spacing_um : spacing of ``points`` along the outline, um.
    blur_um : Gaussian blur (um) of the image the outline was traced on.
    normals : (m, 2) unit normals of ``points`` (sign arbitrary).
    field : (H, W) float tissue image on the raster (the blurred filled tissue mask),
        used by the area refinement.
    """

    points: np.ndarray
    contours: list
    mask: np.ndarray
    origin_um: tuple
    pixel_um: float
    spacing_um: float
    blur_um: float = 0.0  # Gaussian blur the outline was traced at, um
    normals: np.ndarray | None = None  # (m, 2) unit normals of ``points``
    field: np.ndarray | None = None  # (H, W) tissue image on the raster, ~1 inside, 0 outside

    @property
    def area_um2(self) -> float:
        return float(self.mask.sum()) * self.pixel_um**2

    @property
    def size_um(self) -> float:
        """A characteristic size: the square root of the tissue area, um."""
        return float(np.sqrt(max(self.area_um2, 1e-12)))

    def contains(self, xy_um: np.ndarray) -> np.ndarray:
        """True where points (n, 2) um fall inside the tissue mask."""
        xy = np.asarray(xy_um, dtype=float).reshape(-1, 2)
        c = np.floor((xy[:, 0] - self.origin_um[0]) / self.pixel_um).astype(np.int64)
        r = np.floor((xy[:, 1] - self.origin_um[1]) / self.pixel_um).astype(np.int64)
        ok = (r >= 0) & (r < self.mask.shape[0]) & (c >= 0) & (c < self.mask.shape[1])
        out = np.zeros(len(xy), dtype=bool)
        out[ok] = self.mask[r[ok], c[ok]]
        return out


def resample_polyline(poly: np.ndarray, spacing: float, closed: bool = True) -> np.ndarray:
    """Points every ``spacing`` um along a polyline (k, 2); returns (m, 2)."""
    p = np.asarray(poly, dtype=float)
    if closed and len(p) > 1 and not np.allclose(p[0], p[-1]):
        p = np.vstack([p, p[:1]])
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    total = s[-1]
    if total <= 0:
        return p[:1].copy()
    n = max(int(np.ceil(total / spacing)), 8)
    t = np.linspace(0.0, total, n, endpoint=not closed)
    return np.column_stack([np.interp(t, s, p[:, 0]), np.interp(t, s, p[:, 1])])


def _contours_of(field: np.ndarray, level: float, origin, pixel: float, min_len: float):
    from skimage.measure import find_contours

    padded = np.pad(field, 1, mode="constant", constant_values=0)
    out = []
    for c in find_contours(padded, level):
        rc = c - 1.0
        xy = np.column_stack(
            [origin[0] + (rc[:, 1] + 0.5) * pixel, origin[1] + (rc[:, 0] + 0.5) * pixel]
        )
        length = np.linalg.norm(np.diff(xy, axis=0), axis=1).sum()
        if length >= min_len:
            out.append(xy)
    return out


def _clean_mask(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    mask = ndi.binary_fill_holes(mask)
    lab, n = ndi.label(mask)
    if n > 1:
        sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, dtype=bool)
        keep[1:] = sizes >= min_fraction * sizes.max()
        mask = keep[lab]
    return mask


def _outline_from_field(field, thr, origin, pixel, spacing, min_fraction) -> Outline:
    mask = _clean_mask(field >= thr, min_fraction)
    # fill interior low-density holes and drop removed specks so only outer edges remain
    f = np.where(mask, np.maximum(field, 2.0 * thr), np.minimum(field, 0.5 * thr))
    contours = _contours_of(f, thr, origin, pixel, min_len=4 * pixel)
    if not contours:
        raise BrainAtlasInputError("no tissue outline could be traced from these cells")
    rs = [resample_polyline(c, spacing) for c in contours]
    pts = np.vstack(rs)
    normals = np.vstack([_normals(r) for r in rs])
    return Outline(
        pts,
        contours,
        mask,
        (float(origin[0]), float(origin[1])),
        float(pixel),
        float(spacing),
        normals=normals,
    )


def _normals(closed_pts: np.ndarray) -> np.ndarray:
    """Unit normals (m, 2) of a closed polyline's points (central differences)."""
    t = np.roll(closed_pts, -1, axis=0) - np.roll(closed_pts, 1, axis=0)
    n = np.column_stack([t[:, 1], -t[:, 0]])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def cell_spacing_um(points: np.ndarray, max_sample: int = 20000, seed: int = 0) -> float:
    """Median nearest-neighbour distance of the cells (um), from a subsample."""
    pts = np.asarray(points, dtype=float)
    n = len(pts)
    if n > max_sample:
        # the NN distance of a random subsample scales as 1 / sqrt(density)
        rng = np.random.default_rng(seed)
        pts = pts[rng.choice(n, max_sample, replace=False)]
    d, _ = cKDTree(pts).query(pts, k=2)
    d = d[:, 1]
    d = d[d > 0]
    if not len(d):
        return 1.0
    return float(np.median(d)) * float(np.sqrt(len(pts) / n))


def section_outline(
    points: np.ndarray,
    pixel_um: float | None = None,
    spacing_um: float | None = None,
    cells_per_pixel: float = 6.0,
    min_fraction: float = 0.02,
) -> Outline:
    """Outline of a section from its cell positions.

    Parameters
    ----------
    points : (n, 2) cell positions, um (any frame).
    pixel_um : raster pixel size; default chosen so a pixel holds ~``cells_per_pixel``
        cells (clamped to 1/1000 .. 1/40 of the section's extent).
    spacing_um : spacing of the returned boundary points; default extent / 200.
    min_fraction : tissue pieces smaller than this fraction of the largest are dropped.
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise BrainAtlasInputError("cell coordinates must be an (n, 2) array")
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) < MIN_CELLS:
        raise BrainAtlasInputError(
            f"the section has {len(pts)} cells with finite coordinates; at least {MIN_CELLS} are needed"
        )
    lo, hi = pts.min(0), pts.max(0)
    extent = float(np.max(hi - lo))
    if extent <= 0:
        raise BrainAtlasInputError("all cells of the section sit at the same position")
    if pixel_um is None:
        d = cell_spacing_um(pts)
        lam = 0.22 / max(d, 1e-12) ** 2  # Poisson: median NN distance ~ 0.47 / sqrt(density)
        pixel_um = float(np.sqrt(cells_per_pixel / lam))
        pixel_um = float(np.clip(pixel_um, extent / 1000.0, extent / 40.0))
    if spacing_um is None:
        spacing_um = extent / 200.0
    pad = 4
    origin = lo - pad * pixel_um
    shape = np.ceil((hi - lo) / pixel_um).astype(int) + 2 * pad + 1  # (nx, ny)
    col = np.floor((pts[:, 0] - origin[0]) / pixel_um).astype(np.int64)
    row = np.floor((pts[:, 1] - origin[1]) / pixel_um).astype(np.int64)
    counts = np.bincount(row * shape[0] + col, minlength=shape[0] * shape[1]).reshape(
        shape[1], shape[0]
    )
    field = ndi.gaussian_filter(counts.astype(float), 1.0, mode="constant")
    occupied = field[counts > 0]
    rho = float(np.median(occupied)) if occupied.size else 1.0
    # interior density: away from the edges, where the blur does not dilute it
    interior = ndi.binary_erosion(field >= 0.5 * rho, iterations=3)
    if interior.sum() >= 20:
        rho = float(np.median(field[interior]))
    out = _outline_from_field(field, 0.5 * rho, origin, pixel_um, spacing_um, min_fraction)
    out.blur_um = float(pixel_um * np.sqrt(1.0 + 1.0 / 12.0))
    # the filled tissue mask blurred like the density (not the density itself: real
    # tissue is not uniformly dense, the mask is)
    out.field = ndi.gaussian_filter(out.mask.astype(np.float32), 1.0, mode="constant")
    return out


def template_outline(
    labels: np.ndarray,
    resolution_um: float,
    spacing_um: float | None = None,
    min_fraction: float = 0.01,
    sigma_um: float = 0.0,
) -> Outline:
    """Outline of a template slice.

    Parameters
    ----------
    labels : (H, W) structure ids (0 outside), rows = y, columns = x.
    resolution_um : pixel size, um (pixel (r, c) covers [c*res, (c+1)*res) in x).
    spacing_um : spacing of the boundary points, default resolution / 2.
    sigma_um : Gaussian blur of the mask before tracing, um; set it to the blur of the
        section's density image (mapped to atlas um) so both outlines round corners
        alike.
    """
    labels = np.asarray(labels)
    if not np.any(labels > 0):
        raise BrainAtlasInputError("the atlas slice is empty at this position")
    if spacing_um is None:
        spacing_um = resolution_um / 2.0
    field = (labels > 0).astype(float)
    if sigma_um > 0.3 * resolution_um:
        field = ndi.gaussian_filter(field, sigma_um / resolution_um, mode="constant")
    out = _outline_from_field(
        field, 0.5, (0.0, 0.0), float(resolution_um), spacing_um, min_fraction
    )
    out.blur_um = float(sigma_um)
    filled = out.mask.astype(np.float32)
    if sigma_um > 0.3 * resolution_um:
        filled = ndi.gaussian_filter(filled, sigma_um / resolution_um, mode="constant")
    out.field = filled
    return out
