"""The per-cell CCF table of several registered sections (what the 3D atlas dock's Export
writes, and ``napari-brainatlas export-ccf``).

* :func:`check_export` - the output path and options' one-sentence errors, before any
  section is read (the command line calls it first).
* :func:`ccf_cells` - registered sections -> :class:`CcfCells`: one row per registered
  cell (a finite row of ``obsm['ccf_coords']``, CCF um in (AP, DV, ML) order) with
  ``section``, ``cell_id`` and, by ``format``, the BrainGlobe ``asr`` axes ``ap/si/rl``
  (``_um`` or ``_vox``) and/or the Allen Brain Cell atlas ``x_ccf/y_ccf/z_ccf`` (mm), then
  ``ccf_id`` / ``ccf_acronym`` and any ``extra_obs`` columns the sections have
  (:mod:`napari_brainatlas.io.ccf_export` says why these columns mean what they do).
* :func:`write_ccf_cells` - the table (``.csv``, ``.csv.gz`` or ``.tsv``) and
  ``<stem>.json`` beside it (orientation, units, atlas), atomically.
* :func:`export_ccf` - both steps (the dock and the command line).

A section without ``obsm['ccf_coords']``, or whose cells all lack a CCF position, is bad
input (one :class:`BrainAtlasInputError` naming it), as is an output that is one of the
inputs. Nothing written is NaN or infinite: coordinates are finite by construction, a
missing label is written as an empty string and a numeric ``extra_obs`` column holding a
non-finite value is left out (:attr:`CcfCells.skipped`). ``progress(done, total, info)``
once per section and once per written chunk of :data:`CHUNK_ROWS` rows; ``cancel()`` is
polled between them. Inputs are never modified.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..jobs import ProgressFn, check_cancel, report
from ._progress import relay
from .outputs import check_output_file
from .sections import as_sections, section_names

__all__ = [
    "CHUNK_ROWS",
    "FORMATS",
    "UNITS",
    "CcfCells",
    "ccf_cells",
    "check_export",
    "export_ccf",
    "write_ccf_cells",
]

#: column sets: both (the dock's table), BrainGlobe asr axes only, ABC atlas columns only
FORMATS = ("both", "brainglobe", "abc")
#: units of the BrainGlobe columns (the ABC columns are always millimetres)
UNITS = ("um", "voxel")
#: rows written between two progress reports (and cancel checks)
CHUNK_ROWS = 200_000
SUFFIXES = (".csv", ".csv.gz", ".tsv")
_BRAINGLOBE = ("ap", "si", "rl")
_ABC = ("x_ccf", "y_ccf", "z_ccf")


def _sidecar(out: Path) -> Path:
    name = out.name
    stem = name[: -len(".csv.gz")] if name.lower().endswith(".csv.gz") else out.stem
    return out.with_name(stem + ".json")


def _check_options(format: str, units: str) -> None:
    if format not in FORMATS:
        raise BrainAtlasInputError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if units not in UNITS:
        raise BrainAtlasInputError(f"units must be um or voxel, not {units!r}")
    if units == "voxel" and format == "abc":
        raise BrainAtlasInputError(
            "voxel units are for the BrainGlobe columns; the ABC columns are millimetres"
        )


def check_export(out, *, format: str = "both", units: str = "um", inputs: Iterable = ()) -> Path:
    """``out`` as a Path after checking the options, its suffix and that neither it nor
    the JSON beside it is one of ``inputs``."""
    _check_options(format, units)
    path = Path(out)
    inputs = list(inputs)
    check_output_file(path, None, inputs)
    if not path.name.lower().endswith(SUFFIXES):
        raise BrainAtlasInputError(f"the export must be .csv, .csv.gz or .tsv, not {path.name}")
    check_output_file(_sidecar(path), None, inputs)
    return path


@dataclass
class CcfCells:
    """The per-cell CCF table and what it was made from."""

    table: pd.DataFrame
    names: list[str]
    counts: list[int]  # registered cells per section
    format: str = "both"
    units: str = "um"
    resolution_um: float | None = None
    atlas: str | None = None
    skipped: list[str] = field(default_factory=list)  # extra columns left out (non-finite)
    sources: list[str] = field(default_factory=list)  # the sections' input files
    path: Path | None = None  # where write_ccf_cells wrote it

    @property
    def rows(self) -> int:
        return len(self.table)

    def lines(self) -> list[str]:
        """What a caller prints: one line per section, then the total."""
        out = [f"  {n}: {c:,} registered cells" for n, c in zip(self.names, self.counts)]
        where = f" to {self.path}" if self.path is not None else ""
        out.append(
            f"{self.rows:,} cells of {len(self.names)} section(s){where} "
            f"({self._describe()}; atlas {self.atlas or 'unknown'})"
        )
        if self.skipped:
            out.append(f"left out (non-finite values): {', '.join(self.skipped)}")
        return out

    def _describe(self) -> str:
        bg = "BrainGlobe asr " + (
            "um" if self.units == "um" else f"voxels of {self.resolution_um:g} um"
        )
        return {"both": f"{bg} + ABC x/y/z_ccf mm", "brainglobe": bg, "abc": "ABC x/y/z_ccf mm"}[
            self.format
        ]


def _source(ad: AnnData) -> str | None:
    meta = ad.uns.get("napari_brainatlas")
    src = meta.get("source") if isinstance(meta, dict) else None
    return str(src) if src else None


def _registered_rows(ad: AnnData, name: str) -> np.ndarray:
    src = _source(ad)
    what = f"section {name}" + (f" ({Path(src).name})" if src else "")
    if "ccf_coords" not in ad.obsm:
        raise BrainAtlasInputError(
            f"{what} has no obsm['ccf_coords']: register it first (napari-brainatlas register)"
        )
    c = np.asarray(ad.obsm["ccf_coords"], dtype=float)
    if c.ndim != 2 or c.shape[1] != 3:
        raise BrainAtlasInputError(f"{what}: obsm['ccf_coords'] must be an (n, 3) array")
    rows = np.flatnonzero(np.isfinite(c).all(axis=1))
    if len(rows) == 0:
        raise BrainAtlasInputError(
            f"{what} is not registered: none of its cells has a CCF position"
        )
    return rows


def _recorded_atlas(sections: Sequence[AnnData]) -> str | None:
    """The atlas the sections were registered to (``uns['ccf_registration']``)."""
    for s in sections:
        reg = s.uns.get("ccf_registration")
        if isinstance(reg, dict):
            for v in reg.values():
                if isinstance(v, dict) and v.get("atlas"):
                    return str(v["atlas"])
    return None


def _section_table(ad, name, *, units, resolution_um, extra_obs) -> pd.DataFrame:
    """The io table of one section (its registered cells), named ``name``."""
    from ..io.ccf_export import ccf_table

    df = ccf_table([ad], units=units, resolution_um=resolution_um, extra_obs=extra_obs)
    df["section"] = name
    return df


def _clean(table: pd.DataFrame, coords: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """No NaN or inf in what is written: labels' missing values become "", ``ccf_id``
    0 (outside the brain), numeric columns with a non-finite value are dropped."""
    skipped = []
    for col in table.columns:
        if col in coords or col in ("section", "cell_id"):
            continue
        s = table[col]
        if col == "ccf_id":
            table[col] = pd.to_numeric(s, errors="coerce").fillna(0).astype(np.int64)
        elif pd.api.types.is_bool_dtype(s) or pd.api.types.is_integer_dtype(s):
            continue
        elif pd.api.types.is_numeric_dtype(s):
            if not np.isfinite(s.to_numpy(dtype=float)).all():
                skipped.append(col)
        else:
            table[col] = s.astype(object).where(s.notna(), "").astype(str)
    return table.drop(columns=skipped), skipped


def ccf_cells(
    sections,
    *,
    format: str = "both",
    units: str = "um",
    atlas=None,
    extra_obs: Sequence[str] = (),
    progress: ProgressFn | None = None,
    cancel=None,
) -> CcfCells:
    """One row per registered cell of ``sections`` (AnnData objects or paths).

    ``atlas``: an :class:`~napari_brainatlas.atlas.Atlas`, a spec (``"demo"``, a
    BrainGlobe name, an ``.nrrd``) or None (the atlas the sections were registered to,
    opened only for ``units='voxel'``, which needs its resolution). ``progress`` once per
    section (``total`` the number of sections)."""
    _check_options(format, units)
    sections = as_sections(sections)
    names = section_names(sections)
    rows = [_registered_rows(ad, n) for ad, n in zip(sections, names)]
    atlas_name, resolution = _atlas_info(atlas, sections, units)
    parts = []
    for i, (ad, name) in enumerate(zip(sections, names)):
        check_cancel(cancel)
        parts.append(
            _section_table(
                ad, name, units=units, resolution_um=resolution, extra_obs=tuple(extra_obs)
            )
        )
        report(progress, i + 1, len(sections), section=name, message=f"gathered {name}")
    table = pd.concat(parts, ignore_index=True)
    suf = "um" if units == "um" else "vox"
    bg, abc = [f"{a}_{suf}" for a in _BRAINGLOBE], list(_ABC)
    drop = {"both": [], "brainglobe": abc, "abc": bg}[format]
    table, skipped = _clean(table.drop(columns=drop), bg + abc)
    sources = [src for src in map(_source, sections) if src]
    return CcfCells(
        table,
        names,
        [len(r) for r in rows],
        format=format,
        units=units,
        resolution_um=resolution,
        atlas=atlas_name,
        skipped=skipped,
        sources=sources,
    )


def _atlas_info(atlas, sections, units) -> tuple[str | None, float | None]:
    """(atlas name for the JSON, its resolution in um: known for an Atlas, looked up
    only for voxel units, which need it)."""
    if atlas is not None and not isinstance(atlas, (str, Path)):
        return str(atlas.name), float(atlas.resolution_um)
    spec = atlas if atlas is not None else _recorded_atlas(sections)
    if units == "um":
        return (None if spec is None else str(spec)), None
    if spec is None:
        raise BrainAtlasInputError(
            "voxel units need the atlas's resolution: name the atlas the sections were "
            "registered to"
        )
    from .register import load_atlas

    try:
        opened = load_atlas(spec)
    except BrainAtlasInputError as exc:
        if atlas is not None:
            raise
        raise BrainAtlasInputError(
            f"voxel units need the atlas and the sections' atlas {spec!r} cannot be opened "
            f"({exc}); name the atlas file"
        ) from None
    return opened.name, float(opened.resolution_um)


def _write_rows(table: pd.DataFrame, tmp: str, sep: str, gz: bool, chunk: int, tick) -> None:
    opener = gzip.open if gz else open
    with opener(tmp, "wt", newline="") as fh:
        for start in range(0, max(len(table), 1), chunk):
            part = table.iloc[start : start + chunk]
            part.to_csv(fh, sep=sep, index=False, header=start == 0, float_format="%.6g")
            tick(min(start + chunk, len(table)))


def write_ccf_cells(
    cells: CcfCells,
    out,
    *,
    inputs: Iterable = (),
    chunk_rows: int = CHUNK_ROWS,
    progress: ProgressFn | None = None,
    cancel=None,
) -> list[Path]:
    """Write the table to ``out`` and ``<stem>.json`` beside it (both atomically: a
    temporary file in the target folder, then a rename; a cancelled write leaves
    nothing). Refuses ``inputs`` and the sections' own files. ``progress`` once per
    ``chunk_rows`` rows written. Returns both paths."""
    path = check_export(
        out, format=cells.format, units=cells.units, inputs=[*inputs, *cells.sources]
    )
    if path.is_dir():
        raise BrainAtlasInputError(f"the output {path} is a folder, not a file")
    name = path.name.lower()
    chunk = max(int(chunk_rows), 1)
    n_chunks = max(1, math.ceil(len(cells.table) / chunk))

    def tick(done_rows: int) -> None:
        k = math.ceil(done_rows / chunk) if done_rows else 1
        report(progress, k, n_chunks, rows=done_rows, message=f"wrote {done_rows:,} rows")
        check_cancel(cancel)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        check_cancel(cancel)
        sep = "\t" if name.endswith(".tsv") else ","
        _write_rows(cells.table, tmp, sep, name.endswith(".gz"), chunk, tick)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    cells.path = path
    from ..io import atomic_write_text
    from ..io.ccf_export import ORIENTATION

    return [
        path,
        atomic_write_text(json.dumps(_info(cells, ORIENTATION), indent=1), _sidecar(path)),
    ]


def _info(cells: CcfCells, orientation: str) -> dict:
    info: dict = {"rows": cells.rows, "sections": dict(zip(cells.names, cells.counts))}
    suf = "um" if cells.units == "um" else "vox"
    if cells.format in ("both", "brainglobe"):
        info["orientation"] = orientation
        info["axes"] = {
            f"ap_{suf}": "axis 0, anterior -> posterior",
            f"si_{suf}": "axis 1, superior -> inferior",
            f"rl_{suf}": "axis 2, right -> left (BrainGlobe asr)",
        }
        info["units"] = (
            "micrometres" if cells.units == "um" else f"voxels of {cells.resolution_um:g} um"
        )
    if cells.format in ("both", "abc"):
        info["abc_columns"] = "x_ccf, y_ccf, z_ccf: millimetres along CCF axes AP, DV, ML"
    info["atlas"] = cells.atlas
    info["source"] = "napari-brainatlas obsm['ccf_coords'] (CCF um, AP/DV/ML)"
    if cells.skipped:
        info["left_out"] = {c: "non-finite values" for c in cells.skipped}
    return info


def export_ccf(
    sections,
    out,
    *,
    format: str = "both",
    units: str = "um",
    atlas=None,
    extra_obs: Sequence[str] = (),
    inputs: Iterable = (),
    chunk_rows: int = CHUNK_ROWS,
    progress: ProgressFn | None = None,
    cancel=None,
) -> CcfCells:
    """:func:`ccf_cells` then :func:`write_ccf_cells`; ``progress`` over both (one unit
    per section, then one per ``chunk_rows`` rows written). Returns the table with
    ``path`` set."""
    inputs = list(inputs)
    check_export(out, format=format, units=units, inputs=inputs)
    sections = as_sections(sections)
    cells = ccf_cells(
        sections,
        format=format,
        units=units,
        atlas=atlas,
        extra_obs=extra_obs,
        progress=relay(progress, extra=1),  # the chunks are counted once the table is
        cancel=cancel,
    )
    write_ccf_cells(
        cells,
        out,
        inputs=inputs,
        chunk_rows=chunk_rows,
        progress=relay(progress, offset=len(sections)),
        cancel=cancel,
    )
    return cells
