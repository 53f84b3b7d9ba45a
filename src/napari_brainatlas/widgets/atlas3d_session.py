"""State of the 3D atlas dock, without Qt or napari (tested on its own).

The session holds the registered sections, every registered cell gathered in CCF space
(:func:`napari_brainatlas.cells3d.ccf_points`) with its 3D level of detail, the colour
key, the atlas regions shown as surfaces (at an ontology depth), the highlighted region,
and a CCF plane (axis, position, thickness; cells near it emphasised or the others
clipped). The dock only turns what the session computes into layers:
:meth:`Atlas3DSession.display_rgba` (colours with the highlight / plane emphasis),
:meth:`Atlas3DSession.shown_mask` (which cells to draw for a camera) and the meshes.
The heavy steps (:meth:`prepare`, :meth:`recolor`, :meth:`surfaces`, :meth:`export`)
touch no layer, take ``progress`` / ``cancel`` (:mod:`napari_brainatlas.jobs`) and run as
jobs of the dock. The sections the session holds are :func:`cells_copy` copies (cells,
labels, CCF positions; no expression): colouring by a gene takes the gene's values,
read by the caller.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..atlas.meshes import MeshSettings, region_meshes, regions_at_depth, structure_on_ray
from ..cells3d import CCFPoints, ccf_points, color_points, registered, shared_keys
from ..jobs import check_cancel, report
from ..layers import GREY, present_values
from ..lod3d import BUDGET_3D, MOTION_BUDGET_3D, LevelOfDetail3D, OrthoView

__all__ = ["AXES", "Atlas3DSession", "PlaneState", "cells_copy"]

#: plane axes: name -> CCF coordinate index (AP, DV, ML)
AXES = {"AP (coronal)": 0, "DV (horizontal)": 1, "ML (sagittal)": 2}
DIM_RGB = np.array([0.35, 0.35, 0.35], np.float32)


def cells_copy(adata: AnnData) -> AnnData:
    """What the 3D view reads of a section, copied: obs, ``obsm['ccf_coords']`` and
    ``obsm['spatial']``, uns, the gene names (no expression, no other obsm)."""
    keep = [k for k in ("ccf_coords", "spatial") if k in adata.obsm]
    return AnnData(
        obs=adata.obs.copy(),
        var=pd.DataFrame(index=adata.var_names.copy()),
        obsm={k: np.array(adata.obsm[k], copy=True) for k in keep},
        uns=copy.deepcopy(dict(adata.uns)),
    )


@dataclass(frozen=True)
class PlaneState:
    """A CCF plane through the stack: ``axis`` 0/1/2 (AP/DV/ML), ``position_um``,
    ``thickness_um`` (cells within half of it are near), ``mode`` 'off', 'emphasise'
    (others dimmed) or 'clip' (others hidden)."""

    axis: int = 0
    position_um: float = 0.0
    thickness_um: float = 200.0
    mode: str = "off"


class Atlas3DSession:
    """Everything the 3D atlas dock shows, computed without Qt."""

    def __init__(
        self,
        atlas=None,
        *,
        budget: int = BUDGET_3D,
        motion_budget: int = MOTION_BUDGET_3D,
        mesh: MeshSettings | None = None,
    ):
        self.atlas = atlas
        self.budget = int(budget)
        self.motion_budget = int(motion_budget)
        self.mesh_settings = mesh or MeshSettings()
        self.sections: list = []
        self.points: CCFPoints | None = None
        self.lod: LevelOfDetail3D | None = None
        self.color_by: str | None = None
        self.depth = 3
        self.highlight: int | None = None
        self.plane = PlaneState()
        self._focus_cache: dict = {}

    # ------------------------------------------------------------------ sections
    @staticmethod
    def registered_sections(sections) -> list:
        """The sections with at least one registered cell."""
        return [s for s in sections if len(registered(s))]

    def set_sections(self, sections) -> None:
        self.sections = self.registered_sections(sections)
        self.points = self.lod = None
        self.highlight = None
        self._focus_cache.clear()

    def default_atlas_name(self) -> str:
        """The atlas the sections were registered to (``uns['ccf_registration']``)."""
        for s in self.sections:
            reg = s.uns.get("ccf_registration")
            if isinstance(reg, dict):
                for v in reg.values():
                    if isinstance(v, dict) and v.get("atlas"):
                        return str(v["atlas"])
        return "demo"

    def load_atlas(self, name: str | None = None):
        """Open the sections' atlas by name (``'demo'``, a BrainGlobe name or a path)."""
        from ..atlas import Atlas

        self.atlas = Atlas.load(name or self.default_atlas_name())
        self._focus_cache.clear()
        return self.atlas

    def keys(self) -> tuple[list[str], list[str], list[str]]:
        """(labels, numeric columns, genes) shared by every section."""
        return shared_keys(self.sections)

    def default_color_by(self) -> str | None:
        labels, _, _ = self.keys()
        for k in ("ccf_acronym", "celltype", "region", "celltype_transfer", "region_transfer"):
            if k in labels:
                return k
        return labels[0] if labels else None

    # ------------------------------------------------------------------ heavy steps
    def prepare(
        self,
        color_by: str | None = "default",
        *,
        atlas: str | None = None,
        values=None,
        progress=None,
        cancel=None,
    ) -> CCFPoints:
        """Open the atlas (``atlas``: a name or path, when it is not the one open),
        gather every registered cell, colour it, build the level of detail: three steps
        reported to ``progress``. ``values``: the gene's values per section when
        ``color_by`` is a gene."""
        if not self.sections:
            raise BrainAtlasInputError("no registered section is open")
        if atlas is not None and (self.atlas is None or self.atlas.name != atlas):
            report(progress, 0, 3, message=f"opening the atlas {atlas} ...")
            self.load_atlas(atlas)
        check_cancel(cancel)
        report(progress, 1, 3, message="gathering the registered cells ...")
        if color_by == "default":
            color_by = self.default_color_by()
        pts = ccf_points(
            self._colour_sources(color_by, values), color_by, colors=self._fixed_colors(color_by)
        )
        check_cancel(cancel)
        report(progress, 2, 3, message=f"{pts.n:,} cells: level of detail ...")
        lod = LevelOfDetail3D(pts.coords)
        check_cancel(cancel)
        self._focus_cache.clear()
        self.color_by = color_by
        self.points, self.lod = pts, lod
        report(progress, 3, 3, message=f"{pts.n:,} registered cells gathered")
        return pts

    def recolor(self, color_by: str | None, *, values=None, progress=None, cancel=None):
        """Colour the gathered cells by ``color_by`` (``values``: a gene's values per
        section)."""
        if self.points is None:
            return self.prepare(color_by, values=values, progress=progress, cancel=cancel)
        self.color_by = color_by
        return color_points(
            self.points,
            self._colour_sources(color_by, values),
            color_by,
            colors=self._fixed_colors(color_by),
        )

    def _colour_sources(self, key: str | None, values) -> list:
        """The sections as :func:`~napari_brainatlas.cells3d.color_points` reads them:
        with ``values`` (one array per section) as the only gene ``key``."""
        if values is None:
            return self.sections
        out = []
        for s, v in zip(self.sections, values):
            x = np.zeros((s.n_obs, 1), np.float32) if v is None else np.asarray(v, np.float32)
            var = pd.DataFrame(index=[key] if v is not None else ["(none)"])
            out.append(AnnData(X=x.reshape(-1, 1), obs=s.obs, var=var, uns=s.uns))
        return out

    def needs_values(self, key: str | None) -> bool:
        """``key`` is a gene (not an obs column): its values must be given."""
        if key is None or not self.sections:
            return False
        return any(key not in s.obs.columns and key in s.var_names for s in self.sections)

    def _fixed_colors(self, key: str | None) -> dict | None:
        """Atlas colours for CCF structure labels."""
        if key != "ccf_acronym" or self.atlas is None:
            return None
        onto = self.atlas.ontology
        names: set[str] = set()
        for s in self.sections:
            if key in s.obs.columns:
                names.update(present_values(s.obs[key]))
        out = {"": GREY[:3]}  # outside the brain
        for a in names:
            try:
                out[a] = np.array(onto.rgb(onto.id_of(a)), float) / 255.0
            except BrainAtlasInputError:
                continue
        return out

    def regions(self, depth: int | None = None) -> list[int]:
        """Structure ids at ``depth`` (default: the session's) that hold voxels."""
        if self.atlas is None:
            return []
        return regions_at_depth(self.atlas, self.depth if depth is None else int(depth))

    def meshes(self, ids=None, *, progress=None, cancel=None):
        if self.atlas is None:
            raise BrainAtlasInputError("no atlas loaded for the region surfaces")
        ids = self.regions() if ids is None else ids
        return region_meshes(self.atlas, ids, self.mesh_settings, progress=progress, cancel=cancel)

    def surfaces(self, depth: int | None = None, *, progress=None, cancel=None):
        """The regions at ``depth`` (default: the session's) and their surfaces, one
        progress report per region. Returns ``(depth, ids, meshes)``."""
        depth = self.depth if depth is None else int(depth)
        ids = self.regions(depth)
        check_cancel(cancel)
        # the first surfaces of an atlas sample its volume first (seconds on the CCF)
        report(
            progress, 0, len(ids), message=f"surfaces of {len(ids)} regions at depth {depth} ..."
        )

        def relay(done, total, info):
            region = info.get("region", "")
            report(progress, done, total, region=region, message=f"surface of {region} done")

        return depth, ids, self.meshes(ids, progress=relay, cancel=cancel)

    def region_surface(self, structure_id: int, *, progress=None, cancel=None):
        """The surface of one region (None without an atlas or voxels)."""
        from ..atlas.meshes import region_mesh

        if self.atlas is None:
            return None
        return region_mesh(self.atlas, int(structure_id), self.mesh_settings)

    def export(self, path, *, units: str = "um", format: str = "both", progress=None, cancel=None):
        """The per-cell CCF table of the sections (``workflows.export_ccf``), with the
        colour key's column where the sections have it. Returns its ``CcfCells``."""
        from ..workflows.ccf_export import export_ccf

        return export_ccf(
            self.sections,
            path,
            format=format,
            units=units,
            atlas=self.atlas,  # None: the atlas the sections' records name
            extra_obs=(self.color_by,) if self.color_by else (),
            progress=progress,
            cancel=cancel,
        )

    # ------------------------------------------------------------------ regions
    def pick(self, position, view_direction) -> int | None:
        """The region (at the session's depth) under a click: the first structure along
        the click's ray, raised to its ancestor at ``depth``. None when it misses."""
        if self.atlas is None:
            return None
        sid = structure_on_ray(self.atlas, position, view_direction)
        if sid == 0:
            return None
        onto = self.atlas.ontology
        return int(onto.ancestor_at_depth(sid, self.depth)) if sid in onto else int(sid)

    def region_cells(self, structure_id: int) -> np.ndarray:
        """Boolean mask of the gathered cells inside ``structure_id`` (its subtree)."""
        key = ("region", int(structure_id))
        if key not in self._focus_cache:
            ids = [int(structure_id)]
            if self.atlas is not None and int(structure_id) in self.atlas.ontology:
                ids = self.atlas.ontology.descendants(int(structure_id))
            self._focus_cache[key] = np.isin(self.points.ccf_id, np.asarray(ids, np.int64))
        return self._focus_cache[key]

    def set_highlight(self, structure_id: int | None) -> int:
        """Highlight a region (None: none); returns its number of cells."""
        self.highlight = None if structure_id is None else int(structure_id)
        if self.highlight is None or self.points is None:
            return 0
        return int(self.region_cells(self.highlight).sum())

    def region_label(self, structure_id: int | None) -> str:
        if structure_id is None:
            return ""
        onto = getattr(self.atlas, "ontology", None)
        if onto is not None and structure_id in onto:
            return f"{onto.acronym(structure_id)} ({onto.name(structure_id)})"
        return str(structure_id)

    # ------------------------------------------------------------------ plane
    def plane_range(self, axis: int | None = None) -> tuple[float, float]:
        """Where the plane can go along ``axis`` (um): the atlas, else the cells."""
        a = self.plane.axis if axis is None else int(axis)
        if self.atlas is not None:
            return 0.0, float(self.atlas.shape_um[a])
        if self.points is not None and self.points.n:
            c = self.points.coords[:, a]
            return float(c.min()), float(c.max())
        return 0.0, 1.0

    def set_plane(self, **changes) -> PlaneState:
        if "mode" in changes and changes["mode"] not in ("off", "emphasise", "clip"):
            raise BrainAtlasInputError(
                f"plane mode must be off, emphasise or clip, not {changes['mode']!r}"
            )
        self.plane = replace(self.plane, **changes)
        return self.plane

    def near_plane(self) -> np.ndarray | None:
        p = self.plane
        if p.mode == "off" or self.points is None:
            return None
        c = self.points.coords[:, p.axis]
        return np.abs(c - np.float32(p.position_um)) <= np.float32(p.thickness_um / 2.0)

    # ------------------------------------------------------------------ what to draw
    def focus(self) -> np.ndarray | None:
        """Cells the user asked to see: in the highlighted region and/or near the plane."""
        f = None
        if self.highlight is not None and self.points is not None:
            f = self.region_cells(self.highlight)
        near = self.near_plane()
        if near is not None:
            f = near if f is None else (f & near)
        return f

    def display_rgba(self) -> np.ndarray:
        """The cells' colours with the focus emphasised (others dimmed grey and faint)."""
        if self.points is None:
            return np.zeros((0, 4), np.float32)
        f = self.focus()
        if f is None:
            return self.points.rgba
        out = self.points.rgba.copy()
        dim = ~f
        out[dim, :3] = out[dim, :3] * 0.25 + DIM_RGB * 0.75
        out[dim, 3] = 0.25
        return out

    def shown_mask(self, view: OrthoView | None = None, *, moving: bool = False) -> np.ndarray:
        """Which cells to draw for ``view`` (None: the whole stack in view); ``moving``:
        the camera is moving, draw the smaller motion budget."""
        if self.lod is None or self.points is None or self.lod.n != self.points.n:
            return np.zeros(0, bool)  # (being gathered anew in a worker)
        clip = self.plane.mode == "clip"
        budget = self.motion_budget if moving else self.budget
        return self.lod.shown_mask(view, budget, focus=self.focus(), clip=clip)
