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

from .._errors import BrainAtlasInputError
from .affine import apply_affine, fit_affine

__all__ = ["LabelTemplate", "label_cost", "label_fit", "make_label_template"]


@dataclass
class LabelTemplate:
    div: np.ndarray  # (h, w) division index per working pixel (-1 none), cropped
    pixel_um: float
    near: dict  # division -> (2, h_k, w_k) int32 row, col (cropped grid) of its nearest
    #             pixel, over the division's own box (see ``boxes``)
    origin: tuple = (0, 0)  # (row, col) of the crop's first pixel in the full slice grid
    boxes: dict | None = None  # division -> (row0, col0) of its box in the cropped grid
    edges: dict | None = None  # division -> (m, 2) um (slice frame) of its edge pixels
    _dist: dict | None = None

    def _box(self, k):
        return (0, 0) if self.boxes is None else self.boxes[k]

    @property
    def dist(self) -> dict:
        """division -> (h, w) float32 distance (um) to it (computed on first use)."""
        if self._dist is None:
            self._dist = {}
            for k, ind in self.near.items():
                b0, b1 = self._box(k)
                rr, cc = np.indices(self.div.shape)
                ri = np.clip(rr - b0, 0, ind.shape[1] - 1)
                ci = np.clip(cc - b1, 0, ind.shape[2] - 1)
                self._dist[k] = (
                    np.hypot(ind[0][ri, ci] - rr, ind[1][ri, ci] - cc) * self.pixel_um
                ).astype(np.float32)
        return self._dist

    def groups(self, cell_div: np.ndarray) -> list:
        """[(division, indices of the cells with it)] for the divisions of this slice."""
        cell_div = np.asarray(cell_div)
        return [(k, sel) for k in self.near if len(sel := np.flatnonzero(cell_div == k))]

    def _flat(self):
        """The per-division nearest-pixel maps as flat arrays with a table by division
        (one gather for all cells instead of one pass per division)."""
        f = getattr(self, "_flat_cache", None)
        if f is None:
            ks = sorted(self.near)
            kmax = max(ks) if ks else 0
            tab = np.full(kmax + 2, -1, dtype=np.int64)
            b0 = np.zeros(len(ks), dtype=np.int64)
            b1 = np.zeros(len(ks), dtype=np.int64)
            hh = np.zeros(len(ks), dtype=np.int64)
            ww = np.zeros(len(ks), dtype=np.int64)
            off = np.zeros(len(ks), dtype=np.int64)
            fr, fc = [], []
            o = 0
            for j, k in enumerate(ks):
                ind = self.near[k]
                tab[k] = j
                b0[j], b1[j] = self._box(k)
                hh[j], ww[j] = ind.shape[1], ind.shape[2]
                off[j] = o
                o += ind.shape[1] * ind.shape[2]
                fr.append(ind[0].ravel())
                fc.append(ind[1].ravel())
            f = (
                tab,
                b0,
                b1,
                hh,
                ww,
                off,
                np.concatenate(fr) if fr else np.zeros(0, np.int32),
                np.concatenate(fc) if fc else np.zeros(0, np.int32),
            )
            self._flat_cache = f
        return f

    def lookup(self, xy: np.ndarray, cell_div: np.ndarray, groups=None):
        """Nearest own-region point (n, 2) um and distance (n,) for mapped cells;
        cells whose division is absent from the slice (or unknown, < 0) get NaN.
        ``groups`` is accepted for compatibility (unused)."""
        H, W = self.div.shape
        px = self.pixel_um
        r0, c0 = self.origin
        tab, b0, b1, hh, ww, off, fr, fc = self._flat()
        cd = np.asarray(cell_div).astype(np.int64, copy=False)
        col = np.floor(xy[:, 0] / px).astype(np.int64) - c0
        row = np.floor(xy[:, 1] / px).astype(np.int64) - r0
        outside = (col < 0) | (col >= W) | (row < 0) | (row >= H)
        np.clip(col, 0, W - 1, out=col)
        np.clip(row, 0, H - 1, out=row)
        j = tab[np.clip(cd, -1, len(tab) - 1)]  # < 0 or > max: the padding slot (-1)
        valid = (cd >= 0) & (j >= 0)
        jj = np.where(valid, j, 0)
        if len(hh) == 0:
            valid[:] = False
            return np.full_like(xy, np.nan), np.full(len(xy), np.nan)
        rb = np.minimum(np.maximum(row - b0[jj], 0), hh[jj] - 1)
        cb = np.minimum(np.maximum(col - b1[jj], 0), ww[jj] - 1)
        fi = off[jj] + rb * ww[jj] + cb
        tgt = np.empty_like(xy, dtype=float)
        tgt[:, 0] = (fc[fi] + (c0 + 0.5)) * px
        tgt[:, 1] = (fr[fi] + (r0 + 0.5)) * px
        inside = valid & ~outside & (self.div[row, col] == cd)
        tgt[inside] = xy[inside]
        d = np.sqrt(((tgt - xy) ** 2).sum(1))
        tgt[~valid] = np.nan
        d[~valid] = np.nan
        return tgt, d


