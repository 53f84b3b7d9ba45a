"""The "Genes & neighbours" dock's state and jobs, without Qt (tested without a display).

Jobs (run by the dock base in a worker; plain functions with ``progress`` / ``cancel``;
each calls one :mod:`napari_brainatlas.workflows.analyses` function):

* :func:`find_modules_job` - gene modules of a model folder, written into it
  (``modules.csv`` / ``modules.json``);
* :func:`score_job` - per-cell module scores of copies of the sections (the new obs
  columns come back; the dock writes them into the layers' AnnData);
* :func:`panel_job` - a gene panel ranked by the sections' expression;
* :func:`proximity_job` - region-specific proximity over the sections;
* :func:`pair_cells_job` - the cells behind one (region, type a, type b) row.

:class:`GenesSession` keeps what the dock shows (modules, panel, proximity result) and
turns it into colours and tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .._errors import BrainAtlasInputError
from ..colors import continuous_colors

__all__ = [
    "GREY",
    "PAIR_COLORS",
    "GenesSession",
    "categorical_columns",
    "find_modules_job",
    "pair_cells_job",
    "panel_job",
    "proximity_job",
    "score_job",
]

GREY = np.array([0.55, 0.55, 0.55, 0.25], np.float32)
#: colours of the highlighted cells: type a, type b (a == b: type a's colour)
PAIR_COLORS = (
    np.array([1.0, 0.25, 0.2, 1.0], np.float32),
    np.array([0.2, 0.6, 1.0, 1.0], np.float32),
)


def _model_dir(model_dir) -> Path:
    if not model_dir:
        raise BrainAtlasInputError("choose a FuseMap model folder first")
    p = Path(model_dir)
    if not (p.is_dir() and (p / "config.json").is_file()):
        raise BrainAtlasInputError(f"{p} is not a model folder (no config.json)")
    return p


# ---------------------------------------------------------------------- jobs
def find_modules_job(model_dir, *, resolution="auto", umap=True, progress=None, cancel=None):
    from ..workflows import analyses as wf

    result = wf.find_modules(
        _model_dir(model_dir), resolution=resolution, umap=umap, progress=progress, cancel=cancel
    )
    wf.write_modules(result)  # modules.csv / modules.json into the model folder
    return result.modules


def score_job(adatas, model_dir, modules, *, progress=None, cancel=None) -> list[pd.DataFrame]:
    """The module-score columns (obs DataFrame per section) of copies of ``adatas``."""
    from ..workflows import analyses as wf

    if not adatas:
        raise BrainAtlasInputError("tick the sections to score")
    scored = wf.score_sections(adatas, model=_model_dir(model_dir), modules=modules)
    out = []
    for a in scored:
        keys = a.uns["gene_modules"]["keys"]
        out.append(a.obs[keys].copy())
    return out


def panel_job(model_dir, size, include, exclude, method, adatas, *, progress=None, cancel=None):
    from ..workflows import analyses as wf

    return wf.design_panel(
        _model_dir(model_dir),
        int(size),
        include=include,
        exclude=exclude,
        method=method,
        data=adatas or None,
    )


def proximity_job(adatas, celltype_key, region_key, settings, *, progress=None, cancel=None):
    from ..workflows import analyses as wf

    if not adatas:
        raise BrainAtlasInputError("tick the sections to analyse")
    return wf.cell_proximity(
        adatas,
        celltype_key=celltype_key,
        region_key=region_key,
        settings=settings,
        progress=progress,
        cancel=cancel,
    )


def pair_cells_job(adatas, celltype_key, region_key, region, type_a, type_b, radius_um, **_):
    """Per section: (mask of type-a cells near a type-b one, mask of the type-b ones)."""
    from ..analyses import proximal_pair_cells

    out = []
    for a in adatas:
        both = proximal_pair_cells(
            a,
            celltype_key=celltype_key,
            type_a=type_a,
            type_b=type_b,
            region_key=region_key,
            region=region if region_key else None,
            radius_um=radius_um,
        )
        t = a.obs[celltype_key].astype(str).to_numpy()
        out.append((both & (t == str(type_a)), both & (t == str(type_b))))
    return out


# ---------------------------------------------------------------------- session
def categorical_columns(adatas, max_values: int = 500) -> list[str]:
    """obs columns every section has that look like labels (text / category / few
    integer values), for the cell-type and region choosers."""
    if not adatas:
        return []
    common = set(adatas[0].obs.columns)
    for a in adatas[1:]:
        common &= set(a.obs.columns)
    out = []
    for c in adatas[0].obs.columns:
        if c not in common:
            continue
        s = adatas[0].obs[c]
        if s.dtype.kind in "fc":
            continue
        if s.nunique() <= max_values:
            out.append(str(c))
    return out


@dataclass
class GenesSession:
    """What the dock shows: modules, panel, proximity result and the pair highlighted."""

    modules: object = None  # analyses.GeneModules
    panel: object = None  # workflows.analyses.Panel
    proximity: object = None  # workflows.analyses.Proximity
    proximity_keys: tuple = ("", None)  # (celltype_key, region_key) of that result
    highlighted: tuple | None = None  # (region, type a, type b)
    scored: list = field(default_factory=list)  # layer names with module scores

    # -- modules
    def module_rows(self) -> list[tuple[int, int, str]]:
        """(module, genes, hub genes) per module."""
        if self.modules is None:
            return []
        hubs = self.modules.hubs()
        return [
            (int(k), int(n), ", ".join(hubs.get(int(k), [])))
            for k, n in self.modules.sizes().items()
        ]

    def module_keys(self) -> list[str]:
        from ..analyses import score_key

        if self.modules is None:
            return []
        return [score_key(k) for k in range(1, self.modules.n_modules + 1)]

    @staticmethod
    def score_colors(adata, key: str, cmap: str = "magma") -> np.ndarray:
        """RGBA of ``obs[key]`` (a module score)."""
        if key not in adata.obs:
            raise BrainAtlasInputError(f"the section has no obs['{key}']: score it first")
        return continuous_colors(adata.obs[key].to_numpy(np.float32), cmap=cmap)[0]

    # -- proximity
    def regions(self) -> list[str]:
        return [] if self.proximity is None else list(self.proximity.result.regions)

    def heatmap(self, region: str, value: str = "z") -> pd.DataFrame:
        if self.proximity is None:
            raise BrainAtlasInputError("run the proximity analysis first")
        return self.proximity.result.matrix(region, value)

    def pair_at(self, region: str, row: int, col: int) -> tuple[str, str] | None:
        """The (type a, type b) of heatmap cell (row, col) of ``region``."""
        m = self.heatmap(region)
        if not (0 <= row < len(m) and 0 <= col < len(m)):
            return None
        a, b = str(m.index[row]), str(m.columns[col])
        return (a, b) if a <= b else (b, a)

    def table(self, region: str | None = None, top: int = 200) -> pd.DataFrame:
        if self.proximity is None:
            return pd.DataFrame()
        t = self.proximity.result.table
        if region is not None:
            t = t[t["region"] == str(region)]
        return t.head(top)

    @staticmethod
    def pair_colors(n: int, mask_a: np.ndarray, mask_b: np.ndarray) -> np.ndarray:
        """Grey, translucent cells; the pair's type-a cells red and type-b cells blue."""
        rgba = np.tile(GREY, (n, 1))
        rgba[mask_b] = PAIR_COLORS[1]
        rgba[mask_a] = PAIR_COLORS[0]
        return rgba
