"""In-plane fit with the cells' region labels as interior landmarks.

Each labelled cell is pulled to the nearest pixel of its own region in the template
slice (cells already inside their region stay where they are), the section outline
points to the nearest template outline point; the affine minimising the trimmed sum of
squared distances is solved, and the two steps repeat. Unlike the outline alone, this
sees where the region boundaries lie inside the tissue, so (a) the in-plane fit follows
the interior and (b) the remaining label cost tells planes (position, cutting angle)
apart: a wrong plane cannot be fitted well inside and outside at once.

:class:`LabelTemplate` holds, for one template slice, the division map and, per
division, the index of the nearest pixel of that division (a Euclidean distance
transform with indices), at a working pixel of ``pixel_um``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .affine import apply_affine, fit_affine

__all__ = ["LabelTemplate", "label_cost", "label_fit", "make_label_template"]


@dataclass
class LabelTemplate:
    div: np.ndarray  # (H, W) division index per working pixel (-1 none)
    pixel_um: float
    near: dict  # division -> (2, H, W) int32 row, col of the nearest pixel of it
    dist: dict  # division -> (H, W) float32 distance (um) to it

    def lookup(self, xy: np.ndarray, cell_div: np.ndarray):
        """Nearest own-region point (n, 2) um and distance (n,) for mapped cells;
        cells whose division is absent from the slice get NaN."""
        H, W = self.div.shape
        px = self.pixel_um
        col = np.floor(xy[:, 0] / px).astype(np.int64)
        row = np.floor(xy[:, 1] / px).astype(np.int64)
        outside = (col < 0) | (col >= W) | (row < 0) | (row >= H)
        np.clip(col, 0, W - 1, out=col)
        np.clip(row, 0, H - 1, out=row)
        tgt = np.full_like(xy, np.nan)
        d = np.full(len(xy), np.nan)
        for k, ind in self.near.items():
            sel = np.flatnonzero(cell_div == k)
            if len(sel) == 0:
                continue
            r, c = row[sel], col[sel]
            inside = (self.div[r, c] == k) & ~outside[sel]
            t = np.column_stack([(ind[1][r, c] + 0.5) * px, (ind[0][r, c] + 0.5) * px])
            t[inside] = xy[sel[inside]]
            tgt[sel] = t
            d[sel] = np.linalg.norm(t - xy[sel], axis=1)
        return tgt, d


def make_label_template(atlas, sl, pixel_um: float | None = None, divisions=None) -> LabelTemplate:
    """:class:`LabelTemplate` of an :class:`~napari_brainatlas.atlas.AtlasSlice`."""
    from .metrics import division_index

    cache = getattr(sl, "_label_tmpl", None)
    if cache is not None and (pixel_um is None or cache.pixel_um == pixel_um):
        return cache
    res = float(sl.resolution_um)
    f = max(1, round((pixel_um or res) / res))
    labels = sl.labels[::f, ::f] if f > 1 else sl.labels
    div, _ = division_index(atlas, labels, divisions)
    px = res * f
    near, dist = {}, {}
    for k in np.unique(div):
        if k < 0:
            continue
        d, ind = ndi.distance_transform_edt(div != k, return_indices=True)
        near[int(k)] = ind.astype(np.int32)
        dist[int(k)] = (d * px).astype(np.float32)
    lt = LabelTemplate(div=div.astype(np.int16), pixel_um=px, near=near, dist=dist)
    try:
        sl._label_tmpl = lt
    except AttributeError:  # pragma: no cover - frozen slice
        pass
    return lt


def label_cost(lt: LabelTemplate, xy: np.ndarray, cell_div: np.ndarray, cap_um: float = 300.0) -> float:
    """Mean distance (um, each capped at ``cap_um``) of the mapped cells to their own
    region; cells with an unknown label or a division absent from the slice count the cap."""
    _, d = lt.lookup(xy, cell_div)
    d = np.where(np.isfinite(d), np.minimum(d, cap_um), cap_um)
    return float(d.mean())


def label_fit(
    A0: np.ndarray,
    cells: np.ndarray,
    cell_div: np.ndarray,
    lt: LabelTemplate,
    outline_pts: np.ndarray | None = None,
    tmpl_tree=None,
    outline_weight: float = 0.5,
    n_iter: int = 15,
    trim_q: float = 0.85,
    cap_um: float = 400.0,
    tol_um: float = 0.5,
    inside_weight: float = 1.0,
) -> tuple[np.ndarray, dict]:
    """Refine the section -> atlas slice affine ``A0`` with region labels.

    Parameters
    ----------
    cells : (n, 2) section um (a subsample is plenty); cell_div : (n,) division index
        of each cell's label (-1 unknown, ignored).
    outline_pts, tmpl_tree : section outline points (section um) and a KD-tree of the
        template outline points; given, they are matched too, with ``outline_weight``
        times the total weight of the cells.
    trim_q : cells beyond this quantile of the distance (and beyond ``cap_um``) are
        dropped in each step (mislabelled cells, torn or warped tissue).

    Returns (affine, info) with info = dict(cost_um (mean capped label distance at the
    end), iterations, inside (fraction of labelled cells inside their region)).
    """
    ok = np.flatnonzero(np.asarray(cell_div) >= 0)
    c = np.asarray(cells, dtype=float)[ok]
    cd = np.asarray(cell_div)[ok]
    A = np.asarray(A0, dtype=float).copy()
    floor = 1.5 * lt.pixel_um
    it = 0
    for it in range(1, n_iter + 1):
        P = apply_affine(A, c)
        tgt, d = lt.lookup(P, cd)
        good = np.isfinite(d)
        if good.sum() < 10:
            break
        thr = max(float(np.quantile(d[good], trim_q)), floor)
        keep = good & (d <= min(thr, cap_um) + 1e-9)
        src, dst = c[keep], tgt[keep]
        w = np.where(d[keep] > 0, 1.0, inside_weight)
        if outline_pts is not None and tmpl_tree is not None and len(outline_pts):
            Q = apply_affine(A, outline_pts)
            do, j = tmpl_tree.query(Q)
            thr_o = max(2.5 * float(np.median(do)), floor)
            ko = do <= thr_o
            if ko.sum() >= 3:
                src = np.vstack([src, outline_pts[ko]])
                dst = np.vstack([dst, tmpl_tree.data[j[ko]]])
                w = np.concatenate([w, np.full(int(ko.sum()), outline_weight * len(w) / ko.sum())])
        if w.sum() <= 0:
            break
        A_new = fit_affine(src, dst, w)
        move = float(np.abs(apply_affine(A_new, c[:200]) - apply_affine(A, c[:200])).max()) if len(c) else 0.0
        A = A_new
        if move < tol_um:
            break
    P = apply_affine(A, c)
    _, d = lt.lookup(P, cd)
    dd = np.where(np.isfinite(d), np.minimum(d, cap_um), cap_um)
    return A, {"cost_um": float(dd.mean()), "iterations": it, "inside": float(np.mean(dd == 0)),
               "distances": dd}


def plane_score(A: np.ndarray, info: dict, outline_pts: np.ndarray, tmpl, outline_scale_um: float = 0.0,
                cap_um: float = 150.0, outline_weight: float = 1.0) -> tuple[float, dict]:
    """Joint score of a fitted plane (higher better, um): minus the mean distance of the
    labelled cells to their own region plus ``outline_weight`` times the outlines' mean
    symmetric distance, every distance capped at ``cap_um`` (mislabelled cells and torn
    tissue cost at most the cap). Continuous in the plane, unlike a count of cells
    inside their region. ``outline_scale_um`` is unused (kept for callers).
    Returns (score, parts)."""
    from scipy.spatial import cKDTree

    Q = apply_affine(A, outline_pts)
    d1, _ = tmpl.tree.query(Q)
    d2, _ = cKDTree(Q).query(tmpl.outline.points)
    od = 0.5 * (float(np.minimum(d1, cap_um).mean()) + float(np.minimum(d2, cap_um).mean()))
    ld = float(np.minimum(info["distances"], cap_um).mean())
    return float(-(ld + outline_weight * od)), {"inside": float(info["inside"]), "outline_um": od,
                                                "label_um": ld}


def search_plane(
    template_at,
    atlas,
    cells: np.ndarray,
    cell_div: np.ndarray,
    outline_pts: np.ndarray,
    A0: np.ndarray,
    position_um: float,
    angles_deg=(0.0, 0.0),
    bounds=None,
    search_um: float = 300.0,
    max_angle_deg: float = 5.0,
    steps=((50.0, 1.5), (25.0, 0.75), (12.5, 0.4)),
    proposals=(),
    max_evals: int = 60,
    neighbours: bool = False,
    label_pixel_um: float | None = None,
    propose=None,
    cancel=None,
) -> dict:
    """Joint search of the cutting plane (position, two angles) and the in-plane fit.

    Every candidate plane gets its own in-plane fit (:func:`label_fit`, started from the
    best fit so far and, where the position changes, also from an outline ICP refit to
    the new slice) and is scored by :func:`plane_score`. The search starts from the best
    of the given plane, two positions at half ``search_um`` either side and the
    ``proposals`` ((position, (a_x, a_y)) pairs, e.g. from
    :func:`.position.refine_plane`), then climbs by a pattern search (the best of the six
    neighbours along position and the two angles; the steps halve when none is better;
    ``propose`` is asked for a plane whenever it stalls), within ``max_evals`` planes.

    Parameters
    ----------
    template_at : ``template_at(position_um, angles) -> Template`` (see :mod:`.core`).
    cells, cell_div : a subsample of the section's cells (section um) and their division
        index; outline_pts : section outline points (section um).
    bounds : (lo, hi) of the position axis; the search stays within ``search_um`` of
        ``position_um`` and within ``max_angle_deg`` on each angle.
    propose : optional ``propose(affine, position_um, angles) -> (position_um, angles)``
        (e.g. :func:`.position.refine_plane` on the cells placed by ``affine``); called
        whenever the pattern search stalls, its plane is tried too (escapes ridges where
        position and angle trade off).

    Returns dict(position_um, angles_deg, affine, score, inside, outline_um, evals,
    neighbours (scores of the final plane's immediate neighbours), start_score).
    """
    p0 = float(position_um)
    lo, hi = bounds if bounds is not None else (-np.inf, np.inf)
    cache: dict = {}

    def key(p, a):
        return (round(p, 3), round(a[0], 3), round(a[1], 3))

    def evaluate(p, a, A_init, refit=False):
        k = key(p, a)
        if k in cache:
            return cache[k]
        if cancel is not None and cancel():
            from .icp import RegistrationCancelled

            raise RegistrationCancelled("registration cancelled")
        tmpl = template_at(p, a)
        lt = make_label_template(atlas, tmpl.slice, label_pixel_um)
        inits = [A_init]
        if refit:
            # a new position changes the slice's size and shape: also start from the
            # outline fitted to this slice (ICP from the warm start)
            from .icp import icp_affine

            r = icp_affine(outline_pts, tmpl.outline.points, A_init, max_iter=15, floor_um=2 * tmpl.outline.pixel_um,
                           tgt_tree=tmpl.tree, tgt_normals=tmpl.outline.normals, model="affine",
                           prior_weight=0.01)
            inits.append(r.affine)
        best = None
        for A1 in inits:
            A, info = label_fit(A1, cells, cell_div, lt, outline_pts, tmpl.tree, n_iter=20)
            sc, parts = plane_score(A, info, outline_pts, tmpl)
            if best is None or sc > best[0]:
                best = (sc, A, parts)
        cache[k] = best
        return cache[k]

    def valid(p, a):
        return (abs(p - p0) <= search_um + 1e-6 and lo <= p < hi
                and abs(a[0]) <= max_angle_deg + 1e-6 and abs(a[1]) <= max_angle_deg + 1e-6)

    cur_p, cur_a = p0, (float(angles_deg[0]), float(angles_deg[1]))
    cur = evaluate(cur_p, cur_a, A0)
    start_score = cur[0]
    # positions around the start, each with its own outline refit: the label term is
    # weak where few regions are cut (far-lateral sagittal sections)
    for p in (p0 - 0.5 * search_um, p0 + 0.5 * search_um):
        if valid(p, cur_a):
            r = evaluate(p, cur_a, A0, refit=True)
            if r[0] > cur[0] + 0.01:
                cur_p, cur = p, r
    for p, a in proposals:
        p = float(np.clip(p, max(lo, p0 - search_um), min(hi - 1e-6, p0 + search_um)))
        a = tuple(float(np.clip(v, -max_angle_deg, max_angle_deg)) for v in a)
        r = evaluate(p, a, cur[1], refit=True)
        if r[0] > cur[0]:
            cur_p, cur_a, cur = p, a, r
    def clip_plane(p, a):
        p = float(np.clip(p, max(lo, p0 - search_um), min(hi - 1e-6, p0 + search_um)))
        return p, tuple(float(np.clip(v, -max_angle_deg, max_angle_deg)) for v in a)

    proposed = set()
    for dp, da in steps:
        moved = True
        while moved and len(cache) < max_evals:
            moved = False
            # all six neighbours, then the best of them (first-improvement wanders off
            # along noisy ridges)
            step_best = None
            for dim in range(3):
                for sgn in (1.0, -1.0):
                    p, a = cur_p, list(cur_a)
                    if dim == 0:
                        p = cur_p + sgn * dp
                    else:
                        a[dim - 1] += sgn * da
                    a = tuple(a)
                    if not valid(p, a):
                        continue
                    r = evaluate(p, a, cur[1], refit=dim == 0)
                    if r[0] > cur[0] + 0.01 and (step_best is None or r[0] > step_best[2][0]):
                        step_best = (p, a, r)
            if step_best is not None:
                cur_p, cur_a, cur = step_best
                moved = True
            if not moved and propose is not None and key(cur_p, cur_a) not in proposed:
                # stalled: ask for a plane from the cells placed by the current fit
                proposed.add(key(cur_p, cur_a))
                p, a = clip_plane(*propose(cur[1], cur_p, cur_a))
                r = evaluate(p, a, cur[1], refit=True)
                if r[0] > cur[0] + 0.01:
                    cur_p, cur_a, cur = p, a, r
                    moved = True
    # the final plane's neighbours at the finest step: how sharp is the optimum?
    dp, da = steps[-1]
    neigh = []
    for dim in range(3 if neighbours else 0):
        for sgn in (1.0, -1.0):
            p, a = cur_p, list(cur_a)
            if dim == 0:
                p += sgn * 4 * dp
            else:
                a[dim - 1] += sgn * 4 * da
            if lo <= p < hi:
                neigh.append(evaluate(p, tuple(a), cur[1])[0])
    return {
        "position_um": float(cur_p), "angles_deg": (float(cur_a[0]), float(cur_a[1])),
        "affine": cur[1], "score": float(cur[0]), "inside": cur[2]["inside"],
        "outline_um": cur[2]["outline_um"], "label_um": cur[2].get("label_um", float("nan")),
        "evals": len(cache),
        "neighbours": neigh, "start_score": float(start_score),
    }


def label_chamfer_starts(cells: np.ndarray, cell_div: np.ndarray, lt: LabelTemplate, tmpl, fs,
                         area_scale: float, n_best: int = 2, rot_deg=(-8, -4, 0, 4, 8),
                         scale_range=(0.75, 1.3), n_scale: int = 9, shift_frac: float = 0.3,
                         n_shift: int = 17, trunc_um: float = 300.0, max_cells: int = 400) -> list:
    """Global similarity starts from the region labels (no outline needed).

    Like :func:`.core.chamfer_starts` but each labelled cell is scored by its distance to
    its own region in the template (capped at ``trunc_um``): in the midline frames
    (``fs`` section, ``tmpl.frame`` template) every rotation (``rot_deg`` around the
    midline), scale (around ``area_scale``) and shift is tried. Returns up to ``n_best``
    (3, 3) section -> atlas affines, best first, with their costs.
    """
    from .affine import compose
    from .core import _frame_from, _frame_to

    ok = np.flatnonzero(np.asarray(cell_div) >= 0)
    if len(ok) < 20:
        return []
    if len(ok) > max_cells:
        ok = np.random.default_rng(2).choice(ok, max_cells, replace=False)
    c = np.asarray(cells, dtype=float)[ok]
    cd = np.asarray(cell_div)[ok]
    H, W = lt.div.shape
    px = lt.pixel_um
    # distance of every cell's own region, stacked: (n, H, W) would be big; gather per
    # cell from its division's map instead
    maps = {k: np.minimum(v, trunc_um) for k, v in lt.dist.items()}
    ab_s = fs.to_canonical(c)
    cen_s = ab_s.mean(0)
    ab_s = ab_s - cen_s
    rows, cols = np.nonzero(tmpl.outline.mask)
    res_t = tmpl.outline.pixel_um
    cen_t = tmpl.frame.to_canonical(np.column_stack([(cols + 0.5) * res_t, (rows + 0.5) * res_t])).mean(0)
    size = tmpl.size_um
    scales = area_scale * np.geomspace(scale_range[0], scale_range[1], n_scale)
    shifts = np.linspace(-shift_frac * size, shift_frac * size, n_shift)
    sa, sb = np.meshgrid(shifts, shifts, indexing="ij")
    sh = np.column_stack([sa.ravel(), sb.ravel()])
    dxy = sh[:, :1] * tmpl.frame.v + sh[:, 1:2] * tmpl.frame.u
    groups = [(k, np.flatnonzero(cd == k)) for k in np.unique(cd)]
    results = []
    for th in np.deg2rad(np.asarray(rot_deg, dtype=float)):
        cth, sth = np.cos(th), np.sin(th)
        R = np.array([[cth, -sth], [sth, cth]])
        for sc in scales:
            xy = tmpl.frame.from_canonical((ab_s @ R.T) * sc + cen_t)
            X = xy[None, :, 0] + dxy[:, None, 0]
            Y = xy[None, :, 1] + dxy[:, None, 1]
            ci = np.clip(np.floor(X / px).astype(np.int64), 0, W - 1)
            ri = np.clip(np.floor(Y / px).astype(np.int64), 0, H - 1)
            out_grid = (X < 0) | (X >= W * px) | (Y < 0) | (Y >= H * px)
            cost = np.full(X.shape, trunc_um, dtype=np.float32)
            for k, sel in groups:
                m = maps.get(int(k))
                if m is None:
                    continue
                cost[:, sel] = m[ri[:, sel], ci[:, sel]]
            cost[out_grid] = trunc_um
            tot = cost.mean(1)
            j = int(np.argmin(tot))
            results.append((float(tot[j]), th, sc, sh[j]))
    results.sort(key=lambda t: t[0])
    To = _frame_from(tmpl.frame)
    out = []
    for cost, th, sc, shv in results[:n_best]:
        cth, sth = np.cos(th), np.sin(th)
        C = np.eye(3)
        C[:2, :2] = sc * np.array([[cth, -sth], [sth, cth]])
        C[:2, 2] = cen_t + shv - C[:2, :2] @ cen_s
        out.append((compose(To, C, _frame_to(fs)), cost))
    return out
