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

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from .affine import apply_affine, compose, fit_affine, rotation, translation
from .anchors import MidlineFrame, outline_anchors
from .boundary import Outline, template_outline
from .icp import ICPResult, icp_affine

__all__ = ["POOR_SCORE", "Fit", "Template", "fit_to_template", "make_template"]

#: a fit whose score (relative trimmed boundary cost / inlier fraction) exceeds this
#: triggers the rotation sweep; good fits score about 0.002-0.004
POOR_SCORE = 0.008
#: the chamfer starts are searched when the best anchor / moment start scores above
#: this many times the expected score of a good fit (see :func:`fit_to_template`)
CHAMFER_SCORE = 1.0
TRIM_K = 2.5
CAUCHY_K = 0.0


@dataclass
class Template:
    """A template slice ready for fitting: outline, midline frame, KD-tree."""

    slice: object  # AtlasSlice
    outline: Outline
    frame: MidlineFrame
    tree: cKDTree
    midline: np.ndarray  # (2, 2) atlas slice um, dorsal then ventral
    hemisphere: str
    plane: str

    @property
    def size_um(self) -> float:
        return self.outline.size_um


def make_template(sl, sigma_um: float = 0.0, crop: bool = False) -> Template:
    """Build a :class:`Template` from an :class:`~napari_brainatlas.atlas.AtlasSlice`,
    its outline traced after a Gaussian blur of ``sigma_um`` (see
    :func:`~.boundary.template_outline`). ``crop``: trace on the tissue's bounding box
    (plus the blur's reach) only; the outline points are the same, its ``mask`` and
    ``field`` then cover the box (``origin_um`` says where), which is cheaper for the
    many templates of a plane search."""
    res = sl.resolution_um
    labels = sl.labels
    r0 = c0 = 0
    if crop:
        rows_t = np.flatnonzero((labels > 0).any(1))
        cols_t = np.flatnonzero((labels > 0).any(0))
        if len(rows_t):
            m = int(np.ceil(4.0 * sigma_um / res)) + 3
            r0, r1 = max(rows_t[0] - m, 0), min(rows_t[-1] + m + 1, labels.shape[0])
            c0, c1 = max(cols_t[0] - m, 0), min(cols_t[-1] + m + 1, labels.shape[1])
            labels = labels[r0:r1, c0:c1]
    out = template_outline(labels, res, sigma_um=sigma_um)
    if r0 or c0:
        shift = np.array([c0 * res, r0 * res])
        out.points = out.points + shift
        out.contours = [c + shift for c in out.contours]
        out.origin_um = (float(shift[0]), float(shift[1]))
    rows, cols = np.nonzero(out.mask)
    rows, cols = rows + r0, cols + c0
    if sl.plane == "coronal" and sl.midline_x_um is not None:
        mx = float(sl.midline_x_um)
    else:
        mx = float(np.mean((cols + 0.5) * res))
    y0, y1 = rows.min() * res, (rows.max() + 1) * res
    mid = np.array([[mx, y0], [mx, y1]])
    return Template(
        sl, out, MidlineFrame(mid[0], mid[1]), cKDTree(out.points), mid, sl.hemisphere, sl.plane
    )


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
    return compose(_frame_from(tmpl.frame), C, _frame_to(fs))


def _frame_to(f: MidlineFrame) -> np.ndarray:
    """Affine: input um -> canonical (a, b)."""
    M = np.eye(3)
    M[0, :2] = f.v
    M[1, :2] = f.u
    M[:2, 2] = -M[:2, :2] @ f.o
    return M


def _frame_from(f: MidlineFrame) -> np.ndarray:
    return np.linalg.inv(_frame_to(f))


def _plausibility(A: np.ndarray, expected_scale: float | None = None) -> float:
    sv = np.linalg.svd(A[:2, :2], compute_uv=False)
    aniso = sv[0] / max(sv[1], 1e-12)
    return float(np.exp(-max(0.0, aniso - 1.2) / 0.2))


def _score(fit_: Fit, tmpl: Template) -> float:
    """Lower is better: mean trimmed boundary distance relative to the template size,
    inflated by a low inlier fraction and implausible anisotropy."""
    c = fit_.icp.final_cost / tmpl.size_um
    return float(c / max(fit_.icp.inlier_fraction, 0.05) / max(_plausibility(fit_.affine), 0.05))


