"""Every setting of the registration, as frozen dataclasses passed explicitly.

:class:`RegistrationSettings` holds the options a caller passes to
:func:`~.pipeline.register_section` (what to do: search the plane or not, which search,
which finish, which obs / obsm keys) and, nested, the tuning of each stage of the
method (how: iterations, trims, weights, step sizes). The defaults are the values the
benchmark (benchmarks/registration) was run with; the measurements behind them are in
benchmarks/registration/NOTES.md. Nothing in :mod:`napari_brainatlas.register` reads a
module-level setting: every stage gets the settings object, so two registrations with
different settings can run at once in two threads.

Vary a setting with :func:`dataclasses.replace`::

    from dataclasses import replace
    s = RegistrationSettings()
    s = replace(s, search=replace(s.search, steps=((50.0, 1.5), (25.0, 0.75))))
    register_section(adata, atlas, "coronal", 5000.0, settings=s, refine_position=True)

Units: um for lengths, degrees for angles, fractions in [0, 1] for quantiles.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace

from .._errors import BrainAtlasInputError

__all__ = [
    "ConfidenceSettings",
    "FinishSettings",
    "ICPSettings",
    "LabelChamferSettings",
    "LabelFitSettings",
    "LabelStartSettings",
    "LabelWarpSettings",
    "MidlineSettings",
    "OutlineFitSettings",
    "PlaneSearchSettings",
    "ProposalSettings",
    "QuickSearchSettings",
    "RegistrationSettings",
    "replace_field",
    "settings_with_options",
]


@dataclass(frozen=True)
class ICPSettings:
    """One outline ICP run (:func:`.icp.icp_affine`)."""

    #: iterations at most
    max_iter: int = 100
    #: stop when the relative cost change falls below this
    tol: float = 1e-5
    #: pairs farther than ``trim_k`` x the median distance are dropped (torn tissue)
    trim_k: float = 2.5
    #: match both ways (template points to their nearest section point too)
    symmetric: bool = True
    #: share of point-to-point in the point-to-line fit
    point_weight: float = 0.05
    #: "affine" (6 parameters) or "similarity" (rotation, isotropic scale, shift)
    model: str = "affine"
    #: pull of the linear part towards the start's (affine model only)
    prior_weight: float = 0.0
    #: > 0: kept pairs also weighted 1 / (1 + (d / c)^2), c = cauchy_k x median distance
    cauchy_k: float = 0.0
    #: the fit also counts as converged when its cost stayed within ``stable_rel`` (a
    #: fraction of the cost) over its last ``stable_window`` iterations: a stable
    #: oscillation at the optimum (the matches flipping between two near-equal
    #: states). This only names the outcome: the iterations run as before
    stable_window: int = 6
    stable_rel: float = 1e-3


@dataclass(frozen=True)
class OutlineFitSettings:
    """The outline fit of a section to one template slice
    (:func:`.outline_fit.fit_to_template`)."""

    #: the ICP of every start; ``max_iter`` and ``tol`` are the affine stage's limits
    #: (the ``max_iter`` and ``tol`` options of ``register_section``)
    icp: ICPSettings = ICPSettings()
    #: "auto" (rotation sweep when there is no midline or the fit looks poor),
    #: "always" or "never" (the ``sweep`` option)
    sweep: str = "auto"
    #: a fit scoring above this (relative trimmed boundary cost / inlier fraction)
    #: triggers the rotation sweep; good fits score about 0.002-0.004
    poor_score: float = 0.008
    #: the chamfer starts are added when the best anchor / moment start scores above
    #: this many times the expected score of a good fit
    chamfer_score: float = 1.0
    #: add the truncated chamfer search's starts when the starts fit poorly
    chamfer: bool = True
    #: always add them
    chamfer_always: bool = False
    #: with region labels, a second affine stage held this close to the similarity
    #: stage's linear part is tried too, and the labels choose
    affine_prior: float = 0.01
    #: similarity ICP iterations of each anchor / moment / chamfer start
    start_iters: int = 12
    #: iterations the most promising starts continue with
    continue_iters: int = 40
    #: similarity ICP iterations of each rotation sweep start
    sweep_iters: int = 30
    #: cells (a random subsample) the label agreement ranking the fits is measured on
    rank_cells: int = 20000

    def __post_init__(self):
        if self.sweep not in ("auto", "always", "never"):
            raise BrainAtlasInputError(
                f"sweep must be 'auto', 'always' or 'never', not {self.sweep!r}"
            )


@dataclass(frozen=True)
class LabelFitSettings:
    """The region-label terms: the in-plane label fit (:func:`.labelfit.label_fit`,
    also the trims of :func:`.labelfit.label_warp` and :func:`.labelfit.fit_spread`)
    and the score of a fitted plane (:func:`.labelfit.plane_score`).

    The class defaults are a plain label fit; ``RegistrationSettings.labels`` adds the
    reverse term and the plane score's outline weight the searches use."""

    #: iterations at most
    n_iter: int = 15
    #: stop when no cell moves more than this (um)
    tol_um: float = 0.5
    #: weight of the outline pairs (times the cells' total weight)
    outline_weight: float = 0.5
    #: weight of the reverse pairs (each template division edge point pulls the
    #: nearest cell of its division), in the fit and in the plane score
    reverse_weight: float = 0.0
    #: weight of a cell already inside its own region
    inside_weight: float = 1.0
    #: pairs farther than this (um) are dropped
    cap_um: float = 400.0
    #: forward pairs (cell -> its region) beyond this quantile are dropped each step
    trim_q: float = 0.85
    #: reverse pairs beyond this quantile are dropped (edges of torn-away tissue)
    reverse_trim_q: float = 0.7
    #: Anderson acceleration of the fit's fixed-point iteration
    accelerate: bool = False
    #: earlier steps the acceleration combines
    anderson_m: int = 4
    #: the plane score averages the outline distances and the reverse cost over this
    #: lowest fraction only (1: all)
    score_trim_q: float = 0.85
    #: distances in the plane score are capped at this (um)
    score_cap_um: float = 150.0
    #: weight of the outline term in the plane score
    score_outline_weight: float = 1.0


