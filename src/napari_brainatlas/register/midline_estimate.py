"""The midline of a section without clicks, from its cells (and their region labels).

:func:`estimate_midline` returns the two points ``register_section`` takes as
``midline`` (section um, a dorsal point then a ventral one) and a confidence in [0, 1]:

* **full coronal sections** (``hemisphere="both"``): the mirror-symmetry axis of the
  cells. The section is put on a grid (a smooth tissue image and each tissue pixel's
  majority label); every axis (angle every 2 deg, offsets across the middle 60 % of the
  section), then a finer grid around the best, is scored by reflecting a subsample of
  the labelled cells across it: a reflected cell scores the tissue image where it lands,
  in full when the label there is its own and ``label_mismatch`` of it when not (labels
  tell the left-right axis from the dorsoventral one, which an elliptic outline has as
  well). Confidence: the best score, and its margin over the best axis more than
  ``distinct_deg`` away (:class:`~.settings.MidlineSettings`).
* **coronal hemisections** (``hemisphere`` "left" / "right"): the straight cut edge.
  Runs of nearly collinear edges of the cells' convex hull are candidates; each is
  refitted to the cells along it and scored by its length, how densely cells line it
  (a hull edge that bridges a concavity has none in its middle), and with labels by
  how well the cells' distance from it follows their labels' mean distance from the
  atlas midline (a torn edge is straight too, but not medial).
* **sagittal sections**: a dorsoventral line through the cells' centre. Its direction
  comes from the labels: the centroids of the labels in the section are matched
  (orthogonal Procrustes with scale, reflection allowed) to the labels' centroids in
  atlas slabs at several distances from the midline; the best slab's fit gives the DV
  direction. Without labels the sweep of ``register_section`` has to find it, so the
  confidence is 0.

Which end is dorsal: the cells' positions along the line are correlated with the mean
DV depth of their labels in the atlas. Without labels (or with fewer than two) the end
where the tissue is wider is taken as dorsal, with half the confidence.

Labels are those of :mod:`.ccf_levels` at a given level (major divisions by default,
e.g. ``obs['ccf_division_transfer']`` of :mod:`napari_brainatlas.annotate.ccf_labels`;
"unassigned" is ignored) or integer major-division codes (-1 ignored), with optional
per-cell weights (the certainty of a transferred label). Where each label lies in the
atlas is read once per atlas and level (:func:`label_geometry`). Plain Python, no Qt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import ConvexHull, cKDTree

from .._errors import BrainAtlasInputError
from .settings import MidlineSettings

__all__ = ["MidlineEstimate", "estimate_midline", "label_geometry", "midline_error"]


@dataclass
class MidlineEstimate:
    """An estimated midline.

    Attributes
    ----------
    midline : (2, 2) section um, a dorsal point then a ventral point.
    confidence : in [0, 1].
    method : "symmetry" (full coronal), "cut_edge" (hemisection), "dv_axis" (sagittal).
    dorsal_from : "labels" or "shape" (how the dorsal end was chosen).
    details : scores of the search (plain floats).
    alternatives : runner-up midlines ((2, 2) section um each, best first) that scored
        close to this one, with labels only (hemisections: other straight edges at
        least ``MidlineSettings.alternative_ratio`` of the best score; full coronal
        sections: the best symmetry axis ``distinct_deg`` away, at least
        ``symmetry_alternative_ratio`` of the best); ``register_section`` registers
        with each and keeps the best plane.
    """

    midline: np.ndarray
    confidence: float
    method: str
    dorsal_from: str = "labels"
    details: dict = field(default_factory=dict)
    alternatives: list = field(default_factory=list)

    def tolist(self) -> list:
        return np.asarray(self.midline, float).tolist()


# ---------------------------------------------------------------------- atlas geometry
_GEOM: dict = {}


def label_geometry(atlas, level="division", slab_um: float = 400.0, step_um: float = 100.0) -> dict:
    """Where the labels of ``level`` (:mod:`.ccf_levels`) lie in the atlas (cached):
    ``names`` (the labels), per label ``dv`` mean DV um, ``medial`` mean
    ``|ML - midline|`` / half width, ``count`` voxels, and ``slabs``: for slabs of
    ``|ML - midline|`` ``slab_um`` wide, each label's (AP, DV) centroid and voxel count
    (the sagittal direction fit). Voxels are read every ``step_um``."""
    from .ccf_levels import ccf_level_labels, parse_level

    lv = parse_level(level)
    key = (id(atlas.annotation), id(atlas.ontology), lv, float(slab_um), float(step_um))
    if key in _GEOM:
        return _GEOM[key]
    import pandas as pd

    ann = np.asarray(atlas.annotation)
    step = max(1, int(round(step_um / atlas.resolution_um)))
    sub = ann[::step, ::step, ::step]
    idx = np.argwhere(sub > 0)
    # labels through the unique ids (hashing ints; strings only for the few unique ids)
    id_code, uniq = pd.factorize(sub[tuple(idx.T)])
    lab_code, names = pd.factorize(ccf_level_labels(atlas, np.asarray(uniq), lv))
    names = np.asarray(names, dtype=str)
    empty = np.flatnonzero(names == "")
    code = lab_code[id_code]
    if len(empty):
        ok = code != empty[0]
        idx, code = idx[ok], code[ok]
        keep = np.flatnonzero(names != "")
        remap = np.full(len(names), -1)
        remap[keep] = np.arange(len(keep))
        code, names = remap[code], names[keep]
    um = (idx + 0.5) * step * atlas.resolution_um  # (AP, DV, ML)
    K = len(names)
    half = float(atlas.midline_ml_um)
    med = np.abs(um[:, 2] - half)
    cnt = np.bincount(code, minlength=K).astype(float)
    dv = np.bincount(code, weights=um[:, 1], minlength=K) / np.maximum(cnt, 1)
    medial = np.bincount(code, weights=med / half, minlength=K) / np.maximum(cnt, 1)
    n_slab = int(np.ceil(half / slab_um))
    sl = np.minimum((med / slab_um).astype(int), n_slab - 1)
    slabs = []
    for j in range(n_slab):
        s = sl == j
        c = np.bincount(code[s], minlength=K).astype(float)
        ap = np.bincount(code[s], weights=um[s, 0], minlength=K) / np.maximum(c, 1)
        dvj = np.bincount(code[s], weights=um[s, 1], minlength=K) / np.maximum(c, 1)
        slabs.append({"d_um": (j + 0.5) * slab_um, "count": c, "xy": np.column_stack([ap, dvj])})
    out = {
        "names": np.asarray(names, dtype=str),
        "index": {str(n): k for k, n in enumerate(names)},
        "dv": dv,
        "medial": medial,
        "count": cnt,
        "slabs": slabs,
    }
    _GEOM[key] = out
    return out


# ---------------------------------------------------------------------- helpers
def _prep(xy, labels, weights, atlas, level, step_um: float = 100.0):
    """Coordinates, label codes into ``label_geometry(atlas, level)`` (-1 ignored) or
    None, weights (0 for ignored cells), and the geometry (or None)."""
    xy = np.asarray(xy, dtype=float)
    if xy.ndim != 2 or xy.shape[1] < 2 or len(xy) < 20:
        raise BrainAtlasInputError("a midline estimate needs at least 20 cells with (x, y) um")
    xy = xy[:, :2]
    if not np.all(np.isfinite(xy)):
        raise BrainAtlasInputError("the cell coordinates must be finite numbers")
    w = np.ones(len(xy)) if weights is None else np.asarray(weights, dtype=float).ravel()
    if len(w) != len(xy):
        raise BrainAtlasInputError("weights must have one value per cell")
    w = np.where(np.isfinite(w), np.clip(w, 0.0, None), 0.0)
    if labels is None:
        return xy, None, w, None
    if atlas is None:
        raise BrainAtlasInputError("region labels need the atlas they refer to")
    lab = np.asarray(labels)
    if len(lab) != len(xy):
        raise BrainAtlasInputError("labels must have one value per cell")
    if np.issubdtype(lab.dtype, np.integer):  # major-division codes
        from .metrics import major_divisions

        names = np.array(list(major_divisions(atlas)[0]) + [""], dtype=object)
        lab = names[np.where(lab >= 0, lab, len(names) - 1)]
        level = "division"
    geom = label_geometry(atlas, level, step_um=step_um)
    import pandas as pd

    cats, uniq = pd.factorize(pd.Series(lab).astype(str))
    table = np.array([geom["index"].get(str(u), -1) for u in uniq] + [-1], dtype=np.int64)
    codes = table[cats]
    w = np.where(codes >= 0, w, 0.0)
    if np.sum(w > 0) < 20:
        return xy, None, w, None  # too few labelled cells: shape only
    return xy, codes, w, geom


def _symmetry_codes(labels, n: int):
    """Integer codes (-1 ignored) and weights of labels for the symmetry test."""
    import pandas as pd

    lab = np.asarray(labels)
    if len(lab) != n:
        raise BrainAtlasInputError("symmetry_labels must have one value per cell")
    if np.issubdtype(lab.dtype, np.integer):
        codes = lab.astype(np.int64)
    else:
        s = pd.Series(lab).astype(str)
        codes, _ = pd.factorize(s.where(~s.isin(["", "unassigned", "nan", "None"])))
    codes = np.asarray(codes, dtype=np.int64)
    if np.sum(codes >= 0) < 20:
        return None, np.ones(n)
    return codes, (codes >= 0).astype(float)


def _spacing(xy: np.ndarray, rng) -> float:
    s = xy if len(xy) <= 5000 else xy[rng.choice(len(xy), 5000, replace=False)]
    d, _ = cKDTree(s).query(s, k=2)
    return float(np.median(d[:, 1])) * float(np.sqrt(len(s) / len(xy)))


def _orient(u, xy, div, w, g):
    """Orient ``u`` dorsal -> ventral: returns (u, how, strength in [0, 1])."""
    if div is not None:
        ok = (div >= 0) & (w > 0)
        if len(np.unique(div[ok])) >= 2:
            t = (xy[ok] - xy[ok].mean(0)) @ u
            m = g["dv"][div[ok]]
            ww = w[ok]
            tc, mc = t - np.average(t, weights=ww), m - np.average(m, weights=ww)
            cov = np.average(tc * mc, weights=ww)
            den = np.sqrt(np.average(tc**2, weights=ww) * np.average(mc**2, weights=ww))
            r = float(cov / den) if den > 0 else 0.0
            return (u if r >= 0 else -u), "labels", float(min(1.0, abs(r) / 0.5))
    # shape: the dorsal end of a brain section is the wider one
    t = (xy - xy.mean(0)) @ u
    nrm = np.array([-u[1], u[0]])
    a = (xy - xy.mean(0)) @ nrm
    lo, hi = np.quantile(t, [0.33, 0.67])
    w_lo = np.ptp(a[t <= lo]) if np.any(t <= lo) else 0.0
    w_hi = np.ptp(a[t >= hi]) if np.any(t >= hi) else 0.0
    return (u if w_lo >= w_hi else -u), "shape", 0.5


def _ends(xy, u, o, band, ends=(0.1, 0.9)):
    """Dorsal and ventral points on the line (o, u) at ``ends`` of the cells near it."""
    nrm = np.array([-u[1], u[0]])
    d = np.abs((xy - o) @ nrm)
    near = d <= band
    if near.sum() < 10:
        near = d <= np.quantile(d, 0.1)
    t = (xy[near] - o) @ u
    t0, t1 = np.min(t), np.max(t)
    a, b = t0 + ends[0] * (t1 - t0), t0 + ends[1] * (t1 - t0)
    return np.array([o + a * u, o + b * u])


# ---------------------------------------------------------------------- symmetry
class _Raster:
    """The section on a grid: a smooth tissue image and, with labels, each tissue
    pixel's label (the majority of its cells, or of the nearest labelled pixel)."""

    def __init__(self, xy, labels, w, pixel, mismatch: float = 0.25):
        from scipy import ndimage as ndi

        self.mismatch = float(mismatch)
        self.pix = float(pixel)
        self.lo = xy.min(0) - 3 * pixel
        shape = (np.ceil((xy.max(0) - self.lo) / pixel).astype(int) + 4)[::-1]  # (H, W)
        self.shape = tuple(int(v) for v in shape)
        r, c = self._rc(xy)
        cnt = np.zeros(self.shape)
        np.add.at(cnt, (r, c), 1.0)
        occ = ndi.binary_closing(cnt > 0, iterations=1) | (cnt > 0)
        occ = ndi.binary_fill_holes(occ)
        self.tissue = ndi.gaussian_filter(occ.astype(float), 0.7)
        self.labels = None
        if labels is not None:
            ok = (labels >= 0) & (w > 0)
            K = int(labels[ok].max()) + 1 if ok.any() else 1
            votes = np.zeros(self.shape + (K,))
            np.add.at(votes, (r[ok], c[ok], labels[ok]), w[ok])
            lab = np.where(votes.sum(-1) > 0, votes.argmax(-1), -1)
            _, (ri, ci) = ndi.distance_transform_edt(lab < 0, return_indices=True)
            self.labels = np.where(occ, lab[ri, ci], -2)

    def _rc(self, xy):
        c = np.floor((xy[..., 0] - self.lo[0]) / self.pix).astype(np.int64)
        r = np.floor((xy[..., 1] - self.lo[1]) / self.pix).astype(np.int64)
        return np.clip(r, 0, self.shape[0] - 1), np.clip(c, 0, self.shape[1] - 1)

    def score(self, pts, lab, inside):
        r, c = self._rc(pts)
        g = np.where(inside, self.tissue[r, c], 0.0)
        if self.labels is not None and lab is not None:
            match = (self.labels[r, c] == lab).astype(float)
            g = g * (self.mismatch + (1.0 - self.mismatch) * match)
        return g


