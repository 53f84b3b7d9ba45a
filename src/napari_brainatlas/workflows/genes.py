"""Genes between a model and the sections mapped onto it.

* :func:`gene_overlap` - per section, how many of its genes the model knows. Labels and
  imputed genes of a query rest on the genes it shares with the model; with only a few
  (``FEW_SHARED_GENES``) the mapping has little to go on and its results can look
  plausible while being wrong, so :func:`overlap_warnings` says so, with the numbers.
* :func:`gene_spelling` - the engines match genes upper-cased (the method treats gene
  symbols case-insensitively); outputs map back to the spelling the user's data uses
  (``imputed_Slc17a7``, not ``imputed_SLC17A7``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from anndata import AnnData

__all__ = [
    "FEW_SHARED_GENES",
    "GeneOverlap",
    "gene_overlap",
    "gene_spelling",
    "model_genes",
    "overlap_warnings",
]

#: a query sharing fewer genes than this with the model gets a warning. A judgement, not
#: a measured cut-off: the public panels here share 3-4 genes (osmFISH vs MERFISH), where
#: imputed patterns are visibly wrong, while the demo's panels share 16 or more.
FEW_SHARED_GENES = 10


def model_genes(model) -> set[str]:
    """The model's genes, upper-case (a FuseMap, a QueryMapping or a gene list)."""
    if hasattr(model, "gene_embedding") and callable(model.gene_embedding):
        return {str(g).upper() for g in model.gene_embedding().index}
    return {str(g).upper() for g in model}


@dataclass(frozen=True)
class GeneOverlap:
    """A section's name, how many of its genes the model knows, and its gene count."""

    name: str
    shared: int
    genes: int


def gene_overlap(model, sections: Sequence[AnnData], names=None) -> list[GeneOverlap]:
    """For each section: how many of its genes the model knows."""
    from .sections import section_names

    known = model_genes(model)
    names = list(names) if names is not None else section_names(sections)
    out = []
    for a, name in zip(sections, names):
        mine = {str(g).upper() for g in a.var_names}
        out.append(GeneOverlap(name, len(mine & known), len(mine)))
    return out


def overlap_warnings(model, sections: Sequence[AnnData], names=None) -> list[str]:
    """One sentence per section sharing fewer than :data:`FEW_SHARED_GENES` genes."""
    out = []
    for o in gene_overlap(model, sections, names):
        if o.shared < FEW_SHARED_GENES:
            out.append(
                f"section {o.name!r} shares only {o.shared} of its {o.genes} genes with the "
                f"model: its labels and imputed genes rest on those {o.shared} genes and "
                "may be wrong; check the imputation quality estimate"
            )
    return out


def gene_spelling(genes: Iterable[str], *sources) -> dict[str, str]:
    """``{GENE: spelling}`` for ``genes`` (any case): the spelling of the first section
    in ``sources`` (AnnData objects or lists of them) that measures the gene, else the
    spelling given in ``genes``."""
    seen: dict[str, str] = {}
    for src in sources:
        for a in [src] if isinstance(src, AnnData) else list(src or []):
            for g in map(str, a.var_names):
                seen.setdefault(g.upper(), g)
    return {str(g).upper(): seen.get(str(g).upper(), str(g)) for g in genes}
