"""The joint search of the cutting plane (position, two angles) and the in-plane fit.

Every candidate plane gets its own in-plane fit (:func:`.labelfit.label_fit`, started
from the best fit so far and, where the position changes, also from an outline ICP
refit to the new slice) and is scored by :func:`.labelfit.plane_score`. The search
starts from the best of the given plane, two positions at half the search range either
side and the proposals ((position, (a_x, a_y)) pairs, e.g. from
:func:`.position.refine_plane`), then climbs by a pattern search (the best of the six
neighbours along depth and the two angles, at each level of steps; a proposal is asked
for whenever it stalls), within ``max_evals`` planes.

The angles turn the plane about the section's own centre (the centroid of the cells as
placed by the start's affine), not about the slice centre the positions refer to (the
``AtlasSlice.centre_um``): an angle step then keeps the section's mean depth, so depth
and angles are nearly independent axes (about the slice centre, a far-off section moves
in depth with every angle step, and the search has to follow a diagonal ridge).
Coronal hemisections also poll the left-right tilt about the slice centre's vertical
line (the midline; the depth there kept): their anatomy may pin the depth at the
midline better than at their own centre, and that direction follows the diagonal ridge
the search's axes then cross.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .._errors import BrainAtlasInputError
from ..jobs import report
from .affine import apply_affine
from .icp import check_cancel, icp_affine
from .labelfit import label_fit, make_label_template, plane_score
from .settings import ICPSettings, RegistrationSettings

__all__ = ["PlaneStart", "SearchProblem", "search_plane"]


@dataclass
class SearchProblem:
    """What a plane search fits (shared by :func:`search_plane` and
    :func:`.quick_search.quick_plane_search`).

    ``template_at(position_um, angles, factor=1) -> Template`` gives the (cropped)
    template of a plane (``factor`` > 1: on a grid that many times coarser); ``cells``,
    ``cell_div``: a subsample of the section's labelled cells (section um) and their
    division index; ``outline_pts``: the section outline (section um); ``bounds``: (lo,
    hi) of the position axis (the atlas's tissue range); ``propose(affine, position_um,
    angles) -> (position_um, angles)``: a plane from the cells placed by ``affine``,
    asked for when the pattern search stalls; ``progress(done, total, info)`` after each
    candidate plane (``info``: stage "plane_search", position_um, angles_deg, score,
    step (the level's (depth um, angle deg); None for the starts), move ("start",
    "proposal", the poll's "depth", "a_x", "a_y" or "midline_tilt", "quadratic",
    "refine" (coarse to fine), "neighbours"), coarse).
    """

    atlas: object
    plane: str
    hemisphere: str
    template_at: Callable
    cells: np.ndarray
    cell_div: np.ndarray
    outline_pts: np.ndarray
    bounds: tuple = (-np.inf, np.inf)
    propose: Callable | None = None
    cancel: Callable | None = None
    progress: Callable | None = None


@dataclass
class PlaneStart:
    """Where a plane search starts: the affine (section um -> slice um) at the plane
    (``position_um``, ``angles_deg``), the half-width of the position search and the
    proposed planes ((position_um, (a_x, a_y)) pairs) to try first."""

    affine: np.ndarray
    position_um: float
    angles_deg: tuple
    search_um: float
    proposals: tuple = ()


def search_plane(pb: SearchProblem, start: PlaneStart, settings: RegistrationSettings) -> dict:
    """Joint search of the plane and the in-plane fit (see the module's docstring).

    Tuning: ``settings.search`` (:class:`~.settings.PlaneSearchSettings`: the steps by
    plane, the candidate fits' iterations and tolerance, the outline refit at a new
    depth, the hemisections' midline tilt, the quadratic finish, coarse to fine), the
    candidate fits and their score ``settings.search_labels()``, the angle range
    ``settings.max_angle_deg``.

    Returns dict(position_um, angles_deg, affine, score, inside, outline_um, label_um,
    evals, coarse_evals, pivot_um, neighbours (scores of the final plane's neighbours at
    four steps, with ``settings.search.neighbours``), start_score).
    """
    return _JointSearch(pb, start, settings).run()


class _JointSearch:
    """One joint search: the planes are (q, a) with q the depth at the pivot (the
    section's centre) and a the angles; ``cache`` holds every plane evaluated."""

    def __init__(self, pb: SearchProblem, start: PlaneStart, settings: RegistrationSettings):
        ss = settings.search
        self.pb, self.s, self.ss = pb, settings, ss
        self.search_um = float(start.search_um)
        self.max_angle = float(settings.max_angle_deg)
        self.lo, self.hi = pb.bounds
        self.A0 = np.asarray(start.affine, dtype=float)
        self.p0 = float(start.position_um)
        self.a0 = (float(start.angles_deg[0]), float(start.angles_deg[1]))
        self.proposals = start.proposals
        self.steps = ss.steps_for(pb.plane)
        self.midline_tilt = (
            ss.hemi_midline_tilt and pb.plane == "coronal" and pb.hemisphere != "both"
        )
        self.cache: dict = {}
        self.step = None
        self.move = "start"
        # pivot: the section's centre in the slice (angles turn about it)
        cx, cy = (
            float(v) for v in pb.template_at(self.p0, tuple(start.angles_deg)).slice.centre_um
        )
        px_, py_ = apply_affine(self.A0, np.asarray(pb.cells, dtype=float)).mean(0)
        self.ox, self.oy = px_ - cx, py_ - cy
        self.pivot = (float(px_), float(py_))
        self.q0 = self.to_q(self.p0, start.angles_deg)
        self.cells = np.asarray(pb.cells, dtype=float)
        self.cell_div = np.asarray(pb.cell_div)
        self.coarse = ss.coarse_factor > 1
        self.set_level(coarse=self.coarse)

    # ------------------------------------------------------------------ geometry
    def to_q(self, p, a):  # slice position -> depth at the pivot
        return p + np.tan(np.deg2rad(a[0])) * self.ox + np.tan(np.deg2rad(a[1])) * self.oy

    def to_p(self, q, a):
        return q - np.tan(np.deg2rad(a[0])) * self.ox - np.tan(np.deg2rad(a[1])) * self.oy

    @staticmethod
    def key(q, a):
        return (round(q, 3), round(a[0], 3), round(a[1], 3))

    def valid(self, q, a):
        p = self.to_p(q, a)
        return (
            abs(q - self.q0) <= self.search_um + 1e-6
            and self.lo <= p < self.hi
            and abs(a[0]) <= self.max_angle + 1e-6
            and abs(a[1]) <= self.max_angle + 1e-6
        )

    def clip_plane(self, p, a):
        m, s = self.max_angle, self.search_um
        a = tuple(float(np.clip(v, -m, m)) for v in a)
        q = float(np.clip(self.to_q(p, a), self.q0 - s, self.q0 + s))
        p = self.to_p(q, a)
        if not (self.lo <= p < self.hi):
            p = float(np.clip(p, self.lo, self.hi - 1e-6))
            q = self.to_q(p, a)
        return q, a

    # ------------------------------------------------------------------ candidates
    def set_level(self, coarse: bool):
        """Fit the candidates on the coarse slices (a subsample of the cells) or at
        full resolution."""
        ss, pb = self.ss, self.pb
        if coarse:
            st = max(1, int(np.ceil(len(self.cells) / max(ss.coarse_cells, 1))))
            self.lv_cells, self.lv_div = self.cells[::st], self.cell_div[::st]
            f = ss.coarse_factor
            self.lv_tmpl = lambda p, a: pb.template_at(p, a, factor=f)
            self.lv_edges = ss.coarse_edges
        else:
            self.lv_cells, self.lv_div = self.cells, self.cell_div
            self.lv_tmpl = pb.template_at
            self.lv_edges = ss.max_edges
        self.lv_fit = self.s.search_labels(coarse=coarse)
        self.lv_coarse = coarse

    def evaluate(self, q, a, A_init, refit=False):
        """(score, affine, parts) of the plane (q, a), fitted from ``A_init`` (and, with
        ``refit``, from an outline ICP refit to the new slice too); cached."""
        k = self.key(q, a)
        if k in self.cache:
            return self.cache[k]
        check_cancel(self.pb.cancel)
        try:
            tmpl = self.lv_tmpl(self.to_p(q, a), a)
        except BrainAtlasInputError:
            # no tissue in this plane (beyond the brain's lateral edge, or its poles):
            # not a candidate
            self.cache[k] = (-np.inf, A_init, {"inside": float("nan"), "outline_um": float("nan")})
            return self.cache[k]
        inits = [A_init]
        if refit:
            # a new depth changes the slice's size and shape: also start from the
            # outline fitted to this slice (ICP from the warm start)
            inits.append(self.refit(tmpl, A_init))
        self.cache[k] = self.fit_candidate(tmpl, inits)
        report(
            self.pb.progress,
            len(self.cache),
            None,
            stage="plane_search",
            position_um=float(self.to_p(q, a)),
            angles_deg=(float(a[0]), float(a[1])),
            score=float(self.cache[k][0]),
            step=self.step,
            move=self.move,
            coarse=self.lv_coarse,
        )
        return self.cache[k]

    def refit(self, tmpl, A_init) -> np.ndarray:
        """The outline ICP refit of the warm start to the slice ``tmpl``."""
        icp = ICPSettings(max_iter=self.ss.refit_iters, prior_weight=self.ss.refit_prior_weight)
        r = icp_affine(
            self.pb.outline_pts,
            tmpl.outline.points,
            A_init,
            icp,
            floor_um=2 * tmpl.outline.pixel_um,
            tgt_tree=tmpl.tree,
            tgt_normals=tmpl.outline.normals,
        )
        return r.affine

    def fit_candidate(self, tmpl, inits):
        """The best (score, affine, parts) of the label fits from ``inits``."""
        pb = self.pb
        lt = make_label_template(
            pb.atlas, tmpl.slice, self.ss.label_pixel_um, max_edges=self.lv_edges
        )
        best = None
        for A1 in inits:
            A, info = label_fit(
                A1, self.lv_cells, self.lv_div, lt, pb.outline_pts, tmpl.tree, self.lv_fit
            )
            sc, parts = plane_score(A, info, pb.outline_pts, tmpl, self.lv_fit)
            if best is None or sc > best[0]:
                best = (sc, A, parts)
        return best

    # ------------------------------------------------------------------ the search
    def run(self) -> dict:
        cur_q, cur_a, cur = self.starts()
        start_score = self.start_score
        proposed = set()
        n_coarse = 0
        n_levels = max(len(self.steps) - max(self.ss.fine_levels, 1), 0) if self.coarse else 0
        for li, (dp, da) in enumerate(self.steps):
            if self.coarse and li == n_levels:
                n_coarse = len(self.cache)
                cur_q, cur_a, cur = self.to_full_resolution()
                proposed = set()
            self.step = (float(dp), float(da))
            cur_q, cur_a, cur = self.climb(cur_q, cur_a, cur, dp, da, proposed)
        dp, da = self.steps[-1]
        self.move = "quadratic"
        if self.ss.quadratic_finish:
            cur_q, cur_a, cur = _quadratic_step(
                self.evaluate, self.valid, cur_q, cur_a, cur, dp, da
            )
        return {
            "position_um": float(self.to_p(cur_q, cur_a)),
            "angles_deg": (float(cur_a[0]), float(cur_a[1])),
            "affine": cur[1],
            "score": float(cur[0]),
            "inside": cur[2]["inside"],
            "outline_um": cur[2]["outline_um"],
            "label_um": cur[2].get("label_um", float("nan")),
            "evals": len(self.cache) + n_coarse,
            "coarse_evals": n_coarse,
            "pivot_um": self.pivot,
            "neighbours": self.neighbours(cur_q, cur_a, cur, dp, da),
            "start_score": float(start_score),
        }

    def starts(self):
        """The given plane, the depths at half the search range either side (each with
        its own outline refit: the label term is weak where few regions are cut, e.g.
        far-lateral sagittal sections) and the proposals; returns the best."""
        cur_q, cur_a = self.q0, self.a0
        cur = self.evaluate(cur_q, cur_a, self.A0)
        self.start_score = cur[0]
        for q in (self.q0 - 0.5 * self.search_um, self.q0 + 0.5 * self.search_um):
            if self.valid(q, cur_a):
                r = self.evaluate(q, cur_a, self.A0, refit=True)
                if r[0] > cur[0] + 0.01:
                    cur_q, cur = q, r
        self.move = "proposal"
        for p, a in self.proposals:
            q, a = self.clip_plane(p, a)
            r = self.evaluate(q, a, cur[1], refit=True)
            if r[0] > cur[0]:
                cur_q, cur_a, cur = q, a, r
        return cur_q, cur_a, cur

    def to_full_resolution(self):
        """Coarse to fine: the best coarse planes refitted at full resolution (from
        their coarse fits); the remaining, finer steps search at full resolution."""
        ranked = sorted(self.cache.items(), key=lambda kv: -kv[1][0])[: max(1, self.ss.refine_top)]
        self.cache = {}
        self.set_level(coarse=False)
        self.move = "refine"
        cur = cur_q = cur_a = None
        for (q, a0, a1), (_, A_c, _) in ranked:
            r = self.evaluate(q, (a0, a1), A_c)
            if cur is None or r[0] > cur[0]:
                cur_q, cur_a, cur = q, (a0, a1), r
        return cur_q, cur_a, cur

    def climb(self, cur_q, cur_a, cur, dp, da, proposed: set):
        """Pattern search at one level of steps: move to the best neighbour while one
        is better; when none is, ask once per plane for a proposal."""
        moved = True
        while moved and len(self.cache) < self.ss.max_evals:
            moved = False
            step_best = self.poll(cur_q, cur_a, cur, dp, da)
            if step_best is not None:
                cur_q, cur_a, cur = step_best
                moved = True
            if not moved and self.pb.propose is not None and self.key(cur_q, cur_a) not in proposed:
                # stalled: ask for a plane from the cells placed by the current fit
                proposed.add(self.key(cur_q, cur_a))
                self.move = "proposal"
                q, a = self.clip_plane(*self.pb.propose(cur[1], self.to_p(cur_q, cur_a), cur_a))
                r = self.evaluate(q, a, cur[1], refit=True)
                if r[0] > cur[0] + 0.01:
                    cur_q, cur_a, cur = q, a, r
                    moved = True
        return cur_q, cur_a, cur

    def poll(self, cur_q, cur_a, cur, dp, da):
        """All six neighbours (eight with the midline tilt), then the best of them
        (first-improvement wanders off along noisy ridges); None when none is better."""
        step_best = None
        for dim in range(4 if self.midline_tilt else 3):
            for sgn in (1.0, -1.0):
                q, a = cur_q, list(cur_a)
                if dim == 0:
                    q = cur_q + sgn * dp
                elif dim < 3:
                    a[dim - 1] += sgn * da
                else:  # left-right tilt keeping the depth at the slice centre's x
                    a[0] += sgn * da
                    q = self.to_q(self.to_p(cur_q, cur_a), a)
                a = tuple(a)
                if not self.valid(q, a):
                    continue
                self.move = ("depth", "a_x", "a_y", "midline_tilt")[dim]
                r = self.evaluate(q, a, cur[1], refit=dim == 0 and dp >= self.ss.refit_min_step_um)
                if r[0] > cur[0] + 0.01 and (step_best is None or r[0] > step_best[2][0]):
                    step_best = (q, a, r)
        return step_best

    def neighbours(self, cur_q, cur_a, cur, dp, da) -> list:
        """The final plane's neighbours at four finest steps: how sharp is the optimum?"""
        neigh = []
        self.move = "neighbours"
        for dim in range(3 if self.ss.neighbours else 0):
            for sgn in (1.0, -1.0):
                q, a = cur_q, list(cur_a)
                if dim == 0:
                    q += sgn * 4 * dp
                else:
                    a[dim - 1] += sgn * 4 * da
                if self.lo <= self.to_p(q, a) < self.hi:
                    neigh.append(self.evaluate(q, tuple(a), cur[1])[0])
        return neigh


def _quadratic_step(evaluate, valid, cur_q, cur_a, cur, dp, da):
    """One step from the plane ``(cur_q, cur_a)`` (score ``cur[0]``) to the vertex of
    the parabola through it and its two neighbours (``dp`` um along depth, ``da`` deg
    along each angle) on each axis where that parabola opens downwards; the vertex
    offset is clipped to half a step. The step is taken only if its score is better;
    else the single axis with the largest predicted gain is tried. Returns the new
    (q, a, result)."""
    f0 = cur[0]
    offs, gains = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    for dim, h in enumerate((dp, da, da)):
        f = []
        for sgn in (1.0, -1.0):
            q, a = cur_q, list(cur_a)
            if dim == 0:
                q += sgn * h
            else:
                a[dim - 1] += sgn * h
            a = tuple(a)
            f.append(evaluate(q, a, cur[1])[0] if valid(q, a) else None)
        fp, fm = f
        if fp is None or fm is None or not np.isfinite(fp + fm):
            continue
        curv = fp + fm - 2.0 * f0  # < 0: opens downwards
        if curv >= -1e-9:
            continue
        t = float(np.clip(0.5 * (fm - fp) / curv, -0.5, 0.5))  # vertex, in steps
        offs[dim] = t * h
        gains[dim] = -0.5 * curv * t * t  # predicted gain (score units)
    tries = []
    if sum(1 for g in gains if g > 0) > 1:
        tries.append(offs)
    if max(gains) > 0:
        k = int(np.argmax(gains))
        tries.append([offs[i] if i == k else 0.0 for i in range(3)])
    for o in tries:
        q, a = cur_q + o[0], (cur_a[0] + o[1], cur_a[1] + o[2])
        if not valid(q, a):
            continue
        r = evaluate(q, a, cur[1])
        if r[0] > f0:
            return q, a, r
    return cur_q, cur_a, cur
