"""Area refinement: align the section's tissue image with the template's (Gauss-Newton).

After the outline ICP, the affine is refined by minimising the robust (Cauchy)
squared difference between the section's blurred tissue mask ``F`` (1 in tissue, 0
outside, on the section raster) and the template's blurred tissue mask
``T`` sampled at the mapped pixel centres: ``sum_x w(r) r^2, r = T(A x) - F(x)``.
This weighs the whole tissue edge at once rather than sampled outline points, which
helps sparse sections;
Cauchy weights let torn or missing tissue (residual ~1) count little.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .affine import apply_affine
from .icp import check_cancel

__all__ = ["refine_affine_area"]


def _sample(img: np.ndarray, xy: np.ndarray, res: float) -> np.ndarray:
    return ndi.map_coordinates(
        img, [xy[:, 1] / res - 0.5, xy[:, 0] / res - 0.5], order=1, mode="constant", cval=0.0
    )


def refine_affine_area(
    A0: np.ndarray,
    section_outline,
    template_outline,
    n_iter: int = 30,
    cauchy_c: float = 0.3,
    tol: float = 1e-5,
    max_pixels: int = 60000,
    prior_weight: float = 0.0,
    cancel=None,
) -> tuple[np.ndarray, list]:
    """Refine a section -> atlas affine by image alignment.

    Parameters
    ----------
    A0 : (3, 3) starting affine, section um -> atlas slice um.
    section_outline : :class:`~.boundary.Outline` with ``field`` (section raster).
    template_outline : :class:`~.boundary.Outline` with ``field`` (atlas raster, origin 0).
    cauchy_c : Cauchy scale of the residual (image units).
    prior_weight : pull the linear part towards that of ``A0`` (relative to the data).

    Returns (A, cost history).
    """
    F = section_outline.field
    T = template_outline.field
    if F is None or T is None:
        return np.asarray(A0, dtype=float), []
    px = section_outline.pixel_um
    res = template_outline.pixel_um
    H, W = F.shape
    rr, cc = np.mgrid[0:H, 0:W]
    x = np.column_stack(
        [
            section_outline.origin_um[0] + (cc.ravel() + 0.5) * px,
            section_outline.origin_um[1] + (rr.ravel() + 0.5) * px,
        ]
    )
    f = F.ravel().astype(float)
    # only pixels near tissue in either image matter; keep the band around the section
    near = ndi.binary_dilation(F > 0.05, iterations=6).ravel()
    x, f = x[near], f[near]
    if len(x) > max_pixels:
        sel = np.random.default_rng(0).choice(len(x), max_pixels, replace=False)
        x, f = x[sel], f[sel]
    gy, gx = np.gradient(T.astype(float), res)
    mu = x.mean(0)
    xc = x - mu
    A = np.asarray(A0, dtype=float).copy()
    L0 = A[:2, :2].copy()

    def cost_of(Am):
        y = apply_affine(Am, x)
        r = _sample(T, y, res) - f
        w = 1.0 / (1.0 + (r / cauchy_c) ** 2)
        # Cauchy loss: log(1 + (r/c)^2) c^2 / 2
        return float(np.mean(np.log1p((r / cauchy_c) ** 2)) * cauchy_c**2 / 2), y, r, w

    c0, y, r, w = cost_of(A)
    hist = [c0]
    damp = 1e-3
    for _ in range(n_iter):
        check_cancel(cancel)
        tx = _sample(gx, y, res)
        ty = _sample(gy, y, res)
        # parameters act on centred section coordinates: y = L (x - mu) + t'
        J = np.column_stack([tx * xc[:, 0], tx * xc[:, 1], tx, ty * xc[:, 0], ty * xc[:, 1], ty])
        Jw = J * w[:, None]
        G = J.T @ Jw
        g = Jw.T @ r
        if prior_weight > 0:
            lam = prior_weight * np.trace(G) / 6.0
            Lc = A[:2, :2] - L0
            for k, v in zip((0, 1, 3, 4), (Lc[0, 0], Lc[0, 1], Lc[1, 0], Lc[1, 1])):
                G[k, k] += lam
                g[k] += lam * v
        step = _lm_step(A, G, g, mu, damp, hist[-1], cost_of)
        if step is None:
            break
        (A, y, r, w), cn, damp = step
        hist.append(cn)
        if abs(hist[-2] - hist[-1]) <= tol * max(hist[-1], 1e-12):
            break
    return A, hist


def _lm_step(A, G, g, mu, damp, c_last, cost_of):
    """A Levenberg-Marquardt step: the first damping (raised tenfold up to six times)
    whose step lowers the cost below ``c_last``. Returns ((A, y, r, w), cost, damping)
    or None when none does."""
    for _try in range(6):
        Gd = G + damp * np.diag(np.diag(G) + 1e-12)
        try:
            d = np.linalg.solve(Gd, g)
        except np.linalg.LinAlgError:
            return None
        L = A[:2, :2] - d[[0, 1, 3, 4]].reshape(2, 2)
        tprime = A[:2, :2] @ mu + A[:2, 2] - d[[2, 5]]
        An = np.eye(3)
        An[:2, :2] = L
        An[:2, 2] = tprime - L @ mu
        cn, yn, rn, wn = cost_of(An)
        if cn < c_last:
            return (An, yn, rn, wn), cn, max(damp / 3, 1e-6)
        damp *= 10
    return None
