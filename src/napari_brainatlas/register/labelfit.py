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
from .settings import LabelChamferSettings, LabelFitSettings, LabelWarpSettings

__all__ = [
    "LabelTemplate",
    "fit_spread",
    "label_chamfer_starts",
    "label_cost",
    "label_fit",
    "label_warp",
    "make_label_template",
    "plane_score",
    "reverse_cost",
]


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
    settings: LabelFitSettings | None = None,
) -> tuple[np.ndarray, dict]:
    """Refine the section -> atlas slice affine ``A0`` with region labels.

    Parameters
    ----------
    cells : (n, 2) section um (a subsample is plenty); cell_div : (n,) division index
        of each cell's label (-1 unknown, ignored).
    outline_pts, tmpl_tree : section outline points (section um) and a KD-tree of the
        template outline points; given, they are matched too, with ``outline_weight``
        times the total weight of the cells.
    settings : :class:`~.settings.LabelFitSettings` (default: its defaults, a plain
        label fit without the reverse term). Cells beyond the ``trim_q`` quantile of the
        distance (and beyond ``cap_um``) are dropped in each step (mislabelled cells,
        torn or warped tissue); the reverse pairs are trimmed at ``reverse_trim_q``:
        template edges of torn-away tissue have no cells and would pull the fit into
        the gap. ``reverse_weight`` (times the cells' total) weighs the reverse pull:
        every edge pixel of each template division draws the nearest mapped cell of
        that division onto it. A cell inside its region costs nothing in the forward
        direction, so alone that leaves a plateau of equally good fits (all cells
        inside) on which the fit stops wherever it entered; the reverse term asks the
        cells to fill their regions up to the edges, which centres the fit on the
        plateau. ``accelerate``: Anderson acceleration of the iteration.

    Returns (affine, info) with info = dict(cost_um (mean capped label distance at the
    end), iterations, inside (fraction of labelled cells inside their region),
    distances, reverse (mean capped distance of the template edge pixels to the nearest
    cell of their division, over the lowest ``score_trim_q`` of them, see
    :func:`reverse_cost`; NaN without edges)).
    """
    st = LabelFitSettings() if settings is None else settings
    pairs = _LabelPairs(cells, cell_div, lt, outline_pts, tmpl_tree, st)
    A, it = _fixed_point(pairs, np.asarray(A0, dtype=float).copy(), st)
    return A, pairs.info(A, it)


class _LabelPairs:
    """The matched pairs of a label fit at an affine: each labelled cell with the
    nearest point of its own region, the reverse pairs and the outline pairs."""

    def __init__(self, cells, cell_div, lt, outline_pts, tmpl_tree, st: LabelFitSettings):
        ok = np.flatnonzero(np.asarray(cell_div) >= 0)
        self.c = np.asarray(cells, dtype=float)[ok]
        self.cd = np.asarray(cell_div)[ok]
        self.lt, self.st = lt, st
        self.groups = lt.groups(self.cd)
        self.floor = 1.5 * lt.pixel_um
        self.outline_pts, self.tree = outline_pts, tmpl_tree
        self.use_outline = outline_pts is not None and tmpl_tree is not None and len(outline_pts)

    def __call__(self, A):
        """The matched pairs at ``A`` (section points, template points, weights) and
        their weighted mean squared distance (um^2); None when too few cells match."""
        c, st, lt = self.c, self.st, self.lt
        P = apply_affine(A, c)
        tgt, d = lt.lookup(P, self.cd, self.groups)
        good = np.isfinite(d)
        if good.sum() < 10:
            return None
        thr = max(float(np.quantile(d[good], st.trim_q)), self.floor)
        keep = good & (d <= min(thr, st.cap_um) + 1e-9)
        src, dst = c[keep], tgt[keep]
        w = np.where(d[keep] > 0, 1.0, st.inside_weight)
        n_fwd = len(w)
        if st.reverse_weight > 0 and lt.edges:
            rs, rd = _reverse_pairs(P, c, self.groups, lt, st.reverse_trim_q, st.cap_um, self.floor)
            if len(rs) >= 3:
                src = np.vstack([src, rs])
                dst = np.vstack([dst, rd])
                w = np.concatenate([w, np.full(len(rs), st.reverse_weight * n_fwd / len(rs))])
        if self.use_outline:
            Q = apply_affine(A, self.outline_pts)
            do, j = self.tree.query(Q)
            thr_o = max(2.5 * float(np.median(do)), self.floor)
            ko = do <= thr_o
            if ko.sum() >= 3:
                src = np.vstack([src, self.outline_pts[ko]])
                dst = np.vstack([dst, self.tree.data[j[ko]]])
                w = np.concatenate(
                    [w, np.full(int(ko.sum()), st.outline_weight * n_fwd / ko.sum())]
                )
        if w.sum() <= 0:
            return None
        r2 = ((apply_affine(A, src) - dst) ** 2).sum(1)
        return src, dst, w, float((w * r2).sum() / w.sum())

    def info(self, A, it: int) -> dict:
        """The fit's record at its end (see :func:`label_fit`)."""
        st, lt = self.st, self.lt
        P = apply_affine(A, self.c)
        _, d = lt.lookup(P, self.cd, self.groups)
        dd = np.where(np.isfinite(d), np.minimum(d, st.cap_um), st.cap_um)
        rev = (
            reverse_cost(P, self.groups, lt, st.score_cap_um, st.score_trim_q)
            if lt.edges
            else float("nan")
        )
        return {
            "cost_um": float(dd.mean()),
            "iterations": it,
            "inside": float(np.mean(dd == 0)),
            "distances": dd,
            "reverse": rev,
        }


