"""Surface meshes of atlas regions (for the 3D atlas view), and picking a region in 3D.

A region's mask is every voxel annotated with the region or one of its descendants (the
Allen convention: a structure is the union of its subtree), so a region can be chosen at
any depth of the ontology. The annotation is sampled on a grid of at most
``voxel_um`` (default 50 um, the demo atlas' own resolution; every second voxel of the
25 um CCF), the mask is smoothed with a Gaussian of ``smooth`` grid voxels and its 0.5
level surface is found with scikit-image's marching cubes; when that gives more than
``max_faces`` triangles it is taken on a coarser step (marching cubes' ``step_size``,
first guessed from the number of boundary voxel faces), so every mesh stays light enough to draw many of them translucent in
software OpenGL. Vertices are CCF micrometres (AP, DV, ML) at voxel centres, the frame of
``obsm['ccf_coords']``. Meshes are cached per atlas, region and settings.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .._errors import BrainAtlasInputError, Cancelled

__all__ = [
    "MeshSettings",
    "RegionMesh",
    "region_mesh",
    "region_meshes",
    "regions_at_depth",
    "structure_on_ray",
]


@dataclass(frozen=True)
class MeshSettings:
    """How region surfaces are made (see the module docstring)."""

    voxel_um: float = 50.0
    smooth: float = 1.0
    max_faces: int = 20_000


@dataclass(frozen=True)
class RegionMesh:
    """A triangle surface of one region: ``vertices`` (n, 3) float32 CCF um (AP, DV, ML),
    ``faces`` (m, 3) int32, the region's atlas colour ``rgb`` (0-1)."""

    structure_id: int
    acronym: str
    name: str
    rgb: tuple[float, float, float]
    vertices: np.ndarray
    faces: np.ndarray


_CACHE: OrderedDict = OrderedDict()
_GRIDS: OrderedDict = OrderedDict()
_LOCK = threading.Lock()
_CACHE_SIZE = 512


def _atlas_key(atlas) -> tuple:
    return (atlas.name, atlas.version, tuple(atlas.shape), float(atlas.resolution_um), id(atlas))