def _sym_scores(ras, q, qlab, c, thetas, offs):
    """(len(thetas), len(offs)) symmetry scores of the axes (theta, offset)."""
    out = np.zeros((len(thetas), len(offs)))
    hi = ras.lo + np.array(ras.shape[::-1]) * ras.pix
    for i, th in enumerate(thetas):
        n = np.array([-np.sin(th), np.cos(th)])
        proj = (q - c) @ n  # (m,)
        # reflections of every sample cell across each offset line: (offsets, m, 2)
        refl = q[None, :, :] - 2.0 * (proj[None, :] - offs[:, None])[..., None] * n
        inside = np.all((refl >= ras.lo) & (refl < hi), axis=-1)
        out[i] = ras.score(refl, None if qlab is None else qlab[None, :], inside).mean(1)
    return out


def _symmetry(xy, labels, w, rng, spacing, st: MidlineSettings):
    c = xy.mean(0)
    ext = np.ptp(xy, axis=0)
    size = float(np.sqrt(np.prod(ext) + 1e-12))
    ras = _Raster(xy, labels, w, max(1.5 * spacing, float(ext.max()) / 150.0), st.label_mismatch)
    pool = np.flatnonzero(w > 0) if labels is not None else np.arange(len(xy))

    def sample(k):
        i = rng.choice(pool, min(k, len(pool)), replace=False)
        return xy[i], (None if labels is None else labels[i])

    q, ql = sample(st.coarse_cells)
    th = np.deg2rad(np.arange(0.0, 180.0, 2.0))
    off = np.linspace(-0.3, 0.3, 41) * size
    S = _sym_scores(ras, q, ql, c, th, off)
    i, j = np.unravel_index(np.argmax(S), S.shape)
    best_c = float(S[i, j])
    # the best axis well away from the winner (angles modulo 180)
    dth = np.abs(((np.rad2deg(th) - np.rad2deg(th[i])) + 90.0) % 180.0 - 90.0)
    far = dth >= st.distinct_deg
    other = float(S[far].max()) if np.any(far) else 0.0
    q, ql = sample(st.fine_cells)

    def fine(ti, oj):
        """The axis refined around the coarse one (ti, oj): (u, o, score)."""
        th_f = th[ti] + np.deg2rad(np.arange(-3.0, 3.01, 0.25))
        off_f = off[oj] + np.linspace(-0.02, 0.02, 21) * size
        S2 = _sym_scores(ras, q, ql, c, th_f, off_f)
        i2, j2 = np.unravel_index(np.argmax(S2), S2.shape)
        u = np.array([np.cos(th_f[i2]), np.sin(th_f[i2])])
        return u, c + float(off_f[j2]) * np.array([-u[1], u[0]]), float(S2[i2, j2])

    u, o, sc = fine(i, j)
    margin = (best_c - other) / max(best_c, 1e-12)
    conf = float(np.clip(best_c / 0.6, 0, 1) * np.clip(margin / 0.25, 0, 1))
    alts = []
    if labels is not None and np.any(far) and other >= st.symmetry_alternative_ratio * best_c:
        # the best axis well away from the winner scored close to it (labels read the
        # left-right axis only roughly): a hypothesis for the registration to judge
        rows = np.flatnonzero(far)
        ra, oj = np.unravel_index(np.argmax(S[rows]), (len(rows), S.shape[1]))
        ua, oa, _ = fine(rows[ra], oj)
        alts.append((ua, oa))
    det = {"score": sc, "second": other, "margin": float(margin)}
    return u, o, conf, det, alts[: st.alternatives]


