"""Iterative closest point refinement of a 2D affine between two outlines.

Method step 6: match each transformed section boundary point to its nearest template
boundary point, fit the affine that best aligns the pairs, compose it with the
accumulated transform, repeat until the cost change falls below ``tol``.

Additions for real tissue: the fit minimises the distance of each point to the
tangent line of its partner (point-to-line) plus a small point-to-point term, which
stops the outline sliding and converges in tens of iterations; the matching is symmetric (template points are matched to
their nearest transformed section point too, so the section cannot slide along a part
of the outline) and trimmed (pairs farther than ``trim_k`` x the median distance are
dropped: torn or missing tissue has no partner on the other outline).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from .._errors import Cancelled
from ..jobs import report
from .affine import apply_affine, fit_affine
from .settings import ICPSettings

__all__ = ["ICPResult", "RegistrationCancelled", "check_cancel", "icp_affine", "stable"]


#: the package's one cancel exception (kept under this name for existing callers)
RegistrationCancelled = Cancelled


@dataclass
class ICPResult:
    """Outcome of :func:`icp_affine`.

    affine : (3, 3) source um -> target um.
    cost_history : cost (um, mean trimmed boundary distance, both directions) per iteration.
    stages : the stage of each iteration (``"<start> <model>"``, e.g. "anchors
        similarity", "anchors affine"; "" when the caller named none), parallel to
        ``cost_history``: where it changes, the fit changed model or started afresh.
    converged : the relative cost change fell below ``tol``, the matches stopped
        changing, or the cost stayed within ``stable_rel`` over the last
        ``stable_window`` iterations (a stable oscillation at the optimum).
    iterations : iterations run.
    inlier_fraction : fraction of source boundary points kept at the end.
    """

    affine: np.ndarray
    cost_history: list = field(default_factory=list)
    converged: bool = False
    iterations: int = 0
    inlier_fraction: float = 1.0
    final_cost: float = np.inf
    model_stage: str = "affine"
    stages: list = field(default_factory=list)


def stable(costs, window: int, rel: float) -> bool:
    """The last ``window`` costs lie within ``rel`` x their smallest: the fit sits at its
    optimum (settled, or oscillating between near-equal states)."""
    if window < 2 or len(costs) < window:
        return False
    w = np.asarray(costs[-window:], dtype=float)
    lo = float(np.min(w))
    return bool(np.isfinite(w).all() and float(np.max(w)) - lo <= rel * max(lo, 1e-9))


_SIM = np.array(
    [  # similarity (a, b, tx, ty) -> affine (a11, a12, tx, a21, a22, ty)
        [1, 0, 0, 0],
        [0, -1, 0, 0],
        [0, 0, 1, 0],
        [0, 1, 0, 0],
        [1, 0, 0, 0],
        [0, 0, 0, 1],
    ],
    dtype=float,
)


def fit_affine_point_to_line(
    src,
    dst,
    normals,
    w_line,
    w_point,
    model: str = "affine",
    prior_linear: np.ndarray | None = None,
    prior_weight: float = 0.0,
) -> np.ndarray:
    """Affine minimising sum w_line (n.(A s - d))^2 + w_point |A s - d|^2.

    src, dst : (n, 2); normals : (n, 2) unit normals at dst (rows with zero normals
    contribute only to the point term); w_line, w_point : (n,) weights.
    model : "affine" (6 parameters) or "similarity" (rotation, isotropic scale, shift).
    prior_linear, prior_weight : pull the linear part towards ``prior_linear`` (2, 2):
        adds ``prior_weight * sum(w) * r2 * |L - prior_linear|^2`` with ``r2`` the mean
        squared radius of ``src``, i.e. a deviation is charged like moving every point
        by it, ``prior_weight`` times over.
    """
    src = np.asarray(src, dtype=float)
    dst = np.asarray(dst, dtype=float)
    mu = src.mean(0)
    s = src - mu
    n = len(s)
    one = np.ones(n)
    zero = np.zeros(n)
    # unknowns m = [a11, a12, tx, a21, a22, ty] acting on centred src
    nx, ny = normals[:, 0], normals[:, 1]
    Rl = np.column_stack([nx * s[:, 0], nx * s[:, 1], nx, ny * s[:, 0], ny * s[:, 1], ny])
    bl = nx * dst[:, 0] + ny * dst[:, 1]
    Rx = np.column_stack([s[:, 0], s[:, 1], one, zero, zero, zero])
    Ry = np.column_stack([zero, zero, zero, s[:, 0], s[:, 1], one])
    wl = np.sqrt(w_line)[:, None]
    wp = np.sqrt(w_point)[:, None]
    # normal equations (6 x 6): much faster than an SVD least squares on 2 cores
    Rl = Rl * wl
    Rx = Rx * wp
    Ry = Ry * wp
    if model == "similarity":
        Rl, Rx, Ry = Rl @ _SIM, Rx @ _SIM, Ry @ _SIM
    G = Rl.T @ Rl + Rx.T @ Rx + Ry.T @ Ry
    h = Rl.T @ (bl * wl[:, 0]) + Rx.T @ (dst[:, 0] * wp[:, 0]) + Ry.T @ (dst[:, 1] * wp[:, 0])
    if prior_linear is not None and prior_weight > 0 and model == "affine":
        r2 = float(np.mean(np.sum(s**2, axis=1)))
        lam = prior_weight * float(np.sum(w_line) + np.sum(w_point)) * r2
        L0 = np.asarray(prior_linear, dtype=float)
        for k, val in zip((0, 1, 3, 4), (L0[0, 0], L0[0, 1], L0[1, 0], L0[1, 1])):
            G[k, k] += lam
            h[k] += lam * val
    try:
        m = np.linalg.solve(G, h)
    except np.linalg.LinAlgError:
        m = np.linalg.lstsq(G, h, rcond=None)[0]
    if model == "similarity":
        m = _SIM @ m
    A = np.eye(3)
    A[0] = [m[0], m[1], m[2] - m[0] * mu[0] - m[1] * mu[1]]
    A[1] = [m[3], m[4], m[5] - m[3] * mu[0] - m[4] * mu[1]]
    return A


def check_cancel(cancel) -> None:
    """Raise :class:`RegistrationCancelled` when ``cancel()`` says so (no-op for None)."""
    if cancel is not None and cancel():
        raise RegistrationCancelled("registration cancelled")


def icp_affine(
    src: np.ndarray,
    tgt: np.ndarray,
    A0: np.ndarray,
    settings: ICPSettings | None = None,
    *,
    floor_um: float = 0.0,
    landmarks: tuple | None = None,
    tgt_tree: cKDTree | None = None,
    tgt_normals: np.ndarray | None = None,
    progress=None,
    cancel=None,
    iter_offset: int = 0,
    stage_label: str = "",
) -> ICPResult:
    """Refine ``A0`` so that ``A(src)`` lies on the target outline.

    Parameters
    ----------
    src : (n, 2) section boundary points, section um.
    tgt : (m, 2) template boundary points, atlas slice um (dense).
    A0 : (3, 3) initial section -> atlas affine.
    settings : :class:`~.settings.ICPSettings` (default: its defaults; iterations, tolerance, trimming: pairs
        farther than ``max(trim_k * median, floor_um)`` are dropped, the model, the
        prior on the linear part, the Cauchy weights).
    landmarks : optional ``(src_pts (k,2), dst_pts (k,2), weights (k,))`` user pairs kept
        in every fit.
    tgt_normals : (m, 2) unit normals of ``tgt``; given, the fit is point-to-line with
        a ``point_weight`` share of point-to-point (plain point-to-point otherwise).
    progress : ``progress(done, total, info)`` (:mod:`napari_brainatlas.jobs`) after each
        iteration: ``done`` = ``iter_offset`` + iterations, ``total`` None, ``info`` =
        ``{"stage": "icp", "cost_um": cost}`` plus ``"fit_stage": stage_label`` when
        one is given.
    cancel : ``cancel() -> bool``; when it returns True, :class:`RegistrationCancelled`.
    stage_label : what this run is (e.g. "anchors similarity"), kept in ``stages``.
    """
    st = ICPSettings() if settings is None else settings
    src = np.asarray(src, dtype=float)
    tgt = np.asarray(tgt, dtype=float)
    tree = tgt_tree if tgt_tree is not None else cKDTree(tgt)
    # a sparser copy of the target for the reverse matches, about as dense as the source
    step = max(1, round(len(tgt) / max(len(src), 1)))
    tgt_r = tgt[::step]
    nrm_r = tgt_normals[::step] if tgt_normals is not None else None
    A = np.asarray(A0, dtype=float).copy()
    hist: list[float] = []
    converged = False
    prev_pairs = None
    it = 0
    for it in range(1, st.max_iter + 1):
        check_cancel(cancel)
        P = apply_affine(A, src)
        d1, j = tree.query(P)
        keep1, S, D, N, W, cost = _forward_pairs(P, d1, j, tgt, tgt_normals, st, floor_um)
        if st.symmetric:
            cost = _reverse_matches(P, tgt_r, nrm_r, keep1, st, floor_um, (S, D, N, W), cost)
        hist.append(cost)
        extra = {"fit_stage": stage_label} if stage_label else {}
        report(progress, iter_offset + it, None, stage="icp", cost_um=cost, **extra)
        if landmarks is not None and len(landmarks[0]):
            ls, ld, lw = landmarks
            S.append(apply_affine(A, ls))
            D.append(np.asarray(ld, dtype=float))
            N.append(np.zeros((len(ls), 2)))
            W.append(np.asarray(lw, dtype=float) * max(keep1.sum(), 1) / max(len(ls), 1))
        dA = _increment(
            A,
            A0,
            np.vstack(S),
            np.vstack(D),
            np.vstack(N),
            np.concatenate(W),
            st,
            tgt_normals is None,
        )
        A = dA @ A
        pairs = (j.tobytes(), keep1.tobytes())
        if len(hist) > 1:
            change = abs(hist[-2] - hist[-1]) / max(hist[-1], 1e-9)
            if change < st.tol or pairs == prev_pairs:
                converged = True
                break
        prev_pairs = pairs
    converged = converged or stable(hist, st.stable_window, st.stable_rel)
    P = apply_affine(A, src)
    d1, _ = tree.query(P)
    thr1 = max(st.trim_k * float(np.median(d1)), floor_um)
    return ICPResult(
        affine=A,
        cost_history=hist,
        converged=converged,
        iterations=it,
        inlier_fraction=float(np.mean(d1 <= thr1)),
        final_cost=hist[-1] if hist else np.inf,
        model_stage=st.model,
        stages=[stage_label] * len(hist),
    )


def _forward_pairs(P, d1, j, tgt, tgt_normals, st: ICPSettings, floor_um: float):
    """The trimmed section -> template pairs: (keep mask, [points], [partners],
    [normals], [weights], their mean distance)."""
    thr1 = max(st.trim_k * float(np.median(d1)), floor_um)
    keep1 = d1 <= thr1
    S = [P[keep1]]
    D = [tgt[j[keep1]]]
    N = [tgt_normals[j[keep1]] if tgt_normals is not None else np.zeros((int(keep1.sum()), 2))]
    c1 = max(st.cauchy_k * float(np.median(d1)), 0.25 * floor_um, 1e-9)
    W = [1.0 / (1.0 + (d1[keep1] / c1) ** 2) if st.cauchy_k > 0 else np.ones(int(keep1.sum()))]
    return keep1, S, D, N, W, float(d1[keep1].mean())


def _reverse_matches(P, tgt_r, nrm_r, keep1, st: ICPSettings, floor_um, lists, cost) -> float:
    """Append the trimmed template -> section pairs to ``lists`` (S, D, N, W); returns
    the symmetric cost."""
    S, D, N, W = lists
    d2, i = cKDTree(P).query(tgt_r)
    thr2 = max(st.trim_k * float(np.median(d2)), floor_um)
    keep2 = d2 <= thr2
    S.append(P[i[keep2]])
    D.append(tgt_r[keep2])
    N.append(nrm_r[keep2] if nrm_r is not None else np.zeros((int(keep2.sum()), 2)))
    c2 = max(st.cauchy_k * float(np.median(d2)), 0.25 * floor_um, 1e-9)
    w2 = 1.0 / (1.0 + (d2[keep2] / c2) ** 2) if st.cauchy_k > 0 else np.ones(int(keep2.sum()))
    W.append(w2 * keep1.sum() / max(keep2.sum(), 1))
    return 0.5 * (cost + float(d2[keep2].mean()))


def _increment(A, A0, Sa, Da, Na, Wa, st: ICPSettings, no_normals: bool) -> np.ndarray:
    """The affine increment that best aligns the pairs (point-to-line with normals)."""
    if no_normals and st.model == "affine":
        return fit_affine(Sa, Da, Wa)
    has_n = np.any(Na != 0, axis=1)
    w_point = Wa * np.where(has_n, st.point_weight, 1.0)
    if st.prior_weight > 0 and st.model == "affine":
        # the prior is on the accumulated transform: write it for the increment
        L0 = np.asarray(A0, dtype=float)[:2, :2] @ np.linalg.inv(A[:2, :2])
        return fit_affine_point_to_line(
            Sa,
            Da,
            Na,
            Wa * has_n,
            w_point,
            model=st.model,
            prior_linear=L0,
            prior_weight=st.prior_weight,
        )
    return fit_affine_point_to_line(Sa, Da, Na, Wa * has_n, w_point, model=st.model)
