"""FuseMap embedding engine (no Qt / napari imports).

Public API:

* :class:`FuseMap` - the model (train, embeddings, gene embedding, save / load).
* :class:`FuseMapModule` - the torch network (encoders ``ModuleDict`` keyed by section,
  ``gene_embedding`` Parameter with ``gene_index``, ``disc_cell`` / ``disc_tissue``).
* :func:`preprocess_section`, :func:`spatial_graph` - the data steps of method.md.
* :mod:`.distributed` - multi-process (torchrun) training helpers.
"""

from ._balance import balance_weights, leiden_labels
from ._graph import delaunay_edges, normalized_adjacency, spatial_graph
from ._module import Discriminator, FuseMapModule, SectionEncoder
from ._preprocess import PreparedSection, clean_gene_names, preprocess_section
from .fusemap import CELL_KEY, TISSUE_KEY, FuseMap, resolve_device
from .synthetic import make_synthetic_sections

__all__ = [
    "CELL_KEY",
    "TISSUE_KEY",
    "Discriminator",
    "FuseMap",
    "FuseMapModule",
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
