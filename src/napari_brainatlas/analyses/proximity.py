"""Region-specific cell-cell proximity (the FuseMap paper's "Cell-cell interactions
analysis", after Zhang et al. 2023).

For every region label and every pair of cell types (a, b) the analysis counts the
pairs of cells closer than ``radius_um`` (default 30 um) with one cell of type a and one
of type b, both in that region, and compares the count with a null distribution from
``n_shifts`` (default 1,000) random shifts of the cells within ``shift_um`` (default
100 um).

What a "random shift" is here, precisely
----------------------------------------
In one null draw every cell is displaced by its own random vector, drawn uniformly from
the disc of radius ``shift_um`` (uniform over the disc's area), independently of every
other cell; its cell type and region label stay as they were. Pairs are then counted on
the displaced positions exactly as on the observed ones (same radius, same-region rule,
cells of different sections never pair). The displacement destroys the arrangement of
cells below ~``shift_um`` (who sits next to whom) and keeps the composition and density
above it (layers, nuclei, regions), so a pair that is closer than chance in the observed
tissue is closer than what its local abundance explains. The alternative reading -
shifting all cells of one type together by one vector - keeps each type's own internal
arrangement and is not what the paper describes.

The test statistic
------------------
``adjust_total=True`` (default): each null draw's counts in a region are rescaled so
that the region's total number of close pairs (over all type pairs) equals the observed
total; the test then asks whether the *share* of (a, b) among the close pairs is larger
than chance. Why: the displacement also changes how many close pairs there are at all,
for reasons that have nothing to do with cell types - cells cannot overlap (the observed
pattern has almost no pairs closer than a soma, the displaced one has Poisson-like
numbers), and cells at the edge of the tissue are pushed out of it. With raw counts
(``adjust_total=False``, the paper's statistic read literally) these shift every type
pair alike, so with labels that carry no spatial information at all the p-values are far
from uniform (measured in benchmarks/analyses/NOTES.md). The rescaling removes that
common factor; it cannot remove an edge effect that concentrates on one type (a type
that lines the tissue edge loses more partners in the null than the others).

p-values are empirical, ``(1 + #{null >= observed}) / (1 + n_shifts)`` for
``alternative="greater"`` (closer than chance, the paper's question; "less" and
"two-sided" are available), corrected over every tested (region, pair) row with
Benjamini-Hochberg (``q_value``). An empirical p cannot go below ``1 / (n_shifts + 1)``,
so with m tested rows BH reaches ``q < alpha`` only when at least ``m / (alpha *
(n_shifts + 1))`` rows sit at that floor: on one osmFISH section (727 rows, 1,000
shifts) nothing passes although eight rows have z > 4. ``pvalue="normal"`` takes the
normal tail at z instead (null mean and sd from the draws); on shuffled labels it
stayed at or below the nominal rate at 5%, 1% and 0.1% (benchmarks/analyses). z = (observed - null mean) / null sd (0 where the
null never varies). A type takes part in a region only with at least ``min_cells`` cells
there (the paper keeps "subtypes with sufficient abundance").

Speed: pairs are counted by a compiled grid search (:mod:`._pairs`, O(cells + pairs)
per draw), draws run on a pool of threads (the kernel releases the GIL). Measured in
benchmarks/analyses/RESULTS.md.

Output: :class:`ProximityResult` with ``table`` (one row per tested region and pair,
ranked by q then z: region, type_a, type_b, n_a, n_b, observed, expected, null_sd, z,
log2_ratio, p_value, q_value, significant) and ``matrix(region, value)`` (types x types,
symmetric) for heatmaps. With one AnnData the result is also stored in
``uns[key_added]`` (``{"table": DataFrame, "params": dict}``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.spatial import cKDTree
from scipy.stats import false_discovery_control, norm

from .. import jobs
from .._errors import BrainAtlasInputError

__all__ = [
    "ProximityResult",
    "ProximitySettings",
    "proximal_pair_cells",
    "region_proximity",
]

ALL_REGIONS = "all"
_ALTERNATIVES = ("greater", "less", "two-sided")


@dataclass(frozen=True)
class ProximitySettings:
    """Options of :func:`region_proximity` (see the module docstring).

    radius_um : two cells are "proximal" when closer than this (30 um, the paper's).
    shift_um : radius of the disc each cell is displaced within, per null draw (100 um).
    n_shifts : null draws (1,000).
    min_cells : a type is tested in a region only with at least this many cells there.
    alternative : "greater" (closer than chance), "less" or "two-sided".
    adjust_total : rescale each draw to the observed number of close pairs per region.
    alpha : rows with ``q_value < alpha`` are flagged ``significant``.
    pvalue : "empirical" (the share of null draws at least as extreme; cannot go below
        ``1 / (n_shifts + 1)``) or "normal" (the normal tail at z, from the null's mean
        and sd; rows whose null never varies keep the empirical value).
    seed : seeds the null draws (same seed, same result on any number of threads).
    """

    radius_um: float = 30.0
    shift_um: float = 100.0
    n_shifts: int = 1000
    min_cells: int = 10
    alternative: str = "greater"
    adjust_total: bool = True
    alpha: float = 0.05
    pvalue: str = "empirical"
    seed: int = 0

    def check(self) -> None:
        if not (np.isfinite(self.radius_um) and self.radius_um > 0):
            raise BrainAtlasInputError("the proximity radius must be a positive number of um")
        if not (np.isfinite(self.shift_um) and self.shift_um >= 0):
            raise BrainAtlasInputError("the shift radius must be 0 or more um")
        if int(self.n_shifts) < 1:
            raise BrainAtlasInputError("give at least one random shift")
        if int(self.min_cells) < 1:
            raise BrainAtlasInputError("min_cells must be at least 1")
        if self.alternative not in _ALTERNATIVES:
            raise BrainAtlasInputError(
                f"alternative must be one of {', '.join(_ALTERNATIVES)}, not {self.alternative!r}"
            )
        if not 0 < self.alpha < 1:
            raise BrainAtlasInputError("alpha must be between 0 and 1")
        if self.pvalue not in ("empirical", "normal"):
            raise BrainAtlasInputError(
                f"pvalue must be 'empirical' or 'normal', not {self.pvalue!r}"
            )


@dataclass
class ProximityResult:
    """Result of :func:`region_proximity`.

    table : ranked DataFrame, one row per tested (region, type pair); see the module doc.
    types : the cell types, in matrix order; regions : the regions tested.
    params : the settings and keys used.
    """

    table: pd.DataFrame
    types: list[str]
    regions: list[str]
    params: dict = field(default_factory=dict)

    def matrix(self, region: str, value: str = "z") -> pd.DataFrame:
        """Types x types (symmetric) of ``value`` ("z", "log2_ratio", "observed",
        "expected", "q_value" ...) in ``region``; types not tested there are left out and
        untested pairs of tested types hold 0 (1 for p / q values)."""
        if value not in self.table.columns:
            raise BrainAtlasInputError(f"no column {value!r} in the proximity table")
        if str(region) not in self.regions:
            raise BrainAtlasInputError(f"no region {region!r} in the proximity result")
        t = self.table[self.table["region"] == str(region)]
        present = set(t["type_a"]) | set(t["type_b"])
        names = [c for c in self.types if c in present]
        fill = 1.0 if value in ("p_value", "q_value") else 0.0
        m = pd.DataFrame(fill, index=names, columns=names, dtype=float)
        for a, b, v in zip(t["type_a"], t["type_b"], t[value].astype(float)):
            m.loc[a, b] = v
            m.loc[b, a] = v
        return m

    def significant(self) -> pd.DataFrame:
        """The rows with ``q_value < alpha``."""
        return self.table[self.table["significant"]].reset_index(drop=True)


# ---------------------------------------------------------------------------- input
@dataclass
class _Cells:
    x: np.ndarray  # float64 (n,)
    y: np.ndarray
    tcode: np.ndarray  # int64 type code
    rcode: np.ndarray  # int64 region code
    sections: list[np.ndarray]  # row positions of each section
    types: list[str]
    regions: list[str]


def _as_sections(adata, section_key: str | None) -> list[AnnData]:
    if isinstance(adata, AnnData):
        if section_key and section_key in adata.obs and adata.obs[section_key].nunique() > 1:
            col = adata.obs[section_key].astype(str).to_numpy()
            return [adata[col == s] for s in pd.unique(col)]
        return [adata]
    secs = list(adata)
    if not secs or not all(isinstance(a, AnnData) for a in secs):
        raise BrainAtlasInputError("give one AnnData or a list of AnnData sections")
    return secs


def _labels(a: AnnData, key: str, what: str) -> np.ndarray:
    if key not in a.obs:
        raise BrainAtlasInputError(f"the section has no obs column {key!r} ({what})")
    col = a.obs[key]
    out = col.astype(object).to_numpy()
    missing = pd.isna(col).to_numpy()
    out = np.array([str(v) for v in out], dtype=object)
    out[missing] = None
    return out


def _coords(a: AnnData) -> np.ndarray:
    if "spatial" not in a.obsm:
        raise BrainAtlasInputError("the section has no obsm['spatial'] (cell coordinates in um)")
    xy = np.asarray(a.obsm["spatial"], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise BrainAtlasInputError("obsm['spatial'] must hold x, y per cell")
    return xy[:, :2]


def _gather(secs, celltype_key: str, region_key: str | None) -> _Cells:
    xs, ts, rs = [], [], []
    for a in secs:
        xy = _coords(a)
        t = _labels(a, celltype_key, "cell types")
        r = (
            _labels(a, region_key, "regions")
            if region_key
            else np.full(a.n_obs, ALL_REGIONS, dtype=object)
        )
        ok = np.isfinite(xy).all(1) & (t != None) & (r != None)  # noqa: E711
        xs.append(xy[ok])
        ts.append(t[ok])
        rs.append(r[ok])
    t_all = np.concatenate(ts) if ts else np.array([], object)
    r_all = np.concatenate(rs) if rs else np.array([], object)
    if len(t_all) < 2:
        raise BrainAtlasInputError("fewer than two cells with a cell type, region and position")
    types = sorted(pd.unique(t_all).tolist())
    regions = sorted(pd.unique(r_all).tolist())
    tcode = pd.Categorical(t_all, categories=types).codes.astype(np.int64)
    rcode = pd.Categorical(r_all, categories=regions).codes.astype(np.int64)
    xy = np.concatenate(xs)
    bounds = np.cumsum([0] + [len(x) for x in xs])
    sections = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(xs))]
    return _Cells(
        np.ascontiguousarray(xy[:, 0]),
        np.ascontiguousarray(xy[:, 1]),
        tcode,
        rcode,
        [s for s in sections if len(s)],
        [str(t) for t in types],
        [str(r) for r in regions],
    )


# ---------------------------------------------------------------------------- counting
def _count(cells: _Cells, radius: float, shift: float, seed: int | None) -> np.ndarray:
    """Close-pair counts (R * T * T) over every section; seed None = observed positions."""
    from ._pairs import count_pairs, count_shifted

    T, R = len(cells.types), len(cells.regions)
    out = np.zeros(R * T * T, np.int64)
    for k, rows in enumerate(cells.sections):
        args = (cells.x[rows], cells.y[rows], cells.tcode[rows], cells.rcode[rows], T)
        if seed is None or shift == 0:
            count_pairs(*args, float(radius), out)
        else:
            count_shifted(*args, float(radius), float(shift), int(seed) + k, out)
    return out


def _region_totals(counts: np.ndarray, R: int, T: int) -> np.ndarray:
    return counts.reshape(R, T * T).sum(1)


class _Accumulator:
    """Streaming null statistics: sum, sum of squares and tail counts per bin."""

    def __init__(self, observed: np.ndarray, R: int, T: int, adjust: bool):
        self.obs = observed.astype(np.float64)
        self.R, self.T, self.adjust = R, T, adjust
        self.obs_tot = _region_totals(observed, R, T).astype(np.float64)
        n = observed.size
        self.s1 = np.zeros(n)
        self.s2 = np.zeros(n)
        self.ge = np.zeros(n, np.int64)
        self.le = np.zeros(n, np.int64)
        self.n = 0

    def add(self, counts: np.ndarray) -> None:
        c = counts.astype(np.float64)
        if self.adjust:
            tot = _region_totals(counts, self.R, self.T).astype(np.float64)
            scale = np.divide(self.obs_tot, tot, out=np.zeros_like(tot), where=tot > 0)
            c = (c.reshape(self.R, -1) * scale[:, None]).ravel()
        tol = 1e-9 * np.maximum(1.0, self.obs)
        self.s1 += c
        self.s2 += c * c
        self.ge += c >= self.obs - tol
        self.le += c <= self.obs + tol
        self.n += 1


def _draws(cells, s: ProximitySettings, n_jobs, progress, cancel, acc: _Accumulator) -> None:
    """Run the null draws on a thread pool, in batches between progress / cancel calls."""
    ss = np.random.SeedSequence(int(s.seed))
    base = int(ss.generate_state(1, dtype=np.uint32)[0]) % (2**31 - 2**20)
    n_sec = len(cells.sections)
    total = int(s.n_shifts)
    workers = max(1, int(n_jobs or os.cpu_count() or 1))
    batch = max(8, 4 * workers)
    done = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while done < total:
            jobs.check_cancel(cancel)
            ids = range(done, min(total, done + batch))
            futs = [
                pool.submit(_count, cells, s.radius_um, s.shift_um, base + i * n_sec) for i in ids
            ]
            for f in futs:
                acc.add(f.result())
            done = ids.stop
            jobs.report(
                progress,
                done,
                total,
                phase="null",
                message=f"proximity: {done}/{total} random shifts",
            )


# ---------------------------------------------------------------------------- table
def _table(cells: _Cells, acc: _Accumulator, s: ProximitySettings) -> pd.DataFrame:
    T, R = len(cells.types), len(cells.regions)
    n_per = np.zeros((R, T), np.int64)
    np.add.at(n_per, (cells.rcode, cells.tcode), 1)
    rr, aa, bb = np.meshgrid(np.arange(R), np.arange(T), np.arange(T), indexing="ij")
    rr, aa, bb = rr.ravel(), aa.ravel(), bb.ravel()
    keep = (aa <= bb) & (n_per[rr, aa] >= s.min_cells) & (n_per[rr, bb] >= s.min_cells)
    keep &= acc.obs_tot[rr] > 0
    idx = np.flatnonzero(keep)
    n = max(acc.n, 1)
    mean = acc.s1[idx] / n
    var = np.maximum(acc.s2[idx] / n - mean**2, 0.0) * n / max(n - 1, 1)
    sd = np.sqrt(var)
    obs = acc.obs[idx]
    z = np.divide(obs - mean, sd, out=np.zeros_like(obs), where=sd > 1e-12)
    p_hi = (1.0 + acc.ge[idx]) / (1.0 + n)
    p_lo = (1.0 + acc.le[idx]) / (1.0 + n)
    if s.pvalue == "normal":
        varies = sd > 1e-12
        p_hi = np.where(varies, norm.sf(z), p_hi)
        p_lo = np.where(varies, norm.cdf(z), p_lo)
    if s.alternative == "greater":
        p = p_hi
    elif s.alternative == "less":
        p = p_lo
    else:
        p = np.minimum(1.0, 2.0 * np.minimum(p_hi, p_lo))
    q = false_discovery_control(p, method="bh") if len(p) else p
    types = np.array(cells.types, dtype=object)
    regions = np.array(cells.regions, dtype=object)
    df = pd.DataFrame(
        {
            "region": regions[rr[idx]],
            "type_a": types[aa[idx]],
            "type_b": types[bb[idx]],
            "n_a": n_per[rr[idx], aa[idx]],
            "n_b": n_per[rr[idx], bb[idx]],
            "observed": obs.astype(np.int64),
            "expected": mean,
            "null_sd": sd,
            "z": z,
            "log2_ratio": np.log2((obs + 1.0) / (mean + 1.0)),
            "p_value": p,
            "q_value": q,
            "significant": q < s.alpha,
        }
    )
    order = np.lexsort((-df["z"].to_numpy(), df["q_value"].to_numpy()))
    return df.iloc[order].reset_index(drop=True)


def region_proximity(
    adata,
    *,
    celltype_key: str,
    region_key: str | None = None,
    section_key: str | None = "section",
    settings: ProximitySettings | None = None,
    n_jobs: int | None = None,
    key_added: str | None = "proximity",
    progress=None,
    cancel=None,
) -> ProximityResult:
    """Cell-type pairs closer than chance, per region (see the module docstring).

    adata : one AnnData (split into sections by ``obs[section_key]`` when that column has
        several values) or a list of AnnData sections; ``obsm['spatial']`` in um. Cells
        of different sections never pair; cells without a type, region or position are
        left out.
    celltype_key, region_key : obs columns (e.g. ``celltype_transfer``,
        ``region_transfer``); ``region_key=None`` treats each section as one region "all".
    settings : :class:`ProximitySettings` (radius 30 um, 1,000 shifts within 100 um ...).
    n_jobs : threads for the null draws (default: every core).
    key_added : with one AnnData, the result goes to ``uns[key_added]`` (None: nowhere).
    progress, cancel : the :mod:`napari_brainatlas.jobs` protocol; ``progress(done,
        n_shifts, info)`` after each batch of draws; :class:`~napari_brainatlas.Cancelled`
        when ``cancel()`` says so (nothing is stored then).
    """
    s = settings or ProximitySettings()
    s.check()
    secs = _as_sections(adata, section_key)
    cells = _gather(secs, celltype_key, region_key)
    jobs.check_cancel(cancel)
    R, T = len(cells.regions), len(cells.types)
    if R * T * T > 50_000_000:
        raise BrainAtlasInputError(
            f"{T} cell types in {R} regions is too many pairs to count; merge labels first"
        )
    observed = _count(cells, s.radius_um, 0.0, None)
    acc = _Accumulator(observed, R, T, s.adjust_total)
    _draws(cells, s, n_jobs, progress, cancel, acc)
    table = _table(cells, acc, s)
    params = dict(
        asdict(s),
        celltype_key=celltype_key,
        region_key=region_key,
        n_cells=int(len(cells.x)),
        n_sections=len(cells.sections),
    )
    res = ProximityResult(table, cells.types, cells.regions, params)
    if key_added and isinstance(adata, AnnData):
        adata.uns[key_added] = {"table": table.copy(), "params": params}
    return res


def proximal_pair_cells(
    adata: AnnData,
    *,
    celltype_key: str,
    type_a: str,
    type_b: str,
    region_key: str | None = None,
    region: str | None = None,
    radius_um: float = 30.0,
    section_key: str | None = "section",
) -> np.ndarray:
    """Boolean mask over ``adata``'s cells: the cells of type a with a type-b cell within
    ``radius_um`` (and vice versa) in the same section and, when given, both in
    ``region`` - the cells behind one row of the proximity table (to highlight them)."""
    t = _labels(adata, celltype_key, "cell types")
    xy = _coords(adata)
    ok = np.isfinite(xy).all(1)
    if region_key is not None and region is not None:
        ok &= _labels(adata, region_key, "regions") == str(region)
    if section_key and section_key in adata.obs:
        sec = adata.obs[section_key].astype(str).to_numpy()
    else:
        sec = np.zeros(adata.n_obs, dtype=object)
    mask = np.zeros(adata.n_obs, bool)
    for sname in pd.unique(sec[ok]):
        rows = np.flatnonzero(ok & (sec == sname))
        ia = rows[t[rows] == str(type_a)]
        ib = rows[t[rows] == str(type_b)]
        if len(ia) == 0 or len(ib) == 0:
            continue
        tb = cKDTree(xy[ib])
        near = tb.query_ball_point(xy[ia], r=float(radius_um), return_length=True)
        if str(type_a) == str(type_b):
            near = near - 1  # itself
        mask[ia[near > 0]] = True
        ta = cKDTree(xy[ia])
        near_b = ta.query_ball_point(xy[ib], r=float(radius_um), return_length=True)
        if str(type_a) == str(type_b):
            near_b = near_b - 1
        mask[ib[near_b > 0]] = True
    return mask