@dataclass(frozen=True)
class LabelChamferSettings:
    """The global similarity starts from the region labels
    (:func:`.labelfit.label_chamfer_starts`)."""

    #: starts returned per midline frame
    n_best: int = 2
    #: rotations about the midline tried (deg)
    rot_deg: tuple = (-8, -4, 0, 4, 8)
    #: scales tried, relative to the area ratio (geometric grid of ``n_scale``)
    scale_range: tuple = (0.75, 1.3)
    n_scale: int = 9
    #: shifts up to this fraction of the template size, ``n_shift`` per axis
    shift_frac: float = 0.3
    n_shift: int = 17
    #: a cell's distance to its own region is capped at this (um)
    trunc_um: float = 300.0
    #: cells scored (a random subsample)
    max_cells: int = 400


@dataclass(frozen=True)
class LabelStartSettings:
    """Global starts from the region labels before the joint plane search
    (:func:`.label_starts.label_starts`)."""

    #: they are tried when fewer labelled cells than this land in their own region
    #: under the outline fit at the given plane
    agreement: float = 0.75
    #: coronal hemisections always try them
    hemisections: bool = True
    #: positions tried: the given one plus these multiples of half the search range
    position_steps: tuple = (0.0, -1.0, 1.0)
    #: outline trim of the plane score that ranks the starts (None: ``labels.score_trim_q``)
    score_trim_q: float | None = 0.7
    #: weight of the outline in that score
    score_outline_weight: float = 0.5
    #: reverse weight of the start fits (0: forward pairs and outline only)
    reverse_weight: float = 0.0
    #: labelled cells (a random subsample) the starts are fitted with
    cells: int = 4000
    #: outline fits (best by label agreement) that compete when the labels disagree
    outline_candidates: int = 3
    chamfer: LabelChamferSettings = LabelChamferSettings()


@dataclass(frozen=True)
class ProposalSettings:
    """Label-agreement plane proposals (:func:`.position.refine_plane`)."""

    #: depth step (um; None: the atlas voxel)
    position_step_um: float | None = None
    #: angle grid step (deg)
    angle_step_deg: float = 0.5
    #: cells (a random subsample) scored
    max_cells: int = 3000
    seed: int = 0
    #: > 1: angle pairs first on a grid this many times coarser, then the full step
    #: around the ``coarse_top`` best
    coarse_factor: int = 1
    coarse_top: int = 3