def _fixed_point(pairs: _LabelPairs, A: np.ndarray, st: LabelFitSettings):
    """Iterate A -> fit(pairs(A)) until no cell moves more than ``st.tol_um`` or
    ``st.n_iter`` steps; returns (A, iterations).

    With ``st.accelerate``: Anderson acceleration (Walker & Ni 2011; for ICP: Pavlov et
    al. 2018) of the fixed-point map, in the coordinates of three reference points (the
    affine's images of the cells' centre and two points one spread away: six numbers,
    all um). An accelerated step is kept only if its pairs fit no worse than the last
    accepted ones; else the plain step is taken and the history cleared."""
    c = pairs.c
    ref = None
    if len(c):
        sd = float(max(c.std(0).mean(), 1.0))
        mu = c.mean(0)
        ref = np.array([mu, mu + [sd, 0.0], mu + [0.0, sd]])
    hist_x, hist_g = [], []
    e_acc, A_plain = np.inf, None
    cur = pairs(A)
    it = 0
    for it in range(1, st.n_iter + 1):
        if cur is None:
            break
        src, dst, w, e = cur
        if st.accelerate and A_plain is not None and e > e_acc * (1 + 1e-9):
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
        if st.accelerate and ref is not None:
            A_new, A_plain = _anderson_step(A, G, ref, hist_x, hist_g, st.anderson_m)
        move = (
            float(np.abs(apply_affine(A_new, c[:200]) - apply_affine(A, c[:200])).max())
            if len(c)
            else 0.0
        )
        A = A_new
        if move < st.tol_um:
            break
        if it < st.n_iter:
            cur = pairs(A)
        elif A_plain is not None:
            # out of iterations on an accelerated step: keep it only if it fits no worse
            cur = pairs(A)
            if cur is None or cur[3] > e_acc * (1 + 1e-9):
                A = A_plain
    return A, it


def _anderson_step(A, G, ref, hist_x, hist_g, m: int):
    """The Anderson-accelerated step from the iterate ``A`` and its plain image ``G``
    (histories updated in place); returns (accelerated affine, plain affine or None
    when no accelerated step was taken)."""
    x = apply_affine(A, ref).ravel()
    g = apply_affine(G, ref).ravel()
    hist_x.append(x)
    hist_g.append(g)
    if len(hist_x) > m + 1:
        hist_x.pop(0)
        hist_g.pop(0)
    if len(hist_x) >= 2:
        F = np.array(hist_g) - np.array(hist_x)  # residuals g - x, oldest first
        dF = np.diff(F, axis=0).T  # (6, m)
        dG = np.diff(np.array(hist_g), axis=0).T
        gam = np.linalg.lstsq(dF, F[-1], rcond=None)[0]
        xa = g - dG @ gam
        if np.all(np.isfinite(xa)):
            return fit_affine(ref, xa.reshape(3, 2)), G
    return G, None


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


