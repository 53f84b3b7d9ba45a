"""Per-cell CCF coordinates as a table, in the BrainGlobe convention and with the Allen
Brain Cell (ABC) Atlas columns, so other tools read them without a conversion script.

Our cells carry ``obsm['ccf_coords']``: CCF micrometres in (AP, DV, ML) order, origin
at the annotation volume's anterior-dorsal corner (../shared/docs/conventions.md); they
are the volume's own axes 0, 1, 2 times its resolution.

**BrainGlobe** (brainglobe-atlasapi, brainglobe-space): an atlas volume's orientation is
the three-letter origin string of its axes 0, 1, 2; every BrainGlobe atlas, the Allen
mouse CCFv3 ones included, is stored ``"asr"``: axis 0 runs from anterior to posterior,
axis 1 from superior to inferior, axis 2 from right to left, origin at the
anterior-superior-right corner (https://brainglobe.info/documentation/setting-up/
image-definition.html; ``BrainGlobeAtlas.orientation``). The CCFv3 volume is used by
BrainGlobe as it is, so our (AP, DV, ML) are BrainGlobe's asr axes unchanged. The columns
``ap``, ``si``, ``rl`` (suffix ``_um``: micrometres, as ``BrainGlobeAtlas``'s
``structure_from_coords(..., microns=True)`` takes them; suffix ``_vox``: voxels of the
atlas resolution, whose integer part indexes ``BrainGlobeAtlas.annotation``) are axes
0, 1, 2.

**ABC atlas** (Allen Brain Cell Atlas, abc_atlas_access): the CCF coordinates of its
MERFISH cells (``MERFISH-C57BL6J-638850-CCF`` and ``Zhuang-ABCA-*-CCF`` metadata,
``ccf_coordinates.csv``) are columns ``x``, ``y``, ``z`` in millimetres, which its
tutorial (notebooks/merfish_ccf_registration_tutorial.ipynb) renames ``x_ccf``,
``y_ccf``, ``z_ccf``; x runs along the CCF volume's first axis (anterior to posterior),
y along the second (dorsal to ventral), z along the third (medio-lateral), origin at the
volume's corner. So ``x_ccf, y_ccf, z_ccf = AP, DV, ML / 1000``.

Each row also names its section and cell and, where the section has them, the CCF
structure (``ccf_id``, ``ccf_acronym``). A JSON file beside the table states the
orientation, units and atlas.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import BrainAtlasInputError

__all__ = ["ORIENTATION", "ccf_table", "write_ccf_table"]

#: BrainGlobe orientation string of the exported axes
ORIENTATION = "asr"


def _registered(ad: AnnData) -> np.ndarray:
    c = ad.obsm["ccf_coords"] if "ccf_coords" in ad.obsm else None
    if c is None:
        return np.zeros(0, dtype=np.int64)
    c = np.asarray(c, dtype=float)
    if c.ndim != 2 or c.shape[1] != 3:
        raise BrainAtlasInputError("obsm['ccf_coords'] must be an (n, 3) array")
    return np.flatnonzero(np.isfinite(c).all(axis=1))


def ccf_table(
    sections: list[AnnData],
    *,
    units: str = "um",
    resolution_um: float | None = None,
    extra_obs: tuple[str, ...] = (),
) -> pd.DataFrame:
    """One row per registered cell (finite ``obsm['ccf_coords']``) of ``sections``.

    Columns: ``section``, ``cell_id``, BrainGlobe asr axes ``ap_<u>``, ``si_<u>``,
    ``rl_<u>`` (``u`` = ``um`` or ``vox``: ``units='voxel'`` needs ``resolution_um``),
    ABC atlas ``x_ccf``, ``y_ccf``, ``z_ccf`` (mm), then ``ccf_id``/``ccf_acronym`` and
    ``extra_obs`` columns where sections have them. Cells without a CCF position are left
    out."""
    if units not in ("um", "voxel"):
        raise BrainAtlasInputError(f"units must be 'um' or 'voxel', not {units!r}")
    if units == "voxel" and not (resolution_um and resolution_um > 0):
        raise BrainAtlasInputError("voxel units need the atlas resolution (resolution_um)")
    parts = []
    for i, ad in enumerate(sections):
        rows = _registered(ad)
        if len(rows) == 0:
            continue
        meta = ad.uns.get("napari_brainatlas")
        name = meta.get("section") if isinstance(meta, dict) else None
        c = np.asarray(ad.obsm["ccf_coords"], dtype=np.float64)[rows]
        scale = 1.0 if units == "um" else 1.0 / float(resolution_um)
        suf = "um" if units == "um" else "vox"
        df = pd.DataFrame(
            {
                "section": str(name or f"section {i + 1}"),
                "cell_id": np.asarray(ad.obs_names)[rows].astype(str),
                f"ap_{suf}": c[:, 0] * scale,
                f"si_{suf}": c[:, 1] * scale,
                f"rl_{suf}": c[:, 2] * scale,
                "x_ccf": c[:, 0] / 1000.0,
                "y_ccf": c[:, 1] / 1000.0,
                "z_ccf": c[:, 2] / 1000.0,
            }
        )
        for col in ("ccf_id", "ccf_acronym", *extra_obs):
            if col in ad.obs.columns and col not in df.columns:
                df[col] = ad.obs[col].to_numpy()[rows]
        parts.append(df)
    if not parts:
        raise BrainAtlasInputError(
            "no section has registered cells (obsm['ccf_coords']); register sections first"
        )
    out = pd.concat(parts, ignore_index=True)
    if "ccf_id" in out.columns:
        out["ccf_id"] = pd.to_numeric(out["ccf_id"], errors="coerce").fillna(0).astype(np.int64)
    return out


def write_ccf_table(
    sections: list[AnnData],
    path: str | Path,
    *,
    units: str = "um",
    resolution_um: float | None = None,
    atlas_name: str | None = None,
    extra_obs: tuple[str, ...] = (),
) -> Path:
    """Write :func:`ccf_table` to ``path`` (``.csv``, ``.csv.gz`` or ``.tsv``),
    atomically, with ``<path stem>.json`` beside it stating orientation, units and atlas.
    Never writes over a section's input file."""
    out = Path(path)
    name = out.name.lower()
    if not name.endswith((".csv", ".csv.gz", ".tsv")):
        raise BrainAtlasInputError(f"the export must be .csv, .csv.gz or .tsv, not {out.name}")
    for ad in sections:
        meta = ad.uns.get("napari_brainatlas")
        src = meta.get("source") if isinstance(meta, dict) else None
        if src and Path(src).exists() and Path(src).resolve() == out.resolve():
            raise BrainAtlasInputError(f"refusing to overwrite the input file {out.name}")
    table = ccf_table(sections, units=units, resolution_um=resolution_um, extra_obs=extra_obs)
    out.parent.mkdir(parents=True, exist_ok=True)
    sep = "\t" if name.endswith(".tsv") else ","
    suffix = ".csv.gz" if name.endswith(".gz") else out.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".tmp{suffix}", dir=out.parent)
    os.close(fd)
    try:
        table.to_csv(tmp, sep=sep, index=False, float_format="%.6g")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    stem = out.name[: -len(".csv.gz")] if name.endswith(".csv.gz") else out.stem
    suf = "um" if units == "um" else "vox"
    info = {
        "rows": int(len(table)),
        "orientation": ORIENTATION,
        "axes": {
            f"ap_{suf}": "axis 0, anterior -> posterior",
            f"si_{suf}": "axis 1, superior -> inferior",
            f"rl_{suf}": "axis 2, right -> left (BrainGlobe asr)",
        },
        "units": "micrometres" if units == "um" else f"voxels of {resolution_um:g} um",
        "abc_columns": "x_ccf, y_ccf, z_ccf: millimetres along CCF axes AP, DV, ML",
        "atlas": atlas_name,
        "source": "napari-brainatlas obsm['ccf_coords'] (CCF um, AP/DV/ML)",
    }
    from .writers import atomic_write_text

    atomic_write_text(json.dumps(info, indent=1), out.with_name(stem + ".json"))
    return out
