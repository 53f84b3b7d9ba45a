"""Fit one section's cells to one template slice (the affine path).

Pipeline (method steps 2-6 plus robust fall-backs):

1. outlines of the section (cells) and of the template slice;
2. frames from the clicked midline and the template's fixed midline;
3. for each mirror hypothesis: the four anchors (+ the midline ends on full coronal
   sections) -> least-squares affine; and a second start from matched moments in the
   midline frames;
4. trimmed symmetric ICP from each start; the best final cost wins;
5. when no midline is given, or the best fit still looks poor, starts at twelve
   rotations x both mirrors are tried as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .affine import apply_affine, compose, fit_affine, rotation, translation
from .anchors import MidlineFrame, outline_anchors
from .boundary import Outline
from .icp import ICPResult, icp_affine
from .settings import OutlineFitSettings
from .template import Template

__all__ = ["Fit", "SectionShape", "chamfer_starts", "fit_to_template"]


@dataclass
class Fit:
    """One fitted start: affine (section um -> atlas slice um) and its ICP record."""

    affine: np.ndarray
    icp: ICPResult
    mirrored: bool
    start: str
    anchors_section: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    anchors_atlas: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    score: float = np.inf


def _moment_init(cells: np.ndarray, fs: MidlineFrame, tmpl: Template) -> np.ndarray:
    ab_s = fs.to_canonical(cells)
    rows, cols = np.nonzero(tmpl.outline.mask)
    res = tmpl.outline.pixel_um
    if len(rows) > 20000:
        sel = np.random.default_rng(0).choice(len(rows), 20000, replace=False)
        rows, cols = rows[sel], cols[sel]
    xy_t = np.column_stack([(cols + 0.5) * res, (rows + 0.5) * res])
    ab_t = tmpl.frame.to_canonical(xy_t)
    s = ab_t.std(0) / np.maximum(ab_s.std(0), 1e-9)
    C = np.eye(3)
    C[0, 0], C[1, 1] = s
    C[:2, 2] = ab_t.mean(0) - s * ab_s.mean(0)
    return compose(tmpl.frame.from_canonical_matrix(), C, fs.to_canonical_matrix())


def _plausibility(A: np.ndarray, expected_scale: float | None = None) -> float:
    sv = np.linalg.svd(A[:2, :2], compute_uv=False)
    aniso = sv[0] / max(sv[1], 1e-12)
    return float(np.exp(-max(0.0, aniso - 1.2) / 0.2))


def _score(fit_: Fit, tmpl: Template) -> float:
    """Lower is better: mean trimmed boundary distance relative to the template size,
    inflated by a low inlier fraction and implausible anisotropy."""
    c = fit_.icp.final_cost / tmpl.size_um
    return float(c / max(fit_.icp.inlier_fraction, 0.05) / max(_plausibility(fit_.affine), 0.05))


@dataclass
class SectionShape:
    """What the outline fit sees of a section: its cells (n, 2) um, their outline, the
    clicked midline ((2, 2) um, dorsal then ventral, or None) and the user landmarks
    (``(src (k,2) section um, dst (k,2) atlas um, weights (k,))`` or None)."""

    cells: np.ndarray
    outline: Outline
    midline: np.ndarray | None = None
    landmarks: tuple | None = None


def fit_to_template(
    section: SectionShape,
    tmpl: Template,
    settings: OutlineFitSettings | None = None,
    *,
    sweep: str | None = None,
    mirrored: bool | None = None,
    rank=None,
    reuse: list[Fit] | None = None,
    progress=None,
    cancel=None,
) -> tuple[Fit | None, list[Fit]]:
    """Fit the section (its cells and outline, :class:`SectionShape`) to ``tmpl``.

    Parameters
    ----------
    settings : :class:`~.settings.OutlineFitSettings` (the ICP, when the chamfer starts
        and the rotation sweep are added, the iterations of each stage).
    sweep : "auto" (rotation sweep when there is no midline or the fit looks poor),
        "always" or "never"; None: ``settings.sweep``.
    mirrored : force the mirror hypothesis; None: sagittal sections try both,
        hemisections take the side the tissue lies on, and full coronal sections are
        read unmirrored (a symmetric brain looks the same mirrored, so the shape
        cannot tell; pass True for a section known to be flipped).
    rank : optional ``rank(affine) -> float`` (higher better, e.g. region-label
        agreement); chooses among fits whose outline score is within 1.5x of the best,
        and adds a second affine stage held near the similarity stage
        (``settings.affine_prior``) for the labels to choose from.
    reuse : the fits an earlier call returned for the same section, template and
        arguments but another ``sweep`` (e.g. "auto" before "always"): taken as they
        are instead of refitting the midline starts, and the rotation sweep is added
        only if they lack it. The result is the same as without, at a fraction of the
        cost (a poor "auto" fit has run the sweep already).
    progress, cancel : see :func:`.icp.icp_affine` (``done`` counts the ICP iterations
        of this call).

    Returns the best :class:`Fit` (None when nothing could be fitted) and all fits tried.
    """
    settings = OutlineFitSettings() if settings is None else settings
    sweep = settings.sweep if sweep is None else sweep
    fitter = _OutlineFitter(section, tmpl, settings, mirrored, rank, progress, cancel)
    if reuse is not None:
        fits = list(reuse)
    elif section.midline is not None:
        fits = fitter.midline_fits()
    else:
        fits = []
    best = fitter.pick(fits) if fits else None
    poor = (
        best is None
        or best.score > max(settings.poor_score, 1.6 * fitter.expected)
        or _plausibility(best.affine) < 0.5
    )
    # without a midline there is no other start: the sweep runs whatever ``sweep`` says
    swept = any(f.start.startswith("rotation") for f in fits)
    if not swept and (sweep == "always" or (sweep == "auto" and poor) or best is None):
        fits += fitter.rotation_sweep()
        best = fitter.pick(fits)
    return best, fits


class _OutlineFitter:
    """The stages of :func:`fit_to_template` for one section and template: similarity
    ICP from each start, the most promising continued, then the affine stage."""

    def __init__(self, section, tmpl, settings, mirrored, rank, progress, cancel):
        self.sec, self.tmpl, self.st = section, tmpl, settings
        self.mirrored, self.rank = mirrored, rank
        self.progress, self.cancel = progress, cancel
        self.floor = 2.0 * tmpl.outline.pixel_um
        self.counter = 0
        cells = section.cells
        sub = cells
        if len(sub) > 5000:
            sub = cells[np.random.default_rng(0).choice(len(cells), 5000, replace=False)]
        self.sub = sub
        # expected cost of a good fit: a fraction of the outlines' blur and pixel size
        res = tmpl.outline.pixel_um
        self.expected = (0.25 * tmpl.outline.blur_um + 0.25 * res) / tmpl.size_um
        self.coronal_full = tmpl.plane == "coronal" and tmpl.hemisphere == "both"
        self.prefer_un = self.coronal_full and mirrored is None
        self.probe = section.outline.points[:: max(1, len(section.outline.points) // 200)]

    # ------------------------------------------------------------------ one ICP stage
    def one(self, A0, model, n_iter, prior=0.0, start: str = ""):
        icp = replace(self.st.icp, max_iter=n_iter, model=model, prior_weight=prior)
        label = f"{start} {model}{' (prior)' if prior else ''}".strip()
        r = icp_affine(
            self.sec.outline.points,
            self.tmpl.outline.points,
            A0,
            icp,
            floor_um=self.floor,
            landmarks=self.sec.landmarks,
            tgt_tree=self.tmpl.tree,
            tgt_normals=self.tmpl.outline.normals,
            progress=self.progress,
            cancel=self.cancel,
            iter_offset=self.counter,
            stage_label=label,
        )
        self.counter += r.iterations
        return r

    def stage1(self, A0, m, start, n_iter, a_s=None, a_t=None) -> Fit:
        """Similarity stage from a start."""
        r = self.one(A0, "similarity", n_iter, start=start)
        f = Fit(r.affine, r, m, start)
        if a_s is not None:
            f.anchors_section, f.anchors_atlas = a_s, a_t
        f.score = _score(f, self.tmpl)
        return f

    def finish(self, f: Fit, prior: float = 0.0) -> Fit:
        """Affine stage after the similarity stage of a start."""
        r2 = self.one(f.icp.affine, "affine", self.st.icp.max_iter, prior, start=f.start)
        r2.cost_history = f.icp.cost_history + r2.cost_history
        r2.stages = f.icp.stages + r2.stages
        r2.iterations = f.icp.iterations + r2.iterations
        g = Fit(
            r2.affine,
            r2,
            f.mirrored,
            f.start + ("+prior" if prior else ""),
            f.anchors_section,
            f.anchors_atlas,
        )
        g.score = _score(g, self.tmpl)
        return g

    def finish_all(self, f: Fit) -> list[Fit]:
        """A free affine; with labels to choose, also one held near the similarity
        (smooth, near-elliptic outlines let a free affine slide)."""
        out = [self.finish(f)]
        if self.rank is not None and self.st.affine_prior > 0:
            out.append(self.finish(f, self.st.affine_prior))
        return out

    def distinct(self, fs_: list[Fit]) -> list[Fit]:
        """``fs_`` without the fits that place the outline where an earlier one does
        (within 2 pixels): starts that converged to the same solution finish the same."""
        out, placed = [], []
        for f in fs_:
            P = apply_affine(f.icp.affine, self.probe)
            if any(np.abs(P - Q).max() < self.floor for Q in placed):
                continue
            out.append(f)
            placed.append(P)
        return out

    def best_finished(self, cands: list[Fit]) -> list[Fit]:
        chosen = [min(cands, key=lambda f: f.score)]
        if self.rank is not None:
            # region labels can tell apart fits the outline cannot: finish the
            # near-best ones too and let the labels choose among them
            lim = 1.5 * chosen[0].score
            chosen += [f for f in sorted(cands, key=lambda f: f.score)[1:3] if f.score <= lim]
        if self.prefer_un:
            un = [f for f in cands if not f.mirrored]
            if un and chosen[0].mirrored:
                chosen.append(min(un, key=lambda f: f.score))
        return [g for f in self.distinct(chosen) for g in self.finish_all(f)]

    def pick(self, fits: list[Fit]) -> Fit | None:
        return _pick([f for f in fits if f.icp.model_stage == "affine"], self.prefer_un, self.rank)

    # ------------------------------------------------------------------ the starts
    def mirrors(self) -> list[bool]:
        """The mirror hypotheses the midline starts try."""
        tmpl, midline = self.tmpl, self.sec.midline
        if self.mirrored is not None:
            return [bool(self.mirrored)]
        if tmpl.plane == "coronal" and tmpl.hemisphere != "both":
            # the tissue lies on the template's side of the cut edge
            side = float(
                np.median(MidlineFrame(midline[0], midline[1]).to_canonical(self.sub)[:, 0])
            )
            want = -1.0 if tmpl.hemisphere == "left" else 1.0
            return [bool(side * want < 0)]
        if self.coronal_full:
            # a full coronal section of a left-right symmetric brain looks the same
            # mirrored: the shape cannot tell, so the unmirrored reading is taken
            # (pass mirrored=True for a section known to be flipped)
            return [False]
        return [False, True]

    def midline_fits(self) -> list[Fit]:
        """Anchor, moment (and, where they fit poorly, chamfer) starts in the midline
        frames; the most promising continued and finished."""
        sec, tmpl, st = self.sec, self.tmpl, self.st
        midline, landmarks = sec.midline, sec.landmarks
        anchors_t = outline_anchors(
            tmpl.outline.contours, tmpl.frame, midline_ends=self.coronal_full
        )["points"]
        cands, frames = [], []
        for m in self.mirrors():
            fs = MidlineFrame(midline[0], midline[1], mirrored=m)
            anchors_s = outline_anchors(sec.outline.contours, fs, midline_ends=self.coronal_full)[
                "points"
            ]
            n = min(len(anchors_s), len(anchors_t))
            src, dst, w = anchors_s[:n], anchors_t[:n], np.ones(n)
            if landmarks is not None and len(landmarks[0]):
                src = np.vstack([src, landmarks[0]])
                dst = np.vstack([dst, landmarks[1]])
                w = np.concatenate([w, landmarks[2]])
            A_anchor = fit_affine(src, dst, w)
            starts = [("anchors", A_anchor), ("moments", _moment_init(self.sub, fs, tmpl))]
            for start, A0 in starts:
                cands.append(
                    self.stage1(A0, m, start, st.start_iters, anchors_s[:4], anchors_t[:4])
                )
            frames.append((m, fs, anchors_s))
        if st.chamfer and (
            st.chamfer_always
            or min(f.score for f in cands) > st.chamfer_score * max(st.poor_score, self.expected)
        ):
            # the anchor and moment starts do not fit well (torn tissue, a damaged
            # outline): add the chamfer search's starts
            for m, fs, anchors_s in frames:
                for i, A0 in enumerate(chamfer_starts(sec.outline, tmpl, fs)):
                    cands.append(
                        self.stage1(
                            A0, m, f"chamfer{i}", st.start_iters, anchors_s[:4], anchors_t[:4]
                        )
                    )
        return cands + self.continued(cands)

    def continued(self, cands: list[Fit]) -> list[Fit]:
        """The most promising starts continued, then the near-best finished."""
        ranked = sorted(cands, key=lambda f: f.score)
        keep = self.distinct([f for f in ranked[:2] if f.score <= 1.5 * ranked[0].score])
        if self.prefer_un and all(f.mirrored for f in keep):
            un = [f for f in cands if not f.mirrored]
            if un:
                keep.append(min(un, key=lambda f: f.score))
        cont = []
        for f in keep:
            g = self.stage1(
                f.icp.affine,
                f.mirrored,
                f.start,
                self.st.continue_iters,
                f.anchors_section,
                f.anchors_atlas,
            )
            g.icp.cost_history = f.icp.cost_history + g.icp.cost_history
            g.icp.stages = f.icp.stages + g.icp.stages
            g.icp.iterations += f.icp.iterations
            cont.append(g)
        kept = {id(f) for f in keep}
        return cont + self.best_finished(cont + [f for f in cands if id(f) not in kept])

    def rotation_sweep(self) -> list[Fit]:
        """Starts at twelve rotations x the mirror hypotheses, the best two finished."""
        tmpl, outline = self.tmpl, self.sec.outline
        res = tmpl.outline.pixel_um
        mirrors = [bool(self.mirrored)] if self.mirrored is not None else [False, True]
        c_s = self.sub.mean(0)
        rows, cols = np.nonzero(tmpl.outline.mask)
        c_t = np.array([(cols.mean() + 0.5) * res, (rows.mean() + 0.5) * res])
        scale = np.sqrt(tmpl.outline.area_um2 / max(outline.area_um2, 1e-9))
        cands = []
        for m in mirrors:
            M = np.diag([-1.0, 1.0, 1.0]) if m else np.eye(3)
            for k in range(12):
                A0 = compose(
                    translation(c_t),
                    rotation(2 * np.pi * k / 12),
                    np.diag([scale, scale, 1.0]),
                    M,
                    translation(-c_s),
                )
                cands.append(self.stage1(A0, m, f"rotation{30 * k}", self.st.sweep_iters))
        top = sorted(cands, key=lambda f: f.score)[:2]
        if self.prefer_un and all(f.mirrored for f in top):
            top.append(min((f for f in cands if not f.mirrored), key=lambda f: f.score))
        return cands + [g for f in top for g in self.finish_all(f)]


def _distance_map(tmpl: Template, pad_frac: float = 0.4):
    """Distance (um) to the template outline on a padded grid; cached on the template."""
    cache = getattr(tmpl, "_dmap", None)
    if cache is not None:
        return cache
    from scipy import ndimage as ndi

    res = tmpl.outline.pixel_um
    H, W = tmpl.outline.mask.shape
    pad = int(np.ceil(pad_frac * max(H, W)))
    grid = np.ones((H + 2 * pad, W + 2 * pad), dtype=bool)
    c = np.floor(tmpl.outline.points[:, 0] / res).astype(int) + pad
    r = np.floor(tmpl.outline.points[:, 1] / res).astype(int) + pad
    grid[np.clip(r, 0, grid.shape[0] - 1), np.clip(c, 0, grid.shape[1] - 1)] = False
    dist = ndi.distance_transform_edt(grid) * res
    tmpl._dmap = (dist, pad, res)
    return tmpl._dmap


def chamfer_starts(
    outline: Outline,
    tmpl: Template,
    fs: MidlineFrame,
    n_best: int = 2,
    rot_deg=(-6, -3, 0, 3, 6),
    scale_range=(0.8, 1.2),
    n_scale: int = 7,
    shift_frac: float = 0.25,
    n_shift: int = 15,
    trunc_frac: float = 0.05,
    max_points: int = 200,
) -> list:
    """Global search of similarity starts by truncated chamfer matching.

    In the midline frames (rotation known up to ``rot_deg``), every combination of
    rotation, scale (around the area ratio) and shift (up to ``shift_frac`` of the
    template size) is scored by the mean of min(distance to the template outline,
    ``trunc_frac`` x size) over the section outline points; torn or missing tissue
    costs at most the truncation, so a partial section still finds its place. Returns
    the ``n_best`` best as (3, 3) section -> atlas affines.
    """
    dist, pad, res = _distance_map(tmpl)
    pts = outline.points
    if len(pts) > max_points:
        pts = pts[:: int(np.ceil(len(pts) / max_points))]
    ab_s = fs.to_canonical(pts)
    cen_s = ab_s.mean(0)
    ab_s = ab_s - cen_s
    rows, cols = np.nonzero(tmpl.outline.mask)
    xy_t = np.column_stack([(cols + 0.5) * res, (rows + 0.5) * res])
    cen_t = tmpl.frame.to_canonical(xy_t).mean(0)
    s0 = np.sqrt(tmpl.outline.area_um2 / max(outline.area_um2, 1e-9))
    size = tmpl.size_um
    trunc = trunc_frac * size
    scales = s0 * np.geomspace(scale_range[0], scale_range[1], n_scale)
    shifts = np.linspace(-shift_frac * size, shift_frac * size, n_shift)
    sa, sb = np.meshgrid(shifts, shifts, indexing="ij")
    sh = np.column_stack([sa.ravel(), sb.ravel()])  # (S, 2) in template canonical um
    To = tmpl.frame.from_canonical_matrix()
    H, W = dist.shape
    results = []
    for th in np.deg2rad(np.asarray(rot_deg, dtype=float)):
        c, s_ = np.cos(th), np.sin(th)
        R = np.array([[c, -s_], [s_, c]])
        for sc in scales:
            q = (ab_s @ R.T) * sc + cen_t  # (P, 2) template canonical
            xy = tmpl.frame.from_canonical(q)  # (P, 2) atlas um
            # shifts in canonical coordinates -> atlas um
            dxy = sh[:, :1] * tmpl.frame.v + sh[:, 1:2] * tmpl.frame.u  # (S, 2)
            X = xy[None, :, 0] + dxy[:, None, 0]
            Y = xy[None, :, 1] + dxy[:, None, 1]
            ci = np.clip(np.floor(X / res).astype(np.int64) + pad, 0, W - 1)
            ri = np.clip(np.floor(Y / res).astype(np.int64) + pad, 0, H - 1)
            d = np.minimum(dist[ri, ci], trunc)
            cost = d.mean(1)
            k = int(np.argmin(cost))
            results.append((float(cost[k]), th, sc, sh[k]))
    results.sort(key=lambda t: t[0])
    out = []
    for cost, th, sc, shv in results[:n_best]:
        c, s_ = np.cos(th), np.sin(th)
        C = np.eye(3)
        C[:2, :2] = sc * np.array([[c, -s_], [s_, c]])
        C[:2, 2] = cen_t + shv - C[:2, :2] @ cen_s
        out.append(compose(To, C, fs.to_canonical_matrix()))
    return out


def _pick(fits: list[Fit], prefer_unmirrored: bool, rank=None) -> Fit | None:
    if not fits:
        return None
    best = min(fits, key=lambda f: f.score)
    if rank is not None:
        near = [f for f in fits if f.score <= 1.5 * best.score]
        if len(near) > 1:
            vals = [rank(f.affine) for f in near]
            best = near[int(np.argmax(vals))]
    if prefer_unmirrored and best.mirrored:
        un = [f for f in fits if not f.mirrored]
        if un:
            b2 = min(un, key=lambda f: f.score)
            if b2.score <= 1.15 * best.score:
                return b2
    return best
