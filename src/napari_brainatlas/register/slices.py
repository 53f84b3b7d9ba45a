"""Fast template slices.

``Atlas.slice`` takes an exact plane with ``np.take``, which copies the whole
Fortran-ordered CCF volume (seconds at 25 um). :func:`atlas_slice` returns the same
:class:`~napari_brainatlas.atlas.AtlasSlice` through basic indexing (a view) and
otherwise delegates to ``Atlas.slice``; results are cached per atlas.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..atlas import AtlasSlice

__all__ = ["atlas_slice"]

_CACHE: OrderedDict[tuple, AtlasSlice] = OrderedDict()


def atlas_slice(atlas, plane: str, position_um: float | None, hemisphere: str = "both",
                angles_deg=(0.0, 0.0)) -> AtlasSlice:
    """Same as ``atlas.slice(plane, position_um, hemisphere, angles_deg)``, faster."""
    a = tuple(float(v) for v in angles_deg)
    key = (id(atlas.annotation), plane, None if position_um is None else float(position_um), hemisphere, a)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    if a != (0.0, 0.0) or plane not in ("coronal", "sagittal") or position_um is None:
        sl = atlas.slice(plane, position_um, hemisphere, a)
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
            if plane == "coronal" and hemisphere != "both":
                mid_col = round(atlas.midline_ml_um / res)
                if hemisphere == "left":
                    labels[:, mid_col:] = 0
                else:
                    labels[:, :mid_col] = 0
            sl = AtlasSlice(
                labels=labels,
                resolution_um=res,
                plane=plane,
                position_um=p,
                hemisphere=hemisphere,
                angles_deg=a,
                midline_x_um=atlas.midline_ml_um if plane == "coronal" else None,
                atlas_name=atlas.name,
                centre_um=(W * res / 2.0, H * res / 2.0),
            )
    _CACHE[key] = sl
    while len(_CACHE) > 64:
        _CACHE.popitem(last=False)
    return sl
