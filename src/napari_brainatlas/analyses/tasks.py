"""One call per user task, from files to files: what the ``modules``, ``panel`` and
``proximity`` subcommands and the "Genes & neighbours" dock call (plain Python: no Qt,
no argparse, no printing; progress through the :mod:`napari_brainatlas.jobs` protocol).

* :func:`modules_for_model` - gene modules of a model folder, written into it
  (``modules.csv``, ``modules.json``) and, when asked, into another folder together with
  the gene UMAP figure (``gene_umap.png``).
* :func:`panel_for_model` - a panel of N genes (modules, top-HVG or random) from a model
  folder, ranked by the expression of the sections beside it (what ``napari-brainatlas
  embed`` writes: ``OUT/model`` and ``OUT/<section>.h5ad``) or of the files given; CSV.
* :func:`proximity_for_files` - region-specific proximity over section files; CSV table.

Outputs are written atomically and never over an input file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._errors import BrainAtlasInputError
from .modules import MODULES_CSV, GeneModules, gene_modules
from .panels import gene_variability, hvg_panel, random_panel, select_panel
from .proximity import ProximityResult, ProximitySettings, region_proximity

__all__ = [
    "PANEL_METHODS",
    "load_model",
    "modules_for_model",
    "panel_for_model",
    "proximity_for_files",
    "read_section_files",
]

PANEL_METHODS = ("modules", "hvg", "random")


def load_model(model_dir):
    """FuseMap.load of a model folder, with one clear error when it is not one."""
    from ..fusemap import FuseMap

    p = Path(model_dir)
    if not (p.is_dir() and (p / "config.json").is_file()):
        raise BrainAtlasInputError(f"{p} is not a model folder (no config.json)")
    return FuseMap.load(p, device="cpu")


def read_section_files(paths) -> list:
    """Every section of every file (in memory)."""
    from ..io import read_sections

    out = []
    for p in paths:
        if not Path(p).exists():
            raise BrainAtlasInputError(f"{p} does not exist")
        for a in read_sections(p):
            out.append(a.to_memory() if getattr(a, "isbacked", False) else a)
    if not out:
        raise BrainAtlasInputError("no sections found in the input")
    return out


def _write_csv(df: pd.DataFrame, out, inputs=()) -> Path:
    from ..io import atomic_write_text

    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise BrainAtlasInputError(f"the output must be a .csv file, not {out.name}")
    if any(Path(i).resolve() == out.resolve() for i in inputs):
        raise BrainAtlasInputError(f"refusing to overwrite the input file {out.name}")
    return atomic_write_text(df.to_csv(index=False), out)


def modules_for_model(
    model_dir,
    *,
    out_dir=None,
    resolution="auto",
    n_modules: int | None = None,
    umap: bool = True,
    progress=None,
    cancel=None,
) -> GeneModules:
    """Gene modules of the model in ``model_dir``; ``modules.csv`` / ``modules.json`` are
    written into the model folder (FuseMap's own files untouched) and, with ``out_dir``,
    also there with ``gene_umap.png``."""
    model = load_model(model_dir)
    gm = gene_modules(
        model,
        resolution=resolution,
        n_modules=n_modules,
        umap=umap,
        progress=progress,
        cancel=cancel,
    )
    gm.save(model_dir)
    if out_dir is not None:
        from .plots import plot_gene_umap

        gm.save(out_dir)
        plot_gene_umap(gm, Path(out_dir) / "gene_umap.png")
    return gm


def _modules_of(model, model_dir: Path) -> GeneModules:
    """The saved modules of the model folder when they cover its genes, else new ones."""
    if (model_dir / MODULES_CSV).is_file():
        gm = GeneModules.load(model_dir)
        if set(gm.genes) == set(model.gene_embedding().index):
            return gm
    return gene_modules(model, umap=False)


def _expression_beside(model, model_dir: Path) -> list:
    files = [model_dir.parent / f"{n}.h5ad" for n in model.section_names]
    if not all(f.is_file() for f in files):
        raise BrainAtlasInputError(
            "ranking genes needs the sections' expression: give --data with the section "
            "files (or keep the .h5ad files `napari-brainatlas embed` wrote beside the model)"
        )
    return read_section_files(files)


def panel_for_model(
    model_dir,
    size: int,
    *,
    include=None,
    exclude=None,
    data=None,
    method: str = "modules",
    seed: int = 0,
    out_csv=None,
) -> pd.DataFrame:
    """A gene panel from a model folder (see the module docstring); written to
    ``out_csv`` when given (columns gene, module, variability, pick)."""
    if method not in PANEL_METHODS:
        raise BrainAtlasInputError(
            f"the panel method must be one of {', '.join(PANEL_METHODS)}, not {method!r}"
        )
    mdir = Path(model_dir)
    model = load_model(mdir)
    secs = read_section_files(data) if data else _expression_beside(model, mdir)
    var = gene_variability(secs)
    genes = [g for g in model.gene_embedding().index if g in var.index]
    if method == "modules":
        panel = select_panel(
            _modules_of(model, mdir), size, variability=var, include=include, exclude=exclude
        )
    elif method == "hvg":
        panel = hvg_panel(var, size, include=include, exclude=exclude, genes=genes)
    else:
        panel = random_panel(
            genes, size, include=include, exclude=exclude, seed=seed, variability=var
        )
    if out_csv is not None:
        _write_csv(panel, out_csv, inputs=list(data or []))
    return panel


def proximity_for_files(
    paths,
    *,
    celltype_key: str,
    region_key: str | None = None,
    settings: ProximitySettings | None = None,
    out_csv=None,
    n_jobs: int | None = None,
    progress=None,
    cancel=None,
) -> ProximityResult:
    """Region-specific proximity over the sections of ``paths`` (pooled; cells of
    different sections never pair); the ranked table goes to ``out_csv`` when given."""
    if out_csv is not None and Path(out_csv).suffix.lower() != ".csv":
        raise BrainAtlasInputError(f"the output must be a .csv file, not {Path(out_csv).name}")
    secs = read_section_files(paths)
    for a in secs:
        for key in (celltype_key, region_key):
            if key and key not in a.obs:
                raise BrainAtlasInputError(f"a section has no obs column {key!r}")
    res = region_proximity(
        secs,
        celltype_key=celltype_key,
        region_key=region_key,
        settings=settings,
        n_jobs=n_jobs,
        progress=progress,
        cancel=cancel,
    )
    if out_csv is not None:
        _write_csv(res.table, out_csv, inputs=paths)
    return res