# ---------------------------------------------------------------------- cut edge
def _hull_runs(xy, max_turn_deg: float = 8.0):
    """Runs of nearly collinear convex-hull edges: list of (k, 2) vertex chains."""
    hull = ConvexHull(xy)
    v = xy[hull.vertices]  # counter-clockwise
    e = np.roll(v, -1, axis=0) - v
    ang = np.arctan2(e[:, 1], e[:, 0])
    turn = np.abs((np.diff(np.concatenate([ang, ang[:1]])) + np.pi) % (2 * np.pi) - np.pi)
    # a run continues from edge k to k+1 while the turn between them is small
    brk = np.flatnonzero(np.rad2deg(turn) > max_turn_deg)
    if len(brk) == 0:
        return [np.vstack([v, v[:1]])]
    runs = []
    k = len(v)
    for a, b in zip(brk, np.roll(brk, -1)):
        first = (a + 1) % k
        n_edges = (b - a) % k or k
        chain = [v[(first + t) % k] for t in range(n_edges + 1)]
        runs.append(np.array(chain))
    return runs


def _edge_candidate(xy, chain, spacing, size):
    """Line fitted to the cells along a hull run and how well cells line it."""
    p0, p1 = chain[0], chain[-1]
    L = float(np.hypot(*(p1 - p0)))
    if L < 0.15 * size:
        return None
    u = (p1 - p0) / L
    n = np.array([-u[1], u[0]])
    if np.mean((xy - p0) @ n) < 0:
        n = -n  # n points into the tissue
    band = max(3.0 * spacing, 0.01 * size)
    t = (xy - p0) @ u
    d = (xy - p0) @ n
    sel = (d <= band) & (t >= 0) & (t <= L)
    if sel.sum() < 5:
        return None
    # refit: total least squares through the cells in the band
    pts = xy[sel]
    m = pts.mean(0)
    _, _, vt = np.linalg.svd(pts - m, full_matrices=False)
    u2 = vt[0] if vt[0] @ u >= 0 else -vt[0]
    if abs(u2 @ u) < np.cos(np.deg2rad(10.0)):
        u2 = u
    n2 = np.array([-u2[1], u2[0]])
    if np.mean((xy - m) @ n2) < 0:
        n2 = -n2
    # the line sits at the outer edge of the band cells (a low quantile of the depth)
    o = m + np.quantile((pts - m) @ n2, 0.05) * n2
    bins = max(int(L / max(3.0 * spacing, 1e-9)), 4)
    occ = np.unique(np.clip((t[sel] / L * bins).astype(int), 0, bins - 1))
    return {"u": u2, "n": n2, "o": o, "length": L, "coverage": len(occ) / bins}