@dataclass(frozen=True)
class PlaneSearchSettings:
    """The joint search of the plane and the in-plane fit
    (:func:`.joint_search.search_plane`)."""

    #: labelled cells (a random subsample) each candidate plane is fitted with
    cells: int = 4000
    #: (depth um, angle deg) steps of the pattern search, coarse to fine
    steps: tuple = ((25.0, 0.75),)
    #: the same for sagittal sections (they span the brain's length: angles matter more)
    steps_sagittal: tuple = ((25.0, 0.75), (12.5, 0.4))
    #: after the last level, one step to the vertex of the parabolas through the final
    #: plane and its neighbours
    quadratic_finish: bool = True
    #: each candidate's label fit stops after this many iterations ...
    fit_iters: int = 15
    #: ... or when no cell moves more than this (um)
    fit_tol_um: float = 1.0
    #: outline ICP iterations of the refit that also starts a new depth
    refit_iters: int = 8
    #: that refit's pull towards the warm start's linear part
    refit_prior_weight: float = 0.01
    #: the refit is tried only for depth steps of at least this (um)
    refit_min_step_um: float = 50.0
    #: coronal hemisections also poll the left-right tilt about the midline
    hemi_midline_tilt: bool = True
    #: template division edge points (the reverse term) per candidate plane
    max_edges: int = 2500
    #: candidate planes at most
    max_evals: int = 60
    #: half-width (um) of the proposal asked for when the pattern search stalls
    propose_um: float = 150.0
    #: score the final plane's neighbours at 4 steps (``neighbours`` in the result)
    neighbours: bool = False
    #: working pixel of the label templates (None: the atlas voxel)
    label_pixel_um: float | None = None
    #: coarse to fine (off at 1): the pattern search on slices this many times coarser
    #: with ``coarse_cells`` cells and ``coarse_edges`` edge points, the ``refine_top``
    #: best planes refitted at full resolution before the last ``fine_levels`` steps
    coarse_factor: int = 1
    coarse_cells: int = 1500
    coarse_edges: int = 1000
    refine_top: int = 2
    fine_levels: int = 1

    def steps_for(self, plane: str) -> tuple:
        """The pattern search's steps for a ``plane`` ("coronal" or "sagittal")."""
        return self.steps_sagittal if plane == "sagittal" else self.steps


@dataclass(frozen=True)
class QuickSearchSettings:
    """The quick plane search (:func:`.quick_search.quick_plane_search`)."""

    #: proposal + label fit rounds (it stops early when a proposal keeps the plane)
    rounds: int = 2
    #: iterations of each label fit
    fit_iters: int = 30
    #: Anderson acceleration of those fits (each runs from a proposal to convergence)
    accelerate: bool = True


@dataclass(frozen=True)
class LabelWarpSettings:
    """The smooth polynomial label warp after the plane search
    (:func:`.labelfit.label_warp`; trims and weights from the label fit settings)."""

    #: degree of the polynomial
    degree: int = 2
    #: iterations at most
    n_iter: int = 25
    #: ridge on the non-affine terms
    ridge: float = 1e-3
    #: no warp when it would move a cell by more than this fraction of the size
    max_disp_frac: float = 0.08
    #: the warp is stored as a thin-plate through an n_grid x n_grid grid
    n_grid: int = 9


@dataclass(frozen=True)
class FinishSettings:
    """The finish after the plane: the label refit, the warp and the fit's restart
    spread (:mod:`.finish`)."""

    #: labelled cells (a random subsample) of the final label fit and the warp
    cells: int = 6000
    #: iterations of the final label fit
    fit_iters: int = 30
    warp: LabelWarpSettings = LabelWarpSettings()
    #: cells (every k-th of those) the restart spread is measured on
    spread_cells: int = 2000
    #: the restarts start this far (um) from the fit along +-x and +-y
    spread_delta_um: float = 100.0
    #: label fit iterations of each restart
    spread_iters: int = 20
    #: reverse trim of the restarts (the confidence's spread scale was calibrated on it)
    spread_reverse_trim_q: float = 0.85


@dataclass(frozen=True)
class ConfidenceSettings:
    """The confidence (:func:`.scoring.confidence_score`)."""

    #: restart spread (um) of the in-plane fit at which its factor is 0.5
    spread_half_um: float = 22.0
    #: candidate positions of a scan closer than this (um) to a better one are the same
    #: place; the best farther one is the runner-up the margin is measured against
    candidate_apart_um: float = 300.0
    #: candidates kept in the result
    n_candidates: int = 3
    #: outline-only automatic position: the confidence is multiplied by
    #: ``ramp(margin, 0, outline_margin_full)``, margin = (runner-up cost - best cost) /
    #: best cost of the outline fits of the scan ...
    outline_margin_full: float = 0.5
    #: ... and never exceeds this: the outline alone cannot vouch for the position
    outline_position_max: float = 0.6
    #: label-guided automatic position: multiplied by ``ramp(margin, 0,
    #: label_margin_full)``, margin = best - runner-up label agreement of the scan
    #: (0: off)
    label_margin_full: float = 0.0