def reverse_cost(P, groups, lt, cap_um: float = 150.0, trim_q: float = 0.85) -> float:
    """Mean distance (capped at ``cap_um``) of the template's division edge pixels to
    the nearest mapped cell of their division; divisions the cells lack count the cap.
    Averaged over the lowest ``trim_q`` fraction."""
    _, _, d = _edge_matches(P, groups, lt)
    have = {k for k, sel in groups if len(sel) >= 3}
    n_all = sum(len(e) for e in lt.edges.values())
    if n_all == 0:
        return float("nan")
    n_missing = sum(len(e) for k, e in lt.edges.items() if k not in have)
    dd = np.concatenate([np.minimum(d, cap_um), np.full(n_missing, cap_um)])
    return _trimmed_mean(dd, float(trim_q))


def plane_score(
    A: np.ndarray,
    info: dict,
    outline_pts: np.ndarray,
    tmpl,
    settings: LabelFitSettings | None = None,
) -> tuple[float, dict]:
    """Joint score of a fitted plane (higher better, um): minus the mean distance of the
    labelled cells to their own region (with ``reverse_weight`` > 0: the forward and
    reverse label distances as one symmetric mean) plus ``score_outline_weight`` times
    the outlines' mean symmetric distance, every distance capped at ``score_cap_um``
    (mislabelled cells and torn tissue cost at most the cap). Continuous in the plane,
    unlike a count of cells inside their region. ``info`` is :func:`label_fit`'s.
    ``settings``: :class:`~.settings.LabelFitSettings` (default: its defaults).
    Returns (score, parts)."""
    from scipy.spatial import cKDTree

    st = LabelFitSettings() if settings is None else settings
    cap_um = st.score_cap_um
    Q = apply_affine(A, outline_pts)
    d1, _ = tmpl.tree.query(Q)
    d2, _ = cKDTree(Q).query(tmpl.outline.points)
    # torn tissue: the template outline of the missing part has no section outline
    # near it, and the torn edge no template outline: both directions are averaged
    # over the lowest ``score_trim_q`` only
    q = float(st.score_trim_q)
    od = 0.5 * (_trimmed_mean(np.minimum(d1, cap_um), q) + _trimmed_mean(np.minimum(d2, cap_um), q))
    ld = float(np.minimum(info["distances"], cap_um).mean())
    rv = float(info.get("reverse", float("nan")))
    tot = ld + st.score_outline_weight * od
    if st.reverse_weight > 0 and np.isfinite(rv):
        # forward and reverse label distances as one symmetric mean
        tot = (ld + st.reverse_weight * rv) / (
            1.0 + st.reverse_weight
        ) + st.score_outline_weight * od
    return float(-tot), {
        "inside": float(info["inside"]),
        "outline_um": od,
        "label_um": ld,
        "reverse_um": rv,
    }


