"""Registration workflows: one section, many sections, an ordered series.

* :func:`load_atlas` - ``"demo"``, a BrainGlobe name or an Allen ``.nrrd`` (+ ontology).
* :func:`register_one` - one section -> :class:`Registered`: ``adata`` is a new AnnData
  with ``obsm['ccf_coords']`` (n, 3) CCF (AP, DV, ML) micrometres, ``obs['ccf_id']``,
  ``obs['ccf_acronym']`` and ``uns['ccf_registration'][name]`` (the record); ``result``
  the :class:`~napari_brainatlas.register.RegistrationResult` (positions in um, angles in
  degrees, costs in um); :meth:`Registered.summary` the lines a caller prints.
* :func:`register_many` - several sections (the same or per-section options), progress
  per section.
* :func:`place_series` - AP (or ML) positions (um) of an ordered labelled series
  between two known end positions -> :class:`SeriesPlacement`.
* :func:`interpolate_series` - full planes (position and cutting angles) of the
  sections of a series between two or more placed ones -> :class:`SeriesPlan`.
* :func:`write_registered`, :func:`write_series` - the outputs (.h5ad, record .json,
  positions .csv), atomically; the input section is never modified.

Options are :func:`~napari_brainatlas.register.register_section`'s keyword options
(``plane``, ``position_um`` (a number or ``"auto"``), ``hemisphere``, ``midline``,
``refine_position``, ``plane_search``, ``nonlinear``, ``mirrored``, ``landmarks``, ...),
passed through unchanged; ``progress(done, total, info)`` gets one call per ICP
iteration (``info['cost_um']``), ``cancel()`` is polled by the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..jobs import ProgressFn, check_cancel, report
from ._progress import relay
from .outputs import check_output_file
from .sections import as_sections, section_name, section_names, select_section

__all__ = [
    "METRIC_KEYS",
    "Registered",
    "SeriesPlacement",
    "SeriesPlan",
    "interpolate_series",
    "load_atlas",
    "place_series",
    "register_many",
    "register_one",
    "write_registered",
    "write_series",
]

#: the registration metrics a summary shows, in this order
METRIC_KEYS = (
    "boundary_median_um",
    "boundary_p95_um",
    "dice",
    "boundary_inlier_fraction",
    "label_agreement",
    "dice_divisions_mean",
    "anisotropy",
    "midline_angle_deg",
)
#: below this confidence a summary carries a warning
LOW_CONFIDENCE = 0.5


def load_atlas(atlas, ontology=None):
    """An :class:`~napari_brainatlas.atlas.Atlas` from a spec (an Atlas passes through).

    ``atlas``: ``"demo"``, a BrainGlobe atlas name or an annotation ``.nrrd``;
    ``ontology``: the structure tree ``.csv`` / graph ``.json`` going with an ``.nrrd``.
    """
    from ..atlas import Atlas

    if isinstance(atlas, Atlas):
        return atlas
    if ontology is not None and str(atlas) == "demo":
        raise BrainAtlasInputError("an ontology goes with an .nrrd atlas, not with 'demo'")
    return Atlas.load(atlas, ontology=ontology) if ontology else Atlas.load(atlas)


@dataclass
class Registered:
    """One registered section: the new AnnData, the engine's result, the section name."""

    adata: AnnData
    result: object  # RegistrationResult
    name: str

    @property
    def low_confidence(self) -> bool:
        return float(self.result.confidence) < LOW_CONFIDENCE

    @property
    def scale(self) -> float:
        """The fit's scale (atlas um per section um; about 1 for a section in um)."""
        from .register_checks import fitted_scale

        return fitted_scale(self.result)

    def summary(self) -> list[str]:
        """Three lines: the plane found, the fit (iterations, cost, scale, confidence),
        metrics."""
        r, m = self.result, self.result.metrics
        cost = r.cost_history[-1] if r.cost_history else float("nan")
        return [
            f"section {self.name}: {r.plane} {r.position_um:.0f} um, hemisphere "
            f"{r.hemisphere}, angles {r.angles_deg[0]:.1f}/{r.angles_deg[1]:.1f} deg, "
            f"mirrored {r.mirrored}",
            f"converged {r.converged} after {r.iterations} iterations; final cost "
            f"{cost:.2f} um; scale {self.scale:.3f}; confidence {r.confidence:.3f}",
            "metrics: " + ", ".join(f"{k} {m[k]:.3f}" for k in METRIC_KEYS if k in m),
        ]

    def warnings(self) -> list[str]:
        """Sentences to show with the result: a fitted scale far from 1 (wrong units or
        a wrong fit), a low confidence."""
        from .register_checks import scale_warning

        out = []
        meta = self.adata.uns.get("napari_brainatlas", {})
        px = meta.get("pixel_size_um", 1.0) if isinstance(meta, dict) else 1.0
        try:
            px = float(px)
        except (TypeError, ValueError):
            px = 1.0
        w = scale_warning(self.result, pixel_size_um=px if np.isfinite(px) and px > 0 else 1.0)
        if w:
            out.append(w)
        if self.low_confidence:
            out.append("low confidence; check the midline clicks, the hemisphere and the position")
        return out

    def warning(self) -> str | None:
        """The warnings as one line, or None."""
        w = self.warnings()
        return "; ".join(w) if w else None


