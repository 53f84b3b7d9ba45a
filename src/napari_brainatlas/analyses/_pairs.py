"""Compiled pair counting for :mod:`.proximity` (numba, no Python loop over cells or pairs).

``count_pairs`` counts, for points labelled by (region, cell type), the unordered pairs
closer than a radius whose two cells share a region, binned by
``(region * T + min(type_a, type_b)) * T + max(type_a, type_b)``. Points are bucketed on a
square grid whose cell is at least the radius, so a point's partners lie in its own or
one of the eight neighbouring buckets; each bucket is compared with itself and with four
"forward" neighbours, so every pair is visited once. Work is O(n + pairs).

``count_shifted`` first displaces every point by its own random vector drawn uniformly
from the disc of radius ``shift`` (rejection sampling from the enclosing square), from a
numba generator seeded with ``seed`` (numba keeps one generator per thread, so a seed
gives the same shifts on whichever thread runs it), then counts.

Both functions release the GIL (``nogil=True``): :mod:`.proximity` runs shifts on a pool
of Python threads, which avoids numba's parallel threading layers altogether.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _grid(x, y, radius):
    n = x.shape[0]
    xmin, xmax, ymin, ymax = x.min(), x.max(), y.min(), y.max()
    w = max(xmax - xmin, 1e-9)
    h = max(ymax - ymin, 1e-9)
    cell = radius
    # sparse points over a wide extent: bigger buckets (still >= radius) keep the grid
    # at about four buckets per point
    if (w / cell + 1.0) * (h / cell + 1.0) > 4.0 * n + 1024.0:
        cell = max(radius, np.sqrt(w * h / (4.0 * n + 1024.0)))
    nx = int(w / cell) + 1
    ny = int(h / cell) + 1
    start = np.zeros(nx * ny + 1, np.int64)
    g = np.empty(n, np.int64)
    for i in range(n):
        cx = min(int((x[i] - xmin) / cell), nx - 1)
        cy = min(int((y[i] - ymin) / cell), ny - 1)
        g[i] = cx * ny + cy
        start[g[i] + 1] += 1
    for k in range(nx * ny):
        start[k + 1] += start[k]
    fill = start[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        order[fill[g[i]]] = i
        fill[g[i]] += 1
    return start, order, nx, ny


@njit(cache=True, nogil=True)
def _between(s0, s1, q0, q1, xs, ys, code, rs, n_types, r2, out):
    """Pairs between points s0..s1 and q0..q1 (q0 > p for the same bucket)."""
    for p in range(s0, s1):
        xi = xs[p]
        yi = ys[p]
        ri = rs[p]
        ti = code[p]
        lo = q0 if q0 > p else p + 1
        for q in range(lo, q1):
            if rs[q] != ri:
                continue
            dx = xi - xs[q]
            dy = yi - ys[q]
            if dx * dx + dy * dy <= r2:
                a = ti
                b = code[q]
                if a > b:
                    a, b = b, a
                out[(ri * n_types + a) * n_types + b] += 1


@njit(cache=True, nogil=True)
def count_pairs(x, y, tcode, rcode, n_types, radius, out):
    """Add the close same-region pairs of the points to ``out`` (int64, R * T * T)."""
    n = x.shape[0]
    if n < 2:
        return
    start, order, nx, ny = _grid(x, y, radius)
    # points in bucket order: the inner loops read contiguous memory
    xs = x[order]
    ys = y[order]
    code = tcode[order]
    rs = rcode[order]
    r2 = radius * radius
    for cx in range(nx):
        for cy in range(ny):
            k = cx * ny + cy
            s0 = start[k]
            s1 = start[k + 1]
            if s0 == s1:
                continue
            _between(s0, s1, s0, s1, xs, ys, code, rs, n_types, r2, out)
            if cy + 1 < ny:
                k2 = k + 1
                _between(s0, s1, start[k2], start[k2 + 1], xs, ys, code, rs, n_types, r2, out)
            if cx + 1 < nx:
                lo = cy - 1 if cy > 0 else 0
                hi = cy + 1 if cy + 1 < ny else cy
                # buckets (cx+1, lo..hi) are contiguous in bucket order
                k0 = (cx + 1) * ny + lo
                k1 = (cx + 1) * ny + hi
                _between(s0, s1, start[k0], start[k1 + 1], xs, ys, code, rs, n_types, r2, out)


@njit(cache=True, nogil=True)
def count_shifted(x, y, tcode, rcode, n_types, radius, shift, seed, out):
    """Shift every point uniformly within a disc of radius ``shift``, then count."""
    np.random.seed(seed)
    n = x.shape[0]
    xs = np.empty(n)
    ys = np.empty(n)
    for i in range(n):
        # uniform in the disc by rejection from the square (accepts pi/4 of the draws)
        while True:
            u = 2.0 * np.random.random() - 1.0
            v = 2.0 * np.random.random() - 1.0
            if u * u + v * v <= 1.0:
                break
        xs[i] = x[i] + shift * u
        ys[i] = y[i] + shift * v
    count_pairs(xs, ys, tcode, rcode, n_types, radius, out)