def _medial_corr(xy, div, w, g, o, n):
    ok = (div >= 0) & (w > 0)
    if len(np.unique(div[ok])) < 2:
        return 0.0
    d = (xy[ok] - o) @ n
    m = g["medial"][div[ok]]
    ww = w[ok]
    dc, mc = d - np.average(d, weights=ww), m - np.average(m, weights=ww)
    den = np.sqrt(np.average(dc**2, weights=ww) * np.average(mc**2, weights=ww))
    return float(np.average(dc * mc, weights=ww) / den) if den > 0 else 0.0


def _cut_edge(xy, div, w, g, spacing, st: MidlineSettings):
    size = float(np.ptp(xy, axis=0).max())
    cands = []
    for chain in _hull_runs(xy):
        c = _edge_candidate(xy, chain, spacing, size)
        if c is None:
            continue
        c["medial"] = _medial_corr(xy, div, w, g, c["o"], c["n"]) if div is not None else 0.0
        lab = 0.5 + 0.5 * np.clip(c["medial"] / 0.5, -1, 1) if div is not None else 1.0
        c["score"] = (c["length"] / size) * c["coverage"] ** 2 * lab
        cands.append(c)
    if not cands:
        raise BrainAtlasInputError("no straight cut edge found on this section's outline")
    cands.sort(key=lambda c: -c["score"])
    best = cands[0]
    second = cands[1]["score"] if len(cands) > 1 else 0.0
    margin = (best["score"] - second) / max(best["score"], 1e-12)
    conf = float(np.clip(best["coverage"] / 0.7, 0, 1) * np.clip(margin / 0.3, 0, 1))
    if div is not None:
        conf *= float(np.clip(best["medial"] / 0.4, 0, 1))
    det = {
        "length_um": best["length"],
        "coverage": best["coverage"],
        "medial_corr": best["medial"],
        "margin": float(margin),
        "candidates": len(cands),
    }
    # runners-up close to the best: a torn edge can be as straight and as long as the
    # cut; with labels the registration's plane score tells them apart
    alts = [
        (c["u"], c["o"])
        for c in cands[1:]
        if div is not None and c["score"] >= st.alternative_ratio * best["score"]
    ][: st.alternatives]
    return best["u"], best["o"], conf, det, alts


