"""Optional smooth (thin-plate spline) refinement after the affine.

After the affine, each section outline point is moved along the template outline's
normal onto the template outline (trimmed like the ICP, so torn edges stay free); a
smoothed thin-plate spline of those displacements, fitted at ~150 control points,
warps every cell. A few rounds are composed. Off by default: it is only worth it when
the tissue is warped, and the benchmark decides (see benchmarks/registration).

A warp is stored as a list of stages ``{"ctrl": (k, 2), "disp": (k, 2), "smoothing": s,
"scale": L}`` in atlas slice um; the spline is fitted on coordinates divided by ``L``
(the template size) so that ``smoothing`` is scale-free; :func:`apply_warp` evaluates
the stages in order.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import RBFInterpolator

__all__ = ["apply_warp", "fit_tps_refinement"]


def apply_warp(stages: list, xy: np.ndarray, chunk: int = 50000) -> np.ndarray:
    """Apply warp stages to (n, 2) atlas slice um points; returns (n, 2)."""
    out = np.asarray(xy, dtype=float).copy()
    for st in stages or []:
        L = float(st.get("scale", 1.0))
        ctrl = np.asarray(st["ctrl"], dtype=float) / L
        disp = np.asarray(st["disp"], dtype=float)
        f = RBFInterpolator(
            ctrl, disp, kernel="thin_plate_spline", smoothing=float(st["smoothing"])
        )
        for i in range(0, len(out), chunk):
            out[i : i + chunk] += f(out[i : i + chunk] / L)
    return out


def fit_tps_refinement(
    outline_pts_atlas: np.ndarray,
    tmpl_points: np.ndarray,
    tmpl_normals: np.ndarray,
    tmpl_tree,
    size_um: float,
    n_ctrl: int = 150,
    rounds: int = 2,
    smoothing: float = 0.3,
    trim_k: float = 2.5,
    floor_um: float = 50.0,
    max_disp_frac: float = 0.05,
) -> list:
    """Fit warp stages moving the (affinely mapped) section outline onto the template.

    Parameters
    ----------
    outline_pts_atlas : (m, 2) section outline points after the affine, atlas um.
    tmpl_points, tmpl_normals, tmpl_tree : the template outline and its KD-tree.
    size_um : template size (sqrt of area), um; control points are scaled by it.
    smoothing : TPS smoothing on coordinates divided by ``size_um``.
    max_disp_frac : displacements larger than this fraction of the size are dropped.
    """
    p = np.asarray(outline_pts_atlas, dtype=float).copy()
    stages = []
    step = max(1, len(p) // n_ctrl)
    for _ in range(rounds):
        d, j = tmpl_tree.query(p)
        thr = min(max(trim_k * float(np.median(d)), floor_um), max_disp_frac * size_um)
        keep = d <= thr
        n = tmpl_normals[j]
        along = np.sum((tmpl_points[j] - p) * n, axis=1)
        disp = along[:, None] * n
        idx = np.flatnonzero(keep)[::step]
        if len(idx) < 10:
            break
        st = {
            "ctrl": p[idx],
            "disp": disp[idx],
            "smoothing": float(smoothing),
            "scale": float(size_um),
        }
        stages.append(st)
        p = apply_warp([st], p)
    return stages
