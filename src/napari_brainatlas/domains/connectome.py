"""Region-to-region connectomes and their mapping onto registered cells.

A :class:`Connectome` holds two square region x region weight matrices by acronym:
``w_ipsi[i, j]`` is the projection strength from source region ``i`` to target region
``j`` in the same hemisphere, ``w_contra[i, j]`` to ``j`` in the opposite hemisphere
(rows = sources / injection sites, columns = targets), as in Oh et al. 2014, Nature
508:207 (Suppl. Table 3: sheets ``W_ipsi``, ``PValue_ipsi``, ``W_contra``,
``PValue_contra``; 213 x 213; first row and column are acronyms).

Mapping onto cells (:func:`map_cells`): a cell's structure (``obs['ccf_id']``, else
``obs['ccf_acronym']``) walks up the ontology to the first structure (itself included)
that is a matrix region, e.g. ``VISp2/3 -> VISp``. Cells whose structure is *coarser*
than every matrix region (e.g. plain ``Isocortex`` on the real matrix), outside the brain
(id 0), or in a structure outside every matrix region (fibre tracts, ventricles) get
region ``-1``: no connectivity row, they take no part in the connectivity graph.

A cell's hemisphere is the side of its CCF ML coordinate (``obsm['ccf_coords'][:, 2]``)
with respect to the atlas midline: ``0`` (ML < midline, "left") or ``1``. Two cells on
the same side are linked through ``w_ipsi``, across the midline through ``w_contra``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .._errors import BrainAtlasInputError

__all__ = [
    "CCF_MIDLINE_ML_UM",
    "DEMO_CONNECTOME_REGIONS",
    "DEMO_MIDLINE_ML_UM",
    "Connectome",
    "cell_hemisphere",
    "default_midline_ml",
    "demo_connectome",
    "load_connectome",
    "map_cells",
    "map_structures",
    "read_oh2014",
]

#: ML midline of the Allen CCFv3 (11.4 mm wide volume), um
CCF_MIDLINE_ML_UM = 5700.0
#: ML midline of the demo atlas (8 mm wide volume), um
DEMO_MIDLINE_ML_UM = 4000.0
OH2014_SHEETS = ("W_ipsi", "PValue_ipsi", "W_contra", "PValue_contra")


@dataclass
class Connectome:
    """Square region x region connectivity (same region list for rows and columns).

    Attributes
    ----------
    regions : acronyms, the order of rows and columns.
    w_ipsi, w_contra : (R, R) float, source (row) -> target (column) weights, >= 0.
    p_ipsi, p_contra : (R, R) p-values (NaN where not tested) or ``None``.
    source : where it came from (a path or ``"demo"``).
    """

    regions: list[str]
    w_ipsi: np.ndarray
    w_contra: np.ndarray
    p_ipsi: np.ndarray | None = None
    p_contra: np.ndarray | None = None
    source: str = ""
    notes: list = field(default_factory=list)

    def __post_init__(self):
        self.regions = [str(r) for r in self.regions]
        R = len(self.regions)
        for name in ("w_ipsi", "w_contra", "p_ipsi", "p_contra"):
            m = getattr(self, name)
            if m is None:
                continue
            m = np.asarray(m, dtype=float)
            if m.shape != (R, R):
                raise BrainAtlasInputError(
                    f"connectome matrix {name} is {m.shape}, expected {(R, R)} for {R} regions"
                )
            setattr(self, name, m)
        if len(set(self.regions)) != R:
            raise BrainAtlasInputError("connectome has duplicate region acronyms")
        for name in ("w_ipsi", "w_contra"):
            m = getattr(self, name)
            if not np.all(np.isfinite(m)) or (m < 0).any():
                raise BrainAtlasInputError(f"connectome {name} must be finite and non-negative")
        self._index = {r: i for i, r in enumerate(self.regions)}

    @property
    def n_regions(self) -> int:
        return len(self.regions)

    def index(self, acronym: str) -> int:
        """Row of ``acronym`` or -1."""
        return self._index.get(str(acronym), -1)

    def frame(self, which: str = "ipsi") -> pd.DataFrame:
        """``W_ipsi`` / ``W_contra`` as a DataFrame (rows sources, columns targets)."""
        m = {"ipsi": self.w_ipsi, "contra": self.w_contra}[which]
        return pd.DataFrame(m, index=self.regions, columns=self.regions)

    def masked(self, p_max: float) -> Connectome:
        """A copy with every weight whose p-value is >= ``p_max`` (or untested) set to 0."""
        if self.p_ipsi is None or self.p_contra is None:
            raise BrainAtlasInputError("this connectome has no p-values to mask with")
        wi = np.where(np.nan_to_num(self.p_ipsi, nan=1.0) < p_max, self.w_ipsi, 0.0)
        wc = np.where(np.nan_to_num(self.p_contra, nan=1.0) < p_max, self.w_contra, 0.0)
        return Connectome(
            self.regions,
            wi,
            wc,
            self.p_ipsi,
            self.p_contra,
            self.source,
            [*self.notes, f"masked p < {p_max:g}"],
        )

    def subset(self, regions) -> Connectome:
        idx = [self._index[r] for r in regions]
        ix = np.ix_(idx, idx)
        return Connectome(
            list(regions),
            self.w_ipsi[ix],
            self.w_contra[ix],
            None if self.p_ipsi is None else self.p_ipsi[ix],
            None if self.p_contra is None else self.p_contra[ix],
            self.source,
            list(self.notes),
        )


# --------------------------------------------------------------------------- reading
def _sheet(xl: pd.ExcelFile, name: str, path: Path) -> tuple[list[str], list[str], np.ndarray]:
    df = pd.read_excel(xl, name, header=None)
    if df.shape[0] < 2 or df.shape[1] < 2:
        raise BrainAtlasInputError(f"sheet {name} of {path.name} is empty")
    rows = [str(a).strip() for a in df.iloc[1:, 0]]
    cols = [str(a).strip() for a in df.iloc[0, 1:]]
    try:
        m = df.iloc[1:, 1:].to_numpy(dtype=float)
    except (TypeError, ValueError):
        raise BrainAtlasInputError(
            f"sheet {name} of {path.name} holds non-numeric weights"
        ) from None
    return rows, cols, m


@lru_cache(maxsize=4)
def _read_oh2014_cached(path: str, mtime: float) -> Connectome:
    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openpyxl: header/footer, extensions
            xl = pd.ExcelFile(p)
            missing = [s for s in ("W_ipsi", "W_contra") if s not in xl.sheet_names]
            if missing:
                raise BrainAtlasInputError(
                    f"{p.name} lacks sheet(s) {', '.join(missing)} (need W_ipsi and W_contra, "
                    "as in Oh et al. 2014 Suppl. Table 3)"
                )
            sheets = {s: _sheet(xl, s, p) for s in OH2014_SHEETS if s in xl.sheet_names}
    except BrainAtlasInputError:
        raise
    except Exception as exc:
        raise BrainAtlasInputError(f"cannot read connectome {p.name}: {exc}") from exc
    regions = sheets["W_ipsi"][0]
    for s, (rows, cols, _m) in sheets.items():
        if rows != regions or cols != regions:
            raise BrainAtlasInputError(
                f"sheet {s} of {p.name} does not list the same regions in rows and columns "
                "as W_ipsi"
            )
    mats = {s: m for s, (_r, _c, m) in sheets.items()}
    for s in ("W_ipsi", "W_contra"):
        mats[s] = np.nan_to_num(mats[s], nan=0.0)
    return Connectome(
        regions,
        mats["W_ipsi"],
        mats["W_contra"],
        mats.get("PValue_ipsi"),
        mats.get("PValue_contra"),
        source=str(p),
    )


def read_oh2014(path: str | Path, p_max: float | None = None) -> Connectome:
    """Read the Oh et al. 2014 connectome workbook (Suppl. Table 3, .xlsx).

    ``p_max``: if given, weights with p-value >= ``p_max`` (or no p-value) are set to 0.
    Missing weights read as 0. Cached per path and modification time.
    """
    p = Path(path)
    if not p.exists():
        raise BrainAtlasInputError(f"connectome file not found: {p}")
    if p.suffix.lower() not in (".xlsx", ".xlsm"):
        raise BrainAtlasInputError(f"connectome must be an .xlsx workbook, not {p.name}")
    con = _read_oh2014_cached(str(p.resolve()), p.stat().st_mtime)
    return con.masked(p_max) if p_max is not None else con


#: (source, target, ipsi weight, contra weight) of the demo connectome
_DEMO_EDGES = (
    ("Isocortex", "Isocortex", 1.5, 0.6),
    ("Isocortex", "TH", 1.0, 0.05),
    ("TH", "Isocortex", 1.6, 0.0),
    ("Isocortex", "STR", 0.8, 0.2),
    ("STR", "PAL", 1.2, 0.0),
    ("PAL", "TH", 0.5, 0.0),
    ("PAL", "MB", 0.4, 0.0),
    ("HPF", "Isocortex", 0.7, 0.1),
    ("Isocortex", "HPF", 0.5, 0.05),
    ("HPF", "HPF", 1.0, 0.4),
    ("HPF", "HY", 0.4, 0.0),
    ("OLF", "HPF", 0.5, 0.0),
    ("OLF", "OLF", 0.8, 0.1),
    ("Isocortex", "OLF", 0.1, 0.0),
    ("HY", "MB", 0.5, 0.05),
    ("HY", "HY", 0.6, 0.1),
    ("MB", "TH", 0.4, 0.1),
    ("MB", "MB", 0.7, 0.2),
    ("TH", "STR", 0.3, 0.0),
    ("TH", "TH", 0.2, 0.0),
    ("STR", "STR", 0.6, 0.0),
    ("PAL", "PAL", 0.3, 0.0),
)
#: regions of the demo connectome (grey-matter major divisions of the demo atlas)
DEMO_CONNECTOME_REGIONS = ("Isocortex", "OLF", "HPF", "STR", "PAL", "TH", "HY", "MB")


def demo_connectome() -> Connectome:
    """A small deterministic connectome over the demo atlas's grey-matter major divisions.

    Cortex <-> thalamus strong, striatum -> pallidum, hippocampus <-> cortex, cortex ->
    striatum, pallidum -> thalamus / midbrain, hypothalamus -> midbrain ...; contralateral
    weights mostly for cortex and hippocampus (commissural). No p-values.
    """
    regions = list(DEMO_CONNECTOME_REGIONS)
    ix = {r: i for i, r in enumerate(regions)}
    wi = np.zeros((len(regions),) * 2)
    wc = np.zeros_like(wi)
    for s, t, a, b in _DEMO_EDGES:
        wi[ix[s], ix[t]] = a
        wc[ix[s], ix[t]] = b
    return Connectome(regions, wi, wc, source="demo")


def load_connectome(spec: str | Path, p_max: float | None = None) -> Connectome:
    """``"demo"`` or a path to an Oh et al. 2014 style workbook."""
    if str(spec) == "demo":
        return demo_connectome()
    return read_oh2014(spec, p_max=p_max)


# --------------------------------------------------------------------------- mapping
def map_structures(ids, ontology, connectome: Connectome) -> np.ndarray:
    """Connectome row for each structure id (walk up to the first matrix region), -1 if none.

    Ids not in the ontology (and 0, outside the brain) map to -1.
    """
    ids = np.asarray(ids).astype(np.int64)
    uniq, inv = np.unique(ids, return_inverse=True)
    by_id = {}
    for r in connectome.regions:
        try:
            by_id[int(ontology.id_of(r))] = connectome.index(r)
        except BrainAtlasInputError:
            continue
    out = np.full(uniq.shape, -1, dtype=np.int64)
    for k, sid in enumerate(uniq):
        sid = int(sid)
        if sid == 0 or sid not in ontology:
            continue
        for p in reversed(ontology.path(sid)):
            if p in by_id:
                out[k] = by_id[p]
                break
    return out[inv].reshape(ids.shape)


def _cell_ids(adata, ontology) -> np.ndarray:
    obs = adata.obs
    if "ccf_id" in obs.columns:
        return obs["ccf_id"].to_numpy().astype(np.int64)
    if "ccf_acronym" in obs.columns:
        acr = obs["ccf_acronym"].astype(str).to_numpy()
        lut = {a: ontology._by_acronym.get(a, 0) for a in np.unique(acr)}
        return np.array([lut[a] for a in acr], dtype=np.int64)
    name = adata.uns.get("napari_brainatlas", {}).get("section", "section")
    raise BrainAtlasInputError(
        f"{name} is not registered (no obs['ccf_id'] or obs['ccf_acronym']): run "
        "napari-brainatlas register first"
    )


def cell_hemisphere(ccf_coords: np.ndarray, midline_ml_um: float) -> np.ndarray:
    """0 for cells with ML below the midline, 1 at or above it."""
    ml = np.asarray(ccf_coords, dtype=float)[:, 2]
    return (ml >= float(midline_ml_um)).astype(np.int8)


def default_midline_ml(adata) -> float:
    """ML midline of the atlas a section was registered to: the demo atlas (4000 um) when
    ``uns['ccf_registration']`` (or the demo truth) names ``demo``, else the CCFv3 (5700 um)."""
    reg = adata.uns.get("ccf_registration", {})
    names = []
    if isinstance(reg, dict):
        for v in reg.values():
            if isinstance(v, dict) and "atlas" in v:
                names.append(str(v["atlas"]))
        if "atlas" in reg:
            names.append(str(reg["atlas"]))
    truth = adata.uns.get("demo_truth", {})
    if not names and isinstance(truth, dict) and "atlas" in truth:
        names.append(str(truth["atlas"]))
    if names and all(n == "demo" for n in names):
        return DEMO_MIDLINE_ML_UM
    return CCF_MIDLINE_ML_UM


def map_cells(
    adata, ontology, connectome: Connectome, midline_ml_um: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(region row per cell, -1 if none; hemisphere 0/1 per cell) for one registered section.

    Needs ``obs['ccf_id']`` or ``obs['ccf_acronym']`` and ``obsm['ccf_coords']``.
    """
    ids = _cell_ids(adata, ontology)
    if "ccf_coords" not in adata.obsm:
        name = adata.uns.get("napari_brainatlas", {}).get("section", "section")
        raise BrainAtlasInputError(
            f"{name} has no obsm['ccf_coords']: run napari-brainatlas register first"
        )
    mid = default_midline_ml(adata) if midline_ml_um is None else float(midline_ml_um)
    return map_structures(ids, ontology, connectome), cell_hemisphere(
        np.asarray(adata.obsm["ccf_coords"]), mid
    )
