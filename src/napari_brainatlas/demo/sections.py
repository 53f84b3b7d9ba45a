"""Demo sections cut from the demo atlas, with the ground truth kept.

Each section is a coronal full or hemi section at its own AP position: cells sampled
uniformly inside the slice, a cell type drawn from the region's composition, counts
from :mod:`.expression` on the section's own partial gene panel, a per-section batch
effect (capture efficiency, per-gene factors), and a random rotation, tissue scale,
optional mirroring and offset into the section's own pixel frame.

Ground truth per section:

* ``obsm['ccf_coords_true']`` (n, 3) AP, DV, ML um; ``obs['ccf_id_true']``,
  ``obs['ccf_acronym_true']``; ``obs['region']`` (major division), ``obs['region_fine']``;
  ``obs['celltype']``, ``obs['celltype_main']``;
* ``uns['demo_truth']``: ``plane, position_um, hemisphere, rotation_deg, scale, mirrored,
  pixel_size_um, affine`` (3x3, section um -> atlas slice um), ``midline`` (2x2 section
  um, a dorsal then a ventral point on the true midline / cut edge), ``capture``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from ..atlas import Atlas, make_demo_atlas
from ..atlas.demo_atlas import DEMO_MAJOR_DIVISIONS
from ..io.readers import normalise_section
from .expression import CELL_TYPES, COMPOSITION, ExpressionModel, sample_counts

__all__ = ["CORE_GENES", "DEFAULT_SECTIONS", "make_demo_sections"]

#: (name, AP um, hemisphere, mirrored)
DEFAULT_SECTIONS = (
    ("S1_full_AP2600", 2600.0, "both", False),
    ("S2_left_AP3600", 3600.0, "left", False),
    ("S3_full_AP4800", 4800.0, "both", False),
    ("S4_right_AP5600", 5600.0, "right", True),
    ("S5_full_AP3100", 3100.0, "both", True),
    ("S6_left_AP6300", 6300.0, "left", False),
)
#: genes every demo panel measures (the rest are drawn per section)
CORE_GENES = (
    "Slc17a7",
    "Gad1",
    "Snap25",
    "Gfap",
    "Mbp",
    "Cux2",
    "Fezf2",
    "Drd1",
    "Tcf7l2",
    "Prox1",
    "Cldn5",
    "Cx3cr1",
    "Emx1",
    "Pdgfra",
    "Pvalb",
    "Otp",
)
PANEL_FRACTION = 0.55


def _major_division(atlas: Atlas, ids: np.ndarray) -> np.ndarray:
    onto = atlas.ontology
    majors = {onto.id_of(a) for a in DEMO_MAJOR_DIVISIONS if a in onto._by_acronym}

    def major(sid: int) -> str:
        for p in reversed(onto.path(sid)):
            if p in majors:
                return onto.acronym(p)
        return onto.acronym(sid)

    return onto.map_ids(ids, major).astype(str)


def _transform(rng, mirrored: bool) -> tuple[np.ndarray, float, float]:
    theta = rng.uniform(-180, 180)
    scale = rng.uniform(0.9, 1.1)
    c, s = np.cos(np.deg2rad(theta)), np.sin(np.deg2rad(theta))
    M = scale * np.array([[c, -s], [s, c]])
    if mirrored:
        M = M @ np.diag([-1.0, 1.0])
    return M, theta, scale


def _sample_cells(rng, sl, cells_per_mm2: float) -> np.ndarray:
    """Cell positions (n, 2) atlas slice um, uniform inside the slice's tissue; n is
    Poisson with mean area x density (at least 10)."""
    res = sl.resolution_um
    rr, cc = np.nonzero(sl.labels)
    area_mm2 = rr.size * (res / 1000) ** 2
    n = max(int(rng.poisson(area_mm2 * cells_per_mm2)), 10)
    pick = rng.integers(0, rr.size, n)
    return np.column_stack([cc[pick] + rng.random(n), rr[pick] + rng.random(n)]) * res


def _cell_types(rng, fine: np.ndarray) -> np.ndarray:
    """A cell type per cell, drawn from its fine region's composition."""
    ctype = np.empty(len(fine), dtype=object)
    for reg in np.unique(fine):
        sel = np.flatnonzero(fine == reg)
        comp = COMPOSITION.get(reg, COMPOSITION["TH"])
        names = list(comp)
        p = np.array([comp[t] for t in names], float)
        ctype[sel] = np.array(names, dtype=object)[rng.choice(len(names), sel.size, p=p / p.sum())]
    return ctype


def _panel_counts(rng, model: ExpressionModel, atlas: Atlas, ctype, major, ccf):
    """The section's gene panel (the core genes and a random part of the rest) and its
    counts with the section's batch effect; returns (panel, counts, capture)."""
    types = list(CELL_TYPES)
    genes = np.array(model.genes)
    tidx = np.array([types.index(t) for t in ctype])
    ap01 = ccf[:, 0] / atlas.shape_um[0]
    dv01 = ccf[:, 1] / atlas.shape_um[1]
    core = set(CORE_GENES)
    rest = [g for g in genes if g not in core]
    chosen = rng.random(len(rest)) < PANEL_FRACTION
    panel = [g for g in genes if g in core or (g in rest and chosen[rest.index(g)])]
    gi = np.array([model.gidx[g] for g in panel])
    capture = rng.uniform(0.5, 1.6)
    gene_batch = np.exp(rng.normal(0, 0.5, len(panel)))
    size = np.exp(rng.normal(0, 0.3, len(ctype)))
    mean = np.exp(model.log_mean(tidx, major, ap01, dv01)[:, gi])
    mean *= (capture * size)[:, None] * gene_batch[None, :]
    return panel, sample_counts(rng, mean), capture


