"""Where in the atlas a section was cut: position along the cutting axis and angles.

- :func:`refine_plane`: given cells already placed in a template slice (in-plane
  atlas um) with region labels, score every tilted plane ``depth = p + tan(a_x)(x - cx)
  + tan(a_y)(y - cy)`` on a grid by the fraction of cells whose label matches the major
  division under them in the 3D atlas; the best plane wins (ties go to the plane
  closest to the starting one).
- :func:`scan_positions`: register the section to template slices along the whole
  axis and score each by label agreement (or, without labels, by the outline fit).
- :func:`series_positions`: method step 1 for an ordered series: between two fixed end
  sections, positions follow the cumulative cosine distance of the region composition
  vectors of neighbouring sections.

Positions are AP um (coronal) or ML um (sagittal); angles are degrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._errors import BrainAtlasInputError
from .icp import check_cancel
from .metrics import division_index
from .settings import ProposalSettings

__all__ = [
    "Position",
    "composition_vectors",
    "locate_section",
    "refine_plane",
    "scan_positions",
    "series_positions",
]


def _points_3d(plane: str, x: np.ndarray, y: np.ndarray, depth: np.ndarray) -> np.ndarray:
    shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(depth))
    depth = np.broadcast_to(depth, shape)
    if plane == "coronal":
        return np.stack(
            [depth, np.broadcast_to(y, depth.shape), np.broadcast_to(x, depth.shape)], -1
        )
    return np.stack([np.broadcast_to(x, depth.shape), np.broadcast_to(y, depth.shape), depth], -1)


def refine_plane(
    atlas,
    plane: str,
    position_um: float,
    xy_atlas: np.ndarray,
    cell_div: np.ndarray,
    centre_um,
    search_um: float = 300.0,
    max_angle_deg: float = 5.0,
    settings: ProposalSettings | None = None,
) -> dict:
    """Best cutting plane near ``position_um`` from the cells' region labels.

    Parameters
    ----------
    xy_atlas : (n, 2) in-plane positions of the cells in the current template slice, um.
    cell_div : (n,) major-division index of each cell's label (-1 unknown), from
        :func:`.metrics.label_division_index`.
    centre_um : (cx, cy) the slice centre the angles turn about (``AtlasSlice.centre_um``).
    search_um, max_angle_deg : half-widths of the search.
    settings : :class:`~.settings.ProposalSettings` (default its defaults): the depth
        and angle steps, the cells scored and, with ``coarse_factor`` > 1, the angle
        pairs first on a grid ``coarse_factor`` times coarser than ``angle_step_deg``;
        only the neighbourhoods (within one coarse step) of the ``coarse_top`` best
        coarse pairs are then scored at the full step (about ``coarse_factor**2`` times
        fewer pairs than the full grid).

    Returns dict(position_um, angles_deg (a_x, a_y), agreement, agreement_start).
    """
    st = ProposalSettings() if settings is None else settings
    ok = np.flatnonzero(np.asarray(cell_div) >= 0)
    if len(ok) < 20:
        raise BrainAtlasInputError(
            "too few cells with a known region label to estimate the cutting plane"
        )
    rng = np.random.default_rng(st.seed)
    if len(ok) > st.max_cells:
        ok = rng.choice(ok, st.max_cells, replace=False)
    x = xy_atlas[ok, 0]
    y = xy_atlas[ok, 1]
    lab = np.asarray(cell_div)[ok]
    res = atlas.resolution_um
    step = float(st.position_step_um or res)
    tmax = np.tan(np.deg2rad(max_angle_deg))
    cx, cy = centre_um
    reach = tmax * (np.abs(x - cx).max() + np.abs(y - cy).max())
    lo_d = -search_um - reach - res
    n_d = int(np.ceil((2 * (search_um + reach) + 2 * res) / res)) + 1
    dz = lo_d + res * np.arange(n_d)
    depth = position_um + dz[None, :]
    pts = _points_3d(plane, x[:, None], y[:, None], depth)
    ids = atlas.structure_at(pts.reshape(-1, 3)).reshape(len(x), n_d)
    div, _ = division_index(atlas, ids)
    match = (div == lab[:, None]).astype(np.float32)  # (cells, depths)
    dps = np.arange(-search_um, search_um + 1e-9, step)
    angs = np.arange(-max_angle_deg, max_angle_deg + 1e-9, st.angle_step_deg)
    grid = _AnglePairs(match, x - cx, y - cy, dps, angs, lo_d, res, search_um, max_angle_deg)
    grid.score_grid(int(st.coarse_factor), st.coarse_top)
    scored = grid.scored
    kb = max(scored, key=lambda kk: scored[kk][0])
    best = (scored[kb][0], scored[kb][1], float(angs[kb[0]]), float(angs[kb[1]]), scored[kb][2])
    start = grid.pair(grid.centre0, grid.centre0)[3]
    return {
        "position_um": float(position_um + best[1]),
        "angles_deg": (best[2], best[3]),
        "agreement": best[4],
        "agreement_start": start,
    }


class _AnglePairs:
    """Scores of the angle pairs of :func:`refine_plane`: for each pair, the position
    offset whose plane puts most cells in their own division (with a small prior
    towards the starting plane)."""

    def __init__(self, match, dx, dy, dps, angs, lo_d, res, search_um, max_angle_deg):
        self.match, self.dx, self.dy = match, dx, dy
        self.dps, self.angs, self.lo_d, self.res = dps, angs, lo_d, res
        self.search_um, self.max_angle_deg = search_um, max_angle_deg
        self.tx = np.tan(np.deg2rad(angs))
        self.rows = np.arange(len(dx))[None, :]
        self.n_d = match.shape[1]
        self.centre0 = int(np.argmin(np.abs(angs)))
        self.scored: dict = {}

    def pair(self, ia, ib):
        """(best total with prior, its position offset, its score, the score at the
        given position) of the angle pair (ia, ib)."""
        if (ia, ib) not in self.scored:
            dps, tx = self.dps, self.tx
            ax, ay = self.angs[ia], self.angs[ib]
            off = tx[ia] * self.dx + tx[ib] * self.dy  # (cells,)
            k = np.rint((dps[:, None] + off[None, :] - self.lo_d) / self.res).astype(np.int64)
            np.clip(k, 0, self.n_d - 1, out=k)
            sc = self.match[self.rows, k].mean(1)  # (positions,)
            # tie-break towards the starting plane
            prior = 0.002 * (
                np.abs(dps) / max(self.search_um, 1e-9)
                + (abs(ax) + abs(ay)) / max(self.max_angle_deg, 1e-9)
            )
            tot = sc - prior
            j = int(np.argmax(tot))
            self.scored[(ia, ib)] = (
                float(tot[j]),
                float(dps[j]),
                float(sc[j]),
                float(sc[np.argmin(np.abs(dps))]),
            )
        return self.scored[(ia, ib)]

    def score_grid(self, f: int, coarse_top: int) -> None:
        """Every pair (``f`` <= 1), or a grid ``f`` times coarser through the zero angle
        and then the full step around its ``coarse_top`` best pairs."""
        n_a = len(self.angs)
        f = max(1, f)
        if f <= 1:
            for ia in range(n_a):
                for ib in range(n_a):
                    self.pair(ia, ib)
            return
        c0 = self.centre0
        grid = np.unique(np.concatenate([np.arange(c0, -1, -f), np.arange(c0, n_a, f)]))
        for ia in grid:
            for ib in grid:
                self.pair(int(ia), int(ib))
        top = sorted(self.scored, key=lambda kk: -self.scored[kk][0])[: max(1, coarse_top)]
        for ia0, ib0 in top:
            for ia in range(max(ia0 - f + 1, 0), min(ia0 + f, n_a)):
                for ib in range(max(ib0 - f + 1, 0), min(ib0 + f, n_a)):
                    self.pair(ia, ib)


def scan_positions(
    fit_at,
    atlas,
    plane: str,
    hemisphere: str,
    step_um: float | None = None,
    cancel=None,
) -> dict:
    """Register the section at positions along the whole axis and keep the best.

    Parameters
    ----------
    fit_at : callable ``fit_at(position_um) -> (score_higher_is_better, info)``; the
        caller closes over the section.
    step_um : spacing of the positions (default: 1/24 of the axis, at least 2 voxels).

    Returns dict(position_um, scores ((k, 2) position, score), best_info).
    """
    lo, hi = atlas.position_range_um(plane)
    res = atlas.resolution_um
    step = float(step_um or max(2 * res, (hi - lo) / 24.0))
    axis = 0 if plane == "coronal" else 2
    other = tuple(i for i in range(3) if i != axis)
    area = (np.asarray(atlas.annotation) > 0).sum(axis=other)
    pos = np.arange(lo + step / 2, hi, step)
    idx = np.clip((pos / res).astype(int), 0, len(area) - 1)
    pos = pos[area[idx] >= 0.15 * area.max()]
    if len(pos) == 0:
        raise BrainAtlasInputError("the atlas has no tissue along this axis")
    scores = []
    best = (-np.inf, None, None)
    for p in pos:
        check_cancel(cancel)
        s, info = fit_at(float(p))
        scores.append((float(p), float(s)))
        if s > best[0]:
            best = (s, float(p), info)
    return {"position_um": best[1], "scores": np.array(scores), "best_info": best[2]}


def composition_vectors(labels_per_section, categories=None) -> tuple[np.ndarray, list]:
    """Counts of each region label per section: (sections, categories) float array."""
    if categories is None:
        categories = sorted(
            {str(v) for lab in labels_per_section for v in np.asarray(lab).astype(str)}
        )
    pos = {c: i for i, c in enumerate(categories)}
    out = np.zeros((len(labels_per_section), len(categories)))
    for s, lab in enumerate(labels_per_section):
        for v in np.asarray(lab).astype(str):
            if v in pos:
                out[s, pos[v]] += 1
    return out, list(categories)


def series_positions(labels_per_section, first_um: float, last_um: float) -> np.ndarray:
    """Positions of an ordered series of sections between two fixed end positions.

    Parameters
    ----------
    labels_per_section : list of (n_i,) region labels per section, in cutting order.
    first_um, last_um : known positions of the first and last sections.

    Returns (sections,) positions: first + (last - first) * cumulative cosine distance
    of neighbouring composition vectors / total. Equal spacing if all distances are 0.
    """
    comp, _ = composition_vectors(labels_per_section)
    if len(comp) < 2:
        raise BrainAtlasInputError("an ordered series needs at least two sections")
    norm = np.linalg.norm(comp, axis=1)
    if np.any(norm == 0):
        raise BrainAtlasInputError("every section of the series needs region labels")
    unit = comp / norm[:, None]
    d = 1.0 - np.sum(unit[1:] * unit[:-1], axis=1)
    d = np.clip(d, 0, None)
    cum = np.concatenate([[0.0], np.cumsum(d)])
    if cum[-1] <= 0:
        frac = np.linspace(0, 1, len(comp))
    else:
        frac = cum / cum[-1]
    return first_um + (last_um - first_um) * frac


@dataclass
class Position:
    """Where the registration starts (the position stage's result): the plane
    (``position_um``, ``angles_deg``), whether the position was estimated (scanned),
    and whether the plane is searched next."""

    position_um: float
    angles_deg: tuple
    estimated: bool = False
    search: bool = False


def locate_section(sec, given: float | None) -> Position:
    """The position stage of :func:`~.pipeline.register_section`: the given position,
    or (``given`` None, "auto") the best of an outline fit at positions along the whole
    axis (:func:`scan_positions`; scored by label agreement, or without labels by the
    outline fit), which is then searched like a given one. ``sec``: the
    :class:`~.section.Section`."""
    s = sec.settings
    if given is not None:
        return Position(given, s.angles_deg, False, bool(s.refine_position))

    def score_at(p):
        tmpl, best, _ = sec.fit_outline(p, s.angles_deg, sweep="never")
        ag = sec.agreement(tmpl, best.affine)
        return (ag if ag is not None else -best.score), None

    scan = scan_positions(score_at, sec.atlas, sec.plane, sec.hemisphere, cancel=sec.cancel)
    sec.notes.append(f"position scanned: best {scan['position_um']:.0f} um")
    return Position(scan["position_um"], s.angles_deg, True, True)
