"""Readers and writers for tissue sections (see :mod:`napari_brainatlas.io.readers`)."""

from .backed import gene_values
from .readers import (
    SECTION_KEYS,
    SUFFIXES,
    find_coordinates,
    normalise_section,
    read_csv_sections,
    read_h5ad,
    read_loom,
    read_sections,
)
from .spatialdata import is_spatialdata_store, read_spatialdata, write_spatialdata
from .validate import is_integer_matrix, validate_section
from .writers import atomic_write_text, write_h5ad

__all__ = [
    "SECTION_KEYS",
    "SUFFIXES",
    "atomic_write_text",
    "find_coordinates",
    "gene_values",
    "is_integer_matrix",
    "is_spatialdata_store",
    "normalise_section",
    "read_csv_sections",
    "read_h5ad",
    "read_loom",
    "read_sections",
    "read_spatialdata",
    "validate_section",
    "write_h5ad",
    "write_spatialdata",
]
