"""Level of detail for large sections: which cells to draw for a view (no napari here).

A software rasteriser (Mesa llvmpipe) or a modest GPU draws a few hundred thousand
points interactively, not millions. :class:`LevelOfDetail` keeps every cell of a
section and answers, for a view rectangle, the boolean *shown* mask of the cells to
draw, so that at most about ``budget`` cells are drawn:

* zoomed in (``<= budget`` cells in the view, plus a margin): every cell in the view is
  shown, so every cell is reachable by zooming in;
* zoomed out: a density-preserving random subset. Each cell has a fixed random rank (a
  permutation of ``0..n-1``); the cells shown are those in the view with ``rank < k``,
  ``k`` = the budget scaled by the fraction of the section's cells in the view. The
  density is uniform over the section, and the subsets for different ``k`` are nested
  (a cell shown at some zoom is shown at every closer zoom); ``k`` is rounded up to a
  geometric ladder so panning at a fixed zoom keeps the same cells shown.

Range queries use a uniform grid (cells sorted by grid bucket, ``np.searchsorted``-free
bucket offsets), so a query touches only the buckets that overlap the view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_BUDGET",
    "MARGIN",
    "SUBSET_BUDGET",
    "LevelOfDetail",
    "ViewRect",
    "allocate_budget",
    "rasterize",
    "rgba8",
]

#: at most this many cells in view (all sections together): draw every one of them
DEFAULT_BUDGET = 50_000
#: more in view: draw an image overview of all of them and this many cells on top (for
#: hover); see benchmarks/viewer/RESULTS_viewer.md for the figures behind both numbers
SUBSET_BUDGET = 15_000
#: the view rectangle is grown by this fraction of its size on every side, so a short
#: pan shows cells at once (before the debounced update)
MARGIN = 0.25
#: ratio between successive subset sizes ``k`` on the ladder
LADDER = 1.25


@dataclass(frozen=True)
class ViewRect:
    """An axis-aligned rectangle in the section's (y, x) data coordinates."""

    y0: float
    x0: float
    y1: float
    x1: float

    def grown(self, frac: float) -> ViewRect:
        dy, dx = (self.y1 - self.y0) * frac, (self.x1 - self.x0) * frac
        return ViewRect(self.y0 - dy, self.x0 - dx, self.y1 + dy, self.x1 + dx)

    @classmethod
    def from_center(cls, center_yx, size_yx) -> ViewRect:
        cy, cx = (float(v) for v in center_yx)
        hy, hx = (float(v) / 2 for v in size_yx)
        return cls(cy - hy, cx - hx, cy + hy, cx + hx)


def _ladder_up(k: float, n: int) -> int:
    """Smallest rung ``ceil(LADDER**j) >= k`` (capped at n)."""
    if k >= n:
        return n
    if k <= 1:
        return 1
    j = np.ceil(np.log(k) / np.log(LADDER) - 1e-9)
    return int(min(n, np.ceil(LADDER**j)))


