"""Register a section to an atlas slice: :func:`register_section`, the method in stages.

>>> res = register_section(adata, atlas, "coronal", 5000.0, "both", midline=[[x1, y1], [x2, y2]])
>>> out = apply_registration(adata, res, atlas)   # a copy with ccf_coords, ccf_id, ...

``register_section`` never modifies ``adata``. It is plain Python (no Qt), safe to call
from a worker thread, and reads no module-level setting: everything it uses comes from
its arguments (a :class:`~.settings.RegistrationSettings` and the keyword options).
"""

from __future__ import annotations

import dataclasses

from .._errors import BrainAtlasInputError
from .anchors import validate_midline
from .finish import finish
from .plane_search import given_plane, search_plane
from .position import locate_section
from .result import RegistrationResult, make_result
from .scoring import score
from .section import prepare_section
from .settings import RegistrationSettings, settings_with_options
from .start_fit import start_fit

__all__ = ["register_section"]


def register_section(
    adata,
    atlas,
    plane: str = "coronal",
    position_um: float | str | None = None,
    hemisphere: str = "both",
    midline=None,
    landmarks=None,
    *,
    settings: RegistrationSettings | None = None,
    section_name: str | None = None,
    progress=None,
    cancel=None,
    **options,
) -> RegistrationResult:
    """Register one section's cells to the atlas.

    Parameters
    ----------
    adata : AnnData with obsm[spatial_key] (n, 2) um in the section's own frame.
    atlas : :class:`~napari_brainatlas.atlas.Atlas` or an atlas spec for ``Atlas.load``.
    plane : "coronal" or "sagittal".
    position_um : AP (coronal) / ML (sagittal) um; None or "auto" scans the whole axis.
    hemisphere : "both", "left" or "right" (coronal hemisections; the midline is the cut edge).
    midline : (2, 2) or (4,) section um, a dorsal then a ventral point on the midline
        (for sagittal sections: any dorsal -> ventral line). None: rotation sweep only.
        "auto": estimated from the cells and their region labels
        (:func:`.midline_estimate.estimate_midline`: the mirror-symmetry axis of a full
        coronal section, the cut edge of a hemisection, the labels' dorsoventral axis
        of a sagittal one; ``metrics['midline_confidence']``). Where the estimate has
        close runners-up (``MidlineEstimate.alternatives``: another straight edge of a
        hemisection, a near-tie of symmetry axes; with labels only) the section is
        registered with each and the best plane score is kept
        (``metrics['midline_hypotheses']``, ``['midline_hypothesis_kept']`` (0: the
        estimate), ``['midline_hypothesis_gain']`` um, and a note); this costs one more
        registration for those sections.
    landmarks : extra user pairs, (k, 4) ``x_s, y_s, x_atlas, y_atlas`` rows or
        ``{"section": (k,2), "atlas": (k,2), "weights": (k,)}``.
    settings : :class:`~.settings.RegistrationSettings` (default: its defaults), the
        options and the tuning of every stage.
    section_name : name of the record (default ``uns['section']`` or the one value of
        ``obs['section']``).
    progress : ``progress(done, total, info)`` (:mod:`napari_brainatlas.jobs`) after each
        ICP iteration (``info`` {"stage": "icp", "cost_um": c}), label start position
        ("label_starts") and candidate plane of the searches ("plane_search",
        "quick_search": position_um, angles_deg, score). A ``progress(i, cost_um)``
        callable of two arguments is still accepted (deprecated; called after each ICP
        iteration as before).
    cancel : ``cancel() -> bool``, polled between units; True raises
        :class:`~napari_brainatlas.Cancelled` (``RegistrationCancelled``).
    **options : fields of ``settings`` set for this call (``dataclasses.replace``):
        ``angles_deg``, ``mirrored``, ``refine_position``, ``plane_search``,
        ``search_um``, ``max_angle_deg``, ``nonlinear``, ``label_warp``, ``area_refine``,
        ``landmark_weight``, ``region_key``, ``label_weights``, ``spatial_key``, and
        ``max_iter``, ``tol``,
        ``sweep`` (the outline fit's ICP limits and rotation sweep); see
        :class:`~.settings.RegistrationSettings`. ``refine_position`` searches the plane
        near the given one; with region labels ``plane_search="joint"`` (default) fits
        and scores 20-50 candidate planes jointly with the in-plane fit, "quick"
        alternates label proposals with label fits (about 3x faster, less accurate: see
        benchmarks/registration/RESULTS_registration.md). An unknown option raises
        :class:`BrainAtlasInputError` naming it.

    Region labels (``obs[region_key]``, any CCF depth: acronyms, cortical layers) are
    read as major divisions; "unassigned" cells are ignored, and with an
    ``obs[region_key + '_uncertainty']`` column (transferred labels,
    :func:`napari_brainatlas.annotate.ccf_labels.transfer_ccf_labels`) each cell weighs
    by its certainty. With labels, ``position_um=None`` and ``midline="auto"`` the
    section needs no clicks: the position is scanned along the whole axis, then the
    plane (position and cutting angles) searched with the labels. An automatic position
    keeps the scan's best candidates in ``result.candidates``; the confidence drops
    when the runner-up scores close to the best, and never exceeds
    ``ConfidenceSettings.outline_position_max`` when the outline alone chose it.

    Returns a :class:`RegistrationResult`. Raises :class:`BrainAtlasInputError` for
    bad input and :class:`~napari_brainatlas.Cancelled` when cancelled.
    """
    s = settings_with_options(settings, **options)
    sec, given = prepare_section(
        adata, atlas, plane, position_um, hemisphere, midline, landmarks, s,
        name=section_name, progress=progress, cancel=cancel,
    )  # fmt: skip
    notes = list(sec.notes)  # those of the preparation (the midline estimate)
    best = _with_midline_hypotheses(sec, given, _register(sec, given), notes)
    sec, found, metrics, fin, confidence = best
    return make_result(sec, found, fin, metrics, confidence)