def _register_section(adata, atlas, name, region_key, progress, cancel, options):
    """The one call of the registration engine (settings go through ``options``); with
    ``options['start_pose']`` the engine fits the posed cells (and, without a midline,
    starts from the midline the pose implies) and the result is composed back."""
    from ..register import apply_registration, register_section
    from .register_pose import StartPose, compose_result, pose_midline, with_pose

    options = dict(options)
    pose = StartPose.coerce(options.pop("start_pose", None))
    fit_on, P = adata, None
    if pose is not None and not pose.identity:
        fit_on, options, P = with_pose(adata, pose, options)
        if options.get("midline") is None:
            options["midline"] = pose_midline(
                fit_on.obsm["spatial"],
                atlas,
                options.get("plane", "coronal"),
                None if options.get("position_um") == "auto" else options.get("position_um"),
                options.get("hemisphere", "both"),
                options.get("angles_deg", (0.0, 0.0)),
                None,
                bool(options.get("mirrored")),
            ).tolist()
    res = register_section(
        fit_on,
        atlas,
        region_key=region_key if region_key and region_key in adata.obs else None,
        section_name=name,
        progress=relay(progress, "cost_um", stage="icp"),
        cancel=cancel,
        **options,
    )
    if P is not None:
        res = compose_result(res, P, pose)
    return Registered(apply_registration(adata, res, atlas), res, name)


def register_one(
    adata,
    atlas,
    *,
    name: str | None = None,
    region_key: str | None = "region",
    progress: ProgressFn | None = None,
    cancel=None,
    **options,
) -> Registered:
    """Register one section (see the module docstring); ``atlas`` an Atlas or a spec.

    ``adata``: an AnnData or a path (``name`` picks the section of a multi-section
    file); ``region_key``: obs column with region labels, used when the section has it;
    ``start_pose``: a :class:`~.register_pose.StartPose` (or ``{"rotation_deg",
    "scale"}``) the section is turned and scaled by before the fit.
    """
    if not isinstance(adata, AnnData):
        adata = select_section(as_sections(adata), name, source=str(adata))
    atlas = load_atlas(atlas)
    return _register_section(
        adata, atlas, name or section_name(adata), region_key, progress, cancel, options
    )


def register_many(
    sections,
    atlas,
    options: dict | Sequence[dict],
    *,
    region_key: str | None = "region",
    progress: ProgressFn | None = None,
    cancel=None,
) -> list[Registered]:
    """Register each section with ``options`` (one dict for all, or one per section).

    ``progress(i, n, {"section": name})`` after each section; ``cancel()`` is polled
    between sections and by the engine.
    """
    atlas = load_atlas(atlas)
    sections = as_sections(sections)
    per = [options] * len(sections) if isinstance(options, dict) else list(options)
    if len(per) != len(sections):
        raise BrainAtlasInputError(
            f"{len(per)} option sets for {len(sections)} sections; give one per section"
        )
    names = section_names(sections)
    out = []
    for i, (a, name, opts) in enumerate(zip(sections, names, per)):
        check_cancel(cancel)
        out.append(_register_section(a, atlas, name, region_key, None, cancel, dict(opts)))
        report(progress, i + 1, len(sections), section=name)
    return out


