"""One Atlas type for every source: the demo atlas, a local Allen .nrrd + ontology,
or a BrainGlobe atlas by name.

Conventions (../shared/docs/conventions.md): the annotation volume is indexed
(AP, DV, ML); voxel ``i`` covers ``[i * res, (i + 1) * res)`` micrometres, so the CCF
coordinate origin is the anterior-dorsal-left corner of the volume.

A 2D slice is an image whose rows run dorsal -> ventral and whose columns run along the
in-plane horizontal axis: ML for coronal slices, AP for sagittal slices. In-plane
coordinates are ``(x, y)`` micrometres with ``x`` = column axis and ``y`` = DV, the same
frame ``uns['ccf_registration'][...]['affine']`` maps section micrometres into.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .._errors import BrainAtlasInputError
from .demo_atlas import demo_ontology, demo_volume
from .ontology import Ontology

__all__ = ["HEMISPHERES", "PLANES", "Atlas", "AtlasSlice"]

PLANES = ("coronal", "sagittal")
HEMISPHERES = ("both", "left", "right")


@dataclass
class AtlasSlice:
    """A 2D annotation slice of an :class:`Atlas` and how it sits in 3D.

    Attributes
    ----------
    labels : (H, W) int array of structure ids (0 outside the brain, and on the other
        side of the midline for a hemi slice). Rows = DV, columns = ML (coronal) or AP
        (sagittal), each ``resolution_um`` wide.
    plane, position_um : the cutting plane and its position (AP um for coronal, ML um
        for sagittal) at the centre of the slice.
    angles_deg : (a_x, a_y) cutting angles: the out-of-plane coordinate changes by
        ``tan(a_x)`` um per um along x and ``tan(a_y)`` per um along y, about the centre.
    """

    labels: np.ndarray
    resolution_um: float
    plane: str
    position_um: float
    hemisphere: str = "both"
    angles_deg: tuple[float, float] = (0.0, 0.0)
    midline_x_um: float | None = None
    atlas_name: str = ""
    centre_um: tuple[float, float] = field(default=(0.0, 0.0))

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape  # type: ignore[return-value]

    @property
    def extent_um(self) -> tuple[float, float]:
        """(width, height) of the slice in micrometres."""
        return self.labels.shape[1] * self.resolution_um, self.labels.shape[0] * self.resolution_um

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0

    def labels_at(self, xy_um: np.ndarray) -> np.ndarray:
        """Structure id under each in-plane point ``(n, 2)`` (x, y) um; 0 outside."""
        xy = np.asarray(xy_um, dtype=float)
        col = np.floor(xy[:, 0] / self.resolution_um).astype(np.int64)
        row = np.floor(xy[:, 1] / self.resolution_um).astype(np.int64)
        ok = (row >= 0) & (row < self.shape[0]) & (col >= 0) & (col < self.shape[1])
        out = np.zeros(len(xy), dtype=np.int64)
        out[ok] = self.labels[row[ok], col[ok]]
        return out

    def to_3d(self, xy_um: np.ndarray) -> np.ndarray:
        """In-plane (x, y) um -> CCF (AP, DV, ML) um, shape (n, 3)."""
        xy = np.asarray(xy_um, dtype=float).reshape(-1, 2)
        ax, ay = np.tan(np.deg2rad(self.angles_deg))
        depth = (
            self.position_um
            + ax * (xy[:, 0] - self.centre_um[0])
            + ay * (xy[:, 1] - self.centre_um[1])
        )
        if self.plane == "coronal":
            return np.column_stack([depth, xy[:, 1], xy[:, 0]])
        return np.column_stack([xy[:, 0], xy[:, 1], depth])

    def pixel_to_um(self, rc: np.ndarray) -> np.ndarray:
        """(row, col) pixel indices -> (x, y) um of the pixel centres."""
        rc = np.asarray(rc, dtype=float)
        return np.column_stack([(rc[:, 1] + 0.5), (rc[:, 0] + 0.5)]) * self.resolution_um


class Atlas:
    """An annotated brain volume with its ontology.

    Parameters
    ----------
    annotation : (AP, DV, ML) integer array of structure ids, 0 outside the brain.
    resolution_um : isotropic voxel size in micrometres.
    ontology : :class:`Ontology` covering the ids in ``annotation``.
    name, version : what the atlas is called and which release, saved with results.
    source : where it came from: ``"generated"`` (demo), ``"brainglobe"``, or the
        absolute path of the annotation file (then ``ontology_source`` is the path of its
        ontology file); :meth:`spec` gives what :meth:`load` reopens it from.
    """

    def __init__(
        self,
        annotation: np.ndarray,
        resolution_um: float,
        ontology: Ontology,
        name: str = "atlas",
        version: str = "",
        source: str = "",
        ontology_source: str = "",
    ):
        annotation = np.asarray(annotation)
        if annotation.ndim != 3:
            raise BrainAtlasInputError("an atlas annotation must be a 3D (AP, DV, ML) volume")
        if not np.issubdtype(annotation.dtype, np.integer):
            raise BrainAtlasInputError("an atlas annotation must hold integer structure ids")
        self.annotation = annotation
        self.resolution_um = float(resolution_um)
        self.ontology = ontology
        self.name = name
        self.version = version
        self.source = source
        self.ontology_source = ontology_source

    def __repr__(self) -> str:
        return (
            f"Atlas({self.name!r}, shape={self.annotation.shape}, "
            f"resolution_um={self.resolution_um}, structures={len(self.ontology)})"
        )

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        return self.annotation.shape  # type: ignore[return-value]

    @property
    def shape_um(self) -> np.ndarray:
        """(AP, DV, ML) extent in micrometres."""
        return np.array(self.shape, dtype=float) * self.resolution_um

    @property
    def midline_ml_um(self) -> float:
        """ML position of the midline (the volume's ML centre), um."""
        return self.shape_um[2] / 2.0

    def position_range_um(self, plane: str) -> tuple[float, float]:
        """(first, last) um of the volume along the plane's axis (AP for coronal, ML for
        sagittal), tissue or not."""
        axis = 0 if plane == "coronal" else 2
        return 0.0, float(self.shape_um[axis])

    def tissue_range_um(self, plane: str) -> tuple[float, float]:
        """(first, last) um along the plane's axis between which the annotation has
        tissue (the outer faces of the first and last voxel layers with any): planes
        outside it are empty. Computed once per axis."""
        axis = 0 if plane == "coronal" else 2
        cache = self.__dict__.setdefault("_tissue_range", {})
        if axis not in cache:
            other = tuple(i for i in range(3) if i != axis)
            have = np.flatnonzero(np.any(np.asarray(self.annotation) > 0, axis=other))
            if len(have) == 0:
                raise BrainAtlasInputError("the atlas annotation holds no tissue")
            cache[axis] = (
                float(have[0] * self.resolution_um),
                float((have[-1] + 1) * self.resolution_um),
            )
        return cache[axis]

    def structure_at(self, ccf_um: np.ndarray) -> np.ndarray:
        """Structure id at each CCF point (n, 3) (AP, DV, ML) um; 0 outside the volume."""
        p = np.asarray(ccf_um, dtype=float).reshape(-1, 3)
        idx = np.floor(p / self.resolution_um).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < np.array(self.shape)), axis=1)
        out = np.zeros(len(p), dtype=np.int64)
        out[ok] = self.annotation[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        return out

    # ------------------------------------------------------------------ slices
    def slice(
        self,
        plane: str = "coronal",
        position_um: float | None = None,
        hemisphere: str = "both",
        angles_deg: tuple[float, float] = (0.0, 0.0),
    ) -> AtlasSlice:
        """The annotation on a plane.

        Parameters
        ----------
        plane : "coronal" (fixed AP) or "sagittal" (fixed ML).
        position_um : AP (coronal) or ML (sagittal) position in um; default the centre.
        hemisphere : "both", "left" (ML below the midline) or "right"; the other side is
            set to 0 (coronal only; a sagittal slice lies in one hemisphere already).
        angles_deg : cutting angles (see :class:`AtlasSlice`); (0, 0) is an exact plane.
        """
        if plane not in PLANES:
            raise BrainAtlasInputError(f"plane must be one of {PLANES}, not {plane!r}")
        if hemisphere not in HEMISPHERES:
            raise BrainAtlasInputError(
                f"hemisphere must be one of {HEMISPHERES}, not {hemisphere!r}"
            )
        lo, hi = self.position_range_um(plane)
        if position_um is None:
            position_um = (lo + hi) / 2
        position_um = float(position_um)
        if not (lo <= position_um < hi):
            raise BrainAtlasInputError(
                f"{plane} position {position_um:.0f} um is outside the atlas "
                f"({lo:.0f} to {hi:.0f} um)"
            )
        res = self.resolution_um
        ax_out = 0 if plane == "coronal" else 2
        ax_x = 2 if plane == "coronal" else 0
        H, W = self.shape[1], self.shape[ax_x]
        centre = (W * res / 2.0, H * res / 2.0)
        a = tuple(float(v) for v in angles_deg)
        if a == (0.0, 0.0):
            i = int(np.floor(position_um / res))
            # basic indexing (a view): np.take copies the whole Fortran-ordered volume
            labels = self.annotation[i] if ax_out == 0 else self.annotation[:, :, i]
            if plane == "sagittal":
                labels = labels.T  # (AP, DV) -> (DV, AP)
            labels = np.array(labels, order="C", copy=True)
        else:
            rows, cols = np.mgrid[0:H, 0:W]
            x = (cols + 0.5) * res
            y = (rows + 0.5) * res
            tx, ty = np.tan(np.deg2rad(a))
            depth = position_um + tx * (x - centre[0]) + ty * (y - centre[1])
            coords = np.empty((3, H, W))
            coords[ax_out] = depth / res - 0.5
            coords[1] = rows
            coords[ax_x] = cols
            labels = ndi.map_coordinates(
                self.annotation, coords, order=0, mode="constant", cval=0
            ).astype(self.annotation.dtype)
        midline_x = self.midline_ml_um if plane == "coronal" else None
        if plane == "coronal" and hemisphere != "both":
            labels = labels.copy()
            mid_col = int(np.rint(self.midline_ml_um / res))
            if hemisphere == "left":
                labels[:, mid_col:] = 0
            else:
                labels[:, :mid_col] = 0
        return AtlasSlice(
            labels=labels,
            resolution_um=res,
            plane=plane,
            position_um=position_um,
            hemisphere=hemisphere,
            angles_deg=a,
            midline_x_um=midline_x,
            atlas_name=self.name,
            centre_um=centre,
        )

    # ------------------------------------------------------------------ loading
    def spec(self) -> tuple[str, str]:
        """``(spec, ontology)`` that :meth:`load` reopens this atlas from: the annotation
        file and its ontology file (absolute paths) for an atlas read from files, else
        ``(name, "")`` (``"demo"``, a BrainGlobe name)."""
        if self.source and self.source not in ("generated", "brainglobe"):
            return str(self.source), str(self.ontology_source or "")
        return str(self.name), ""

    @classmethod
    def load(cls, spec: str | Path, ontology: str | Path | None = None) -> Atlas:
        """Open an atlas by spec: ``"demo"``, a path to an Allen ``.nrrd`` annotation (with
        ``ontology`` a .csv structure tree or .json structure graph), or a BrainGlobe name
        such as ``allen_mouse_25um``."""
        spec_s = str(spec)
        if spec_s == "demo":
            return make_demo_atlas()
        path = Path(spec_s)
        if path.suffix.lower() == ".nrrd" or path.exists():
            return cls.from_nrrd(path, ontology)
        if "/" in spec_s or "\\" in spec_s:
            raise BrainAtlasInputError(f"atlas file not found: {spec_s}")
        return cls.from_brainglobe(spec_s)

    @classmethod
    def from_nrrd(cls, path: str | Path, ontology: str | Path | None) -> Atlas:
        path = Path(path)
        if not path.exists():
            raise BrainAtlasInputError(f"atlas file not found: {path}")
        if ontology is None:
            ontology = _find_ontology_beside(path)
        onto = Ontology.from_file(ontology)
        vol, res = _read_nrrd_cached(str(path.resolve()), path.stat().st_mtime)
        return cls(
            vol,
            res,
            onto,
            name=path.stem,
            version=_file_version(path),
            source=str(path.resolve()),
            ontology_source=str(Path(ontology).resolve()),
        )

    @classmethod
    def from_brainglobe(cls, name: str) -> Atlas:
        try:
            from brainglobe_atlasapi import BrainGlobeAtlas
        except ImportError:
            raise BrainAtlasInputError(
                f"unknown atlas {name!r}: not 'demo', not a file, and brainglobe-atlasapi "
                "is not installed (pip install brainglobe-atlasapi)"
            ) from None
        try:
            from brainglobe_atlasapi.list_atlases import get_all_atlases_lastversions

            known = None
            try:
                known = get_all_atlases_lastversions()
            except Exception:  # noqa: BLE001 - offline: fall back to the local cache
                known = None
            if known is not None and name not in known:
                raise BrainAtlasInputError(f"unknown atlas {name!r}")
            bg = BrainGlobeAtlas(name, check_latest=False)
        except BrainAtlasInputError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BrainAtlasInputError(
                f"atlas {name!r} is not in the BrainGlobe cache and could not be downloaded "
                f"({type(exc).__name__}); use 'demo' or a local .nrrd with --ontology"
            ) from None
        res = float(np.mean(bg.resolution))
        rows = [
            {
                "id": s["id"],
                "acronym": s["acronym"],
                "name": s["name"],
                "parent": s["structure_id_path"][-2] if len(s["structure_id_path"]) > 1 else -1,
                "color": "{:02X}{:02X}{:02X}".format(*tuple(int(v) for v in s["rgb_triplet"])),
            }
            for s in bg.structures.values()
        ]
        import pandas as pd

        ann = np.asarray(bg.annotation)
        return cls(
            ann,
            res,
            Ontology(pd.DataFrame(rows)),
            name=name,
            version=str(bg.metadata.get("version", "")),
            source="brainglobe",
        )


def _find_ontology_beside(path: Path) -> Path:
    cands = list(path.parent.glob("*.csv")) + list(path.parent.glob("*.json"))
    cands += list(path.parent.parent.glob("*ontology*/*.csv"))
    cands += list(path.parent.parent.glob("*ontology*/*.json"))
    for c in cands:
        if "structure" in c.name.lower() or "ontology" in c.name.lower():
            return c
    raise BrainAtlasInputError(
        f"no ontology found for {path.name}: pass one with --ontology (Allen .csv or .json)"
    )


def _file_version(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
    return f"{path.name}:{path.stat().st_size}:{h.hexdigest()[:12]}"


@lru_cache(maxsize=2)
def _read_nrrd_cached(path: str, mtime: float) -> tuple[np.ndarray, float]:
    import nrrd

    try:
        vol, header = nrrd.read(path)
    except Exception as exc:
        raise BrainAtlasInputError(f"cannot read atlas volume {path}: {exc}") from exc
    if vol.ndim != 3:
        raise BrainAtlasInputError(f"atlas volume {path} is not 3D")
    dirs = header.get("space directions")
    res = 25.0
    if dirs is not None:
        d = np.abs(np.asarray(dirs, dtype=float))
        res = float(np.max(d, axis=1).mean())
    elif "spacings" in header:
        res = float(np.mean(header["spacings"]))
    if not np.issubdtype(vol.dtype, np.integer):
        vol = vol.astype(np.int64)
    vol.setflags(write=False)
    return vol, res


def make_demo_atlas(resolution_um: float = 50.0) -> Atlas:
    """Build (or return the cached) demo atlas; deterministic, about a second."""
    vol = demo_volume(float(resolution_um))
    return Atlas(
        vol,
        resolution_um,
        demo_ontology(),
        name="demo",
        version=f"demo-v1-{int(resolution_um)}um",
        source="generated",
    )
