"""Template slices ready for fitting: the atlas slice, its outline, midline frame and
KD-tree (:class:`Template`), traced with the section's blur (:func:`template_for`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .._errors import BrainAtlasInputError
from .anchors import MidlineFrame
from .boundary import Outline, template_outline
from .slices import atlas_slice, coarse_slice

__all__ = ["Template", "make_template", "template_for"]


@dataclass
class Template:
    """A template slice ready for fitting: outline, midline frame, KD-tree."""

    slice: object  # AtlasSlice
    outline: Outline
    frame: MidlineFrame
    tree: cKDTree
    midline: np.ndarray  # (2, 2) atlas slice um, dorsal then ventral
    hemisphere: str
    plane: str

    @property
    def size_um(self) -> float:
        return self.outline.size_um


def make_template(sl, sigma_um: float = 0.0, crop: bool = False) -> Template:
    """Build a :class:`Template` from an :class:`~napari_brainatlas.atlas.AtlasSlice`,
    its outline traced after a Gaussian blur of ``sigma_um`` (see
    :func:`~.boundary.template_outline`). ``crop``: trace on the tissue's bounding box
    (plus the blur's reach) only; the outline points are the same, its ``mask`` and
    ``field`` then cover the box (``origin_um`` says where), which is cheaper for the
    many templates of a plane search."""
    res = sl.resolution_um
    labels = sl.labels
    r0 = c0 = 0
    if crop:
        rows_t = np.flatnonzero((labels > 0).any(1))
        cols_t = np.flatnonzero((labels > 0).any(0))
        if len(rows_t):
            m = int(np.ceil(4.0 * sigma_um / res)) + 3
            r0, r1 = max(rows_t[0] - m, 0), min(rows_t[-1] + m + 1, labels.shape[0])
            c0, c1 = max(cols_t[0] - m, 0), min(cols_t[-1] + m + 1, labels.shape[1])
            labels = labels[r0:r1, c0:c1]
    out = template_outline(labels, res, sigma_um=sigma_um)
    if r0 or c0:
        shift = np.array([c0 * res, r0 * res])
        out.points = out.points + shift
        out.contours = [c + shift for c in out.contours]
        out.origin_um = (float(shift[0]), float(shift[1]))
    rows, cols = np.nonzero(out.mask)
    rows, cols = rows + r0, cols + c0
    if sl.plane == "coronal" and sl.midline_x_um is not None:
        mx = float(sl.midline_x_um)
    else:
        mx = float(np.mean((cols + 0.5) * res))
    y0, y1 = rows.min() * res, (rows.max() + 1) * res
    mid = np.array([[mx, y0], [mx, y1]])
    return Template(
        sl, out, MidlineFrame(mid[0], mid[1]), cKDTree(out.points), mid, sl.hemisphere, sl.plane
    )


def template_for(
    atlas, plane, position_um, hemisphere, angles, outline, factor: int = 1, crop: bool = False
) -> Template:
    """Template slice (outline blurred like the section's ``outline``); ``factor`` > 1:
    sampled on a grid that many times coarser (:func:`.slices.coarse_slice`, for the
    plane search); ``crop``: see :func:`make_template` (the plane search's templates)."""
    if factor > 1:
        sl = coarse_slice(atlas, plane, position_um, hemisphere, tuple(angles), factor)
    else:
        sl = atlas_slice(atlas, plane, position_um, hemisphere, tuple(angles))
    area_t = float((sl.labels > 0).sum()) * sl.resolution_um**2
    if area_t <= 0:
        raise BrainAtlasInputError(
            f"the atlas has no tissue at {plane} position {position_um:.0f} um ({hemisphere})"
        )
    scale = np.sqrt(area_t / max(outline.area_um2, 1e-9))
    return make_template(sl, sigma_um=outline.blur_um * scale, crop=crop)
