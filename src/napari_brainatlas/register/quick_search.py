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
from .affine import apply_affine

__all__ = ["quick_plane_search"]


def quick_plane_search(
    template_at,
    atlas,
    plane: str,
    cells: np.ndarray,
    cell_div: np.ndarray,
    outline_pts: np.ndarray,
    A0: np.ndarray,
    position_um: float,
    angles_deg=(0.0, 0.0),
    bounds=None,
    search_um: float = 300.0,
    max_angle_deg: float = 5.0,
    rounds: int = 2,
    fit_iters: int = 30,
    reverse_weight: float = 0.5,
    outline_weight: float = 0.5,
    propose_cells: int = 1500,
    propose_coarse: int = 2,
    accelerate: bool = True,
    cancel=None,
) -> dict:
    """Alternate label-agreement plane proposals and in-plane label fits.

    Parameters
    ----------
    template_at : ``template_at(position_um, angles) -> Template`` (see :mod:`.core`).
    cells, cell_div : a subsample of the section's labelled cells (section um) and their
        major-division index; outline_pts : section outline points (section um).
    A0, position_um, angles_deg : the start fit (section um -> slice um) and its plane.
    bounds : (lo, hi) um of the position axis (the atlas's tissue range).
    search_um, max_angle_deg : the plane stays within ``search_um`` of the start's
        position and within these cutting angles; the first round proposes over the
        whole range, later rounds over half of it around the current plane.
    rounds : proposal + fit rounds (it stops early when a proposal keeps the plane).
    fit_iters, accelerate : iterations of each label fit and its Anderson acceleration
        (:func:`.labelfit.label_fit`; on here: each fit runs from a new proposal towards
        convergence, which the acceleration reaches in about half the iterations).

    Returns dict(position_um, angles_deg, affine, score, inside, outline_um, label_um,
    evals (planes fitted)), the keys of :func:`.labelfit.search_plane` the caller reads.
    """
    from .icp import RegistrationCancelled
    from .labelfit import label_fit, make_label_template, plane_score
    from .position import refine_plane

    lo, hi = bounds if bounds is not None else (-np.inf, np.inf)
    p0 = float(position_um)
    p, a = p0, tuple(float(v) for v in angles_deg)
    A = np.asarray(A0, dtype=float)
    tmpl = template_at(p, a)
    fitted = None
    evals = 0
    for r in range(max(int(rounds), 1)):
        if cancel is not None and cancel():
            raise RegistrationCancelled("registration cancelled")
        half = search_um if r == 0 else 0.5 * search_um
        prop = refine_plane(
            atlas,
            plane,
            p,
            apply_affine(A, cells),
            cell_div,
            tmpl.slice.centre_um,
            search_um=half,
            max_angle_deg=max_angle_deg,
            max_cells=propose_cells,
            coarse_factor=propose_coarse,
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
            t_new = template_at(p_new, a_new)
        except BrainAtlasInputError:  # no tissue in the proposed plane: keep the last one
            break
        lt = make_label_template(atlas, t_new.slice)
        A_new, info = label_fit(
            A,
            cells,
            cell_div,
            lt,
            outline_pts,
            t_new.tree,
            n_iter=fit_iters,
            reverse_weight=reverse_weight,
            accelerate=accelerate,
        )
        evals += 1
        p, a, A, tmpl = p_new, a_new, A_new, t_new
        fitted = (lt, info)
    if fitted is None:  # no proposal could be fitted: the start's plane, fitted once
        lt = make_label_template(atlas, tmpl.slice)
        A, info = label_fit(
            A,
            cells,
            cell_div,
            lt,
            outline_pts,
            tmpl.tree,
            n_iter=fit_iters,
            reverse_weight=reverse_weight,
            accelerate=accelerate,
        )
        evals += 1
        fitted = (lt, info)
    sc, parts = plane_score(
        A,
        fitted[1],
        outline_pts,
        tmpl,
        outline_weight=outline_weight,
        reverse_weight=reverse_weight,
    )
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