def write_registered(reg: Registered, out, *, record=None, inputs=()) -> list[Path]:
    """Write the registered section to ``out`` (.h5ad) and, with ``record``, the
    registration record as JSON there. Returns the paths written."""
    from ..io import atomic_write_text, write_h5ad

    paths = [write_h5ad(reg.adata, check_output_file(out, ".h5ad", inputs))]
    if record is not None:
        paths.append(
            atomic_write_text(reg.result.to_json(), check_output_file(record, None, inputs))
        )
    return paths


# ------------------------------------------------------------------ ordered series
@dataclass
class SeriesPlacement:
    """Positions (um along the plane's axis) of an ordered series of sections."""

    names: list[str]
    positions_um: np.ndarray

    def lines(self) -> list[str]:
        return [f"{n}\t{p:.1f} um" for n, p in zip(self.names, self.positions_um)]

    def csv_text(self) -> str:
        rows = "".join(f"{n},{p:.3f}\n" for n, p in zip(self.names, self.positions_um))
        return "section,position_um\n" + rows


def _check_ends(first: float, last: float, atlas, ontology, plane: str) -> None:
    if not (np.isfinite(first) and np.isfinite(last)):
        raise BrainAtlasInputError("the first and last positions must be finite numbers")
    if first == last:
        raise BrainAtlasInputError(
            "the first and last positions must differ (the series spans a distance)"
        )
    if atlas is None:
        return
    lo, hi = load_atlas(atlas, ontology).position_range_um(plane)
    for v in (first, last):
        if not (lo <= v < hi):
            raise BrainAtlasInputError(
                f"{plane} position {v:.0f} um is outside the atlas ({lo:.0f} to {hi:.0f} um)"
            )


def _ordered(sections, names, order):
    if not order:
        return list(sections), list(names)
    want = [w.strip() for w in order.split(",")] if isinstance(order, str) else list(order)
    want = [w for w in want if w]
    missing = [w for w in want if w not in names]
    if missing:
        raise BrainAtlasInputError(
            f"the order names unknown sections: {', '.join(missing)} (there are {', '.join(names)})"
        )
    if len(set(want)) != len(want):
        raise BrainAtlasInputError("the order names a section twice")
    return [sections[names.index(w)] for w in want], want


def place_series(
    sections,
    *,
    first_um: float,
    last_um: float,
    region_key: str = "region",
    order: str | Sequence[str] | None = None,
    atlas=None,
    ontology=None,
    plane: str = "coronal",
) -> SeriesPlacement:
    """Positions of ``sections`` (in ``order``: names, default as given) between
    ``first_um`` and ``last_um`` from the cumulative cosine distance of neighbouring
    region compositions (obs[region_key]); with ``atlas`` the ends are checked against
    its extent along ``plane``'s axis."""
    from ..register import series_positions

    first, last = float(first_um), float(last_um)
    _check_ends(first, last, atlas, ontology, plane)
    sections = as_sections(sections)
    sections, names = _ordered(sections, section_names(sections), order)
    if len(sections) < 2:
        raise BrainAtlasInputError("an ordered series needs at least two sections")
    labels = []
    for a, nm in zip(sections, names):
        if region_key not in a.obs:
            raise BrainAtlasInputError(f"section {nm} has no obs[{region_key!r}] region labels")
        lab = a.obs[region_key].astype(str).to_numpy()
        lab = lab[(lab != "") & (lab != "nan")]
        if len(lab) == 0:
            raise BrainAtlasInputError(f"section {nm} has no region labels in obs[{region_key!r}]")
        labels.append(lab)
    return SeriesPlacement(names, np.asarray(series_positions(labels, first, last), float))


