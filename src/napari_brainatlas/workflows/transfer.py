"""Label transfer onto query sections from a FuseMap reference.

* :func:`label_transfer` - query sections (AnnData or paths) + a reference -> :class:`Transferred`:
  one new AnnData per query section holding ``obsm['X_fusemap_cell' /
  'X_fusemap_tissue']`` (the query mapped onto the frozen reference),
  ``obs['<label>_transfer']`` and ``obs['<label>_transfer_uncertainty']`` (``1 - max p``
  in [0, 1]); the :class:`~napari_brainatlas.annotate.QueryMapping`; the model and the
  embedded reference used. The reference is one of

  - a model folder (``embed``'s ``<out>/model``; a path): the labelled, embedded
    reference cells come from ``reference`` or else the ``<section>.h5ad`` files that
    ``embed`` wrote beside the folder (:func:`reference_files`);
  - a trained :class:`~napari_brainatlas.fusemap.FuseMap` object: ``reference`` or the
    model's own sections (embedded again);
  - an untrained FuseMap (built on the labelled reference sections, with the options
    the caller chose), or no model and the ``reference`` sections (a FuseMap with
    default options): it is trained first (``epochs`` per phase), as the Annotate dock
    does.
  Any subset of the reference sections may carry a label (the classifier learns from
  the cells that have it); labels are checked before any training or mapping.
* :func:`map_queries` - the mapping alone (:class:`Mapped`), for imputation without a
  transfer; :func:`transfer_onto` - labels onto queries already mapped.
* :func:`reference_labels` / :func:`model_reference_labels` - the label columns a
  reference offers (for the Annotate dock's list).
* :func:`write_transfer` - the query sections as one .h5ad (several are concatenated with
  ``obs['section']``), atomically.
* :func:`load_reference` - the model and its embedded reference sections (shared with
  :mod:`.impute`).

``progress(done, total, info)``: ``done == 0`` carries the header line in
``info['message']``; then one call per training epoch (``info['stage'] == 'train'``) and
per query-mapping epoch (``'map query'``). Inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..jobs import ProgressFn, check_cancel, report
from ._progress import raise_if_cancelled, relay
from .checks import check_expression, finite_results, restore_missing
from .embed import load_fusemap, resolve_epochs, train_fusemap
from .genes import overlap_warnings
from .outputs import check_output_file
from .sections import as_sections, require_genes, section_names

__all__ = [
    "Mapped",
    "Transferred",
    "check_labels",
    "combine_sections",
    "load_reference",
    "map_onto",
    "map_queries",
    "model_reference_labels",
    "reference_files",
    "reference_labels",
    "label_transfer",
    "transfer_onto",
    "write_transfer",
]


def reference_files(model, model_dir, given=None) -> list[Path]:
    """The reference files: ``given``, else ``<section>.h5ad`` beside the model folder."""
    if given:
        return [Path(p) for p in given]
    files = [Path(model_dir).parent / f"{n}.h5ad" for n in model.section_names]
    if not all(f.is_file() for f in files):
        raise BrainAtlasInputError(
            "the model folder holds no labelled cells: give the embedded reference .h5ad "
            "files (as `napari-brainatlas embed` writes them)"
        )
    return files


def load_reference(model, reference=None, *, device: str = "auto", required: bool = True):
    """(FuseMap, embedded reference sections or None) for a model folder or object.

    ``required=False``: None instead of an error when no reference cells are at hand.
    """
    from ..fusemap import CELL_KEY

    if isinstance(model, (str, Path)):
        folder = Path(model)
        model = load_fusemap(folder, device=device)
        try:
            refs = as_sections(reference_files(model, folder, reference))
        except BrainAtlasInputError:
            if required:
                raise
            return model, None
    elif reference is not None:
        refs = as_sections(reference)
    elif getattr(model, "adatas", None):
        refs = model.write_embeddings(copy=True)
    elif required:
        raise BrainAtlasInputError("give the embedded reference sections for this model")
    else:
        return model, None
    if len(refs) != model.n_sections:
        raise BrainAtlasInputError(
            f"the model has {model.n_sections} sections but {len(refs)} reference "
            "sections were given"
        )
    if not all(CELL_KEY in a.obsm for a in refs):
        raise BrainAtlasInputError(
            "the reference sections hold no FuseMap embedding (obsm['X_fusemap_cell'])"
        )
    return model, restore_missing(refs)


def map_onto(model, queries, refs, *, epochs, seed, progress=None, cancel=None, offset=0):
    """The one call of the query mapping: ``queries`` onto the frozen ``model``."""
    from ..annotate import map_query

    epochs = resolve_epochs(epochs)
    mapping = map_query(
        model,
        queries,
        reference_sections=refs,
        epochs=int(epochs),
        seed=seed,
        progress=relay(progress, "loss", offset=offset, stage="map query"),
        cancel=cancel,
    )
    raise_if_cancelled(mapping)
    return mapping


def combine_sections(sections: Sequence[AnnData]) -> AnnData:
    """One AnnData of several sections (outer join of genes, ``obs['section']`` kept)."""
    import anndata as ad

    sections = list(sections)
    if len(sections) == 1:
        return sections[0]
    for i, a in enumerate(sections):
        if "section" not in a.obs:
            a.obs["section"] = str(i)
    return ad.concat(sections, join="outer", merge="first", uns_merge="first", index_unique="-")


@dataclass
class Transferred:
    """The annotated query sections and what produced them; ``warnings``: sentences for
    the user (a query sharing few genes with the model)."""

    sections: list[AnnData]
    labels: list[str]
    mapping: object  # QueryMapping
    model: object  # FuseMap
    reference: list[AnnData]
    warnings: list[str] = field(default_factory=list)
    #: per section, the cells kept flagged without an embedding (too few counts)
    notes: list[str] = field(default_factory=list)

    def combined(self) -> AnnData:
        return combine_sections(self.sections)

    def summary(self) -> list[str]:
        """Per label: classes predicted, the mean uncertainty and the reference sections
        it was learnt from (where not all of them carry it)."""
        import numpy as np

        out = []
        record = self.sections[0].uns.get("label_transfer", {}) if self.sections else {}
        from .checks import LOW_COUNTS_KEY, UNASSIGNED

        low = np.concatenate(
            [
                a.obs[LOW_COUNTS_KEY].to_numpy(bool)
                if LOW_COUNTS_KEY in a.obs
                else np.zeros(a.n_obs, bool)
                for a in self.sections
            ]
        )
        for lab in self.labels:
            pred = np.concatenate([a.obs[f"{lab}_transfer"].astype(str) for a in self.sections])
            u = np.concatenate([a.obs[f"{lab}_transfer_uncertainty"] for a in self.sections])
            pred, u = pred[~low], u[~low]  # low-count cells are not predictions
            mean = f"{float(u.mean()):.3f}" if len(u) else "-"
            line = f"{lab}: {len(set(pred.tolist()))} classes, mean uncertainty {mean}"
            if (record.get(lab) or {}).get("views") == "panels":
                line += ", read through the panel views"
            if low.any():
                line += f" ({int(low.sum())} low-count cells '{UNASSIGNED}', left out)"
            learnt = (record.get(lab) or {}).get("labelled_sections")
            if learnt and len(learnt) < len(self.reference):
                line += f" (learnt from {', '.join(learnt)})"
            out.append(line)
        return out


def _reference_model(reference, seed, device):
    """A new (untrained) FuseMap on copies of the reference sections."""
    from ..fusemap import FuseMap

    if reference is None:
        raise BrainAtlasInputError("give reference sections or a model")
    return FuseMap([a.copy() for a in as_sections(reference)], seed=seed, device=device)


def check_labels(
    refs: Sequence[AnnData], labels: Sequence[str], hierarchy: dict | None = None
) -> None:
    """Every label must be carried by at least one reference section (any subset may
    carry it: the classifier learns from the cells that have it); a ``hierarchy`` the
    user gives (label -> main-level column) must name transferred labels and main-level
    columns some reference section carries."""
    for lab, main in (hierarchy or {}).items():
        if lab not in labels:
            raise BrainAtlasInputError(
                f"the hierarchy gives a main level for '{lab}', which is not among the "
                f"labels transferred ({', '.join(labels)})"
            )
        if not any(main in r.obs.columns for r in refs):
            raise BrainAtlasInputError(
                f"the hierarchy names obs['{main}'] as the main level of '{lab}', but no "
                "reference section has that column"
            )
    for lab in labels:
        if not any(lab in r.obs.columns for r in refs):
            have = sorted(reference_labels(refs))
            raise BrainAtlasInputError(
                f"no reference section has obs['{lab}'] labels (they have: "
                f"{', '.join(have) or 'no label columns'})"
            )


def reference_labels(refs: Sequence[AnnData]) -> dict[str, list[str]]:
    """``{label column: names of the reference sections carrying it}`` over every
    section (text / categorical obs columns; ``section`` and transfer outputs left out)."""
    from ..layers import label_columns
    from .sections import section_names

    out: dict[str, list[str]] = {}
    for a, name in zip(refs, section_names(refs)):
        for c in label_columns(a):
            if not c.endswith(("_transfer", "_transfer_uncertainty")):
                out.setdefault(c, []).append(name)
    return out


def model_reference_labels(model_dir) -> tuple[dict[str, list[str]], list[str]]:
    """The label columns (``{label: sections}``) and genes (their spelling) of the
    reference files beside a model folder (``embed``'s ``<section>.h5ad``), read without
    their expression; ``({}, [])`` when the files are not there."""
    import json

    import anndata as ad

    folder = Path(model_dir)
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BrainAtlasInputError(f"{folder} is not a model folder (no config.json)") from exc
    names = [str(n) for n in cfg.get("section_names", [])]
    files = [folder.parent / f"{n}.h5ad" for n in names]
    if not names or not all(f.is_file() for f in files):
        return {}, []
    labels: dict[str, list[str]] = {}
    genes: dict[str, None] = {}
    for f, name in zip(files, names):
        a = ad.read_h5ad(f, backed="r")
        try:
            obs = AnnData(obs=a.obs.copy())
            genes.update(dict.fromkeys(map(str, a.var_names)))
        finally:
            a.file.close()
        for c in reference_labels([obs]):
            labels.setdefault(c, []).append(name)
    return labels, list(genes)


def _untrained(model) -> bool:
    return not isinstance(model, (str, Path)) and not getattr(model, "is_trained", True)


@dataclass
class Mapped:
    """Query sections mapped onto a frozen FuseMap: embedded copies of the queries, the
    :class:`~napari_brainatlas.annotate.QueryMapping`, the model, the embedded
    reference, and ``warnings`` for the user (a query sharing few genes with the model)."""

    sections: list[AnnData]
    mapping: object  # QueryMapping
    model: object  # FuseMap
    reference: list[AnnData]
    warnings: list[str] = field(default_factory=list)


def map_queries(
    query,
    *,
    model=None,
    reference=None,
    labels: Sequence[str] = (),
    hierarchy: dict | None = None,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "auto",
    what: str = "transfer",
    progress: ProgressFn | None = None,
    cancel=None,
) -> Mapped:
    """Map ``query`` (AnnData or paths) onto a reference (see the module doc for the
    kinds of reference); ``labels`` (and a ``hierarchy`` label -> main-level column)
    are checked against the reference before any training or mapping. ``epochs``: query-mapping epochs (and training epochs per
    phase when a model is trained first); None: the one default,
    :func:`~.embed.default_epochs`."""
    epochs = resolve_epochs(epochs)
    queries = as_sections(query)
    require_genes(queries, "label transfer" if labels else "mapping")
    check_expression(queries, section_names(queries), "mapping onto the model")
    offset = 0
    if model is None:
        if reference is not None:
            reference = as_sections(reference)
            check_labels(reference, labels, hierarchy)  # before training, not after
        model, reference = _reference_model(reference, seed, device), None
    if _untrained(model):
        if reference is not None:
            raise BrainAtlasInputError(
                "an untrained model trains on its own sections: give no reference sections"
            )
        train_fusemap(model, epochs, progress=progress, cancel=cancel, extra=epochs)
        offset = 2 * int(epochs)
    model, refs = load_reference(model, reference, device=device)
    check_labels(refs, labels, hierarchy)
    warnings = overlap_warnings(model, queries)
    head = f"{what}: {len(queries)} query section(s) onto {model.n_sections} reference section(s)"
    report(
        progress,
        0,
        offset + int(epochs),
        message=head + (f", labels {', '.join(labels)}" if labels else ""),
    )
    mapping = map_onto(
        model,
        queries,
        refs,
        epochs=epochs,
        seed=seed,
        progress=progress,
        cancel=cancel,
        offset=offset,
    )
    check_cancel(cancel)
    return Mapped(mapping.write_embeddings(copy=True), mapping, model, refs, warnings)


def label_transfer(
    query,
    *,
    model=None,
    reference=None,
    labels: Sequence[str] = ("celltype", "region"),
    method: str = "mlp",
    hierarchy: dict | None = None,
    smooth_regions: bool = True,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressFn | None = None,
    cancel=None,
) -> Transferred:
    """Map ``query`` onto the reference (:func:`map_queries`) and transfer ``labels``
    (see the module doc).

    ``epochs``: query-mapping epochs (and training epochs per phase without a model);
    ``method``: "mlp" or "knn"; ``hierarchy``: label -> main-level column (default the
    engine's ``{'celltype': 'celltype_main'}``); ``smooth_regions``: spatial vote on
    labels read from the tissue embedding. A label need only be carried by some of the
    reference sections.
    """
    labels = [labels] if isinstance(labels, str) else [x for x in labels if x]
    if not labels:
        raise BrainAtlasInputError("give at least one label column to transfer")
    mapped = map_queries(
        query,
        model=model,
        reference=reference,
        labels=labels,
        hierarchy=hierarchy,
        epochs=epochs,
        seed=seed,
        device=device,
        progress=progress,
        cancel=cancel,
    )
    return transfer_onto(
        mapped,
        labels,
        method=method,
        hierarchy=hierarchy,
        smooth_regions=smooth_regions,
        seed=seed,
        cancel=cancel,
    )


def transfer_onto(
    mapped: Mapped,
    labels: Sequence[str],
    *,
    method: str = "mlp",
    hierarchy: dict | None = None,
    smooth_regions: bool = True,
    seed: int = 0,
    cancel=None,
) -> Transferred:
    """Transfer ``labels`` onto query sections already mapped (:func:`map_queries`)."""
    from ..annotate import transfer_labels

    labels = list(labels)
    check_labels(mapped.reference, labels, hierarchy)
    out = transfer_labels(
        mapped.reference,
        mapped.sections,
        labels=labels,
        model=mapped.mapping,
        method=method,
        hierarchy=hierarchy,
        smooth_regions=smooth_regions,
        seed=seed,
        cancel=cancel,
    )
    check_cancel(cancel)
    out = list(out)
    notes = finite_results(out, section_names(out))
    return Transferred(
        out, labels, mapped.mapping, mapped.model, mapped.reference, list(mapped.warnings), notes
    )


def write_transfer(result: Transferred, out, *, inputs: Iterable = ()) -> Path:
    """Write the annotated query sections to ``out`` (.h5ad) as one AnnData."""
    from ..io import write_h5ad

    out = check_output_file(out, ".h5ad", inputs)
    finite_results(result.sections, section_names(result.sections))
    return write_h5ad(result.combined(), out)
