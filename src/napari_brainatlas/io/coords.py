"""Where a section's cell coordinates are, the obs columns that name sections, and the
pixel size a file states (used by the readers and by the backed reader)."""

from __future__ import annotations

import numpy as np
from anndata import AnnData

from .._errors import BrainAtlasInputError

__all__ = ["COORD_PAIRS", "SECTION_KEYS", "find_coordinates", "is_visium", "pixel_size_from_file"]

#: obs columns that name the section of each cell in multi-section files
SECTION_KEYS = ("section", "slice", "brain_section_label", "section_id", "slice_id")
COORD_PAIRS = (
    ("x", "y"),
    ("center_x", "center_y"),
    ("X", "Y"),
    ("x_um", "y_um"),
    ("xcoord", "ycoord"),
    ("imagecol", "imagerow"),
)


def find_coordinates(adata: AnnData) -> tuple[np.ndarray, str]:
    """Locate cell coordinates: obsm['spatial'] first, then obs column pairs.

    Returns the (n, 2) array in the file's units and where it was found.
    """
    for key in ("spatial", "X_spatial", "spatial_um"):
        if key in adata.obsm:
            xy = np.asarray(adata.obsm[key])
            if xy.ndim == 2 and xy.shape[1] >= 2:
                return _as_float_xy(xy[:, :2], f"obsm['{key}']"), f"obsm['{key}']"
    cols = set(adata.obs.columns)
    for cx, cy in COORD_PAIRS:
        if cx in cols and cy in cols:
            xy = np.column_stack([adata.obs[cx].to_numpy(), adata.obs[cy].to_numpy()])
            return _as_float_xy(xy, f"obs {cx}/{cy}"), f"obs['{cx}'], obs['{cy}']"
    raise BrainAtlasInputError(
        "no cell coordinates found (looked for obsm['spatial'] and obs x/y, center_x/center_y, X/Y)"
    )


def _as_float_xy(xy: np.ndarray, where: str) -> np.ndarray:
    try:
        return np.asarray(xy, dtype=np.float64)
    except (TypeError, ValueError):
        raise BrainAtlasInputError(f"coordinates in {where} are not numeric") from None


def pixel_size_from_file(adata: AnnData) -> float:
    meta = adata.uns.get("napari_brainatlas")
    if isinstance(meta, dict) and "coords_from" in meta and "spatial" in adata.obsm:
        return 1.0  # written by this package: obsm['spatial'] is already in um
    if "pixel_size_um" in adata.uns:
        return float(adata.uns["pixel_size_um"])
    # Visium: spots are 55 um across
    spatial = adata.uns.get("spatial")
    if isinstance(spatial, dict):
        for lib in spatial.values():
            sf = lib.get("scalefactors", {}) if isinstance(lib, dict) else {}
            if "spot_diameter_fullres" in sf and float(sf["spot_diameter_fullres"]) > 0:
                return 55.0 / float(sf["spot_diameter_fullres"])
    return 1.0


def is_visium(adata: AnnData) -> bool:
    spatial = adata.uns.get("spatial")
    return isinstance(spatial, dict) and any(
        isinstance(v, dict) and "scalefactors" in v for v in spatial.values()
    )
