"""Registrations as QuickNII / VisuAlign series files (JSON), for users who carry on in
the QUINT workflow (QuickNII, VisuAlign, DeepSlice, Nutil / PyNutil).

The format
----------
A series file is ``{"name", "target", "target-resolution", "slices": [...]}``; each
slice is ``{"filename", "nr", "width", "height", "anchoring": [ox, oy, oz, ux, uy, uz,
vx, vy, vz]}`` and, from VisuAlign, ``"markers": [[x, y, nx, ny], ...]``.

* The anchoring places the section image in the atlas volume: the image point at
  ``(s, t)`` (fractions of its width and height, from the top-left corner) lies at the
  atlas voxel coordinate ``o + s u + t v``.
* QuickNII's voxel coordinates of the Allen CCFv3 (target
  ``ABA_Mouse_CCFv3_2017_25um.cutlas``, 456 x 528 x 320 voxels of 25 um) are RAS:
  ``x`` left -> right, ``y`` posterior -> anterior, ``z`` inferior -> superior. With
  CCF micrometres (AP, DV, ML) from the volume's anterior-dorsal-left corner:
  ``x = ML / 25``, ``y = 528 - AP / 25``, ``z = 320 - DV / 25`` (voxel ``k`` covers
  ``[k, k + 1)``; the QuickNII authors' own converter maps voxel indices the same way,
  ``AP = (527 - y) * 25``). Registrations to the CCF at any resolution are written on
  this 25 um grid; another atlas is written on its own grid under its own name.
* A VisuAlign marker ``[x, y, nx, ny]`` (image pixels) moves the atlas overlay point
  that the anchoring shows at ``(x, y)`` to ``(nx, ny)``: the section pixel
  ``(nx, ny)`` lies at the atlas position of the linear anchoring's ``(x, y)``.

A section of cells has no image: its *frame* (:class:`SectionFrame`) is the cells'
bounding box (with a margin) cut into square pixels; :func:`write_quicknii` also writes a
PNG of the cells in that frame so QuickNII / VisuAlign can open the series.
"""

from __future__ import annotations

import io as _io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._errors import BrainAtlasInputError
from .writers import atomic_write_bytes

__all__ = [
    "CCF_SHAPE_UM",
    "QUICKNII_CCF_TARGET",
    "SectionFrame",
    "Target",
    "ccf_to_voxel",
    "quicknii_slice",
    "quicknii_target",
    "read_quicknii",
    "section_frame",
    "voxel_to_ccf",
    "write_quicknii",
]

QUICKNII_CCF_TARGET = "ABA_Mouse_CCFv3_2017_25um.cutlas"
#: (AP, DV, ML) extent of the Allen CCFv3 in um
CCF_SHAPE_UM = (13200.0, 8000.0, 11400.0)


@dataclass(frozen=True)
class Target:
    """The voxel grid of a series file: its name, voxel size and (x, y, z) voxels."""

    name: str
    voxel_um: float
    shape_xyz: tuple[int, int, int]

    @property
    def resolution(self) -> list[int]:
        return [int(v) for v in self.shape_xyz]


def quicknii_target(atlas) -> Target:
    """QuickNII's CCFv3 25 um target for an Allen CCFv3 atlas (any resolution), else the
    atlas's own grid under its own name."""
    shape_um = np.asarray(atlas.shape_um, float)
    if np.allclose(shape_um, CCF_SHAPE_UM, rtol=0.01):
        return Target(QUICKNII_CCF_TARGET, 25.0, (456, 528, 320))
    ap, dv, ml = (int(round(v)) for v in atlas.shape)
    return Target(str(atlas.name), float(atlas.resolution_um), (ml, ap, dv))


def ccf_to_voxel(ccf_um, target: Target) -> np.ndarray:
    """(n, 3) CCF um (AP, DV, ML) -> (n, 3) QuickNII voxel coordinates (x, y, z)."""
    c = np.asarray(ccf_um, float).reshape(-1, 3)
    r = target.voxel_um
    _nx, ny, nz = target.shape_xyz
    return np.column_stack([c[:, 2] / r, ny - c[:, 0] / r, nz - c[:, 1] / r])


