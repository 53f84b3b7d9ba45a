"""The result of a registration: :class:`RegistrationResult` (JSON and AnnData.uns
serialisation, mapping section um to the CCF) and :func:`apply_registration`, which
writes it into an AnnData."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .._errors import BrainAtlasInputError
from .affine import apply_affine
from .nonlinear import apply_warp
from .section import load_atlas, section_xy
from .slices import atlas_slice

__all__ = ["RegistrationResult", "apply_registration", "make_result"]


@dataclass
class RegistrationResult:
    """Everything needed to map a section's cells into the CCF, JSON-serialisable.

    Attributes
    ----------
    atlas, atlas_version : atlas name and version it was registered to.
    plane : "coronal" or "sagittal"; position_um : AP (coronal) or ML (sagittal) um.
    hemisphere : "both", "left" or "right"; angles_deg : (a_x, a_y) cutting angles.
    midline : (2, 2) section um, dorsal then ventral (empty if none was given).
    mirrored : the section was fitted mirrored (seen from the other face).
    anchors_section, anchors_atlas : (4, 2) matched anchors, section um / atlas slice um.
    affine : (3, 3) section um -> atlas slice um (in-plane (x, y)).
    warp : thin-plate stages applied after the affine (empty: affine only).
    cost_history : ICP cost (um) per iteration of the fit kept; cost_stages : the stage
        of each (e.g. "anchors similarity", then "anchors affine"): the fit's model
        changes there; converged (see :class:`~.icp.ICPResult`), iterations.
    confidence : in [0, 1]; metrics : see :func:`.metrics.registration_metrics`.
    """

    atlas: str
    atlas_version: str
    plane: str
    position_um: float
    hemisphere: str
    affine: list
    angles_deg: list = field(default_factory=lambda: [0.0, 0.0])
    midline: list = field(default_factory=list)
    mirrored: bool = False
    anchors_section: list = field(default_factory=list)
    anchors_atlas: list = field(default_factory=list)
    warp: list = field(default_factory=list)
    cost_history: list = field(default_factory=list)
    converged: bool = False
    iterations: int = 0
    confidence: float = 0.0
    metrics: dict = field(default_factory=dict)
    section: str = "section"
    n_cells: int = 0
    position_estimated: bool = False
    start: str = ""
    notes: list = field(default_factory=list)
    cost_stages: list = field(default_factory=list)

    # ---------------------------------------------------------------- mapping
    @property
    def affine_matrix(self) -> np.ndarray:
        return np.asarray(self.affine, dtype=float).reshape(3, 3)

    def transform(self, xy_um: np.ndarray) -> np.ndarray:
        """Section um (n, 2) -> atlas slice in-plane um (n, 2) (affine, then warp)."""
        out = apply_affine(self.affine_matrix, xy_um)
        if self.warp:
            out = apply_warp(self.warp, out)
        return out

    def slice_of(self, atlas):
        """The (possibly tilted) atlas slice the section was registered to."""
        return atlas_slice(
            atlas, self.plane, self.position_um, self.hemisphere, tuple(self.angles_deg)
        )

    def to_ccf(self, xy_um: np.ndarray, atlas) -> np.ndarray:
        """Section um (n, 2) -> CCF (AP, DV, ML) um (n, 3)."""
        return self.slice_of(atlas).to_3d(self.transform(xy_um))

    # ---------------------------------------------------------------- serialise
    def to_dict(self) -> dict:
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> RegistrationResult:
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        extra = set(d) - known
        for k in extra:
            d.pop(k)
        d = _jsonable(d)
        for k in ("atlas", "atlas_version", "plane", "position_um", "hemisphere", "affine"):
            if k not in d:
                raise BrainAtlasInputError(f"registration record lacks {k!r}")
        return cls(**d)

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> RegistrationResult:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BrainAtlasInputError(f"not a registration record: {exc.msg}") from None
        return cls.from_dict(d)

    def to_uns(self) -> dict:
        """The record for ``uns['ccf_registration'][section]`` (h5ad-writable)."""
        d = self.to_dict()
        d["warp"] = json.dumps(d["warp"])  # ragged: kept as a JSON string
        d["notes"] = json.dumps(d["notes"])
        return _h5able(d)

    @classmethod
    def from_uns(cls, d: dict) -> RegistrationResult:
        d = dict(d)
        for k in ("warp", "notes"):
            if isinstance(d.get(k), str):
                d[k] = json.loads(d[k])
        return cls.from_dict(d)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    return x


def _h5able(x):
    """Nested dict for AnnData.uns: no None, numeric lists as arrays."""
    if isinstance(x, dict):
        return {k: _h5able(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        try:
            arr = np.asarray([np.nan if v is None else v for v in x], dtype=float)
            return arr
        except (TypeError, ValueError):
            return np.asarray([str(v) for v in x])
    return x


def make_result(sec, plane, fin, metrics: dict, confidence: float) -> RegistrationResult:
    """The :class:`RegistrationResult` of the stages' outputs (the section, the plane
    found, the finish and the score)."""
    A, best = fin.affine, fin.best
    mirrored = bool(best.mirrored) if plane.affine is None else bool(np.linalg.det(A[:2, :2]) < 0)
    return RegistrationResult(
        atlas=sec.atlas.name,
        atlas_version=sec.atlas.version,
        plane=sec.plane,
        position_um=float(plane.position_um),
        hemisphere=sec.hemisphere,
        affine=A.tolist(),
        angles_deg=[float(a) for a in plane.angles_deg],
        midline=[] if sec.midline is None else sec.midline.tolist(),
        mirrored=mirrored,
        anchors_section=np.asarray(best.anchors_section).tolist(),
        anchors_atlas=np.asarray(best.anchors_atlas).tolist(),
        warp=[
            {
                k: (np.asarray(v).tolist() if k in ("ctrl", "disp") else float(v))
                for k, v in st.items()
            }
            for st in fin.warp
        ],
        cost_history=[float(c) for c in best.icp.cost_history],
        converged=bool(best.icp.converged),
        iterations=int(best.icp.iterations),
        confidence=confidence,
        metrics={k: (float(v) if not isinstance(v, bool) else v) for k, v in metrics.items()},
        section=sec.name,
        n_cells=len(sec.xy),
        position_estimated=plane.estimated,
        start=best.start,
        notes=sec.notes,
        cost_stages=[str(x) for x in getattr(best.icp, "stages", [])],
    )


def apply_registration(
    adata, result: RegistrationResult, atlas, inplace: bool = False, spatial_key: str = "spatial"
):
    """Write a registration into an AnnData.

    Sets obsm['ccf_coords'] (n, 3) CCF (AP, DV, ML) um, obs['ccf_id'] (int, 0 outside
    the brain), obs['ccf_acronym'] and uns['ccf_registration'][result.section] (the
    record). Returns a new AnnData unless ``inplace`` (then ``adata`` itself).
    """
    atlas = load_atlas(atlas)
    if isinstance(result, dict):
        result = RegistrationResult.from_dict(result)
    xy = section_xy(adata, spatial_key)
    out = adata if inplace else adata.copy()
    ccf = result.to_ccf(xy, atlas)
    ids = atlas.structure_at(ccf)
    out.obsm["ccf_coords"] = ccf
    out.obs["ccf_id"] = ids.astype(np.int64)
    out.obs["ccf_acronym"] = atlas.ontology.acronyms(ids)
    reg = dict(out.uns.get("ccf_registration", {}))
    reg[result.section] = result.to_uns()
    out.uns["ccf_registration"] = reg
    return out