@dataclass(frozen=True)
class MidlineSettings:
    """The automatic midline (:func:`.midline_estimate.estimate_midline`)."""

    #: weight of a reflected cell whose nearest cell has another label
    label_mismatch: float = 0.25
    #: the confidence margin compares the best axis with the best one at least this
    #: far off (deg)
    distinct_deg: float = 20.0
    #: cells used by the coarse / fine symmetry search
    coarse_cells: int = 700
    fine_cells: int = 2500
    #: the midline points sit at these fractions of the cells' extent along the line
    ends: tuple = (0.1, 0.9)
    #: spacing of the atlas voxels where each label lies is read (um)
    geometry_step_um: float = 100.0
    #: hemisections with labels: other straight edges scoring at least this fraction of
    #: the best are kept as alternatives (``register_section`` registers with each and
    #: keeps the best plane score; 1: exact ties only) ...
    alternative_ratio: float = 0.6
    #: ... at most this many; one replaces the estimate when its plane score (minus mean
    #: um distances) is better by more than ``alternative_gain_um``
    alternatives: int = 1
    alternative_gain_um: float = 0.5
    #: full coronal sections with labels: the best symmetry axis at least
    #: ``distinct_deg`` from the winner is an alternative when it scores at least this
    #: fraction of the winner's (1: exact ties only; ``alternatives=0``: none at all)
    symmetry_alternative_ratio: float = 0.88

    def __post_init__(self):
        ratios = (self.alternative_ratio, self.symmetry_alternative_ratio)
        if not all(0.0 < r <= 1.0 for r in ratios) or self.alternatives < 0:
            raise BrainAtlasInputError(
                "MidlineSettings: alternative_ratio and symmetry_alternative_ratio must be "
                "in (0, 1], alternatives >= 0"
            )


#: option names of ``register_section`` that set a nested field
OPTION_FIELDS = {
    "max_iter": ("outline", "icp", "max_iter"),
    "tol": ("outline", "icp", "tol"),
    "sweep": ("outline", "sweep"),
}


