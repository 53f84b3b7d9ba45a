"""Register new sections with no clicks: CCF labels transferred from a registered
reference drive the placement (issue 22).

:func:`register_from_reference` is the one call the ``register --from-reference``
command line and the Registration dock's "From reference" mode make:

1. the query sections are mapped onto a trained FuseMap (a model folder, ``embed``'s
   ``<out>/model``, or a model object) whose reference sections are registered
   (``obs['ccf_id']`` / ``obs['ccf_acronym']``; given as ``reference`` or the
   ``<section>.h5ad`` files beside the model folder)
   (:func:`.transfer.map_queries`);
2. CCF labels are transferred from the reference cells through the tissue embedding
   (:func:`napari_brainatlas.annotate.ccf_labels.transfer_ccf_labels`) at the major
   divisions and, with ``label_depth``, a finer level;
3. every section is registered with those labels (:func:`.register.register_one`
   semantics): the major-division labels weigh each cell by its certainty and
   "unassigned" cells are ignored; the midline is estimated (``midline="auto"``) and
   the position scanned along the whole axis, then the plane (position and cutting
   angles) searched with the labels, unless the caller gives them (per section in
   ``constraints``: user clicks are kept as constraints).

Keys written into each section (beside the CCF keys of
:func:`~napari_brainatlas.register.apply_registration`: ``obsm['ccf_coords']``,
``obs['ccf_id']``, ``obs['ccf_acronym']``, ``uns['ccf_registration'][name]`` whose
``candidates`` list the scan's best positions):

* ``obs['ccf_division_transfer']`` (categorical, "unassigned" where uncertain) and
  ``obs['ccf_division_transfer_uncertainty']`` (float32 in [0, 1], ``1 - max p``);
* with ``label_depth`` (e.g. "fine", "layer", 6): ``obs['ccf_<depth>_transfer']`` and
  ``obs['ccf_<depth>_transfer_uncertainty']`` (``<depth>`` as
  :func:`~napari_brainatlas.register.ccf_levels.level_name` writes it: ``fine``,
  ``depth6``...);
* ``uns['ccf_label_transfer'][level]`` (what the transfer did), ``obsm['X_fusemap_cell']``
  and ``obsm['X_fusemap_tissue']`` (the query mapping).

A section the engine refuses is kept in :attr:`FromReference.failed` with the reason;
the others go on. Plain Python: no Qt, no printing; ``progress(done, total, info)``
after each mapping epoch (``info['stage'] == 'map query'``), the transfer
(``'transfer'``) and each section (``'register'``, ``info['section']``); ``cancel()``
is polled throughout. Inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import BrainAtlasInputError
from ..jobs import ProgressFn, check_cancel, report
from .register import LOW_CONFIDENCE, Registered, _register_section, load_atlas
from .sections import as_sections, section_names

__all__ = [
    "DIVISION_KEY",
    "FromReference",
    "SUMMARY_COLUMNS",
    "register_from_reference",
    "write_from_reference",
]

#: the transferred major-division labels the registration reads
DIVISION_KEY = "ccf_division_transfer"
#: columns of the summary table (:meth:`FromReference.table`, ``summary.csv``)
SUMMARY_COLUMNS = (
    "section",
    "confidence",
    "doubtful",
    "plane",
    "position_um",
    "angles_deg",
    "candidates_um",
    "labels_assigned",
    "note",
)


@dataclass
class FromReference:
    """The sections registered from a reference.

    ``registered``: one :class:`~.register.Registered` per section that was placed, in
    input order; ``failed``: ``{section name: reason}`` for the others; ``label_keys``:
    the obs columns of the transferred labels (division first); ``warnings``: sentences
    for the user (few genes shared with the model, ...)."""

    registered: list[Registered]
    failed: dict[str, str] = field(default_factory=dict)
    label_keys: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def by_confidence(self) -> list[Registered]:
        """The registered sections, least confident (the ones to review) first."""
        return sorted(self.registered, key=lambda r: float(r.result.confidence))

    def doubtful(self) -> list[str]:
        """Names of the sections to review: failed, or confidence under
        :data:`~.register.LOW_CONFIDENCE`."""
        low = [r.name for r in self.by_confidence() if r.low_confidence]
        return list(self.failed) + low

    def table(self) -> list[dict]:
        """One row per section (:data:`SUMMARY_COLUMNS`), failed ones and then the
        least confident first."""
        rows = [
            {
                "section": name,
                "confidence": 0.0,
                "doubtful": True,
                "plane": "",
                "position_um": float("nan"),
                "angles_deg": "",
                "candidates_um": "",
                "labels_assigned": float("nan"),
                "note": reason,
            }
            for name, reason in self.failed.items()
        ]
        for r in self.by_confidence():
            res = r.result
            lab = r.adata.obs.get(DIVISION_KEY)
            assigned = float((lab.astype(str) != "unassigned").mean()) if lab is not None else 0.0
            rows.append(
                {
                    "section": r.name,
                    "confidence": float(res.confidence),
                    "doubtful": bool(r.low_confidence),
                    "plane": res.plane,
                    "position_um": float(res.position_um),
                    "angles_deg": f"{res.angles_deg[0]:.1f}/{res.angles_deg[1]:.1f}",
                    "candidates_um": " ".join(
                        f"{c['position_um']:.0f}" for c in (res.candidates or [])
                    ),
                    "labels_assigned": assigned,
                    "note": r.warning() or "",
                }
            )
        return rows

    def csv_text(self) -> str:
        """:meth:`table` as csv text."""
        import pandas as pd

        return pd.DataFrame(self.table(), columns=list(SUMMARY_COLUMNS)).to_csv(
            index=False, float_format="%.4g"
        )

    def summary(self) -> list[str]:
        """One line per section (doubtful ones first) and a closing count."""
        out = [f"section {n}: not registered: {why}" for n, why in self.failed.items()]
        for r in self.by_confidence():
            res = r.result
            cands = ", ".join(f"{c['position_um']:.0f}" for c in (res.candidates or []))
            out.append(
                f"section {r.name}: {res.plane} {res.position_um:.0f} um, angles "
                f"{res.angles_deg[0]:.1f}/{res.angles_deg[1]:.1f} deg, confidence "
                f"{res.confidence:.2f}{'  (check)' if r.low_confidence else ''}"
                + (f"; candidates {cands} um" if cands else "")
            )
        n_doubt = len(self.doubtful())
        out.append(
            f"{len(self.registered)} of {len(self.registered) + len(self.failed)} sections "
            f"registered; {n_doubt} to check (confidence under {LOW_CONFIDENCE} or failed)"
        )
        return out


def _levels(label_depth) -> list:
    from ..register.ccf_levels import level_name, parse_level

    levels = ["division"]
    if label_depth is not None and level_name(parse_level(label_depth)) != "division":
        levels.append(parse_level(label_depth))
    return levels


def _section_options(name: str, base: dict, constraints: dict | None) -> dict:
    """The engine options of one section: ``base``, then the user's constraints for it
    (midline clicks, a position, the hemisphere, landmarks...)."""
    opts = dict(base)
    opts.update((constraints or {}).get(name, {}))
    if opts.get("midline") is None:
        opts["midline"] = "auto"
    if opts.get("position_um") is None:
        opts["position_um"] = "auto"
    return opts


def register_from_reference(
    queries,
    atlas,
    model,
    *,
    reference=None,
    label_depth=None,
    constraints: dict | None = None,
    map_epochs: int = 15,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressFn | None = None,
    cancel=None,
    **options,
) -> FromReference:
    """Register ``queries`` (AnnData or paths) from a registered reference (see the
    module docstring).

    Parameters
    ----------
    atlas : the atlas the reference was registered to (an Atlas or a spec).
    model : a FuseMap model folder (or object) trained on the reference sections.
    reference : the registered, embedded reference sections (AnnData or paths); default
        the ``<section>.h5ad`` files beside the model folder.
    label_depth : a finer level transferred too ("fine", "layer", "field", "nucleus",
        "subdivision" or an ontology depth); None / "division": divisions only.
    constraints : ``{section name: {option: value}}``, what the user gave for a section
        (``midline``, ``position_um``, ``hemisphere``, ``landmarks``, ``mirrored``...):
        kept as constraints; the rest is estimated.
    map_epochs : query-mapping epochs.
    **options : :func:`~napari_brainatlas.register.register_section` options for every
        section (``plane``, ``hemisphere``, ``position_um``, ``midline``,
        ``plane_search``...); ``refine_position`` defaults to True.
    """
    from ..annotate.ccf_labels import transfer_ccf_labels
    from .transfer import map_queries

    atlas = load_atlas(atlas)
    levels = _levels(label_depth)
    queries = as_sections(queries)
    names = section_names(queries)
    if constraints:
        unknown = sorted(set(constraints) - set(names))
        if unknown:
            raise BrainAtlasInputError(
                f"constraints name unknown sections: {', '.join(unknown)} "
                f"(there are {', '.join(names)})"
            )
    if "region_key" in options:
        raise BrainAtlasInputError("the region labels are the transferred ones: no region_key")
    base = {"refine_position": True, **options}
    n = len(queries)
    total = int(map_epochs) + 1 + n

    def mapping_progress(done, tot, info):
        report(progress, min(int(done), int(map_epochs)), total, **info)

    mapped = map_queries(
        queries,
        model=model,
        reference=reference,
        epochs=int(map_epochs),
        seed=seed,
        device=device,
        what="register from reference",
        progress=mapping_progress if progress is not None else None,
        cancel=cancel,
    )
    check_cancel(cancel)
    labelled = transfer_ccf_labels(
        mapped.reference,
        mapped.sections,
        atlas,
        levels=levels,
        seed=seed,
        model=mapped.mapping,  # the panel views (transfer_ccf_labels' default)
        cancel=cancel,
    )
    from ..annotate.ccf_labels import ccf_transfer_key

    keys = [ccf_transfer_key(lv) for lv in levels]
    report(progress, int(map_epochs) + 1, total, stage="transfer", labels=", ".join(keys))
    out = FromReference([], {}, keys, list(mapped.warnings))
    for i, (a, name) in enumerate(zip(labelled, names)):
        check_cancel(cancel)
        opts = _section_options(name, base, constraints)
        try:
            reg = _register_section(a, atlas, name, DIVISION_KEY, None, cancel, opts)
        except BrainAtlasInputError as exc:
            out.failed[name] = " ".join(str(exc).split())
        else:
            out.registered.append(reg)
        report(progress, int(map_epochs) + 2 + i, total, stage="register", section=name)
    return out


def write_from_reference(
    result: FromReference, out, *, inputs: Sequence = (), summary: bool = True
) -> list[Path]:
    """Write the registered sections: ``out`` a ``.h5ad`` file (one section) or a
    folder (``<section>.h5ad`` each and, with ``summary``, ``summary.csv``: one row per
    section, doubtful first; :data:`SUMMARY_COLUMNS`). Atomic; refuses input files."""
    from ..io import atomic_write_text
    from .outputs import check_output_file, check_output_folder, write_sections

    target = Path(out)
    regs = result.registered
    if target.suffix.lower() == ".h5ad":
        if len(regs) + len(result.failed) != 1:
            raise BrainAtlasInputError("several sections need an output folder, not one .h5ad file")
        if not regs:
            raise BrainAtlasInputError(
                f"section {next(iter(result.failed))} could not be registered: "
                f"{next(iter(result.failed.values()))}"
            )
        from ..io import write_h5ad

        return [write_h5ad(regs[0].adata, check_output_file(target, ".h5ad", inputs))]
    folder = check_output_folder(target, inputs, [r.name for r in regs])
    paths = write_sections([r.adata for r in regs], [r.name for r in regs], folder, inputs)
    if summary:
        paths.append(atomic_write_text(result.csv_text(), folder / "summary.csv"))
    return paths
