"""Imputation of genes a section never measured, from the FuseMap embedding.

* :func:`impute_sections` - sections (AnnData or paths) + a model (folder path or FuseMap) +
  genes -> :class:`Imputed`: new AnnData objects with one obs column
  per gene, ``obs['imputed_<GENE>']`` (upper-case symbol; float32, in the units of the
  reference expression the kNN average is taken over, or of the decoder), and
  ``uns['imputed_genes']``. A section without ``obsm['X_fusemap_cell']`` is first mapped
  onto the model as a query (``epochs``). ``method``: "knn" (mean of the 50 nearest
  reference cells in the shared embedding that measured the gene; needs the embedded
  reference sections), "decoder" (``max(z_C E^T, 0)``), "auto" (knn where the reference
  is at hand, else decoder); see :mod:`napari_brainatlas.annotate.impute`.
* :func:`write_imputed` - the sections as one .h5ad, atomically.

``progress(done, total, info)``: one call per query-mapping epoch. Inputs are never
modified.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..jobs import ProgressFn, check_cancel
from .embed import load_fusemap
from .outputs import check_output_file
from .sections import as_sections
from .transfer import combine_sections, load_reference, map_onto

__all__ = ["Imputed", "impute_sections", "write_imputed"]


@dataclass
class Imputed:
    """Sections with ``obs['imputed_<GENE>']`` and how they were imputed."""

    sections: list[AnnData]
    genes: list[str]
    method: str

    def combined(self) -> AnnData:
        return combine_sections(self.sections)

    def summary(self, where: str = "") -> str:
        from ..annotate import IMPUTED_PREFIX

        n = sum(a.n_obs for a in self.sections)
        return (
            f"imputed ({self.method}) {', '.join(self.genes)} for {n} cells: "
            f"obs['{IMPUTED_PREFIX}<GENE>']" + (f" in {where}" if where else "")
        )


def _parse_genes(genes) -> list[str]:
    if isinstance(genes, str):
        genes = genes.split(",")
    out = [g.strip().upper() for g in genes if g and g.strip()]
    if not out:
        raise BrainAtlasInputError("give at least one gene symbol to impute")
    return out


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
    if method == "decoder":
        model = load_fusemap(model, device=device) if isinstance(model, (str, Path)) else model
        refs = None
    else:
        model, refs = load_reference(model, reference, device=device, required=method == "knn")
    known = model.module.gene_index
    missing = [g for g in genes if g not in known]
    if missing:
        raise BrainAtlasInputError(
            f"gene(s) not in the model's gene embedding: {', '.join(missing[:5])}"
        )
    outs, used = [], method
    for a in as_sections(sections):
        check_cancel(cancel)
        a = a.copy()
        if CELL_KEY not in a.obsm or not np.isfinite(np.asarray(a.obsm[CELL_KEY])).any():
            mapping = map_onto(
                model, [a], refs, epochs=epochs, seed=seed, progress=progress, cancel=cancel
            )
            a = mapping.write_embeddings(copy=False)[0]
        df = impute_genes(model, a, genes, method=method, reference=refs)
        used = df.attrs.get("method", method)
        for g in genes:
            a.obs[IMPUTED_PREFIX + g] = df[g].to_numpy(np.float32)
        a.uns["imputed_genes"] = list(genes)
        outs.append(a)
    return Imputed(outs, genes, str(used))


def write_imputed(result: Imputed, out, *, inputs: Iterable = ()) -> Path:
    """Write the imputed sections to ``out`` (.h5ad) as one AnnData."""
    from ..io import write_h5ad

    return write_h5ad(result.combined(), check_output_file(out, ".h5ad", inputs))