# ---------------------------------------------------------------------- sagittal
def _procrustes(A, B, w):
    """Weighted orthogonal Procrustes (reflection allowed) with scale: R, s, residual."""
    w = w / w.sum()
    a = A - (w[:, None] * A).sum(0)
    b = B - (w[:, None] * B).sum(0)
    M = (b * w[:, None]).T @ a
    U, S, Vt = np.linalg.svd(M)
    R = U @ Vt
    s = S.sum() / max(float((w * (a**2).sum(1)).sum()), 1e-12)
    res = np.sqrt((w * ((s * a @ R.T - b) ** 2).sum(1)).sum())
    spread = np.sqrt((w * (b**2).sum(1)).sum())
    return R, s, float(res / max(spread, 1e-12))


def _dv_axis(xy, div, w, g):
    ok = (div >= 0) & (w > 0)
    K = len(g["names"])
    cnt = np.bincount(div[ok], weights=w[ok], minlength=K)
    cx = np.bincount(div[ok], weights=w[ok] * xy[ok, 0], minlength=K) / np.maximum(cnt, 1e-12)
    cy = np.bincount(div[ok], weights=w[ok] * xy[ok, 1], minlength=K) / np.maximum(cnt, 1e-12)
    present = cnt >= max(10.0, 0.01 * cnt.sum())
    best = None
    for slab in g["slabs"]:
        have = present & (slab["count"] > 0)
        if have.sum() < 3:
            continue
        R, s, res = _procrustes(
            np.column_stack([cx, cy])[have], slab["xy"][have], np.sqrt(cnt[have])
        )
        if best is None or res < best[1]:
            best = (R, res, slab["d_um"], int(have.sum()))
    if best is None:
        return None
    R, res, d_um, k = best
    u = R.T @ np.array([0.0, 1.0])  # the atlas DV axis seen in the section
    conf = float(np.clip(1.0 - res / 0.5, 0, 1) * np.clip((k - 2) / 3.0, 0, 1))
    return u / np.linalg.norm(u), conf, {"residual": res, "ml_from_midline_um": d_um, "labels": k}


