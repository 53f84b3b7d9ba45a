"""FuseMap embedding engine (no Qt / napari imports).

Public API:

* :class:`FuseMap` - the model (train, embeddings, gene embedding, save / load; the
  shared model protocol of :mod:`napari_brainatlas.models`), its options
  :class:`FuseMapSettings` (a frozen dataclass).
* :class:`FuseMapModule` - the torch network (encoders ``ModuleDict`` keyed by section,
  ``gene_embedding`` Parameter with ``gene_index``, ``disc_cell`` / ``disc_tissue``).
* :mod:`.data` - the data steps of method.md (:func:`preprocess_section`,
  :func:`spatial_graph`, mini-batch helpers), public for the query mapping.
* :mod:`.distributed` - multi-process (torchrun) training helpers.
"""

from ._balance import balance_weights, leiden_labels
from ._graph import delaunay_edges, normalized_adjacency
from ._module import Discriminator, FuseMapModule, SectionEncoder
from .data import PreparedSection, clean_gene_names, preprocess_section, spatial_graph
from .fusemap import CELL_KEY, TISSUE_KEY, FuseMap, resolve_device
from .settings import FuseMapSettings
from .synthetic import make_synthetic_sections

__all__ = [
    "CELL_KEY",
    "TISSUE_KEY",
    "Discriminator",
    "FuseMap",
    "FuseMapModule",
    "FuseMapSettings",
    "PreparedSection",
    "SectionEncoder",
    "balance_weights",
    "clean_gene_names",
    "delaunay_edges",
    "leiden_labels",
    "make_synthetic_sections",
    "normalized_adjacency",
    "preprocess_section",
    "resolve_device",
    "spatial_graph",
]
