"""The score stage: the metrics of a registration and its confidence."""

from __future__ import annotations

import numpy as np

from .affine import apply_affine, decompose
from .metrics import division_index, registration_metrics
from .nonlinear import apply_warp
from .settings import ConfidenceSettings

__all__ = ["confidence_score", "score"]


def score(sec, plane, fin) -> tuple[dict, float]:
    """The score stage of :func:`~.pipeline.register_section`: the metrics
    (:func:`.metrics.registration_metrics` of the final mapping, the warp included, with
    the affine's own boundary and Dice figures as ``affine_*`` beside them when there is
    a warp; plus the midline's agreement, the fit's
    iterations, scale, restart spread, the plane search's record and the plane
    sensitivity) and the confidence (:func:`confidence_score`). Returns (metrics,
    confidence)."""
    A, tmpl = fin.affine, fin.tmpl
    mapped = apply_affine(A, sec.xy)
    if fin.warp:
        mapped = apply_warp(fin.warp, mapped)
    m = registration_metrics(
        A,
        sec.outline,
        tmpl.outline,
        tmpl.slice.labels,
        tmpl.slice.resolution_um,
        atlas=sec.atlas,
        cell_xy_atlas=mapped,
        cell_div=sec.cell_div,
        warp=fin.warp or None,
    )
    if fin.warp:
        # the figures of the affine alone, beside the warped fit's own
        aff = registration_metrics(
            A, sec.outline, tmpl.outline, tmpl.slice.labels, tmpl.slice.resolution_um
        )
        for k in ("boundary_median_um", "boundary_p95_um", "dice"):
            m[f"affine_{k}"] = aff[k]
    m["midline_angle_deg"], m["midline_offset"] = midline_terms(A, sec.midline, tmpl)
    m["iterations"] = int(fin.best.icp.iterations)
    m["converged"] = bool(fin.best.icp.converged)
    m["scale"] = float(np.sqrt(abs(np.linalg.det(A[:2, :2]))))
    if fin.spread_um is not None:
        m["fit_spread_um"] = float(fin.spread_um)
    if plane.info is not None:
        m["plane_score"] = plane.info["score"]
        m["plane_inside"] = plane.info["inside"]
        m["plane_outline_um"] = plane.info["outline_um"]
        m["plane_label_um"] = plane.info.get("label_um", float("nan"))
        m["plane_evals"] = plane.info["evals"]
    if sec.labelled and plane.estimated:
        m["plane_sensitivity"] = plane_sensitivity(
            sec.atlas, tmpl.slice, mapped, sec.cell_div, sec.plane
        )
    m["rotation_deg"] = decompose(A)["rotation_deg"]
    return m, confidence_score(m, sec.settings.confidence)


def confidence_score(metrics: dict, settings: ConfidenceSettings | None = None) -> float:
    """Confidence in [0, 1] from the metrics of one registration.

    Product of soft terms: mask Dice (1 above 0.9, 0 at 0.6), outline inlier fraction
    (1 above 0.85, 0 at 0.4), plausible shape (anisotropy up to 1.25), the mapped
    midline's agreement with the template's (angle under 8 deg, offset under 3% of the
    size), with region labels, label agreement (1 above 0.85, 0 at 0.45), and with the
    label refit, its restart spread (0.5 at ``settings.spread_half_um``,
    :class:`~.settings.ConfidenceSettings`).
    """
    st = ConfidenceSettings() if settings is None else settings

    def ramp(v, lo, hi):
        return float(np.clip((v - lo) / (hi - lo), 0.0, 1.0))

    c = ramp(metrics.get("dice", 0.0), 0.6, 0.9)
    c *= ramp(metrics.get("boundary_inlier_fraction", 0.0), 0.4, 0.85)
    c *= float(np.exp(-max(0.0, metrics.get("anisotropy", 1.0) - 1.25) / 0.25))
    c *= float(np.exp(-max(0.0, metrics.get("midline_angle_deg", 0.0) - 8.0) / 8.0))
    c *= float(np.exp(-max(0.0, metrics.get("midline_offset", 0.0) - 0.03) / 0.03))
    if "label_agreement" in metrics:
        c *= ramp(metrics["label_agreement"], 0.45, 0.85)
    if metrics.get("fit_spread_um") is not None and np.isfinite(metrics["fit_spread_um"]):
        c *= 1.0 / (1.0 + (metrics["fit_spread_um"] / st.spread_half_um) ** 2)
    return float(np.clip(c, 0.0, 1.0))


def midline_terms(A, midline, tmpl) -> tuple[float, float]:
    """(angle deg between the mapped midline and the template's DV axis, offset / size)."""
    if midline is None:
        return 0.0, 0.0
    p = apply_affine(A, midline)
    d = p[1] - p[0]
    ang = float(np.degrees(np.arccos(np.clip(d[1] / max(np.hypot(*d), 1e-12), -1, 1))))
    off = 0.0
    if tmpl.plane == "coronal":
        off = float(np.abs(p[:, 0] - tmpl.midline[0, 0]).mean() / tmpl.size_um)
    return ang, off


def plane_sensitivity(atlas, sl, mapped, cell_div, plane, n_max: int = 3000) -> float:
    """Fraction of the (labelled) mapped cells whose major division changes when the
    plane moves by 50 um (or two voxels) either way: how fast the anatomy changes here,
    i.e. how much a small error of the position or the angle costs."""
    ok = np.flatnonzero(cell_div >= 0)
    if len(ok) > n_max:
        ok = np.random.default_rng(3).choice(ok, n_max, replace=False)
    if len(ok) == 0:
        return 0.0
    base = sl.to_3d(mapped[ok])
    d0, _ = division_index(atlas, atlas.structure_at(base))
    axis = 0 if plane == "coronal" else 2
    step = max(50.0, 2 * atlas.resolution_um)
    out = []
    for dz in (-step, step):
        q = base.copy()
        q[:, axis] += dz
        d1, _ = division_index(atlas, atlas.structure_at(q))
        out.append(np.mean(d1 != d0))
    return float(np.mean(out))