def _with_midline_hypotheses(sec, given, first: tuple, notes: list) -> tuple:
    """An automatic midline with close runners-up (a torn edge as straight as the cut,
    a near-tie of symmetry axes): each is registered too and the stages' outputs of the
    best plane score are returned (``first``: those of the estimate; ``notes``: the
    preparation's)."""
    alternatives = getattr(sec.midline_estimate, "alternatives", None) or []
    if not (alternatives and sec.labelled and "plane_score" in first[2]):
        return first  # nothing to try, or no plane score to judge them by
    best, st = first, sec.settings.midline
    top = first_score = first[2].get("plane_score", float("-inf"))
    tried, kept = [first_score], 0
    for k, alt in enumerate(alternatives, start=1):
        try:
            mid = validate_midline(alt, sec.xy)
        except BrainAtlasInputError:  # a degenerate runner-up: not a hypothesis
            continue
        other = dataclasses.replace(sec, midline=mid, notes=list(notes), scan=None)
        res = _register(other, given)
        tried.append(res[2].get("plane_score", float("-inf")))
        if tried[-1] > top + st.alternative_gain_um:
            best, kept, top = res, k, tried[-1]
    best[0].notes.append(
        f"midline: {len(tried)} hypotheses registered (plane scores "
        + ", ".join(f"{t:.1f}" for t in tried)
        + "); kept "
        + (f"the estimate's runner-up {kept}" if kept else "the estimate")
    )
    best[2]["midline_hypotheses"] = float(len(tried))
    best[2]["midline_hypothesis_kept"] = float(kept)
    best[2]["midline_hypothesis_gain"] = float(top - first_score)
    return best


def _register(sec, given) -> tuple:
    """The stages for one section and midline: (sec, found, metrics, fin, confidence)."""
    pos = locate_section(sec, given)  # the given position, or scanned along the axis
    found = given_plane(pos)
    if pos.search:
        start = start_fit(sec, pos)  # outline fit at the given plane (+ global label starts)
        found = search_plane(sec, pos, start)  # joint | quick (labels) | outline positions
    fin = finish(sec, found)  # the affine there; area refine, label refit + warp, thin-plate
    metrics, confidence = score(sec, found, fin)  # metrics and confidence
    return sec, found, metrics, fin, confidence