def label_chamfer_starts(
    cells: np.ndarray,
    cell_div: np.ndarray,
    lt: LabelTemplate,
    tmpl,
    fs,
    area_scale: float,
    settings: LabelChamferSettings | None = None,
) -> list:
    """Global similarity starts from the region labels (no outline needed).

    Like :func:`.outline_fit.chamfer_starts` but each labelled cell is scored by its
    distance to its own region in the template (capped at ``trunc_um``): in the midline
    frames (``fs`` section, ``tmpl.frame`` template) every rotation (``rot_deg`` around
    the midline), scale (around ``area_scale``) and shift is tried
    (:class:`~.settings.LabelChamferSettings`, default its defaults). Returns up to
    ``n_best`` (3, 3) section -> atlas affines, best first, with their costs.
    """
    from .affine import compose

    st = LabelChamferSettings() if settings is None else settings
    n_best, rot_deg, scale_range, n_scale = st.n_best, st.rot_deg, st.scale_range, st.n_scale
    shift_frac, n_shift, trunc_um, max_cells = st.shift_frac, st.n_shift, st.trunc_um, st.max_cells

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
    To = tmpl.frame.from_canonical_matrix()
    out = []
    for cost, th, sc, shv in results[:n_best]:
        cth, sth = np.cos(th), np.sin(th)
        C = np.eye(3)
        C[:2, :2] = sc * np.array([[cth, -sth], [sth, cth]])
        C[:2, 2] = cen_t + shv - C[:2, :2] @ cen_s
        out.append((compose(To, C, fs.to_canonical_matrix()), cost))
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
    warp: LabelWarpSettings | None = None,
    fit: LabelFitSettings | None = None,
) -> tuple[list, dict]:
    """Smooth (polynomial) in-plane warp after the affine ``A``, from the region labels.

    Like :func:`label_fit` with a polynomial of ``warp.degree`` in place of the affine:
    each labelled cell is pulled into its own region, each outline point onto the
    template outline (trimmed), and the displacement ``x -> x + sum_k c_k m_k(x)``
    (monomials ``m_k`` of the mapped coordinates, scaled by ``size_um``; a small
    ``warp.ridge`` on the non-affine terms) is solved in closed form; repeated until it
    settles. Tissue warps (swelling, shear of a soft section, a bent section) are smooth
    over the section, so a low degree follows them without the freedom to fit label
    noise. ``warp``: :class:`~.settings.LabelWarpSettings`; ``fit``: the trims, caps,
    weights and tolerance (:class:`~.settings.LabelFitSettings`); both default to their
    defaults.

    Returns (stages, info): ``stages`` is a warp for :func:`.nonlinear.apply_warp` (a
    thin-plate through the displacement at an ``n_grid`` x ``n_grid`` grid over the
    section; empty when the warp would move a point by more than ``max_disp_frac`` of
    the size, or gained nothing); info = dict(cost_before, cost_after (mean capped label
    distance + ``outline_weight`` x mean outline distance, um), max_disp_um).
    """
    ws = LabelWarpSettings() if warp is None else warp
    st = LabelFitSettings() if fit is None else fit
    ok = np.flatnonzero(np.asarray(cell_div) >= 0)
    if len(ok) < 50:
        return [], {"reason": "too few labelled cells"}
    pb = _WarpProblem(A, cells, cell_div, ok, lt, outline_pts, tmpl_tree, size_um, ws, st)
    Cf = np.zeros((pb.B0.shape[1], 2))
    before = pb.cost(Cf)
    for _ in range(ws.n_iter):
        Cn = pb.solve(Cf)
        if Cn is None:
            break
        move = float(np.abs(pb.B0[:200] @ (Cn - Cf)).max())
        Cf = Cn
        if move < st.tol_um:
            break
    after = pb.cost(Cf)
    # the grid over the section's mapped extent
    P0, L = pb.P0, pb.L
    lo_, hi_ = P0.min(0), P0.max(0)
    n_grid = ws.n_grid
    gx, gy = np.meshgrid(np.linspace(lo_[0], hi_[0], n_grid), np.linspace(lo_[1], hi_[1], n_grid))
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    disp = _poly_basis((grid - pb.centre) / L, ws.degree) @ Cf
    max_disp = float(np.abs(pb.B0 @ Cf).max())
    info = {"cost_before": before, "cost_after": after, "max_disp_um": max_disp}
    if not np.isfinite(after) or after >= before or max_disp > ws.max_disp_frac * L:
        return [], info
    return [{"ctrl": grid, "disp": disp, "smoothing": 0.0, "scale": L}], info


