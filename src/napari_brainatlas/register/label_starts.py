"""Global starts from the region labels for the joint plane search.

Torn or damaged tissue can fool the outline fit at the given plane (a wrong rotation
of a smooth, torn outline may still match it well). When the cells' labels disagree
with that fit (or for every coronal hemisection), the outline fit's candidates compete
with global similarity starts found from the labels alone
(:func:`.labelfit.label_chamfer_starts`) at a few positions around the given one; each
start is refitted with the labels (:func:`.labelfit.label_fit`) and ranked by the plane
score, in which the labels weigh more than the outline.
"""

from __future__ import annotations

import numpy as np

from ..jobs import report
from .anchors import MidlineFrame
from .labelfit import label_chamfer_starts, label_fit, make_label_template, plane_score

__all__ = ["label_starts"]


def label_starts(sec, tmpl, best, start_affines, position_um, angles, search_um):
    """Best start among the affines ``start_affines`` (outline fits at ``tmpl``, the
    given plane) and global label-chamfer starts at the positions
    ``position_um + settings.starts.position_steps x max(search_um / 2, 2 voxels)``, by
    plane score (:meth:`~.settings.RegistrationSettings.starts_labels`). ``sec``: the
    :class:`~.section.Section`; ``best``: the outline fit (its mirror hypothesis is
    kept for hemisections). Returns (affine, position_um)."""
    s = sec.settings
    fit = s.starts_labels()
    ok = sec.label_sample(s.starts.cells, 1)
    c, cd = sec.xy[ok], sec.cell_div[ok]
    pts = sec.outline.points
    # choosing among starts that may be grossly wrong: the labels weigh more than the
    # outline (a wrong rotation of a smooth, torn outline can still match it well)
    lt = make_label_template(sec.atlas, tmpl.slice)
    top = (-np.inf, start_affines[0], position_um)
    for A0 in start_affines:
        A, info = label_fit(A0, c, cd, lt, pts, tmpl.tree, fit)
        sc = plane_score(A, info, pts, tmpl, fit)[0]
        if sc > top[0]:
            top = (sc, A0, position_um)
    first = top[1]
    if sec.midline is None:
        return top[1], top[2]
    lo, hi = sec.bounds
    step = max(search_um / 2.0, 2 * sec.atlas.resolution_um)
    positions = [
        p
        for p in position_um + step * np.asarray(s.starts.position_steps, dtype=float)
        if lo <= p < hi
    ]
    report(sec.progress, 1, 1 + len(positions), stage="label_starts", position_um=position_um)
    scale = float(np.sqrt(tmpl.outline.area_um2 / max(sec.outline.area_um2, 1e-9)))
    for k, p in enumerate(positions):
        t = tmpl if p == position_um else sec.template(float(p), angles)
        top = _chamfer_starts_at(sec, t, float(p), (c, cd, scale), _mirrors(sec, best), top)
        report(sec.progress, k + 2, 1 + len(positions), stage="label_starts", position_um=float(p))
    if top[1] is not first or first is not start_affines[0]:
        sec.notes.append(f"start chosen by the region labels (plane score; at {top[2]:.0f} um)")
    return top[1], top[2]


def _mirrors(sec, best) -> list[bool]:
    """The mirror hypotheses of the label starts."""
    if sec.settings.mirrored is not None:
        return [bool(sec.settings.mirrored)]
    if sec.plane == "sagittal":
        return [False, True]
    if sec.hemisphere != "both":
        return [bool(best.mirrored)]
    return [False]


def _chamfer_starts_at(sec, t, p: float, cells: tuple, mirrors: list, top: tuple) -> tuple:
    """``top`` (score, affine, position) updated with the label-chamfer starts at the
    template ``t`` (position ``p``), each refitted with the labels; ``cells``: (cells,
    their divisions, the area scale of the given plane's template)."""
    s = sec.settings
    fit = s.starts_labels()
    c, cd, scale = cells
    pts, mid = sec.outline.points, sec.midline
    lt = make_label_template(sec.atlas, t.slice)
    for m in mirrors:
        fs = MidlineFrame(mid[0], mid[1], mirrored=m)
        for A0, _ in label_chamfer_starts(c, cd, lt, t, fs, scale, s.starts.chamfer):
            A, info = label_fit(A0, c, cd, lt, pts, t.tree, fit)
            sc = plane_score(A, info, pts, t, fit)[0]
            if sc > top[0]:
                top = (sc, A, p)
    return top
