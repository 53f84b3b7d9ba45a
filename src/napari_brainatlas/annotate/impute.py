"""Imputation from the gene embedding (method.md, "Imputation").

``X_hat = max(z_C E^T, 0)`` for any gene of the universal gene embedding E (any gene
measured in any reference or query section) and any cell with a cell embedding z_C.
Only the asked genes are computed (cells x len(genes)); nothing builds a dense
cells x all-genes matrix unless every gene is asked for.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..model import CELL_KEY, preprocess_section

__all__ = ["IMPUTED_PREFIX", "gene_embedding_of", "impute_genes", "measured_vs_imputed"]

#: obs column prefix of imputed genes written by the CLI / widget: obs['imputed_<GENE>']
IMPUTED_PREFIX = "imputed_"


def gene_embedding_of(model) -> pd.DataFrame:
    """The gene embedding (genes x k) of a FuseMap, a QueryMapping, or a DataFrame."""
    if isinstance(model, pd.DataFrame):
        return model
    if hasattr(model, "gene_embedding") and callable(model.gene_embedding):
        return model.gene_embedding()
    raise BrainAtlasInputError("give a FuseMap model, a query mapping or a gene embedding")


def _resolve_genes(E: pd.DataFrame, genes) -> list[str]:
    if genes is None:
        return list(E.index)
    if isinstance(genes, str):
        genes = [g for g in genes.replace(";", ",").split(",") if g.strip()]
    out, missing = [], []
    for g in genes:
        u = str(g).strip().upper()
        (out if u in E.index else missing).append(u)
    if missing:
        raise BrainAtlasInputError(
            f"gene(s) not in the gene embedding: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else ""))
    if not out:
        raise BrainAtlasInputError("give at least one gene to impute")
    return list(dict.fromkeys(out))


def _cell_embedding(model, section) -> tuple[np.ndarray, pd.Index]:
    if isinstance(section, AnnData):
        if CELL_KEY not in section.obsm:
            raise BrainAtlasInputError(
                f"the section has no obsm['{CELL_KEY}']: embed or map it first")
        return np.asarray(section.obsm[CELL_KEY], np.float32), section.obs_names
    if hasattr(model, "query_names") and (
            isinstance(section, (int, np.integer)) or str(section) in model.query_names):
        i = model._index(section)
        return model.get_latent_representation("cell", i), model.adatas[i].obs_names
    if hasattr(model, "section_names"):
        names = list(model.section_names)
        if not isinstance(section, (int, np.integer)) and str(section) not in names:
            raise BrainAtlasInputError(f"no section named {section!r} in the model")
        i = int(section) if isinstance(section, (int, np.integer)) else names.index(str(section))
        z = model.get_latent_representation("cell", i)
        return z, model.adatas[i].obs_names
    raise BrainAtlasInputError("give a section (AnnData with a cell embedding) or a name")


def impute_genes(model, section, genes, chunk: int = 65536) -> pd.DataFrame:
    """Imputed expression ``max(z_C E^T, 0)`` of ``genes`` for every cell of ``section``.

    model : FuseMap, QueryMapping, or a gene embedding DataFrame (genes x k).
    section : an AnnData with ``obsm['X_fusemap_cell']``, or the name / index of a
        section (reference or query) the model holds.
    genes : list of symbols (case-insensitive) or "A,B"; None = every gene (dense!).

    Returns a DataFrame (n_cells x len(genes)) indexed by the section's obs_names; cells
    without an embedding (dropped by preprocessing) are NaN.
    """
    E = gene_embedding_of(model)
    genes = _resolve_genes(E, genes)
    Z, index = _cell_embedding(model, section)
    if Z.ndim != 2 or Z.shape[1] != E.shape[1]:
        raise BrainAtlasInputError(
            f"the cell embedding has {Z.shape[-1]} dimensions but the gene embedding "
            f"{E.shape[1]}")
    Eg = E.loc[genes].to_numpy(np.float32)
    out = np.full((len(Z), len(genes)), np.nan, np.float32)
    ok = np.isfinite(Z).all(1)
    rows = np.flatnonzero(ok)
    for i in range(0, len(rows), chunk):
        r = rows[i:i + chunk]
        out[r] = np.maximum(Z[r] @ Eg.T, 0.0)
    return pd.DataFrame(out, index=index, columns=pd.Index(genes, name="gene"))


def measured_values(section: AnnData, gene: str) -> np.ndarray:
    """The model-input values of ``gene`` (normalised, log1p, scaled as the model reads
    them) for every cell of ``section``; NaN for cells the preprocessing drops."""
    p = preprocess_section(section, "measured")
    g = str(gene).strip().upper()
    if g not in p.genes:
        raise BrainAtlasInputError(f"the section does not measure {gene}")
    j = p.genes.index(g)
    col = p.X[:, j]
    col = np.asarray(col.toarray() if hasattr(col, "toarray") else col, np.float32).ravel()
    out = np.full(section.n_obs, np.nan, np.float32)
    out[p.kept] = col
    return out


def measured_vs_imputed(section: AnnData, gene: str, model=None) -> pd.DataFrame:
    """Side by side for a gene the section measured: columns ``measured`` (model-input
    scale: normalised, log1p, scaled) and ``imputed`` (``max(z_C E^T, 0)``).

    The imputed values come from ``model`` (FuseMap / QueryMapping / gene embedding, with
    the section's ``obsm['X_fusemap_cell']``) or, without a model, from
    ``obs['imputed_<GENE>']`` written by :func:`impute_genes` users (CLI, widget).
    ``df.attrs['pearson_r']`` holds Pearson's R over the cells having both.
    """
    g = str(gene).strip().upper()
    measured = measured_values(section, g)
    if model is not None:
        imputed = impute_genes(model, section, [g])[g].to_numpy()
    elif IMPUTED_PREFIX + g in section.obs:
        imputed = section.obs[IMPUTED_PREFIX + g].to_numpy(np.float32)
    else:
        raise BrainAtlasInputError(
            f"no imputed values of {g}: give a model or impute it first")
    df = pd.DataFrame({"measured": measured, "imputed": imputed}, index=section.obs_names)
    ok = np.isfinite(measured) & np.isfinite(imputed)
    r = float("nan")
    if ok.sum() > 2 and measured[ok].std() > 0 and imputed[ok].std() > 0:
        r = float(np.corrcoef(measured[ok], imputed[ok])[0, 1])
    df.attrs["pearson_r"] = r
    df.attrs["gene"] = g
    return df
