"""Fast template slices.

``Atlas.slice`` takes an exact plane with ``np.take``, which copies the whole
Fortran-ordered CCF volume (seconds at 25 um). :func:`atlas_slice` returns the same
:class:`~napari_brainatlas.atlas.AtlasSlice` through basic indexing (a view) and
otherwise delegates to ``Atlas.slice``; results are cached per atlas.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from ..atlas import AtlasSlice

__all__ = ["atlas_slice"]

_CACHE: OrderedDict[tuple, AtlasSlice] = OrderedDict()
_CACHE_LOCK = threading.Lock()  # registrations run in worker threads


def _cache_get(key):
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
        return hit


def _cache_put(key, sl) -> None:
    with _CACHE_LOCK:
        _CACHE[key] = sl
        while len(_CACHE) > 64:
            _CACHE.popitem(last=False)


def clear_cache() -> None:
    """Empty the slice cache (and the label templates cached on its slices)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _keep_hemisphere(labels: np.ndarray, atlas, plane: str, hemisphere: str, res_um: float) -> None:
    """Zero, in place, the columns of a full-resolution coronal slice (``res_um`` per
    pixel) on the other side of the midline from ``hemisphere``."""
    if plane == "coronal" and hemisphere != "both":
        mid_col = round(atlas.midline_ml_um / res_um)
        if hemisphere == "left":
            labels[:, mid_col:] = 0
        else:
            labels[:, :mid_col] = 0


def _make_slice(
    atlas,
    labels: np.ndarray,
    res_um: float,
    plane: str,
    position_um: float,
    hemisphere: str,
    angles: tuple,
    centre_um: tuple,
) -> AtlasSlice:
    """The :class:`AtlasSlice` record of ``labels`` ((H, W) ids, ``res_um`` per pixel)."""
    return AtlasSlice(
        labels=labels,
        resolution_um=res_um,
        plane=plane,
        position_um=position_um,
        hemisphere=hemisphere,
        angles_deg=angles,
        midline_x_um=atlas.midline_ml_um if plane == "coronal" else None,
        atlas_name=atlas.name,
        centre_um=centre_um,
    )


def atlas_slice(
    atlas, plane: str, position_um: float | None, hemisphere: str = "both", angles_deg=(0.0, 0.0)
) -> AtlasSlice:
    """Same as ``atlas.slice(plane, position_um, hemisphere, angles_deg)``, faster."""
    a = tuple(float(v) for v in angles_deg)
    key = (
        id(atlas.annotation),
        plane,
        None if position_um is None else float(position_um),
        hemisphere,
        a,
    )
    hit = _cache_get(key)
    if hit is not None:
        return hit
    if (
        plane not in ("coronal", "sagittal")
        or position_um is None
        or hemisphere not in ("both", "left", "right")
        or not (
            atlas.position_range_um(plane)[0]
            <= float(position_um)
            < atlas.position_range_um(plane)[1]
        )
    ):
        sl = atlas.slice(plane, position_um, hemisphere, a)  # the library's own result or error
    elif a != (0.0, 0.0):
        sl = _oblique(atlas, plane, float(position_um), hemisphere, a)
    else:
        lo, hi = atlas.position_range_um(plane)
        p = float(position_um)
        if not (lo <= p < hi) or hemisphere not in ("both", "left", "right"):
            sl = atlas.slice(plane, position_um, hemisphere, a)  # raises the same error
        else:
            res = atlas.resolution_um
            i = int(np.floor(p / res))
            if plane == "coronal":
                labels = np.array(atlas.annotation[i, :, :], order="C", copy=True)
                W = atlas.shape[2]
            else:
                labels = np.array(atlas.annotation[:, :, i].T, order="C", copy=True)
                W = atlas.shape[0]
            H = atlas.shape[1]
            _keep_hemisphere(labels, atlas, plane, hemisphere, res)
            sl = _make_slice(
                atlas, labels, res, plane, p, hemisphere, a, (W * res / 2.0, H * res / 2.0)
            )
    _cache_put(key, sl)
    return sl