class _WarpProblem:
    """The terms of :func:`label_warp` over the polynomial coefficients ``Cf``."""

    def __init__(self, A, cells, cell_div, ok, lt, outline_pts, tmpl_tree, size_um, ws, st):
        self.c = np.asarray(cells, dtype=float)[ok]
        self.cd = np.asarray(cell_div)[ok]
        self.lt, self.ws, self.st, self.tree = lt, ws, st, tmpl_tree
        self.groups = lt.groups(self.cd)
        self.P0 = apply_affine(A, self.c)
        self.centre = self.P0.mean(0)
        self.L = float(max(size_um, 1.0))
        self.B0 = _poly_basis((self.P0 - self.centre) / self.L, ws.degree)
        self.use_outline = (
            outline_pts is not None and tmpl_tree is not None and len(outline_pts) >= 3
        )
        if self.use_outline:
            self.Q0 = apply_affine(A, outline_pts)
            self.Bq = _poly_basis((self.Q0 - self.centre) / self.L, ws.degree)
        nb = self.B0.shape[1]
        self.pen = np.zeros(nb)
        self.pen[3:] = 1.0  # the affine part (first three monomials) is free
        self.floor = 1.5 * lt.pixel_um

    def cost(self, Cf_) -> float:
        """Mean capped label distance (symmetric with the reverse term) + the outline
        weight x the mean capped outline distance (um)."""
        st, lt = self.st, self.lt
        cap = st.score_cap_um
        P = self.P0 + self.B0 @ Cf_
        _, d = lt.lookup(P, self.cd, self.groups)
        ld = float(np.where(np.isfinite(d), np.minimum(d, cap), cap).mean())
        if st.reverse_weight > 0 and lt.edges:
            rc = reverse_cost(P, self.groups, lt, cap, st.score_trim_q)
            ld = (ld + st.reverse_weight * rc) / (1.0 + st.reverse_weight)
        od = 0.0
        if self.use_outline:
            do, _ = self.tree.query(self.Q0 + self.Bq @ Cf_)
            od = float(np.minimum(do, cap).mean())
        return ld + st.outline_weight * od

    def solve(self, Cf):
        """The coefficients fitting the pairs matched at ``Cf`` (None: too few)."""
        st, lt, B0, P0 = self.st, self.lt, self.B0, self.P0
        P = P0 + B0 @ Cf
        tgt, d = lt.lookup(P, self.cd, self.groups)
        good = np.isfinite(d)
        if good.sum() < 10 * B0.shape[1]:
            return None
        thr = max(float(np.quantile(d[good], st.trim_q)), self.floor)
        keep = good & (d <= min(thr, st.cap_um) + 1e-9)
        Bs, R = B0[keep], tgt[keep] - P0[keep]
        w = np.ones(len(R))
        if st.reverse_weight > 0 and lt.edges:
            # reverse pairs: the cells' own index tells their basis rows
            rs_idx, rd = _reverse_pairs_idx(
                P, self.groups, lt, st.reverse_trim_q, st.cap_um, self.floor
            )
            if len(rs_idx) >= 3:
                n_fwd = len(w)
                Bs = np.vstack([Bs, B0[rs_idx]])
                R = np.vstack([R, rd - P0[rs_idx]])
                w = np.concatenate(
                    [w, np.full(len(rs_idx), st.reverse_weight * n_fwd / len(rs_idx))]
                )
        if self.use_outline:
            Q = self.Q0 + self.Bq @ Cf
            do, j = self.tree.query(Q)
            thr_o = max(2.5 * float(np.median(do)), self.floor)
            ko = do <= thr_o
            if ko.sum() >= 3:
                Bs = np.vstack([Bs, self.Bq[ko]])
                R = np.vstack([R, self.tree.data[j[ko]] - self.Q0[ko]])
                w = np.concatenate(
                    [w, np.full(int(ko.sum()), st.outline_weight * len(w) / ko.sum())]
                )
        G = (Bs * w[:, None]).T @ Bs + np.diag(self.pen * self.ws.ridge * w.sum())
        return np.linalg.solve(G, (Bs * w[:, None]).T @ R)


def fit_spread(
    A: np.ndarray,
    cells: np.ndarray,
    cell_div: np.ndarray,
    lt: LabelTemplate,
    outline_pts: np.ndarray | None = None,
    tmpl_tree=None,
    fit: LabelFitSettings | None = None,
    delta_um: float = 100.0,
) -> float:
    """How well the data pin the in-plane fit: the fit is restarted from ``A`` moved by
    ``delta_um`` along +-x and +-y and refitted (:func:`label_fit` with ``fit``, default
    its defaults); returns the RMS distance (um) between the refitted and the original
    positions of the cells, over the four restarts. A well-constrained fit returns to
    itself (a few um); where the labels and the outline leave a plateau (few regions
    cut, warped or torn tissue) the restarts stay where they land, and the spread is
    about the error one must expect from the fit. The registration's restarts take
    plain steps (no Anderson acceleration) with the reverse pairs trimmed at
    ``FinishSettings.spread_reverse_trim_q``: the confidence's spread scale
    (``ConfidenceSettings.spread_half_um``) was calibrated on them."""
    c = np.asarray(cells, dtype=float)
    P = apply_affine(A, c)
    out = []
    for d in ((delta_um, 0.0), (-delta_um, 0.0), (0.0, delta_um), (0.0, -delta_um)):
        Ap = np.asarray(A, dtype=float).copy()
        Ap[:2, 2] += d
        Ak, _ = label_fit(Ap, c, cell_div, lt, outline_pts, tmpl_tree, fit)
        out.append(np.mean(np.sum((apply_affine(Ak, c) - P) ** 2, axis=1)))
    return float(np.sqrt(np.mean(out)))
