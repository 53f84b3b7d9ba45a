"""The section to register: its checked input and the context every stage shares.

:func:`prepare_section` (the first stage of :func:`~.pipeline.register_section`) checks
the input and returns a :class:`Section`: the atlas, the plane and hemisphere, the
cells, their outline, the clicked midline, the landmarks, the cells' major divisions,
the position bounds, the settings, the progress and cancel callables and the notes the
stages add. Its methods are what several stages need: the template at a plane, the
label agreement of an affine, the outline fit at a plane.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field

import numpy as np

from .._errors import BrainAtlasInputError
from .affine import apply_affine
from .anchors import validate_midline
from .boundary import MIN_CELLS, section_outline
from .metrics import division_index, label_division_index
from .outline_fit import SectionShape, fit_to_template
from .settings import RegistrationSettings
from .template import Template, template_for

__all__ = [
    "Section",
    "cell_divisions",
    "load_atlas",
    "prepare_section",
    "progress_protocol",
    "section_xy",
]


@dataclass
class Section:
    """One section being registered (the context of the stages)."""

    atlas: object
    plane: str
    hemisphere: str
    xy: np.ndarray  # (n, 2) cell positions, section um
    outline: object  # boundary.Outline of the cells
    midline: np.ndarray | None  # (2, 2) section um, dorsal then ventral
    landmarks: tuple | None  # (src (k, 2) section um, dst (k, 2) atlas um, weights (k,))
    cell_div: np.ndarray | None  # (n,) major division of each cell's label (-1 unknown)
    bounds: tuple  # (lo, hi) um: the atlas's planes with tissue along the axis
    name: str
    settings: RegistrationSettings
    progress: object = None  # progress(done, total, info) or None
    cancel: object = None  # cancel() -> bool or None
    notes: list = field(default_factory=list)

    def __post_init__(self):
        n = len(self.xy)
        k = self.settings.outline.rank_cells
        self._rank = (
            np.arange(n) if n <= k else np.random.default_rng(0).choice(n, k, replace=False)
        )
        self.shape = SectionShape(self.xy, self.outline, self.midline, self.landmarks)

    @property
    def labelled(self) -> bool:
        return self.cell_div is not None

    def template(self, position_um, angles, *, crop: bool = False, factor: int = 1) -> Template:
        """The template slice at a plane (see :func:`.template.template_for`)."""
        return template_for(
            self.atlas,
            self.plane,
            position_um,
            self.hemisphere,
            angles,
            self.outline,
            factor=factor,
            crop=crop,
        )

    def agreement(self, tmpl: Template, A) -> float | None:
        """Fraction of the (subsampled) cells whose label matches the division under
        them in ``tmpl`` when mapped by ``A``; None without labels."""
        if self.cell_div is None:
            return None
        sub = self._rank
        ids = tmpl.slice.labels_at(apply_affine(A, self.xy[sub]))
        tdiv, _ = division_index(self.atlas, ids)
        return float(np.mean(tdiv == self.cell_div[sub]))

    def label_sample(self, n_max: int, seed: int) -> np.ndarray:
        """Sorted indices of at most ``n_max`` labelled cells (a seeded random subsample)."""
        ok = np.flatnonzero(self.cell_div >= 0)
        if len(ok) > n_max:
            ok = np.sort(np.random.default_rng(seed).choice(ok, n_max, replace=False))
        return ok

    def fit_outline(
        self, position_um, angles, *, sweep=None, progress=None, reuse=None, tmpl=None
    ) -> tuple:
        """The outline fit at a plane (:func:`.outline_fit.fit_to_template`; with labels
        the label agreement ranks the near-best fits). Returns (template, best fit or
        None, all fits)."""
        if tmpl is None:
            tmpl = self.template(position_um, angles)
        rank = (lambda A: self.agreement(tmpl, A)) if self.cell_div is not None else None
        best, fits = fit_to_template(
            self.shape,
            tmpl,
            self.settings.outline,
            sweep=sweep,
            mirrored=self.settings.mirrored,
            rank=rank,
            reuse=reuse,
            progress=progress,
            cancel=self.cancel,
        )
        return tmpl, best, fits


def prepare_section(
    adata,
    atlas,
    plane: str,
    position_um,
    hemisphere: str,
    midline,
    landmarks,
    settings: RegistrationSettings,
    *,
    name: str | None = None,
    progress=None,
    cancel=None,
) -> tuple[Section, float | None]:
    """Check the input and build the :class:`Section`; returns it and the given
    position (um, inside the atlas) or None for "auto" (scan the whole axis)."""
    atlas = load_atlas(atlas)
    if plane not in ("coronal", "sagittal"):
        raise BrainAtlasInputError(f"plane must be 'coronal' or 'sagittal', not {plane!r}")
    if hemisphere not in ("both", "left", "right"):
        raise BrainAtlasInputError(
            f"hemisphere must be 'both', 'left' or 'right', not {hemisphere!r}"
        )
    if plane == "sagittal" and hemisphere != "both":
        hemisphere = "both"  # a sagittal slice lies in one hemisphere already
    xy = section_xy(adata, settings.spatial_key)
    mid = None
    if midline is not None:
        mid = validate_midline(midline, xy)
    elif hemisphere != "both":
        raise BrainAtlasInputError("a hemisection needs its cut edge as the midline (two points)")
    given = _given_position(atlas, plane, position_um)
    # the searches (plane, label starts, positions) stay between the atlas's first and
    # last planes with tissue
    lo, hi = atlas.position_range_um(plane)
    t_lo, t_hi = atlas.tissue_range_um(plane)
    sec = Section(
        atlas=atlas,
        plane=plane,
        hemisphere=hemisphere,
        xy=xy,
        landmarks=parse_landmarks(landmarks, settings.landmark_weight),
        outline=section_outline(xy),
        midline=mid,
        cell_div=cell_divisions(adata, atlas, settings.region_key),
        bounds=(max(lo, t_lo), min(hi, t_hi)),
        name=section_name(adata, name),
        settings=settings,
        progress=progress_protocol(progress),
        cancel=cancel,
    )
    return sec, given


def _given_position(atlas, plane: str, position_um) -> float | None:
    """The given position as um inside the atlas, or None for "auto"."""
    if position_um is None or (isinstance(position_um, str) and position_um.lower() == "auto"):
        return None
    lo, hi = atlas.position_range_um(plane)
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
    return position_um


# ---------------------------------------------------------------------- input checks
def load_atlas(atlas):
    """An :class:`~napari_brainatlas.atlas.Atlas`, loaded from a spec if need be."""
    if isinstance(atlas, (str,)) or hasattr(atlas, "__fspath__"):
        from ..atlas import Atlas

        return Atlas.load(atlas)
    if not hasattr(atlas, "annotation"):
        raise BrainAtlasInputError(
            "atlas must be an Atlas, 'demo', a BrainGlobe name or an .nrrd path"
        )
    return atlas


def section_xy(adata, spatial_key: str) -> np.ndarray:
    """The section's (n, 2) cell coordinates (um), checked."""
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


