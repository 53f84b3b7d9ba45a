"""2D affine transforms as 3x3 homogeneous matrices.

Every transform here maps (x, y) micrometres of one frame to (x, y) micrometres of
another and is stored as a (3, 3) float array ``A`` with last row ``[0, 0, 1]``, so a
point ``p`` maps to ``A[:2, :2] @ p + A[:2, 2]``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "apply_affine",
    "compose",
    "decompose",
    "fit_affine",
    "fit_similarity",
    "reflection_x",
    "rotation",
    "translation",
]


def apply_affine(A: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map points ``(n, 2)`` through the (3, 3) affine ``A``; returns ``(n, 2)``."""
    p = np.asarray(pts, dtype=float).reshape(-1, 2)
    return p @ A[:2, :2].T + A[:2, 2]


def compose(*mats: np.ndarray) -> np.ndarray:
    """``compose(A, B, C)`` = A @ B @ C: C is applied first."""
    out = np.eye(3)
    for m in mats:
        out = out @ np.asarray(m, dtype=float)
    return out


def translation(t) -> np.ndarray:
    A = np.eye(3)
    A[:2, 2] = np.asarray(t, dtype=float)
    return A


def rotation(theta_rad: float, centre=(0.0, 0.0)) -> np.ndarray:
    """Rotation by ``theta_rad`` (counter-clockwise in x-right, y-up; clockwise on screen
    where y points down) about ``centre``."""
    c, s = np.cos(theta_rad), np.sin(theta_rad)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return compose(translation(centre), R, translation(-np.asarray(centre, dtype=float)))


def reflection_x(x0: float = 0.0) -> np.ndarray:
    """Mirror about the vertical line ``x = x0``."""
    return np.array([[-1.0, 0.0, 2.0 * x0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def fit_affine(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares affine with ``A(src) ~ dst``.

    Parameters
    ----------
    src, dst : (n, 2) matched points (um), n >= 3 and not all collinear.
    weights : (n,) non-negative weights, default 1.

    Returns the (3, 3) affine. Falls back to a similarity fit when the points are
    (nearly) collinear, where a full affine is undetermined.
    """
    src = np.asarray(src, dtype=float).reshape(-1, 2)
    dst = np.asarray(dst, dtype=float).reshape(-1, 2)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=float)
    if len(src) < 3 or w.sum() <= 0:
        return fit_similarity(src, dst, w)
    sw = np.sqrt(w)[:, None]
    # centre for conditioning
    mu_s = (w[:, None] * src).sum(0) / w.sum()
    mu_d = (w[:, None] * dst).sum(0) / w.sum()
    S = (src - mu_s) * sw
    D = (dst - mu_d) * sw
    cov = S.T @ S
    ev = np.linalg.eigvalsh(cov)
    if ev[0] <= 1e-9 * max(ev[1], 1e-30):
        return fit_similarity(src, dst, w)
    M = np.linalg.solve(cov, S.T @ D).T  # (2, 2): dst ~ M src
    A = np.eye(3)
    A[:2, :2] = M
    A[:2, 2] = mu_d - M @ mu_s
    return A


def fit_similarity(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray | None = None,
    allow_reflection: bool = False,
) -> np.ndarray:
    """Weighted least-squares similarity (rotation, isotropic scale, translation; Umeyama).

    A reflection is only returned when ``allow_reflection``.
    """
    src = np.asarray(src, dtype=float).reshape(-1, 2)
    dst = np.asarray(dst, dtype=float).reshape(-1, 2)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=float)
    if len(src) == 0 or w.sum() <= 0:
        return np.eye(3)
    w = w / w.sum()
    mu_s = w @ src
    mu_d = w @ dst
    S = src - mu_s
    D = dst - mu_d
    C = (D * w[:, None]).T @ S
    U, sig, Vt = np.linalg.svd(C)
    d = np.ones(2)
    if not allow_reflection and np.linalg.det(U @ Vt) < 0:
        d[-1] = -1
    R = U @ np.diag(d) @ Vt
    var = float((w * (S**2).sum(1)).sum())
    scale = float((sig * d).sum() / var) if var > 0 else 1.0
    A = np.eye(3)
    A[:2, :2] = scale * R
    A[:2, 2] = mu_d - scale * R @ mu_s
    return A


def decompose(A: np.ndarray) -> dict:
    """Rotation (deg), scales, shear and reflection of the linear part of ``A``
    (polar decomposition ``M = R S``); handy for reporting and sanity checks."""
    M = np.asarray(A, dtype=float)[:2, :2]
    U, sig, Vt = np.linalg.svd(M)
    R = U @ Vt
    reflected = bool(np.linalg.det(M) < 0)
    if reflected:
        R = U @ np.diag([1, -1]) @ Vt
    ang = float(np.degrees(np.arctan2(R[1, 0], R[0, 0])))
    return {
        "rotation_deg": ang,
        "scales": [float(s) for s in sig],
        "anisotropy": float(sig[0] / max(sig[1], 1e-12)),
        "reflected": reflected,
        "translation": [float(v) for v in np.asarray(A)[:2, 2]],
    }
