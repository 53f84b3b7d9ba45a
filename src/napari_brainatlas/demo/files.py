"""Write the demo atlas and sections as files the other commands read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atlas import Atlas, make_demo_atlas
from ..io.writers import atomic_write_text, write_h5ad
from .sections import make_demo_sections

__all__ = ["write_atlas_files", "write_demo_data"]


def write_atlas_files(atlas: Atlas, folder: str | Path) -> dict[str, Path]:
    """Write ``annotation_<res>um.nrrd`` and ``structure_tree.csv`` (Allen columns)."""
    import nrrd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    res = atlas.resolution_um
    vol_path = folder / f"annotation_{int(res)}um.nrrd"
    tmp = folder / f".{vol_path.name}.tmp"
    header = {
        "space directions": np.diag([res, res, res]),
        "encoding": "gzip",
        "space": "left-posterior-superior",
        "kinds": ["domain"] * 3,
    }
    nrrd.write(str(tmp), np.asarray(atlas.annotation, dtype=np.uint32), header)
    tmp.replace(vol_path)
    t = atlas.ontology.to_frame().rename(
        columns={"parent": "parent_structure_id", "color": "color_hex_triplet"}
    )
    t["parent_structure_id"] = t["parent_structure_id"].where(t["parent_structure_id"] >= 0)
    onto_path = atomic_write_text(t.to_csv(index=False), folder / "structure_tree.csv")
    return {"annotation": vol_path, "ontology": onto_path}


def write_demo_data(
    out: str | Path, seed: int = 0, n_sections: int = 4, cells_per_mm2: float = 400.0
) -> dict[str, list[Path] | Path]:
    """Write ``out/sections/<name>.h5ad`` and ``out/atlas/`` (nrrd + ontology csv)."""
    out = Path(out)
    atlas = make_demo_atlas()
    files = write_atlas_files(atlas, out / "atlas")
    paths = []
    for ad in make_demo_sections(
        seed=seed, n_sections=n_sections, cells_per_mm2=cells_per_mm2, atlas=atlas
    ):
        name = ad.uns["napari_brainatlas"]["section"]
        paths.append(write_h5ad(ad, out / "sections" / f"{name}.h5ad"))
    return {"sections": paths, **files}