def voxel_to_ccf(xyz, target: Target) -> np.ndarray:
    """The inverse of :func:`ccf_to_voxel`."""
    q = np.asarray(xyz, float).reshape(-1, 3)
    r = target.voxel_um
    _nx, ny, nz = target.shape_xyz
    return np.column_stack([(ny - q[:, 1]) * r, (nz - q[:, 2]) * r, q[:, 0] * r])


@dataclass(frozen=True)
class SectionFrame:
    """The image a section of cells is given: top-left corner (section um), pixel size
    (um) and size in pixels. Pixel ``(px, py)`` is section um
    ``origin + (px, py) * pixel_um``."""

    origin_um: tuple[float, float]
    pixel_um: float
    width: int
    height: int

    def to_um(self, px) -> np.ndarray:
        return np.asarray(self.origin_um) + np.asarray(px, float).reshape(-1, 2) * self.pixel_um

    def to_px(self, um) -> np.ndarray:
        return (np.asarray(um, float).reshape(-1, 2) - np.asarray(self.origin_um)) / self.pixel_um


def section_frame(xy, pixel_um: float | None = None, max_px: int = 1200) -> SectionFrame:
    """The cells' bounding box with a 3% margin, in square pixels (default: the longer
    side ``max_px`` pixels, at least 1 um each)."""
    xy = np.asarray(xy, float)[:, :2]
    xy = xy[np.isfinite(xy).all(axis=1)]
    if len(xy) == 0:
        raise BrainAtlasInputError("a section without cells cannot be exported")
    lo, hi = xy.min(0), xy.max(0)
    pad = 0.03 * max(float(np.max(hi - lo)), 1.0)
    lo, hi = lo - pad, hi + pad
    size = hi - lo
    px = float(pixel_um) if pixel_um else max(float(size.max()) / max_px, 1.0)
    w, h = (int(np.ceil(v / px)) for v in size)
    return SectionFrame((float(lo[0]), float(lo[1])), px, max(w, 1), max(h, 1))


def _linear_ccf(result, sl, um) -> np.ndarray:
    """Section um -> CCF um through the affine only (no warp)."""
    A = np.asarray(result.affine, float).reshape(3, 3)
    um = np.asarray(um, float).reshape(-1, 2)
    return sl.to_3d(um @ A[:2, :2].T + A[:2, 2])


def _markers(result, frame: SectionFrame, xy, n: int = 6) -> list[list[float]]:
    """VisuAlign markers reproducing the fit's warp at an ``n`` x ``n`` grid of points
    that lie among the cells."""
    from scipy.spatial import cKDTree

    A = np.asarray(result.affine, float).reshape(3, 3)
    gx = (np.arange(n) + 0.5) / n * frame.width
    gy = (np.arange(n) + 0.5) / n * frame.height
    grid = np.array([(x, y) for y in gy for x in gx])
    um = frame.to_um(grid)
    d, _ = cKDTree(xy).query(um)
    keep = d <= 0.5 * frame.pixel_um * max(frame.width, frame.height) / n
    um, grid = um[keep], grid[keep]
    if not len(um):
        return []
    warped = result.transform(um)  # affine then warp, atlas-slice um
    lin_pre = (warped - A[:2, 2]) @ np.linalg.inv(A[:2, :2]).T  # section um, linear
    src = frame.to_px(lin_pre)
    return [[float(a), float(b), float(c), float(e)] for (a, b), (c, e) in zip(src, grid)]