def _section_frame(rng, sl, xy_atlas: np.ndarray, hemi: str, mirrored: bool) -> dict:
    """Into the section's own frame: rotation, tissue scale, mirror, offset, pixels.
    Returns the cells' section um ``xy``, ``pixel_size``, ``rotation_deg``, ``scale``,
    ``affine`` (section um -> atlas slice um) and ``midline`` (section um)."""
    res = sl.resolution_um
    M, theta, scale = _transform(rng, mirrored)
    centre = xy_atlas.mean(axis=0)
    offset = rng.uniform(1000, 6000, 2)
    xy_sec_um = (xy_atlas - centre) @ M.T + offset
    pixel_size = float(rng.choice([0.108, 0.5, 1.0, 2.0]))
    fwd = np.eye(3)
    fwd[:2, :2] = M
    fwd[:2, 2] = offset - M @ centre
    mid_x = sl.midline_x_um
    col = int(mid_x // res) - (1 if hemi == "left" else 0)
    rows = np.flatnonzero(sl.labels[:, min(max(col, 0), sl.shape[1] - 1)])
    mid_atlas = np.array([[mid_x, rows.min() * res], [mid_x, (rows.max() + 1) * res]])
    return {
        "xy": xy_sec_um,
        "pixel_size": pixel_size,
        "rotation_deg": float(theta),
        "scale": float(scale),
        "affine": np.linalg.inv(fwd),
        "midline": (mid_atlas - centre) @ M.T + offset,
    }


def make_demo_sections(
    seed: int = 0,
    n_sections: int = 4,
    cells_per_mm2: float = 400.0,
    atlas: Atlas | None = None,
) -> list[AnnData]:
    """Generate ``n_sections`` demo sections (deterministic for ``seed``).

    Parameters
    ----------
    cells_per_mm2 : cell density; 400 gives about 9,000 cells on a full section.
    atlas : the atlas to cut from (default the demo atlas).

    Returns a list of AnnData in the conventions of :mod:`napari_brainatlas.io`
    (``obsm['spatial']`` in um, integer counts in ``layers['counts']``).
    """
    atlas = atlas or make_demo_atlas()
    rng = np.random.default_rng(seed)
    model = ExpressionModel(seed)
    specs = [DEFAULT_SECTIONS[i % len(DEFAULT_SECTIONS)] for i in range(n_sections)]
    out = []
    for k, (name, ap, hemi, mirrored) in enumerate(specs):
        if k >= len(DEFAULT_SECTIONS):
            name = f"{name}_{k}"
        sl = atlas.slice("coronal", ap, hemisphere=hemi)
        xy_atlas = _sample_cells(rng, sl, cells_per_mm2)
        ids = sl.labels_at(xy_atlas)
        fine = atlas.ontology.acronyms(ids)
        major = _major_division(atlas, ids)
        ctype = _cell_types(rng, fine)
        ccf = sl.to_3d(xy_atlas)
        panel, counts, capture = _panel_counts(rng, model, atlas, ctype, major, ccf)
        frame = _section_frame(rng, sl, xy_atlas, hemi, mirrored)
        pixel_size = frame["pixel_size"]
        obs = pd.DataFrame(
            {
                "x": frame["xy"][:, 0] / pixel_size,
                "y": frame["xy"][:, 1] / pixel_size,
                "celltype": pd.Categorical(ctype.astype(str)),
                "celltype_main": pd.Categorical([CELL_TYPES[t][0] for t in ctype]),
                "region": pd.Categorical(major),
                "region_fine": pd.Categorical(fine),
                "ccf_id_true": ids.astype(np.int64),
                "ccf_acronym_true": pd.Categorical(fine),
            },
            index=[f"{name}_c{i}" for i in range(len(ids))],
        )
        adata = AnnData(X=counts, obs=obs, var=pd.DataFrame(index=pd.Index(panel)))
        adata.obsm["ccf_coords_true"] = ccf
        adata.uns["pixel_size_um"] = pixel_size
        adata.uns["demo_truth"] = {
            "atlas": atlas.name,
            "plane": "coronal",
            "position_um": float(ap),
            "hemisphere": hemi,
            "rotation_deg": frame["rotation_deg"],
            "scale": frame["scale"],
            "mirrored": bool(mirrored),
            "pixel_size_um": pixel_size,
            "affine": frame["affine"],
            "midline": frame["midline"],
            "capture": float(capture),
            "seed": int(seed),
        }
        out.append(
            normalise_section(
                adata,
                source=f"demo(seed={seed})",
                section=name,
                fmt="demo",
                pixel_size_um=pixel_size,
            )
        )
    return out
