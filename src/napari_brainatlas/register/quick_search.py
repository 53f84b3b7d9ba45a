"""The quick plane search: label proposals alternating with in-plane label fits.

Where :func:`.labelfit.search_plane` fits and scores some 20-50 candidate planes,
:func:`quick_plane_search` takes a few rounds of two cheap steps:

1. propose the plane from the cells' region labels as the current fit places them
   (:func:`.position.refine_plane`: for every pair of cutting angles, the position
   that puts most cells in their own major division);
2. refit the in-plane affine at that plane (:func:`.labelfit.label_fit`: cells into
   their regions, region edges onto their cells, the outline onto the slice's).

Each round costs one template slice and one label fit (tens of ms). It finds the plane
when the start fit is roughly right (the outline fit at the given plane usually is);
it has no global starts for torn tissue that fooled the outline fit, which the joint
search has. ``register_section(..., plane_search="quick")`` uses it.
"""

from __future__ import annotations

import numpy as np

from .._errors import BrainAtlasInputError
from ..jobs import report
from .affine import apply_affine
from .icp import check_cancel
from .joint_search import PlaneStart, SearchProblem
from .labelfit import label_fit, make_label_template, plane_score
from .position import refine_plane
from .settings import RegistrationSettings

__all__ = ["quick_plane_search"]


def quick_plane_search(
    pb: SearchProblem, start: PlaneStart, settings: RegistrationSettings
) -> dict:
    """Alternate label-agreement plane proposals and in-plane label fits.

    ``pb``: the section's labelled cells, outline and templates
    (:class:`~.joint_search.SearchProblem`); ``start``: the start fit and its plane;
    the plane stays within ``start.search_um`` of the start's position and within
    ``settings.max_angle_deg``: the first round proposes over the whole range, later
    rounds over half of it around the current plane. ``settings.quick``: the rounds
    (it stops early when a proposal keeps the plane) and each fit's iterations and
    Anderson acceleration (on here: each fit runs from a new proposal towards
    convergence, which the acceleration reaches in about half the iterations);
    ``settings.propose``: the proposals (:func:`.position.refine_plane`).

    Returns dict(position_um, angles_deg, affine, score, inside, outline_um, label_um,
    evals (planes fitted)), the keys of :func:`.joint_search.search_plane` the caller reads.
    """
    lo, hi = pb.bounds
    search_um = float(start.search_um)
    fit = settings.quick_labels()
    p0 = float(start.position_um)
    p, a = p0, tuple(float(v) for v in start.angles_deg)
    A = np.asarray(start.affine, dtype=float)
    tmpl = pb.template_at(p, a)
    fitted = None
    evals = 0
    for r in range(max(int(settings.quick.rounds), 1)):
        check_cancel(pb.cancel)
        half = search_um if r == 0 else 0.5 * search_um
        prop = refine_plane(
            pb.atlas,
            pb.plane,
            p,
            apply_affine(A, pb.cells),
            pb.cell_div,
            tmpl.slice.centre_um,
            search_um=half,
            max_angle_deg=settings.max_angle_deg,
            settings=settings.propose,
        )
        p_new = float(
            np.clip(prop["position_um"], max(lo, p0 - search_um), min(hi - 1e-6, p0 + search_um))
        )
        a_new = tuple(float(v) for v in prop["angles_deg"])
        if (
            fitted is not None
            and abs(p_new - p) < 1.0
            and max(abs(a_new[0] - a[0]), abs(a_new[1] - a[1])) < 0.05
        ):
            break  # the proposal keeps the plane fitted last
        try:
            t_new = pb.template_at(p_new, a_new)
        except BrainAtlasInputError:  # no tissue in the proposed plane: keep the last one
            break
        lt = make_label_template(pb.atlas, t_new.slice)
        A_new, info = label_fit(A, pb.cells, pb.cell_div, lt, pb.outline_pts, t_new.tree, fit)
        evals += 1
        p, a, A, tmpl = p_new, a_new, A_new, t_new
        fitted = (lt, info)
        report(pb.progress, evals, None, stage="quick_search", position_um=p, angles_deg=a)
    if fitted is None:  # no proposal could be fitted: the start's plane, fitted once
        lt = make_label_template(pb.atlas, tmpl.slice)
        A, info = label_fit(A, pb.cells, pb.cell_div, lt, pb.outline_pts, tmpl.tree, fit)
        evals += 1
        fitted = (lt, info)
    sc, parts = plane_score(A, fitted[1], pb.outline_pts, tmpl, fit)
    return {
        "position_um": float(p),
        "angles_deg": (float(a[0]), float(a[1])),
        "affine": A,
        "score": float(sc),
        "inside": parts["inside"],
        "outline_um": parts["outline_um"],
        "label_um": parts["label_um"],
        "evals": evals,
    }
