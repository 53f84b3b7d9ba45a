"""Quality measures of a section-to-template registration.

- boundary distance (um): distance of each transformed section outline point to the
  template outline, and back;
- mask Dice of the section's tissue (mapped into the atlas slice) against the
  template's tissue;
- per-major-division Dice when the section has region labels: every template pixel
  under the mapped tissue takes the label of its nearest mapped cell and each major
  division's area is compared with the template's;
- label agreement: fraction of labelled cells whose mapped position falls in the
  template division of the same name.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .affine import apply_affine

__all__ = [
    "CCF_MAJOR_DIVISIONS",
    "division_index",
    "label_division_index",
    "major_divisions",
    "registration_metrics",
]

#: Allen CCFv3 major divisions used for Dice and label agreement (those present in
#: an atlas's ontology are used; the demo atlas has ten of them)
CCF_MAJOR_DIVISIONS = (
    "Isocortex",
    "OLF",
    "HPF",
    "CTXsp",
    "STR",
    "PAL",
    "TH",
    "HY",
    "MB",
    "P",
    "MY",
    "CB",
    "fiber tracts",
    "VS",
)

_DIV_CACHE: dict = {}


def major_divisions(atlas, divisions=None) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(acronyms, ids) of the major divisions present in ``atlas.ontology``."""
    onto = atlas.ontology
    names = tuple(d for d in (divisions or CCF_MAJOR_DIVISIONS) if d in onto._by_acronym)
    return names, tuple(onto.id_of(n) for n in names)


def _id_to_div(atlas, divisions=None) -> dict:
    key = (id(atlas.ontology), tuple(divisions or ()))
    if key not in _DIV_CACHE:
        names, ids = major_divisions(atlas, divisions)
        pos = {sid: k for k, sid in enumerate(ids)}
        table = {}
        for sid in atlas.ontology.ids:
            k = -1
            for p in reversed(atlas.ontology.path(int(sid))):
                if p in pos:
                    k = pos[p]
                    break
            table[int(sid)] = k
        _DIV_CACHE[key] = (table, names)
    return _DIV_CACHE[key]