def make_label_template(
    atlas,
    sl,
    pixel_um: float | None = None,
    divisions=None,
    margin_um: float = 400.0,
    max_edges: int = 2500,
) -> LabelTemplate:
    """:class:`LabelTemplate` of an :class:`~napari_brainatlas.atlas.AtlasSlice`,
    cropped to the tissue plus ``margin_um`` (cells mapped beyond the crop are pulled
    to the nearest own-region pixel of the crop's edge)."""
    from .metrics import division_index

    attr = "_label_tmpl" if max_edges == 2500 else f"_label_tmpl_{int(max_edges)}"
    cache = getattr(sl, attr, None)
    if cache is not None and (pixel_um is None or cache.pixel_um == pixel_um):
        return cache
    res = float(sl.resolution_um)
    f = max(1, round((pixel_um or res) / res))
    labels = sl.labels[::f, ::f] if f > 1 else sl.labels
    px = res * f
    rows = np.flatnonzero((labels > 0).any(1))
    cols = np.flatnonzero((labels > 0).any(0))
    if len(rows):
        m = int(np.ceil(margin_um / px))
        r0, r1 = max(rows[0] - m, 0), min(rows[-1] + m + 1, labels.shape[0])
        c0, c1 = max(cols[0] - m, 0), min(cols[-1] + m + 1, labels.shape[1])
        labels = labels[r0:r1, c0:c1]
    else:
        r0 = c0 = 0
    div, _ = division_index(atlas, labels, divisions)
    near, boxes, edges = {}, {}, {}
    m = int(np.ceil(margin_um / px))
    H, W = div.shape
    # edge pixels: a 4-neighbour (or the grid's border) of another division
    edge = np.zeros(div.shape, dtype=bool)
    edge[0, :] = edge[-1, :] = True
    edge[:, 0] = edge[:, -1] = True
    dv = div[1:, :] != div[:-1, :]
    edge[1:, :] |= dv
    edge[:-1, :] |= dv
    dh = div[:, 1:] != div[:, :-1]
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    for k in np.unique(div):
        if k < 0:
            continue
        # each division over its own box + margin: cells farther away are beyond every
        # cap and trim (their target is then the nearest pixel to the box edge)
        mk = div == k
        rr = np.flatnonzero(mk.any(1))
        cc = np.flatnonzero(mk.any(0))
        a0, a1 = max(rr[0] - m, 0), min(rr[-1] + m + 1, H)
        b0, b1 = max(cc[0] - m, 0), min(cc[-1] + m + 1, W)
        sub = ~mk[a0:a1, b0:b1]
        ind = np.empty((2,) + sub.shape, dtype=np.int32)
        ndi.distance_transform_edt(sub, return_distances=False, return_indices=True, indices=ind)
        ind[0] += a0
        ind[1] += b0
        near[int(k)] = ind
        boxes[int(k)] = (int(a0), int(b0))
        er, ec = np.nonzero(mk & edge)
        edges[int(k)] = np.column_stack([(ec + c0 + 0.5) * px, (er + r0 + 0.5) * px])
    # at most ~max_edges edge points in all (every k-th of each division's)
    n_e = sum(len(v) for v in edges.values())
    stride = max(1, int(np.ceil(n_e / max(max_edges, 1))))
    edges = {k: v[::stride] for k, v in edges.items()}
    lt = LabelTemplate(
        div=div.astype(np.int16),
        pixel_um=px,
        near=near,
        origin=(int(r0), int(c0)),
        boxes=boxes,
        edges=edges,
    )
    try:
        setattr(sl, attr, lt)
    except AttributeError:  # pragma: no cover - frozen slice
        pass
    return lt


