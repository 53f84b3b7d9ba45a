"""The plane search stage: the joint search (:mod:`.joint_search`) or the quick one
(:mod:`.quick_search`) with region labels; without labels, the outline fit at a few
positions around the given one (angles untouched)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .affine import apply_affine
from .joint_search import SearchProblem
from .joint_search import search_plane as joint_search
from .outline_fit import Fit
from .position import refine_plane
from .quick_search import quick_plane_search
from .slices import atlas_slice

__all__ = ["PlaneResult", "given_plane", "search_plane"]


@dataclass
class PlaneResult:
    """The plane the section was cut in (position um, angles deg) and how it was found:
    ``estimated`` (scanned or searched); with the label-guided search, ``best`` (the
    start's outline fit), ``affine`` (the search's joint fit at the plane) and ``info``
    (the search's record: score, inside, outline_um, label_um, evals ...)."""

    position_um: float
    angles_deg: tuple
    estimated: bool = False
    best: Fit | None = None
    affine: np.ndarray | None = None
    info: dict | None = None


def given_plane(pos) -> PlaneResult:
    """The plane of a :class:`~.position.Position`, not searched."""
    return PlaneResult(pos.position_um, tuple(pos.angles_deg), pos.estimated)


def search_plane(sec, pos, start) -> PlaneResult:
    """The plane search stage of :func:`~.pipeline.register_section` from the start
    stage's :class:`~.start_fit.StartFit` (None without labels)."""
    if start is None:
        return _outline_positions(sec, pos)
    s = sec.settings
    ok = sec.label_sample(s.search.cells, 1)
    pb = SearchProblem(
        atlas=sec.atlas,
        plane=sec.plane,
        hemisphere=sec.hemisphere,
        template_at=lambda p, a, factor=1: sec.template(p, a, crop=True, factor=factor),
        cells=sec.xy[ok],
        cell_div=sec.cell_div[ok],
        outline_pts=sec.outline.points,
        bounds=sec.bounds,
        cancel=sec.cancel,
        progress=sec.progress,
    )
    st = start.start
    if s.plane_search == "quick":
        ps = quick_plane_search(pb, st, s)
        sec.notes.append(f"quick plane search: {ps['evals']} plane(s) fitted")
    else:
        # a cheap proposal from the labels at the start fit, then a joint search of the
        # plane and the in-plane fit (labels inside + outline)
        first = _propose(sec, st.affine, st.position_um, start.tmpl.slice.centre_um, st.search_um)
        pb.propose = lambda A, p, a: _propose_at(sec, A, p, a, st.search_um)
        ps = joint_search(pb, replace(st, proposals=(first,)), s)
    if ps["position_um"] == st.position_um and tuple(ps["angles_deg"]) == tuple(st.angles_deg):
        sec.notes.append("plane search kept the given position and angles")
    return PlaneResult(
        ps["position_um"], tuple(ps["angles_deg"]), True, start.best, ps["affine"], ps
    )


def _propose(sec, A, position_um, centre_um, search_um):
    """(position, angles) proposed by the labels of the cells placed by ``A``
    (:func:`.position.refine_plane`)."""
    s = sec.settings
    r = refine_plane(
        sec.atlas,
        sec.plane,
        position_um,
        apply_affine(A, sec.xy),
        sec.cell_div,
        centre_um,
        search_um=search_um,
        max_angle_deg=s.max_angle_deg,
        settings=s.propose,
    )
    # refine_plane angles are absolute about the same centre: keep them
    return r["position_um"], r["angles_deg"]


def _propose_at(sec, A, p, a, search_um):
    """The proposal asked for when the joint search stalls at the plane (p, a)."""
    sl = atlas_slice(sec.atlas, sec.plane, p, sec.hemisphere, tuple(a))
    return _propose(sec, A, p, sl.centre_um, min(sec.settings.search.propose_um, search_um))


def _outline_positions(sec, pos) -> PlaneResult:
    """Without region labels: the outline fit at seven positions around the given one
    (angles untouched); the best outline score wins."""
    s = sec.settings
    lo, hi = sec.bounds
    cands = np.clip(pos.position_um + np.linspace(-s.search_um, s.search_um, 7), lo, hi - 1e-6)
    fits = [(sec.fit_outline(p, pos.angles_deg, sweep="never")[1], p) for p in cands]
    _, position_um = min(fits, key=lambda t: t[0].score)
    sec.notes.append("no region labels: position refined by outline fit only; angles not estimated")
    return PlaneResult(position_um, tuple(pos.angles_deg), True)