def parse_landmarks(landmarks, weight: float):
    """User landmark pairs as (src (k, 2), dst (k, 2), weights (k,)), or None."""
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


def cell_divisions(adata, atlas, region_key) -> np.ndarray | None:
    """Major-division index of each cell's region label (-1 unknown); None when the
    labels are missing or fewer than half of them name a division."""
    if region_key is None or region_key not in adata.obs:
        return None
    import pandas as pd

    cat = pd.Categorical(adata.obs[region_key])
    div_cat = label_division_index(atlas, np.asarray(cat.categories).astype(str))
    codes = np.asarray(cat.codes)
    div = np.where(codes >= 0, div_cat[np.clip(codes, 0, None)] if len(div_cat) else -1, -1)
    return div if np.mean(div >= 0) >= 0.5 else None


def section_name(adata, name: str | None) -> str:
    """The record's section name: ``name``, ``uns['section']``, the one value of
    ``obs['section']``, else "section"."""
    return (
        name
        or str(adata.uns.get("section", ""))
        or (
            str(adata.obs["section"].iloc[0])
            if "section" in adata.obs and adata.obs["section"].nunique() == 1
            else "section"
        )
    )


# ---------------------------------------------------------------------- progress
def progress_protocol(progress):
    """``progress`` as a ``progress(done, total, info)`` callable
    (:mod:`napari_brainatlas.jobs`), or None.

    A callable that takes two positional arguments only is the earlier
    ``progress(i, cost_um)``: it is wrapped (and called after each ICP iteration, as
    before) and a DeprecationWarning says so; kept for one release."""
    if progress is None or not _takes_two_only(progress):
        return progress
    warnings.warn(
        "progress(i, cost) callbacks are deprecated: register_section calls "
        "progress(done, total, info) (napari_brainatlas.jobs); info['cost_um'] holds the cost",
        DeprecationWarning,
        stacklevel=4,  # the caller of register_section
    )

    def legacy(done, total, info):
        if info.get("stage") == "icp":
            progress(done, info["cost_um"])

    return legacy


def _takes_two_only(fn) -> bool:
    """True when ``fn`` accepts exactly two positional arguments (not three)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return False
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(pos) == 2