def label_cost(
    lt: LabelTemplate, xy: np.ndarray, cell_div: np.ndarray, cap_um: float = 300.0
) -> float:
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
    trim_q: float | None = None,
    cap_um: float = 400.0,
    tol_um: float = 0.5,
    inside_weight: float = 1.0,
    reverse_weight: float = 0.0,
    reverse_trim_q: float | None = None,
    accelerate: bool | None = None,
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
        dropped in each step (mislabelled cells, torn or warped tissue); default
        :data:`TRIM_Q`. ``reverse_trim_q``: the same for the reverse pairs (default
        :data:`REVERSE_TRIM_Q`): template edges of torn-away tissue have no cells and
        would pull the fit into the gap.
    reverse_weight : weight (times the cells' total) of the reverse pull: every edge
        pixel of each template division draws the nearest mapped cell of that division
        onto it. A cell inside its region costs nothing in the forward direction, so
        alone that leaves a plateau of equally good fits (all cells inside) on which the
        fit stops wherever it entered; the reverse term asks the cells to fill their
        regions up to the edges, which centres the fit on the plateau.

    Returns (affine, info) with info = dict(cost_um (mean capped label distance at the
    end), iterations, inside (fraction of labelled cells inside their region),
    distances, reverse (mean capped distance of the template edge pixels to the nearest
    cell of their division, over the lowest :data:`SCORE_TRIM_Q` of them, see
    :func:`reverse_cost`; NaN without edges)).
    """
    trim_q = TRIM_Q if trim_q is None else float(trim_q)
    reverse_trim_q = REVERSE_TRIM_Q if reverse_trim_q is None else float(reverse_trim_q)
    accelerate = ACCELERATE if accelerate is None else bool(accelerate)
    ok = np.flatnonzero(np.asarray(cell_div) >= 0)
    c = np.asarray(cells, dtype=float)[ok]
    cd = np.asarray(cell_div)[ok]
    A = np.asarray(A0, dtype=float).copy()
    groups = lt.groups(cd)
    floor = 1.5 * lt.pixel_um
    use_outline = outline_pts is not None and tmpl_tree is not None and len(outline_pts)

    def pairs(A):
        """The matched pairs at ``A`` (section points, template points, weights) and
        their weighted mean squared distance (um^2); None when too few cells match."""
        P = apply_affine(A, c)
        tgt, d = lt.lookup(P, cd, groups)
        good = np.isfinite(d)
        if good.sum() < 10:
            return None
        thr = max(float(np.quantile(d[good], trim_q)), floor)
        keep = good & (d <= min(thr, cap_um) + 1e-9)
        src, dst = c[keep], tgt[keep]
        w = np.where(d[keep] > 0, 1.0, inside_weight)
        n_fwd = len(w)
        if reverse_weight > 0 and lt.edges:
            rs, rd = _reverse_pairs(P, c, groups, lt, reverse_trim_q, cap_um, floor)
            if len(rs) >= 3:
                src = np.vstack([src, rs])
                dst = np.vstack([dst, rd])
                w = np.concatenate([w, np.full(len(rs), reverse_weight * n_fwd / len(rs))])
        if use_outline:
            Q = apply_affine(A, outline_pts)
            do, j = tmpl_tree.query(Q)
            thr_o = max(2.5 * float(np.median(do)), floor)
            ko = do <= thr_o
            if ko.sum() >= 3:
                src = np.vstack([src, outline_pts[ko]])
                dst = np.vstack([dst, tmpl_tree.data[j[ko]]])
                w = np.concatenate([w, np.full(int(ko.sum()), outline_weight * n_fwd / ko.sum())])
        if w.sum() <= 0:
            return None
        r2 = ((apply_affine(A, src) - dst) ** 2).sum(1)
        return src, dst, w, float((w * r2).sum() / w.sum())

    # Anderson acceleration (Walker & Ni 2011; for ICP: Pavlov et al. 2018) of the
    # fixed-point map A -> fit(pairs(A)), in the coordinates of three reference points
    # (the affine's images of the cells' centre and two points one spread away: six
    # numbers, all um). An accelerated step is kept only if its pairs fit no worse than
    # the last accepted ones; else the plain step is taken and the history cleared.
    ref = None
    if len(c):
        sd = float(max(c.std(0).mean(), 1.0))
        mu = c.mean(0)
        ref = np.array([mu, mu + [sd, 0.0], mu + [0.0, sd]])
    hist_x, hist_g = [], []
    e_acc, A_plain = np.inf, None
    cur = pairs(A)
    it = 0
    for it in range(1, n_iter + 1):
        if cur is None:
            break
        src, dst, w, e = cur
        if accelerate and A_plain is not None and e > e_acc * (1 + 1e-9):
            # the accelerated step fitted worse: take the plain one instead
            A, cur = A_plain, pairs(A_plain)
            hist_x, hist_g = [], []
            if cur is None:
                break
            src, dst, w, e = cur
        e_acc = e
        G = fit_affine(src, dst, w)
        A_plain = None
        A_new = G
        if accelerate and ref is not None:
            x = apply_affine(A, ref).ravel()
            g = apply_affine(G, ref).ravel()
            hist_x.append(x)
            hist_g.append(g)
            if len(hist_x) > ANDERSON_M + 1:
                hist_x.pop(0)
                hist_g.pop(0)
            if len(hist_x) >= 2:
                F = np.array(hist_g) - np.array(hist_x)  # residuals g - x, oldest first
                dF = np.diff(F, axis=0).T  # (6, m)
                dG = np.diff(np.array(hist_g), axis=0).T
                gam = np.linalg.lstsq(dF, F[-1], rcond=None)[0]
                xa = g - dG @ gam
                if np.all(np.isfinite(xa)):
                    A_new = fit_affine(ref, xa.reshape(3, 2))
                    A_plain = G
        move = (
            float(np.abs(apply_affine(A_new, c[:200]) - apply_affine(A, c[:200])).max())
            if len(c)
            else 0.0
        )
        A = A_new
        if move < tol_um:
            break
        if it < n_iter:
            cur = pairs(A)
        elif A_plain is not None:
            # out of iterations on an accelerated step: keep it only if it fits no worse
            cur = pairs(A)
            if cur is None or cur[3] > e_acc * (1 + 1e-9):
                A = A_plain
    P = apply_affine(A, c)
    _, d = lt.lookup(P, cd, groups)
    dd = np.where(np.isfinite(d), np.minimum(d, cap_um), cap_um)
    rev = reverse_cost(P, groups, lt) if lt.edges else float("nan")
    return A, {
        "cost_um": float(dd.mean()),
        "iterations": it,
        "inside": float(np.mean(dd == 0)),
        "distances": dd,
        "reverse": rev,
    }


#: Anderson acceleration of :func:`label_fit` (``accelerate=None`` takes this) and the
#: number of earlier steps it combines. Off by default: at a fixed plane it reaches the
#: same optimum in about half the iterations, but inside the joint plane search it changes
#: which planes the warm-started candidate fits reach, and it moved sections both ways
#: (same process: hard seeds 0-3 149 -> 150 of 160 within; held-out coronal hemisections
#: 33 -> 34 of 40; far-lateral sagittal sections 18 -> 17 of 30, 5 better and 8 worse; a
#: far-lateral test case 23 -> 143 um) for 10-18 % less time. The quick plane search
#: (:mod:`.quick_search`) uses it: its fits run from proposals to convergence.
ACCELERATE = False
ANDERSON_M = 4
#: trimming of the label fits (:func:`label_fit`, :func:`label_warp`): forward pairs
#: (cell -> its region) beyond this quantile of the distances are dropped in each step
TRIM_Q = 0.85
#: and reverse pairs (template division edge -> nearest cell of the division) beyond
#: this quantile. Template edges of torn-away tissue have no cells near them; at 0.85
#: they pulled the fit into the gap: started from the true affine at the true plane,
#: the fit drifted to 80-110 um median error on 3 of 40 hard sections (seed 1), none
#: with 0.7 (median error 19.4 -> 15.8 um over the 40; seed 2: 14.8 -> 13.5 um)
REVERSE_TRIM_Q = 0.7
#: :func:`plane_score` averages the outline distances (both directions) and
#: :func:`reverse_cost` the division-edge distances over this lowest fraction only (1:
#: all): a torn section's edge has no template outline and the torn-away part of the
#: template outline no section outline
SCORE_TRIM_Q = 0.85
#: :func:`fit_spread` refits with the reverse pairs trimmed at this quantile: the
#: confidence's spread factor (``api.SPREAD_HALF_UM``) was calibrated with it. Against
#: a fit made with :data:`REVERSE_TRIM_Q` the spread then also holds how far the fit
#: moves when the torn-tissue trim is relaxed (a few um on intact tissue). On the
#: held-out draw (seed 1) the confidence separated the failures better this way (AUC
#: 0.85) than with the restarts under the fit's own trim (0.79)
SPREAD_REVERSE_TRIM_Q = 0.85


def _trimmed_mean(d: np.ndarray, q: float) -> float:
    """Mean of the lowest ``q`` fraction of ``d`` (all of it for q >= 1)."""
    d = np.asarray(d, dtype=float)
    if q >= 1.0 or len(d) < 4:
        return float(d.mean()) if len(d) else float("nan")
    k = max(1, int(np.ceil(q * len(d))))
    return float(np.partition(d, k - 1)[:k].mean())


_LIFT = 1.0e7  # um between divisions in the lifted (x, y, division) space


def _edge_matches(P, groups, lt, bound_um: float = 1000.0):
    """For every template edge pixel of a division the cells have: (cell index into
    ``P``, edge point (2,), distance). One KD-tree over the cells lifted to
    (x, y, division x 1e7 um), so a query only ever meets cells of its own division."""
    from scipy.spatial import cKDTree

    ks = [(k, sel) for k, sel in groups if len(sel) >= 3 and k in lt.edges and len(lt.edges[k])]
    if not ks:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 2)), np.zeros(0)
    idx = np.concatenate([sel for _, sel in ks])
    lift = np.concatenate([np.full(len(sel), k * _LIFT) for k, sel in ks])
    e = np.vstack([lt.edges[k] for k, _ in ks])
    le = np.concatenate([np.full(len(lt.edges[k]), k * _LIFT) for k, _ in ks])
    tree = cKDTree(np.column_stack([P[idx], lift]), balanced_tree=False, compact_nodes=False)
    dq, j = tree.query(np.column_stack([e, le]), distance_upper_bound=bound_um)
    far = ~np.isfinite(dq)  # beyond every cap and trim: a huge finite distance, cell 0
    if far.any():
        j = np.where(far, 0, j)
        dq = np.where(far, 1e12, dq)
    return idx[j], e, dq


def _reverse_pairs(P, c, groups, lt, trim_q, cap_um, floor):
    """(section points, template edge points): for each template edge pixel of each
    division the nearest mapped cell of that division, trimmed like the forward pairs."""
    ci, e, d = _edge_matches(P, groups, lt)
    if len(d) == 0:
        return np.zeros((0, 2)), np.zeros((0, 2))
    thr = max(float(np.quantile(d, trim_q)), floor)
    keep = d <= min(thr, cap_um) + 1e-9
    return c[ci[keep]], e[keep]


def _reverse_pairs_idx(P, groups, lt, trim_q, cap_um, floor):
    """As :func:`_reverse_pairs` but the cells as indices into ``P``."""
    ci, e, d = _edge_matches(P, groups, lt)
    if len(d) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 2))
    thr = max(float(np.quantile(d, trim_q)), floor)
    keep = d <= min(thr, cap_um) + 1e-9
    return ci[keep], e[keep]


def reverse_cost(P, groups, lt, cap_um: float = 150.0, trim_q: float | None = None) -> float:
    """Mean distance (capped) of the template's division edge pixels to the nearest
    mapped cell of their division; divisions the cells lack count the cap. Averaged
    over the lowest ``trim_q`` fraction (default :data:`SCORE_TRIM_Q`)."""
    _, _, d = _edge_matches(P, groups, lt)
    have = {k for k, sel in groups if len(sel) >= 3}
    n_all = sum(len(e) for e in lt.edges.values())
    if n_all == 0:
        return float("nan")
    n_missing = sum(len(e) for k, e in lt.edges.items() if k not in have)
    q = SCORE_TRIM_Q if trim_q is None else float(trim_q)
    dd = np.concatenate([np.minimum(d, cap_um), np.full(n_missing, cap_um)])
    return _trimmed_mean(dd, q)


def plane_score(
    A: np.ndarray,
    info: dict,
    outline_pts: np.ndarray,
    tmpl,
    outline_scale_um: float = 0.0,
    cap_um: float = 150.0,
    outline_weight: float = 1.0,
    reverse_weight: float = 0.0,
    trim_q: float | None = None,
) -> tuple[float, dict]:
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
    # torn tissue: the template outline of the missing part has no section outline
    # near it, and the torn edge no template outline: both directions are averaged
    # over the lowest SCORE_TRIM_Q only
    q = SCORE_TRIM_Q if trim_q is None else float(trim_q)
    od = 0.5 * (_trimmed_mean(np.minimum(d1, cap_um), q) + _trimmed_mean(np.minimum(d2, cap_um), q))
    ld = float(np.minimum(info["distances"], cap_um).mean())
    rv = float(info.get("reverse", float("nan")))
    tot = ld + outline_weight * od
    if reverse_weight > 0 and np.isfinite(rv):
        # forward and reverse label distances as one symmetric mean
        tot = (ld + reverse_weight * rv) / (1.0 + reverse_weight) + outline_weight * od
    return float(-tot), {
        "inside": float(info["inside"]),
        "outline_um": od,
        "label_um": ld,
        "reverse_um": rv,
    }


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
    outline_weight: float = 1.0,
    centre_um=None,
    reverse_weight: float = 0.0,
    coarse_template_at=None,
    coarse_cells: int = 1500,
    coarse_edges: int = 1000,
    refine_top: int = 2,
    fine_levels: int = 1,
    fit_tol_um: float = 0.5,
    fit_iters: int = 20,
    refit_iters: int = 15,
    refit_min_step_um: float = 0.0,
    max_edges: int = 2500,
    quadratic_finish: bool = False,
    midline_tilt: bool = False,
) -> dict:
    """Joint search of the cutting plane (position, two angles) and the in-plane fit.

    Every candidate plane gets its own in-plane fit (:func:`label_fit`, started from the
    best fit so far and, where the position changes, also from an outline ICP refit to
    the new slice) and is scored by :func:`plane_score`. The search starts from the best
    of the given plane, two positions at half ``search_um`` either side and the
    ``proposals`` ((position, (a_x, a_y)) pairs, e.g. from
    :func:`.position.refine_plane`), then climbs by a pattern search (the best of the six
    neighbours along depth and the two angles; the steps halve when none is better;
    ``propose`` is asked for a plane whenever it stalls), within ``max_evals`` planes.

    The angles turn the plane about the section's own centre (the centroid of the cells
    as placed by ``A0``), not about the slice centre the positions refer to
    (``centre_um``, the ``AtlasSlice.centre_um``): an angle step then keeps the section's
    mean depth, so depth and angles are nearly independent axes (about the slice
    centre, a far-off section moves in depth with every angle step, and the search has
    to follow a diagonal ridge).

    Parameters
    ----------
    template_at : ``template_at(position_um, angles) -> Template`` (see :mod:`.core`).
    cells, cell_div : a subsample of the section's cells (section um) and their division
        index; outline_pts : section outline points (section um).
    bounds : (lo, hi) of the position axis; the search stays within ``search_um`` of
        the start's depth at the section centre and within ``max_angle_deg`` on each angle.
    propose : optional ``propose(affine, position_um, angles) -> (position_um, angles)``
        (e.g. :func:`.position.refine_plane` on the cells placed by ``affine``); called
        whenever the pattern search stalls, its plane is tried too (escapes ridges where
        position and angle trade off).
    outline_weight : weight of the outline term in :func:`plane_score`.
    coarse_template_at : optional ``coarse_template_at(position_um, angles) -> Template``
        on a coarser grid (e.g. 50 um pixels sampled from the 25 um volume). Given, the
        whole pattern search runs on it with ``coarse_cells`` of the cells (coarse to
        fine): each candidate then costs a fraction of a full one. After all but the
        last ``fine_levels`` steps, the ``refine_top`` best coarse planes are refitted at
        full resolution with all ``cells`` (from their coarse fits) and the search goes
        on from the best of them at full resolution with the finer steps.
    fit_tol_um, fit_iters : each candidate's :func:`label_fit` stops when no cell moves
        more than ``fit_tol_um`` or after ``fit_iters`` iterations (the candidates only
        need ranking; the caller refits the winner to convergence).
    refit_iters : ICP iterations of the outline refit tried at a new depth;
        ``refit_min_step_um``: only for depth steps at least this large (the proposals
        and the depths around the start always get it).
    midline_tilt : the poll also tries the left-right tilt about the slice centre's
        vertical line (the midline of a coronal slice; the depth there is kept) besides
        the tilt about the section's centre. For a hemisection the two differ by a depth
        shift of about half its width times the tilt, and its anatomy may pin the
        depth at the midline better than at its own centre: the search's axes then
        cross a diagonal ridge, which this extra direction follows.
    max_edges : template division edge points of the reverse term per candidate.
    quadratic_finish : after the last level, one step to the vertex of the parabolas
        through the final plane and its two neighbours on each axis (all already
        evaluated by the last poll, unless ``max_evals`` stopped it): a sub-step
        refinement for one or two more candidates, far cheaper than a further level of
        six-neighbour polls.

    Returns dict(position_um, angles_deg, affine, score, inside, outline_um, evals,
    neighbours (scores of the final plane's immediate neighbours), start_score).
    """
    p0 = float(position_um)
    lo, hi = bounds if bounds is not None else (-np.inf, np.inf)
    cache: dict = {}
    # pivot: the section's centre in the slice (angles turn about it)
    if centre_um is None:
        centre_um = template_at(p0, tuple(angles_deg)).slice.centre_um
    cx, cy = (float(v) for v in centre_um)
    px_, py_ = apply_affine(np.asarray(A0, dtype=float), np.asarray(cells, dtype=float)).mean(0)
    ox, oy = px_ - cx, py_ - cy

    def to_q(p, a):  # slice position -> depth at the pivot
        return p + np.tan(np.deg2rad(a[0])) * ox + np.tan(np.deg2rad(a[1])) * oy

    def to_p(q, a):
        return q - np.tan(np.deg2rad(a[0])) * ox - np.tan(np.deg2rad(a[1])) * oy

    q0 = to_q(p0, angles_deg)

    def key(q, a):
        return (round(q, 3), round(a[0], 3), round(a[1], 3))

    cells = np.asarray(cells, dtype=float)
    cell_div = np.asarray(cell_div)
    coarse = coarse_template_at is not None
    if coarse:
        st = max(1, int(np.ceil(len(cells) / max(coarse_cells, 1))))
        lv_cells, lv_div, lv_tmpl, lv_tol = (
            cells[::st],
            cell_div[::st],
            coarse_template_at,
            2 * fit_tol_um,
        )
        lv_edges = coarse_edges
    else:
        lv_cells, lv_div, lv_tmpl, lv_tol = cells, cell_div, template_at, fit_tol_um
        lv_edges = max_edges

    def evaluate(q, a, A_init, refit=False):
        k = key(q, a)
        if k in cache:
            return cache[k]
        if cancel is not None and cancel():
            from .icp import RegistrationCancelled

            raise RegistrationCancelled("registration cancelled")
        try:
            tmpl = lv_tmpl(to_p(q, a), a)
        except BrainAtlasInputError:
            # no tissue in this plane (beyond the brain's lateral edge, or its poles):
            # not a candidate
            cache[k] = (-np.inf, A_init, {"inside": float("nan"), "outline_um": float("nan")})
            return cache[k]
        lt = make_label_template(atlas, tmpl.slice, label_pixel_um, max_edges=lv_edges)
        inits = [A_init]
        if refit:
            # a new depth changes the slice's size and shape: also start from the
            # outline fitted to this slice (ICP from the warm start)
            from .icp import icp_affine

            r = icp_affine(
                outline_pts,
                tmpl.outline.points,
                A_init,
                max_iter=refit_iters,
                floor_um=2 * tmpl.outline.pixel_um,
                tgt_tree=tmpl.tree,
                tgt_normals=tmpl.outline.normals,
                model="affine",
                prior_weight=0.01,
            )
            inits.append(r.affine)
        best = None
        for A1 in inits:
            A, info = label_fit(
                A1,
                lv_cells,
                lv_div,
                lt,
                outline_pts,
                tmpl.tree,
                n_iter=fit_iters,
                reverse_weight=reverse_weight,
                tol_um=lv_tol,
            )
            sc, parts = plane_score(
                A,
                info,
                outline_pts,
                tmpl,
                outline_weight=outline_weight,
                reverse_weight=reverse_weight,
            )
            if best is None or sc > best[0]:
                best = (sc, A, parts)
        cache[k] = best
        return cache[k]

    def valid(q, a):
        p = to_p(q, a)
        return (
            abs(q - q0) <= search_um + 1e-6
            and lo <= p < hi
            and abs(a[0]) <= max_angle_deg + 1e-6
            and abs(a[1]) <= max_angle_deg + 1e-6
        )

    def clip_plane(p, a):
        a = tuple(float(np.clip(v, -max_angle_deg, max_angle_deg)) for v in a)
        q = float(np.clip(to_q(p, a), q0 - search_um, q0 + search_um))
        p = to_p(q, a)
        if not (lo <= p < hi):
            p = float(np.clip(p, lo, hi - 1e-6))
            q = to_q(p, a)
        return q, a

    cur_q, cur_a = q0, (float(angles_deg[0]), float(angles_deg[1]))
    cur = evaluate(cur_q, cur_a, A0)
    start_score = cur[0]
    # depths around the start, each with its own outline refit: the label term is
    # weak where few regions are cut (far-lateral sagittal sections)
    for q in (q0 - 0.5 * search_um, q0 + 0.5 * search_um):
        if valid(q, cur_a):
            r = evaluate(q, cur_a, A0, refit=True)
            if r[0] > cur[0] + 0.01:
                cur_q, cur = q, r
    for p, a in proposals:
        q, a = clip_plane(p, a)
        r = evaluate(q, a, cur[1], refit=True)
        if r[0] > cur[0]:
            cur_q, cur_a, cur = q, a, r

    proposed = set()
    n_coarse = 0
    n_coarse_levels = max(len(steps) - max(fine_levels, 1), 0) if coarse else 0
    for li, (dp, da) in enumerate(steps):
        if coarse and li == n_coarse_levels:
            # coarse to fine: the best coarse planes at full resolution (from their
            # coarse fits); the remaining, finer steps search at full resolution
            n_coarse = len(cache)
            ranked = sorted(cache.items(), key=lambda kv: -kv[1][0])[: max(1, refine_top)]
            cache = {}
            lv_cells, lv_div, lv_tmpl, lv_tol = cells, cell_div, template_at, fit_tol_um
            lv_edges = max_edges
            cur = None
            for (q, a0, a1), (_, A_c, _) in ranked:
                r = evaluate(q, (a0, a1), A_c)
                if cur is None or r[0] > cur[0]:
                    cur_q, cur_a, cur = q, (a0, a1), r
            proposed = set()
        moved = True
        while moved and len(cache) < max_evals:
            moved = False
            # all six neighbours (eight with ``midline_tilt``), then the best of them
            # (first-improvement wanders off along noisy ridges)
            step_best = None
            for dim in range(4 if midline_tilt else 3):
                for sgn in (1.0, -1.0):
                    q, a = cur_q, list(cur_a)
                    if dim == 0:
                        q = cur_q + sgn * dp
                    elif dim < 3:
                        a[dim - 1] += sgn * da
                    else:  # left-right tilt keeping the depth at the slice centre's x
                        a[0] += sgn * da
                        q = to_q(to_p(cur_q, cur_a), a)
                    a = tuple(a)
                    if not valid(q, a):
                        continue
                    r = evaluate(q, a, cur[1], refit=dim == 0 and dp >= refit_min_step_um)
                    if r[0] > cur[0] + 0.01 and (step_best is None or r[0] > step_best[2][0]):
                        step_best = (q, a, r)
            if step_best is not None:
                cur_q, cur_a, cur = step_best
                moved = True
            if not moved and propose is not None and key(cur_q, cur_a) not in proposed:
                # stalled: ask for a plane from the cells placed by the current fit
                proposed.add(key(cur_q, cur_a))
                q, a = clip_plane(*propose(cur[1], to_p(cur_q, cur_a), cur_a))
                r = evaluate(q, a, cur[1], refit=True)
                if r[0] > cur[0] + 0.01:
                    cur_q, cur_a, cur = q, a, r
                    moved = True
    dp, da = steps[-1]
    if quadratic_finish:
        cur_q, cur_a, cur = _quadratic_step(evaluate, valid, cur_q, cur_a, cur, dp, da)
    # the final plane's neighbours at the finest step: how sharp is the optimum?
    neigh = []
    for dim in range(3 if neighbours else 0):
        for sgn in (1.0, -1.0):
            q, a = cur_q, list(cur_a)
            if dim == 0:
                q += sgn * 4 * dp
            else:
                a[dim - 1] += sgn * 4 * da
            if lo <= to_p(q, a) < hi:
                neigh.append(evaluate(q, tuple(a), cur[1])[0])
    return {
        "position_um": float(to_p(cur_q, cur_a)),
        "angles_deg": (float(cur_a[0]), float(cur_a[1])),
        "affine": cur[1],
        "score": float(cur[0]),
        "inside": cur[2]["inside"],
        "outline_um": cur[2]["outline_um"],
        "label_um": cur[2].get("label_um", float("nan")),
        "evals": len(cache) + n_coarse,
        "coarse_evals": n_coarse,
        "pivot_um": (float(px_), float(py_)),
        "neighbours": neigh,
        "start_score": float(start_score),
    }


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


def label_chamfer_starts(
    cells: np.ndarray,
    cell_div: np.ndarray,
    lt: LabelTemplate,
    tmpl,
    fs,
    area_scale: float,
    n_best: int = 2,
    rot_deg=(-8, -4, 0, 4, 8),
    scale_range=(0.75, 1.3),
    n_scale: int = 9,
    shift_frac: float = 0.3,
    n_shift: int = 17,
    trunc_um: float = 300.0,
    max_cells: int = 400,
) -> list:
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
    cen_t = tmpl.frame.to_canonical(
        np.column_stack([(cols + 0.5) * res_t, (rows + 0.5) * res_t])
    ).mean(0)
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
            ci = np.floor(X / px).astype(np.int64) - lt.origin[1]
            ri = np.floor(Y / px).astype(np.int64) - lt.origin[0]
            out_grid = (ci < 0) | (ci >= W) | (ri < 0) | (ri >= H)
            np.clip(ci, 0, W - 1, out=ci)
            np.clip(ri, 0, H - 1, out=ri)
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


def _poly_basis(X: np.ndarray, degree: int) -> np.ndarray:
    u, v = X[:, 0], X[:, 1]
    cols = [np.ones(len(X))]
    for d in range(1, degree + 1):
        for k in range(d + 1):
            cols.append(u ** (d - k) * v**k)
    return np.column_stack(cols)


def label_warp(
    A: np.ndarray,
    cells: np.ndarray,
    cell_div: np.ndarray,
    lt: LabelTemplate,
    outline_pts: np.ndarray | None = None,
    tmpl_tree=None,
    size_um: float = 1.0,
    degree: int = 2,
    outline_weight: float = 0.5,
    n_iter: int = 25,
    trim_q: float | None = None,
    cap_um: float = 400.0,
    ridge: float = 1e-3,
    tol_um: float = 0.5,
    max_disp_frac: float = 0.08,
    n_grid: int = 9,
    reverse_weight: float = 0.0,
) -> tuple[list, dict]:
    """Smooth (polynomial) in-plane warp after the affine ``A``, from the region labels.

    Like :func:`label_fit` with a polynomial of ``degree`` in place of the affine: each
    labelled cell is pulled into its own region, each outline point onto the template
    outline (trimmed), and the displacement ``x -> x + sum_k c_k m_k(x)`` (monomials
    ``m_k`` of the mapped coordinates, scaled by ``size_um``; a small ``ridge`` on the
    non-affine terms) is solved in closed form; repeated until it settles. Tissue warps
    (swelling, shear of a soft section, a bent section) are smooth over the section, so
    a low degree follows them without the freedom to fit label noise.

    Returns (stages, info): ``stages`` is a warp for :func:`.nonlinear.apply_warp` (a
    thin-plate through the displacement at an ``n_grid`` x ``n_grid`` grid over the
    section; empty when the warp would move a point by more than ``max_disp_frac`` of
    the size, or gained nothing); info = dict(cost_before, cost_after (mean capped label
    distance + ``outline_weight`` x mean outline distance, um), max_disp_um).
    """
    trim_q = TRIM_Q if trim_q is None else float(trim_q)
    ok = np.flatnonzero(np.asarray(cell_div) >= 0)
    c = np.asarray(cells, dtype=float)[ok]
    cd = np.asarray(cell_div)[ok]
    if len(c) < 50:
        return [], {"reason": "too few labelled cells"}
    groups = lt.groups(cd)
    P0 = apply_affine(A, c)
    centre = P0.mean(0)
    L = float(max(size_um, 1.0))
    B0 = _poly_basis((P0 - centre) / L, degree)
    use_outline = outline_pts is not None and tmpl_tree is not None and len(outline_pts) >= 3
    if use_outline:
        Q0 = apply_affine(A, outline_pts)
        Bq = _poly_basis((Q0 - centre) / L, degree)
    nb = B0.shape[1]
    Cf = np.zeros((nb, 2))
    pen = np.zeros(nb)
    pen[3:] = 1.0  # the affine part (first three monomials) is free
    floor = 1.5 * lt.pixel_um

    def cost(Cf_):
        P = P0 + B0 @ Cf_
        _, d = lt.lookup(P, cd, groups)
        ld = float(np.where(np.isfinite(d), np.minimum(d, 150.0), 150.0).mean())
        if reverse_weight > 0 and lt.edges:
            ld = (ld + reverse_weight * reverse_cost(P, groups, lt)) / (1.0 + reverse_weight)
        od = 0.0
        if use_outline:
            do, _ = tmpl_tree.query(Q0 + Bq @ Cf_)
            od = float(np.minimum(do, 150.0).mean())
        return ld + outline_weight * od

    before = cost(Cf)
    for _ in range(n_iter):
        P = P0 + B0 @ Cf
        tgt, d = lt.lookup(P, cd, groups)
        good = np.isfinite(d)
        if good.sum() < 10 * nb:
            break
        thr = max(float(np.quantile(d[good], trim_q)), floor)
        keep = good & (d <= min(thr, cap_um) + 1e-9)
        Bs, R = B0[keep], tgt[keep] - P0[keep]
        w = np.ones(len(R))
        if reverse_weight > 0 and lt.edges:
            # reverse pairs: the cells' own index tells their basis rows
            rs_idx, rd = _reverse_pairs_idx(P, groups, lt, REVERSE_TRIM_Q, cap_um, floor)
            if len(rs_idx) >= 3:
                n_fwd = len(w)
                Bs = np.vstack([Bs, B0[rs_idx]])
                R = np.vstack([R, rd - P0[rs_idx]])
                w = np.concatenate([w, np.full(len(rs_idx), reverse_weight * n_fwd / len(rs_idx))])
        if use_outline:
            Q = Q0 + Bq @ Cf
            do, j = tmpl_tree.query(Q)
            thr_o = max(2.5 * float(np.median(do)), floor)
            ko = do <= thr_o
            if ko.sum() >= 3:
                Bs = np.vstack([Bs, Bq[ko]])
                R = np.vstack([R, tmpl_tree.data[j[ko]] - Q0[ko]])
                w = np.concatenate([w, np.full(int(ko.sum()), outline_weight * len(w) / ko.sum())])
        G = (Bs * w[:, None]).T @ Bs + np.diag(pen * ridge * w.sum())
        Cn = np.linalg.solve(G, (Bs * w[:, None]).T @ R)
        move = float(np.abs(B0[:200] @ (Cn - Cf)).max())
        Cf = Cn
        if move < tol_um:
            break
    after = cost(Cf)
    # the grid over the section's mapped extent
    lo_, hi_ = P0.min(0), P0.max(0)
    gx, gy = np.meshgrid(np.linspace(lo_[0], hi_[0], n_grid), np.linspace(lo_[1], hi_[1], n_grid))
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    disp = _poly_basis((grid - centre) / L, degree) @ Cf
    max_disp = float(np.abs(B0 @ Cf).max())
    info = {"cost_before": before, "cost_after": after, "max_disp_um": max_disp}
    if not np.isfinite(after) or after >= before or max_disp > max_disp_frac * L:
        return [], info
    return [{"ctrl": grid, "disp": disp, "smoothing": 0.0, "scale": L}], info


def fit_spread(
    A: np.ndarray,
    cells: np.ndarray,
    cell_div: np.ndarray,
    lt: LabelTemplate,
    outline_pts: np.ndarray | None = None,
    tmpl_tree=None,
    delta_um: float = 100.0,
    reverse_weight: float = 0.0,
    n_iter: int = 20,
    reverse_trim_q: float | None = None,
) -> float:
    """How well the data pin the in-plane fit: the fit is restarted from ``A`` moved by
    ``delta_um`` along +-x and +-y and refitted (:func:`label_fit`, same terms, the
    reverse pairs trimmed at ``reverse_trim_q``, default :data:`SPREAD_REVERSE_TRIM_Q`); returns
    the RMS distance (um) between the refitted and the original positions of the cells,
    over the four restarts. A well-constrained fit returns to itself (a few um); where
    the labels and the outline leave a plateau (few regions cut, warped or torn tissue)
    the restarts stay where they land, and the spread is about the error one must
    expect from the fit. The restarts take plain steps (no Anderson acceleration): the
    confidence's spread scale (``api.SPREAD_HALF_UM``) was calibrated on them."""
    c = np.asarray(cells, dtype=float)
    P = apply_affine(A, c)
    out = []
    for d in ((delta_um, 0.0), (-delta_um, 0.0), (0.0, delta_um), (0.0, -delta_um)):
        Ap = np.asarray(A, dtype=float).copy()
        Ap[:2, 2] += d
        Ak, _ = label_fit(
            Ap,
            c,
            cell_div,
            lt,
            outline_pts,
            tmpl_tree,
            n_iter=n_iter,
            reverse_weight=reverse_weight,
            accelerate=False,
            reverse_trim_q=SPREAD_REVERSE_TRIM_Q if reverse_trim_q is None else reverse_trim_q,
        )
        out.append(np.mean(np.sum((apply_affine(Ak, c) - P) ** 2, axis=1)))
    return float(np.sqrt(np.mean(out)))
