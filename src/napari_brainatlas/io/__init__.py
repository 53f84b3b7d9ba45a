"""Readers and writers for tissue sections (see :mod:`napari_brainatlas.io.readers` and,
for SpatialData ``.zarr`` stores, :mod:`napari_brainatlas.io.spatialdata`)."""

from pathlib import Path

from .backed import gene_values
from .readers import (
    SECTION_KEYS,
    SUFFIXES,
    find_coordinates,
    normalise_section,
    read_csv_sections,
    read_h5ad,
    read_loom,
)
from .readers import read_sections as read_files
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
    "read_files",
    "read_loom",
    "read_sections",
    "read_spatialdata",
    "validate_section",
    "write_h5ad",
    "write_spatialdata",
]


def read_sections(
    path: str | Path,
    pixel_size_um: float | None = None,
    section_key: str | None = None,
    backed: bool = False,
):
    """Every section in ``path``: a SpatialData ``.zarr`` store
    (:func:`~napari_brainatlas.io.spatialdata.read_spatialdata`, one section per annotated
    points/shapes element) or a file / csv folder
    (:func:`~napari_brainatlas.io.readers.read_sections`: .h5ad, .loom, .csv, folder).
    ``section_key`` and ``backed`` apply to files."""
    if is_spatialdata_store(path):
        return read_spatialdata(path, pixel_size_um=pixel_size_um)
    return read_files(path, pixel_size_um=pixel_size_um, section_key=section_key, backed=backed)
