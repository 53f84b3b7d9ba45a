"""Midline frames and the four anchor points of the published method.

A *midline* is two points (2, 2) (x, y) um, dorsal first then ventral. It defines a
frame: ``u`` = unit vector dorsal -> ventral, ``v`` = the perpendicular pointing to the
template's +x side (for an unmirrored section). In canonical coordinates a point ``p``
has ``a = (p - o) . v`` (across the midline) and ``b = (p - o) . u`` (along it).

Anchors (method step 4): two points where a line parallel to the midline meets the
outline, with the line placed where the distance between the two intersections is
largest, and two where a perpendicular line does the same. For a full coronal section
the two points where the midline itself meets the outline are added ("midline ends").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .._errors import BrainAtlasInputError

__all__ = ["ANCHOR_NAMES", "MidlineFrame", "outline_anchors", "validate_midline"]

ANCHOR_NAMES = ("parallel_dorsal", "parallel_ventral", "perpendicular_a", "perpendicular_b")


class MidlineFrame:
    """Frame from a midline: origin ``o`` (midpoint), ``u`` (dorsal -> ventral), ``v``.

    ``mirrored`` flips ``v`` (a section seen from the other face).
    """

    def __init__(self, p_dorsal, p_ventral, mirrored: bool = False):
        p1 = np.asarray(p_dorsal, dtype=float)
        p2 = np.asarray(p_ventral, dtype=float)
        d = p2 - p1
        n = float(np.hypot(*d))
        if n <= 0:
            raise BrainAtlasInputError("the two midline points are identical")
        self.p1, self.p2 = p1, p2
        self.o = (p1 + p2) / 2.0
        self.u = d / n
        v = np.array([self.u[1], -self.u[0]])  # +x for u = +y (image axes, y down)
        self.v = -v if mirrored else v
        self.mirrored = bool(mirrored)

    def to_canonical(self, pts: np.ndarray) -> np.ndarray:
        q = np.asarray(pts, dtype=float).reshape(-1, 2) - self.o
        return np.column_stack([q @ self.v, q @ self.u])

    def from_canonical(self, ab: np.ndarray) -> np.ndarray:
        ab = np.asarray(ab, dtype=float).reshape(-1, 2)
        return self.o + ab[:, :1] * self.v + ab[:, 1:2] * self.u

    def to_canonical_matrix(self) -> np.ndarray:
        """(3, 3) affine: input um -> canonical (a, b)."""
        M = np.eye(3)
        M[0, :2] = self.v
        M[1, :2] = self.u
        M[:2, 2] = -M[:2, :2] @ self.o
        return M

    def from_canonical_matrix(self) -> np.ndarray:
        """(3, 3) affine: canonical (a, b) -> input um."""
        return np.linalg.inv(self.to_canonical_matrix())


def validate_midline(midline, points: np.ndarray, mask_contains=None) -> np.ndarray:
    """Check a clicked midline against the section's cells; returns it as (2, 2) float.

    Raises :class:`BrainAtlasInputError` when the points are not two finite (x, y)
    pairs, are identical or too close together, or when the line does not pass through
    the tissue (both points far outside the section's extent).
    """
    try:
        m = np.asarray(midline, dtype=float).reshape(2, 2)
    except (TypeError, ValueError):
        raise BrainAtlasInputError(
            "the midline must be two (x, y) points: x1, y1, x2, y2"
        ) from None
    if not np.all(np.isfinite(m)):
        raise BrainAtlasInputError("the midline points must be finite numbers")
    pts = np.asarray(points, dtype=float)
    lo, hi = pts.min(0), pts.max(0)
    extent = float(np.max(hi - lo))
    length = float(np.hypot(*(m[1] - m[0])))
    if length == 0:
        raise BrainAtlasInputError(
            "the two midline points are identical; click two different points"
        )
    if length < 0.02 * extent:
        raise BrainAtlasInputError(
            f"the two midline points are only {length:.3g} um apart (under 2% of the section's "
            f"{extent:.3g} um extent); click one dorsal and one ventral point"
        )
    margin = 0.1 * extent
    inside = np.all((m >= lo - margin) & (m <= hi + margin), axis=1)
    if not inside.any():
        raise BrainAtlasInputError(
            "the midline points lie outside the section; click on the tissue"
        )
    # the line must cross the tissue: some cells lie on both sides of it, near it
    u = (m[1] - m[0]) / length
    nrm = np.array([u[1], -u[0]])
    side = (pts - m[0]) @ nrm
    if not (side.min() < 0 < side.max()) and np.abs(side).min() > 0.1 * extent:
        raise BrainAtlasInputError(
            "the midline does not pass through or along the section's tissue"
        )
    return m


def _crossings(seg_a0, seg_a1, seg_b0, seg_b1, t):
    """For lines a = t (vector of T values) the min and max b of the crossings."""
    a0 = seg_a0[None, :]
    a1 = seg_a1[None, :]
    tt = t[:, None]
    hit = (a0 - tt) * (a1 - tt) < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = (tt - a0) / (a1 - a0)
        b = seg_b0[None, :] + frac * (seg_b1 - seg_b0)[None, :]
    bmin = np.where(hit, b, np.inf).min(1)
    bmax = np.where(hit, b, -np.inf).max(1)
    return bmin, bmax


def _segments(contours, frame: MidlineFrame):
    A0, A1 = [], []
    for c in contours:
        ab = frame.to_canonical(c)
        A0.append(ab)
        A1.append(np.roll(ab, -1, axis=0))
    return np.vstack(A0), np.vstack(A1)


def _best_line(s0, s1, i_line, n_lines):
    """Place a line ``coord[i_line] = t`` where the extent of its crossings is largest."""
    j = 1 - i_line
    lo = min(s0[:, i_line].min(), s1[:, i_line].min())
    hi = max(s0[:, i_line].max(), s1[:, i_line].max())
    t = np.linspace(lo, hi, n_lines + 2)[1:-1]
    bmin, bmax = _crossings(s0[:, i_line], s1[:, i_line], s0[:, j], s1[:, j], t)
    ext = np.where(np.isfinite(bmin) & np.isfinite(bmax), bmax - bmin, 0.0)
    ext_s = ndi.uniform_filter1d(ext, 5, mode="nearest")  # steadier on plateaus
    k = int(np.argmax(ext_s))
    near = np.flatnonzero(ext_s >= ext_s[k] - 0.002 * max(ext_s[k], 1e-12))
    # on a plateau, take the middle of the run that contains the maximum
    runs = np.split(near, np.flatnonzero(np.diff(near) > 1) + 1)
    run = next(r for r in runs if k in r)
    k = int(run[len(run) // 2])
    if not np.isfinite(bmin[k]):
        k = int(np.argmax(ext))
    p_lo = np.zeros(2)
    p_hi = np.zeros(2)
    p_lo[i_line] = p_hi[i_line] = t[k]
    p_lo[j], p_hi[j] = bmin[k], bmax[k]
    return p_lo, p_hi, float(ext[k])


def outline_anchors(
    contours, frame: MidlineFrame, n_lines: int = 400, midline_ends: bool = False
) -> dict:
    """Anchor points of an outline in the frame of a midline.

    Parameters
    ----------
    contours : list of (k, 2) closed polylines (x, y) um.
    frame : :class:`MidlineFrame` of the same image.
    midline_ends : also return where the midline line (a = 0) meets the outline.

    Returns dict with ``points`` (4 or 6, 2) um in the input frame, ordered
    parallel-dorsal, parallel-ventral, perpendicular (-v side), perpendicular (+v side)
    [, midline-dorsal, midline-ventral]; ``extents`` (2,) um of the two lines.
    """
    s0, s1 = _segments(contours, frame)
    p1, p2, e_par = _best_line(s0, s1, 0, n_lines)  # line a = t, parallel to the midline
    q1, q2, e_perp = _best_line(s0, s1, 1, n_lines)  # line b = t, perpendicular
    ab = [p1, p2, q1, q2]
    if midline_ends:
        bmin, bmax = _crossings(s0[:, 0], s1[:, 0], s0[:, 1], s1[:, 1], np.array([0.0]))
        if np.isfinite(bmin[0]) and np.isfinite(bmax[0]):
            ab += [np.array([0.0, bmin[0]]), np.array([0.0, bmax[0]])]
    return {"points": frame.from_canonical(np.array(ab)), "extents": np.array([e_par, e_perp])}
