"""Checks and writers shared by the workflows' ``write_*`` functions.

Every output is written through :mod:`napari_brainatlas.io`'s atomic writers (a
temporary file in the target folder, then a rename) and never over an input file.
The ``check_*`` functions let a caller (the command line) refuse a bad output path
before a long run starts; the writers check again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..io import write_h5ad

__all__ = ["check_output_file", "check_output_folder", "write_sections"]


def _resolved(paths: Iterable) -> set[Path]:
    return {Path(p).resolve() for p in paths if p is not None}


def check_output_file(path, suffix: str | None = ".h5ad", inputs: Iterable = ()) -> Path:
    """``path`` as a Path after checking its suffix (unless None), that it is not a
    folder and not one of ``inputs``."""
    out = Path(path)
    if suffix is not None and out.suffix.lower() != suffix:
        raise BrainAtlasInputError(f"the output must be a {suffix} file, not {out.name}")
    if out.resolve() in _resolved(inputs):
        raise BrainAtlasInputError(f"refusing to overwrite the input file {out.name}")
    if out.is_dir():
        raise BrainAtlasInputError(f"the output {out} is a folder, not a file")
    return out


def check_output_folder(path) -> Path:
    """``path`` as a Path after checking that it is a folder or does not exist yet."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise BrainAtlasInputError(f"the output {out} exists and is not a folder")
    return out


def write_sections(
    sections: Sequence[AnnData], names: Sequence[str], folder, inputs: Iterable = ()
) -> list[Path]:
    """Write ``folder/<name>.h5ad`` per section (atomically); refuses input files."""
    folder = check_output_folder(folder)
    targets = [folder / f"{n}.h5ad" for n in names]
    taken = _resolved(inputs)
    for t in targets:
        if t.resolve() in taken:
            raise BrainAtlasInputError(f"refusing to overwrite the input file {t.name}")
    return [write_h5ad(a, t) for a, t in zip(sections, targets)]