class LevelOfDetail:
    """Shown masks for one section's cells ``yx`` ((n, 2) data coordinates, y then x).

    Parameters
    ----------
    yx : (n, 2) cell positions as the Points layer holds them.
    grid : buckets along the longer side of the bounding box.
    seed : seed of the random ranks (fixed: the same file always shows the same subset).
    """

    def __init__(self, yx, grid: int = 256, seed: int = 0):
        yx = np.asarray(yx, dtype=np.float64)
        if yx.ndim != 2 or yx.shape[1] < 2:
            raise ValueError("yx must be (n, 2)")
        yx = yx[:, -2:]
        self.n = n = len(yx)
        self.yx = yx
        rng = np.random.default_rng(seed)
        #: by_rank[r] is the cell of rank r; rank[i] the rank of cell i
        self.by_rank = rng.permutation(n).astype(np.int64)
        self.rank = np.empty(n, dtype=np.int64)
        self.rank[self.by_rank] = np.arange(n)
        if n:
            self.lo = yx.min(axis=0)
            self.hi = yx.max(axis=0)
        else:
            self.lo = self.hi = np.zeros(2)
        ext = np.maximum(self.hi - self.lo, 1e-9)
        self.cell = float(ext.max()) / grid
        self.shape = tuple(int(v) for v in np.maximum(np.ceil(ext / self.cell), 1).astype(int) + 1)
        self._order = self._offsets = None  # the grid is built on the first range query

    def _grid(self) -> tuple[np.ndarray, np.ndarray]:
        if self._order is None:
            b = self._bucket(self.yx)
            flat = b[:, 0] * self.shape[1] + b[:, 1]
            self._order = np.argsort(flat, kind="stable").astype(np.int64)
            counts = np.bincount(flat, minlength=self.shape[0] * self.shape[1])
            self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return self._order, self._offsets

    # ------------------------------------------------------------------ queries
    def _bucket(self, yx) -> np.ndarray:
        b = np.floor((np.asarray(yx, float) - self.lo) / self.cell).astype(np.int64)
        return np.clip(b, 0, np.array(self.shape) - 1)

    def in_rect(self, rect: ViewRect) -> np.ndarray:
        """Indices (sorted) of the cells inside ``rect``."""
        if (
            self.n == 0
            or rect.y1 < self.lo[0]
            or rect.x1 < self.lo[1]
            or rect.y0 > self.hi[0]
            or rect.x0 > self.hi[1]
        ):
            return np.empty(0, dtype=np.int64)
        if (
            rect.y0 <= self.lo[0]
            and rect.x0 <= self.lo[1]
            and rect.y1 >= self.hi[0]
            and rect.x1 >= self.hi[1]
        ):
            return np.arange(self.n, dtype=np.int64)
        order, offsets = self._grid()
        (by0, bx0), (by1, bx1) = self._bucket([[rect.y0, rect.x0], [rect.y1, rect.x1]])
        rows = np.arange(by0, by1 + 1)
        starts = offsets[rows * self.shape[1] + bx0]
        ends = offsets[rows * self.shape[1] + bx1 + 1]
        lens = ends - starts
        total = int(lens.sum())
        if total == 0:
            return np.empty(0, dtype=np.int64)
        # concatenate the runs order[starts[i]:ends[i]] without a Python loop per row
        pos = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(
            total
        )
        cand = order[pos]
        p = self.yx[cand]
        keep = (
            (p[:, 0] >= rect.y0)
            & (p[:, 0] <= rect.y1)
            & (p[:, 1] >= rect.x0)
            & (p[:, 1] <= rect.x1)
        )
        return np.sort(cand[keep])

    def count_in(self, rect: ViewRect) -> int:
        return len(self.in_rect(rect))

    def level(self, n_in_view: int, budget: int) -> int:
        """``k``: the cells with ``rank < k`` are drawn when ``n_in_view`` cells are in
        the view and about ``budget`` of them may be drawn (``n``: all of them)."""
        if n_in_view <= budget or n_in_view == 0:
            return self.n
        return _ladder_up(budget * self.n / n_in_view, self.n)

    def shown_mask(
        self, rect: ViewRect | None, budget: int, subset: int | None = None, margin: float = MARGIN
    ) -> np.ndarray:
        """Boolean (n,) mask of the cells to draw for ``rect`` (None: the whole section):
        every cell in the view (grown by ``margin``) when at most ``budget`` are there,
        else a density-preserving subset of about ``subset`` (default ``budget``)."""
        return self.shown(rect, budget, subset, margin)[0]

    def shown(
        self, rect: ViewRect | None, budget: int, subset: int | None = None, margin: float = MARGIN
    ) -> tuple[np.ndarray, int, np.ndarray]:
        """``(mask, k, in_view)``: see :meth:`shown_mask`; ``k == n`` when every cell in
        the view is drawn; ``in_view`` the indices of the cells in the grown view."""
        subset = budget if subset is None else subset
        mask = np.zeros(self.n, dtype=bool)
        grown = None if rect is None else rect.grown(margin)
        idx = np.arange(self.n, dtype=np.int64) if grown is None else self.in_rect(grown)
        if len(idx) <= budget:
            mask[idx] = True
            return mask, self.n, idx
        k = self.level(len(idx), subset)
        if k * 4 < len(idx):
            sub = self.by_rank[:k]  # cheaper: the k lowest ranks, kept if in the view
            if grown is not None:
                p = self.yx[sub]
                sub = sub[
                    (p[:, 0] >= grown.y0)
                    & (p[:, 0] <= grown.y1)
                    & (p[:, 1] >= grown.x0)
                    & (p[:, 1] <= grown.x1)
                ]
            mask[sub] = True
        else:
            mask[idx[self.rank[idx] < k]] = True
        return mask, k, idx