# ---------------------------------------------------------------------- main entry
def estimate_midline(
    xy,
    labels=None,
    atlas=None,
    *,
    level="division",
    plane: str = "coronal",
    hemisphere: str = "both",
    weights=None,
    symmetry_labels=None,
    seed: int = 0,
    settings: MidlineSettings | None = None,
) -> MidlineEstimate:
    """Estimate a section's midline (see the module docstring).

    Parameters
    ----------
    xy : (n, 2) cell positions, section um.
    labels : (n,) region labels of the cells at ``level`` (strings, as
        :func:`.ccf_levels.ccf_level_labels` writes them; "", "unassigned" and unknown
        labels are ignored), or integer major-division codes (-1 ignored); None: shape
        only. Finer labels than divisions help where one division fills the section
        (olfactory bulb, cerebellum).
    atlas : the atlas the labels refer to (where each label lies, dorsoventrally and
        from the midline); needed with ``labels``.
    level : the label level (:mod:`.ccf_levels`: "division", "fine", a depth, ...).
    plane : "coronal" or "sagittal"; hemisphere : "both", "left" or "right" (coronal).
    weights : (n,) certainty of each cell's label (e.g. ``1 - uncertainty``).
    symmetry_labels : (n,) labels of any level (strings or integer codes; "",
        "unassigned" and negative codes ignored) used instead of ``labels`` for the
        mirror-symmetry test of full coronal sections only (it compares labels, it needs
        no atlas): e.g. finer transferred labels next to division-level ``labels``.
    settings : :class:`~.settings.MidlineSettings` (default its defaults).

    Returns a :class:`MidlineEstimate` (``midline`` dorsal point first).
    """
    if plane not in ("coronal", "sagittal"):
        raise BrainAtlasInputError(f"plane must be 'coronal' or 'sagittal', not {plane!r}")
    if hemisphere not in ("both", "left", "right"):
        raise BrainAtlasInputError(
            f"hemisphere must be 'both', 'left' or 'right', not {hemisphere!r}"
        )
    st = MidlineSettings() if settings is None else settings
    alts: list = []  # runner-up (direction, point) pairs (cut edges)
    xy, codes, w, geom = _prep(xy, labels, weights, atlas, level, st.geometry_step_um)
    rng = np.random.default_rng(seed)
    spacing = _spacing(xy, rng)
    size = float(np.ptp(xy, axis=0).max())
    if plane == "sagittal":
        res = _dv_axis(xy, codes, w, geom) if codes is not None else None
        if res is None:
            # no labels: the long axis of the cells is roughly AP, DV is across it
            _, evec = np.linalg.eigh(np.cov((xy - xy.mean(0)).T))
            u, conf, det = evec[:, 0], 0.0, {"note": "no labels: across the long axis"}
        else:
            u, conf, det = res
        o = xy.mean(0)
        method = "dv_axis"
    elif hemisphere == "both":
        if symmetry_labels is not None:
            sc, sw = _symmetry_codes(symmetry_labels, len(xy))
            u, o, conf, det, alts = _symmetry(xy, sc, sw, rng, spacing, st)
        else:
            u, o, conf, det, alts = _symmetry(xy, codes, w, rng, spacing, st)
        method = "symmetry"
    else:
        u, o, conf, det, alts = _cut_edge(xy, codes, w, geom, spacing, st)
        method = "cut_edge"
    band = max(3.0 * spacing, 0.03 * size)
    alternatives = [
        _ends(xy, _orient(ua, xy, codes, w, geom)[0], oa, band, st.ends) for ua, oa in alts
    ]
    u, how, strength = _orient(u, xy, codes, w, geom)
    if how == "shape":
        conf *= 0.5
    elif plane != "sagittal":
        conf *= 0.5 + 0.5 * strength
    mid = _ends(xy, u, o, band=band, ends=st.ends)
    det = {
        k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
        for k, v in det.items()
    }
    return MidlineEstimate(mid, float(np.clip(conf, 0, 1)), method, how, det, alternatives)


def midline_error(estimate, truth, plane: str = "coronal") -> dict:
    """Angle (deg, 0-180: the dorsal -> ventral direction counts) between two midlines
    and, for coronal sections, the mean distance (um) of the estimate's points from the
    true line. ``estimate``, ``truth``: (2, 2) dorsal then ventral."""
    e = np.asarray(getattr(estimate, "midline", estimate), float).reshape(2, 2)
    t = np.asarray(truth, float).reshape(2, 2)
    ue = (e[1] - e[0]) / np.linalg.norm(e[1] - e[0])
    ut = (t[1] - t[0]) / np.linalg.norm(t[1] - t[0])
    ang = float(np.degrees(np.arccos(np.clip(ue @ ut, -1, 1))))
    out = {"angle_deg": ang}
    if plane == "coronal":
        n = np.array([-ut[1], ut[0]])
        out["offset_um"] = float(np.mean(np.abs((e - t[0]) @ n)))
    return out
