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

import importlib

#: where each public name lives; imported on first use (PEP 562), so that
#: ``from napari_brainatlas.fusemap.settings import FuseMapSettings`` (the docks' and the
#: CLI's defaults) does not import torch
_WHERE = {
    "_balance": ("balance_weights", "leiden_labels"),
    "_graph": ("delaunay_edges", "normalized_adjacency"),
    "_module": ("Discriminator", "FuseMapModule", "SectionEncoder"),
    "data": ("PreparedSection", "clean_gene_names", "preprocess_section", "spatial_graph"),
    "fusemap": ("CELL_KEY", "TISSUE_KEY", "FuseMap", "resolve_device"),
    "settings": ("FuseMapSettings",),
    "synthetic": ("make_synthetic_sections",),
}
_MODULE_OF = {name: mod for mod, names in _WHERE.items() for name in names}

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


def __getattr__(name: str):
    mod = _MODULE_OF.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