def division_index(atlas, ids: np.ndarray, divisions=None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Index (into the returned names) of the major division of each structure id; -1
    for 0 and for structures under none of them. ``ids`` any shape."""
    import pandas as pd

    table, names = _id_to_div(atlas, divisions)
    ids = np.asarray(ids)
    codes, uniq = pd.factorize(ids.ravel())  # hashing: no sort of the whole array
    vals = np.array([table.get(int(u), -1) for u in uniq], dtype=np.int64)
    return vals[codes].reshape(ids.shape), names


def label_division_index(atlas, labels, divisions=None) -> np.ndarray:
    """Division index of each region label (an acronym of a division or of any structure
    under one); -1 for unknown labels. ``labels`` (n,) strings."""
    table, names = _id_to_div(atlas, divisions)
    lab = np.asarray(labels).astype(str)
    uniq, inv = np.unique(lab, return_inverse=True)
    pos = {n: k for k, n in enumerate(names)}
    by_acr = atlas.ontology._by_acronym
    vals = []
    for u in uniq:
        if u in pos:
            vals.append(pos[u])
        elif u in by_acr:
            vals.append(table.get(by_acr[u], -1))
        else:
            vals.append(-1)
    return np.asarray(vals, dtype=np.int64)[inv]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = float(a.sum() + b.sum())
    return float(2.0 * np.logical_and(a, b).sum() / s) if s > 0 else 1.0


def _unwarp(warp: list, xy: np.ndarray, n_iter: int = 4) -> np.ndarray:
    """Points ``p`` with ``apply_warp(warp, p) = xy`` (fixed-point iteration; the warps
    are smooth displacements much smaller than their length scale)."""
    from .nonlinear import apply_warp

    xy = np.asarray(xy, dtype=float)
    p = xy.copy()
    for _ in range(n_iter):
        p = xy - (apply_warp(warp, p) - p)
    return p


def registration_metrics(
    affine: np.ndarray,
    section_outline,
    template_outline,
    template_labels: np.ndarray,
    resolution_um: float,
    atlas=None,
    cell_xy_atlas: np.ndarray | None = None,
    cell_div: np.ndarray | None = None,
    tol_um: float | None = None,
    warp: list | None = None,
) -> dict:
    """Metrics of a registration.

    Parameters
    ----------
    affine : (3, 3) section um -> atlas slice um (the outline's transform).
    warp : the non-linear stages applied after the affine (:mod:`.nonlinear`): the
        boundary distances and the Dice are then those of the warped outline (its own
        numbers, not the affine's).
    section_outline, template_outline : :class:`~.boundary.Outline`.
    template_labels : (H, W) ids of the template slice.
    atlas : needed for the per-division figures.
    cell_xy_atlas : (n, 2) mapped cell positions (atlas slice um), with
    cell_div : (n,) division index of each cell's region label (-1 unknown).
    tol_um : distance under which an outline point counts as matched (default
        max(2% of the template size, 2 pixels)).

    Returns a dict of floats: boundary_median_um, boundary_mean_um, boundary_p95_um,
    boundary_inlier_fraction, template_coverage, dice, anisotropy, and when labels are
    given label_agreement and dice_<division> per division plus dice_divisions_mean.
    """
    res = float(resolution_um)
    tmask = template_outline.mask
    size_t = template_outline.size_um
    tol = float(tol_um) if tol_um is not None else max(0.02 * size_t, 2 * res)
    P = apply_affine(affine, section_outline.points)
    if warp:
        from .nonlinear import apply_warp

        P = apply_warp(warp, P)
    d1, _ = cKDTree(template_outline.points).query(P)
    d2, _ = cKDTree(P).query(template_outline.points)
    out = {
        "boundary_median_um": float(np.median(d1)),
        "boundary_mean_um": float(np.mean(d1)),
        "boundary_p95_um": float(np.percentile(d1, 95)),
        "boundary_symmetric_um": float(0.5 * (np.mean(d1) + np.mean(d2))),
        "boundary_inlier_fraction": float(np.mean(d1 <= tol)),
        "template_coverage": float(np.mean(d2 <= tol)),
    }
    # section mask in the template grid
    H, W = tmask.shape
    rr, cc = np.mgrid[0:H, 0:W]
    centres = np.column_stack([(cc.ravel() + 0.5) * res, (rr.ravel() + 0.5) * res])
    inv = np.linalg.inv(affine)
    back = _unwarp(warp, centres) if warp else centres
    smask = section_outline.contains(apply_affine(inv, back)).reshape(H, W)
    det = abs(np.linalg.det(affine[:2, :2]))
    s_area_px = section_outline.area_um2 * det / res**2 if not warp else float(smask.sum())
    inter = float(np.logical_and(smask, tmask).sum())
    out["dice"] = float(2 * inter / max(s_area_px + tmask.sum(), 1e-9))
    sv = np.linalg.svd(affine[:2, :2], compute_uv=False)
    out["anisotropy"] = float(sv[0] / max(sv[1], 1e-12))
    if atlas is not None and cell_xy_atlas is not None and cell_div is not None:
        ok = cell_div >= 0
        if ok.sum() >= 10:
            tdiv, names = division_index(atlas, template_labels)
            xy = np.asarray(cell_xy_atlas)[ok]
            cd = np.asarray(cell_div)[ok]
            col = np.clip(np.floor(xy[:, 0] / res).astype(int), -1, W)
            row = np.clip(np.floor(xy[:, 1] / res).astype(int), -1, H)
            inside = (row >= 0) & (row < H) & (col >= 0) & (col < W)
            under = np.full(len(xy), -2)
            under[inside] = tdiv[row[inside], col[inside]]
            out["label_agreement"] = float(np.mean(under == cd))
            if len(xy) > 10000:
                sel = np.random.default_rng(0).choice(len(xy), 10000, replace=False)
                xy, cd = xy[sel], cd[sel]
            # every other pixel is plenty for an area ratio
            sub = np.zeros((H, W), dtype=bool)
            sub[::2, ::2] = True
            _, nn = cKDTree(xy).query(centres[(smask & sub).ravel()])
            smap = np.full(H * W, -1)
            smap[np.flatnonzero((smask & sub).ravel())] = cd[nn]
            smap = smap.reshape(H, W)
            tdiv = np.where(sub, tdiv, -2)
            dices = []
            for k, name in enumerate(names):
                a, b = smap == k, tdiv == k
                if a.any() or b.any():
                    dk = _dice(a, b)
                    out[f"dice_{name}"] = dk
                    dices.append(dk)
            if dices:
                out["dice_divisions_mean"] = float(np.mean(dices))
    return out
