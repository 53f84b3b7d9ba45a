"""The finish after the plane: the affine at the chosen plane (the search's joint fit,
or the outline fit there), then optionally an image (area) refinement, the label refit
with the smooth polynomial label warp and the fit's restart spread, and a thin-plate
refinement of the outline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._errors import BrainAtlasInputError
from .affine import apply_affine
from .labelfit import fit_spread, label_fit, label_warp, make_label_template
from .nonlinear import apply_warp, fit_tps_refinement
from .outline_fit import Fit

__all__ = ["Finished", "finish"]


@dataclass
class Finished:
    """The finish stage's result: the template of the final plane, the outline fit
    whose record (anchors, ICP history, start) the result keeps, the final affine, the
    warp stages and the label fit's restart spread (um; None without the label refit)."""

    tmpl: object
    best: Fit
    affine: np.ndarray
    warp: list
    spread_um: float | None = None


def finish(sec, plane) -> Finished:
    """The finish stage of :func:`~.pipeline.register_section` at the plane found (a
    :class:`~.plane_search.PlaneResult`)."""
    s = sec.settings
    if plane.affine is not None:
        # the joint search already fitted this plane (labels + outline); the start fit
        # keeps the record's anchors and ICP history
        tmpl, best = sec.template(plane.position_um, plane.angles_deg), plane.best
    else:
        tmpl, best, _ = sec.fit_outline(plane.position_um, plane.angles_deg, progress=sec.progress)
    if best is None:
        raise BrainAtlasInputError("no registration could be found for this section")
    A = best.affine if plane.affine is None else plane.affine
    if s.area_refine:
        A = area_refine(A, sec.outline, tmpl, sec.notes, sec.cancel)
    warp, spread_um = [], None
    use_lw = (plane.affine is not None) if s.label_warp is None else bool(s.label_warp)
    if use_lw and sec.labelled:
        A, warp, spread_um = label_refit(sec, tmpl, A)
    if s.nonlinear:
        warp = warp + fit_tps_refinement(
            apply_warp(warp, apply_affine(A, sec.outline.points)),
            tmpl.outline.points,
            tmpl.outline.normals,
            tmpl.tree,
            tmpl.size_um,
            floor_um=2 * tmpl.outline.pixel_um,
        )
    return Finished(tmpl, best, A, warp, spread_um)


def label_refit(sec, tmpl, A) -> tuple:
    """The final label fit on more cells (labels both ways: cells into their regions
    and each region's edge onto its nearest cell), the smooth polynomial warp from the
    same terms (kept only if it lowers the cost) and the fit's restart spread. Returns
    (affine, warp stages, spread um)."""
    s = sec.settings
    ok = sec.label_sample(s.finish.cells, 4)
    cells, div, pts = sec.xy[ok], sec.cell_div[ok], sec.outline.points
    lt = make_label_template(sec.atlas, tmpl.slice)
    A, _ = label_fit(A, cells, div, lt, pts, tmpl.tree, s.final_labels())
    warp, lw_info = label_warp(
        A, cells, div, lt, pts, tmpl.tree, tmpl.size_um, s.finish.warp, s.labels
    )
    n = s.finish.spread_cells
    sp = ok if len(ok) <= n else ok[:: int(np.ceil(len(ok) / n))]
    spread_um = fit_spread(
        A,
        sec.xy[sp],
        sec.cell_div[sp],
        lt,
        pts,
        tmpl.tree,
        s.spread_labels(),
        delta_um=s.finish.spread_delta_um,
    )
    sec.notes.append(
        "label warp: "
        + ("applied" if warp else "not kept")
        + f" (cost {lw_info.get('cost_before', float('nan')):.1f} -> "
        f"{lw_info.get('cost_after', float('nan')):.1f} um)"
    )
    return A, warp, spread_um


def area_refine(A, outline, tmpl, notes: list, cancel=None) -> np.ndarray:
    """Image refinement of the affine (:func:`.refine.refine_affine_area`), only where
    both outlines match all round (torn tissue makes it drift)."""
    from scipy.spatial import cKDTree

    from .refine import refine_affine_area

    tol = max(0.02 * tmpl.size_um, 2 * tmpl.outline.pixel_um)
    P = apply_affine(A, outline.points)
    d1, _ = tmpl.tree.query(P)
    d2, _ = cKDTree(P).query(tmpl.outline.points)
    if np.mean(d1 <= tol) < 0.95 or np.mean(d2 <= tol) < 0.95:
        notes.append(
            "area refinement skipped: the outlines disagree in places (torn or missing tissue?)"
        )
        return A
    A2, _ = refine_affine_area(A, outline, tmpl.outline, cancel=cancel)
    # keep it only if it did not move the outline far (a sanity bound, 2% of the size)
    move = np.linalg.norm(apply_affine(A2, outline.points) - P, axis=1).mean()
    if move > 0.02 * tmpl.size_um:
        notes.append("area refinement rejected: it moved the outline too far")
        return A
    return A2
