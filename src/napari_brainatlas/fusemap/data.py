"""FuseMap's data steps, public: what the model and the query mapping
(:mod:`napari_brainatlas.annotate.query`) both use.

* preprocessing of one section (method.md, "Data"): :func:`preprocess_section` ->
  :class:`PreparedSection`; its pieces :func:`clean_gene_names`,
  :func:`is_integer_matrix`, :func:`normalize_log_scale`, :func:`as_float32_matrix`;
* the spatial graph: :func:`spatial_graph` (Delaunay, self loops, symmetric
  normalisation);
* mini-batches over the graph: :func:`gather_subgraph` (2-hop neighbourhood of seed
  cells), :func:`rows_dense`, :func:`to_torch_sparse`; :class:`SectionData`,
  :func:`forward_section` (losses of one step), :func:`infer_latent` (embeddings).

The implementations live in the private modules ``_preprocess``, ``_graph`` and
``_training``; import them from here.
"""

from __future__ import annotations

from ._graph import spatial_graph
from ._preprocess import (
    PreparedSection,
    clean_gene_names,
    is_integer_matrix,
    normalize_log_scale,
    preprocess_section,
)
from ._preprocess import _as_csr_or_dense as as_float32_matrix
from ._training import (
    SectionData,
    forward_section,
    gather_subgraph,
    infer_latent,
    rows_dense,
    to_torch_sparse,
)

__all__ = [
    "PreparedSection",
    "SectionData",
    "as_float32_matrix",
    "clean_gene_names",
    "forward_section",
    "gather_subgraph",
    "infer_latent",
    "is_integer_matrix",
    "normalize_log_scale",
    "preprocess_section",
    "rows_dense",
    "spatial_graph",
    "to_torch_sparse",
]