@dataclass(frozen=True)
class RegistrationSettings:
    """The options and the tuning of :func:`~.pipeline.register_section`.

    The first fields are its keyword options (what to do); ``max_iter``, ``tol`` and
    ``sweep`` are options too and set ``outline.icp.max_iter``, ``outline.icp.tol`` and
    ``outline.sweep`` (see :func:`settings_with_options`). The nested groups tune the
    stages (how): ``outline`` the outline fit, ``labels`` the label fits and the plane
    score, ``starts`` the global label starts, ``propose`` the plane proposals, ``search``
    the joint plane search, ``quick`` the quick one, ``finish`` the label refit, warp and
    restart spread, ``confidence`` the confidence.
    """

    #: cutting angles (a_x, a_y) deg of the template slice (the search's start)
    angles_deg: tuple = (0.0, 0.0)
    #: force the mirror hypothesis (None: decided by the fit)
    mirrored: bool | None = None
    #: search the position (+-``search_um``) and, with region labels, the cutting angles
    #: (+-``max_angle_deg``) around the given plane
    refine_position: bool = False
    #: with ``refine_position`` and region labels: "joint" (plane and in-plane fit
    #: searched together) or "quick" (label proposals alternating with label fits)
    plane_search: str = "joint"
    #: half-width of the position search (um)
    search_um: float = 300.0
    #: largest cutting angle searched (deg)
    max_angle_deg: float = 5.0
    #: add a thin-plate refinement (outline only) after the affine
    nonlinear: bool = False
    #: label refit + smooth polynomial warp after the plane (None: whenever the
    #: label-guided plane search ran)
    label_warp: bool | None = None
    #: finish with an image alignment where the outlines agree all round
    area_refine: bool = False
    #: weight of each user landmark pair
    landmark_weight: float = 5.0
    #: obs column with region labels (None: none); "unassigned" labels are ignored
    region_key: str | None = "region"
    #: weight each cell's label by its certainty, ``1 - obs[region_key +
    #: '_uncertainty']``, when that column is there (transferred labels)
    label_weights: bool = True
    #: obsm key of the (n, 2) cell coordinates, um
    spatial_key: str = "spatial"
    outline: OutlineFitSettings = OutlineFitSettings()
    labels: LabelFitSettings = LabelFitSettings(reverse_weight=0.5, score_outline_weight=0.5)
    starts: LabelStartSettings = LabelStartSettings()
    propose: ProposalSettings = ProposalSettings(max_cells=1500, coarse_factor=2)
    search: PlaneSearchSettings = PlaneSearchSettings()
    quick: QuickSearchSettings = QuickSearchSettings()
    finish: FinishSettings = FinishSettings()
    confidence: ConfidenceSettings = ConfidenceSettings()
    midline: MidlineSettings = MidlineSettings()

    def __post_init__(self):
        if self.plane_search not in ("joint", "quick"):
            raise BrainAtlasInputError(
                f"plane_search must be 'joint' or 'quick', not {self.plane_search!r}"
            )
        try:
            angles = tuple(float(a) for a in self.angles_deg)
        except (TypeError, ValueError):
            angles = ()
        if len(angles) != 2:
            raise BrainAtlasInputError("angles_deg must be two angles (a_x, a_y) in degrees")
        object.__setattr__(self, "angles_deg", angles)

    # the label fit of each stage: ``labels`` with the stage's own iterations etc.
    def starts_labels(self) -> LabelFitSettings:
        """The global label starts' fits and the plane score that ranks them."""
        st = self.starts
        q = self.labels.score_trim_q if st.score_trim_q is None else st.score_trim_q
        return replace(
            self.labels,
            reverse_weight=st.reverse_weight,
            score_outline_weight=st.score_outline_weight,
            score_trim_q=q,
        )

    def search_labels(self, coarse: bool = False) -> LabelFitSettings:
        """Each candidate plane's fit in the joint search (``coarse``: on the coarse
        slices, with twice the tolerance) and its plane score."""
        tol = self.search.fit_tol_um * (2 if coarse else 1)
        return replace(self.labels, n_iter=self.search.fit_iters, tol_um=tol)

    def quick_labels(self) -> LabelFitSettings:
        """The quick search's fits and plane score."""
        return replace(self.labels, n_iter=self.quick.fit_iters, accelerate=self.quick.accelerate)

    def final_labels(self) -> LabelFitSettings:
        """The final label refit after the plane search."""
        return replace(self.labels, n_iter=self.finish.fit_iters)

    def spread_labels(self) -> LabelFitSettings:
        """The restarts of the fit's spread (plain steps, their own reverse trim)."""
        return replace(
            self.labels,
            n_iter=self.finish.spread_iters,
            accelerate=False,
            reverse_trim_q=self.finish.spread_reverse_trim_q,
        )


def option_names() -> list[str]:
    """The keyword options :func:`settings_with_options` takes."""
    top = [f.name for f in fields(RegistrationSettings) if not is_dataclass(f.default)]
    return sorted(top + list(OPTION_FIELDS))


def settings_with_options(settings: RegistrationSettings | None, **options) -> RegistrationSettings:
    """``settings`` (default :class:`RegistrationSettings`) with the keyword options set
    (:func:`dataclasses.replace`). An unknown option raises :class:`BrainAtlasInputError`
    naming it."""
    s = RegistrationSettings() if settings is None else settings
    if not isinstance(s, RegistrationSettings):
        raise BrainAtlasInputError("settings must be a RegistrationSettings")
    known = set(option_names())
    unknown = sorted(set(options) - known)
    if unknown:
        raise BrainAtlasInputError(
            f"unknown registration option {unknown[0]!r} (options: {', '.join(sorted(known))})"
        )
    top = {k: v for k, v in options.items() if k not in OPTION_FIELDS}
    if top:
        s = replace(s, **top)
    for k, path in OPTION_FIELDS.items():
        if k in options:
            s = _replace_path(s, path, options[k])
    return s


def replace_field(settings, name: str, value):
    """``settings`` with the (dotted, nested) field ``name`` set to ``value``, e.g.
    ``replace_field(s, "search.coarse_factor", 2)``; an unknown name raises
    :class:`BrainAtlasInputError`."""
    path = tuple(name.split("."))
    obj = settings
    for part in path:
        if not is_dataclass(obj) or part not in {f.name for f in fields(obj)}:
            raise BrainAtlasInputError(f"unknown registration setting {name!r}")
        obj = getattr(obj, part)
    return _replace_path(settings, path, value)


def _replace_path(obj, path: tuple, value):
    """``obj`` with the nested field ``path`` set to ``value``."""
    if len(path) == 1:
        return replace(obj, **{path[0]: value})
    return replace(obj, **{path[0]: _replace_path(getattr(obj, path[0]), path[1:], value)})
