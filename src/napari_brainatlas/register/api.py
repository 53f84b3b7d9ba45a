"""Register a section to an atlas slice and write the result into the AnnData.

>>> res = register_section(adata, atlas, "coronal", 5000.0, "both", midline=[[x1, y1], [x2, y2]])
>>> out = apply_registration(adata, res, atlas)   # a copy with ccf_coords, ccf_id, ...

``register_section`` never modifies ``adata``; ``apply_registration`` returns a new
AnnData unless ``inplace=True``. Both are plain Python (no Qt), safe to call from a
worker thread: ``progress(i, cost)`` is called after every ICP iteration and
``cancel()`` is polled; when it returns True :class:`RegistrationCancelled` is raised.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .._errors import BrainAtlasInputError
from .affine import apply_affine, decompose
from .anchors import validate_midline
from .boundary import MIN_CELLS, section_outline
from .core import Template, fit_to_template, make_template
from .icp import RegistrationCancelled
from .metrics import label_division_index, registration_metrics
from .slices import atlas_slice

__all__ = [
    "RegistrationCancelled",
    "RegistrationResult",
    "apply_registration",
    "confidence_score",
    "register_section",
]


@dataclass
class RegistrationResult:
    """Everything needed to map a section's cells into the CCF, JSON-serialisable.

    Attributes
    ----------
    atlas, atlas_version : atlas name and version it was registered to.
    plane : "coronal" or "sagittal"; position_um : AP (coronal) or ML (sagittal) um.
    hemisphere : "both", "left" or "right"; angles_deg : (a_x, a_y) cutting angles.
    midline : (2, 2) section um, dorsal then ventral (empty if none was given).
    mirrored : the section was fitted mirrored (seen from the other face).
    anchors_section, anchors_atlas : (4, 2) matched anchors, section um / atlas slice um.
    affine : (3, 3) section um -> atlas slice um (in-plane (x, y)).
    warp : thin-plate stages applied after the affine (empty: affine only).
    cost_history : ICP cost (um) per iteration; converged, iterations.
    confidence : in [0, 1]; metrics : see :func:`.metrics.registration_metrics`.
    """

    atlas: str
    atlas_version: str
    plane: str
    position_um: float
    hemisphere: str
    affine: list
    angles_deg: list = field(default_factory=lambda: [0.0, 0.0])
    midline: list = field(default_factory=list)
    mirrored: bool = False
    anchors_section: list = field(default_factory=list)
    anchors_atlas: list = field(default_factory=list)
    warp: list = field(default_factory=list)
    cost_history: list = field(default_factory=list)
    converged: bool = False
    iterations: int = 0
    confidence: float = 0.0
    metrics: dict = field(default_factory=dict)
    section: str = "section"
    n_cells: int = 0
    position_estimated: bool = False
    start: str = ""
    notes: list = field(default_factory=list)

    # ---------------------------------------------------------------- mapping
    @property
    def affine_matrix(self) -> np.ndarray:
        return np.asarray(self.affine, dtype=float).reshape(3, 3)

    def transform(self, xy_um: np.ndarray) -> np.ndarray:
        """Section um (n, 2) -> atlas slice in-plane um (n, 2) (affine, then warp)."""
        out = apply_affine(self.affine_matrix, xy_um)
        if self.warp:
            from .nonlinear import apply_warp

            out = apply_warp(self.warp, out)
        return out

    def slice_of(self, atlas):
        """The (possibly tilted) atlas slice the section was registered to."""
        return atlas_slice(
            atlas, self.plane, self.position_um, self.hemisphere, tuple(self.angles_deg)
        )

    def to_ccf(self, xy_um: np.ndarray, atlas) -> np.ndarray:
        """Section um (n, 2) -> CCF (AP, DV, ML) um (n, 3)."""
        return self.slice_of(atlas).to_3d(self.transform(xy_um))

    # ---------------------------------------------------------------- serialise
    def to_dict(self) -> dict:
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> RegistrationResult:
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        extra = set(d) - known
        for k in extra:
            d.pop(k)
        d = _jsonable(d)
        for k in ("atlas", "atlas_version", "plane", "position_um", "hemisphere", "affine"):
            if k not in d:
                raise BrainAtlasInputError(f"registration record lacks {k!r}")
        return cls(**d)

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> RegistrationResult:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BrainAtlasInputError(f"not a registration record: {exc.msg}") from None
        return cls.from_dict(d)

    def to_uns(self) -> dict:
        """The record for ``uns['ccf_registration'][section]`` (h5ad-writable)."""
        d = self.to_dict()
        d["warp"] = json.dumps(d["warp"])  # ragged: kept as a JSON string
        d["notes"] = json.dumps(d["notes"])
        return _h5able(d)

    @classmethod
    def from_uns(cls, d: dict) -> RegistrationResult:
        d = dict(d)
        for k in ("warp", "notes"):
            if isinstance(d.get(k), str):
                d[k] = json.loads(d[k])
        return cls.from_dict(d)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    return x


def _h5able(x):
    """Nested dict for AnnData.uns: no None, numeric lists as arrays."""
    if isinstance(x, dict):
        return {k: _h5able(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        try:
            arr = np.asarray([np.nan if v is None else v for v in x], dtype=float)
            return arr
        except (TypeError, ValueError):
            return np.asarray([str(v) for v in x])
    return x


# ---------------------------------------------------------------------- helpers
def _load_atlas(atlas):
    if isinstance(atlas, (str,)) or hasattr(atlas, "__fspath__"):
        from ..atlas import Atlas

        return Atlas.load(atlas)
    if not hasattr(atlas, "annotation"):
        raise BrainAtlasInputError(
            "atlas must be an Atlas, 'demo', a BrainGlobe name or an .nrrd path"
        )
    return atlas


def _section_xy(adata, spatial_key: str) -> np.ndarray:
    if spatial_key not in adata.obsm:
        raise BrainAtlasInputError(f"the section has no obsm[{spatial_key!r}] cell coordinates")
    xy = np.asarray(adata.obsm[spatial_key], dtype=float)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise BrainAtlasInputError(f"obsm[{spatial_key!r}] must be an (n, 2) array of x, y um")
    xy = xy[:, :2]
    if not np.all(np.isfinite(xy)):
        raise BrainAtlasInputError(f"obsm[{spatial_key!r}] holds non-finite coordinates")
    if len(xy) < MIN_CELLS:
        raise BrainAtlasInputError(
            f"the section has {len(xy)} cells; at least {MIN_CELLS} are needed to register it"
        )
    return xy


def _landmarks(landmarks, weight: float):
    if landmarks is None:
        return None
    if isinstance(landmarks, dict):
        src = np.asarray(landmarks.get("section"), dtype=float).reshape(-1, 2)
        dst = np.asarray(landmarks.get("atlas"), dtype=float).reshape(-1, 2)
        w = np.asarray(landmarks.get("weights", np.full(len(src), weight)), dtype=float)
    else:
        arr = np.asarray(landmarks, dtype=float)
        if arr.ndim == 2 and arr.shape[1] == 4:
            src, dst = arr[:, :2], arr[:, 2:]
        elif arr.ndim == 3 and arr.shape[1:] == (2, 2):
            src, dst = arr[:, 0], arr[:, 1]
        else:
            raise BrainAtlasInputError(
                "landmarks must be (k, 4) rows of x_section, y_section, x_atlas, y_atlas"
            )
        w = np.full(len(src), weight)
    if len(src) != len(dst) or len(w) != len(src):
        raise BrainAtlasInputError(
            "landmarks need as many atlas points (and weights) as section points"
        )
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise BrainAtlasInputError("landmark coordinates must be finite numbers")
    return src, dst, w


def _cell_divisions(adata, atlas, region_key):
    if region_key is None or region_key not in adata.obs:
        return None
    import pandas as pd

    cat = pd.Categorical(adata.obs[region_key])
    div_cat = label_division_index(atlas, np.asarray(cat.categories).astype(str))
    codes = np.asarray(cat.codes)
    div = np.where(codes >= 0, div_cat[np.clip(codes, 0, None)] if len(div_cat) else -1, -1)
    return div if np.mean(div >= 0) >= 0.5 else None


def _template_for(
    atlas, plane, position_um, hemisphere, angles, outline, factor: int = 1, crop: bool = False
) -> Template:
    """Template slice (outline blurred like the section's); ``factor`` > 1: sampled on a
    grid that many times coarser (:func:`.slices.coarse_slice`, for the plane search);
    ``crop``: see :func:`.core.make_template` (the plane search's templates)."""
    if factor > 1:
        from .slices import coarse_slice

        sl = coarse_slice(atlas, plane, position_um, hemisphere, tuple(angles), factor)
    else:
        sl = atlas_slice(atlas, plane, position_um, hemisphere, tuple(angles))
    area_t = float((sl.labels > 0).sum()) * sl.resolution_um**2
    if area_t <= 0:
        raise BrainAtlasInputError(
            f"the atlas has no tissue at {plane} position {position_um:.0f} um ({hemisphere})"
        )
    scale = np.sqrt(area_t / max(outline.area_um2, 1e-9))
    return make_template(sl, sigma_um=outline.blur_um * scale, crop=crop)


def _midline_terms(A, midline, tmpl: Template) -> tuple[float, float]:
    """(angle deg between mapped midline and the template's DV axis, offset / size)."""
    if midline is None:
        return 0.0, 0.0
    p = apply_affine(A, midline)
    d = p[1] - p[0]
    ang = float(np.degrees(np.arccos(np.clip(d[1] / max(np.hypot(*d), 1e-12), -1, 1))))
    off = 0.0
    if tmpl.plane == "coronal":
        off = float(np.abs(p[:, 0] - tmpl.midline[0, 0]).mean() / tmpl.size_um)
    return ang, off


def _area_refine(A, outline, tmpl: Template, notes: list, cancel=None) -> np.ndarray:
    """Image refinement of the affine, only where both outlines match all round."""
    from scipy.spatial import cKDTree

    from .refine import refine_affine_area

    tol = max(0.02 * tmpl.size_um, 2 * tmpl.outline.pixel_um)
    P = apply_affine(A, outline.points)
    d1, _ = tmpl.tree.query(P)
    d2, _ = cKDTree(P).query(tmpl.outline.points)
    if np.mean(d1 <= tol) < 0.95 or np.mean(d2 <= tol) < 0.95:
        notes.append(
            "area refinement skipped: the outlines disagree in places (torn or missing tissue?)"
        )
        return A
    A2, _ = refine_affine_area(A, outline, tmpl.outline, cancel=cancel)
    # keep it only if it did not move the outline far (a sanity bound, 2% of the size)
    move = np.linalg.norm(apply_affine(A2, outline.points) - P, axis=1).mean()
    if move > 0.02 * tmpl.size_um:
        notes.append("area refinement rejected: it moved the outline too far")
        return A
    return A2


def _label_starts(
    atlas,
    xy,
    cell_div,
    outline,
    tmpl,
    mid,
    best,
    mirrored,
    plane,
    hemisphere,
    start_A,
    notes,
    position_um,
    angles,
    search_um,
    bounds,
):
    """Best start among the affines ``start_A`` and global label-chamfer starts at a few
    positions around ``position_um``, by plane score. Returns (affine, position_um)."""
    from .anchors import MidlineFrame
    from .labelfit import label_chamfer_starts, label_fit, make_label_template, plane_score

    lt = make_label_template(atlas, tmpl.slice)
    ok = np.flatnonzero(cell_div >= 0)
    if len(ok) > 4000:
        ok = np.sort(np.random.default_rng(1).choice(ok, 4000, replace=False))
    c, cd = xy[ok], cell_div[ok]
    if mirrored is not None:
        mirrors = [bool(mirrored)]
    elif plane == "sagittal":
        mirrors = [False, True]
    elif hemisphere != "both":
        mirrors = [bool(best.mirrored)]
    else:
        mirrors = [False]
    scale = float(np.sqrt(tmpl.outline.area_um2 / max(outline.area_um2, 1e-9)))
    # choosing among starts that may be grossly wrong: the labels weigh more than the
    # outline (a wrong rotation of a smooth, torn outline can still match it well)
    top = (-np.inf, start_A[0], position_um)
    for A0 in start_A:
        A, info = label_fit(A0, c, cd, lt, outline.points, tmpl.tree)
        sc = plane_score(
            A, info, outline.points, tmpl, outline_weight=0.5, trim_q=START_SCORE_TRIM_Q
        )[0]
        if sc > top[0]:
            top = (sc, A0, position_um)
    first = top[1]
    if mid is None:
        return top[1], top[2]
    lo, hi = bounds
    step = max(search_um / 2.0, 2 * atlas.resolution_um)
    for p in position_um + step * np.asarray(LABEL_START_STEPS, dtype=float):
        if not (lo <= p < hi):
            continue
        t = (
            tmpl
            if p == position_um
            else _template_for(atlas, plane, float(p), hemisphere, angles, outline)
        )
        lt = make_label_template(atlas, t.slice)
        for m in mirrors:
            fs = MidlineFrame(mid[0], mid[1], mirrored=m)
            for A0, _ in label_chamfer_starts(c, cd, lt, t, fs, scale):
                A, info = label_fit(A0, c, cd, lt, outline.points, t.tree)
                sc = plane_score(
                    A, info, outline.points, t, outline_weight=0.5, trim_q=START_SCORE_TRIM_Q
                )[0]
                if sc > top[0]:
                    top = (sc, A, float(p))
    if top[1] is not first or first is not start_A[0]:
        notes.append(f"start chosen by the region labels (plane score; at {top[2]:.0f} um)")
    return top[1], top[2]


def _plane_sensitivity(atlas, sl, mapped, cell_div, plane, n_max: int = 3000) -> float:
    """Fraction of the (labelled) mapped cells whose major division changes when the
    plane moves by 50 um (or two voxels) either way: how fast the anatomy changes here,
    i.e. how much a small error of the position or the angle costs."""
    from .metrics import division_index

    ok = np.flatnonzero(cell_div >= 0)
    if len(ok) > n_max:
        ok = np.random.default_rng(3).choice(ok, n_max, replace=False)
    if len(ok) == 0:
        return 0.0
    base = sl.to_3d(mapped[ok])
    d0, _ = division_index(atlas, atlas.structure_at(base))
    axis = 0 if plane == "coronal" else 2
    step = max(50.0, 2 * atlas.resolution_um)
    out = []
    for dz in (-step, step):
        q = base.copy()
        q[:, axis] += dz
        d1, _ = division_index(atlas, atlas.structure_at(q))
        out.append(np.mean(d1 != d0))
    return float(np.mean(out))


def confidence_score(metrics: dict) -> float:
    """Confidence in [0, 1] from the metrics of one registration.

    Product of soft terms: mask Dice (1 above 0.9, 0 at 0.6), outline inlier fraction
    (1 above 0.85, 0 at 0.4), plausible shape (anisotropy up to 1.25), the mapped
    midline's agreement with the template's (angle under 8 deg, offset under 3% of the
    size) and, with region labels, label agreement (1 above 0.85, 0 at 0.45).
    """

    def ramp(v, lo, hi):
        return float(np.clip((v - lo) / (hi - lo), 0.0, 1.0))

    c = ramp(metrics.get("dice", 0.0), 0.6, 0.9)
    c *= ramp(metrics.get("boundary_inlier_fraction", 0.0), 0.4, 0.85)
    c *= float(np.exp(-max(0.0, metrics.get("anisotropy", 1.0) - 1.25) / 0.25))
    c *= float(np.exp(-max(0.0, metrics.get("midline_angle_deg", 0.0) - 8.0) / 8.0))
    c *= float(np.exp(-max(0.0, metrics.get("midline_offset", 0.0) - 0.03) / 0.03))
    if "label_agreement" in metrics:
        c *= ramp(metrics["label_agreement"], 0.45, 0.85)
    if metrics.get("fit_spread_um") is not None and np.isfinite(metrics["fit_spread_um"]):
        c *= 1.0 / (1.0 + (metrics["fit_spread_um"] / SPREAD_HALF_UM) ** 2)
    return float(np.clip(c, 0.0, 1.0))


#: joint plane search (:func:`.labelfit.search_plane`): weight of the outline in the
#: plane score (the labels weigh more: the outline of torn or warped tissue misleads)
#: and of the reverse label term (template division edges -> nearest cell of their
#: division) in the fits and the score
PLANE_OUTLINE_WEIGHT = 0.5
REVERSE_WEIGHT = 0.5
#: restart spread (um) of the in-plane fit at which its confidence factor is 0.5:
#: calibrated on held-out sections (the benchmark's generator with seed 1, 24 hard
#: sections, not the benchmark's own): the 90th percentile of the spread among the
#: sections registered within the hard-set target (22.0 um), i.e. about 10% false
#: alarms on that calibration set
SPREAD_HALF_UM = 22.0
#: labelled cells (a random subsample) each candidate plane is fitted with
SEARCH_CELLS = 4000
#: coarse to fine plane search (off: ``COARSE_FACTOR = 1``): the pattern search would
#: run on slices sampled ``COARSE_FACTOR`` times coarser with ``COARSE_CELLS`` cells,
#: the ``REFINE_TOP`` best planes refitted at full resolution before the last
#: ``FINE_LEVELS`` steps. On the 40 hard benchmark sections it was not measurably
#: faster than the full-resolution search with the same fit settings (more planes
#: tried, and the full-resolution finish is still needed; 3.3-3.7 s against 3.2 s
#: median in separate runs) and its median error was higher (24.0-24.5 against 22.7
#: um), so it stays off; see benchmarks/registration/RESULTS_registration.md
COARSE_FACTOR = 1
COARSE_CELLS = 1500
REFINE_TOP = 2
FINE_LEVELS = 1
#: each candidate plane's label fit stops when no cell moves more than this (um) or
#: after this many iterations (the final fit after the search converges fully)
SEARCH_TOL_UM = 1.0
SEARCH_ITERS = 15
#: outline ICP iterations of the refit that starts a new depth in the search
REFIT_ITERS = 8
#: (depth um, angle deg) steps of the pattern search, coarse to fine, and after the
#: last level one step to the vertex of the parabolas through the final plane and its
#: six neighbours (``SEARCH_QUAD_FINISH``, :func:`.labelfit.search_plane`). A first
#: level of (50 um, 1.5 deg) was dropped earlier: the starts (given plane, +-half the
#: search range, the label proposal) already cover that scale (23-31 % faster on three
#: draws of 40 hard benchmark sections at about the same accuracy). The (12.5 um,
#: 0.4 deg) level that followed is replaced by the quadratic finish: with it and
#: ``PROPOSE_COARSE = 2``, same process, atlas-slice cache emptied before each run, the
#: 40 hard benchmark sections took 3.76 -> 2.94 s median (per-section ratio 0.77) and
#: 31.8 -> 23.8 candidate planes; accuracy on three draws of 40 (seeds 0 / 1 / 2):
#: within target 38 / 33 / 35 -> 38 / 33 / 35, median 20.4 / 27.7 / 23.9 -> 19.9 / 26.7 /
#: 25.4 um, p95 36.5 / 55.7 / 47.9 -> 38.0 / 56.0 / 55.5 um. Keeping the fine level as
#: well (with the finish) was more accurate (107 of 120 within; median 18.9 / 26.7 /
#: 22.3 um) but only 5 % faster than before (benchmarks/registration/RESULTS_registration.md)
SEARCH_STEPS = ((25.0, 0.75),)
#: sagittal sections keep the finer level (12.5 um, 0.4 deg) before the quadratic
#: finish: a sagittal section spans most of the brain's length (8-10 mm), so an angle
#: error moves its ends far in depth (0.75 deg: about 60 um at 4.5 mm from the centre),
#: and their errors came mostly from the plane (at the true plane, from the true
#: affine, the label fit holds 5-28 um on the sagittal sections that ended at 39-60
#: um). Same process, the 30 sagittal sections of three draws of 40 hard sections
#: (seeds 0 / 1 / 2): within target 25 -> 26, median error 28.2 -> 24.6 um, p95 55.6 ->
#: 51.2 um, 14 sections better by more than 2 um and 6 worse, for 25 % more time on
#: them (about 6 % over all sections). A step of (25 um, 0.35 deg) instead: 24 within
SEARCH_STEPS_SAGITTAL = ((25.0, 0.75), (12.5, 0.4))
SEARCH_QUAD_FINISH = True
#: the outline refit is tried only for depth steps of at least this (um): a finer step
#: barely changes the slice's outline, the warm start suffices there (with the steps
#: above, only the starts and the proposals get it)
REFIT_MIN_STEP_UM = 50.0
#: coronal hemisections also poll the left-right tilt about the midline (the depth at
#: the midline kept; :func:`.labelfit.search_plane` ``midline_tilt``): 8 neighbours per
#: poll instead of 6. At a failing hemisection's found plane the score rose along
#: that direction (seed 8 case 22: -26.8 at 0.2 deg to -25.5 at 2.7 deg) but not along
#: the tilt about the section's centre. Same process, the 120 coronal hemisections
#: of six held-out draws of 40 hard sections (seeds 7-12): within target 104 -> 107, 14
#: sections better by more than 5 um and 2 worse, 12-17 % more time on hemisections
#: (about 6 % over all sections); checked afterwards on the 40 hemisections of seeds 1
#: and 2: 35 -> 36 within, 7 better, none worse. Whole sections and sagittal ones are
#: unchanged
HEMI_MIDLINE_TILT = True
#: template division edge points (the reverse term) per candidate plane
SEARCH_EDGES = 2500
#: cells the label-agreement plane proposals (:func:`.position.refine_plane`) use
PROPOSE_CELLS = 1500
#: the proposals score the angle pairs on a grid this many times coarser first, then
#: the full grid around the best three (see :func:`.position.refine_plane`): about 3x
#: fewer angle pairs; on cells at their true in-plane place it proposes the same plane
#: as the full grid (tests/test_register_search_steps.py)
PROPOSE_COARSE = 2
#: the plane search starts from the outline fit at the given plane unless fewer of the
#: labelled cells than ``LABEL_START_AGREEMENT`` land in their own region; then global
#: starts from the labels (:func:`_label_starts`) compete with it by plane score.
#: Hemisections always try them (``LABEL_STARTS_HEMI``): an anterior hemisection has
#: two or three large divisions, so a wrong outline fit of torn tissue still puts most
#: cells in their own region (held-out draws, seeds 1 and 2: all failing coronal
#: sections were hemisections, most of them anterior and torn)
LABEL_START_AGREEMENT = 0.75
LABEL_STARTS_HEMI = True
#: positions of the global label starts: the given one and these multiples of half the
#: search range either side
LABEL_START_STEPS = (0.0, -1.0, 1.0)
#: outline trimming (:data:`.labelfit.SCORE_TRIM_Q`) of the plane score that ranks those
#: starts: harder than in the search, since a torn section's wrong start can cover the
#: template better than the right one (None: as the search). Measured with
#: ``.labelfit.REVERSE_TRIM_Q = 0.7`` and ``.labelfit.SCORE_TRIM_Q = 0.85`` on three
#: draws of 40 hard sections (seeds 0 / 1 / 2, benchmarks/registration/compare_settings.py):
#: within target 38 / 33 / 35 -> 39 / 34 / 37 (106 -> 110 of 120); a trim of 0.7 in
#: the search too gave 37 / 36 / 37, 0.85 everywhere 39 / 33 / 37, none 38 / 33 / 36;
#: 3-5 % more time in total (same process, cold cache)
START_SCORE_TRIM_Q = 0.7
#: proposal + fit rounds of the quick plane search (``plane_search="quick"``,
#: :func:`.quick_search.quick_plane_search`)
QUICK_ROUNDS = 2
#: degree of the polynomial label warp after the plane search
LABEL_WARP_DEGREE = 2


# ---------------------------------------------------------------------- main entry
def register_section(
    adata,
    atlas,
    plane: str = "coronal",
    position_um: float | str | None = None,
    hemisphere: str = "both",
    midline=None,
    landmarks=None,
    *,
    angles_deg=(0.0, 0.0),
    mirrored: bool | None = None,
    refine_position: bool = False,
    plane_search: str = "joint",
    search_um: float = 300.0,
    max_angle_deg: float = 5.0,
    nonlinear: bool = False,
    label_warp: bool | None = None,
    area_refine: bool = False,
    landmark_weight: float = 5.0,
    region_key: str | None = "region",
    spatial_key: str = "spatial",
    max_iter: int = 100,
    tol: float = 1e-5,
    sweep: str = "auto",
    section_name: str | None = None,
    progress=None,
    cancel=None,
) -> RegistrationResult:
    """Register one section's cells to the atlas.

    Parameters
    ----------
    adata : AnnData with obsm[spatial_key] (n, 2) um in the section's own frame.
    atlas : :class:`~napari_brainatlas.atlas.Atlas` or an atlas spec for ``Atlas.load``.
    plane : "coronal" or "sagittal".
    position_um : AP (coronal) / ML (sagittal) um; None or "auto" scans the whole axis.
    hemisphere : "both", "left" or "right" (coronal hemisections; the midline is the cut edge).
    midline : (2, 2) or (4,) section um, a dorsal then a ventral point on the midline
        (for sagittal sections: any dorsal -> ventral line). None: rotation sweep only.
    landmarks : extra user pairs, (k, 4) ``x_s, y_s, x_atlas, y_atlas`` rows or
        ``{"section": (k,2), "atlas": (k,2), "weights": (k,)}``.
    angles_deg : cutting angles of the template slice (see ``AtlasSlice``).
    mirrored : force the mirror hypothesis (None: decided by fit).
    refine_position : search the position (+-``search_um``) and, with region labels,
        the cutting angles (+-``max_angle_deg``) around ``position_um``. With labels the
        plane and the in-plane fit are searched jointly (:mod:`.labelfit`; default
        ``plane_search="joint"``): every
        candidate plane is fitted with the cells as interior landmarks (each pulled into
        its own region, and each region's edge pulled onto its nearest cell) plus the
        outline, and scored by the mean capped label and outline distances; the angles
        turn about the section's own centre; the final affine is that joint fit.
    plane_search : with ``refine_position`` and region labels: "joint" (default) the
        search above, with global label starts for torn tissue; "quick" instead
        alternates ``QUICK_ROUNDS`` label proposals of the plane with in-plane label fits
        (:mod:`.quick_search`): about 3x faster and less accurate (hard benchmark set:
        median 0.92 vs 3.24 s a section, 37.6 vs 23.2 um; see
        benchmarks/registration/RESULTS_registration.md).
    nonlinear : add a thin-plate spline refinement (outline only) after the affine.
    label_warp : after the joint plane search, refit on more cells (labels both ways:
        cells into their regions and each region's edge onto its nearest cell) and add a
        smooth polynomial warp (degree ``LABEL_WARP_DEGREE``) from the same terms, kept
        only if it lowers the cost (:func:`.labelfit.label_warp`). None (default): on
        whenever the label-guided plane search ran. The restart spread of that fit
        (:func:`.labelfit.fit_spread`) goes into ``metrics['fit_spread_um']`` and the
        confidence.
    area_refine : finish with an image (section tissue mask vs template mask) alignment
        when the outlines agree everywhere (skipped for torn tissue, where it drifts).
        Off by default: it helps sparse synthetic sections but hurt a demo section
        (see benchmarks/registration).
    region_key : obs column with region labels (major divisions or any structure
        acronyms); used for the position / angle search, metrics and confidence.
    max_iter, tol : ICP limits (tol: relative cost change).
    sweep : "auto", "always" or "never" (rotation x mirror fall-back starts).
    progress : ``progress(i, cost_um)`` callback; cancel : ``cancel() -> bool``.

    Returns a :class:`RegistrationResult`. Raises :class:`BrainAtlasInputError` for
    bad input and :class:`RegistrationCancelled` when cancelled.
    """
    atlas = _load_atlas(atlas)
    if plane not in ("coronal", "sagittal"):
        raise BrainAtlasInputError(f"plane must be 'coronal' or 'sagittal', not {plane!r}")
    if hemisphere not in ("both", "left", "right"):
        raise BrainAtlasInputError(
            f"hemisphere must be 'both', 'left' or 'right', not {hemisphere!r}"
        )
    if plane_search not in ("joint", "quick"):
        raise BrainAtlasInputError(f"plane_search must be 'joint' or 'quick', not {plane_search!r}")
    if plane == "sagittal" and hemisphere != "both":
        hemisphere = "both"  # a sagittal slice lies in one hemisphere already
    xy = _section_xy(adata, spatial_key)
    mid = None
    if midline is not None:
        mid = validate_midline(midline, xy)
    elif hemisphere != "both":
        raise BrainAtlasInputError("a hemisection needs its cut edge as the midline (two points)")
    auto = position_um is None or (isinstance(position_um, str) and position_um.lower() == "auto")
    lo, hi = atlas.position_range_um(plane)
    if not auto:
        try:
            position_um = float(position_um)
        except (TypeError, ValueError):
            raise BrainAtlasInputError(
                f"position must be a number of um or 'auto', not {position_um!r}"
            ) from None
        if not (lo <= position_um < hi):
            raise BrainAtlasInputError(
                f"{plane} position {position_um:.0f} um is outside the atlas ({lo:.0f} to {hi:.0f} um)"
            )
    # the searches (plane, label starts, positions) stay between the atlas's first and
    # last planes with tissue
    t_lo, t_hi = atlas.tissue_range_um(plane)
    lo, hi = max(lo, t_lo), min(hi, t_hi)
    angles = tuple(float(a) for a in angles_deg)
    lm = _landmarks(landmarks, landmark_weight)
    outline = section_outline(xy)
    cell_div = _cell_divisions(adata, atlas, region_key)
    notes: list[str] = []
    name = (
        section_name
        or str(adata.uns.get("section", ""))
        or (
            str(adata.obs["section"].iloc[0])
            if "section" in adata.obs and adata.obs["section"].nunique() == 1
            else "section"
        )
    )

    sub = (
        np.arange(len(xy))
        if len(xy) <= 20000
        else np.random.default_rng(0).choice(len(xy), 20000, replace=False)
    )

    def agree_affine(tmpl, A):
        from .metrics import division_index

        ids = tmpl.slice.labels_at(apply_affine(A, xy[sub]))
        tdiv, _ = division_index(atlas, ids)
        return float(np.mean(tdiv == cell_div[sub]))

    def fit_at(pos, ang, prog=None, sw=sweep, all_fits=False, reuse=None, tmpl=None):
        if tmpl is None:
            tmpl = _template_for(atlas, plane, pos, hemisphere, ang, outline)
        rank = (lambda A: agree_affine(tmpl, A)) if cell_div is not None else None
        best, fits = fit_to_template(
            xy,
            outline,
            tmpl,
            mid,
            mirrored=mirrored,
            landmarks=lm,
            max_iter=max_iter,
            tol=tol,
            sweep=sw,
            progress=prog,
            cancel=cancel,
            rank=rank,
            reuse=reuse,
        )
        if all_fits:
            return tmpl, best, fits
        return tmpl, best

    def agreement(tmpl, best):
        if cell_div is None:
            return None
        return agree_affine(tmpl, best.affine)

    position_estimated = False
    if auto:
        from .position import scan_positions

        def score_at(p):
            tmpl, best = fit_at(p, angles, sw="never")
            ag = agreement(tmpl, best)
            s = ag if ag is not None else -best.score
            return s, None

        scan = scan_positions(score_at, atlas, plane, hemisphere, cancel=cancel)
        position_um = scan["position_um"]
        position_estimated = True
        refine_position = True
        notes.append(f"position scanned: best {position_um:.0f} um")
    label_A = None
    plane_info = None
    if refine_position:
        tmpl, best, fits0 = fit_at(
            position_um,
            angles,
            sw="auto",
            prog=progress if cell_div is not None else None,
            all_fits=True,
        )
        if best is None and cell_div is not None:
            raise BrainAtlasInputError("no registration could be found for this section")
        start_A = None if best is None else best.affine
        hemi_starts = LABEL_STARTS_HEMI and hemisphere != "both"
        ag = agreement(tmpl, best) if best is not None else None
        if (
            plane_search == "joint"
            and ag is not None
            and (hemi_starts or ag < LABEL_START_AGREEMENT)
        ):
            # the labels disagree with the outline's best fit (a wrong start, or a wrong
            # plane): every start, the best by label agreement finished by the label fit,
            # and global starts from the labels alone at a few positions; the plane
            # score (labels inside + outline) chooses. A hemisection whose labels agree
            # gets the global label starts against its outline fit only
            cands = [best.affine]
            if ag < LABEL_START_AGREEMENT:
                # every start and the rotation sweep: the fits above are reused (an
                # "auto" fit that looked poor has run the sweep already)
                tmpl, _, fits = fit_at(
                    position_um, angles, sw="always", all_fits=True, reuse=fits0, tmpl=tmpl
                )
                cands += [
                    f.affine for f in sorted(fits, key=lambda f: -agree_affine(tmpl, f.affine))[:3]
                ]
            start_A, p_start = _label_starts(
                atlas,
                xy,
                cell_div,
                outline,
                tmpl,
                mid,
                best,
                mirrored,
                plane,
                hemisphere,
                cands,
                notes,
                position_um,
                angles,
                search_um,
                (lo, hi),
            )
            if p_start != position_um:
                search_um = max(search_um - abs(p_start - position_um), 2 * atlas.resolution_um)
                position_um = p_start
                tmpl = _template_for(atlas, plane, position_um, hemisphere, angles, outline)
        lab_ok = None
        if cell_div is not None:
            lab_ok = np.flatnonzero(cell_div >= 0)
            if len(lab_ok) > SEARCH_CELLS:
                lab_ok = np.sort(
                    np.random.default_rng(1).choice(lab_ok, SEARCH_CELLS, replace=False)
                )
        if cell_div is not None and plane_search == "quick":
            from .quick_search import quick_plane_search

            ps = quick_plane_search(
                lambda p, a: _template_for(atlas, plane, p, hemisphere, a, outline, crop=True),
                atlas,
                plane,
                xy[lab_ok],
                cell_div[lab_ok],
                outline.points,
                start_A,
                position_um,
                angles,
                bounds=(lo, hi),
                search_um=search_um,
                max_angle_deg=max_angle_deg,
                rounds=QUICK_ROUNDS,
                reverse_weight=REVERSE_WEIGHT,
                outline_weight=PLANE_OUTLINE_WEIGHT,
                propose_cells=PROPOSE_CELLS,
                propose_coarse=PROPOSE_COARSE,
                cancel=cancel,
            )
            notes.append(f"quick plane search: {ps['evals']} plane(s) fitted")
        elif cell_div is not None:
            from .labelfit import search_plane
            from .position import refine_plane

            # a cheap proposal from the labels at the start fit, then a joint search of
            # the plane and the in-plane fit (labels inside + outline)
            r = refine_plane(
                atlas,
                plane,
                position_um,
                apply_affine(start_A, xy),
                cell_div,
                tmpl.slice.centre_um,
                search_um=search_um,
                max_angle_deg=max_angle_deg,
                max_cells=PROPOSE_CELLS,
                coarse_factor=PROPOSE_COARSE,
            )
            s_half = search_um

            def propose(A_cur, p_cur, a_cur):
                sl_cur = atlas_slice(atlas, plane, p_cur, hemisphere, tuple(a_cur))
                rr = refine_plane(
                    atlas,
                    plane,
                    p_cur,
                    apply_affine(A_cur, xy),
                    cell_div,
                    sl_cur.centre_um,
                    search_um=min(150.0, s_half),
                    max_angle_deg=max_angle_deg,
                    max_cells=PROPOSE_CELLS,
                    coarse_factor=PROPOSE_COARSE,
                )
                # refine_plane angles are absolute about the same centre: keep them
                return rr["position_um"], rr["angles_deg"]

            ps = search_plane(
                lambda p, a: _template_for(atlas, plane, p, hemisphere, a, outline, crop=True),
                atlas,
                xy[lab_ok],
                cell_div[lab_ok],
                outline.points,
                start_A,
                position_um,
                angles,
                bounds=(lo, hi),
                search_um=search_um,
                max_angle_deg=max_angle_deg,
                proposals=[(r["position_um"], r["angles_deg"])],
                propose=propose,
                cancel=cancel,
                outline_weight=PLANE_OUTLINE_WEIGHT,
                reverse_weight=REVERSE_WEIGHT,
                coarse_template_at=(
                    lambda p, a: _template_for(
                        atlas, plane, p, hemisphere, a, outline, factor=COARSE_FACTOR, crop=True
                    )
                )
                if COARSE_FACTOR > 1
                else None,
                coarse_cells=COARSE_CELLS,
                refine_top=REFINE_TOP,
                fine_levels=FINE_LEVELS,
                fit_tol_um=SEARCH_TOL_UM,
                fit_iters=SEARCH_ITERS,
                refit_iters=REFIT_ITERS,
                refit_min_step_um=REFIT_MIN_STEP_UM,
                max_edges=SEARCH_EDGES,
                steps=SEARCH_STEPS_SAGITTAL if plane == "sagittal" else SEARCH_STEPS,
                quadratic_finish=SEARCH_QUAD_FINISH,
                midline_tilt=HEMI_MIDLINE_TILT and plane == "coronal" and hemisphere != "both",
            )
        if cell_div is not None:
            if ps["position_um"] == position_um and tuple(ps["angles_deg"]) == tuple(angles):
                notes.append("plane search kept the given position and angles")
            position_um, angles = ps["position_um"], tuple(ps["angles_deg"])
            label_A = ps["affine"]
            plane_info = ps
        else:
            # shape only: a few positions around the start, angles untouched
            cands = np.clip(position_um + np.linspace(-search_um, search_um, 7), lo, hi - 1e-6)
            fits = [(fit_at(p, angles, sw="never"), p) for p in cands]
            (tmpl, best), position_um = min(fits, key=lambda t: t[0][1].score)
            notes.append(
                "no region labels: position refined by outline fit only; angles not estimated"
            )
        position_estimated = True
    if label_A is not None:
        # the joint search already fitted this plane (labels + outline); the start fit
        # keeps the record's anchors and ICP history
        tmpl = _template_for(atlas, plane, position_um, hemisphere, angles, outline)
    else:
        tmpl, best = fit_at(position_um, angles, prog=progress)
    if best is None:
        raise BrainAtlasInputError("no registration could be found for this section")
    A = best.affine
    if label_A is not None:
        A = label_A
    if area_refine:
        A = _area_refine(A, outline, tmpl, notes, cancel)
    warp = []
    spread_um = None
    use_lw = (label_A is not None) if label_warp is None else bool(label_warp)
    if use_lw and cell_div is not None:
        from .labelfit import label_fit as _label_fit
        from .labelfit import label_warp as _label_warp
        from .labelfit import make_label_template

        lab_ok = np.flatnonzero(cell_div >= 0)
        if len(lab_ok) > 6000:
            lab_ok = np.sort(np.random.default_rng(4).choice(lab_ok, 6000, replace=False))
        # the final fit on more cells, then the smooth warp
        A, _ = _label_fit(
            A,
            xy[lab_ok],
            cell_div[lab_ok],
            make_label_template(atlas, tmpl.slice),
            outline.points,
            tmpl.tree,
            n_iter=30,
            reverse_weight=REVERSE_WEIGHT,
        )
        warp, lw_info = _label_warp(
            A,
            xy[lab_ok],
            cell_div[lab_ok],
            make_label_template(atlas, tmpl.slice),
            outline.points,
            tmpl.tree,
            tmpl.size_um,
            degree=LABEL_WARP_DEGREE,
            reverse_weight=REVERSE_WEIGHT,
        )
        from .labelfit import fit_spread

        sp = lab_ok if len(lab_ok) <= 2000 else lab_ok[:: int(np.ceil(len(lab_ok) / 2000))]
        spread_um = fit_spread(
            A,
            xy[sp],
            cell_div[sp],
            make_label_template(atlas, tmpl.slice),
            outline.points,
            tmpl.tree,
            reverse_weight=REVERSE_WEIGHT,
        )
        notes.append(
            "label warp: "
            + ("applied" if warp else "not kept")
            + f" (cost {lw_info.get('cost_before', float('nan')):.1f} -> "
            f"{lw_info.get('cost_after', float('nan')):.1f} um)"
        )
    if nonlinear:
        from .nonlinear import apply_warp as _aw
        from .nonlinear import fit_tps_refinement

        warp = warp + fit_tps_refinement(
            _aw(warp, apply_affine(A, outline.points)),
            tmpl.outline.points,
            tmpl.outline.normals,
            tmpl.tree,
            tmpl.size_um,
            floor_um=2 * tmpl.outline.pixel_um,
        )
    mapped = apply_affine(A, xy)
    if warp:
        from .nonlinear import apply_warp

        mapped = apply_warp(warp, mapped)
    m = registration_metrics(
        A,
        outline,
        tmpl.outline,
        tmpl.slice.labels,
        tmpl.slice.resolution_um,
        atlas=atlas,
        cell_xy_atlas=mapped,
        cell_div=cell_div,
    )
    ang, off = _midline_terms(A, mid, tmpl)
    m["midline_angle_deg"] = ang
    m["midline_offset"] = off
    m["iterations"] = int(best.icp.iterations)
    m["converged"] = bool(best.icp.converged)
    dec = decompose(A)
    m["scale"] = float(np.sqrt(abs(np.linalg.det(A[:2, :2]))))
    if spread_um is not None:
        m["fit_spread_um"] = float(spread_um)
    if plane_info is not None:
        m["plane_score"] = plane_info["score"]
        m["plane_inside"] = plane_info["inside"]
        m["plane_outline_um"] = plane_info["outline_um"]
        m["plane_label_um"] = plane_info.get("label_um", float("nan"))
        m["plane_evals"] = plane_info["evals"]
    if cell_div is not None and position_estimated:
        m["plane_sensitivity"] = _plane_sensitivity(atlas, tmpl.slice, mapped, cell_div, plane)
    m["rotation_deg"] = dec["rotation_deg"]
    conf = confidence_score(m)
    return RegistrationResult(
        atlas=atlas.name,
        atlas_version=atlas.version,
        plane=plane,
        position_um=float(position_um),
        hemisphere=hemisphere,
        affine=A.tolist(),
        angles_deg=[float(a) for a in angles],
        midline=[] if mid is None else mid.tolist(),
        mirrored=bool(best.mirrored) if label_A is None else bool(np.linalg.det(A[:2, :2]) < 0),
        anchors_section=np.asarray(best.anchors_section).tolist(),
        anchors_atlas=np.asarray(best.anchors_atlas).tolist(),
        warp=[
            {
                k: (np.asarray(v).tolist() if k in ("ctrl", "disp") else float(v))
                for k, v in st.items()
            }
            for st in warp
        ],
        cost_history=[float(c) for c in best.icp.cost_history],
        converged=bool(best.icp.converged),
        iterations=int(best.icp.iterations),
        confidence=conf,
        metrics={k: (float(v) if not isinstance(v, bool) else v) for k, v in m.items()},
        section=name,
        n_cells=len(xy),
        position_estimated=position_estimated,
        start=best.start,
        notes=notes,
    )


def apply_registration(
    adata, result: RegistrationResult, atlas, inplace: bool = False, spatial_key: str = "spatial"
):
    """Write a registration into an AnnData.

    Sets obsm['ccf_coords'] (n, 3) CCF (AP, DV, ML) um, obs['ccf_id'] (int, 0 outside
    the brain), obs['ccf_acronym'] and uns['ccf_registration'][result.section] (the
    record). Returns a new AnnData unless ``inplace`` (then ``adata`` itself).
    """
    atlas = _load_atlas(atlas)
    if isinstance(result, dict):
        result = RegistrationResult.from_dict(result)
    xy = _section_xy(adata, spatial_key)
    out = adata if inplace else adata.copy()
    ccf = result.to_ccf(xy, atlas)
    ids = atlas.structure_at(ccf)
    out.obsm["ccf_coords"] = ccf
    out.obs["ccf_id"] = ids.astype(np.int64)
    out.obs["ccf_acronym"] = atlas.ontology.acronyms(ids)
    reg = dict(out.uns.get("ccf_registration", {}))
    reg[result.section] = result.to_uns()
    out.uns["ccf_registration"] = reg
    return out
