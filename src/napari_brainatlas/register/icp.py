"""Iterative closest point refinement of a 2D affine between two outlines.

Method step 6: match each transformed section boundary point to its nearest template
boundary point, fit the affine that best aligns the pairs, compose it with the
accumulated transform, repeat until the cost change falls below ``tol``.

Additions for real tissue: the matching is symmetric (template points are matched to
their nearest transformed section point too, so the section cannot slide along a part
of the outline) and trimmed (pairs farther than ``trim_k`` x the median distance are
dropped: torn or missing tissue has no partner on the other outline).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from .affine import apply_affine, fit_affine

__all__ = ["ICPResult", "icp_affine", "RegistrationCancelled"]


class RegistrationCancelled(RuntimeError):
    """Raised when the ``cancel()`` callable returned True during a registration."""


@dataclass
class ICPResult:
    """Outcome of :func:`icp_affine`.

    affine : (3, 3) source um -> target um.
    cost_history : cost (um, mean trimmed boundary distance, both directions) per iteration.
    converged : the relative cost change fell below ``tol`` (or the matches stopped changing).
    iterations : iterations run.
    inlier_fraction : fraction of source boundary points kept at the end.
    """

    affine: np.ndarray
    cost_history: list = field(default_factory=list)
    converged: bool = False
    iterations: int = 0
    inlier_fraction: float = 1.0
    final_cost: float = np.inf


def icp_affine(
    src: np.ndarray,
    tgt: np.ndarray,
    A0: np.ndarray,
    max_iter: int = 100,
    tol: float = 1e-5,
    trim_k: float = 2.5,
    floor_um: float = 0.0,
    symmetric: bool = True,
    landmarks: tuple | None = None,
    tgt_tree: cKDTree | None = None,
    progress=None,
    cancel=None,
    iter_offset: int = 0,
) -> ICPResult:
    """Refine ``A0`` so that ``A(src)`` lies on the target outline.

    Parameters
    ----------
    src : (n, 2) section boundary points, section um.
    tgt : (m, 2) template boundary points, atlas slice um (dense).
    A0 : (3, 3) initial section -> atlas affine.
    trim_k : pairs farther than ``max(trim_k * median, floor_um)`` are dropped.
    landmarks : optional ``(src_pts (k,2), dst_pts (k,2), weights (k,))`` user pairs kept
        in every fit.
    progress : ``progress(i, cost)`` called after each iteration.
    cancel : ``cancel() -> bool``; when it returns True, :class:`RegistrationCancelled`.
    """
    src = np.asarray(src, dtype=float)
    tgt = np.asarray(tgt, dtype=float)
    tree = tgt_tree if tgt_tree is not None else cKDTree(tgt)
    # a sparser copy of the target for the reverse matches, about as dense as the source
    step = max(1, int(round(len(tgt) / max(len(src), 1))))
    tgt_r = tgt[::step]
    A = np.asarray(A0, dtype=float).copy()
    hist: list[float] = []
    converged = False
    prev_pairs = None
    it = 0
    keep1 = np.ones(len(src), dtype=bool)
    for it in range(1, max_iter + 1):
        if cancel is not None and cancel():
            raise RegistrationCancelled("registration cancelled")
        P = apply_affine(A, src)
        d1, j = tree.query(P)
        thr1 = max(trim_k * float(np.median(d1)), floor_um)
        keep1 = d1 <= thr1
        S = [P[keep1]]
        D = [tgt[j[keep1]]]
        W = [np.ones(int(keep1.sum()))]
        cost = float(d1[keep1].mean())
        if symmetric:
            d2, i = cKDTree(P).query(tgt_r)
            thr2 = max(trim_k * float(np.median(d2)), floor_um)
            keep2 = d2 <= thr2
            S.append(P[i[keep2]])
            D.append(tgt_r[keep2])
            W.append(np.full(int(keep2.sum()), keep1.sum() / max(keep2.sum(), 1)))
            cost = 0.5 * (cost + float(d2[keep2].mean()))
        hist.append(cost)
        if progress is not None:
            progress(iter_offset + it, cost)
        if landmarks is not None and len(landmarks[0]):
            ls, ld, lw = landmarks
            S.append(apply_affine(A, ls))
            D.append(np.asarray(ld, dtype=float))
            W.append(np.asarray(lw, dtype=float) * max(keep1.sum(), 1) / max(len(ls), 1))
        dA = fit_affine(np.vstack(S), np.vstack(D), np.concatenate(W))
        A = dA @ A
        pairs = (j.tobytes(), keep1.tobytes())
        if len(hist) > 1:
            change = abs(hist[-2] - hist[-1]) / max(hist[-1], 1e-9)
            if change < tol or pairs == prev_pairs:
                converged = True
                break
        prev_pairs = pairs
    P = apply_affine(A, src)
    d1, _ = tree.query(P)
    thr1 = max(trim_k * float(np.median(d1)), floor_um)
    return ICPResult(
        affine=A,
        cost_history=hist,
        converged=converged,
        iterations=it,
        inlier_fraction=float(np.mean(d1 <= thr1)),
        final_cost=hist[-1] if hist else np.inf,
    )