def _grid(atlas, voxel_um: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(compact labels of the sampled annotation, their structure ids, stride)."""
    stride = max(1, int(round(float(voxel_um) / atlas.resolution_um)))
    key = (_atlas_key(atlas), stride)
    with _LOCK:
        hit = _GRIDS.get(key)
    if hit is not None:
        return hit
    ann = np.asarray(atlas.annotation)[::stride, ::stride, ::stride]
    ids = np.unique(ann)  # then searchsorted: the same labels, ~10x faster than
    inv = np.searchsorted(ids, ann)  # unique(return_inverse=True) on the 50 um CCF
    dtype = np.uint16 if len(ids) < 2**16 else np.uint32
    out = (inv.astype(dtype), ids.astype(np.int64), stride)
    with _LOCK:
        _GRIDS[key] = out
        while len(_GRIDS) > 4:
            _GRIDS.popitem(last=False)
    return out


def regions_at_depth(atlas, depth: int, *, within: int | None = None) -> list[int]:
    """Structure ids at ontology ``depth`` (0 = root) that have voxels in the annotation
    (through themselves or a descendant), optionally only those under ``within``."""
    onto = atlas.ontology
    present = np.unique(np.asarray(atlas.annotation)[::2, ::2, ::2])
    out = set()
    for sid in present:
        if sid == 0 or int(sid) not in onto:
            continue
        path = onto.path(int(sid))
        if len(path) > depth and (within is None or int(within) in path):
            out.add(int(path[depth]))
    return sorted(out)


def _mask(atlas, structure_id: int, voxel_um: float) -> tuple[np.ndarray, int]:
    labels, ids, stride = _grid(atlas, voxel_um)
    onto = atlas.ontology
    want = np.zeros(len(ids), dtype=bool)
    if int(structure_id) in onto:
        members = set(onto.descendants(int(structure_id)))
        want = np.fromiter((int(i) in members for i in ids), dtype=bool, count=len(ids))
    else:
        want = ids == int(structure_id)
    want[ids == 0] = False
    return want[labels], stride


def region_mesh(
    atlas, structure_id: int, settings: MeshSettings | None = None
) -> RegionMesh | None:
    """The surface of region ``structure_id`` (None when it has no voxels)."""
    from scipy import ndimage as ndi
    from skimage.measure import marching_cubes

    settings = settings or MeshSettings()
    key = (_atlas_key(atlas), int(structure_id), settings)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    mask, stride = _mask(atlas, structure_id, settings.voxel_um)
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return None
    pad = 2 + int(np.ceil(2 * settings.smooth))
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, mask.shape)
    sub = np.zeros(tuple(hi - lo + 2 * pad), dtype=np.float32)
    inner = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    sub[pad : pad + inner.shape[0], pad : pad + inner.shape[1], pad : pad + inner.shape[2]] = inner
    if settings.smooth > 0:
        sub = ndi.gaussian_filter(sub, settings.smooth)
    level = 0.5 if sub.max() > 0.5 else float(sub.max()) / 2  # a tiny region survives
    # about two triangles per voxel face between inside and outside, a quarter of them
    # per doubling of the step: start near the step that meets max_faces
    faces_est = 2 * sum(int(np.count_nonzero(np.diff(inner, axis=a))) for a in range(3))
    step = max(1, int(np.ceil(np.sqrt(faces_est / max(settings.max_faces, 1)))))
    step_cap = max(1, min(sub.shape) // 3)
    while True:
        verts, faces, _, _ = marching_cubes(sub, level=level, step_size=min(step, step_cap))
        if len(faces) <= settings.max_faces or step >= step_cap:
            break
        step += 1
    res = atlas.resolution_um * stride
    verts = (verts - pad + lo) * res + atlas.resolution_um / 2.0
    onto = atlas.ontology
    sid = int(structure_id)
    rgb = tuple(float(c) / 255.0 for c in onto.rgb(sid)) if sid in onto else (0.8, 0.8, 0.8)
    mesh = RegionMesh(
        structure_id=sid,
        acronym=onto.acronym(sid) if sid in onto else str(sid),
        name=onto.name(sid) if sid in onto else str(sid),
        rgb=rgb,  # type: ignore[arg-type]
        vertices=np.ascontiguousarray(verts, dtype=np.float32),
        faces=np.ascontiguousarray(faces, dtype=np.int32),
    )
    with _LOCK:
        _CACHE[key] = mesh
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return mesh


def region_meshes(
    atlas,
    structure_ids,
    settings: MeshSettings | None = None,
    *,
    progress=None,
    cancel=None,
) -> list[RegionMesh]:
    """Surfaces of several regions (regions without voxels are left out); reports
    ``progress(done, total, {'region': acronym})`` and stops with ``Cancelled``."""
    ids = [int(i) for i in structure_ids]
    out = []
    for i, sid in enumerate(ids):
        if cancel is not None and cancel():
            raise Cancelled("mesh building cancelled")
        m = region_mesh(atlas, sid, settings)
        if m is not None:
            out.append(m)
        if progress is not None:
            progress(i + 1, len(ids), {"region": m.acronym if m else str(sid)})
    return out


def structure_on_ray(atlas, origin_um, direction, *, step_um: float | None = None) -> int:
    """The first structure id (non-zero voxel) met along the ray ``origin_um + t *
    direction`` (CCF um, AP/DV/ML) through the atlas volume, or 0 when the ray misses
    the brain. This is what a click in the 3D view picks (the ray of the click's
    position along the camera's view direction)."""
    o = np.asarray(origin_um, dtype=float).reshape(3)
    d = np.asarray(direction, dtype=float).reshape(3)
    if not (np.isfinite(o).all() and np.isfinite(d).all()) or not np.any(d):
        raise BrainAtlasInputError("a ray needs a finite origin and a non-zero direction")
    d = d / np.linalg.norm(d)
    size = atlas.shape_um
    # the segment of the ray inside the volume's box (slab method, both directions)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(d != 0, (0.0 - o) / d, -np.inf)
        t2 = np.where(d != 0, (size - o) / d, np.inf)
    inside = (d != 0) | ((o >= 0) & (o <= size))
    if not inside.all():
        return 0
    t_in = float(np.max(np.minimum(t1, t2)))
    t_out = float(np.min(np.maximum(t1, t2)))
    if t_out < t_in:
        return 0
    step = float(step_um or atlas.resolution_um / 2.0)
    t = np.arange(t_in, t_out + step, step)
    ids = atlas.structure_at(o[None, :] + t[:, None] * d[None, :])
    hit = np.flatnonzero(ids)
    return int(ids[hit[0]]) if len(hit) else 0
