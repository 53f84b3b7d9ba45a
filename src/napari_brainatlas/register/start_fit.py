"""The start of the plane search: the outline fit at the given plane and, where the
cells' labels disagree with it (or for every coronal hemisection), global starts from
the labels (:mod:`.label_starts`)."""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import BrainAtlasInputError
from .joint_search import PlaneStart
from .label_starts import label_starts
from .outline_fit import Fit

__all__ = ["StartFit", "start_fit"]


@dataclass
class StartFit:
    """The start stage's result: the outline fit at the given plane (``best``, which
    keeps the record's anchors and ICP history), the template the search starts at,
    and the plane search's start (affine, plane, search range)."""

    best: Fit
    tmpl: object
    start: PlaneStart


def start_fit(sec, pos) -> StartFit | None:
    """The start stage of :func:`~.pipeline.register_section` for a plane search at
    ``pos`` (a :class:`~.position.Position`); None for a section without region labels
    (its search fits outlines only)."""
    if not sec.labelled:
        return None
    s = sec.settings
    angles = pos.angles_deg
    position_um, search_um = pos.position_um, float(s.search_um)
    tmpl, best, fits0 = sec.fit_outline(position_um, angles, sweep="auto", progress=sec.progress)
    if best is None:
        raise BrainAtlasInputError("no registration could be found for this section")
    start_A = best.affine
    ag = sec.agreement(tmpl, best.affine)
    hemi_starts = s.starts.hemisections and sec.hemisphere != "both"
    if s.plane_search == "joint" and (hemi_starts or ag < s.starts.agreement):
        # the labels disagree with the outline's best fit (a wrong start, or a wrong
        # plane): every start, the best by label agreement finished by the label fit,
        # and global starts from the labels alone at a few positions; the plane score
        # (labels inside + outline) chooses. A hemisection whose labels agree gets the
        # global label starts against its outline fit only
        cands = [best.affine]
        if ag < s.starts.agreement:
            # every start and the rotation sweep: the fits above are reused (an "auto"
            # fit that looked poor has run the sweep already)
            tmpl, _, fits = sec.fit_outline(
                position_um, angles, sweep="always", reuse=fits0, tmpl=tmpl
            )
            ranked = sorted(fits, key=lambda f: -sec.agreement(tmpl, f.affine))
            cands += [f.affine for f in ranked[: s.starts.outline_candidates]]
        start_A, p_start = label_starts(sec, tmpl, best, cands, position_um, angles, search_um)
        if p_start != position_um:
            search_um = max(search_um - abs(p_start - position_um), 2 * sec.atlas.resolution_um)
            position_um = p_start
            tmpl = sec.template(position_um, angles)
    return StartFit(best, tmpl, PlaneStart(start_A, position_um, angles, search_um))
