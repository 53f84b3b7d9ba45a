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

    def summary(self) -> list[str]:
        """Three lines: the plane found, the fit (iterations, cost, confidence), metrics."""
        r, m = self.result, self.result.metrics
        cost = r.cost_history[-1] if r.cost_history else float("nan")
        return [
            f"section {self.name}: {r.plane} {r.position_um:.0f} um, hemisphere "
            f"{r.hemisphere}, angles {r.angles_deg[0]:.1f}/{r.angles_deg[1]:.1f} deg, "
            f"mirrored {r.mirrored}",
            f"converged {r.converged} after {r.iterations} iterations; final cost "
            f"{cost:.2f} um; confidence {r.confidence:.3f}",
            "metrics: " + ", ".join(f"{k} {m[k]:.3f}" for k in METRIC_KEYS if k in m),
        ]

    def warning(self) -> str | None:
        """A line to show when the confidence is low, else None."""
        if not self.low_confidence:
            return None
        return "low confidence; check the midline clicks, the hemisphere and the position"


def _register_section(adata, atlas, name, region_key, progress, cancel, options):
    """The one call of the registration engine (settings go through ``options``)."""
    from ..register import apply_registration, register_section

    res = register_section(
        adata,
        atlas,
        region_key=region_key if region_key and region_key in adata.obs else None,
        section_name=name,
        progress=relay(progress, "cost_um", stage="icp"),
        cancel=cancel,
        **options,
    )
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
    file); ``region_key``: obs column with region labels, used when the section has it.
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


def write_series(placement: SeriesPlacement, out) -> Path:
    """Write ``section,position_um`` rows to ``out`` (a .csv), atomically."""
    from ..io import atomic_write_text

    return atomic_write_text(placement.csv_text(), check_output_file(out, None))
