"""The FuseMap paper's atlas analyses as user tasks: gene modules, panel design and
region-specific cell-cell proximity (engine: :mod:`napari_brainatlas.analyses`).

* :func:`find_modules` - gene modules of a model (folder path or FuseMap) ->
  :class:`Modules`; :func:`write_modules` puts ``modules.csv`` / ``modules.json`` into
  the model folder (new files; FuseMap's own files are never touched) and, when asked,
  into another folder with ``gene_umap.png``.
* :func:`score_sections` - per-cell module scores: new AnnData copies with
  ``obs['module_<k>_score']`` (measured genes, plus decoded ones for genes a section did
  not measure when it holds ``obsm['X_fusemap_cell']``); :func:`write_scored`.
* :func:`design_panel` - a panel of N genes ("modules": spread evenly over the modules,
  most variable first; "hvg"; "random"), ranked by the expression of the sections given
  or, for a model folder, of the ``<section>.h5ad`` files ``embed`` wrote beside it;
  :func:`write_panel` (CSV: gene, module, variability, pick).
* :func:`cell_proximity` - region-specific proximity over sections (AnnData or paths) ->
  :class:`Proximity`; :func:`write_proximity` (CSV, the ranked table; heatmaps per
  region as PNG when a folder is given).

Inputs are never modified; outputs are written atomically.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..jobs import ProgressFn, report
from .embed import load_fusemap
from .outputs import check_output_file, check_output_folder
from .sections import as_sections, section_names

__all__ = [
    "PANEL_METHODS",
    "Modules",
    "Panel",
    "Proximity",
    "cell_proximity",
    "design_panel",
    "find_modules",
    "score_sections",
    "write_modules",
    "write_panel",
    "write_proximity",
    "write_scored",
]

PANEL_METHODS = ("modules", "hvg", "random")


def _model(model):
    """(FuseMap, its folder or None) from a folder path or a model object."""
    if model is None:
        raise BrainAtlasInputError("give a FuseMap model or a model folder")
    if isinstance(model, (str, Path)):
        return load_fusemap(model, device="cpu"), Path(model)
    if not hasattr(model, "gene_embedding"):
        raise BrainAtlasInputError("give a FuseMap model or a model folder")
    return model, None


# ------------------------------------------------------------------------ modules
@dataclass
class Modules:
    """Gene modules of a model and where they came from."""

    modules: object  # analyses.GeneModules
    model_dir: Path | None = None

    def lines(self) -> list[str]:
        gm = self.modules
        hubs = gm.hubs()
        out = [
            f"{len(gm.table)} genes in {gm.n_modules} modules (Leiden resolution "
            f"{gm.resolution:g}, rule {gm.params.get('resolution_rule')})"
        ]
        for k, n in gm.sizes().items():
            out.append(f"  module {k}: {n} genes, hubs {', '.join(hubs.get(k, []))}")
        return out


def find_modules(
    model,
    *,
    resolution="auto",
    n_modules: int | None = None,
    umap: bool = True,
    progress: ProgressFn | None = None,
    cancel=None,
) -> Modules:
    """Gene modules, hub genes and the gene UMAP of ``model`` (folder or FuseMap)."""
    from ..analyses import gene_modules

    fm, folder = _model(model)
    report(progress, 0, None, message=f"gene modules of {len(fm.gene_embedding())} genes")
    gm = gene_modules(
        fm,
        resolution=resolution,
        n_modules=n_modules,
        umap=umap,
        progress=progress,
        cancel=cancel,
    )
    return Modules(gm, folder)


def write_modules(result: Modules, out_dir=None, *, into_model: bool = True) -> list[Path]:
    """``modules.csv`` / ``modules.json`` into the model folder (``into_model``, when the
    modules came from a folder) and into ``out_dir`` with ``gene_umap.png``."""
    from ..analyses.plots import plot_gene_umap

    written = []
    if into_model and result.model_dir is not None:
        written.append(result.modules.save(result.model_dir))
    if out_dir is not None:
        folder = check_output_folder(out_dir)
        written.append(result.modules.save(folder))
        written.append(plot_gene_umap(result.modules, folder / "gene_umap.png"))
    return written


def score_sections(sections, *, model, modules=None) -> list[AnnData]:
    """Copies of ``sections`` with ``obs['module_<k>_score']`` for every module
    (``modules``: GeneModules, a model folder holding ``modules.csv``, or None: found
    with the default rule)."""
    from ..analyses import GeneModules, gene_modules, score_modules

    fm, folder = _model(model)
    if modules is None and folder is not None and (folder / "modules.csv").is_file():
        modules = GeneModules.load(folder)
    elif isinstance(modules, (str, Path)):
        modules = GeneModules.load(modules)
    if modules is None:
        modules = gene_modules(fm, umap=False)
    out = []
    for a in as_sections(sections):
        b = a.copy()
        score_modules(b, modules, model=fm)
        out.append(b)
    return out


def write_scored(sections: Sequence[AnnData], folder, *, inputs: Iterable = ()) -> list[Path]:
    from .outputs import write_sections

    return write_sections(sections, section_names(sections), folder, inputs=inputs)


# ------------------------------------------------------------------------ panels
@dataclass
class Panel:
    """A gene panel: ``table`` (gene, module, variability, pick), how it was chosen."""

    table: pd.DataFrame
    method: str
    size: int

    def lines(self) -> list[str]:
        t = self.table
        out = [
            f"panel of {self.size} genes ({self.method}): {', '.join(t['gene'][:20])}"
            + (" ..." if len(t) > 20 else "")
        ]
        if self.method == "modules":
            c = t["module"].value_counts().sort_index()
            out.append("  genes per module: " + ", ".join(f"{k}: {n}" for k, n in c.items()))
        return out


def _expression(fm, folder, data) -> list[AnnData]:
    if data is not None:
        return as_sections(data)
    if getattr(fm, "adatas", None):
        return list(fm.adatas)
    if folder is not None:
        files = [folder.parent / f"{n}.h5ad" for n in fm.section_names]
        if all(f.is_file() for f in files):
            return as_sections(files)
    raise BrainAtlasInputError(
        "ranking genes needs the sections' expression: give the section files (or keep "
        "the .h5ad files `napari-brainatlas embed` wrote beside the model folder)"
    )


def design_panel(
    model,
    size: int,
    *,
    include=None,
    exclude=None,
    data=None,
    method: str = "modules",
    modules=None,
    seed: int = 0,
) -> Panel:
    """A panel of ``size`` genes (see the module docstring); ``data``: sections or paths
    whose expression ranks the genes."""
    from ..analyses import (
        GeneModules,
        gene_modules,
        gene_variability,
        hvg_panel,
        random_panel,
        select_panel,
    )

    if method not in PANEL_METHODS:
        raise BrainAtlasInputError(
            f"the panel method must be one of {', '.join(PANEL_METHODS)}, not {method!r}"
        )
    fm, folder = _model(model)
    var = gene_variability(_expression(fm, folder, data))
    E = fm.gene_embedding()
    genes = [g for g in E.index if g in var.index]
    if method == "modules":
        if modules is None and folder is not None and (folder / "modules.csv").is_file():
            saved = GeneModules.load(folder)
            modules = saved if set(saved.genes) == set(E.index) else None
        gm = modules if modules is not None else gene_modules(fm, umap=False)
        t = select_panel(gm, size, variability=var, include=include, exclude=exclude)
    elif method == "hvg":
        t = hvg_panel(var, size, include=include, exclude=exclude, genes=genes)
    else:
        t = random_panel(genes, size, include=include, exclude=exclude, seed=seed, variability=var)
    return Panel(t, method, int(size))


def write_panel(panel: Panel, out, *, inputs: Iterable = ()) -> Path:
    from ..io import atomic_write_text

    path = check_output_file(out, ".csv", inputs)
    return atomic_write_text(panel.table.to_csv(index=False), path)


# ------------------------------------------------------------------------ proximity
@dataclass
class Proximity:
    """The proximity result (``result``: analyses.ProximityResult) and its inputs."""

    result: object
    n_sections: int = 1
    params: dict = field(default_factory=dict)

    def lines(self, top: int = 10) -> list[str]:
        r = self.result
        t = r.table
        out = [
            f"{r.params['n_cells']} cells in {self.n_sections} section(s), "
            f"{len(r.types)} types, {len(r.regions)} region(s): {len(t)} pairs tested, "
            f"{int(t['significant'].sum())} closer than chance (q < {r.params['alpha']})"
        ]
        for _, row in t[t["significant"]].head(top).iterrows():
            out.append(
                f"  {row['region']}: {row['type_a']} - {row['type_b']}  observed "
                f"{row['observed']}, expected {row['expected']:.1f}, z {row['z']:.1f}, "
                f"q {row['q_value']:.2g}"
            )
        return out


def cell_proximity(
    sections,
    *,
    celltype_key: str,
    region_key: str | None = None,
    settings=None,
    n_jobs: int | None = None,
    progress: ProgressFn | None = None,
    cancel=None,
) -> Proximity:
    """Region-specific proximity over ``sections`` (AnnData or paths; pooled, cells of
    different sections never pair)."""
    from ..analyses import region_proximity

    secs = as_sections(sections)
    for a in secs:
        for key in (celltype_key, region_key):
            if key and key not in a.obs:
                raise BrainAtlasInputError(f"a section has no obs column {key!r}")
    n = sum(a.n_obs for a in secs)
    report(progress, 0, None, message=f"proximity: {len(secs)} section(s), {n} cells")
    res = region_proximity(
        secs,
        celltype_key=celltype_key,
        region_key=region_key,
        settings=settings,
        n_jobs=n_jobs,
        key_added=None,
        progress=progress,
        cancel=cancel,
    )
    return Proximity(res, len(secs), dict(res.params))


def write_proximity(result: Proximity, out, *, heatmaps=None, inputs: Iterable = ()) -> list[Path]:
    """The ranked table as CSV; with ``heatmaps`` (a folder) one PNG of z per region."""
    from ..analyses.plots import plot_proximity_heatmap
    from ..io import atomic_write_text

    path = check_output_file(out, ".csv", inputs)
    written = [atomic_write_text(result.result.table.to_csv(index=False), path)]
    if heatmaps is not None:
        folder = check_output_folder(heatmaps)
        for i, region in enumerate(result.result.regions):
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(region))
            written.append(
                plot_proximity_heatmap(result.result, region, folder / f"proximity_{i}_{safe}.png")
            )
    return written
