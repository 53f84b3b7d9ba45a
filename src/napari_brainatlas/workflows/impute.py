"""Imputation of genes a section never measured, from the FuseMap embedding.

* :func:`impute_sections` - sections (AnnData or paths) + a model (folder path or FuseMap;
  or none and ``reference`` sections, on which a FuseMap is trained first) + genes ->
  :class:`Imputed`: new AnnData objects with one obs column per gene,
  ``obs['imputed_<Gene>']`` (the symbol as the user's data spells it - the engines match
  genes upper-cased -; float32, in the units of the reference expression the kNN average
  is taken over, or of the decoder), and ``uns['imputed_genes']``. A section without
  ``obsm['X_fusemap_cell']`` is first mapped onto the model as a query (``epochs``): no
  label transfer is needed first. ``method``: "knn" (mean of the 50 nearest
  reference cells in the shared embedding that measured the gene; needs the embedded
  reference sections), "decoder" (``max(z_C E^T, 0)``), "auto" (knn where the reference
  is at hand, else decoder); see :mod:`napari_brainatlas.annotate.impute`.
* :func:`impute_mapped` - the same for query sections already mapped (the Annotate
  dock after a transfer or a mapping: the query mapping is reused).
* :func:`write_imputed` - the sections as one .h5ad, atomically.

``progress(done, total, info)``: one call per query-mapping epoch. Inputs are never
modified.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..jobs import ProgressFn, check_cancel, report
from .embed import load_fusemap, train_fusemap
from .genes import gene_spelling, model_genes, overlap_warnings
from .outputs import check_output_file
from .sections import as_sections, require_genes
from .transfer import combine_sections, load_reference, map_onto

__all__ = ["Imputed", "impute_mapped", "impute_sections", "write_imputed"]


@dataclass
class Imputed:
    """Sections with ``obs['imputed_<Gene>']`` and how they were imputed. ``genes`` are
    spelled as the user's data spells them; ``warnings`` holds sentences for the user (a
    section sharing few genes with the model)."""

    sections: list[AnnData]
    genes: list[str]
    method: str
    warnings: list[str] = field(default_factory=list)

    def combined(self) -> AnnData:
        return combine_sections(self.sections)

    def summary(self, where: str = "") -> str:
        from ..annotate import IMPUTED_PREFIX

        n = sum(a.n_obs for a in self.sections)
        cols = ", ".join(f"obs['{IMPUTED_PREFIX}{g}']" for g in self.genes[:3])
        more = ", ..." if len(self.genes) > 3 else ""
        return f"imputed ({self.method}) {', '.join(self.genes)} for {n} cells: {cols}{more}" + (
            f" in {where}" if where else ""
        )


def _parse_genes(genes) -> list[str]:
    """The gene symbols asked for, as typed (matched case-insensitively)."""
    if isinstance(genes, str):
        genes = genes.split(",")
    out = list(dict.fromkeys(g.strip() for g in genes if g and g.strip()))
    if not out:
        raise BrainAtlasInputError("give at least one gene symbol to impute")
    return out


def _model_for(model, reference, method, *, epochs, seed, device, progress, cancel):
    """(model, embedded reference or None): a model folder / trained FuseMap as given; an
    untrained FuseMap, or - with no model - a FuseMap built on ``reference``, is trained
    first (as a transfer does)."""
    from .transfer import _reference_model, _untrained

    if model is None:
        if reference is None:
            raise BrainAtlasInputError("give a model folder or reference sections to impute from")
        model = _reference_model(reference, seed, device)
    if _untrained(model):
        train_fusemap(model, epochs, progress=progress, cancel=cancel)
        return model, model.write_embeddings(copy=True)
    if method == "decoder":
        return (
            load_fusemap(model, device=device) if isinstance(model, (str, Path)) else model
        ), None
    return load_reference(model, reference, device=device, required=method == "knn")


def impute_sections(
    sections,
    *,
    model,
    genes: str | Sequence[str],
    method: str = "auto",
    reference=None,
    epochs: int = 15,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressFn | None = None,
    cancel=None,
) -> Imputed:
    """Impute ``genes`` for every cell of ``sections`` (see the module docstring)."""
    from ..annotate import IMPUTED_PREFIX, impute_genes
    from ..fusemap import CELL_KEY

    genes = _parse_genes(genes)
    if method not in ("auto", "knn", "decoder"):
        raise BrainAtlasInputError(f"method must be auto, knn or decoder, not {method!r}")
    sections = as_sections(sections)
    require_genes(sections, "imputation")
    model, refs = _model_for(
        model,
        reference,
        method,
        epochs=epochs,
        seed=seed,
        device=device,
        progress=progress,
        cancel=cancel,
    )
    known = model_genes(model)
    missing = [g for g in genes if g.upper() not in known]
    if missing:
        raise BrainAtlasInputError(
            f"gene(s) not in the model's gene embedding: {', '.join(missing[:5])}"
        )
    spelled = gene_spelling(genes, refs or [], sections)
    names = [spelled[g.upper()] for g in genes]
    outs, used = [], method
    for a in sections:
        check_cancel(cancel)
        a = a.copy()
        if CELL_KEY not in a.obsm or not np.isfinite(np.asarray(a.obsm[CELL_KEY])).any():
            mapping = map_onto(
                model, [a], refs, epochs=epochs, seed=seed, progress=progress, cancel=cancel
            )
            a = mapping.write_embeddings(copy=False)[0]
        df = impute_genes(model, a, [g.upper() for g in genes], method=method, reference=refs)
        used = df.attrs.get("method", method)
        for g, name in zip(genes, names):
            a.obs[IMPUTED_PREFIX + name] = df[g.upper()].to_numpy(np.float32)
        a.uns["imputed_genes"] = list(names)
        outs.append(a)
    return Imputed(outs, names, str(used), overlap_warnings(model, sections))


def impute_mapped(
    mapped, genes: str | Sequence[str], *, method: str = "auto", progress=None, cancel=None
) -> Imputed:
    """Impute ``genes`` for query sections already mapped (a
    :class:`~napari_brainatlas.workflows.transfer.Mapped`, from ``map_queries`` or a
    transfer): no mapping again. The kNN search sees the reference cells through each
    query's own encoder (``view='query'``) where the reference counts are at hand."""
    from ..annotate import IMPUTED_PREFIX, impute_genes

    genes = _parse_genes(genes)
    known = model_genes(mapped.model)
    missing = [g for g in genes if g.upper() not in known]
    if missing:
        raise BrainAtlasInputError(
            f"gene(s) not in the model's gene embedding: {', '.join(missing[:5])}"
        )
    spelled = gene_spelling(genes, mapped.reference or [], mapped.sections)
    names = [spelled[g.upper()] for g in genes]
    outs, used = [], method
    for i, a in enumerate(mapped.sections):
        check_cancel(cancel)
        a = a.copy()
        df = impute_genes(mapped.mapping, i, [g.upper() for g in genes], method=method)
        used = df.attrs.get("method", method)
        for g, name in zip(genes, names):
            a.obs[IMPUTED_PREFIX + name] = df[g.upper()].to_numpy(np.float32)
        a.uns["imputed_genes"] = list(names)
        outs.append(a)
        report(progress, i + 1, len(mapped.sections), message=f"imputed {', '.join(names)}")
    return Imputed(outs, names, str(used), list(mapped.warnings))


def write_imputed(result: Imputed, out, *, inputs: Iterable = ()) -> Path:
    """Write the imputed sections to ``out`` (.h5ad) as one AnnData."""
    from ..io import write_h5ad

    return write_h5ad(result.combined(), check_output_file(out, ".h5ad", inputs))