def allocate_budget(counts, budget: int) -> list[int]:
    """Split ``budget`` over sections in proportion to their cells in view, so the
    drawn density is the same in every section."""
    counts = np.asarray(counts, dtype=float)
    out = np.zeros(len(counts))
    left = float(budget)
    todo = np.flatnonzero(counts > 0)
    while todo.size:
        share = left * counts[todo] / counts[todo].sum()
        small = counts[todo] <= share
        if not small.any():
            out[todo] = share
            break
        out[todo[small]] = counts[todo[small]]
        left -= counts[todo[small]].sum()
        todo = todo[~small]
    return [int(np.ceil(v)) for v in out]


def rgba8(rgba) -> np.ndarray:
    """(n, 4) float colours in [0, 1] as (n,) uint32 words of RGBA bytes (for
    :func:`rasterize`; compute once per colouring)."""
    a = np.clip(np.asarray(rgba, dtype=np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a).view(np.uint32).ravel()


def _fill_gaps(img: np.ndarray) -> None:
    """Give empty pixels (0) of a (h, w) uint32 image a neighbour's value, in place:
    what a point renderer's few-pixel-wide discs do to the gaps between cells."""
    for sl_dst, sl_src in (
        ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
        ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
    ):
        dst = img[sl_dst]
        src = img[sl_src]
        empty = dst == 0
        dst[empty] = src[empty]


def rasterize(
    yx, colors, rect: ViewRect, pixel: float, max_side: int = 2048, mode: str = "top", fill: int = 0
) -> tuple[np.ndarray, tuple[float, float], float]:
    """Draw the cells at ``yx`` inside ``rect`` into an image of ``pixel`` data units per
    pixel (coarser if a side would exceed ``max_side``).

    ``colors``: (n, 4) floats in [0, 1], or the uint32 words of :func:`rgba8`. ``mode``
    ``'top'``: each pixel takes the colour of its last cell in ``yx`` order, as a point
    renderer drawing the cells in order shows it; ``'mean'``: the average colour of the
    pixel's cells (``np.bincount``). Returns the (h, w, 4) uint8 RGBA image (alpha 0
    where there is no cell), its origin (y0, x0) and its pixel size. ``fill`` ('top'
    only): passes of :func:`_fill_gaps` (each grows the cells by a pixel into empty
    neighbours)."""
    yx = np.asarray(yx)
    pixel = max(float(pixel), max(rect.y1 - rect.y0, rect.x1 - rect.x0) / max_side, 1e-12)
    h = max(int(np.ceil((rect.y1 - rect.y0) / pixel)), 1)
    w = max(int(np.ceil((rect.x1 - rect.x0) / pixel)), 1)
    inv = 1.0 / pixel
    iy = np.floor((yx[:, 0] - rect.y0) * inv).astype(np.int64)
    ix = np.floor((yx[:, 1] - rect.x0) * inv).astype(np.int64)
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    flat = iy * w + ix
    colors = np.asarray(colors)
    if not ok.all():
        flat, colors = flat[ok], colors[ok]
    if mode == "top":
        words = colors if colors.dtype == np.uint32 and colors.ndim == 1 else rgba8(colors)
        img = np.zeros(h * w, dtype=np.uint32)
        img[flat] = words  # numpy assigns in order: the last cell of a pixel stays
        img = img.reshape(h, w)
        for _ in range(int(fill)):
            _fill_gaps(img)
        return img.view(np.uint8).reshape(h, w, 4), (float(rect.y0), float(rect.x0)), pixel
    if colors.dtype == np.uint32 and colors.ndim == 1:
        colors = colors.view(np.uint8).reshape(-1, 4).astype(np.float32) / 255
    count = np.bincount(flat, minlength=h * w)
    img = np.zeros((h * w, 4), dtype=np.float32)
    for c in range(3):
        img[:, c] = np.bincount(flat, weights=colors[:, c], minlength=h * w)
    hit = count > 0
    img[hit, :3] /= count[hit, None]
    img[hit, 3] = 1.0  # opaque wherever a cell is
    out = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8).reshape(h, w, 4)
    return out, (float(rect.y0), float(rect.x0)), pixel