def quicknii_slice(
    result, atlas, xy, *, nr: int = 1, filename: str | None = None, frame=None
) -> dict:
    """One ``slices`` entry for a registered section (``xy``: its cells, section um)."""
    target = quicknii_target(atlas)
    xy = np.asarray(xy, float)[:, :2]
    frame = frame or section_frame(xy)
    sl = result.slice_of(atlas)
    corners = frame.to_um([[0, 0], [frame.width, 0], [0, frame.height]])
    q = ccf_to_voxel(_linear_ccf(result, sl, corners), target)
    o, u, v = q[0], q[1] - q[0], q[2] - q[0]
    name = str(result.section)
    out = {
        "filename": filename or f"{_safe(name)}.png",
        "nr": int(nr),
        "width": int(frame.width),
        "height": int(frame.height),
        "anchoring": [float(x) for x in np.concatenate([o, u, v])],
    }
    if result.warp:
        out["markers"] = _markers(result, frame, xy)
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)) or "section"


def _cells_png(xy, frame: SectionFrame, rgba, path: Path) -> Path:
    """The cells drawn as discs in the frame (white background), atomically."""
    from matplotlib.image import imsave
    from scipy import ndimage as ndi

    img = np.ones((frame.height, frame.width, 3), dtype=float)
    px = np.floor(frame.to_px(xy)).astype(np.int64)
    ok = (px[:, 0] >= 0) & (px[:, 0] < frame.width) & (px[:, 1] >= 0) & (px[:, 1] < frame.height)
    px, col = px[ok], np.asarray(rgba, float)[ok, :3]
    hit = np.zeros((frame.height, frame.width), bool)
    hit[px[:, 1], px[:, 0]] = True
    img[px[:, 1], px[:, 0]] = col
    # grow each cell a little (nearest painted pixel within ~2 pixels)
    d, (ri, ci) = ndi.distance_transform_edt(~hit, return_indices=True)
    grow = d <= 2.0
    img[grow] = img[ri[grow], ci[grow]]
    buf = _io.BytesIO()
    imsave(buf, np.clip(img, 0, 1), format="png")
    return atomic_write_bytes(buf.getvalue(), path)


def write_quicknii(
    path,
    entries,
    atlas,
    *,
    name: str = "napari-brainatlas",
    images: bool = True,
) -> list[Path]:
    """Write a QuickNII / VisuAlign series file to ``path`` (.json) for ``entries``:
    ``(result, xy)`` or ``(result, xy, rgba)`` per section (``rgba``: (n, 4) colours of
    the cells in the PNG; default dark grey). With ``images`` a PNG of each section's
    cells goes beside the file. Returns the paths written (the JSON first)."""
    from .writers import atomic_write_text

    path = Path(path)
    if path.suffix.lower() != ".json":
        raise BrainAtlasInputError(f"a QuickNII series file ends in .json, not {path.name}")
    target = quicknii_target(atlas)
    slices, pngs = [], []
    for i, entry in enumerate(entries):
        result, xy = entry[0], np.asarray(entry[1], float)[:, :2]
        rgba = entry[2] if len(entry) > 2 and entry[2] is not None else None
        frame = section_frame(xy)
        fname = f"{_safe(result.section)}.png"
        slices.append(quicknii_slice(result, atlas, xy, nr=i + 1, filename=fname, frame=frame))
        if images:
            col = rgba if rgba is not None else np.tile([0.25, 0.25, 0.25, 1.0], (len(xy), 1))
            pngs.append(_cells_png(xy, frame, col, path.parent / fname))
    if not slices:
        raise BrainAtlasInputError("no registered section to export")
    doc = {
        "name": str(name),
        "target": target.name,
        "target-resolution": target.resolution,
        "slices": slices,
    }
    return [atomic_write_text(json.dumps(doc, indent=1), path)] + pngs


def read_quicknii(path) -> dict:
    """Read a series file (checks the keys this module writes)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BrainAtlasInputError(f"{p.name} is not a QuickNII series file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("slices"), list):
        raise BrainAtlasInputError(f"{p.name} is not a QuickNII series file (no 'slices')")
    for s in doc["slices"]:
        a = s.get("anchoring") if isinstance(s, dict) else None
        if not isinstance(a, list) or len(a) != 9:
            raise BrainAtlasInputError(f"{p.name}: a slice without a 9-number anchoring")
    return doc