def _oblique(atlas, plane: str, p: float, hemisphere: str, a: tuple) -> AtlasSlice:
    """``atlas.slice`` for a tilted plane by integer indexing (nearest voxel, the same
    rounding as its order-0 ``map_coordinates``), only over the columns and rows whose
    depth stays inside the volume: several times faster than interpolation."""
    res = float(atlas.resolution_um)
    ax_out = 0 if plane == "coronal" else 2
    ax_x = 2 if plane == "coronal" else 0
    H, W = atlas.shape[1], atlas.shape[ax_x]
    D = atlas.shape[ax_out]
    centre = (W * res / 2.0, H * res / 2.0)
    tx, ty = np.tan(np.deg2rad(a))
    x = (np.arange(W) + 0.5) * res
    y = (np.arange(H) + 0.5) * res
    depth = p + tx * (x[None, :] - centre[0]) + ty * (y[:, None] - centre[1])  # (H, W)
    # map_coordinates(order=0) rounds the coordinate depth / res - 0.5 half away from 0
    # for positive values (spline order 0: floor(c + 0.5))
    k = np.floor(depth / res - 0.5 + 0.5).astype(np.int64)
    ok = (k >= 0) & (k < D)
    labels = np.zeros((H, W), dtype=atlas.annotation.dtype)
    rr, cc = np.nonzero(ok)
    kk = k[rr, cc]
    if plane == "coronal":
        labels[rr, cc] = atlas.annotation[kk, rr, cc]
    else:
        labels[rr, cc] = atlas.annotation[cc, rr, kk]
    _keep_hemisphere(labels, atlas, plane, hemisphere, res)
    return _make_slice(atlas, labels, res, plane, p, hemisphere, a, centre)


def coarse_slice(
    atlas,
    plane: str,
    position_um: float,
    hemisphere: str = "both",
    angles_deg=(0.0, 0.0),
    factor: int = 2,
) -> AtlasSlice:
    """The slice of :func:`atlas_slice` sampled on a grid ``factor`` times coarser (each
    coarse pixel takes the label at its centre; nearest voxel). Same plane, same centre
    and the same in-plane um frame, so a fit to it holds for the full slice; about
    ``factor**2`` times cheaper to sample, trace and transform. Cached like
    :func:`atlas_slice`."""
    f = int(factor)
    if f <= 1:
        return atlas_slice(atlas, plane, position_um, hemisphere, angles_deg)
    a = tuple(float(v) for v in angles_deg)
    key = (id(atlas.annotation), plane, float(position_um), hemisphere, a, "coarse", f)
    hit = _cache_get(key)
    if hit is not None:
        return hit
    lo, hi = atlas.position_range_um(plane)
    p = float(position_um)
    if (
        plane not in ("coronal", "sagittal")
        or hemisphere not in ("both", "left", "right")
        or not (lo <= p < hi)
    ):
        atlas.slice(plane, position_um, hemisphere, a)  # raises the library's own error
    res = float(atlas.resolution_um)
    ax_out = 0 if plane == "coronal" else 2
    ax_x = 2 if plane == "coronal" else 0
    H, W = atlas.shape[1], atlas.shape[ax_x]
    centre = (W * res / 2.0, H * res / 2.0)
    Hc, Wc = -(-H // f), -(-W // f)
    rc = res * f
    if a == (0.0, 0.0):
        full = atlas_slice(atlas, plane, p, "both", a).labels
        off = f // 2
        labels = np.array(full[off::f, off::f], order="C", copy=True)
        if labels.shape != (Hc, Wc):  # the last coarse pixel past the grid: its edge voxel
            pad = np.zeros((Hc, Wc), dtype=labels.dtype)
            pad[: labels.shape[0], : labels.shape[1]] = labels
            labels = pad
    else:
        from scipy import ndimage as ndi

        rows, cols = np.mgrid[0:Hc, 0:Wc]
        x = (cols + 0.5) * rc
        y = (rows + 0.5) * rc
        tx, ty = np.tan(np.deg2rad(a))
        depth = p + tx * (x - centre[0]) + ty * (y - centre[1])
        coords = np.empty((3, Hc, Wc))
        coords[ax_out] = depth / res - 0.5
        coords[1] = y / res - 0.5
        coords[ax_x] = x / res - 0.5
        labels = ndi.map_coordinates(
            atlas.annotation, coords, order=0, mode="constant", cval=0
        ).astype(atlas.annotation.dtype)
    if plane == "coronal" and hemisphere != "both":
        labels = labels.copy()
        xc = (np.arange(Wc) + 0.5) * rc
        if hemisphere == "left":
            labels[:, xc >= atlas.midline_ml_um] = 0
        else:
            labels[:, xc < atlas.midline_ml_um] = 0
    sl = _make_slice(atlas, labels, rc, plane, p, hemisphere, a, centre)
    _cache_put(key, sl)
    return sl