def fit_to_template(
    cells: np.ndarray,
    outline: Outline,
    tmpl: Template,
    midline: np.ndarray | None,
    mirrored: bool | None = None,
    landmarks=None,
    max_iter: int = 100,
    tol: float = 1e-5,
    sweep: str = "auto",
    progress=None,
    cancel=None,
    affine_prior: float = 0.01,
    chamfer: bool = True,
    rank=None,
    chamfer_always: bool = False,
    reuse: list[Fit] | None = None,
) -> tuple[Fit, list[Fit]]:
    """Fit the section (cells ``(n, 2)`` um with their ``outline``) to ``tmpl``.

    Parameters
    ----------
    midline : (2, 2) section um (dorsal, ventral) or None (rotation sweep only).
    mirrored : force the mirror hypothesis; None: sagittal sections try both,
        hemisections take the side the tissue lies on, and full coronal sections are
        read unmirrored (a symmetric brain looks the same mirrored, so the shape
        cannot tell; pass True for a section known to be flipped).
    landmarks : ``(src (k,2) section um, dst (k,2) atlas um, weights (k,))`` or None.
    sweep : "auto" (rotation sweep when there is no midline or the fit looks poor),
        "always" or "never".
    affine_prior : with ``rank``, a second affine stage pulled towards the similarity
        stage's linear part with this weight is tried too, and the labels choose.
    chamfer : add the best starts of a truncated chamfer search (robust to torn tissue)
        when the anchor and moment starts fit poorly (their best similarity-stage score
        above ``CHAMFER_SCORE`` times the expected score of a good fit), or always with
        ``chamfer_always``.
    rank : optional ``rank(affine) -> float`` (higher better, e.g. region-label
        agreement); chooses among fits whose outline score is within 1.5x of the best.
    reuse : the fits an earlier call returned for the same section, template and
        arguments but another ``sweep`` (e.g. "auto" before "always"): taken as they
        are instead of refitting the midline starts, and the rotation sweep is added
        only if they lack it. The result is the same as without, at a fraction of the
        cost (a poor "auto" fit has run the sweep already).

    Returns the best :class:`Fit` and all fits tried.
    """
    res = tmpl.outline.pixel_um
    floor = 2.0 * res
    counter = [0]

    def one(A0, model, n_iter, prior=0.0):
        r = icp_affine(
            outline.points,
            tmpl.outline.points,
            A0,
            max_iter=n_iter,
            tol=tol,
            floor_um=floor,
            landmarks=landmarks,
            tgt_tree=tmpl.tree,
            tgt_normals=tmpl.outline.normals,
            model=model,
            prior_weight=prior,
            trim_k=TRIM_K,
            cauchy_k=CAUCHY_K,
            progress=progress,
            cancel=cancel,
            iter_offset=counter[0],
        )
        counter[0] += r.iterations
        return r

    def finish(f: Fit, prior: float = 0.0) -> Fit:
        """Affine stage after the similarity stage of a start."""
        r2 = one(f.icp.affine, "affine", max_iter, prior)
        r2.cost_history = f.icp.cost_history + r2.cost_history
        r2.iterations = f.icp.iterations + r2.iterations
        g = Fit(
            r2.affine,
            r2,
            f.mirrored,
            f.start + ("+prior" if prior else ""),
            f.anchors_section,
            f.anchors_atlas,
        )
        g.score = _score(g, tmpl)
        return g

    def finish_all(f: Fit) -> list[Fit]:
        """A free affine; with labels to choose, also one held near the similarity
        (smooth, near-elliptic outlines let a free affine slide)."""
        out = [finish(f)]
        if rank is not None and affine_prior > 0:
            out.append(finish(f, affine_prior))
        return out

    def stage1(A0, m, start, n_iter, a_s=None, a_t=None) -> Fit:
        r = one(A0, "similarity", n_iter)
        f = Fit(r.affine, r, m, start)
        if a_s is not None:
            f.anchors_section, f.anchors_atlas = a_s, a_t
        f.score = _score(f, tmpl)
        return f

    probe = outline.points[:: max(1, len(outline.points) // 200)]

    def distinct(fs_: list[Fit]) -> list[Fit]:
        """``fs_`` without the fits that place the outline where an earlier one does
        (within 2 pixels): starts that converged to the same solution finish the same."""
        out, placed = [], []
        for f in fs_:
            P = apply_affine(f.icp.affine, probe)
            if any(np.abs(P - Q).max() < floor for Q in placed):
                continue
            out.append(f)
            placed.append(P)
        return out

    def best_finished(cands: list[Fit], prefer_unmirrored: bool) -> list[Fit]:
        chosen = [min(cands, key=lambda f: f.score)]
        if rank is not None:
            # region labels can tell apart fits the outline cannot: finish the
            # near-best ones too and let the labels choose among them
            lim = 1.5 * chosen[0].score
            chosen += [f for f in sorted(cands, key=lambda f: f.score)[1:3] if f.score <= lim]
        if prefer_unmirrored:
            un = [f for f in cands if not f.mirrored]
            if un and chosen[0].mirrored:
                chosen.append(min(un, key=lambda f: f.score))
        return [g for f in distinct(chosen) for g in finish_all(f)]

    sub = cells
    if len(sub) > 5000:
        sub = cells[np.random.default_rng(0).choice(len(cells), 5000, replace=False)]
    fits: list[Fit] = []
    # expected cost of a good fit: a fraction of the outlines' blur and pixel size
    expected = (0.25 * tmpl.outline.blur_um + 0.25 * res) / tmpl.size_um
    coronal_full = tmpl.plane == "coronal" and tmpl.hemisphere == "both"
    prefer_un = coronal_full and mirrored is None
    if reuse is not None:
        fits = list(reuse)
    elif midline is not None:
        if mirrored is not None:
            mirrors = [bool(mirrored)]
        elif tmpl.plane == "coronal" and tmpl.hemisphere != "both":
            # the tissue lies on the template's side of the cut edge
            side = float(np.median(MidlineFrame(midline[0], midline[1]).to_canonical(sub)[:, 0]))
            want = -1.0 if tmpl.hemisphere == "left" else 1.0
            mirrors = [bool(side * want < 0)]
        elif coronal_full:
            # a full coronal section of a left-right symmetric brain looks the same
            # mirrored: the shape cannot tell, so the unmirrored reading is taken
            # (pass mirrored=True for a section known to be flipped)
            mirrors = [False]
        else:
            mirrors = [False, True]
        anchors_t = outline_anchors(tmpl.outline.contours, tmpl.frame, midline_ends=coronal_full)[
            "points"
        ]
        cands = []
        frames = []
        for m in mirrors:
            fs = MidlineFrame(midline[0], midline[1], mirrored=m)
            anchors_s = outline_anchors(outline.contours, fs, midline_ends=coronal_full)["points"]
            n = min(len(anchors_s), len(anchors_t))
            src, dst, w = anchors_s[:n], anchors_t[:n], np.ones(n)
            if landmarks is not None and len(landmarks[0]):
                src = np.vstack([src, landmarks[0]])
                dst = np.vstack([dst, landmarks[1]])
                w = np.concatenate([w, landmarks[2]])
            A_anchor = fit_affine(src, dst, w)
            starts = [("anchors", A_anchor), ("moments", _moment_init(sub, fs, tmpl))]
            for start, A0 in starts:
                cands.append(stage1(A0, m, start, 12, anchors_s[:4], anchors_t[:4]))
            frames.append((m, fs, anchors_s))
        if chamfer and (
            chamfer_always
            or min(f.score for f in cands) > CHAMFER_SCORE * max(POOR_SCORE, expected)
        ):
            # the anchor and moment starts do not fit well (torn tissue, a damaged
            # outline): add the chamfer search's starts
            for m, fs, anchors_s in frames:
                for i, A0 in enumerate(chamfer_starts(outline, tmpl, fs)):
                    cands.append(stage1(A0, m, f"chamfer{i}", 12, anchors_s[:4], anchors_t[:4]))
        fits += cands
        # continue the most promising starts only
        ranked = sorted(cands, key=lambda f: f.score)
        keep = distinct([f for f in ranked[:2] if f.score <= 1.5 * ranked[0].score])
        if prefer_un and all(f.mirrored for f in keep):
            un = [f for f in cands if not f.mirrored]
            if un:
                keep.append(min(un, key=lambda f: f.score))
        cont = []
        for f in keep:
            g = stage1(f.icp.affine, f.mirrored, f.start, 40, f.anchors_section, f.anchors_atlas)
            g.icp.cost_history = f.icp.cost_history + g.icp.cost_history
            g.icp.iterations += f.icp.iterations
            cont.append(g)
        fits += cont
        kept = {id(f) for f in keep}
        fits += best_finished(cont + [f for f in cands if id(f) not in kept], prefer_un)
    best = (
        _pick([f for f in fits if f.icp.model_stage == "affine"], prefer_un, rank) if fits else None
    )
    poor = (
        best is None
        or best.score > max(POOR_SCORE, 1.6 * expected)
        or _plausibility(best.affine) < 0.5
    )
    # without a midline there is no other start: the sweep runs whatever ``sweep`` says
    swept = any(f.start.startswith("rotation") for f in fits)
    if not swept and (sweep == "always" or (sweep == "auto" and poor) or best is None):
        mirrors = [bool(mirrored)] if mirrored is not None else [False, True]
        c_s = sub.mean(0)
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
                cands.append(stage1(A0, m, f"rotation{30 * k}", 30))
        fits += cands
        top = sorted(cands, key=lambda f: f.score)[:2]
        if prefer_un and all(f.mirrored for f in top):
            top.append(min((f for f in cands if not f.mirrored), key=lambda f: f.score))
        fits += [g for f in top for g in finish_all(f)]
        best = _pick([f for f in fits if f.icp.model_stage == "affine"], prefer_un, rank)
    return best, fits


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
    To = _frame_from(tmpl.frame)
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
        out.append(compose(To, C, _frame_to(fs)))
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
