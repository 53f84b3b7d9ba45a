"""Level of detail for cells in 3D (no napari here): which of millions of registered
cells to draw for a camera, so that software OpenGL (Mesa llvmpipe) or a modest GPU
stays interactive.

The 2D rule of :mod:`napari_brainatlas.lod`, in 3D: each cell has a fixed random rank;
for a view, the cells in it (inside the visible rectangle of an orthographic camera,
grown by a margin) are all drawn when at most ``budget`` are, else those with
``rank < k``, ``k`` the budget scaled by the fraction of cells in view and rounded up to
a geometric ladder (so small camera moves keep the same cells, and a cell drawn from far
is drawn from closer too). While the camera moves a smaller budget is drawn (progressive
refinement: the full budget follows when it rests). A *focus* (the cells of a highlighted region, or near a CCF
plane) gets most of the budget and the other cells the rest, so what the user asked to
see is drawn densely while the context stays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lod import LADDER, MARGIN

__all__ = ["BUDGET_3D", "FOCUS_SHARE", "MOTION_BUDGET_3D", "LevelOfDetail3D", "OrthoView"]

#: cells drawn at most in 3D when the camera rests, and while it moves (orbit, zoom,
#: pan; refined to the full budget once it rests). llvmpipe draws a 4 px point in about
#: 10 us on this 2-core machine: see benchmarks/viewer/RESULTS_viewer.md, 3D section
BUDGET_3D = 40_000
MOTION_BUDGET_3D = 8_000
#: share of the budget for the focus cells when there is a focus
FOCUS_SHARE = 0.75


@dataclass(frozen=True)
class OrthoView:
    """What an orthographic camera sees: ``center`` (3,) and the unit ``right``/``up``
    vectors of the screen in data coordinates, ``half`` (half height, half width) of the
    visible rectangle in data units."""

    center: np.ndarray
    up: np.ndarray
    right: np.ndarray
    half: tuple[float, float]

    @classmethod
    def from_camera(cls, center, view_direction, up_direction, canvas_hw, zoom) -> OrthoView:
        v = np.asarray(view_direction, float)
        u = np.asarray(up_direction, float)
        v = v / (np.linalg.norm(v) or 1.0)
        u = u - v * float(u @ v)
        u = u / (np.linalg.norm(u) or 1.0)
        r = np.cross(v, u)
        h, w = (float(s) for s in canvas_hw)
        z = float(zoom) or 1.0
        return cls(np.asarray(center, float), u, r, (h / z / 2.0, w / z / 2.0))

    def contains(self, xyz: np.ndarray, margin: float = MARGIN) -> np.ndarray:
        p = np.asarray(xyz, dtype=np.float32) - self.center.astype(np.float32)
        hy, hx = (h * (1.0 + 2.0 * margin) for h in self.half)
        y = p @ self.up.astype(np.float32)
        x = p @ self.right.astype(np.float32)
        return (np.abs(y) <= hy) & (np.abs(x) <= hx)


def _ladder_up(k: float, n: int) -> int:
    if k >= n:
        return n
    if k <= 1:
        return 1
    j = np.ceil(np.log(k) / np.log(LADDER) - 1e-9)
    return int(min(n, np.ceil(LADDER**j)))


class LevelOfDetail3D:
    """Shown masks for ``n`` cells at ``xyz`` ((n, 3) data coordinates)."""

    def __init__(self, xyz, seed: int = 0):
        xyz = np.asarray(xyz, dtype=np.float32)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError("xyz must be (n, 3)")
        self.xyz = xyz
        self.n = n = len(xyz)
        rng = np.random.default_rng(seed)
        self.rank = np.empty(n, dtype=np.int32 if n < 2**31 else np.int64)
        self.rank[rng.permutation(n)] = np.arange(n, dtype=self.rank.dtype)
        # per column: a reduction over axis 0 of an (n, 3) C-order array is slow
        cols = [xyz[:, i] for i in range(3)]
        self.lo = np.array([c.min() if n else 0 for c in cols], np.float32)
        self.hi = np.array([c.max() if n else 0 for c in cols], np.float32)

    def in_view(self, view: OrthoView | None) -> np.ndarray | None:
        """Cells in ``view`` (None: all of them, also when the whole box is in view)."""
        if view is None or self.n == 0:
            return None
        corners = np.array(
            [
                [x, y, z]
                for x in (self.lo[0], self.hi[0])
                for y in (self.lo[1], self.hi[1])
                for z in (self.lo[2], self.hi[2])
            ],
            dtype=np.float32,
        )
        if view.contains(corners, margin=0.0).all():
            return None
        return view.contains(self.xyz)

    def _pick(self, cand: np.ndarray | None, count: int, budget: int) -> np.ndarray:
        if count <= budget:
            return np.ones(self.n, bool) if cand is None else cand.copy()
        k = _ladder_up(budget * self.n / max(count, 1), self.n)
        low = self.rank < k
        return low if cand is None else (low & cand)

    def shown_mask(
        self,
        view: OrthoView | None = None,
        budget: int = BUDGET_3D,
        *,
        focus: np.ndarray | None = None,
        clip: bool = False,
    ) -> np.ndarray:
        """The boolean mask of cells to draw (see the module docstring). ``focus``: a
        boolean mask of cells to favour; ``clip``: draw only focus cells."""
        vis = self.in_view(view)
        if focus is None:
            count = self.n if vis is None else int(vis.sum())
            return self._pick(vis, count, budget)
        f = focus if vis is None else (focus & vis)
        nf = int(f.sum())
        if clip:
            return self._pick(f, nf, budget)
        rest = ~focus if vis is None else (~focus & vis)
        nr = int(rest.sum())
        bf = max(int(budget * FOCUS_SHARE), budget - nr)
        br = max(budget - min(nf, bf), 0)
        return self._pick(f, nf, bf) | (self._pick(rest, nr, br) if br else np.zeros(self.n, bool))
