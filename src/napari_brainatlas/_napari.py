"""npe2 hooks of the napari-brainatlas plugin (see ``napari.yaml``): reader, writer and
sample data. They only translate between files / AnnData and napari layer data tuples
(:mod:`napari_brainatlas.layers`); napari itself is not imported here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .io import SUFFIXES, is_spatialdata_store, read_sections, write_h5ad
from .layers import atlas_layer_data, layer_to_anndata, section_layer_data, tile_offsets

__all__ = [
    "get_reader",
    "make_demo_atlas_sample",
    "make_demo_sample",
    "read_path",
    "write_sections",
    "write_spatialdata_layers",
]


def _readable(path: Path) -> bool:
    if is_spatialdata_store(path):
        return True
    if path.is_dir():
        return any(path.glob("*.csv")) or any(path.glob("*.tsv"))
    return path.name.lower().endswith(SUFFIXES)


def get_reader(path) -> Callable | None:
    """The reader for ``path`` (a .h5ad, .loom, .csv/.tsv, a folder of csv files or a
    SpatialData .zarr store), or
    ``None`` when this plugin cannot read it."""
    if isinstance(path, (list, tuple)):
        if not path or not all(_readable(Path(p)) for p in path):
            return None
    elif not _readable(Path(path)):
        return None
    return read_path


def read_path(path) -> list[tuple]:
    """Every section in ``path`` (or a list of paths) as Points layer data tuples."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    out = []
    for p in paths:
        out.extend(section_layer_data(s) for s in read_sections(p))
    return out


def write_sections(path: str, layer_data: list[tuple]) -> list[str]:
    """Save the cells of one or more Points layers as .h5ad.

    One layer goes to ``path``; several go to ``<stem>_<layer name>.h5ad`` next to it.
    A layer that holds its section (``metadata['adata']``) is written with that section's
    expression and obs updated from the layer's features.
    """
    out = Path(path)
    if out.suffix.lower() != ".h5ad":
        out = out.with_suffix(".h5ad")
    written = []
    for data, meta, _ in layer_data:
        adata = layer_to_anndata(data, meta)
        target = (
            out
            if len(layer_data) == 1
            else out.with_name(f"{out.stem}_{_safe(meta.get('name', 'section'))}.h5ad")
        )
        written.append(str(write_h5ad(adata, target)))
    return written


def write_spatialdata_layers(path: str, layer_data: list[tuple]) -> list[str]:
    """Save the cells of one or more Points layers as one SpatialData store (``.zarr``):
    one element + annotating table per layer (see
    :func:`napari_brainatlas.io.spatialdata.write_spatialdata`)."""
    from .io import write_spatialdata

    out = Path(path)
    if not out.name.lower().endswith(".zarr"):
        out = out.with_name(out.name + ".zarr")
    sections = []
    for data, meta, _ in layer_data:
        ad = layer_to_anndata(data, meta)
        info = dict(ad.uns["napari_brainatlas"])
        info["section"] = str(meta.get("name") or info.get("section") or "section")
        ad.uns["napari_brainatlas"] = info
        sections.append(ad)
    return [str(write_spatialdata(sections, out))]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def make_demo_sample(seed: int = 0) -> list[tuple]:
    """The demo sections, laid out side by side, each coloured by region."""
    from .demo import make_demo_sections

    sections = make_demo_sections(seed=seed)
    return [section_layer_data(s, translate=t) for s, t in zip(sections, tile_offsets(sections))]


def make_demo_atlas_sample() -> list[tuple]:
    """The demo atlas annotation as a Labels layer in atlas colours (um)."""
    return [atlas_layer_data()]