@dataclass
class SeriesPlan:
    """Planes of an ordered series: the placed sections as they are, the rest
    interpolated (``known`` False) by the composition of their region labels."""

    names: list[str]
    positions_um: np.ndarray
    angles_deg: np.ndarray  # (n, 2)
    known: np.ndarray  # (n,) bool
    spacing: str = "composition"  # or "equal" (a section without labels)

    def unplaced(self) -> list[str]:
        return [n for n, k in zip(self.names, self.known) if not k]

    def plane_of(self, name: str) -> tuple[float, tuple[float, float]]:
        i = self.names.index(name)
        return float(self.positions_um[i]), (
            float(self.angles_deg[i, 0]),
            float(self.angles_deg[i, 1]),
        )

    def lines(self) -> list[str]:
        return [
            f"{n}\t{p:.1f} um\t{a[0]:.1f}/{a[1]:.1f} deg\t{'placed' if k else 'interpolated'}"
            for n, p, a, k in zip(self.names, self.positions_um, self.angles_deg, self.known)
        ]


def _composition_steps(labels: list) -> np.ndarray | None:
    """Cosine distance of the region composition of each pair of neighbours, None when
    a section has no labels."""
    import pandas as pd

    if any(lab is None or len(lab) == 0 for lab in labels):
        return None
    cats = sorted({str(v) for lab in labels for v in lab})
    comp = np.array(
        [
            pd.Series(lab).value_counts().reindex(cats, fill_value=0).to_numpy(float)
            for lab in labels
        ]
    )
    unit = comp / np.linalg.norm(comp, axis=1, keepdims=True)
    return np.clip(1.0 - np.sum(unit[1:] * unit[:-1], axis=1), 0.0, None)


def interpolate_series(
    sections,
    known: dict,
    *,
    region_key: str = "region",
    order: str | Sequence[str] | None = None,
    atlas=None,
    plane: str = "coronal",
) -> SeriesPlan:
    """Full planes of an ordered series (``order`` or as given) from two or more placed
    sections: ``known`` maps a section name to ``(position_um, (a_x, a_y))`` (e.g. its
    registration). The others get the position and the cutting angles interpolated
    between their placed neighbours along the cumulative cosine distance of the region
    composition of neighbouring sections (obs[region_key]; equal steps when a section has
    no labels), extrapolated past the ends with the slope of the nearest placed pair and
    kept inside the atlas when one is given."""
    sections = as_sections(sections)
    sections, names = _ordered(sections, section_names(sections), order)
    idx = [i for i, n in enumerate(names) if n in known]
    if len(idx) < 2:
        raise BrainAtlasInputError(
            "series interpolation needs at least two placed (registered) sections"
        )
    labels = []
    for a in sections:
        if region_key in a.obs:
            lab = a.obs[region_key].astype(str).to_numpy()
            labels.append(lab[(lab != "") & (lab != "nan")])
        else:
            labels.append(None)
    steps = _composition_steps(labels)
    spacing = "composition"
    if steps is None or not np.all(np.isfinite(steps)):
        steps, spacing = np.ones(len(sections) - 1), "equal"
    cum = np.concatenate([[0.0], np.cumsum(steps)])
    kc = cum[idx]
    if np.any(np.diff(kc) <= 0):  # placed sections of identical composition: by index
        cum, spacing = np.arange(len(sections), dtype=float), "equal"
        kc = cum[idx]
    pos_k = np.array([float(known[names[i]][0]) for i in idx])
    ang_k = np.array([[float(v) for v in known[names[i]][1]] for i in idx]).reshape(-1, 2)
    pos = np.interp(cum, kc, pos_k)
    for end, (a, b) in ((cum < kc[0], (0, 1)), (cum > kc[-1], (-2, -1))):
        slope = (pos_k[b] - pos_k[a]) / (kc[b] - kc[a])
        ref = 0 if a == 0 else -1
        pos[end] = pos_k[ref] + slope * (cum[end] - kc[ref])
    ang = np.column_stack([np.interp(cum, kc, ang_k[:, j]) for j in range(2)])
    if atlas is not None:
        lo, hi = load_atlas(atlas).tissue_range_um(plane)
        pos = np.clip(pos, lo, hi - 1e-6)
    is_known = np.zeros(len(names), bool)
    is_known[idx] = True
    pos[idx], ang[idx] = pos_k, ang_k
    return SeriesPlan(list(names), pos, ang, is_known, spacing)


def write_series(placement: SeriesPlacement, out) -> Path:
    """Write ``section,position_um`` rows to ``out`` (a .csv), atomically."""
    from ..io import atomic_write_text

    return atomic_write_text(placement.csv_text(), check_output_file(out, None))
